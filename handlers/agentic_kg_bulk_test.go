package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/kg/extract/extracttest"
	"github.com/stargazer/stargazer-jobs/internal/queue/events"
	"github.com/stargazer/stargazer-jobs/internal/store/msgcache"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// bulkEnv is a kgEnv with a dump directory and debug events on a real
// Redis channel.
func bulkEnv(t *testing.T) (*kgEnv, Deps, func() []events.Event) {
	t.Helper()
	v := newKGEnv(t)
	d := v.deps()
	d.KGBulkDir = filepath.Join(t.TempDir(), "kg_bulk_scheduled")
	d.Events = events.NewPublisher(v.rdb, "debug-events")
	return v, d, subscribe(t, v.rdb, "debug-events")
}

func runBulk(ctx context.Context, d Deps) (Result, error) {
	return work(ctx, d, jobs.AgenticKGBulkIncremental, &jobs.ChannelBatch{MaxChannels: 10})
}

func readJSON(t *testing.T, name string, v any) {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

func dumps(t *testing.T, root string) []string {
	t.Helper()
	got, err := filepath.Glob(filepath.Join(root, "*"))
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func oneEvent(t *testing.T, received func() []events.Event, status string) events.Event {
	t.Helper()
	evs := received()
	if len(evs) != 1 || evs[0].Topic != "kg_bulk_incremental" || evs[0].Source != "background_tasks" || evs[0].Status != status ||
		evs[0].Phase != "pipeline" {
		t.Fatalf("events %+v, want one kg_bulk_incremental %q event of phase pipeline", evs, status)
	}
	return evs[0]
}

func resultsFile(dir string, c msgcache.Channel) string {
	return filepath.Join(dir, "results", fileSafe(c.Platform)+"_"+fileSafe(c.ID)+".json")
}

func TestAgenticKGBulkBootstrapsLatestThenExtractsOnlyNewMessages(t *testing.T) {
	ctx := context.Background()
	v, d, received := bulkEnv(t)
	history := append(chatter(t, v.rdb, guildChan, v.now.Add(-time.Hour), 0, 10), chatter(t, v.rdb, roomChan, v.now.Add(-time.Hour), 0, 8)...)

	res, err := runBulk(ctx, d)
	if err != nil || res["status"] != "no_new_messages" || res["cursors_bootstrapped"] != 2 || res["messages_read"] != 0 {
		t.Fatalf("first run %v, %v", res, err)
	}
	if len(v.llm.Calls()) != 0 || len(dumps(t, d.KGBulkDir)) != 0 {
		t.Fatal("the bootstrap run extracted or dumped something")
	}
	// As the original: the channels looked at, and no sorted sets scanned.
	if e := oneEvent(t, received, "no_new_messages"); e.Payload["channels_processed"] != 2.0 || e.Payload["n_zsets"] != 0.0 {
		t.Errorf("event %+v", e)
	}
	boot := map[msgcache.Channel]msgcache.Position{guildChan: posOf(history[9]), roomChan: posOf(history[17])}
	for c, want := range boot {
		if got := cursorOf(t, v.rdb, KGBulkCursorPrefix+c.String()); got != want {
			t.Fatalf("cursor of %s %v, want its newest message %v", c, got, want)
		}
	}

	guild := chatter(t, v.rdb, guildChan, v.now.Add(-time.Hour), 10, 25)
	room := chatter(t, v.rdb, roomChan, v.now.Add(-time.Hour), 8, 12)
	users := append(userTexts(guild), userTexts(room)...)
	res, err = runBulk(ctx, d)
	if err != nil || res["status"] != "ok" || res["messages_read"] != 37 || res["messages_extracted"] != len(users) ||
		res["channels_with_new"] != 2 || res["cursors_moved"] != 2 {
		t.Fatalf("second run %v, %v", res, err)
	}
	sent := sentCounts(v.llm.Calls())
	for _, text := range users {
		if sent[text] != 1 {
			t.Errorf("%q sent %d times", text, sent[text])
		}
	}
	for _, m := range history {
		if sent[m.Text] != 0 {
			t.Errorf("history before the bootstrap was extracted: %q", m.Text)
		}
	}
	if got, want := graphMentions(t, v.g), wantMentions(users); !sameMentions(got, want) {
		t.Fatalf("mentions %v, want %v", got, want)
	}

	dir := filepath.Join(d.KGBulkDir, v.now.UTC().Format("20060102T150405Z"))
	if got := dumps(t, d.KGBulkDir); len(got) != 1 || got[0] != dir || res["out_dir"] != dir {
		t.Fatalf("dumps %v (result %v), want %s", got, res["out_dir"], dir)
	}
	var ws struct {
		Messages int `json:"messages"`
		Channels []struct {
			Platform     string            `json:"platform"`
			ChannelID    string            `json:"channel_id"`
			CursorBefore msgcache.Position `json:"cursor_before"`
			Count        int               `json:"count"`
			Messages     []bulkMessage     `json:"messages"`
		} `json:"channels"`
	}
	readJSON(t, filepath.Join(dir, "working_set.json"), &ws)
	if ws.Messages != 37 || len(ws.Channels) != 2 {
		t.Fatalf("working set %+v", ws)
	}
	for _, ch := range ws.Channels {
		c := msgcache.Channel{Platform: ch.Platform, ID: ch.ChannelID}
		want := map[msgcache.Channel][]msgcache.Message{guildChan: guild, roomChan: room}[c]
		if ch.CursorBefore != boot[c] || ch.Count != len(want) || len(ch.Messages) != len(want) ||
			ch.Messages[0].Key != want[0].Key || ch.Messages[0].MessageID != want[0].MessageID {
			t.Errorf("working set of %s: %+v", c, ch)
		}
		var r bulkResults
		readJSON(t, resultsFile(dir, c), &r)
		if r.Messages != len(want) || r.Counts.Fragments != len(userTexts(want)) || r.CursorTo != posOf(want[len(want)-1]) ||
			r.CursorBefore != boot[c] || r.Unsettled != 0 || r.Error != "" {
			t.Errorf("results of %s: %+v", c, r)
		}
		if got := cursorOf(t, v.rdb, KGBulkCursorPrefix+c.String()); got != posOf(want[len(want)-1]) {
			t.Errorf("cursor of %s %v, want its last message", c, got)
		}
	}
	var sum struct {
		Status            string `json:"status"`
		MessagesProcessed int    `json:"messages_processed"`
		Channels          []bulkResults
	}
	readJSON(t, filepath.Join(dir, "summary.json"), &sum)
	if sum.Status != "ok" || sum.MessagesProcessed != 37 || len(sum.Channels) != 2 {
		t.Errorf("summary %+v", sum)
	}
	if e := oneEvent(t, received, "ok"); e.Payload["messages_processed"] != 37.0 || e.Payload["out_dir"] != dir ||
		e.Payload["channels_processed"] != 2.0 || !strings.Contains(e.Preview, "messages=37") {
		t.Errorf("event %+v", e)
	}
	if !strings.Contains(v.logs.String(), "processed 37 message(s) -> "+dir) {
		t.Errorf("not logged: %s", v.logs)
	}

	t.Run("a run with nothing new writes nothing", func(t *testing.T) {
		before, calls := graphSnapshot(t, v.g), len(v.llm.Calls())
		v.now = v.now.Add(time.Minute)
		res, err := runBulk(ctx, d)
		if err != nil || res["status"] != "no_new_messages" || res["cursors_bootstrapped"] != 0 {
			t.Fatalf("third run %v, %v", res, err)
		}
		if len(v.llm.Calls()) != calls || graphSnapshot(t, v.g) != before || len(dumps(t, d.KGBulkDir)) != 1 {
			t.Fatal("a run with nothing new called the LLM, changed the graph or dumped")
		}
		oneEvent(t, received, "no_new_messages")
	})
}

func TestAgenticKGBulkMovesACursorOnlyAfterItsChannelsResultsAreWritten(t *testing.T) {
	tests := []struct {
		name string
		// fail breaks the second channel; it gets the run's directory.
		fail func(t *testing.T, dir string, second msgcache.Channel) *extracttest.Reply
		// redoCalls is the LLM calls the next run makes for the second channel.
		redoCalls int
	}{
		{
			name: "its extraction fails",
			fail: func(*testing.T, string, msgcache.Channel) *extracttest.Reply {
				return &extracttest.Reply{Status: http.StatusServiceUnavailable, Body: `{"error":{"message":"overloaded"}}`}
			},
			redoCalls: 1,
		},
		{
			name: "its results file cannot be written",
			fail: func(t *testing.T, dir string, second msgcache.Channel) *extracttest.Reply {
				// A directory where the file goes makes the rename fail.
				if err := os.MkdirAll(filepath.Join(resultsFile(dir, second), "x"), 0o755); err != nil {
					t.Error(err)
				}
				return nil
			},
			redoCalls: 0, // extracted and in the ledger: the redo is free
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			v, d, received := bulkEnv(t)
			chatter(t, v.rdb, guildChan, v.now.Add(-time.Hour), 0, 1)
			chatter(t, v.rdb, roomChan, v.now.Add(-time.Hour), 0, 1)
			if _, err := runBulk(ctx, d); err != nil { // bootstrap
				t.Fatal(err)
			}
			received()
			boot := map[msgcache.Channel]msgcache.Position{
				guildChan: cursorOf(t, v.rdb, KGBulkCursorPrefix+guildChan.String()),
				roomChan:  cursorOf(t, v.rdb, KGBulkCursorPrefix+roomChan.String()),
			}
			news := map[msgcache.Channel][]msgcache.Message{
				guildChan: chatter(t, v.rdb, guildChan, v.now.Add(-time.Hour), 1, 10),
				roomChan:  chatter(t, v.rdb, roomChan, v.now.Add(-time.Hour), 1, 12),
			}
			var first, second msgcache.Channel
			v.llm.SetHook(func(n int, c extracttest.Call) *extracttest.Reply {
				ch := guildChan
				if strings.HasPrefix(c.Messages[0], "matrix") {
					ch = roomChan
				}
				if n == 1 {
					first = ch
					return nil
				}
				second = ch
				dirs := dumps(t, d.KGBulkDir)
				if len(dirs) != 1 {
					t.Errorf("dumps %v", dirs)
					return nil
				}
				return tt.fail(t, dirs[0], ch)
			})
			_, err := runBulk(ctx, d)
			if err == nil || errors.Is(err, asynq.SkipRetry) {
				t.Fatalf("err = %v, want a retried failure", err)
			}
			if first == second || second == (msgcache.Channel{}) {
				t.Fatalf("channels %v then %v", first, second)
			}
			dir := dumps(t, d.KGBulkDir)[0]
			want := news[first]
			if got := cursorOf(t, v.rdb, KGBulkCursorPrefix+first.String()); got != posOf(want[len(want)-1]) {
				t.Errorf("first channel's cursor %v, want its last message", got)
			}
			if _, err := os.Stat(resultsFile(dir, first)); err != nil {
				t.Errorf("first channel's results: %v", err)
			}
			if got := cursorOf(t, v.rdb, KGBulkCursorPrefix+second.String()); got != boot[second] {
				t.Errorf("second channel's cursor moved to %v", got)
			}
			var sum struct {
				Status, Error string
			}
			readJSON(t, filepath.Join(dir, "summary.json"), &sum)
			if sum.Status != "error" || sum.Error == "" {
				t.Errorf("summary %+v", sum)
			}
			if e := oneEvent(t, received, "error"); !strings.HasPrefix(e.Preview, "error=") || e.Payload["error"] == "" {
				t.Errorf("event %+v", e)
			}

			v.llm.SetHook(nil)
			v.now = v.now.Add(time.Minute)
			calls := len(v.llm.Calls())
			res, err := runBulk(ctx, d)
			if err != nil || res["status"] != "ok" || res["channels_with_new"] != 1 || len(v.llm.Calls())-calls != tt.redoCalls {
				t.Fatalf("next run %v, %v, %d calls", res, err, len(v.llm.Calls())-calls)
			}
			want = news[second]
			if got := cursorOf(t, v.rdb, KGBulkCursorPrefix+second.String()); got != posOf(want[len(want)-1]) {
				t.Errorf("second channel's cursor %v after the next run, want its last message", got)
			}
			if got, want := graphMentions(t, v.g), wantMentions(append(userTexts(news[guildChan]), userTexts(news[roomChan])...)); !sameMentions(got, want) {
				t.Fatalf("mentions %v, want %v", got, want)
			}
		})
	}
}

func TestAgenticKGBulkSkipsWithItsEvent(t *testing.T) {
	v, d, received := bulkEnv(t)
	res, err := runBulk(context.Background(), d) // no active channels
	if err != nil || res["status"] != "skipped" {
		t.Fatalf("%v, %v", res, err)
	}
	oneEvent(t, received, "skipped")
	if n, _ := v.rdb.Exists(context.Background(), KGBulkCursorPrefix+guildChan.String()).Result(); n != 0 || len(dumps(t, d.KGBulkDir)) != 0 {
		t.Error("a skipped run set a cursor or dumped")
	}
}

// Without an API key for the shared endpoint the run skips with the
// original's event, calling nothing and moving nothing.
func TestAgenticKGBulkSkipsWithoutAnAPIKeyAsTheOriginalDid(t *testing.T) {
	v, d, received := bulkEnv(t)
	d.LLMKeyMissing = true
	chatter(t, v.rdb, guildChan, v.now, 0, 3)
	res, err := runBulk(context.Background(), d)
	if err != nil || res["status"] != "skipped" {
		t.Fatalf("%v, %v", res, err)
	}
	if e := oneEvent(t, received, "skipped"); e.Payload["channels_processed"] != 0.0 || e.Payload["n_zsets"] != 0.0 {
		t.Errorf("event %+v", e)
	}
	if len(v.llm.Calls()) != 0 || len(dumps(t, d.KGBulkDir)) != 0 {
		t.Error("a skipped run called the LLM or dumped")
	}
	if n, _ := v.rdb.Exists(context.Background(), KGBulkCursorPrefix+guildChan.String()).Result(); n != 0 {
		t.Error("a skipped run set a cursor")
	}
}

// Without an LLM the task is not registered (its catalog spec requires
// one); a handler built anyway refuses to run, once and for all, and
// touches nothing.
func TestAgenticKGBulkWithoutAnLLMRefusesToRun(t *testing.T) {
	v, d, _ := bulkEnv(t)
	d.LLM = nil
	chatter(t, v.rdb, guildChan, v.now, 0, 3)
	res, err := runBulk(context.Background(), d)
	if res != nil || !errors.Is(err, asynq.SkipRetry) || !strings.Contains(err.Error(), "no LLM client") {
		t.Fatalf("%v, %v; want a SkipRetry error naming the LLM", res, err)
	}
	if n, _ := v.rdb.Exists(context.Background(), KGBulkCursorPrefix+guildChan.String()).Result(); n != 0 || len(dumps(t, d.KGBulkDir)) != 0 {
		t.Error("a refused run set a cursor or dumped")
	}
}
