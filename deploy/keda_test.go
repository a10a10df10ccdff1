package deploy_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/workerproc"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// The autoscaling of components/keda, evaluated on real parts: the
// ScaledObject's query runs on a real Prometheus scraping a real monitor
// process, and the answer goes through KEDA's Prometheus scaler and the
// HorizontalPodAutoscaler's replica formula, reproduced below from their
// sources. Only KEDA and the HPA controller themselves are not run: they
// need a cluster with a kubelet.

// kedaTrigger is what the test reads from the rendered ScaledObject.
type kedaTrigger struct {
	query            string
	threshold        float64
	ignoreNullValues bool
	min, max         int32
}

func productionTrigger(t *testing.T) kedaTrigger {
	t.Helper()
	r := render(t, "overlays/production")
	if len(r.scaledObjs) != 1 {
		t.Fatalf("overlays/production has %d ScaledObjects, want 1", len(r.scaledObjs))
	}
	so := r.scaledObjs[0]
	if len(so.Spec.Triggers) != 1 || so.Spec.Triggers[0].Type != "prometheus" {
		t.Fatalf("ScaledObject triggers = %+v, want one prometheus trigger", so.Spec.Triggers)
	}
	md := so.Spec.Triggers[0].Metadata
	threshold, err := strconv.ParseFloat(md["threshold"], 64)
	if err != nil || threshold <= 0 {
		t.Fatalf("threshold %q: want a positive number", md["threshold"])
	}
	// KEDA's default for ignoreNullValues is true (prometheus_scaler.go,
	// `default=true`): a manifest that leaves it out gets that.
	ignore := true
	if v, ok := md["ignoreNullValues"]; ok {
		if ignore, err = strconv.ParseBool(v); err != nil {
			t.Fatalf("ignoreNullValues %q: %v", v, err)
		}
	}
	if so.Spec.MinReplicaCount == nil || so.Spec.MaxReplicaCount == nil {
		t.Fatal("the ScaledObject must set minReplicaCount and maxReplicaCount")
	}
	return kedaTrigger{query: md["query"], threshold: threshold, ignoreNullValues: ignore,
		min: *so.Spec.MinReplicaCount, max: *so.Spec.MaxReplicaCount}
}

// errNoRecommendation is how a failed scaler query reaches the HPA: KEDA's
// metrics server answers the external-metrics request with an error, and
// the HPA controller makes no scaling decision (FailedGetExternalMetric).
var errNoRecommendation = errors.New("no metric: the HPA keeps the current replica count")

// kedaQuery is KEDA v2.17.0's prometheusScaler.ExecutePromQuery
// (pkg/scalers/prometheus_scaler.go) for an unauthenticated server: the
// same request, and the same reading of an empty, multi-series or infinite
// answer.
func kedaQuery(ctx context.Context, server, query string, ignoreNullValues bool) (float64, error) {
	u := fmt.Sprintf("%s/api/v1/query?query=%s&time=%s", server, url.QueryEscape(query), time.Now().UTC().Format(time.RFC3339))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return -1, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return -1, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return -1, err
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return -1, fmt.Errorf("prometheus query api returned error. status: %d response: %s", resp.StatusCode, b)
	}
	var result struct {
		Data struct {
			Result []struct {
				Value []any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(b, &result); err != nil {
		return -1, err
	}
	switch {
	case len(result.Data.Result) == 0:
		if ignoreNullValues {
			return 0, nil
		}
		return -1, errors.New("prometheus metrics 'prometheus' target may be lost, the result is empty")
	case len(result.Data.Result) > 1:
		return -1, fmt.Errorf("prometheus query %s returned multiple elements", query)
	}
	val := result.Data.Result[0].Value
	if len(val) == 0 {
		if ignoreNullValues {
			return 0, nil
		}
		return -1, errors.New("prometheus metrics 'prometheus' target may be lost, the value list is empty")
	} else if len(val) < 2 {
		return -1, fmt.Errorf("prometheus query %s didn't return enough values", query)
	}
	v := -1.0
	if s, ok := val[1].(string); ok {
		if v, err = strconv.ParseFloat(s, 64); err != nil {
			return -1, err
		}
	}
	if math.IsInf(v, 0) {
		if ignoreNullValues {
			return 0, nil
		}
		return -1, fmt.Errorf("promtheus query returns %f", v)
	}
	return v, nil
}

// hpaReplicas is the replica count the HPA sets for KEDA's external metric
// (metricType AverageValue, KEDA's default): KEDA reports the value and the
// threshold in milli-units (GenerateMetricInMili, GetMetricTargetMili), and
// the HPA's GetExternalPerPodMetricReplicas (pkg/controller/podautoscaler/
// replica_calculator.go) takes ceil(value/threshold) unless the ratio to
// the current size is within its 10% tolerance; the controller then clamps
// to [min, max]. On a metric error it decides nothing. The scale-down
// behavior (rate and stabilization) only delays the result and is left out.
func hpaReplicas(current, min, max int32, value, threshold float64, metricErr error) int32 {
	if metricErr != nil {
		return current
	}
	usage, target := int64(value*1000), int64(threshold*1000)
	desired := current
	ratio := float64(usage) / (float64(target) * float64(current))
	if math.Abs(1-ratio) > 0.1 {
		desired = int32(math.Ceil(float64(usage) / float64(target)))
	}
	return int32(math.Min(math.Max(float64(desired), float64(min)), float64(max)))
}

func TestHPAReplicaFormula(t *testing.T) {
	for _, c := range []struct {
		name              string
		current, min, max int32
		value, threshold  float64
		err               error
		want              int32
	}{
		{"an empty queue scales to the minimum", 7, 3, 12, 0, 20, nil, 3},
		{"one replica per threshold of pending tasks", 3, 3, 12, 130, 20, nil, 7},
		{"a part of a threshold still needs a replica", 3, 3, 12, 81, 20, nil, 5},
		{"a flood stops at the maximum", 3, 3, 12, 5000, 20, nil, 12},
		{"within the 10% tolerance nothing changes", 5, 3, 12, 105, 20, nil, 5},
		{"no metric keeps the current size", 9, 3, 12, 0, 20, errNoRecommendation, 9},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := hpaReplicas(c.current, c.min, c.max, c.value, c.threshold, c.err); got != c.want {
				t.Errorf("hpaReplicas = %d, want %d", got, c.want)
			}
		})
	}
}

var (
	workerBinOnce sync.Once
	workerBinPath string
	workerBinErr  error
)

// workerBinary builds cmd/worker once for the tests of this package that
// run it as a process.
func workerBinary(t *testing.T) string {
	t.Helper()
	workerBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "deploy-worker")
		if err != nil {
			workerBinErr = err
			return
		}
		workerBinPath = filepath.Join(dir, "worker")
		if out, err := exec.Command("go", "build", "-o", workerBinPath, filepath.Join(repoRoot, "cmd", "worker")).CombinedOutput(); err != nil {
			workerBinErr = fmt.Errorf("building the worker: %v\n%s", err, out)
		}
	})
	if workerBinErr != nil {
		t.Fatal(workerBinErr)
	}
	return workerBinPath
}

// TestScaledObjectQueryOnRealPrometheus: a monitor process exports the
// queues of a real redis-server holding known pending tasks, a real
// Prometheus scrapes it, and the ScaledObject's own query, asked as KEDA
// asks it, gives the sum of the pending tasks outside the embeddings queue.
// The replica counts that follow are asserted for empty, normal and
// flooded queues, and for the two cases the manifest's comment speaks of:
// an empty answer (the monitor gone, its series stale) and an unreachable
// Prometheus both keep the current size.
func TestScaledObjectQueryOnRealPrometheus(t *testing.T) {
	if testing.Short() {
		t.Skip("starts redis-server, a monitor process and Prometheus (about 40 s)")
	}
	trig := productionTrigger(t)
	rds := redistest.Start(t)
	opt := asynq.RedisClientOpt{Addr: rds.Addr}
	client := asynq.NewClient(opt)
	t.Cleanup(func() { client.Close() })
	insp := asynq.NewInspector(opt)
	t.Cleanup(func() { insp.Close() })

	monitor := workerproc.Start(t, workerBinary(t), map[string]string{
		"REDIS_URL": rds.URL(), "ROLE": "monitor", "QUEUE_METRICS": "true", "LOG_LEVEL": "warn",
	}, workerproc.Serves("/readyz"), 30*time.Second)
	// Scraped on its probe listener, as the PodMonitor scrapes it.
	prom := "http://" + startPrometheus(t, monitor.ProbeAddr)

	// pending enqueues n tasks on queue; no worker serves them.
	pending := func(queue string, n int) {
		t.Helper()
		for i := 0; i < n; i++ {
			if _, err := client.Enqueue(asynq.NewTask("deploy_keda_backlog", nil), asynq.Queue(queue), asynq.Retention(time.Hour)); err != nil {
				t.Fatal(err)
			}
		}
	}
	ctx := context.Background()
	// waitValue waits for the query to answer want: the monitor reads Redis
	// at most every 10 s and Prometheus scrapes it every second.
	waitValue := func(what string, want float64) {
		t.Helper()
		deadline := time.Now().Add(45 * time.Second)
		var got float64
		var err error
		for time.Now().Before(deadline) {
			if got, err = kedaQuery(ctx, prom, trig.query, trig.ignoreNullValues); err == nil && got == want {
				return
			}
			time.Sleep(250 * time.Millisecond)
		}
		t.Fatalf("%s: the ScaledObject's query answers %v (err %v), want %v", what, got, err, want)
	}
	current := int32(3)
	step := func(what string, wantValue float64, wantReplicas int32) {
		t.Helper()
		waitValue(what, wantValue)
		v, err := kedaQuery(ctx, prom, trig.query, trig.ignoreNullValues)
		got := hpaReplicas(current, trig.min, trig.max, v, trig.threshold, err)
		t.Logf("FIGURE %s: query %v, %d -> %d replicas", what, v, current, got)
		if got != wantReplicas {
			t.Fatalf("%s: %d replicas from %d, want %d", what, got, current, wantReplicas)
		}
		current = got
	}

	// Normal: 130 pending across the scaled queues; the embeddings
	// queue's 400 do not count.
	pending(jobs.QueueDefault, 60)
	pending(jobs.QueueCritical, 10)
	pending(jobs.QueueMaintenance, 20)
	pending(jobs.QueueExtraction, 40)
	pending(jobs.QueueEmbeddings, 400)
	step("normal backlog (130 pending, 400 embeddings)", 130, 7)

	// Flooded: 2,130 pending would ask for 107 replicas.
	pending(jobs.QueueDefault, 2000)
	step("flooded queues (2130 pending)", 2130, trig.max)

	// Empty: the queues exist, with nothing pending.
	for _, q := range []string{jobs.QueueDefault, jobs.QueueCritical, jobs.QueueMaintenance, jobs.QueueExtraction, jobs.QueueEmbeddings} {
		if _, err := insp.DeleteAllPendingTasks(q); err != nil {
			t.Fatal(err)
		}
	}
	step("empty queues", 0, trig.min)

	// Back to a backlog, then the answers the manifest's comment promises
	// keep the size: no series (the monitor is gone and Prometheus marks its
	// series stale at the next failed scrape) and no Prometheus at all.
	pending(jobs.QueueDefault, 190)
	step("backlog again (190 pending)", 190, 10)

	monitor.Kill()
	deadline := time.Now().Add(30 * time.Second)
	var err error
	var v float64
	empty := false
	for !empty && time.Now().Before(deadline) {
		// At the time KEDA asks for: now, to the second.
		resp, qerr := http.Get(prom + "/api/v1/query?query=" + url.QueryEscape(trig.query) + "&time=" + time.Now().UTC().Format(time.RFC3339))
		if qerr != nil {
			t.Fatal(qerr)
		}
		var body struct {
			Data struct {
				Result []json.RawMessage `json:"result"`
			} `json:"data"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if empty = len(body.Data.Result) == 0; !empty {
			time.Sleep(250 * time.Millisecond)
		}
	}
	if !empty {
		t.Fatal("Prometheus still answers the query 30 s after the monitor was killed")
	}
	v, err = kedaQuery(ctx, prom, trig.query, trig.ignoreNullValues)
	if got := hpaReplicas(current, trig.min, trig.max, v, trig.threshold, err); got != current {
		t.Errorf("monitor gone (empty answer): KEDA reads %v (err %v) and the fleet goes from %d to %d replicas; the manifest says an empty answer keeps the current size", v, err, current, got)
	} else {
		t.Logf("FIGURE monitor gone (empty answer): KEDA reads %v (err %v); %d replicas kept", v, err, current)
	}

	unreachable := "http://" + redistest.FreeAddr(t)
	v, err = kedaQuery(ctx, unreachable, trig.query, trig.ignoreNullValues)
	if err == nil {
		t.Fatalf("a query to a closed port answered %v", v)
	}
	if got := hpaReplicas(current, trig.min, trig.max, v, trig.threshold, err); got != current {
		t.Errorf("Prometheus unreachable: the fleet goes from %d to %d replicas, want it kept", current, got)
	}
}
