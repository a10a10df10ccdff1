package clients_test

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/clients/gemini"
	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/clients/platform/discord"
	"github.com/stargazer/stargazer-jobs/internal/clients/platform/matrix"
	"github.com/stargazer/stargazer-jobs/internal/config"
	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
	"github.com/stargazer/stargazer-jobs/internal/testkit/falkortest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/faultproxy"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

const (
	// deadline is the context deadline each call gets.
	deadline = 300 * time.Millisecond
	// margin is how late past it a call may return: scheduling noise on a
	// loaded machine, far below any client-side timeout of the clients.
	margin = 700 * time.Millisecond
	// giveUp ends the wait for a call that ignores its deadline.
	giveUp = 15 * time.Second
)

// silentServer accepts TCP connections and reads whatever comes, but never
// answers: a server that is frozen (SIGSTOP) or wedged, as the kernel
// still completes the handshake for it.
func silentServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() { defer wg.Done(); _, _ = io.Copy(io.Discard, c) }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// call is one network call of a client, made with ctx.
type call func(ctx context.Context) error

// assertBounded runs c with a context that ends after deadline and fails
// the test unless c returns an error by deadline+margin.
func assertBounded(t *testing.T, c call) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- c(ctx) }()
	select {
	case err := <-done:
		took := time.Since(start)
		if took > deadline+margin {
			t.Errorf("returned %v after a %v deadline (allowed: %v): %v", took.Round(time.Millisecond), deadline, deadline+margin, err)
		}
		if err == nil {
			t.Errorf("a silent server got no error after %v", took.Round(time.Millisecond))
		}
		t.Logf("returned after %v: %v", took.Round(time.Millisecond), err)
	case <-time.After(giveUp):
		t.Fatalf("still blocked %v after a %v deadline", giveUp, deadline)
	}
}

// redisClients are the Redis-protocol clients the worker builds, for the
// server at addr: the shared Redis (REDIS_URL) and the knowledge graph
// (FALKORDB_URL).
func redisClients(t *testing.T, addr string) map[string]call {
	t.Helper()
	rconf, err := config.Config{RedisURL: "redis://" + addr + "/0"}.Redis()
	if err != nil {
		t.Fatal(err)
	}
	rdb := rconf.NewClient()
	grdb, err := graph.NewClient("redis://" + addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close(); grdb.Close() })
	g := graph.New(grdb, "kg", graph.Timeout(time.Minute))
	// The handlers' fan-out enqueues go through asynq's client; it must
	// share the client above: one asynq builds from a RedisConnOpt has no
	// ContextTimeoutEnabled and returns only at its 5 s read timeout.
	enq := asynq.NewClientFromRedisClient(rdb)
	return map[string]call{
		"redis":    func(ctx context.Context) error { return rdb.Set(ctx, "k", "v", 0).Err() },
		"falkordb": func(ctx context.Context) error { _, err := g.Query(ctx, "MERGE (n:E {name: 'x'})", nil); return err },
		"asynq enqueuer": func(ctx context.Context) error {
			_, err := enq.EnqueueContext(ctx, asynq.NewTask("x", nil), asynq.Queue("default"))
			return err
		},
	}
}

// Every client the worker builds returns by its context's deadline against
// a server that accepts connections and never answers.
func TestEveryClientReturnsByItsDeadlineWhenTheServerIsSilent(t *testing.T) {
	addr := silentServer(t)
	base := "http://" + addr
	calls := redisClients(t, addr)

	sentinel, err := config.Config{RedisURL: "redis://" + addr + "/0?master_name=mymaster"}.Redis()
	if err != nil {
		t.Fatal(err)
	}
	failover := sentinel.NewClient()
	t.Cleanup(func() { failover.Close() })
	calls["redis via sentinel"] = func(ctx context.Context) error { return failover.Get(ctx, "k").Err() }

	// As internal/app builds them.
	chat := llm.New(llm.Options{BaseURL: base, APIKey: "key", Timeout: 120 * time.Second})
	calls["llm chat"] = func(ctx context.Context) error { _, err := chat.Chat(ctx, llm.Prompt("m", "hi")); return err }
	calls["llm embeddings"] = func(ctx context.Context) error { _, _, err := chat.Embed(ctx, "m", []string{"hi"}); return err }
	prober, err := gemini.NewProber(gemini.NewPool(redistest.Start(t).Client(t)), gemini.ProberOptions{
		BaseURL: base, Keys: []string{"AIza-test-key"}, Model: "text-embedding-004",
	})
	if err != nil {
		t.Fatal(err)
	}
	calls["gemini key probe"] = func(ctx context.Context) error {
		_, err := prober.Probe(ctx, time.Now())
		return err
	}
	dc := discord.New(discord.Options{BaseURL: base, Token: "token"})
	calls["discord"] = func(ctx context.Context) error { _, err := dc.Identity(ctx); return err }
	mx := matrix.New(matrix.Options{HomeserverURL: base, Token: "token"})
	calls["matrix"] = func(ctx context.Context) error { _, err := mx.Identity(ctx); return err }

	for name, c := range calls {
		t.Run(name, func(t *testing.T) { assertBounded(t, c) })
	}
}

// The Redis-protocol clients also return by the deadline when the server
// goes silent after answering: a pooled connection whose peer froze (a
// FalkorDB or Redis stopped with SIGSTOP, a partition that keeps sockets
// open).
func TestRedisClientsReturnByTheirDeadlineWhenAnAnsweringServerFreezes(t *testing.T) {
	redisAddr := redistest.Start(t).Addr
	for name, addr := range map[string]string{"redis": redisAddr, "asynq enqueuer": redisAddr, "falkordb": falkortest.Start(t).Addr} {
		t.Run(name, func(t *testing.T) {
			proxy, err := faultproxy.Start(addr)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { proxy.Close() })
			c := redisClients(t, proxy.Addr())[name]
			if err := c(context.Background()); err != nil {
				t.Fatalf("before the freeze: %v", err)
			}
			proxy.SetMode(faultproxy.Stall)
			assertBounded(t, c)
			proxy.SetMode(faultproxy.Pass)
			if err := c(context.Background()); err != nil {
				t.Errorf("after the freeze: %v", err)
			}
		})
	}
}
