package maint_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
	"github.com/stargazer/stargazer-jobs/internal/kg/maint"
	"github.com/stargazer/stargazer-jobs/internal/testkit/falkortest"
)

// write is one write query a recorder saw.
type write struct {
	params map[string]any
	res    *graph.Result
	err    error
}

// recorder wraps a graph and records every write query, so tests can check
// the size of each batch. before, if set, runs before write i (0-based) and
// can refuse it; after runs once write i has committed and can replace its
// reply with an error (a reply lost after the commit).
type recorder struct {
	maint.Graph
	before func(i int) error
	after  func(i int) error

	mu     sync.Mutex
	writes []write
}

func (r *recorder) Query(ctx context.Context, cypher string, params map[string]any, opts ...graph.Option) (*graph.Result, error) {
	r.mu.Lock()
	i := len(r.writes)
	r.mu.Unlock()
	if r.before != nil {
		if err := r.before(i); err != nil {
			return nil, err
		}
	}
	res, err := r.Graph.Query(ctx, cypher, params, opts...)
	r.mu.Lock()
	r.writes = append(r.writes, write{params: params, res: res, err: err})
	r.mu.Unlock()
	if err == nil && r.after != nil {
		if aerr := r.after(i); aerr != nil {
			return nil, aerr
		}
	}
	return res, err
}

func (r *recorder) Writes() []write {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]write(nil), r.writes...)
}

// shape describes a generated graph.
type shape struct {
	Nodes   int // entities, ids 0..Nodes-1 on a fresh graph
	Orphans int // the last Orphans entities get no relationship
	Degree  int // out-edges of every other entity, to distinct targets
	Seed    uint64
	// LastSeen stamps every entity and edge (Unix ms).
	LastSeen int64
}

// edges is how many relationships generate creates.
func (s shape) edges() int { return (s.Nodes - s.Orphans) * s.Degree }

// generate fills an empty graph quickly with UNWIND batches of 5,000 rows
// (edges find their ends by the indexed key: an id computed per row is not
// an id seek in FalkorDB but a scan of every node) and returns every edge's weight by (source id, target id). Weights are
// uniform in [0, 1).
func generate(tb testing.TB, g maint.Graph, s shape) map[[2]int64]float64 {
	tb.Helper()
	const batch = 5000
	for lo := 0; lo < s.Nodes; lo += batch {
		keys := make([]string, 0, batch)
		for i := lo; i < min(lo+batch, s.Nodes); i++ {
			keys = append(keys, fmt.Sprintf("entity-%d", i))
		}
		res := falkortest.Exec(tb, g, `UNWIND $keys AS k
CREATE (:Entity {key: k, name: k, normalized_name: k, type: 'topic', mention_count: 1, first_seen: $ts, last_seen: $ts})`,
			map[string]any{"keys": keys, "ts": s.LastSeen})
		if res.Stats.NodesCreated != int64(len(keys)) {
			tb.Fatalf("created %d nodes, want %d", res.Stats.NodesCreated, len(keys))
		}
	}
	active := int64(s.Nodes - s.Orphans)
	if s.Degree >= int(active) {
		tb.Fatalf("degree %d needs more than %d connected nodes", s.Degree, active)
	}
	rng := rand.New(rand.NewPCG(s.Seed, 1))
	weights := make(map[[2]int64]float64, s.edges())
	rows := make([]any, 0, batch)
	flush := func() {
		if len(rows) == 0 {
			return
		}
		res := falkortest.Exec(tb, g, `UNWIND $rows AS row
MATCH (a:Entity {key: 'entity-' + toString(row[0])}), (b:Entity {key: 'entity-' + toString(row[1])})
CREATE (a)-[:REL {type: 'related_to', weight: row[2], last_seen: $ts}]->(b)`,
			map[string]any{"rows": rows, "ts": s.LastSeen})
		if res.Stats.RelationshipsCreated != int64(len(rows)) {
			tb.Fatalf("created %d edges, want %d", res.Stats.RelationshipsCreated, len(rows))
		}
		rows = rows[:0]
	}
	for src := range active {
		// Distinct targets, never the source: offsets 1..active-1 from
		// it, consecutive from a random start.
		start := rng.Int64N(active - 1)
		for k := range int64(s.Degree) {
			dst := (src + 1 + (start+k)%(active-1)) % active
			w := rng.Float64()
			weights[[2]int64{src, dst}] = w
			rows = append(rows, []any{src, dst, w})
			if len(rows) == batch {
				flush()
			}
		}
	}
	flush()
	return weights
}

// edgeWeights returns every REL edge's weight and decay stamp by (source
// id, target id).
func edgeWeights(tb testing.TB, g maint.Graph) map[[2]int64][2]any {
	tb.Helper()
	res, err := g.ROQuery(context.Background(), "MATCH (a)-[r:REL]->(b) RETURN id(a), id(b), r.weight, r.decayed_at", nil)
	if err != nil {
		tb.Fatal(err)
	}
	out := make(map[[2]int64][2]any, len(res.Rows))
	for _, row := range res.Rows {
		a, _ := graph.AsInt64(row[0])
		b, _ := graph.AsInt64(row[1])
		out[[2]int64{a, b}] = [2]any{row[2], row[3]}
	}
	return out
}
