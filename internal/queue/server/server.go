// Package server assembles the asynq server that runs Stargazer's tasks:
// queue weights, retry policy, and the middleware every run goes through
// (panic recovery, structured logs, metrics, debug events).
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/queue/asynqcompat"
	"github.com/stargazer/stargazer-jobs/internal/queue/events"
	"github.com/stargazer/stargazer-jobs/internal/queue/singleton"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// Options configure the server.
type Options struct {
	Redis           asynq.RedisConnOpt
	Concurrency     int
	ShutdownTimeout time.Duration
	// TaskCheckInterval is asynq's wait between fetches while every queue
	// is empty (0: asynq's default, 1 s).
	TaskCheckInterval time.Duration
	Logger            *slog.Logger
	// Metrics records every run (monitor.Metrics implements it).
	Metrics Observer
	// Events receives one scheduler_task_run event per run; nil disables.
	// The caller runs it (Async.Run).
	Events *events.Async
	// Catalog is the task catalog; singleton leases and retry delays follow
	// its specs.
	Catalog []jobs.Spec
	// RedisClient holds singleton leases.
	RedisClient redis.UniversalClient
	// SingletonLease is the lease of a running singleton (0: the default).
	SingletonLease time.Duration
	// SkipAsynqWorkarounds leaves asynq's private Redis layout alone (no
	// early unique-lock release, no subscriber check): asynqcompat.Gate
	// refused the linked asynq version.
	SkipAsynqWorkarounds bool
	// KillSwitch, if set, is checked when a chat-LLM task starts.
	KillSwitch KillSwitch
	// LegacyLeader, if set, makes the supervised tasks stand down while the
	// Python supervisor holds its lease (LEGACY_LEADER_KEY).
	LegacyLeader LegacyLeader
	// LegacyRuns, if set, makes a scheduled occurrence stand down while
	// the Python scheduler's last run of its task is recent (the cut-over
	// window; legacyrun.go).
	LegacyRuns LegacyRuns
	// Spend, if set, charges each run's LLM calls to its task and defers
	// the runs of a task whose budget is spent, or whose calls the kill
	// switch refused, instead of failing them (deferral.go).
	Spend Spend
}

// Observer records each run, for metrics. Task names are bounded: a type
// that is not in the catalog is reported as "unknown".
type Observer interface {
	RunStarted(task string)
	RunFinished(r Run)
	// SingletonHeld reports that a singleton run of task took its lease,
	// to be released within timeout; the returned func reports its end.
	SingletonHeld(task string, timeout time.Duration) (released func())
	// StoodDown reports a run refused before it started (StandDown*).
	StoodDown(task, reason string)
}

// Run is a finished run, as an Observer sees it.
type Run struct {
	Task, Status string
	// Class is the class of a failed run's error (timeout, canceled,
	// panic...); "" for a run that did not fail.
	Class string
	// Archived: the run failed for good (no retry left, or not retryable).
	Archived bool
	Elapsed  time.Duration
}

// index maps task names to specs, built once so the per-task middleware
// and retry policy do not scan the catalog for every run.
func index(catalog []jobs.Spec) map[string]jobs.Spec {
	specs := make(map[string]jobs.Spec, len(catalog))
	for _, s := range catalog {
		specs[s.Name] = s
	}
	return specs
}

// NewServer returns an asynq server configured for the catalog's queues.
func NewServer(o Options) *asynq.Server {
	log := o.Logger
	conn := o.Redis
	if !o.SkipAsynqWorkarounds {
		conn = asynqcompat.ServerConn(conn)
	}
	return asynq.NewServer(conn, asynq.Config{
		Concurrency:       o.Concurrency,
		Queues:            jobs.Queues(),
		ShutdownTimeout:   o.ShutdownTimeout,
		TaskCheckInterval: o.TaskCheckInterval,
		RetryDelayFunc:    RetryDelay(o.Catalog),
		Logger:            slogAdapter{log.With("component", "asynq")},
		LogLevel:          asynq.WarnLevel,
		HealthCheckFunc: func(err error) {
			if err != nil {
				log.Error("redis health check failed; asynq keeps retrying", "component", "healthcheck", "error", err)
			}
		},
		// A deferred run waits for its budget; it did not fail.
		IsFailure: func(err error) bool { return !errors.Is(err, ErrDeferred) },
	})
}

// RetryDelay returns asynq's retry delay function for catalog.
//
// A run whose lease expired (its worker died) is retried after a second: it
// has already waited out the lease. Supervised singletons (the original's
// TaskSupervisor loops) back off like the supervisor did: 1 s doubling to
// 60 s. Other tasks back off from 5 s, doubling, capped so that all of a
// periodic task's retries fit in half its period and never pile into the
// next run.
func RetryDelay(catalog []jobs.Spec) asynq.RetryDelayFunc {
	specs := index(catalog)
	return func(n int, err error, t *asynq.Task) time.Duration {
		if errors.Is(err, asynq.ErrLeaseExpired) {
			return time.Second
		}
		// A parked run waits for its deferral's window to end.
		var d interface{ DeferFor() time.Duration }
		if errors.As(err, &d) {
			return max(d.DeferFor(), time.Second)
		}
		// A rate-limited call says when to come back (Retry-After); an hour
		// caps a server that asks for something absurd.
		var ra interface{ RetryAfter() time.Duration }
		if errors.As(err, &ra) && ra.RetryAfter() > 0 {
			return min(ra.RetryAfter(), time.Hour)
		}
		spec, ok := specs[t.Type()]
		if ok && spec.Kind == jobs.Supervised {
			return min(time.Second<<min(n, 6), time.Minute)
		}
		limit := 5 * time.Minute
		if ok && spec.Interval > 0 {
			limit = spec.Interval / time.Duration(2*max(spec.MaxRetry, 1))
			limit = min(max(limit, time.Second), 5*time.Minute)
		}
		return min(5*time.Second<<min(n, 6), limit)
	}
}

// Mux returns a ServeMux with the standard middleware installed. Handlers
// are added by the caller.
func Mux(o Options) *asynq.ServeMux {
	specs := index(o.Catalog)
	mux := asynq.NewServeMux()
	// recoverPanics runs twice: innermost, so that a handler's panic is an
	// ordinary (archived) error before it reaches the middleware holding
	// locks, which then release them on their normal path; and right inside
	// observe, so that a panic in our own middleware is still archived and
	// counted. Every middleware also releases what it took in a defer, which
	// runs on a panic too (docs/scheduling.md lists them).
	mux.Use(observe(o, specs), recoverPanics(o.Logger), standDown(o, specs), standDownForLegacyRuns(o, specs), deferrals(o, specs), singletons(o, specs), recoverPanics(o.Logger))
	return mux
}

// Run statuses.
const (
	StatusOK       = "ok"
	StatusError    = "error"
	StatusPanic    = "panic"
	StatusInvalid  = "invalid"
	StatusNotFound = "not_found"
	StatusSkipped  = "skipped"
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

// singletons holds a cluster-wide lease around every run of a singleton
// task, exposes it to the handler (singleton.Verify), runs the handler
// under the lease's context (cancelled when the lease is lost), and
// releases asynq's enqueue lock when a run ends for good, so a failed or
// archived run never blocks its task until the lock's TTL.
//
// What it takes, and where it is released (in a defer, so on a panic too):
// the lease key and its renewal goroutine (Release; the goroutine also
// stops when the task's context ends), the lease context (Release cancels
// it), the enqueue lock (released when the run is final or panicked), and
// the release deadline (its cancel).
func singletons(o Options, specs map[string]jobs.Spec) asynq.MiddlewareFunc {
	locks := singleton.NewLocks(o.RedisClient, o.SingletonLease, o.Logger.With("component", "singleton"))
	return func(next asynq.Handler) asynq.Handler {
		return asynq.HandlerFunc(func(ctx context.Context, t *asynq.Task) (err error) {
			spec, ok := specs[t.Type()]
			if !ok || !spec.Singleton || o.RedisClient == nil {
				return next.ProcessTask(ctx, t)
			}
			id, _ := asynq.GetTaskID(ctx)
			queue, _ := asynq.GetQueueName(ctx)
			le, err := locks.Acquire(ctx, spec.Name, id)
			if errors.Is(err, singleton.ErrHeld) {
				o.Logger.Info("singleton already running elsewhere; standing down", "task", spec.Name, "task_id", id, "reason", err.Error())
				return fmt.Errorf("%w: %w", err, asynq.RevokeTask)
			}
			if err != nil {
				return err
			}
			timeout := spec.Timeout
			if dl, ok := ctx.Deadline(); ok {
				timeout = time.Until(dl)
			}
			defer o.Metrics.SingletonHeld(spec.Name, timeout)()
			panicked := true
			defer func() {
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
				defer cancel()
				if rerr := le.Release(rctx); rerr != nil {
					o.Logger.Warn("singleton lease not released; it lapses by itself", "task", spec.Name, "task_id", id, "error", rerr)
				}
				// A panic that got this far is archived by the outer
				// recoverPanics: the run is final.
				if !o.SkipAsynqWorkarounds && (panicked || (err != nil && final(ctx, err))) {
					if _, rerr := asynqcompat.ReleaseUnique(rctx, o.RedisClient, queue, t.Type(), t.Payload(), id); rerr != nil {
						o.Logger.Warn("unique lock not released; it lapses at its TTL", "task", spec.Name, "task_id", id, "error", rerr)
					}
				}
			}()
			lctx := le.Context()
			err = next.ProcessTask(singleton.WithLease(lctx, le), t)
			panicked = false
			if err != nil && lctx.Err() != nil && ctx.Err() == nil && !errors.Is(err, singleton.ErrLost) {
				// The run ended because its lease was lost: say so.
				err = fmt.Errorf("%w: %w", err, context.Cause(lctx))
			}
			return err
		})
	}
}

// final reports whether asynq will archive the task rather than retry it.
func final(ctx context.Context, err error) bool {
	retried, _ := asynq.GetRetryCount(ctx)
	maxRetry, _ := asynq.GetMaxRetry(ctx)
	return retried >= maxRetry || errors.Is(err, asynq.SkipRetry)
}

func errorClass(ctx context.Context, err error, status string) string {
	switch {
	case status != StatusError:
		return status
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled) || ctx.Err() != nil:
		return "canceled"
	}
	return "error"
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
	case errors.Is(err, ErrDeferred):
		return StatusDeferred
	case errors.Is(err, asynq.RevokeTask):
		return StatusSkipped
	}
	return StatusError
}

func observe(o Options, specs map[string]jobs.Spec) asynq.MiddlewareFunc {
	return func(next asynq.Handler) asynq.Handler {
		return asynq.HandlerFunc(func(ctx context.Context, t *asynq.Task) error {
			id, _ := asynq.GetTaskID(ctx)
			queue, _ := asynq.GetQueueName(ctx)
			retried, _ := asynq.GetRetryCount(ctx)
			name := t.Type()
			if _, known := specs[name]; !known {
				// Keep label cardinality bounded whatever arrives on the queue.
				name = "unknown"
			}
			log := o.Logger.With("task", t.Type(), "task_id", id, "queue", queue)
			log.Debug("task started", "retried", retried)
			o.Metrics.RunStarted(name)
			// Whatever happens below, the run is reported finished once, so
			// the in-flight gauge never stays up (a panic in this
			// middleware's own code).
			reported := false
			defer func() {
				if !reported {
					o.Metrics.RunFinished(Run{Task: name, Status: StatusPanic, Class: StatusPanic})
				}
			}()
			start := time.Now()

			err := next.ProcessTask(ctx, t)
			if errors.Is(err, asynq.ErrHandlerNotFound) {
				// No handler here means this deployment lacks the task's
				// dependency: retrying cannot help.
				err = fmt.Errorf("%w (its dependencies are not configured on this worker): %w", err, asynq.SkipRetry)
			}

			elapsed := time.Since(start)
			status := classify(err)
			run := Run{Task: name, Status: status, Elapsed: elapsed,
				Archived: err != nil && status != StatusSkipped && status != StatusDeferred && final(ctx, err)}
			if err != nil && status != StatusSkipped && status != StatusDeferred {
				run.Class = errorClass(ctx, err, status)
			}
			o.Metrics.RunFinished(run)
			reported = true
			archived := run.Archived
			errMsg := ""
			if status == StatusDeferred {
				log.Info("task finished", "status", status, "duration_ms", elapsed.Milliseconds(), "reason", err.Error())
			} else if err != nil {
				errMsg = err.Error()
				maxRetry, _ := asynq.GetMaxRetry(ctx)
				log.Warn("task finished", "status", status, "duration_ms", elapsed.Milliseconds(), "error", errMsg,
					"retried", retried, "max_retry", maxRetry, "archived", archived)
			} else {
				log.Info("task finished", "status", status, "duration_ms", elapsed.Milliseconds())
			}
			// One event per run outcome, as the original had one per run:
			// a success, or a failure for good. An attempt that will be
			// retried, or a run that stood down, publishes none (the logs,
			// the metrics and asynqmon show those); docs/migration.md.
			if o.Events != nil && (status == StatusOK || archived) {
				publish(o.Events, log, t.Type(), id, status, errMsg, elapsed)
			}
			return err
		})
	}
}

// publish queues the original's scheduler_task_run event without delaying
// the task: it is fire-and-forget, as it was in the original.
func publish(p *events.Async, log *slog.Logger, task, id, status, errMsg string, elapsed time.Duration) {
	evStatus := "ok"
	if status != StatusOK {
		evStatus = "error"
	}
	e := events.Event{
		Topic: "scheduler_task_run", Source: "scheduler", Status: evStatus,
		DurationMS: float64(elapsed.Microseconds()) / 1000,
		Preview:    fmt.Sprintf("task=%s status=%s", task, evStatus),
		Payload:    map[string]any{"task": task, "error": errMsg, "task_id": id, "origin": events.Origin},
	}
	if !p.Offer(e) {
		log.Debug("debug event dropped: the event buffer is full")
	}
}

type slogAdapter struct{ l *slog.Logger }

func (a slogAdapter) Debug(args ...any) { a.l.Debug(fmt.Sprint(args...)) }
func (a slogAdapter) Info(args ...any)  { a.l.Info(fmt.Sprint(args...)) }
func (a slogAdapter) Warn(args ...any)  { a.l.Warn(fmt.Sprint(args...)) }
func (a slogAdapter) Error(args ...any) { a.l.Error(fmt.Sprint(args...)) }
func (a slogAdapter) Fatal(args ...any) { a.l.Error(fmt.Sprint(args...)); os.Exit(1) }
