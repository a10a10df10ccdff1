package server_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stargazer/stargazer-jobs/internal/queue/server"
	"github.com/stargazer/stargazer-jobs/internal/testkit/poll"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/jobs"
	"github.com/stargazer/stargazer-jobs/monitor"
)

// legacyRuns stands in for legacy.StandDowns.
type legacyRuns struct {
	mu    sync.Mutex
	until time.Time
	err   error
}

func (l *legacyRuns) Until(context.Context, string) (time.Time, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.until, l.err
}

func (l *legacyRuns) set(until time.Time, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.until, l.err = until, err
}

// A scheduled occurrence of a task the Python scheduler just ran stands
// down (and so does one whose stand-down cannot be read); a run asked for
// by hand runs; with no stand-down, occurrences run.
func TestScheduledOccurrencesStandDownForARecentPythonRun(t *testing.T) {
	const task = "test_periodic"
	srv := redistest.Start(t)
	conn := asynq.RedisClientOpt{Addr: srv.Addr}
	reg := prometheus.NewRegistry()
	metrics := monitor.NewMetrics(reg)
	catalog := append(jobs.Catalog(), jobs.Spec{Name: task, Kind: jobs.Periodic, Interval: time.Hour, Queue: jobs.QueueDefault,
		Timeout: time.Minute, NewPayload: func() jobs.Payload { return &jobs.Empty{} }, Summary: "test"})
	metrics.Catalog(catalog)
	lr := &legacyRuns{}
	opts := server.Options{Redis: conn, Concurrency: 2, ShutdownTimeout: time.Second, Logger: slog.New(slog.NewJSONHandler(io.Discard, nil)),
		Metrics: metrics, Catalog: catalog, RedisClient: srv.Client(t), LegacyRuns: lr}
	mux := server.Mux(opts)
	var ran atomic.Int32
	mux.HandleFunc(task, func(context.Context, *asynq.Task) error { ran.Add(1); return nil })
	s := server.NewServer(opts)
	if err := s.Start(mux); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown()
	client := asynq.NewClient(conn)
	defer client.Close()
	stoodDown := func() float64 {
		return testutil.ToFloat64(metrics.TaskStoodDown.WithLabelValues(task, server.StandDownLegacyRun))
	}
	enqueue := func(id string) {
		t.Helper()
		if _, err := client.Enqueue(asynq.NewTask(task, nil), asynq.TaskID(id)); err != nil {
			t.Fatal(err)
		}
	}

	lr.set(time.Now().Add(time.Hour), nil)
	enqueue(task + "@1000")
	poll.Until(t, "the occurrence standing down", func() bool { return stoodDown() == 1 })
	enqueue("manual-run-1")
	poll.Until(t, "the manual run running", func() bool { return ran.Load() == 1 })

	lr.set(time.Time{}, errors.New("redis: connection refused"))
	enqueue(task + "@2000")
	poll.Until(t, "an unreadable stand-down standing down", func() bool { return stoodDown() == 2 })

	lr.set(time.Time{}, nil)
	enqueue(task + "@3000")
	poll.Until(t, "the next occurrence running", func() bool { return ran.Load() == 2 })
	if n := stoodDown(); n != 2 {
		t.Errorf("%v stand-downs, want 2", n)
	}
}
