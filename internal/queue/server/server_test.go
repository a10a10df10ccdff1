package server_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stargazer/stargazer-jobs/handlers"
	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/queue/asynqcompat"
	"github.com/stargazer/stargazer-jobs/internal/queue/events"
	"github.com/stargazer/stargazer-jobs/internal/queue/server"
	"github.com/stargazer/stargazer-jobs/internal/queue/singleton"
	"github.com/stargazer/stargazer-jobs/internal/testkit/poll"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/jobs"
	"github.com/stargazer/stargazer-jobs/monitor"
)

type harness struct {
	srv     *redistest.Server
	opts    server.Options
	mux     *asynq.ServeMux
	client  *asynq.Client
	insp    *asynq.Inspector
	metrics *monitor.Metrics
}

func newHarness(t *testing.T, shutdown time.Duration) *harness {
	srv := redistest.Start(t)
	conn := asynq.RedisClientOpt{Addr: srv.Addr}
	metrics := monitor.NewMetrics(prometheus.NewRegistry())
	metrics.Catalog(jobs.Catalog()) // as the app does
	opts := server.Options{
		Redis: conn, Concurrency: 4, ShutdownTimeout: shutdown,
		Logger:  slog.New(slog.NewJSONHandler(io.Discard, nil)),
		Metrics: metrics, Events: startEvents(t, events.NewPublisher(srv.Client(t), "test:debug")),
		Catalog: jobs.Catalog(), RedisClient: srv.Client(t),
	}
	h := &harness{srv: srv, opts: opts, mux: server.Mux(opts), client: asynq.NewClient(conn), insp: asynq.NewInspector(conn), metrics: metrics}
	t.Cleanup(func() { h.client.Close(); h.insp.Close() })
	handlers.Register(h.mux, handlers.Deps{Redis: srv.Client(t), Logger: opts.Logger}, jobs.Catalog(), jobs.Redis)
	return h
}

func (h *harness) start(t *testing.T) *asynq.Server {
	s := server.NewServer(h.opts)
	if err := s.Start(h.mux); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestBadTasksAreArchivedOnceWithAReason(t *testing.T) {
	h := newHarness(t, 5*time.Second)
	h.mux.HandleFunc("test:panic", func(context.Context, *asynq.Task) error { panic("boom") })
	s := h.start(t)
	defer s.Shutdown()

	tests := []struct {
		name, taskType, payload, reason, status string
	}{
		{"malformed payload", jobs.ScheduledPromptCleanup, `{"days_to_keep":"soon"}`, "invalid payload", server.StatusInvalid},
		{"out of range payload", jobs.ScheduledPromptTick, `{"limit":0}`, "limit must be", server.StatusInvalid},
		{"invalid utf-8", jobs.ScheduledPromptTick, "{\"limit\":\"\xff\"}", "UTF-8", server.StatusInvalid},
		{"unknown task type", "no_such_task", `{}`, "handler not found", server.StatusNotFound},
		{"handler panic", "test:panic", `{}`, "boom", server.StatusPanic},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			info, err := h.client.Enqueue(asynq.NewTask(tt.taskType, []byte(tt.payload)), asynq.MaxRetry(10))
			if err != nil {
				t.Fatal(err)
			}
			var got *asynq.TaskInfo
			poll.Until(t, "archive", func() bool {
				got, err = h.insp.GetTaskInfo("default", info.ID)
				return err == nil && got.State == asynq.TaskStateArchived
			})
			if got.Retried != 0 {
				t.Errorf("retried %d times, want 0 (archived at once)", got.Retried)
			}
			if !strings.Contains(got.LastErr, tt.reason) {
				t.Errorf("last error %q does not contain %q", got.LastErr, tt.reason)
			}
		})
	}
	if n := testutil.ToFloat64(h.metrics.TaskRuns.WithLabelValues("unknown", server.StatusNotFound)); n != 1 {
		t.Errorf("not-found runs counted %v, want 1", n)
	}
	if n := testutil.ToFloat64(h.metrics.TaskRuns.WithLabelValues(jobs.ScheduledPromptTick, server.StatusInvalid)); n != 2 {
		t.Errorf("invalid runs counted %v, want 2", n)
	}
}

// One scheduler_task_run event per run outcome: a success, or a failure
// for good; the failed attempts asynq retries publish none.
func TestEveryRunOutcomePublishesOneSchedulerTaskRunEvent(t *testing.T) {
	h := newHarness(t, 5*time.Second)
	sub := h.srv.Client(t).Subscribe(context.Background(), "test:debug")
	defer sub.Close()
	if _, err := sub.Receive(context.Background()); err != nil {
		t.Fatal(err)
	}
	s := h.start(t)
	defer s.Shutdown()
	if _, err := h.client.Enqueue(asynq.NewTask(jobs.ScheduledPromptCleanup, nil), asynq.Queue(jobs.QueueMaintenance)); err != nil {
		t.Fatal(err)
	}
	select {
	case msg := <-sub.Channel():
		var e events.Event
		if err := json.Unmarshal([]byte(msg.Payload), &e); err != nil {
			t.Fatal(err)
		}
		if e.Topic != "scheduler_task_run" || e.Status != "ok" || e.Payload["task"] != jobs.ScheduledPromptCleanup || e.DurationMS <= 0 ||
			e.Payload["origin"] != events.Origin {
			t.Errorf("event %+v", e)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no debug event")
	}

	// A task failing twice and archived on its third attempt: one event.
	var attempts atomic.Int32
	h.mux.HandleFunc("test:flaky", func(context.Context, *asynq.Task) error {
		attempts.Add(1)
		return errors.New("upstream down")
	})
	if _, err := h.client.Enqueue(asynq.NewTask("test:flaky", nil), asynq.MaxRetry(2), asynq.Queue(jobs.QueueCritical)); err != nil {
		t.Fatal(err)
	}
	var got []events.Event
	deadline := time.After(40 * time.Second)
	for len(got) == 0 {
		select {
		case msg := <-sub.Channel():
			var e events.Event
			if err := json.Unmarshal([]byte(msg.Payload), &e); err != nil {
				t.Fatal(err)
			}
			got = append(got, e)
		case <-deadline:
			t.Fatalf("no event after %d attempts", attempts.Load())
		}
	}
	select {
	case msg := <-sub.Channel():
		t.Fatalf("a second event: %s", msg.Payload)
	case <-time.After(500 * time.Millisecond):
	}
	if n := attempts.Load(); n != 3 || got[0].Status != "error" || got[0].Payload["task"] != "test:flaky" {
		t.Fatalf("%d attempts, events %+v: want one error event after the third", n, got)
	}
}

func TestGracefulShutdownFinishesInFlightTasks(t *testing.T) {
	h := newHarness(t, 10*time.Second)
	started := make(chan struct{})
	h.mux.HandleFunc("test:slow", func(ctx context.Context, _ *asynq.Task) error {
		close(started)
		select {
		case <-time.After(1500 * time.Millisecond):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	s := h.start(t)
	info, err := h.client.Enqueue(asynq.NewTask("test:slow", nil), asynq.Retention(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	<-started
	s.Stop()
	s.Shutdown()
	got, err := h.insp.GetTaskInfo("default", info.ID)
	if err != nil || got.State != asynq.TaskStateCompleted {
		t.Fatalf("after shutdown: %+v, %v; want completed", got, err)
	}
}

func TestShutdownTimeoutPutsUnfinishedTasksBackOnTheQueue(t *testing.T) {
	h := newHarness(t, 500*time.Millisecond)
	started := make(chan struct{})
	h.mux.HandleFunc("test:stuck", func(ctx context.Context, _ *asynq.Task) error {
		close(started)
		<-ctx.Done()
		return ctx.Err()
	})
	s := h.start(t)
	info, err := h.client.Enqueue(asynq.NewTask("test:stuck", nil))
	if err != nil {
		t.Fatal(err)
	}
	<-started
	s.Stop()
	s.Shutdown()
	got, err := h.insp.GetTaskInfo("default", info.ID)
	if err != nil || got.State != asynq.TaskStatePending || got.Retried != 0 {
		t.Fatalf("after shutdown: %+v, %v; want pending, not retried", got, err)
	}
}

func TestRetryDelay(t *testing.T) {
	delay := server.RetryDelay(jobs.Catalog())
	if d := delay(0, asynq.ErrLeaseExpired, asynq.NewTask(jobs.KGDecay, nil)); d != time.Second {
		t.Errorf("lease expired: %v, want 1s", d)
	}
	// A rate limit's Retry-After wins, capped at an hour.
	if d := delay(0, fmt.Errorf("summarising: %w", &llm.RateLimitError{After: 42 * time.Second}), asynq.NewTask(jobs.KGDecay, nil)); d != 42*time.Second {
		t.Errorf("rate limited: %v, want 42s (Retry-After)", d)
	}
	if d := delay(0, &llm.RateLimitError{After: 5 * time.Hour}, asynq.NewTask(jobs.KGDecay, nil)); d != time.Hour {
		t.Errorf("rate limited for 5h: %v, want the 1h cap", d)
	}
	// The original supervisor's backoff for the supervised loops.
	for n, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 32 * time.Second, time.Minute, time.Minute} {
		if d := delay(n, io.EOF, asynq.NewTask(jobs.LimbicDedup, nil)); d != want {
			t.Errorf("supervised retry %d: %v, want %v", n, d, want)
		}
	}
	// Every periodic task's retries fit in half its period.
	for _, s := range jobs.Catalog() {
		if s.Kind != jobs.Periodic || s.MaxRetry == 0 {
			continue
		}
		var total time.Duration
		for n := 0; n < s.MaxRetry; n++ {
			total += delay(n, io.EOF, asynq.NewTask(s.Name, nil))
		}
		if total > s.Interval/2 {
			t.Errorf("%s: %d retries take %v, more than half its %v period", s.Name, s.MaxRetry, total, s.Interval)
		}
	}
}

func TestSingletonLocksAreReleasedWhenARunFailsForGood(t *testing.T) {
	h := newHarness(t, 5*time.Second)
	spec := jobs.Spec{Name: "test_single", Kind: jobs.Supervised, Interval: time.Hour, Queue: jobs.QueueDefault,
		Singleton: true, MaxRetry: 0, Timeout: time.Minute, NewPayload: func() jobs.Payload { return &jobs.Empty{} }}
	h.opts.Catalog = append(jobs.Catalog(), spec)
	h.mux = server.Mux(h.opts)
	h.mux.HandleFunc(spec.Name, func(ctx context.Context, _ *asynq.Task) error {
		if err := singleton.Verify(ctx); err != nil {
			t.Errorf("verify inside the run: %v", err)
		}
		return errors.New("graph unreachable")
	})
	s := h.start(t)
	defer s.Shutdown()
	info, err := h.client.Enqueue(asynq.NewTask(spec.Name, nil), asynq.Unique(spec.UniqueTTL()), asynq.MaxRetry(spec.MaxRetry))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.client.Enqueue(asynq.NewTask(spec.Name, nil), asynq.Unique(spec.UniqueTTL()), asynq.MaxRetry(spec.MaxRetry)); !errors.Is(err, asynq.ErrDuplicateTask) {
		t.Fatalf("second enqueue while queued: %v, want ErrDuplicateTask", err)
	}
	poll.Until(t, "archive", func() bool {
		got, err := h.insp.GetTaskInfo(jobs.QueueDefault, info.ID)
		return err == nil && got.State == asynq.TaskStateArchived
	})
	rdb := h.srv.Client(t)
	poll.Until(t, "locks released", func() bool {
		n, _ := rdb.Exists(context.Background(), asynqcompat.UniqueKey(jobs.QueueDefault, spec.Name, nil), singleton.KeyPrefix+spec.Name).Result()
		return n == 0
	})
	if _, err := h.client.Enqueue(asynq.NewTask(spec.Name, nil), asynq.Unique(spec.UniqueTTL()), asynq.MaxRetry(spec.MaxRetry)); err != nil {
		t.Fatalf("enqueue after the archived run: %v", err)
	}
}

func startEvents(t *testing.T, p *events.Publisher) *events.Async {
	a := events.NewAsync(p, 1000)
	ctx, cancel := context.WithCancel(context.Background())
	go a.Run(ctx)
	t.Cleanup(func() { cancel(); <-a.Done() })
	return a
}

func TestAlertingMetricsFollowRuns(t *testing.T) {
	h := newHarness(t, 5*time.Second)
	release := make(chan struct{})
	h.mux.HandleFunc(jobs.KGDecay, func(ctx context.Context, _ *asynq.Task) error {
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	if n := testutil.ToFloat64(h.metrics.TaskArchived.WithLabelValues(jobs.KGDecay)); n != 0 {
		t.Fatalf("archived series of %s = %v before any run, want 0", jobs.KGDecay, n)
	}
	if n := testutil.CollectAndCount(h.metrics.TaskArchived); n != len(jobs.Catalog()) {
		t.Errorf("%d archived series before any run, want one per catalog task (%d) at zero", n, len(jobs.Catalog()))
	}
	s := h.start(t)
	defer s.Shutdown()

	before := time.Now()
	if _, err := h.client.Enqueue(asynq.NewTask(jobs.ScheduledPromptCleanup, nil), asynq.Queue(jobs.QueueMaintenance)); err != nil {
		t.Fatal(err)
	}
	if _, err := h.client.Enqueue(asynq.NewTask(jobs.ScheduledPromptTick, []byte(`{"limit":0}`)), asynq.Queue(jobs.QueueCritical)); err != nil {
		t.Fatal(err)
	}
	if _, err := h.client.Enqueue(asynq.NewTask(jobs.KGDecay, nil), asynq.Queue(jobs.QueueMaintenance), asynq.Timeout(time.Minute)); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, "a successful run and an archived one", func() bool {
		return testutil.ToFloat64(h.metrics.TaskLastSuccess.WithLabelValues(jobs.ScheduledPromptCleanup)) > 0 &&
			testutil.ToFloat64(h.metrics.TaskArchived.WithLabelValues(jobs.ScheduledPromptTick)) == 1
	})
	if ts := testutil.ToFloat64(h.metrics.TaskLastSuccess.WithLabelValues(jobs.ScheduledPromptCleanup)); ts < float64(before.Unix()) || ts > float64(time.Now().Unix()+1) {
		t.Errorf("last success %v, want a Unix time since %v", ts, before.Unix())
	}
	poll.Until(t, "the singleton holding its lease", func() bool { return testutil.CollectAndCount(h.metrics.SingletonSince) == 1 })
	if since := testutil.ToFloat64(h.metrics.SingletonSince.WithLabelValues(jobs.KGDecay)); since < float64(before.Unix()) {
		t.Errorf("held since %v, want a Unix time since %v", since, before.Unix())
	}
	if timeout := testutil.ToFloat64(h.metrics.SingletonTimeout.WithLabelValues(jobs.KGDecay)); timeout < 50 || timeout > 60 {
		t.Errorf("singleton timeout %v s, want the run's (60 s)", timeout)
	}
	close(release)
	poll.Until(t, "the singleton series gone with its run", func() bool {
		return testutil.CollectAndCount(h.metrics.SingletonSince)+testutil.CollectAndCount(h.metrics.SingletonTimeout) == 0
	})
}
