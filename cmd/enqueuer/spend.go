package main

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/stargazer/stargazer-jobs/internal/config"
	"github.com/stargazer/stargazer-jobs/internal/spend"
	"github.com/stargazer/stargazer-jobs/jobs"
)

type spendModel struct {
	Model      string  `json:"model"`
	Calls      int64   `json:"calls"`
	Prompt     int64   `json:"prompt_tokens"`
	Completion int64   `json:"completion_tokens"`
	USD        float64 `json:"usd"`
	Estimated  int64   `json:"estimated_calls"`
	Unpriced   int64   `json:"unpriced_calls"`
}

type spendBudget struct {
	Amount float64 `json:"amount"`
	Unit   string  `json:"unit"`
	Source string  `json:"source"` // LLM_BUDGETS or override
}

type spendTask struct {
	Task       string       `json:"task"`
	Calls      int64        `json:"calls"`
	Prompt     int64        `json:"prompt_tokens"`
	Completion int64        `json:"completion_tokens"`
	USD        float64      `json:"usd"`
	Orphaned   int64        `json:"orphaned_calls"`
	Budget     *spendBudget `json:"budget"`
	UsedToday  *float64     `json:"used_today,omitempty"`
	Remaining  *float64     `json:"remaining,omitempty"`
	State      string       `json:"state"`
	Models     []spendModel `json:"models"`
}

type spendReport struct {
	Days  int         `json:"days"`
	From  string      `json:"from"`
	To    string      `json:"to"`
	Tasks []spendTask `json:"tasks"`
}

// spendCmd prints what each task spent on each model over the last days,
// from the cluster's ledger, beside its budget, what is left of it today
// and whether it is deferred.
func (c *cli) spendCmd() *cobra.Command {
	var asJSON, wide bool
	var days int
	cmd := &cobra.Command{
		Use:   "spend",
		Short: "LLM spend per task and model, budgets, what is left, and deferred tasks",
		Long: `LLM spend per task and model over the last --days UTC days (today included),
from the cluster's ledger in Redis: calls, tokens and USD (from LLM_PRICES;
"unpriced" for a model without a price). Beside each task: its daily budget
(LLM_BUDGETS, or an override of 'enqueuer budget set'), what is left of it
today, and its state: ok, or deferred (its budget spent, or the kill switch
off) until the next UTC day or a raised budget. * is the whole cluster.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if days < 1 || days > 90 {
				return usageError("--days must be from 1 to 90 (the ledger keeps 90 days), got %d", days)
			}
			cfg, err := c.config()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			rdb, err := c.connect(ctx)
			if err != nil {
				return err
			}
			defer rdb.Close()
			rep, err := readSpend(ctx, rdb, cfg, days, time.Now())
			if err != nil {
				return failure("%v", err)
			}
			if asJSON {
				return c.printJSON(rep)
			}
			if len(rep.Tasks) == 0 {
				fmt.Fprintf(c.stdout, "no LLM spend from %s to %s, and no budget set\n", rep.From, rep.To)
				return nil
			}
			var rows [][]string
			for _, t := range rep.Tasks {
				budget, left := "-", "-"
				if t.Budget != nil {
					budget = amount(t.Budget.Amount, t.Budget.Unit)
					if t.Budget.Source == "override" {
						budget += " (set)"
					}
					left = amount(*t.Remaining, t.Budget.Unit)
				}
				if len(t.Models) == 0 {
					rows = append(rows, []string{t.Task, "-", "0", "0", "$0", budget, left, t.State})
					continue
				}
				for i, m := range t.Models {
					usd := fmt.Sprintf("$%.4f", m.USD)
					if m.Unpriced > 0 {
						usd = "unpriced"
					}
					row := []string{"", m.Model, fmt.Sprint(m.Calls), fmt.Sprint(m.Prompt + m.Completion), usd, "", "", ""}
					if i == 0 {
						row[0], row[5], row[6], row[7] = t.Task, budget, left, t.State
					}
					rows = append(rows, row)
				}
			}
			fmt.Fprintf(c.stdout, "LLM spend %s to %s (UTC); budgets and what is left are today's\n", rep.From, rep.To)
			table(c.stdout, wide, []string{"TASK", "MODEL", "CALLS", "TOKENS", "USD", "BUDGET", "LEFT TODAY", "STATE"}, rows)
			return nil
		},
	}
	cmd.Flags().IntVar(&days, "days", 1, "UTC days to add up, today included (1-90)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON object")
	cmd.Flags().BoolVar(&wide, "wide", false, "lines not cut to 100 columns")
	return cmd
}

func amount(v float64, unit string) string {
	if unit == "usd" {
		return fmt.Sprintf("$%.4f", v)
	}
	return strconv.FormatFloat(v, 'f', 0, 64) + " tok"
}

// budgetsOf turns LLM_BUDGETS into the ledger's budgets.
func budgetsOf(cfg config.Config) map[string]spend.Limit {
	out := map[string]spend.Limit{}
	for t, b := range cfg.LLMBudgets {
		if b.InUSD {
			out[t] = spend.USD(b.USD)
		} else {
			out[t] = spend.Tokens(b.Tokens)
		}
	}
	return out
}

func pricesOf(cfg config.Config) map[string]spend.Price {
	out := map[string]spend.Price{}
	for m, p := range cfg.LLMPrices {
		out[m] = spend.Price{Prompt: p.Prompt, Completion: p.Completion}
	}
	return out
}

// readSpend adds up the ledger of the last days per task and model, with
// each task's budget, what is left of it today and its state.
func readSpend(ctx context.Context, rdb redis.UniversalClient, cfg config.Config, days int, now time.Time) (spendReport, error) {
	ledgers, err := spend.ReadDays(ctx, rdb, now, days)
	if err != nil {
		return spendReport{}, err
	}
	overrides, err := spend.Overrides(ctx, rdb)
	if err != nil {
		return spendReport{}, err
	}
	deferrals, err := spend.Deferrals(ctx, rdb)
	if err != nil {
		return spendReport{}, err
	}
	configured := budgetsOf(cfg)
	rep := spendReport{Days: days, From: ledgers[len(ledgers)-1].Day, To: ledgers[0].Day, Tasks: []spendTask{}}
	tasks := map[string]*spendTask{}
	get := func(name string) *spendTask {
		if t := tasks[name]; t != nil {
			return t
		}
		t := &spendTask{Task: name, Models: []spendModel{}}
		tasks[name] = t
		return t
	}
	for _, d := range ledgers {
		for _, l := range d.Lines {
			t := get(l.Task)
			t.Calls += l.Calls
			t.Prompt += l.Prompt
			t.Completion += l.Completion
			t.USD += l.USD()
			i := 0
			for i < len(t.Models) && t.Models[i].Model != l.Model {
				i++
			}
			if i == len(t.Models) {
				t.Models = append(t.Models, spendModel{Model: l.Model})
			}
			m := &t.Models[i]
			m.Calls += l.Calls
			m.Prompt += l.Prompt
			m.Completion += l.Completion
			m.USD += l.USD()
			m.Estimated += l.Estimated
			m.Unpriced += l.Unpriced
		}
		for scope, tot := range d.Totals {
			if tot.Orphaned > 0 {
				get(scope).Orphaned += tot.Orphaned
			}
		}
	}
	scopes := map[string]bool{}
	for s := range configured {
		scopes[s] = true
	}
	for s, o := range overrides {
		if !o.None {
			scopes[s] = true
		}
	}
	today := ledgers[0]
	for s := range scopes {
		lim, ok := spend.Effective(configured, overrides, s)
		if !ok {
			continue
		}
		t := get(s)
		src := "LLM_BUDGETS"
		if _, over := overrides[s]; over {
			src = "override"
		}
		t.Budget = &spendBudget{Amount: lim.Amount(), Unit: lim.Unit(), Source: src}
		tot := today.Totals[s]
		conv := func(n int64) float64 {
			if lim.InUSD {
				return float64(n) / 1e9
			}
			return float64(n)
		}
		used, left := conv(tot.Used(lim)), conv(tot.Remaining(lim))
		t.UsedToday, t.Remaining = &used, &left
	}
	if t := tasks[spend.Cluster]; t != nil && t.Budget != nil {
		// The cluster's row: every task's spend together.
		for name, o := range tasks {
			if name == spend.Cluster {
				continue
			}
			t.Calls += o.Calls
			t.Prompt += o.Prompt
			t.Completion += o.Completion
			t.USD += o.USD
		}
	}
	for _, d := range deferrals {
		get(d.Task).State = d.State()
	}
	for _, t := range tasks {
		if t.State == "" {
			t.State = "ok"
			if t.Remaining != nil && *t.Remaining <= 0 {
				t.State = "budget spent"
			}
		}
		sort.Slice(t.Models, func(i, j int) bool { return t.Models[i].Model < t.Models[j].Model })
		rep.Tasks = append(rep.Tasks, *t)
	}
	sort.Slice(rep.Tasks, func(i, j int) bool { return rep.Tasks[i].Task < rep.Tasks[j].Task })
	return rep, nil
}

// budgetCmd shows the daily budgets and changes them at run time: an
// override in Redis that every worker reads before its next call, and that
// lifts a deferral within one scheduler tick. It wins over LLM_BUDGETS until
// cleared.
func (c *cli) budgetCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "budget",
		Short: "Show the daily LLM budgets, or set one at run time (budget set|clear)",
		Long: `Show the daily LLM budgets: LLM_BUDGETS and the overrides set at run time.

  enqueuer budget set TASK AMOUNT   AMOUNT: tokens (2M, 500k, 120000), dollars ($0.50), or none
  enqueuer budget clear TASK        back to LLM_BUDGETS

TASK is a catalog task or * (the whole cluster). An override is kept in
Redis: every worker applies it from its next call, without a restart, and a
task deferred by its budget resumes within one scheduler tick once the new
budget has room for its next call.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := c.config()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			rdb, err := c.connect(ctx)
			if err != nil {
				return err
			}
			defer rdb.Close()
			overrides, err := spend.Overrides(ctx, rdb)
			if err != nil {
				return failure("%v", err)
			}
			configured := budgetsOf(cfg)
			names := map[string]bool{}
			for s := range configured {
				names[s] = true
			}
			for s := range overrides {
				names[s] = true
			}
			if len(names) == 0 {
				fmt.Fprintln(c.stdout, "no LLM budget: set LLM_BUDGETS, or enqueuer budget set TASK AMOUNT")
				return nil
			}
			sorted := make([]string, 0, len(names))
			for s := range names {
				sorted = append(sorted, s)
			}
			sort.Strings(sorted)
			var rows [][]string
			for _, s := range sorted {
				conf, over, eff := "-", "-", "none"
				if b, ok := configured[s]; ok {
					conf = b.String()
				}
				if o, ok := overrides[s]; ok {
					over = "none"
					if !o.None {
						over = o.Limit.String()
					}
				}
				if lim, ok := spend.Effective(configured, overrides, s); ok {
					eff = lim.String()
				}
				rows = append(rows, []string{s, conf, over, eff})
			}
			table(c.stdout, false, []string{"TASK", "LLM_BUDGETS", "OVERRIDE", "IN FORCE"}, rows)
			return nil
		},
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "set TASK AMOUNT",
		Short: "Set TASK's daily budget at run time (tokens, $dollars, or none)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			task, raw := args[0], args[1]
			if err := budgetScope(task); err != nil {
				return err
			}
			o := spend.Override{None: true}
			if raw != "none" {
				b, err := config.ParseBudget(raw)
				if err != nil {
					return usageError("%v", err)
				}
				if b.InUSD {
					o = spend.Override{Limit: spend.USD(b.USD)}
				} else {
					o = spend.Override{Limit: spend.Tokens(b.Tokens)}
				}
			}
			ctx := cmd.Context()
			rdb, err := c.connect(ctx)
			if err != nil {
				return err
			}
			defer rdb.Close()
			if err := spend.SetOverride(ctx, rdb, task, o); err != nil {
				return failure("%v", err)
			}
			what := "no budget"
			if !o.None {
				what = o.Limit.String() + " a UTC day"
			}
			fmt.Fprintf(c.stdout, "%s: %s from the next call on (a deferred task resumes within a scheduler tick if it now has room); enqueuer budget clear %s goes back to LLM_BUDGETS\n", task, what, task)
			return nil
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "clear TASK",
		Short: "Drop TASK's run-time budget: LLM_BUDGETS applies again",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := budgetScope(args[0]); err != nil {
				return err
			}
			ctx := cmd.Context()
			rdb, err := c.connect(ctx)
			if err != nil {
				return err
			}
			defer rdb.Close()
			had, err := spend.ClearOverride(ctx, rdb, args[0])
			if err != nil {
				return failure("%v", err)
			}
			if !had {
				fmt.Fprintf(c.stdout, "%s had no run-time budget\n", args[0])
				return nil
			}
			fmt.Fprintf(c.stdout, "%s: LLM_BUDGETS applies again\n", args[0])
			return nil
		},
	})
	return cmd
}

// budgetScope refuses a budget name that is neither * nor a catalog task
// that calls an LLM, or that is a child (charged to its parent).
func budgetScope(task string) error {
	if task == spend.Cluster {
		return nil
	}
	s, ok := jobs.Lookup(task)
	switch {
	case !ok:
		return usageError("no task %q in the catalog (enqueuer list); * is the whole cluster", task)
	case len(jobs.Parents(task)) > 0:
		return usageError("%s's calls count against its parent's budget: set %s instead", task, strings.Join(jobs.Parents(task), " or "))
	case !s.CallsLLM():
		return usageError("%s makes no LLM call", task)
	}
	return nil
}

// deferredState is how a task's state reads when it is parked by a
// deferral: asynq keeps it in the retry set, but it failed nothing.
func deferredState(ti *asynq.TaskInfo) (string, bool) {
	if ti.State != asynq.TaskStateRetry {
		return "", false
	}
	rest, ok := strings.CutPrefix(ti.LastErr, "deferred: ")
	if !ok {
		return "", false
	}
	reason, _, _ := strings.Cut(rest, " ")
	reason = strings.TrimSuffix(reason, ":")
	return "deferred: " + reason, true
}
