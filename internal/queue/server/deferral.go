package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/queue/events"
	"github.com/stargazer/stargazer-jobs/internal/spend"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// StatusDeferred is a run that stopped, or did not start, because its
// task's LLM work is deferred: its budget is spent or the kill switch is
// off. It is neither a failure nor a retry.
const StatusDeferred = "deferred"

// StandDownBudget is the stand-down reason of a run deferred because its
// task's budget is spent (StandDownKillSwitch when the switch refused its
// calls).
const StandDownBudget = "budget"

// ErrDeferred marks a run's error as a deferral: asynq does not count it
// as a failure (Config.IsFailure), the observer reports StatusDeferred.
var ErrDeferred = errors.New("deferred")

// killSwitchRecheck is when a child parked by the kill switch runs again
// by itself if no scheduler lifted its deferral before (one does within a
// tick of the switch coming back on).
const killSwitchRecheck = time.Hour

// Spend is the LLM spend ledger as the server uses it (*spend.Ledger).
type Spend interface {
	// Held reports whether task's LLM work is deferred now.
	Held(ctx context.Context, task string) (spend.Deferral, bool, error)
	// Defer records a deferral, and a run parked until it lifts.
	Defer(ctx context.Context, d spend.Deferral, parked spend.Parked) (bool, error)
	// Now is the clock of the budget windows.
	Now() time.Time
}

// deferredError is a run deferred: it ended (a periodic run; revoked, the
// scheduler holds its next occurrences) or waits in the retry set, not
// counted as a retry, until the deferral lifts (a child or a unit,
// parked).
type deferredError struct {
	d     spend.Deferral
	delay time.Duration
	cause error
}

func (e *deferredError) Error() string {
	msg := "deferred: " + e.d.Reason
	if u := e.d.Until(); !u.IsZero() {
		msg += " until " + u.Format(time.RFC3339)
	}
	if e.cause != nil {
		msg += ": " + e.cause.Error()
	}
	return msg
}

func (e *deferredError) Unwrap() []error {
	if e.cause == nil {
		return []error{ErrDeferred}
	}
	return []error{ErrDeferred, e.cause}
}

// DeferFor is how long a parked run waits before it runs by itself (the
// retry delay): until its window ends.
func (e *deferredError) DeferFor() time.Duration { return e.delay }

// deferrals charges each run's LLM calls to its task (the parent for a
// child or an extraction unit, jobs.Owner) and defers the runs of a task
// whose LLM work is held: at start, when a deferral holds, and at the end,
// when a call was refused (the run stopped at its first refusal). A
// deferred run is never a failure: a periodic or supervised run ends
// (revoked; the scheduler holds its occurrences until the deferral lifts
// and then runs the task at once), a child or unit is parked in the retry
// set without counting a retry until the deferral lifts (or its window
// ends). Progress made before the refusal is kept by the handlers
// (cursors, summaries, the ledger). The first run to defer a task
// publishes a debug event; every deferred run is counted
// (stargazer_task_stood_down_total, reason budget or kill_switch).
func deferrals(o Options, specs map[string]jobs.Spec) asynq.MiddlewareFunc {
	return func(next asynq.Handler) asynq.Handler {
		return asynq.HandlerFunc(func(ctx context.Context, t *asynq.Task) error {
			spec, ok := specs[t.Type()]
			if !ok || o.Spend == nil || !spec.CallsLLM() {
				return next.ProcessTask(ctx, t)
			}
			owner := jobs.Owner(spec.Name, t.Payload())
			ctx = spend.WithTask(ctx, owner)
			d, held, err := o.Spend.Held(ctx, owner)
			if err != nil {
				return err
			}
			if held {
				return deferRun(ctx, o, spec, d, nil)
			}
			err = next.ProcessTask(ctx, t)
			if r, ok := refusal(err); ok && ctx.Err() == nil {
				id, _ := asynq.GetTaskID(ctx)
				return deferRun(ctx, o, spec, r.Deferral(owner, id, o.Spend.Now()), err)
			}
			return err
		})
	}
}

// deferRun records the deferral d of spec's run and ends the run as
// deferred; cause is the refusal that stopped it (nil: it did not start).
func deferRun(ctx context.Context, o Options, spec jobs.Spec, d spend.Deferral, cause error) error {
	id, _ := asynq.GetTaskID(ctx)
	queue, _ := asynq.GetQueueName(ctx)
	retried, _ := asynq.GetRetryCount(ctx)
	maxRetry, _ := asynq.GetMaxRetry(ctx)
	// A child waits in the retry set; on its last attempt asynq would
	// archive it there, so it is dropped instead (an extraction unit is
	// re-enqueued by its planner, which runs once the deferral lifts).
	park := spec.Kind == jobs.Child && retried < maxRetry
	var parked spend.Parked
	if park {
		parked = spend.Parked{Queue: queue, TaskID: id}
	}
	if d.TaskID == "" {
		d.TaskID = id
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	isNew, err := o.Spend.Defer(dctx, d, parked)
	cancel()
	log := o.Logger.With("task", spec.Name, "task_id", id, "charged_to", d.Task, "reason", d.Reason)
	if err != nil {
		log.Warn("deferral not recorded; the task's next run asks again", "error", err)
	}
	reason := StandDownBudget
	if d.Reason == spend.ReasonKillSwitch {
		reason = StandDownKillSwitch
	}
	o.Metrics.StoodDown(spec.Name, reason)
	until := d.Until()
	delay := killSwitchRecheck
	if !until.IsZero() {
		delay = max(until.Sub(o.Spend.Now()), time.Second)
	}
	de := &deferredError{d: d, delay: delay, cause: cause}
	if isNew {
		log.Info("LLM work deferred", "until", untilText(until), "parked", park, "limit", d.Limit)
		if o.Events != nil {
			o.Events.Offer(events.Event{
				Topic: "scheduler_task_run", Source: "scheduler", Status: StatusDeferred,
				Preview: fmt.Sprintf("task=%s status=deferred reason=%s until=%s", spec.Name, d.Reason, untilText(until)),
				Payload: map[string]any{"task": spec.Name, "task_id": id, "charged_to": d.Task, "reason": d.Reason,
					"until": untilText(until), "scope": d.Scope, "limit": d.Limit, "error": de.Error()},
			})
		}
	} else {
		log.Debug("LLM work still deferred", "until", untilText(until), "parked", park)
	}
	if park {
		return de
	}
	return fmt.Errorf("%w: %w", de, asynq.RevokeTask)
}

func untilText(t time.Time) string {
	if t.IsZero() {
		return "the kill switch is back on"
	}
	return t.UTC().Format(time.RFC3339)
}

// refusal is the refusal that stopped a run: the ledger's, or the kill
// switch's met outside it (killswitch.ErrOff, which says where it was
// read in err's message).
func refusal(err error) (*spend.Refusal, bool) {
	r, ok := spend.AsRefusal(err)
	if ok && r.Reason == spend.ReasonKillSwitch && r.Switch == "" {
		r = &spend.Refusal{Reason: r.Reason, Switch: err.Error()}
	}
	return r, ok
}
