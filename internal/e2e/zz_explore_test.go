package e2e

import (
	"io"
	"net/http"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
	"github.com/stargazer/stargazer-jobs/internal/testkit/falkortest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/jobs"
)

func dump2(t *testing.T, w *proc, name string) {
	resp, err := http.Get("http://" + w.Addr + "/debug/pprof/goroutine?debug=2")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	os.WriteFile("/tmp/gr/"+name+".txt", b, 0o644)
}

func TestZZExplore(t *testing.T) {
	const timeout = 3 * time.Second
	srv := redistest.Start(t)
	fdb := falkortest.Start(t, composeFalkorDBArgs(t)...)
	g := graph.New(fdb.Client(t), "stargazer")
	falkortest.Exec(t, g, "UNWIND range(1, 100) AS i CREATE (:Entity {key: 'a' + i})-[:REL {weight: 1.0}]->(:Entity {key: 'b' + i})", nil)
	w := start(t, srv.URL(), map[string]string{
		"FALKORDB_URL": fdb.URL(), "FALKORDB_GRAPH": "stargazer", "SCHEDULER_ENABLED": "false", "E2E_SLEEP": "10ms",
	})
	conn := asynq.RedisClientOpt{Addr: srv.Addr}
	c := asynq.NewClient(conn)
	defer c.Close()
	decay := func(id string, timeout time.Duration) {
		if _, err := c.Enqueue(asynq.NewTask(jobs.KGDecay, []byte(`{}`)), asynq.TaskID(id), asynq.Queue(jobs.QueueMaintenance),
			asynq.Timeout(timeout), asynq.MaxRetry(0), asynq.Retention(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	decay("warm-up", time.Minute)
	if _, status, ok := taskFinished(t, w, "warm-up", 30*time.Second); !ok || status != "ok" {
		t.Fatalf("warm-up %q", status)
	}
	time.Sleep(2 * time.Second)
	dump2(t, w, "before")
	t.Logf("before: %v", w.Metric("go_goroutines "))
	fdb.Signal(syscall.SIGSTOP)
	defer fdb.Signal(syscall.SIGCONT)
	decay("frozen", timeout)
	took, status, msg, ok := taskResult(t, w, "frozen", timeout+15*time.Second)
	t.Logf("frozen: %v %v %v %v", took, status, msg, ok)
	dump2(t, w, "end0")
	t.Logf("end0: %v", w.Metric("go_goroutines "))
	for i := 1; i <= 10; i++ {
		time.Sleep(time.Second)
		t.Logf("end+%d: %v", i, w.Metric("go_goroutines "))
		if i == 5 {
			dump2(t, w, "end5")
		}
	}
	fdb.Signal(syscall.SIGCONT)
	time.Sleep(3 * time.Second)
	dump2(t, w, "after")
	t.Logf("after: %v", w.Metric("go_goroutines "))
}
