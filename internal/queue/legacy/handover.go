package legacy

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// HandOver fixes where each cursor-driven task takes over from the Python
// side: the first time the task asks, its point becomes the start of the
// last Python run of it the detector saw (the Python side had done the
// work before that), or, if none was seen, that moment. It never moves
// afterwards. A task then starts no earlier than its point (and no earlier
// than its own look-back), so the first Go runs do not re-process, and pay
// again for, history the Python side already processed.
type HandOver struct {
	Redis redis.UniversalClient
	// Now is the clock (default time.Now).
	Now func() time.Time
}

var handoverScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v then return v end
local p = tonumber(redis.call('HGET', KEYS[2], 'last_start') or '')
if (not p) or p <= 0 or p > tonumber(ARGV[1]) then p = tonumber(ARGV[1]) end
p = string.format('%d', p)
redis.call('SET', KEYS[1], p)
return p
`)

// Point returns task's hand-over point, fixing it on the first call.
func (h HandOver) Point(ctx context.Context, task string) (time.Time, error) {
	now := time.Now
	if h.Now != nil {
		now = h.Now
	}
	v, err := handoverScript.Run(ctx, h.Redis, []string{HandoverKey(task), RunKey(task)}, now().UnixMilli()).Text()
	if err != nil {
		return time.Time{}, fmt.Errorf("legacy: hand-over point of %s: %w", task, err)
	}
	ms, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("legacy: hand-over point of %s is %q: %w", task, v, err)
	}
	return time.UnixMilli(ms), nil
}

// ReadHandOver returns task's hand-over point without fixing it (zero: not
// fixed yet).
func ReadHandOver(ctx context.Context, rdb redis.UniversalClient, task string) (time.Time, error) {
	v, err := rdb.Get(ctx, HandoverKey(task)).Result()
	if errors.Is(err, redis.Nil) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("legacy: reading the hand-over point of %s: %w", task, err)
	}
	return msTime(v), nil
}
