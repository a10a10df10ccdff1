package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/clients/llm/meter"
	"github.com/stargazer/stargazer-jobs/internal/kg/plan"
	"github.com/stargazer/stargazer-jobs/internal/spend"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// usageChat answers every call with u.
type usageChat struct{ u llm.Usage }

func (c usageChat) Chat(_ context.Context, r llm.Request) (*llm.Response, error) {
	return &llm.Response{Content: "ok", Model: r.Model, Usage: c.u}, nil
}

const flash = "google/gemini-2.5-flash"

// charge makes n calls of task through a ledger, as a worker would.
func charge(t *testing.T, l *spend.Ledger, task string, n int, r llm.Request) {
	t.Helper()
	m := meter.Chat(l, usageChat{u: llm.Usage{PromptTokens: 800, CompletionTokens: 200}}, time.Minute)
	for range n {
		if _, err := m.Chat(spend.WithTask(context.Background(), task), r); err != nil {
			t.Fatal(err)
		}
	}
	l.Wait()
}

func TestSpendShowsEachTasksSpendBesideItsBudgetAndState(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	env := map[string]string{"REDIS_URL": srv.URL(), "LLM_PRICES": flash + "=0.30/2.50",
		"LLM_BUDGETS": "channel_summarization=5k,anamnesis_digest=$1,*=1M"}
	if code, out, _ := runCLI(env, "spend"); code != exitOK || !strings.Contains(out, "channel_summarization") {
		t.Fatalf("no spend yet: %d %s", code, out)
	}
	l := spend.New(rdb, spend.Options{Prices: map[string]spend.Price{flash: {Prompt: 0.30, Completion: 2.50}},
		Budgets: map[string]spend.Limit{jobs.ChannelSummarization: spend.Tokens(5000)}})
	req := llm.Request{Model: flash, Purpose: "summary", Messages: []llm.Message{{Role: "user", Content: "hi"}}}
	charge(t, l, jobs.ChannelSummarization, 5, req)
	_, err := meter.Chat(l, usageChat{}, time.Minute).Chat(spend.WithTask(context.Background(), jobs.ChannelSummarization), req)
	r, ok := spend.AsRefusal(err)
	if !ok {
		t.Fatalf("sixth call: %v, want a refusal", err)
	}
	if _, err := l.Defer(context.Background(), r.Deferral(jobs.ChannelSummarization, "x", time.Now()), spend.Parked{}); err != nil {
		t.Fatal(err)
	}
	charge(t, l, jobs.KGExtractUnit, 1, llm.Request{Model: "local/unpriced", Messages: req.Messages})

	code, out, stderr := runCLI(env, "spend", "--json")
	if code != exitOK {
		t.Fatalf("exit %d %s", code, stderr)
	}
	var rep spendReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	tasks := map[string]spendTask{}
	for _, tk := range rep.Tasks {
		tasks[tk.Task] = tk
	}
	cs := tasks[jobs.ChannelSummarization]
	if cs.Calls != 5 || cs.Prompt != 4000 || cs.Completion != 1000 || cs.Budget == nil || cs.Budget.Unit != "tokens" ||
		*cs.Remaining != 0 || !strings.HasPrefix(cs.State, "deferred: budget until ") || len(cs.Models) != 1 {
		t.Errorf("channel_summarization %+v", cs)
	}
	// 5 × (800 × 0.30 + 200 × 2.50) / 1e6
	if usd := cs.USD; usd < 0.0036999 || usd > 0.0037001 {
		t.Errorf("channel_summarization cost $%v, want $0.0037", usd)
	}
	if ad := tasks[jobs.AnamnesisDigest]; ad.Budget == nil || ad.Budget.Unit != "usd" || *ad.Remaining != 1 || ad.State != "ok" {
		t.Errorf("anamnesis_digest %+v", ad)
	}
	if u := tasks[jobs.KGExtractUnit]; len(u.Models) != 1 || u.Models[0].Unpriced != 1 {
		t.Errorf("unpriced model: %+v", u)
	}
	if all := tasks[spend.Cluster]; all.Budget == nil || all.Calls != 6 || *all.UsedToday != 6000 {
		t.Errorf("cluster %+v", all)
	}
	code, out, _ = runCLI(env, "spend", "--wide")
	if code != exitOK || !strings.Contains(out, "deferred: budget until") || !strings.Contains(out, "unpriced") {
		t.Errorf("table:\n%s", out)
	}
	if code, _, stderr := runCLI(env, "spend", "--days", "0"); code != exitUsage || !strings.Contains(stderr, "--days") {
		t.Errorf("--days 0: %d %s", code, stderr)
	}
}

func TestBudgetSetRaisesABudgetAtRunTimeAndClearGoesBack(t *testing.T) {
	srv := redistest.Start(t)
	env := map[string]string{"REDIS_URL": srv.URL(), "LLM_BUDGETS": "channel_summarization=20k"}
	if code, out, stderr := runCLI(env, "budget", "set", "channel_summarization", "40k"); code != exitOK || !strings.Contains(out, "40000 tokens") {
		t.Fatalf("set: %d %s %s", code, out, stderr)
	}
	o, err := spend.Overrides(context.Background(), srv.Client(t))
	if err != nil || o[jobs.ChannelSummarization].Limit != spend.Tokens(40_000) {
		t.Fatalf("overrides %+v %v", o, err)
	}
	if code, out, _ := runCLI(env, "budget"); code != exitOK || !strings.Contains(out, "20000 tokens  40000 tokens  40000 tokens") {
		t.Fatalf("budget:\n%s", out)
	}
	for _, c := range []struct{ args, want string }{
		{"budget set kg_extract_unit 1M", "limbic_anchoring_worker or auto_kg_extraction"},
		{"budget set no_such_task 1M", "no task"},
		{"budget set kg_decay_task 1M", "makes no LLM call"},
		{"budget set channel_summarization 2G", "is not a number of tokens"},
	} {
		if code, _, stderr := runCLI(env, strings.Fields(c.args)...); code != exitUsage || !strings.Contains(stderr, c.want) {
			t.Errorf("%s: %d %s", c.args, code, stderr)
		}
	}
	if code, out, _ := runCLI(env, "budget", "clear", "channel_summarization"); code != exitOK || !strings.Contains(out, "LLM_BUDGETS applies again") {
		t.Fatalf("clear: %d %s", code, out)
	}
}

func TestBacklogCostForecastsTheBillOfACatchUp(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := context.Background()
	env := map[string]string{"REDIS_URL": srv.URL(), "LLM_PRICES": flash + "=0.30/2.50", "KG_EXTRACTION_MODEL": flash}
	if err := plan.New(rdb, jobs.LimbicAnchoringWorker, "sg:ka:cursor:").WriteBacklog(ctx, plan.Backlog{
		Updated: time.Now(), Sources: []plan.SourceBacklog{{Source: "discord:1", Pending: 10_000, Oldest: time.Now().Add(-time.Hour)}}}); err != nil {
		t.Fatal(err)
	}
	read := func() backlogCost {
		t.Helper()
		code, out, stderr := runCLI(env, "backlog", "--cost", "--json")
		var got []backlogEntry
		if code != exitOK || json.Unmarshal([]byte(out), &got) != nil || len(got) != 1 || got[0].Cost == nil {
			t.Fatalf("%d %s %s", code, out, stderr)
		}
		return *got[0].Cost
	}
	// Nothing measured: the engine's own estimate (~110 tokens a message).
	c := read()
	if c.Source != spend.SourceEngine || c.TokensPerMessage < 100 || c.TokensPerMessage > 120 || c.USD == nil {
		t.Fatalf("engine estimate %+v", c)
	}
	// Measured: 30 messages a call, 1,000 tokens a call.
	l := spend.New(rdb, spend.Options{})
	charge(t, l, jobs.LimbicAnchoringWorker, 3, llm.Request{Model: flash, Purpose: "extraction", Items: 30,
		Messages: []llm.Message{{Role: "user", Content: "x"}}})
	c = read()
	if c.Source != spend.SourceMeasured || c.MeasuredMessages != 90 || c.Tokens != 333_333 && c.Tokens != 333_334 {
		t.Fatalf("measured %+v", c)
	}
	// 10,000 × (800/30 × 0.30 + 200/30 × 2.50) / 1e6 = $0.2467
	if *c.USD < 0.2466 || *c.USD > 0.2467 {
		t.Fatalf("cost $%v", *c.USD)
	}
	if code, out, _ := runCLI(env, "backlog", "--cost"); code != exitOK || !strings.Contains(out, "measured over 90 msgs") {
		t.Fatalf("table:\n%s", out)
	}
}

func TestSchedulesAndStatusShowADeferredTask(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := context.Background()
	env := map[string]string{"REDIS_URL": srv.URL()}
	rdb.HSet(ctx, "sgjobs:schedule:"+jobs.ChannelSummarization, map[string]any{
		"next_ms": time.Now().Add(time.Hour).UnixMilli(), "interval_ms": 21_600_000,
		"last_enqueued_ms": time.Now().UnixMilli(), "last_task_id": "channel_summarization@1", "last_outcome": "enqueued",
	})
	until := spend.WindowEnd(time.Now())
	l := spend.New(rdb, spend.Options{})
	if _, err := l.Defer(ctx, spend.Deferral{Task: jobs.ChannelSummarization, Reason: spend.ReasonBudget, Scope: jobs.ChannelSummarization,
		Window: spend.Day(time.Now()), UntilMS: float64(until.UnixMilli()), SinceMS: float64(time.Now().UnixMilli())}, spend.Parked{}); err != nil {
		t.Fatal(err)
	}
	code, out, _ := runCLI(env, "schedules", "--json")
	var got []scheduleEntry
	if code != exitOK || json.Unmarshal([]byte(out), &got) != nil || len(got) != 1 || got[0].Deferred != "deferred: budget until "+until.Format(time.RFC3339) {
		t.Fatalf("%d %s", code, out)
	}
	if code, out, _ := runCLI(env, "schedules", "--wide"); code != exitOK || !strings.Contains(out, "deferred: budget until") {
		t.Fatalf("table:\n%s", out)
	}
}

func TestStatusNamesAParkedRunDeferred(t *testing.T) {
	for _, c := range []struct {
		ti   asynq.TaskInfo
		want string
	}{
		{asynq.TaskInfo{State: asynq.TaskStateRetry, LastErr: "deferred: budget until 2026-05-02T00:00:00Z: LLM call refused"}, "deferred: budget"},
		{asynq.TaskInfo{State: asynq.TaskStateRetry, LastErr: "deferred: kill_switch: LLM call refused"}, "deferred: kill_switch"},
		{asynq.TaskInfo{State: asynq.TaskStateRetry, LastErr: "upstream down"}, ""},
		{asynq.TaskInfo{State: asynq.TaskStatePending, LastErr: "deferred: budget until x"}, ""},
	} {
		got, _ := deferredState(&c.ti)
		if got != c.want {
			t.Errorf("%v %q: %q, want %q", c.ti.State, c.ti.LastErr, got, c.want)
		}
	}
	var b strings.Builder
	ti := asynq.TaskInfo{ID: "x", Type: jobs.KGExtractUnit, State: asynq.TaskStateRetry, LastErr: "deferred: budget until 2026-05-02T00:00:00Z: refused"}
	printStatus(&b, &ti)
	if !strings.Contains(b.String(), "state:       deferred: budget (waits in the retry set; no retry counted)") {
		t.Errorf("status:\n%s", b.String())
	}
}
