package singleton_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/queue/asynqcompat"
	"github.com/stargazer/stargazer-jobs/internal/queue/singleton"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

func TestLeaseExcludesOtherInstancesAndNamesTheHolder(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	ctx := context.Background()
	locks := singleton.NewLocks(rdb, time.Second, nil)
	a, err := locks.Acquire(ctx, "limbic_dedup_task", "run-a")
	if err != nil {
		t.Fatal(err)
	}
	_, err = locks.Acquire(ctx, "limbic_dedup_task", "run-b")
	if !errors.Is(err, singleton.ErrHeld) || !strings.Contains(err.Error(), "run-a") {
		t.Fatalf("second acquire: %v", err)
	}
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	b, err := locks.Acquire(ctx, "limbic_dedup_task", "run-b")
	if err != nil {
		t.Fatalf("acquire after release: %v", err)
	}
	b.Release(ctx)
}

func TestLeaseIsRenewedWhileTheRunLasts(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	ctx := context.Background()
	le, err := singleton.NewLocks(rdb, 300*time.Millisecond, nil).Acquire(ctx, "t", "run-a")
	if err != nil {
		t.Fatal(err)
	}
	defer le.Release(ctx)
	time.Sleep(time.Second)
	if err := le.Verify(ctx); err != nil {
		t.Fatalf("verify after 3 lease periods: %v", err)
	}
}

func TestVerifyRefusesAfterTheLeaseIsLost(t *testing.T) {
	tests := []struct {
		name string
		lose func(ctx context.Context, t *testing.T, locks *singleton.Locks, rdbDel func())
	}{
		{"lease expired (worker stalled)", func(_ context.Context, _ *testing.T, _ *singleton.Locks, del func()) { del() }},
		{"taken over by a retry of the same task", func(ctx context.Context, t *testing.T, locks *singleton.Locks, _ func()) {
			if _, err := locks.Acquire(ctx, "t", "run-a"); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rdb := redistest.Start(t).Client(t)
			ctx := context.Background()
			locks := singleton.NewLocks(rdb, time.Minute, nil)
			le, err := locks.Acquire(ctx, "t", "run-a")
			if err != nil {
				t.Fatal(err)
			}
			lctx := singleton.WithLease(ctx, le)
			if err := singleton.Verify(lctx); err != nil {
				t.Fatalf("verify while held: %v", err)
			}
			tt.lose(ctx, t, locks, func() { rdb.Del(ctx, singleton.KeyPrefix+"t") })
			if err := singleton.Verify(lctx); !errors.Is(err, singleton.ErrLost) {
				t.Fatalf("verify after loss: %v, want ErrLost", err)
			}
			le.Release(ctx)
		})
	}
}

func TestVerifyRefusesWhenTheTaskContextEnded(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := singleton.Verify(ctx); !errors.Is(err, singleton.ErrLost) {
		t.Errorf("verify with a cancelled context: %v", err)
	}
	if err := singleton.Verify(context.Background()); err != nil {
		t.Errorf("verify outside a singleton: %v", err)
	}
}

func TestOperatorsCanListAndForceReleaseLocks(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	ctx := context.Background()
	le, err := singleton.NewLocks(rdb, time.Minute, nil).Acquire(ctx, "kg_decay_task", "run-a")
	if err != nil {
		t.Fatal(err)
	}
	defer le.Release(ctx)
	rdb.Set(ctx, asynqcompat.UniqueKey("maintenance", "kg_decay_task", []byte("{}")), "run-a", time.Hour)
	hs, err := singleton.List(ctx, rdb, map[string]string{"kg_decay_task": "maintenance", "limbic_org_task": "maintenance"})
	if err != nil || len(hs) != 2 {
		t.Fatalf("list = %+v, %v", hs, err)
	}
	for _, h := range hs {
		if h.TaskID != "run-a" || h.TTL <= 0 {
			t.Errorf("holder %+v", h)
		}
	}
	n, err := singleton.ForceRelease(ctx, rdb, "kg_decay_task", "maintenance")
	if err != nil || n != 2 {
		t.Fatalf("force release = %d, %v", n, err)
	}
	if err := le.Verify(ctx); !errors.Is(err, singleton.ErrLost) {
		t.Errorf("verify after force release: %v", err)
	}
}
