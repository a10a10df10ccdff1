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

	"github.com/stargazer/stargazer-jobs/internal/redistest"
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
