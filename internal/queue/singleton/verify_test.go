package singleton_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/queue/singleton"
	"github.com/stargazer/stargazer-jobs/internal/testkit/faultproxy"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

func TestVerifyRequiresAMarginOfLeaseLeft(t *testing.T) {
	tests := []struct {
		name string
		left time.Duration // the lease's remaining time when Verify asks
		ok   bool
	}{
		{"fresh lease", 0, true},
		{"one renewal missed", 1500 * time.Millisecond, true},
		{"less than a third of the lease left", 500 * time.Millisecond, false},
		{"a few milliseconds left", 20 * time.Millisecond, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rdb := redistest.Start(t).Client(t)
			ctx := context.Background()
			le, err := singleton.NewLocks(rdb, 3*time.Second, nil).Acquire(ctx, "t", "run-a")
			if err != nil {
				t.Fatal(err)
			}
			defer le.Release(ctx)
			if tt.left > 0 {
				rdb.PExpire(ctx, singleton.KeyPrefix+"t", tt.left)
			}
			err = le.Verify(ctx)
			if tt.ok && err != nil {
				t.Errorf("verify with %v left of a 3s lease: %v, want nil", tt.left, err)
			}
			if !tt.ok && !errors.Is(err, singleton.ErrLost) {
				t.Errorf("verify with %v left of a 3s lease: %v, want ErrLost", tt.left, err)
			}
		})
	}
}

// failNth makes the nth command sent while armed fail, as a dropped
// connection would, and counts commands.
type failNth struct {
	armed atomic.Bool
	n     atomic.Int64
	nth   int64
}

func (f *failNth) DialHook(next redis.DialHook) redis.DialHook { return next }
func (f *failNth) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if f.armed.Load() && f.n.Add(1) == f.nth {
			err := &net.OpError{Op: "read", Net: "tcp", Err: errors.New("connection reset by peer")}
			cmd.SetErr(err)
			return err
		}
		return next(ctx, cmd)
	}
}
func (f *failNth) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func TestARedisErrorDuringVerifyIsTransient(t *testing.T) {
	// Whichever of Verify's round trips fails, the answer is "cannot
	// confirm" (abort this step) and the next Verify can pass again.
	for nth := int64(1); nth <= 3; nth++ {
		srv := redistest.Start(t)
		rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1})
		defer rdb.Close()
		f := &failNth{nth: nth}
		rdb.AddHook(f)
		ctx := context.Background()
		le, err := singleton.NewLocks(rdb, time.Minute, nil).Acquire(ctx, "t", "run-a")
		if err != nil {
			t.Fatal(err)
		}
		f.armed.Store(true)
		err = le.Verify(ctx)
		failed := f.n.Load() >= nth
		f.armed.Store(false)
		if failed && !errors.Is(err, singleton.ErrLost) {
			t.Errorf("command %d failed: verify = %v, want an error wrapping ErrLost", nth, err)
		}
		if err := le.Verify(ctx); err != nil {
			t.Errorf("command %d failed once: the next verify = %v, want nil (the lease is still held)", nth, err)
		}
		le.Release(ctx)
	}
}

func TestReleaseTwiceIsHarmless(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	ctx := context.Background()
	le, err := singleton.NewLocks(rdb, time.Minute, nil).Acquire(ctx, "t", "run-a")
	if err != nil {
		t.Fatal(err)
	}
	if err := le.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := le.Release(ctx); err != nil {
		t.Errorf("second release: %v", err)
	}
	if n, _ := rdb.Exists(ctx, singleton.KeyPrefix+"t").Result(); n != 0 {
		t.Error("lease still held after release")
	}
}

func TestTheLeaseContextEndsWithTheLeaseNamingTheLoss(t *testing.T) {
	tests := []struct {
		name  string
		lose  func(t *testing.T, srv *redistest.Server, proxy *faultproxy.Proxy)
		cause string
	}{
		{"taken over by another run", func(t *testing.T, srv *redistest.Server, _ *faultproxy.Proxy) {
			srv.Client(t).Set(context.Background(), singleton.KeyPrefix+"t", "other|1", time.Minute)
		}, "taken over"},
		{"Redis unreachable for longer than the lease", func(_ *testing.T, _ *redistest.Server, proxy *faultproxy.Proxy) {
			proxy.SetMode(faultproxy.Drop)
		}, "not renewed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := redistest.Start(t)
			proxy, err := faultproxy.Start(srv.Addr)
			if err != nil {
				t.Fatal(err)
			}
			defer proxy.Close()
			rdb := redis.NewClient(&redis.Options{Addr: proxy.Addr(), MaxRetries: -1, DialTimeout: 100 * time.Millisecond})
			defer rdb.Close()
			ctx := context.Background()
			le, err := singleton.NewLocks(rdb, 600*time.Millisecond, nil).Acquire(ctx, "t", "run-a")
			if err != nil {
				t.Fatal(err)
			}
			defer le.Release(ctx)
			tt.lose(t, srv, proxy)
			select {
			case <-le.Context().Done():
			case <-time.After(5 * time.Second):
				t.Fatal("lease context still live after the loss")
			}
			cause := context.Cause(le.Context())
			if !errors.Is(cause, singleton.ErrLost) || !strings.Contains(cause.Error(), tt.cause) {
				t.Errorf("cause %v, want ErrLost mentioning %q", cause, tt.cause)
			}
			if err := singleton.Verify(singleton.WithLease(le.Context(), le)); !errors.Is(err, singleton.ErrLost) {
				t.Errorf("verify after the loss: %v", err)
			}
		})
	}
}

func TestRenewalStopsWhenTheRunsContextEnds(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	ctx, cancel := context.WithCancel(context.Background())
	le, err := singleton.NewLocks(rdb, 300*time.Millisecond, nil).Acquire(ctx, "t", "run-a")
	if err != nil {
		t.Fatal(err)
	}
	cancel() // the run ended without Release (a bug, a panic elsewhere)
	time.Sleep(time.Second)
	if n, _ := rdb.Exists(context.Background(), singleton.KeyPrefix+"t").Result(); n != 0 {
		t.Error("the lease is still renewed after its run's context ended")
	}
	le.Release(context.Background())
}

func TestVerifyForALongWrite(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	ctx := context.Background()
	le, err := singleton.NewLocks(rdb, 3*time.Second, nil).Acquire(ctx, "t", "run-a")
	if err != nil {
		t.Fatal(err)
	}
	defer le.Release(ctx)
	lctx := singleton.WithLease(ctx, le)
	if err := singleton.VerifyFor(lctx, 2*time.Second); err != nil {
		t.Errorf("2s needed of a fresh 3s lease: %v", err)
	}
	if err := singleton.VerifyFor(lctx, 5*time.Second); !errors.Is(err, singleton.ErrLost) {
		t.Errorf("5s needed of a 3s lease: %v, want refused", err)
	}
	if err := singleton.Verify(lctx); err != nil {
		t.Errorf("a refused VerifyFor must not lose the lease: %v", err)
	}
}
