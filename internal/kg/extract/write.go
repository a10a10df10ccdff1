package extract

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
)

// MaxRows bounds the rows of one write query: every write commit holds
// FalkorDB's global lock, and about 1,000 rows keep that stall short.
const MaxRows = 1000

// Each write query is guarded by a mark: it runs only if the node
// (:ExtractionMark {key: $mark}) does not exist, and creates it in the
// same (atomic) query. Replaying a stored answer after a crash therefore
// applies each query exactly once, whether or not the crashed run got to
// it. (FalkorDB 4.16.3 ignores "WITH m WHERE m IS NULL" after this
// OPTIONAL MATCH; counting works.)
const (
	guard = `OPTIONAL MATCH (m:ExtractionMark {key: $mark})
WITH count(m) AS seen WHERE seen = 0
UNWIND $rows AS row
`
	markIt = `
MERGE (mk:ExtractionMark {key: $mark}) ON CREATE SET mk.at = $now
RETURN n`

	// entityQuery upserts entities: a new one starts with the batch's
	// mentions, a known one adds them and widens first_seen/last_seen.
	// last_source (the latest mentioning fragment) is set before
	// last_seen, so it compares with the old value.
	entityQuery = guard + `MERGE (e:Entity {key: row.key})
ON CREATE SET e.name = row.name, e.normalized_name = row.norm, e.type = row.type,
  e.mention_count = row.mentions, e.first_seen = row.first, e.last_seen = row.last, e.last_source = row.source
ON MATCH SET e.mention_count = coalesce(e.mention_count, 0) + row.mentions,
  e.first_seen = CASE WHEN e.first_seen IS NULL OR row.first < e.first_seen THEN row.first ELSE e.first_seen END,
  e.last_source = CASE WHEN e.last_seen IS NULL OR row.last >= e.last_seen THEN row.source ELSE e.last_source END,
  e.last_seen = CASE WHEN e.last_seen IS NULL OR row.last > e.last_seen THEN row.last ELSE e.last_seen END
WITH count(e) AS n` + markIt

	// relQuery upserts relationships between entities by key; a known
	// relationship is reinforced by the new statement's weight. Rows are
	// unique per (src, type, dst) within a batch (see relRow).
	relQuery = guard + `MATCH (a:Entity {key: row.src}), (b:Entity {key: row.dst})
MERGE (a)-[r:REL {type: row.type}]->(b)
ON CREATE SET r.weight = row.weight, r.last_seen = row.last
ON MATCH SET r.weight = coalesce(r.weight, 0) + row.weight,
  r.last_seen = CASE WHEN r.last_seen IS NULL OR row.last > r.last_seen THEN row.last ELSE r.last_seen END
WITH count(r) AS n` + markIt

	// sweepQuery deletes old marks, at most 1,000 at a time (the LIMIT
	// sits in a WITH: after DELETE it would not bound the delete).
	sweepQuery = `MATCH (m:ExtractionMark) WHERE m.at < $before
WITH m LIMIT 1000
DELETE m
RETURN count(m) AS n`
)

// write applies a batch's answer to the graph, in queries of at most
// MaxRows rows, entities first so relationships find their endpoints. It
// holds the write lock: two relationship MERGEs running at once can both
// create the same edge (FalkorDB 4.16.3), and the mark guard only
// protects against replays of the same batch.
func (e *Engine) write(ctx context.Context, batch string, in intent, now time.Time) (Counts, error) {
	var c Counts
	unlock, waited, err := e.ledger.lockWrites(ctx, e.cfg.WriteLockTTL)
	c.LockWait = waited
	if err != nil {
		return c, err
	}
	defer unlock()
	for i, lo := 0, 0; lo < len(in.Entities); i, lo = i+1, lo+MaxRows {
		chunk := in.Entities[lo:min(lo+MaxRows, len(in.Entities))]
		rows := make([]any, len(chunk))
		for j, r := range chunk {
			rows[j] = map[string]any{"key": r.Key, "name": r.Name, "norm": r.Norm, "type": r.Type,
				"mentions": r.Mentions, "first": r.First, "last": r.Last, "source": r.Source}
		}
		n, _, st, err := e.guarded(ctx, entityQuery, batch+"/e"+strconv.Itoa(i), rows, now)
		if err != nil {
			return c, fmt.Errorf("extract: writing entities of batch %s: %w", batch, err)
		}
		c.EntitiesAdded += int(st.NodesCreated)
		c.EntitiesUpdated += int(n - st.NodesCreated)
	}
	for i, lo := 0, 0; lo < len(in.Relationships); i, lo = i+1, lo+MaxRows {
		chunk := in.Relationships[lo:min(lo+MaxRows, len(in.Relationships))]
		rows := make([]any, len(chunk))
		for j, r := range chunk {
			rows[j] = map[string]any{"src": r.Src, "dst": r.Dst, "type": r.Type, "weight": r.Weight, "last": r.Last}
		}
		n, applied, st, err := e.guarded(ctx, relQuery, batch+"/r"+strconv.Itoa(i), rows, now)
		if err != nil {
			return c, fmt.Errorf("extract: writing relationships of batch %s: %w", batch, err)
		}
		c.RelationshipsAdded += int(st.RelationshipsCreated)
		c.RelationshipsUpdated += int(n - st.RelationshipsCreated)
		if applied { // rows whose endpoint is not in the graph (merged away meanwhile)
			c.Rejected += len(rows) - int(n)
		}
	}
	return c, nil
}

// guarded runs one mark-guarded write. It returns how many rows matched,
// whether the query applied (false: its mark says it ran before), and
// what it created, not counting the mark.
func (e *Engine) guarded(ctx context.Context, query, mark string, rows []any, now time.Time) (n int64, applied bool, st graph.Stats, err error) {
	res, err := e.cfg.Graph.Query(ctx, query, map[string]any{"mark": mark, "rows": rows, "now": now.UnixMilli()})
	if err != nil {
		return 0, false, graph.Stats{}, err
	}
	if n, err = res.Int64(0, "n"); err != nil {
		return 0, false, graph.Stats{}, fmt.Errorf("reply: %w", err)
	}
	st = res.Stats
	if st.NodesCreated > 0 { // the mark is created exactly when the rows are applied
		applied = true
		st.NodesCreated--
	}
	return n, applied, st, nil
}

// sweep deletes marks older than the recovery window: by then no stored
// answer they guard is left.
func (e *Engine) sweep(ctx context.Context, now time.Time) error {
	before := now.Add(-e.cfg.RecoveryWindow).UnixMilli()
	for range 10 { // bounded per call; the next call goes on
		res, err := e.cfg.Graph.Query(ctx, sweepQuery, map[string]any{"before": before})
		if err != nil {
			return fmt.Errorf("extract: sweeping old marks: %w", err)
		}
		if n, err := res.Int64(0, "n"); err != nil || n < 1000 {
			return err
		}
	}
	return nil
}
