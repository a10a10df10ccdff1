package maint_test

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
	"github.com/stargazer/stargazer-jobs/internal/kg/maint"
	"github.com/stargazer/stargazer-jobs/internal/testkit/falkortest"
)

// pinger measures how long the server makes an unrelated client wait while
// a job runs: FalkorDB holds the server's global lock while a write
// commits, so PING latency from a separate connection is the stall every
// other client (the bot) sees.
type pinger struct {
	rdb  *redis.Client
	stop chan struct{}
	done chan struct{}
	lat  []time.Duration
}

func startPinger(rdb *redis.Client, every time.Duration) *pinger {
	p := &pinger{rdb: rdb, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-t.C:
			}
			start := time.Now()
			if err := p.rdb.Ping(context.Background()).Err(); err == nil {
				p.lat = append(p.lat, time.Since(start))
			}
		}
	}()
	return p
}

// Stop ends sampling and returns the p50, p99 and max latency.
func (p *pinger) Stop() (p50, p99, maxLat time.Duration, n int) {
	close(p.stop)
	<-p.done
	if len(p.lat) == 0 {
		return 0, 0, 0, 0
	}
	slices.Sort(p.lat)
	q := func(f float64) time.Duration { return p.lat[int(f*float64(len(p.lat)-1))] }
	return q(0.5), q(0.99), p.lat[len(p.lat)-1], len(p.lat)
}

// execTimes wraps a graph and keeps the server-side execution time of the
// slowest write.
type execTimes struct {
	maint.Graph
	mu      sync.Mutex
	slowest time.Duration
}

func (e *execTimes) Query(ctx context.Context, cypher string, params map[string]any, opts ...graph.Option) (*graph.Result, error) {
	res, err := e.Graph.Query(ctx, cypher, params, opts...)
	if err == nil {
		e.mu.Lock()
		e.slowest = max(e.slowest, res.Stats.ExecutionTime)
		e.mu.Unlock()
	}
	return res, err
}

// BenchmarkKGMaintenance200k decays a 200,000-edge graph (55,000 entities,
// 5,000 of them orphans, 4 out-edges each, uniform weights) and then
// collects its orphans, at several batch sizes. It reports throughput and
// the stall of an unrelated client (PING every 5 ms from another
// connection). Run with -benchtime 1x; docs/performance.md records the
// figures:
//
//	go test -run '^$' -bench KGMaintenance200k -benchtime 1x -timeout 30m ./internal/kg/maint/
func BenchmarkKGMaintenance200k(b *testing.B) {
	srv := falkortest.Start(b)
	rdb := srv.Client(b)
	probe := srv.Client(b)
	s := shape{Nodes: 55_000, Orphans: 5_000, Degree: 4, Seed: 11, LastSeen: 1}
	for _, batch := range []int{1000, 2000, 5000} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			ctx := context.Background()
			for i := range b.N {
				b.StopTimer()
				g := graph.New(rdb, fmt.Sprintf("kg-%d-%d", batch, i))
				if err := graph.EnsureSchema(ctx, g); err != nil {
					b.Fatal(err)
				}
				weights := generate(b, g, s)
				timed := &execTimes{Graph: g}
				b.StartTimer()

				p := startPinger(probe, 5*time.Millisecond)
				start := time.Now()
				st, err := maint.Decay(ctx, timed, maint.DecayOptions{Run: 1, BatchSize: batch, MinWeight: maint.DefaultMinWeight})
				decayTime := time.Since(start)
				p50, p99, pmax, n := p.Stop()
				if err != nil {
					b.Fatal(err)
				}
				if st.Decayed != int64(s.edges()) || st.MaxBatch > int64(batch) {
					b.Fatalf("decay %+v, want %d edges in batches of at most %d", st, s.edges(), batch)
				}
				b.StopTimer()
				if bad := checkDecay(b, g, weights, 1); bad != "" {
					b.Fatalf("batched decay wrong: %s", bad)
				}
				b.StartTimer()
				b.ReportMetric(float64(st.Decayed)/decayTime.Seconds(), "decay_edges/s")
				b.ReportMetric(float64(st.Batches), "decay_batches")
				b.ReportMetric(ms(p50), "decay_ping_p50_ms")
				b.ReportMetric(ms(p99), "decay_ping_p99_ms")
				b.ReportMetric(ms(pmax), "decay_ping_max_ms")
				b.ReportMetric(ms(timed.slowest), "decay_slowest_write_ms")
				b.Logf("decay batch=%d: %s for %+v; PING (%d samples) p50 %s p99 %s max %s; slowest write %s",
					batch, decayTime.Round(time.Millisecond), st, n, p50, p99, pmax, timed.slowest)

				timed.slowest = 0
				p = startPinger(probe, 5*time.Millisecond)
				start = time.Now()
				gc, err := maint.CollectOrphans(ctx, timed, maint.OrphanOptions{Before: 2, BatchSize: batch})
				gcTime := time.Since(start)
				p50, p99, pmax, n = p.Stop()
				if err != nil {
					b.Fatal(err)
				}
				if gc.Removed < int64(s.Orphans) {
					b.Fatalf("gc %+v, want at least %d", gc, s.Orphans)
				}
				b.ReportMetric(float64(s.Nodes)/gcTime.Seconds(), "gc_nodes_scanned/s")
				b.ReportMetric(ms(p99), "gc_ping_p99_ms")
				b.ReportMetric(ms(pmax), "gc_ping_max_ms")
				b.Logf("gc batch=%d: %s for %+v over %d entities; PING (%d samples) p50 %s p99 %s max %s; slowest write %s",
					batch, gcTime.Round(time.Millisecond), gc, s.Nodes, n, p50, p99, pmax, timed.slowest)

				b.StopTimer()
				if err := g.Delete(ctx); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}

// The same decay in one query over the whole graph (Decay's query without
// the id range and the LIMIT), for comparison: what the batching buys in
// stall.
func BenchmarkKGDecay200kUnbatchedBaseline(b *testing.B) {
	srv := falkortest.Start(b)
	rdb := srv.Client(b)
	probe := srv.Client(b)
	s := shape{Nodes: 55_000, Orphans: 5_000, Degree: 4, Seed: 11, LastSeen: 1}
	ctx := context.Background()
	for i := range b.N {
		b.StopTimer()
		g := graph.New(rdb, fmt.Sprintf("kg-unbatched-%d", i))
		if err := graph.EnsureSchema(ctx, g); err != nil {
			b.Fatal(err)
		}
		weights := generate(b, g, s)
		b.StartTimer()
		p := startPinger(probe, 5*time.Millisecond)
		start := time.Now()
		res, err := g.Query(ctx, `MATCH ()-[r:REL]->()
SET r.weight = r.weight * $factor, r.decayed_at = 1
WITH collect(CASE WHEN r.weight < $min THEN r END) AS weak
FOREACH (w IN weak | DELETE w)`, map[string]any{"factor": maint.DefaultDecayFactor, "min": maint.DefaultMinWeight})
		took := time.Since(start)
		p50, p99, pmax, n := p.Stop()
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(s.edges())/took.Seconds(), "decay_edges/s")
		b.ReportMetric(ms(pmax), "decay_ping_max_ms")
		b.StopTimer()
		if bad := checkDecay(b, g, weights, 1); bad != "" {
			b.Fatalf("unbatched decay wrong: %s", bad)
		}
		b.StartTimer()
		b.Logf("unbatched decay: %s, %d removed; PING (%d samples) p50 %s p99 %s max %s; server time %s",
			took.Round(time.Millisecond), res.Stats.RelationshipsDeleted, n, p50, p99, pmax, res.Stats.ExecutionTime)
		b.StopTimer()
		if err := g.Delete(ctx); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// checkDecay verifies a decayed benchmark graph against the generated
// weights: the right number of edges left, none under the threshold, every
// one stamped, and the weights summing to the decayed total.
func checkDecay(b *testing.B, g maint.Graph, weights map[[2]int64]float64, run int64) string {
	b.Helper()
	var wantLeft int64
	var wantSum float64
	for _, w := range weights {
		if w*maint.DefaultDecayFactor >= maint.DefaultMinWeight {
			wantLeft++
			wantSum += w * maint.DefaultDecayFactor
		}
	}
	res, err := g.ROQuery(context.Background(), `MATCH ()-[r:REL]->()
RETURN count(r) AS left, sum(CASE WHEN r.weight < $min THEN 1 ELSE 0 END) AS weak,
  sum(CASE WHEN r.decayed_at = $run THEN 0 ELSE 1 END) AS unstamped, sum(r.weight) AS total`,
		map[string]any{"min": maint.DefaultMinWeight, "run": run})
	if err != nil {
		b.Fatal(err)
	}
	c, err := res.Int64(0, "left")
	weak, _ := res.Int64(0, "weak")
	unstamped, _ := res.Int64(0, "unstamped")
	total, _ := res.Float64(0, "total")
	if err != nil {
		b.Fatal(err)
	}
	if c != wantLeft || weak != 0 || unstamped != 0 || math.Abs(total-wantSum) > 1e-6*wantSum {
		return fmt.Sprintf("%d edges left (want %d), %d under the threshold, %d not stamped, weights sum to %.3f (want %.3f)",
			c, wantLeft, weak, unstamped, total, wantSum)
	}
	return ""
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
