package merge

import (
	"context"
	"errors"
	"fmt"

	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
)

// scanPage is how many internal ids one read covers. Reads by id range use
// FalkorDB's label-and-id scan, so each page is a short read: a long read
// would hold up every write queued behind it, and with it the server.
const scanPage = 5000

// scanEntities reads every Entity node's identity and the facts candidate
// search and keep choice need, page by page. A node whose properties have
// unexpected types (the bot writes to the graph too) is left out and
// counted in bad, so one bad node never stops the pass.
func scanEntities(ctx context.Context, g Graph) (out []entity, bad int, err error) {
	res, err := g.ROQuery(ctx, "MATCH (e:Entity) RETURN max(id(e)) AS top", nil)
	if errors.Is(err, graph.ErrNoGraph) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("scanning entities: %w", err)
	}
	var top int64 = -1
	if len(res.Rows) == 1 {
		if err := res.Scan(0, map[string]any{"top": &top}); err != nil {
			return nil, 0, fmt.Errorf("scanning entities: %w", err)
		}
	}
	for lo := int64(0); lo <= top; lo += scanPage {
		res, err := g.ROQuery(ctx, `MATCH (e:Entity) WHERE id(e) >= $lo AND id(e) < $hi
RETURN id(e) AS id, e.key AS key, e.name AS name, e.normalized_name AS norm, e.type AS type,
  e.mention_count AS mentions, indegree(e) + outdegree(e) AS degree`,
			map[string]any{"lo": lo, "hi": lo + scanPage})
		if err != nil {
			return nil, bad, fmt.Errorf("scanning entities %d-%d: %w", lo, lo+scanPage, err)
		}
		for i := range res.Rows {
			e := entity{}
			if err := res.Scan(i, map[string]any{"id": &e.ID, "key": &e.Key, "name": &e.Name, "norm": &e.Norm,
				"type": &e.Type, "mentions": &e.Mentions, "degree": &e.Degree}); err != nil {
				bad++
				continue
			}
			if e.Norm == "" {
				e.Norm = graph.NormalizeName(e.Name)
			}
			if e.Key == "" {
				continue // not addressable safely; the schema's constraint forbids it anyway
			}
			out = append(out, e)
		}
	}
	return out, bad, nil
}

// relatedLimit is how many relationships of each entity a prompt shows.
const relatedLimit = 5

// related returns up to relatedLimit relationships of each entity, the
// strongest first, as "type name" texts, for the model to tell namesakes
// apart.
func related(ctx context.Context, g Graph, ids []int64) (map[int64][]string, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	res, err := g.ROQuery(ctx, `UNWIND $ids AS i
WITH i MATCH (e) WHERE id(e) = i
OPTIONAL MATCH (e)-[r:REL]-(m)
WITH i, r, m ORDER BY coalesce(r.weight, 0) DESC
WITH i, collect(coalesce(r.type, 'related_to') + ' ' + coalesce(m.name, m.key)) AS rel
RETURN i AS id, rel[0..$n] AS rel`, map[string]any{"ids": ids, "n": relatedLimit})
	if err != nil {
		return nil, fmt.Errorf("reading context of %d entities: %w", len(ids), err)
	}
	out := make(map[int64][]string, len(res.Rows))
	for i := range res.Rows {
		var id int64
		var list []any
		if err := res.Scan(i, map[string]any{"id": &id, "rel": &list}); err != nil {
			continue // context is a hint to the model; a bad row only shortens it
		}
		for _, v := range list {
			if s, ok := v.(string); ok {
				out[id] = append(out[id], clipRunes(s, 80))
			}
		}
	}
	return out, nil
}
