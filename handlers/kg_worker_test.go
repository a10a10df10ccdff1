package handlers_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stargazer/stargazer-jobs/handlers"
	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/clients/llm/llmtest"
	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
	"github.com/stargazer/stargazer-jobs/internal/queue/server"
	"github.com/stargazer/stargazer-jobs/internal/testkit/falkortest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/jobs"
	"github.com/stargazer/stargazer-jobs/monitor"
)

// verdictServer is an OpenAI-compatible chat/completions fake whose
// behaviour the test switches: "judge" calls the two spellings of New York
// the same and everything else distinct, "429" rate limits with
// Retry-After: 1, "garbage" answers prose.
type verdictServer struct {
	srv   *httptest.Server
	mode  atomic.Value
	mu    sync.Mutex
	calls map[string]int
}

func newVerdictServer(t *testing.T) *verdictServer {
	v := &verdictServer{calls: map[string]int{}}
	v.mode.Store("judge")
	v.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Messages []llm.Message `json:"messages"`
		}
		_ = json.NewDecoder(r.Body).Decode(&req)
		mode := v.mode.Load().(string)
		v.mu.Lock()
		v.calls[mode]++
		v.mu.Unlock()
		switch mode {
		case "429":
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		case "garbage":
			writeCompletion(w, "I would merge them all.")
			return
		}
		var verdicts []map[string]any
		for _, line := range strings.Split(req.Messages[len(req.Messages)-1].Content, "\n") {
			var p struct {
				Pair int
				A, B struct{ Name string }
			}
			if !strings.HasPrefix(line, `{"pair":`) || json.Unmarshal([]byte(line), &p) != nil {
				continue
			}
			same := strings.HasPrefix(p.A.Name, "New York") && strings.HasPrefix(p.B.Name, "New York")
			verdict := map[string]any{"pair": p.Pair, "same": same, "confidence": 0.9}
			if same {
				verdict["keep"] = "a"
			}
			verdicts = append(verdicts, verdict)
		}
		b, _ := json.Marshal(map[string]any{"verdicts": verdicts})
		writeCompletion(w, string(b))
	}))
	t.Cleanup(v.srv.Close)
	return v
}

func writeCompletion(w http.ResponseWriter, content string) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(llmtest.Completion("", content, llm.Usage{}))
}

func (v *verdictServer) Calls(mode string) int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.calls[mode]
}

// On a real worker (singleton leases, retry policy, metrics), consolidation
// merges and prunes and its counts reach Prometheus; a rate-limited dedup
// pass is retried after Retry-After until its retries run out, and one
// that gets garbage is archived at once; neither merges anything.
func TestGraphMaintenanceOnARealWorker(t *testing.T) {
	if testing.Short() {
		t.Skip("a whole worker: skipped under -short")
	}
	ctx := context.Background()
	rsrv := redistest.Start(t)
	rdb := rsrv.Client(t)
	g := falkortest.Graph(t, false)
	if err := graph.EnsureSchema(ctx, g); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	day := int64(24 * time.Hour / time.Millisecond)
	create := func(name string, mentions int64, daysAgo int64) {
		_, err := g.Query(ctx, `CREATE (:Entity {key: $k, name: $n, normalized_name: $nn, type: 'place', mention_count: $m, first_seen: $s, last_seen: $s})`,
			map[string]any{"k": graph.EntityKey(name, "place"), "n": name, "nn": graph.NormalizeName(name), "m": mentions, "s": now.UnixMilli() - daysAgo*day})
		if err != nil {
			t.Fatal(err)
		}
	}
	create("New York City", 5, 1)
	create("New York Cty", 1, 1)
	create("Nowhere Special", 1, 90) // pruned

	llmSrv := newVerdictServer(t)
	metrics := monitor.NewMetrics(prometheus.NewRegistry())
	conn := asynq.RedisClientOpt{Addr: rsrv.Addr}
	logger := slog.New(slog.NewJSONHandler(io.Discard, nil))
	opts := server.Options{Redis: conn, Concurrency: 2, ShutdownTimeout: 5 * time.Second, Logger: logger,
		Metrics: metrics, Catalog: jobs.Catalog(), RedisClient: rdb}
	mux := server.Mux(opts)
	deps := handlers.Deps{Redis: rdb, Graph: g, Logger: logger, Counter: metrics,
		LLM: llm.New(llm.Options{BaseURL: llmSrv.srv.URL}), Models: handlers.Models{Extraction: "m"}, OrgHubDegree: 1}
	for _, r := range handlers.Register(mux, deps, jobs.Catalog(), jobs.Redis|jobs.KG|jobs.LLM) {
		if (r.Task == jobs.KGConsolidation || r.Task == jobs.LimbicDedup || r.Task == jobs.LimbicOrg) && !r.Registered {
			t.Fatalf("%s not registered: %s", r.Task, r.Reason)
		}
	}
	srv := server.NewServer(opts)
	if err := srv.Start(mux); err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	client := asynq.NewClient(conn)
	defer client.Close()
	insp := asynq.NewInspector(conn)
	defer insp.Close()

	run := func(task string, maxRetry int) *asynq.TaskInfo {
		t.Helper()
		info, err := client.EnqueueContext(ctx, asynq.NewTask(task, nil), asynq.Queue(jobs.QueueMaintenance),
			asynq.MaxRetry(maxRetry), asynq.Retention(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			got, err := insp.GetTaskInfo(jobs.QueueMaintenance, info.ID)
			if err == nil && (got.State == asynq.TaskStateCompleted || got.State == asynq.TaskStateArchived) {
				return got
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s did not finish: %+v, %v", task, got, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	info := run(jobs.KGConsolidation, 3)
	if info.State != asynq.TaskStateCompleted {
		t.Fatalf("consolidation %v: %s", info.State, info.LastErr)
	}
	var res map[string]any
	if err := json.Unmarshal(info.Result, &res); err != nil || res["merged"] != 1.0 || res["pruned_entities"] != 1.0 {
		t.Errorf("stored result %s (%v)", info.Result, err)
	}
	for item, want := range map[string]float64{"merged": 1, "pruned_entities": 1, "llm_calls": 1} {
		if got := testutil.ToFloat64(metrics.TaskItems.WithLabelValues(jobs.KGConsolidation, item)); got != want {
			t.Errorf("stargazer_task_items_total{item=%q} = %v, want %v", item, got, want)
		}
	}

	// New uncertain pairs for the dedup passes.
	create("Acme Corporation", 2, 1)
	create("Acme Corp", 2, 1)
	llmSrv.mode.Store("429")
	info = run(jobs.LimbicDedup, 1)
	if info.State != asynq.TaskStateArchived || !strings.Contains(info.LastErr, "429") || llmSrv.Calls("429") != 2 {
		t.Errorf("rate-limited dedup: %v after %d calls (%s); want archived after 1 run + 1 retry", info.State, llmSrv.Calls("429"), info.LastErr)
	}
	llmSrv.mode.Store("garbage")
	info = run(jobs.LimbicDedup, 2)
	if info.State != asynq.TaskStateArchived || !strings.Contains(info.LastErr, "not the requested JSON") || llmSrv.Calls("garbage") != 1 {
		t.Errorf("garbage dedup: %v after %d calls (%s); want archived at once", info.State, llmSrv.Calls("garbage"), info.LastErr)
	}
	res2, err := g.ROQuery(ctx, `MATCH (e:Entity) RETURN count(e)`, nil)
	if err != nil || res2.Rows[0][0] != int64(3) {
		t.Errorf("entities left %v (%v), want the 3 survivors: no merge without a verdict", res2.Rows, err)
	}
}
