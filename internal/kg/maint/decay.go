package maint

import (
	"context"
	"fmt"
	"math"
)

// DecayedAt is the relationship property that stamps the last decay run
// that reached an edge (its run stamp, see DecayOptions.Run).
const DecayedAt = "decayed_at"

// decayQuery decays and prunes, in one atomic write, at most $n
// not-yet-decayed edges whose source node id is in [$lo, $hi). The LIMIT
// sits in a WITH before the writes: FalkorDB does not let a LIMIT after a
// write bound it. The weak edges are deleted in the same query, so a crash
// can never leave an edge decayed but not pruned.
//
// The weak edges are collected and deleted in a FOREACH on purpose. The
// plainer "SET r.weight = ... WITH r WHERE r.weight < $min DELETE r" is
// wrong on FalkorDB 4.16.3 (verified on 3 to 200,000 edges): it applies no
// SET at all and filters on the old weights.
const decayQuery = `MATCH (a)-[r:REL]->()
WHERE id(a) >= $lo AND id(a) < $hi AND r.weight IS NOT NULL AND coalesce(r.decayed_at, 0) < $run
WITH r LIMIT $n
SET r.weight = r.weight * $factor, r.decayed_at = $run
WITH count(r) AS decayed, collect(CASE WHEN r.weight < $min THEN r END) AS weak
FOREACH (w IN weak | DELETE w)
RETURN decayed, size(weak) AS removed`

// DecayOptions configure one decay run.
type DecayOptions struct {
	// Run identifies the run and stamps every edge it decays (the edge
	// property decayed_at). An edge whose stamp is Run or later is skipped,
	// which makes a run exactly-once per edge: repeating it, or resuming it
	// after a crash, decays nothing twice. Stamps must increase from run to
	// run (RunLog hands them out); Run must be positive.
	Run int64
	// Factor multiplies every weight, in (0, 1]. Default DefaultDecayFactor.
	Factor float64
	// MinWeight: an edge whose decayed weight is below it is deleted. Zero
	// (or less) prunes nothing; the setting's default is DefaultMinWeight.
	MinWeight float64
	// BatchSize bounds the edges one write touches. Default
	// DefaultBatchSize.
	BatchSize int
	// From is the lowest source-node id to visit: where an interrupted run
	// left off (RunLog). Edges below it are assumed done.
	From int64
	// Verify is called before every write; an error stops the run before
	// the write (the singleton ownership check, singleton.Verify).
	Verify func(context.Context) error
	// Progress, if set, is told after every finished id range the id below
	// which every source node is done, so a later attempt can resume there.
	// An error stops the run.
	Progress func(ctx context.Context, next int64) error
}

// DecayStats are what a decay run did.
type DecayStats struct {
	// Decayed counts the edges whose weight was multiplied, including the
	// ones then removed.
	Decayed int64
	// Removed counts the edges deleted for falling under MinWeight.
	Removed int64
	// Batches counts the write queries.
	Batches int64
	// MaxBatch is the most edges one write touched.
	MaxBatch int64
}

func (o *DecayOptions) defaults() error {
	if o.Run <= 0 {
		return fmt.Errorf("decay: run stamp %d must be positive", o.Run)
	}
	if o.Factor == 0 {
		o.Factor = DefaultDecayFactor
	}
	if !(o.Factor > 0 && o.Factor <= 1) {
		return fmt.Errorf("decay: factor %g must be in (0, 1]", o.Factor)
	}
	if math.IsNaN(o.MinWeight) {
		return fmt.Errorf("decay: min weight is NaN")
	}
	if o.BatchSize <= 0 {
		o.BatchSize = DefaultBatchSize
	}
	if o.From < 0 {
		o.From = 0
	}
	return nil
}

// Decay multiplies the weight of every REL edge by o.Factor and deletes the
// edges whose weight falls under o.MinWeight, so the graph reflects recency.
// Edges without a weight are left alone.
//
// It walks source-node ids in ranges sized to hold about o.BatchSize edges
// and writes at most o.BatchSize edges per query (a range with more, such
// as a hub's, is written in several batches). Each write is atomic; if the
// run stops between two (an error, a crash, a lost lease), the edges decayed
// so far carry o.Run, and running again with the same o.Run decays exactly
// the rest.
//
// Edges created during the run in a range already walked are not decayed
// until the next run, which is what a fresh edge deserves anyway.
func Decay(ctx context.Context, g Graph, o DecayOptions) (DecayStats, error) {
	var st DecayStats
	if err := o.defaults(); err != nil {
		return st, err
	}
	top, err := maxID(ctx, g, "(n)")
	if err != nil || top < o.From {
		return st, err
	}
	width, err := initialWidth(ctx, g, top, int64(o.BatchSize))
	if err != nil {
		return st, err
	}
	// Aim a little under the batch size so that most ranges fit in one
	// write; a range that overflows costs one more, small, write.
	s := newSpan(o.From, top, width, int64(o.BatchSize)*3/4)
	var inRange int64 // edges decayed in the current range so far
	for !s.done() {
		if o.Verify != nil {
			if err := o.Verify(ctx); err != nil {
				return st, fmt.Errorf("decay: before writing ids [%d, %d): %w", s.lo, s.hi(), err)
			}
		}
		res, err := g.Query(ctx, decayQuery, map[string]any{
			"lo": s.lo, "hi": s.hi(), "run": o.Run, "n": o.BatchSize,
			"factor": o.Factor, "min": o.MinWeight,
		})
		if err != nil {
			return st, fmt.Errorf("decay: ids [%d, %d): %w", s.lo, s.hi(), err)
		}
		c, err := counts(res, "decayed", "removed")
		if err != nil {
			return st, fmt.Errorf("decay: ids [%d, %d): reply: %w", s.lo, s.hi(), err)
		}
		st.Batches++
		st.Decayed += c[0]
		st.Removed += c[1]
		st.MaxBatch = max(st.MaxBatch, c[0])
		inRange += c[0]
		if c[0] >= int64(o.BatchSize) {
			continue // the range holds more: the next write takes the rest
		}
		s.advance(inRange)
		inRange = 0
		if o.Progress != nil {
			if err := o.Progress(ctx, s.lo); err != nil {
				return st, fmt.Errorf("decay: recording progress: %w", err)
			}
		}
	}
	return st, nil
}

// initialWidth guesses the id range that holds batch edges from the
// graph's average out-degree (db.meta.stats counts them without a scan).
func initialWidth(ctx context.Context, g Graph, top, batch int64) (int64, error) {
	res, err := g.ROQuery(ctx, "CALL db.meta.stats() YIELD relTypes RETURN relTypes", nil)
	if err != nil {
		return 0, fmt.Errorf("decay: graph statistics: %w", err)
	}
	var rels int64
	if len(res.Rows) == 1 {
		if m, ok := res.Rows[0][0].(map[string]any); ok {
			rels, _ = m["REL"].(int64)
		}
	}
	if rels <= 0 {
		return batch, nil
	}
	// Computed in float: (top+1)*batch may overflow for huge ids.
	return int64(math.Max(1, float64(top+1)*float64(batch)/float64(rels))), nil
}
