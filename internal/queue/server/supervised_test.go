package server_test

import (
	"io"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/queue/server"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// The original TaskSupervisor restarted a crashed loop after 1 s, doubling
// to 60 s, for as long as the process ran. A failing pass of a supervised
// task must be retried the same way, for at least a day, not archived after
// a minute.
func TestSupervisedLoopsKeepRestartingWithTheSupervisorsBackoff(t *testing.T) {
	delay := server.RetryDelay(jobs.Catalog())
	want := []time.Duration{1, 2, 4, 8, 16, 32, 60, 60, 60}
	n := 0
	for _, s := range jobs.Catalog() {
		if s.Kind != jobs.Supervised {
			continue
		}
		n++
		t.Run(s.Name, func(t *testing.T) {
			var span time.Duration
			for i := 0; i < s.MaxRetry; i++ {
				d := delay(i, io.EOF, asynq.NewTask(s.Name, nil))
				if i < len(want) && d != want[i]*time.Second {
					t.Errorf("restart %d after %v, want %v", i+1, d, want[i]*time.Second)
				}
				if d > time.Minute {
					t.Errorf("restart %d after %v, above the supervisor's 60 s cap", i+1, d)
				}
				span += d
			}
			if span < 24*time.Hour {
				t.Errorf("a failing pass is archived after %d restarts spanning %v; the supervisor kept restarting it (want at least a day)", s.MaxRetry, span)
			}
		})
	}
	if n != 2 {
		t.Errorf("%d supervised tasks in the catalog, want 2 (limbic_dedup_task, limbic_org_task)", n)
	}
}
