package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/clients/llm/llmtest"
	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
	"github.com/stargazer/stargazer-jobs/internal/spend"
	"github.com/stargazer/stargazer-jobs/internal/store/msgcache"
	"github.com/stargazer/stargazer-jobs/internal/testkit/falkortest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/jobs"
)

var (
	enqueuerOnce sync.Once
	enqueuerBin  string
	enqueuerErr  error
)

// enqueuer runs the enqueuer binary against redisURL and returns its
// output.
func enqueuer(t *testing.T, redisURL string, env map[string]string, args ...string) string {
	t.Helper()
	enqueuerOnce.Do(func() {
		enqueuerBin = filepath.Join(filepath.Dir(binary), "enqueuer")
		out, err := exec.Command("go", "build", "-o", enqueuerBin, "github.com/stargazer/stargazer-jobs/cmd/enqueuer").CombinedOutput()
		if err != nil {
			enqueuerErr = fmt.Errorf("building the enqueuer: %v\n%s", err, out)
		}
	})
	if enqueuerErr != nil {
		t.Fatal(enqueuerErr)
	}
	cmd := exec.Command(enqueuerBin, args...)
	cmd.Env = []string{"REDIS_URL=" + redisURL}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("enqueuer %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// channels seeds n channels with one new message each, newer than any
// before, and returns them.
func newMessages(t *testing.T, rdb *redis.Client, n, wave int) []msgcache.Channel {
	t.Helper()
	cache := msgcache.New(rdb)
	var out []msgcache.Channel
	for i := range n {
		c := msgcache.Channel{Platform: "discord", ID: fmt.Sprintf("3100000000000000%02d", i)}
		out = append(out, c)
		if _, _, err := cache.Log(context.Background(), msgcache.Message{Channel: c, MessageID: fmt.Sprintf("w%d-%d", wave, i),
			UserID: "u1", UserName: "ada", Text: fmt.Sprintf("wave %d in channel %d", wave, i), Time: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// summarised counts the channels whose summary covers wave's message.
func summarised(t *testing.T, rdb *redis.Client, cs []msgcache.Channel, since time.Time) int {
	t.Helper()
	n := 0
	for _, c := range cs {
		s, ok, err := msgcache.New(rdb).Summary(context.Background(), c)
		if err != nil {
			t.Fatal(err)
		}
		if ok && s.LastMessageTS >= since.UnixMilli() {
			n++
		}
	}
	return n
}

// awaitLLM polls cond every 100 ms for up to limit.
func awaitLLM(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ledgerTotal adds up the ledger's spent tokens of scope over days.
func ledgerTotal(t *testing.T, rdb *redis.Client, now time.Time, days int, scope string) (calls, prompt, completion int64) {
	t.Helper()
	ds, err := spend.ReadDays(context.Background(), rdb, now, days)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		for _, l := range d.Lines {
			if scope == spend.Cluster || l.Task == scope {
				calls += l.Calls
				prompt += l.Prompt
				completion += l.Completion
			}
		}
	}
	return calls, prompt, completion
}

// Three workers share one budget: channel_summarization=20k with a fake LLM
// reporting 1,000 tokens a call, and three waves of new messages in 20
// channels (60 calls). The first wave spends the budget exactly; the
// second is deferred to the next window (the workers' clock is moved to
// the next UTC day) and written then; the third is deferred again and
// written within a scheduler tick of a raised budget. No run is archived,
// retried or counted as failed.
func TestSpendBudgetDefersSummariesToTheNextWindowAcrossThreeWorkers(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := context.Background()
	fake := llmtest.NewServer(t)
	const perCall = 1000
	env := map[string]string{
		"LLM_BASE_URL": fake.BaseURL(), "LLM_BUDGETS": "channel_summarization=20k", "E2E_CLOCK": "1",
		"LLM_PRICES":     "google/gemini-2.5-flash=0.30/2.50",
		"TASK_INTERVALS": "channel_summarization=2s,channel_heartbeat=off,scheduled_prompt_tick=off,e2e_plain=off,e2e_single=off",
	}
	cs := newMessages(t, rdb, 20, 1)
	wave1 := time.Now().Add(-time.Second)
	// Due now rather than after the task's 10-minute initial delay.
	rdb.HSet(ctx, "sgjobs:schedule:"+jobs.ChannelSummarization, "next_ms", time.Now().UnixMilli(), "interval_ms", 2000)
	var ws []*proc
	for range 3 {
		ws = append(ws, start(t, srv.URL(), env))
	}

	// Wave 1: twenty calls, the whole budget.
	t.Cleanup(func() {
		if t.Failed() {
			for _, w := range ws {
				t.Logf("worker %d:\n%s", w.Pid(), w.Logs())
			}
		}
	})
	awaitLLM(t, "wave 1 summarised", time.Minute, func() bool { return summarised(t, rdb, cs, wave1) == 20 })
	if n := len(fake.Calls()); n != 20 {
		t.Fatalf("%d calls for wave 1, want 20", n)
	}

	// Wave 2: the first call is refused, the run deferred to the next day.
	wave2 := time.Now()
	newMessages(t, rdb, 20, 2)
	awaitLLM(t, "channel_summarization deferred", 30*time.Second, func() bool {
		ds, _ := spend.Deferrals(ctx, rdb)
		return len(ds) == 1 && ds[0].Task == jobs.ChannelSummarization && ds[0].Reason == spend.ReasonBudget
	})
	time.Sleep(5 * time.Second) // two intervals and more: the occurrences wait, held
	calls, prompt, completion := ledgerTotal(t, rdb, time.Now(), 1, jobs.ChannelSummarization)
	inFlight := int64(1) // a singleton calls one channel at a time
	if spent := prompt + completion; spent > 20_000+inFlight*perCall || calls != 20 || len(fake.Calls()) != 20 {
		t.Fatalf("day 1: %d calls reached the LLM, the ledger has %d calls and %d tokens: want 20 calls and at most 20k + %d in flight × 1,000",
			len(fake.Calls()), calls, spent, inFlight)
	}
	if n := summarised(t, rdb, cs, wave2); n != 0 {
		t.Fatalf("%d summaries of wave 2 written over the budget", n)
	}
	out := enqueuer(t, srv.URL(), env, "schedules", "--wide")
	if !strings.Contains(out, "channel_summarization") || !strings.Contains(out, "deferred: budget until") {
		t.Fatalf("enqueuer schedules does not show the deferral:\n%s", out)
	}
	out = enqueuer(t, srv.URL(), env, "spend", "--wide")
	if !strings.Contains(out, "deferred: budget until") || !strings.Contains(out, "20000") {
		t.Fatalf("enqueuer spend:\n%s", out)
	}
	stoodDown := sumMetric(ws, `stargazer_task_stood_down_total{reason="budget",task="channel_summarization"}`)
	deferredRuns := sumMetric(ws, `stargazer_task_runs_total{status="deferred",task="channel_summarization"}`)
	if stoodDown < 1 || deferredRuns < 1 || stoodDown > 2 {
		t.Fatalf("%v runs stood down, %v deferred: want the one that met the refusal (the scheduler holds the next ones)", stoodDown, deferredRuns)
	}
	if g := sumMetric(ws[:1], `stargazer_llm_deferred{reason="budget",task="channel_summarization"}`); g != 1 {
		t.Errorf("stargazer_llm_deferred = %v, want 1", g)
	}

	// The next UTC day: the deferral lifts and wave 2 is written.
	now := time.Now()
	offset := spend.WindowEnd(now).Sub(now) + time.Second
	rdb.Set(ctx, "e2e:clock:offset_ms", offset.Milliseconds(), 0)
	nextDay := now.Add(offset)
	awaitLLM(t, "wave 2 summarised on the next day", 30*time.Second, func() bool { return summarised(t, rdb, cs, wave2) == 20 })
	if n := len(fake.Calls()); n != 40 {
		t.Fatalf("%d calls after wave 2, want 40", n)
	}

	// Wave 3: deferred again (the new day's budget is spent), then the
	// budget is raised at run time.
	wave3 := time.Now()
	newMessages(t, rdb, 20, 3)
	awaitLLM(t, "deferred again", 30*time.Second, func() bool {
		ds, _ := spend.Deferrals(ctx, rdb)
		return len(ds) == 1
	})
	time.Sleep(3 * time.Second)
	if n := len(fake.Calls()); n != 40 {
		t.Fatalf("%d calls while deferred on day 2, want 40", n)
	}
	raised := time.Now()
	enqueuer(t, srv.URL(), env, "budget", "set", "channel_summarization", "40k")
	awaitLLM(t, "a call after the raise", 10*time.Second, func() bool { return len(fake.Calls()) > 40 })
	resumed := time.Since(raised)
	t.Logf("FIGURE resumed %.2f s after enqueuer budget set (scheduler tick 1 s)", resumed.Seconds())
	if resumed > 3*time.Second { // one tick (1 s plus jitter), the enqueue, the fetch; margin for a loaded machine
		t.Errorf("resumed %v after the raise, want within one scheduler tick", resumed)
	}
	awaitLLM(t, "wave 3 summarised", 30*time.Second, func() bool { return summarised(t, rdb, cs, wave3) == 20 })

	// Exactly what the fake reported is in the ledger: 60 calls, 60k
	// tokens, 20k on the first day and 40k on the second.
	reported, u := fake.Reported()
	calls, prompt, completion = ledgerTotal(t, rdb, nextDay, 2, jobs.ChannelSummarization)
	if reported != 60 || calls != 60 || prompt != int64(u.PromptTokens) || completion != int64(u.CompletionTokens) {
		t.Fatalf("fake reported %d calls %+v; ledger %d calls, %d prompt, %d completion", reported, u, calls, prompt, completion)
	}
	if _, p1, c1 := ledgerTotal(t, rdb, now, 1, jobs.ChannelSummarization); p1+c1 != 20_000 {
		t.Errorf("day 1 spent %d tokens, want 20k", p1+c1)
	}
	// Nothing archived, retried or failed.
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: srv.Addr})
	defer insp.Close()
	q, err := insp.GetQueueInfo(jobs.QueueDefault)
	if err != nil || q.Archived != 0 || q.Retry != 0 || q.Failed != 0 {
		t.Fatalf("default queue %+v (%v): want nothing archived, retrying or failed", q, err)
	}
	for _, m := range []string{
		`stargazer_task_crashes_total{class="error",task="channel_summarization"}`,
		`stargazer_task_archived_total{task="channel_summarization"}`,
		`stargazer_task_runs_total{status="error",task="channel_summarization"}`,
	} {
		if n := sumMetric(ws, m); n != 0 {
			t.Errorf("%s = %v", m, n)
		}
	}
}

// Exactly-once charging across a crash: a worker is SIGKILLed while one of
// its calls is in flight, its run is redelivered to another worker, which
// makes the remaining calls. Every call the fake reported (each with a
// different usage) is in the ledger once; the killed call, which reported
// nothing, is charged nothing; no call is charged twice.
func TestSpendChargesEachCallOnceAcrossAKilledWorker(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := context.Background()
	fake := llmtest.NewServer(t)
	fake.SetUsage(func(n int) llm.Usage {
		return llm.Usage{PromptTokens: 1000 + n, CompletionTokens: 10 * n, TotalTokens: 1000 + 11*n}
	})
	fake.Hold(func(n int) bool { return n == 4 })
	env := map[string]string{
		"LLM_BASE_URL":   fake.BaseURL(),
		"TASK_INTERVALS": "channel_summarization=1h,channel_heartbeat=off,scheduled_prompt_tick=off,e2e_plain=off,e2e_single=off",
	}
	cs := newMessages(t, rdb, 10, 1)
	since := time.Now().Add(-time.Second)
	rdb.HSet(ctx, "sgjobs:schedule:"+jobs.ChannelSummarization, "next_ms", time.Now().UnixMilli(), "interval_ms", time.Hour.Milliseconds())
	a := start(t, srv.URL(), env)
	select {
	case <-fake.Held():
	case <-time.After(30 * time.Second):
		t.Fatalf("no fourth call:\n%s", a.Logs())
	}
	b := start(t, srv.URL(), env)
	killed := time.Now()
	a.Kill() // mid-call: the fourth call is in flight
	fake.Hold(nil)
	fake.Release()
	awaitLLM(t, "the redelivered run summarising the rest", 3*time.Minute, func() bool { return summarised(t, rdb, cs, since) == 10 })
	t.Logf("FIGURE redelivered and finished %.1f s after the SIGKILL", time.Since(killed).Seconds())

	reported, u := fake.Reported()
	calls, prompt, completion := ledgerTotal(t, rdb, time.Now(), 1, jobs.ChannelSummarization)
	t.Logf("fake: %d calls received, %d reported (%+v); ledger: %d calls, %d prompt, %d completion",
		len(fake.Calls()), reported, u, calls, prompt, completion)
	if reported != 10 || len(fake.Calls()) != 11 {
		t.Fatalf("fake received %d calls and reported %d: want 11 and 10 (the killed call reported nothing)", len(fake.Calls()), reported)
	}
	if calls != int64(reported) || prompt != int64(u.PromptTokens) || completion != int64(u.CompletionTokens) {
		t.Fatalf("ledger %d calls / %d prompt / %d completion, fake reported %d / %d / %d", calls, prompt, completion,
			reported, u.PromptTokens, u.CompletionTokens)
	}
	// The killed call's reservation is still held (it lapses at its lease's
	// end, uncharged): it is no spend.
	ds, _ := spend.ReadDays(ctx, rdb, time.Now(), 1)
	tot := ds[0].Totals[jobs.ChannelSummarization]
	if tot.SpentTokens != prompt+completion {
		t.Fatalf("spent %d, want %d", tot.SpentTokens, prompt+completion)
	}
	t.Logf("reserved by the killed call until its lease ends: %d tokens", tot.HeldTokens)
	b.term()
}

// seedGraph writes a near-duplicate pair for limbic_dedup_task to judge
// and a hub of six neighbours for limbic_org_task to organise: each pass
// makes one LLM call.
func seedGraph(t *testing.T, g *graph.Graph) {
	t.Helper()
	seen := time.Now().UnixMilli()
	for _, n := range []string{"New York City", "New York Cty", "Alice", "Bob", "Carol", "Dave", "Paris", "Rome", "Zed"} {
		falkortest.Exec(t, g, `CREATE (:Entity {key: $k, name: $n, normalized_name: $nn, type: 'thing', mention_count: 2, first_seen: $s, last_seen: $s})`,
			map[string]any{"k": graph.EntityKey(n, "thing"), "n": n, "nn": graph.NormalizeName(n), "s": seen})
	}
	for _, l := range [][2]string{{"Alice", "Bob"}, {"Alice", "Carol"}, {"Alice", "Dave"}, {"Alice", "Paris"}, {"Rome", "Alice"}, {"Alice", "Zed"}} {
		falkortest.Exec(t, g, `MATCH (a:Entity {key: $a}), (b:Entity {key: $b}) CREATE (a)-[:REL {type: 'knows', weight: 1.0, last_seen: 1}]->(b)`,
			map[string]any{"a": graph.EntityKey(l[0], "thing"), "b": graph.EntityKey(l[1], "thing")})
	}
}

// With the chat-LLM kill switch off, limbic_dedup_task and limbic_org_task
// (which are not chat-LLM tasks, and so not stood down at start) end their
// run at the first refused call: one attempt each, no retry, no failure;
// the scheduler holds them while the switch is off, and they run normally
// within a tick of it coming back on. (Before, each run was retried up to
// SupervisedMaxRetry, 1,446 times, failing with "the chat-LLM kill switch
// is off".)
func TestKillSwitchEndsDedupAndOrgAtTheirFirstRefusal(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := context.Background()
	fk := falkortest.Start(t)
	seedGraph(t, graph.New(fk.Client(t), "stargazer"))
	fake := llmtest.NewServer(t)
	fake.SetContent(`{"verdicts":[],"categories":[]}`)
	rdb.Set(ctx, "sg:switch:chat_llm", "off", 0)
	env := map[string]string{
		"LLM_BASE_URL": fake.BaseURL(), "FALKORDB_URL": fk.URL(),
		"KA_DEDUP_INTERVAL_SECONDS": "2", "KA_ORG_INTERVAL_SECONDS": "2", "KA_ORG_HUB_DEGREE_THRESHOLD": "6",
		"TASK_INTERVALS": "channel_summarization=off,channel_heartbeat=off,scheduled_prompt_tick=off,kg_consolidation_task=off,kg_decay_task=off,e2e_plain=off,e2e_single=off",
	}
	w := start(t, srv.URL(), env)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("worker:\n%s", w.Logs())
		}
	})
	tasks := []string{jobs.LimbicDedup, jobs.LimbicOrg}
	awaitLLM(t, "dedup and org deferred by the switch", time.Minute, func() bool {
		ds, _ := spend.Deferrals(ctx, rdb)
		n := 0
		for _, d := range ds {
			if d.Reason == spend.ReasonKillSwitch {
				n++
			}
		}
		return n == 2
	})
	time.Sleep(8 * time.Second) // four intervals
	for _, task := range tasks {
		m := func(s string) float64 { return w.Metric(fmt.Sprintf(s, task)) }
		if n := m(`stargazer_task_starts_total{task=%q}`); n != 1 {
			t.Errorf("%s started %v times with the switch off, want one attempt", task, n)
		}
		if n := m(`stargazer_task_runs_total{status="deferred",task=%q}`); n != 1 {
			t.Errorf("%s: %v deferred runs, want 1", task, n)
		}
		if n := m(`stargazer_task_stood_down_total{reason="kill_switch",task=%q}`); n != 1 {
			t.Errorf("%s stood down %v times, want 1", task, n)
		}
		if n := m(`stargazer_task_runs_total{status="error",task=%q}`) + m(`stargazer_task_archived_total{task=%q}`); n != 0 {
			t.Errorf("%s: %v failed or archived runs", task, n)
		}
	}
	if n := len(fake.Calls()); n != 0 {
		t.Fatalf("%d LLM calls with the switch off", n)
	}
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: srv.Addr})
	defer insp.Close()
	if q, err := insp.GetQueueInfo(jobs.QueueMaintenance); err != nil || q.Retry != 0 || q.Archived != 0 || q.Failed != 0 {
		t.Fatalf("maintenance queue %+v (%v): want no retry, archive or failure", q, err)
	}

	rdb.Del(ctx, "sg:switch:chat_llm")
	on := time.Now()
	for _, task := range tasks {
		awaitLLM(t, task+" running once the switch is back on", 30*time.Second, func() bool {
			return w.Metric(fmt.Sprintf(`stargazer_task_runs_total{status="ok",task=%q}`, task)) >= 1
		})
	}
	t.Logf("FIGURE dedup and org ran normally %.1f s after the switch came back on", time.Since(on).Seconds())
	if n := len(fake.Calls()); n < 2 {
		t.Fatalf("%d LLM calls once the switch is on, want dedup's and org's", n)
	}
}

// A malformed LLM_PRICES or LLM_BUDGETS entry stops the worker at startup
// with a message naming the setting and the entry; a model without a price
// is named in a warning.
func TestMalformedPricesOrBudgetsStopStartupAndUnpricedModelsWarn(t *testing.T) {
	srv := redistest.Start(t)
	for _, c := range []struct{ env, value, want string }{
		{"LLM_BUDGETS", "channel_summarization=2M,anamnesis_digest=$0.5x", `entry "anamnesis_digest=$0.5x"`},
		{"LLM_BUDGETS", "channel_sumarization=2M", `entry "channel_sumarization=2M": no task "channel_sumarization" in the catalog`},
		{"LLM_BUDGETS", "kg_extract_unit=2M", `entry "kg_extract_unit=2M": kg_extract_unit's calls count against its parent's budget`},
		{"LLM_PRICES", "google/gemini-2.5-flash=0.30", `entry "google/gemini-2.5-flash=0.30" is not MODEL=PROMPT/COMPLETION`},
	} {
		cmd := exec.Command(binary)
		cmd.Env = []string{"REDIS_URL=" + srv.URL(), "HTTP_ADDR=" + redistest.FreeAddr(t), c.env + "=" + c.value}
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), c.env) || !strings.Contains(string(out), c.want) {
			t.Errorf("%s=%s: exit %v, output:\n%s\nwant the setting and %s", c.env, c.value, err, out, c.want)
		}
	}
	w := start(t, srv.URL(), map[string]string{"LLM_BASE_URL": "http://127.0.0.1:9/v1",
		"LLM_PRICES": "google/gemini-2.5-flash=0.30/2.50", "TASK_INTERVALS": "e2e_plain=off,e2e_single=off"})
	if !strings.Contains(w.Logs(), "LLM models without a price in LLM_PRICES") || !strings.Contains(w.Logs(), "google/gemini-2.5-flash-lite") {
		t.Fatalf("no warning naming the unpriced models:\n%s", w.Logs())
	}
	w.term()
}
