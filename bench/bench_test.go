// Package bench holds the performance benchmarks. Each compares our worker
// with bare asynq side by side in the same run, against a real redis-server
// started for the benchmark. bench/run.sh runs them all and prints the
// figures recorded in docs/performance.md.
package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/app"
	"github.com/stargazer/stargazer-jobs/internal/queue/events"
	"github.com/stargazer/stargazer-jobs/internal/queue/periodic"
	"github.com/stargazer/stargazer-jobs/internal/queue/server"
	"github.com/stargazer/stargazer-jobs/internal/testkit/faultproxy"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/jobs"
	"github.com/stargazer/stargazer-jobs/monitor"
)

const concurrency = 10

var noopSpec = jobs.Spec{Name: "bench_noop", Kind: jobs.Child, Queue: jobs.QueueDefault, MaxRetry: 3,
	Timeout: time.Minute, NewPayload: func() jobs.Payload { return &jobs.Empty{} }, Summary: "no-op"}

// startServer returns a started asynq server that counts processed no-op tasks:
// ours (server.NewServer and server.Mux with every middleware: logging,
// metrics, debug events, panic recovery, singleton checks) or bare asynq.
func startServer(b *testing.B, addr string, ours bool, processed *atomic.Int64) *asynq.Server {
	conn := asynq.RedisClientOpt{Addr: addr}
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	b.Cleanup(func() { rdb.Close() })
	h := asynq.HandlerFunc(func(context.Context, *asynq.Task) error { processed.Add(1); return nil })
	var s *asynq.Server
	var mux *asynq.ServeMux
	if ours {
		o := server.Options{
			Redis: conn, Concurrency: concurrency, ShutdownTimeout: 5 * time.Second,
			Logger:  slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo})),
			Metrics: monitor.NewMetrics(prometheus.NewRegistry()), Events: asyncEvents(b, rdb),
			Catalog: append(jobs.Catalog(), noopSpec), RedisClient: rdb,
		}
		s, mux = server.NewServer(o), server.Mux(o)
	} else {
		s = asynq.NewServer(conn, asynq.Config{Concurrency: concurrency, Queues: jobs.Queues(), LogLevel: asynq.FatalLevel})
		mux = asynq.NewServeMux()
	}
	mux.Handle(noopSpec.Name, h)
	if err := s.Start(mux); err != nil {
		b.Fatal(err)
	}
	return s
}

func asyncEvents(b *testing.B, rdb *redis.Client) *events.Async {
	b.Helper()
	a := events.NewAsync(events.NewPublisher(rdb, "bench:events"), 10_000)
	ctx, cancel := context.WithCancel(context.Background())
	go a.Run(ctx)
	b.Cleanup(func() { cancel(); <-a.Done() })
	return a
}

func enqueueNoops(b *testing.B, rdb *redis.Client, n int) {
	c := asynq.NewClientFromRedisClient(rdb)
	for range n {
		if _, err := c.Enqueue(asynq.NewTask(noopSpec.Name, nil), asynq.Queue(jobs.QueueDefault)); err != nil {
			b.Fatal(err)
		}
	}
}

// commands is the total number of commands the server has processed.
func commands(b *testing.B, rdb *redis.Client) int64 {
	info, err := rdb.Info(context.Background(), "stats").Result()
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "total_commands_processed:"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	b.Fatal("no total_commands_processed in INFO")
	return 0
}

type roundResult struct {
	perSec, cmdsPerTask float64
}

// round processes n no-op tasks with a server connected to addr (Redis, or
// a proxy in front of it); admin talks to Redis directly.
func round(b *testing.B, addr string, rdb *redis.Client, ours bool, n int) roundResult {
	rdb.FlushAll(context.Background())
	enqueueNoops(b, rdb, n)
	var processed atomic.Int64
	before := commands(b, rdb)
	start := time.Now()
	s := startServer(b, addr, ours, &processed)
	for processed.Load() < int64(n) {
		time.Sleep(time.Millisecond)
	}
	took := time.Since(start)
	after := commands(b, rdb)
	s.Shutdown()
	return roundResult{perSec: float64(n) / took.Seconds(), cmdsPerTask: float64(after-before) / float64(n)}
}

// BenchmarkNoopThroughput runs rounds of 2,000 no-op tasks through bare
// asynq and through our worker, alternating, with the same concurrency,
// and reports the median tasks/s of each, their ratio, and the Redis
// commands per task.
func BenchmarkNoopThroughput(b *testing.B) {
	srv := redistest.Start(b)
	throughput(b, srv.Addr, srv.Client(b), 2000)
}

// BenchmarkNoopThroughputWithLatency is BenchmarkNoopThroughput with 1 ms
// of round-trip latency injected between the workers and Redis.
func BenchmarkNoopThroughputWithLatency(b *testing.B) {
	srv := redistest.Start(b)
	p, err := faultproxy.Start(srv.Addr)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	p.SetLatency(500 * time.Microsecond) // each way
	throughput(b, p.Addr(), srv.Client(b), 500)
}

func throughput(b *testing.B, addr string, rdb *redis.Client, n int) {
	var bare, ours []roundResult
	for i := 0; b.Loop(); i++ {
		if i%2 == 0 {
			bare = append(bare, round(b, addr, rdb, false, n))
			ours = append(ours, round(b, addr, rdb, true, n))
		} else {
			ours = append(ours, round(b, addr, rdb, true, n))
			bare = append(bare, round(b, addr, rdb, false, n))
		}
	}
	mb, mo := median(bare, func(r roundResult) float64 { return r.perSec }), median(ours, func(r roundResult) float64 { return r.perSec })
	b.ReportMetric(mb, "bare_tasks/s")
	b.ReportMetric(mo, "ours_tasks/s")
	b.ReportMetric(mo/mb, "ratio")
	b.ReportMetric(median(bare, func(r roundResult) float64 { return r.cmdsPerTask }), "bare_cmds/task")
	b.ReportMetric(median(ours, func(r roundResult) float64 { return r.cmdsPerTask }), "ours_cmds/task")
}

func median[T any](xs []T, f func(T) float64) float64 {
	v := make([]float64, len(xs))
	for i, x := range xs {
		v[i] = f(x)
	}
	slices.Sort(v)
	if len(v) == 0 {
		return math.NaN()
	}
	return v[len(v)/2]
}

// BenchmarkIdleCommands measures the Redis commands per second of one idle
// pod: bare asynq (a server with no work) and our whole worker (app.Run:
// server, scheduler with the default catalog, lease recoverer, monitor).
func BenchmarkIdleCommands(b *testing.B) {
	const window = 20 * time.Second
	for b.Loop() {
		srv := redistest.Start(b)
		rdb := srv.Client(b)

		s := asynq.NewServer(asynq.RedisClientOpt{Addr: srv.Addr}, asynq.Config{Concurrency: concurrency, Queues: jobs.Queues(), LogLevel: asynq.FatalLevel})
		if err := s.Start(asynq.NewServeMux()); err != nil {
			b.Fatal(err)
		}
		time.Sleep(2 * time.Second) // past start-up
		c0 := commands(b, rdb)
		time.Sleep(window)
		bare := float64(commands(b, rdb)-c0-1) / window.Seconds()
		s.Shutdown()

		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		env := map[string]string{"REDIS_URL": srv.URL(), "HTTP_ADDR": redistest.FreeAddr(b), "PROBE_ADDR": redistest.FreeAddr(b), "WORKER_CONCURRENCY": strconv.Itoa(concurrency), "LOG_LEVEL": "error"}
		go func() {
			done <- app.Run(ctx, app.Params{Getenv: func(k string) string { return env[k] }, Stdout: io.Discard, Stderr: io.Discard})
		}()
		time.Sleep(2 * time.Second)
		c0 = commands(b, rdb)
		time.Sleep(window)
		ours := float64(commands(b, rdb)-c0-1) / window.Seconds()
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(bare, "bare_cmds/s")
		b.ReportMetric(ours, "ours_cmds/s")
	}
}

type recorder struct {
	mu   sync.Mutex
	late []time.Duration
	seen map[string]int
}

func (r *recorder) ProcessTask(ctx context.Context, _ *asynq.Task) error {
	id, _ := asynq.GetTaskID(ctx)
	_, ms, _ := strings.Cut(id, "@")
	due, _ := strconv.ParseInt(ms, 10, 64)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.late = append(r.late, time.Since(time.UnixMilli(due)))
	r.seen[id]++
	return nil
}

// BenchmarkSchedulerLateness runs three scheduler replicas against one
// Redis with 20 periodic tasks every second until 1,000 runs, and reports
// p50/p99 lateness (run start minus due time) and duplicate runs.
func BenchmarkSchedulerLateness(b *testing.B) {
	for b.Loop() {
		srv := redistest.Start(b)
		rdb := srv.Client(b)
		rec := &recorder{seen: map[string]int{}}
		var entries []periodic.Entry
		var catalog []jobs.Spec
		mux := asynq.NewServeMux()
		for i := range 20 {
			name := fmt.Sprintf("bench_p%02d", i)
			entries = append(entries, periodic.Entry{Name: name, Interval: time.Second, Queue: jobs.QueueDefault})
			catalog = append(catalog, jobs.Spec{Name: name, Kind: jobs.Periodic, Interval: time.Second, Queue: jobs.QueueDefault, MaxRetry: 1, Timeout: time.Minute})
			mux.Handle(name, rec)
		}
		s := asynq.NewServer(asynq.RedisClientOpt{Addr: srv.Addr}, asynq.Config{Concurrency: 20, Queues: jobs.Queues(), LogLevel: asynq.FatalLevel})
		if err := s.Start(mux); err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		for range 3 {
			c := redis.NewClient(&redis.Options{Addr: srv.Addr})
			insp := asynq.NewInspectorFromRedisClient(c)
			sched, err := periodic.New(periodic.Config{
				Redis: c, Enqueuer: asynq.NewClientFromRedisClient(c), States: periodic.InspectorStates{Inspector: insp},
				Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			}, entries)
			if err != nil {
				b.Fatal(err)
			}
			wg.Add(1)
			go func() { defer wg.Done(); defer c.Close(); sched.Run(ctx) }()
		}
		for {
			rec.mu.Lock()
			n := len(rec.late)
			rec.mu.Unlock()
			if n >= 1000 {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		cancel()
		wg.Wait()
		s.Shutdown()
		_ = catalog
		rec.mu.Lock()
		late := slices.Clone(rec.late[:1000])
		dups := 0
		for _, n := range rec.seen {
			dups += n - 1
		}
		rec.mu.Unlock()
		slices.Sort(late)
		b.ReportMetric(late[499].Seconds()*1000, "p50_late_ms")
		b.ReportMetric(late[989].Seconds()*1000, "p99_late_ms")
		b.ReportMetric(float64(dups), "duplicates")
		_ = rdb
	}
}

// BenchmarkWorkerRSS starts the worker binary (testworker: the worker plus
// the e2e tasks), reads its resident memory idle, then while it runs
// 20,000 no-op tasks.
func BenchmarkWorkerRSS(b *testing.B) {
	bin := filepath.Join(b.TempDir(), "testworker")
	if out, err := exec.Command("go", "build", "-o", bin, "../internal/e2e/testworker").CombinedOutput(); err != nil {
		b.Fatalf("building testworker: %v\n%s", err, out)
	}
	for b.Loop() {
		srv := redistest.Start(b)
		rdb := srv.Client(b)
		cmd := exec.Command(bin)
		cmd.Env = append(os.Environ(), "REDIS_URL="+srv.URL(), "HTTP_ADDR="+redistest.FreeAddr(b), "PROBE_ADDR="+redistest.FreeAddr(b), "LOG_LEVEL=error",
			"TASK_INTERVALS=e2e_plain=off,e2e_single=off", "WORKER_CONCURRENCY=10", "E2E_SLEEP=0s")
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		time.Sleep(10 * time.Second)
		idle := rssKB(b, cmd.Process.Pid, "VmRSS")
		c := asynq.NewClientFromRedisClient(rdb)
		for range 20000 {
			if _, err := c.Enqueue(asynq.NewTask("e2e_plain", nil), asynq.Queue(jobs.QueueDefault)); err != nil {
				b.Fatal(err)
			}
		}
		peak := 0.0
		for {
			peak = max(peak, rssKB(b, cmd.Process.Pid, "VmRSS"))
			n, _ := rdb.LLen(context.Background(), "e2e:runs").Result()
			if n >= 20000 {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		hwm := rssKB(b, cmd.Process.Pid, "VmHWM")
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
		b.ReportMetric(idle/1024, "idle_MiB")
		b.ReportMetric(peak/1024, "load_MiB")
		b.ReportMetric(hwm/1024, "peak_MiB")
	}
}

func rssKB(b *testing.B, pid int, field string) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			return f
		}
	}
	return 0
}
