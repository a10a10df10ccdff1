package monitor_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/monitor"
)

const adminToken = "admin-token-0123456789"

// smallWindow is a dialer whose connections advertise a tiny receive
// window, so a client that does not read blocks the server's writes.
var smallWindow = &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 2048) })
	if err != nil {
		return err
	}
	return serr
}}

// warm makes the requests that open the worker's lazily opened Redis
// connections, so its descriptor count is a stable baseline.
func warm(t *testing.T, w *workerProc) int {
	t.Helper()
	for _, path := range []string{"/metrics", "/readyz", "/dashboard/api/queues"} {
		w.do(t, request{method: "GET", path: path, header: map[string]string{"Authorization": "Bearer " + adminToken}})
	}
	time.Sleep(200 * time.Millisecond)
	return w.fds()
}

// TestConnectionsAreClosedByTheServerWithinItsTimeouts holds each kind of
// connection a careless or hostile client can hold and measures when the
// worker closes it on its own.
func TestConnectionsAreClosedByTheServerWithinItsTimeouts(t *testing.T) {
	srv := redistest.Start(t)
	w := startWorkerProcess(t, srv.URL(), map[string]string{"MONITOR_TOKEN": adminToken})
	// A large answer, larger than the kernel's socket buffers (4 MiB at
	// most for a send buffer): a page of 200 tasks of 60 KB each.
	client := asynq.NewClient(asynq.RedisClientOpt{Addr: srv.Addr})
	defer client.Close()
	big := []byte(`{"x":"` + strings.Repeat("a", 60_000) + `"}`)
	for range 200 {
		if _, err := client.Enqueue(asynq.NewTask("demo", big), asynq.Queue("bulk")); err != nil {
			t.Fatal(err)
		}
	}
	const page = "/dashboard/api/queues/bulk/pending_tasks?page=1&size=200"
	const slack = 3 * time.Second
	tests := []struct {
		name     string
		dialer   *net.Dialer
		send     string
		min, max time.Duration
		// answer is what the server must have said before closing.
		answer string
	}{
		{name: "slow body without credentials is refused at once",
			send: "POST /api/v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n{\"task\":",
			max:  slack, answer: "HTTP/1.1 401"},
		{name: "slow body with credentials is cut at the read timeout",
			send: "POST /api/v1/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + adminToken + "\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n{\"task\":",
			min:  monitor.ReadTimeout - time.Second, max: monitor.ReadTimeout + slack},
		{name: "connection that sends nothing is cut at the header timeout",
			min: monitor.ReadHeaderTimeout - time.Second, max: monitor.ReadHeaderTimeout + slack},
		{name: "slow headers are cut at the header timeout", send: "GET /metrics HTTP/1.1\r\nHost: x\r\n",
			min: monitor.ReadHeaderTimeout - time.Second, max: monitor.ReadHeaderTimeout + slack},
		{name: "idle keep-alive is cut at the idle timeout", send: "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
			min: monitor.IdleTimeout - time.Second, max: monitor.IdleTimeout + slack, answer: "HTTP/1.1 200"},
		{name: "client that never reads a large answer is cut at the write timeout", dialer: smallWindow,
			send: "GET " + page + " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + adminToken + "\r\n\r\n",
			min:  monitor.WriteTimeout - time.Second, max: monitor.WriteTimeout + slack},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := w.dial(t, tt.dialer)
			if tt.send != "" {
				if _, err := io.WriteString(c, tt.send); err != nil {
					t.Fatal(err)
				}
			}
			if tt.dialer == smallWindow {
				// Do not read until the server gave up, then see that the
				// answer was cut short.
				time.Sleep(tt.max)
				_, got, closed := closedWithin(c, 10*time.Second)
				if !closed || len(got) > 11_000_000 {
					t.Fatalf("after %v: closed=%v, %d bytes: the answer was not cut", tt.max, closed, len(got))
				}
				t.Logf("cut after %v with %d bytes of about 12 MB delivered", monitor.WriteTimeout, len(got))
				return
			}
			took, got, closed := closedWithin(c, tt.max)
			if !closed {
				t.Fatalf("still open after %v (read %q)", took, got)
			}
			if took < tt.min {
				t.Errorf("closed after %v, before the %v limit", took, tt.min)
			}
			if !strings.HasPrefix(got, tt.answer) {
				t.Errorf("answer %q, want it to start with %q", got, tt.answer)
			}
			t.Logf("closed by the server after %v", took.Round(10*time.Millisecond))
		})
	}
}

// TestThousandsOfUnauthenticatedConnectionsHoldBoundedDescriptors opens
// 3,000 connections without credentials (idle, slow bodies, non-reading
// scrapers) and counts the worker's file descriptors.
func TestThousandsOfUnauthenticatedConnectionsHoldBoundedDescriptors(t *testing.T) {
	const maxConns = 256
	w := startWorkerProcess(t, "", map[string]string{"MONITOR_TOKEN": adminToken})
	base := warm(t, w)
	conns := make([]net.Conn, 3000)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			d := &net.Dialer{Timeout: 10 * time.Second}
			send := ""
			switch i % 3 {
			case 1:
				send = "POST /api/v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n{"
			case 2:
				d = smallWindow
				send = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
			}
			c, err := d.Dial("tcp", w.Addr)
			if err != nil {
				t.Errorf("dial %d: %v", i, err)
				return
			}
			conns[i] = c
			if send != "" {
				_, _ = io.WriteString(c, send) // the server may not have accepted it yet: the kernel buffers it
			}
		}()
	}
	wg.Wait()
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	peak := 0
	for end := time.Now().Add(4 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		peak = max(peak, w.fds())
	}
	t.Logf("worker descriptors: %d at rest, at most %d while 3,000 connections were held", base, peak)
	if peak > base+maxConns+16 {
		t.Errorf("peak %d descriptors > baseline %d + cap %d", peak, base, maxConns)
	}
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
	start := time.Now()
	var now int
	for end := start.Add(15 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if now = w.fds(); now <= base+2 {
			break
		}
	}
	t.Logf("back to %d descriptors %v after the client let go", now, time.Since(start).Round(10*time.Millisecond))
	if now > base+2 {
		t.Errorf("%d descriptors 15 s after the client let go, baseline %d", now, base)
	}
	if code, _, _ := w.do(t, request{method: "GET", path: "/healthz"}); code != 200 {
		t.Errorf("healthz after the flood = %d", code)
	}
}

// TestCrossOriginStateChangesAreRefused plays a page in the operator's
// browser that posts to the worker.
func TestCrossOriginStateChangesAreRefused(t *testing.T) {
	srv := redistest.Start(t)
	w := startWorkerProcess(t, srv.URL(), map[string]string{"MONITOR_TOKEN": adminToken})
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: srv.Addr})
	defer insp.Close()
	client := asynq.NewClient(asynq.RedisClientOpt{Addr: srv.Addr})
	defer client.Close()
	queue := heldQueue
	pending, err := client.Enqueue(asynq.NewTask("scheduled_prompt_cleanup", nil), asynq.Queue(queue))
	if err != nil {
		t.Fatal(err)
	}
	auth := "Bearer " + adminToken
	task := `{"task":"scheduled_prompt_cleanup"}`
	hdr := func(kv ...string) map[string]string {
		m := map[string]string{"Authorization": auth}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	tests := []struct {
		name string
		req  request
		want int
	}{
		{"enqueue from another site", request{"POST", "/api/v1/tasks", task, hdr("Content-Type", "application/json", "Sec-Fetch-Site", "cross-site", "Origin", "https://evil.example")}, 403},
		{"enqueue as a text/plain form from another site", request{"POST", "/api/v1/tasks", task, hdr("Content-Type", "text/plain", "Sec-Fetch-Site", "cross-site", "Origin", "https://evil.example")}, 403},
		{"enqueue from a sibling subdomain", request{"POST", "/api/v1/tasks", task, hdr("Content-Type", "application/json", "Sec-Fetch-Site", "same-site", "Origin", "https://evil.example.org")}, 403},
		{"enqueue from an old browser on another origin", request{"POST", "/api/v1/tasks", task, hdr("Content-Type", "application/json", "Origin", "https://evil.example")}, 403},
		{"pause a queue from another site", request{"POST", "/dashboard/api/queues/" + queue + ":pause", "", hdr("Sec-Fetch-Site", "cross-site", "Origin", "https://evil.example")}, 403},
		{"delete a task from another site", request{"DELETE", "/dashboard/api/queues/" + queue + "/pending_tasks/" + pending.ID, "", hdr("Sec-Fetch-Site", "cross-site")}, 403},
		{"text/plain from a non-browser client", request{"POST", "/api/v1/tasks", task, hdr("Content-Type", "text/plain")}, 415},
		{"enqueue from the dashboard's own origin", request{"POST", "/api/v1/tasks", task, hdr("Content-Type", "application/json", "Sec-Fetch-Site", "same-origin")}, 201},
		{"enqueue from an old browser on the same origin", request{"POST", "/api/v1/tasks", task, hdr("Content-Type", "application/json", "Origin", "http://"+w.Addr)}, 201},
		{"reading from another site is not a state change", request{"GET", "/dashboard/api/queues", "", hdr("Sec-Fetch-Site", "cross-site")}, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if code, body, _ := w.do(t, tt.req); code != tt.want {
				t.Errorf("%s %s = %d %s, want %d", tt.req.method, tt.req.path, code, body, tt.want)
			}
		})
	}
	if info, err := insp.GetQueueInfo(queue); err != nil || info.Paused {
		t.Errorf("queue %s paused=%v (%v): a cross-site request paused it", queue, info != nil && info.Paused, err)
	}
	if _, err := insp.GetTaskInfo(queue, pending.ID); err != nil {
		t.Errorf("the pending task is gone: a cross-site request deleted it (%v)", err)
	}
	// The same state changes from the dashboard itself go through.
	if code, body, _ := w.do(t, request{"POST", "/dashboard/api/queues/" + queue + ":pause", "", hdr("Sec-Fetch-Site", "same-origin")}); code != 204 {
		t.Errorf("same-origin pause = %d %s", code, body)
	}
	if code, body, _ := w.do(t, request{"DELETE", "/dashboard/api/queues/" + queue + "/pending_tasks/" + pending.ID, "", hdr("Sec-Fetch-Site", "same-origin")}); code != 204 {
		t.Errorf("same-origin delete = %d %s", code, body)
	}
}

// Credentials of the role matrix.
var (
	viewToken                = "view-token-0123456789"
	adminUser, adminPassword = "admin", "admin-password"
	viewUser, viewPassword   = "viewer", "viewer-password"
)

func bearerHeader(tok string) map[string]string {
	return map[string]string{"Authorization": "Bearer " + tok}
}

func basicHeader(u, p string) map[string]string {
	r, _ := http.NewRequest("GET", "/", nil)
	r.SetBasicAuth(u, p)
	return map[string]string{"Authorization": r.Header.Get("Authorization")}
}

// TestEndpointCredentialMatrix checks every cell of the README's table:
// each endpoint with each kind of credential, on a writable monitor and on
// a read-only one.
func TestEndpointCredentialMatrix(t *testing.T) {
	creds := []struct {
		name   string
		header map[string]string
		// wantRead and wantWrite are the codes of a protected read and of
		// a state change; wantDebug of the admin-only goroutine dump.
		wantRead, wantWrite, wantWriteRO, wantDebug int
	}{
		{"no credentials", nil, 401, 401, 401, 401},
		{"wrong token", bearerHeader("guess"), 401, 401, 401, 401},
		{"wrong password", basicHeader(adminUser, "guess"), 401, 401, 401, 401},
		{"view token", bearerHeader(viewToken), 200, 403, 403, 403},
		{"view basic", basicHeader(viewUser, viewPassword), 200, 403, 403, 403},
		{"admin token", bearerHeader(adminToken), 200, 0, 403, 200},
		{"admin token, lower-case scheme", map[string]string{"Authorization": "bearer " + adminToken}, 200, 0, 403, 200},
		{"admin basic", basicHeader(adminUser, adminPassword), 200, 0, 403, 200},
	}
	env := map[string]string{
		"MONITOR_TOKEN": adminToken, "MONITOR_USER": adminUser, "MONITOR_PASSWORD": adminPassword,
		"MONITOR_VIEW_TOKEN": viewToken, "MONITOR_VIEW_USER": viewUser, "MONITOR_VIEW_PASSWORD": viewPassword,
	}
	for _, readOnly := range []bool{false, true} {
		t.Run(fmt.Sprintf("read-only=%v", readOnly), func(t *testing.T) {
			srv := redistest.Start(t)
			e := map[string]string{"DASHBOARD_READ_ONLY": fmt.Sprint(readOnly)}
			for k, v := range env {
				e[k] = v
			}
			w := startWorkerProcess(t, srv.URL(), e)
			client := asynq.NewClient(asynq.RedisClientOpt{Addr: srv.Addr})
			defer client.Close()
			for i, c := range creds {
				// Each credential from its own address, so the wrong ones
				// stay within their failed-authentication budget.
				from := fmt.Sprintf("127.0.0.%d", 10+i)
				t.Run(c.name, func(t *testing.T) {
					ti, err := client.Enqueue(asynq.NewTask("scheduled_prompt_cleanup", nil), asynq.Queue(heldQueue))
					if err != nil {
						t.Fatal(err)
					}
					write := c.wantWrite
					if readOnly {
						write = c.wantWriteRO
					}
					hdr := func(extra ...string) map[string]string {
						m := map[string]string{}
						for k, v := range c.header {
							m[k] = v
						}
						for i := 0; i < len(extra); i += 2 {
							m[extra[i]] = extra[i+1]
						}
						return m
					}
					cells := []struct {
						req  request
						want int
					}{
						{request{"GET", "/healthz", "", hdr()}, 200},
						{request{"GET", "/readyz", "", hdr()}, 200},
						{request{"GET", "/metrics", "", hdr()}, 200},
						{request{"GET", "/dashboard/", "", hdr()}, c.wantRead},
						{request{"GET", "/dashboard/api/queues", "", hdr()}, c.wantRead},
						{request{"POST", "/dashboard/api/queues/" + heldQueue + ":pause", "", hdr()}, cmpCode(write, 204)},
						{request{"POST", "/dashboard/api/queues/" + heldQueue + ":resume", "", hdr()}, cmpCode(write, 204)},
						{request{"DELETE", "/dashboard/api/queues/" + heldQueue + "/pending_tasks/" + ti.ID, "", hdr()}, cmpCode(write, 204)},
						{request{"POST", "/api/v1/tasks", `{"task":"scheduled_prompt_cleanup","in":"1h"}`, hdr("Content-Type", "application/json")}, cmpCode(write, 201)},
						{request{"GET", "/debug/pprof/goroutine?debug=1", "", hdr()}, c.wantDebug},
					}
					for _, cell := range cells {
						code, body, h := w.doFrom(t, from, cell.req)
						if code != cell.want {
							t.Errorf("%s %s = %d %s, want %d", cell.req.method, cell.req.path, code, body, cell.want)
						}
						if code == 401 && h.Get("WWW-Authenticate") == "" {
							t.Errorf("%s %s: 401 without WWW-Authenticate", cell.req.method, cell.req.path)
						}
					}
				})
			}
		})
	}
}

// heldQueue holds the tasks these tests pause, delete and look for: no
// worker serves it, so the worker under test cannot run them first (in
// "default" it sometimes did, and the task was gone).
const heldQueue = "held"

// cmpCode is want, or ok when want is 0 (the call is allowed).
func cmpCode(want, ok int) int {
	if want == 0 {
		return ok
	}
	return want
}

// TestEnqueueAPIRefusesCarelessInput covers what a careless client sends.
func TestEnqueueAPIRefusesCarelessInput(t *testing.T) {
	w := startWorkerProcess(t, "", map[string]string{"MONITOR_TOKEN": adminToken})
	json := map[string]string{"Authorization": "Bearer " + adminToken, "Content-Type": "application/json"}
	with := func(k, v string) map[string]string {
		m := map[string]string{}
		for a, b := range json {
			m[a] = b
		}
		if v == "" {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	tests := []struct {
		name   string
		body   string
		header map[string]string
		want   int
		has    string
	}{
		{"one request", `{"task":"scheduled_prompt_cleanup"}`, json, 201, `"id"`},
		{"lower-case bearer", `{"task":"scheduled_prompt_cleanup"}`, with("Authorization", "bearer "+adminToken), 201, `"id"`},
		{"upper-case bearer", `{"task":"scheduled_prompt_cleanup"}`, with("Authorization", "BEARER "+adminToken), 201, `"id"`},
		{"json with a charset", `{"task":"scheduled_prompt_cleanup"}`, with("Content-Type", "application/json; charset=utf-8"), 201, `"id"`},
		{"a second object after the first", `{"task":"scheduled_prompt_cleanup"}{"task":"limbic_org_task"}`, json, 400, "data after the JSON object"},
		{"garbage after the object", `{"task":"scheduled_prompt_cleanup"} rm -rf`, json, 400, "data after the JSON object"},
		{"no content type", `{"task":"scheduled_prompt_cleanup"}`, with("Content-Type", ""), 415, "application/json"},
		{"form content type", `task=scheduled_prompt_cleanup`, with("Content-Type", "application/x-www-form-urlencoded"), 415, "application/json"},
		{"delay of 292 years", `{"task":"gemini_key_probe","in":"2562047h"}`, json, 400, "at most 720h"},
		{"unique for 292 years", `{"task":"gemini_key_probe","unique":"2562047h"}`, json, 400, "168h"},
		{"timeout of a day and a second", `{"task":"scheduled_prompt_cleanup","timeout":"24h1s"}`, json, 400, "24h"},
		{"timeout of zero", `{"task":"scheduled_prompt_cleanup","timeout":"0s"}`, json, 400, "timeout 0s: must be between 1s and 24h"},
		{"timeout under a second", `{"task":"scheduled_prompt_cleanup","timeout":"500ms"}`, json, 400, "timeout 500ms: must be between 1s"},
		{"timeout of a second", `{"task":"scheduled_prompt_cleanup","timeout":"1s"}`, json, 201, `"id"`},
		{"unique of zero", `{"task":"scheduled_prompt_cleanup","unique":"0s"}`, json, 400, "unique 0s: must be between 1s"},
		{"task twice", `{"task":"scheduled_prompt_cleanup","task":"kg_decay_task"}`, json, 400, `duplicate key \"task\"`},
		{"payload twice", `{"task":"scheduled_prompt_cleanup","payload":{"days_to_keep":3},"payload":{"days_to_keep":1}}`, json, 400, `duplicate key \"payload\"`},
		{"a payload key twice", `{"task":"scheduled_prompt_cleanup","payload":{"days_to_keep":3,"days_to_keep":3650}}`, json, 400, `duplicate key \"payload.days_to_keep\"`},
		{"at in 31 days", fmt.Sprintf(`{"task":"scheduled_prompt_cleanup","at":%q}`, time.Now().Add(31*24*time.Hour).UTC().Format(time.RFC3339)), json, 400, "30 days"},
		{"body over the limit", `{"task":"scheduled_prompt_cleanup","payload":{"x":"` + strings.Repeat("a", 80<<10) + `"}}`, json, 413, "too large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body, _ := w.do(t, request{"POST", "/api/v1/tasks", tt.body, tt.header})
			if code != tt.want || !strings.Contains(body, tt.has) {
				t.Errorf("= %d %s, want %d containing %q", code, body, tt.want, tt.has)
			}
		})
	}
	// asynqmon reads a whole page into memory, whatever its size.
	if code, body, _ := w.do(t, request{"GET", "/dashboard/api/queues/default/pending_tasks?size=10000000", "", json}); code != 400 {
		t.Errorf("a page of ten million tasks = %d %s, want 400", code, body)
	}
}

// TestPasswordGuessingIsThrottledPerAddress guesses as fast as one client
// can for a few seconds.
func TestPasswordGuessingIsThrottledPerAddress(t *testing.T) {
	w := startWorkerProcess(t, "", map[string]string{"MONITOR_TOKEN": adminToken})
	client := &http.Client{Timeout: 10 * time.Second}
	get := func(c *http.Client, tok string) (int, http.Header) {
		req, _ := http.NewRequest("GET", w.url+"/dashboard/api/queues", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, resp.Header
	}
	const window = 5 * time.Second
	counts := map[int]int{}
	var retryAfter string
	start := time.Now()
	for i := 0; time.Since(start) < window; i++ {
		code, h := get(client, fmt.Sprintf("guess-%d", i))
		counts[code]++
		if code == 429 {
			retryAfter = h.Get("Retry-After")
		}
	}
	elapsed := time.Since(start)
	tries := counts[401] + counts[429]
	t.Logf("%d attempts in %v (%.0f/s): %d guesses evaluated (%.1f/s), %d refused with 429, Retry-After %q",
		tries, elapsed.Round(time.Millisecond), float64(tries)/elapsed.Seconds(), counts[401], float64(counts[401])/elapsed.Seconds(), counts[429], retryAfter)
	if limit := monitor.AuthFailureBurst + int(monitor.AuthFailureRate*elapsed.Seconds()) + 1; counts[401] > limit {
		t.Errorf("%d guesses evaluated in %v, want at most %d", counts[401], elapsed, limit)
	}
	if counts[429] == 0 || retryAfter == "" {
		t.Fatalf("no 429 with Retry-After: %v", counts)
	}
	// The right token from the throttled address waits too: otherwise the
	// 429 would not slow guessing down.
	if code, _ := get(client, adminToken); code != 429 {
		t.Errorf("right token from the throttled address = %d, want 429", code)
	}
	// Another address is not held back.
	other := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}).DialContext}}
	if code, _ := get(other, adminToken); code != 200 {
		t.Errorf("right token from another address = %d, want 200", code)
	}
	time.Sleep(2100 * time.Millisecond) // one token back at 0.5/s
	if code, _ := get(client, adminToken); code != 200 {
		t.Errorf("right token after Retry-After = %d, want 200", code)
	}
	if n := w.metric(t, `stargazer_http_auth_throttled_total{area="dashboard"}`); n < float64(counts[429]) {
		t.Errorf("stargazer_http_auth_throttled_total = %v, want at least %d", n, counts[429])
	}
	// The token is short: the worker said so at startup.
	if !strings.Contains(w.Logs(), `"msg":"bearer token shorter than 32 characters`) || !strings.Contains(w.Logs(), `"setting":"MONITOR_TOKEN"`) {
		t.Errorf("no startup warning naming MONITOR_TOKEN as too short:\n%s", w.Logs())
	}
	// The guessing left one log line, not one per guess.
	lines := throttledLines(w.Logs())
	if len(lines) != 1 {
		t.Fatalf("%d throttle log lines for %d failed guesses, want 1:\n%s", len(lines), counts[401], w.Logs())
	}
	if l := lines[0]; l.Addr != "127.0.0.1/32" || l.Failures < monitor.AuthFailureBurst || l.Window == "" || l.Level != "WARN" {
		t.Errorf("throttle log line %+v, want the address, at least %d failures and the window", l, monitor.AuthFailureBurst)
	}
	t.Logf("the one log line: %+v", lines[0])
}

// throttleLine is the log line of an address that ran out of guesses.
type throttleLine struct {
	Level, Msg, Addr, Window string
	Failures                 int
}

func throttledLines(logs string) []throttleLine {
	var out []throttleLine
	for _, line := range strings.Split(logs, "\n") {
		var l throttleLine
		if json.Unmarshal([]byte(line), &l) == nil && strings.HasPrefix(l.Msg, "failed authentications throttled") {
			out = append(out, l)
		}
	}
	return out
}

// strongToken is an admin token of 64 hexadecimal characters (256 bits),
// as `openssl rand -hex 32` makes.
const strongToken = "4f1c0b9e2a7d48c6b3e5f7a9d1c3e5f70a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d"

// TestAStrongBearerTokenGetsInFromAThrottledAddress: an admin behind the
// same address as someone guessing passwords (a shared proxy, a NAT) still
// gets in with a token too strong to guess, while every password from that
// address, the right one included, waits for the throttle.
func TestAStrongBearerTokenGetsInFromAThrottledAddress(t *testing.T) {
	w := startWorkerProcess(t, "", map[string]string{
		"MONITOR_TOKEN": strongToken, "MONITOR_USER": adminUser, "MONITOR_PASSWORD": adminPassword,
	})
	const shared = "127.0.0.3"
	// The attacker guesses passwords from the shared address until the
	// test ends.
	stop := make(chan struct{})
	var attacks sync.WaitGroup
	var guesses, throttled atomic.Int64
	attacks.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			code, _, _ := w.doFrom(t, shared, request{"GET", "/dashboard/api/queues", "", basicHeader(adminUser, fmt.Sprintf("guess-%d", i))})
			guesses.Add(1)
			if code == 429 {
				throttled.Add(1)
			}
		}
	})
	defer func() { close(stop); attacks.Wait() }()
	for deadline := time.Now().Add(10 * time.Second); throttled.Load() == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the attacker was never throttled")
		}
	}
	enqueue := `{"task":"scheduled_prompt_cleanup","in":"1h"}`
	withJSON := func(h map[string]string) map[string]string { h["Content-Type"] = "application/json"; return h }
	tests := []struct {
		name string
		req  request
		want int
	}{
		{"admin token reads the dashboard", request{"GET", "/dashboard/api/queues", "", bearerHeader(strongToken)}, 200},
		{"admin token, lower-case scheme", request{"GET", "/dashboard/api/queues", "", map[string]string{"Authorization": "bearer " + strongToken}}, 200},
		{"admin token enqueues", request{"POST", "/api/v1/tasks", enqueue, withJSON(bearerHeader(strongToken))}, 201},
		{"admin token again", request{"GET", "/dashboard/", "", bearerHeader(strongToken)}, 200},
		{"the right password waits", request{"GET", "/dashboard/api/queues", "", basicHeader(adminUser, adminPassword)}, 429},
		{"a wrong token waits", request{"GET", "/dashboard/api/queues", "", bearerHeader(strongToken[:63] + "0")}, 429},
		{"no credentials wait", request{"GET", "/dashboard/api/queues", "", nil}, 429},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body, h := w.doFrom(t, shared, tt.req)
			if code != tt.want {
				t.Errorf("%s %s from the throttled address = %d %s, want %d", tt.req.method, tt.req.path, code, body, tt.want)
			}
			if code == 429 && h.Get("Retry-After") == "" {
				t.Error("429 without Retry-After")
			}
		})
	}
	// Still throttled: the admin's successes did not open the door.
	if code, _, _ := w.doFrom(t, shared, request{"GET", "/dashboard/api/queues", "", basicHeader(adminUser, "one-more-guess")}); code != 429 {
		t.Errorf("a guess after the admin's requests = %d, want 429", code)
	}
	// The wrong token was checked, so it counted as a failure.
	if n := w.metric(t, `stargazer_http_unauthorized_total{area="dashboard"}`); n < monitor.AuthFailureBurst {
		t.Errorf("stargazer_http_unauthorized_total = %v", n)
	}
	if strings.Contains(w.Logs(), "bearer token shorter than") {
		t.Error("warned about a 64-character token")
	}
	t.Logf("%d guesses from %s, %d answered 429; one log line: %+v", guesses.Load(), shared, throttled.Load(), throttledLines(w.Logs()))
}
