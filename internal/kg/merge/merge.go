package merge

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
)

// node names a node for the length of a run: its internal id, for fast
// lookups, and its key, which every write checks too because FalkorDB
// reuses the ids of deleted nodes.
type node struct {
	ID  int64
	Key string
}

// mergeBatch is how many of the duplicate's relationships one write moves:
// a write's commit stalls the whole server, so batches stay small.
const mergeBatch = 1000

// maxAliases bounds the aliases list a kept entity accumulates.
const maxAliases = 20

// errVanished means the kept entity or the duplicate no longer exists (a
// concurrent merge, prune or garbage collection got there first): the
// merge is skipped, nothing is lost.
var errVanished = errors.New("entity no longer exists")

// mergeStats counts what one merge did.
type mergeStats struct {
	EdgesMoved       int
	SelfLoopsDropped int
}

// merger folds duplicates into the entity kept.
type merger struct {
	g      Graph
	verify func(context.Context) error
	batch  int
}

// merge folds dup into keep: every relationship of dup is moved to keep
// (summing weights into a relationship keep already has with the same type
// and other end), relationships between the two are dropped (they would be
// self-loops), then dup's mentions, first and last sighting and name are
// folded into keep and dup is deleted.
//
// The order makes it crash-safe and safe to repeat: each write moves a
// batch of relationships and deletes the moved originals in the same
// (atomic) query, so a crash between writes leaves every relationship
// either moved or still on dup, and running the merge again continues
// where it stopped. dup is deleted last, by a query that matches it only if
// it has no relationship left, together with the fold of its counts: a
// relationship added to dup meanwhile is moved first, and counts are never
// added twice.
//
// verify runs right before every write; when it fails nothing more is
// written.
func (m merger) merge(ctx context.Context, keep, dup node) (mergeStats, error) {
	var st mergeStats
	if keep.ID == dup.ID {
		return st, fmt.Errorf("merging entity %d into itself", keep.ID)
	}
	for attempt := 1; ; attempt++ {
		if err := m.moveAll(ctx, keep, dup, &st); err != nil {
			return st, err
		}
		if err := m.verify(ctx); err != nil {
			return st, err
		}
		deleted, err := m.fold(ctx, keep, dup)
		if err != nil || deleted {
			return st, err
		}
		// Not deleted: an end vanished, or dup gained a relationship since
		// the last move (which the next round moves).
		if err := m.bothExist(ctx, keep, dup); err != nil {
			return st, err
		}
		if attempt == 3 {
			return st, fmt.Errorf("merging entity %s into %s: it keeps gaining relationships", dup.Key, keep.Key)
		}
	}
}

// moveAll moves dup's relationships to keep, a batch per write, until dup
// has none.
func (m merger) moveAll(ctx context.Context, keep, dup node, st *mergeStats) error {
	stalls := 0
	for {
		edges, err := m.dupEdges(ctx, dup)
		if err != nil || len(edges) == 0 {
			return err
		}
		rows, drops := planMoves(keep, dup, edges)
		if err := m.verify(ctx); err != nil {
			return err
		}
		moved, dropped, err := m.move(ctx, rows, drops)
		if err != nil {
			return err
		}
		st.EdgesMoved += moved
		st.SelfLoopsDropped += dropped
		if moved+dropped > 0 {
			stalls = 0
			continue
		}
		// Nothing applied: an end vanished, or the relationships changed
		// between the read and the write.
		if err := m.bothExist(ctx, keep, dup); err != nil {
			return err
		}
		if stalls++; stalls == 3 {
			return fmt.Errorf("merging entity %s into %s: its relationships keep changing", dup.Key, keep.Key)
		}
	}
}

// dupEdge is one relationship of the duplicate, as read.
type dupEdge struct {
	RelID    int64
	Outgoing bool // dup is its source
	Other    node // the other end (dup itself for a self-loop)
	RelType  string
}

// dupEdges reads up to m.batch relationships of dup, outgoing first. A
// self-loop shows up in both directions; it is kept once.
func (m merger) dupEdges(ctx context.Context, dup node) ([]dupEdge, error) {
	params := map[string]any{"d": dup.ID, "dk": dup.Key, "n": m.batch}
	var out []dupEdge
	seen := map[int64]bool{}
	for _, q := range []struct {
		cypher   string
		outgoing bool
	}{
		{`MATCH (d:Entity) WHERE id(d) = $d AND d.key = $dk
MATCH (d)-[r:REL]->(o)
RETURN id(r) AS rel, id(o) AS other, coalesce(o.key, '') AS other_key, coalesce(r.type, 'related_to') AS type LIMIT $n`, true},
		{`MATCH (d:Entity) WHERE id(d) = $d AND d.key = $dk
MATCH (o)-[r:REL]->(d)
RETURN id(r) AS rel, id(o) AS other, coalesce(o.key, '') AS other_key, coalesce(r.type, 'related_to') AS type LIMIT $n`, false},
	} {
		if len(out) >= m.batch {
			break
		}
		res, err := m.g.ROQuery(ctx, q.cypher, params)
		if err != nil {
			return nil, fmt.Errorf("reading relationships of %s: %w", dup.Key, err)
		}
		for i := range res.Rows {
			var rid, oid int64
			var okey, typ string
			// A relationship that cannot be read cannot be moved: the merge
			// stops rather than lose it.
			if err := res.Scan(i, map[string]any{"rel": &rid, "other": &oid, "other_key": &okey, "type": &typ}); err != nil {
				return nil, fmt.Errorf("reading relationships of %s: %w", dup.Key, err)
			}
			if seen[rid] || len(out) >= m.batch {
				continue
			}
			seen[rid] = true
			out = append(out, dupEdge{RelID: rid, Outgoing: q.outgoing, Other: node{oid, okey}, RelType: typ})
		}
	}
	return out, nil
}

// planMoves maps dup's relationships onto keep. The rows are aggregated
// here, by (source, type, target) after the mapping, so that one write
// never carries the same relationship twice: FalkorDB 4.16 crashes on a
// relationship MERGE with ON MATCH SET that meets the same relationship
// twice in one batch (two relationships of dup that become one on keep, or
// a stray parallel duplicate). Relationships between keep and dup, and
// dup's self-loops, would become self-loops of keep: they are dropped.
func planMoves(keep, dup node, edges []dupEdge) (rows []map[string]any, drops []map[string]any) {
	type target struct {
		s, d int64
		typ  string
	}
	byTarget := map[target]map[string]any{}
	var order []target
	for _, e := range edges {
		src, dst := dup, e.Other
		if !e.Outgoing {
			src, dst = e.Other, dup
		}
		ref := map[string]any{"x": src.ID, "y": dst.ID, "r": e.RelID}
		if e.Other.ID == dup.ID || e.Other.ID == keep.ID {
			drops = append(drops, ref)
			continue
		}
		if src.ID == dup.ID {
			src = keep
		}
		if dst.ID == dup.ID {
			dst = keep
		}
		t := target{src.ID, dst.ID, e.RelType}
		row, ok := byTarget[t]
		if !ok {
			row = map[string]any{"s": src.ID, "sk": src.Key, "d": dst.ID, "dk": dst.Key, "type": e.RelType, "edges": []any{}}
			byTarget[t] = row
			order = append(order, t)
		}
		row["edges"] = append(row["edges"].([]any), ref)
	}
	slices.SortFunc(order, func(a, b target) int {
		return cmp.Or(cmp.Compare(a.s, b.s), cmp.Compare(a.d, b.d), cmp.Compare(a.typ, b.typ))
	})
	for _, t := range order {
		rows = append(rows, byTarget[t])
	}
	return rows, drops
}

// moveQuery moves relationships and drops would-be self-loops in one
// atomic write. Each row is one target relationship (source, type, target)
// and lists the original relationships that become it; their weights are
// read and summed inside the query, from the graph as it is at the write,
// and they are deleted in the same query, so a weight is moved exactly
// once even if the relationship changed since it was read. A relationship
// that is gone or changed type no longer matches and is left alone. No
// write is inside CALL {} (FalkorDB applies such writes to the first row
// only).
const moveQuery = `UNWIND $rows AS row
WITH row, row.s AS s, row.d AS d
MATCH (a) WHERE id(a) = s AND coalesce(a.key, '') = row.sk
MATCH (b) WHERE id(b) = d AND coalesce(b.key, '') = row.dk
UNWIND row.edges AS e
WITH a, b, row, e, e.x AS ex, e.y AS ey
MATCH (x) WHERE id(x) = ex
MATCH (y) WHERE id(y) = ey
MATCH (x)-[r:REL]->(y) WHERE id(r) = e.r AND coalesce(r.type, 'related_to') = row.type
WITH a, b, row, sum(coalesce(r.weight, 1.0)) AS w, max(r.last_seen) AS ls, max(r.decayed_at) AS da, collect(r) AS rs
MERGE (a)-[nr:REL {type: row.type}]->(b)
ON CREATE SET nr.weight = w, nr.last_seen = ls, nr.decayed_at = da
ON MATCH SET nr.weight = coalesce(nr.weight, 1.0) + w,
  nr.last_seen = CASE WHEN ls > nr.last_seen OR nr.last_seen IS NULL THEN ls ELSE nr.last_seen END,
  nr.decayed_at = CASE WHEN da > nr.decayed_at OR nr.decayed_at IS NULL THEN da ELSE nr.decayed_at END
FOREACH (old IN rs | DELETE old)
WITH sum(size(rs)) AS moved
UNWIND CASE WHEN size($drops) = 0 THEN [null] ELSE $drops END AS e
WITH moved, e, e.x AS ex, e.y AS ey
OPTIONAL MATCH (x) WHERE id(x) = ex
OPTIONAL MATCH (y) WHERE id(y) = ey
OPTIONAL MATCH (x)-[r:REL]->(y) WHERE id(r) = e.r
DELETE r
RETURN moved, count(r) AS dropped`

func (m merger) move(ctx context.Context, rows, drops []map[string]any) (moved, dropped int, err error) {
	res, err := m.g.Query(ctx, moveQuery, map[string]any{"rows": rows, "drops": drops})
	if err != nil {
		return 0, 0, fmt.Errorf("moving relationships: %w", err)
	}
	if len(res.Rows) != 1 {
		return 0, 0, fmt.Errorf("moving relationships: %d result rows", len(res.Rows))
	}
	var mv float64 // sum() is a float in FalkorDB
	var dr int64
	if err := res.Scan(0, map[string]any{"moved": &mv, "dropped": &dr}); err != nil {
		return 0, 0, fmt.Errorf("moving relationships: %w", err)
	}
	return int(mv), int(dr), nil
}

// foldQuery folds dup's counts and names into keep and deletes dup, only
// if dup has no relationship left (all moved).
const foldQuery = `MATCH (k:Entity) WHERE id(k) = $k AND k.key = $kk
MATCH (d:Entity) WHERE id(d) = $d AND d.key = $dk AND indegree(d) = 0 AND outdegree(d) = 0
WITH k, d, [n IN coalesce(k.aliases, []) + coalesce(d.aliases, []) + [d.name] WHERE n IS NOT NULL AND n <> k.name] AS names
WITH k, d, reduce(acc = [], n IN names | CASE WHEN n IN acc OR size(acc) >= $maxAliases THEN acc ELSE acc + n END) AS aliases
SET k.mention_count = coalesce(k.mention_count, 0) + coalesce(d.mention_count, 0),
  k.first_seen = CASE WHEN d.first_seen < k.first_seen OR k.first_seen IS NULL THEN d.first_seen ELSE k.first_seen END,
  k.last_seen = CASE WHEN d.last_seen > k.last_seen OR k.last_seen IS NULL THEN d.last_seen ELSE k.last_seen END,
  k.aliases = CASE WHEN size(aliases) = 0 THEN k.aliases ELSE aliases END
DELETE d
RETURN count(d)`

func (m merger) fold(ctx context.Context, keep, dup node) (bool, error) {
	res, err := m.g.Query(ctx, foldQuery, map[string]any{
		"k": keep.ID, "kk": keep.Key, "d": dup.ID, "dk": dup.Key, "maxAliases": maxAliases,
	})
	if err != nil {
		return false, fmt.Errorf("folding %s into %s: %w", dup.Key, keep.Key, err)
	}
	return res.Stats.NodesDeleted == 1, nil
}

// bothExist returns errVanished if keep or dup is gone.
func (m merger) bothExist(ctx context.Context, keep, dup node) error {
	res, err := m.g.ROQuery(ctx, `OPTIONAL MATCH (k:Entity) WHERE id(k) = $k AND k.key = $kk
OPTIONAL MATCH (d:Entity) WHERE id(d) = $d AND d.key = $dk
RETURN count(k) AS k, count(d) AS d`, map[string]any{"k": keep.ID, "kk": keep.Key, "d": dup.ID, "dk": dup.Key})
	if err != nil {
		return fmt.Errorf("checking entities %s and %s: %w", keep.Key, dup.Key, err)
	}
	var k, d int64
	if len(res.Rows) != 1 {
		return errVanished
	}
	if err := res.Scan(0, map[string]any{"k": &k, "d": &d}); err != nil {
		return fmt.Errorf("checking entities %s and %s: %w", keep.Key, dup.Key, err)
	}
	if k != 1 || d != 1 {
		return errVanished
	}
	return nil
}
