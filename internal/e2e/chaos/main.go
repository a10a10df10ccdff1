// Command chaos runs the whole job system under a random, seeded schedule
// of overlapping faults and checks the recorded history against the
// guarantees the docs promise (docs/reliability.md, "Chaos"):
//
//	go run ./internal/e2e/chaos -seed 1 -duration 3m [-workers 4] [-faults all,-deploy]
//
// It starts a real redis-server (append-only file on), a real FalkorDB,
// fakes of the LLM, Gemini, Discord and Matrix, K worker processes and a
// node agent, with every task of the catalog on an interval of seconds;
// the bot's traffic (chat messages, scheduled prompts, RAG fragments)
// arrives while the faults run. After a quiet period it checks the
// history, prints the faults injected per kind, the invariant table and
// recovery times, every violation with the seed and the faults around
// it, and last a line violations=<n>. It exits 0 with no violation, 1
// with some, 2 when the run itself could not be made (its error is
// printed instead of the last line).
//
// The same seed gives the same fault schedule (-plan prints it). -drop
// leaves faults of the schedule out by ID, and -minimize, after a failing
// run, drops faults one at a time while the run still fails, and prints
// the smallest schedule that does.
//
// It needs what ./scripts/test.sh --install-only installs: redis-server,
// valkey-server with the FalkorDB module, systemd-journal-remote and
// journalctl.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/testkit/chaos"
	"github.com/stargazer/stargazer-jobs/internal/testkit/chaos/check"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// config is the command line.
type config struct {
	seed               int64
	duration           time.Duration
	workers            int
	kinds              []string
	drop               map[int]bool
	dir                string
	keep, plan         bool
	minimize           bool
	minimizeRuns       int
	minQuiet, maxQuiet time.Duration
	binary             string
	history            string
}

func parse(args []string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("chaos", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c config
	var faults, drop string
	fs.Int64Var(&c.seed, "seed", 1, "seed of the fault schedule and of the bot's traffic")
	fs.DurationVar(&c.duration, "duration", 3*time.Minute, "how long faults are injected (a warm-up comes before, a quiet period after)")
	fs.IntVar(&c.workers, "workers", 4, "worker processes")
	fs.StringVar(&faults, "faults", "all", "fault kinds, comma-separated; all; -kind leaves one out ("+strings.Join(check.Kinds, ", ")+")")
	fs.StringVar(&drop, "drop", "", "fault IDs of the schedule to leave out, comma-separated")
	fs.StringVar(&c.dir, "dir", "", "directory for the processes' logs (default: a temporary one, kept when a violation is found)")
	fs.BoolVar(&c.keep, "keep", false, "keep the logs directory even without violations")
	fs.BoolVar(&c.plan, "plan", false, "print the fault schedule and exit")
	fs.BoolVar(&c.minimize, "minimize", false, "after a failing run, drop faults one at a time while it still fails")
	fs.IntVar(&c.minimizeRuns, "minimize-runs", 12, "at most this many runs while minimising")
	fs.DurationVar(&c.minQuiet, "min-quiet", 45*time.Second, "shortest quiet period after the faults")
	fs.DurationVar(&c.maxQuiet, "max-quiet", 5*time.Minute, "longest wait for everything to drain after the faults")
	fs.StringVar(&c.binary, "worker-binary", "", "the testworker binary (default: built from ./internal/e2e/testworker)")
	fs.StringVar(&c.history, "history", "", "also write the recorded history, as JSON, to this file")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if c.duration < 20*time.Second {
		return c, errors.New("-duration must be at least 20s")
	}
	if c.workers < 2 {
		return c, errors.New("-workers must be at least 2")
	}
	var err error
	if c.kinds, err = chaos.ParseKinds(faults); err != nil {
		return c, fmt.Errorf("-faults: %w", err)
	}
	c.drop = map[int]bool{}
	for _, f := range strings.FieldsFunc(drop, func(r rune) bool { return r == ',' || r == ' ' }) {
		id, err := strconv.Atoi(f)
		if err != nil || id <= 0 {
			return c, fmt.Errorf("-drop: %q is not a fault ID", f)
		}
		c.drop[id] = true
	}
	return c, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	// The harness's own Redis client retries through the faults it makes;
	// go-redis's pool messages about them are noise here.
	redis.SetLogger(quiet{})
	c, err := parse(args, stderr)
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(stderr, "chaos:", err)
		}
		return 2
	}
	plan := chaos.Schedule(c.seed, c.duration, c.workers, c.kinds)
	fmt.Fprintf(stdout, "seed %d: %d faults over %v on %d workers (kinds: %s)\n", c.seed, len(plan), c.duration, c.workers, strings.Join(c.kinds, ","))
	for _, p := range plan {
		mark := ""
		if c.drop[p.ID] {
			mark = " (dropped)"
		}
		fmt.Fprintf(stdout, "  %s%s\n", p, mark)
	}
	if c.plan {
		return 0
	}
	if c.binary == "" {
		tmp, err := os.MkdirTemp("", "chaos-bin")
		if err != nil {
			fmt.Fprintln(stderr, "chaos:", err)
			return 2
		}
		defer os.RemoveAll(tmp)
		if c.binary, err = chaos.BuildWorker(tmp); err != nil {
			fmt.Fprintln(stderr, "chaos:", err)
			return 2
		}
	}
	rep, hist, dir, err := once(ctx, c, c.drop, stdout)
	if err != nil {
		fmt.Fprintln(stderr, "chaos:", err)
		if dir != "" {
			fmt.Fprintln(stderr, "chaos: logs in", dir)
		}
		return 2
	}
	check.Write(stdout, hist, rep)
	if c.history != "" {
		b, err := json.MarshalIndent(hist, "", " ")
		if err == nil {
			err = os.WriteFile(c.history, b, 0o644)
		}
		if err != nil {
			fmt.Fprintln(stderr, "chaos: writing the history:", err)
		}
	}
	n := rep.Violations()
	if n > 0 || c.keep || c.dir != "" {
		fmt.Fprintf(stdout, "\nlogs: %s\n", dir)
	} else {
		os.RemoveAll(dir)
	}
	if n > 0 && c.minimize {
		minimize(ctx, c, plan, rep, stdout)
	}
	if n > 0 {
		fmt.Fprintf(stdout, "reproduce: go run ./internal/e2e/chaos -seed %d -duration %v -workers %d -faults %s%s\n",
			c.seed, c.duration, c.workers, strings.Join(c.kinds, ","), dropFlag(c.drop))
	}
	fmt.Fprintf(stdout, "violations=%d\n", n)
	if n > 0 {
		return 1
	}
	return 0
}

// once makes one run and checks it.
func once(ctx context.Context, c config, drop map[int]bool, progress io.Writer) (*check.Report, *check.History, string, error) {
	dir := c.dir
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", fmt.Sprintf("chaos-seed%d-", c.seed)); err != nil {
			return nil, nil, "", err
		}
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, nil, "", err
	}
	hist, err := chaos.Run(ctx, chaos.Options{Seed: c.seed, Duration: c.duration, Workers: c.workers, Kinds: c.kinds, Drop: drop,
		Dir: dir, Binary: c.binary, MinQuiet: c.minQuiet, MaxQuiet: c.maxQuiet, Log: progress})
	if err != nil {
		return nil, hist, dir, err
	}
	return check.Check(hist), hist, dir, nil
}

// minimize drops the schedule's faults one at a time, keeping a drop
// whenever the run still breaks one of the invariants the first run
// broke.
func minimize(ctx context.Context, c config, plan []chaos.Planned, first *check.Report, out io.Writer) {
	broken := map[string]bool{}
	for _, inv := range first.Invariants {
		if len(inv.Violations) > 0 {
			broken[inv.Name] = true
		}
	}
	drop := map[int]bool{}
	for id := range c.drop {
		drop[id] = true
	}
	runs := 0
	for _, p := range plan {
		if drop[p.ID] || runs >= c.minimizeRuns || ctx.Err() != nil {
			continue
		}
		runs++
		try := map[int]bool{p.ID: true}
		for id := range drop {
			try[id] = true
		}
		sub := c
		sub.dir = ""
		rep, _, dir, err := once(ctx, sub, try, io.Discard)
		still := false
		if err == nil {
			for _, inv := range rep.Invariants {
				if len(inv.Violations) > 0 && broken[inv.Name] {
					still = true
				}
			}
		}
		if dir != "" {
			os.RemoveAll(dir)
		}
		fmt.Fprintf(out, "minimize: without fault #%d (%s): %s\n", p.ID, p.Kind, map[bool]string{true: "still fails, dropped", false: "passes, kept"}[still])
		if still {
			drop = try
		}
	}
	var kept []string
	for _, p := range plan {
		if !drop[p.ID] {
			kept = append(kept, p.String())
		}
	}
	fmt.Fprintf(out, "minimize: %d runs; the schedule still failing keeps %d of %d faults%s:\n", runs, len(kept), len(plan), dropFlag(drop))
	for _, k := range kept {
		fmt.Fprintln(out, "  "+k)
	}
}

func dropFlag(drop map[int]bool) string {
	if len(drop) == 0 {
		return ""
	}
	var ids []int
	for id := range drop {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var s []string
	for _, id := range ids {
		s = append(s, strconv.Itoa(id))
	}
	return " -drop " + strings.Join(s, ",")
}

type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}
