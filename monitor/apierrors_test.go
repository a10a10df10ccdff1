package monitor

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestDashboardAPIServerErrorsSayWhatTheyAre(t *testing.T) {
	up := PingFunc(func(context.Context) error { return nil })
	down := PingFunc(func(context.Context) error { return errors.New("connection refused") })
	asynqmonError := func(code int) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "dial tcp 127.0.0.1:6379: connect: connection refused", code)
		})
	}
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"queues":[]}`)
	})
	browser := map[string]string{"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"}
	tests := []struct {
		name     string
		path     string
		header   map[string]string
		redis    Pinger
		next     http.Handler
		wantCode int
		wantType string
		wantBody string
	}{
		{"Redis down: 503 as JSON", "/dash/api/queues", nil, down, asynqmonError(500), 503, "application/json",
			`{"error":"redis unreachable: dial tcp 127.0.0.1:6379: connect: connection refused"}`},
		{"Redis down, to the dashboard's own page: 503 as text", "/dash/api/queues", browser, down, asynqmonError(500), 503, "text/plain",
			"redis unreachable: dial tcp 127.0.0.1:6379: connect: connection refused"},
		{"another server error: 500 as JSON", "/dash/api/queues", nil, up, asynqmonError(500), 500, "application/json",
			`{"error":"dial tcp 127.0.0.1:6379: connect: connection refused"}`},
		{"a client error passes", "/dash/api/queues/nope", nil, down, asynqmonError(404), 404, "text/plain", "connection refused"},
		{"an answer passes", "/dash/api/queues", nil, down, ok, 200, "application/json", `{"queues":[]}`},
		{"outside the API passes", "/dash/", nil, down, asynqmonError(500), 500, "text/plain", "connection refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", tt.path, nil)
			for k, v := range tt.header {
				r.Header.Set(k, v)
			}
			w := httptest.NewRecorder()
			apiErrors("/dash/api/", tt.redis, tt.next).ServeHTTP(w, r)
			body := strings.TrimSpace(w.Body.String())
			if w.Code != tt.wantCode || !strings.HasPrefix(w.Header().Get("Content-Type"), tt.wantType) || !strings.Contains(body, tt.wantBody) {
				t.Errorf("= %d %s %q, want %d %s containing %q", w.Code, w.Header().Get("Content-Type"), body, tt.wantCode, tt.wantType, tt.wantBody)
			}
		})
	}
}
