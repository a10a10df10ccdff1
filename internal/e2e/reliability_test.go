package e2e

// The reliability suite: real worker processes against a real redis-server,
// under faults. Each scenario logs its figures with the prefix "FIGURE" so
// scripts/reliability.sh can collect them into docs/reliability.md.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/testkit/faultproxy"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

// enqueueLoad enqueues n e2e_plain tasks with IDs prefix-0..n-1.
func enqueueLoad(t *testing.T, conn asynq.RedisConnOpt, prefix string, n int, opts ...asynq.Option) []string {
	t.Helper()
	c := asynq.NewClient(conn)
	defer c.Close()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s-%d", prefix, i)
		o := append([]asynq.Option{asynq.TaskID(ids[i]), asynq.MaxRetry(10), asynq.Queue("default")}, opts...)
		if _, err := c.Enqueue(asynq.NewTask("e2e_plain", nil), o...); err != nil {
			t.Fatalf("enqueue %s: %v", ids[i], err)
		}
	}
	return ids
}

// completions counts completed runs per task ID, from Redis.
func completions(t *testing.T, rdb *redis.Client) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, r := range runs(t, rdb, "e2e_plain") {
		out[r.id]++
	}
	return out
}

// completionsFromLog counts completed runs per task ID from the workers'
// run log file (independent of Redis).
func completionsFromLog(t *testing.T, path string) map[string]int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if f := strings.Split(line, "|"); len(f) == 5 && f[0] == "e2e_plain" {
			out[f[1]]++
		}
	}
	return out
}

// waitDone polls count until every id completed or the deadline passes,
// and returns the lost and duplicated IDs.
func waitDone(t *testing.T, ids []string, timeout time.Duration, count func() map[string]int) (lost, dups []string, elapsed time.Duration) {
	t.Helper()
	start := time.Now()
	for {
		got := count()
		lost, dups = nil, nil
		for _, id := range ids {
			switch n := got[id]; {
			case n == 0:
				lost = append(lost, id)
			case n > 1:
				dups = append(dups, id)
			}
		}
		if len(lost) == 0 || time.Since(start) > timeout {
			return lost, dups, time.Since(start)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// stillRunning fails the test for every worker that exited during what:
// workers must ride out Redis faults without a restart.
func stillRunning(t *testing.T, ws []*proc, what string) {
	t.Helper()
	for _, w := range ws {
		select {
		case <-w.Done():
			t.Errorf("worker %d exited during %s:\n%s", w.Pid(), what, w.Logs())
		default:
		}
	}
}

func figure(t *testing.T, format string, args ...any) {
	t.Helper()
	t.Logf("FIGURE %s: %s", t.Name(), fmt.Sprintf(format, args...))
}

// startEvents collects the e2e:started events: task ID → [(pid, time)].
type startEvent struct {
	pid int
	at  time.Time
}

func collectStarts(t *testing.T, rdb *redis.Client) func() map[string][]startEvent {
	ch := subscribe(t, rdb)
	events := map[string][]startEvent{}
	req := make(chan chan map[string][]startEvent)
	go func() {
		for {
			select {
			case m, ok := <-ch:
				if !ok {
					return
				}
				f := strings.Split(m.Payload, "|")
				if len(f) == 3 {
					pid, _ := strconv.Atoi(f[2])
					events[f[1]] = append(events[f[1]], startEvent{pid: pid, at: time.Now()})
				}
			case r := <-req:
				cp := make(map[string][]startEvent, len(events))
				for k, v := range events {
					cp[k] = append([]startEvent(nil), v...)
				}
				r <- cp
			}
		}
	}()
	return func() map[string][]startEvent {
		r := make(chan map[string][]startEvent)
		req <- r
		return <-r
	}
}

func TestReliabilitySIGKILLUnderLoadLosesNothing(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	starts := collectStarts(t, rdb)
	env := map[string]string{"TASK_INTERVALS": "e2e_plain=off,e2e_single=off", "E2E_SLEEP": "300ms", "WORKER_CONCURRENCY": "4"}
	ws := []*proc{start(t, srv.URL(), env), start(t, srv.URL(), env), start(t, srv.URL(), env)}
	ids := enqueueLoad(t, asynq.RedisClientOpt{Addr: srv.Addr}, "kill", 600)

	const kills = 5
	killedAt := map[int]time.Time{}
	for i := range kills {
		time.Sleep(2 * time.Second)
		v := &ws[i%len(ws)]
		killedAt[(*v).Pid()] = time.Now()
		(*v).Kill()
		*v = start(t, srv.URL(), env)
	}
	lost, dups, _ := waitDone(t, ids, 3*time.Minute, func() map[string]int { return completions(t, rdb) })

	// Recovery: for each task a killed worker had started and not finished,
	// the time from the kill to its next start elsewhere.
	var recov []time.Duration
	done := map[string]int{}
	for _, r := range runs(t, rdb, "e2e_plain") {
		done[r.id] = r.pid
	}
	for id, evs := range starts() {
		for i, ev := range evs {
			k, killed := killedAt[ev.pid]
			if !killed || done[id] == ev.pid || i+1 >= len(evs) || ev.at.After(k) {
				continue
			}
			recov = append(recov, evs[i+1].at.Sub(k))
		}
	}
	sort.Slice(recov, func(i, j int) bool { return recov[i] < recov[j] })
	for _, w := range ws {
		w.term()
	}
	if len(lost) > 0 {
		t.Errorf("%d of %d tasks lost: %v", len(lost), len(ids), lost[:min(10, len(lost))])
	}
	if len(recov) == 0 {
		t.Errorf("no killed in-flight task was observed being recovered")
	}
	maxR := time.Duration(0)
	if len(recov) > 0 {
		maxR = recov[len(recov)-1]
	}
	figure(t, "%d tasks, %d SIGKILLs under load: lost %d, completed twice %d, killed in-flight runs %d, recovery min %.1fs max %.1fs",
		len(ids), kills, len(lost), len(dups), len(recov), first(recov).Seconds(), maxR.Seconds())
}

func first(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	return ds[0]
}

func TestReliabilityRedisCrashWithAOFLosesNothing(t *testing.T) {
	srv := redistest.Start(t, "--appendonly", "yes", "--appendfsync", "always")
	rdb := srv.Client(t)
	// Runs are counted from a file: a run that completes while Redis is
	// down cannot record itself there.
	runlog := filepath.Join(t.TempDir(), "runs.log")
	env := map[string]string{"TASK_INTERVALS": "e2e_plain=off,e2e_single=2s", "E2E_SLEEP": "200ms", "WORKER_CONCURRENCY": "4", "E2E_RUNLOG": runlog}
	ws := []*proc{start(t, srv.URL(), env), start(t, srv.URL(), env)}
	conn := asynq.RedisClientOpt{Addr: srv.Addr}
	ids := enqueueLoad(t, conn, "queued", 200)
	ids = append(ids, enqueueLoad(t, conn, "scheduled", 20, asynq.ProcessIn(4*time.Second))...)
	time.Sleep(1500 * time.Millisecond) // some done, some running, some queued, all scheduled

	crashed := time.Now()
	srv.Crash()
	time.Sleep(5 * time.Second)
	srv.Restart(t)
	back := time.Now()

	lost, dups, _ := waitDone(t, ids, 2*time.Minute, func() map[string]int { return completionsFromLog(t, runlog) })
	time.Sleep(5 * time.Second) // let the scheduler run on the grid after the return
	stillRunning(t, ws, "the Redis outage")
	// The singleton scheduled every 2 s: occurrences due during the outage
	// are caught up exactly once.
	catchUps := 0
	for _, r := range runs(t, rdb, "e2e_single") {
		if due := dueOf(t, r); due.After(crashed) && due.Before(back) {
			catchUps++
		}
	}
	distinctIDs(t, runs(t, rdb, "e2e_single"))
	for _, w := range ws {
		w.term()
	}
	if len(lost) > 0 {
		t.Errorf("%d of %d tasks lost: %v", len(lost), len(ids), lost[:min(10, len(lost))])
	}
	if catchUps > 1 {
		t.Errorf("%d catch-up runs for occurrences due during the outage, want at most 1", catchUps)
	}
	figure(t, "Redis SIGKILLed for 5s with appendfsync always, %d tasks queued/scheduled/running: lost %d, completed twice %d, workers restarted 0, singleton catch-up runs %d",
		len(ids), len(lost), len(dups), catchUps)
}

func TestReliabilityPartitionedWorkerYieldsTheSingleton(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	proxy, err := faultproxy.Start(srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	started := subscribe(t, rdb)
	env := map[string]string{"TASK_INTERVALS": "e2e_plain=off,e2e_single=1h", "E2E_SLEEP": "10s", "SINGLETON_LEASE": "3s"}
	a := start(t, "redis://"+proxy.Addr()+"/0", env)
	ev := waitStarted(t, started, 15*time.Second)
	b := start(t, srv.URL(), env)
	cut := time.Now()
	proxy.SetMode(faultproxy.Stall)

	var done []run
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) && len(done) == 0 {
		done = runs(t, rdb, "e2e_single")
		time.Sleep(500 * time.Millisecond)
	}
	completedAfter := time.Since(cut)
	proxy.SetMode(faultproxy.Pass)
	time.Sleep(3 * time.Second) // let A report what happened once it can

	if len(done) != 1 || done[0].id != ev[1] || done[0].pid != b.Pid() {
		t.Fatalf("completed runs %+v, want task %s completed by the connected worker %d\nA:\n%s\nB:\n%s", done, ev[1], b.Pid(), a.Logs(), b.Logs())
	}
	if n, _ := rdb.LLen(context.Background(), "e2e:destructive").Result(); n != 1 {
		t.Errorf("destructive step ran %d times, want once", n)
	}
	aLogs := a.Logs()
	cancelled := strings.Contains(aLogs, "context canceled") || strings.Contains(aLogs, "lease lost") || strings.Contains(aLogs, "lease expired")
	if !cancelled {
		t.Errorf("the cut-off worker never gave up its run:\n%s", aLogs)
	}
	a.term()
	b.term()
	figure(t, "worker cut off (traffic stalled) 1s into a 10s singleton run: completed on the connected worker %.1fs after the cut, destructive step ran once, cut-off worker gave up its run: %v",
		completedAfter.Seconds(), cancelled)
}

func TestReliabilitySIGTERMUnderLoad(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	env := map[string]string{"TASK_INTERVALS": "e2e_plain=off,e2e_single=1s", "E2E_SLEEP": "500ms", "WORKER_CONCURRENCY": "4"}
	ws := []*proc{start(t, srv.URL(), env), start(t, srv.URL(), env)}
	ids := enqueueLoad(t, asynq.RedisClientOpt{Addr: srv.Addr}, "term", 300)
	var stops []time.Duration
	for i := range 4 {
		time.Sleep(2 * time.Second)
		v := &ws[i%2]
		t0 := time.Now()
		(*v).term()
		stops = append(stops, time.Since(t0))
		*v = start(t, srv.URL(), env)
	}
	lost, dups, _ := waitDone(t, ids, 2*time.Minute, func() map[string]int { return completions(t, rdb) })
	for _, w := range ws {
		w.term()
	}
	if len(lost) > 0 {
		t.Errorf("%d tasks lost", len(lost))
	}
	if len(dups) > 0 {
		t.Errorf("%d tasks completed twice after graceful shutdowns: %v", len(dups), dups[:min(10, len(dups))])
	}
	if o := overlaps(t, rdb); slices.Contains(o, "e2e_single") {
		t.Errorf("singleton ran twice at once: %v", o)
	}
	distinctIDs(t, runs(t, rdb, "e2e_single"))
	sort.Slice(stops, func(i, j int) bool { return stops[i] < stops[j] })
	figure(t, "%d tasks, 4 SIGTERMs under load (5s shutdown timeout): lost %d, completed twice %d, singleton overlaps 0, slowest shutdown %.1fs",
		len(ids), len(lost), len(dups), stops[len(stops)-1].Seconds())
}

func TestReliabilityBadInputIsArchivedOnceAndTheWorkerKeepsServing(t *testing.T) {
	srv := redistest.Start(t)
	env := map[string]string{"TASK_INTERVALS": "e2e_plain=off,e2e_single=off", "E2E_SLEEP": "10ms"}
	w := start(t, srv.URL(), env)
	conn := asynq.RedisClientOpt{Addr: srv.Addr}
	c := asynq.NewClient(conn)
	defer c.Close()
	bad := []struct {
		id, task string
		payload  []byte
		reason   string
	}{
		{"malformed", "scheduled_prompt_cleanup", []byte(`{"days_to_keep":`), "invalid payload"},
		{"unknown-field", "scheduled_prompt_cleanup", []byte(`{"days":3}`), "unknown field"},
		{"out-of-range", "scheduled_prompt_cleanup", []byte(`{"days_to_keep":0}`), "days_to_keep must be"},
		{"invalid-utf8", "scheduled_prompt_cleanup", []byte("{\"x\":\"\xff\"}"), "UTF-8"},
		{"oversize", "scheduled_prompt_cleanup", []byte(`{"pad":"` + strings.Repeat("a", 70<<10) + `"}`), "exceeds"},
		{"unknown-type", "no_such_task", nil, "handler not found"},
		{"panic", "e2e_panic", nil, "panic"},
	}
	for _, b := range bad {
		if _, err := c.Enqueue(asynq.NewTask(b.task, b.payload), asynq.TaskID(b.id), asynq.MaxRetry(5), asynq.Queue("default")); err != nil {
			t.Fatal(err)
		}
	}
	ids := enqueueLoad(t, conn, "after", 20)
	rdb := srv.Client(t)
	lost, _, _ := waitDone(t, ids, time.Minute, func() map[string]int { return completions(t, rdb) })
	if len(lost) > 0 {
		t.Errorf("the worker stopped serving: %d good tasks not done", len(lost))
	}
	insp := asynq.NewInspector(conn)
	defer insp.Close()
	archived := 0
	deadline := time.Now().Add(20 * time.Second)
	for _, b := range bad {
		var info *asynq.TaskInfo
		for time.Now().Before(deadline) {
			info, _ = insp.GetTaskInfo("default", b.id)
			if info != nil && info.State == asynq.TaskStateArchived {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		switch {
		case info == nil || info.State != asynq.TaskStateArchived:
			t.Errorf("%s: not archived: %+v", b.id, info)
		case info.Retried != 0:
			t.Errorf("%s: retried %d times, want archived at once", b.id, info.Retried)
		case !strings.Contains(info.LastErr, b.reason):
			t.Errorf("%s: reason %q, want it to mention %q", b.id, info.LastErr, b.reason)
		default:
			archived++
		}
	}
	runsTotal := w.Metric(`stargazer_task_runs_total{status="invalid"`) + w.Metric(`stargazer_task_runs_total{status="panic"`) + w.Metric(`stargazer_task_runs_total{status="not_found"`)
	w.term()
	figure(t, "%d bad tasks (malformed, unknown field, out of range, invalid UTF-8, 70 KiB, unknown type, panic): archived once each %d, handler runs %v, good tasks after them lost %d",
		len(bad), archived, runsTotal, len(lost))
}

// sentinel starts a Redis Sentinel (redis-server --sentinel) watching the
// primary at primaryAddr as "mymaster", quorum 1.
func sentinel(t *testing.T, primaryAddr string) string {
	t.Helper()
	addr := redistest.FreeAddr(t)
	host, port, _ := strings.Cut(addr, ":")
	ph, pp, _ := strings.Cut(primaryAddr, ":")
	dir := t.TempDir()
	conf := filepath.Join(dir, "sentinel.conf")
	body := fmt.Sprintf("port %s\nbind %s\ndir %s\nsentinel monitor mymaster %s %s 1\nsentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\nsentinel parallel-syncs mymaster 1\n",
		port, host, dir, ph, pp)
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	p := exec.Command("redis-server", conf, "--sentinel", "--logfile", filepath.Join(dir, "sentinel.log"))
	if err := p.Start(); err != nil {
		t.Fatalf("starting redis-server --sentinel: %v", err)
	}
	t.Cleanup(func() { p.Process.Kill(); p.Wait() })
	c := redis.NewSentinelClient(&redis.Options{Addr: addr})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if a, err := c.GetMasterAddrByName(context.Background(), "mymaster").Result(); err == nil && len(a) == 2 {
			return addr
		}
		time.Sleep(100 * time.Millisecond)
	}
	log, _ := os.ReadFile(filepath.Join(dir, "sentinel.log"))
	t.Fatalf("sentinel not ready:\n%s", log)
	return ""
}

func TestReliabilitySentinelFailoverWorkersFollowTheNewPrimary(t *testing.T) {
	primary := redistest.Start(t, "--appendonly", "yes", "--appendfsync", "always",
		"--min-replicas-to-write", "1", "--min-replicas-max-lag", "10")
	replica := redistest.Start(t, "--appendonly", "yes", "--appendfsync", "always", "--replicaof", strings.Replace(primary.Addr, ":", " ", 1))
	rc := replica.Client(t)
	waitReplicating(t, rc)
	sentinelAddr := sentinel(t, primary.Addr)
	url := "redis://" + sentinelAddr + "/0?master_name=mymaster"
	runlog := filepath.Join(t.TempDir(), "runs.log")
	env := map[string]string{"TASK_INTERVALS": "e2e_plain=off,e2e_single=off", "E2E_SLEEP": "200ms", "WORKER_CONCURRENCY": "4", "E2E_RUNLOG": runlog}
	ws := []*proc{start(t, url, env), start(t, url, env)}
	conn := asynq.RedisFailoverClientOpt{MasterName: "mymaster", SentinelAddrs: []string{sentinelAddr}}
	ids := enqueueLoad(t, conn, "failover", 300)
	time.Sleep(2 * time.Second)

	killed := time.Now()
	primary.Crash()
	promoted := time.Duration(0)
	for time.Since(killed) < 30*time.Second {
		if role, err := rc.Do(context.Background(), "ROLE").Slice(); err == nil && len(role) > 0 && role[0] == "master" {
			promoted = time.Since(killed)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if promoted == 0 {
		t.Fatal("the replica was never promoted")
	}
	lost, dups, _ := waitDone(t, ids, 2*time.Minute, func() map[string]int { return completionsFromLog(t, runlog) })
	stillRunning(t, ws, "the failover")
	// Work after the failover lands on the new primary.
	after := enqueueLoad(t, conn, "after-failover", 20)
	lostAfter, _, _ := waitDone(t, after, time.Minute, func() map[string]int { return completionsFromLog(t, runlog) })
	for _, w := range ws {
		w.term()
	}
	if len(lost) > 0 || len(lostAfter) > 0 {
		t.Errorf("lost %d tasks in the failover and %d after it: %v", len(lost), len(lostAfter), lost[:min(10, len(lost))])
	}
	figure(t, "primary SIGKILLed under load (300 tasks, 2 workers), Sentinel promoted the replica in %.1fs: lost %d, completed twice %d, workers restarted 0, new tasks after failover lost %d",
		promoted.Seconds(), len(lost), len(dups), len(lostAfter))
}

func waitReplicating(t *testing.T, replica *redis.Client) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		info, _ := replica.Info(context.Background(), "replication").Result()
		if strings.Contains(info, "master_link_status:up") {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("replica never synced with the primary")
}

func TestReliabilityLatencyOneMillisecond(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	proxy, err := faultproxy.Start(srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	measure := func(url, prefix string) (float64, time.Duration) {
		env := map[string]string{"TASK_INTERVALS": "e2e_plain=off,e2e_single=1s", "E2E_SLEEP": "0s", "WORKER_CONCURRENCY": "10"}
		w := start(t, url, env)
		ids := enqueueLoad(t, asynq.RedisClientOpt{Addr: srv.Addr}, prefix, 500)
		lost, _, took := waitDone(t, ids, 2*time.Minute, func() map[string]int { return completions(t, rdb) })
		time.Sleep(4 * time.Second)
		w.term()
		if len(lost) > 0 {
			t.Errorf("%s: %d tasks lost", prefix, len(lost))
		}
		// Scheduler lateness: start of each singleton run minus its due time.
		var worst time.Duration
		for _, r := range runs(t, rdb, "e2e_single") {
			if l := r.start.Sub(dueOf(t, r)); l > worst {
				worst = l
			}
		}
		rdb.Del(context.Background(), "e2e:runs")
		return float64(len(ids)) / took.Seconds(), worst
	}
	direct, lateDirect := measure(srv.URL(), "direct")
	proxy.SetLatency(500 * time.Microsecond) // each way: 1 ms round trip
	slow, lateSlow := measure("redis://"+proxy.Addr()+"/0", "latency")
	if lateSlow > 3*time.Second {
		t.Errorf("scheduler lateness %v with 1 ms latency", lateSlow)
	}
	figure(t, "500 no-op tasks, 1 worker x10: direct %.0f tasks/s (worst scheduler lateness %.2fs), with 1 ms RTT injected %.0f tasks/s (%.2fs), ratio %.2f",
		direct, lateDirect.Seconds(), slow, lateSlow.Seconds(), slow/direct)
}
