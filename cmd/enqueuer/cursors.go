package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/stargazer/stargazer-jobs/internal/cursors"
	"github.com/stargazer/stargazer-jobs/internal/spend"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// ledgerCost prices what a cursor position leaves to process
// (`cursors set --dry-run`) from the spend ledger: what the task's calls
// cost per item over its last spend.ForecastDays days, times the items;
// for the extraction tasks with nothing measured yet, the engine's own
// estimate at the extraction model's price (LLM_PRICES). Anything else is
// unknown rather than guessed.
type ledgerCost struct {
	rdb    redis.UniversalClient
	prices map[string]spend.Price
	model  string // KG_EXTRACTION_MODEL
	now    time.Time
}

// extractsMessages are the cursor-driven tasks whose items are messages
// sent to the extraction model.
var extractsMessages = map[string]bool{
	jobs.AutoKGExtraction: true, jobs.LimbicAnchoringWorker: true, jobs.AgenticKGBulkIncremental: true,
}

func (l ledgerCost) EstimateCost(ctx context.Context, task string, items int64) (float64, bool, error) {
	days, err := spend.ReadDays(ctx, l.rdb, l.now, spend.ForecastDays)
	if err != nil {
		return 0, false, err
	}
	var nano, covered, unpriced int64
	for _, d := range days {
		for _, ln := range d.Lines {
			if ln.Task == task && ln.Items > 0 {
				nano, covered, unpriced = nano+ln.USDNano, covered+ln.Items, unpriced+ln.Unpriced
			}
		}
	}
	switch {
	case covered > 0 && unpriced == 0:
		return float64(nano) / 1e9 * float64(items) / float64(covered), true, nil
	case covered > 0 || !extractsMessages[task]:
		return 0, false, nil
	}
	price, priced := l.prices[l.model]
	f := spend.Cost(task, l.model, items, spend.EnginePerMessage(typicalMessageChars), price, priced)
	return f.USD, f.Priced, nil
}

func cursorTaskNames() []cobra.Completion {
	var out []cobra.Completion
	for _, t := range cursors.Tasks() {
		out = append(out, t.Name)
	}
	return out
}

func (c *cli) cursorsCmd() *cobra.Command {
	list := c.cursorsListCmd()
	cmd := &cobra.Command{
		Use:   "cursors",
		Short: "Where each cursor-driven task stands per source, and setting a position",
		Long: `Where each cursor-driven task stands per source (cursors list), and setting a
position by hand (cursors set). After a cut-over from the Python scheduler no
task starts in history: each one's first position is in docs/migration.md.
Without a command: cursors list.`,
		Args: cobra.NoArgs,
		RunE: list.RunE,
	}
	cmd.Flags().AddFlagSet(list.Flags())
	cmd.AddCommand(list, c.cursorsSetCmd())
	return cmd
}

func (c *cli) cursorsListCmd() *cobra.Command {
	var asJSON, wide bool
	cmd := &cobra.Command{
		Use:   "list [TASK]",
		Short: "Every cursor-driven task's position per source",
		Args:  cobra.MaximumNArgs(1),
		ValidArgsFunction: func(_ *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
			if len(args) > 0 {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			return cursorTaskNames(), cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			tasks := cursors.Tasks()
			if len(args) == 1 {
				t, ok := cursors.Lookup(args[0])
				if !ok {
					return usageError("%q is not a cursor-driven task; `enqueuer cursors list` lists them", args[0])
				}
				tasks = []cursors.Task{t}
			}
			ctx := cmd.Context()
			rs, err := c.connectBoth(ctx)
			if err != nil {
				return err
			}
			defer rs.Close()
			now := time.Now()
			out := []cursors.Entry{}
			for _, t := range tasks {
				es, err := cursors.List(ctx, rs.cursors(), t, now)
				if err != nil {
					return failure("%v", err)
				}
				out = append(out, es...)
			}
			if asJSON {
				return c.printJSON(out)
			}
			var rows [][]string
			for _, e := range out {
				pos := e.Position
				if e.Time != nil && (pos == strconv.FormatInt(e.Time.UnixMilli(), 10)) {
					pos = e.Time.Format(time.RFC3339)
				}
				pending := "-"
				if e.Pending != nil {
					pending = strconv.FormatInt(*e.Pending, 10)
				}
				rows = append(rows, []string{e.Task, e.Source, pos, pending, e.Note})
			}
			table(c.stdout, wide, []string{"TASK", "SOURCE", "POSITION", "PENDING", "NOTE"}, rows)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array")
	cmd.Flags().BoolVar(&wide, "wide", false, "lines not cut to 100 columns")
	return cmd
}

// setResult is `cursors set --json`'s output.
type setResult struct {
	cursors.Plan
	DryRun  bool     `json:"dry_run"`
	Pending int64    `json:"pending"`
	Counted bool     `json:"counted"`
	CostUSD *float64 `json:"estimated_cost_usd"`
}

func (c *cli) cursorsSetCmd() *cobra.Command {
	var dryRun, asJSON bool
	cmd := &cobra.Command{
		Use:   "set TASK SOURCE POSITION",
		Short: "Set a cursor-driven task's position for a source (all channels: SOURCE all)",
		Long: `Set a cursor-driven task's position for a source. What a source and a
position are depends on the task:

  anamnesis_digest             fragments                 an index, start or end
  limbic_anchoring_worker,     <platform>:<channel id>   now, latest, now-2h,
  auto_kg_extraction,          or all                    an RFC 3339 time or
  agentic_kg_bulk_incremental,                           Unix milliseconds
  channel_summarization,
  channel_heartbeat
  log_rag_ingest               <node>:<unit>             a journal cursor or a time
  limbic_sunset_processor      days                      YYYY-MM-DD: it and the
                                                         days before count as done

--dry-run changes nothing and says how many items (fragments, messages,
days) the position leaves to process, and the estimated cost where spend
accounting prices them. A malformed position, an unknown source or a
position out of range exits 2 and changes nothing.

Setting an extraction planner's cursor drops the channel's planned segments:
units already queued still run (the extraction ledger keeps them from being
paid twice) and move nothing.`,
		Args: cobra.ExactArgs(3),
		ValidArgsFunction: func(_ *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
			if len(args) > 0 {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			return cursorTaskNames(), cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			now := time.Now()
			change, err := cursors.Parse(args[0], args[1], args[2], now)
			if err != nil {
				return usageError("%v", err)
			}
			rs, err := c.connectBoth(ctx)
			if err != nil {
				return err
			}
			defer rs.Close()
			p, err := change.Resolve(ctx, rs.cursors(), now)
			if errors.Is(err, cursors.ErrUsage) {
				return usageError("%v", err)
			}
			if err != nil {
				return failure("%v", err)
			}
			res := setResult{Plan: p, DryRun: dryRun}
			res.Pending, res.Counted = p.Pending()
			if res.Counted {
				cfg, err := c.config()
				if err != nil {
					return err
				}
				est := ledgerCost{rdb: rs.queue, prices: pricesOf(cfg), model: cfg.KGExtractionModel, now: now}
				usd, ok, err := est.EstimateCost(ctx, p.Task, res.Pending)
				if err != nil {
					return failure("estimating the cost: %v", err)
				}
				if ok {
					res.CostUSD = &usd
				}
			}
			if !dryRun {
				if err := p.Apply(ctx, rs.cursors(), now); err != nil {
					return failure("%v", err)
				}
			}
			if asJSON {
				return c.printJSON(res)
			}
			c.printPlan(res)
			return nil
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "change nothing; show how many items and, where priced, the cost the position implies")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON object")
	return cmd
}

func (c *cli) printPlan(r setResult) {
	w := c.stdout
	if r.DryRun {
		fmt.Fprintln(w, "dry run: nothing changed")
	}
	var rows [][]string
	for _, m := range r.Moves {
		left := "not counted here (the journal is on the node)"
		if m.Counted {
			left = fmt.Sprintf("%d (now %d)", m.Pending, m.PendingNow)
			if m.From == "-" {
				left = fmt.Sprintf("%d (no position yet)", m.Pending)
			}
		}
		note := ""
		if m.DropsPlanned {
			note = "drops its planned segments"
		}
		rows = append(rows, []string{m.Source, readable(r.Change.Task, m.From), readable(r.Change.Task, m.To), left, note})
	}
	table(w, false, []string{"SOURCE", "FROM", "TO", "LEFT TO PROCESS", ""}, rows)
	if r.Counted {
		fmt.Fprintf(w, "%s: %d %s to process from the new position", r.Task, r.Pending, r.Items)
		if r.Task == "channel_summarization" || r.Task == "channel_heartbeat" {
			fmt.Fprint(w, " (at most what one run reads per channel)")
		}
		fmt.Fprintln(w)
	}
	switch {
	case r.CostUSD != nil:
		fmt.Fprintf(w, "estimated cost: $%.4f\n", *r.CostUSD)
	default:
		fmt.Fprintln(w, "estimated cost: unknown (no priced measure of this task's calls in the last 7 days, nor an extraction estimate with its model in LLM_PRICES)")
	}
	if !r.DryRun {
		fmt.Fprintf(w, "set %s for %d source(s)\n", r.Task, len(r.Moves))
	}
}

// readable writes a position in Unix milliseconds as a time, for a table.
func readable(t cursors.Task, pos string) string {
	if t.Kind != cursors.Channel && t.Kind != cursors.Watermark && t.Kind != cursors.Journal {
		return pos
	}
	ms, err := strconv.ParseInt(pos, 10, 64)
	if err != nil {
		return pos
	}
	return time.UnixMilli(ms).UTC().Format(time.RFC3339)
}
