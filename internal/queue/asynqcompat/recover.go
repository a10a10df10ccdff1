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

// recoverScript requeues the lease-expired tasks of one queue.
//
// KEYS[1] asynq:{q}:lease  KEYS[2] asynq:{q}:active  KEYS[3] asynq:{q}:pending
// ARGV[1] cutoff (unix seconds)  ARGV[2] task key prefix asynq:{q}:t:
// (asynq dequeues from the right of pending, so RPUSH puts a task next.)
// ARGV[3] recovery counter prefix  ARGV[4] max fast recoveries  ARGV[5] counter TTL s
var recoverScript = redis.NewScript(`
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
local out = {}
for _, id in ipairs(ids) do
  local n = redis.call('INCR', ARGV[3] .. id)
  redis.call('EXPIRE', ARGV[3] .. id, ARGV[5])
  if n <= tonumber(ARGV[4]) and redis.call('LREM', KEYS[2], 0, id) > 0 then
    redis.call('ZREM', KEYS[1], id)
    redis.call('RPUSH', KEYS[3], id)
    redis.call('HSET', ARGV[2] .. id, 'state', 'pending')
    table.insert(out, id)
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
)

// recoverExpired requeues tasks of queues whose lease expired before
// now-RecoverMargin and returns their IDs.
func recoverExpired(ctx context.Context, rdb redis.UniversalClient, queues []string, now time.Time) ([]string, error) {
	cutoff := strconv.FormatInt(now.Add(-RecoverMargin).Unix(), 10)
	var all []string
	for _, q := range queues {
		ids, err := recoverScript.Run(ctx, rdb, []string{leaseKey(q), activeKey(q), pendingKey(q)},
			cutoff, taskKeyPrefix(q), recoveredPrefix+q+":", maxFastRecoveries, 24*3600).StringSlice()
		if err != nil {
			return all, fmt.Errorf("recovering queue %s: %w", q, err)
		}
		all = append(all, ids...)
	}
	return all, nil
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
