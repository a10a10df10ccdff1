// Command enqueuer lets operators see the gated catalog, enqueue any task
// by hand, and inspect schedules, singleton locks and scheduled prompts. It
// follows the asynq CLI's conventions (cobra): flags anywhere on the line,
// -h/--help on every command, shell completion (`enqueuer completion`).
//
// Exit codes: 0 success, 1 a runtime failure (Redis unreachable, enqueue
// refused), 2 a usage error (unknown command or task, bad flag or
// argument, invalid payload or configuration).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/stargazer/stargazer-jobs/internal/config"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// exitError carries a command's exit code; its message is printed once,
// prefixed with "enqueuer: ".
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// usageError is exit code 2: the command line or the configuration is
// wrong.
func usageError(format string, a ...any) error {
	return &exitError{code: exitUsage, msg: fmt.Sprintf(format, a...)}
}

// failure is exit code 1: the command was right but could not be done.
func failure(format string, a ...any) error {
	return &exitError{code: exitFailure, msg: fmt.Sprintf(format, a...)}
}

// quietRedis drops go-redis's internal pool logging: the enqueuer reports
// connection problems itself, once, without a trace.
type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}

func main() {
	redis.SetLogger(quietRedis{})
	os.Exit(run(context.Background(), os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// cli is what every command shares: where to print, and the environment
// its configuration comes from.
type cli struct {
	getenv         func(string) string
	stdout, stderr io.Writer
}

// config loads the settings (the worker's environment variables); a bad
// one is a usage error naming it.
func (c *cli) config() (config.Config, error) {
	cfg, err := config.Load(c.getenv, nil, c.stderr)
	if err != nil {
		return cfg, usageError("%v", err)
	}
	return cfg, nil
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	c := &cli{getenv: getenv, stdout: stdout, stderr: stderr}
	root := c.root()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		fmt.Fprintf(stderr, "enqueuer: %s\n", ee.msg)
		return ee.code
	}
	// Cobra's own errors: an unknown command or flag, a bad flag value,
	// a wrong number of arguments.
	fmt.Fprintf(stderr, "enqueuer: %v\nRun '%s --help' for usage.\n", err, cmd.CommandPath())
	return exitUsage
}

func (c *cli) root() *cobra.Command {
	root := &cobra.Command{
		Use:   "enqueuer",
		Short: "Enqueue stargazer-jobs tasks by hand and inspect the job system",
		Long: `enqueuer lets operators see the gated task catalog, enqueue any task by hand,
and inspect schedules, singleton locks and scheduled prompts.

Configuration comes from the same environment variables as the worker
(REDIS_URL, LLM_BASE_URL, KA_ENABLED, ...; see the README).

Exit codes: 0 ok, 1 runtime failure (e.g. Redis unreachable), 2 usage error.`,
		SilenceErrors: true,
		SilenceUsage:  true,
		// Without a command: the help, as a usage error.
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_ = cmd.Help()
			return usageError("a command is required")
		},
	}
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return usageError("%v\nRun '%s --help' for usage.", err, cmd.CommandPath())
	})
	root.AddCommand(c.listCmd(), c.runCmd(), c.statusCmd(), c.schedulesCmd(), c.backlogCmd(), c.locksCmd(), c.unlockCmd(), c.promptsCmd())
	root.AddCommand(c.cursorsCmd())
	root.AddCommand(c.spendCmd(), c.budgetCmd())
	return root
}

// connect resolves REDIS_URL and returns a client whose Redis has answered
// a PING, reporting a problem once, plainly. The caller closes it.
func (c *cli) connect(ctx context.Context) (*redis.Client, error) {
	cfg, err := c.config()
	if err != nil {
		return nil, err
	}
	if cfg.Embedded() {
		return nil, usageError("REDIS_URL is not set; the worker's embedded Redis lives inside its process, so set REDIS_URL to a shared Redis")
	}
	rconf, err := cfg.Redis()
	if err != nil {
		return nil, usageError("%v", err)
	}
	// Fail fast: a CLI should not sit through go-redis's default retries.
	rconf.FailFast()
	rdb := rconf.NewClient()
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := rdb.Ping(pctx).Err(); err != nil {
		rdb.Close()
		return nil, failure("Redis at %s is unreachable: %v", rconf, err)
	}
	return rdb, nil
}

// printJSON writes v as indented JSON, the --json output of every command.
func (c *cli) printJSON(v any) error {
	enc := json.NewEncoder(c.stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return failure("%v", err)
	}
	return nil
}
