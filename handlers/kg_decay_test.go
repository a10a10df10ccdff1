package handlers

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
	"github.com/stargazer/stargazer-jobs/internal/kg/maint"
	"github.com/stargazer/stargazer-jobs/internal/queue/events"
	"github.com/stargazer/stargazer-jobs/internal/queue/singleton"
	"github.com/stargazer/stargazer-jobs/internal/testkit/falkortest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// eventLog records published debug events.
type eventLog struct {
	mu     sync.Mutex
	events []events.Event
}

func (l *eventLog) Publish(_ context.Context, e events.Event) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, e)
	return nil
}

func (l *eventLog) All() []events.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]events.Event(nil), l.events...)
}

// hookedGraph calls afterWrite once each write query has committed; an
// error it returns replaces the reply (the reply lost after the commit, as
// when the worker dies there).
type hookedGraph struct {
	Graph
	mu         sync.Mutex
	writes     int
	afterWrite func(i int) error
}

func (h *hookedGraph) Query(ctx context.Context, cypher string, params map[string]any, opts ...graph.Option) (*graph.Result, error) {
	res, err := h.Graph.Query(ctx, cypher, params, opts...)
	h.mu.Lock()
	i := h.writes
	h.writes++
	h.mu.Unlock()
	if err == nil && h.afterWrite != nil {
		if herr := h.afterWrite(i); herr != nil {
			return nil, herr
		}
	}
	return res, err
}

func (h *hookedGraph) Writes() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.writes
}

// kgDeps returns handler dependencies on a real Redis and a real FalkorDB
// with a small batch size, and the graph and event log behind them.
func kgDeps(t *testing.T, now time.Time) (Deps, *graph.Graph, *redis.Client, *eventLog) {
	t.Helper()
	g := falkortest.Graph(t, false)
	if err := graph.EnsureSchema(context.Background(), g); err != nil {
		t.Fatal(err)
	}
	rdb := redistest.Start(t).Client(t)
	ev := &eventLog{}
	return Deps{
		Redis: rdb, Logger: slog.New(slog.DiscardHandler), Now: func() time.Time { return now },
		Graph: g, Events: ev, KG: KGSettings{DecayFactor: 0.5, DecayMinWeight: 0.2, BatchSize: 10},
	}, g, rdb, ev
}

// decayRun runs kg_decay_task, built from d, as the occurrence taskID.
func decayRun(ctx context.Context, d Deps, taskID string) (Result, error) {
	spec, _ := jobs.Lookup(jobs.KGDecay)
	return newKGDecay(newKit(d, spec)).(*kgDecay).run(ctx, taskID)
}

// seedChain creates entities e0..e(n-1) and an edge e(i) -> e(i+1) of
// weight (i+1)/n, and returns the weights by source key.
func seedChain(t *testing.T, g *graph.Graph, n int) map[string]float64 {
	t.Helper()
	_, err := g.Query(context.Background(), `UNWIND range(0, $n - 1) AS i
CREATE (:Entity {key: 'e' + toString(i), last_seen: 1})
WITH collect(i) AS all
UNWIND all AS i
MATCH (a:Entity {key: 'e' + toString(i)}), (b:Entity {key: 'e' + toString(i + 1)})
CREATE (a)-[:REL {type: 'next', weight: toFloat(i + 1) / $n}]->(b)`, map[string]any{"n": n})
	if err != nil {
		t.Fatal(err)
	}
	w := map[string]float64{}
	for i := range n - 1 {
		w["e"+strconv.Itoa(i)] = float64(i+1) / float64(n)
	}
	return w
}

// chainWeights returns the current weights by source key.
func chainWeights(t *testing.T, g *graph.Graph) map[string]float64 {
	t.Helper()
	res, err := g.ROQuery(context.Background(), "MATCH (a)-[r:REL]->() RETURN a.key, r.weight", nil)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for i := range res.Rows {
		k, _ := res.Text(i, "a.key")
		w, _ := res.Float64(i, "r.weight")
		out[k] = w
	}
	return out
}

// checkDecayed checks that the graph holds exactly the seeded edges decayed
// times by factor and still at least min.
func checkDecayed(t *testing.T, g *graph.Graph, seeded map[string]float64, factor, min float64, times int) {
	t.Helper()
	got := chainWeights(t, g)
	want := map[string]float64{}
	for k, w := range seeded {
		for range times {
			if w = w * factor; w < min {
				break
			}
		}
		if w >= min {
			want[k] = w
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d edges left, want %d: %v", len(got), len(want), got)
	}
	for k, w := range want {
		if math.Abs(got[k]-w) > 1e-12 {
			t.Errorf("edge from %s: weight %v, want %v (decayed %d times)", k, got[k], w, times)
		}
	}
}

func TestKGDecayDecaysOncePerScheduledOccurrence(t *testing.T) {
	ctx := context.Background()
	d, g, rdb, ev := kgDeps(t, time.UnixMilli(1_800_000_000_000))
	seeded := seedChain(t, g, 40)

	first, err := decayRun(ctx, d, "kg_decay_task@1800000000000")
	if err != nil {
		t.Fatal(err)
	}
	// Weights (i+1)/40 halved: under 0.2 when i+1 < 16, so 15 of 39 go.
	if first["decayed"] != int64(39) || first["removed"] != int64(15) || first["batches"].(int64) < 4 {
		t.Errorf("first delivery %v, want 39 decayed, 15 removed in batches of 10", first)
	}
	again, err := decayRun(ctx, d, "kg_decay_task@1800000000000")
	if err != nil {
		t.Fatal(err)
	}
	if again["decayed"] != 0 || again["removed"] != 0 || again["already_applied"] != true {
		t.Errorf("second delivery of the occurrence %v, want nothing done", again)
	}
	checkDecayed(t, g, seeded, 0.5, 0.2, 1)
	if h := rdb.HGetAll(ctx, maint.DecayRunKey).Val(); h["state"] != maint.StateDone || h["stamp"] != "1800000000000" {
		t.Errorf("run record %v", h)
	}

	next, err := decayRun(ctx, d, "kg_decay_task@1800086400000")
	if err != nil {
		t.Fatal(err)
	}
	if next["decayed"] != int64(24) {
		t.Errorf("next occurrence %v, want the 24 remaining edges decayed", next)
	}
	checkDecayed(t, g, seeded, 0.5, 0.2, 2)

	// The handler publishes the original's event for every run.
	if _, err := work(ctx, d, jobs.KGDecay, &jobs.Empty{}); err != nil {
		t.Fatal(err)
	}
	evs := ev.All()
	if len(evs) != 1 || evs[0].Topic != "kg_decay" || evs[0].Source != "background_tasks" || evs[0].Status != "ok" ||
		!strings.HasPrefix(evs[0].Preview, "removed=") || evs[0].Payload["removed"] == nil {
		t.Errorf("events %+v", evs)
	}
}

func TestKGDecayRetryAfterACrashResumesAndDecaysEachEdgeOnce(t *testing.T) {
	ctx := context.Background()
	d, g, _, ev := kgDeps(t, time.UnixMilli(1_800_000_000_000))
	seeded := seedChain(t, g, 60)
	crash := errors.New("connection reset")
	hooked := &hookedGraph{Graph: g, afterWrite: func(i int) error {
		if i == 2 {
			return crash
		}
		return nil
	}}
	d.Graph = hooked
	const id = "kg_decay_task@1800000000000"
	if _, err := decayRun(ctx, d, id); !errors.Is(err, crash) {
		t.Fatalf("first attempt: %v, want the crash", err)
	}
	if hooked.Writes() != 3 {
		t.Fatalf("first attempt made %d writes, want 3 (the third committed, its reply lost)", hooked.Writes())
	}
	hooked.afterWrite = nil
	res, err := decayRun(ctx, d, id)
	if err != nil {
		t.Fatal(err)
	}
	if res["resumed"] != true || res["decayed"].(int64) >= 59 {
		t.Errorf("retry %v, want a resumed run that decays only the rest", res)
	}
	checkDecayed(t, g, seeded, 0.5, 0.2, 1)

	d.Graph = &hookedGraph{Graph: g, afterWrite: func(int) error { return crash }}
	if _, err := work(ctx, d, jobs.KGDecay, &jobs.Empty{}); err == nil {
		t.Fatal("no error")
	}
	evs := ev.All()
	if len(evs) != 1 || evs[0].Status != "error" || !strings.HasPrefix(evs[0].Preview, "error=kg decay") ||
		!strings.Contains(evs[0].Payload["error"].(string), "connection reset") {
		t.Errorf("events %+v, want one error event", evs)
	}
}

func TestKGDecayWritesNothingMoreOnceTheSingletonLeaseIsLost(t *testing.T) {
	ctx := context.Background()
	d, g, rdb, _ := kgDeps(t, time.UnixMilli(1_800_000_000_000))
	seedChain(t, g, 60)
	const id = "kg_decay_task@1800000000000"
	le, err := singleton.NewLocks(rdb, time.Minute, nil).Acquire(ctx, jobs.KGDecay, id)
	if err != nil {
		t.Fatal(err)
	}
	defer le.Release(ctx)
	// Another instance takes the lease over after the first write.
	hooked := &hookedGraph{Graph: g, afterWrite: func(i int) error {
		if i == 0 {
			return rdb.Set(ctx, singleton.KeyPrefix+jobs.KGDecay, "other-task|nonce", time.Minute).Err()
		}
		return nil
	}}
	d.Graph = hooked
	_, err = decayRun(singleton.WithLease(ctx, le), d, id)
	if !errors.Is(err, singleton.ErrLost) {
		t.Fatalf("err = %v, want the lost lease", err)
	}
	if hooked.Writes() != 1 {
		t.Errorf("%d writes, want none after the lease was lost", hooked.Writes())
	}
}

func TestKGDecayWithoutAGraphIsNotRetried(t *testing.T) {
	d := Deps{Logger: slog.New(slog.DiscardHandler), Now: time.Now, Redis: redistest.Start(t).Client(t)}
	_, err := work(context.Background(), d, jobs.KGDecay, &jobs.Empty{})
	if !errors.Is(err, asynq.SkipRetry) {
		t.Fatalf("err = %v, want SkipRetry", err)
	}
}

func TestKGDecayOccurrenceStampIsTheDueTime(t *testing.T) {
	now := time.UnixMilli(5000)
	for id, want := range map[string]int64{
		"kg_decay_task@1800000000000": 1800000000000,
		"kg_decay_task@soon":          5000,
		"0f6b3c1e-manual":             5000,
		"other_task@42":               5000,
	} {
		if got := occurrenceStamp(id, now); got != want {
			t.Errorf("occurrenceStamp(%q) = %d, want %d", id, got, want)
		}
	}
}

// A real asynq worker runs a scheduled occurrence: the handler takes the
// run stamp from the task ID.
func TestKGDecayEndToEndOnAWorker(t *testing.T) {
	if testing.Short() {
		t.Skip("a whole worker: skipped under -short")
	}
	ctx := context.Background()
	d, g, rdb, _ := kgDeps(t, time.Now())
	seedChain(t, g, 20)
	srv := redistest.Start(t)
	opt := asynq.RedisClientOpt{Addr: srv.Addr}
	client := asynq.NewClient(opt)
	defer client.Close()
	mux := asynq.NewServeMux()
	for _, r := range Register(mux, d, jobs.Catalog(), jobs.Redis|jobs.KG) {
		if r.Task == jobs.KGDecay && !r.Registered {
			t.Fatalf("not registered: %s", r.Reason)
		}
	}
	worker := asynq.NewServer(opt, asynq.Config{Concurrency: 1, Queues: map[string]int{jobs.QueueMaintenance: 1}, LogLevel: asynq.FatalLevel})
	if err := worker.Start(mux); err != nil {
		t.Fatal(err)
	}
	defer worker.Shutdown()
	const id = "kg_decay_task@1234"
	if _, err := client.EnqueueContext(ctx, asynq.NewTask(jobs.KGDecay, nil), asynq.Queue(jobs.QueueMaintenance), asynq.TaskID(id)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for rdb.HGet(ctx, maint.DecayRunKey, "state").Val() != maint.StateDone {
		if time.Now().After(deadline) {
			t.Fatalf("run record %v", rdb.HGetAll(ctx, maint.DecayRunKey).Val())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if h := rdb.HGetAll(ctx, maint.DecayRunKey).Val(); h["task_id"] != id || h["stamp"] != "1234" {
		t.Errorf("run record %v", h)
	}
	res, err := g.ROQuery(ctx, "MATCH ()-[r:REL]->() RETURN DISTINCT r.decayed_at AS s", nil)
	if err != nil || len(res.Rows) != 1 || res.Rows[0][0] != int64(1234) {
		t.Errorf("decay stamps %v (%v), want every edge stamped 1234", res, err)
	}
}
