package events_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/queue/events"
	"github.com/stargazer/stargazer-jobs/internal/testkit/faultproxy"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

func TestAsyncDeliversEveryEventAndFlushesOnStop(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	ctx := context.Background()
	sub := subscribe(t, rdb)
	a := events.NewAsync(events.NewPublisher(rdb, "ev"), 1000)
	// The bound on the flush is not what this test is about: on a loaded
	// machine (-race, packages in parallel) 2 s can run out.
	a.FlushTimeout = 30 * time.Second
	runCtx, stop := context.WithCancel(ctx)
	go a.Run(runCtx)
	for range 500 {
		if !a.Offer(events.Event{Topic: "scheduler_task_run"}) {
			t.Fatal("dropped with room in the buffer")
		}
	}
	stop()
	<-a.Done()
	receive(t, sub, 500)
}

// subscribe listens on the events' channel before anything is published.
func subscribe(t *testing.T, rdb *redis.Client) *redis.PubSub {
	t.Helper()
	sub := rdb.Subscribe(context.Background(), "ev")
	t.Cleanup(func() { sub.Close() })
	if _, err := sub.Receive(context.Background()); err != nil {
		t.Fatal(err)
	}
	return sub
}

// receive fails the test unless n events arrive within 5 s.
func receive(t *testing.T, sub *redis.PubSub, n int) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for got := 0; got < n; got++ {
		select {
		case <-sub.Channel():
		case <-timeout:
			t.Fatalf("received %d of %d events", got, n)
		}
	}
}

func TestAStopDuringASendDeliversTheBatchInFlight(t *testing.T) {
	srv := redistest.Start(t)
	sub := subscribe(t, srv.Client(t))
	proxy, err := faultproxy.Start(srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	rdb := redis.NewClient(&redis.Options{Addr: proxy.Addr()})
	defer rdb.Close()
	if err := rdb.Ping(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	// A slow Redis keeps the batch's round trip open when the stop comes.
	proxy.SetLatency(150 * time.Millisecond)
	a := events.NewAsync(events.NewPublisher(rdb, "ev"), 100)
	ctx, stop := context.WithCancel(context.Background())
	go a.Run(ctx)
	for range 10 {
		a.Offer(events.Event{Topic: "scheduler_task_run"})
	}
	time.Sleep(100 * time.Millisecond) // past the linger: the batch is on the wire
	stop()
	<-a.Done()
	if a.Dropped() != 0 {
		t.Fatalf("dropped %d events of a batch already sent when the stop came", a.Dropped())
	}
	receive(t, sub, 10)
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

type adder struct{ n atomic.Int64 }

func (a *adder) Add(f float64) { a.n.Add(int64(f)) }

func TestAStopWithRedisUnreachableFlushesWithinItsDeadlineAndCountsTheDrops(t *testing.T) {
	for _, mode := range []faultproxy.Mode{faultproxy.Stall, faultproxy.Drop} {
		srv := redistest.Start(t)
		proxy, err := faultproxy.Start(srv.Addr)
		if err != nil {
			t.Fatal(err)
		}
		rdb := redis.NewClient(&redis.Options{Addr: proxy.Addr()})
		a := events.NewAsync(events.NewPublisher(rdb, "ev"), 10_000)
		var metric adder
		a.CountDropsIn(&metric)
		// Redis stops answering (a dead switch) or refuses, with the
		// buffer full, when the worker stops.
		proxy.SetMode(mode)
		for range 10_000 {
			a.Offer(events.Event{Topic: "scheduler_task_run"})
		}
		ctx, stop := context.WithCancel(context.Background())
		go a.Run(ctx)
		stop()
		t0 := time.Now()
		select {
		case <-a.Done():
		case <-time.After(30 * time.Second):
			t.Fatalf("mode %v: flush still running after 30s", mode)
		}
		if took := time.Since(t0); took > 5*time.Second {
			t.Errorf("mode %v: stop took %v with Redis unreachable, want the 2s flush deadline (plus one send)", mode, took)
		}
		if a.Dropped() != 10_000 || metric.n.Load() != 10_000 {
			t.Errorf("mode %v: dropped %d (metric %d), want all 10000 counted", mode, a.Dropped(), metric.n.Load())
		}
		rdb.Close()
		proxy.Close()
	}
}
