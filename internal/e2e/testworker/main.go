// Command testworker is the real worker with two extra tasks whose runs are
// recorded in Redis, so the multi-process tests can see exactly what ran,
// where, when, and whether a destructive step was allowed.
//
//   - e2e_plain: a periodic task;
//
//   - e2e_single: a singleton that, after its work, performs a "destructive
//     step" only if singleton.Verify passes.
//
//   - e2e_panic: panics, for the bad-input scenarios.
//
// A run of e2e_plain or e2e_single panics, once, when the key
// e2e:panic:<task> exists (PanicPrefix): a singleton whose handler meets
// an unexpected graph row.
//
// E2E_PERIODIC=N adds N periodic tasks e2e_p00, e2e_p01... every second
// (TASK_INTERVALS can change them), recorded like e2e_plain: the fleet
// benchmarks' and the many-pods test's fast periodic load.
//
// E2E_SLEEP sets how long each run of e2e_plain and e2e_single works (the
// E2E_PERIODIC tasks do not sleep). E2E_RUNLOG, if set, is a file
// that every completed run is also appended to, so a test can count runs
// even when Redis itself lost writes (a failover).
//
// Two offsets move the worker's clock (app.Params.Now: the scheduler, the
// handlers, the cut-over detector, the LLM budget windows) from the real
// one; with both set they add up. With E2E_CLOCK=1 it is the offset in
// milliseconds held by the key e2e:clock:offset_ms (ClockKey), read every
// 50 ms, so a test moves every worker to the next UTC day at once.
// E2E_CLOCK_FILE names a file holding a duration ("4s", "-2.5s"), read
// every 200 ms, so a test can skew one running worker and set it right
// again; a missing or empty file is no offset. These are test-worker
// options, not production settings.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/app"
	"github.com/stargazer/stargazer-jobs/internal/config"
	"github.com/stargazer/stargazer-jobs/internal/queue/singleton"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// Keys the tests read.
const (
	RunsKey        = "e2e:runs"        // list of "task|taskID|pid|start_ms|end_ms"
	ActivePrefix   = "e2e:active:"     // counter of runs in progress, per task
	OverlapsKey    = "e2e:overlaps"    // list of task names seen running twice at once
	DestroyedKey   = "e2e:destructive" // list of task IDs whose destructive step ran
	RefusedKey     = "e2e:refused"     // list of "taskID|reason" refused by Verify
	StartedChannel = "e2e:started"     // pub/sub: "task|taskID|pid" when a run starts
	PanicPrefix    = "e2e:panic:"      // if e2e:panic:<task> exists, the next run of task deletes it and panics
	PanickedKey    = "e2e:panicked"    // list of "task|taskID|pid" of runs that panicked
	ClockKey       = "e2e:clock:offset_ms"
)

// keyOffsetClock is base plus the offset in milliseconds a test keeps in
// ClockKey, re-read every 50 ms; while Redis does not answer, the last
// offset read holds.
func keyOffsetClock(ctx context.Context, rdb *redis.Client, base func() time.Time) func() time.Time {
	return offsetClock(ctx, 50*time.Millisecond, base, func() (time.Duration, bool) {
		n, err := rdb.Get(ctx, ClockKey).Int64()
		return time.Duration(n) * time.Millisecond, err == nil
	})
}

// fileOffsetClock is base offset by the duration in the file at path,
// re-read every 200 ms; a missing, empty or unreadable file is no offset.
func fileOffsetClock(ctx context.Context, path string, base func() time.Time) func() time.Time {
	return offsetClock(ctx, 200*time.Millisecond, base, func() (time.Duration, bool) {
		b, err := os.ReadFile(path)
		d, perr := time.ParseDuration(strings.TrimSpace(string(b)))
		if err != nil || perr != nil {
			d = 0
		}
		return d, true
	})
}

// offsetClock is base plus the offset read returns, read now and then
// every interval until ctx ends, so a test can move a running worker's
// clock and no caller of the clock waits on a read. A read that is not ok
// leaves the last offset in place.
func offsetClock(ctx context.Context, every time.Duration, base func() time.Time, read func() (d time.Duration, ok bool)) func() time.Time {
	var offset atomic.Int64
	load := func() {
		if d, ok := read(); ok {
			offset.Store(int64(d))
		}
	}
	load()
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				load()
			}
		}
	}()
	return func() time.Time { return base().Add(time.Duration(offset.Load())) }
}

// PeriodicName is the name of the i-th E2E_PERIODIC task.
func PeriodicName(i int) string { return fmt.Sprintf("e2e_p%02d", i) }

func specs(periodic int) []jobs.Spec {
	empty := func() jobs.Payload { return &jobs.Empty{} }
	var out []jobs.Spec
	for i := range periodic {
		out = append(out, jobs.Spec{Name: PeriodicName(i), Kind: jobs.Periodic, Interval: time.Second, Queue: jobs.QueueDefault,
			MaxRetry: 3, Timeout: time.Minute, NewPayload: empty, Summary: "fast periodic test task"})
	}
	return append(out, []jobs.Spec{
		{Name: "e2e_plain", Kind: jobs.Periodic, Interval: time.Hour, Queue: jobs.QueueDefault,
			MaxRetry: 3, Timeout: 10 * time.Minute, NewPayload: empty, Summary: "test task"},
		{Name: "e2e_single", Kind: jobs.Supervised, Interval: time.Hour, Queue: jobs.QueueMaintenance, Singleton: true,
			MaxRetry: 3, Timeout: 10 * time.Minute, NewPayload: empty, Summary: "test singleton"},
		{Name: "e2e_panic", Kind: jobs.Child, Queue: jobs.QueueDefault,
			MaxRetry: 3, Timeout: time.Minute, NewPayload: empty, Summary: "panics"},
	}...)
}

func handler(rdb *redis.Client, sleep time.Duration, runlog *os.File) asynq.HandlerFunc {
	pid := os.Getpid()
	return func(ctx context.Context, t *asynq.Task) error {
		id, _ := asynq.GetTaskID(ctx)
		bg := context.WithoutCancel(ctx)
		start := time.Now()
		if n, _ := rdb.Incr(bg, ActivePrefix+t.Type()).Result(); n > 1 {
			rdb.RPush(bg, OverlapsKey, t.Type())
		}
		rdb.Publish(bg, StartedChannel, fmt.Sprintf("%s|%s|%d", t.Type(), id, pid))
		defer rdb.Decr(bg, ActivePrefix+t.Type())
		if n, _ := rdb.Del(bg, PanicPrefix+t.Type()).Result(); n == 1 {
			rdb.RPush(bg, PanickedKey, fmt.Sprintf("%s|%s|%d", t.Type(), id, pid))
			var row map[string]any
			_ = row["name"].(string) // an unexpected graph row: a nil interface conversion panics
		}
		d := sleep
		if strings.HasPrefix(t.Type(), "e2e_p") && t.Type() != "e2e_plain" {
			d = 0 // the E2E_PERIODIC tasks are the no-op load
		}
		select {
		case <-time.After(d):
		case <-ctx.Done():
			// A run whose singleton lease was lost is stopped before its
			// destructive step: record it as refused.
			if cause := context.Cause(ctx); errors.Is(cause, singleton.ErrLost) {
				rdb.RPush(bg, RefusedKey, id+"|"+cause.Error())
				return cause
			}
			return ctx.Err()
		}
		if t.Type() == "e2e_single" {
			if err := singleton.Verify(ctx); err != nil {
				rdb.RPush(bg, RefusedKey, id+"|"+err.Error())
				return fmt.Errorf("destructive step refused: %w: %w", err, asynq.SkipRetry)
			}
			rdb.RPush(bg, DestroyedKey, id)
		}
		line := fmt.Sprintf("%s|%s|%d|%d|%d", t.Type(), id, pid, start.UnixMilli(), time.Now().UnixMilli())
		if runlog != nil {
			_, _ = runlog.WriteString(line + "\n")
		}
		rdb.RPush(bg, RunsKey, line)
		return nil
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	rconf, err := config.Config{RedisURL: os.Getenv("REDIS_URL")}.Redis()
	if err != nil {
		fmt.Fprintln(os.Stderr, "testworker: REDIS_URL:", err)
		os.Exit(2)
	}
	rdb := rconf.NewClient()
	defer rdb.Close()
	sleep, _ := time.ParseDuration(os.Getenv("E2E_SLEEP"))
	var runlog *os.File
	if path := os.Getenv("E2E_RUNLOG"); path != "" {
		if runlog, err = os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "testworker: E2E_RUNLOG:", err)
			os.Exit(2)
		}
		defer runlog.Close()
	}
	now := time.Now
	if os.Getenv("E2E_CLOCK") == "1" {
		now = keyOffsetClock(ctx, rdb, now)
	}
	if path := os.Getenv("E2E_CLOCK_FILE"); path != "" {
		now = fileOffsetClock(ctx, path, now)
	}
	periodic := 0
	if v := os.Getenv("E2E_PERIODIC"); v != "" {
		if periodic, err = strconv.Atoi(v); err != nil || periodic < 0 || periodic > 100 {
			fmt.Fprintln(os.Stderr, "testworker: E2E_PERIODIC must be a count from 0 to 100")
			os.Exit(2)
		}
	}
	h := handler(rdb, sleep, runlog)
	panics := asynq.HandlerFunc(func(context.Context, *asynq.Task) error { panic("e2e_panic always panics") })
	extra := map[string]asynq.Handler{"e2e_plain": h, "e2e_single": h, "e2e_panic": panics}
	for i := range periodic {
		extra[PeriodicName(i)] = h
	}
	err = app.Run(ctx, app.Params{
		Args: os.Args[1:], Getenv: os.Getenv, Stdout: os.Stdout, Stderr: os.Stderr,
		Catalog: append(jobs.Catalog(), specs(periodic)...),
		Extra:   extra,
		Now:     now,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "testworker:", err)
		os.Exit(1)
	}
}
