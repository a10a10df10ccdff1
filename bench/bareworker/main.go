// Command bareworker is a bare asynq server (no middleware, no scheduler,
// no recoverer) with the worker's queues, for the many-pods benchmark's
// side-by-side figures: the same Queues and Concurrency as the worker, one
// process per pod like the worker, so Redis commands and RSS compare.
//
// Every task it is given succeeds at once. Settings: REDIS_ADDR (host:port),
// WORKER_CONCURRENCY (default 10), TASK_CHECK_INTERVAL (asynq's default
// when empty).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/jobs"
)

func main() {
	conc := 10
	if v := os.Getenv("WORKER_CONCURRENCY"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			fmt.Fprintln(os.Stderr, "bareworker: WORKER_CONCURRENCY must be a positive integer")
			os.Exit(2)
		}
		conc = n
	}
	var check time.Duration
	if v := os.Getenv("TASK_CHECK_INTERVAL"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			fmt.Fprintln(os.Stderr, "bareworker: TASK_CHECK_INTERVAL must be a positive duration")
			os.Exit(2)
		}
		check = d
	}
	s := asynq.NewServer(asynq.RedisClientOpt{Addr: os.Getenv("REDIS_ADDR")}, asynq.Config{
		Concurrency: conc, Queues: jobs.Queues(), LogLevel: asynq.FatalLevel, TaskCheckInterval: check,
	})
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := s.Start(asynq.HandlerFunc(func(context.Context, *asynq.Task) error { return nil })); err != nil {
		fmt.Fprintln(os.Stderr, "bareworker:", err)
		os.Exit(1)
	}
	fmt.Println("bareworker started")
	<-ctx.Done()
	s.Shutdown()
}
