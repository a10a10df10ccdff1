package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/config"
	"github.com/stargazer/stargazer-jobs/internal/store/prompts"
)

const promptsUsage = `usage: enqueuer prompts <add|list|cancel> [flags]

  add --platform P --channel C --text T (--at TIME | --in DURATION)
      [--user U] [--every DURATION [--until TIME]]
                     schedule a prompt (one-shot, or recurring with --every)
  list [--json] [--limit N]
                     pending prompts, soonest first
  cancel ID          cancel a pending prompt

The prompts live in Redis as docs/data-model.md describes; the bot receives
fired prompts on the sg:sched_prompts:fired stream.
`

func promptsCmd(ctx context.Context, cfg config.Config, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(stdout, promptsUsage)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	switch args[0] {
	case "add":
		return promptsAdd(ctx, cfg, args[1:], stdout, stderr)
	case "list":
		return promptsList(ctx, cfg, args[1:], stdout, stderr)
	case "cancel":
		return promptsCancel(ctx, cfg, args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "enqueuer: unknown prompts command %q\n\n%s", args[0], promptsUsage)
	return exitUsage
}

func promptStore(ctx context.Context, cfg config.Config, stderr io.Writer) (*prompts.Store, func(), int) {
	rdb, code := connect(ctx, cfg, stderr)
	if code != exitOK {
		return nil, nil, code
	}
	return prompts.NewStore(rdb), func() { rdb.Close() }, exitOK
}

func promptsAdd(ctx context.Context, cfg config.Config, args []string, stdout, stderr io.Writer) int {
	var (
		n         prompts.New
		at, until *time.Time
		in, every time.Duration
	)
	fs := flag.NewFlagSet("prompts add", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&n.Platform, "platform", "", "discord or matrix")
	fs.StringVar(&n.ChannelID, "channel", "", "channel or room id")
	fs.StringVar(&n.UserID, "user", "", "who scheduled it")
	fs.StringVar(&n.Text, "text", "", "the prompt")
	fs.Var(timeFlag{&at}, "at", "first fire time (RFC 3339)")
	fs.Var(durationFlag{&in}, "in", "first fire after this delay")
	fs.Var(durationFlag{&every}, "every", "repeat at this interval (at least 1m)")
	fs.Var(timeFlag{&until}, "until", "stop repeating after this time (RFC 3339)")
	fs.Usage = func() { fmt.Fprint(stderr, promptsUsage) }
	if err := fs.Parse(args); err != nil {
		return flagExit(err)
	}
	now := time.Now()
	switch {
	case at != nil && in != 0:
		fmt.Fprintln(stderr, "enqueuer: give --at or --in, not both")
		return exitUsage
	case at != nil:
		n.FireAt = *at
	case in != 0:
		n.FireAt = now.Add(in)
	}
	n.Interval = every
	if until != nil {
		n.EndAt = *until
	}
	if err := n.Validate(); err != nil {
		fmt.Fprintf(stderr, "enqueuer: %v\n", err)
		return exitUsage
	}
	store, closeFn, code := promptStore(ctx, cfg, stderr)
	if code != exitOK {
		return code
	}
	defer closeFn()
	p, err := store.Add(ctx, n, now)
	if err != nil {
		fmt.Fprintf(stderr, "enqueuer: %v\n", err)
		return exitFailure
	}
	fmt.Fprintln(stdout, p.ID)
	return exitOK
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

func promptsList(ctx context.Context, cfg config.Config, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("prompts list", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print a JSON array")
	limit := fs.Int64("limit", 100, "at most this many")
	if err := fs.Parse(args); err != nil {
		return flagExit(err)
	}
	store, closeFn, code := promptStore(ctx, cfg, stderr)
	if code != exitOK {
		return code
	}
	defer closeFn()
	ps, err := store.ListPending(ctx, *limit)
	if err != nil {
		fmt.Fprintf(stderr, "enqueuer: %v\n", err)
		return exitFailure
	}
	if *asJSON {
		out := make([]promptJSON, 0, len(ps))
		for _, p := range ps {
			out = append(out, promptJSON{p.ID, p.Platform, p.ChannelID, p.UserID, p.Text, p.FireAt, p.Interval.Seconds(), string(p.Status), p.FireCount})
		}
		return printJSON(stdout, stderr, out)
	}
	if len(ps) == 0 {
		fmt.Fprintln(stdout, "no pending prompts")
		return exitOK
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNEXT FIRE\tEVERY\tWHERE\tTEXT")
	for _, p := range ps {
		every := "once"
		if p.Interval > 0 {
			every = p.Interval.String()
		}
		text := p.Text
		if r := []rune(text); len(r) > 50 { // runes, so a cut never splits a character
			text = string(r[:47]) + "..."
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s:%s\t%s\n", p.ID, p.FireAt.Format(time.RFC3339), every, p.Platform, p.ChannelID, text)
	}
	tw.Flush()
	return exitOK
}

func promptsCancel(ctx context.Context, cfg config.Config, args []string, stdout, stderr io.Writer) int {
	if len(args) != 1 {
		fmt.Fprintln(stderr, "usage: enqueuer prompts cancel ID")
		return exitUsage
	}
	store, closeFn, code := promptStore(ctx, cfg, stderr)
	if code != exitOK {
		return code
	}
	defer closeFn()
	if err := store.Cancel(ctx, args[0], time.Now()); err != nil {
		fmt.Fprintf(stderr, "enqueuer: %v\n", err)
		return exitFailure
	}
	fmt.Fprintf(stdout, "cancelled %s\n", args[0])
	return exitOK
}
