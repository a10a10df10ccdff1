// Package redistest starts real redis-server processes for tests.
package redistest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Server is a redis-server child process listening on a loopback port.
type Server struct {
	Addr  string
	Dir   string
	cmd   *exec.Cmd
	bin   string
	port  int
	extra []string
}

// URL is the redis:// URL of the server.
func (s *Server) URL() string { return "redis://" + s.Addr + "/0" }

// Client returns a go-redis client for the server, closed at cleanup.
func (s *Server) Client(tb testing.TB) *redis.Client {
	tb.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.Addr})
	tb.Cleanup(func() { c.Close() })
	return c
}

// Start launches a fresh redis-server for the test and stops it at cleanup.
// A missing redis-server fails the test (never skips): the suite's
// guarantees rest on a real Redis. extra are additional config arguments
// such as "--appendonly", "yes".
func Start(tb testing.TB, extra ...string) *Server {
	tb.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		tb.Fatalf("redis-server not found on PATH; install it (apt-get install -y redis-server) or run .ci/run: %v", err)
	}
	var lastErr error
	for range 5 {
		s, err := start(bin, tb.TempDir(), extra)
		if err == nil {
			tb.Cleanup(s.Stop)
			return s
		}
		lastErr = err
	}
	tb.Fatalf("starting redis-server: %v", lastErr)
	return nil
}

// FreePort returns a loopback port that was free a moment ago, for a
// server a test harness is about to start.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// StartAt launches redis-server on addr (host:port from FreeAddr), for
// tests that point a client at Redis before it exists.
func StartAt(tb testing.TB, addr string, extra ...string) *Server {
	tb.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		tb.Fatalf("redis-server not found on PATH: %v", err)
	}
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		tb.Fatal(err)
	}
	port, _ := strconv.Atoi(p)
	s, err := startPort(bin, tb.TempDir(), port, extra)
	if err != nil {
		tb.Fatalf("starting redis-server on %s: %v", addr, err)
	}
	tb.Cleanup(s.Stop)
	return s
}

// Launch starts redis-server in dir on a free loopback port, outside a
// test (the chaos command): the caller stops it.
func Launch(dir string, extra ...string) (*Server, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redis-server not found on PATH (run ./scripts/test.sh --install-only): %w", err)
	}
	var lastErr error
	for range 5 {
		s, err := start(bin, dir, extra)
		if err == nil {
			return s, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

// Relaunch starts a stopped server again on the same port and directory
// (reloading its append-only file if it had one), outside a test.
func (s *Server) Relaunch() error {
	s.Stop()
	var err error
	for range 50 { // the port can take a moment to be free again
		var ns *Server
		if ns, err = startPort(s.bin, s.Dir, s.port, s.extra); err == nil {
			s.cmd = ns.cmd
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("restarting redis-server on %s: %w", s.Addr, err)
}

// Signal sends sig to the server: SIGSTOP freezes it (connections are
// still accepted by the kernel, nothing answers), SIGCONT resumes it.
func (s *Server) Signal(sig os.Signal) error { return s.cmd.Process.Signal(sig) }

// Pid is the server's process ID.
func (s *Server) Pid() int { return s.cmd.Process.Pid }

func start(bin, dir string, extra []string) (*Server, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	return startPort(bin, dir, port, extra)
}

func startPort(bin, dir string, port int, extra []string) (*Server, error) {
	args := append([]string{
		"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir,
		"--save", "", "--appendonly", "no", "--daemonize", "no",
		"--logfile", filepath.Join(dir, "redis.log"),
	}, extra...)
	cmd := exec.Command(bin, args...)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &Server{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), Dir: dir, cmd: cmd, bin: bin, port: port, extra: extra}
	c := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1})
	defer c.Close()
	var err error
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err = c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return s, nil
		}
		if cmd.ProcessState != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.Stop()
	log, _ := os.ReadFile(filepath.Join(dir, "redis.log"))
	return nil, fmt.Errorf("redis-server on port %d not ready: %v\n%s", port, err, log)
}

// Stop kills the server and waits for it.
func (s *Server) Stop() {
	if s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
	}
}

// Crash kills the server (SIGKILL: no shutdown save), as a crashed host
// would. Start it again with Restart.
func (s *Server) Crash() { s.Stop() }

// Restart starts the server again on the same port and directory, so it
// reloads its append-only file if it had one.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	if err := s.Relaunch(); err != nil {
		tb.Fatal(err)
	}
}

// FreeAddr returns a loopback host:port that was free a moment ago, for a
// server the test is about to start.
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	port, err := FreePort()
	if err != nil {
		tb.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}
