package handlers

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/kg/extract"
	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
)

// lockedGraph takes the graph write lock around every write query, so the
// maintenance jobs' relationship MERGEs never run at the same time as the
// extraction engine's (FalkorDB 4.16.3 can then create a relationship
// twice). Reads pass through. Without Redis it is the graph itself.
type lockedGraph struct {
	Graph
	rdb redis.UniversalClient
}

// graphWriteLockTTL bounds one maintenance write; their batches take
// milliseconds.
const graphWriteLockTTL = 30 * time.Second

func withWriteLock(g Graph, rdb redis.UniversalClient) Graph {
	if g == nil || rdb == nil {
		return g
	}
	return lockedGraph{Graph: g, rdb: rdb}
}

func (l lockedGraph) Query(ctx context.Context, cypher string, params map[string]any, opts ...graph.Option) (*graph.Result, error) {
	release, err := extract.LockGraphWrites(ctx, l.rdb, graphWriteLockTTL)
	if err != nil {
		return nil, err
	}
	defer release()
	return l.Graph.Query(ctx, cypher, params, opts...)
}

// writeLockedGraph is the knowledge graph with its writes under the graph write
// lock, for a task that declares the graph and Redis.
func (k kit) writeLockedGraph() Graph { return withWriteLock(k.Graph(), k.Redis()) }
