package stack_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	repoRoot = "../.."
	// projectPrefix starts every compose project these tests create:
	// sgstack-<pid>-<start>, so a later run can find what a killed one left.
	projectPrefix = "sgstack-"
	installHint   = "./scripts/test.sh --install-only (it runs scripts/container-tools.sh)"
)

// tools is what scripts/container-tools.sh installed and wrote to its env
// file.
type tools struct {
	podmanFlags []string // global podman flags this machine needs
	compose     string   // the docker-compose binary
	standins    []string // images that are local stand-ins here
	noImage     []string // images neither pulled nor stood in for
}

func envFile() (string, error) {
	if d := os.Getenv("STARGAZER_CONTAINERS_CACHE"); d != "" {
		return filepath.Join(d, "env"), nil
	}
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "stargazer-jobs", "containers", "env"), nil
}

// loadTools skips under -short and fails when the tools are missing.
func loadTools(t *testing.T) tools {
	t.Helper()
	if testing.Short() {
		t.Skip("runs the compose stack on a container engine (minutes); skipped under -short")
	}
	path, err := envFile()
	if err != nil {
		t.Fatalf("locating the container tools: %v; run %s", err, installHint)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("container tools not installed (%v): run %s", err, installHint)
	}
	var tl tools
	for line := range strings.Lines(string(data)) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok || strings.HasPrefix(k, "#") {
			continue
		}
		v = strings.Trim(v, `"`)
		switch k {
		case "PODMAN_FLAGS":
			tl.podmanFlags = strings.Fields(v)
		case "COMPOSE":
			tl.compose = v
		case "STANDINS":
			tl.standins = strings.Fields(v)
		case "NO_IMAGE":
			tl.noImage = strings.Fields(v)
		}
	}
	for _, bin := range []string{"podman", tl.compose, "/lib/systemd/systemd-journal-remote"} {
		if _, err := exec.LookPath(bin); err != nil || bin == "" {
			t.Fatalf("%q missing (%v): run %s", bin, err, installHint)
		}
	}
	return tl
}

// engine runs podman with the machine's flags and serves its
// Docker-compatible API on a socket of its own.
type engine struct {
	t     *testing.T
	tools tools
	sock  string
}

// run runs podman; the error carries its stderr.
func (e *engine) run(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "podman", append(slices.Clone(e.tools.podmanFlags), args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("podman %s: %w: %s", strings.Join(args, " "), err, lastLines(stderr.String(), 5))
	}
	return string(out), nil
}

func (e *engine) must(ctx context.Context, args ...string) string {
	e.t.Helper()
	out, err := e.run(ctx, args...)
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// startEngine starts `podman system service` on a socket in a temporary
// directory and stops it at the test's end; the kernel stops it too if the
// test process dies first.
func startEngine(t *testing.T, tl tools) *engine {
	t.Helper()
	dir := t.TempDir()
	e := &engine{t: t, tools: tl, sock: filepath.Join(dir, "podman.sock")}
	logf, err := os.Create(filepath.Join(dir, "service.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("podman", append(slices.Clone(tl.podmanFlags), "system", "service", "--time=0", "unix://"+e.sock)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting podman system service: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		logf.Close()
	})
	c := e.apiClient()
	waitFor(t, 30*time.Second, "podman's API on "+e.sock, func() (bool, string) {
		select {
		case <-done:
			data, _ := os.ReadFile(logf.Name())
			t.Fatalf("podman system service exited: %s", lastLines(string(data), 10))
		default:
		}
		resp, err := c.Get("http://podman/_ping")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})
	return e
}

// apiClient speaks HTTP to the engine's socket.
func (e *engine) apiClient() *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", e.sock)
		}},
	}
}

// waitFor polls cond every second until it holds, failing t after timeout
// with the last reason cond gave.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		ok, why := cond()
		if ok {
			return
		}
		last = why
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s: %s", timeout, what, last)
		}
		time.Sleep(time.Second)
	}
}

// container is what the tests read of one container (podman inspect).
type container struct {
	ID      string
	Name    string
	Service string
	State   string
	Health  string
	Pid     int
	Restart int
	// Hostname is what asynq reports as the worker's host.
	Hostname string
	ReadOnly bool
	CapAdd   []string
	// EffectiveCaps are the capabilities its process runs with.
	EffectiveCaps []string
	Mounts        []string // mount destinations
	IP            string
	Healthcheck   []string
}

type inspected struct {
	ID    string `json:"Id"`
	Name  string
	State struct {
		Status string
		Pid    int
		Health *struct{ Status string }
	}
	RestartCount int
	Config       struct {
		Hostname    string
		Labels      map[string]string
		Healthcheck *struct {
			Test     []string
			Interval time.Duration
		}
	}
	HostConfig struct {
		ReadonlyRootfs bool
		CapAdd         []string
		// Tmpfs holds the compose file's tmpfs mounts and, for a read-only
		// container, podman's own (/run, /tmp, /var/tmp).
		Tmpfs map[string]string
	}
	EffectiveCaps []string
	Mounts        []struct{ Destination string }
	// Networks are the container's, by name.
	NetworkSettings struct {
		Networks map[string]struct{ IPAddress string }
	}
}

// containers lists the project's containers, stopped ones included.
func (e *engine) containers(ctx context.Context, project string) ([]container, error) {
	ids, err := e.run(ctx, "ps", "-a", "-q", "--filter", "label=com.docker.compose.project="+project)
	if err != nil {
		return nil, err
	}
	if strings.TrimSpace(ids) == "" {
		return nil, nil
	}
	out, err := e.run(ctx, append([]string{"inspect", "--type", "container"}, strings.Fields(ids)...)...)
	if err != nil {
		return nil, err
	}
	var raw []inspected
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		return nil, fmt.Errorf("podman inspect: %w", err)
	}
	var cs []container
	for _, r := range raw {
		c := container{ID: r.ID, Name: strings.TrimPrefix(r.Name, "/"), Service: r.Config.Labels["com.docker.compose.service"],
			State: r.State.Status, Pid: r.State.Pid, Restart: r.RestartCount, Hostname: r.Config.Hostname,
			ReadOnly: r.HostConfig.ReadonlyRootfs, CapAdd: r.HostConfig.CapAdd, EffectiveCaps: r.EffectiveCaps}
		if r.State.Health != nil {
			c.Health = r.State.Health.Status
		}
		if r.Config.Healthcheck != nil {
			c.Healthcheck = r.Config.Healthcheck.Test
		}
		for _, m := range r.Mounts {
			c.Mounts = append(c.Mounts, m.Destination)
		}
		for dest := range r.HostConfig.Tmpfs {
			c.Mounts = append(c.Mounts, dest)
		}
		for _, n := range r.NetworkSettings.Networks {
			c.IP = n.IPAddress
		}
		cs = append(cs, c)
	}
	slices.SortFunc(cs, func(a, b container) int { return strings.Compare(a.Name, b.Name) })
	return cs, nil
}

// runHealthchecks stands in for the systemd timers through which podman
// schedules healthchecks: without systemd, podman 4.3 never runs them, and
// every container stays "starting". Each container with a healthcheck gets
// `podman healthcheck run` at its own interval, the first at once. It stops
// when the returned function is called.
func (e *engine) runHealthchecks(project string) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		next := map[string]time.Time{}
		for ctx.Err() == nil {
			cs, _ := e.containers(ctx, project)
			var running sync.WaitGroup
			for _, c := range cs {
				if c.State != "running" || len(c.Healthcheck) == 0 || time.Now().Before(next[c.ID]) {
					continue
				}
				out, err := e.run(ctx, "inspect", "--type", "container", "--format", "{{.Config.Healthcheck.Interval}}", c.ID)
				interval, perr := time.ParseDuration(strings.TrimSpace(out))
				if err != nil || perr != nil || interval <= 0 {
					interval = 30 * time.Second // Docker's default
				}
				next[c.ID] = time.Now().Add(interval)
				running.Add(1)
				go func() {
					defer running.Done()
					hctx, hcancel := context.WithTimeout(ctx, time.Minute)
					defer hcancel()
					_, _ = e.run(hctx, "healthcheck", "run", c.ID) // exit 1 is "unhealthy", recorded by podman
				}()
			}
			running.Wait()
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}()
	return func() { cancel(); wg.Wait() }
}

// sweepStale removes what an earlier, killed run of these tests left: the
// containers, volumes and networks of sgstack-<pid>-* projects whose test
// process is gone (or is this one: a reused pid).
func (e *engine) sweepStale(ctx context.Context) {
	e.t.Helper()
	stale := map[string]bool{}
	for _, list := range [][]string{{"ps", "-a"}, {"volume", "ls"}, {"network", "ls"}} {
		out, err := e.run(ctx, append(list, "--format", "json")...)
		if err != nil {
			e.t.Logf("listing for the sweep: %v", err)
			continue
		}
		var items []map[string]json.RawMessage
		if err := json.Unmarshal([]byte(out), &items); err != nil {
			e.t.Logf("listing for the sweep: podman %s: %v", strings.Join(list, " "), err)
			continue
		}
		for _, it := range items {
			var labels map[string]string
			for _, key := range []string{"Labels", "labels"} { // podman's JSON spells it both ways
				if raw, ok := it[key]; ok {
					_ = json.Unmarshal(raw, &labels)
				}
			}
			p := labels["com.docker.compose.project"]
			if rest, ok := strings.CutPrefix(p, projectPrefix); ok {
				pidText, _, _ := strings.Cut(rest, "-")
				pid, err := strconv.Atoi(pidText)
				if err == nil && (pid == os.Getpid() || !alive(pid)) {
					stale[p] = true
				}
			}
		}
	}
	for p := range stale {
		e.t.Logf("removing the leftovers of an earlier run: project %s", p)
		e.removeProject(ctx, p)
	}
}

func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// removeProject force-removes every container, volume and network labelled
// with project, and returns what it could not remove.
func (e *engine) removeProject(ctx context.Context, project string) []string {
	filter := "label=com.docker.compose.project=" + project
	var left []string
	for _, kind := range []struct {
		list, rm []string
	}{
		{[]string{"ps", "-a", "-q", "--filter", filter}, []string{"rm", "-f", "-v", "-t", "0"}},
		{[]string{"volume", "ls", "-q", "--filter", filter}, []string{"volume", "rm", "-f"}},
		{[]string{"network", "ls", "-q", "--filter", filter}, []string{"network", "rm", "-f"}},
	} {
		out, err := e.run(ctx, kind.list...)
		if err != nil {
			left = append(left, err.Error())
			continue
		}
		if ids := strings.Fields(out); len(ids) > 0 {
			if _, err := e.run(ctx, append(slices.Clone(kind.rm), ids...)...); err != nil {
				left = append(left, err.Error())
			}
		}
		if out, _ := e.run(ctx, kind.list...); strings.TrimSpace(out) != "" {
			left = append(left, fmt.Sprintf("%s still lists %s", strings.Join(kind.list[:2], " "), strings.Join(strings.Fields(out), " ")))
		}
	}
	return left
}

// compose runs docker-compose against the engine's API for one project.
type compose struct {
	e       *engine
	project string
	files   []string
	env     []string
}

func (c *compose) run(ctx context.Context, args ...string) (string, error) {
	full := []string{"-p", c.project}
	for _, f := range c.files {
		full = append(full, "-f", f)
	}
	full = append(full, args...)
	cmd := exec.CommandContext(ctx, c.e.tools.compose, full...)
	cmd.Dir = repoRoot
	cmd.Env = c.env
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("docker-compose %s: %w\n%s", strings.Join(args, " "), err, lastLines(string(out), 30))
	}
	return string(out), nil
}

func (c *compose) must(ctx context.Context, args ...string) string {
	c.e.t.Helper()
	out, err := c.run(ctx, args...)
	if err != nil {
		c.e.t.Fatal(err)
	}
	return out
}

// port is the host address compose published service's container port on.
func (c *compose) port(ctx context.Context, service string, port int) string {
	c.e.t.Helper()
	out := strings.TrimSpace(c.must(ctx, "port", service, strconv.Itoa(port)))
	if _, _, err := net.SplitHostPort(out); err != nil {
		c.e.t.Fatalf("docker-compose port %s %d: %q", service, port, out)
	}
	return out
}

// logs returns a container's log lines.
func (e *engine) logs(ctx context.Context, id string) []string {
	cmd := exec.CommandContext(ctx, "podman", append(slices.Clone(e.tools.podmanFlags), "logs", id)...)
	out, _ := cmd.CombinedOutput()
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return lines
}

// TestSweepRemovesWhatADeadRunLeft: a volume and a network of a project
// whose test process is gone are removed; those of a live one are kept.
func TestSweepRemovesWhatADeadRunLeft(t *testing.T) {
	tl := loadTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e := &engine{t: t, tools: tl}
	dead := fmt.Sprintf("%s%d-1", projectPrefix, deadPid(t))
	live := fmt.Sprintf("%s%d-1", projectPrefix, os.Getppid())
	for _, p := range []string{dead, live} {
		label := "com.docker.compose.project=" + p
		e.must(ctx, "volume", "create", "--label", label, p+"_data")
		e.must(ctx, "network", "create", "--label", label, p+"_default")
	}
	t.Cleanup(func() { e.removeProject(context.Background(), live) })
	e.sweepStale(ctx)
	for _, tt := range []struct {
		project string
		want    int
	}{{dead, 0}, {live, 1}} {
		filter := "label=com.docker.compose.project=" + tt.project
		vols := strings.Fields(e.must(ctx, "volume", "ls", "-q", "--filter", filter))
		nets := strings.Fields(e.must(ctx, "network", "ls", "-q", "--filter", filter))
		if len(vols) != tt.want || len(nets) != tt.want {
			t.Errorf("project %s: %d volumes and %d networks left, want %d of each", tt.project, len(vols), len(nets), tt.want)
		}
	}
}

// deadPid is the pid of a process that has exited.
func deadPid(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}
