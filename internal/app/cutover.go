package app

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/queue/legacy"
	"github.com/stargazer/stargazer-jobs/internal/queue/server"
	"github.com/stargazer/stargazer-jobs/internal/queue/singleton"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// coexist sets the server's cut-over safeties (docs/migration.md,
// "Coexistence"): the supervised tasks defer to the Python supervisor's
// lease, and a scheduled occurrence defers to a recent run of the Python
// scheduler. Both are on unless LEGACY_COEXISTENCE=false.
func (a *app) coexist(o *server.Options) {
	cfg := a.cfg
	if key := cfg.LegacyLeaseKey(); key != "" {
		o.LegacyLeader = singleton.LegacyLeader{Redis: a.rdb, Key: key}
		a.log.Info("coexistence with the Python supervisor: limbic_dedup_task and limbic_org_task stand down while its lease exists",
			"legacy_leader_key", key)
	} else {
		a.log.Info("no coexistence with a Python side (LEGACY_COEXISTENCE=false): nothing stands down for it")
	}
	if cfg.LegacyRunStandDown() > 0 {
		o.LegacyRuns = legacy.StandDowns{Redis: a.qdb, Now: a.now}
	}
}

// watched are the tasks this worker schedules that the Python scheduler
// also ran: its periodic and supervised tasks, when its scheduler runs.
// The node-local loops are left out: each node runs its own, a worker
// without journalctl runs none, and an event does not say which node the
// Python run served, so a Python run of one is not a double run the
// cluster can see (it is recorded, for the hand-over point and `enqueuer
// status`).
func (a *app) watched() map[string]legacy.Schedule {
	out := map[string]legacy.Schedule{}
	if !a.cfg.SchedulerEnabled {
		return out
	}
	for _, d := range a.decisions {
		if d.Scheduled && (d.Spec.Kind == jobs.Periodic || d.Spec.Kind == jobs.Supervised) && len(legacy.Registrations(d.Spec.Name)) > 0 {
			out[d.Spec.Name] = legacy.Schedule{Interval: d.Interval, Queued: true}
		}
	}
	return out
}

// watchLegacyRuns starts the detector of the Python scheduler's runs under
// ctx and wg. A worker whose scheduler runs also starts the cut-over
// window, if no worker did before.
func (a *app) watchLegacyRuns(ctx context.Context, wg *sync.WaitGroup) {
	log := a.log.With("component", "legacy")
	watched := a.watched()
	m := legacy.NewMetrics(a.reg)
	m.Watch(slices.Sorted(maps.Keys(watched))...)
	window := a.cfg.LegacyRunStandDown()
	if a.cfg.SchedulerEnabled {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		start, err := legacy.StartWindow(sctx, a.qdb, a.now())
		cancel()
		switch {
		case err != nil:
			log.Warn("cut-over start not recorded; the next worker start records it", "error", err)
		case window > 0:
			log.Info("cut-over window: a task the Python scheduler runs stands down here until the window ends",
				"started", start.UTC().Format(time.RFC3339), "ends", start.Add(window).UTC().Format(time.RFC3339))
		}
	}
	d := &legacy.Detector{Redis: a.rdb, State: a.qdb, Channel: a.cfg.DebugEventsChannel, Logger: log, Metrics: m,
		Schedules: watched, Window: window, Now: a.now}
	wg.Go(func() { d.Run(ctx) })
}
