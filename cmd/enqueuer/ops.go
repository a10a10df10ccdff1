package main

import (
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/hibiken/asynq"
	"github.com/spf13/cobra"

	"github.com/stargazer/stargazer-jobs/internal/queue/periodic"
	"github.com/stargazer/stargazer-jobs/internal/queue/singleton"
	"github.com/stargazer/stargazer-jobs/internal/spend"
	"github.com/stargazer/stargazer-jobs/jobs"
)

type scheduleEntry struct {
	Name        string     `json:"name"`
	Interval    float64    `json:"interval_seconds"`
	Next        *time.Time `json:"next_run"`
	LastRun     *time.Time `json:"last_run"`
	LastTaskID  string     `json:"last_task_id"`
	LastOutcome string     `json:"last_outcome"`
	LastStatus  string     `json:"last_status"`
	LastError   string     `json:"last_error"`
	// PythonRuns is what was seen of the task's runs in the Python
	// scheduler while the Go side scheduled it (nil: none).
	PythonRuns *legacyRun `json:"python_runs"`
	// Deferred is "deferred: budget until <time>" (or kill_switch) while
	// the task's LLM work is deferred: its occurrences wait.
	Deferred string `json:"deferred,omitempty"`
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func (c *cli) schedulesCmd() *cobra.Command {
	var asJSON, wide bool
	cmd := &cobra.Command{
		Use:   "schedules",
		Short: "Each periodic task's next run, last run and last status",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			rdb, err := c.connect(ctx)
			if err != nil {
				return err
			}
			defer rdb.Close()
			insp := asynq.NewInspectorFromRedisClient(rdb)
			defer insp.Close()
			runs, err := legacyRuns(ctx, rdb)
			if err != nil {
				return failure("%v", err)
			}
			deferrals, err := spend.Deferrals(ctx, rdb)
			if err != nil {
				return failure("%v", err)
			}
			deferred := map[string]string{}
			for _, d := range deferrals {
				deferred[d.Task] = d.State()
			}
			var out []scheduleEntry
			for _, spec := range jobs.Catalog() {
				st, found, err := periodic.ReadState(ctx, rdb, spec.Name)
				if err != nil {
					return failure("%v", err)
				}
				if !found {
					continue
				}
				e := scheduleEntry{
					Name: spec.Name, Interval: st.Interval.Seconds(), Next: timePtr(st.Next),
					LastRun: timePtr(st.LastRun), LastTaskID: st.LastTaskID, LastOutcome: st.LastOutcome,
					Deferred: deferred[spec.Name],
				}
				if r, ok := runs[spec.Name]; ok {
					e.PythonRuns = &r
				}
				if st.LastTaskID != "" {
					if info, err := insp.GetTaskInfo(spec.Queue, st.LastTaskID); err == nil {
						e.LastStatus, e.LastError = info.State.String(), info.LastErr
					} else {
						e.LastStatus = "gone"
					}
				}
				out = append(out, e)
			}
			if asJSON {
				return c.printJSON(out)
			}
			if len(out) == 0 {
				fmt.Fprintln(c.stdout, "no schedules yet: no scheduler has run against this Redis")
				return nil
			}
			now := time.Now()
			var rows [][]string
			for _, e := range out {
				next, last := "-", "-"
				if e.Next != nil {
					next = "in " + short(e.Next.Sub(now))
					if wide {
						next = fmt.Sprintf("%s (%s)", e.Next.Format(time.RFC3339), next)
					}
				}
				if e.LastRun != nil {
					last = short(now.Sub(*e.LastRun)) + " ago"
					if wide {
						last = fmt.Sprintf("%s (%s)", e.LastRun.Format(time.RFC3339), last)
					}
				}
				status := e.LastStatus
				if e.Deferred != "" {
					status = e.Deferred + "; last run: " + status
				}
				if e.LastOutcome != "" && e.LastOutcome != periodic.OutcomeEnqueued {
					status += " (last occurrence: " + e.LastOutcome + ")"
				}
				if e.LastError != "" {
					status += ": " + e.LastError
				}
				if r := e.PythonRuns; r != nil {
					status = pythonRunNote(*r, now) + "; " + status
				}
				rows = append(rows, []string{e.Name, short(time.Duration(e.Interval * float64(time.Second))), next, last, status})
			}
			table(c.stdout, wide, []string{"NAME", "EVERY", "NEXT RUN", "LAST RUN", "LAST STATUS"}, rows)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array")
	cmd.Flags().BoolVar(&wide, "wide", false, "full times and errors, lines not cut to 100 columns")
	return cmd
}

func singletonQueues() map[string]string {
	m := map[string]string{}
	for _, s := range jobs.Catalog() {
		if s.Singleton {
			m[s.Name] = s.Queue
		}
	}
	return m
}

func (c *cli) locksCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "locks",
		Short: "Who holds each singleton's locks, and for how long",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			rdb, err := c.connect(ctx)
			if err != nil {
				return err
			}
			defer rdb.Close()
			hs, err := singleton.List(ctx, rdb, singletonQueues())
			if err != nil {
				return failure("%v", err)
			}
			if len(hs) == 0 {
				fmt.Fprintln(c.stdout, "no singleton locks held")
				return nil
			}
			sort.Slice(hs, func(i, j int) bool { return hs[i].Task+hs[i].Kind < hs[j].Task+hs[j].Kind })
			var rows [][]string
			for _, h := range hs {
				kind := "run lease (running)"
				if h.Kind == "unique" {
					kind = "enqueue lock (queued or running)"
				}
				rows = append(rows, []string{h.Task, kind, h.TTL.Round(time.Second).String(), h.TaskID})
			}
			table(c.stdout, false, []string{"TASK", "LOCK", "EXPIRES IN", "HELD BY TASK ID"}, rows)
			return nil
		},
	}
}

func (c *cli) unlockCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "unlock NAME",
		Short: "Force-release the locks of singleton NAME",
		Long: `Force-release the locks of singleton NAME. A run still in progress fails its
next ownership check (singleton.Verify) instead of finishing its work.`,
		Args: cobra.ExactArgs(1),
		ValidArgsFunction: func(_ *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
			if len(args) > 0 {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			var out []cobra.Completion
			for name := range singletonQueues() {
				out = append(out, name)
			}
			slices.Sort(out)
			return out, cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			queue, ok := singletonQueues()[name]
			if !ok {
				return usageError("%q is not a singleton task; `enqueuer list` shows the catalog", name)
			}
			rdb, err := c.connect(cmd.Context())
			if err != nil {
				return err
			}
			defer rdb.Close()
			n, err := singleton.ForceRelease(cmd.Context(), rdb, name, queue)
			if err != nil {
				return failure("%v", err)
			}
			fmt.Fprintf(c.stdout, "released %d lock(s) of %s; a run still in progress will fail its next ownership check\n", n, name)
			return nil
		},
	}
}
