package app_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/app"
	"github.com/stargazer/stargazer-jobs/internal/testkit/poll"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/syncbuf"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// startRun runs app.Run with env until the test ends and waits for it
// to be serving.
func startRun(t *testing.T, env map[string]string) *syncbuf.Buffer {
	t.Helper()
	env["HTTP_ADDR"] = redistest.FreeAddr(t)
	env["PROBE_ADDR"] = redistest.FreeAddr(t)
	env["SHUTDOWN_TIMEOUT"] = "5s"
	ctx, cancel := context.WithCancel(context.Background())
	logs := &syncbuf.Buffer{}
	done := make(chan error, 1)
	go func() {
		done <- app.Run(ctx, app.Params{Getenv: func(k string) string { return env[k] }, Stdout: logs, Stderr: io.Discard})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("worker did not stop")
		}
	})
	// The scheduler's line comes after the startup tasks were handled.
	poll.Until(t, "worker started", func() bool {
		return strings.Contains(logs.String(), `"scheduler started"`) || strings.Contains(logs.String(), `"scheduler disabled`)
	})
	return logs
}

// fakeDiscordAPI is a Discord REST v10 with a bot in no guilds; it counts
// the backfill's catalog calls, one per run.
func fakeDiscordAPI(t *testing.T, catalogCalls *atomic.Int32) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bot test-token" {
			w.WriteHeader(401)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/api/v10/users/@me":
			fmt.Fprint(w, `{"id":"1000000000000000001","username":"stargazer","bot":true}`)
		case "/api/v10/users/@me/guilds":
			catalogCalls.Add(1)
			fmt.Fprint(w, `[]`)
		default:
			w.WriteHeader(404)
			fmt.Fprint(w, `{"message": "Unknown", "code": 0}`)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

// backfillTasks lists the startup_channel_backfill tasks in every state.
func backfillTasks(t *testing.T, insp *asynq.Inspector) []*asynq.TaskInfo {
	t.Helper()
	var all []*asynq.TaskInfo
	for _, list := range []func(string, ...asynq.ListOption) ([]*asynq.TaskInfo, error){
		insp.ListPendingTasks, insp.ListActiveTasks, insp.ListScheduledTasks, insp.ListRetryTasks,
		insp.ListArchivedTasks, insp.ListCompletedTasks,
	} {
		tasks, err := list(jobs.QueueDefault)
		if err != nil && !strings.Contains(err.Error(), "not found") {
			t.Fatal(err)
		}
		for _, ti := range tasks {
			if ti.Type == jobs.StartupChannelBackfill {
				all = append(all, ti)
			}
		}
	}
	return all
}

func TestStartupBackfillIsEnqueuedOncePerDeployment(t *testing.T) {
	srv := redistest.Start(t)
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: srv.Addr})
	defer insp.Close()
	var catalogCalls atomic.Int32
	discord := fakeDiscordAPI(t, &catalogCalls)
	env := func(deployment string) map[string]string {
		return map[string]string{
			"REDIS_URL": srv.URL(), "DISCORD_BOT_TOKEN": "test-token", "DISCORD_API_BASE_URL": discord.URL + "/api/v10",
			"DEPLOYMENT_ID": deployment,
		}
	}
	completed := func(n int) func() bool {
		return func() bool {
			tasks := backfillTasks(t, insp)
			done := 0
			for _, ti := range tasks {
				if ti.State == asynq.TaskStateCompleted {
					done++
				}
			}
			return done == n && len(tasks) == n
		}
	}

	// Two workers of one rollout start together; the deployment id is
	// derived from the (shared) binary.
	var wg sync.WaitGroup
	logs := make([]*syncbuf.Buffer, 2)
	for i := range logs {
		wg.Add(1)
		go func() { defer wg.Done(); logs[i] = startRun(t, env("")) }()
	}
	wg.Wait()
	poll.Until(t, "one completed backfill", completed(1))
	tasks := backfillTasks(t, insp)
	if !strings.HasPrefix(tasks[0].ID, jobs.StartupChannelBackfill+"@bin-") && !strings.HasPrefix(tasks[0].ID, jobs.StartupChannelBackfill+"@rev-") {
		t.Errorf("task id %s is not deployment-scoped", tasks[0].ID)
	}
	enqueued := strings.Count(logs[0].String()+logs[1].String(), "startup task enqueued for this deployment")
	already := strings.Count(logs[0].String()+logs[1].String(), "startup task already enqueued for this deployment")
	if enqueued != 1 || already != 1 {
		t.Errorf("%d workers enqueued and %d found it enqueued, want 1 and 1", enqueued, already)
	}

	// A third worker of the same rollout (a restart) adds nothing; a new
	// rollout backfills again.
	startRun(t, env(""))
	startRun(t, env("release-2"))
	poll.Until(t, "the second rollout's backfill", completed(2))
	if _, err := insp.GetTaskInfo(jobs.QueueDefault, app.StartupTaskID(jobs.StartupChannelBackfill, "release-2")); err != nil {
		t.Fatalf("no backfill for release-2: %v", err)
	}
	if n := catalogCalls.Load(); n != 2 {
		t.Fatalf("backfill ran %d times, want 2 (one per rollout)", n)
	}
}

func TestStartupBackfillIsNotEnqueuedWhenTheGateSkipsIt(t *testing.T) {
	srv := redistest.Start(t)
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: srv.Addr})
	defer insp.Close()
	var catalogCalls atomic.Int32
	discord := fakeDiscordAPI(t, &catalogCalls)
	tests := []struct {
		name string
		env  map[string]string
	}{
		{"no platform configured", map[string]string{"REDIS_URL": srv.URL()}},
		{"turned off", map[string]string{"REDIS_URL": srv.URL(), "DISCORD_BOT_TOKEN": "test-token",
			"DISCORD_API_BASE_URL": discord.URL + "/api/v10", "TASK_INTERVALS": "startup_channel_backfill=off"}},
		{"scheduler disabled", map[string]string{"REDIS_URL": srv.URL(), "DISCORD_BOT_TOKEN": "test-token",
			"DISCORD_API_BASE_URL": discord.URL + "/api/v10", "SCHEDULER_ENABLED": "false"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logs := startRun(t, tt.env)
			if strings.Contains(logs.String(), "startup task") {
				t.Errorf("startup task handled:\n%s", logs.String())
			}
			if n := len(backfillTasks(t, insp)); n != 0 {
				t.Errorf("%d backfill tasks enqueued", n)
			}
		})
	}
}
