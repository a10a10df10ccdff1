package app_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/app"
	"github.com/stargazer/stargazer-jobs/internal/kg/extract/extracttest"
	"github.com/stargazer/stargazer-jobs/internal/store/msgcache"
	"github.com/stargazer/stargazer-jobs/internal/testkit/falkortest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/poll"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// runApp runs a worker with env until the test ends and returns its HTTP
// address.
func runApp(t *testing.T, env map[string]string) string {
	t.Helper()
	addr := redistest.FreeAddr(t)
	env["HTTP_ADDR"], env["SHUTDOWN_TIMEOUT"] = addr, "2s"
	env["PROBE_ADDR"] = redistest.FreeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- app.Run(ctx, app.Params{Getenv: func(k string) string { return env[k] }, Stdout: io.Discard, Stderr: io.Discard})
	}()
	t.Cleanup(func() { cancel(); <-done })
	return addr
}

// metric returns the value of the series of /metrics whose line starts
// with prefix (0 if absent).
func metric(t *testing.T, addr, prefix string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, prefix) {
			var v float64
			fmt.Sscanf(line[len(prefix):], " %g", &v)
			return v
		}
	}
	return 0
}

// With no cut-over setting at all, while the Python supervisor's lease
// (the bot's default SG_LEADER_KEY) exists, dedup and org stand down at
// every occurrence; once it is gone, they run within one interval.
func TestSupervisedTasksStandDownWhileTheLegacyLeaderHoldsItsLeaseWithNoSetting(t *testing.T) {
	if testing.Short() {
		t.Skip("a whole worker over several occurrences: skipped under -short")
	}
	const interval = 2 * time.Second
	r := redistest.Start(t)
	fk := falkortest.Start(t)
	llm := extracttest.Start(t)
	rdb := r.Client(t)
	ctx := context.Background()
	if err := rdb.Set(ctx, "sg:leader:supervisor", "python-node-1", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	addr := runApp(t, map[string]string{
		"REDIS_URL": r.URL(), "FALKORDB_URL": fk.URL(), "LLM_BASE_URL": llm.BaseURL(),
		"KA_DEDUP_INTERVAL_SECONDS": "2", "KA_ORG_INTERVAL_SECONDS": "2",
	})
	for _, task := range []string{jobs.LimbicDedup, jobs.LimbicOrg} {
		poll.Until(t, task+" standing down twice", func() bool {
			return metric(t, addr, `stargazer_task_stood_down_total{reason="legacy_leader",task="`+task+`"}`) >= 2
		})
		if n := metric(t, addr, `stargazer_task_runs_total{status="ok",task="`+task+`"}`); n != 0 {
			t.Fatalf("%s ran %v times while the legacy leader held its lease", task, n)
		}
	}
	rdb.Del(ctx, "sg:leader:supervisor") // the Python supervisor stopped
	released := time.Now()
	for _, task := range []string{jobs.LimbicDedup, jobs.LimbicOrg} {
		poll.Until(t, task+" running once the lease is gone", func() bool {
			return metric(t, addr, `stargazer_task_runs_total{status="ok",task="`+task+`"}`) >= 1
		})
	}
	// One interval, plus the scheduler's 1 s poll and the run itself.
	took := time.Since(released)
	t.Logf("FIGURE both supervised tasks ran %.1f s after the lease was released (interval %v)", took.Seconds(), interval)
	if took > interval+2*time.Second {
		t.Errorf("ran %v after the release, more than one interval (%v) and the scheduler's poll", took, interval)
	}
}

// A deployment with no Python side opts out: the lease, whoever holds it,
// stands nothing down.
func TestNoCoexistenceRunsTheSupervisedTasksWhateverHoldsTheLease(t *testing.T) {
	if testing.Short() {
		t.Skip("a whole worker: skipped under -short")
	}
	r := redistest.Start(t)
	fk := falkortest.Start(t)
	llm := extracttest.Start(t)
	rdb := r.Client(t)
	if err := rdb.Set(context.Background(), "sg:leader:supervisor", "someone", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	addr := runApp(t, map[string]string{
		"REDIS_URL": r.URL(), "FALKORDB_URL": fk.URL(), "LLM_BASE_URL": llm.BaseURL(),
		"LEGACY_COEXISTENCE": "false", "KA_DEDUP_INTERVAL_SECONDS": "1", "KA_ORG_INTERVAL_SECONDS": "1",
	})
	for _, task := range []string{jobs.LimbicDedup, jobs.LimbicOrg} {
		poll.Until(t, task+" running", func() bool {
			return metric(t, addr, `stargazer_task_runs_total{status="ok",task="`+task+`"}`) >= 1
		})
		if n := metric(t, addr, `stargazer_task_stood_down_total{reason="legacy_leader",task="`+task+`"}`); n != 0 {
			t.Errorf("%s stood down %v times with LEGACY_COEXISTENCE=false", task, n)
		}
	}
}

// Once the kill switch is off, no chat-LLM call starts: not from runs
// already queued (heartbeat children spread over the day), not from a
// summary pass already running, which stops before its next call.
func TestNoChatLLMCallStartsAfterTheKillSwitchIsOff(t *testing.T) {
	if testing.Short() {
		t.Skip("a whole worker: skipped under -short")
	}
	r := redistest.Start(t)
	fake := extracttest.Start(t)
	rdb := r.Client(t)
	ctx := context.Background()
	cache := msgcache.New(rdb)
	var chans []msgcache.Channel
	for i := range 4 {
		c := msgcache.Channel{Platform: "discord", ID: fmt.Sprintf("21000000000000000%02d", i)}
		chans = append(chans, c)
		for j := range 3 {
			if _, _, err := cache.Log(ctx, msgcache.Message{Channel: c, MessageID: fmt.Sprintf("m%d", j), UserID: "u", UserName: "ada",
				Text: fmt.Sprintf("message %d", j), Time: time.Now().Add(-time.Duration(10-j) * time.Minute)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The summary pass's first call flips the switch and takes its time:
	// the calls after it must not start.
	var calls atomic.Int32
	fake.SetHook(func(n int, c extracttest.Call) *extracttest.Reply {
		calls.Add(1)
		if n == 1 {
			rdb.Set(context.Background(), "sg:switch:chat_llm", "off", 0)
			time.Sleep(300 * time.Millisecond)
		}
		return nil
	})
	addr := runApp(t, map[string]string{"REDIS_URL": r.URL(), "LLM_BASE_URL": fake.BaseURL(), "SCHEDULER_ENABLED": "false"})
	client := asynq.NewClient(asynq.RedisClientOpt{Addr: r.Addr})
	defer client.Close()
	// Heartbeat children queued before the switch, due a second later.
	for _, c := range chans {
		payload, _ := jobs.EncodePayload(&jobs.ChannelRef{Platform: c.Platform, ChannelID: c.ID})
		if _, err := client.Enqueue(asynq.NewTask(jobs.ChannelHeartbeatChannel, payload), asynq.ProcessIn(2*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := client.Enqueue(asynq.NewTask(jobs.ChannelSummarization, nil)); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, "the four heartbeat children refused", func() bool {
		return metric(t, addr, `stargazer_task_stood_down_total{reason="kill_switch",task="channel_heartbeat_channel"}`) >= 4
	})
	// It stops at its first refused call and is deferred until the switch
	// is back on: not failed, not retried.
	poll.Until(t, "the summary pass deferred", func() bool {
		return metric(t, addr, `stargazer_task_runs_total{status="deferred",task="channel_summarization"}`) >= 1
	})
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d LLM calls, want only the one that was running when the switch went off", n)
	}
	// Switched back on, the next run calls again.
	rdb.Del(ctx, "sg:switch:chat_llm")
	payload, _ := jobs.EncodePayload(&jobs.ChannelRef{Platform: chans[0].Platform, ChannelID: chans[0].ID})
	if _, err := client.Enqueue(asynq.NewTask(jobs.ChannelHeartbeatChannel, payload)); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, "a call once the switch is back on", func() bool { return calls.Load() == 2 })
}
