package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/queue/legacy"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// status (without an ID) and schedules show the coexistence with the
// Python side: its supervisor's lease, the cut-over window and the Python
// runs of tasks the Go side schedules.
func TestStatusAndSchedulesShowThePythonSchedulersRuns(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := context.Background()
	env := map[string]string{"REDIS_URL": srv.URL()}
	now := time.Now()
	rdb.Set(ctx, "sg:leader:supervisor", "python-node-1", time.Minute)
	if _, err := legacy.StartWindow(ctx, rdb, now.Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	rdb.HSet(ctx, "sgjobs:schedule:"+jobs.KGDecay, map[string]any{
		"next_ms": now.Add(time.Hour).UnixMilli(), "interval_ms": 86_400_000,
		"last_enqueued_ms": now.Add(-time.Hour).UnixMilli(), "last_task_id": "kg_decay_task@1", "last_outcome": "enqueued",
	})
	d := &legacy.Detector{Redis: rdb, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Window: 720 * time.Hour,
		Schedules: map[string]legacy.Schedule{jobs.KGDecay: {Interval: 24 * time.Hour, Queued: true}}}
	ev, _ := json.Marshal(map[string]any{"topic": "scheduler_task_run", "source": "scheduler", "status": "ok", "duration_ms": 1500.0,
		"payload": map[string]any{"task": "kg_decay", "error": ""}, "ts": float64(now.Add(-2*time.Minute).UnixMicro()) / 1e6})
	if !d.Handle(ctx, ev) {
		t.Fatal("the Python run was not counted")
	}
	journal, _ := json.Marshal(map[string]any{"topic": "scheduler_task_run", "source": "scheduler", "status": "ok",
		"payload": map[string]any{"task": jobs.JournalStream, "error": ""}, "ts": float64(now.Add(-3*time.Minute).UnixMicro()) / 1e6})
	if d.Handle(ctx, journal) {
		t.Fatal("a node-local task's Python run was counted")
	}

	code, out, stderr := runBinary(t, env, "status")
	for _, want := range []string{"held by python-node-1", "limbic_dedup_task and limbic_org_task stand down", "cut-over window:",
		"kg_decay_task", "2m ago", "build_scheduler, consolidation_main.py (as kg_decay)",
		"node-local journal_stream: the Python side last ran it 3m ago (not counted"} {
		if code != exitOK || !strings.Contains(out, want) {
			t.Errorf("status: exit %d, output lacks %q:\n%s%s", code, want, out, stderr)
		}
	}
	var st cutoverStatus
	if _, js, _ := runBinary(t, env, "status", "--json"); json.Unmarshal([]byte(js), &st) != nil ||
		len(st.PythonRuns) != 1 || st.PythonRuns[0].Runs != 1 || st.PythonRuns[0].StandDownUntil == nil || st.LeaderHolder != "python-node-1" {
		t.Errorf("status --json: %s", js)
	}
	code, out, _ = runBinary(t, env, "schedules", "--wide")
	if code != exitOK || !strings.Contains(out, "PYTHON RAN IT 2m ago, stands down for") {
		t.Errorf("schedules: exit %d:\n%s", code, out)
	}
	var es []scheduleEntry
	if _, js, _ := runBinary(t, env, "schedules", "--json"); json.Unmarshal([]byte(js), &es) != nil || len(es) != 1 ||
		es[0].PythonRuns == nil || es[0].PythonRuns.Runs != 1 {
		t.Errorf("schedules --json: %s", js)
	}
	if _, out, _ := runBinary(t, map[string]string{"REDIS_URL": srv.URL(), "LEGACY_COEXISTENCE": "false"}, "status"); !strings.Contains(out, "LEGACY_COEXISTENCE=false") {
		t.Errorf("status with no coexistence:\n%s", out)
	}
}
