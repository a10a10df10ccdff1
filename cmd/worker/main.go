// Command worker runs Stargazer's background tasks: an asynq server with a
// handler per available task, the periodic scheduler, and the monitor
// (dashboard, /metrics, /healthz, /readyz) on one HTTP address.
//
// With no REDIS_URL it starts an embedded in-process Redis, so
// `go run ./cmd/worker` works on a fresh machine.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/stargazer/stargazer-jobs/config"
	"github.com/stargazer/stargazer-jobs/worker"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	switch {
	case errors.Is(err, config.ErrHelp):
		os.Exit(0)
	case err != nil:
		fmt.Fprintf(os.Stderr, "worker: %v\n", err)
		var ce *config.Error
		if errors.As(err, &ce) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	return worker.Run(ctx, worker.Params{Args: args, Getenv: getenv, Stdout: stdout, Stderr: stderr})
}
