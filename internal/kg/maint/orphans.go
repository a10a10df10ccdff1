package maint

import (
	"context"
	"fmt"
)

// orphanQuery deletes at most $n entities in the id range [$lo, $hi) that
// have no relationship in either direction and were last seen before
// $before. indegree/outdegree read the adjacency matrices (an order of
// magnitude faster than the pattern NOT (e)--()). The LIMIT sits in a WITH
// before the DELETE, the only place where FalkorDB lets it bound a write.
const orphanQuery = `MATCH (e:Entity)
WHERE id(e) >= $lo AND id(e) < $hi AND indegree(e) = 0 AND outdegree(e) = 0 AND coalesce(e.last_seen, 0) < $before
WITH e LIMIT $n
DELETE e`

// OrphanOptions configure one orphan collection.
type OrphanOptions struct {
	// Before (Unix ms) spares entities last seen at or after it: a producer
	// creates an entity and its relationships in separate writes, and GC
	// running between them must not delete the entity the relationships
	// are about to attach to. Entities without last_seen count as old.
	Before int64
	// BatchSize bounds the nodes one write deletes. Default
	// DefaultBatchSize.
	BatchSize int
	// Verify is called before every write; an error stops the run before
	// the write (the singleton ownership check, singleton.Verify).
	Verify func(context.Context) error
}

// OrphanStats are what an orphan collection did.
type OrphanStats struct {
	// Removed counts the deleted entities.
	Removed int64
	// Batches counts the write queries.
	Batches int64
	// MaxBatch is the most nodes one write deleted.
	MaxBatch int64
}

// CollectOrphans deletes the Entity nodes that have no relationship at all
// (in or out, of any type) and were last seen before o.Before, at most
// o.BatchSize per write, walking entity ids in ranges. It is idempotent by
// nature: a second run finds nothing left to delete, and an interrupted run
// just leaves some orphans for the next one.
//
// Only entities are collected: Epoch and Category nodes are structure that
// other jobs create before anything hangs from them.
func CollectOrphans(ctx context.Context, g Graph, o OrphanOptions) (OrphanStats, error) {
	var st OrphanStats
	if o.BatchSize <= 0 {
		o.BatchSize = DefaultBatchSize
	}
	top, err := maxID(ctx, g, "(n:Entity)")
	if err != nil || top < 0 {
		return st, err
	}
	// Orphans are usually a small share of the entities; start with a range
	// of one batch of ids and let the walk widen it.
	s := newSpan(0, top, int64(o.BatchSize), int64(o.BatchSize)*3/4)
	var inRange int64
	for !s.done() {
		if o.Verify != nil {
			if err := o.Verify(ctx); err != nil {
				return st, fmt.Errorf("orphan gc: before writing ids [%d, %d): %w", s.lo, s.hi(), err)
			}
		}
		res, err := g.Query(ctx, orphanQuery, map[string]any{
			"lo": s.lo, "hi": s.hi(), "before": o.Before, "n": o.BatchSize,
		})
		if err != nil {
			return st, fmt.Errorf("orphan gc: ids [%d, %d): %w", s.lo, s.hi(), err)
		}
		n := res.Stats.NodesDeleted
		st.Batches++
		st.Removed += n
		st.MaxBatch = max(st.MaxBatch, n)
		inRange += n
		if n >= int64(o.BatchSize) {
			continue
		}
		s.advance(inRange)
		inRange = 0
	}
	return st, nil
}
