package ratelimit_test

import (
	"context"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/queue/ratelimit"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

func TestWorkersSharingAKeyShareOneBudget(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	// Two workers, one key: one token a minute on average, bursts of three.
	a := ratelimit.New(srv.Client(t), "test:rl", 1, 3)
	b := ratelimit.New(srv.Client(t), "test:rl", 1, 3)
	allowed := 0
	var lastWait time.Duration
	for i := range 10 {
		l := a
		if i%2 == 1 {
			l = b
		}
		wait, err := l.Take(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if wait == 0 {
			allowed++
		} else {
			lastWait = wait
		}
	}
	if allowed != 3 {
		t.Fatalf("%d takes allowed, want the burst of 3", allowed)
	}
	if lastWait <= 0 || lastWait > time.Minute {
		t.Fatalf("denied take waits %s, want (0, 1m]", lastWait)
	}
	other := ratelimit.New(srv.Client(t), "test:other", 1, 1)
	if wait, err := other.Take(ctx); wait != 0 || err != nil {
		t.Fatalf("another key is limited too: %s, %v", wait, err)
	}
}

func TestBudgetRefillsAtTheRate(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	// 60 a minute: a token a second.
	l := ratelimit.New(srv.Client(t), "test:rl", 60, 1)
	if wait, _ := l.Take(ctx); wait != 0 {
		t.Fatalf("first take waits %s", wait)
	}
	wait, err := l.Take(ctx)
	if err != nil || wait <= 0 || wait > time.Second {
		t.Fatalf("second take: wait %s, %v; want (0, 1s]", wait, err)
	}
	time.Sleep(wait)
	if wait, _ := l.Take(ctx); wait != 0 {
		t.Fatalf("take after the announced wait waits %s more", wait)
	}
}

func TestTakingSeveralTokensAndChargingADebt(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	// 6,000 a minute (100 a second), bursts of 1,000.
	l := ratelimit.New(srv.Client(t), "test:tokens", 6000, 1000)
	steps := []struct {
		name   string
		take   int
		charge int
		waits  bool
	}{
		{"a take within the burst goes", 600, 0, false},
		{"one past what is left waits", 600, 0, true},
		{"what is left goes", 400, 0, false},
		{"a charge goes into debt", 0, 500, false},
		{"after a debt even one token waits", 1, 0, true},
	}
	for _, st := range steps {
		if st.charge > 0 {
			if err := l.Charge(ctx, st.charge); err != nil {
				t.Fatal(err)
			}
			continue
		}
		wait, err := l.TakeN(ctx, st.take)
		if err != nil || (wait > 0) != st.waits {
			t.Fatalf("%s: wait %s, %v", st.name, wait, err)
		}
		if st.waits && st.name == "after a debt even one token waits" && wait < 4*time.Second {
			t.Fatalf("%s: waits only %s for a 500-token debt at 100/s", st.name, wait)
		}
	}
}
