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
	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/queue/asynqcompat"
	"github.com/stargazer/stargazer-jobs/internal/queue/events"
	"github.com/stargazer/stargazer-jobs/internal/queue/periodic"
	"github.com/stargazer/stargazer-jobs/internal/queue/server"
	"github.com/stargazer/stargazer-jobs/internal/spend"
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
			Redis: a.qdb, Enqueuer: asynqcompat.RecordEnqueues(a.client, a.qdb, a.log), States: periodic.InspectorStates{Inspector: a.insp},
			Observer: a.metrics, Logger: a.log.With("component", "scheduler"), SkipAsynqWorkarounds: !a.asynqCovered, Now: a.now,
			Holds: spend.NewGate(a.spend, a.insp, a.log.With("component", "spend")),
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
	if cfg.FastLeaseRecovery && a.asynqCovered {
		wg.Go(func() {
			asynqcompat.RunRecoverer(bg, a.log.With("component", "recoverer"), a.qdb, slices.Sorted(maps.Keys(jobs.Queues())), asynqcompat.RecoverEvery, a.metrics.LeaseRecoveries.Inc)
		})
	}
	if sched != nil {
		wg.Go(func() { sched.Run(bg) })
		wg.Go(func() {
			es := entries(a.decisions)
			var names []string
			for _, e := range es {
				names = append(names, e.Name)
			}
			asynqcompat.RunSchedulePublisher(bg, a.log, a.qdb, asynqcompat.PublishEvery, asynqcompat.PublishTurnKey(names), schedules(a.qdb, es))
		})
		a.log.Info("scheduler started")
	} else {
		a.log.Info("scheduler disabled (SCHEDULER_ENABLED=false): this process only runs tasks")
	}
	a.superviseNodeLocal(bg, &wg)
	a.watchLegacyRuns(bg, &wg)
	return nil
}

// superviseNodeLocal starts the node-local loops the gate scheduled, under
// ctx and wg.
func (a *app) superviseNodeLocal(ctx context.Context, wg *sync.WaitGroup) {
	if a.journal != nil {
		a.journal.Check() // before the loops ask whether they can read it
		wg.Go(func() { a.journal.Run(ctx, 0) })
	}
	local := handlers.NodeLocal(a.hdeps)
	for _, d := range a.nodeLocalDecisions() {
		if fn := local[d.Spec.Name]; d.Scheduled && fn != nil {
			name := d.Spec.Name
			wg.Go(func() {
				superviseLocal(ctx, a.log.With("task", name), d.Spec.InitialDelay, d.Interval, func(ctx context.Context) error {
					return a.observeLocal(ctx, name, fn)
				})
			})
		}
	}
}

// observeLocal runs one round of a node-local loop as a run: counted in the
// task metrics like a queued run, and reported with the original's
// scheduler_task_run event when it ends (ok, or error with the reason). A
// loop that cannot work on this node is not a run.
func (a *app) observeLocal(ctx context.Context, task string, fn func(context.Context) error) error {
	a.metrics.RunStarted(task)
	start := time.Now()
	err := fn(spend.WithTask(ctx, task))
	elapsed := time.Since(start)
	status := server.StatusOK
	switch {
	case errors.Is(err, handlers.ErrNotOnThisNode):
		status = server.StatusSkipped
	case err != nil && ctx.Err() != nil:
		status = server.StatusSkipped // stopped by shutdown, not failed
	case errors.Is(err, llm.ErrRefused):
		// Its LLM budget is spent: the next round asks again (at its
		// interval); what it did before the refusal is kept.
		status = server.StatusDeferred
	case err != nil:
		status = server.StatusError
	}
	run := server.Run{Task: task, Status: status, Elapsed: elapsed}
	if status == server.StatusError {
		run.Class = "error"
	}
	a.metrics.RunFinished(run)
	if status != server.StatusSkipped && status != server.StatusDeferred {
		e := events.Event{Topic: "scheduler_task_run", Source: "scheduler", Status: "ok",
			DurationMS: float64(elapsed.Microseconds()) / 1000, Preview: "task=" + task + " status=ok",
			Payload: map[string]any{"task": task, "error": "", "origin": events.Origin}}
		if err != nil {
			e.Status, e.Preview, e.Payload["error"] = "error", "task="+task+" status=error", err.Error()
		}
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		_ = a.publisher.Publish(pctx, e) // fire-and-forget, as in the original
		cancel()
	}
	return err
}

// nodeLocalDecisions are the gate's decisions on the node-local tasks.
func (a *app) nodeLocalDecisions() []jobs.Decision {
	var out []jobs.Decision
	for _, d := range a.decisions {
		if d.Spec.Kind == jobs.NodeLocal {
			out = append(out, d)
		}
	}
	return out
}

// startNodeLocal is the node agent's one phase: the node-local loops, with
// the clients they use, and nothing else.
func (a *app) startNodeLocal(ctx context.Context) error {
	deps, err := a.handlerDeps(ctx)
	if err != nil {
		return err
	}
	a.hdeps = deps
	a.waitForRedis(ctx)
	bg, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	a.stops.push(func() { stop(); wg.Wait() })
	a.superviseNodeLocal(bg, &wg)
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
			continue
		}
		quiet = false // it ran: say so again if it stops being able to
		switch {
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
