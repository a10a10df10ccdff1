package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/config"
	"github.com/stargazer/stargazer-jobs/internal/queue/legacy"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// legacyRun is what `status` and `schedules` say of a task's runs in the
// Python scheduler.
type legacyRun struct {
	Task           string     `json:"task"`
	Runs           int64      `json:"runs"`
	LastRun        *time.Time `json:"last_run"`
	StandDownUntil *time.Time `json:"stand_down_until"`
	RegisteredBy   string     `json:"registered_by"`
}

// cutoverStatus is `enqueuer status` without a task ID.
type cutoverStatus struct {
	Coexistence bool   `json:"coexistence"`
	LeaderKey   string `json:"leader_key"`
	// LeaderHolder is who holds the Python supervisor's lease ("" when
	// nobody does).
	LeaderHolder string     `json:"leader_holder"`
	LeaderTTL    float64    `json:"leader_ttl_seconds"`
	WindowStart  *time.Time `json:"window_start"`
	WindowEnd    *time.Time `json:"window_end"`
	// PythonRuns are the tasks the Python scheduler was seen running
	// while the Go side scheduled them.
	PythonRuns []legacyRun `json:"python_runs"`
	// NodeLocalSeen are when the Python side last ran each node-local task
	// (not counted: each node runs its own; docs/migration.md).
	NodeLocalSeen map[string]time.Time `json:"node_local_seen"`
}

// legacyRuns reads the Python runs seen of every catalog task, by name.
func legacyRuns(ctx context.Context, rdb redis.UniversalClient) (map[string]legacyRun, error) {
	var names []string
	for _, s := range jobs.Catalog() {
		names = append(names, s.Name)
	}
	recs, err := legacy.Read(ctx, rdb, names)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	out := map[string]legacyRun{}
	for _, r := range recs {
		if r.Count == 0 {
			continue
		}
		lr := legacyRun{Task: r.Task, Runs: r.Count, LastRun: timePtr(r.LastEnd), RegisteredBy: legacy.RegisteredBy(r.Task)}
		if r.StandDownUntil.After(now) {
			lr.StandDownUntil = timePtr(r.StandDownUntil)
		}
		out[r.Task] = lr
	}
	return out, nil
}

// readCutover reads the coexistence state: the Python supervisor's lease,
// the cut-over window, and the Python runs seen. The lease is the bot's
// key (bot), the rest the job system's (rdb).
func readCutover(ctx context.Context, bot, rdb redis.UniversalClient, cfg config.Config) (cutoverStatus, error) {
	st := cutoverStatus{Coexistence: cfg.LegacyCoexistence, LeaderKey: cfg.LegacyLeaseKey(), PythonRuns: []legacyRun{}}
	if st.LeaderKey != "" {
		v, err := bot.Get(ctx, st.LeaderKey).Result()
		switch {
		case errors.Is(err, redis.Nil):
		case err != nil:
			return st, fmt.Errorf("reading %s: %w", st.LeaderKey, err)
		default:
			st.LeaderHolder = v
			ttl, _ := bot.PTTL(ctx, st.LeaderKey).Result()
			st.LeaderTTL = ttl.Seconds()
		}
	}
	start, err := legacy.WindowStart(ctx, rdb)
	if err != nil {
		return st, err
	}
	if !start.IsZero() {
		st.WindowStart = timePtr(start)
		if w := cfg.LegacyRunStandDown(); w > 0 {
			st.WindowEnd = timePtr(start.Add(w))
		}
	}
	runs, err := legacyRuns(ctx, rdb)
	if err != nil {
		return st, err
	}
	st.NodeLocalSeen = map[string]time.Time{}
	var local []string
	for _, s := range jobs.Catalog() {
		if r, ok := runs[s.Name]; ok {
			st.PythonRuns = append(st.PythonRuns, r)
		}
		if s.Kind == jobs.NodeLocal {
			local = append(local, s.Name)
		}
	}
	recs, err := legacy.Read(ctx, rdb, local)
	if err != nil {
		return st, err
	}
	for _, r := range recs {
		if r.Seen() {
			st.NodeLocalSeen[r.Task] = r.LastEnd
		}
	}
	return st, nil
}

func (c *cli) printCutover(st cutoverStatus) {
	w := c.stdout
	now := time.Now()
	switch {
	case !st.Coexistence:
		fmt.Fprintln(w, "coexistence with a Python side: off (LEGACY_COEXISTENCE=false); nothing stands down for it")
	case st.LeaderHolder != "":
		fmt.Fprintf(w, "Python supervisor lease %s: held by %s for %s more: limbic_dedup_task and limbic_org_task stand down\n",
			st.LeaderKey, st.LeaderHolder, short(time.Duration(st.LeaderTTL*float64(time.Second))))
	default:
		fmt.Fprintf(w, "Python supervisor lease %s: not held: limbic_dedup_task and limbic_org_task run here\n", st.LeaderKey)
	}
	switch {
	case st.WindowStart == nil:
		fmt.Fprintln(w, "cut-over window: not started (no worker scheduler has run against this Redis)")
	case st.WindowEnd == nil:
		fmt.Fprintf(w, "cut-over started %s; Python runs are reported, nothing stands down for them (LEGACY_RUN_STAND_DOWN_WINDOW off)\n",
			st.WindowStart.UTC().Format(time.RFC3339))
	case now.Before(*st.WindowEnd):
		fmt.Fprintf(w, "cut-over window: %s to %s: a task the Python scheduler runs stands down here for the rest of its interval\n",
			st.WindowStart.UTC().Format(time.RFC3339), st.WindowEnd.UTC().Format(time.RFC3339))
	default:
		fmt.Fprintf(w, "cut-over window: ended %s: Python runs are reported only, both sides run\n", st.WindowEnd.UTC().Format(time.RFC3339))
	}
	for _, s := range jobs.Catalog() {
		if at, ok := st.NodeLocalSeen[s.Name]; ok {
			fmt.Fprintf(w, "node-local %s: the Python side last ran it %s ago (not counted: each node runs its own)\n", s.Name, short(now.Sub(at)))
		}
	}
	if len(st.PythonRuns) == 0 {
		fmt.Fprintln(w, "Python scheduler runs of tasks scheduled here: none seen")
		return
	}
	fmt.Fprintln(w, "Python scheduler runs of tasks scheduled here (remove them from the Python side):")
	var rows [][]string
	for _, r := range st.PythonRuns {
		last, until := "-", "-"
		if r.LastRun != nil {
			last = short(now.Sub(*r.LastRun)) + " ago"
		}
		if r.StandDownUntil != nil {
			until = "for " + short(r.StandDownUntil.Sub(now))
		}
		rows = append(rows, []string{r.Task, fmt.Sprint(r.Runs), last, until, r.RegisteredBy})
	}
	table(w, false, []string{"TASK", "RUNS", "LAST", "STANDS DOWN", "REGISTERED BY"}, rows)
}

func (c *cli) cutoverStatus(ctx context.Context, rs redises, asJSON bool) error {
	cfg, err := c.config()
	if err != nil {
		return err
	}
	st, err := readCutover(ctx, rs.bot, rs.queue, cfg)
	if err != nil {
		return failure("%v", err)
	}
	if asJSON {
		return c.printJSON(st)
	}
	c.printCutover(st)
	return nil
}

// pythonRunNote says, in a schedules row, that the Python scheduler runs
// the task too.
func pythonRunNote(r legacyRun, now time.Time) string {
	s := "PYTHON RAN IT"
	if r.LastRun != nil {
		s += " " + short(now.Sub(*r.LastRun)) + " ago"
	}
	if r.StandDownUntil != nil {
		s += ", stands down for " + short(r.StandDownUntil.Sub(now))
	}
	return s
}
