// Package e2e runs real worker processes (the testworker binary: the worker
// plus two recording tasks) against a real redis-server and checks what the
// scheduler and the singleton machinery did across processes.
package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/workerproc"
)

var binary string

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		// Every scenario here runs several worker processes for tens of
		// seconds; the -short path is for unit tests.
		fmt.Println("e2e: multi-process scenarios skipped in -short mode")
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "e2e")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "testworker")
	out, err := exec.Command("go", "build", "-o", binary, "./testworker").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building testworker: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a testworker process.
type proc struct{ *workerproc.Proc }

// start launches a worker process and waits until it serves tasks.
func start(t *testing.T, redisURL string, env map[string]string) *proc {
	t.Helper()
	return startUntil(t, redisURL, env, `"msg":"worker started"`)
}

// startUntil launches a worker process and waits until it logs ready.
func startUntil(t *testing.T, redisURL string, env map[string]string, ready string) *proc {
	t.Helper()
	all := map[string]string{"REDIS_URL": redisURL, "SHUTDOWN_TIMEOUT": "5s", "LOG_LEVEL": "info"}
	for k, v := range env {
		all[k] = v
	}
	return &proc{workerproc.Start(t, binary, all, workerproc.Logged(ready), 20*time.Second)}
}

// term stops the process gracefully and waits for it.
func (p *proc) term() { p.Term(20 * time.Second) }

type run struct {
	task, id string
	pid      int
	start    time.Time
	end      time.Time
}

func runs(t *testing.T, rdb *redis.Client, task string) []run {
	t.Helper()
	raw, err := rdb.LRange(context.Background(), "e2e:runs", 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	var out []run
	for _, r := range raw {
		f := strings.Split(r, "|")
		if f[0] != task {
			continue
		}
		pid, _ := strconv.Atoi(f[2])
		s, _ := strconv.ParseInt(f[3], 10, 64)
		e, _ := strconv.ParseInt(f[4], 10, 64)
		out = append(out, run{task: f[0], id: f[1], pid: pid, start: time.UnixMilli(s), end: time.UnixMilli(e)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].start.Before(out[j].start) })
	return out
}

func overlaps(t *testing.T, rdb *redis.Client) []string {
	o, err := rdb.LRange(context.Background(), "e2e:overlaps", 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func distinctIDs(t *testing.T, rs []run) {
	t.Helper()
	seen := map[string]bool{}
	for _, r := range rs {
		if seen[r.id] {
			t.Errorf("task %s ran twice", r.id)
		}
		seen[r.id] = true
	}
}

func TestThreeSchedulersRunEachPeriodOnceNeverTwiceAtOnce(t *testing.T) {
	for _, layout := range layouts {
		t.Run(layout, func(t *testing.T) { threeSchedulers(t, layout) })
	}
}

func threeSchedulers(t *testing.T, layout string) {
	reds := startRedises(t, layout)
	rdb := reds.bot.Client(t)
	env := reds.env(map[string]string{"TASK_INTERVALS": "e2e_plain=2s,e2e_single=2s", "E2E_SLEEP": "300ms"})
	ps := []*proc{start(t, reds.bot.URL(), env), start(t, reds.bot.URL(), env), start(t, reds.bot.URL(), env)}
	const periods = 8
	time.Sleep(periods*2*time.Second + 500*time.Millisecond)
	for _, p := range ps {
		p.term()
	}
	pids := map[int]bool{}
	for _, task := range []string{"e2e_plain", "e2e_single"} {
		rs := runs(t, rdb, task)
		if len(rs) == 0 {
			t.Fatalf("%s never ran", task)
		}
		first := dueOf(t, rs[0])
		n := 0
		for _, r := range rs {
			if due := dueOf(t, r); !due.Before(first) && due.Before(first.Add(periods*2*time.Second)) {
				n++
			}
		}
		if n < periods-1 || n > periods+1 {
			t.Errorf("%s ran %d times in %d periods, want %d±1", task, n, periods, periods)
		}
		for i := 1; i < len(rs); i++ {
			// On the grid, never doubled; an occurrence may be skipped (a run
			// that ended after the next came due coalesces it), which the
			// count's ±1 allows.
			if gap := dueOf(t, rs[i]).Sub(dueOf(t, rs[i-1])); gap <= 0 || gap%(2*time.Second) != 0 {
				t.Errorf("%s: occurrences %d and %d are %v apart, want a multiple of the 2s interval", task, i-1, i, gap)
			}
		}
		distinctIDs(t, rs)
		for _, r := range rs {
			pids[r.pid] = true
		}
	}
	if o := overlaps(t, rdb); len(o) > 0 {
		t.Errorf("runs overlapped: %v", o)
	}
	t.Logf("runs were spread over %d worker processes", len(pids))
	reds.checkApart(t)
}

func TestRestartStormKeepsTheCadence(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	env := map[string]string{"TASK_INTERVALS": "e2e_plain=3s,e2e_single=off", "E2E_SLEEP": "50ms"}
	begin := time.Now()
	ps := []*proc{start(t, srv.URL(), env), start(t, srv.URL(), env), start(t, srv.URL(), env)}
	restarts := 0
	for time.Since(begin) < 15*time.Second {
		time.Sleep(time.Second)
		for i := range ps {
			ps[i].term()
			ps[i] = start(t, srv.URL(), env)
			restarts++
		}
	}
	for _, p := range ps {
		p.term()
	}
	rs := runs(t, rdb, "e2e_plain")
	if len(rs) == 0 {
		t.Fatal("never ran")
	}
	span := rs[len(rs)-1].start.Sub(rs[0].start)
	want := int(span/(3*time.Second)) + 1
	if len(rs) < want-1 || len(rs) > want+1 {
		t.Errorf("%d runs over %v with a 3s interval and %d restarts, want %d±1", len(rs), span, restarts, want)
	}
	// Due times, not start times, must follow the grid: starts carry up to
	// a poll of lateness.
	for i := 1; i < len(rs); i++ {
		if gap := dueOf(t, rs[i]).Sub(dueOf(t, rs[i-1])); gap < 3*time.Second {
			t.Errorf("occurrences %d and %d only %v apart", i-1, i, gap)
		}
	}
	distinctIDs(t, rs)
	t.Logf("%d restarts, %d runs over %v", restarts, len(rs), span)
}

// dueOf reads an occurrence's due time out of its task ID (task@dueMs).
func dueOf(t *testing.T, r run) time.Time {
	_, ms, ok := strings.Cut(r.id, "@")
	n, err := strconv.ParseInt(ms, 10, 64)
	if !ok || err != nil {
		t.Fatalf("task ID %q is not task@dueMs", r.id)
	}
	return time.UnixMilli(n)
}

func TestDowntimeGivesExactlyOneCatchUpRun(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	env := map[string]string{"TASK_INTERVALS": "e2e_plain=2s,e2e_single=off", "E2E_SLEEP": "50ms"}
	p := start(t, srv.URL(), env)
	time.Sleep(2500 * time.Millisecond)
	p.term()
	if len(runs(t, rdb, "e2e_plain")) == 0 {
		t.Fatal("no run before the downtime")
	}
	time.Sleep(11 * time.Second) // five occurrences missed
	back := time.Now()
	p = start(t, srv.URL(), env)
	time.Sleep(5 * time.Second)
	p.term()
	// Runs after the return whose due time lies in the downtime are
	// catch-ups; there must be exactly one. Later runs are on the grid.
	catchUps, onGrid := 0, 0
	for _, r := range runs(t, rdb, "e2e_plain") {
		if r.start.Before(back) {
			continue
		}
		if dueOf(t, r).Before(back) {
			catchUps++
		} else {
			onGrid++
		}
	}
	if catchUps != 1 {
		t.Errorf("%d catch-up runs after the downtime, want exactly 1", catchUps)
	}
	if onGrid < 1 || onGrid > 3 {
		t.Errorf("%d on-grid runs in the 5s after the return with a 2s interval", onGrid)
	}
}

func TestCoalescedOccurrencesAreCounted(t *testing.T) {
	srv := redistest.Start(t)
	env := map[string]string{"TASK_INTERVALS": "e2e_plain=1s,e2e_single=off", "E2E_SLEEP": "10ms"}
	p := start(t, srv.URL(), env)
	time.Sleep(1500 * time.Millisecond)
	p.term()
	time.Sleep(6 * time.Second)
	p = start(t, srv.URL(), env)
	deadline := time.Now().Add(10 * time.Second)
	missed := 0.0
	for time.Now().Before(deadline) && missed < 4 {
		missed = p.Metric("stargazer_scheduler_missed_total")
		time.Sleep(200 * time.Millisecond)
	}
	if missed < 4 {
		t.Errorf("stargazer_scheduler_missed_total = %v after ~6 missed occurrences", missed)
	}
	p.term()
}

func subscribe(t *testing.T, rdb *redis.Client) <-chan *redis.Message {
	sub := rdb.Subscribe(context.Background(), "e2e:started")
	if _, err := sub.Receive(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Close() })
	return sub.Channel()
}

func waitStarted(t *testing.T, ch <-chan *redis.Message, timeout time.Duration) []string {
	t.Helper()
	select {
	case m := <-ch:
		return strings.Split(m.Payload, "|")
	case <-time.After(timeout):
		t.Fatal("no run started")
	}
	return nil
}

func TestStalledWorkerFailsItsOwnershipCheck(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	started := subscribe(t, rdb)
	p := start(t, srv.URL(), map[string]string{
		"TASK_INTERVALS": "e2e_plain=off,e2e_single=1h", "E2E_SLEEP": "3s", "SINGLETON_LEASE": "1s",
	})
	waitStarted(t, started, 10*time.Second)
	// Freeze the worker (a GC pause, a partition) for longer than its lease.
	p.Signal(syscall.SIGSTOP)
	time.Sleep(2500 * time.Millisecond)
	p.Signal(syscall.SIGCONT)
	deadline := time.Now().Add(10 * time.Second)
	var refused []string
	for time.Now().Before(deadline) {
		refused, _ = rdb.LRange(context.Background(), "e2e:refused", 0, -1).Result()
		if len(refused) > 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(refused) != 1 || !strings.Contains(refused[0], "lease lost") {
		t.Fatalf("refused = %v, want the destructive step refused for a lost lease\n%s", refused, p.Logs())
	}
	if n, _ := rdb.LLen(context.Background(), "e2e:destructive").Result(); n != 0 {
		t.Errorf("destructive step ran %d times after the lease was lost", n)
	}
	p.term()
}

func TestKilledWorkersTaskCompletesOnAnotherWorker(t *testing.T) {
	t.Parallel()
	for _, layout := range layouts {
		t.Run(layout, func(t *testing.T) {
			t.Parallel()
			killedWorker(t, layout)
		})
	}
}

func killedWorker(t *testing.T, layout string) {
	reds := startRedises(t, layout)
	rdb := reds.bot.Client(t)
	started := subscribe(t, rdb)
	env := reds.env(map[string]string{"TASK_INTERVALS": "e2e_plain=off,e2e_single=1h", "E2E_SLEEP": "3s"})
	a := start(t, reds.bot.URL(), env)
	first := waitStarted(t, started, 10*time.Second)
	b := start(t, reds.bot.URL(), env)
	killed := time.Now()
	a.Kill()

	deadline := killed.Add(4 * time.Minute)
	for time.Now().Before(deadline) {
		rs := runs(t, rdb, "e2e_single")
		if len(rs) > 0 {
			r := rs[0]
			if r.id != first[1] {
				t.Fatalf("completed task %s, want the killed one %s", r.id, first[1])
			}
			if r.pid != b.Pid() {
				t.Fatalf("completed by pid %d, want the surviving worker %d", r.pid, b.Pid())
			}
			recovery := r.start.Sub(killed)
			t.Logf("SIGKILL to restart on another worker: %.1fs (finished %.1fs after the kill)", recovery.Seconds(), r.end.Sub(killed).Seconds())
			if n, _ := rdb.LLen(context.Background(), "e2e:destructive").Result(); n != 1 {
				t.Errorf("destructive step ran %d times, want 1", n)
			}
			b.term()
			reds.checkApart(t)
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("task never completed after the kill\n%s", b.Logs())
}

// sumMetric adds a series up over the workers.
func sumMetric(ps []*proc, prefix string) float64 {
	n := 0.0
	for _, p := range ps {
		n += p.Metric(prefix)
	}
	return n
}
