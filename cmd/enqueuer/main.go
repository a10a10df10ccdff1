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
	"github.com/stargazer/stargazer-jobs/internal/cursors"
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

// connect returns a client of the job system's Redis (QUEUE_REDIS_URL,
// else REDIS_URL), which every command but prompts and cursors reads,
// after it answered a PING, reporting a problem once, plainly. The caller
// closes it.
func (c *cli) connect(ctx context.Context) (*redis.Client, error) {
	cfg, err := c.redisConfig()
	if err != nil {
		return nil, err
	}
	rconf, err := cfg.QueueRedis()
	if err != nil {
		return nil, usageError("%v", err)
	}
	return dial(ctx, rconf, cfg.SeparateQueue())
}

// connectBot returns a client of the bot's Redis (REDIS_URL): the
// scheduled prompts.
func (c *cli) connectBot(ctx context.Context) (*redis.Client, error) {
	cfg, err := c.redisConfig()
	if err != nil {
		return nil, err
	}
	rconf, err := cfg.Redis()
	if err != nil {
		return nil, usageError("%v", err)
	}
	return dial(ctx, rconf, false)
}

// redises are the clients of a command that reads both sides: bot is
// REDIS_URL's, queue QUEUE_REDIS_URL's (the same client when unset).
type redises struct{ bot, queue *redis.Client }

func (r redises) Close() {
	r.bot.Close()
	if r.queue != r.bot {
		r.queue.Close()
	}
}

// cursors is where the task positions live.
func (r redises) cursors() cursors.Redis { return cursors.Redis{Bot: r.bot, Jobs: r.queue} }

// connectBoth returns the clients of both Redis servers (one, without
// QUEUE_REDIS_URL).
func (c *cli) connectBoth(ctx context.Context) (redises, error) {
	cfg, err := c.redisConfig()
	if err != nil {
		return redises{}, err
	}
	bconf, err := cfg.Redis()
	if err != nil {
		return redises{}, usageError("%v", err)
	}
	qconf, err := cfg.QueueRedis()
	if err != nil {
		return redises{}, usageError("%v", err)
	}
	bot, err := dial(ctx, bconf, false)
	if err != nil {
		return redises{}, err
	}
	if !cfg.SeparateQueue() {
		return redises{bot: bot, queue: bot}, nil
	}
	queue, err := dial(ctx, qconf, true)
	if err != nil {
		bot.Close()
		return redises{}, err
	}
	return redises{bot: bot, queue: queue}, nil
}

// redisConfig loads the settings of a command that needs Redis.
func (c *cli) redisConfig() (config.Config, error) {
	cfg, err := c.config()
	if err != nil {
		return cfg, err
	}
	if cfg.Embedded() {
		return cfg, usageError("REDIS_URL is not set; the worker's embedded Redis lives inside its process, so set REDIS_URL to a shared Redis")
	}
	return cfg, nil
}

// dial connects to rconf and waits for a PING; queue names the Redis as
// QUEUE_REDIS_URL's in the message.
func dial(ctx context.Context, rconf config.Redis, queue bool) (*redis.Client, error) {
	// Fail fast: a CLI should not sit through go-redis's default retries.
	rconf.FailFast()
	rdb := rconf.NewClient()
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := rdb.Ping(pctx).Err(); err != nil {
		rdb.Close()
		if queue {
			return nil, failure("the queue Redis (QUEUE_REDIS_URL) at %s is unreachable: %v", rconf, err)
		}
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
