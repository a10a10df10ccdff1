package e2e

// Scenarios of issue 13: the incidents that used to stop background work
// until someone restarted a pod.

import (
	"context"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/queue/singleton"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

// waitFor polls cond every 100 ms until it holds or timeout passes.
func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return cond()
}

// panicked returns the runs that panicked: task|taskID|pid.
func panicked(t *testing.T, rdb *redis.Client) [][]string {
	raw, err := rdb.LRange(context.Background(), "e2e:panicked", 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	var out [][]string
	for _, r := range raw {
		out = append(out, strings.Split(r, "|"))
	}
	return out
}

func byPID(ws []*proc, pid string) *proc {
	for _, w := range ws {
		if strconv.Itoa(w.Pid()) == pid {
			return w
		}
	}
	return nil
}

func TestPanickingSingletonIsArchivedOnceAndRunsAgainWithinAnInterval(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process scenario")
	}
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := context.Background()
	const interval = 3 * time.Second
	env := map[string]string{"TASK_INTERVALS": "e2e_plain=off,e2e_single=3s", "E2E_SLEEP": "200ms"}
	// The first run of the singleton meets an unexpected graph row.
	rdb.Set(ctx, "e2e:panic:e2e_single", "1", 0)
	ws := []*proc{start(t, srv.URL(), env), start(t, srv.URL(), env)}
	var p []string
	if !waitFor(20*time.Second, func() bool { ps := panicked(t, rdb); p = append([]string(nil), first1(ps)...); return len(ps) > 0 }) {
		t.Fatalf("no run panicked\n%s", ws[0].Logs())
	}
	panickedAt := time.Now()
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: srv.Addr})
	defer insp.Close()
	var info *asynq.TaskInfo
	waitFor(10*time.Second, func() bool {
		info, _ = insp.GetTaskInfo("maintenance", p[1])
		return info != nil && info.State == asynq.TaskStateArchived
	})
	if info == nil || info.State != asynq.TaskStateArchived || info.Retried != 0 || !strings.Contains(info.LastErr, "panic") {
		t.Fatalf("panicked run %s: %+v, want archived at once with the panic as its reason", p[1], info)
	}

	// The next occurrence runs normally, within one interval.
	var next run
	ok := waitFor(interval+3*time.Second, func() bool {
		for _, r := range runs(t, rdb, "e2e_single") {
			if r.id != p[1] {
				next = r
				return true
			}
		}
		return false
	})
	if !ok {
		t.Fatalf("no run of e2e_single completed within %v of the panic\nlocks: %v\n%s", interval+3*time.Second, held(t, rdb), byPID(ws, p[2]).Logs())
	}
	afterPanic := next.end.Sub(panickedAt)
	if gap := dueOf(t, next).Sub(dueOf(t, run{id: p[1]})); gap != interval {
		t.Errorf("the first run after the panic was due %v after the panicked one, want the very next occurrence (%v)", gap, interval)
	}

	// And on the other worker, once the one that panicked is gone.
	other := ws[0]
	panicker := byPID(ws, p[2])
	if other == panicker {
		other = ws[1]
	}
	panicker.term()
	stopped := time.Now()
	var onOther run
	ok = waitFor(interval+3*time.Second, func() bool {
		for _, r := range runs(t, rdb, "e2e_single") {
			if r.pid == other.Pid() && r.start.After(stopped) {
				onOther = r
				return true
			}
		}
		return false
	})
	if !ok {
		t.Fatalf("the other worker did not run e2e_single within an interval\n%s", other.Logs())
	}

	// Turn the schedule off and let what is queued drain: nothing is held.
	other.term()
	drain := start(t, srv.URL(), map[string]string{"TASK_INTERVALS": "e2e_plain=off,e2e_single=off", "E2E_SLEEP": "10ms"})
	if !waitFor(10*time.Second, func() bool { return len(held(t, rdb)) == 0 }) {
		t.Errorf("singleton locks still held after the schedule stopped: %v", held(t, rdb))
	}
	drain.term()
	archived, _ := insp.ListArchivedTasks("maintenance")
	if len(archived) != 1 {
		t.Errorf("%d archived runs, want only the one that panicked", len(archived))
	}
	figure(t, "singleton panicked: archived once (Retried=0); next run completed %.1fs after the panic (interval 3s); after the panicking worker stopped, the other worker ran it %.1fs later; locks held at the end: %d",
		afterPanic.Seconds(), onOther.start.Sub(stopped).Seconds(), len(held(t, rdb)))
}

func first1(ps [][]string) []string {
	if len(ps) == 0 {
		return nil
	}
	return ps[0]
}

// held is what `enqueuer locks` lists, for the test tasks.
func held(t *testing.T, rdb *redis.Client) []singleton.Holder {
	hs, err := singleton.List(context.Background(), rdb, map[string]string{"e2e_single": "maintenance"})
	if err != nil {
		t.Fatal(err)
	}
	return hs
}

func TestShutdownWithRedisUnreachableFinishesWithinTheShutdownTimeout(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process scenario")
	}
	tests := []struct {
		name, sleep string
	}{
		// Each finishes during the outage and offers its debug event to a
		// publisher that cannot send.
		{"ten runs finish during the outage", "1500ms"},
		// asynq waits SHUTDOWN_TIMEOUT for them, then cannot requeue them.
		{"ten runs outlast the shutdown timeout", "60s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := redistest.Start(t)
			rdb := srv.Client(t)
			started := subscribe(t, rdb)
			env := map[string]string{"TASK_INTERVALS": "e2e_plain=off,e2e_single=off", "E2E_SLEEP": tt.sleep, "WORKER_CONCURRENCY": "10"}
			w := start(t, srv.URL(), env)
			enqueueLoad(t, asynq.RedisClientOpt{Addr: srv.Addr}, "busy", 40)
			for range 10 {
				waitStarted(t, started, 10*time.Second)
			}
			srv.Crash()
			time.Sleep(2 * time.Second)
			t0 := time.Now()
			w.Signal(syscall.SIGTERM)
			const shutdownTimeout = 5 * time.Second // start() sets SHUTDOWN_TIMEOUT=5s
			select {
			case <-w.Done():
			case <-time.After(shutdownTimeout + 60*time.Second):
				t.Fatalf("worker still running %v after SIGTERM with Redis down\n%s", time.Since(t0), tail(w.Logs(), 30))
			}
			took := time.Since(t0)
			if took > shutdownTimeout+5*time.Second {
				t.Errorf("shutdown with Redis down took %v, want at most SHUTDOWN_TIMEOUT (%v) + 5s\n%s", took, shutdownTimeout, tail(w.Logs(), 30))
			}
			figure(t, "SIGTERM with Redis down (%s, SHUTDOWN_TIMEOUT=5s): exited after %.1fs", tt.name, took.Seconds())
		})
	}
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
