// Package app is the worker process: it wires configuration, Redis, the
// handlers, the asynq server, the scheduler, the node-local loops and the
// monitor together, and takes them down again.
//
// app is the top of the dependency graph below cmd: it may import every
// internal package, handlers and monitor; nothing but cmd imports it.
package app

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/handlers"
	"github.com/stargazer/stargazer-jobs/internal/clients/journal"
	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/clients/llm/budget"
	"github.com/stargazer/stargazer-jobs/internal/clients/llm/killswitch"
	"github.com/stargazer/stargazer-jobs/internal/config"
	"github.com/stargazer/stargazer-jobs/internal/logthrottle"
	"github.com/stargazer/stargazer-jobs/internal/queue/asynqcompat"
	"github.com/stargazer/stargazer-jobs/internal/queue/events"
	"github.com/stargazer/stargazer-jobs/internal/spend"
	"github.com/stargazer/stargazer-jobs/jobs"
	"github.com/stargazer/stargazer-jobs/monitor"
)

// Params are what Run needs from its process.
type Params struct {
	Args   []string
	Getenv func(string) string
	Stdout io.Writer
	Stderr io.Writer
	// Catalog is the task catalog (default jobs.Catalog()). Tests extend it
	// with tasks of their own, served by Extra.
	Catalog []jobs.Spec
	// Extra handlers, by task name, added to the ones of package handlers.
	Extra map[string]asynq.Handler
	// Now is the clock the scheduler, the handlers, the cut-over
	// detector and the LLM budget windows read (default time.Now). Tests
	// offset it to skew one worker's clock against the others' or to move
	// the cluster to the next UTC day; log times, asynq's own bookkeeping
	// and timeouts keep the real clock.
	Now func() time.Time
}

// Run is the worker process. It runs its phases in order and blocks until
// ctx is cancelled (SIGTERM/SIGINT), then shuts down gracefully. Whatever a
// phase starts is stopped when Run returns, in reverse order, on every path:
// a failure in a later phase never leaves an earlier one running unsupervised.
func Run(ctx context.Context, p Params) error {
	cfg, err := config.Load(p.Getenv, p.Args, p.Stderr)
	if err != nil {
		return err
	}
	a := &app{p: p, cfg: cfg, catalog: p.Catalog, now: p.Now}
	if a.catalog == nil {
		a.catalog = jobs.Catalog()
	}
	if a.now == nil {
		a.now = time.Now
	}
	// A component's repeated warnings (a Redis outage) are logged once per
	// minute with a count; go-redis's own lines join the JSON log.
	throttled := logthrottle.New(slog.NewJSONHandler(p.Stdout, &slog.HandlerOptions{Level: cfg.LogLevel}), logthrottle.Interval)
	defer throttled.Flush()
	a.log = slog.New(throttled)
	redis.SetLogger(logthrottle.RedisLogger{L: a.log})
	defer a.stops.run(a.log)

	if err := a.gate(); err != nil {
		return err
	}
	// Before anything uses asynq's private layout.
	a.asynqCovered = asynqcompat.Gate(a.log.With("component", "asynqcompat"))
	if err := a.connect(); err != nil {
		return err
	}
	if err := a.serveMonitor(); err != nil {
		return err
	}
	switch cfg.Role {
	case config.RoleMonitor:
		a.log.Info("monitor role: serving the dashboard, the API and metrics; running no tasks and no scheduler")
		<-ctx.Done()
		a.log.Info("monitor stopped")
		return nil
	case config.RoleNode:
		a.log.Info("node role: running this node's node-local tasks; no queue, no scheduler, no dashboard")
		logCatalog(a.log, a.nodeLocalDecisions())
		if err := a.startNodeLocal(ctx); err != nil {
			return err
		}
		<-ctx.Done()
		a.log.Info("node agent stopped")
		return nil
	}
	logCatalog(a.log, a.decisions)
	if err := a.startServer(ctx); err != nil {
		return err
	}
	if err := a.startBackground(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	a.log.Info("shutting down", "shutdown_timeout", cfg.ShutdownTimeout.String())
	return nil
}

// app is the state the phases share.
type app struct {
	p         Params
	cfg       config.Config
	catalog   []jobs.Spec
	log       *slog.Logger
	now       func() time.Time
	stops     stack
	decisions []jobs.Decision

	// set by connect
	// rdb is the bot's Redis (REDIS_URL): sg:*, stargazer_logs:*, the
	// debug channel, the leader key, the kill switch.
	rdb *redis.Client
	// qdb is the job system's (QUEUE_REDIS_URL): asynq:* and sgjobs:*.
	// Without QUEUE_REDIS_URL it is rdb, the same client.
	qdb        *redis.Client
	connOpt    asynq.RedisConnOpt
	insp       *asynq.Inspector
	client     *asynq.Client
	reg        *prometheus.Registry
	metrics    *monitor.Metrics
	llmMetrics *llm.Metrics
	killSwitch *killswitch.Switch
	// asynqCovered: the contract tests cover the linked asynq version, so
	// the workarounds on its private layout run.
	asynqCovered bool
	// budgetMetrics observe the cluster-wide LLM budget.
	budgetMetrics *budget.Metrics
	// spend is the LLM spend ledger every call is charged to.
	spend *spend.Ledger

	publisher *events.Publisher
	// journal watches this node's journal (nil where no journal task runs
	// or journalctl is missing).
	journal *journal.Health

	// set by startServer or startNodeLocal
	hdeps handlers.Deps
}

// stack holds the stop functions of what the phases started.
type stack []func()

// push adds a stop function; the last pushed runs first.
func (s *stack) push(stop func()) { *s = append(*s, stop) }

// run calls every stop function, last pushed first. A panicking stop is
// logged and does not keep the others from running.
func (s *stack) run(log *slog.Logger) {
	for i := len(*s) - 1; i >= 0; i-- {
		func() {
			defer func() {
				if x := recover(); x != nil {
					log.Error("shutdown step panicked", "panic", fmt.Sprint(x))
				}
			}()
			(*s)[i]()
		}()
	}
	*s = nil
}

// gate decides, from configuration alone, which tasks this deployment runs.
func (a *app) gate() error {
	env, err := a.cfg.GatingEnv(a.catalog, a.implemented())
	if err != nil {
		return err
	}
	a.decisions = jobs.Gate(a.catalog, env)
	return CheckBudgets(a.cfg.LLMBudgets, a.catalog)
}

// implemented is the set of tasks this process can run.
func (a *app) implemented() map[string]bool {
	implemented := handlers.Implemented()
	for name := range a.p.Extra {
		implemented[name] = true
	}
	return implemented
}
