package maint_test

import (
	"context"
	"testing"

	"github.com/stargazer/stargazer-jobs/internal/kg/maint"
	"github.com/stargazer/stargazer-jobs/internal/testkit/falkortest"
)

// A graph of about 20k edges with the default batch size: every write stays
// within the batch, the walk needs few writes more than the minimum, and
// decay followed by GC leaves exactly what it should. (No timing here; the
// 200k-edge benchmark measures speed and stalls.)
func TestDefaultBatchesOnA20kEdgeGraph(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a 20k-edge graph")
	}
	ctx := context.Background()
	g := falkortest.Graph(t, true)
	s := shape{Nodes: 6000, Orphans: 500, Degree: 4, Seed: 7, LastSeen: 1}
	before := generate(t, g, s)
	if len(before) != 22_000 {
		t.Fatalf("generated %d edges", len(before))
	}
	rec := &recorder{Graph: g}
	st, err := maint.Decay(ctx, rec, maint.DecayOptions{Run: 1, MinWeight: maint.DefaultMinWeight})
	if err != nil {
		t.Fatal(err)
	}
	var small int
	for i, w := range rec.Writes() {
		n, _ := w.res.Int64(0, "decayed")
		if n > maint.DefaultBatchSize {
			t.Errorf("write %d touched %d edges, over the batch of %d", i, n, maint.DefaultBatchSize)
		}
		if n < maint.DefaultBatchSize/4 {
			small++
		}
	}
	minimum := int64(len(before)) / maint.DefaultBatchSize
	if st.Batches > 2*minimum+2 || small > int(st.Batches)/2 {
		t.Errorf("%d batches (%d under a quarter full) for %d edges, want at most %d", st.Batches, small, len(before), 2*minimum+2)
	}
	t.Logf("decay: %+v", st)
	_, removed := checkDecayedOnce(t, g, before, maint.DefaultDecayFactor, maint.DefaultMinWeight, 1)
	if int64(removed) != st.Removed {
		t.Errorf("removed %d, want %d", st.Removed, removed)
	}

	rec = &recorder{Graph: g}
	gc, err := maint.CollectOrphans(ctx, rec, maint.OrphanOptions{Before: 2})
	if err != nil {
		t.Fatal(err)
	}
	for i, w := range rec.Writes() {
		if n := w.res.Stats.NodesDeleted; n > maint.DefaultBatchSize {
			t.Errorf("GC write %d deleted %d nodes", i, n)
		}
	}
	// The generated orphans, plus any entity whose every edge decay removed.
	if gc.Removed < int64(s.Orphans) {
		t.Errorf("GC %+v, want at least the %d generated orphans", gc, s.Orphans)
	}
	t.Logf("gc: %+v", gc)
	res, err := g.ROQuery(ctx, "MATCH (e:Entity) WHERE indegree(e) = 0 AND outdegree(e) = 0 RETURN count(e) AS n", nil)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.Int64(0, "n"); n != 0 {
		t.Errorf("%d orphans left after GC", n)
	}
}
