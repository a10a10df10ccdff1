package maint_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
	"github.com/stargazer/stargazer-jobs/internal/kg/maint"
	"github.com/stargazer/stargazer-jobs/internal/kg/writelock"
	"github.com/stargazer/stargazer-jobs/internal/testkit/falkortest"
)

// readerQuery is the typical graph read of the bot and the handlers: an
// entity looked up by its key, with its neighbours.
const readerQuery = `MATCH (e:Entity {key: $key})-[r:REL]-(n:Entity)
RETURN e.name, n.key, n.name, r.type, r.weight LIMIT 50`

// reader issues readerQuery for random connected entities in a loop from
// its own connection and keeps each query's latency: what a concurrent
// reader of the graph waits while maintenance writes.
type reader struct {
	stop chan struct{}
	done chan struct{}
	lat  []time.Duration
	errs int
}

func startReader(rdb *redis.Client, name string, keys int, pause time.Duration) *reader {
	r := &reader{stop: make(chan struct{}), done: make(chan struct{})}
	g := graph.New(rdb, name)
	rng := rand.New(rand.NewPCG(7, 7))
	go func() {
		defer close(r.done)
		for {
			select {
			case <-r.stop:
				return
			case <-time.After(pause):
			}
			key := fmt.Sprintf("entity-%d", rng.IntN(keys))
			start := time.Now()
			if _, err := g.ROQuery(context.Background(), readerQuery, map[string]any{"key": key}); err != nil {
				r.errs++
				continue
			}
			r.lat = append(r.lat, time.Since(start))
		}
	}()
	return r
}

// latencies are the percentiles of a sample.
type latencies struct {
	n             int
	p50, p99, max time.Duration
}

func (l latencies) String() string {
	return fmt.Sprintf("%d queries p50 %s p99 %s max %s", l.n, l.p50.Round(10*time.Microsecond),
		l.p99.Round(10*time.Microsecond), l.max.Round(10*time.Microsecond))
}

// Stop ends the loop and returns the latencies.
func (r *reader) Stop(tb testing.TB) latencies {
	close(r.stop)
	<-r.done
	if r.errs > 0 {
		tb.Errorf("reader: %d queries failed", r.errs)
	}
	if len(r.lat) == 0 {
		return latencies{}
	}
	slices.Sort(r.lat)
	q := func(f float64) time.Duration { return r.lat[int(f*float64(len(r.lat)-1))] }
	return latencies{n: len(r.lat), p50: q(0.5), p99: q(0.99), max: r.lat[len(r.lat)-1]}
}

// usedMemory is the server's INFO memory used_memory, in bytes.
func usedMemory(tb testing.TB, rdb *redis.Client) int64 {
	tb.Helper()
	info, err := rdb.Info(context.Background(), "memory").Result()
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
			var n int64
			fmt.Sscan(v, &n)
			return n
		}
	}
	tb.Fatal("no used_memory in INFO")
	return 0
}

// BenchmarkKGMaintenance1M decays a 1,000,000-edge graph (275,000
// entities, 25,000 of them orphans, 4 out-edges each, the 200k benchmark's
// shape five times over) and then collects its orphans, as the handlers
// run them: every write under the graph write lock, decay recording its
// progress in the run log after every id range. A reader on its own
// connection looks entities up by key with their neighbours every 2 ms
// before and during each job; its latency is the stall maintenance causes
// a graph reader (goal: max <= 50 ms). Sub-benchmarks are batch sizes; each
// loads its own graph (about two minutes here). Run with -benchtime 1x;
// docs/performance.md ("Data at scale") records the figures:
//
//	go test -run '^$' -bench 'KGMaintenance1M' -benchtime 1x -timeout 60m ./internal/kg/maint/
func BenchmarkKGMaintenance1M(b *testing.B) {
	srv := falkortest.Start(b)
	rdb := srv.Client(b)
	probe := srv.Client(b)
	readConn := srv.Client(b)
	s := shape{Nodes: 275_000, Orphans: 25_000, Degree: 4, Seed: 11, LastSeen: 1}
	for _, batch := range []int{500, 1000, 2000, 5000} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			ctx := context.Background()
			for i := range b.N {
				b.StopTimer()
				name := fmt.Sprintf("kg1m-%d-%d", batch, i)
				g := graph.New(rdb, name)
				if err := graph.EnsureSchema(ctx, g); err != nil {
					b.Fatal(err)
				}
				memBefore := usedMemory(b, rdb)
				loadStart := time.Now()
				weights := generate(b, g, s)
				loadTime := time.Since(loadStart)
				memGraph := usedMemory(b, rdb) - memBefore
				gmem, _ := rdb.Do(ctx, "GRAPH.MEMORY", "USAGE", name).Result()
				b.Logf("loaded %d entities, %d edges in %s; used_memory +%.1f MiB; GRAPH.MEMORY USAGE %v",
					s.Nodes, s.edges(), loadTime.Round(time.Second), float64(memGraph)/(1<<20), gmem)
				b.ReportMetric(float64(memGraph)/(1<<20), "graph_used_MiB")

				// The reader alone: its latency without maintenance.
				rd := startReader(readConn, name, s.Nodes-s.Orphans, 2*time.Millisecond)
				time.Sleep(3 * time.Second)
				idle := rd.Stop(b)
				b.Logf("reader alone: %s", idle)
				b.ReportMetric(ms(idle.max), "idle_read_max_ms")

				// Decay as kg_decay_task runs it.
				locked := writelock.Wrap(g, rdb, 0)
				timed := &execTimes{Graph: locked}
				every := &writeTimes{Graph: timed}
				runs := maint.NewRunLog(rdb)
				run, err := runs.Begin(ctx, fmt.Sprintf("kg_decay_task@%d", i+1), 1, time.Now())
				if err != nil {
					b.Fatal(err)
				}
				loadBefore := loadAvg()
				b.StartTimer()
				p := startPinger(probe, 5*time.Millisecond)
				rd = startReader(readConn, name, s.Nodes-s.Orphans, 2*time.Millisecond)
				start := time.Now()
				st, err := maint.Decay(ctx, every, maint.DecayOptions{Run: run.Stamp, From: run.Next, BatchSize: batch,
					MinWeight: maint.DefaultMinWeight,
					Progress:  func(ctx context.Context, next int64) error { return runs.Advance(ctx, run, next) }})
				decayTime := time.Since(start)
				during := rd.Stop(b)
				_, _, pmax, _ := p.Stop()
				b.StopTimer()
				if err != nil {
					b.Fatal(err)
				}
				if err := runs.Finish(ctx, run, st, time.Now()); err != nil {
					b.Fatal(err)
				}
				if st.Decayed != int64(s.edges()) || st.MaxBatch > int64(batch) {
					b.Fatalf("decay %+v, want %d edges in batches of at most %d", st, s.edges(), batch)
				}
				if bad := checkDecay(b, g, weights, run.Stamp); bad != "" {
					b.Fatalf("decay wrong: %s", bad)
				}
				b.ReportMetric(decayTime.Seconds(), "decay_s")
				b.ReportMetric(float64(st.Batches), "decay_batches")
				b.ReportMetric(ms(during.p50), "decay_read_p50_ms")
				b.ReportMetric(ms(during.p99), "decay_read_p99_ms")
				b.ReportMetric(ms(during.max), "decay_read_max_ms")
				b.ReportMetric(ms(pmax), "decay_ping_max_ms")
				b.Logf("decay batch=%d: %s for %+v; reader %s; PING max %s; slowest write %s; load %s→%s; writes %s",
					batch, decayTime.Round(time.Millisecond), st, during, pmax, timed.slowest, loadBefore, loadAvg(), every)

				// Orphan GC as limbic_maintenance runs it.
				timed.slowest = 0
				b.StartTimer()
				p = startPinger(probe, 5*time.Millisecond)
				rd = startReader(readConn, name, s.Nodes-s.Orphans, 2*time.Millisecond)
				start = time.Now()
				gc, err := maint.CollectOrphans(ctx, timed, maint.OrphanOptions{Before: 2, BatchSize: batch})
				gcTime := time.Since(start)
				during = rd.Stop(b)
				_, _, pmax, _ = p.Stop()
				b.StopTimer()
				if err != nil {
					b.Fatal(err)
				}
				if gc.Removed < int64(s.Orphans) {
					b.Fatalf("gc %+v, want at least %d", gc, s.Orphans)
				}
				b.ReportMetric(gcTime.Seconds(), "gc_s")
				b.ReportMetric(ms(during.p99), "gc_read_p99_ms")
				b.ReportMetric(ms(during.max), "gc_read_max_ms")
				b.ReportMetric(ms(pmax), "gc_ping_max_ms")
				b.Logf("gc batch=%d: %s for %+v over %d entities; reader %s; PING max %s; slowest write %s",
					batch, gcTime.Round(time.Millisecond), gc, s.Nodes, during, pmax, timed.slowest)

				if err := g.Delete(ctx); err != nil {
					b.Fatal(err)
				}
				if err := rdb.Del(ctx, maint.DecayRunKey).Err(); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}

// loadAvg is the machine's load average over the last minute, for the log:
// the reader's worst latencies on a shared machine follow it.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) > 0 {
		return f[0]
	}
	return "?"
}

// writeTimes keeps the server-side execution time of every write, to tell
// a batch's own cost from the occasional slow one.
type writeTimes struct {
	maint.Graph
	took []time.Duration
}

func (w *writeTimes) Query(ctx context.Context, cypher string, params map[string]any, opts ...graph.Option) (*graph.Result, error) {
	res, err := w.Graph.Query(ctx, cypher, params, opts...)
	if err == nil {
		w.took = append(w.took, res.Stats.ExecutionTime)
	}
	return res, err
}

// String gives the median write, how many took over 20 ms, and the five
// slowest with their place in the run.
func (w *writeTimes) String() string {
	if len(w.took) == 0 {
		return "none"
	}
	idx := make([]int, len(w.took))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int { return int(w.took[b] - w.took[a]) })
	sorted := slices.Sorted(slices.Values(w.took))
	over := 0
	for _, d := range w.took {
		if d > 20*time.Millisecond {
			over++
		}
	}
	var top []string
	for _, i := range idx[:min(5, len(idx))] {
		top = append(top, fmt.Sprintf("#%d %s", i, w.took[i].Round(100*time.Microsecond)))
	}
	return fmt.Sprintf("median %s, %d over 20 ms, slowest %s", sorted[len(sorted)/2].Round(10*time.Microsecond), over, strings.Join(top, ", "))
}
