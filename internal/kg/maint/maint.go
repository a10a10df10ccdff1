// Package maint maintains the knowledge graph without an LLM: it decays
// relationship weights and prunes the edges that fall under a threshold
// (Decay), and deletes entities left without any relationship
// (CollectOrphans).
//
// Both walk the graph in ranges of internal node ids and write at most
// BatchSize edges or nodes per query. FalkorDB holds the server's global
// lock while a write commits, so one big write would stall every client of
// the server (the bot included); batches of a few thousand keep each stall
// to tens of milliseconds. Ranges of node ids, rather than repeated
// "MATCH ... LIMIT" over the whole graph, make each batch an id seek
// (NodeByIdSeek) instead of a scan from the start, so a full pass costs
// one walk over the graph. Ids are only used inside one run, never stored
// (FalkorDB reuses the ids of deleted nodes; see docs/data-model.md).
package maint

import (
	"context"
	"errors"
	"fmt"

	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
)

// Graph runs Cypher on the knowledge graph (*graph.Graph).
type Graph interface {
	Query(ctx context.Context, cypher string, params map[string]any, opts ...graph.Option) (*graph.Result, error)
	ROQuery(ctx context.Context, cypher string, params map[string]any, opts ...graph.Option) (*graph.Result, error)
}

// Defaults of the settings (KG_DECAY_FACTOR, KG_DECAY_MIN_WEIGHT,
// KG_BATCH_SIZE).
const (
	DefaultDecayFactor = 0.95
	DefaultMinWeight   = 0.1
	DefaultBatchSize   = 2000
)

// maxWidthFactor caps an id range at this many times the batch size, so a
// sparse or already-processed stretch of the graph is crossed in a few
// queries without one of them scanning the whole graph.
const maxWidthFactor = 64

// maxID returns the largest internal id of a node matching pattern (a
// constant such as "(n)" or "(n:Entity)"), or -1 when there is none or the
// graph does not exist yet. It scans every node (4–5 ms per 55,000 nodes
// measured); a write arriving on the graph meanwhile waits for it with the
// server's lock held, so this is the one read per run that is not bounded
// by the batch size, and it is done once.
func maxID(ctx context.Context, g Graph, pattern string) (int64, error) {
	res, err := g.ROQuery(ctx, "MATCH "+pattern+" RETURN max(id(n)) AS max", nil)
	if errors.Is(err, graph.ErrNoGraph) {
		return -1, nil
	}
	if err != nil {
		return 0, fmt.Errorf("finding the highest node id: %w", err)
	}
	if len(res.Rows) != 1 {
		return 0, fmt.Errorf("finding the highest node id: %d rows", len(res.Rows))
	}
	v, err := res.Value(0, "max")
	if err != nil || v == nil {
		return -1, err
	}
	return graph.AsInt64(v)
}

// span walks the node ids from..top in ranges [lo, hi) sized so that each
// holds about target items (edges, orphans). The density of the graph
// varies (a hub has thousands of edges, a stretch of deleted ids none), so
// each range is sized from what the previous one held; a range that still
// holds more than a batch is simply visited again, since both jobs only
// match what is left to do.
type span struct {
	lo, width, top int64
	target         int64
	maxWidth       int64
}

func newSpan(from, top, width, target int64) *span {
	s := &span{lo: from, top: top, target: max(target, 1), maxWidth: max(target*maxWidthFactor, 1)}
	s.width = clamp(width, 1, s.maxWidth)
	return s
}

func (s *span) done() bool { return s.lo > s.top }

// hi is the end (exclusive) of the current range.
func (s *span) hi() int64 { return min(s.lo+s.width, s.top+1) }

// advance moves past the current range, which held items, and sizes the
// next one to hold about target. Growth and shrinkage are bounded to 4x per
// step, so one odd range does not send the next one far off.
func (s *span) advance(items int64) {
	w := s.width
	if covered := s.hi() - s.lo; covered < w {
		w = covered // the last, truncated range says little about density
	}
	s.lo = s.hi()
	next := w * 4
	if items > 0 {
		next = clamp(w*s.target/items, max(w/4, 1), w*4)
	}
	s.width = clamp(next, 1, s.maxWidth)
}

func clamp(v, lo, hi int64) int64 { return max(lo, min(v, hi)) }

// counts reads the integer columns of a one-row result.
func counts(res *graph.Result, cols ...string) ([]int64, error) {
	if len(res.Rows) != 1 {
		return nil, fmt.Errorf("%d rows, want 1", len(res.Rows))
	}
	out := make([]int64, len(cols))
	for i, c := range cols {
		n, err := res.Int64(0, c)
		if err != nil {
			return nil, err
		}
		out[i] = n
	}
	return out, nil
}
