package app_test

import (
	"context"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/app"
	"github.com/stargazer/stargazer-jobs/internal/testkit/poll"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/syncbuf"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// With QUEUE_REDIS_URL a worker keeps the job system's keys (asynq:*,
// sgjobs:*) on that Redis and the bot's on REDIS_URL: a periodic singleton
// runs, its schedule, lease and queue are on the queue Redis, and its run
// event is published on the bot's debug channel.
func TestAWorkerWithAQueueRedisKeepsEachFamilyOfKeysOnItsRedis(t *testing.T) {
	bot, queue := redistest.Start(t), redistest.Start(t)
	botc, queuec := bot.Client(t), queue.Client(t)
	ctx := context.Background()
	sub := botc.Subscribe(ctx, "stargazer:debug_events")
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}

	probe := jobs.Spec{Name: "queue_redis_probe", Kind: jobs.Periodic, Interval: time.Second, InitialDelay: 100 * time.Millisecond,
		Singleton: true, Requires: jobs.Redis, Queue: jobs.QueueDefault, MaxRetry: 1, Timeout: time.Minute,
		NewPayload: func() jobs.Payload { return &jobs.Empty{} }, Summary: "counts its runs"}
	var runs atomic.Int32
	env := map[string]string{"REDIS_URL": bot.URL(), "QUEUE_REDIS_URL": queue.URL(),
		"HTTP_ADDR": redistest.FreeAddr(t), "PROBE_ADDR": redistest.FreeAddr(t), "SHUTDOWN_TIMEOUT": "5s"}
	runCtx, cancel := context.WithCancel(ctx)
	logs := &syncbuf.Buffer{}
	done := make(chan error, 1)
	go func() {
		done <- app.Run(runCtx, app.Params{
			Getenv: func(k string) string { return env[k] }, Stdout: logs, Stderr: io.Discard,
			Catalog: append(jobs.Catalog(), probe),
			Extra: map[string]asynq.Handler{probe.Name: asynq.HandlerFunc(func(context.Context, *asynq.Task) error {
				runs.Add(1)
				return nil
			})},
		})
	}()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("worker did not stop")
		}
	}
	t.Cleanup(stop)

	poll.Until(t, "two runs of the probe", func() bool { return runs.Load() >= 2 })
	// The run's event is on the bot's debug channel.
	evCtx, evCancel := context.WithTimeout(ctx, 10*time.Second)
	defer evCancel()
	for {
		m, err := sub.ReceiveMessage(evCtx)
		if err != nil {
			t.Fatalf("no run event on the bot's debug channel: %v\n%s", err, logs)
		}
		if strings.Contains(m.Payload, probe.Name) {
			break
		}
	}
	if n, _ := queuec.Exists(ctx, "sgjobs:schedule:"+probe.Name).Result(); n != 1 {
		t.Errorf("the probe's schedule is not on the queue Redis")
	}
	stop()

	if keys := scanKeys(t, botc, "asynq:*", "sgjobs:*"); len(keys) > 0 {
		t.Errorf("job-system keys on the bot's Redis: %v", keys)
	}
	if keys := scanKeys(t, queuec, "sg:*", "stargazer_logs:*"); len(keys) > 0 {
		t.Errorf("bot keys on the queue Redis: %v", keys)
	}
	if keys := scanKeys(t, queuec, "asynq:*"); len(keys) == 0 {
		t.Error("no asynq key on the queue Redis")
	}
}

// scanKeys lists the keys matching any of the patterns (SCAN, as an
// operator would on a live server).
func scanKeys(t *testing.T, rdb *redis.Client, patterns ...string) []string {
	t.Helper()
	var out []string
	for _, p := range patterns {
		iter := rdb.Scan(context.Background(), 0, p, 1000).Iterator()
		for iter.Next(context.Background()) {
			out = append(out, iter.Val())
		}
		if err := iter.Err(); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// The embedded Redis lives inside the process: a queue Redis beside it
// would split the job system from a bot that cannot reach its keys.
func TestAQueueRedisWithoutREDIS_URLStopsStartupNamingIt(t *testing.T) {
	env := map[string]string{"QUEUE_REDIS_URL": "redis://127.0.0.1:1/0"}
	err := app.Run(context.Background(), app.Params{Getenv: func(k string) string { return env[k] }, Stdout: io.Discard, Stderr: io.Discard})
	if err == nil || !strings.Contains(err.Error(), "QUEUE_REDIS_URL") {
		t.Fatalf("err = %v, want a configuration error naming QUEUE_REDIS_URL", err)
	}
}
