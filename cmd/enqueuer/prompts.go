package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/stargazer/stargazer-jobs/internal/store/prompts"
)

// platforms are the chat platforms the bot serves (docs/data-model.md):
// a prompt for any other would never be delivered.
var platforms = []string{"discord", "matrix"}

func (c *cli) promptsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "prompts",
		Short: "Manage scheduled prompts (add, list, cancel)",
		Long: `Manage scheduled prompts. They live in Redis as docs/data-model.md describes;
the bot receives fired prompts on the sg:sched_prompts:fired stream.`,
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError("unknown prompts command %q\nRun 'enqueuer prompts --help' for usage.", args[0])
			}
			_ = cmd.Help()
			return usageError("a prompts command is required (add, list or cancel)")
		},
	}
	cmd.AddCommand(c.promptsAddCmd(), c.promptsListCmd(), c.promptsCancelCmd())
	return cmd
}

func (c *cli) promptStore(ctx context.Context) (*prompts.Store, func(), error) {
	rdb, err := c.connectBot(ctx)
	if err != nil {
		return nil, nil, err
	}
	return prompts.NewStore(rdb), func() { rdb.Close() }, nil
}

// newPrompt checks a prompt against the bot's contract beyond what the
// store checks: a platform the bot serves, a first fire and an end in the
// future.
func newPrompt(n prompts.New, at, until *time.Time, in, every time.Duration, now time.Time) (prompts.New, error) {
	switch {
	case at != nil && in != 0:
		return n, usageError("give --at or --in, not both")
	case at == nil && in == 0:
		return n, usageError("give --at or --in: when the prompt first fires")
	case in < 0:
		return n, usageError("--in must be positive, not %s", in)
	case at != nil && !at.After(now):
		return n, usageError("--at %s is in the past", at.Format(time.RFC3339))
	case at != nil:
		n.FireAt = *at
	default:
		n.FireAt = now.Add(in)
	}
	if n.Platform != platforms[0] && n.Platform != platforms[1] {
		return n, usageError("--platform must be discord or matrix, not %q", n.Platform)
	}
	if every < 0 {
		return n, usageError("--every must be positive, not %s", every)
	}
	n.Interval = every
	if until != nil {
		if !until.After(now) {
			return n, usageError("--until %s is in the past", until.Format(time.RFC3339))
		}
		n.EndAt = *until
	}
	if err := n.Validate(); err != nil {
		return n, usageError("%v", err)
	}
	return n, nil
}

func (c *cli) promptsAddCmd() *cobra.Command {
	var (
		n         prompts.New
		at, until *time.Time
		in, every time.Duration
	)
	cmd := &cobra.Command{
		Use:   "add --platform P --channel C --text T (--at TIME | --in DURATION)",
		Short: "Schedule a prompt (one-shot, or recurring with --every)",
		Example: `  enqueuer prompts add --platform discord --channel 1234 --text "stand-up" --in 1h --every 24h
  enqueuer prompts add --platform matrix --channel '!room:example.org' --text hi --at 2026-12-01T09:00:00Z`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			now := time.Now()
			n, err := newPrompt(n, at, until, in, every, now)
			if err != nil {
				return err
			}
			store, closeFn, err := c.promptStore(cmd.Context())
			if err != nil {
				return err
			}
			defer closeFn()
			p, err := store.Add(cmd.Context(), n, now)
			if err != nil {
				return failure("%v", err)
			}
			fmt.Fprintln(c.stdout, p.ID)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&n.Platform, "platform", "", "discord or matrix")
	f.StringVar(&n.ChannelID, "channel", "", "channel (Discord) or room (Matrix) id")
	f.StringVar(&n.UserID, "user", "", "who scheduled it")
	f.StringVar(&n.Text, "text", "", "the prompt (at most 16 KiB)")
	f.Var(timeValue{&at}, "at", "first fire time (RFC 3339, in the future)")
	f.DurationVar(&in, "in", 0, "first fire after this delay")
	f.DurationVar(&every, "every", 0, "repeat at this interval (at least 1m)")
	f.Var(timeValue{&until}, "until", "stop repeating after this time (RFC 3339)")
	_ = cmd.RegisterFlagCompletionFunc("platform", cobra.FixedCompletions(platforms, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

type promptJSON struct {
	ID        string    `json:"id"`
	Platform  string    `json:"platform"`
	ChannelID string    `json:"channel_id"`
	UserID    string    `json:"user_id"`
	Text      string    `json:"text"`
	FireAt    time.Time `json:"fire_at"`
	Interval  float64   `json:"interval_seconds"`
	Status    string    `json:"status"`
	FireCount int       `json:"fire_count"`
}

func (c *cli) promptsListCmd() *cobra.Command {
	var (
		asJSON, wide bool
		limit        int64
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "Pending prompts, soonest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit < 1 {
				return usageError("--limit must be at least 1")
			}
			store, closeFn, err := c.promptStore(cmd.Context())
			if err != nil {
				return err
			}
			defer closeFn()
			ps, err := store.ListPending(cmd.Context(), limit)
			if err != nil {
				return failure("%v", err)
			}
			if asJSON {
				out := make([]promptJSON, 0, len(ps))
				for _, p := range ps {
					out = append(out, promptJSON{p.ID, p.Platform, p.ChannelID, p.UserID, p.Text, p.FireAt, p.Interval.Seconds(), string(p.Status), p.FireCount})
				}
				return c.printJSON(out)
			}
			if len(ps) == 0 {
				fmt.Fprintln(c.stdout, "no pending prompts")
				return nil
			}
			var rows [][]string
			for _, p := range ps {
				every := "once"
				if p.Interval > 0 {
					every = short(p.Interval)
				}
				rows = append(rows, []string{p.ID, p.FireAt.UTC().Format(time.RFC3339), every, p.Platform + ":" + p.ChannelID, p.Text})
			}
			table(c.stdout, wide, []string{"ID", "NEXT FIRE", "EVERY", "WHERE", "TEXT"}, rows)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array")
	cmd.Flags().BoolVar(&wide, "wide", false, "whole texts, lines not cut to 100 columns")
	cmd.Flags().Int64Var(&limit, "limit", 100, "at most this many")
	return cmd
}

func (c *cli) promptsCancelCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel a pending prompt",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			store, closeFn, err := c.promptStore(cmd.Context())
			if err != nil {
				return err
			}
			defer closeFn()
			if err := store.Cancel(cmd.Context(), args[0], time.Now()); err != nil {
				return failure("%v", err)
			}
			fmt.Fprintf(c.stdout, "cancelled %s\n", args[0])
			return nil
		},
	}
}
