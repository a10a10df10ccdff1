// Package writelock serializes the knowledge graph's relationship writes
// across every process: FalkorDB 4.16.3 can create a relationship twice when
// two queries MERGE it at once, so the extraction engine and every
// maintenance writer (decay, orphan GC, merges, hub organisation, epochs)
// take this one Redis lock around each write query.
//
// It imports only the graph client's types.
package writelock

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
)

// Key holds the lock: a random token, with a TTL so a writer that died or
// froze holds the others up for at most that long.
const Key = "sgjobs:kgx:write-lock"

// DefaultTTL bounds one write; batches take milliseconds.
const DefaultTTL = 30 * time.Second

// unlockScript deletes the lock if it still holds our token.
var unlockScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)

// Acquire waits for the lock until ctx ends and returns its release and how
// long it waited. The release is safe to call more than once and reaches
// Redis even after ctx ended.
func Acquire(ctx context.Context, rdb redis.UniversalClient, ttl time.Duration) (release func(), waited time.Duration, err error) {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	token := hex.EncodeToString(b)
	start := time.Now()
	wait := 2 * time.Millisecond
	for {
		ok, err := rdb.SetNX(ctx, Key, token, ttl).Result()
		if err != nil {
			return nil, time.Since(start), fmt.Errorf("taking the graph write lock: %w", err)
		}
		if ok {
			released := false
			return func() {
				if released {
					return
				}
				released = true
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
				defer cancel()
				_ = unlockScript.Run(rctx, rdb, []string{Key}, token).Err() // else it lapses at ttl
			}, time.Since(start), nil
		}
		select {
		case <-ctx.Done():
			return nil, time.Since(start), fmt.Errorf("waiting for the graph write lock: %w", context.Cause(ctx))
		case <-time.After(wait):
		}
		wait = min(2*wait, 50*time.Millisecond)
	}
}

// Querier runs Cypher (*graph.Graph).
type Querier interface {
	Query(ctx context.Context, cypher string, params map[string]any, opts ...graph.Option) (*graph.Result, error)
	ROQuery(ctx context.Context, cypher string, params map[string]any, opts ...graph.Option) (*graph.Result, error)
}

// Graph is a graph whose write queries hold the lock; reads pass through.
type Graph struct {
	Querier
	rdb redis.UniversalClient
	ttl time.Duration
}

// Wrap returns g with its writes under the lock (ttl 0: DefaultTTL).
func Wrap(g Querier, rdb redis.UniversalClient, ttl time.Duration) Graph {
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	return Graph{Querier: g, rdb: rdb, ttl: ttl}
}

// Query runs a write query holding the lock.
func (l Graph) Query(ctx context.Context, cypher string, params map[string]any, opts ...graph.Option) (*graph.Result, error) {
	release, _, err := Acquire(ctx, l.rdb, l.ttl)
	if err != nil {
		return nil, err
	}
	defer release()
	return l.Querier.Query(ctx, cypher, params, opts...)
}
