package legacy

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Keys of the cut-over state (docs/data-model.md, "Cut-over").
const (
	// runPrefix + task is a hash of the Python runs of task seen on the
	// debug channel: count (runs counted while the Go side schedules the
	// task), last_start, last_end, last_seen (Unix ms), stand_down_until
	// (Unix ms), and as:<name> (runs counted per registered name).
	runPrefix = "sgjobs:legacy:run:"
	// seenPrefix + digest marks an event one worker has counted, so the
	// workers that all receive it count it once.
	seenPrefix = "sgjobs:legacy:seen:"
	// WindowKey holds when the cut-over started (Unix ms): the first start
	// of a worker scheduler on this Redis. Deleting it restarts the window
	// at the next scheduler start.
	WindowKey = "sgjobs:cutover:started"
	// handoverPrefix + task holds the task's hand-over point (Unix ms).
	handoverPrefix = "sgjobs:cutover:handover:"
)

// RunKey is the hash of task's Python runs.
func RunKey(task string) string { return runPrefix + task }

// HandoverKey holds task's hand-over point.
func HandoverKey(task string) string { return handoverPrefix + task }

// recordRetention keeps a task's record this long after the last Python
// run seen: long enough to outlive any cut-over's verification.
const recordRetention = 90 * 24 * time.Hour

// seenRetention keeps an event's mark long after every worker has received
// it (pub/sub delivers within milliseconds, or never).
const seenRetention = time.Hour

// Run is one run of the Python scheduler, as its event told it.
type Run struct {
	Task string
	// As is the name it was registered under (the event's payload task).
	As         string
	Start, End time.Time
	// Digest identifies the event: every worker receives the same bytes.
	Digest string
}

// recordScript keeps the latest run's times (every worker may write them:
// keeping the maximum makes it idempotent) and, when the run is counted,
// counts it once across the workers and extends the stand-down.
//
// KEYS[1] run hash, KEYS[2] seen mark. ARGV: start ms, end ms, now ms,
// registered name, count ('1' or '0'), stand down until ms ('0': no),
// seen mark TTL s, record TTL s.
var recordScript = redis.NewScript(`
local function keepMax(f, v)
  local cur = tonumber(redis.call('HGET', KEYS[1], f) or '0') or 0
  if tonumber(v) > cur then redis.call('HSET', KEYS[1], f, v) end
end
keepMax('last_start', ARGV[1])
keepMax('last_end', ARGV[2])
keepMax('last_seen', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[8])
if ARGV[5] ~= '1' then return 0 end
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[7]) then return 0 end
redis.call('HINCRBY', KEYS[1], 'count', 1)
redis.call('HINCRBY', KEYS[1], 'as:' .. ARGV[4], 1)
if ARGV[6] ~= '0' then keepMax('stand_down_until', ARGV[6]) end
return 1
`)

// record stores r and reports whether this call counted it (the first
// worker to count the event). until, if not zero, is when the Go task may
// run again.
func record(ctx context.Context, rdb redis.UniversalClient, r Run, now time.Time, count bool, until time.Time) (bool, error) {
	c, u := "0", "0"
	if count {
		c = "1"
	}
	if !until.IsZero() {
		u = strconv.FormatInt(until.UnixMilli(), 10)
	}
	n, err := recordScript.Run(ctx, rdb, []string{RunKey(r.Task), seenPrefix + r.Digest},
		r.Start.UnixMilli(), r.End.UnixMilli(), now.UnixMilli(), r.As, c, u,
		int64(seenRetention/time.Second), int64(recordRetention/time.Second)).Int()
	if err != nil {
		return false, fmt.Errorf("legacy: recording a Python run of %s: %w", r.Task, err)
	}
	return n == 1, nil
}

// Record is what is known of a task's Python runs.
type Record struct {
	Task string
	// Count is the runs seen while the Go side scheduled the task.
	Count int64
	// As counts them per registered name.
	As                           map[string]int64
	LastStart, LastEnd, LastSeen time.Time
	// StandDownUntil is when the Go task may run again (zero: it does
	// not stand down).
	StandDownUntil time.Time
}

// Seen reports whether any Python run of the task was seen.
func (r Record) Seen() bool { return !r.LastSeen.IsZero() }

// Read returns the record of each task (zero records for tasks never seen).
func Read(ctx context.Context, rdb redis.UniversalClient, tasks []string) ([]Record, error) {
	pipe := rdb.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(tasks))
	for i, t := range tasks {
		cmds[i] = pipe.HGetAll(ctx, RunKey(t))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("legacy: reading Python runs: %w", err)
	}
	out := make([]Record, len(tasks))
	for i, t := range tasks {
		h := cmds[i].Val()
		r := Record{Task: t, As: map[string]int64{}}
		r.Count, _ = strconv.ParseInt(h["count"], 10, 64)
		r.LastStart, r.LastEnd, r.LastSeen = msTime(h["last_start"]), msTime(h["last_end"]), msTime(h["last_seen"])
		r.StandDownUntil = msTime(h["stand_down_until"])
		for k, v := range h {
			if name, ok := strings.CutPrefix(k, "as:"); ok {
				r.As[name], _ = strconv.ParseInt(v, 10, 64)
			}
		}
		out[i] = r
	}
	return out, nil
}

func msTime(s string) time.Time {
	ms, err := strconv.ParseInt(s, 10, 64)
	if err != nil || ms <= 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

// StandDowns answers the stand-down middleware: a Go occurrence of a task
// the Python scheduler ran within the last interval (and a half) does not
// run.
type StandDowns struct {
	Redis redis.UniversalClient
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Until returns when task may run again, or zero when it need not stand
// down.
func (s StandDowns) Until(ctx context.Context, task string) (time.Time, error) {
	v, err := s.Redis.HGet(ctx, RunKey(task), "stand_down_until").Result()
	if errors.Is(err, redis.Nil) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("legacy: reading the stand-down of %s: %w", task, err)
	}
	until := msTime(v)
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	if !until.After(now()) {
		return time.Time{}, nil
	}
	return until, nil
}

// StartWindow records the start of the cut-over, unless already recorded,
// and returns it.
func StartWindow(ctx context.Context, rdb redis.UniversalClient, now time.Time) (time.Time, error) {
	if err := rdb.SetNX(ctx, WindowKey, now.UnixMilli(), 0).Err(); err != nil {
		return time.Time{}, fmt.Errorf("legacy: recording the cut-over start: %w", err)
	}
	return WindowStart(ctx, rdb)
}

// WindowStart is when the cut-over started (zero: no worker scheduler has
// started on this Redis yet).
func WindowStart(ctx context.Context, rdb redis.UniversalClient) (time.Time, error) {
	v, err := rdb.Get(ctx, WindowKey).Result()
	if errors.Is(err, redis.Nil) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("legacy: reading the cut-over start: %w", err)
	}
	return msTime(v), nil
}
