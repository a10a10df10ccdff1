package legacy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"math"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/queue/events"
)

// Bounds on what the detector reads: the debug channel is written by the
// bot, so every message is untrusted.
const (
	// maxEvent: a larger message is not one of the scheduler's small
	// events and is not decoded.
	maxEvent = 64 << 10
	// maxSkew: an event time further than this from the receiver's clock
	// is not believed (the receive time is used).
	maxSkew = 24 * time.Hour
	// handleTimeout bounds the Redis work for one event.
	handleTimeout = 2 * time.Second
)

// Schedule is how the Go side runs a task the detector watches.
type Schedule struct {
	// Interval is the task's effective interval here.
	Interval time.Duration
	// Queued: an occurrence is a queued run that can stand down (false
	// for the node-local loops, which serve one node each: an event does
	// not say which node the Python run served).
	Queued bool
}

// Detector watches the debug channel for the original's scheduler_task_run
// events and recognises the ones that are not the Go workers' own. A run of
// a task the Go side schedules is logged (naming where the original still
// registers it), counted once across the workers, and, during the cut-over
// window, makes that task's next Go occurrence stand down. Runs of tasks the
// Go side does not schedule (yet) are recorded only, for the hand-over
// point.
type Detector struct {
	// Redis is the bot's Redis, whose Channel it subscribes to.
	Redis redis.UniversalClient
	// State is the Redis of its records (sgjobs:legacy:*, the cut-over
	// window): the job system's (QUEUE_REDIS_URL). Nil: Redis.
	State   redis.UniversalClient
	Channel string
	Logger  *slog.Logger
	Metrics *Metrics
	// Schedules are the tasks this worker schedules, by name.
	Schedules map[string]Schedule
	// Window is how long after the cut-over started a Python run stands
	// the Go task down (0: never).
	Window time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// state is the Redis of the detector's records.
func (d *Detector) state() redis.UniversalClient {
	if d.State != nil {
		return d.State
	}
	return d.Redis
}

// event is the part of a debug event the detector reads.
type event struct {
	Topic      string          `json:"topic"`
	Source     string          `json:"source"`
	DurationMS float64         `json:"duration_ms"`
	TS         float64         `json:"ts"`
	Payload    json.RawMessage `json:"payload"`
}

type runPayload struct {
	Task   string `json:"task"`
	TaskID string `json:"task_id"`
	Origin string `json:"origin"`
}

var topic = []byte("scheduler_task_run")

// Run subscribes to the channel and handles events until ctx ends. A lost
// or refused subscription (a Redis or proxy without pub/sub) is retried
// with a backoff from 1 s to 30 s, never in a tight loop.
func (d *Detector) Run(ctx context.Context) {
	backoff := time.Second
	for ctx.Err() == nil {
		subscribed, err := d.receive(ctx)
		if ctx.Err() != nil {
			return
		}
		if subscribed {
			backoff = time.Second
		}
		d.Logger.Warn("debug channel subscription lost; resubscribing: "+err.Error(), "channel", d.Channel, "retry_in", backoff.String())
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 30*time.Second)
	}
}

// idleCheck is how long a subscription may stay silent before a PING
// checks that its connection is alive.
const idleCheck = time.Minute

// receive holds one subscription until it fails or ctx ends, and reports
// whether Redis confirmed it.
func (d *Detector) receive(ctx context.Context) (bool, error) {
	ps := d.Redis.Subscribe(ctx, d.Channel)
	// Closing the subscription is what ends a blocked read.
	stop := context.AfterFunc(ctx, func() { ps.Close() })
	defer func() {
		if stop() {
			ps.Close()
		}
	}()
	subscribed := false
	for {
		msg, err := ps.ReceiveTimeout(ctx, idleCheck)
		var ne interface{ Timeout() bool }
		switch {
		case err != nil && errors.As(err, &ne) && ne.Timeout():
			pctx, cancel := context.WithTimeout(ctx, handleTimeout)
			err = ps.Ping(pctx)
			cancel()
			if err != nil {
				return subscribed, err
			}
			continue
		case err != nil:
			return subscribed, err
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			subscribed = true
		case *redis.Message:
			hctx, cancel := context.WithTimeout(ctx, handleTimeout)
			d.Handle(hctx, []byte(m.Payload))
			cancel()
		}
	}
}

// Handle looks at one message of the debug channel and reports whether it
// was a Python run this call counted.
func (d *Detector) Handle(ctx context.Context, raw []byte) bool {
	if len(raw) > maxEvent || !bytes.Contains(raw, topic) {
		return false
	}
	var e event
	if json.Unmarshal(raw, &e) != nil || e.Topic != "scheduler_task_run" || e.Source != "scheduler" {
		return false
	}
	var p runPayload
	if json.Unmarshal(e.Payload, &p) != nil {
		return false
	}
	// The Go workers mark their events; older Go workers (before the
	// mark) always sent the asynq task ID, which the original never did.
	if p.Origin == events.Origin || p.TaskID != "" {
		return false
	}
	task, regs, ok := TaskFor(p.Task)
	if !ok {
		return false // a task the original's module does not declare
	}
	now := time.Now()
	if d.Now != nil {
		now = d.Now()
	}
	end := now
	if e.TS > 0 && !math.IsInf(e.TS, 0) {
		if t := time.UnixMicro(int64(e.TS * 1e6)); t.Sub(now).Abs() < maxSkew {
			end = t
		}
	}
	dur := time.Duration(0)
	if e.DurationMS > 0 && e.DurationMS < float64(maxSkew/time.Millisecond) {
		dur = time.Duration(e.DurationMS * float64(time.Millisecond))
	}
	sum := sha256.Sum256(raw)
	r := Run{Task: task, As: p.Task, Start: end.Add(-dur), End: end, Digest: hex.EncodeToString(sum[:16])}
	sched, scheduled := d.Schedules[task]
	var until time.Time
	if scheduled && sched.Queued && d.Window > 0 {
		start, err := WindowStart(ctx, d.state())
		if err != nil {
			d.Logger.Warn("cut-over window unknown; the Python run is reported, the Go task does not stand down", "task", task, "error", err)
		} else if start.IsZero() || now.Before(start.Add(d.Window)) {
			until = end.Add(sched.Interval + sched.Interval/2)
		}
	}
	counted, err := record(ctx, d.state(), r, now, scheduled, until)
	if err != nil {
		d.Logger.Warn("Python run not recorded: "+err.Error(), "task", task)
		return false
	}
	if !counted {
		return false
	}
	d.Metrics.inc(task)
	var from []string
	for _, reg := range regs {
		from = append(from, reg.Service)
	}
	attrs := []any{"task", task, "registered_as", p.Task, "registered_by", RegisteredBy(task), "this_run_from", strings.Join(from, ", "),
		"python_run_ended", end.UTC().Format(time.RFC3339)}
	if until.IsZero() {
		attrs = append(attrs, "stand_down", "no: outside the cut-over window (or it is off), both ran")
	} else {
		attrs = append(attrs, "stand_down_until", until.UTC().Format(time.RFC3339))
	}
	d.Logger.Warn("the Python scheduler ran "+task+" too: remove it from "+RegisteredBy(task), attrs...)
	return true
}
