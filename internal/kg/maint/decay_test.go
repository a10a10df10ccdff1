package maint_test

import (
	"context"
	"errors"
	"math"
	"testing"

	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
	"github.com/stargazer/stargazer-jobs/internal/kg/maint"
	"github.com/stargazer/stargazer-jobs/internal/testkit/falkortest"
)

// checkDecayedOnce compares the graph with the weights before decay: every
// edge decayed exactly once by factor and stamped run, and exactly the
// edges under min gone.
func checkDecayedOnce(t *testing.T, g maint.Graph, before map[[2]int64]float64, factor, min float64, run int64) (kept, removed int) {
	t.Helper()
	after := edgeWeights(t, g)
	for k, w := range before {
		want := w * factor
		got, ok := after[k]
		if want < min {
			if ok {
				t.Errorf("edge %v: weight %v decayed to %v, under %v, but kept", k, w, got[0], min)
			}
			removed++
			continue
		}
		if !ok {
			t.Errorf("edge %v: weight %v decayed to %v, not under %v, but removed", k, w, want, min)
			continue
		}
		gw, err := graph.AsFloat64(got[0])
		if err != nil || math.Abs(gw-want) > 1e-12*math.Max(1, want) {
			t.Errorf("edge %v: weight %v, want %v (%v * %v once)", k, got[0], want, w, factor)
		}
		if got[1] != run {
			t.Errorf("edge %v: decayed_at %v, want %d", k, got[1], run)
		}
		kept++
	}
	if len(after) != kept {
		t.Errorf("%d edges after decay, want %d", len(after), kept)
	}
	return kept, removed
}

func TestDecayMultipliesWeightsAndRemovesExactlyTheEdgesUnderTheThreshold(t *testing.T) {
	ctx := context.Background()
	g := falkortest.Graph(t, true)
	falkortest.Exec(t, g, `CREATE (a:Entity {key: 'a'}), (b:Entity {key: 'b'}), (c:Entity {key: 'c'}),
  (e:Epoch {key: '2026-11-27'}), (k:Category {key: 'tools'}),
  (a)-[:REL {type: 'knows', weight: 1.0}]->(b),
  (a)-[:REL {type: 'likes', weight: 0.5}]->(c),
  (b)-[:REL {type: 'knows', weight: 0.2}]->(a),
  (b)-[:REL {type: 'likes', weight: 0.1}]->(c),
  (c)-[:REL {type: 'knows', weight: 2}]->(c),
  (a)-[:REL {type: 'mentioned_in', weight: 0.3}]->(e),
  (k)-[:REL {type: 'contains', weight: 0.25}]->(a),
  (c)-[:REL {type: 'in_category'}]->(k)`, nil)
	type edge struct {
		from, typ string
		weight    any
	}
	st, err := maint.Decay(ctx, g, maint.DecayOptions{Run: 7, Factor: 0.5, MinWeight: 0.125})
	if err != nil {
		t.Fatal(err)
	}
	// 1.0 -> 0.5, 0.5 -> 0.25, 0.2 -> 0.1 (removed), 0.1 -> 0.05 (removed),
	// 2 -> 1.0, 0.3 -> 0.15, 0.25 -> 0.125 (kept: not under); the edge
	// without a weight is left alone.
	if st.Decayed != 7 || st.Removed != 2 {
		t.Errorf("stats %+v, want 7 decayed, 2 removed", st)
	}
	res, err := g.ROQuery(ctx, "MATCH (a)-[r:REL]->() RETURN a.key, r.type, r.weight, r.decayed_at ORDER BY a.key, r.type", nil)
	if err != nil {
		t.Fatal(err)
	}
	want := [][]any{
		{"a", "knows", 0.5, int64(7)},
		{"a", "likes", 0.25, int64(7)},
		{"a", "mentioned_in", 0.15, int64(7)},
		{"c", "in_category", nil, nil},
		{"c", "knows", 1.0, int64(7)},
		{"tools", "contains", 0.125, int64(7)},
	}
	if len(res.Rows) != len(want) {
		t.Fatalf("edges after decay %v, want %v", res.Rows, want)
	}
	for i, row := range res.Rows {
		for j := range row {
			if f, ok := want[i][j].(float64); ok {
				if g, err := graph.AsFloat64(row[j]); err != nil || math.Abs(g-f) > 1e-12 {
					t.Errorf("row %d = %v, want %v", i, row, want[i])
				}
				continue
			}
			if row[j] != want[i][j] {
				t.Errorf("row %d = %v, want %v", i, row, want[i])
			}
		}
	}
}

func TestDecayNeverWritesMoreThanABatchEvenAroundAHub(t *testing.T) {
	ctx := context.Background()
	g := falkortest.Graph(t, true)
	before := generate(t, g, shape{Nodes: 600, Orphans: 50, Degree: 3, Seed: 1})
	// A hub: node 10 gets 400 more out-edges, far more than a batch.
	hub := map[string]any{"hub": int64(10), "n": int64(400)}
	res := falkortest.Exec(t, g, `MATCH (h) WHERE id(h) = $hub
MATCH (t:Entity) WHERE id(t) <> $hub AND NOT (h)-[:REL]->(t) AND id(t) < 600
WITH h, t ORDER BY id(t) LIMIT $n
CREATE (h)-[r:REL {type: 'hub', weight: 0.9}]->(t)
RETURN collect(id(t)) AS targets`, hub)
	targets, _ := res.Rows[0][0].([]any)
	for _, tg := range targets {
		before[[2]int64{10, tg.(int64)}] = 0.9
	}
	if len(before) != 550*3+400 {
		t.Fatalf("generated %d edges", len(before))
	}

	rec := &recorder{Graph: g}
	const batch = 100
	st, err := maint.Decay(ctx, rec, maint.DecayOptions{Run: 1, Factor: 0.9, MinWeight: 0.2, BatchSize: batch})
	if err != nil {
		t.Fatal(err)
	}
	var sum int64
	for i, w := range rec.Writes() {
		if w.err != nil {
			t.Fatalf("write %d: %v", i, w.err)
		}
		n, _ := w.res.Int64(0, "decayed")
		if n > batch || w.res.Stats.RelationshipsDeleted > batch {
			t.Errorf("write %d touched %d edges (deleted %d), batch is %d", i, n, w.res.Stats.RelationshipsDeleted, batch)
		}
		if n > 0 && w.params["n"] != batch {
			t.Errorf("write %d has LIMIT %v", i, w.params["n"])
		}
		sum += n
	}
	if sum != int64(len(before)) || st.Decayed != sum || st.MaxBatch > batch {
		t.Errorf("decayed %d in writes, stats %+v, want %d", sum, st, len(before))
	}
	// The walk adapts: not one write per node, not far more writes than
	// batches needed.
	if minimum := int64(len(before)) / batch; st.Batches < minimum || st.Batches > 4*minimum {
		t.Errorf("%d batches for %d edges of batch %d", st.Batches, len(before), batch)
	}
	kept, removed := checkDecayedOnce(t, g, before, 0.9, 0.2, 1)
	if int64(removed) != st.Removed || kept == 0 || removed == 0 {
		t.Errorf("kept %d, removed %d, stats %+v", kept, removed, st)
	}
}

func TestDecayRunTwiceWithTheSameRunDecaysOnce(t *testing.T) {
	ctx := context.Background()
	g := falkortest.Graph(t, true)
	before := generate(t, g, shape{Nodes: 300, Degree: 4, Seed: 2})
	o := maint.DecayOptions{Run: 42, Factor: 0.8, MinWeight: 0.3, BatchSize: 100}
	first, err := maint.Decay(ctx, g, o)
	if err != nil {
		t.Fatal(err)
	}
	second, err := maint.Decay(ctx, g, o)
	if err != nil {
		t.Fatal(err)
	}
	if first.Decayed != int64(len(before)) || second.Decayed != 0 || second.Removed != 0 {
		t.Errorf("first %+v, second %+v; want every edge decayed by the first only", first, second)
	}
	checkDecayedOnce(t, g, before, 0.8, 0.3, 42)

	// The next run (a later stamp) decays again.
	third, err := maint.Decay(ctx, g, maint.DecayOptions{Run: 43, Factor: 0.8, MinWeight: 0.3, BatchSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	if third.Decayed != int64(len(before))-first.Removed {
		t.Errorf("next run %+v, want the %d remaining edges", third, int64(len(before))-first.Removed)
	}
}

var errCrash = errors.New("worker crashed")

func TestDecayResumedAfterACrashDecaysEveryEdgeExactlyOnce(t *testing.T) {
	tests := []struct {
		name string
		// crash makes the recorder fail write 3 before or after it commits.
		crash func(rec *recorder)
		// resume: restart from the recorded progress rather than from 0.
		resume bool
	}{
		{"crash before a write, restart from the beginning", func(r *recorder) {
			r.before = func(i int) error { return failAt(i, 3) }
		}, false},
		{"reply lost after a commit, restart from the beginning", func(r *recorder) {
			r.after = func(i int) error { return failAt(i, 3) }
		}, false},
		{"reply lost after a commit, resume from the recorded progress", func(r *recorder) {
			r.after = func(i int) error { return failAt(i, 3) }
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			g := falkortest.Graph(t, true)
			before := generate(t, g, shape{Nodes: 400, Degree: 3, Seed: 3})
			rec := &recorder{Graph: g}
			tt.crash(rec)
			var next int64
			o := maint.DecayOptions{Run: 9, Factor: 0.7, MinWeight: 0.25, BatchSize: 100,
				Progress: func(_ context.Context, n int64) error { next = n; return nil }}
			first, err := maint.Decay(ctx, rec, o)
			if !errors.Is(err, errCrash) {
				t.Fatalf("first attempt: %v, want the crash", err)
			}
			// Nothing is written after the crash: 3 writes refused at the
			// 4th, or 4 with the 4th's reply lost.
			if n, want := len(rec.Writes()), map[bool]int{true: 3, false: 4}[rec.before != nil]; n != want || first.Batches != 3 {
				t.Fatalf("first attempt: %d writes, %d batches counted; want %d writes, 3 batches", n, first.Batches, want)
			}
			if tt.resume {
				if next == 0 {
					t.Fatal("no progress recorded before the crash")
				}
				o.From = next
			}
			if _, err := maint.Decay(ctx, g, o); err != nil {
				t.Fatal(err)
			}
			checkDecayedOnce(t, g, before, 0.7, 0.25, 9)
		})
	}
}

func failAt(i, at int) error {
	if i == at {
		return errCrash
	}
	return nil
}

func TestDecayStopsBeforeTheNextWriteWhenOwnershipIsLost(t *testing.T) {
	ctx := context.Background()
	g := falkortest.Graph(t, true)
	generate(t, g, shape{Nodes: 300, Degree: 3, Seed: 4})
	errLost := errors.New("singleton lease lost")
	rec := &recorder{Graph: g}
	calls := 0
	_, err := maint.Decay(ctx, rec, maint.DecayOptions{Run: 1, BatchSize: 100,
		Verify: func(context.Context) error {
			calls++
			if calls > 2 {
				return errLost
			}
			return nil
		}})
	if !errors.Is(err, errLost) {
		t.Fatalf("err = %v, want the lost lease", err)
	}
	if n := len(rec.Writes()); n != 2 {
		t.Errorf("%d writes, want the 2 verified before the lease was lost", n)
	}
}

func TestDecayOnAnEmptyGraphDoesNothing(t *testing.T) {
	ctx := context.Background()
	for _, tt := range []struct {
		name string
		seed string
	}{
		{"graph does not exist", ""},
		{"nodes without edges", "UNWIND range(1, 10) AS i CREATE (:Entity {key: toString(i)})"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			g := falkortest.Graph(t, true)
			if tt.seed != "" {
				falkortest.Exec(t, g, tt.seed, nil)
			} else if err := g.Delete(ctx); err != nil {
				t.Fatal(err)
			}
			st, err := maint.Decay(ctx, g, maint.DecayOptions{Run: 1})
			if err != nil || st.Decayed != 0 || st.Removed != 0 {
				t.Fatalf("stats %+v, err %v", st, err)
			}
		})
	}
}

func TestDecayWithoutAThresholdPrunesNothing(t *testing.T) {
	ctx := context.Background()
	g := falkortest.Graph(t, true)
	before := generate(t, g, shape{Nodes: 100, Degree: 2, Seed: 8})
	st, err := maint.Decay(ctx, g, maint.DecayOptions{Run: 3, Factor: 0.5})
	if err != nil || st.Decayed != int64(len(before)) || st.Removed != 0 {
		t.Fatalf("stats %+v, err %v", st, err)
	}
	checkDecayedOnce(t, g, before, 0.5, 0, 3)
}

func TestDecayRefusesBadOptions(t *testing.T) {
	for _, o := range []maint.DecayOptions{
		{Run: 0},
		{Run: 1, Factor: 1.5},
		{Run: 1, Factor: -0.5},
		{Run: 1, Factor: math.NaN()},
		{Run: 1, MinWeight: math.NaN()},
	} {
		if _, err := maint.Decay(context.Background(), nil, o); err == nil {
			t.Errorf("options %+v accepted", o)
		}
	}
}
