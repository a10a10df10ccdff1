package periodic_test

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/queue/periodic"
)

// holds is a Holds a test sets.
type holds struct {
	mu     sync.Mutex
	held   map[string]bool
	lifted []string
}

func (h *holds) Check(context.Context) (map[string]bool, []string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	lifted := h.lifted
	h.lifted = nil
	held := map[string]bool{}
	for k, v := range h.held {
		held[k] = v
	}
	return held, lifted, nil
}

// A deferred task's occurrences wait: one that comes due while it is held
// is not enqueued, and stays due. When the hold lifts the task runs at
// once, on the next tick, even if its next occurrence is hours away.
func TestHeldTasksWaitAndRunAtOnceWhenTheHoldLifts(t *testing.T) {
	f := newFixture(t)
	h := &holds{held: map[string]bool{}}
	client := asynq.NewClient(asynq.RedisClientOpt{Addr: f.srv.Addr})
	t.Cleanup(func() { client.Close() })
	s, err := periodic.New(periodic.Config{
		Redis: f.srv.Client(t), Enqueuer: client, Observer: f.obs, Now: f.clk.Now, Holds: h,
		States: periodic.InspectorStates{Inspector: f.insp}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}, []periodic.Entry{f.entry})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	s.Tick(ctx)
	f.clk.Add(5 * time.Minute) // the first occurrence is due
	s.Tick(ctx)
	if n := f.tasks(); n != 1 {
		t.Fatalf("%d runs, want the first", n)
	}
	f.completeAll()

	// Deferred: the next occurrence comes due and waits.
	h.mu.Lock()
	h.held["report"] = true
	h.mu.Unlock()
	f.clk.Add(time.Hour)
	for range 3 {
		s.Tick(ctx)
		f.clk.Add(time.Second)
	}
	if n := f.tasks(); n != 0 {
		t.Fatalf("%d runs while held", n)
	}
	h.mu.Lock()
	h.held = map[string]bool{}
	h.mu.Unlock()
	s.Tick(ctx)
	if n := f.tasks(); n != 1 {
		t.Fatalf("%d runs after the hold ended, want the occurrence that waited", n)
	}
	f.completeAll()

	// Deferred mid-interval and lifted long before the next occurrence
	// (a raised budget): the task runs on the next tick.
	f.clk.Add(10 * time.Minute)
	h.mu.Lock()
	h.held["report"] = true
	h.mu.Unlock()
	s.Tick(ctx)
	h.mu.Lock()
	h.held, h.lifted = map[string]bool{}, []string{"report"}
	h.mu.Unlock()
	s.Tick(ctx) // lifts: the occurrence is made due now, and enqueued
	if n := f.tasks(); n != 1 {
		t.Fatalf("%d runs after the hold lifted, want one at once", n)
	}
}

// countingHolds holds nothing and counts its checks.
type countingHolds struct{ n int }

func (h *countingHolds) Check(context.Context) (map[string]bool, []string, error) {
	h.n++
	return nil, nil, nil
}

// An idle scheduler (nothing due, nothing deferred) asks about holds once
// per MaxSleep, not every tick: with many pods that check was most of
// their idle Redis commands.
func TestIdleSchedulerChecksHoldsOncePerMaxSleep(t *testing.T) {
	f := newFixture(t)
	h := &countingHolds{}
	client := asynq.NewClient(asynq.RedisClientOpt{Addr: f.srv.Addr})
	t.Cleanup(func() { client.Close() })
	s, err := periodic.New(periodic.Config{
		Redis: f.srv.Client(t), Enqueuer: client, Observer: f.obs, Now: f.clk.Now, Holds: h, MaxSleep: 5 * time.Second,
		States: periodic.InspectorStates{Inspector: f.insp}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}, []periodic.Entry{f.entry})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	s.Tick(ctx) // reads the schedule: the first occurrence is 5 minutes away
	for range 10 {
		f.clk.Add(time.Second)
		s.Tick(ctx)
	}
	if h.n != 3 { // the first tick, then at 5 s and 10 s
		t.Fatalf("%d holds checks in 10 idle seconds, want 3", h.n)
	}
}
