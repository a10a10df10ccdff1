package app

import (
	"context"
	"fmt"

	"github.com/stargazer/stargazer-jobs/handlers"
	"github.com/stargazer/stargazer-jobs/internal/queue/events"
	"github.com/stargazer/stargazer-jobs/internal/queue/server"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// eventBuffer bounds the debug events waiting to be published; beyond it
// events are dropped (they are best effort, as in the original).
const eventBuffer = 10_000

// startServer registers the handlers this configuration can serve and
// starts the asynq server. From here on the deferred stops shut the server
// down (stop fetching, then give in-flight tasks SHUTDOWN_TIMEOUT; asynq
// puts unfinished ones back on the queue), whatever fails later.
func (a *app) startServer(ctx context.Context) error {
	cfg := a.cfg
	asyncEvents := events.NewAsync(a.publisher, eventBuffer)
	asyncEvents.CountDropsIn(a.metrics.EventsDropped)
	evCtx, stopEvents := context.WithCancel(context.WithoutCancel(ctx))
	go asyncEvents.Run(evCtx)
	// Pushed before the server's stop, so it runs after it: the last runs'
	// events are flushed.
	a.stops.push(func() { stopEvents(); <-asyncEvents.Done() })

	wopt := server.Options{
		Redis: a.connOpt, Concurrency: cfg.Concurrency, ShutdownTimeout: cfg.ShutdownTimeout, TaskCheckInterval: cfg.TaskCheckInterval,
		Logger: a.log, Metrics: a.metrics, Events: asyncEvents,
		Catalog: a.catalog, RedisClient: a.qdb, SingletonLease: cfg.SingletonLease,
		KillSwitch: a.killSwitch, SkipAsynqWorkarounds: !a.asynqCovered,
		Spend: a.spend,
	}
	a.coexist(&wopt)
	mux := server.Mux(wopt)
	deps, err := a.handlerDeps(ctx)
	if err != nil {
		return err
	}
	a.hdeps = deps
	for _, r := range handlers.Register(mux, deps, a.catalog, cfg.Available()) {
		if !r.Registered {
			a.log.Debug("handler not registered", "task", r.Task, "reason", r.Reason)
		}
	}
	for name, h := range a.p.Extra {
		mux.Handle(name, h)
	}

	a.waitForRedis(ctx)
	srv := server.NewServer(wopt)
	if err := srv.Start(mux); err != nil {
		return fmt.Errorf("starting asynq server: %w", err)
	}
	a.stops.push(func() {
		srv.Stop()
		srv.Shutdown()
		a.log.Info("worker stopped")
	})
	a.log.Info("worker started", "concurrency", cfg.Concurrency, "queues", jobs.Queues())
	return nil
}
