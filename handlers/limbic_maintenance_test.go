package handlers

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/kg/writelock"
	"github.com/stargazer/stargazer-jobs/internal/queue/singleton"
	"github.com/stargazer/stargazer-jobs/jobs"
)

func entityKeys(t *testing.T, g Graph) []string {
	t.Helper()
	res, err := g.ROQuery(context.Background(), "MATCH (e:Entity) RETURN e.key ORDER BY e.key", nil)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for i := range res.Rows {
		k, _ := res.Text(i, "e.key")
		keys = append(keys, k)
	}
	return keys
}

func TestLimbicMaintenanceCollectsOldOrphansOnce(t *testing.T) {
	ctx := context.Background()
	now := time.UnixMilli(1_800_000_000_000)
	d, g, _, _ := kgDeps(t, now)
	if _, err := g.Query(ctx, `CREATE (a:Entity {key: 'linked-a', last_seen: $old})-[:REL {type: 'knows', weight: 1.0}]->(:Entity {key: 'linked-b', last_seen: $old}),
  (:Entity {key: 'orphan-old', last_seen: $old}), (:Entity {key: 'orphan-legacy'}),
  (:Entity {key: 'orphan-new', last_seen: $recent})`,
		map[string]any{"old": now.Add(-30 * 24 * time.Hour).UnixMilli(), "recent": now.Add(-time.Hour).UnixMilli()}); err != nil {
		t.Fatal(err)
	}
	want := []string{"linked-a", "linked-b", "orphan-new"}
	for i, wantRemoved := range []int64{2, 0} { // the second run finds nothing
		res, err := work(ctx, d, jobs.LimbicMaintenance, &jobs.Empty{})
		if err != nil {
			t.Fatal(err)
		}
		if res["orphans_removed"] != wantRemoved {
			t.Errorf("run %d: %v, want %d removed", i+1, res, wantRemoved)
		}
		if got := entityKeys(t, g); !slices.Equal(got, want) {
			t.Errorf("run %d: entities %v, want %v", i+1, got, want)
		}
	}
}

func TestLimbicMaintenanceStopsWhenTheSingletonLeaseIsLost(t *testing.T) {
	ctx := context.Background()
	d, g, rdb, _ := kgDeps(t, time.UnixMilli(1_800_000_000_000))
	if _, err := g.Query(ctx, "UNWIND range(1, 50) AS i CREATE (:Entity {key: toString(i), last_seen: 1})", nil); err != nil {
		t.Fatal(err)
	}
	le, err := singleton.NewLocks(rdb, time.Minute, nil).Acquire(ctx, jobs.LimbicMaintenance, "limbic_maintenance@1")
	if err != nil {
		t.Fatal(err)
	}
	defer le.Release(ctx)
	hooked := &hookedGraph{Graph: g, afterWrite: func(int) error {
		return rdb.Del(ctx, singleton.KeyPrefix+jobs.LimbicMaintenance).Err() // the lease expired
	}}
	d.Graph = hooked
	if _, err := work(singleton.WithLease(ctx, le), d, jobs.LimbicMaintenance, &jobs.Empty{}); !errors.Is(err, singleton.ErrLost) {
		t.Fatalf("err = %v, want the lost lease", err)
	}
	if hooked.Writes() != 1 || len(entityKeys(t, g)) != 40 {
		t.Errorf("%d writes, %d entities left; want one batch of 10 deleted, then nothing", hooked.Writes(), len(entityKeys(t, g)))
	}
}

func TestLimbicMaintenanceWithoutAGraphIsNotRetried(t *testing.T) {
	d := Deps{Logger: slog.New(slog.DiscardHandler), Now: time.Now}
	if _, err := work(context.Background(), d, jobs.LimbicMaintenance, &jobs.Empty{}); !errors.Is(err, asynq.SkipRetry) {
		t.Fatalf("err = %v, want SkipRetry", err)
	}
}

// GC waits while an extraction batch holds the graph write lock, so it
// cannot delete an entity the batch has written but not linked yet.
func TestLimbicMaintenanceWaitsForTheGraphWriteLock(t *testing.T) {
	ctx := context.Background()
	d, g, rdb, _ := kgDeps(t, time.UnixMilli(1_800_000_000_000))
	if _, err := g.Query(ctx, "CREATE (:Entity {key: 'just-written', last_seen: 1})", nil); err != nil {
		t.Fatal(err)
	}
	release, _, err := writelock.Acquire(ctx, rdb, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := work(ctx, d, jobs.LimbicMaintenance, &jobs.Empty{})
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("GC finished (%v) while the write lock was held", err)
	case <-time.After(300 * time.Millisecond):
	}
	// The batch links the entity, then releases the lock.
	if _, err := g.Query(ctx, "MATCH (e:Entity {key: 'just-written'}) CREATE (e)-[:REL {type: 'knows', weight: 1.0}]->(:Entity {key: 'friend', last_seen: 1})", nil); err != nil {
		t.Fatal(err)
	}
	release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := entityKeys(t, g); !slices.Equal(got, []string{"friend", "just-written"}) {
		t.Errorf("entities %v, want both kept", got)
	}
}
