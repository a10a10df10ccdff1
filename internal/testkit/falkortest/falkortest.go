// Package falkortest starts real FalkorDB servers for tests: valkey-server
// with the FalkorDB module loaded, on a free loopback port, one per test.
//
// FalkorDB is not mocked anywhere: its Cypher dialect, reply format and
// engine bugs are what the graph code has to get right. scripts/test.sh
// installs both pieces on a fresh machine:
//
//   - valkey-server 8 from Debian (bookworm-backports): the module needs a
//     server that reports redis_version >= 7.2, and bookworm's own
//     redis-server is 7.0.
//   - falkordb.so (FalkorDB [Version]) from the npm package
//     @falkordblite/linux-x64, into [DefaultModulePath].
//
// A missing server or module fails the test (it never skips), with a message
// saying how to install them.
package falkortest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

// Version is the FalkorDB version scripts/test.sh installs. It is part of
// [DefaultModulePath], so a version bump installs next to the old module
// instead of silently testing against it.
const Version = "4.16.3"

// Environment variables that override where the server and module are found.
const (
	// EnvModule names the falkordb.so to load instead of DefaultModulePath.
	EnvModule = "FALKORDB_MODULE"
	// EnvServer names the server binary to run instead of valkey-server from
	// PATH (e.g. a redis-server >= 7.2 built by hand).
	EnvServer = "FALKORDB_SERVER"
)

const installHint = "run ./scripts/test.sh (it installs valkey-server and the FalkorDB module), " +
	"or set " + EnvServer + " / " + EnvModule

// DefaultModulePath is where scripts/test.sh installs falkordb.so:
// $XDG_CACHE_HOME/stargazer-jobs/falkordb-<Version>/falkordb.so, i.e.
// ~/.cache/... on Linux. A per-user cache rather than the work tree, so that
// every clone and worktree on the machine (and CI's fresh clone) shares one
// 39 MB download.
func DefaultModulePath() (string, error) {
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "stargazer-jobs", "falkordb-"+Version, "falkordb.so"), nil
}

// ModulePath returns the falkordb.so the servers load: $FALKORDB_MODULE if
// set, else DefaultModulePath. It errors, saying how to install it, when the
// file does not exist.
func ModulePath() (string, error) {
	path := os.Getenv(EnvModule)
	if path == "" {
		p, err := DefaultModulePath()
		if err != nil {
			return "", fmt.Errorf("locating the FalkorDB module: %w; %s", err, installHint)
		}
		path = p
	}
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("FalkorDB module %s: %w; %s", path, err, installHint)
	}
	return path, nil
}

// ServerPath returns the server binary: $FALKORDB_SERVER if set, else
// valkey-server from PATH.
func ServerPath() (string, error) {
	if p := os.Getenv(EnvServer); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w", EnvServer, p, err)
		}
		return p, nil
	}
	p, err := exec.LookPath("valkey-server")
	if err != nil {
		return "", fmt.Errorf("valkey-server not found on PATH (%w); %s", err, installHint)
	}
	return p, nil
}

// Server is a FalkorDB server child process listening on a loopback port.
type Server struct {
	Addr string
	Dir  string
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
}

// URL is the redis:// URL of the server.
func (s *Server) URL() string { return "redis://" + s.Addr + "/0" }

// Client returns a go-redis client for the server, closed at cleanup. Its
// ReadTimeout is two minutes, not go-redis' 3 s: a graph query
// legitimately runs longer than that, and tests bound queries with graph
// timeouts or contexts.
func (s *Server) Client(tb testing.TB) *redis.Client {
	tb.Helper()
	// But no test query runs for minutes: a server that stops answering
	// (seen once in CI: CREATE INDEX right after start never answered)
	// fails the test instead of hanging the package until its deadline.
	// No retries, so a write is never sent twice.
	c := redis.NewClient(&redis.Options{Addr: s.Addr, ReadTimeout: 2 * time.Minute, MaxRetries: -1})
	tb.Cleanup(func() { c.Close() })
	return c
}

// Start launches a fresh FalkorDB server for the test and stops it at
// cleanup. moduleArgs are FalkorDB configuration parameters passed at load
// time, e.g. "TIMEOUT_MAX", "1000", "THREAD_COUNT", "1".
func Start(tb testing.TB, moduleArgs ...string) *Server {
	tb.Helper()
	bin, err := ServerPath()
	if err != nil {
		tb.Fatal(err)
	}
	module, err := ModulePath()
	if err != nil {
		tb.Fatal(err)
	}
	var lastErr error
	for range 5 { // another process can take the free port before the server binds it
		s, err := start(bin, module, tb.TempDir(), moduleArgs)
		if err == nil {
			tb.Cleanup(s.Stop)
			return s
		}
		lastErr = err
		if !errors.Is(err, errAddrInUse) {
			break
		}
	}
	tb.Fatalf("starting FalkorDB (%s --loadmodule %s): %v", bin, module, lastErr)
	return nil
}

// Launch starts a FalkorDB server in dir outside a test (the chaos
// command); the caller stops it.
func Launch(dir string, moduleArgs ...string) (*Server, error) {
	bin, err := ServerPath()
	if err != nil {
		return nil, err
	}
	module, err := ModulePath()
	if err != nil {
		return nil, err
	}
	var lastErr error
	for range 5 {
		s, err := start(bin, module, dir, moduleArgs)
		if err == nil {
			return s, nil
		}
		lastErr = err
		if !errors.Is(err, errAddrInUse) {
			break
		}
	}
	return nil, fmt.Errorf("starting FalkorDB (%s --loadmodule %s): %w", bin, module, lastErr)
}

// Pid is the server's process ID.
func (s *Server) Pid() int { return s.cmd.Process.Pid }

var errAddrInUse = errors.New("address already in use")

func start(bin, module, dir string, moduleArgs []string) (*Server, error) {
	port, err := redistest.FreePort()
	if err != nil {
		return nil, err
	}
	logFile := filepath.Join(dir, "server.log")
	args := append([]string{
		"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir,
		"--save", "", "--appendonly", "no", "--daemonize", "no",
		"--logfile", logFile,
		"--loadmodule", module,
	}, moduleArgs...)
	cmd := exec.Command(bin, args...)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &Server{
		Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		Dir:  dir,
		cmd:  cmd,
		done: make(chan struct{}),
	}
	go func() {
		_ = cmd.Wait()
		close(s.done)
	}()

	err = s.waitReady(10 * time.Second)
	if err == nil {
		return s, nil
	}
	s.Stop()
	log, _ := os.ReadFile(logFile)
	if strings.Contains(string(log), "Address already in use") {
		err = fmt.Errorf("%w: %w", errAddrInUse, err)
	}
	return nil, fmt.Errorf("server on port %d not ready: %w\n%s", port, err, log)
}

// waitReady pings until the server answers, then checks that the graph
// module is loaded (the server refuses to start if loading fails, but a
// wrong binary could start without it).
func (s *Server) waitReady(limit time.Duration) error {
	c := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(limit)
	var err error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		err = c.Ping(ctx).Err()
		if err == nil {
			err = c.Do(ctx, "GRAPH.CONFIG", "GET", "TIMEOUT").Err()
			cancel()
			if err != nil {
				return fmt.Errorf("graph module not loaded: %w", err)
			}
			return nil
		}
		cancel()
		select {
		case <-s.done:
			return fmt.Errorf("server exited: %v", s.cmd.ProcessState)
		case <-time.After(20 * time.Millisecond):
		}
	}
	return err
}

// Signal sends sig to the server process: SIGSTOP freezes it (the kernel
// still accepts connections for it, nothing answers), SIGCONT resumes it.
func (s *Server) Signal(sig os.Signal) error { return s.cmd.Process.Signal(sig) }

// Stop kills the server and waits for it to exit.
func (s *Server) Stop() {
	if s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

// Graph starts a FalkorDB server for the test and returns the graph "kg"
// on it, with the knowledge graph's schema (indexes, unique keys) when
// schema is true.
func Graph(tb testing.TB, schema bool) *graph.Graph {
	tb.Helper()
	g := graph.New(Start(tb).Client(tb), "kg")
	if schema {
		if err := graph.EnsureSchema(context.Background(), g); err != nil {
			tb.Fatal(err)
		}
	}
	return g
}

// Querier runs write queries: a *graph.Graph or a wrapper of one.
type Querier interface {
	Query(ctx context.Context, cypher string, params map[string]any, opts ...graph.Option) (*graph.Result, error)
}

// Exec runs cypher on g, failing the test on an error.
func Exec(tb testing.TB, g Querier, cypher string, params map[string]any) *graph.Result {
	tb.Helper()
	res, err := g.Query(context.Background(), cypher, params)
	if err != nil {
		tb.Fatalf("%s: %v", cypher, err)
	}
	return res
}
