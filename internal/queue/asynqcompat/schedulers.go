package asynqcompat

import (
	"context"
	"fmt"
	"hash/fnv"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/encoding/protowire"
)

// Scheduler entries for asynqmon's Schedulers page.
//
// The project schedules periodic tasks with its own Redis-backed scheduler,
// not asynq's Scheduler, so asynq's Inspector.SchedulerEntries (what the
// Schedulers page shows) would list nothing. These functions write each
// periodic task in the layout asynq v0.26's Scheduler writes (rdb.go
// WriteSchedulerEntries and RecordSchedulerEnqueueEvent):
//
//	asynq:schedulers                    ZSET: entry list keys scored by expiry (unix s);
//	                                    readers prune members past their expiry
//	asynq:schedulers:{<scheduler id>}   LIST of protobuf SchedulerEntry, with a TTL
//	asynq:scheduler_history:<entry id>  ZSET of protobuf SchedulerEnqueueEvent scored
//	                                    by enqueue time (unix s), at most 1,000
//
// asynq's protobuf package is internal, so the two messages are encoded here
// with protowire; the tests decode them through asynq's public Inspector.
//
// Where this differs from asynq's Scheduler, and why:
//   - one entry list per task (scheduler id "stargazer-periodic:<task>"),
//     not one per process: every pod writes the same bytes for a task, so
//     the page shows it once however many pods run, and pods with different
//     catalogs (mid-rollout) show the union instead of taking turns;
//   - the entry ID is the task name, stable across restarts, so a task's
//     enqueue history accumulates and its URL is readable;
//   - nothing is cleared on shutdown (other pods still schedule): entries
//     lapse EntryTTL after the last publish, and history keys expire
//     historyTTL after a task's last enqueue.

const (
	// PublishEvery is how often each scheduling process republishes the
	// entries (asynq's Scheduler: every 10 s).
	PublishEvery = 5 * time.Second
	// EntryTTL is how long entries outlive the last publish, so they vanish
	// when no scheduler runs at all; several publishes may fail in a row
	// before a live schedule disappears.
	EntryTTL = 4 * PublishEvery

	schedulersKey     = "asynq:schedulers"
	schedulerIDPrefix = "stargazer-periodic:"
	historyPrefix     = "asynq:scheduler_history:"
	historyMax        = 1000 // asynq's maxEvents
	historyTTL        = 30 * 24 * time.Hour
	recordTimeout     = 2 * time.Second
)

// PublishTurnKey is the publishing turn of the pods whose catalogs
// schedule exactly names: pods mid-rollout with another catalog take their
// own turns, so the dashboard still shows the union.
func PublishTurnKey(names []string) string {
	h := fnv.New64a()
	for _, n := range slices.Sorted(slices.Values(names)) {
		h.Write([]byte(n))
		h.Write([]byte{0})
	}
	return "sgjobs:asynqmon:publish:" + strconv.FormatUint(h.Sum64(), 36)
}

// SchedulerEntry is one periodic task as asynq's Inspector reports it.
type SchedulerEntry struct {
	// Task is the task type, and also the entry ID.
	Task string
	// Interval makes the spec "@every <Interval>".
	Interval time.Duration
	Payload  []byte
	// Opts are shown as asynq shows a Scheduler's options (Queue("x"), ...).
	Opts []asynq.Option
	// Next is the next due time; Prev the last occurrence handled (zero if
	// none yet).
	Next, Prev time.Time
}

// entriesKey is the entry list of one task.
func entriesKey(task string) string { return "asynq:schedulers:{" + schedulerIDPrefix + task + "}" }

// Spec formats an interval as the entry's spec, "@every 1m" (not "1m0s"),
// in a form robfig/cron (asynq's spec parser) accepts.
func Spec(d time.Duration) string {
	s := d.String()
	if t, ok := strings.CutSuffix(s, "m0s"); ok {
		s = t + "m"
	}
	if t, ok := strings.CutSuffix(s, "h0m"); ok {
		s = t + "h"
	}
	return "@every " + s
}

// writeEntries replaces each task's entry list and refreshes its expiry in
// asynq:schedulers, atomically and in one round trip.
//
// KEYS[1] asynq:schedulers  KEYS[2..] entry list keys
// ARGV[1] TTL (s)  ARGV[2] expiry (unix s)  ARGV[i+1] encoded entry of KEYS[i]
var writeEntries = redis.NewScript(`
local members = {}
for i = 2, #KEYS do
  redis.call('DEL', KEYS[i])
  redis.call('RPUSH', KEYS[i], ARGV[i + 1])
  redis.call('EXPIRE', KEYS[i], ARGV[1])
  table.insert(members, ARGV[2])
  table.insert(members, KEYS[i])
end
redis.call('ZADD', KEYS[1], unpack(members))
return #KEYS - 1
`)

// PublishSchedulerEntries writes entries so that Inspector.SchedulerEntries
// lists each of them until now+ttl.
func PublishSchedulerEntries(ctx context.Context, rdb redis.UniversalClient, entries []SchedulerEntry, ttl time.Duration, now time.Time) error {
	if len(entries) == 0 {
		return nil
	}
	keys := make([]string, 0, len(entries)+1)
	args := make([]any, 0, len(entries)+2)
	keys = append(keys, schedulersKey)
	args = append(args, int64(ttl/time.Second), now.Add(ttl).Unix())
	for _, e := range entries {
		keys = append(keys, entriesKey(e.Task))
		args = append(args, encodeEntry(e))
	}
	if err := writeEntries.Run(ctx, rdb, keys, args...).Err(); err != nil {
		return fmt.Errorf("publishing scheduler entries: %w", err)
	}
	return nil
}

// recordEvent adds one enqueue event to an entry's history, keeping the
// newest historyMax, as asynq's recordSchedulerEnqueueEventCmd does; the
// TTL, refreshed by every event, clears the history of a task that is no
// longer scheduled.
//
// KEYS[1] history key  ARGV[1] enqueue time (unix s)  ARGV[2] event
// ARGV[3] max events  ARGV[4] TTL (s)
var recordEvent = redis.NewScript(`
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
`)

// RecordEnqueueEvent adds the enqueue of taskID at at to task's history,
// which Inspector.ListSchedulerEnqueueEvents(task) returns newest first.
func RecordEnqueueEvent(ctx context.Context, rdb redis.UniversalClient, task, taskID string, at time.Time) error {
	err := recordEvent.Run(ctx, rdb, []string{historyPrefix + task},
		at.Unix(), encodeEvent(taskID, at), historyMax, int64(historyTTL/time.Second)).Err()
	if err != nil {
		return fmt.Errorf("recording enqueue of %s: %w", taskID, err)
	}
	return nil
}

// Enqueuer is the part of asynq.Client the scheduler enqueues with.
type Enqueuer interface {
	EnqueueContext(ctx context.Context, task *asynq.Task, opts ...asynq.Option) (*asynq.TaskInfo, error)
}

// RecordEnqueues wraps the scheduler's enqueuer so that every successful
// enqueue is recorded as an enqueue event of its task's entry, as asynq's
// Scheduler records its own. Only the process whose enqueue succeeds
// records it (a peer's duplicate gets an error), so each occurrence is
// recorded once, with the time it was enqueued. A failure to record is
// logged and does not fail the enqueue.
func RecordEnqueues(next Enqueuer, rdb redis.UniversalClient, log *slog.Logger) Enqueuer {
	return recorder{next: next, rdb: rdb, log: log.With("component", "scheduler")}
}

type recorder struct {
	next Enqueuer
	rdb  redis.UniversalClient
	log  *slog.Logger
}

func (r recorder) EnqueueContext(ctx context.Context, task *asynq.Task, opts ...asynq.Option) (*asynq.TaskInfo, error) {
	info, err := r.next.EnqueueContext(ctx, task, opts...)
	if err != nil {
		return info, err
	}
	// The task is enqueued: record it even if the scheduler is stopping.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
	defer cancel()
	if rerr := RecordEnqueueEvent(rctx, r.rdb, task.Type(), info.ID, time.Now()); rerr != nil {
		r.log.Warn("scheduler history: enqueue not recorded for asynqmon", "task", task.Type(), "task_id", info.ID, "error", rerr)
	}
	return info, nil
}

// RunSchedulePublisher publishes the entries that source returns every
// interval until ctx ends. The first publish waits a little, so that the
// scheduler has created the schedule state of each task. A task that comes
// due before the next publish brings it forward to just after its due time
// (nextPublish), so the page shows the new next and previous times within
// about a second of each occurrence instead of "now" for up to an interval.
// Errors are logged and retried at the next interval; the entries already
// published stay visible for EntryTTL.
//
// turn, if not empty, is a key the fleet's publishers of the same entries
// share (PublishTurnKey): each interval the first pod to take it publishes
// and the others skip, so the dashboard's cost does not grow with the pod
// count (each publish reads every entry's schedule).
func RunSchedulePublisher(ctx context.Context, log *slog.Logger, rdb redis.UniversalClient, interval time.Duration, turn string,
	source func(context.Context) ([]SchedulerEntry, error)) {
	log = log.With("component", "asynqmon-schedules")
	t := time.NewTimer(min(interval, firstPublish))
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if turn != "" {
			// A little shorter than the interval, so some pod publishes
			// each interval; a Redis error publishes (and fails) below.
			if !takeTurn(ctx, rdb, turn, interval*4/5) {
				t.Reset(interval)
				continue
			}
		}
		entries, err := source(ctx)
		now := time.Now()
		if err == nil {
			err = PublishSchedulerEntries(ctx, rdb, entries, EntryTTL, now)
		}
		t.Reset(nextPublish(entries, now, interval))
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			log.Warn("asynqmon scheduler entries not published; retrying", "error", err, "retry_every", interval.String())
			failing = true
		case err == nil && failing:
			log.Info("asynqmon scheduler entries published again", "entries", len(entries))
			failing = false
		}
	}
}

const (
	// firstPublish leaves the scheduler, which starts with up to a second
	// of jitter, time to create each task's schedule state.
	firstPublish = 2 * time.Second
	// settle is how long after a due time the scheduler has normally moved
	// the schedule on (it polls every second).
	settle = 1500 * time.Millisecond
)

// nextPublish is how long to wait before the next publish: interval, or
// until settle after the earliest due time that comes before it. A due
// time already more than settle past (the scheduler is late or stopped)
// does not bring publishes forward, so this never spins.
func nextPublish(entries []SchedulerEntry, now time.Time, interval time.Duration) time.Duration {
	wait := interval
	for _, e := range entries {
		if d := e.Next.Add(settle).Sub(now); d > 0 && d < wait {
			wait = d
		}
	}
	return wait
}

// encodeEntry is proto.Marshal of asynq's pb.SchedulerEntry:
//
//	id = 1, spec = 2, task_type = 3, task_payload = 4,
//	repeated enqueue_options = 5, next_enqueue_time = 6, prev_enqueue_time = 7
//
// Like proto3, empty strings and bytes are left out; both timestamps are
// always present, the zero time as asynq encodes it (so a never-enqueued
// entry reads back with Prev.IsZero()).
func encodeEntry(e SchedulerEntry) []byte {
	var b []byte
	b = appendString(b, 1, e.Task)
	b = appendString(b, 2, Spec(e.Interval))
	b = appendString(b, 3, e.Task)
	b = appendString(b, 4, string(e.Payload))
	for _, o := range e.Opts {
		b = protowire.AppendTag(b, 5, protowire.BytesType)
		b = protowire.AppendString(b, o.String())
	}
	b = appendTimestamp(b, 6, e.Next)
	b = appendTimestamp(b, 7, e.Prev)
	return b
}

// encodeEvent is proto.Marshal of asynq's pb.SchedulerEnqueueEvent:
// task_id = 1, enqueue_time = 2.
func encodeEvent(taskID string, at time.Time) []byte {
	return appendTimestamp(appendString(nil, 1, taskID), 2, at)
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// appendTimestamp appends a google.protobuf.Timestamp message field
// (seconds = 1, nanos = 2), as timestamppb.New(t) marshals.
func appendTimestamp(b []byte, num protowire.Number, t time.Time) []byte {
	var ts []byte
	if s := t.Unix(); s != 0 {
		ts = protowire.AppendTag(ts, 1, protowire.VarintType)
		ts = protowire.AppendVarint(ts, uint64(s))
	}
	if n := t.Nanosecond(); n != 0 {
		ts = protowire.AppendTag(ts, 2, protowire.VarintType)
		ts = protowire.AppendVarint(ts, uint64(int64(n)))
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, ts)
}
