package graph_test

import (
	"context"
	"errors"
	"syscall"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
	"github.com/stargazer/stargazer-jobs/internal/testkit/falkortest"
)

// A FalkorDB frozen mid-connection (SIGSTOP): a query returns at its
// context's deadline with an error that says so, the write is not retried,
// and the client works again once the server resumes.
// (internal/clients checks the deadline for every client of the worker.)
func TestNewClientReturnsAtTheDeadlineFromAFrozenServer(t *testing.T) {
	srv := falkortest.Start(t, "TIMEOUT_MAX", "120000")
	rdb, err := graph.NewClient(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	g := graph.New(rdb, "kg", graph.Timeout(time.Minute))
	ctx := context.Background()
	if _, err := g.Query(ctx, "CREATE (:N {i: 0})", nil); err != nil {
		t.Fatal(err)
	}
	if err := srv.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	qctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = g.Query(qctx, "CREATE (:N {i: 1})", nil)
	took := time.Since(start)
	if err := srv.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(err, context.DeadlineExceeded) || took > 1500*time.Millisecond {
		t.Fatalf("after %v: %v; want context.DeadlineExceeded at 500ms", took, err)
	}
	res, err := g.ROQuery(ctx, "MATCH (n:N) RETURN count(n) AS n", nil)
	if err != nil {
		t.Fatalf("after SIGCONT: %v", err)
	}
	// The cut-off write was sent once: the resumed server may still run it
	// (a deadline ends the wait, not the query), but never twice.
	n, _ := res.Int64(0, "n")
	if n != 1 && n != 2 {
		t.Errorf("%d nodes, want 1 or 2", n)
	}
	t.Logf("nodes after SIGCONT: %d (2: the resumed server ran the write its client had given up on)", n)
}
