package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/app"
	"github.com/stargazer/stargazer-jobs/internal/testkit/original"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/jobs"
)

func runCLI(env map[string]string, args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := run(context.Background(), args, func(k string) string { return env[k] }, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestListJSONMatchesTheOriginalModule(t *testing.T) {
	code, out, stderr := runCLI(nil, "list", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var entries []catalogEntry
	if err := json.Unmarshal([]byte(out), &entries); err != nil {
		t.Fatal(err)
	}
	byName := map[string]catalogEntry{}
	for _, e := range entries {
		byName[e.Name] = e
	}
	orig, err := original.Tasks()
	if err != nil {
		t.Fatal(err)
	}
	rename := map[string]string{"openrouter": "llm", "bot_runner": "bot_runtime"}
	for _, o := range orig {
		e, ok := byName[o.Name]
		if !ok {
			t.Errorf("list lacks %s", o.Name)
			continue
		}
		if e.IntervalSeconds != o.Interval.Seconds() || e.InitialDelaySeconds != o.InitialDelay.Seconds() {
			t.Errorf("%s: interval %v / delay %v, original %v / %v", o.Name, e.IntervalSeconds, e.InitialDelaySeconds, o.Interval.Seconds(), o.InitialDelay.Seconds())
		}
		want := map[string]bool{}
		for _, r := range o.Requires {
			if n, ok := rename[r]; ok {
				r = n
			}
			want[r] = true
		}
		if len(want) != len(e.Requires) {
			t.Errorf("%s: requires %v, original %v", o.Name, e.Requires, o.Requires)
		}
		for _, r := range e.Requires {
			if !want[r] {
				t.Errorf("%s: requires %v, original %v", o.Name, e.Requires, o.Requires)
			}
		}
		if (e.OptInFlag == nil) != (o.OptIn == "") || (e.OptInFlag != nil && *e.OptInFlag != o.OptIn) {
			t.Errorf("%s: opt-in %v, original %q", o.Name, e.OptInFlag, o.OptIn)
		}
		if !e.Scheduled && e.SkipReason == "" {
			t.Errorf("%s: skipped without a reason", o.Name)
		}
	}
	if len(entries) != len(jobs.Catalog()) {
		t.Errorf("%d entries, want %d", len(entries), len(jobs.Catalog()))
	}
	for _, name := range []string{jobs.LimbicDedup, jobs.LimbicOrg, jobs.StartupChannelBackfill, jobs.ChannelHeartbeatChannel, jobs.EmbedMessages} {
		if _, ok := byName[name]; !ok {
			t.Errorf("list lacks %s", name)
		}
	}
}

func TestListReflectsConfiguration(t *testing.T) {
	_, out, _ := runCLI(map[string]string{"BACKGROUND_SCHEDULER_CHAT_LLM_ENABLED": "false"}, "list", "--wide")
	if !strings.Contains(out, "scheduled_prompt_cleanup") || !strings.Contains(out, "CHAT_LLM_ENABLED=false") {
		t.Errorf("table output:\n%s", out)
	}
}

func TestRunEnqueuesAValidatedTask(t *testing.T) {
	srv := redistest.Start(t)
	env := map[string]string{"REDIS_URL": srv.URL()}
	code, out, stderr := runCLI(env, "run", jobs.ScheduledPromptCleanup, "--payload", `{"days_to_keep": 3}`)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: srv.Addr})
	defer insp.Close()
	info, err := insp.GetTaskInfo(jobs.QueueMaintenance, strings.TrimSpace(out))
	if err != nil {
		t.Fatal(err)
	}
	if info.Type != jobs.ScheduledPromptCleanup || string(info.Payload) != `{"days_to_keep":3}` || info.State != asynq.TaskStatePending {
		t.Errorf("enqueued %+v", info)
	}
}

func TestRunRefusesBadInputWithAClearMessage(t *testing.T) {
	srv := redistest.Start(t)
	tests := []struct {
		name string
		env  map[string]string
		args []string
		code int
		msg  string
	}{
		{"unknown task", map[string]string{"REDIS_URL": srv.URL()}, []string{"run", "nope"}, exitUsage, `unknown task "nope"`},
		{"bad payload", map[string]string{"REDIS_URL": srv.URL()}, []string{"run", jobs.ScheduledPromptTick, "--payload", `{"limit":"x"}`}, exitUsage, "invalid payload"},
		{"unknown field", map[string]string{"REDIS_URL": srv.URL()}, []string{"run", jobs.KGDecay, "--payload", `{"force":true}`}, exitUsage, "unknown field"},
		{"no task name", map[string]string{"REDIS_URL": srv.URL()}, []string{"run"}, exitUsage, "accepts 1 arg(s), received 0"},
		{"timeout of zero", map[string]string{"REDIS_URL": srv.URL()}, []string{"run", jobs.KGDecay, "--timeout", "0s"}, exitUsage, "timeout 0s: must be between 1s and 24h"},
		{"timeout under a second", map[string]string{"REDIS_URL": srv.URL()}, []string{"run", jobs.KGDecay, "--timeout", "999ms"}, exitUsage, "timeout 999ms: must be between 1s"},
		{"unique of zero", map[string]string{"REDIS_URL": srv.URL()}, []string{"run", jobs.KGDecay, "--unique", "0"}, exitUsage, "unique 0s: must be between 1s"},
		{"duplicate payload key", map[string]string{"REDIS_URL": srv.URL()}, []string{"run", jobs.ScheduledPromptCleanup, "--payload", `{"days_to_keep":3,"days_to_keep":3650}`}, exitUsage, `duplicate key "days_to_keep" in payload`},
		{"unreachable redis", map[string]string{"REDIS_URL": "redis://127.0.0.1:1"}, []string{"run", jobs.KGDecay}, exitFailure, "unreachable"},
		{"no redis configured", nil, []string{"run", jobs.KGDecay}, exitUsage, "REDIS_URL is not set"},
		{"bad config", map[string]string{"KA_ENABLED": "sometimes"}, []string{"list"}, exitUsage, "KA_ENABLED"},
		{"unknown command", nil, []string{"frobnicate"}, exitUsage, "unknown command"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := runCLI(tt.env, tt.args...)
			if code != tt.code || !strings.Contains(stderr, tt.msg) {
				t.Errorf("exit %d, stderr %q; want exit %d mentioning %q", code, stderr, tt.code, tt.msg)
			}
			if strings.Contains(stderr, "goroutine ") {
				t.Errorf("stack trace in output: %s", stderr)
			}
		})
	}
}

func TestTwoEnqueuersRacingASingletonOneIsRefused(t *testing.T) {
	srv := redistest.Start(t)
	env := map[string]string{"REDIS_URL": srv.URL()}
	type result struct {
		code   int
		stderr string
	}
	results := make(chan result, 2)
	for range 2 {
		go func() {
			code, _, stderr := runCLI(env, "run", jobs.KGDecay)
			results <- result{code, stderr}
		}()
	}
	a, b := <-results, <-results
	if a.code == exitOK == (b.code == exitOK) {
		t.Fatalf("exit codes %d and %d: want exactly one success (%q %q)", a.code, b.code, a.stderr, b.stderr)
	}
	refused := a
	if a.code == exitOK {
		refused = b
	}
	if refused.code != exitFailure || !strings.Contains(refused.stderr, "refused") || !strings.Contains(refused.stderr, "singleton") {
		t.Errorf("refusal: exit %d %q", refused.code, refused.stderr)
	}

	// The operator sees the lock and can force-release it.
	code, out, _ := runCLI(env, "locks")
	if code != exitOK || !strings.Contains(out, jobs.KGDecay) || !strings.Contains(out, "enqueue lock") {
		t.Fatalf("locks: exit %d\n%s", code, out)
	}
	if code, out, _ := runCLI(env, "unlock", jobs.KGDecay); code != exitOK || !strings.Contains(out, "released 1 lock") {
		t.Fatalf("unlock: exit %d %s", code, out)
	}
	if code, _, stderr := runCLI(env, "run", jobs.KGDecay); code != exitOK {
		t.Fatalf("run after unlock: exit %d %s", code, stderr)
	}
	if code, _, stderr := runCLI(env, "unlock", jobs.ScheduledPromptTick); code != exitUsage || !strings.Contains(stderr, "not a singleton") {
		t.Errorf("unlock of a non-singleton: exit %d %s", code, stderr)
	}
}

func TestSchedulesShowsNextAndLastRun(t *testing.T) {
	srv := redistest.Start(t)
	env := map[string]string{"REDIS_URL": srv.URL()}
	if code, out, _ := runCLI(env, "schedules"); code != exitOK || !strings.Contains(out, "no schedules yet") {
		t.Fatalf("empty schedules: %d %s", code, out)
	}
	rdb := srv.Client(t)
	ctx := context.Background()
	rdb.HSet(ctx, "sgjobs:schedule:"+jobs.ScheduledPromptTick, map[string]any{
		"next_ms": time.Now().Add(time.Minute).UnixMilli(), "interval_ms": 60000,
		"last_enqueued_ms": time.Now().UnixMilli(), "last_task_id": "scheduled_prompt_tick@1", "last_outcome": "enqueued",
	})
	code, out, stderr := runCLI(env, "schedules", "--json")
	if code != exitOK {
		t.Fatalf("exit %d %s", code, stderr)
	}
	var got []scheduleEntry
	if err := json.Unmarshal([]byte(out), &got); err != nil || len(got) != 1 {
		t.Fatalf("%v %s", err, out)
	}
	if got[0].Name != jobs.ScheduledPromptTick || got[0].Next == nil || got[0].LastRun == nil || got[0].Interval != 60 || got[0].LastStatus != "gone" {
		t.Errorf("schedule %+v", got[0])
	}
	if code, out, _ := runCLI(env, "schedules"); code != exitOK || !strings.Contains(out, "scheduled_prompt_tick") {
		t.Errorf("table: %s", out)
	}
}

// startWorker runs a real worker (no scheduler) against srv until cleanup.
func startWorker(t *testing.T, srv *redistest.Server) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	env := map[string]string{"REDIS_URL": srv.URL(), "SCHEDULER_ENABLED": "false", "HTTP_ADDR": redistest.FreeAddr(t), "PROBE_ADDR": redistest.FreeAddr(t), "SHUTDOWN_TIMEOUT": "2s"}
	go func() {
		done <- app.Run(ctx, app.Params{Getenv: func(k string) string { return env[k] }, Stdout: io.Discard, Stderr: io.Discard})
	}()
	t.Cleanup(func() { cancel(); <-done })
}

func TestRunWaitReportsSuccessAndFailure(t *testing.T) {
	srv := redistest.Start(t)
	startWorker(t, srv)
	env := map[string]string{"REDIS_URL": srv.URL()}

	code, out, stderr := runCLI(env, "run", jobs.ScheduledPromptCleanup, "--payload", `{"days_to_keep":2}`, "--wait", "--wait-timeout", "30s")
	if code != exitOK || !strings.Contains(out, "state:       completed") || !strings.Contains(out, `result:      {"days_to_keep":2,"deleted":0}`) {
		t.Fatalf("wait on success: exit %d\n%s%s", code, out, stderr)
	}
	// kg_decay_task has no handler on a worker without FALKORDB_URL: it fails for good.
	code, out, stderr = runCLI(env, "run", jobs.KGDecay, "--max-retry", "0", "--wait", "--wait-timeout", "30s")
	if code != exitFailure || !strings.Contains(out, "state:       archived") || !strings.Contains(out, "handler not found") {
		t.Fatalf("wait on failure: exit %d\n%s%s", code, out, stderr)
	}
	id := strings.Fields(out)[0]
	code, out, _ = runCLI(env, "status", id)
	if code != exitOK || !strings.Contains(out, "archived") || !strings.Contains(out, "retried:     0 of 0") {
		t.Errorf("status: exit %d\n%s", code, out)
	}
	if code, _, stderr := runCLI(env, "status", "no-such-id"); code != exitFailure || !strings.Contains(stderr, "no task") {
		t.Errorf("status of unknown id: exit %d %s", code, stderr)
	}
}

func TestRunFlagsShapeTheTask(t *testing.T) {
	srv := redistest.Start(t)
	env := map[string]string{"REDIS_URL": srv.URL()}
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: srv.Addr})
	defer insp.Close()
	code, out, stderr := runCLI(env, "run", jobs.ScheduledPromptTick, "--queue", "default", "--in", "1h", "--max-retry", "7", "--timeout", "30s", "--unique", "2h")
	if code != exitOK {
		t.Fatalf("exit %d %s", code, stderr)
	}
	ti, err := insp.GetTaskInfo("default", strings.TrimSpace(out))
	if err != nil {
		t.Fatal(err)
	}
	if ti.State != asynq.TaskStateScheduled || ti.MaxRetry != 7 || ti.Timeout != 30*time.Second || time.Until(ti.NextProcessAt) < 59*time.Minute {
		t.Errorf("task %+v", ti)
	}
	if code, _, stderr := runCLI(env, "run", jobs.ScheduledPromptTick, "--queue", "default", "--in", "1h", "--unique", "2h"); code != exitFailure || !strings.Contains(stderr, "refused") {
		t.Errorf("duplicate with --unique: exit %d %s", code, stderr)
	}
	at := time.Now().Add(2 * time.Hour).UTC().Format(time.RFC3339)
	if code, _, stderr := runCLI(env, "run", jobs.ScheduledPromptCleanup, "--at", at); code != exitOK {
		t.Errorf("--at: exit %d %s", code, stderr)
	}
	for _, bad := range [][]string{
		{"run", jobs.KGDecay, "--in", "soon"},
		{"run", jobs.KGDecay, "--at", "tomorrow"},
		{"run", jobs.KGDecay, "--at", "2001-01-01T00:00:00Z"},
		{"run", jobs.KGDecay, "--queue", "fast"},
		{"run", jobs.KGDecay, "--max-retry", "-1"},
		{"run", jobs.JournalStream},
	} {
		if code, _, stderr := runCLI(env, bad...); code != exitUsage {
			t.Errorf("%v: exit %d %s, want %d", bad, code, stderr, exitUsage)
		}
	}
}

func TestPromptsAddListCancel(t *testing.T) {
	srv := redistest.Start(t)
	env := map[string]string{"REDIS_URL": srv.URL()}
	code, out, stderr := runCLI(env, "prompts", "add", "--platform", "discord", "--channel", "42", "--user", "u1", "--text", "stand-up", "--in", "1h", "--every", "24h")
	if code != exitOK {
		t.Fatalf("add: exit %d %s", code, stderr)
	}
	id := strings.TrimSpace(out)
	code, out, _ = runCLI(env, "prompts", "list", "--json")
	var ps []promptJSON
	if err := json.Unmarshal([]byte(out), &ps); err != nil || code != exitOK || len(ps) != 1 || ps[0].ID != id || ps[0].Interval != 86400 {
		t.Fatalf("list: %d %v %s", code, err, out)
	}
	if code, out, _ := runCLI(env, "prompts", "list"); code != exitOK || !strings.Contains(out, "stand-up") {
		t.Errorf("list table: %s", out)
	}
	if code, out, _ := runCLI(env, "prompts", "cancel", id); code != exitOK || !strings.Contains(out, "cancelled") {
		t.Errorf("cancel: %d %s", code, out)
	}
	if code, _, stderr := runCLI(env, "prompts", "cancel", id); code != exitFailure || !strings.Contains(stderr, "no longer pending") {
		t.Errorf("second cancel: %d %s", code, stderr)
	}
	if code, _, stderr := runCLI(env, "prompts", "add", "--platform", "discord", "--text", "x", "--in", "1m"); code != exitUsage || !strings.Contains(stderr, "channel_id is required") {
		t.Errorf("invalid add: %d %s", code, stderr)
	}
}
