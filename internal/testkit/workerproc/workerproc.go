// Package workerproc runs a worker binary as a child process of a test:
// its output captured, its HTTP address chosen free, and the process
// killed when the test ends. The multi-process scenarios (internal/e2e,
// the extraction load in kgload, the monitor's hostile-client tests) all
// start their workers through it.
package workerproc

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/scrape"
	"github.com/stargazer/stargazer-jobs/internal/testkit/syncbuf"
)

// Proc is a running worker process.
type Proc struct {
	tb        testing.TB
	Cmd       *exec.Cmd
	Addr      string // its HTTP_ADDR
	ProbeAddr string // its PROBE_ADDR

	out  syncbuf.Buffer
	done chan struct{}
}

// Ready reports whether a starting process is ready for the test.
type Ready func(*Proc) bool

// Logged is ready once the process has written s.
func Logged(s string) Ready {
	return func(p *Proc) bool { return strings.Contains(p.Logs(), s) }
}

// Serves is ready once GET path answers 200.
func Serves(path string) Ready {
	return func(p *Proc) bool {
		resp, err := http.Get("http://" + p.Addr + path)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
}

// Start runs bin with the test's environment plus HTTP_ADDR and PROBE_ADDR
// (free addresses) and env, and waits up to within for ready. The test fails if
// the process exits or is not ready in time; it is SIGKILLed when the test
// ends.
func Start(tb testing.TB, bin string, env map[string]string, ready Ready, within time.Duration) *Proc {
	tb.Helper()
	p, err := TryStart(tb, bin, env, ready, within)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// TryStart is Start returning its failure instead of failing the test, so
// it can be called from any goroutine. A process that exits because one
// of its free addresses was taken meanwhile (another process bound it
// first: many processes started at once) is started again on others, up
// to three times.
func TryStart(tb testing.TB, bin string, env map[string]string, ready Ready, within time.Duration) (*Proc, error) {
	for attempt := 1; ; attempt++ {
		p, err := tryStart(tb, bin, env, ready, within)
		if err == nil || attempt == 3 || !strings.Contains(err.Error(), "address already in use") {
			return p, err
		}
	}
}

func tryStart(tb testing.TB, bin string, env map[string]string, ready Ready, within time.Duration) (*Proc, error) {
	p := &Proc{tb: tb, Addr: redistest.FreeAddr(tb), ProbeAddr: redistest.FreeAddr(tb), done: make(chan struct{})}
	p.Cmd = exec.Command(bin)
	p.Cmd.Env = append(os.Environ(), "HTTP_ADDR="+p.Addr, "PROBE_ADDR="+p.ProbeAddr)
	for k, v := range env {
		p.Cmd.Env = append(p.Cmd.Env, k+"="+v)
	}
	p.Cmd.Stdout, p.Cmd.Stderr = p, p
	if err := p.Cmd.Start(); err != nil {
		return nil, err
	}
	go func() { _ = p.Cmd.Wait(); close(p.done) }()
	tb.Cleanup(p.Kill)
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if ready(p) {
			return p, nil
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("worker exited early:\n%s", p.Logs())
		case <-time.After(20 * time.Millisecond):
		}
	}
	p.Kill()
	return nil, fmt.Errorf("worker not ready within %v:\n%s", within, p.Logs())
}

// Write captures the process's output (stdout and stderr).
func (p *Proc) Write(b []byte) (int, error) { return p.out.Write(b) }

// Logs is everything the process wrote so far.
func (p *Proc) Logs() string { return p.out.String() }

// Pid is the process's ID.
func (p *Proc) Pid() int { return p.Cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Signal sends sig to the process.
func (p *Proc) Signal(sig syscall.Signal) {
	if p.Cmd.Process != nil {
		_ = p.Cmd.Process.Signal(sig)
	}
}

// Kill SIGKILLs the process and waits for it.
func (p *Proc) Kill() {
	p.Signal(syscall.SIGKILL)
	<-p.done
}

// Term stops the process with SIGTERM and waits for it; the test fails,
// and the process is killed, if it is still running after within.
func (p *Proc) Term(within time.Duration) {
	p.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(within):
		p.tb.Errorf("worker did not stop within %v of SIGTERM:\n%s", within, p.Logs())
		p.Kill()
	}
}

// FDs counts the process's open file descriptors.
func (p *Proc) FDs() (int, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.Pid()))
	return len(ents), err
}

// Metric sums the samples of /metrics whose line starts with prefix (a
// name, or a name and the start of its labels); -1 if unreachable.
func (p *Proc) Metric(prefix string) float64 {
	v, err := scrape.Sum(http.DefaultClient, p.Addr, prefix)
	if err != nil {
		return -1
	}
	return v
}
