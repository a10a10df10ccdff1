package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
	"github.com/stargazer/stargazer-jobs/internal/kg/writelock"
	"github.com/stargazer/stargazer-jobs/internal/queue/singleton"
	"github.com/stargazer/stargazer-jobs/internal/testkit/falkortest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// runGoroutineBound is how long after a run's end every goroutine the run
// started may still exist: asynq's, the handler's, the singleton lease's
// renewal, go-redis' (a dial, a connection's handshake).
const runGoroutineBound = time.Second

// TestReliabilityFalkorDBFrozenRunLeavesNoGoroutineBehind: while FalkorDB
// stays frozen (SIGSTOP), a graph task's run that ends at its deadline
// leaves none of the goroutines it started behind within
// runGoroutineBound of its end: the worker holds only goroutines it held
// before the run (a goroutine dump with ?debug=2, compared by goroutine
// ID). The run is frozen before it starts (it waits in a read) or in the
// middle of a write (holding the graph write lock). A retry that asynq
// starts while FalkorDB is still frozen is a run of its own, with its own
// lease and goroutines, held to the same bound at its own end: measured a
// few seconds after the first run's end, its goroutines are what made a
// worker look as if the first run had left 3–5 behind.
//
// A FalkorDB frozen long enough has its accept queue full (one slot per
// connection opened meanwhile, by every client; 511 by default): a new
// connection's handshake is never answered. go-redis dials in a goroutine
// of its own, which the call's deadline does not end; the graph client
// bounds that dial (graph.DialTimeout), so the run fails at once with the
// dial's error and its dial ends with it.
func TestReliabilityFalkorDBFrozenRunLeavesNoGoroutineBehind(t *testing.T) {
	const timeout = 3 * time.Second
	tests := []struct {
		name        string
		duringWrite bool   // freeze once the run holds the graph write lock, else before it starts
		queueFull   bool   // the frozen server's accept queue full, and the worker without a pooled connection
		attempts    int    // runs that fail during the freeze (retries + 1)
		wantErr     string // in each run's error
	}{
		{name: "frozen before the run", attempts: 1, wantErr: "deadline exceeded"},
		{name: "frozen during a write", duringWrite: true, attempts: 1, wantErr: "deadline exceeded"},
		{name: "retried during the freeze", attempts: 2, wantErr: "deadline exceeded"},
		{name: "frozen with its accept queue full", queueFull: true, attempts: 1, wantErr: "dial tcp"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := redistest.Start(t)
			args := composeFalkorDBArgs(t)
			if tt.queueFull {
				// The smallest accept queue (2 connections), filled below
				// in a blink rather than by 512 connections.
				args = append(args, "--tcp-backlog", "1")
			}
			fdb := falkortest.Start(t, args...)
			g := graph.New(fdb.Client(t), "stargazer")
			// Enough edges, in batches of 100, that a decay run writes for
			// a while: the freeze can catch it holding the write lock.
			falkortest.Exec(t, g, "UNWIND range(1, 20000) AS i CREATE (:Entity {key: 'a' + i})-[:REL {weight: 1.0}]->(:Entity {key: 'b' + i})", nil)
			w := start(t, srv.URL(), map[string]string{
				"FALKORDB_URL": fdb.URL(), "FALKORDB_GRAPH": "stargazer", "SCHEDULER_ENABLED": "false", "KG_BATCH_SIZE": "100",
			})
			rdb := srv.Client(t)
			c := asynq.NewClient(asynq.RedisClientOpt{Addr: srv.Addr})
			defer c.Close()
			decay := func(id string, timeout time.Duration, maxRetry int) {
				t.Helper()
				if _, err := c.Enqueue(asynq.NewTask(jobs.KGDecay, []byte(`{}`)), asynq.TaskID(id), asynq.Queue(jobs.QueueMaintenance),
					asynq.Timeout(timeout), asynq.MaxRetry(maxRetry), asynq.Retention(time.Hour)); err != nil {
					t.Fatal(err)
				}
			}
			// A first run warms the pools; what it leaves (idle pooled
			// connections hold no goroutine) is the baseline.
			decay("warm-up", time.Minute, 0)
			if a, ok := attemptEnd(t, w, "warm-up", 0, 30*time.Second); !ok || a.status != "ok" {
				t.Fatalf("warm-up run: status %q (finished: %v)\n%s", a.status, ok, w.Logs())
			}
			time.Sleep(time.Second)
			base := goroutineDump(t, w)

			frozen := false
			freeze := func() {
				t.Helper()
				if err := fdb.Signal(syscall.SIGSTOP); err != nil {
					t.Fatal(err)
				}
				frozen = true
			}
			defer func() {
				if frozen {
					_ = fdb.Signal(syscall.SIGCONT)
				}
			}()
			if tt.queueFull {
				// The worker's pooled connections closed by the server, so
				// that the run dials a new one.
				admin := fdb.Client(t)
				if err := admin.Do(context.Background(), "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes").Err(); err != nil {
					t.Fatal(err)
				}
			}
			if !tt.duringWrite {
				freeze()
			}
			if tt.queueFull {
				for i := 0; ; i++ {
					c, err := net.DialTimeout("tcp", fdb.Addr, 300*time.Millisecond)
					if err != nil {
						break // the queue is full: a connection is no longer established
					}
					defer c.Close()
					if i == 10 {
						t.Fatalf("the frozen server's accept queue took more than 10 connections")
					}
				}
			}
			decay("frozen", timeout, tt.attempts-1)
			if tt.duringWrite {
				// Polled without a pause: the lock is held only while a
				// batch is written.
				for end := time.Now().Add(10 * time.Second); rdb.Exists(context.Background(), writelock.Key).Val() == 0; {
					if time.Now().After(end) {
						t.Fatalf("the run did not take the graph write lock within 10 s\n%s", w.Logs())
					}
				}
				freeze()
			}

			var figures []string
			for n := range tt.attempts {
				if n > 0 {
					// The retry is a run of its own: it takes the lease
					// again and holds goroutines until its deadline.
					for end := time.Now().Add(20 * time.Second); !strings.HasPrefix(rdb.Get(context.Background(), singleton.KeyPrefix+jobs.KGDecay).Val(), "frozen|"); time.Sleep(5 * time.Millisecond) {
						if time.Now().After(end) {
							t.Fatalf("attempt %d did not start within 20 s\n%s", n+1, w.Logs())
						}
					}
					time.Sleep(300 * time.Millisecond)
					held, _ := newGoroutines(t, w, base, time.Now(), 0)
					figures = append(figures, fmt.Sprintf("attempt %d held %d goroutines while it ran (%s)", n+1, len(held), summarise(held)))
				}
				a, ok := attemptEnd(t, w, "frozen", n, timeout+30*time.Second)
				status, msg := a.status, a.err
				if !ok {
					left, _ := newGoroutines(t, w, base, time.Now(), 0)
					t.Fatalf("attempt %d of the run did not end while FalkorDB was frozen; goroutines started since the baseline:\n\n%s",
						n+1, strings.Join(left, "\n\n"))
				}
				if status != "error" || !strings.Contains(msg, tt.wantErr) {
					t.Errorf("attempt %d ended with status %q (%s); want an error with %q", n+1, status, msg, tt.wantErr)
				}
				if tt.duringWrite && !strings.Contains(msg, "decay: ids [") {
					t.Errorf("attempt %d was not stopped in a write: %s", n+1, msg)
				}
				left, took := newGoroutines(t, w, base, a.end, runGoroutineBound)
				if len(left) > 0 {
					t.Errorf("attempt %d: %d goroutines started since the baseline still exist %v after its end, FalkorDB frozen:\n\n%s",
						n+1, len(left), runGoroutineBound, strings.Join(left, "\n\n"))
				}
				if v, err := rdb.Get(context.Background(), singleton.KeyPrefix+jobs.KGDecay).Result(); err == nil {
					t.Errorf("attempt %d: the singleton lease is still held after its end: %s", n+1, v)
				}
				figures = append(figures, fmt.Sprintf("attempt %d failed after %v (%s): %d of its goroutines left %v after its end",
					n+1, a.took, clipLeft(msg, 50), len(left), took.Round(time.Millisecond)))
			}
			if err := fdb.Signal(syscall.SIGCONT); err != nil {
				t.Fatal(err)
			}
			frozen = false
			figure(t, "%d goroutines at the baseline; %s", len(base), strings.Join(figures, "; "))
		})
	}
}

// attempt is a run's "task finished" line.
type attempt struct {
	end         time.Time // when it was logged
	took        time.Duration
	status, err string
}

// attemptEnd waits for the worker's "task finished" line of attempt n
// (retried = n) of task id.
func attemptEnd(t *testing.T, w *proc, id string, n int, within time.Duration) (attempt, bool) {
	t.Helper()
	for end := time.Now().Add(within); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		for _, line := range strings.Split(w.Logs(), "\n") {
			var l struct {
				Time       time.Time `json:"time"`
				Msg        string    `json:"msg"`
				TaskID     string    `json:"task_id"`
				Retried    int       `json:"retried"`
				Status     string    `json:"status"`
				Error      string    `json:"error"`
				DurationMS int64     `json:"duration_ms"`
			}
			if json.Unmarshal([]byte(line), &l) == nil && l.Msg == "task finished" && l.TaskID == id && l.Retried == n {
				return attempt{end: l.Time, took: time.Duration(l.DurationMS) * time.Millisecond, status: l.Status, err: l.Error}, true
			}
		}
	}
	return attempt{}, false
}

// goroutineDump is w's goroutine dump (GET /debug/pprof/goroutine?debug=2):
// each goroutine's record (its state, stack and "created by" line) by ID.
func goroutineDump(t *testing.T, w *proc) map[int]string {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + w.Addr + "/debug/pprof/goroutine?debug=2")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("goroutine dump: %s %v", resp.Status, err)
	}
	out := map[int]string{}
	for _, rec := range strings.Split(strings.TrimSpace(string(b)), "\n\n") {
		var id int
		if _, err := fmt.Sscanf(rec, "goroutine %d ", &id); err == nil {
			out[id] = rec
		}
	}
	return out
}

// newGoroutines polls w's goroutines until none has started since base,
// or until bound after end; it returns those still there (none: nil) and
// how long after end the last dump was taken. The HTTP server's goroutines
// of the dump request itself are not counted.
func newGoroutines(t *testing.T, w *proc, base map[int]string, end time.Time, bound time.Duration) ([]string, time.Duration) {
	t.Helper()
	for {
		now := goroutineDump(t, w)
		took := time.Since(end)
		var left []string
		for id, rec := range now {
			if _, ok := base[id]; ok || servesHTTP(rec) {
				continue
			}
			left = append(left, rec)
		}
		if len(left) == 0 || took > bound {
			sort.Strings(left)
			return left, took
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// servesHTTP reports whether a goroutine serves an HTTP connection of the
// worker's server (the dump's own request).
func servesHTTP(rec string) bool {
	return strings.Contains(rec, "created by net/http.(*Server).Serve") ||
		strings.Contains(rec, "created by net/http.(*connReader).startBackgroundRead")
}

// summarise names each goroutine record by its first frame in this module
// or asynq (else its first frame) and its creator.
func summarise(recs []string) string {
	fn := func(line string) string {
		if i := strings.LastIndexByte(line, '('); i > 0 {
			return line[:i]
		}
		return line
	}
	var out []string
	for _, rec := range recs {
		var first, ours, creator string
		for _, line := range strings.Split(rec, "\n")[1:] {
			if strings.HasPrefix(line, "\t") {
				continue // a file:line
			}
			if c, ok := strings.CutPrefix(line, "created by "); ok {
				creator, _, _ = strings.Cut(c, " in goroutine")
				continue
			}
			if first == "" {
				first = fn(line)
			}
			if ours == "" && (strings.Contains(line, "stargazer-jobs/") || strings.Contains(line, "hibiken/asynq.")) {
				ours = fn(line)
			}
		}
		if ours == "" {
			ours = first
		}
		out = append(out, ours+" ← "+creator)
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}

// clipLeft keeps the last n bytes of s.
func clipLeft(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}
