package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/handlers"
	"github.com/stargazer/stargazer-jobs/internal/queue/asynqcompat"
	"github.com/stargazer/stargazer-jobs/internal/queue/periodic"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// startBackground enqueues this deployment's startup tasks and starts the
// loops that run beside the asynq server: the lease recoverer, the
// scheduler and the node-local tasks. They stop, and are waited for, before
// the server shuts down.
func (a *app) startBackground(ctx context.Context) error {
	cfg := a.cfg
	for _, e := range entries(a.decisions) {
		a.metrics.Periodic(e.Name, e.Interval)
	}
	var sched *periodic.Scheduler
	if cfg.SchedulerEnabled {
		s, err := periodic.New(periodic.Config{
			Redis: a.rdb, Enqueuer: asynqcompat.RecordEnqueues(a.client, a.rdb, a.log), States: periodic.InspectorStates{Inspector: a.insp},
			Observer: a.metrics, Logger: a.log.With("component", "scheduler"),
		}, entries(a.decisions))
		if err != nil {
			return err
		}
		sched = s
		enqueueStartup(ctx, a.log, a.client, a.decisions, func() (string, bool) { return DeploymentID(cfg.DeploymentID) })
	}

	bg, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	a.stops.push(func() { stop(); wg.Wait() })
	if cfg.FastLeaseRecovery {
		wg.Go(func() {
			asynqcompat.RunRecoverer(bg, a.log.With("component", "recoverer"), a.rdb, slices.Sorted(maps.Keys(jobs.Queues())), asynqcompat.RecoverEvery, a.metrics.LeaseRecoveries.Inc)
		})
	}
	if sched != nil {
		wg.Go(func() { sched.Run(bg) })
		wg.Go(func() {
			asynqcompat.RunSchedulePublisher(bg, a.log, a.rdb, asynqcompat.PublishEvery, schedules(a.rdb, entries(a.decisions)))
		})
		a.log.Info("scheduler started")
	} else {
		a.log.Info("scheduler disabled (SCHEDULER_ENABLED=false): this process only runs tasks")
	}
	local := handlers.NodeLocal(a.hdeps)
	for _, d := range a.decisions {
		if fn := local[d.Spec.Name]; d.Scheduled && d.Spec.Kind == jobs.NodeLocal && fn != nil {
			wg.Go(func() { superviseLocal(bg, a.log.With("task", d.Spec.Name), d.Spec.InitialDelay, d.Interval, fn) })
		}
	}
	return nil
}

// superviseLocal runs a node-local loop after its initial delay and restarts
// it restart after every end, as the original scheduler did, until ctx ends
// (which also ends the loop's own work, killing any child process).
func superviseLocal(ctx context.Context, log *slog.Logger, initial, restart time.Duration, fn func(context.Context) error) {
	wait := initial
	quiet := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = restart
		err := fn(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, handlers.ErrNotOnThisNode):
			if !quiet {
				log.Info("node-local task cannot run on this node; it idles and checks again periodically", "reason", err.Error(), "retry_every", restart.String())
				quiet = true
			}
		case err != nil:
			log.Warn("node-local task ended with an error; restarting", "error", err, "restart_in", restart.String())
		default:
			log.Info("node-local task ended; restarting", "restart_in", restart.String())
		}
	}
}

func logCatalog(log *slog.Logger, ds []jobs.Decision) {
	n := 0
	for _, d := range ds {
		switch {
		case d.Scheduled && d.Spec.Kind == jobs.Child:
			n++
			log.Info("task available: enqueued by other tasks or by hand", "task", d.Spec.Name, "kind", d.Spec.Kind, "queue", d.Spec.Queue)
		case d.Scheduled && d.Spec.Kind == jobs.Startup:
			n++
			log.Info("task scheduled once per deployment", "task", d.Spec.Name, "kind", d.Spec.Kind, "queue", d.Spec.Queue)
		case d.Scheduled:
			n++
			log.Info("task scheduled", "task", d.Spec.Name, "kind", d.Spec.Kind,
				"interval", d.Interval.String(), "initial_delay", d.Spec.InitialDelay.String(), "queue", d.Spec.Queue)
		default:
			log.Info("task skipped", "task", d.Spec.Name, "reason", d.SkipReason)
		}
	}
	log.Info("catalog gated", "scheduled", n, "skipped", len(ds)-n)
}

// entries turns the scheduled decisions into scheduler entries.
func entries(ds []jobs.Decision) []periodic.Entry {
	var out []periodic.Entry
	for _, d := range ds {
		if !d.Scheduled || d.Spec.Kind == jobs.Startup || d.Spec.Kind == jobs.NodeLocal || d.Spec.Kind == jobs.Child {
			continue
		}
		payload, err := jobs.EncodePayload(d.Spec.NewPayload())
		if err != nil {
			panic(fmt.Sprintf("catalog default payload of %s is invalid: %v", d.Spec.Name, err))
		}
		e := periodic.Entry{
			Name: d.Spec.Name, Interval: d.Interval, InitialDelay: d.Spec.InitialDelay,
			Queue: d.Spec.Queue, Payload: payload,
			Options: []asynq.Option{asynq.MaxRetry(d.Spec.MaxRetry), asynq.Timeout(d.Spec.Timeout)},
		}
		if d.Spec.Singleton {
			e.Unique = d.Spec.UniqueTTL()
		}
		out = append(out, e)
	}
	return out
}
