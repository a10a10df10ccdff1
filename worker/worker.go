// Package worker assembles the asynq server that runs Stargazer's tasks:
// queue weights, retry policy, and the middleware every run goes through
// (panic recovery, structured logs, metrics, debug events).
package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/events"
	"github.com/stargazer/stargazer-jobs/jobs"
	"github.com/stargazer/stargazer-jobs/monitor"
)

// Options configure the server.
type Options struct {
	Redis           asynq.RedisConnOpt
	Concurrency     int
	ShutdownTimeout time.Duration
	Logger          *slog.Logger
	Metrics         *monitor.Metrics
	// Events receives one scheduler_task_run event per run; nil disables.
	Events *events.Publisher
}

// NewServer returns an asynq server configured for the catalog's queues.
func NewServer(o Options) *asynq.Server {
	log := o.Logger
	return asynq.NewServer(o.Redis, asynq.Config{
		Concurrency:     o.Concurrency,
		Queues:          jobs.Queues(),
		ShutdownTimeout: o.ShutdownTimeout,
		RetryDelayFunc:  RetryDelay,
		Logger:          slogAdapter{log.With("component", "asynq")},
		LogLevel:        asynq.WarnLevel,
		HealthCheckFunc: func(err error) {
			if err != nil {
				log.Error("redis health check failed; asynq keeps retrying", "error", err)
			}
		},
		ErrorHandler: asynq.ErrorHandlerFunc(func(ctx context.Context, t *asynq.Task, err error) {
			retried, _ := asynq.GetRetryCount(ctx)
			maxRetry, _ := asynq.GetMaxRetry(ctx)
			id, _ := asynq.GetTaskID(ctx)
			final := retried >= maxRetry || errors.Is(err, asynq.SkipRetry)
			log.Warn("task failed", "task", t.Type(), "task_id", id, "retried", retried,
				"max_retry", maxRetry, "archived", final, "error", err)
		}),
	})
}

// RetryDelay backs off exponentially from 5 s, capped at 5 minutes, so
// retries of a short-cadence task stay within its period. A run whose lease
// expired (its worker died) is retried after a second: it has already waited
// out the lease.
func RetryDelay(n int, err error, _ *asynq.Task) time.Duration {
	if errors.Is(err, asynq.ErrLeaseExpired) {
		return time.Second
	}
	d := 5 * time.Second << min(n, 6)
	return min(d, 5*time.Minute)
}

// Mux returns a ServeMux with the standard middleware installed. Handlers
// are added by the caller.
func Mux(o Options) *asynq.ServeMux {
	mux := asynq.NewServeMux()
	mux.Use(observe(o), recoverPanics(o.Logger))
	return mux
}

// Run statuses.
const (
	StatusOK       = "ok"
	StatusError    = "error"
	StatusPanic    = "panic"
	StatusInvalid  = "invalid"
	StatusNotFound = "not_found"
)

// errPanic marks an error made from a recovered panic.
var errPanic = errors.New("handler panicked")

func recoverPanics(log *slog.Logger) asynq.MiddlewareFunc {
	return func(next asynq.Handler) asynq.Handler {
		return asynq.HandlerFunc(func(ctx context.Context, t *asynq.Task) (err error) {
			defer func() {
				if x := recover(); x != nil {
					id, _ := asynq.GetTaskID(ctx)
					log.Error("handler panicked", "task", t.Type(), "task_id", id, "panic", fmt.Sprint(x), "stack", string(debug.Stack()))
					// A panic is a bug, not a transient fault: archive at once.
					err = fmt.Errorf("%w: %v: %w", errPanic, x, asynq.SkipRetry)
				}
			}()
			return next.ProcessTask(ctx, t)
		})
	}
}

func classify(err error) string {
	switch {
	case err == nil:
		return StatusOK
	case errors.Is(err, errPanic):
		return StatusPanic
	case errors.Is(err, jobs.ErrInvalidPayload):
		return StatusInvalid
	case errors.Is(err, asynq.ErrHandlerNotFound):
		return StatusNotFound
	}
	return StatusError
}

func observe(o Options) asynq.MiddlewareFunc {
	return func(next asynq.Handler) asynq.Handler {
		return asynq.HandlerFunc(func(ctx context.Context, t *asynq.Task) error {
			id, _ := asynq.GetTaskID(ctx)
			queue, _ := asynq.GetQueueName(ctx)
			retried, _ := asynq.GetRetryCount(ctx)
			name := t.Type()
			if _, known := jobs.Lookup(name); !known {
				// Keep label cardinality bounded whatever arrives on the queue.
				name = "unknown"
			}
			log := o.Logger.With("task", t.Type(), "task_id", id, "queue", queue)
			log.Info("task started", "retried", retried)
			o.Metrics.TaskStarts.WithLabelValues(name).Inc()
			o.Metrics.TaskInFlight.WithLabelValues(name).Inc()
			start := time.Now()

			err := next.ProcessTask(ctx, t)
			if errors.Is(err, asynq.ErrHandlerNotFound) {
				// No handler here means this deployment lacks the task's
				// dependency: retrying cannot help.
				err = fmt.Errorf("%w (its dependencies are not configured on this worker): %w", err, asynq.SkipRetry)
			}

			elapsed := time.Since(start)
			status := classify(err)
			o.Metrics.TaskInFlight.WithLabelValues(name).Dec()
			o.Metrics.TaskRuns.WithLabelValues(name, status).Inc()
			o.Metrics.TaskDuration.WithLabelValues(name).Observe(elapsed.Seconds())
			errMsg := ""
			if err != nil {
				errMsg = err.Error()
				log.Warn("task finished", "status", status, "duration_ms", elapsed.Milliseconds(), "error", errMsg)
			} else {
				log.Info("task finished", "status", status, "duration_ms", elapsed.Milliseconds())
			}
			if o.Events != nil {
				publish(o.Events, log, t.Type(), id, status, errMsg, elapsed)
			}
			return err
		})
	}
}

// publish sends the original's scheduler_task_run event without delaying the
// task: it is fire-and-forget, as it was in the original.
func publish(p *events.Publisher, log *slog.Logger, task, id, status, errMsg string, elapsed time.Duration) {
	evStatus := "ok"
	if status != StatusOK {
		evStatus = "error"
	}
	e := events.Event{
		Topic: "scheduler_task_run", Source: "scheduler", Status: evStatus,
		DurationMS: float64(elapsed.Microseconds()) / 1000,
		Preview:    fmt.Sprintf("task=%s status=%s", task, evStatus),
		Payload:    map[string]any{"task": task, "error": errMsg, "task_id": id},
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := p.Publish(ctx, e); err != nil {
			log.Debug("debug event not published", "error", err)
		}
	}()
}

type slogAdapter struct{ l *slog.Logger }

func (a slogAdapter) Debug(args ...any) { a.l.Debug(fmt.Sprint(args...)) }
func (a slogAdapter) Info(args ...any)  { a.l.Info(fmt.Sprint(args...)) }
func (a slogAdapter) Warn(args ...any)  { a.l.Warn(fmt.Sprint(args...)) }
func (a slogAdapter) Error(args ...any) { a.l.Error(fmt.Sprint(args...)) }
func (a slogAdapter) Fatal(args ...any) { a.l.Error(fmt.Sprint(args...)); os.Exit(1) }
