package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
	"github.com/stargazer/stargazer-jobs/internal/queue/singleton"
	"github.com/stargazer/stargazer-jobs/internal/testkit/falkortest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/procstat"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// composeFalkorDBArgs returns the FalkorDB module arguments docker-compose.yml
// gives the falkordb service (FALKORDB_ARGS), so the test runs the server as
// deployed.
func composeFalkorDBArgs(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*FALKORDB_ARGS:\s*"([^"]*)"`).FindSubmatch(b)
	if m == nil {
		t.Fatal("docker-compose.yml sets no FALKORDB_ARGS for the falkordb service")
	}
	return strings.Fields(string(m[1]))
}

// taskFinished waits for the worker's "task finished" log line of task ID
// id and returns its duration and status; taskResult also its error.
func taskFinished(t *testing.T, w *proc, id string, within time.Duration) (took time.Duration, status string, ok bool) {
	took, status, _, ok = taskResult(t, w, id, within)
	return took, status, ok
}

func taskResult(t *testing.T, w *proc, id string, within time.Duration) (time.Duration, string, string, bool) {
	t.Helper()
	for end := time.Now().Add(within); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		for _, line := range strings.Split(w.Logs(), "\n") {
			var l struct {
				Msg        string `json:"msg"`
				TaskID     string `json:"task_id"`
				Status     string `json:"status"`
				Error      string `json:"error"`
				DurationMS int64  `json:"duration_ms"`
			}
			if json.Unmarshal([]byte(line), &l) == nil && l.Msg == "task finished" && l.TaskID == id {
				return time.Duration(l.DurationMS) * time.Millisecond, l.Status, l.Error, true
			}
		}
	}
	return 0, "", "", false
}

// A FalkorDB frozen with SIGSTOP in the middle of a graph task: the task's
// handler gives up at the task's timeout (it does not wait for FalkorDB),
// so its goroutine, its FalkorDB connection and its singleton lease are
// freed; the worker serves other tasks meanwhile; after SIGCONT goroutines
// and connections are back to their baseline and the next run completes.
func TestReliabilityFalkorDBFrozenDuringAGraphTaskFailsAtItsTimeout(t *testing.T) {
	const timeout = 3 * time.Second
	srv := redistest.Start(t)
	fdb := falkortest.Start(t, composeFalkorDBArgs(t)...)
	g := graph.New(fdb.Client(t), "stargazer")
	falkortest.Exec(t, g, "UNWIND range(1, 100) AS i CREATE (:Entity {key: 'a' + i})-[:REL {weight: 1.0}]->(:Entity {key: 'b' + i})", nil)
	fdbPort, _ := strconv.Atoi(fdb.Addr[strings.LastIndexByte(fdb.Addr, ':')+1:])

	w := start(t, srv.URL(), map[string]string{
		"FALKORDB_URL": fdb.URL(), "FALKORDB_GRAPH": "stargazer", "SCHEDULER_ENABLED": "false", "E2E_SLEEP": "10ms",
	})
	pid := w.Pid()
	conn := asynq.RedisClientOpt{Addr: srv.Addr}
	c := asynq.NewClient(conn)
	defer c.Close()
	insp := asynq.NewInspector(conn)
	defer insp.Close()
	decay := func(id string, timeout time.Duration) {
		t.Helper()
		if _, err := c.Enqueue(asynq.NewTask(jobs.KGDecay, []byte(`{}`)), asynq.TaskID(id), asynq.Queue(jobs.QueueMaintenance),
			asynq.Timeout(timeout), asynq.MaxRetry(0), asynq.Retention(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	// A first round of the same work warms the connection pools: the
	// baseline has their idle connections.
	rdb := srv.Client(t)
	decay("warm-up", time.Minute)
	warm := enqueueLoad(t, conn, "warm-up", 10)
	if _, status, ok := taskFinished(t, w, "warm-up", 30*time.Second); !ok || status != "ok" {
		t.Fatalf("warm-up run: status %q (finished: %v)\n%s", status, ok, w.Logs())
	}
	if lost, _, _ := waitDone(t, warm, 20*time.Second, func() map[string]int { return completions(t, rdb) }); len(lost) > 0 {
		t.Fatalf("warm-up tasks not done: %v", lost)
	}
	time.Sleep(time.Second)
	goBefore, fdsBefore, connsBefore := w.Metric("go_goroutines "), w.Metric("process_open_fds "), procstat.ConnsTo(pid, fdbPort)

	if err := fdb.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	frozen := true
	defer func() {
		if frozen {
			_ = fdb.Signal(syscall.SIGCONT)
		}
	}()
	decay("frozen", timeout)
	during := enqueueLoad(t, conn, "during", 10)
	elapsed, status, msg, finished := taskResult(t, w, "frozen", timeout+15*time.Second)
	if !finished {
		t.Fatalf("the graph task's handler did not return while FalkorDB was frozen (%v after its %v timeout)", 15*time.Second, timeout)
	}
	late := elapsed - timeout
	if status != "error" || !strings.Contains(msg, "deadline exceeded") || late > 2*time.Second {
		t.Errorf("graph task finished with status %q after %v (%s); want a deadline error at its %v timeout", status, elapsed, msg, timeout)
	}
	t.Logf("the graph task failed with: %s", msg)
	lost, _, _ := waitDone(t, during, 20*time.Second, func() map[string]int { return completions(t, rdb) })
	if len(lost) > 0 {
		t.Errorf("the worker stopped serving other tasks while FalkorDB was frozen: %d of %d not done", len(lost), len(during))
	}
	if n, _ := rdb.Exists(context.Background(), singleton.KeyPrefix+jobs.KGDecay).Result(); n != 0 {
		t.Errorf("the failed run's singleton lease is still held while FalkorDB is frozen")
	}
	goDuring, fdsDuring, connsDuring := w.Metric("go_goroutines "), w.Metric("process_open_fds "), procstat.ConnsTo(pid, fdbPort)

	if err := fdb.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	frozen = false
	var goAfter, fdsAfter float64
	var connsAfter int
	for end := time.Now().Add(20 * time.Second); ; time.Sleep(250 * time.Millisecond) {
		goAfter, fdsAfter, connsAfter = w.Metric("go_goroutines "), w.Metric("process_open_fds "), procstat.ConnsTo(pid, fdbPort)
		if (goAfter <= goBefore+2 && connsAfter <= connsBefore) || time.Now().After(end) {
			break
		}
	}
	// Open fds are reported, not asserted: they include the Redis pools,
	// which grow with the tasks run during the freeze.
	if goAfter > goBefore+2 || connsAfter > connsBefore {
		t.Errorf("not back to the baseline after SIGCONT: goroutines %v → %v, open fds %v → %v, FalkorDB connections %d → %d",
			goBefore, goAfter, fdsBefore, fdsAfter, connsBefore, connsAfter)
	}
	decay("after", time.Minute)
	nextTook, nextStatus, ok := taskFinished(t, w, "after", 30*time.Second)
	if !ok || nextStatus != "ok" {
		t.Errorf("the next run after SIGCONT: status %q (finished: %v)", nextStatus, ok)
	}
	stillRunning(t, []*proc{w}, "the FalkorDB freeze")
	figure(t, "task timeout %v: the handler returned %v after its start (%v past the timeout); %d/%d other tasks done during the freeze; "+
		"goroutines %v / %v / %v, open fds %v / %v / %v, FalkorDB connections %d / %d / %d (before / frozen / after SIGCONT); next run: %s in %v",
		timeout, elapsed, late, len(during)-len(lost), len(during), goBefore, goDuring, goAfter, fdsBefore, fdsDuring, fdsAfter,
		connsBefore, connsDuring, connsAfter, nextStatus, nextTook)
}
