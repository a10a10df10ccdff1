package events_test

import (
	"context"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/queue/events"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

func TestAsyncDeliversEveryEventAndFlushesOnStop(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	ctx := context.Background()
	sub := rdb.Subscribe(ctx, "ev")
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	a := events.NewAsync(events.NewPublisher(rdb, "ev"), 1000)
	runCtx, stop := context.WithCancel(ctx)
	go a.Run(runCtx)
	for range 500 {
		if !a.Offer(events.Event{Topic: "scheduler_task_run"}) {
			t.Fatal("dropped with room in the buffer")
		}
	}
	stop()
	<-a.Done()
	got := 0
	timeout := time.After(5 * time.Second)
	for got < 500 {
		select {
		case <-sub.Channel():
			got++
		case <-timeout:
			t.Fatalf("received %d of 500 events", got)
		}
	}
}

func TestAsyncDropsAndCountsWhenFull(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	a := events.NewAsync(events.NewPublisher(rdb, "ev"), 2) // not running: nothing drains
	for range 5 {
		a.Offer(events.Event{Topic: "x"})
	}
	if a.Dropped() != 3 {
		t.Fatalf("dropped %d, want 3", a.Dropped())
	}
}
