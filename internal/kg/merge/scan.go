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
// search and keep choice need, page by page.
func scanEntities(ctx context.Context, g Graph) ([]entity, error) {
	res, err := g.ROQuery(ctx, "MATCH (e:Entity) RETURN max(id(e)) AS top", nil)
	if errors.Is(err, graph.ErrNoGraph) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("scanning entities: %w", err)
	}
	if len(res.Rows) == 0 || res.Rows[0][0] == nil {
		return nil, nil
	}
	top, err := graph.AsInt64(res.Rows[0][0])
	if err != nil {
		return nil, fmt.Errorf("scanning entities: max id: %w", err)
	}
	var out []entity
	for lo := int64(0); lo <= top; lo += scanPage {
		res, err := g.ROQuery(ctx, `MATCH (e:Entity) WHERE id(e) >= $lo AND id(e) < $hi
RETURN id(e), e.key, e.name, e.normalized_name, e.type, e.mention_count, indegree(e) + outdegree(e)`,
			map[string]any{"lo": lo, "hi": lo + scanPage})
		if err != nil {
			return nil, fmt.Errorf("scanning entities %d-%d: %w", lo, lo+scanPage, err)
		}
		for _, row := range res.Rows {
			e := entity{}
			if e.ID, err = graph.AsInt64(row[0]); err != nil {
				return nil, fmt.Errorf("scanning entities: id: %w", err)
			}
			e.Key, _ = row[1].(string)
			e.Name, _ = row[2].(string)
			e.Norm, _ = row[3].(string)
			e.Type, _ = row[4].(string)
			e.Mentions, _ = row[5].(int64)
			e.Degree, _ = row[6].(int64)
			if e.Norm == "" {
				e.Norm = graph.NormalizeName(e.Name)
			}
			if e.Key == "" {
				continue // not addressable safely; the schema's constraint forbids it anyway
			}
			out = append(out, e)
		}
	}
	return out, nil
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
RETURN i, rel[0..$n]`, map[string]any{"ids": ids, "n": relatedLimit})
	if err != nil {
		return nil, fmt.Errorf("reading context of %d entities: %w", len(ids), err)
	}
	out := make(map[int64][]string, len(res.Rows))
	for _, row := range res.Rows {
		id, _ := row[0].(int64)
		list, _ := row[1].([]any)
		for _, v := range list {
			if s, ok := v.(string); ok {
				out[id] = append(out[id], clipRunes(s, 80))
			}
		}
	}
	return out, nil
}
