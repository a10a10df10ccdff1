// Command worker runs Stargazer's background tasks: an asynq server with a
// handler per available task, the periodic scheduler, and the monitor
// (dashboard, /metrics, /healthz, /readyz) on one HTTP address.
//
// With no REDIS_URL it starts an embedded in-process Redis, so
// `go run ./cmd/worker` works on a fresh machine.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/config"
	"github.com/stargazer/stargazer-jobs/embedded"
	"github.com/stargazer/stargazer-jobs/events"
	"github.com/stargazer/stargazer-jobs/handlers"
	"github.com/stargazer/stargazer-jobs/jobs"
	"github.com/stargazer/stargazer-jobs/monitor"
	"github.com/stargazer/stargazer-jobs/periodic"
	"github.com/stargazer/stargazer-jobs/worker"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	switch {
	case errors.Is(err, config.ErrHelp):
		os.Exit(0)
	case err != nil:
		fmt.Fprintf(os.Stderr, "worker: %v\n", err)
		var ce *config.Error
		if errors.As(err, &ce) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// run starts everything and blocks until ctx is cancelled (SIGTERM/SIGINT),
// then shuts down gracefully.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := config.Load(getenv, args, stderr)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(stdout, &slog.HandlerOptions{Level: cfg.LogLevel}))

	if cfg.Embedded() {
		emb, err := embedded.Start()
		if err != nil {
			return err
		}
		defer emb.Close()
		cfg.RedisURL = emb.URL()
		log.Warn("no REDIS_URL set: using an embedded in-process Redis; nothing persists and no other process can share it",
			"embedded_redis", emb.Addr())
	}
	ropt, err := cfg.RedisOptions()
	if err != nil {
		return err
	}
	rdb := redis.NewClient(ropt)
	defer rdb.Close()
	connOpt := config.AsynqRedis(ropt)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := monitor.NewMetrics(reg)
	insp := asynq.NewInspector(connOpt)
	defer insp.Close()
	reg.MustRegister(monitor.NewQueueCollector(insp))

	mon := monitor.New(monitor.Options{
		Gatherer:      reg,
		Redis:         monitor.PingFunc(func(ctx context.Context) error { return rdb.Ping(ctx).Err() }),
		RedisConnOpt:  connOpt,
		DashboardPath: cfg.DashboardPath,
	})
	defer mon.Close()
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return &config.Error{Setting: "HTTP_ADDR", Reason: err.Error()}
	}
	httpSrv := &http.Server{Handler: mon, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server stopped", "error", err)
		}
	}()
	log.Info("monitor listening", "addr", ln.Addr().String(),
		"dashboard", "http://"+ln.Addr().String()+cfg.DashboardPath+"/", "metrics", "/metrics")

	decisions := jobs.Gate(jobs.Catalog(), cfg.GatingEnv(handlers.Implemented()))
	logCatalog(log, decisions)

	wopt := worker.Options{
		Redis: connOpt, Concurrency: cfg.Concurrency, ShutdownTimeout: cfg.ShutdownTimeout,
		Logger: log, Metrics: metrics, Events: events.NewPublisher(rdb, cfg.DebugEventsChannel),
	}
	mux := worker.Mux(wopt)
	for _, r := range handlers.Register(mux, handlers.Deps{Redis: rdb, Logger: log}, cfg.Available()) {
		if !r.Registered {
			log.Debug("handler not registered", "task", r.Task, "reason", r.Reason)
		}
	}

	waitForRedis(ctx, log, rdb)
	srv := worker.NewServer(wopt)
	if err := srv.Start(mux); err != nil {
		return fmt.Errorf("starting asynq server: %w", err)
	}
	log.Info("worker started", "concurrency", cfg.Concurrency, "queues", jobs.Queues())

	var wg sync.WaitGroup
	schedCtx, stopSched := context.WithCancel(ctx)
	defer stopSched()
	if cfg.SchedulerEnabled {
		client := asynq.NewClient(connOpt)
		defer client.Close()
		sched, err := periodic.New(periodic.Config{
			Redis: rdb, Enqueuer: client, States: periodic.InspectorStates{Inspector: insp},
			Observer: schedulerMetrics{metrics}, Logger: log.With("component", "scheduler"),
		}, entries(decisions))
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() { defer wg.Done(); sched.Run(schedCtx) }()
		log.Info("scheduler started")
	} else {
		log.Info("scheduler disabled (SCHEDULER_ENABLED=false): this process only runs tasks")
	}

	<-ctx.Done()
	log.Info("shutting down", "shutdown_timeout", cfg.ShutdownTimeout.String())
	stopSched()
	wg.Wait()
	// Stop fetching first, then give in-flight tasks until the timeout;
	// asynq puts unfinished ones back on the queue.
	srv.Stop()
	srv.Shutdown()
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = httpSrv.Shutdown(shutCtx)
	log.Info("worker stopped")
	return nil
}

// waitForRedis reports an unreachable Redis and keeps trying with backoff
// instead of exiting: a crash loop would help nobody, and asynq recovers by
// itself once Redis is back.
func waitForRedis(ctx context.Context, log *slog.Logger, rdb *redis.Client) {
	backoff := 500 * time.Millisecond
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := rdb.Ping(pctx).Err()
		cancel()
		if err == nil || ctx.Err() != nil {
			return
		}
		log.Error("redis unreachable; retrying", "error", err, "retry_in", backoff.String())
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 30*time.Second)
	}
}

func logCatalog(log *slog.Logger, ds []jobs.Decision) {
	n := 0
	for _, d := range ds {
		if d.Scheduled {
			n++
			log.Info("task scheduled", "task", d.Spec.Name, "kind", d.Spec.Kind,
				"interval", d.Interval.String(), "initial_delay", d.Spec.InitialDelay.String(), "queue", d.Spec.Queue)
		} else {
			log.Info("task skipped", "task", d.Spec.Name, "reason", d.SkipReason)
		}
	}
	log.Info("catalog gated", "scheduled", n, "skipped", len(ds)-n)
}

// entries turns the scheduled decisions into scheduler entries.
func entries(ds []jobs.Decision) []periodic.Entry {
	var out []periodic.Entry
	for _, d := range ds {
		if !d.Scheduled || d.Spec.Kind == jobs.Startup {
			continue
		}
		payload, err := jobs.EncodePayload(d.Spec.NewPayload())
		if err != nil {
			panic(fmt.Sprintf("catalog default payload of %s is invalid: %v", d.Spec.Name, err))
		}
		out = append(out, periodic.Entry{
			Name: d.Spec.Name, Interval: d.Interval, InitialDelay: d.Spec.InitialDelay,
			Queue: d.Spec.Queue, Payload: payload,
			Options: []asynq.Option{asynq.MaxRetry(d.Spec.MaxRetry), asynq.Timeout(d.Spec.Timeout)},
		})
	}
	return out
}

type schedulerMetrics struct{ m *monitor.Metrics }

func (s schedulerMetrics) Fire(task, outcome string, late time.Duration) {
	s.m.SchedulerFires.WithLabelValues(task, outcome).Inc()
	if outcome == periodic.OutcomeEnqueued {
		s.m.SchedulerLate.WithLabelValues(task).Observe(late.Seconds())
	}
}
