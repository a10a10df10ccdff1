package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/config"
	"github.com/stargazer/stargazer-jobs/internal/kg/plan"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// plannerTasks are the tasks whose planners write a backlog.
var plannerTasks = []string{jobs.LimbicAnchoringWorker, jobs.AutoKGExtraction}

type backlogSource struct {
	Source     string    `json:"source"`
	Pending    int64     `json:"pending_messages"`
	Oldest     time.Time `json:"oldest_message"`
	OldestSecs float64   `json:"oldest_age_seconds"`
}

type backlogEntry struct {
	Task           string          `json:"task"`
	Updated        *time.Time      `json:"updated"`
	Pending        int64           `json:"pending_messages"`
	OldestSecs     float64         `json:"oldest_age_seconds"`
	UnitsQueued    int64           `json:"units_queued"`
	PlannedPending int64           `json:"planned_messages"`
	Sources        []backlogSource `json:"sources"`
}

// backlog prints what the extraction planners measured on their last pass:
// per task and source the messages not yet extracted and the age of the
// oldest, and the units queued. A backlog that grows while units are queued
// is one more pods (or a higher LLM_MAX_IN_FLIGHT) would work off.
func backlog(ctx context.Context, cfg config.Config, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("backlog", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print a JSON array")
	top := fs.Int("sources", 10, "sources listed per task, most pending first (0: all)")
	fs.Usage = func() { fmt.Fprintln(stderr, "usage: enqueuer backlog [--json] [--sources N]") }
	if err := fs.Parse(args); err != nil {
		return flagExit(err)
	}
	rdb, code := connect(ctx, cfg, stderr)
	if code != exitOK {
		return code
	}
	defer rdb.Close()
	now := time.Now()
	var out []backlogEntry
	for _, task := range plannerTasks {
		b, err := plan.ReadBacklog(ctx, rdb, task)
		if err != nil {
			fmt.Fprintf(stderr, "enqueuer: %v\n", err)
			return exitFailure
		}
		if b.Updated.IsZero() {
			continue
		}
		// Units settle between passes: the queue's size is read live.
		if b.Units, err = rdb.HLen(ctx, plan.UnitsKey(task)).Result(); err != nil {
			fmt.Fprintf(stderr, "enqueuer: %v\n", err)
			return exitFailure
		}
		e := backlogEntry{Task: task, Updated: timePtr(b.Updated), Pending: b.Pending(), UnitsQueued: b.Units, PlannedPending: b.Planned,
			Sources: []backlogSource{}}
		if o := b.Oldest(); !o.IsZero() {
			e.OldestSecs = now.Sub(o).Seconds()
		}
		sort.Slice(b.Sources, func(i, j int) bool {
			if b.Sources[i].Pending != b.Sources[j].Pending {
				return b.Sources[i].Pending > b.Sources[j].Pending
			}
			return b.Sources[i].Source < b.Sources[j].Source
		})
		for i, s := range b.Sources {
			if *top > 0 && i >= *top {
				break
			}
			e.Sources = append(e.Sources, backlogSource{Source: s.Source, Pending: s.Pending, Oldest: s.Oldest, OldestSecs: now.Sub(s.Oldest).Seconds()})
		}
		out = append(out, e)
	}
	if *asJSON {
		if out == nil {
			out = []backlogEntry{}
		}
		return printJSON(stdout, stderr, out)
	}
	if len(out) == 0 {
		fmt.Fprintln(stdout, "no backlog yet: no extraction planner has run against this Redis")
		return exitOK
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	for _, e := range out {
		fmt.Fprintf(tw, "%s\t%d message(s) not extracted, oldest %s old\t%d unit(s) queued (%d messages)\tmeasured %s ago\n",
			e.Task, e.Pending, age(e.OldestSecs), e.UnitsQueued, e.PlannedPending, now.Sub(*e.Updated).Round(time.Second))
		for _, s := range e.Sources {
			fmt.Fprintf(tw, "  %s\t%d\toldest %s old\t\n", s.Source, s.Pending, age(s.OldestSecs))
		}
	}
	if err := tw.Flush(); err != nil {
		return exitFailure
	}
	return exitOK
}

func age(secs float64) string {
	return (time.Duration(secs * float64(time.Second))).Round(time.Second).String()
}
