package monitor_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

// TestDashboardAPIAnswers503WhenRedisIsDown stops the worker's real
// redis-server and reads the dashboard's API.
func TestDashboardAPIAnswers503WhenRedisIsDown(t *testing.T) {
	srv := redistest.Start(t)
	w := startWorkerProcess(t, srv.URL(), map[string]string{"MONITOR_TOKEN": adminToken})
	auth := bearerHeader(adminToken)
	paths := []string{"/dashboard/api/queues", "/dashboard/api/scheduler_entries", "/dashboard/api/servers", "/dashboard/api/redis_info"}
	for _, path := range paths {
		if code, body, _ := w.do(t, request{"GET", path, "", auth}); code != 200 {
			t.Fatalf("GET %s with Redis up = %d %s", path, code, body)
		}
	}
	srv.Stop()
	for _, path := range paths {
		t.Run(path, func(t *testing.T) {
			code, body, h := w.do(t, request{"GET", path, "", auth})
			var e struct{ Error string }
			if code != 503 || h.Get("Content-Type") != "application/json" || json.Unmarshal([]byte(body), &e) != nil || !strings.HasPrefix(e.Error, "redis unreachable") {
				t.Errorf("GET %s with Redis down = %d %s %q, want 503 with a JSON error", path, code, h.Get("Content-Type"), body)
			}
			// The dashboard's own page gets the message as text, which
			// asynqmon's UI shows (a JSON body it would hide).
			hdr := map[string]string{"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"}
			for k, v := range auth {
				hdr[k] = v
			}
			code, body, h = w.do(t, request{"GET", path, "", hdr})
			if code != 503 || !strings.HasPrefix(h.Get("Content-Type"), "text/plain") || !strings.HasPrefix(body, "redis unreachable") {
				t.Errorf("GET %s from the dashboard with Redis down = %d %s %q, want 503 as text", path, code, h.Get("Content-Type"), body)
			}
		})
	}
	// The probes say the same.
	if code, _, _ := w.do(t, request{"GET", "/readyz", "", nil}); code != 503 {
		t.Errorf("/readyz with Redis down = %d", code)
	}
}
