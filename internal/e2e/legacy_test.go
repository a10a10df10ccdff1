package e2e

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/testkit/falkortest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/poll"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// A stand-in for the Python scheduler publishes scheduler_task_run events
// for kg_decay_task, as the original's BackgroundScheduler does, next to
// three Go workers that schedule it and publish their own events for every
// run: each Python run is counted once, the warning names the task and
// consolidation_main.py, the Go occurrences within the stand-down are
// skipped and the task runs again after it, and none of the Go workers'
// own events is taken for a Python run.
func TestPythonRunsAreDetectedOnceAndStandTheGoTaskDownWithoutFalseDetections(t *testing.T) {
	const interval = 4 * time.Second
	r := redistest.Start(t)
	fk := falkortest.Start(t)
	rdb := r.Client(t)
	ctx := context.Background()
	// kg_decay_task is due now rather than after its hour of initial delay.
	rdb.HSet(ctx, "sgjobs:schedule:"+jobs.KGDecay, "next_ms", time.Now().Add(2*time.Second).UnixMilli(),
		"interval_ms", interval.Milliseconds(), "created_ms", time.Now().UnixMilli())
	env := map[string]string{"FALKORDB_URL": fk.URL(), "TASK_INTERVALS": "kg_decay_task=4s,e2e_plain=1s,e2e_single=off"}
	var ws []*proc
	for range 3 {
		ws = append(ws, start(t, r.URL(), env))
	}
	okRuns := `stargazer_task_runs_total{status="ok",task="kg_decay_task"}`
	detected := `stargazer_legacy_runs_total{task="kg_decay_task"}`
	poll.Until(t, "kg_decay_task running twice in Go and e2e_plain ten times", func() bool {
		return sumMetric(ws, okRuns) >= 2 && len(runs(t, rdb, "e2e_plain")) >= 10
	})
	if n := sumMetric(ws, "stargazer_legacy_runs_total"); n != 0 {
		t.Fatalf("%v Python runs detected before the stand-in published any: the workers took their own events for Python runs", n)
	}

	// The Python side runs kg_decay_task twice: once from build_scheduler,
	// once from consolidation_main.py (registered there as "kg_decay").
	published := time.Now()
	for _, name := range []string{"kg_decay_task", "kg_decay"} {
		ev, _ := json.Marshal(map[string]any{"topic": "scheduler_task_run", "source": "scheduler", "status": "ok",
			"duration_ms": 120.5, "preview": "task=" + name + " status=ok", "payload": map[string]any{"task": name, "error": ""},
			"ts": float64(time.Now().UnixMicro()) / 1e6})
		if err := rdb.Publish(ctx, "stargazer:debug_events", ev).Err(); err != nil {
			t.Fatal(err)
		}
	}
	poll.Until(t, "both Python runs counted", func() bool { return sumMetric(ws, detected) == 2 })
	okAtDetection := sumMetric(ws, okRuns)
	var warnings []string
	for _, w := range ws {
		for line := range strings.SplitSeq(w.Logs(), "\n") {
			if strings.Contains(line, "the Python scheduler ran kg_decay_task too") {
				warnings = append(warnings, line)
			}
		}
	}
	if len(warnings) == 0 || len(warnings) > 2 || !strings.Contains(warnings[0], "consolidation_main.py") || !strings.Contains(warnings[0], `"level":"WARN"`) {
		t.Errorf("want one warning per Python run (repeats within a minute are counted, not logged), naming consolidation_main.py:\n%s", strings.Join(warnings, "\n"))
	}

	// The Go occurrences of the next 6 s (an interval and a half) stand
	// down: no Go run starts after the detection (one already running
	// may finish) until the stand-down ends.
	poll.Until(t, "a Go occurrence standing down", func() bool {
		return sumMetric(ws, `stargazer_task_stood_down_total{reason="legacy_run",task="kg_decay_task"}`) >= 1
	})
	time.Sleep(time.Until(published.Add(interval + interval/2 - 500*time.Millisecond)))
	if n := sumMetric(ws, okRuns); n > okAtDetection+1 {
		t.Errorf("kg_decay_task ran %v times in Go while the Python run stood it down", n-okAtDetection)
	}
	stoodDown := sumMetric(ws, `stargazer_task_stood_down_total{reason="legacy_run",task="kg_decay_task"}`)
	poll.Until(t, "kg_decay_task running in Go again after the stand-down", func() bool { return sumMetric(ws, okRuns) >= okAtDetection+2 })

	// Over the whole run, with every Go run publishing its event: only
	// the two Python runs were counted, each once.
	time.Sleep(2 * time.Second)
	if n := sumMetric(ws, "stargazer_legacy_runs_total"); n != 2 {
		t.Errorf("%v Python runs counted over all tasks and workers, want 2", n)
	}
	e2eRuns := len(runs(t, rdb, "e2e_plain"))
	figure(t, "3 workers, %d own runs published (e2e_plain) and %v of kg_decay_task: 2 Python runs counted once each, 0 false detections; %v Go occurrences stood down",
		e2eRuns, sumMetric(ws, okRuns), stoodDown)
}
