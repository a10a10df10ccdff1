package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/workerproc"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// Many pods on one Redis (docs/performance.md). For each pod count in
// PODS (default 8,32,64) and each TASK_CHECK_INTERVAL in PODS_TCI (default
// 1s,100ms) it starts that many worker processes (the testworker binary:
// the real worker, cmd/worker's app.Run, plus recorded test tasks) against
// one redis-server and measures:
//
//   - idle (no periodic test task): Redis commands/s per pod and Redis
//     CPU from INFO deltas, RSS per pod; then the same number of bare asynq
//     processes (bench/bareworker: same queues and concurrency);
//   - load: 20 periodic no-op tasks every second (E2E_PERIODIC=20) for
//     PODS_WINDOW (default 30s): occurrences due, ran, duplicated (runs per
//     task ID beyond one), missed (holes in each task's grid), lateness
//     p50/p99 (run start minus the due time in the task ID);
//   - kill (first TCI only): 2 long tasks per pod running, SIGKILL a
//     quarter of the pods, time until every task has finished elsewhere.
//
// WORKER_CONCURRENCY is 5 per pod to keep 64 pods within the machine.
func BenchmarkManyPods(b *testing.B) {
	dir := b.TempDir()
	worker, bare := filepath.Join(dir, "testworker"), filepath.Join(dir, "bareworker")
	for bin, pkg := range map[string]string{worker: "../internal/e2e/testworker", bare: "./bareworker"} {
		if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
			b.Fatalf("building %s: %v\n%s", pkg, err, out)
		}
	}
	counts := envList(b, "PODS", "8,32,64", strconv.Atoi)
	tcis := envList(b, "PODS_TCI", "1s,100ms", time.ParseDuration)
	window := envList(b, "PODS_WINDOW", "30s", time.ParseDuration)[0]
	var rows []podsRow
	for b.Loop() {
		for _, n := range counts {
			for i, tci := range tcis {
				rows = append(rows, runPods(b, worker, bare, n, tci, window, i == 0)...)
			}
		}
	}
	fmt.Println(podsTable(rows))
}

func envList[T any](b *testing.B, name, def string, parse func(string) (T, error)) []T {
	v := os.Getenv(name)
	if v == "" {
		v = def
	}
	var out []T
	for _, f := range strings.Split(v, ",") {
		x, err := parse(strings.TrimSpace(f))
		if err != nil {
			b.Fatalf("%s: %q: %v", name, f, err)
		}
		out = append(out, x)
	}
	return out
}

type podsRow struct {
	pods                         int
	kind                         string
	tci                          time.Duration
	cmdsPerPod, cpuPct, rssMiB   float64
	due, ran, dups, missed       int
	p50, p99                     time.Duration
	killDone                     time.Duration
	hasLoad, hasKill, hasIdleCPU bool
}

const podsConcurrency = 5

// redisStats reads total_commands_processed and Redis's CPU seconds.
func redisStats(b *testing.B, rdb *redis.Client) (cmds int64, cpu float64) {
	info, err := rdb.Info(context.Background(), "stats", "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		k, v, _ := strings.Cut(line, ":")
		switch k {
		case "total_commands_processed":
			cmds, _ = strconv.ParseInt(v, 10, 64)
		case "used_cpu_sys", "used_cpu_user":
			f, _ := strconv.ParseFloat(v, 64)
			cpu += f
		}
	}
	return cmds, cpu
}

// idle measures Redis commands/s per pod, Redis CPU % and RSS per pod over
// window.
func idle(b *testing.B, rdb *redis.Client, pids []int, window time.Duration) (cmdsPerPod, cpuPct, rssMiB float64) {
	c0, u0 := redisStats(b, rdb)
	t0 := time.Now()
	time.Sleep(window)
	c1, u1 := redisStats(b, rdb)
	wall := time.Since(t0).Seconds()
	rss := 0.0
	for _, pid := range pids {
		rss += rssKB(b, pid, "VmRSS")
	}
	n := float64(len(pids))
	return float64(c1-c0-1) / wall / n, (u1 - u0) / wall * 100, rss / n / 1024
}

func runPods(b *testing.B, worker, bare string, n int, tci, window time.Duration, withBareAndKill bool) []podsRow {
	var rows []podsRow
	settle := 5 * time.Second
	if withBareAndKill {
		srv := redistest.Start(b)
		rdb := srv.Client(b)
		var procs []*exec.Cmd
		var pids []int
		for range n {
			cmd := exec.Command(bare)
			cmd.Env = append(os.Environ(), "REDIS_ADDR="+srv.Addr, "WORKER_CONCURRENCY="+strconv.Itoa(podsConcurrency), "TASK_CHECK_INTERVAL="+tci.String())
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			procs, pids = append(procs, cmd), append(pids, cmd.Process.Pid)
		}
		time.Sleep(settle)
		cmds, cpu, rss := idle(b, rdb, pids, window/2)
		rows = append(rows, podsRow{pods: n, kind: "bare asynq", tci: tci, cmdsPerPod: cmds, cpuPct: cpu, rssMiB: rss, hasIdleCPU: true})
		for _, p := range procs {
			_ = p.Process.Kill()
			_ = p.Wait()
		}
		srv.Stop()
	}

	srv := redistest.Start(b)
	rdb := srv.Client(b)
	env := map[string]string{
		"REDIS_URL": srv.URL(), "LOG_LEVEL": "error", "WORKER_CONCURRENCY": strconv.Itoa(podsConcurrency),
		"TASK_CHECK_INTERVAL": tci.String(), "QUEUE_METRICS": "false", "E2E_SLEEP": "10s",
		"TASK_INTERVALS": "e2e_plain=off,e2e_single=off",
	}
	start := func(extra map[string]string) []*workerproc.Proc {
		var ps []*workerproc.Proc
		var mu sync.Mutex
		var wg sync.WaitGroup
		sem := make(chan struct{}, 4)
		for range n {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				e := map[string]string{}
				for k, v := range env {
					e[k] = v
				}
				for k, v := range extra {
					e[k] = v
				}
				p, err := workerproc.TryStart(b, worker, e, workerproc.Serves("/healthz"), 2*time.Minute)
				if err != nil {
					b.Error(err)
					return
				}
				mu.Lock()
				ps = append(ps, p)
				mu.Unlock()
			})
		}
		wg.Wait()
		if b.Failed() {
			b.FailNow()
		}
		return ps
	}
	pidsOf := func(ps []*workerproc.Proc) []int {
		var pids []int
		for _, p := range ps {
			pids = append(pids, p.Pid())
		}
		return pids
	}

	// Idle: the default catalog, no test task scheduled.
	ps := start(nil)
	time.Sleep(settle)
	cmds, cpu, rss := idle(b, rdb, pidsOf(ps), window/2)
	rows = append(rows, podsRow{pods: n, kind: "ours idle", tci: tci, cmdsPerPod: cmds, cpuPct: cpu, rssMiB: rss, hasIdleCPU: true})
	for _, p := range ps {
		p.Kill()
	}
	rdb.FlushAll(context.Background())

	// Load: 20 periodic no-op tasks every second.
	ps = start(map[string]string{"E2E_PERIODIC": "20"})
	time.Sleep(settle)
	_, u0 := redisStats(b, rdb)
	from := time.Now()
	time.Sleep(window)
	to := time.Now()
	_, u1 := redisStats(b, rdb)
	time.Sleep(3 * time.Second) // the last occurrences run
	row := podsRow{pods: n, kind: "ours load", tci: tci, hasLoad: true, cpuPct: (u1 - u0) / to.Sub(from).Seconds() * 100}
	loadFigures(b, rdb, from, to, &row)
	rss = 0
	for _, pid := range pidsOf(ps) {
		rss += rssKB(b, pid, "VmRSS")
	}
	row.rssMiB = rss / float64(n) / 1024

	// Kill: two 10 s tasks per pod, a quarter of the pods SIGKILLed.
	if withBareAndKill {
		row.killDone = killRecovery(b, srv, rdb, ps)
		row.hasKill = true
	}
	rows = append(rows, row)
	for _, p := range ps {
		p.Kill()
	}
	srv.Stop()
	return rows
}

// loadFigures reads the recorded runs of the periodic test tasks whose
// occurrence was due in [from, to).
func loadFigures(b *testing.B, rdb *redis.Client, from, to time.Time, row *podsRow) {
	lines, err := rdb.LRange(context.Background(), "e2e:runs", 0, -1).Result()
	if err != nil {
		b.Fatal(err)
	}
	runs := map[string]int{}
	dues := map[string][]int64{}
	var late []time.Duration
	for _, l := range lines {
		f := strings.Split(l, "|")
		if len(f) != 5 || !strings.HasPrefix(f[0], "e2e_p") || f[0] == "e2e_plain" {
			continue
		}
		_, ms, _ := strings.Cut(f[1], "@")
		due, _ := strconv.ParseInt(ms, 10, 64)
		startMS, _ := strconv.ParseInt(f[3], 10, 64)
		if due < from.UnixMilli() || due >= to.UnixMilli() {
			continue
		}
		runs[f[1]]++
		if runs[f[1]] == 1 {
			dues[f[0]] = append(dues[f[0]], due)
			late = append(late, time.Duration(startMS-due)*time.Millisecond)
		} else {
			row.dups++
		}
		row.ran++
	}
	for _, ds := range dues {
		slices.Sort(ds)
		for i := 1; i < len(ds); i++ {
			if gap := (ds[i] - ds[i-1]) / 1000; gap > 1 {
				row.missed += int(gap - 1)
			}
		}
		row.due += len(ds)
	}
	row.due += row.missed
	slices.Sort(late)
	if len(late) > 0 {
		row.p50 = late[len(late)/2]
		row.p99 = late[len(late)*99/100]
	}
}

// killRecovery runs two long tasks per pod, SIGKILLs a quarter of the pods
// once every task is running, and returns the time from the kill until
// every task has a completed run.
func killRecovery(b *testing.B, srv *redistest.Server, rdb *redis.Client, ps []*workerproc.Proc) time.Duration {
	ctx := context.Background()
	var startedKill []int
	var smu sync.Mutex
	sub := rdb.Subscribe(ctx, "e2e:started")
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		b.Fatal(err)
	}
	go func() {
		for m := range sub.Channel() {
			if f := strings.Split(m.Payload, "|"); len(f) == 3 && strings.HasPrefix(f[1], "kill-") {
				pid, _ := strconv.Atoi(f[2])
				smu.Lock()
				startedKill = append(startedKill, pid)
				smu.Unlock()
			}
		}
	}()
	c := asynq.NewClientFromRedisClient(rdb)
	total := 2 * len(ps)
	for i := range total {
		if _, err := c.Enqueue(asynq.NewTask("e2e_plain", nil), asynq.Queue(jobs.QueueDefault), asynq.TaskID(fmt.Sprintf("kill-%d", i)), asynq.Retention(time.Hour)); err != nil {
			b.Fatal(err)
		}
	}
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: srv.Addr})
	defer insp.Close()
	for end := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		q, err := insp.GetQueueInfo(jobs.QueueDefault)
		if err == nil && q.Pending == 0 {
			break
		}
		if time.Now().After(end) {
			b.Fatalf("kill phase: tasks not all started: %+v %v", q, err)
		}
	}
	// Kill the quarter of the pods running the most tasks (each run's
	// start is published with its pid).
	time.Sleep(200 * time.Millisecond) // the last start messages
	smu.Lock()
	defer smu.Unlock()
	byPid := map[int]int{}
	for _, l := range startedKill {
		byPid[l]++
	}
	victims := slices.Clone(ps)
	slices.SortFunc(victims, func(a, b *workerproc.Proc) int { return byPid[b.Pid()] - byPid[a.Pid()] })
	victims = victims[:len(ps)/4]
	killed := time.Now()
	for _, p := range victims {
		p.Signal(9)
	}
	for end := time.Now().Add(3 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		lines, _ := rdb.LRange(ctx, "e2e:runs", 0, -1).Result()
		done := map[string]bool{}
		for _, l := range lines {
			if f := strings.Split(l, "|"); len(f) == 5 && strings.HasPrefix(f[1], "kill-") {
				done[f[1]] = true
			}
		}
		if len(done) == total {
			return time.Since(killed)
		}
		if time.Now().After(end) {
			b.Fatalf("kill phase: %d of %d tasks finished 3 minutes after the kill", len(done), total)
		}
	}
}

func podsTable(rows []podsRow) string {
	var sb strings.Builder
	sb.WriteString("| pods | what | TASK_CHECK_INTERVAL | Redis cmds/s per pod | Redis CPU % | RSS MiB/pod | due | ran | dup | missed | late p50 | late p99 | SIGKILL 1/4 → all done |\n")
	sb.WriteString("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rows {
		cmds := "—"
		if r.hasIdleCPU {
			cmds = fmt.Sprintf("%.1f", r.cmdsPerPod)
		}
		load := "— | — | — | — | — | —"
		if r.hasLoad {
			load = fmt.Sprintf("%d | %d | %d | %d | %d ms | %d ms", r.due, r.ran, r.dups, r.missed, r.p50.Milliseconds(), r.p99.Milliseconds())
		}
		kill := "—"
		if r.hasKill {
			kill = fmt.Sprintf("%.1f s", r.killDone.Seconds())
		}
		fmt.Fprintf(&sb, "| %d | %s | %v | %s | %.1f | %.1f | %s | %s |\n", r.pods, r.kind, r.tci, cmds, r.cpuPct, r.rssMiB, load, kill)
	}
	return sb.String()
}
