package server

import (
	"context"
	"errors"
	"fmt"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/spend"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// Reasons a run stands down before it starts.
const (
	StandDownKillSwitch   = "kill_switch"
	StandDownLegacyLeader = "legacy_leader"
)

// KillSwitch says whether chat-LLM work may start (killswitch.Switch).
type KillSwitch interface {
	Check(ctx context.Context) error
}

// LegacyLeader says whether the Python supervisor still holds its leader
// lease (singleton.LegacyLeader).
type LegacyLeader interface {
	Held(ctx context.Context) (bool, error)
}

// errStoodDown marks a run that did not start, for a reason outside it.
var errStoodDown = errors.New("stood down")

// standDown refuses, before anything else is taken, a run that must not
// start now: a chat-LLM task while the kill switch is off (queued runs,
// retries, manual runs and heartbeat children alike; with spend accounting
// it is deferred as a refused call would defer it), and a task the
// Python supervisor ran while its leader lease is held (the cut-over's
// coexistence). The run is revoked, not retried: its task's next
// occurrence asks again.
func standDown(o Options, specs map[string]jobs.Spec) asynq.MiddlewareFunc {
	return func(next asynq.Handler) asynq.Handler {
		return asynq.HandlerFunc(func(ctx context.Context, t *asynq.Task) error {
			spec, ok := specs[t.Type()]
			if !ok {
				return next.ProcessTask(ctx, t)
			}
			id, _ := asynq.GetTaskID(ctx)
			if o.KillSwitch != nil && spec.Requires.Has(jobs.ChatLLM) {
				if err := o.KillSwitch.Check(ctx); err != nil {
					if o.Spend != nil && spec.CallsLLM() {
						// The path of a call the switch refuses: the task is
						// deferred until the switch is back on, and shows so.
						r := &spend.Refusal{Reason: spend.ReasonKillSwitch, Switch: err.Error()}
						return deferRun(ctx, o, spec, r.Deferral(jobs.Owner(spec.Name, t.Payload()), id, o.Spend.Now()), err)
					}
					o.Logger.Warn("chat-LLM task not started: the kill switch is off (or cannot be read)",
						"task", spec.Name, "task_id", id, "reason", err.Error())
					o.Metrics.StoodDown(spec.Name, StandDownKillSwitch)
					return fmt.Errorf("%w: %w: %w", errStoodDown, err, asynq.RevokeTask)
				}
			}
			if o.LegacyLeader != nil && spec.Kind == jobs.Supervised {
				held, err := o.LegacyLeader.Held(ctx)
				if held || err != nil {
					reason := "the Python supervisor holds its leader lease"
					if err != nil {
						reason = "the legacy leader lease cannot be read: " + err.Error()
					}
					o.Logger.Info("legacy leader holds the lease; standing down", "task", spec.Name, "task_id", id, "reason", reason)
					o.Metrics.StoodDown(spec.Name, StandDownLegacyLeader)
					return fmt.Errorf("%w: %s: %w", errStoodDown, reason, asynq.RevokeTask)
				}
			}
			return next.ProcessTask(ctx, t)
		})
	}
}
