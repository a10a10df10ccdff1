package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/config"
	"github.com/stargazer/stargazer-jobs/internal/queue/enqueue"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// durationFlag is an optional duration flag.
type durationFlag struct{ d *time.Duration }

func (f durationFlag) String() string {
	if f.d == nil {
		return ""
	}
	return f.d.String()
}

func (f durationFlag) Set(v string) error {
	d, err := time.ParseDuration(v)
	if err != nil {
		return err
	}
	*f.d = d
	return nil
}

// timeFlag is an optional RFC 3339 time flag.
type timeFlag struct{ t **time.Time }

func (f timeFlag) String() string {
	if f.t == nil || *f.t == nil {
		return ""
	}
	return (*f.t).Format(time.RFC3339)
}

func (f timeFlag) Set(v string) error {
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return fmt.Errorf("want RFC 3339, e.g. 2026-12-01T09:00:00Z: %w", err)
	}
	*f.t = &t
	return nil
}

// intFlag is an optional int flag.
type intFlag struct{ n **int }

func (f intFlag) String() string {
	if f.n == nil || *f.n == nil {
		return ""
	}
	return fmt.Sprint(**f.n)
}

func (f intFlag) Set(v string) error {
	var n int
	if _, err := fmt.Sscan(v, &n); err != nil {
		return err
	}
	*f.n = &n
	return nil
}

func runTask(ctx context.Context, cfg config.Config, args []string, stdout, stderr io.Writer) int {
	var (
		req                 enqueue.Request
		payload             string
		in, unique, timeout time.Duration
		wait                bool
		waitTimeout         time.Duration
	)
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&payload, "payload", "", "task payload as a JSON object (default: the task's defaults)")
	fs.StringVar(&req.Queue, "queue", "", "queue to use instead of the task's (critical, default, maintenance)")
	fs.Var(durationFlag{&in}, "in", "run after this delay, e.g. 10m")
	fs.Var(timeFlag{&req.At}, "at", "run at this time (RFC 3339)")
	fs.Var(durationFlag{&unique}, "unique", "refuse while a copy with the same payload is queued or running, for this long (singletons always are)")
	fs.Var(intFlag{&req.MaxRetry}, "max-retry", "retries before the task is archived (default: the task's)")
	fs.Var(durationFlag{&timeout}, "timeout", "time limit of one attempt (default: the task's)")
	fs.BoolVar(&wait, "wait", false, "block until the task finishes; print its status and result; exit 1 if it failed")
	fs.DurationVar(&waitTimeout, "wait-timeout", time.Hour, "give up waiting after this long (exit 1)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: enqueuer run NAME [flags]\n\nEnqueue one run of a catalog task and print its ID.\n\nFlags:")
		fs.PrintDefaults()
	}
	var name string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		name, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return flagExit(err)
	}
	if name == "" && fs.NArg() > 0 {
		name = fs.Arg(0)
	}
	if name == "" {
		fs.Usage()
		return exitUsage
	}
	req.Task, req.Payload = name, json.RawMessage(payload)
	req.In, req.Unique, req.Timeout = enqueue.Duration(in), enqueue.Duration(unique), enqueue.Duration(timeout)
	prep, err := enqueue.Prepare(jobs.Catalog(), req, time.Now())
	if err != nil {
		fmt.Fprintf(stderr, "enqueuer: %v\n", err)
		if errors.Is(err, enqueue.ErrUnknownTask) {
			fmt.Fprintln(stderr, "`enqueuer list` shows the catalog")
		}
		return exitUsage
	}
	rdb, code := connect(ctx, cfg, stderr)
	if code != exitOK {
		return code
	}
	defer rdb.Close()
	client := asynq.NewClientFromRedisClient(rdb)
	defer client.Close()
	ectx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	info, err := enqueue.Submit(ectx, client, prep)
	if errors.Is(err, enqueue.ErrSingletonBusy) {
		fmt.Fprintf(stderr, "enqueuer: refused: %s is a singleton or unique task and a copy is already queued or running; `enqueuer locks` shows it\n", name)
		return exitFailure
	}
	if err != nil {
		fmt.Fprintf(stderr, "enqueuer: could not enqueue %s on Redis at %s: %v\n", name, rdb.Options().Addr, err)
		return exitFailure
	}
	fmt.Fprintln(stdout, info.ID)
	if !wait {
		return exitOK
	}
	insp := asynq.NewInspectorFromRedisClient(rdb)
	defer insp.Close()
	return waitFor(ctx, insp, info.Queue, info.ID, waitTimeout, stdout, stderr)
}

// waitFor polls the task until it completes or is archived.
func waitFor(ctx context.Context, insp *asynq.Inspector, queue, id string, limit time.Duration, stdout, stderr io.Writer) int {
	deadline := time.Now().Add(limit)
	for {
		ti, err := insp.GetTaskInfo(queue, id)
		switch {
		case errors.Is(err, asynq.ErrTaskNotFound):
			fmt.Fprintf(stderr, "enqueuer: task %s disappeared (deleted from the dashboard?)\n", id)
			return exitFailure
		case err != nil:
			fmt.Fprintf(stderr, "enqueuer: reading task %s: %v\n", id, err)
			return exitFailure
		case ti.State == asynq.TaskStateCompleted:
			printStatus(stdout, ti)
			return exitOK
		case ti.State == asynq.TaskStateArchived:
			printStatus(stdout, ti)
			return exitFailure
		}
		if time.Now().After(deadline) {
			printStatus(stdout, ti)
			fmt.Fprintf(stderr, "enqueuer: gave up waiting after %v; the task is still %s\n", limit, ti.State)
			return exitFailure
		}
		select {
		case <-ctx.Done():
			return exitFailure
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func printStatus(w io.Writer, ti *asynq.TaskInfo) {
	fmt.Fprintf(w, "id:          %s\ntask:        %s\nqueue:       %s\nstate:       %s\nretried:     %d of %d\n",
		ti.ID, ti.Type, ti.Queue, ti.State, ti.Retried, ti.MaxRetry)
	if ti.LastErr != "" {
		fmt.Fprintf(w, "last error:  %s\n", ti.LastErr)
	}
	if !ti.NextProcessAt.IsZero() && ti.State != asynq.TaskStateCompleted && ti.State != asynq.TaskStateArchived {
		fmt.Fprintf(w, "next run at: %s\n", ti.NextProcessAt.Format(time.RFC3339))
	}
	if !ti.CompletedAt.IsZero() {
		fmt.Fprintf(w, "completed:   %s\n", ti.CompletedAt.Format(time.RFC3339))
	}
	if len(ti.Result) > 0 {
		fmt.Fprintf(w, "result:      %s\n", ti.Result)
	}
}

func status(ctx context.Context, cfg config.Config, args []string, stdout, stderr io.Writer) int {
	if len(args) != 1 || strings.HasPrefix(args[0], "-") {
		fmt.Fprintln(stderr, "usage: enqueuer status ID\n\nPrint a task's state, retries, last error and result.")
		if len(args) == 1 && (args[0] == "-h" || args[0] == "--help") {
			return exitOK
		}
		return exitUsage
	}
	rdb, code := connect(ctx, cfg, stderr)
	if code != exitOK {
		return code
	}
	defer rdb.Close()
	insp := asynq.NewInspectorFromRedisClient(rdb)
	defer insp.Close()
	queues, err := insp.Queues()
	if err != nil {
		fmt.Fprintf(stderr, "enqueuer: listing queues: %v\n", err)
		return exitFailure
	}
	for _, q := range queues {
		ti, err := insp.GetTaskInfo(q, args[0])
		if err == nil {
			printStatus(stdout, ti)
			return exitOK
		}
	}
	fmt.Fprintf(stderr, "enqueuer: no task %s in any queue (finished tasks are kept for a day when enqueued by hand)\n", args[0])
	return exitFailure
}
