package monitor_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	yaml "go.yaml.in/yaml/v4"

	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/monitor"
)

// probeTimeout is the strictest timeoutSeconds of the kubelet's probes in
// the Kubernetes manifests: a probe that takes longer fails, and enough
// failures restart the pod.
func probeTimeout(t *testing.T) time.Duration {
	t.Helper()
	type probe struct {
		TimeoutSeconds int `yaml:"timeoutSeconds"`
	}
	var timeouts []int
	for _, name := range []string{"worker.yaml", "monitor.yaml", "node.yaml"} {
		data, err := os.ReadFile(filepath.Join("..", "deploy", "kubernetes", "base", name))
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		for {
			var doc struct {
				Spec struct {
					Template struct {
						Spec struct {
							Containers []struct {
								LivenessProbe  *probe `yaml:"livenessProbe"`
								ReadinessProbe *probe `yaml:"readinessProbe"`
							} `yaml:"containers"`
						} `yaml:"spec"`
					} `yaml:"template"`
				} `yaml:"spec"`
			}
			if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			for _, c := range doc.Spec.Template.Spec.Containers {
				for _, p := range []*probe{c.LivenessProbe, c.ReadinessProbe} {
					if p == nil {
						continue
					}
					if p.TimeoutSeconds == 0 {
						p.TimeoutSeconds = 1 // the kubelet's default
					}
					timeouts = append(timeouts, p.TimeoutSeconds)
				}
			}
		}
	}
	if len(timeouts) == 0 {
		t.Fatal("no probes in the manifests")
	}
	return time.Duration(slices.Min(timeouts)) * time.Second
}

// slowloris holds n connections to addr from the local address from (any
// when empty) that send part of a request's headers and never the rest,
// reconnecting whenever the server cuts one, until stop is closed. It
// returns how many connections the server accepted and cut.
func slowloris(t *testing.T, addr, from string, n int, stop <-chan struct{}) *atomic.Int64 {
	t.Helper()
	var cut atomic.Int64
	var wg sync.WaitGroup
	d := &net.Dialer{Timeout: 2 * time.Second}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	for range n {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, err := d.Dial("tcp", addr)
				if err != nil {
					time.Sleep(50 * time.Millisecond)
					continue
				}
				_, _ = io.WriteString(c, "GET /dashboard/ HTTP/1.1\r\nHost: x\r\nX-Slow: ")
				done := make(chan struct{})
				go func() {
					_, _ = io.Copy(io.Discard, c) // returns when the server closes it
					close(done)
				}()
				start := time.Now()
				select {
				case <-done:
					cut.Add(1)
				case <-stop:
				}
				c.Close()
				if time.Since(start) < 100*time.Millisecond {
					time.Sleep(100 * time.Millisecond) // closed on accept: do not spin
				}
			}
		})
	}
	t.Cleanup(wg.Wait)
	return &cut
}

// probeResult is one probe as the kubelet makes it: a new connection, a
// deadline of the probe timeout.
type probeResult struct {
	took time.Duration
	code int
	err  error
}

func probeOnce(addr, path string, timeout time.Duration) probeResult {
	client := &http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true}}
	start := time.Now()
	resp, err := client.Get("http://" + addr + path)
	if err != nil {
		return probeResult{took: time.Since(start), err: err}
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return probeResult{took: time.Since(start), code: resp.StatusCode}
}

// latencies summarises probe results: p50 and max of the answered ones,
// and how many failed or took longer than limit.
func latencies(rs []probeResult, limit time.Duration) (p50, maxTook time.Duration, late int) {
	var took []time.Duration
	for _, r := range rs {
		if r.err != nil || r.took > limit {
			late++
		}
		took = append(took, r.took)
	}
	slices.Sort(took)
	return took[len(took)/2], took[len(took)-1], late
}

// probeSeries makes n probes of /healthz and /readyz in turn, one every
// interval, against addr.
func probeSeries(addr string, n int, interval, timeout time.Duration) []probeResult {
	var out []probeResult
	for i := range n {
		path := "/healthz"
		if i%2 == 1 {
			path = "/readyz"
		}
		out = append(out, probeOnce(addr, path, timeout))
		time.Sleep(interval)
	}
	return out
}

// TestProbesAnswerWithinTheProbeTimeoutWhileSlowlorisFillsThePublicListener
// is the attack of issue 25: 300 connections without credentials that
// send their headers slowly fill the public listener's 256 slots. The
// kubelet's probes on PROBE_ADDR must still answer within the manifests'
// probe timeout, every time; the same probes on HTTP_ADDR show that the
// attack did starve the public listener.
func TestProbesAnswerWithinTheProbeTimeoutWhileSlowlorisFillsThePublicListener(t *testing.T) {
	timeout := probeTimeout(t)
	srv := redistest.Start(t)
	w := startWorkerProcess(t, srv.URL(), map[string]string{"MONITOR_TOKEN": adminToken})
	stop := make(chan struct{})
	cut := slowloris(t, w.Addr, "", 300, stop)
	defer close(stop)
	// Let the attack fill the cap: every slot is taken within a second.
	time.Sleep(2 * time.Second)
	// The kubelet probes on its period whether or not the last probe has
	// answered: the public listener's probes run side by side.
	const n = 20
	public := make([]probeResult, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			time.Sleep(time.Duration(i) * 250 * time.Millisecond)
			public[i] = probeOnce(w.Addr, []string{"/healthz", "/readyz"}[i%2], 4*timeout)
		})
	}
	probes := probeSeries(w.ProbeAddr, n, 250*time.Millisecond, timeout)
	wg.Wait()

	p50, maxTook, late := latencies(probes, timeout)
	pp50, pmax, plate := latencies(public, timeout)
	t.Logf("under 300 slowloris connections (%d cut by the server so far), probe timeout %v:", cut.Load(), timeout)
	t.Logf("  PROBE_ADDR: %d probes, p50 %v, max %v, %d failed or over the timeout",
		n, p50.Round(time.Millisecond), maxTook.Round(time.Millisecond), late)
	t.Logf("  HTTP_ADDR:  %d probes, p50 %v, max %v, %d failed or over the timeout",
		n, pp50.Round(time.Millisecond), pmax.Round(time.Millisecond), plate)
	for i, r := range probes {
		if r.err != nil || r.code != 200 || r.took > timeout {
			t.Errorf("probe %d on PROBE_ADDR: %d %v after %v, want 200 within %v", i, r.code, r.err, r.took, timeout)
		}
	}
	// The attack is real: the public listener's probes queue behind it.
	// Unloaded, a probe takes about a millisecond.
	if pp50 < 500*time.Millisecond && plate == 0 {
		t.Errorf("HTTP_ADDR answered in %v (p50) under the attack: the test did not fill its connection cap", pp50)
	}
}

// TestProbeListenerUnderItsOwnFlood floods PROBE_ADDR itself. From one
// address, the flood gets ProbeMaxConnectionsPerAddr connections and the
// rest are closed on accept: the kubelet, from another address, is
// answered within the probe timeout. From many addresses, the flood can
// take all ProbeMaxConnections slots, each for at most
// ProbeReadHeaderTimeout; the descriptors the worker holds stay bounded.
// That case is what the NetworkPolicies (only Prometheus may connect) and
// compose (the port is not published) keep out.
func TestProbeListenerUnderItsOwnFlood(t *testing.T) {
	timeout := probeTimeout(t)
	w := startWorkerProcess(t, "", map[string]string{"MONITOR_TOKEN": adminToken})
	base := warm(t, w)

	t.Run("from one address", func(t *testing.T) {
		stop := make(chan struct{})
		cut := slowloris(t, w.ProbeAddr, "127.0.0.2", 300, stop)
		time.Sleep(time.Second)
		peak := 0
		var probes []probeResult
		for i := range 20 {
			path := "/healthz"
			if i%2 == 1 {
				path = "/readyz"
			}
			probes = append(probes, probeOnce(w.ProbeAddr, path, timeout))
			peak = max(peak, w.fds())
			time.Sleep(100 * time.Millisecond)
		}
		close(stop)
		p50, maxTook, late := latencies(probes, timeout)
		t.Logf("300 connections from 127.0.0.2 (%d closed by the server): probes from 127.0.0.1 p50 %v, max %v, %d late; worker descriptors %d (at rest %d)",
			cut.Load(), p50.Round(time.Millisecond), maxTook.Round(time.Millisecond), late, peak, base)
		for i, r := range probes {
			if r.err != nil || r.code != 200 || r.took > timeout {
				t.Errorf("probe %d: %d %v after %v, want 200 within %v", i, r.code, r.err, r.took, timeout)
			}
		}
		if peak > base+monitor.ProbeMaxConnectionsPerAddr+8 {
			t.Errorf("%d descriptors, at rest %d: the flood from one address holds more than %d", peak, base, monitor.ProbeMaxConnectionsPerAddr)
		}
	})

	t.Run("from many addresses", func(t *testing.T) {
		stop := make(chan struct{})
		for i := range 64 {
			slowloris(t, w.ProbeAddr, fmt.Sprintf("127.0.1.%d", 10+i), monitor.ProbeMaxConnectionsPerAddr+1, stop)
		}
		time.Sleep(time.Second)
		peak := 0
		var probes []probeResult
		for end := time.Now().Add(6 * time.Second); time.Now().Before(end); {
			probes = append(probes, probeOnce(w.ProbeAddr, "/healthz", timeout))
			peak = max(peak, w.fds())
		}
		close(stop)
		p50, maxTook, late := latencies(probes, timeout)
		t.Logf("%d connections from 64 addresses: %d probes, p50 %v, max %v, %d failed or over %v; worker descriptors at most %d (at rest %d)",
			64*(monitor.ProbeMaxConnectionsPerAddr+1), len(probes), p50.Round(time.Millisecond), maxTook.Round(time.Millisecond), late, timeout, peak, base)
		if peak > base+monitor.ProbeMaxConnections+8 {
			t.Errorf("%d descriptors, at rest %d: more than the %d connections of the probe listener", peak, base, monitor.ProbeMaxConnections)
		}
		// Once the flood stops, the queue drains within a header timeout.
		start := time.Now()
		for {
			r := probeOnce(w.ProbeAddr, "/healthz", timeout)
			if r.err == nil && r.code == 200 && r.took < timeout {
				t.Logf("probes answered again %v after the flood stopped", time.Since(start).Round(time.Millisecond))
				break
			}
			if time.Since(start) > monitor.ProbeReadHeaderTimeout+2*timeout {
				t.Fatalf("probes still failing %v after the flood stopped: %v", time.Since(start), r.err)
			}
		}
	})

	// The public listener is untouched by either.
	if code, _, _ := w.do(t, request{method: "GET", path: "/healthz"}); code != 200 {
		t.Errorf("HTTP_ADDR /healthz = %d", code)
	}
}

// TestProbeListenerServesOnlyTheOpenEndpoints: PROBE_ADDR answers the
// probes and the scrape without credentials, as HTTP_ADDR does, and
// nothing else.
func TestProbeListenerServesOnlyTheOpenEndpoints(t *testing.T) {
	w := startWorkerProcess(t, "", map[string]string{"MONITOR_TOKEN": adminToken})
	probe := &workerProc{Proc: w.Proc, t: t, url: "http://" + w.ProbeAddr}
	auth := map[string]string{"Authorization": "Bearer " + adminToken, "Content-Type": "application/json"}
	tests := []struct {
		req  request
		want int
		has  string
	}{
		{request{"GET", "/healthz", "", nil}, 200, "ok"},
		{request{"GET", "/readyz", "", nil}, 200, "ready"},
		{request{"GET", "/metrics", "", nil}, 200, "stargazer_redis_up"},
		{request{"HEAD", "/healthz", "", nil}, 200, ""},
		{request{"GET", "/dashboard/", "", auth}, 404, ""},
		{request{"GET", "/dashboard/api/queues", "", auth}, 404, ""},
		{request{"POST", "/api/v1/tasks", `{"task":"scheduled_prompt_cleanup"}`, auth}, 404, ""},
		{request{"GET", "/debug/pprof/goroutine?debug=1", "", auth}, 404, ""},
		{request{"GET", "/", "", nil}, 404, ""},
		{request{"POST", "/healthz", "", nil}, 405, ""},
	}
	for _, tt := range tests {
		t.Run(tt.req.method+" "+tt.req.path, func(t *testing.T) {
			code, body, _ := probe.do(t, tt.req)
			if code != tt.want || !bytes.Contains([]byte(body), []byte(tt.has)) {
				t.Errorf("= %d %.200q, want %d containing %q", code, body, tt.want, tt.has)
			}
			// The goroutine dump is the admin's, on HTTP_ADDR only.
			if strings.HasPrefix(tt.req.path, "/debug/") {
				if code, body, _ := w.do(t, tt.req); code != 200 || !strings.Contains(body, "goroutine profile: total") {
					t.Errorf("HTTP_ADDR %s %s = %d %.200q, want the goroutine profile", tt.req.method, tt.req.path, code, body)
				}
			}
			// The same endpoints stay on HTTP_ADDR, for compatibility.
			if tt.want == 200 {
				if code, _, _ := w.do(t, tt.req); code != 200 {
					t.Errorf("HTTP_ADDR %s %s = %d", tt.req.method, tt.req.path, code)
				}
			}
		})
	}
}
