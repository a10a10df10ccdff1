package chaos

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/testkit/chaos/check"
	"github.com/stargazer/stargazer-jobs/internal/testkit/faultproxy"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

// process is one incarnation of a worker or of the node agent.
type process struct {
	name       string
	cmd        *exec.Cmd
	pid        int
	start      time.Time
	logPath    string
	probe      string // PROBE_ADDR
	http       string // HTTP_ADDR (no credentials: loopback, admin)
	deployment string
	done       chan struct{}
	// ended is how the harness ended it ("killed", "terminated"); set
	// before the signal.
	mu    sync.Mutex
	ended string
	end   time.Time
}

// slot is a worker (or the node agent) across its incarnations: its links
// to Redis and FalkorDB through fault proxies of its own, and its clock.
type slot struct {
	name        string
	node        bool
	redisProxy  *faultproxy.Proxy
	falkorProxy *faultproxy.Proxy
	clockFile   string
	env         map[string]string

	mu  sync.Mutex // one process-level fault at a time
	cur *process
	n   int
}

// live is s's current incarnation if it is running, else nil: what the
// samplers and the goroutine dumps look at.
func (s *slot) live() *process {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == nil || !s.cur.alive() {
		return nil
	}
	return s.cur
}

// procs records every incarnation, for the history.
type procs struct {
	mu  sync.Mutex
	all []*process
}

func (ps *procs) add(p *process) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ps.all = append(ps.all, p)
}

func (ps *procs) history() []check.Proc {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	out := make([]check.Proc, 0, len(ps.all))
	for _, p := range ps.all {
		p.mu.Lock()
		out = append(out, check.Proc{Name: p.name, Pid: p.pid, Start: p.start, End: p.end, Ended: p.ended, Deployment: p.deployment})
		p.mu.Unlock()
	}
	return out
}

// start runs a new incarnation of s from bin with its environment plus
// extra, and waits until it is ready.
func (h *harness) start(s *slot, deployment string) (*process, error) {
	s.n++
	p := &process{name: s.name, logPath: filepath.Join(h.dir, "logs", fmt.Sprintf("%s.%d.log", s.name, s.n)),
		deployment: deployment, done: make(chan struct{})}
	out, err := os.Create(p.logPath)
	if err != nil {
		return nil, err
	}
	httpAddr, probe := freeAddr(), freeAddr()
	if httpAddr == "" || probe == "" {
		out.Close()
		return nil, fmt.Errorf("no free port")
	}
	p.probe, p.http = probe, httpAddr
	p.cmd = exec.Command(h.bin)
	p.cmd.Env = append(os.Environ(), "HTTP_ADDR="+httpAddr, "PROBE_ADDR="+probe, "DEPLOYMENT_ID="+deployment)
	for k, v := range s.env {
		p.cmd.Env = append(p.cmd.Env, k+"="+v)
	}
	p.cmd.Stdout, p.cmd.Stderr = out, out
	// Its own process group: a signal to the harness (Ctrl-C) is not
	// theirs, the harness stops them in order. If the harness dies, they
	// die with it.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		out.Close()
		return nil, err
	}
	p.pid, p.start = p.cmd.Process.Pid, time.Now()
	go func() {
		_ = p.cmd.Wait()
		out.Close()
		p.mu.Lock()
		p.end = time.Now()
		if p.ended == "" {
			p.ended = "exited"
		}
		p.mu.Unlock()
		close(p.done)
	}()
	h.procs.add(p)
	s.cur = p
	ready := `"msg":"worker started"`
	if s.node {
		ready = `"msg":"node role`
	}
	deadline := time.Now().Add(45 * time.Second)
	for time.Now().Before(deadline) {
		if b, _ := os.ReadFile(p.logPath); strings.Contains(string(b), ready) {
			return p, nil
		}
		select {
		case <-p.done:
			b, _ := os.ReadFile(p.logPath)
			return p, fmt.Errorf("%s exited while starting:\n%s", s.name, tail(string(b), 3000))
		case <-time.After(50 * time.Millisecond):
		}
	}
	return p, fmt.Errorf("%s not ready within 45s (log %s)", s.name, p.logPath)
}

// stop ends p with sig ("killed" for SIGKILL, "terminated" for SIGTERM),
// waiting for it; a process still running within after SIGTERM is killed.
func (p *process) stop(sig syscall.Signal, after time.Duration) {
	p.mu.Lock()
	if p.ended == "" {
		p.ended = map[syscall.Signal]string{syscall.SIGKILL: "killed", syscall.SIGTERM: "terminated"}[sig]
	}
	p.mu.Unlock()
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(after):
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
	}
}

func (p *process) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

func freeAddr() string {
	port, err := redistest.FreePort()
	if err != nil {
		return ""
	}
	return "127.0.0.1:" + strconv.Itoa(port)
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

// metricsClient reads a process's /metrics on its probe listener (not
// through its proxies).
var metricsClient = &http.Client{Timeout: 3 * time.Second}

// goroutines is the process's goroutine dump (GET /debug/pprof/goroutine
// on its HTTP_ADDR, debug=1: stacks grouped, with counts).
func goroutines(addr string) (string, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("goroutine dump: %s", resp.Status)
	}
	return string(b), nil
}

// stackGroups splits a debug=1 goroutine dump into its stacks, keyed by
// the stack (addresses and frames), with their counts.
func stackGroups(dump string) map[string]int {
	out := map[string]int{}
	if first, rest, ok := strings.Cut(dump, "\n"); ok && strings.HasPrefix(first, "goroutine profile:") {
		dump = rest
	}
	for _, blk := range strings.Split(dump, "\n\n") {
		head, rest, ok := strings.Cut(blk, "\n")
		if !ok || !strings.Contains(head, " @ ") {
			continue
		}
		n, _ := strconv.Atoi(strings.Fields(head)[0])
		var frames []string
		for _, l := range strings.Split(rest, "\n") {
			if f := strings.Fields(l); len(f) >= 3 && f[0] == "#" {
				frames = append(frames, f[2])
			}
		}
		out[strings.Join(frames, "\n")] += n
	}
	return out
}

// newStacks lists the stacks with more goroutines in after than in
// before, most first.
func newStacks(before, after string) (more int, report string) {
	b, a := stackGroups(before), stackGroups(after)
	type grew struct {
		stack string
		n     int
	}
	var gs []grew
	for st, n := range a {
		if d := n - b[st]; d > 0 {
			gs = append(gs, grew{st, d})
			more += d
		}
	}
	sort.Slice(gs, func(i, j int) bool { return gs[i].n > gs[j].n })
	var sb strings.Builder
	for _, g := range gs {
		fmt.Fprintf(&sb, "+%d\n%s\n\n", g.n, g.stack)
	}
	return more, sb.String()
}
