// Package asynqcompat holds every use of asynq's private Redis layout (key
// names and value formats that asynq keeps in an internal package): the
// lease recoverer that requeues the tasks of dead workers. Keeping them in
// one place, with contract tests against a real asynq server, is what makes
// an asynq upgrade safe to check.
//
// It imports nothing of ours.
package asynqcompat

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Fast lease recovery.
//
// asynq's own recoverer runs once a minute and only picks up tasks whose
// lease expired more than 30 s earlier, so a task whose worker was killed
// waits 60–120 s. Every worker here also runs a recoverer that looks every
// RecoverEvery for leases expired more than RecoverMargin ago and puts those
// tasks back at the head of their queue, bringing recovery to lease (30 s)
// + margin + at most one interval.
//
// It is safe for the same reason asynq's is: a live worker extends its
// leases to now+30 s every 5 s, and a worker that cannot extend them cancels
// its handler when they expire. The margin covers clock skew between
// workers (keep clocks NTP-synced well under it). A task recovered this way
// keeps its ID and retry count (it did not fail: its worker died), so a
// task that kills its worker every time would loop; after maxFastRecoveries
// it is left to asynq's recoverer, which counts a retry each time and
// finally archives it.

// recoverScript requeues the lease-expired tasks of every queue in one
// round trip (an idle pod used to pay one script per queue every
// interval).
//
// KEYS[1+3i..3+3i] asynq:{q}:lease, asynq:{q}:active, asynq:{q}:pending
// ARGV[1] cutoff (unix seconds)  ARGV[2] max fast recoveries  ARGV[3]
// counter TTL s, then per queue ARGV[4+2i] task key prefix asynq:{q}:t:,
// ARGV[5+2i] recovery counter prefix
// (asynq dequeues from the right of pending, so RPUSH puts a task next.)
var recoverScript = redis.NewScript(`
local out = {}
local nq = #KEYS / 3
for i = 0, nq - 1 do
  local lease, active, pending = KEYS[1+3*i], KEYS[2+3*i], KEYS[3+3*i]
  local prefix, counter = ARGV[4+2*i], ARGV[5+2*i]
  local ids = redis.call('ZRANGEBYSCORE', lease, '-inf', ARGV[1], 'LIMIT', 0, 100)
  for _, id in ipairs(ids) do
    local n = redis.call('INCR', counter .. id)
    redis.call('EXPIRE', counter .. id, ARGV[3])
    if n <= tonumber(ARGV[2]) and redis.call('LREM', active, 0, id) > 0 then
      redis.call('ZREM', lease, id)
      redis.call('RPUSH', pending, id)
      redis.call('HSET', prefix .. id, 'state', 'pending')
      table.insert(out, id)
    end
  end
end
return out
`)

const (
	// RecoverMargin is how long past its expiry a lease must be before
	// another worker takes the task over.
	RecoverMargin = 5 * time.Second
	// RecoverEvery is how often RunRecoverer looks for expired leases.
	RecoverEvery      = 5 * time.Second
	maxFastRecoveries = 3
	recoveredPrefix   = "sgjobs:recovered:"
	// recoverTurnKey is the fleet's scanning turn: the pod that sets it
	// scans, the others skip until it expires.
	recoverTurnKey = "sgjobs:recover:turn"
)

// recoverExpired requeues tasks of queues whose lease expired before
// now-RecoverMargin and returns their IDs.
func recoverExpired(ctx context.Context, rdb redis.UniversalClient, queues []string, now time.Time) ([]string, error) {
	cutoff := strconv.FormatInt(now.Add(-RecoverMargin).Unix(), 10)
	var keys []string
	args := []any{cutoff, maxFastRecoveries, 24 * 3600}
	for _, q := range queues {
		keys = append(keys, leaseKey(q), activeKey(q), pendingKey(q))
		args = append(args, taskKeyPrefix(q), recoveredPrefix+q+":")
	}
	ids, err := recoverScript.Run(ctx, rdb, keys, args...).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("recovering queues %v: %w", queues, err)
	}
	return ids, nil
}

// takeTurn reports whether this pod took the fleet's turn at key for d (a
// SET NX PX: one command); a Redis error takes it, so the caller's own
// call fails and is logged as before.
func takeTurn(ctx context.Context, rdb redis.UniversalClient, key string, d time.Duration) bool {
	ok, err := rdb.SetNX(ctx, key, "1", d).Result()
	return err != nil || ok
}

// RunRecoverer recovers lease-expired tasks every interval until ctx ends.
// recovered, if not nil, is called once per task put back (a metric).
// Start it only where Gate accepted the linked asynq version.
func RunRecoverer(ctx context.Context, log *slog.Logger, rdb redis.UniversalClient, queues []string, interval time.Duration, recovered func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// Only the pod that takes the fleet's turn scans. The turn is a
		// little shorter than the interval, so the pod whose tick comes
		// first after it lapses scans: some pod scans at least every
		// interval, as when every pod scanned.
		if !takeTurn(ctx, rdb, recoverTurnKey, interval*4/5) {
			continue
		}
		ids, err := recoverExpired(ctx, rdb, queues, time.Now())
		if err != nil && ctx.Err() == nil {
			log.Debug("lease recovery failed; retrying next interval", "error", err)
		}
		for _, id := range ids {
			log.Warn("task recovered from a dead worker (lease expired); requeued at the head of its queue", "task_id", id)
			if recovered != nil {
				recovered()
			}
		}
	}
}
