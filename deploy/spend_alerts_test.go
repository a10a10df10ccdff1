package deploy_test

import (
	"context"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/app"
	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/clients/llm/llmtest"
	"github.com/stargazer/stargazer-jobs/internal/store/msgcache"
	"github.com/stargazer/stargazer-jobs/internal/testkit/poll"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/syncbuf"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// TestRealPrometheusFiresSpendAlerts runs the distribution's Prometheus
// against a real worker whose channel_summarization has a budget of 20k
// tokens and a fake LLM reporting 995 tokens a call: twenty channels
// spend 19,900 tokens in seconds, which fires
// StargazerLLMBudgetExhaustingEarly; a second wave of messages is refused
// and deferred, which fires StargazerLLMTaskDeferred, while
// StargazerPeriodicTaskNotRun stays quiet for the deferred task although
// it has not succeeded for many of its intervals.
func TestRealPrometheusFiresSpendAlerts(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a worker and a Prometheus server (about 40 s)")
	}
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := context.Background()
	fake := llmtest.NewServer(t)
	fake.SetUsage(func(int) llm.Usage { return llm.Usage{PromptTokens: 895, CompletionTokens: 100, TotalTokens: 995} })
	addr := redistest.FreeAddr(t)
	prom := startPrometheus(t, addr)
	env := map[string]string{
		"REDIS_URL": srv.URL(), "HTTP_ADDR": addr, "SHUTDOWN_TIMEOUT": "5s", "MONITOR_TOKEN": "test-token",
		"LLM_BASE_URL": fake.BaseURL(), "LLM_BUDGETS": "channel_summarization=20k",
		"TASK_INTERVALS": "channel_summarization=2s,channel_heartbeat=off,scheduled_prompt_tick=off",
	}
	// Due now and every 2 s, rather than after the task's 10-minute
	// initial delay.
	rdb.HSet(ctx, "sgjobs:schedule:"+jobs.ChannelSummarization, "next_ms", time.Now().UnixMilli(), "interval_ms", 2000)
	logs := &syncbuf.Buffer{}
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- app.Run(wctx, app.Params{Getenv: func(k string) string { return env[k] }, Stdout: logs, Stderr: io.Discard})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker: %v", err)
		}
		if t.Failed() {
			t.Logf("worker logs:\n%s", logs.String())
		}
	})
	// Prometheus sees the budget unspent before anything is spent: the
	// rate of the spend is an increase it watched.
	poll.Until(t, "Prometheus scraping the budget", func() bool {
		return queryScalar(t, prom, `max(stargazer_llm_budget_remaining{task="channel_summarization"})`) == 20_000
	})
	cache := msgcache.New(rdb)
	wave := func(n int) {
		for i := range 20 {
			c := msgcache.Channel{Platform: "discord", ID: fmt.Sprintf("4100000000000000%02d", i)}
			if _, _, err := cache.Log(ctx, msgcache.Message{Channel: c, MessageID: fmt.Sprintf("w%d-%d", n, i), UserID: "u",
				UserName: "ada", Text: fmt.Sprintf("wave %d", n), Time: time.Now()}); err != nil {
				t.Fatal(err)
			}
		}
	}
	wave(1)
	spending := time.Now()
	early := waitFiring(t, prom, "StargazerLLMBudgetExhaustingEarly", jobs.ChannelSummarization, 60*time.Second)
	t.Logf("FIGURE 19,900 of 20,000 tokens spent in seconds: StargazerLLMBudgetExhaustingEarly fired %.1f s after the spending began (ledger metrics cached 10 s, scrape and evaluation every 1 s)",
		early.Sub(spending).Seconds())
	if isFiring(t, prom, "StargazerLLMTaskDeferred", jobs.ChannelSummarization) {
		t.Fatal("StargazerLLMTaskDeferred fires before the task is deferred")
	}

	wave(2)
	waveAt := time.Now()
	deferred := waitFiring(t, prom, "StargazerLLMTaskDeferred", jobs.ChannelSummarization, 60*time.Second)
	t.Logf("FIGURE StargazerLLMTaskDeferred fired %.1f s after the refused wave arrived", deferred.Sub(waveAt).Seconds())
	if n := len(fake.Calls()); n != 20 {
		t.Fatalf("%d LLM calls, want 20 (the second wave is deferred)", n)
	}
	// Ten intervals later the deferred task has not succeeded for five
	// times the alert's threshold, and still StargazerPeriodicTaskNotRun
	// does not fire for it: its wait is on purpose.
	time.Sleep(20 * time.Second)
	stale := queryScalar(t, prom, fmt.Sprintf(`time() - max(stargazer_task_last_success_timestamp_seconds{task=%q})`, jobs.ChannelSummarization))
	if stale < 4 {
		t.Fatalf("channel_summarization succeeded %.0f s ago: it should be held", stale)
	}
	if isFiring(t, prom, "StargazerPeriodicTaskNotRun", jobs.ChannelSummarization) {
		t.Errorf("StargazerPeriodicTaskNotRun fires for a deferred task (no success for %.0f s, interval 2 s)", stale)
	}
	if !isFiring(t, prom, "StargazerLLMTaskDeferred", jobs.ChannelSummarization) {
		t.Error("StargazerLLMTaskDeferred stopped firing while the task is still deferred")
	}
}
