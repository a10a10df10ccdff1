// Package periodic enqueues each periodic task once per interval, from any
// number of processes, with its schedule kept in Redis.
//
// asynq's own Scheduler keeps entries in process memory, enqueues once per
// scheduler instance and restarts "@every" timers on each start, so it cannot
// give these guarantees. What is asynq's and what is ours:
//
//   - ours: the schedule state (next due time per task) lives in a Redis
//     hash, so cadences survive restarts, a fresh deployment waits for the
//     task's initial delay, and missed occurrences coalesce into one run;
//   - asynq's: each occurrence is enqueued with a deterministic task ID
//     (task@due-unix-ms) and a retention period, so when several schedulers
//     see the same occurrence, asynq accepts exactly one enqueue and answers
//     the others with ErrTaskIDConflict;
//   - ours: before enqueuing, the scheduler checks that the previous
//     occurrence is no longer queued or running; if it is, the new
//     occurrence is skipped (the original ran each task sequentially).
package periodic

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/queue/asynqcompat"
)

// StateKeyPrefix prefixes the per-task schedule state hash.
const StateKeyPrefix = "sgjobs:schedule:"

// Outcomes of handling one due occurrence.
const (
	OutcomeEnqueued  = "enqueued"
	OutcomeDuplicate = "duplicate"
	OutcomeOverlap   = "overlap"
	OutcomeCoalesced = "coalesced"
	OutcomeError     = "error"
)

// Entry is one periodic task.
type Entry struct {
	Name         string
	Interval     time.Duration
	InitialDelay time.Duration
	Queue        string
	Payload      []byte
	// Options are extra asynq options (MaxRetry, Timeout...). The scheduler
	// adds Queue, TaskID, Retention and Unique itself.
	Options []asynq.Option
	// Unique, if positive, enqueues with asynq's Unique option: a singleton
	// occurrence is refused while another instance is queued or running.
	Unique time.Duration
}

// Enqueuer is the part of asynq.Client the scheduler uses.
type Enqueuer interface {
	EnqueueContext(ctx context.Context, task *asynq.Task, opts ...asynq.Option) (*asynq.TaskInfo, error)
}

// TaskStatus is what the scheduler needs to know about a previous run.
type TaskStatus struct {
	State asynq.TaskState
	// CompletedAt is when a completed run finished.
	CompletedAt time.Time
}

// TaskStates reports a task's status, or found=false if it is gone.
type TaskStates interface {
	TaskState(ctx context.Context, queue, id string) (st TaskStatus, found bool, err error)
}

// Observer receives one call per due occurrence handled. missed counts the
// occurrences that came due while no scheduler ran and were coalesced into
// this one.
type Observer interface {
	Fire(task, outcome string, lateness time.Duration, missed int)
}

// Config wires a Scheduler.
type Config struct {
	Redis    redis.UniversalClient
	Enqueuer Enqueuer
	States   TaskStates
	Observer Observer
	Logger   *slog.Logger
	// Poll is how often the loop wakes while a hold is active, and how
	// soon a scheduler whose handling of an occurrence failed tries again
	// (default 1s).
	Poll time.Duration
	// MaxSleep is the longest the loop sleeps with nothing due (default
	// 5×Poll): it bounds how soon a hold that began meanwhile is seen. The
	// loop otherwise sleeps until the earliest local due time, so an idle
	// pod costs Redis nothing between occurrences.
	MaxSleep time.Duration
	// Claim is how long the first scheduler to see an occurrence due keeps
	// it from its peers (default 3s, at most half the entry's interval).
	// It spares a fleet the herd; a peer handles the occurrence once the
	// claim ends if the claimer has not.
	Claim time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	// SkipAsynqWorkarounds leaves asynq's Unique locks alone (no release
	// of a leaked one): asynqcompat.Gate refused the linked asynq version.
	SkipAsynqWorkarounds bool
	// Holds, if set, holds back the occurrences of deferred tasks (an
	// occurrence that comes due meanwhile waits, due) and resumes a task at
	// once when its hold lifts (holds.go).
	Holds Holds
}

// Scheduler runs the loop. Create it with New.
type Scheduler struct {
	cfg     Config
	entries []Entry
	next    map[string]time.Time
	// id names this scheduler in its claims.
	id string
	// holdsActive: the last holds check found deferrals (or failed), so
	// the next tick checks again; holdsAt is when it was made.
	holdsActive bool
	holdsAt     time.Time
}

// New returns a scheduler for entries.
func New(cfg Config, entries []Entry) (*Scheduler, error) {
	if cfg.Poll == 0 {
		cfg.Poll = time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxSleep == 0 {
		cfg.MaxSleep = 5 * cfg.Poll
	}
	if cfg.Claim == 0 {
		cfg.Claim = 3 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	seen := map[string]bool{}
	for _, e := range entries {
		if e.Interval < time.Second {
			return nil, fmt.Errorf("periodic: %s: interval %v is below one second", e.Name, e.Interval)
		}
		if seen[e.Name] {
			return nil, fmt.Errorf("periodic: %s registered twice", e.Name)
		}
		seen[e.Name] = true
	}
	id := strconv.FormatUint(rand.Uint64(), 36)
	return &Scheduler{cfg: cfg, entries: entries, next: map[string]time.Time{}, id: id}, nil
}

// Run handles due occurrences until ctx is done, sleeping until the
// earliest local due time (at most MaxSleep; Poll while a hold is active).
// Redis errors are logged and retried after Poll; they never stop the loop.
func (s *Scheduler) Run(ctx context.Context) error {
	// Spread the first pass so replicas started together do not all hit
	// Redis in the same millisecond.
	jitter := time.Duration(rand.Int64N(int64(s.cfg.Poll)))
	t := time.NewTimer(jitter)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		s.Tick(ctx)
		t.Reset(s.sleep(s.cfg.Now()))
	}
}

// sleep is how long Run waits before the next tick.
func (s *Scheduler) sleep(now time.Time) time.Duration {
	d := s.cfg.MaxSleep
	if s.holdsActive {
		d = s.cfg.Poll
	}
	for _, e := range s.entries {
		n, ok := s.next[e.Name]
		if !ok {
			return s.cfg.Poll
		}
		d = min(d, n.Sub(now))
	}
	// A due time just passed (a slow tick) still waits a moment, so the
	// loop never spins.
	return max(d, time.Millisecond)
}

// Tick handles every entry whose local due time has come. Holds are
// checked only when they matter: when something is due, while a hold is
// active, and at least every MaxSleep (a hold that began meanwhile).
func (s *Scheduler) Tick(ctx context.Context) {
	now := s.cfg.Now()
	var held map[string]bool
	if s.anyDue(now) || s.holdsActive || now.Sub(s.holdsAt) >= s.cfg.MaxSleep || now.Before(s.holdsAt) {
		held = s.holds(ctx, now)
	}
	for _, e := range s.entries {
		if ctx.Err() != nil {
			return
		}
		if held[e.Name] {
			continue
		}
		// Due as of the tick's start, which the holds check saw.
		if n, ok := s.next[e.Name]; ok && now.Before(n) {
			continue
		}
		next, err := s.handle(ctx, e, s.cfg.Now())
		if err != nil {
			s.cfg.Logger.Warn("scheduler: handling periodic task failed; will retry", "task", e.Name, "error", err)
			delete(s.next, e.Name)
			continue
		}
		s.next[e.Name] = next
	}
}

func (s *Scheduler) anyDue(now time.Time) bool {
	for _, e := range s.entries {
		if n, ok := s.next[e.Name]; !ok || !now.Before(n) {
			return true
		}
	}
	return false
}

//go:embed due.lua
var dueSrc string
var dueScript = redis.NewScript(dueSrc)

//go:embed advance.lua
var advanceSrc string
var advanceScript = redis.NewScript(advanceSrc)

// TaskID is the deterministic asynq task ID of one occurrence.
func TaskID(name string, due time.Time) string {
	return name + "@" + strconv.FormatInt(due.UnixMilli(), 10)
}

// retention keeps a finished occurrence's ID blocked long enough that a
// peer with a stale view cannot enqueue the same occurrence again.
func retention(interval time.Duration) time.Duration {
	return min(max(interval, time.Minute), time.Hour)
}

func (s *Scheduler) handle(ctx context.Context, e Entry, now time.Time) (time.Time, error) {
	key := StateKeyPrefix + e.Name
	claim := min(s.cfg.Claim, e.Interval/2)
	res, err := dueScript.Run(ctx, s.cfg.Redis, []string{key},
		now.UnixMilli(), e.InitialDelay.Milliseconds(), e.Interval.Milliseconds(), claim.Milliseconds(), s.id).StringSlice()
	if err != nil {
		return time.Time{}, fmt.Errorf("reading schedule: %w", err)
	}
	nextMS, err := strconv.ParseInt(res[1], 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("reading schedule: next_ms %q: %w", res[1], err)
	}
	due, occ, prev := res[0] == "1", time.UnixMilli(nextMS), res[2]
	if !due {
		return occ, nil
	}
	outcome, id, err := s.enqueue(ctx, e, prev, occ)
	if err != nil {
		s.observe(e.Name, OutcomeError, now.Sub(occ), 0)
		return time.Time{}, err
	}
	nextMS, err = advanceScript.Run(ctx, s.cfg.Redis, []string{key},
		now.UnixMilli(), occ.UnixMilli(), e.Interval.Milliseconds(), id, outcome).Int64()
	if err != nil {
		return time.Time{}, fmt.Errorf("advancing schedule: %w", err)
	}
	advanced := 0
	if nextMS > 0 {
		advanced = 1
	}
	// Only the scheduler that moved the schedule on counts the occurrences
	// it skipped, so a fleet's metrics add up to the real number.
	missed := 0
	if late := now.Sub(occ); advanced == 1 && late >= e.Interval {
		missed = int(late / e.Interval)
	}
	if advanced == 1 {
		// One line per occurrence, from the scheduler that moved the
		// schedule on: with the runs' own lines (task_id), the history of
		// every occurrence. Occurrences missed while no scheduler ran are
		// worth an operator's attention.
		level := slog.LevelDebug
		if missed > 0 {
			level = slog.LevelInfo
		}
		s.cfg.Logger.Log(ctx, level, "scheduler: occurrence handled", "task", e.Name, "occurrence", TaskID(e.Name, occ),
			"outcome", outcome, "task_id", id, "missed", missed, "late_ms", now.Sub(occ).Milliseconds())
	}
	s.observe(e.Name, outcome, now.Sub(occ), missed)
	if advanced == 1 {
		return time.UnixMilli(nextMS), nil
	}
	// Re-read on the next poll: a peer advanced, maybe differently.
	return now.Add(s.cfg.Poll), nil
}

// enqueue handles the occurrence due at occ; prev is the task ID of the
// task's last occurrence ("" if none).
func (s *Scheduler) enqueue(ctx context.Context, e Entry, prev string, occ time.Time) (outcome, id string, err error) {
	id = TaskID(e.Name, occ)
	if s.cfg.States != nil {
		if prev != "" && prev != id {
			st, found, err := s.cfg.States.TaskState(ctx, e.Queue, prev)
			if err != nil {
				return "", "", fmt.Errorf("checking last occurrence %s: %w", prev, err)
			}
			if found && running(st.State) {
				s.cfg.Logger.Info("scheduler: previous run still queued or running; skipping this occurrence",
					"task", e.Name, "previous", prev, "state", st.State.String())
				return OutcomeOverlap, prev, nil
			}
			// A previous run that finished after this occurrence came due
			// has already done its work (typically a run left queued over a
			// downtime): running again now would make two catch-ups.
			if found && st.State == asynq.TaskStateCompleted && !st.CompletedAt.Before(occ) {
				s.cfg.Logger.Info("scheduler: previous run finished after this occurrence was due; coalescing",
					"task", e.Name, "previous", prev, "completed_at", st.CompletedAt)
				return OutcomeCoalesced, prev, nil
			}
		}
	}
	opts := append([]asynq.Option{
		asynq.Queue(e.Queue), asynq.TaskID(id), asynq.Retention(retention(e.Interval)),
	}, e.Options...)
	if e.Unique > 0 {
		opts = append(opts, asynq.Unique(e.Unique))
	}
	_, err = s.cfg.Enqueuer.EnqueueContext(ctx, asynq.NewTask(e.Name, e.Payload), opts...)
	switch {
	case err == nil:
		s.cfg.Logger.Debug("scheduler: enqueued", "task", e.Name, "task_id", id)
		return OutcomeEnqueued, id, nil
	case errors.Is(err, asynq.ErrDuplicateTask):
		// Another instance of this singleton (a peer's copy of this very
		// occurrence, or a manual run) is queued or running.
		return OutcomeDuplicate, id, nil
	case errors.Is(err, asynq.ErrTaskIDConflict):
		if e.Unique > 0 && !s.cfg.SkipAsynqWorkarounds {
			s.releaseLeakedLock(ctx, e, id)
		}
		return OutcomeDuplicate, id, nil
	default:
		return "", "", fmt.Errorf("enqueuing %s: %w", id, err)
	}
}

// releaseLeakedLock works around asynq v0.26 leaking the Unique lock when an
// enqueue's TaskID conflicts: the script takes the lock, finds the ID taken
// and returns without releasing it. Here the lock's value is this
// occurrence's own ID, so if that task is no longer queued or running the
// lock is a leak and is released.
func (s *Scheduler) releaseLeakedLock(ctx context.Context, e Entry, id string) {
	if s.cfg.States != nil {
		st, found, err := s.cfg.States.TaskState(ctx, e.Queue, id)
		if err != nil || (found && running(st.State)) {
			return
		}
	}
	if released, err := asynqcompat.ReleaseUnique(ctx, s.cfg.Redis, e.Queue, e.Name, e.Payload, id); err == nil && released {
		s.cfg.Logger.Debug("scheduler: released a unique lock leaked by a conflicting enqueue", "task", e.Name, "task_id", id)
	}
}

func running(s asynq.TaskState) bool {
	switch s {
	case asynq.TaskStatePending, asynq.TaskStateActive, asynq.TaskStateScheduled, asynq.TaskStateRetry, asynq.TaskStateAggregating:
		return true
	}
	return false
}

func (s *Scheduler) observe(task, outcome string, late time.Duration, missed int) {
	if s.cfg.Observer != nil {
		s.cfg.Observer.Fire(task, outcome, late, missed)
	}
}

// InspectorStates adapts asynq.Inspector to TaskStates.
type InspectorStates struct{ Inspector *asynq.Inspector }

// TaskState implements TaskStates.
func (i InspectorStates) TaskState(_ context.Context, queue, id string) (TaskStatus, bool, error) {
	info, err := i.Inspector.GetTaskInfo(queue, id)
	if errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound) {
		return TaskStatus{}, false, nil
	}
	if err != nil {
		return TaskStatus{}, false, err
	}
	return TaskStatus{State: info.State, CompletedAt: info.CompletedAt}, true, nil
}

// State is a task's schedule as kept in Redis.
type State struct {
	Task        string
	Next        time.Time
	Interval    time.Duration
	LastDue     time.Time
	LastTaskID  string
	LastOutcome string
	LastRun     time.Time
}

// ReadState returns the schedule of task; found is false if no scheduler
// has seen the task yet.
func ReadState(ctx context.Context, rdb redis.UniversalClient, task string) (st State, found bool, err error) {
	h, err := rdb.HGetAll(ctx, StateKeyPrefix+task).Result()
	if err != nil {
		return State{}, false, fmt.Errorf("reading schedule of %s: %w", task, err)
	}
	if len(h) == 0 {
		return State{Task: task}, false, nil
	}
	msField := func(k string) time.Time {
		n, err := strconv.ParseInt(h[k], 10, 64)
		if err != nil || n == 0 {
			return time.Time{}
		}
		return time.UnixMilli(n).UTC()
	}
	iv, _ := strconv.ParseInt(h["interval_ms"], 10, 64)
	return State{
		Task: task, Next: msField("next_ms"), Interval: time.Duration(iv) * time.Millisecond,
		LastDue: msField("last_due_ms"), LastTaskID: h["last_task_id"], LastOutcome: h["last_outcome"],
		LastRun: msField("last_enqueued_ms"),
	}, true, nil
}
