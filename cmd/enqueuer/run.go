package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/hibiken/asynq"
	"github.com/spf13/cobra"

	"github.com/stargazer/stargazer-jobs/internal/queue/enqueue"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// timeValue is an optional RFC 3339 time flag.
type timeValue struct{ t **time.Time }

func (v timeValue) String() string {
	if *v.t == nil {
		return ""
	}
	return (*v.t).Format(time.RFC3339)
}

func (v timeValue) Set(s string) error {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return fmt.Errorf("want RFC 3339, e.g. 2026-12-01T09:00:00Z")
	}
	*v.t = &t
	return nil
}

func (timeValue) Type() string { return "time" }

// completeTasks offers the catalog's enqueueable task names.
func completeTasks(_ *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []cobra.Completion
	for _, s := range jobs.Catalog() {
		if s.Kind != jobs.NodeLocal {
			out = append(out, cobra.CompletionWithDesc(s.Name, s.Summary))
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

func completeQueues(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
	var out []cobra.Completion
	for q := range jobs.Queues() {
		out = append(out, q)
	}
	slices.Sort(out)
	return out, cobra.ShellCompDirectiveNoFileComp
}

func (c *cli) runCmd() *cobra.Command {
	var (
		req         enqueue.Request
		payload     string
		in, unique  time.Duration
		timeout     time.Duration
		maxRetry    int
		wait        bool
		waitTimeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "run NAME",
		Short: "Enqueue one run of a catalog task and print its ID",
		Long: `Enqueue one run of a catalog task and print its ID. The request is validated
exactly as POST /api/v1/tasks validates it. A singleton (or --unique) task
that is already queued or running is refused (exit 1).

Bounds: --in and --at at most 30 days ahead, --unique at most 7 days
(168h), --timeout at most 24h.`,
		Example: `  enqueuer run scheduled_prompt_cleanup --payload '{"days_to_keep":3}'
  enqueuer run kg_decay_task --in 10m --max-retry 0
  enqueuer run channel_summarization --wait`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeTasks,
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			req.Task, req.Payload = name, json.RawMessage(payload)
			req.In = enqueue.Duration(in)
			// Given, even as 0, they are checked against their range.
			if cmd.Flags().Changed("unique") {
				u := enqueue.Duration(unique)
				req.Unique = &u
			}
			if cmd.Flags().Changed("timeout") {
				d := enqueue.Duration(timeout)
				req.Timeout = &d
			}
			if cmd.Flags().Changed("max-retry") {
				req.MaxRetry = &maxRetry
			}
			prep, err := enqueue.Prepare(jobs.Catalog(), req, time.Now())
			if err != nil {
				if errors.Is(err, enqueue.ErrUnknownTask) {
					return usageError("%v\n`enqueuer list` shows the catalog", err)
				}
				return usageError("%v", err)
			}
			rdb, err := c.connect(cmd.Context())
			if err != nil {
				return err
			}
			defer rdb.Close()
			client := asynq.NewClientFromRedisClient(rdb)
			defer client.Close()
			ectx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			info, err := enqueue.Submit(ectx, client, prep)
			if errors.Is(err, enqueue.ErrSingletonBusy) {
				return failure("refused: %s is a singleton or unique task and a copy is already queued or running; `enqueuer locks` shows it", name)
			}
			if err != nil {
				return failure("could not enqueue %s on Redis at %s: %v", name, rdb.Options().Addr, err)
			}
			fmt.Fprintln(c.stdout, info.ID)
			if !wait {
				return nil
			}
			insp := asynq.NewInspectorFromRedisClient(rdb)
			defer insp.Close()
			return waitFor(cmd.Context(), insp, info.Queue, info.ID, waitTimeout, c.stdout)
		},
	}
	f := cmd.Flags()
	f.StringVar(&payload, "payload", "", "task payload as a JSON object (default: the task's defaults)")
	f.StringVar(&req.Queue, "queue", "", "queue to use instead of the task's (critical, default, embeddings, maintenance)")
	f.DurationVar(&in, "in", 0, "run after this delay, e.g. 10m (at most 720h)")
	f.Var(timeValue{&req.At}, "at", "run at this time (RFC 3339), at most 30 days ahead")
	f.DurationVar(&unique, "unique", 0, "refuse while a copy with the same payload is queued or running, for this long (1s to 168h; singletons always are)")
	f.IntVar(&maxRetry, "max-retry", 0, "retries before the task is archived, 0-100 (default: the task's)")
	f.DurationVar(&timeout, "timeout", 0, "time limit of one attempt, 1s to 24h (default: the task's)")
	f.BoolVar(&wait, "wait", false, "block until the task finishes; print its status and result; exit 1 if it failed")
	f.DurationVar(&waitTimeout, "wait-timeout", time.Hour, "give up waiting after this long (exit 1)")
	_ = cmd.RegisterFlagCompletionFunc("queue", completeQueues)
	return cmd
}

// waitFor polls the task until it completes or is archived.
func waitFor(ctx context.Context, insp *asynq.Inspector, queue, id string, limit time.Duration, stdout io.Writer) error {
	deadline := time.Now().Add(limit)
	for {
		ti, err := insp.GetTaskInfo(queue, id)
		switch {
		case errors.Is(err, asynq.ErrTaskNotFound):
			return failure("task %s disappeared (deleted from the dashboard?)", id)
		case err != nil:
			return failure("reading task %s: %v", id, err)
		case ti.State == asynq.TaskStateCompleted:
			printStatus(stdout, ti)
			return nil
		case ti.State == asynq.TaskStateArchived:
			printStatus(stdout, ti)
			return failure("task %s failed", id)
		}
		if time.Now().After(deadline) {
			printStatus(stdout, ti)
			return failure("gave up waiting after %v; the task is still %s", limit, ti.State)
		}
		select {
		case <-ctx.Done():
			return failure("%v", ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func printStatus(w io.Writer, ti *asynq.TaskInfo) {
	state := ti.State.String()
	if d, ok := deferredState(ti); ok {
		state = d + " (waits in the retry set; no retry counted)"
	}
	fmt.Fprintf(w, "id:          %s\ntask:        %s\nqueue:       %s\nstate:       %s\nretried:     %d of %d\n",
		ti.ID, ti.Type, ti.Queue, state, ti.Retried, ti.MaxRetry)
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

type taskStatus struct {
	ID          string          `json:"id"`
	Task        string          `json:"task"`
	Queue       string          `json:"queue"`
	State       string          `json:"state"`
	Retried     int             `json:"retried"`
	MaxRetry    int             `json:"max_retry"`
	LastError   string          `json:"last_error,omitempty"`
	Deferred    string          `json:"deferred,omitempty"`
	NextRunAt   *time.Time      `json:"next_run_at,omitempty"`
	CompletedAt *time.Time      `json:"completed_at,omitempty"`
	Result      json.RawMessage `json:"result,omitempty"`
}

func (c *cli) statusCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status [ID]",
		Short: "A task's state, retries, last error and result; without ID, the cut-over's",
		Long: `A task's state, retries, last error and result, looked up in every queue.
Finished tasks enqueued by hand are kept for a day.

Without an ID: the coexistence with the Python scheduler during a cut-over
(docs/migration.md): who holds the Python supervisor's lease, the cut-over
window, and the tasks the Python scheduler was seen running while the Go
workers schedule them.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				rs, err := c.connectBoth(cmd.Context())
				if err != nil {
					return err
				}
				defer rs.Close()
				return c.cutoverStatus(cmd.Context(), rs, asJSON)
			}
			rdb, err := c.connect(cmd.Context())
			if err != nil {
				return err
			}
			defer rdb.Close()
			insp := asynq.NewInspectorFromRedisClient(rdb)
			defer insp.Close()
			queues, err := insp.Queues()
			if err != nil {
				return failure("listing queues: %v", err)
			}
			for _, q := range queues {
				ti, err := insp.GetTaskInfo(q, args[0])
				if err != nil {
					continue
				}
				if !asJSON {
					printStatus(c.stdout, ti)
					return nil
				}
				st := taskStatus{ID: ti.ID, Task: ti.Type, Queue: ti.Queue, State: ti.State.String(),
					Retried: ti.Retried, MaxRetry: ti.MaxRetry, LastError: ti.LastErr, CompletedAt: timePtr(ti.CompletedAt)}
				st.Deferred, _ = deferredState(ti)
				if ti.State != asynq.TaskStateCompleted && ti.State != asynq.TaskStateArchived {
					st.NextRunAt = timePtr(ti.NextProcessAt)
				}
				if json.Valid(ti.Result) {
					st.Result = ti.Result
				}
				return c.printJSON(st)
			}
			return failure("no task %s in any queue (finished tasks are kept for a day when enqueued by hand)", args[0])
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON object")
	return cmd
}
