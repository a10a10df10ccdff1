package merge

import (
	"context"
	"fmt"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
)

// pruneBatch bounds one delete: a write's commit stalls the whole server.
const pruneBatch = 1000

// pruneQuery deletes low-value entities: no relationship at all, at most
// one mention, and not seen since the cutoff. An entity with no recorded
// sighting is of unknown age and stays. The LIMIT is in a WITH before the
// DELETE (a LIMIT after a write does not bound it).
const pruneQuery = `MATCH (e:Entity)
WHERE indegree(e) = 0 AND outdegree(e) = 0 AND coalesce(e.mention_count, 0) <= 1
  AND coalesce(e.last_seen, e.first_seen) < $cutoff
WITH e LIMIT $n
DELETE e
RETURN count(e)`

// Prune deletes, in batches, the entities that carry almost nothing: no
// relationship, at most one mention, last seen before cutoff (unix ms
// properties last_seen, else first_seen). It returns how many it deleted.
// verify runs right before every batch; when it fails Prune stops.
func Prune(ctx context.Context, g Graph, verify func(context.Context) error, cutoff time.Time) (int, error) {
	if verify == nil {
		verify = ctxAlive
	}
	total := 0
	for {
		if err := verify(ctx); err != nil {
			return total, err
		}
		res, err := g.Query(ctx, pruneQuery, map[string]any{"cutoff": cutoff.UnixMilli(), "n": pruneBatch})
		if err != nil {
			return total, fmt.Errorf("pruning entities: %w", err)
		}
		n := int(res.Stats.NodesDeleted)
		if len(res.Rows) == 1 {
			if c, err := graph.AsInt64(res.Rows[0][0]); err == nil {
				n = int(c)
			}
		}
		total += n
		if n < pruneBatch {
			return total, nil
		}
	}
}

func ctxAlive(ctx context.Context) error { return ctx.Err() }
