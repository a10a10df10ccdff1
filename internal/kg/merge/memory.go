package merge

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis keys of the verdict memory (docs/data-model.md, "Knowledge-graph
// maintenance").
const (
	// VerdictsKey is a hash: field "<key a>|<key b>" (the two entity keys in
	// ascending order), value "same|<key kept>" or "distinct".
	VerdictsKey = "sgjobs:kgmerge:verdicts"
	// JudgedKey is a sorted set of the same fields, scored by when the LLM
	// judged the pair (unix ms); it is how old verdicts are forgotten.
	JudgedKey = "sgjobs:kgmerge:judged"
)

// DefaultMemoryTTL is how long a verdict is trusted. A month: long enough
// that the daily consolidation and the ten-minute dedup pass do not ask
// about the same pair again and again, short enough that a pair whose
// entities have since gathered more context gets a fresh look.
const DefaultMemoryTTL = 30 * 24 * time.Hour

// Memory remembers the LLM's verdicts by entity key. Keys are derived from
// name and type, so a pair keeps its identity across runs, and an entity
// that was merged away and then extracted again (same key) is merged again
// without a call.
type Memory struct {
	rdb redis.UniversalClient
	ttl time.Duration
}

// NewMemory returns the verdict memory in rdb; ttl 0 means
// DefaultMemoryTTL.
func NewMemory(rdb redis.UniversalClient, ttl time.Duration) *Memory {
	if ttl <= 0 {
		ttl = DefaultMemoryTTL
	}
	return &Memory{rdb: rdb, ttl: ttl}
}

// verdict is a remembered judgement of a pair.
type verdict struct {
	Same bool
	Keep string // the key of the entity to keep, when Same
}

func (v verdict) encode() string {
	if v.Same {
		return "same|" + v.Keep
	}
	return "distinct"
}

func decodeVerdict(s string) (verdict, bool) {
	if s == "distinct" {
		return verdict{}, true
	}
	if keep, ok := strings.CutPrefix(s, "same|"); ok && keep != "" {
		return verdict{Same: true, Keep: keep}, true
	}
	return verdict{}, false
}

// pairField is the memory's name of the pair of entities with keys a and b.
func pairField(a, b string) string {
	if b < a {
		a, b = b, a
	}
	return a + "|" + b
}

const memoryChunk = 500

// forget drops verdicts older than the TTL, so lookup never sees them.
func (m *Memory) forget(ctx context.Context, now time.Time) (int, error) {
	cutoff := strconv.FormatInt(now.Add(-m.ttl).UnixMilli(), 10)
	total := 0
	for {
		old, err := m.rdb.ZRangeByScore(ctx, JudgedKey, &redis.ZRangeBy{Min: "-inf", Max: "(" + cutoff, Count: memoryChunk}).Result()
		if err != nil {
			return total, fmt.Errorf("reading old verdicts: %w", err)
		}
		if len(old) == 0 {
			return total, nil
		}
		members := make([]any, len(old))
		for i, f := range old {
			members[i] = f
		}
		pipe := m.rdb.Pipeline()
		pipe.HDel(ctx, VerdictsKey, old...)
		pipe.ZRem(ctx, JudgedKey, members...)
		if _, err := pipe.Exec(ctx); err != nil {
			return total, fmt.Errorf("forgetting old verdicts: %w", err)
		}
		total += len(old)
	}
}

// lookup returns the remembered verdicts among fields.
func (m *Memory) lookup(ctx context.Context, fields []string) (map[string]verdict, error) {
	out := map[string]verdict{}
	for start := 0; start < len(fields); start += memoryChunk {
		chunk := fields[start:min(start+memoryChunk, len(fields))]
		vals, err := m.rdb.HMGet(ctx, VerdictsKey, chunk...).Result()
		if err != nil {
			return nil, fmt.Errorf("reading verdicts: %w", err)
		}
		for i, v := range vals {
			s, _ := v.(string)
			if d, ok := decodeVerdict(s); ok {
				out[chunk[i]] = d
			}
		}
	}
	return out, nil
}

// remember stores verdicts judged at now.
func (m *Memory) remember(ctx context.Context, now time.Time, vs map[string]verdict) error {
	if len(vs) == 0 {
		return nil
	}
	pipe := m.rdb.Pipeline()
	for f, v := range vs {
		pipe.HSet(ctx, VerdictsKey, f, v.encode())
		pipe.ZAdd(ctx, JudgedKey, redis.Z{Score: float64(now.UnixMilli()), Member: f})
	}
	_, err := pipe.Exec(ctx)
	if err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("remembering %d verdicts: %w", len(vs), err)
	}
	return nil
}
