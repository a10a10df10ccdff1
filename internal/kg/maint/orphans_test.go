package maint_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
	"github.com/stargazer/stargazer-jobs/internal/kg/maint"
	"github.com/stargazer/stargazer-jobs/internal/testkit/falkortest"
)

func entityKeys(t *testing.T, g maint.Graph, label string) []string {
	t.Helper()
	res, err := g.ROQuery(context.Background(), "MATCH (n:"+label+") RETURN n.key ORDER BY n.key", nil)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for i := range res.Rows {
		k, err := res.Text(i, "n.key")
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	return keys
}

func TestCollectOrphansRemovesExactlyTheOldEntitiesWithoutRelationships(t *testing.T) {
	ctx := context.Background()
	g := falkortest.Graph(t, true)
	const now = int64(1_800_000_000_000)
	const grace = 24 * 3600 * 1000
	falkortest.Exec(t, g, `CREATE
  (src:Entity {key: 'source', last_seen: $old}), (dst:Entity {key: 'target', last_seen: $old}),
  (src)-[:REL {type: 'knows', weight: 1.0}]->(dst),
  (loop:Entity {key: 'self-loop', last_seen: $old}), (loop)-[:REL {type: 'is', weight: 1.0}]->(loop),
  (ep:Epoch {key: '2026-11-27'}), (inEpoch:Entity {key: 'in-epoch', last_seen: $old}),
  (inEpoch)-[:REL {type: 'mentioned_in', weight: 1.0}]->(ep),
  (cat:Category {key: 'empty-category'}),
  (:Epoch {key: 'empty-epoch'}),
  (:Entity {key: 'orphan-old', last_seen: $old}),
  (:Entity {key: 'orphan-no-last-seen'}),
  (:Entity {key: 'orphan-recent', last_seen: $recent})`,
		map[string]any{"old": now - 30*grace, "recent": now - grace/2})

	o := maint.OrphanOptions{Before: now - grace}
	st, err := maint.CollectOrphans(ctx, g, o)
	if err != nil {
		t.Fatal(err)
	}
	if st.Removed != 2 {
		t.Errorf("removed %d, want 2", st.Removed)
	}
	want := []string{"in-epoch", "orphan-recent", "self-loop", "source", "target"}
	if got := entityKeys(t, g, graph.EntityLabel); !slices.Equal(got, want) {
		t.Errorf("entities left %v, want %v", got, want)
	}
	if got := entityKeys(t, g, graph.EpochLabel); len(got) != 2 {
		t.Errorf("epochs left %v, want both (only entities are collected)", got)
	}

	again, err := maint.CollectOrphans(ctx, g, o)
	if err != nil || again.Removed != 0 {
		t.Errorf("second run removed %d (err %v), want nothing", again.Removed, err)
	}
	if got := entityKeys(t, g, graph.EntityLabel); !slices.Equal(got, want) {
		t.Errorf("entities after the second run %v, want %v", got, want)
	}
}

func TestCollectOrphansDeletesAtMostABatchPerWrite(t *testing.T) {
	ctx := context.Background()
	g := falkortest.Graph(t, true)
	generate(t, g, shape{Nodes: 1500, Orphans: 700, Degree: 2, Seed: 5, LastSeen: 1})
	rec := &recorder{Graph: g}
	const batch = 50
	st, err := maint.CollectOrphans(ctx, rec, maint.OrphanOptions{Before: 2, BatchSize: batch})
	if err != nil {
		t.Fatal(err)
	}
	var sum int64
	for i, w := range rec.Writes() {
		if n := w.res.Stats.NodesDeleted; n > batch || w.res.Stats.RelationshipsDeleted != 0 {
			t.Errorf("write %d deleted %d nodes and %d edges, batch is %d nodes", i, n, w.res.Stats.RelationshipsDeleted, batch)
		}
		sum += w.res.Stats.NodesDeleted
	}
	if st.Removed != 700 || sum != 700 || st.MaxBatch != batch {
		t.Errorf("stats %+v, %d deleted by the writes; want 700 in batches of %d", st, sum, batch)
	}
	if n := len(entityKeys(t, g, graph.EntityLabel)); n != 800 {
		t.Errorf("%d entities left, want the 800 connected ones", n)
	}
}

func TestCollectOrphansStopsBeforeTheNextWriteWhenOwnershipIsLost(t *testing.T) {
	ctx := context.Background()
	g := falkortest.Graph(t, true)
	generate(t, g, shape{Nodes: 400, Orphans: 300, Degree: 2, Seed: 6, LastSeen: 1})
	errLost := errors.New("singleton lease lost")
	rec := &recorder{Graph: g}
	calls := 0
	st, err := maint.CollectOrphans(ctx, rec, maint.OrphanOptions{Before: 2, BatchSize: 50,
		Verify: func(context.Context) error {
			if calls++; calls > 1 {
				return errLost
			}
			return nil
		}})
	if !errors.Is(err, errLost) || len(rec.Writes()) != 1 || st.Removed > 50 {
		t.Fatalf("err %v after %d writes, stats %+v; want the lost lease after one write", err, len(rec.Writes()), st)
	}
	if n := len(entityKeys(t, g, graph.EntityLabel)); int64(n) != 400-st.Removed {
		t.Errorf("%d entities left, want %d", n, 400-st.Removed)
	}
}

func TestCollectOrphansOnAnEmptyGraphDoesNothing(t *testing.T) {
	ctx := context.Background()
	g := falkortest.Graph(t, true)
	if err := g.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := maint.CollectOrphans(ctx, g, maint.OrphanOptions{Before: 1})
	if err != nil || st != (maint.OrphanStats{}) {
		t.Fatalf("stats %+v, err %v", st, err)
	}
}
