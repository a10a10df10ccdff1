package handlers

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/store/msgcache"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// The planners read sg:channels:active; the fleet's hourly turn scans
// sg:msgs:* and puts back a channel the active set lost, so its messages
// are still planned, and a pass within the hour does not scan.
func TestPlannerFindsAChannelMissingFromTheActiveSetAtTheHourlyScanOnly(t *testing.T) {
	ctx := context.Background()
	v := newKGEnv(t)
	queue := redistest.Start(t).Client(t) // the job system's Redis, apart
	d := v.deps()
	d.Jobs = queue
	probe := v.rdb
	chatter(t, v.rdb, guildChan, v.now.Add(-40*time.Minute), 0, 5)
	chatter(t, v.rdb, roomChan, v.now.Add(-30*time.Minute), 0, 5)
	// The bot lost the room, and something wrote members that are no channel.
	if err := v.rdb.ZRem(ctx, msgcache.ActiveKey, roomChan.String()).Err(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"no-colon", ":no-platform"} {
		if err := v.rdb.ZAdd(ctx, msgcache.ActiveKey, redis.Z{Score: 1, Member: bad}).Err(); err != nil {
			t.Fatal(err)
		}
	}

	scans := func() int64 { return commandStats(t, probe)["scan"] }
	pass := func(name string) Result {
		t.Helper()
		res, err := work(ctx, d, jobs.LimbicAnchoringWorker, &jobs.Empty{})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return res
	}

	before := scans()
	res := pass("the first pass")
	if scans() == before {
		t.Fatal("the first pass took the turn but did not scan")
	}
	if res["channels"] != 2 || res["messages_read"] != 10 {
		t.Fatalf("the first pass planned %v channels, %v messages; want the lost room too: %v", res["channels"], res["messages_read"], res)
	}
	if _, err := v.rdb.ZScore(ctx, msgcache.ActiveKey, roomChan.String()).Result(); err != nil {
		t.Fatalf("the room was not put back in the active set: %v", err)
	}
	if ttl, err := queue.PTTL(ctx, discoveryScanKey).Result(); err != nil || ttl <= 59*time.Minute || ttl > time.Hour {
		t.Fatalf("turn key on the queue Redis: ttl %v, %v", ttl, err)
	}
	if n, _ := v.rdb.Exists(ctx, discoveryScanKey).Result(); n != 0 {
		t.Fatal("the turn key was written to the bot's Redis")
	}
	logs := v.logs.String()
	if !strings.Contains(logs, "added channels missing from the active set") || !strings.Contains(logs, "added=1") {
		t.Fatalf("the repair was not logged:\n%s", logs)
	}
	if !strings.Contains(logs, "level=WARN") || !strings.Contains(logs, "skipped=2") {
		t.Fatalf("the malformed members were not warned about:\n%s", logs)
	}

	// Lost again within the hour: not scanned, not planned.
	chatter(t, v.rdb, roomChan, v.now.Add(-10*time.Minute), 5, 1)
	if err := v.rdb.ZRem(ctx, msgcache.ActiveKey, roomChan.String()).Err(); err != nil {
		t.Fatal(err)
	}
	before = scans()
	res = pass("a pass within the hour")
	if scans() != before {
		t.Fatal("a pass within the hour scanned")
	}
	if res["channels"] != 1 {
		t.Fatalf("a pass within the hour saw %v channels, want the active set's 1", res["channels"])
	}

	// An hour later (the turn expired): scanned again, and the room's new
	// message is planned.
	if err := queue.Del(ctx, discoveryScanKey).Err(); err != nil {
		t.Fatal(err)
	}
	before = scans()
	res = pass("the pass after the hour")
	if scans() == before || res["channels"] != 2 {
		t.Fatalf("after the hour: scanned %v, channels %v", scans() != before, res["channels"])
	}
	if res["messages_read"] != 1 {
		t.Fatalf("after the hour the room's new message was not planned: %v", res)
	}
}

// A reconciling scan that fails gives the turn back, so the next pass
// scans rather than the next hour.
func TestAFailedDiscoveryScanGivesTheTurnBack(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v := newKGEnv(t)
	bot := redistest.Start(t)
	queue := redistest.Start(t).Client(t)
	d := v.deps()
	botClient := redis.NewClient(&redis.Options{Addr: bot.Addr, MaxRetries: -1}) // fail at once, not after retries
	t.Cleanup(func() { botClient.Close() })
	d.Redis, d.Jobs = botClient, queue
	bot.Stop()
	if _, err := work(ctx, d, jobs.LimbicAnchoringWorker, &jobs.Empty{}); err == nil {
		t.Fatal("a pass without the bot's Redis succeeded")
	}
	if n, err := queue.Exists(ctx, discoveryScanKey).Result(); err != nil || n != 0 {
		t.Fatalf("the turn was kept after a failed scan (%d, %v)", n, err)
	}
	if !strings.Contains(v.logs.String(), "the reconciling scan failed") {
		t.Fatalf("the failed scan was not logged:\n%s", v.logs.String())
	}
}
