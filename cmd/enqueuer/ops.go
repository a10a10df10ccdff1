package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/config"
	"github.com/stargazer/stargazer-jobs/internal/queue/periodic"
	"github.com/stargazer/stargazer-jobs/internal/queue/singleton"
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
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func schedules(ctx context.Context, cfg config.Config, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("schedules", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print a JSON array")
	fs.Usage = func() { fmt.Fprintln(stderr, "usage: enqueuer schedules [--json]") }
	if err := fs.Parse(args); err != nil {
		return flagExit(err)
	}
	rdb, code := connect(ctx, cfg, stderr)
	if code != exitOK {
		return code
	}
	defer rdb.Close()
	insp := asynq.NewInspectorFromRedisClient(rdb)
	defer insp.Close()
	var out []scheduleEntry
	for _, spec := range jobs.Catalog() {
		st, found, err := periodic.ReadState(ctx, rdb, spec.Name)
		if err != nil {
			fmt.Fprintf(stderr, "enqueuer: %v\n", err)
			return exitFailure
		}
		if !found {
			continue
		}
		e := scheduleEntry{
			Name: spec.Name, Interval: st.Interval.Seconds(), Next: timePtr(st.Next),
			LastRun: timePtr(st.LastRun), LastTaskID: st.LastTaskID, LastOutcome: st.LastOutcome,
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
	if *asJSON {
		return printJSON(stdout, stderr, out)
	}
	if len(out) == 0 {
		fmt.Fprintln(stdout, "no schedules yet: no scheduler has run against this Redis")
		return exitOK
	}
	now := time.Now()
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tEVERY\tNEXT RUN\tLAST RUN\tLAST STATUS")
	for _, e := range out {
		next, last := "-", "-"
		if e.Next != nil {
			next = fmt.Sprintf("%s (in %s)", e.Next.Format(time.RFC3339), e.Next.Sub(now).Round(time.Second))
		}
		if e.LastRun != nil {
			last = fmt.Sprintf("%s (%s ago)", e.LastRun.Format(time.RFC3339), now.Sub(*e.LastRun).Round(time.Second))
		}
		status := e.LastStatus
		if e.LastOutcome != "" && e.LastOutcome != periodic.OutcomeEnqueued {
			status += " (last occurrence: " + e.LastOutcome + ")"
		}
		if e.LastError != "" {
			status += ": " + e.LastError
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.Name, time.Duration(e.Interval*float64(time.Second)), next, last, status)
	}
	tw.Flush()
	return exitOK
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

func locks(ctx context.Context, cfg config.Config, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		fmt.Fprintln(stderr, "usage: enqueuer locks")
		return exitUsage
	}
	rdb, code := connect(ctx, cfg, stderr)
	if code != exitOK {
		return code
	}
	defer rdb.Close()
	hs, err := singleton.List(ctx, rdb, singletonQueues())
	if err != nil {
		fmt.Fprintf(stderr, "enqueuer: %v\n", err)
		return exitFailure
	}
	if len(hs) == 0 {
		fmt.Fprintln(stdout, "no singleton locks held")
		return exitOK
	}
	sort.Slice(hs, func(i, j int) bool { return hs[i].Task+hs[i].Kind < hs[j].Task+hs[j].Kind })
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TASK\tLOCK\tHELD BY TASK ID\tEXPIRES IN")
	for _, h := range hs {
		kind := "run lease (running)"
		if h.Kind == "unique" {
			kind = "enqueue lock (queued or running)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", h.Task, kind, h.TaskID, h.TTL.Round(time.Second))
	}
	tw.Flush()
	return exitOK
}

func unlock(ctx context.Context, cfg config.Config, args []string, stdout, stderr io.Writer) int {
	if len(args) != 1 {
		fmt.Fprintln(stderr, "usage: enqueuer unlock NAME")
		return exitUsage
	}
	queue, ok := singletonQueues()[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "enqueuer: %q is not a singleton task; `enqueuer list` shows the catalog\n", args[0])
		return exitUsage
	}
	rdb, code := connect(ctx, cfg, stderr)
	if code != exitOK {
		return code
	}
	defer rdb.Close()
	n, err := singleton.ForceRelease(ctx, rdb, args[0], queue)
	if err != nil {
		fmt.Fprintf(stderr, "enqueuer: %v\n", err)
		return exitFailure
	}
	fmt.Fprintf(stdout, "released %d lock(s) of %s; a run still in progress will fail its next ownership check\n", n, args[0])
	return exitOK
}
