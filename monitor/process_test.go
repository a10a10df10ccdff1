package monitor_test

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/workerproc"
)

// workerBinary is cmd/worker built once for the tests that attack a real
// worker process over TCP (empty under -short, where they are skipped).
var workerBinary string

func TestMain(m *testing.M) {
	flag.Parse()
	code := func() int {
		if testing.Short() {
			return m.Run()
		}
		dir, err := os.MkdirTemp("", "monitor-worker")
		if err != nil {
			panic(err)
		}
		defer os.RemoveAll(dir)
		workerBinary = filepath.Join(dir, "worker")
		if out, err := exec.Command("go", "build", "-o", workerBinary, "../cmd/worker").CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "building the worker: %v\n%s", err, out)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

// workerProc is a worker process under attack.
type workerProc struct {
	*workerproc.Proc
	t   *testing.T
	url string
}

// fds counts the process's open file descriptors.
func (p *workerProc) fds() int {
	n, err := p.FDs()
	if err != nil {
		p.t.Fatalf("reading the worker's descriptors: %v", err)
	}
	return n
}

// startWorkerProcess runs the worker binary against redisURL (a fresh
// redis-server when empty) with env, and waits until it serves HTTP.
func startWorkerProcess(t *testing.T, redisURL string, env map[string]string) *workerProc {
	t.Helper()
	if workerBinary == "" {
		t.Skip("multi-process test: skipped under -short")
	}
	if redisURL == "" {
		redisURL = redistest.Start(t).URL()
	}
	all := map[string]string{"REDIS_URL": redisURL, "SHUTDOWN_TIMEOUT": "2s", "SCHEDULER_ENABLED": "false"}
	for k, v := range env {
		all[k] = v
	}
	p := workerproc.Start(t, workerBinary, all, workerproc.Serves("/readyz"), 20*time.Second)
	return &workerProc{Proc: p, t: t, url: "http://" + p.Addr}
}

// request is one HTTP request of a test table.
type request struct {
	method, path, body string
	header             map[string]string
}

// do sends r with a fresh connection and returns the status, the body and
// the headers.
func (p *workerProc) do(t *testing.T, r request) (int, string, http.Header) {
	t.Helper()
	return p.doFrom(t, "", r)
}

// doFrom is do from the local address from (a 127.0.0.0/8 address: each
// has its own failed-authentication budget).
func (p *workerProc) doFrom(t *testing.T, from string, r request) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(r.method, p.url+r.path, strings.NewReader(r.body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range r.header {
		req.Header.Set(k, v)
	}
	tr := &http.Transport{DisableKeepAlives: true}
	if from != "" {
		tr.DialContext = (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}).DialContext
	}
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", r.method, r.path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

// metric reads one sample of the worker's /metrics (0 when absent).
func (p *workerProc) metric(t *testing.T, series string) float64 {
	t.Helper()
	_, body, _ := p.do(t, request{method: "GET", path: "/metrics"})
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// dial opens a raw TCP connection to the worker, closed at cleanup.
func (p *workerProc) dial(t *testing.T, d *net.Dialer) net.Conn {
	t.Helper()
	if d == nil {
		d = &net.Dialer{}
	}
	c, err := d.DialContext(context.Background(), "tcp", p.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedWithin reads c until the server closes it or limit passes, and
// returns how long that took and what was read.
func closedWithin(c net.Conn, limit time.Duration) (time.Duration, string, bool) {
	start := time.Now()
	_ = c.SetReadDeadline(start.Add(limit))
	b, err := io.ReadAll(c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return time.Since(start), string(b), false
	}
	return time.Since(start), string(b), true
}
