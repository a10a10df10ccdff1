package maint

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// DecayRunKey is the Redis hash recording the latest decay run (see
// docs/data-model.md, "Knowledge-graph maintenance").
const DecayRunKey = "sgjobs:kg_decay:run"

// Run states in DecayRunKey.
const (
	StateRunning = "running"
	StateDone    = "done"
)

// ErrRunReplaced means another run took over the run record: this run must
// stop writing.
var ErrRunReplaced = errors.New("decay run replaced by another run")

// RunLog records decay runs in Redis so that a run happens once per
// scheduled occurrence: a second delivery of the same occurrence finds it
// done, and a retry after a crash resumes where the crashed attempt left off
// with the same stamp (which Decay needs to skip what is already decayed).
//
// It keeps one run, the latest: kg_decay_task is a singleton, so there is
// never a second run to keep track of at the same time.
type RunLog struct {
	rdb redis.UniversalClient
	key string
}

// NewRunLog returns the decay run log on rdb.
func NewRunLog(rdb redis.UniversalClient) *RunLog {
	return &RunLog{rdb: rdb, key: DecayRunKey}
}

// Run is one decay run as recorded.
type Run struct {
	// TaskID is the asynq task of the run: "kg_decay_task@<due ms>" for a
	// scheduled occurrence, anything else for a manual run.
	TaskID string
	// Stamp is the run's DecayOptions.Run.
	Stamp int64
	// Next is the source-node id to resume from.
	Next int64
	// State is StateRunning or StateDone.
	State string
	// Resumed: an earlier attempt of this run had started.
	Resumed bool
}

// beginScript starts run ARGV[1] or returns the recorded one. A new run's
// stamp is its candidate (the due time) but at least one more than the
// previous run's, so stamps always increase even for manual runs and a
// clock that went back.
var beginScript = redis.NewScript(`
local cur = redis.call('HMGET', KEYS[1], 'task_id', 'stamp', 'next', 'state')
if cur[1] == ARGV[1] then
  return {tonumber(cur[2]), tonumber(cur[3]) or 0, cur[4], 1}
end
local stamp = tonumber(ARGV[2])
local prev = tonumber(cur[2])
if prev and stamp <= prev then stamp = prev + 1 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'task_id', ARGV[1], 'stamp', stamp, 'next', 0, 'state', 'running',
  'started_ms', ARGV[3], 'prev_task_id', cur[1] or '', 'prev_state', cur[4] or '')
return {stamp, 0, 'running', 0}
`)

// advanceScript records progress (or completion) of run ARGV[1] if it is
// still the recorded one.
var advanceScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'task_id') ~= ARGV[1] then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i+1]) end
return 1
`)

// Begin returns the run of taskID: the recorded one if this task already
// started it (Resumed; State tells whether it finished), else a new run
// with a stamp of at least candidate (Unix ms).
func (l *RunLog) Begin(ctx context.Context, taskID string, candidate int64, now time.Time) (Run, error) {
	if taskID == "" {
		return Run{}, errors.New("decay run: empty task id")
	}
	res, err := beginScript.Run(ctx, l.rdb, []string{l.key}, taskID, candidate, now.UnixMilli()).Slice()
	if err != nil {
		return Run{}, fmt.Errorf("decay run: starting %s: %w", taskID, err)
	}
	if len(res) != 4 {
		return Run{}, fmt.Errorf("decay run: starting %s: reply %v", taskID, res)
	}
	stamp, _ := res[0].(int64)
	next, _ := res[1].(int64)
	state, _ := res[2].(string)
	resumed, _ := res[3].(int64)
	if stamp <= 0 {
		return Run{}, fmt.Errorf("decay run: %s has a corrupt record in %s (stamp %v)", taskID, l.key, res[0])
	}
	return Run{TaskID: taskID, Stamp: stamp, Next: next, State: state, Resumed: resumed == 1}, nil
}

// Advance records that every source node below next is done.
func (l *RunLog) Advance(ctx context.Context, r Run, next int64) error {
	return l.set(ctx, r, "next", strconv.FormatInt(next, 10))
}

// Finish records the run as done, with what it did.
func (l *RunLog) Finish(ctx context.Context, r Run, st DecayStats, now time.Time) error {
	return l.set(ctx, r, "state", StateDone, "finished_ms", strconv.FormatInt(now.UnixMilli(), 10),
		"decayed", strconv.FormatInt(st.Decayed, 10), "removed", strconv.FormatInt(st.Removed, 10),
		"batches", strconv.FormatInt(st.Batches, 10))
}

func (l *RunLog) set(ctx context.Context, r Run, fieldValues ...string) error {
	args := make([]any, 0, 1+len(fieldValues))
	args = append(args, r.TaskID)
	for _, v := range fieldValues {
		args = append(args, v)
	}
	n, err := advanceScript.Run(ctx, l.rdb, []string{l.key}, args...).Int()
	if err != nil {
		return fmt.Errorf("decay run %s: %w", r.TaskID, err)
	}
	if n != 1 {
		return fmt.Errorf("%w: %s is no longer the run in %s", ErrRunReplaced, r.TaskID, l.key)
	}
	return nil
}
