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
// round trip. An idle pod used to pay one script per queue every interval
// (a ZRANGEBYSCORE each); with many pods, every pod scanning every queue
// every interval is most of a fleet's idle Redis load, so a pod first
// takes the fleet's turn (SET NX PX on KEYS[1]) and scans only if it got
// it: some pod scans each interval, whichever comes first.
//
// KEYS[1] the turn key (” in ARGV[1] means no turn: scan)
// KEYS[2+3i..4+3i] asynq:{q}:lease, asynq:{q}:active, asynq:{q}:pending
// ARGV[1] turn length ms ('0': always scan)  ARGV[2] cutoff (unix seconds)
// ARGV[3] max fast recoveries  ARGV[4] counter TTL s, then per queue
// ARGV[5+2i] task key prefix asynq:{q}:t:, ARGV[6+2i] recovery counter prefix
// (asynq dequeues from the right of pending, so RPUSH puts a task next.)
var recoverScript = redis.NewScript(`
if ARGV[1] ~= '0' and not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  return {}
end
local out = {}
local nq = (#KEYS - 1) / 3
for i = 0, nq - 1 do
  local lease, active, pending = KEYS[2+3*i], KEYS[3+3*i], KEYS[4+3*i]
  local prefix, counter = ARGV[5+2*i], ARGV[6+2*i]
  local ids = redis.call('ZRANGEBYSCORE', lease, '-inf', ARGV[2], 'LIMIT', 0, 100)
  for _, id in ipairs(ids) do
    local n = redis.call('INCR', counter .. id)
    redis.call('EXPIRE', counter .. id, ARGV[4])
    if n <= tonumber(ARGV[3]) and redis.call('LREM', active, 0, id) > 0 then
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
// now-RecoverMargin and returns their IDs. With turn > 0 it scans only if
// no pod of the fleet has scanned within turn.
func recoverExpired(ctx context.Context, rdb redis.UniversalClient, queues []string, now time.Time, turn time.Duration) ([]string, error) {
	cutoff := strconv.FormatInt(now.Add(-RecoverMargin).Unix(), 10)
	keys := []string{recoverTurnKey}
	args := []any{turn.Milliseconds(), cutoff, maxFastRecoveries, 24 * 3600}
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
		// The turn is a little shorter than the interval, so the pod
		// whose tick comes first after it lapses scans: some pod scans
		// at least every interval, as when every pod scanned.
		ids, err := recoverExpired(ctx, rdb, queues, time.Now(), interval*4/5)
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
