package deploy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/app"
	"github.com/stargazer/stargazer-jobs/internal/testkit/falkortest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/poll"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/syncbuf"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// TestRealPrometheusFiresTheLegacySchedulerAlert runs the distribution's
// Prometheus against a real worker that schedules kg_decay_task (a
// FalkorDB is configured): a stand-in for the Python scheduler publishes
// the original's scheduler_task_run event for it on the debug channel, and
// StargazerLegacySchedulerStillRuns fires for the task.
func TestRealPrometheusFiresTheLegacySchedulerAlert(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a worker, a FalkorDB and a Prometheus server")
	}
	const alert = "StargazerLegacySchedulerStillRuns"
	addr := redistest.FreeAddr(t)
	prom := startPrometheus(t, addr)
	srv := redistest.Start(t)
	fk := falkortest.Start(t)
	rdb := srv.Client(t)
	logs := &syncbuf.Buffer{}
	env := map[string]string{"REDIS_URL": srv.URL(), "FALKORDB_URL": fk.URL(), "HTTP_ADDR": addr, "SHUTDOWN_TIMEOUT": "5s", "MONITOR_TOKEN": "test-token"}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- app.Run(ctx, app.Params{Getenv: func(k string) string { return env[k] }, Stdout: logs, Stderr: io.Discard})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker: %v", err)
		}
	})
	series := fmt.Sprintf(`stargazer_legacy_runs_total{task=%q}`, jobs.KGDecay)
	// The worker creates the series at 0; the clock starts once Prometheus
	// has scraped it.
	poll.Until(t, "Prometheus scraping the worker's legacy-run series", func() bool {
		return queryScalar(t, prom, fmt.Sprintf(`count(%s)`, series)) == 1
	})
	if isFiring(t, prom, alert, "") {
		t.Fatalf("%s fires before the Python scheduler ran anything", alert)
	}
	ev, _ := json.Marshal(map[string]any{"topic": "scheduler_task_run", "source": "scheduler", "status": "ok", "duration_ms": 2.5,
		"payload": map[string]any{"task": jobs.KGDecay, "error": ""}, "ts": float64(time.Now().UnixMicro()) / 1e6})
	if err := rdb.Publish(context.Background(), "stargazer:debug_events", ev).Err(); err != nil {
		t.Fatal(err)
	}
	published := time.Now()
	fired := waitFiring(t, prom, alert, jobs.KGDecay, 60*time.Second)
	if !strings.Contains(logs.String(), "consolidation_main.py") {
		t.Errorf("no warning naming consolidation_main.py in the worker's log")
	}
	for _, a := range firingAlerts(t, prom) {
		if a.Labels["alertname"] == alert && a.Labels["task"] != jobs.KGDecay {
			t.Errorf("%s fires for %s, which the Python scheduler did not run", alert, a.Labels["task"])
		}
	}
	t.Logf("FIGURE a Python run of kg_decay_task (scrape and evaluation every 1 s): %s fired %.1f s after its event", alert, fired.Sub(published).Seconds())
}
