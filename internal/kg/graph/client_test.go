package graph_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"runtime/pprof"
	"strings"
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

// A FalkorDB frozen with its accept queue full (each connection opened
// while it is frozen takes a slot, 511 by default) completes no
// handshake. A call that needs a new connection fails with the dial's
// error within DialTimeout, whether its own deadline is later or it has
// none, and the goroutine go-redis dialled in has ended with it. With
// go-redis' defaults (5 attempts of 5 s) the call waited for its deadline
// and the dial went on for up to 25 s after it.
func TestNewClientsDialEndsWithinDialTimeoutWhenTheServerAcceptsNothing(t *testing.T) {
	srv := falkortest.Start(t, "--tcp-backlog", "1") // the smallest queue: 2 connections
	rdb, err := graph.NewClient(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	g := graph.New(rdb, "kg")
	if err := srv.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Signal(syscall.SIGCONT) })
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp", srv.Addr, 300*time.Millisecond)
		if err != nil {
			break // full: a connection is no longer established
		}
		t.Cleanup(func() { c.Close() })
		if i == 10 {
			t.Fatal("the frozen server's accept queue took more than 10 connections")
		}
	}

	tests := []struct {
		name     string
		deadline time.Duration // 0: none
	}{
		{"a call with a later deadline", 3 * time.Second},
		{"a call without a deadline", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			if tt.deadline > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.deadline)
				defer cancel()
			}
			start := time.Now()
			_, err := g.ROQuery(ctx, "RETURN 1", nil)
			took := time.Since(start)
			var op *net.OpError
			if !errors.As(err, &op) || op.Op != "dial" || took > graph.DialTimeout+500*time.Millisecond {
				t.Errorf("after %v: %v; want the dial's error within DialTimeout (%v)", took, err, graph.DialTimeout)
			}
			if dials := dialing(200 * time.Millisecond); dials != "" {
				t.Errorf("go-redis still dials %v after the call returned:\n%s", took, dials)
			}
		})
	}
}

// dialing waits up to within for no goroutine of this process to be in a
// go-redis pool's dial, and returns the stacks of those that still are.
func dialing(within time.Duration) string {
	for end := time.Now().Add(within); ; time.Sleep(10 * time.Millisecond) {
		var b bytes.Buffer
		_ = pprof.Lookup("goroutine").WriteTo(&b, 2)
		var left []string
		for _, rec := range strings.Split(b.String(), "\n\n") {
			if strings.Contains(rec, "pool.(*ConnPool).queuedNewConn") {
				left = append(left, rec)
			}
		}
		if len(left) == 0 || time.Now().After(end) {
			return strings.Join(left, "\n\n")
		}
	}
}
