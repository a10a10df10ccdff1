package handlers

import (
	"context"
	"errors"
	"testing"
	"time"
)

type scriptedLimiter struct{ waits []time.Duration }

func (l *scriptedLimiter) Take(context.Context) (time.Duration, error) {
	w := l.waits[0]
	l.waits = l.waits[1:]
	return w, nil
}

func (l *scriptedLimiter) Interval() time.Duration { return time.Millisecond }

func TestAwaitTokenWaitsUntilTheSharedBudgetAllows(t *testing.T) {
	l := &scriptedLimiter{waits: []time.Duration{5 * time.Millisecond, 5 * time.Millisecond, 0}}
	if err := awaitToken(context.Background(), l); err != nil {
		t.Fatal(err)
	}
	if len(l.waits) != 0 {
		t.Fatalf("took a token after %d tries, want 3", 3-len(l.waits))
	}
	if err := awaitToken(context.Background(), nil); err != nil {
		t.Fatalf("no limiter: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := awaitToken(ctx, &scriptedLimiter{waits: []time.Duration{time.Hour}}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled wait: %v", err)
	}
}
