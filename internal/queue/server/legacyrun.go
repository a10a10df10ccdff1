package server

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/jobs"
)

// StandDownLegacyRun: the Python scheduler ran the task within its last
// interval (and a half), during the cut-over window.
const StandDownLegacyRun = "legacy_run"

// LegacyRuns says until when a task the Python scheduler just ran must not
// run on the Go side (legacy.StandDowns); zero means it may run.
type LegacyRuns interface {
	Until(ctx context.Context, task string) (time.Time, error)
}

// standDownForLegacyRuns refuses a scheduled occurrence of a task the
// Python scheduler ran within its last interval and a half, so that run
// is not paid twice. Only the scheduler's occurrences (task ID
// "<task>@<due>") stand down: a run an operator asked for by hand, and the
// children of a fan-out, run. A stand-down that cannot be read counts as
// one, as the legacy leader's does: the next occurrence asks again.
func standDownForLegacyRuns(o Options, specs map[string]jobs.Spec) asynq.MiddlewareFunc {
	return func(next asynq.Handler) asynq.Handler {
		return asynq.HandlerFunc(func(ctx context.Context, t *asynq.Task) error {
			spec, ok := specs[t.Type()]
			if o.LegacyRuns == nil || !ok || (spec.Kind != jobs.Periodic && spec.Kind != jobs.Supervised) {
				return next.ProcessTask(ctx, t)
			}
			id, _ := asynq.GetTaskID(ctx)
			if !strings.HasPrefix(id, spec.Name+"@") {
				return next.ProcessTask(ctx, t)
			}
			until, err := o.LegacyRuns.Until(ctx, spec.Name)
			if err == nil && until.IsZero() {
				return next.ProcessTask(ctx, t)
			}
			reason := "the Python scheduler ran it within its last interval; it stands down until " + until.UTC().Format(time.RFC3339)
			if err != nil {
				reason = "whether the Python scheduler ran it cannot be read: " + err.Error()
			}
			o.Logger.Info("the Python scheduler ran this task; standing down", "task", spec.Name, "task_id", id, "reason", reason)
			o.Metrics.StoodDown(spec.Name, StandDownLegacyRun)
			return fmt.Errorf("%w: %s: %w", errStoodDown, reason, asynq.RevokeTask)
		})
	}
}
