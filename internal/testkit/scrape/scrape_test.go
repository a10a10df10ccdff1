package scrape

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

const page = `# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 42
go_goroutines_extra 7
process_open_fds 1.5e+01
stargazer_task_runs_total{status="ok",task="a"} 3
stargazer_task_runs_total{status="ok",task="b"} 4
stargazer_task_runs_total{status="error",task="a"} 5
`

func TestSeriesAndSum(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte(page))
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")

	m, err := Series(srv.Client(), addr, "go_goroutines", "process_open_fds", "absent")
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 2 || m["go_goroutines"] != 42 || m["process_open_fds"] != 15 {
		t.Errorf("Series: %v, want go_goroutines 42 and process_open_fds 15 only", m)
	}
	if got, err := Sum(srv.Client(), addr, `stargazer_task_runs_total{status="ok"`); err != nil || got != 7 {
		t.Errorf("Sum: %v, %v; want 7", got, err)
	}

	srv.Close()
	if _, err := Series(srv.Client(), addr, "go_goroutines"); err == nil {
		t.Error("Series of a closed server: no error")
	}
	if _, err := Sum(srv.Client(), addr, "go_goroutines"); err == nil {
		t.Error("Sum of a closed server: no error")
	}
}
