package stack_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	yaml "go.yaml.in/yaml/v4"

	"github.com/stargazer/stargazer-jobs/internal/clients/journal"
	"github.com/stargazer/stargazer-jobs/internal/queue/periodic"
	"github.com/stargazer/stargazer-jobs/jobs"
)

const (
	monitorToken    = "stack-test-token"
	monitorPassword = "stack-test-password"
	// journalGID owns the test's journal files; the compose file's default
	// JOURNAL_GID (adm on Debian).
	journalGID = 4
	// tickEvery is the test's interval for scheduled_prompt_tick, the one
	// periodic task whose initial delay (10 s) fits in a test.
	tickEvery = 5 * time.Second
	// chatDelay is how long the fake model takes per call: long enough to
	// SIGKILL a worker in the middle of one.
	chatDelay   = 15 * time.Second
	devfakePort = 9911
)

// images are the Dockerfile's targets, built under the names the compose
// file gives them (the enqueuer is not in the stack but ships too).
var images = []struct{ target, name string }{
	{"worker", "stargazer-jobs/worker:latest"},
	{"node", "stargazer-jobs/node:latest"},
	{"enqueuer", "stargazer-jobs/enqueuer:latest"},
}

// TestComposeStack builds the Dockerfile's images with podman, brings
// docker-compose.yml up with Docker Compose against podman's API, and
// checks the running system: health, the dashboard's credentials,
// Prometheus' targets and rules, the node agent's journal, writes and
// capabilities, the scheduler across three replicas, a worker SIGKILLed
// mid-task, and a down/up that keeps the volumes.
func TestComposeStack(t *testing.T) {
	tl := loadTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	start := time.Now()
	e := startEngine(t, tl)
	e.sweepStale(ctx)
	if len(tl.standins) > 0 {
		t.Logf("stand-in images (built here, not the upstream ones; see deploy/standins/README.md): %s", strings.Join(tl.standins, " "))
	}

	readme := readReadmeStack(t)
	step := time.Now()
	for _, build := range readme.builds {
		// The README's build commands; BUILDAH_FORMAT=docker keeps HEALTHCHECK,
		// which podman's default OCI image format drops.
		cmd := exec.CommandContext(ctx, "podman", append(slices.Clone(tl.podmanFlags), build...)...)
		cmd.Dir = repoRoot
		cmd.Env = append(os.Environ(), "BUILDAH_FORMAT=docker")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("podman %s: %v\n%s", strings.Join(build, " "), err, lastLines(string(out), 30))
		}
	}
	t.Logf("built %d images in %v", len(readme.builds), time.Since(step).Round(time.Second))

	s := newStack(ctx, t, e)
	s.readmeUp = readme.up
	step = time.Now()
	s.up(ctx)
	t.Logf("compose up (healthy) in %v", time.Since(step).Round(time.Second))

	t.Run("EveryServiceHealthyByItsOwnHealthcheck", func(t *testing.T) { s.checkHealthy(ctx, t) })
	t.Run("DashboardAnswersWithCredentialsOnly", func(t *testing.T) { s.checkDashboard(ctx, t) })
	t.Run("NodeAgentRunsJournalctlAsNonRootAndStreamsTheJournal", func(t *testing.T) { s.checkJournal(ctx, t) })
	t.Run("NothingWritesOutsideItsVolumes", func(t *testing.T) { s.checkWrites(ctx, t) })
	t.Run("PeriodicTaskEnqueuedOncePerIntervalAcrossReplicas", func(t *testing.T) { s.checkPeriodic(ctx, t, 6) })
	t.Run("PrometheusScrapesEveryReplicaAndLoadsTheRules", func(t *testing.T) { s.checkPrometheus(ctx, t) })
	t.Run("WorkerKilledMidTaskHasItsWorkFinishedByAnother", func(t *testing.T) { s.checkKill(ctx, t) })
	t.Run("DownAndUpKeepSchedulesAndData", func(t *testing.T) { s.checkDownUp(ctx, t) })
	t.Logf("stack test took %v", time.Since(start).Round(time.Second))
}

// stack is one compose project of the test.
type stack struct {
	t        *testing.T
	e        *engine
	c        *compose
	dir      string
	cfg      composeConfig
	services []string // the services brought up
	readmeUp []string // the README's compose up: its flags and services
	// Container ports read from the files: Redis and FalkorDB from the
	// workers' URLs, the monitor's and Prometheus' from their ports.
	redisPort, falkorPort, monitorPort, promPort int
	journalDir                                   string
	machineID                                    string
	stopHealth                                   func()
}

type composeConfig struct {
	Services map[string]struct {
		Image       string
		Environment map[string]*string
		Ports       []struct{ Target int }
		Healthcheck *struct{ Test []string }
	}
}

func newStack(ctx context.Context, t *testing.T, e *engine) *stack {
	t.Helper()
	dir := t.TempDir()
	project := fmt.Sprintf("%s%d-%d", projectPrefix, os.Getpid(), time.Now().Unix())
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "DOCKER_") || strings.HasPrefix(kv, "COMPOSE_")
	})
	env = append(env, "DOCKER_HOST=unix://"+e.sock, "DOCKER_CONFIG="+filepath.Join(dir, "docker-config"),
		"MONITOR_TOKEN="+monitorToken, "MONITOR_PASSWORD="+monitorPassword, fmt.Sprintf("JOURNAL_GID=%d", journalGID))
	s := &stack{t: t, e: e, dir: dir}
	s.c = &compose{e: e, project: project, files: []string{filepath.Join(root, "docker-compose.yml")}, env: env}

	// The compose file as compose reads it, before the test's override.
	if err := json.Unmarshal([]byte(s.c.must(ctx, "config", "--format", "json")), &s.cfg); err != nil {
		t.Fatalf("docker-compose config: %v", err)
	}
	s.redisPort = urlPort(t, s.env("worker", "REDIS_URL"))
	s.falkorPort = urlPort(t, s.env("worker", "FALKORDB_URL"))
	s.monitorPort = s.port("monitor")
	s.promPort = s.port("prometheus")
	missing := map[string]bool{}
	for _, img := range e.tools.noImage {
		missing[img] = true
	}
	for name, svc := range s.cfg.Services {
		if missing[normalizeImage(svc.Image)] {
			t.Logf("service %s not started: no registry and no stand-in for %s on this machine", name, svc.Image)
			continue
		}
		s.services = append(s.services, name)
	}
	slices.Sort(s.services)
	s.services = append(s.services, "devfake")

	s.makeJournal(t)
	s.c.files = append(s.c.files, s.writeOverride(t))

	// Everything the project creates goes at the end, even after a failure.
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer ccancel()
		if s.stopHealth != nil {
			s.stopHealth()
		}
		if t.Failed() {
			s.dumpLogs(cctx)
		}
		if _, err := s.c.run(cctx, "down", "--volumes", "--remove-orphans", "--timeout", "10"); err != nil {
			t.Errorf("compose down: %v", err)
		}
		if left := e.removeProject(cctx, project); len(left) > 0 {
			t.Errorf("left behind after compose down: %v", left)
		}
	})
	return s
}

func (s *stack) env(service, key string) string {
	s.t.Helper()
	v := s.cfg.Services[service].Environment[key]
	if v == nil {
		s.t.Fatalf("docker-compose.yml: %s has no %s", service, key)
	}
	return *v
}

func (s *stack) port(service string) int {
	s.t.Helper()
	ps := s.cfg.Services[service].Ports
	if len(ps) != 1 {
		s.t.Fatalf("docker-compose.yml: %s publishes %d ports, want 1", service, len(ps))
	}
	return ps[0].Target
}

func urlPort(t *testing.T, raw string) int {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("%q: %v", raw, err)
	}
	p, err := strconv.Atoi(u.Port())
	if err != nil {
		t.Fatalf("%q names no port", raw)
	}
	return p
}

// normalizeImage is the fully qualified name of an image reference, as
// scripts/container-tools.sh writes it.
func normalizeImage(ref string) string {
	first, _, hasSlash := strings.Cut(ref, "/")
	switch {
	case !hasSlash:
		return "docker.io/library/" + ref
	case !strings.ContainsAny(first, ".:") && first != "localhost":
		return "docker.io/" + ref
	}
	return ref
}

// writeOverride writes the test's compose override: free host ports on
// 127.0.0.1 instead of the fixed ones, Redis and FalkorDB reachable from the
// test, a fake LLM (cmd/devfake) on the project's network, a short interval
// for scheduled_prompt_tick, and a journal made by the test in place of the
// host's.
func (s *stack) writeOverride(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(s.dir, "devfake")
	build := exec.Command("go", "build", "-o", bin, "./cmd/devfake")
	build.Dir = repoRoot
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building cmd/devfake: %v\n%s", err, out)
	}
	runJournal := filepath.Join(s.dir, "run-journal")
	if err := os.Mkdir(runJournal, 0o755); err != nil {
		t.Fatal(err)
	}
	machineID := filepath.Join(s.dir, "machine-id")
	if err := os.WriteFile(machineID, []byte(s.machineID+"\n"), 0o444); err != nil {
		t.Fatal(err)
	}
	override := fmt.Sprintf(`services:
  redis:
    ports: ["127.0.0.1::%[1]d"]
  falkordb:
    ports: ["127.0.0.1::%[2]d"]
  monitor:
    ports: !override ["127.0.0.1::%[3]d"]
  prometheus:
    ports: !override ["127.0.0.1::%[4]d"]
  worker:
    environment:
      LLM_BASE_URL: http://devfake:%[5]d/v1
      TASK_INTERVALS: %[6]s=%[7]s
  node:
    volumes:
      - {type: bind, source: %[8]q, target: /var/log/journal, read_only: true}
      - {type: bind, source: %[9]q, target: /run/log/journal, read_only: true}
      - {type: bind, source: %[10]q, target: /etc/machine-id, read_only: true}
  devfake:
    image: gcr.io/distroless/static-debian12:nonroot
    entrypoint: ["/devfake", "-addr", "0.0.0.0:%[5]d", "-redis", "redis://redis:%[1]d/0", "-chat-delay", %[11]q]
    volumes:
      - {type: bind, source: %[12]q, target: /devfake, read_only: true}
    read_only: true
    cap_drop: [ALL]
    depends_on:
      redis:
        condition: service_healthy
`, s.redisPort, s.falkorPort, s.monitorPort, s.promPort, devfakePort, jobs.ScheduledPromptTick, tickEvery,
		s.journalDir, runJournal, machineID, chatDelay.String(), bin)
	path := filepath.Join(s.dir, "compose.test.yml")
	if err := os.WriteFile(path, []byte(override), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// up is the README's compose up (`up -d --wait` and its services), plus
// the services the test adds (the fake LLM, Grafana where its image is
// here) and a bound on the wait, while the test runs the healthchecks
// podman does not.
func (s *stack) up(ctx context.Context) {
	s.t.Helper()
	if s.stopHealth == nil {
		s.stopHealth = s.e.runHealthchecks(s.c.project)
	}
	args := slices.Clone(s.readmeUp)
	for _, svc := range s.services {
		if !slices.Contains(args, svc) {
			args = append(args, svc)
		}
	}
	for _, svc := range readmeServices(readmeStack{up: s.readmeUp}) {
		if !slices.Contains(s.services, svc) {
			s.t.Fatalf("the README's compose up starts %s, which has no image here", svc)
		}
	}
	s.c.must(ctx, append(args, "--wait-timeout", "240")...)
}

func (s *stack) dumpLogs(ctx context.Context) {
	cs, _ := s.e.containers(ctx, s.c.project)
	for _, c := range cs {
		s.t.Logf("--- %s (%s, health %q) last log lines:\n%s", c.Name, c.State, c.Health, lastLines(strings.Join(s.e.logs(ctx, c.ID), "\n"), 25))
	}
}

func (s *stack) byService(ctx context.Context, t *testing.T, service string) []container {
	t.Helper()
	cs, err := s.e.containers(ctx, s.c.project)
	if err != nil {
		t.Fatal(err)
	}
	return slices.DeleteFunc(cs, func(c container) bool { return c.Service != service })
}

func (s *stack) redis(ctx context.Context, t *testing.T) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: s.c.port(ctx, "redis", s.redisPort), DialTimeout: 5 * time.Second,
		ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// checkHealthy: every container is running, and every one whose service has
// a healthcheck in the compose file is healthy by that very command.
func (s *stack) checkHealthy(ctx context.Context, t *testing.T) {
	cs, err := s.e.containers(ctx, s.c.project)
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, c := range cs {
		count[c.Service]++
		if c.State != "running" {
			t.Errorf("%s is %s", c.Name, c.State)
		}
		svc, ok := s.cfg.Services[c.Service]
		if !ok || svc.Healthcheck == nil {
			continue
		}
		if c.Health != "healthy" {
			t.Errorf("%s: health %q, want healthy", c.Name, c.Health)
		}
		if want := svc.Healthcheck.Test; !slices.Equal(c.Healthcheck, want) {
			t.Errorf("%s checks itself with %q, the compose file says %q", c.Name, c.Healthcheck, want)
		}
	}
	for _, name := range s.services {
		if count[name] == 0 {
			t.Errorf("service %s has no container", name)
		}
	}
	if count["worker"] != 3 {
		t.Errorf("%d worker replicas, want 3", count["worker"])
	}
}

func (s *stack) checkDashboard(ctx context.Context, t *testing.T) {
	addr := s.c.port(ctx, "monitor", s.monitorPort)
	for _, tt := range []struct {
		name string
		auth func(*http.Request)
		want int
	}{
		{"no credentials", func(*http.Request) {}, http.StatusUnauthorized},
		{"wrong password", func(r *http.Request) { r.SetBasicAuth("admin", "wrong") }, http.StatusUnauthorized},
		{"wrong token", func(r *http.Request) { r.Header.Set("Authorization", "Bearer wrong") }, http.StatusUnauthorized},
		{"user and password", func(r *http.Request) { r.SetBasicAuth("admin", monitorPassword) }, http.StatusOK},
		{"token", func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+monitorToken) }, http.StatusOK},
	} {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/dashboard/", nil)
		tt.auth(req)
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("GET /dashboard/ with %s: %d, want %d", tt.name, resp.StatusCode, tt.want)
		}
	}
}

// makeJournal writes the test's journal: a machine id and, in its
// directory, a journal file (systemd-journal-remote, Debian's) with entries
// of the unit the node agent tails, readable by the group JOURNAL_GID only,
// as a host's journal is.
func (s *stack) makeJournal(t *testing.T) {
	t.Helper()
	s.machineID = fmt.Sprintf("%032x", time.Now().UnixNano())
	s.journalDir = filepath.Join(s.dir, "journal")
	if err := os.MkdirAll(filepath.Join(s.journalDir, s.machineID), 0o750); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{s.journalDir, filepath.Join(s.journalDir, s.machineID)} {
		if err := os.Chown(d, 0, journalGID); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	s.writeJournal(t, "system.journal", "before the agent started", 3)
}

// writeJournal adds a journal file of n entries of the unit, made aside and
// renamed into the machine's directory, so a reader never sees it half
// written or with the wrong owner.
func (s *stack) writeJournal(t *testing.T, name, text string, n int) []string {
	t.Helper()
	unit := s.env("node", "JOURNAL_UNIT")
	// journalctl -f on the local journal follows the current boot's
	// entries only, so the entries carry this boot's ID, as journald's do.
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		t.Fatal(err)
	}
	bootID := strings.ReplaceAll(strings.TrimSpace(string(boot)), "-", "")
	var export strings.Builder
	var msgs []string
	now := time.Now()
	for i := range n {
		msg := fmt.Sprintf("stack test: %s, line %d", text, i+1)
		msgs = append(msgs, msg)
		fmt.Fprintf(&export, "__REALTIME_TIMESTAMP=%d\n__MONOTONIC_TIMESTAMP=%d\n_BOOT_ID=%s\n_MACHINE_ID=%s\n_HOSTNAME=stack-test\n_SYSTEMD_UNIT=%s.service\nSYSLOG_IDENTIFIER=%s\nPRIORITY=6\nMESSAGE=%s\n\n",
			now.UnixMicro()+int64(i), now.UnixMicro()+int64(i), bootID, s.machineID, unit, unit, msg)
	}
	staging := filepath.Join(s.dir, "journal-staging")
	if err := os.MkdirAll(staging, 0o700); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(staging, name)
	cmd := exec.Command("/lib/systemd/systemd-journal-remote", "--output="+file, "-")
	cmd.Stdin = strings.NewReader(export.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("systemd-journal-remote: %v\n%s", err, out)
	}
	if err := os.Chown(file, 0, journalGID); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(file, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(file, filepath.Join(s.journalDir, s.machineID, name)); err != nil {
		t.Fatal(err)
	}
	return msgs
}

// checkJournal: the node image runs journalctl as 65532 with no capability,
// reads the journal through its group, and the agent publishes the unit's
// new entries on the channel the bot's log console reads.
func (s *stack) checkJournal(ctx context.Context, t *testing.T) {
	nodes := s.byService(ctx, t, "node")
	if len(nodes) != 1 {
		t.Fatalf("%d node containers", len(nodes))
	}
	node := nodes[0]
	if out := strings.TrimSpace(s.e.must(ctx, "exec", node.ID, "id", "-u")); out != "65532" {
		t.Errorf("node runs as uid %s, want 65532", out)
	}
	if len(node.EffectiveCaps) != 0 {
		t.Errorf("node runs with capabilities %v, want none", node.EffectiveCaps)
	}
	unit := s.env("node", "JOURNAL_UNIT")
	out := s.e.must(ctx, "exec", node.ID, "journalctl", "-u", unit, "--output=cat", "--no-pager")
	if !strings.Contains(out, "stack test: before the agent started, line 3") {
		t.Errorf("journalctl -u %s in the node container, as 65532, shows:\n%s", unit, out)
	}

	rdb := s.redis(ctx, t)
	sub := rdb.Subscribe(ctx, journal.Channel)
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatalf("subscribing to %s: %v", journal.Channel, err)
	}
	want := s.writeJournal(t, "live.journal", "written while the agent follows", 3)
	got := map[string]bool{}
	deadline := time.After(60 * time.Second)
	for len(got) < len(want) {
		select {
		case m := <-sub.Channel():
			var entry struct{ MESSAGE string }
			if json.Unmarshal([]byte(m.Payload), &entry) == nil && slices.Contains(want, entry.MESSAGE) {
				got[entry.MESSAGE] = true
			}
		case <-deadline:
			t.Fatalf("the node agent published %d of the %d new journal lines on %s in 60 s\nnode log:\n%s",
				len(got), len(want), journal.Channel, lastLines(strings.Join(s.e.logs(ctx, node.ID), "\n"), 20))
		}
	}
}

// checkWrites: the project's containers run with a read-only root and no
// capability, and no container of the stack changed a file of its image
// outside its mounts (podman diff).
func (s *stack) checkWrites(ctx context.Context, t *testing.T) {
	cs, err := s.e.containers(ctx, s.c.project)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		if c.Service == "devfake" {
			continue
		}
		if slices.Contains([]string{"worker", "node", "monitor"}, c.Service) {
			if !c.ReadOnly {
				t.Errorf("%s: root filesystem is writable", c.Name)
			}
			if len(c.EffectiveCaps) != 0 || len(c.CapAdd) != 0 {
				t.Errorf("%s: runs with capabilities %v (added %v), want none", c.Name, c.EffectiveCaps, c.CapAdd)
			}
		}
		out := s.e.must(ctx, "diff", "--format", "json", c.ID)
		var diff map[string][]string
		if err := json.Unmarshal([]byte(out), &diff); err != nil {
			t.Fatalf("podman diff %s: %v: %s", c.Name, err, out)
		}
		for kind, paths := range diff {
			for _, p := range paths {
				if !underMount(p, c.Mounts) {
					t.Errorf("%s wrote outside its volumes: %s %s", c.Name, kind, p)
				}
			}
		}
	}
}

// runtimeMounts are files the engine itself mounts into every container.
var runtimeMounts = []string{"/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/run/.containerenv", "/dev", "/proc", "/sys"}

// underMount: p is a mount point, lies under one, or is a directory on the
// way to one (the engine creates mount points in the container's layer).
func underMount(p string, mounts []string) bool {
	for _, m := range append(slices.Clone(mounts), runtimeMounts...) {
		if p == m || strings.HasPrefix(p, m+"/") || strings.HasPrefix(m, p+"/") {
			return true
		}
	}
	return false
}

// schedule is a periodic task's state in Redis (internal/queue/periodic).
type schedule struct {
	created, next, lastDue int64
	interval               time.Duration
	lastID                 string
}

func schedules(ctx context.Context, t *testing.T, rdb *redis.Client) map[string]schedule {
	t.Helper()
	keys, err := rdb.Keys(ctx, periodic.StateKeyPrefix+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]schedule{}
	for _, k := range keys {
		h, err := rdb.HGetAll(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		num := func(f string) int64 { n, _ := strconv.ParseInt(h[f], 10, 64); return n }
		out[strings.TrimPrefix(k, periodic.StateKeyPrefix)] = schedule{created: num("created_ms"), next: num("next_ms"),
			lastDue: num("last_due_ms"), interval: time.Duration(num("interval_ms")) * time.Millisecond, lastID: h["last_task_id"]}
	}
	return out
}

// enqueuedByWorkers sums stargazer_scheduler_fires_total{outcome="enqueued"}
// of task over the worker replicas' /metrics, read on the project's network.
func (s *stack) enqueuedByWorkers(ctx context.Context, t *testing.T, task string) float64 {
	t.Helper()
	metricsPort := 0
	for _, sc := range promConfig(t).ScrapeConfigs {
		for _, d := range sc.DNSSDConfigs {
			if slices.Contains(d.Names, "worker") {
				metricsPort = d.Port
			}
		}
	}
	if metricsPort == 0 {
		t.Fatal("prometheus.yml does not scrape the worker service")
	}
	sum := 0.0
	for _, w := range s.byService(ctx, t, "worker") {
		if w.State != "running" {
			continue
		}
		body := httpGet(ctx, t, fmt.Sprintf("http://%s/metrics", net.JoinHostPort(w.IP, strconv.Itoa(metricsPort))))
		for line := range strings.Lines(body) {
			if strings.HasPrefix(line, "stargazer_scheduler_fires_total{") && strings.Contains(line, `outcome="enqueued"`) &&
				strings.Contains(line, `task="`+task+`"`) {
				f := strings.Fields(line)
				v, _ := strconv.ParseFloat(f[len(f)-1], 64)
				sum += v
			}
		}
	}
	return sum
}

func httpGet(ctx context.Context, t *testing.T, url string) string {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v", url, resp.Status, err)
	}
	return string(body)
}

// checkPeriodic watches scheduled_prompt_tick for n occurrences: each is one
// interval after the last, and the replicas' counters of enqueues grow by
// exactly one per occurrence, so no replica enqueued one a second time.
// Every other periodic task is still waiting out its initial delay.
func (s *stack) checkPeriodic(ctx context.Context, t *testing.T, n int) {
	rdb := s.redis(ctx, t)
	task := jobs.ScheduledPromptTick
	waitFor(t, 90*time.Second, task+"'s first occurrence", func() (bool, string) {
		st := schedules(ctx, t, rdb)[task]
		return st.lastID != "", fmt.Sprintf("state %+v", st)
	})
	// A stable reading: the counters between two equal states.
	stable := func() (schedule, float64) {
		for range 10 {
			before := schedules(ctx, t, rdb)[task]
			sum := s.enqueuedByWorkers(ctx, t, task)
			if after := schedules(ctx, t, rdb)[task]; after == before {
				return before, sum
			}
		}
		t.Fatalf("%s's schedule changed during each of 10 readings of the workers' metrics", task)
		return schedule{}, 0
	}
	first, base := stable()
	if first.interval != tickEvery {
		t.Fatalf("%s interval %v, want the override's %v", task, first.interval, tickEvery)
	}
	dues := []int64{first.lastDue}
	deadline := time.Now().Add(time.Duration(n+3) * tickEvery)
	for len(dues) < n+1 && time.Now().Before(deadline) {
		time.Sleep(250 * time.Millisecond)
		if st := schedules(ctx, t, rdb)[task]; st.lastDue != dues[len(dues)-1] {
			dues = append(dues, st.lastDue)
		}
	}
	last, sum := stable()
	if last.lastDue != dues[len(dues)-1] {
		dues = append(dues, last.lastDue)
	}
	if len(dues) < n+1 {
		t.Fatalf("%d occurrences of %s in %v, want %d", len(dues)-1, task, time.Duration(n+3)*tickEvery, n)
	}
	for i := 1; i < len(dues); i++ {
		if gap := time.Duration(dues[i]-dues[i-1]) * time.Millisecond; gap != tickEvery {
			t.Errorf("occurrences %d and %d of %s are %v apart, want %v", i-1, i, task, gap, tickEvery)
		}
	}
	if got, want := sum-base, float64(len(dues)-1); got != want {
		t.Errorf("the 3 replicas enqueued %s %v times for %v occurrences", task, got, want)
	}
	t.Logf("%s: %d occurrences %v apart, each enqueued once across the replicas", task, len(dues)-1, tickEvery)

	// The rest wait out their initial delay, counted from the schedule's
	// creation, and have not run early.
	for name, st := range schedules(ctx, t, rdb) {
		spec, ok := jobs.Lookup(name)
		if !ok || name == task {
			continue
		}
		if st.lastDue != 0 && st.lastDue < st.created+spec.InitialDelay.Milliseconds() {
			t.Errorf("%s ran at %d, before its initial delay (%v after %d)", name, st.lastDue, spec.InitialDelay, st.created)
		}
		if st.lastDue == 0 && st.next != st.created+spec.InitialDelay.Milliseconds() {
			t.Errorf("%s's first run is at %d, want created %d + initial delay %v", name, st.next, st.created, spec.InitialDelay)
		}
	}
}

type promYAML struct {
	ScrapeConfigs []struct {
		JobName      string `yaml:"job_name"`
		DNSSDConfigs []struct {
			Names []string `yaml:"names"`
			Port  int      `yaml:"port"`
		} `yaml:"dns_sd_configs"`
		StaticConfigs []struct {
			Targets []string `yaml:"targets"`
		} `yaml:"static_configs"`
	} `yaml:"scrape_configs"`
}

func promConfig(t *testing.T) promYAML {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "prometheus", "prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg promYAML
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func alertRuleCount(t *testing.T) int {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "prometheus", "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Rules []map[string]any `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, g := range f.Groups {
		n += len(g.Rules)
	}
	return n
}

type promTarget struct {
	Labels     map[string]string `json:"labels"`
	ScrapePool string            `json:"scrapePool"`
	Health     string            `json:"health"`
	LastError  string            `json:"lastError"`
}

// checkPrometheus: Prometheus in the stack scrapes every target of
// prometheus.yml (each worker replica by DNS, the node agent and the
// monitor) with all up, and has loaded every rule of alerts.yml.
func (s *stack) checkPrometheus(ctx context.Context, t *testing.T) {
	addr := s.c.port(ctx, "prometheus", s.promPort)
	cfg := promConfig(t)
	workers := s.byService(ctx, t, "worker")
	want := map[string][]string{} // job -> instances
	for _, sc := range cfg.ScrapeConfigs {
		for _, d := range sc.DNSSDConfigs {
			for _, name := range d.Names {
				for _, c := range s.byService(ctx, t, name) {
					want[sc.JobName] = append(want[sc.JobName], net.JoinHostPort(c.IP, strconv.Itoa(d.Port)))
				}
			}
		}
		for _, st := range sc.StaticConfigs {
			want[sc.JobName] = append(want[sc.JobName], st.Targets...)
		}
	}
	if len(want) == 0 || len(workers) != 3 {
		t.Fatalf("targets %v from prometheus.yml, %d workers", want, len(workers))
	}
	waitFor(t, 90*time.Second, "every target up in Prometheus", func() (bool, string) {
		var resp struct {
			Data struct {
				ActiveTargets []promTarget `json:"activeTargets"`
			} `json:"data"`
		}
		if err := json.Unmarshal([]byte(httpGet(ctx, t, "http://"+addr+"/api/v1/targets")), &resp); err != nil {
			t.Fatal(err)
		}
		up := map[string]map[string]bool{}
		var notUp []string
		for _, tg := range resp.Data.ActiveTargets {
			job, inst := tg.Labels["job"], tg.Labels["instance"]
			if up[job] == nil {
				up[job] = map[string]bool{}
			}
			up[job][inst] = tg.Health == "up"
			if tg.Health != "up" {
				notUp = append(notUp, fmt.Sprintf("%s %s: %s %s", job, inst, tg.Health, tg.LastError))
			}
		}
		for job, insts := range want {
			for _, inst := range insts {
				if !up[job][inst] {
					return false, fmt.Sprintf("%s %s not up (not up: %v)", job, inst, notUp)
				}
			}
			if len(up[job]) != len(insts) {
				return false, fmt.Sprintf("job %s has targets %v, want %v", job, up[job], insts)
			}
		}
		return true, ""
	})

	var rules struct {
		Data struct {
			Groups []struct {
				Rules []struct {
					Name   string `json:"name"`
					Health string `json:"health"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(httpGet(ctx, t, "http://"+addr+"/api/v1/rules")), &rules); err != nil {
		t.Fatal(err)
	}
	loaded := 0
	for _, g := range rules.Data.Groups {
		loaded += len(g.Rules)
	}
	if want := alertRuleCount(t); loaded != want {
		t.Errorf("Prometheus loaded %d rules, alerts.yml has %d", loaded, want)
	}
	s.logFirstScrapes(ctx, t, addr)
}

// logFirstScrapes reports each job's first scrapes: on earlier runs the
// monitor's first scrape timed out after a cold start.
func (s *stack) logFirstScrapes(ctx context.Context, t *testing.T, addr string) {
	q := url.Values{"query": {`{__name__=~"up|scrape_duration_seconds"}[10m]`}}
	var resp struct {
		Data struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
				Values [][2]any          `json:"values"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(httpGet(ctx, t, "http://"+addr+"/api/v1/query?"+q.Encode())), &resp); err != nil {
		t.Fatal(err)
	}
	for _, r := range resp.Data.Result {
		var vals []string
		for _, v := range r.Values[:min(4, len(r.Values))] {
			vals = append(vals, fmt.Sprint(v[1]))
		}
		line := fmt.Sprintf("%s %s: first %s samples %v", r.Metric["job"], r.Metric["instance"], r.Metric["__name__"], vals)
		t.Log(line)
	}
}

// checkKill SIGKILLs the worker running a task in the middle of a (slow)
// LLM call, as the OOM killer would, and waits for another replica to run
// the task to completion.
func (s *stack) checkKill(ctx context.Context, t *testing.T) {
	addr := s.c.port(ctx, "monitor", s.monitorPort)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/api/v1/tasks",
		strings.NewReader(`{"task": "`+jobs.ChannelSummarization+`"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+monitorToken)
	resp, err := (&http.Client{Timeout: 15 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var task struct{ ID, Queue string }
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || json.Unmarshal(body, &task) != nil {
		t.Fatalf("POST /api/v1/tasks: %s %s", resp.Status, body)
	}

	rdb := s.redis(ctx, t)
	insp := asynq.NewInspectorFromRedisClient(rdb)
	var host string
	waitFor(t, 60*time.Second, "a worker to start "+task.ID, func() (bool, string) {
		servers, err := insp.Servers()
		if err != nil {
			return false, err.Error()
		}
		for _, srv := range servers {
			for _, w := range srv.ActiveWorkers {
				if w.TaskID == task.ID {
					host = srv.Host
					return true, ""
				}
			}
		}
		return false, "not active yet"
	})
	time.Sleep(chatDelay / 3) // well inside its first LLM call
	var victim container
	for _, w := range s.byService(ctx, t, "worker") {
		if w.Hostname == host {
			victim = w
		}
	}
	if victim.ID == "" {
		t.Fatalf("no worker container has host name %q", host)
	}
	// podman logs runs on over a restart: lines past these are the
	// restarted process's.
	linesAtKill := len(s.e.logs(ctx, victim.ID))
	if err := syscall.Kill(victim.Pid, syscall.SIGKILL); err != nil {
		t.Fatalf("SIGKILL %s (pid %d): %v", victim.Name, victim.Pid, err)
	}
	killed := time.Now()
	t.Logf("SIGKILLed %s (pid %d) while it ran %s", victim.Name, victim.Pid, task.ID)

	waitFor(t, 3*time.Minute, task.ID+" completed by another worker", func() (bool, string) {
		info, err := insp.GetTaskInfo(task.Queue, task.ID)
		if err != nil {
			return false, err.Error()
		}
		return info.State == asynq.TaskStateCompleted, info.State.String()
	})
	t.Logf("%s completed %v after the kill", task.ID, time.Since(killed).Round(time.Second))
	finishedOn := ""
	for _, w := range s.byService(ctx, t, "worker") {
		for i, line := range s.e.logs(ctx, w.ID) {
			if strings.Contains(line, `"task finished"`) && strings.Contains(line, task.ID) && strings.Contains(line, `"status":"ok"`) {
				switch {
				case w.ID != victim.ID:
					finishedOn = w.Name
				case i >= linesAtKill:
					finishedOn = w.Name + " (the restarted process)"
				default:
					t.Errorf("%s finished on %s before it was killed", task.ID, w.Name)
				}
			}
		}
	}
	if finishedOn == "" {
		t.Errorf("no worker logged %s finished ok", task.ID)
	}
	t.Logf("%s finished on %s", task.ID, finishedOn)
	// The restart policy brings the killed replica back.
	waitFor(t, 2*time.Minute, victim.Name+" restarted and healthy", func() (bool, string) {
		for _, w := range s.byService(ctx, t, "worker") {
			if w.ID == victim.ID {
				return w.State == "running" && w.Health == "healthy" && w.Restart > victim.Restart,
					fmt.Sprintf("%s, health %s, restarts %d", w.State, w.Health, w.Restart)
			}
		}
		return false, "gone"
	})
}

// checkDownUp takes the stack down and up again with its volumes kept:
// schedules keep their times (no task waits out its initial delay again,
// none runs an occurrence twice), and the graph keeps its data.
func (s *stack) checkDownUp(ctx context.Context, t *testing.T) {
	rdb := s.redis(ctx, t)
	falkor := redis.NewClient(&redis.Options{Addr: s.c.port(ctx, "falkordb", s.falkorPort)})
	marker := s.c.project
	if err := falkor.Do(ctx, "GRAPH.QUERY", "stack_test", fmt.Sprintf("CREATE (:Marker {run: '%s'})", marker)).Err(); err != nil {
		t.Fatalf("writing to FalkorDB: %v", err)
	}
	falkor.Close()
	before := schedules(ctx, t, rdb)
	rdb.Close()

	step := time.Now()
	s.c.must(ctx, "down")
	down := time.Now()
	t.Logf("compose down in %v", down.Sub(step).Round(time.Second))
	vols := s.e.must(ctx, "volume", "ls", "-q", "--filter", "label=com.docker.compose.project="+s.c.project)
	if len(strings.Fields(vols)) == 0 {
		t.Fatal("compose down removed the volumes")
	}
	step = time.Now()
	s.up(ctx)
	t.Logf("compose up again (healthy) in %v", time.Since(step).Round(time.Second))

	rdb = s.redis(ctx, t)
	after := schedules(ctx, t, rdb)
	for name, b := range before {
		a, ok := after[name]
		switch {
		case !ok:
			t.Errorf("%s: schedule gone after down and up", name)
		case a.created != b.created:
			t.Errorf("%s: schedule created again (%d, was %d): its initial delay would run again", name, a.created, b.created)
		case b.next > time.Now().UnixMilli() && a.next != b.next:
			t.Errorf("%s: next run moved from %d to %d", name, b.next, a.next)
		}
	}
	// The tick's occurrences go on from where they were, each once.
	s.checkPeriodic(ctx, t, 3)
	if after := schedules(ctx, t, rdb)[jobs.ScheduledPromptTick]; after.lastDue <= before[jobs.ScheduledPromptTick].lastDue {
		t.Errorf("%s went back in time: last due %d, was %d", jobs.ScheduledPromptTick, after.lastDue, before[jobs.ScheduledPromptTick].lastDue)
	}

	falkor = redis.NewClient(&redis.Options{Addr: s.c.port(ctx, "falkordb", s.falkorPort)})
	defer falkor.Close()
	res, err := falkor.Do(ctx, "GRAPH.QUERY", "stack_test", "MATCH (m:Marker) RETURN m.run").Result()
	if err != nil {
		t.Fatalf("reading FalkorDB after down and up: %v", err)
	}
	if !strings.Contains(fmt.Sprint(res), marker) {
		t.Errorf("FalkorDB lost its graph over down and up (falkordb-data volume): %v", res)
	}
	_ = down
}
