package deploy_test

import (
	"context"
	"encoding/json"
	"go/parser"
	"go/token"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	yaml "go.yaml.in/yaml/v4"
)

const (
	repoRoot = ".."

	testMonitorToken    = "test-monitor-token"
	testMonitorPassword = "test-monitor-password"
)

// loadCompose loads ../docker-compose.yml the way `docker compose` does, with
// env as the only environment for interpolation.
func loadCompose(t *testing.T, env map[string]string) (*types.Project, error) {
	t.Helper()
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(root, "docker-compose.yml")
	content, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	details := types.ConfigDetails{
		WorkingDir:  root,
		ConfigFiles: []types.ConfigFile{{Filename: file, Content: content}},
		Environment: types.Mapping(env),
	}
	return loader.LoadWithContext(context.Background(), details, func(o *loader.Options) {
		o.SetProjectName("stargazer", true)
	})
}

func testEnv() map[string]string {
	return map[string]string{
		"MONITOR_TOKEN":    testMonitorToken,
		"MONITOR_PASSWORD": testMonitorPassword,
	}
}

func mustLoadCompose(t *testing.T) *types.Project {
	t.Helper()
	p, err := loadCompose(t, testEnv())
	if err != nil {
		t.Fatalf("load docker-compose.yml: %v", err)
	}
	return p
}

func service(t *testing.T, p *types.Project, name string) types.ServiceConfig {
	t.Helper()
	s, err := p.GetService(name)
	if err != nil {
		t.Fatalf("service %q: %v", name, err)
	}
	return s
}

// envValue returns the value of key in the service's environment, failing
// the test when it is missing.
func envValue(t *testing.T, s types.ServiceConfig, key string) string {
	t.Helper()
	v, ok := s.Environment[key]
	if !ok || v == nil {
		t.Fatalf("service %s: environment has no %s", s.Name, key)
	}
	return *v
}

func TestComposeDefinesEveryService(t *testing.T) {
	p := mustLoadCompose(t)
	for _, name := range []string{"redis", "falkordb", "worker", "node", "monitor", "prometheus", "grafana"} {
		if _, err := p.GetService(name); err != nil {
			t.Errorf("service %q missing: %v", name, err)
		}
	}
}

func TestComposeRunsThreeWorkerReplicas(t *testing.T) {
	w := service(t, mustLoadCompose(t), "worker")
	if w.Deploy == nil || w.Deploy.Replicas == nil {
		t.Fatal("worker: no deploy.replicas")
	}
	if got := *w.Deploy.Replicas; got != 3 {
		t.Errorf("worker replicas = %d, want 3", got)
	}
	if len(w.Ports) != 0 {
		t.Errorf("worker publishes ports %v: the replicas would clash", w.Ports)
	}
}

func TestComposeRedisPersistsToNamedVolume(t *testing.T) {
	p := mustLoadCompose(t)
	r := service(t, p, "redis")
	cmd := strings.Join(r.Command, " ")
	if !strings.Contains(cmd, "--appendonly yes") {
		t.Errorf("redis command %q lacks --appendonly yes", cmd)
	}
	i := slices.IndexFunc(r.Volumes, func(v types.ServiceVolumeConfig) bool { return v.Target == "/data" })
	if i < 0 {
		t.Fatalf("redis mounts nothing at /data: %+v", r.Volumes)
	}
	v := r.Volumes[i]
	if v.Type != types.VolumeTypeVolume {
		t.Errorf("redis /data is a %s mount, want a named volume", v.Type)
	}
	if _, ok := p.Volumes[v.Source]; !ok {
		t.Errorf("redis /data volume %q is not declared in top-level volumes", v.Source)
	}
}

func TestComposeFalkorDBBoundsWrites(t *testing.T) {
	args := strings.Fields(envValue(t, service(t, mustLoadCompose(t), "falkordb"), "FALKORDB_ARGS"))
	i := slices.Index(args, "TIMEOUT_MAX")
	if i < 0 || i+1 >= len(args) {
		t.Fatalf("FALKORDB_ARGS %v does not set TIMEOUT_MAX: graph writes would never time out", args)
	}
	// internal/app bounds every graph query to 60 s; FalkorDB refuses a
	// query TIMEOUT above TIMEOUT_MAX.
	if ms, err := strconv.Atoi(args[i+1]); err != nil || ms < 60000 {
		t.Errorf("TIMEOUT_MAX %s ms, want at least 60000 (the workers' per-query timeout)", args[i+1])
	}
}

func TestComposeEveryServiceButPrometheusHasAHealthcheck(t *testing.T) {
	p := mustLoadCompose(t)
	for name, s := range p.Services {
		if name == "prometheus" {
			continue
		}
		if hc := s.HealthCheck; hc == nil || hc.Disable || len(hc.Test) == 0 {
			t.Errorf("service %s has no healthcheck", name)
		}
	}
}

func TestComposeWorkerAndMonitorUseTheRedisService(t *testing.T) {
	p := mustLoadCompose(t)
	for _, name := range []string{"worker", "node", "monitor"} {
		t.Run(name, func(t *testing.T) {
			raw := envValue(t, service(t, p, name), "REDIS_URL")
			u, err := url.Parse(raw)
			if err != nil {
				t.Fatalf("REDIS_URL %q: %v", raw, err)
			}
			if u.Scheme != "redis" || u.Hostname() != "redis" {
				t.Errorf("REDIS_URL = %q, want redis://redis:...", raw)
			}
		})
	}
}

func TestComposeEnvironment(t *testing.T) {
	p := mustLoadCompose(t)
	tests := []struct {
		service, key, want string
	}{
		{"worker", "MONITOR_TOKEN", testMonitorToken},
		{"worker", "ROLE", "worker"},
		{"worker", "HTTP_ADDR", "0.0.0.0:8080"},
		{"worker", "PROBE_ADDR", "0.0.0.0:8081"},
		{"node", "PROBE_ADDR", "0.0.0.0:8081"},
		{"monitor", "PROBE_ADDR", "0.0.0.0:8081"},
		{"worker", "QUEUE_METRICS", "false"},
		{"node", "ROLE", "node"},
		{"node", "HTTP_ADDR", "0.0.0.0:8080"},
		{"node", "QUEUE_METRICS", "false"},
		{"node", "MONITOR_TOKEN", testMonitorToken},
		{"monitor", "ROLE", "monitor"},
		{"monitor", "MONITOR_TOKEN", testMonitorToken},
		{"monitor", "MONITOR_PASSWORD", testMonitorPassword},
		{"monitor", "MONITOR_USER", "admin"},
		{"monitor", "HTTP_ADDR", "0.0.0.0:8080"},
	}
	for _, tt := range tests {
		t.Run(tt.service+"/"+tt.key, func(t *testing.T) {
			if got := envValue(t, service(t, p, tt.service), tt.key); got != tt.want {
				t.Errorf("%s=%q, want %q", tt.key, got, tt.want)
			}
		})
	}
}

func TestComposeMonitorPublishes8080(t *testing.T) {
	m := service(t, mustLoadCompose(t), "monitor")
	ok := slices.ContainsFunc(m.Ports, func(p types.ServicePortConfig) bool {
		return p.Target == 8080 && p.Published == "8080"
	})
	if !ok {
		t.Errorf("monitor ports %+v do not publish 8080:8080", m.Ports)
	}
}

// TestComposePublishesNoProbePort: the probe listener (PROBE_ADDR, 8081)
// answers without credentials; only the compose network (Prometheus, the
// healthchecks inside each container) may reach it.
func TestComposePublishesNoProbePort(t *testing.T) {
	p := mustLoadCompose(t)
	for _, name := range []string{"worker", "node", "monitor"} {
		for _, port := range service(t, p, name).Ports {
			if port.Target == 8081 {
				t.Errorf("%s publishes the probe port: %+v", name, port)
			}
		}
	}
}

func TestComposeWorkerStopGraceOutlastsShutdownTimeout(t *testing.T) {
	for _, name := range []string{"worker", "node"} {
		t.Run(name, func(t *testing.T) {
			w := service(t, mustLoadCompose(t), name)
			if w.StopGracePeriod == nil {
				t.Fatalf("%s has no stop_grace_period (docker's default is 10s)", name)
			}
			raw := envValue(t, w, "SHUTDOWN_TIMEOUT")
			shutdown, err := time.ParseDuration(raw)
			if err != nil {
				t.Fatalf("SHUTDOWN_TIMEOUT %q: %v", raw, err)
			}
			if grace := time.Duration(*w.StopGracePeriod); grace <= shutdown {
				t.Errorf("stop_grace_period %v is not longer than SHUTDOWN_TIMEOUT %v: in-flight tasks would be SIGKILLed", grace, shutdown)
			}
		})
	}
}

// TestComposeEveryServiceNamesItsStopGracePeriod: podman's Docker API (4.3)
// gives a container created without one a stop timeout of 0 s, so `compose
// down` SIGKILLs it at once, where Docker waits 10 s: FalkorDB would lose
// every graph change since its last save (deploy/stack saw it).
func TestComposeEveryServiceNamesItsStopGracePeriod(t *testing.T) {
	for name, s := range mustLoadCompose(t).Services {
		if s.StopGracePeriod == nil || *s.StopGracePeriod <= 0 {
			t.Errorf("service %s has no stop_grace_period", name)
		}
	}
}

// TestComposeEnvironmentIsWorkerSettings: every variable given to a
// stargazer-jobs container is a setting the worker reads.
func TestComposeEnvironmentIsWorkerSettings(t *testing.T) {
	settings := settingsByEnv()
	for _, name := range []string{"worker", "node", "monitor"} {
		for key := range service(t, mustLoadCompose(t), name).Environment {
			if _, ok := settings[key]; !ok {
				t.Errorf("%s: %s is set but the worker reads no such setting", name, key)
			}
		}
	}
}

func TestComposeNodeAgentReadsTheHostJournalReadOnly(t *testing.T) {
	n := service(t, mustLoadCompose(t), "node")
	if n.Build == nil || n.Build.Target != "node" {
		t.Errorf("node builds %+v, want the Dockerfile's node target (it has journalctl)", n.Build)
	}
	mounts := map[string]types.ServiceVolumeConfig{}
	for _, v := range n.Volumes {
		mounts[v.Target] = v
	}
	for _, path := range []string{"/var/log/journal", "/run/log/journal", "/etc/machine-id"} {
		v, ok := mounts[path]
		if !ok || v.Type != types.VolumeTypeBind || v.Source != path || !v.ReadOnly {
			t.Errorf("%s: want the host's %s bind-mounted read-only at the same path, got %+v", path, path, v)
		}
	}
	if v := mounts["/var/log/journal"]; v.Bind == nil || v.Bind.CreateHostPath {
		t.Error("/var/log/journal would be created on a host without one (switching its journald to persistent storage)")
	}
	if !n.ReadOnly || !slices.Contains(n.CapDrop, "ALL") {
		t.Error("node: want a read-only root filesystem and every capability dropped")
	}
}

func TestComposePrometheusLoadsTheAlertRules(t *testing.T) {
	p := service(t, mustLoadCompose(t), "prometheus")
	var cfg struct {
		RuleFiles []string `yaml:"rule_files"`
	}
	data, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "prometheus", "prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	mounted := map[string]string{} // container path -> host path
	for _, v := range p.Volumes {
		mounted[v.Target] = v.Source
	}
	cfgDir := ""
	for target, source := range mounted {
		if strings.HasSuffix(source, filepath.Join("deploy", "prometheus", "prometheus.yml")) {
			cfgDir = filepath.Dir(target)
		}
	}
	want, _ := filepath.Abs(alertsFile)
	if len(cfg.RuleFiles) != 1 {
		t.Fatalf("rule_files = %v, want alerts.yml", cfg.RuleFiles)
	}
	path := cfg.RuleFiles[0]
	if !filepath.IsAbs(path) {
		path = filepath.Join(cfgDir, path) // relative to the configuration file
	}
	if mounted[path] != want {
		t.Errorf("prometheus loads %s, where the compose file mounts %q, not %s", path, mounted[path], want)
	}
}

func TestComposeRefusesToLoadWithoutRequiredSecrets(t *testing.T) {
	for _, missing := range []string{"MONITOR_TOKEN", "MONITOR_PASSWORD"} {
		t.Run(missing, func(t *testing.T) {
			env := testEnv()
			delete(env, missing)
			_, err := loadCompose(t, env)
			if err == nil {
				t.Fatalf("loaded without %s; want the :? guard to fail", missing)
			}
			if !strings.Contains(err.Error(), missing) {
				t.Errorf("error %q does not name %s", err, missing)
			}
		})
	}
}

type promConfig struct {
	ScrapeConfigs []struct {
		JobName      string `yaml:"job_name"`
		MetricsPath  string `yaml:"metrics_path"`
		DNSSDConfigs []struct {
			Names []string `yaml:"names"`
			Type  string   `yaml:"type"`
			Port  int      `yaml:"port"`
		} `yaml:"dns_sd_configs"`
		StaticConfigs []struct {
			Targets []string `yaml:"targets"`
		} `yaml:"static_configs"`
	} `yaml:"scrape_configs"`
}

// promTargets lists the host:port targets of prometheus.yml, each with the
// metrics path it is scraped on.
func promTargets(t *testing.T) map[string]string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "prometheus", "prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg promConfig
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		t.Fatalf("parse prometheus.yml: %v", err)
	}
	targets := map[string]string{}
	for _, sc := range cfg.ScrapeConfigs {
		path := sc.MetricsPath
		if path == "" {
			path = "/metrics"
		}
		for _, d := range sc.DNSSDConfigs {
			for _, n := range d.Names {
				targets[net.JoinHostPort(n, strconv.Itoa(d.Port))] = path
			}
		}
		for _, s := range sc.StaticConfigs {
			for _, target := range s.Targets {
				targets[target] = path
			}
		}
	}
	return targets
}

func TestPrometheusScrapesWorkersAndMonitor(t *testing.T) {
	targets := promTargets(t)
	// The probe listeners: clients of 8080 cannot starve them.
	for _, want := range []string{"worker:8081", "node:8081", "monitor:8081"} {
		path, ok := targets[want]
		if !ok {
			t.Errorf("prometheus.yml does not scrape %s (targets: %v)", want, targets)
			continue
		}
		if path != "/metrics" {
			t.Errorf("%s scraped on %s, want /metrics", want, path)
		}
	}
}

func TestPrometheusTargetsAreComposeServices(t *testing.T) {
	p := mustLoadCompose(t)
	for target := range promTargets(t) {
		host, _, err := net.SplitHostPort(target)
		if err != nil {
			t.Errorf("target %q: %v", target, err)
			continue
		}
		if _, err := p.GetService(host); err != nil {
			t.Errorf("prometheus target %s is not a compose service", target)
		}
	}
}

// stage is one FROM ... [AS name] section of the Dockerfile.
type stage struct {
	name   string
	instrs [][2]string // keyword (upper case), arguments
}

// parseDockerfile splits ../Dockerfile into stages, joining continuation
// lines and dropping comments.
func parseDockerfile(t *testing.T) []stage {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var stages []stage
	var cur strings.Builder
	flush := func() {
		line := strings.TrimSpace(cur.String())
		cur.Reset()
		if line == "" {
			return
		}
		kw, args, _ := strings.Cut(line, " ")
		kw, args = strings.ToUpper(kw), strings.TrimSpace(args)
		if kw == "FROM" {
			f := strings.Fields(args)
			s := stage{}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				s.name = f[2]
			}
			stages = append(stages, s)
		}
		if len(stages) == 0 {
			t.Fatalf("Dockerfile: %s before the first FROM", kw)
		}
		st := &stages[len(stages)-1]
		st.instrs = append(st.instrs, [2]string{kw, args})
	}
	for _, line := range strings.Split(string(data), "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") {
			continue
		}
		if strings.HasSuffix(trimmed, `\`) {
			cur.WriteString(strings.TrimSuffix(trimmed, `\`) + " ")
			continue
		}
		cur.WriteString(trimmed)
		flush()
	}
	flush()
	if len(stages) == 0 {
		t.Fatal("Dockerfile has no FROM")
	}
	return stages
}

func stageNamed(t *testing.T, stages []stage, name string) stage {
	t.Helper()
	i := slices.IndexFunc(stages, func(s stage) bool { return s.name == name })
	if i < 0 {
		t.Fatalf("Dockerfile has no stage %q", name)
	}
	return stages[i]
}

var goBuildRe = regexp.MustCompile(`go build\b.*?-o\s+(\S+)\s+(\./\S+)`)

// builtBinaries maps each output of `go build -o OUT ./PKG` in the build
// stage to its package path.
func builtBinaries(t *testing.T, stages []stage) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, in := range stageNamed(t, stages, "build").instrs {
		if in[0] != "RUN" {
			continue
		}
		for _, m := range goBuildRe.FindAllStringSubmatch(in[1], -1) {
			out[m[1]] = m[2]
		}
	}
	if len(out) == 0 {
		t.Fatal("build stage runs no `go build -o OUT ./PKG`")
	}
	return out
}

func TestDockerfileBuildsMainPackagesThatExist(t *testing.T) {
	for bin, pkg := range builtBinaries(t, parseDockerfile(t)) {
		t.Run(pkg, func(t *testing.T) {
			dir := filepath.Join(repoRoot, filepath.FromSlash(pkg))
			files, err := filepath.Glob(filepath.Join(dir, "*.go"))
			if err != nil || len(files) == 0 {
				t.Fatalf("%s (built to %s): no Go files in %s", pkg, bin, dir)
			}
			for _, f := range files {
				if strings.HasSuffix(f, "_test.go") {
					continue
				}
				af, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.PackageClauseOnly)
				if err != nil {
					t.Fatalf("%s: %v", f, err)
				}
				if af.Name.Name == "main" {
					return
				}
			}
			t.Errorf("%s (built to %s) is not a main package", pkg, bin)
		})
	}
}

func TestDockerfileDefaultTargetIsWorker(t *testing.T) {
	stages := parseDockerfile(t)
	if last := stages[len(stages)-1].name; last != "worker" {
		t.Errorf("last stage is %q, want worker (the default target)", last)
	}
	stageNamed(t, stages, "enqueuer")
}

// execForm returns the first word of a JSON exec-form instruction such as
// ENTRYPOINT ["/worker"] or HEALTHCHECK CMD ["/worker", "healthcheck"].
func execForm(t *testing.T, kw, args string) string {
	t.Helper()
	args = strings.TrimSpace(strings.TrimPrefix(args, "CMD"))
	var argv []string
	if err := json.Unmarshal([]byte(args), &argv); err != nil || len(argv) == 0 {
		t.Fatalf("%s %s: want the JSON exec form (distroless has no shell)", kw, args)
	}
	return argv[0]
}

func TestDockerfileEntrypointsRunBuiltBinaries(t *testing.T) {
	stages := parseDockerfile(t)
	built := builtBinaries(t, stages)
	copyRe := regexp.MustCompile(`^--from=build\s+(\S+)\s+(\S+)$`)
	for _, name := range []string{"worker", "node", "enqueuer"} {
		t.Run(name, func(t *testing.T) {
			copied := map[string]string{} // destination in the image -> built binary
			var entrypoints []string
			for _, in := range stageNamed(t, stages, name).instrs {
				switch in[0] {
				case "COPY":
					if m := copyRe.FindStringSubmatch(in[1]); m != nil {
						copied[m[2]] = m[1]
					}
				case "ENTRYPOINT", "HEALTHCHECK":
					entrypoints = append(entrypoints, execForm(t, in[0], in[1]))
				}
			}
			if len(entrypoints) == 0 {
				t.Fatal("no ENTRYPOINT")
			}
			for _, bin := range entrypoints {
				src, ok := copied[bin]
				if !ok {
					t.Errorf("%s is not copied from the build stage (copied: %v)", bin, copied)
					continue
				}
				if _, ok := built[src]; !ok {
					t.Errorf("%s is copied from %s, which the build stage does not produce (built: %v)", bin, src, built)
				}
			}
		})
	}
}

// TestDockerfileNodeImageHasJournalctlAndRunsAsNonRoot: the node agent's
// image installs Debian's systemd package (journalctl) and runs as a
// numeric non-root user (runAsNonRoot can verify only a numeric one).
func TestDockerfileNodeImageHasJournalctlAndRunsAsNonRoot(t *testing.T) {
	st := stageNamed(t, parseDockerfile(t), "node")
	var installs, user string
	for _, in := range st.instrs {
		switch in[0] {
		case "FROM":
			if !strings.HasPrefix(in[1], "debian:bookworm") {
				t.Errorf("node stage FROM %s, want debian:bookworm (the systemd package's journalctl)", in[1])
			}
		case "RUN":
			installs += in[1] + " "
		case "USER":
			user = in[1]
		}
	}
	if !regexp.MustCompile(`apt-get install\b[^&]*\bsystemd\b`).MatchString(installs) {
		t.Errorf("node stage does not install the systemd package: %s", installs)
	}
	uid, _, _ := strings.Cut(user, ":")
	if n, err := strconv.Atoi(uid); err != nil || n == 0 {
		t.Errorf("node stage USER %q, want a numeric non-root user", user)
	}
}
