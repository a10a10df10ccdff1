package server_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/queue/server"
	"github.com/stargazer/stargazer-jobs/internal/queue/singleton"
	"github.com/stargazer/stargazer-jobs/internal/testkit/poll"
	"github.com/stargazer/stargazer-jobs/jobs"
)

func singletonSpec(name string, maxRetry int) jobs.Spec {
	return jobs.Spec{Name: name, Kind: jobs.Periodic, Interval: time.Hour, Queue: jobs.QueueDefault,
		Singleton: true, MaxRetry: maxRetry, Timeout: time.Minute, NewPayload: func() jobs.Payload { return &jobs.Empty{} }}
}

// uniqueHeld reports whether the task's asynq enqueue lock or its run
// lease exists.
func (h *harness) locksHeld(t *testing.T, task string) (unique, lease bool) {
	rdb := h.srv.Client(t)
	ctx := context.Background()
	keys, _ := rdb.Keys(ctx, "asynq:{"+jobs.QueueDefault+"}:unique:"+task+":*").Result()
	n, _ := rdb.Exists(ctx, singleton.KeyPrefix+task).Result()
	return len(keys) > 0, n > 0
}

func TestAPanickingSingletonReleasesItsLeaseAndLockAndRunsAgain(t *testing.T) {
	h := newHarness(t, 5*time.Second)
	spec := singletonSpec("test_panicky", 3)
	h.opts.Catalog = append(jobs.Catalog(), spec)
	h.opts.SingletonLease = 600 * time.Millisecond
	h.mux = server.Mux(h.opts)
	var runs atomic.Int32
	h.mux.HandleFunc(spec.Name, func(ctx context.Context, _ *asynq.Task) error {
		if runs.Add(1) == 1 {
			var row map[string]any
			_ = row["name"].(string) // an unexpected graph row: nil interface conversion
		}
		return singleton.Verify(ctx)
	})
	s := h.start(t)
	defer s.Shutdown()
	enqueue := func() (*asynq.TaskInfo, error) {
		return h.client.Enqueue(asynq.NewTask(spec.Name, nil), asynq.Unique(spec.UniqueTTL()), asynq.MaxRetry(spec.MaxRetry), asynq.Retention(time.Hour))
	}
	info, err := enqueue()
	if err != nil {
		t.Fatal(err)
	}
	poll.Until(t, "the panicking run archived", func() bool {
		got, err := h.insp.GetTaskInfo(jobs.QueueDefault, info.ID)
		return err == nil && got.State == asynq.TaskStateArchived
	})
	if got, _ := h.insp.GetTaskInfo(jobs.QueueDefault, info.ID); got.Retried != 0 {
		t.Errorf("panicking run retried %d times, want archived once", got.Retried)
	}
	poll.Until(t, "locks released after the panic", func() bool {
		u, l := h.locksHeld(t, spec.Name)
		return !u && !l
	})
	// Nothing renews the lease behind the handler's back.
	time.Sleep(3 * h.opts.SingletonLease)
	if u, l := h.locksHeld(t, spec.Name); u || l {
		t.Fatalf("locks reappeared after the panicking run: unique %v, lease %v", u, l)
	}
	next, err := enqueue()
	if err != nil {
		t.Fatalf("enqueue after the panic: %v", err)
	}
	poll.Until(t, "the next run completed", func() bool {
		got, err := h.insp.GetTaskInfo(jobs.QueueDefault, next.ID)
		return err == nil && got.State == asynq.TaskStateCompleted
	})
}

func TestLosingTheLeaseCancelsTheHandlersContextNamingTheLoss(t *testing.T) {
	h := newHarness(t, 5*time.Second)
	spec := singletonSpec("test_long_write", 0)
	h.opts.Catalog = append(jobs.Catalog(), spec)
	h.opts.SingletonLease = 600 * time.Millisecond
	h.mux = server.Mux(h.opts)
	started := make(chan struct{})
	cause := make(chan error, 1)
	h.mux.HandleFunc(spec.Name, func(ctx context.Context, _ *asynq.Task) error {
		close(started)
		select {
		case <-ctx.Done():
			cause <- context.Cause(ctx)
		case <-time.After(10 * time.Second):
			cause <- nil
		}
		return ctx.Err()
	})
	s := h.start(t)
	defer s.Shutdown()
	if _, err := h.client.Enqueue(asynq.NewTask(spec.Name, nil), asynq.MaxRetry(0)); err != nil {
		t.Fatal(err)
	}
	<-started
	// An operator force-releases it and another instance takes it.
	h.srv.Client(t).Set(context.Background(), singleton.KeyPrefix+spec.Name, "other-run|1", time.Minute)
	lost := time.Now()
	err := <-cause
	if !errors.Is(err, singleton.ErrLost) {
		t.Fatalf("handler context ended with cause %v, want one wrapping singleton.ErrLost", err)
	}
	if d := time.Since(lost); d > 2*h.opts.SingletonLease {
		t.Errorf("cancelled %v after the loss, want within a renewal period", d)
	}
}

// A run that fails for good releases its enqueue lock whatever its payload:
// asynq locks an empty payload under md5(""), but hands the handler a nil
// one.
func TestTheEnqueueLockIsReleasedWhenARunFailsForGoodWhateverThePayload(t *testing.T) {
	for _, payload := range [][]byte{nil, {}, []byte(`{"channel":"c1"}`)} {
		h := newHarness(t, 5*time.Second)
		spec := singletonSpec("test_failing", 0)
		h.opts.Catalog = append(jobs.Catalog(), spec)
		h.mux = server.Mux(h.opts)
		h.mux.HandleFunc(spec.Name, func(context.Context, *asynq.Task) error { return errors.New("graph unreachable") })
		s := h.start(t)
		enqueue := func() (*asynq.TaskInfo, error) {
			return h.client.Enqueue(asynq.NewTask(spec.Name, payload), asynq.Unique(spec.UniqueTTL()), asynq.MaxRetry(0))
		}
		info, err := enqueue()
		if err != nil {
			t.Fatal(err)
		}
		poll.Until(t, "archive", func() bool {
			got, err := h.insp.GetTaskInfo(jobs.QueueDefault, info.ID)
			return err == nil && got.State == asynq.TaskStateArchived
		})
		if !waitUntil(5*time.Second, func() bool { u, _ := h.locksHeld(t, spec.Name); return !u }) {
			t.Errorf("payload %q: enqueue lock still held after the run failed for good", payload)
		} else if _, err := enqueue(); err != nil {
			t.Errorf("payload %q: enqueue after the failed run: %v", payload, err)
		}
		s.Shutdown()
	}
}

func waitUntil(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}
