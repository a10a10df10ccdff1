package main

import (
	"regexp"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/stargazer/stargazer-jobs/jobs"
)

type catalogEntry struct {
	Name                string   `json:"name"`
	Kind                string   `json:"kind"`
	IntervalSeconds     float64  `json:"interval_seconds"`
	InitialDelaySeconds float64  `json:"initial_delay_seconds"`
	Requires            []string `json:"requires"`
	Needs               []string `json:"needs"`
	OptInFlag           *string  `json:"opt_in_flag"`
	EnabledBy           *string  `json:"enabled_by"`
	Singleton           bool     `json:"singleton"`
	Queue               string   `json:"queue"`
	MaxRetry            int      `json:"max_retry"`
	TimeoutSeconds      float64  `json:"timeout_seconds"`
	Scheduled           bool     `json:"scheduled"`
	SkipReason          string   `json:"skip_reason"`
	Summary             string   `json:"summary"`
}

func optional(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// when says how a task comes to run, in the words an operator expects.
func when(e catalogEntry) string {
	switch jobs.Kind(e.Kind) {
	case jobs.Child:
		return "enqueued by other tasks"
	case jobs.Startup:
		return "once per deployment"
	case jobs.NodeLocal:
		return "on every node"
	}
	return "every " + short(time.Duration(e.IntervalSeconds*float64(time.Second)))
}

// state says whether the task runs with this configuration; why not, in
// full when wide, else as the settings to change.
func state(e catalogEntry, wide bool) string {
	switch {
	case !e.Scheduled && wide:
		return "off: " + e.SkipReason
	case !e.Scheduled:
		return "off: " + settingsOf(e.SkipReason)
	case jobs.Kind(e.Kind) == jobs.Child:
		return "available"
	}
	return "scheduled"
}

var (
	parenthesized = regexp.MustCompile(`\(([^)]*)\)`)
	flagOff       = regexp.MustCompile(`^opt-in flag (\S+) is off$`)
	switchedOff   = regexp.MustCompile(`^switched off by (\S+)$`)
)

// settingsOf shortens a skip reason to the settings it names:
// "missing dependency: knowledge graph (FALKORDB_URL), LLM client
// (LLM_BASE_URL)" is "FALKORDB_URL, LLM_BASE_URL".
func settingsOf(reason string) string {
	if m := flagOff.FindStringSubmatch(reason); m != nil {
		return m[1] + "=false"
	}
	if m := switchedOff.FindStringSubmatch(reason); m != nil {
		return m[1]
	}
	var names []string
	for _, m := range parenthesized.FindAllStringSubmatch(reason, -1) {
		names = append(names, m[1])
	}
	if len(names) == 0 {
		return reason
	}
	return strings.Join(names, ", ")
}

func (c *cli) listCmd() *cobra.Command {
	var asJSON, wide bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "The task catalog, gated by this configuration",
		Long: `The task catalog, gated by this configuration: when each task runs, its queue,
and whether it is scheduled here (or, if not, why).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := c.config()
			if err != nil {
				return err
			}
			// nil: every catalog task has a handler in this build.
			env, err := cfg.GatingEnv(jobs.Catalog(), nil)
			if err != nil {
				return usageError("%v", err)
			}
			var entries []catalogEntry
			for _, d := range jobs.Gate(jobs.Catalog(), env) {
				s := d.Spec
				entries = append(entries, catalogEntry{
					Name: s.Name, Kind: string(s.Kind),
					IntervalSeconds: d.Interval.Seconds(), InitialDelaySeconds: s.InitialDelay.Seconds(),
					Requires: s.Requires.Names(), Needs: s.Needs.Names(),
					OptInFlag: optional(s.OptInFlag), EnabledBy: optional(s.EnabledBy),
					Singleton: s.Singleton, Queue: s.Queue, MaxRetry: s.MaxRetry, TimeoutSeconds: s.Timeout.Seconds(),
					Scheduled: d.Scheduled, SkipReason: d.SkipReason, Summary: s.Summary,
				})
			}
			if asJSON {
				return c.printJSON(entries)
			}
			var rows [][]string
			for _, e := range entries {
				if wide {
					rows = append(rows, []string{e.Name, when(e), short(time.Duration(e.InitialDelaySeconds * float64(time.Second))),
						e.Queue, strings.Join(append(e.Requires, e.Needs...), ","), state(e, true)})
				} else {
					rows = append(rows, []string{e.Name, when(e), e.Queue, state(e, false)})
				}
			}
			header := []string{"NAME", "RUNS", "QUEUE", "STATE"}
			if wide {
				header = []string{"NAME", "RUNS", "FIRST AFTER", "QUEUE", "REQUIRES", "STATE"}
			}
			table(c.stdout, wide, header, rows)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array")
	cmd.Flags().BoolVar(&wide, "wide", false, "more columns (first run, requirements), lines not cut to 100 columns")
	return cmd
}
