// Command enqueuer lets operators see the gated catalog and enqueue any task
// by hand.
//
// Exit codes: 0 success, 1 a runtime failure (Redis unreachable, enqueue
// refused), 2 a usage error (unknown command or task, invalid payload or
// configuration).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/config"
	"github.com/stargazer/stargazer-jobs/jobs"
)

const usage = `usage: enqueuer <command> [flags]

Commands:
  list [--json]           the task catalog, gated by this configuration
  run NAME [flags]        enqueue one run of task NAME and print its ID
                          (--payload, --queue, --in, --at, --unique, --max-retry,
                          --timeout, --wait); a busy singleton is refused
  status ID               a task's state, retries, last error and result
  schedules [--json]      each periodic task's next run, last run and last status
  backlog [--json]        messages not yet extracted per source, oldest, units queued
  locks                   who holds each singleton's locks, and for how long
  unlock NAME             force-release the locks of singleton NAME
  prompts add|list|cancel manage scheduled prompts (see: enqueuer prompts help)

Run "enqueuer COMMAND -h" for a command's flags.

Configuration comes from the same environment variables as the worker
(REDIS_URL, LLM_BASE_URL, KA_ENABLED, ...; see the README).

Exit codes: 0 ok, 1 runtime failure (e.g. Redis unreachable), 2 usage error.
`

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// quietRedis drops go-redis's internal pool logging: the enqueuer reports
// connection problems itself, once, without a trace.
type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}

func main() {
	redis.SetLogger(quietRedis{})
	os.Exit(run(context.Background(), os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, usage)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	cfg, err := config.Load(getenv, nil, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "enqueuer: %v\n", err)
		return exitUsage
	}
	switch args[0] {
	case "list":
		return list(cfg, args[1:], stdout, stderr)
	case "run":
		return runTask(ctx, cfg, args[1:], stdout, stderr)
	case "status":
		return status(ctx, cfg, args[1:], stdout, stderr)
	case "prompts":
		return promptsCmd(ctx, cfg, args[1:], stdout, stderr)
	case "schedules":
		return schedules(ctx, cfg, args[1:], stdout, stderr)
	case "backlog":
		return backlog(ctx, cfg, args[1:], stdout, stderr)
	case "locks":
		return locks(ctx, cfg, args[1:], stdout, stderr)
	case "unlock":
		return unlock(ctx, cfg, args[1:], stdout, stderr)
	default:
		fmt.Fprintf(stderr, "enqueuer: unknown command %q\n\n%s", args[0], usage)
		return exitUsage
	}
}

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

func list(cfg config.Config, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("list", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print a JSON array")
	fs.Usage = func() { fmt.Fprintln(stderr, "usage: enqueuer list [--json]") }
	if err := fs.Parse(args); err != nil {
		return flagExit(err)
	}
	env, err := cfg.GatingEnv(jobs.Catalog(), nil) // nil: every task has a handler
	if err != nil {
		fmt.Fprintf(stderr, "enqueuer: %v\n", err)
		return exitUsage
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
	if *asJSON {
		return printJSON(stdout, stderr, entries)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tEVERY\tFIRST AFTER\tREQUIRES\tQUEUE\tSCHEDULED")
	for _, e := range entries {
		every := "once at startup"
		if e.IntervalSeconds > 0 {
			every = (time.Duration(e.IntervalSeconds) * time.Second).String()
		}
		sched := "yes"
		if !e.Scheduled {
			sched = "no: " + e.SkipReason
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", e.Name, every,
			(time.Duration(e.InitialDelaySeconds) * time.Second).String(),
			strings.Join(append(e.Requires, e.Needs...), ","), e.Queue, sched)
	}
	tw.Flush()
	return exitOK
}

func flagExit(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	return exitUsage
}

// connect resolves REDIS_URL and returns a client whose Redis has answered
// a PING, reporting a problem once, plainly. The caller closes it.
func connect(ctx context.Context, cfg config.Config, stderr io.Writer) (*redis.Client, int) {
	if cfg.Embedded() {
		fmt.Fprintln(stderr, "enqueuer: REDIS_URL is not set; the worker's embedded Redis lives inside its process, so set REDIS_URL to a shared Redis")
		return nil, exitUsage
	}
	rconf, err := cfg.Redis()
	if err != nil {
		fmt.Fprintf(stderr, "enqueuer: %v\n", err)
		return nil, exitUsage
	}
	// Fail fast: a CLI should not sit through go-redis's default retries.
	rconf.FailFast()
	rdb := rconf.NewClient()
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := rdb.Ping(pctx).Err(); err != nil {
		rdb.Close()
		fmt.Fprintf(stderr, "enqueuer: Redis at %s is unreachable: %v\n", rconf, err)
		return nil, exitFailure
	}
	return rdb, exitOK
}

// printJSON writes v as indented JSON, the --json output of every command.
func printJSON(stdout, stderr io.Writer, v any) int {
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		fmt.Fprintf(stderr, "enqueuer: %v\n", err)
		return exitFailure
	}
	return exitOK
}
