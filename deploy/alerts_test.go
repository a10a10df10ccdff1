package deploy_test

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/stargazer/stargazer-jobs/internal/testkit/poll"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/syncbuf"
)

var update = flag.Bool("update", false, "rewrite generated files (the PrometheusRule) from their sources")

var (
	alertsFile         = filepath.Join(repoRoot, "deploy", "prometheus", "alerts.yml")
	prometheusRuleFile = filepath.Join(repoRoot, "deploy", "kubernetes", "components", "monitoring", "prometheusrule.yaml")
	dashboardFile      = filepath.Join(repoRoot, "deploy", "grafana", "stargazer.json")
)

// loadRules loads alerts.yml with Prometheus's own rule loader, which
// rejects unknown fields and parses every expression and template.
func loadRules(t *testing.T) *rulefmt.RuleGroups {
	t.Helper()
	groups, errs := rulefmt.ParseFile(alertsFile, false, model.UTF8Validation, parser.NewParser(parser.Options{}), slog.New(slog.DiscardHandler))
	for _, err := range errs {
		t.Error(err)
	}
	if len(errs) > 0 {
		t.FailNow()
	}
	return groups
}

// Every situation of the issue has its alert.
var wantAlerts = []string{
	"StargazerTaskFailingRepeatedly", "StargazerTaskArchived", "StargazerPeriodicTaskNotRun",
	"StargazerSchedulerMissedOccurrences", "StargazerSchedulerOverlap", "StargazerQueueLatencyHigh",
	"StargazerSingletonHeldPastTimeout", "StargazerLeaseRecoveries", "StargazerLLMRateLimited",
	"StargazerRedisUnreachable", "StargazerNoWorkerAlive", "StargazerLegacySchedulerStillRuns",
	"StargazerLLMBudgetExhaustingEarly", "StargazerLLMTaskDeferred",
}

func TestAlertRulesLoadWithPrometheusRuleParser(t *testing.T) {
	groups := loadRules(t)
	var names []string
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				t.Errorf("group %s: a recording rule (%s); this file holds alerts only", g.Name, r.Record)
				continue
			}
			names = append(names, r.Alert)
			if _, err := parser.NewParser(parser.Options{}).ParseExpr(r.Expr); err != nil {
				t.Errorf("%s: %v", r.Alert, err)
			}
			if s := r.Labels["severity"]; s != "warning" && s != "critical" {
				t.Errorf("%s: severity %q, want warning or critical", r.Alert, s)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("%s: needs a summary and a description", r.Alert)
			}
		}
	}
	for _, want := range wantAlerts {
		if !slices.Contains(names, want) {
			t.Errorf("no alert %s (have %v)", want, names)
		}
	}
	if n := len(names); n != len(slices.Compact(slices.Sorted(slices.Values(names)))) {
		t.Errorf("alert names are not unique: %v", names)
	}
}

// dashboardQueries returns every panel query of the Grafana dashboard, with
// Grafana's interval macros replaced by a duration so PromQL can parse them.
func dashboardQueries(t *testing.T) map[string]string {
	t.Helper()
	d := loadDashboard(t)
	out := map[string]string{}
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			q := strings.NewReplacer("$__rate_interval", "1m", "$__interval", "1m", "$__range", "1h").Replace(tg.Expr)
			out[fmt.Sprintf("panel %q query %s", p.Title, tg.RefID)] = q
		}
	}
	return out
}

// TestRulesAndDashboardNameOnlyMetricsAWorkerExports scrapes a real worker
// that ran tasks (ok, failing, a singleton, an LLM call) and checks every
// metric named by an alert expression or a dashboard query against it.
func TestRulesAndDashboardNameOnlyMetricsAWorkerExports(t *testing.T) {
	queries := dashboardQueries(t)
	for _, g := range loadRules(t).Groups {
		for _, r := range g.Rules {
			queries["alert "+r.Alert] = r.Expr
		}
	}
	w := startLiveWorker(t)
	w.exercise(t)
	exported := w.metricNames(t)
	for where, q := range queries {
		names, err := metricsOf(t, q)
		if err != nil {
			t.Errorf("%s: %v", where, err)
			continue
		}
		for _, n := range names {
			if !exported[n] && !prometheusMade[n] {
				t.Errorf("%s names %s, which the worker does not export", where, n)
			}
		}
	}
}

// prometheusRule is the subset of the Prometheus Operator's PrometheusRule
// (monitoring.coreos.com/v1) that this repository uses, decoded strictly.
type prometheusRule struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string            `json:"name"`
		Namespace string            `json:"namespace,omitempty"`
		Labels    map[string]string `json:"labels,omitempty"`
	} `json:"metadata"`
	Spec struct {
		Groups []ruleGroup `json:"groups"`
	} `json:"spec"`
}

type ruleGroup struct {
	Name  string `json:"name"`
	Rules []rule `json:"rules"`
}

type rule struct {
	Alert       string            `json:"alert"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// rulesFromAlerts is what the PrometheusRule must hold: alerts.yml's groups.
func rulesFromAlerts(t *testing.T) []ruleGroup {
	t.Helper()
	var out []ruleGroup
	for _, g := range loadRules(t).Groups {
		rg := ruleGroup{Name: g.Name}
		for _, r := range g.Rules {
			var f string
			if r.For != 0 {
				f = r.For.String()
			}
			rg.Rules = append(rg.Rules, rule{Alert: r.Alert, Expr: r.Expr, For: f, Labels: r.Labels, Annotations: r.Annotations})
		}
		out = append(out, rg)
	}
	return out
}

func TestPrometheusRuleMatchesAlerts(t *testing.T) {
	want := rulesFromAlerts(t)
	if *update {
		var pr prometheusRule
		pr.APIVersion, pr.Kind, pr.Metadata.Name = "monitoring.coreos.com/v1", "PrometheusRule", "stargazer-jobs"
		pr.Spec.Groups = want
		b, err := sigsyaml.Marshal(pr)
		if err != nil {
			t.Fatal(err)
		}
		header := "# GENERATED from deploy/prometheus/alerts.yml by\n# `go test ./deploy -run TestPrometheusRuleMatchesAlerts -update`. Do not edit.\n"
		if err := os.WriteFile(prometheusRuleFile, append([]byte(header), b...), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(prometheusRuleFile)
	if err != nil {
		t.Fatal(err)
	}
	var got prometheusRule
	if err := sigsyaml.UnmarshalStrict(data, &got); err != nil {
		t.Fatalf("%s: %v", prometheusRuleFile, err)
	}
	gb, _ := json.Marshal(got.Spec.Groups)
	wb, _ := json.Marshal(want)
	if string(gb) != string(wb) {
		t.Errorf("%s differs from alerts.yml; regenerate it:\n  go test ./deploy -run TestPrometheusRuleMatchesAlerts -update", prometheusRuleFile)
	}
}

// promAlert is one alert of Prometheus's /api/v1/alerts.
type promAlert struct {
	Labels   map[string]string `json:"labels"`
	State    string            `json:"state"`
	ActiveAt time.Time         `json:"activeAt"`
}

func firingAlerts(t *testing.T, promAddr string) []promAlert {
	t.Helper()
	resp, err := http.Get("http://" + promAddr + "/api/v1/alerts")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
		Data   struct {
			Alerts []promAlert `json:"alerts"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || body.Status != "success" {
		return nil
	}
	var out []promAlert
	for _, a := range body.Data.Alerts {
		if a.State == "firing" {
			out = append(out, a)
		}
	}
	return out
}

func isFiring(t *testing.T, promAddr, alert, task string) bool {
	t.Helper()
	return slices.ContainsFunc(firingAlerts(t, promAddr), func(a promAlert) bool {
		return a.Labels["alertname"] == alert && (task == "" || a.Labels["task"] == task)
	})
}

// waitFiring polls Prometheus until alert fires for task, for up to limit,
// and returns when it was first seen firing.
func waitFiring(t *testing.T, promAddr, alert, task string, limit time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if isFiring(t, promAddr, alert, task) {
			return time.Now()
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s{task=%q} did not fire within %v; firing: %+v", alert, task, limit, firingAlerts(t, promAddr))
	return time.Time{}
}

// startPrometheus runs the distribution's prometheus scraping the worker at
// workerAddr (its PROBE_ADDR, as in the deployments) every second and
// evaluating alerts.yml every second.
func startPrometheus(t *testing.T, workerAddr string) string {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatal("prometheus is not installed: run ./scripts/test.sh --install-only (Debian: apt-get install prometheus)")
	}
	rules, err := filepath.Abs(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: [%q]
scrape_configs:
  - job_name: stargazer-worker
    static_configs:
      - targets: [%q]
`, rules, workerAddr)
	cfgFile := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := redistest.FreeAddr(t)
	cmd := exec.Command(bin, "--config.file="+cfgFile, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	logs := &syncbuf.Buffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("prometheus output:\n%s", logs.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			t.Fatalf("prometheus exited:\n%s", logs.String())
		default:
		}
		if httpStatus(t, "http://"+addr+"/-/ready") == 200 {
			return addr
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("prometheus not ready:\n%s", logs.String())
	return ""
}

// firstFailure returns the time of the first failed run of task after
// since, from the worker's "task finished" log lines.
func firstFailure(t *testing.T, logs string, task string, since time.Time) time.Time {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(logs))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l struct {
			Time   time.Time `json:"time"`
			Msg    string    `json:"msg"`
			Task   string    `json:"task"`
			Status string    `json:"status"`
		}
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "task finished" && l.Task == task && l.Status == "error" && !l.Time.Before(since) {
			return l.Time
		}
	}
	t.Fatalf("no failed run of %s in the worker's logs", task)
	return time.Time{}
}

// TestRealPrometheusFiresAlerts runs the distribution's Prometheus against a
// real worker with alerts.yml loaded, scraping and evaluating every second:
// a task made to fail on every run fires StargazerTaskArchived and
// StargazerTaskFailingRepeatedly, and a periodic task stopped by pausing its queue
// fires StargazerPeriodicTaskNotRun. It logs the measured times to fire
// (docs/operations.md records them).
func TestRealPrometheusFiresAlerts(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a worker and a Prometheus server (about 20 s)")
	}
	addr := redistest.FreeAddr(t)
	prom := startPrometheus(t, addr)
	w := startLiveWorkerAt(t, addr, false)
	// Prometheus hands its first targets to the scrapers a few seconds
	// after it starts; the clock starts once it has scraped the worker, as
	// for a Prometheus that was already running.
	poll.Until(t, "Prometheus scraping the worker", func() bool {
		return queryScalar(t, prom, fmt.Sprintf(`max(stargazer_task_last_success_timestamp_seconds{task=%q})`, flakyTask)) > 0
	})
	if isFiring(t, prom, "StargazerTaskFailingRepeatedly", flakyTask) || isFiring(t, prom, "StargazerTaskArchived", flakyTask) {
		t.Fatal("failure alerts fire before the task fails")
	}

	// The task now fails on every run (every second, no retry).
	w.failing.Store(true)
	failingSince := time.Now()
	archived := waitFiring(t, prom, "StargazerTaskArchived", flakyTask, 60*time.Second)
	fired := waitFiring(t, prom, "StargazerTaskFailingRepeatedly", flakyTask, 60*time.Second)
	first := firstFailure(t, w.logs.String(), flakyTask, failingSince)
	t.Logf("FIGURE failing task (one run a second, scrape and evaluation every 1 s): StargazerTaskArchived fired %.1f s and StargazerTaskFailingRepeatedly %.1f s after its first failure",
		archived.Sub(first).Seconds(), fired.Sub(first).Seconds())

	// A periodic task running every 2 s, then stopped: its queue is paused.
	poll.Until(t, tickTask+" succeeding and Prometheus seeing it", func() bool {
		v := queryScalar(t, prom, fmt.Sprintf(`max(stargazer_task_last_success_timestamp_seconds{task=%q})`, tickTask))
		return v > float64(w.started.Unix())
	})
	if isFiring(t, prom, "StargazerPeriodicTaskNotRun", tickTask) {
		t.Fatalf("StargazerPeriodicTaskNotRun fires for %s while it runs every %v", tickTask, tickInterval)
	}
	if err := w.insp.PauseQueue(specOf(t, tickTask).Queue); err != nil {
		t.Fatal(err)
	}
	paused := time.Now()
	notRun := waitFiring(t, prom, "StargazerPeriodicTaskNotRun", tickTask, 60*time.Second)
	lastOK := queryScalar(t, prom, fmt.Sprintf(`max(stargazer_task_last_success_timestamp_seconds{task=%q})`, tickTask))
	sinceLast := notRun.Sub(time.UnixMilli(int64(lastOK * 1000)))
	t.Logf("FIGURE stopped task (interval %v): StargazerPeriodicTaskNotRun fired %.1f s after its queue was paused, %.1f s after its last success (threshold: 2 intervals = %v)",
		tickInterval, notRun.Sub(paused).Seconds(), sinceLast.Seconds(), 2*tickInterval)
	if sinceLast < 2*tickInterval {
		t.Errorf("fired %v after the last success, before two intervals (%v)", sinceLast, 2*tickInterval)
	}

	// What must not fire against a healthy worker.
	for _, a := range []string{"StargazerNoWorkerAlive", "StargazerRedisUnreachable", "StargazerQueueMetricsAbsent"} {
		if isFiring(t, prom, a, "") {
			t.Errorf("%s fires against a healthy worker", a)
		}
	}
}

// queryScalar evaluates a PromQL expression of one series and returns its
// value (0 when there is none).
func queryScalar(t *testing.T, promAddr, q string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + promAddr + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	var body struct {
		Data struct {
			Result []struct {
				Value [2]any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if json.NewDecoder(resp.Body).Decode(&body) != nil || len(body.Data.Result) == 0 {
		return 0
	}
	s, _ := body.Data.Result[0].Value[1].(string)
	var v float64
	fmt.Sscan(s, &v)
	return v
}
