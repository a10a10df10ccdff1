package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/store/logstore"
	"github.com/stargazer/stargazer-jobs/internal/testkit/poll"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/jobs"
)

var (
	buildOnce sync.Once
	binary    string
	buildErr  error
)

// workerBinary builds cmd/worker once per test run.
func workerBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("multi-process test: skipped under -short")
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "worker-bin")
		if err != nil {
			buildErr = err
			return
		}
		binary = filepath.Join(dir, "worker")
		if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("%v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binary
}

// journalDir holds a fake journalctl printing n JSON entries of its own
// node, honouring --after-cursor.
func journalDir(t *testing.T, node string, n int) string {
	t.Helper()
	dir := t.TempDir()
	var entries strings.Builder
	for i := 1; i <= n; i++ {
		b, _ := json.Marshal(map[string]string{
			"__CURSOR": fmt.Sprintf("s=%s;i=%x", node, i), "__REALTIME_TIMESTAMP": fmt.Sprint(time.Now().Add(-time.Hour).UnixMicro() + int64(i)*1e6),
			"PRIORITY": "6", "MESSAGE": fmt.Sprintf("%s says line %d", node, i),
		})
		entries.Write(append(b, '\n'))
	}
	if err := os.WriteFile(filepath.Join(dir, "entries"), []byte(entries.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	script := `#!/bin/sh
after=""
for a in "$@"; do
  case "$a" in --after-cursor=*) after="${a#--after-cursor=}";; -f|--follow) exec sleep 1000;; esac
done
if [ -z "$after" ]; then cat "` + dir + `/entries"; else
  awk -v c="\"__CURSOR\":\"$after\"" 'found {print} index($0, c) {found=1}' "` + dir + `/entries"; fi
`
	if err := os.WriteFile(filepath.Join(dir, "journalctl"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// embeddingsServer answers OpenAI /v1/embeddings with one small vector
// per input and counts the inputs.
func embeddingsServer(t *testing.T, inputs *[]string, mu *sync.Mutex) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Model string   `json:"model"`
			Input []string `json:"input"`
		}
		if r.URL.Path != "/v1/embeddings" || json.NewDecoder(r.Body).Decode(&req) != nil {
			http.Error(w, "bad request", 400)
			return
		}
		mu.Lock()
		*inputs = append(*inputs, req.Input...)
		mu.Unlock()
		data := make([]map[string]any, len(req.Input))
		for i := range req.Input {
			data[i] = map[string]any{"object": "embedding", "index": i, "embedding": []float32{0.1, 0.2, 0.3}}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"object": "list", "data": data, "model": req.Model,
			"usage": map[string]int{"prompt_tokens": len(req.Input), "total_tokens": len(req.Input)}})
	}))
	t.Cleanup(srv.Close)
	return srv
}

// Two node agents, each on its own journal: each journal is ingested once,
// under its node's own cursor; a cluster worker refuses a queued copy of
// the task with the reason.
func TestLogRAGIngestRunsOnEveryNodeAgentWithItsOwnCursor(t *testing.T) {
	bin := workerBinary(t)
	r := redistest.Start(t)
	var mu sync.Mutex
	var inputs []string
	emb := embeddingsServer(t, &inputs, &mu)
	for _, node := range []string{"node-a", "node-b"} {
		dir := journalDir(t, node, 12)
		cmd := exec.Command(bin)
		cmd.Env = append(os.Environ(), "PATH="+dir+string(os.PathListSeparator)+os.Getenv("PATH"),
			"ROLE=node", "NODE_NAME="+node, "REDIS_URL="+r.URL(), "HTTP_ADDR="+redistest.FreeAddr(t), "PROBE_ADDR="+redistest.FreeAddr(t), "JOURNAL_DIR="+fakeJournalDir(t),
			"BACKGROUND_SCHEDULER_LOG_RAG_INGEST_ENABLED=true", "EMBEDDINGS_BASE_URL="+emb.URL+"/v1", "SHUTDOWN_TIMEOUT=2s")
		var logs strings.Builder
		cmd.Stdout, cmd.Stderr = &logs, &logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Signal(os.Interrupt); _ = cmd.Wait() })
	}
	store := logstore.New(r.Client(t))
	ctx := context.Background()
	// log_rag_ingest's first run comes 30 s after start, as in the original.
	deadline := time.Now().Add(75 * time.Second)
	for {
		a, errA := store.Cursor(ctx, "node-a", "stargazer")
		b, errB := store.Cursor(ctx, "node-b", "stargazer")
		if errA == nil && errB == nil && a.After == "s=node-a;i=c" && b.After == "s=node-b;i=c" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cursors %+v %v, %+v %v: want each node at its own last entry", a, errA, b, errB)
		}
		time.Sleep(200 * time.Millisecond)
	}
	mu.Lock()
	embedded := append([]string(nil), inputs...)
	mu.Unlock()
	seen := map[string]bool{}
	for _, in := range embedded {
		if seen[in] {
			t.Errorf("a chunk was embedded twice: %.80q", in)
		}
		seen[in] = true
	}
	all := strings.Join(embedded, "\n")
	for _, node := range []string{"node-a", "node-b"} {
		for i := 1; i <= 12; i++ {
			if !strings.Contains(all, fmt.Sprintf("%s says line %d", node, i)) {
				t.Errorf("%s's line %d was not ingested", node, i)
			}
		}
	}
	if n, _ := r.Client(t).ZCard(ctx, logstore.IndexKey).Result(); n < 2 {
		t.Errorf("%d chunks stored, want at least one per node", n)
	}

	// A queued copy on a cluster worker is refused, not run.
	w := startWorker(t, map[string]string{"REDIS_URL": r.URL(), "SCHEDULER_ENABLED": "false"})
	client := asynq.NewClient(asynq.RedisClientOpt{Addr: r.Addr})
	defer client.Close()
	info, err := client.Enqueue(asynq.NewTask(jobs.LogRAGIngest, nil), asynq.Queue(jobs.QueueDefault))
	if err != nil {
		t.Fatal(err)
	}
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: r.Addr})
	defer insp.Close()
	var archived *asynq.TaskInfo
	poll.Until(t, "the queued log_rag_ingest archived", func() bool {
		archived, err = insp.GetTaskInfo(jobs.QueueDefault, info.ID)
		return err == nil && archived.State == asynq.TaskStateArchived
	})
	if !strings.Contains(archived.LastErr, "node-local") || archived.Retried != 0 {
		t.Errorf("archived with %q after %d retries, want the node-local reason at once\n%s", archived.LastErr, archived.Retried, w.logs.String())
	}
}

// journal_stream reports each round on a node with the original's
// scheduler_task_run event, as the original did on every restart.
func TestJournalStreamPublishesARunEventWhenARoundEnds(t *testing.T) {
	bin := workerBinary(t)
	r := redistest.Start(t)
	dir := t.TempDir()
	script := "#!/bin/sh\necho '{\"MESSAGE\":\"one line\"}'\n"
	if err := os.WriteFile(filepath.Join(dir, "journalctl"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	sub := r.Client(t).Subscribe(context.Background(), "stargazer:debug_events")
	defer sub.Close()
	if _, err := sub.Receive(context.Background()); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "PATH="+dir+string(os.PathListSeparator)+os.Getenv("PATH"),
		"ROLE=node", "REDIS_URL="+r.URL(), "HTTP_ADDR="+redistest.FreeAddr(t), "PROBE_ADDR="+redistest.FreeAddr(t), "SHUTDOWN_TIMEOUT=2s", "JOURNAL_DIR="+fakeJournalDir(t))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Signal(os.Interrupt); _ = cmd.Wait() })
	deadline := time.After(30 * time.Second)
	for {
		select {
		case m := <-sub.Channel():
			var e struct {
				Topic, Status string
				Payload       map[string]any
			}
			if json.Unmarshal([]byte(m.Payload), &e) == nil && e.Topic == "scheduler_task_run" && e.Payload["task"] == jobs.JournalStream {
				if e.Status != "ok" {
					t.Fatalf("event %+v, want ok for a round that ended cleanly", e)
				}
				return
			}
		case <-deadline:
			t.Fatal("no scheduler_task_run event for journal_stream")
		}
	}
}
