package app_test

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/app"
	"github.com/stargazer/stargazer-jobs/internal/config"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/syncbuf"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// A phase that fails after the asynq server started must not leave that
// server running unsupervised: Run returns the error and the server is
// gone (it deregistered, and it processes nothing more).
func TestAFailureAfterTheServerStartedShutsTheServerDown(t *testing.T) {
	r := redistest.Start(t)
	// An interval below a second passes the gate but is refused by the
	// scheduler, which starts after the server.
	bad := jobs.Spec{Name: "too_fast", Kind: jobs.Periodic, Interval: 500 * time.Millisecond, Requires: jobs.Redis,
		Queue: jobs.QueueDefault, MaxRetry: 1, Timeout: time.Minute,
		NewPayload: func() jobs.Payload { return &jobs.Empty{} }, Summary: "refused by the scheduler"}
	ran := make(chan struct{}, 10)
	env := map[string]string{"REDIS_URL": r.URL(), "HTTP_ADDR": redistest.FreeAddr(t), "PROBE_ADDR": redistest.FreeAddr(t), "SHUTDOWN_TIMEOUT": "2s"}
	logs := &syncbuf.Buffer{}
	done := make(chan error, 1)
	go func() {
		done <- app.Run(context.Background(), app.Params{
			Getenv: func(k string) string { return env[k] }, Stdout: logs, Stderr: io.Discard,
			Catalog: append(jobs.Catalog(), bad),
			Extra: map[string]asynq.Handler{bad.Name: asynq.HandlerFunc(func(context.Context, *asynq.Task) error {
				ran <- struct{}{}
				return nil
			})},
		})
	}()
	var err error
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after its scheduler phase failed")
	}
	if err == nil || !strings.Contains(err.Error(), "below one second") {
		t.Fatalf("Run returned %v, want the scheduler's refusal", err)
	}
	if !strings.Contains(logs.String(), `"worker started"`) || !strings.Contains(logs.String(), `"worker stopped"`) {
		t.Fatalf("the server was not started and then stopped:\n%s", logs)
	}
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: r.Addr})
	defer insp.Close()
	if servers, err := insp.Servers(); err != nil || len(servers) != 0 {
		t.Fatalf("servers after Run returned: %d (err %v), want none", len(servers), err)
	}
	client := asynq.NewClient(asynq.RedisClientOpt{Addr: r.Addr})
	defer client.Close()
	if _, err := client.Enqueue(asynq.NewTask(bad.Name, nil)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ran:
		t.Fatal("a task was processed after Run returned")
	case <-time.After(3 * time.Second):
	}
}

// The same holds for any error: a configuration error returns before
// anything starts.
func TestAConfigurationErrorStartsNothing(t *testing.T) {
	err := app.Run(context.Background(), app.Params{
		Getenv: func(k string) string { return map[string]string{"WORKER_CONCURRENCY": "none"}[k] }, Stdout: io.Discard, Stderr: io.Discard,
	})
	if err == nil || !strings.Contains(err.Error(), "WORKER_CONCURRENCY") {
		t.Fatalf("err = %v", err)
	}
	if errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
}

// A probe listener that cannot bind stops startup naming PROBE_ADDR: the
// kubelet would fail every probe of a process that ran without it.
func TestAProbeAddressInUseStopsStartupNamingIt(t *testing.T) {
	r := redistest.Start(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	env := map[string]string{"REDIS_URL": r.URL(), "HTTP_ADDR": redistest.FreeAddr(t), "PROBE_ADDR": taken.Addr().String(), "SHUTDOWN_TIMEOUT": "2s"}
	done := make(chan error, 1)
	go func() {
		done <- app.Run(context.Background(), app.Params{Getenv: func(k string) string { return env[k] }, Stdout: io.Discard, Stderr: io.Discard})
	}()
	select {
	case err := <-done:
		var ce *config.Error
		if !errors.As(err, &ce) || ce.Setting != "PROBE_ADDR" {
			t.Fatalf("Run returned %v, want a config error naming PROBE_ADDR", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return with its probe address taken")
	}
}
