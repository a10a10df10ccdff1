package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/clients/gemini"
	"github.com/stargazer/stargazer-jobs/internal/clients/gemini/geminitest"
	"github.com/stargazer/stargazer-jobs/internal/config"
	"github.com/stargazer/stargazer-jobs/internal/store/prompts"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/syncbuf"
	"github.com/stargazer/stargazer-jobs/jobs"
)

type running struct {
	addr, probeAddr string
	logs            *syncbuf.Buffer
	stop            func() error
}

// startWorker runs the worker in-process as main would, until stop. A
// free address the test picked may be taken before the worker binds it
// (by the embedded Redis, which listens on a port of the kernel's choice):
// the start is then tried again on other addresses.
func startWorker(t *testing.T, env map[string]string) *running {
	t.Helper()
	probe := env["PROBE_ADDR"]
	for attempt := 1; ; attempt++ {
		try := maps.Clone(env)
		if probe == "" {
			try["PROBE_ADDR"] = ""
		}
		w, err := tryStartWorker(t, try)
		if err == nil {
			maps.Copy(env, try)
			return w
		}
		if attempt == 3 || !strings.Contains(err.Error(), "address already in use") {
			t.Fatal(err)
		}
		t.Logf("attempt %d: %v; trying other addresses", attempt, strings.SplitN(err.Error(), "\n", 2)[0])
	}
}

func tryStartWorker(t *testing.T, env map[string]string) (*running, error) {
	t.Helper()
	addr := redistest.FreeAddr(t)
	env["HTTP_ADDR"] = addr
	if env["PROBE_ADDR"] == "" {
		env["PROBE_ADDR"] = redistest.FreeAddr(t)
	}
	if env["SHUTDOWN_TIMEOUT"] == "" {
		env["SHUTDOWN_TIMEOUT"] = "5s"
	}
	ctx, cancel := context.WithCancel(context.Background())
	logs := &syncbuf.Buffer{}
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, func(k string) string { return env[k] }, logs, io.Discard) }()
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(30 * time.Second):
			return errors.New("worker did not stop")
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get("http://" + addr + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 && strings.Contains(logs.String(), "worker started") {
				t.Cleanup(func() { stop() })
				return &running{addr: addr, probeAddr: env["PROBE_ADDR"], logs: logs, stop: stop}, nil
			}
		}
		select {
		case err := <-done:
			stopped = true
			cancel()
			return nil, fmt.Errorf("worker exited: %v\n%s", err, logs.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Cleanup(func() { stop() })
	t.Fatalf("worker not ready\n%s", logs.String())
	return nil, nil
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestEmbeddedModeServesDashboardAndMetricsWithNoRedisConfigured(t *testing.T) {
	w := startWorker(t, map[string]string{})
	first, _, _ := strings.Cut(w.logs.String(), "\n")
	if !strings.Contains(first, "embedded in-process Redis") {
		t.Errorf("first log line does not announce the embedded Redis: %s", first)
	}
	for path, want := range map[string]string{
		"/healthz":              "ok",
		"/readyz":               "ready",
		"/metrics":              "stargazer_queue_scrape_ok 1",
		"/dashboard/":           "<html",
		"/dashboard/api/queues": `"queues"`,
	} {
		code, body := get(t, "http://"+w.addr+path)
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("GET %s = %d, body lacks %q", path, code, want)
		}
	}
	for _, want := range []string{`"task scheduled","task":"scheduled_prompt_tick"`, `"task skipped","task":"kg_decay_task","reason":"missing dependency: knowledge graph (FALKORDB_URL)"`} {
		if !strings.Contains(w.logs.String(), want) {
			t.Errorf("startup log lacks %s", want)
		}
	}
	if err := w.stop(); err != nil {
		t.Fatal(err)
	}
}

func TestInvalidConfigurationStopsStartupNamingTheSetting(t *testing.T) {
	err := run(context.Background(), nil, func(k string) string {
		return map[string]string{"KA_ORG_INTERVAL_SECONDS": "often"}[k]
	}, io.Discard, io.Discard)
	var ce *config.Error
	if !errors.As(err, &ce) || ce.Setting != "KA_ORG_INTERVAL_SECONDS" {
		t.Fatalf("err = %v", err)
	}
}

// In the queue-redis layout the prompts and their stream are on the bot's
// Redis (REDIS_URL) and the ticks on the queue Redis (QUEUE_REDIS_URL),
// and neither holds the other's keys.
func TestScheduledPromptFiresExactlyOnceWithTwoWorkersTicking(t *testing.T) {
	if testing.Short() {
		t.Skip("whole workers: skipped under -short")
	}
	for _, layout := range []string{"one-redis", "queue-redis"} {
		t.Run(layout, func(t *testing.T) { promptsFireOnce(t, layout) })
	}
}

func promptsFireOnce(t *testing.T, layout string) {
	srv := redistest.Start(t)
	queue := srv
	if layout == "queue-redis" {
		queue = redistest.Start(t)
	}
	rdb := srv.Client(t)
	ctx := context.Background()
	store := prompts.NewStore(rdb)
	now := time.Now()
	const n = 40
	for i := 0; i < n; i++ {
		if _, err := store.Add(ctx, prompts.New{
			Platform: "matrix", ChannelID: "!room:example.org", UserID: "@u:example.org",
			Text: fmt.Sprintf("prompt %d", i), FireAt: now.Add(-time.Minute),
		}, now); err != nil {
			t.Fatal(err)
		}
	}
	env := func() map[string]string {
		env := map[string]string{"REDIS_URL": srv.URL(), "SCHEDULER_ENABLED": "false"}
		if queue != srv {
			env["QUEUE_REDIS_URL"] = queue.URL()
		}
		return env
	}
	startWorker(t, env())
	startWorker(t, env())

	// Many ticks at once, spread over both workers.
	client := asynq.NewClient(asynq.RedisClientOpt{Addr: queue.Addr})
	defer client.Close()
	for i := 0; i < 20; i++ {
		if _, err := client.Enqueue(asynq.NewTask(jobs.ScheduledPromptTick, []byte(`{"limit":3}`)), asynq.Queue(jobs.QueueCritical)); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if l, _ := rdb.XLen(ctx, prompts.StreamKey).Result(); l >= n {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	msgs, err := rdb.XRange(ctx, prompts.StreamKey, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, m := range msgs {
		seen[m.Values["prompt_id"].(string)]++
	}
	if len(msgs) != n || len(seen) != n {
		t.Fatalf("stream has %d entries for %d prompts, want %d each once", len(msgs), len(seen), n)
	}
	if queue == srv {
		return
	}
	for _, c := range []struct {
		rdb      *redistest.Server
		patterns []string
	}{{srv, []string{"asynq:*", "sgjobs:*"}}, {queue, []string{"sg:*", "stargazer_logs:*"}}} {
		for _, p := range c.patterns {
			if keys, _ := c.rdb.Client(t).Keys(ctx, p).Result(); len(keys) > 0 {
				t.Errorf("%s on the wrong Redis (%s): %v", p, c.rdb.Addr, keys)
			}
		}
	}
	if keys, _ := queue.Client(t).Keys(ctx, "asynq:*").Result(); len(keys) == 0 {
		t.Error("no asynq key on the queue Redis")
	}
}

func TestSchedulerRunsThePromptTickOnItsOwn(t *testing.T) {
	if testing.Short() {
		t.Skip("whole workers: skipped under -short")
	}
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := context.Background()
	// Pretend the tick's initial delay has passed: the schedule says it is due.
	if err := rdb.HSet(ctx, "sgjobs:schedule:"+jobs.ScheduledPromptTick, "next_ms", time.Now().UnixMilli()).Err(); err != nil {
		t.Fatal(err)
	}
	p, err := prompts.NewStore(rdb).Add(ctx, prompts.New{Platform: "discord", ChannelID: "42", Text: "hi", FireAt: time.Now()}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	w := startWorker(t, map[string]string{"REDIS_URL": srv.URL()})
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		got, _ := prompts.NewStore(rdb).Get(ctx, p.ID)
		if got.Status == prompts.Executed {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("prompt never fired\n%s", w.logs.String())
}

func TestJournalStreamRunsOnEveryNodeAndLeavesNoOrphanOnShutdown(t *testing.T) {
	if testing.Short() {
		t.Skip("a whole worker: skipped under -short")
	}
	dir := t.TempDir()
	script := "#!/bin/sh\necho $$ > " + dir + "/pid\necho '{\"MESSAGE\":\"from the journal\"}'\nexec sleep 1000\n"
	if err := os.WriteFile(filepath.Join(dir, "journalctl"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	srv := redistest.Start(t)
	sub := srv.Client(t).Subscribe(context.Background(), "stargazer:journal")
	defer sub.Close()
	if _, err := sub.Receive(context.Background()); err != nil {
		t.Fatal(err)
	}
	w := startWorker(t, map[string]string{"REDIS_URL": srv.URL(), "JOURNAL_DIR": fakeJournalDir(t)})
	select {
	case m := <-sub.Channel():
		if !strings.Contains(m.Payload, "from the journal") {
			t.Errorf("published %q", m.Payload)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("no journal line published\n%s", w.logs.String())
	}
	if err := w.stop(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if syscall.Kill(pid, 0) == nil {
		t.Errorf("journalctl (pid %d) still running after the worker stopped", pid)
	}
}

func TestHealthcheckSubcommand(t *testing.T) {
	w := startWorker(t, map[string]string{})
	_, port, _ := net.SplitHostPort(w.probeAddr)
	if code := healthcheck("0.0.0.0:"+port, io.Discard); code != 0 {
		t.Errorf("healthcheck of a live worker's PROBE_ADDR = %d", code)
	}
	if code := healthcheck(redistest.FreeAddr(t), io.Discard); code != 1 {
		t.Errorf("healthcheck of nothing = %d", code)
	}
	var stderr strings.Builder
	if code := healthcheck("8081", &stderr); code != 1 || !strings.Contains(stderr.String(), "PROBE_ADDR") {
		t.Errorf("healthcheck of a bad address = %d %q, want 1 naming PROBE_ADDR", code, stderr.String())
	}
	if got := defaultProbeAddr(); got != "127.0.0.1:8081" {
		t.Errorf("default PROBE_ADDR %q", got)
	}
}

func TestWithoutCredentialsTheMonitorBindsToLoopbackOnly(t *testing.T) {
	srv := redistest.Start(t)
	addr := redistest.FreeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	logs := &syncbuf.Buffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	_, probePort, _ := net.SplitHostPort(redistest.FreeAddr(t))
	env := map[string]string{"REDIS_URL": srv.URL(), "HTTP_ADDR": "0.0.0.0:" + port, "PROBE_ADDR": "0.0.0.0:" + probePort, "ROLE": "monitor"}
	go func() { done <- run(ctx, nil, func(k string) string { return env[k] }, logs, io.Discard) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "monitor role") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "binds to loopback only") || !strings.Contains(logs.String(), `"addr":"127.0.0.1:`+port+`"`) {
		t.Fatalf("no loopback notice:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), "worker started") {
		t.Error("the monitor role started a worker")
	}
	if code, _ := get(t, "http://127.0.0.1:"+port+"/dashboard/"); code != 200 {
		t.Errorf("dashboard on loopback = %d", code)
	}
	// The probe listener serves nothing that needs a credential: it binds
	// where PROBE_ADDR says.
	if l := logs.String(); !strings.Contains(l, `"msg":"probes listening","addr":"0.0.0.0:`+probePort+`"`) &&
		!strings.Contains(l, `"msg":"probes listening","addr":"[::]:`+probePort+`"`) {
		t.Errorf("the probe listener did not bind 0.0.0.0:%s:\n%s", probePort, logs.String())
	}
}

func TestUnreachableRedisIsReportedAndRetriedUntilItComesBack(t *testing.T) {
	if testing.Short() {
		t.Skip("a whole worker: skipped under -short")
	}
	redisAddr := redistest.FreeAddr(t)
	addr := redistest.FreeAddr(t)
	logs := &syncbuf.Buffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	env := map[string]string{"REDIS_URL": "redis://" + redisAddr + "/0", "HTTP_ADDR": addr, "PROBE_ADDR": redistest.FreeAddr(t), "SHUTDOWN_TIMEOUT": "2s"}
	go func() { done <- run(ctx, nil, func(k string) string { return env[k] }, logs, io.Discard) }()
	defer func() { cancel(); <-done }()

	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "redis unreachable; retrying") && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "redis unreachable; retrying") {
		t.Fatalf("no report of the unreachable Redis:\n%s", logs.String())
	}
	if code, _ := get(t, "http://"+addr+"/healthz"); code != 200 {
		t.Errorf("healthz while Redis is down = %d, want 200: the process is alive", code)
	}
	if code, _ := get(t, "http://"+addr+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("readyz while Redis is down = %d, want 503", code)
	}
	select {
	case err := <-done:
		t.Fatalf("worker exited while Redis was down: %v", err)
	default:
	}

	srv := redistest.StartAt(t, redisAddr)
	deadline = time.Now().Add(30 * time.Second)
	for !strings.Contains(logs.String(), "worker started") && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "worker started") {
		t.Fatalf("worker did not start once Redis came back:\n%s", logs.String())
	}
	if code, _ := get(t, "http://"+addr+"/readyz"); code != 200 {
		t.Errorf("readyz after Redis came back = %d", code)
	}
	// And it works: a prompt tick enqueued now is processed.
	client := asynq.NewClient(asynq.RedisClientOpt{Addr: srv.Addr})
	defer client.Close()
	info, err := client.Enqueue(asynq.NewTask(jobs.ScheduledPromptTick, nil), asynq.Queue(jobs.QueueCritical), asynq.Retention(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: srv.Addr})
	defer insp.Close()
	deadline = time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if ti, err := insp.GetTaskInfo(jobs.QueueCritical, info.ID); err == nil && ti.State == asynq.TaskStateCompleted {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("task not processed after Redis came back")
}

func TestGeminiKeyProbeRunsWithTheKeysFromTheEnvironmentAndNeverLogsThem(t *testing.T) {
	if testing.Short() {
		t.Skip("whole workers: skipped under -short")
	}
	const okKey, dayKey = "AIzaSyWORKER-ok-0000000000000000000", "AIzaSyWORKER-day-000000000000000000"
	fake := geminitest.NewServer(t, map[string]string{okKey: geminitest.OK, dayKey: geminitest.PerDay})
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := context.Background()
	if err := rdb.HSet(ctx, "sgjobs:schedule:"+jobs.GeminiKeyProbe, "next_ms", time.Now().UnixMilli()).Err(); err != nil {
		t.Fatal(err)
	}
	w := startWorker(t, map[string]string{
		"REDIS_URL": srv.URL(), "GEMINI_API_KEYS": okKey + ", " + dayKey, "GEMINI_BASE_URL": fake.URL, "LOG_LEVEL": "debug",
	})
	pool := gemini.NewPool(rdb)
	deadline := time.Now().Add(20 * time.Second)
	for {
		s, ok, _ := pool.Get(ctx, gemini.Fingerprint(dayKey))
		if ok && s.Status == gemini.Exhausted {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("key pool never probed\n%s", w.logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if avail, _ := pool.Available(ctx, time.Now()); len(avail) != 1 || avail[0] != gemini.Fingerprint(okKey) {
		t.Errorf("available = %v", avail)
	}
	if err := w.stop(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(w.logs.String(), gemini.Fingerprint(dayKey)) {
		t.Errorf("worker logs do not name the exhausted key by fingerprint\n%s", w.logs.String())
	}
	for _, k := range []string{okKey, dayKey} {
		if strings.Contains(w.logs.String(), k) {
			t.Errorf("worker logs contain a Gemini key")
		}
	}
}
