package main

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

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
	// Cost is the forecast of --cost.
	Cost *backlogCost `json:"cost,omitempty"`
}

// backlogCmd prints what the extraction planners measured on their last
// pass: per task and source the messages not yet extracted and the age of
// the oldest, and the units queued. A backlog that grows while units are
// queued is one more pods (or a higher LLM_MAX_IN_FLIGHT) would work off.
func (c *cli) backlogCmd() *cobra.Command {
	var asJSON, wide, cost bool
	var top int
	cmd := &cobra.Command{
		Use:   "backlog",
		Short: "Messages not yet extracted per source, the oldest, and units queued",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if top < 0 {
				return usageError("--sources must be 0 (all) or more, got %d", top)
			}
			ctx := cmd.Context()
			rdb, err := c.connect(ctx)
			if err != nil {
				return err
			}
			defer rdb.Close()
			out, err := readBacklog(ctx, rdb, top, time.Now())
			if err != nil {
				return failure("%v", err)
			}
			if cost {
				cfg, err := c.config()
				if err != nil {
					return err
				}
				if err := backlogCosts(ctx, rdb, cfg, out, time.Now()); err != nil {
					return failure("%v", err)
				}
			}
			if asJSON {
				return c.printJSON(out)
			}
			if len(out) == 0 {
				fmt.Fprintln(c.stdout, "no backlog yet: no extraction planner has run against this Redis")
				return nil
			}
			now := time.Now()
			var rows [][]string
			for _, e := range out {
				rows = append(rows, []string{e.Task, fmt.Sprint(e.Pending), age(e.OldestSecs),
					fmt.Sprintf("%d (%d msgs)", e.UnitsQueued, e.PlannedPending), now.Sub(*e.Updated).Round(time.Second).String() + " ago"})
				for _, s := range e.Sources {
					rows = append(rows, []string{"  " + s.Source, fmt.Sprint(s.Pending), age(s.OldestSecs), "", ""})
				}
			}
			table(c.stdout, wide, []string{"TASK / SOURCE", "PENDING", "OLDEST", "UNITS QUEUED", "MEASURED"}, rows)
			if cost {
				printBacklogCosts(c.stdout, wide, out)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array")
	cmd.Flags().BoolVar(&wide, "wide", false, "lines not cut to 100 columns")
	cmd.Flags().IntVar(&top, "sources", 10, "sources listed per task, most pending first (0: all)")
	cmd.Flags().BoolVar(&cost, "cost", false, "also estimate the tokens and USD extracting the backlog will take (tokens per message measured over the last 7 days, else the engine's estimate; LLM_PRICES)")
	return cmd
}

// readBacklog reads each planner's last measure and the units queued now.
func readBacklog(ctx context.Context, rdb redis.UniversalClient, top int, now time.Time) ([]backlogEntry, error) {
	out := []backlogEntry{}
	for _, task := range plannerTasks {
		b, err := plan.ReadBacklog(ctx, rdb, task)
		if err != nil {
			return nil, err
		}
		if b.Updated.IsZero() {
			continue
		}
		// Units settle between passes: the queue's size is read live.
		if b.Units, err = rdb.HLen(ctx, plan.UnitsKey(task)).Result(); err != nil {
			return nil, err
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
			if top > 0 && i >= top {
				break
			}
			e.Sources = append(e.Sources, backlogSource{Source: s.Source, Pending: s.Pending, Oldest: s.Oldest, OldestSecs: now.Sub(s.Oldest).Seconds()})
		}
		out = append(out, e)
	}
	return out, nil
}

func age(secs float64) string {
	return (time.Duration(secs * float64(time.Second))).Round(time.Second).String()
}
