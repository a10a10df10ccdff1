package monitor_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/jobs"
	"github.com/stargazer/stargazer-jobs/monitor"
)

func TestHandlerTree(t *testing.T) {
	srv := redistest.Start(t)
	conn := asynq.RedisClientOpt{Addr: srv.Addr}
	client := asynq.NewClient(conn)
	defer client.Close()
	if _, err := client.Enqueue(asynq.NewTask("demo", nil), asynq.Queue("default")); err != nil {
		t.Fatal(err)
	}
	insp := asynq.NewInspector(conn)
	defer insp.Close()
	reg := prometheus.NewRegistry()
	monitor.NewMetrics(reg).TaskRuns.WithLabelValues("demo", "ok").Inc()
	reg.MustRegister(monitor.NewQueueCollector(insp))

	var redisErr error
	rdb := srv.Client(t)
	mon := monitor.New(monitor.Options{
		Gatherer: reg, RedisConnOpt: conn, DashboardPath: "/dash",
		Redis: monitor.PingFunc(func(ctx context.Context) error {
			if redisErr != nil {
				return redisErr
			}
			return rdb.Ping(ctx).Err()
		}),
	})
	defer mon.Close()
	ts := httptest.NewServer(mon)
	defer ts.Close()

	get := func(path string) (int, string) {
		resp, err := http.Get(ts.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	tests := []struct {
		path string
		code int
		body string
	}{
		{"/healthz", 200, "ok"},
		{"/readyz", 200, "ready"},
		{"/metrics", 200, `stargazer_task_runs_total{status="ok",task="demo"} 1`},
		{"/metrics", 200, `stargazer_queue_tasks{queue="default",state="pending"} 1`},
		{"/dash/", 200, "<html"},
		{"/dash/api/queues", 200, `"queue":"default"`},
	}
	for _, tt := range tests {
		code, body := get(tt.path)
		if code != tt.code || !strings.Contains(body, tt.body) {
			t.Errorf("GET %s = %d %q, want %d containing %q", tt.path, code, body[:min(len(body), 200)], tt.code, tt.body)
		}
	}
	redisErr = errors.New("connection refused")
	if code, body := get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "connection refused") {
		t.Errorf("readyz with Redis down = %d %q", code, body)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("healthz with Redis down = %d, want 200 (the process is alive)", code)
	}
}

type apiFixture struct {
	ts   *httptest.Server
	insp *asynq.Inspector
	reg  *prometheus.Registry
}

func newAPIFixture(t *testing.T, auth monitor.Auth) *apiFixture {
	srv := redistest.Start(t)
	conn := asynq.RedisClientOpt{Addr: srv.Addr}
	client := asynq.NewClient(conn)
	t.Cleanup(func() { client.Close() })
	insp := asynq.NewInspector(conn)
	t.Cleanup(func() { insp.Close() })
	reg := prometheus.NewRegistry()
	mon := monitor.New(monitor.Options{
		Gatherer: reg, Registerer: reg, RedisConnOpt: conn, DashboardPath: "/dashboard",
		Redis: monitor.PingFunc(func(context.Context) error { return nil }),
		Auth:  auth, Catalog: jobs.Catalog(), Enqueuer: client,
	})
	t.Cleanup(func() { mon.Close() })
	ts := httptest.NewServer(mon)
	t.Cleanup(ts.Close)
	return &apiFixture{ts: ts, insp: insp, reg: reg}
}

func (f *apiFixture) do(t *testing.T, method, path, body string, setAuth func(*http.Request)) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, f.ts.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if setAuth != nil {
		setAuth(req)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func bearer(tok string) func(*http.Request) {
	return func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+tok) }
}

func basic(u, p string) func(*http.Request) {
	return func(r *http.Request) { r.SetBasicAuth(u, p) }
}

func TestDashboardAndAPIRequireCredentials(t *testing.T) {
	f := newAPIFixture(t, monitor.Auth{Token: "s3cret", User: "admin", Password: "pw"})
	body := `{"task":"kg_decay_task"}`
	tests := []struct {
		name, method, path string
		auth               func(*http.Request)
		want               int
	}{
		{"dashboard without credentials", "GET", "/dashboard/", nil, 401},
		{"dashboard api without credentials", "GET", "/dashboard/api/queues", nil, 401},
		{"dashboard with wrong token", "GET", "/dashboard/", bearer("nope"), 401},
		{"dashboard with token", "GET", "/dashboard/", bearer("s3cret"), 200},
		{"dashboard with basic auth", "GET", "/dashboard/api/queues", basic("admin", "pw"), 200},
		{"dashboard with wrong password", "GET", "/dashboard/", basic("admin", "x"), 401},
		{"enqueue without credentials", "POST", "/api/v1/tasks", nil, 401},
		{"enqueue with token", "POST", "/api/v1/tasks", bearer("s3cret"), 201},
		{"metrics stay open for scrapers", "GET", "/metrics", nil, 200},
		{"health stays open for probes", "GET", "/healthz", nil, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if code, b := f.do(t, tt.method, tt.path, body, tt.auth); code != tt.want {
				t.Errorf("%s %s = %d %q, want %d", tt.method, tt.path, code, b, tt.want)
			}
		})
	}
	_, metrics := f.do(t, "GET", "/metrics", "", nil)
	for _, want := range []string{`stargazer_http_unauthorized_total{area="dashboard"} 4`, `stargazer_http_unauthorized_total{area="api"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestEnqueueAPIValidatesLikeTheCLI(t *testing.T) {
	f := newAPIFixture(t, monitor.Auth{Token: "t"})
	tests := []struct {
		name, body string
		want       int
		has        string
	}{
		{"valid with payload", `{"task":"scheduled_prompt_cleanup","payload":{"days_to_keep":3}}`, 201, `"queue":"maintenance"`},
		{"delayed", `{"task":"scheduled_prompt_tick","in":"10m"}`, 201, `"state":"scheduled"`},
		{"unknown task", `{"task":"nope"}`, 400, "unknown task"},
		{"bad payload", `{"task":"scheduled_prompt_cleanup","payload":{"days_to_keep":"x"}}`, 400, "invalid payload"},
		{"unknown payload field", `{"task":"kg_decay_task","payload":{"force":true}}`, 400, "unknown field"},
		{"unknown request field", `{"task":"kg_decay_task","priority":9}`, 400, "unknown field"},
		{"malformed json", `{"task":`, 400, "not a valid enqueue request"},
		{"bad duration", `{"task":"kg_decay_task","in":"soon"}`, 400, "duration"},
		{"in and at", `{"task":"kg_decay_task","in":"1m","at":"2030-01-01T00:00:00Z"}`, 400, "at most one"},
		{"unknown queue", `{"task":"kg_decay_task","queue":"fast"}`, 400, "unknown queue"},
		{"node-local task", `{"task":"journal_stream"}`, 400, "is node-local"},
		{"singleton first", `{"task":"limbic_org_task"}`, 201, `"id"`},
		{"singleton again", `{"task":"limbic_org_task"}`, 409, "already queued or running"},
		{"oversize", `{"task":"kg_decay_task","payload":{"x":"` + strings.Repeat("a", 80<<10) + `"}}`, 413, "too large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := f.do(t, "POST", "/api/v1/tasks", tt.body, bearer("t"))
			if code != tt.want || !strings.Contains(body, tt.has) {
				t.Errorf("= %d %s, want %d containing %q", code, body, tt.want, tt.has)
			}
		})
	}
	info, err := f.insp.ListPendingTasks("maintenance")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, ti := range info {
		if ti.Type == "scheduled_prompt_cleanup" && string(ti.Payload) == `{"days_to_keep":3}` {
			found = true
		}
	}
	if !found {
		t.Error("the valid request's task is not in Redis")
	}
}
