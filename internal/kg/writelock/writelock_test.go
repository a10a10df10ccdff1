package writelock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
	"github.com/stargazer/stargazer-jobs/internal/kg/writelock"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

type countingGraph struct{ writes, reads int }

func (c *countingGraph) Query(context.Context, string, map[string]any, ...graph.Option) (*graph.Result, error) {
	c.writes++
	return &graph.Result{}, nil
}

func (c *countingGraph) ROQuery(context.Context, string, map[string]any, ...graph.Option) (*graph.Result, error) {
	c.reads++
	return &graph.Result{}, nil
}

func TestWritesWaitForTheLockAndReadsDoNot(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	inner := &countingGraph{}
	g := writelock.Wrap(inner, rdb, 0)

	release, _, err := writelock.Acquire(context.Background(), rdb, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := g.Query(ctx, "MERGE ()", nil); !errors.Is(err, context.DeadlineExceeded) || inner.writes != 0 {
		t.Fatalf("write while another writer holds the lock: err %v, %d writes", err, inner.writes)
	}
	if _, err := g.ROQuery(context.Background(), "MATCH (n) RETURN n", nil); err != nil || inner.reads != 1 {
		t.Fatalf("reads must not wait: %v", err)
	}
	release()
	if _, err := g.Query(context.Background(), "MERGE ()", nil); err != nil || inner.writes != 1 {
		t.Fatalf("write after release: %v, %d writes", err, inner.writes)
	}
	if n, _ := rdb.Exists(context.Background(), writelock.Key).Result(); n != 0 {
		t.Fatal("the lock outlived the write")
	}
}

func TestReleaseTwiceReleasesOnceAndNeverAnotherHoldersLock(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	ctx := context.Background()
	release, _, err := writelock.Acquire(ctx, rdb, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	release()
	other, waited, err := writelock.Acquire(ctx, rdb, time.Minute)
	if err != nil || waited > time.Second {
		t.Fatalf("acquire after release: %v after %v", err, waited)
	}
	release() // a second release must not free the other holder's lock
	if n, _ := rdb.Exists(ctx, writelock.Key).Result(); n != 1 {
		t.Fatal("a stale release freed another holder's lock")
	}
	other()
}
