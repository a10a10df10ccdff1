package deploy_test

import (
	"context"
	"encoding/json"
	"errors"
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
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/stargazer/stargazer-jobs/internal/app"
	"github.com/stargazer/stargazer-jobs/internal/store/msgcache"
	"github.com/stargazer/stargazer-jobs/internal/testkit/poll"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/syncbuf"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// Test tasks the live worker runs besides the catalog's.
const (
	// tickTask succeeds on every run; TASK_INTERVALS makes it run every
	// tickInterval, on the maintenance queue (which a test pauses to stop it).
	tickTask = "deploy_tick"
	// flakyTask fails on every run (once the test says so), with no retry:
	// each failed run is archived.
	flakyTask = "deploy_flaky"
	// holdTask is a singleton that runs until the test releases it.
	holdTask = "deploy_hold"

	tickInterval  = 2 * time.Second
	flakyInterval = time.Second
)

func testSpecs() []jobs.Spec {
	empty := func() jobs.Payload { return &jobs.Empty{} }
	return []jobs.Spec{
		{Name: tickTask, Kind: jobs.Periodic, Interval: time.Hour, Queue: jobs.QueueMaintenance,
			MaxRetry: 0, Timeout: time.Minute, NewPayload: empty, Summary: "deploy test: succeeds"},
		{Name: flakyTask, Kind: jobs.Periodic, Interval: time.Hour, Queue: jobs.QueueDefault,
			MaxRetry: 0, Timeout: time.Minute, NewPayload: empty, Summary: "deploy test: fails"},
		{Name: holdTask, Kind: jobs.Child, Queue: jobs.QueueDefault, Singleton: true,
			MaxRetry: 0, Timeout: time.Minute, NewPayload: empty, Summary: "deploy test: holds its singleton lease"},
	}
}

// liveWorker is a real worker (app.Run, in this process) against a real
// redis-server, with the test tasks added to the catalog.
type liveWorker struct {
	addr    string // HTTP_ADDR
	probes  string // PROBE_ADDR, where Prometheus scrapes it
	started time.Time
	redis   *redistest.Server
	insp    *asynq.Inspector
	client  *asynq.Client
	logs    *syncbuf.Buffer
	release chan struct{} // closed to end holdTask's run
	failing atomic.Bool   // flakyTask fails while set, else succeeds
}

// fakeEmbeddings answers the OpenAI embeddings API, with usage, so a real
// embed_messages run makes a real LLM call (and its metrics).
func fakeEmbeddings(t *testing.T) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Input []string `json:"input"`
		}
		if r.URL.Path != "/v1/embeddings" || json.NewDecoder(r.Body).Decode(&req) != nil {
			http.Error(w, `{"error":{"message":"bad request"}}`, http.StatusBadRequest)
			return
		}
		type item struct {
			Object    string    `json:"object"`
			Index     int       `json:"index"`
			Embedding []float32 `json:"embedding"`
		}
		out := struct {
			Object string         `json:"object"`
			Data   []item         `json:"data"`
			Model  string         `json:"model"`
			Usage  map[string]int `json:"usage"`
		}{Object: "list", Model: "test-embeddings", Usage: map[string]int{"prompt_tokens": 3 * len(req.Input), "total_tokens": 3 * len(req.Input)}}
		for i := range req.Input {
			out.Data = append(out.Data, item{Object: "embedding", Index: i, Embedding: []float32{0.1, 0.2, 0.3, 0.4}})
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// startLiveWorker runs the worker until the test ends and waits until it
// serves. It exports the queue metrics too (QUEUE_METRICS defaults to true),
// as the monitor does, so one process has every series.
func startLiveWorker(t *testing.T) *liveWorker {
	t.Helper()
	return startLiveWorkerAt(t, redistest.FreeAddr(t), true)
}

// startLiveWorkerAt is startLiveWorker with its probe listener (PROBE_ADDR,
// which Prometheus scrapes) on probes; flakyTask fails from the start if
// failing, else once the test sets w.failing.
func startLiveWorkerAt(t *testing.T, probes string, failing bool) *liveWorker {
	t.Helper()
	srv := redistest.Start(t)
	emb := fakeEmbeddings(t)
	w := &liveWorker{
		addr: redistest.FreeAddr(t), probes: probes, redis: srv, logs: &syncbuf.Buffer{}, release: make(chan struct{}),
		insp: asynq.NewInspector(asynq.RedisClientOpt{Addr: srv.Addr}), client: asynq.NewClient(asynq.RedisClientOpt{Addr: srv.Addr}),
	}
	w.failing.Store(failing)
	t.Cleanup(func() { w.insp.Close(); w.client.Close() })
	env := map[string]string{
		"REDIS_URL": srv.URL(), "HTTP_ADDR": w.addr, "PROBE_ADDR": w.probes, "SHUTDOWN_TIMEOUT": "5s", "MONITOR_TOKEN": "test-token",
		"EMBEDDINGS_BASE_URL": emb.URL + "/v1",
		"TASK_INTERVALS":      fmt.Sprintf("%s=%s,%s=%s", tickTask, tickInterval, flakyTask, flakyInterval),

		// A budget, so the spend ledger's budget series exist.
		"LLM_BUDGETS": "embed_messages=1M",
	}
	var releaseOnce sync.Once
	extra := map[string]asynq.Handler{
		tickTask: asynq.HandlerFunc(func(context.Context, *asynq.Task) error { return nil }),
		flakyTask: asynq.HandlerFunc(func(context.Context, *asynq.Task) error {
			if w.failing.Load() {
				return errors.New("deploy test: this task fails")
			}
			return nil
		}),
		holdTask: asynq.HandlerFunc(func(ctx context.Context, _ *asynq.Task) error {
			select {
			case <-w.release:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	w.started = time.Now()
	go func() {
		done <- app.Run(ctx, app.Params{
			Getenv: func(k string) string { return env[k] }, Stdout: w.logs, Stderr: io.Discard,
			Catalog: append(jobs.Catalog(), testSpecs()...), Extra: extra,
		})
	}()
	t.Cleanup(func() {
		releaseOnce.Do(func() { close(w.release) })
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("worker: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("worker did not stop")
		}
	})
	poll.Until(t, "the worker serving", func() bool {
		return strings.Contains(w.logs.String(), `"scheduler started"`) && httpStatus(t, "http://"+w.probes+"/readyz") == 200
	})
	return w
}

func httpStatus(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// exercise makes the worker create every series it can export: a
// successful and an archived run, a singleton holding its lease, an LLM
// call, task items, a refused request. holdTask keeps running until release.
func (w *liveWorker) exercise(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	key, _, err := msgcache.New(w.redis.Client(t)).Log(ctx, msgcache.Message{
		Channel: msgcache.Channel{Platform: "discord", ID: "100"}, MessageID: "200", UserID: "300",
		UserName: "tester", Text: "hello from the deploy test", Time: time.Now(),
	})
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := json.Marshal(jobs.EmbedBatch{Keys: []string{key}})
	for _, task := range []*asynq.Task{
		asynq.NewTask(jobs.EmbedMessages, payload),
		asynq.NewTask(jobs.ScheduledPromptCleanup, nil),
		asynq.NewTask(holdTask, nil),
	} {
		spec := specOf(t, task.Type())
		if _, err := w.client.Enqueue(task, asynq.Queue(spec.Queue)); err != nil {
			t.Fatalf("enqueue %s: %v", task.Type(), err)
		}
	}
	if code := httpStatus(t, "http://"+w.addr+"/dashboard/"); code != http.StatusUnauthorized {
		t.Fatalf("dashboard without credentials answered %d, want 401", code)
	}
	poll.Until(t, "every kind of series on /metrics", func() bool {
		names := w.metricNames(t)
		for _, n := range []string{
			"stargazer_llm_calls_total", "stargazer_task_items_total", "stargazer_singleton_held_since_timestamp_seconds",
			"stargazer_task_last_success_timestamp_seconds", "stargazer_task_crashes_total", "stargazer_scheduler_lateness_seconds_bucket",
			"stargazer_llm_spend_tokens_total", // the ledger's, read at most every 10 s
		} {
			if !names[n] {
				return false
			}
		}
		return true
	})
}

func specOf(t *testing.T, name string) jobs.Spec {
	t.Helper()
	for _, s := range append(jobs.Catalog(), testSpecs()...) {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("no spec %s", name)
	return jobs.Spec{}
}

// metricNames scrapes /metrics and returns every series name a query can
// select: histograms and summaries as their _bucket, _sum and _count series.
func (w *liveWorker) metricNames(t *testing.T) map[string]bool {
	t.Helper()
	resp, err := http.Get("http://" + w.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	names := map[string]bool{}
	for name, f := range families {
		if len(f.GetMetric()) == 0 {
			continue
		}
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM:
			names[name+"_bucket"], names[name+"_sum"], names[name+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			names[name], names[name+"_sum"], names[name+"_count"] = true, true, true
		default:
			names[name] = true
		}
	}
	return names
}

// prometheusMade are series Prometheus makes itself for every target.
var prometheusMade = map[string]bool{"up": true}

// metricsOf returns the metric names an expression selects.
func metricsOf(t *testing.T, expr string) ([]string, error) {
	t.Helper()
	e, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		return nil, err
	}
	var out []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		for _, m := range vs.LabelMatchers {
			if m.Name == model.MetricNameLabel && name == "" {
				name = m.Value
			}
		}
		if name == "" {
			t.Errorf("%q: a selector without a metric name", expr)
		}
		out = append(out, name)
		return nil
	})
	return out, nil
}
