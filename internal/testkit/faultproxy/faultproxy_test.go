package faultproxy_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/testkit/faultproxy"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

func TestProxyPassesStallsAndDrops(t *testing.T) {
	srv := redistest.Start(t)
	p, err := faultproxy.Start(srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	rdb := redis.NewClient(&redis.Options{Addr: p.Addr(), MaxRetries: -1, ReadTimeout: 300 * time.Millisecond, WriteTimeout: 300 * time.Millisecond})
	defer rdb.Close()
	ctx := context.Background()
	if err := rdb.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("pass: %v", err)
	}

	p.SetMode(faultproxy.Stall)
	if err := rdb.Get(ctx, "k").Err(); err == nil {
		t.Fatal("stall: a command got through")
	}
	p.SetMode(faultproxy.Pass)
	if v, err := rdb.Get(ctx, "k").Result(); err != nil || v != "v" {
		t.Fatalf("after stall: %q %v", v, err)
	}

	p.SetMode(faultproxy.Drop)
	if err := rdb.Get(ctx, "k").Err(); err == nil {
		t.Fatal("drop: a command got through")
	}
	p.SetMode(faultproxy.Pass)
	if v, err := rdb.Get(ctx, "k").Result(); err != nil || v != "v" {
		t.Fatalf("after drop: %q %v", v, err)
	}

	p.SetLatency(20 * time.Millisecond)
	start := time.Now()
	if err := rdb.Get(ctx, "k").Err(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 40*time.Millisecond {
		// A correctness check of the injected delay (two hops), not a
		// performance assertion.
		t.Fatalf("round trip took %v with 20ms each way", d)
	}
}
