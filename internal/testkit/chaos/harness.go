// Package chaos runs the whole system under a random, seeded schedule of
// overlapping faults and records what happened, for the checker in
// check: a real redis-server (append-only file on, fsync always), a real
// FalkorDB, fakes of every external service, K worker processes (the
// testworker binary: the production worker) each behind fault proxies of
// its own to Redis and FalkorDB, and a node agent; the bot's traffic
// (messages, scheduled prompts, RAG fragments) arrives while the faults
// run. Like Jepsen's nemesis and FoundationDB's simulations, the schedule
// is a pure function of the seed (Schedule), so a failure replays from
// it; unlike a simulation, the processes are real and their timing is
// not, so a replay has the same faults, not the same interleaving.
//
// The history comes from what the system itself says: the workers' logs
// (runs, scheduler occurrences, singleton leases, prompts fired,
// extraction batches committed), the fakes' logs, samples of Redis and of
// the workers' /metrics while it runs, and Redis and the graph at the end.
package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/cursors"
	"github.com/stargazer/stargazer-jobs/internal/kg/extract"
	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
	"github.com/stargazer/stargazer-jobs/internal/queue/legacy"
	"github.com/stargazer/stargazer-jobs/internal/queue/periodic"
	"github.com/stargazer/stargazer-jobs/internal/queue/singleton"
	"github.com/stargazer/stargazer-jobs/internal/store/prompts"
	"github.com/stargazer/stargazer-jobs/internal/testkit/chaos/check"
	"github.com/stargazer/stargazer-jobs/internal/testkit/falkortest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/faultproxy"
	"github.com/stargazer/stargazer-jobs/internal/testkit/journaltest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/procstat"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/scrape"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// Options configure a run.
type Options struct {
	Seed int64
	// Duration is the fault period; the run adds a warm-up before it and
	// a quiet period after it.
	Duration time.Duration
	Workers  int
	// Kinds are the fault kinds the schedule draws from (nil: all).
	Kinds []string
	// Drop leaves these faults of the schedule out (by ID), to minimise a
	// failing schedule.
	Drop map[int]bool
	// Dir receives the processes' logs and the fakes' log; it must exist.
	Dir string
	// Binary is the testworker binary (see BuildWorker).
	Binary string
	// MinQuiet and MaxQuiet bound the quiet period: at least MinQuiet,
	// then until everything drained, at most MaxQuiet.
	MinQuiet, MaxQuiet time.Duration
	// Log gets progress lines.
	Log io.Writer
}

// Intervals are the tasks' intervals in a chaos run: every task of the
// catalog, seconds apart, so a few minutes hold many occurrences of each.
var Intervals = map[string]time.Duration{
	jobs.ScheduledPromptTick:      2 * time.Second,
	jobs.ScheduledPromptCleanup:   20 * time.Second,
	jobs.AutoKGExtraction:         9 * time.Second,
	jobs.ChannelSummarization:     12 * time.Second,
	jobs.KGConsolidation:          20 * time.Second,
	jobs.KGDecay:                  6 * time.Second,
	jobs.GeminiKeyProbe:           15 * time.Second,
	jobs.AgenticKGBulkIncremental: 20 * time.Second,
	jobs.AnamnesisDigest:          5 * time.Second,
	jobs.ChannelHeartbeat:         20 * time.Second,
	jobs.StarwikiLint:             5 * time.Minute, // the original's floor, which overrides keep
	jobs.LimbicAnchoringWorker:    3 * time.Second,
	jobs.LimbicSunsetProcessor:    15 * time.Second,
	jobs.LimbicMaintenance:        20 * time.Second,
	jobs.LimbicDedup:              10 * time.Second,
	jobs.LimbicOrg:                15 * time.Second,
}

// The growth a worker that lived through the run may show at the end over
// a minute after its start. Goroutines: an idle worker holds a fixed set;
// a pooled connection holds none, an HTTP keep-alive connection two; this
// is the sensitive bound. TCP connections (and the file descriptors they
// are): a pool keeps the connections a burst opened, idle, until they are
// 30 min old, so what a worker may hold at the end is what its pools can
// hold: four go-redis pools (its Redis client, asynq's server and
// inspector, the FalkorDB client) of 10 per CPU, 20 here, and 2 idle HTTP
// connections for each of its five HTTP clients (LLM, embeddings, Gemini,
// Discord, Matrix). Measured: +21 at most over ten 10-minute seeds two at
// a time, +33 in a 3-minute seed beside the rest of the test suite.
const (
	MaxGoroutineGrowth = 25
	MaxConnGrowth      = 4*20 + 5*2
	MaxFDGrowth        = MaxConnGrowth + 5
)

// SingletonLease is the run's SINGLETON_LEASE: short, so a worker cut off
// from Redis loses its leases within the faults' durations.
const SingletonLease = 6 * time.Second

type harness struct {
	o     Options
	dir   string
	bin   string
	log   io.Writer
	logMu sync.Mutex
	// budgetMu keeps budget faults apart: one delayed by Redis being down
	// must not clear the next one's budget.
	budgetMu sync.Mutex
	plan     []Planned
	redis    *redistest.Server
	falkor   *falkortest.Server
	fakes    *Fakes
	rdb      *redis.Client
	bot      *bot
	slots    []*slot
	node     *slot
	procs    procs

	mu          sync.Mutex
	faults      []check.Fault
	deployments []check.Deployment
	foreign     []check.ForeignRun
	deployN     int
	deployment  string
	maxOffset   time.Duration

	leaseSamples    []check.LeaseSample
	resourceSamples []check.ResourceSample
	// earlyDumps are the workers' goroutine dumps a minute after their
	// start, by pid: the end's are compared with them.
	earlyDumps map[int]string
}

func (h *harness) logf(format string, args ...any) {
	if h.log != nil {
		h.logMu.Lock()
		defer h.logMu.Unlock()
		fmt.Fprintf(h.log, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
	}
}

// BuildWorker builds the testworker binary into dir.
func BuildWorker(dir string) (string, error) {
	bin := filepath.Join(dir, "testworker")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/stargazer/stargazer-jobs/internal/e2e/testworker").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("building testworker: %v\n%s", err, out)
	}
	return bin, nil
}

// Run runs the system under the seed's schedule and returns its history.
func Run(ctx context.Context, o Options) (*check.History, error) {
	if o.Workers < 2 {
		return nil, errors.New("chaos: at least 2 workers")
	}
	if o.MinQuiet == 0 {
		o.MinQuiet = 45 * time.Second
	}
	if o.MaxQuiet == 0 {
		o.MaxQuiet = 5 * time.Minute
	}
	h := &harness{o: o, dir: o.Dir, bin: o.Binary, log: o.Log, deployment: "deploy-1", deployN: 1, earlyDumps: map[int]string{}}
	h.plan = Schedule(o.Seed, o.Duration, o.Workers, o.Kinds)
	hist := &check.History{Seed: o.Seed, Start: time.Now()}
	defer h.teardown()
	if err := h.setup(ctx); err != nil {
		return nil, err
	}
	if err := h.warmUp(ctx); err != nil {
		return nil, err
	}
	hist.Warm = time.Now()
	h.logf("warm: %d faults planned over %v", len(h.plan), o.Duration)

	sampleCtx, stopSampling := context.WithCancel(ctx)
	var sampling sync.WaitGroup
	sampling.Go(func() { h.sample(sampleCtx) })

	trafficCtx, stopTraffic := context.WithCancel(ctx)
	var traffic sync.WaitGroup
	traffic.Go(func() { h.traffic(trafficCtx, hist.Warm.Add(o.Duration)) })

	h.inject(ctx, hist.Warm)
	stopTraffic()
	traffic.Wait()
	hist.FaultsEnd = time.Now()
	h.logf("faults healed; quiet period")
	if err := h.ensureAllUp(); err != nil {
		h.logf("restarting workers after the faults: %v", err)
	}
	stuck := h.quiet(ctx, hist.FaultsEnd)
	hist.End = time.Now()
	stopSampling()
	sampling.Wait()
	h.saveGrowth()

	if err := h.collect(ctx, hist); err != nil {
		return hist, err
	}
	hist.Stuck = append(hist.Stuck, stuck...)
	return hist, nil
}

// env is what every worker and the node agent get.
func (h *harness) env(s *slot) map[string]string {
	var iv []string
	for _, name := range slices.Sorted(maps.Keys(Intervals)) {
		iv = append(iv, name+"="+Intervals[name].String())
	}
	e := map[string]string{
		"REDIS_URL": "redis://" + s.redisProxy.Addr() + "/0", "LOG_LEVEL": "debug", "SHUTDOWN_TIMEOUT": "5s",
		"SINGLETON_LEASE": SingletonLease.String(), "WORKER_CONCURRENCY": "8", "NODE_NAME": s.name,
		"LLM_BASE_URL": h.fakes.Base() + "/v1", "API_KEY": "sk-chaos-key", "LLM_TIMEOUT_SECONDS": "5",
		"KA_EXTRACTION_HTTP_TIMEOUT_SECONDS": "5", "EMBEDDINGS_TIMEOUT_SECONDS": "5", "LLM_MAX_IN_FLIGHT": "6",
		"GEMINI_API_KEYS": "chaos-key-1,chaos-key-2", "GEMINI_BASE_URL": h.fakes.Base(),
		"DISCORD_BOT_TOKEN": "chaos", "DISCORD_API_BASE_URL": h.fakes.Base() + "/api/v10",
		"MATRIX_HOMESERVER_URL": h.fakes.Base(), "MATRIX_ACCESS_TOKEN": "chaos",
		"KA_ENABLED": "true", "KA_DEDUP_ENABLED": "true", "KA_ORG_ENABLED": "true", "STARWIKI_ENABLED": "true",
		"LEGACY_KG_EXTRACTION": "true",
		// Decay keeps every weight and edge, so the graph can be compared
		// with a fault-free extraction's; the runs still do their work.
		"KG_DECAY_FACTOR": "1", "KG_DECAY_MIN_WEIGHT": "0",
		"KG_EXTRACTION_CLAIM_TTL": "15s", "E2E_CLOCK_FILE": s.clockFile,
		"KG_BULK_DIR": filepath.Join(h.dir, "bulk", s.name),
	}
	if s.node {
		e["ROLE"] = "node"
		e["JOURNAL_DIR"] = filepath.Join(h.dir, "journal")
		e["BACKGROUND_SCHEDULER_LOG_RAG_INGEST_ENABLED"] = "true"
		e["TASK_INTERVALS"] = "journal_stream=10s,log_rag_ingest=20s"
	} else {
		e["FALKORDB_URL"] = "redis://" + s.falkorProxy.Addr() + "/0"
		e["FALKORDB_GRAPH"] = "stargazer"
		// The node agent runs the journal tasks; e2e's own tasks are off.
		e["TASK_INTERVALS"] = strings.Join(append(iv, "journal_stream=off", "log_rag_ingest=off", "e2e_plain=off", "e2e_single=off"), ",")
	}
	return e
}

func (h *harness) setup(ctx context.Context) error {
	for _, d := range []string{"logs", "redis", "falkordb", "journal", "bulk"} {
		if err := os.MkdirAll(filepath.Join(h.dir, d), 0o755); err != nil {
			return err
		}
	}
	var err error
	if h.redis, err = redistest.Launch(filepath.Join(h.dir, "redis"), "--appendonly", "yes", "--appendfsync", "always"); err != nil {
		return err
	}
	// FalkorDB as docker-compose.yml runs it.
	if h.falkor, err = falkortest.Launch(filepath.Join(h.dir, "falkordb"), "TIMEOUT_MAX", "120000", "TIMEOUT_DEFAULT", "60000"); err != nil {
		return err
	}
	if h.fakes, err = StartFakes(filepath.Join(h.dir, "fakes.jsonl")); err != nil {
		return err
	}
	h.rdb = redis.NewClient(&redis.Options{Addr: h.redis.Addr, ReadTimeout: 3 * time.Second, WriteTimeout: 3 * time.Second, DialTimeout: 2 * time.Second, MaxRetries: -1})
	h.bot = newBot(h.rdb, h.o.Seed)
	if err := h.bot.setup(ctx); err != nil {
		return err
	}
	now := time.Now()
	var entries []journaltest.Entry
	for i := range 40 {
		entries = append(entries, journaltest.Entry{Unit: "stargazer.service", Message: fmt.Sprintf("chaos journal line %d", i), Priority: 6,
			Time: now.Add(time.Duration(i-40) * time.Second)})
	}
	if err := journaltest.WriteFile(filepath.Join(h.dir, "journal", "chaos.journal"), "5e1c0ffee0ddba11c0ffee0ddba11c0f", entries); err != nil {
		return err
	}
	mk := func(name string, node bool) (*slot, error) {
		s := &slot{name: name, node: node, clockFile: filepath.Join(h.dir, "clock-"+name)}
		var err error
		if s.redisProxy, err = faultproxy.Start(h.redis.Addr); err != nil {
			return nil, err
		}
		if s.falkorProxy, err = faultproxy.Start(h.falkor.Addr); err != nil {
			return nil, err
		}
		if err := os.WriteFile(s.clockFile, []byte("0s"), 0o644); err != nil {
			return nil, err
		}
		s.env = h.env(s)
		return s, nil
	}
	for i := range h.o.Workers {
		s, err := mk(fmt.Sprintf("w%d", i), false)
		if err != nil {
			return err
		}
		h.slots = append(h.slots, s)
	}
	if h.node, err = mk("node", true); err != nil {
		return err
	}
	// Every task comes due within seconds, not after the catalog's initial
	// delays (up to two hours): as in a deployment that has run for a
	// while.
	for i, name := range slices.Sorted(maps.Keys(Intervals)) {
		now := time.Now()
		if err := h.rdb.HSet(ctx, periodic.StateKeyPrefix+name, "next_ms", now.Add(3*time.Second+time.Duration(i)*300*time.Millisecond).UnixMilli(),
			"interval_ms", Intervals[name].Milliseconds(), "created_ms", now.UnixMilli()).Err(); err != nil {
			return err
		}
	}
	h.deployments = append(h.deployments, check.Deployment{ID: h.deployment, Start: time.Now()})
	var wg sync.WaitGroup
	errs := make([]error, len(h.slots)+1)
	for i, s := range append(slices.Clone(h.slots), h.node) {
		wg.Go(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			_, errs[i] = h.start(s, h.deployment)
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// warmUp waits until the cut-over hand-over points are fixed (the first
// passes of the cursor-driven tasks ran), so that what the bot writes from
// now on is what they must process.
func (h *harness) warmUp(ctx context.Context) error {
	deadline := time.Now().Add(90 * time.Second)
	for {
		ready := true
		for _, task := range []string{jobs.LimbicAnchoringWorker, jobs.AutoKGExtraction} {
			if t, err := legacy.ReadHandOver(ctx, h.rdb, task); err != nil || t.IsZero() {
				ready = false
			}
		}
		// anamnesis_digest's first run starts at the end of the store.
		if n, err := h.rdb.Exists(ctx, cursors.AnamnesisKey).Result(); err != nil || n == 0 {
			ready = false
		}
		if ready {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("chaos: the first passes of the cursor-driven tasks did not run within 90 s of the start (see the worker logs)")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// traffic is the bot's: messages every few hundred milliseconds,
// fragments every couple of seconds, prompts now and then, until until.
func (h *harness) traffic(ctx context.Context, until time.Time) {
	// A first batch of prompts due over the whole fault period.
	for range 12 {
		if err := h.bot.prompt(ctx, time.Until(until)+5*time.Second); err != nil {
			return
		}
	}
	var wg sync.WaitGroup
	loop := func(every time.Duration, fn func(context.Context) error) {
		wg.Go(func() {
			for time.Now().Before(until) {
				select {
				case <-ctx.Done():
					return
				case <-time.After(every):
				}
				if err := fn(ctx); err != nil && ctx.Err() == nil {
					h.logf("bot: %v", err)
				}
			}
		})
	}
	loop(300*time.Millisecond, h.bot.message)
	loop(2*time.Second, h.bot.fragment)
	loop(7*time.Second, func(ctx context.Context) error { return h.bot.prompt(ctx, 25*time.Second) })
	wg.Wait()
}

func (h *harness) ensureAllUp() error {
	var errs []error
	for _, s := range append(slices.Clone(h.slots), h.node) {
		s.mu.Lock()
		if s.cur == nil || !s.cur.alive() {
			if _, err := h.start(s, h.currentDeployment()); err != nil {
				errs = append(errs, err)
			}
		}
		s.mu.Unlock()
	}
	return errors.Join(errs...)
}

func (h *harness) currentDeployment() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.deployment
}

func (h *harness) teardown() {
	var wg sync.WaitGroup
	for _, s := range append(slices.Clone(h.slots), h.node) {
		if s == nil {
			continue
		}
		wg.Go(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.cur != nil && s.cur.alive() {
				s.cur.stop(syscall.SIGTERM, 15*time.Second)
			}
			for _, p := range []*faultproxy.Proxy{s.redisProxy, s.falkorProxy} {
				if p != nil {
					p.Close()
				}
			}
		})
	}
	wg.Wait()
	if h.fakes != nil {
		h.fakes.Close()
	}
	if h.rdb != nil {
		h.rdb.Close()
	}
	if h.falkor != nil {
		_ = h.falkor.Signal(syscall.SIGCONT)
		h.falkor.Stop()
	}
	if h.redis != nil {
		_ = h.redis.Signal(syscall.SIGCONT)
		h.redis.Stop()
	}
}

// sample reads, every second, the singleton leases in Redis, and every
// 5 s each live worker's goroutines, open fds and TCP connections.
func (h *harness) sample(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		h.sampleLeases(ctx)
		if i%5 == 0 {
			h.sampleResources()
		}
	}
}

func (h *harness) sampleLeases(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, 800*time.Millisecond)
	defer cancel()
	at := time.Now()
	keys, err := h.rdb.Keys(cctx, singleton.KeyPrefix+"*").Result()
	if err != nil {
		return // Redis down or paused: nothing to see
	}
	for _, k := range keys {
		v, err := h.rdb.Get(cctx, k).Result()
		ttl, terr := h.rdb.PTTL(cctx, k).Result()
		if err != nil || terr != nil {
			continue
		}
		h.mu.Lock()
		h.leaseSamples = append(h.leaseSamples, check.LeaseSample{At: at, Task: strings.TrimPrefix(k, singleton.KeyPrefix), Lease: v, TTL: ttl})
		h.mu.Unlock()
	}
}

func (h *harness) sampleResources() {
	for _, s := range h.slots {
		p := s.live()
		if p == nil {
			continue
		}
		m, err := scrape.Series(metricsClient, p.probe, "go_goroutines", "process_open_fds")
		if err != nil {
			continue
		}
		h.mu.Lock()
		h.resourceSamples = append(h.resourceSamples, check.ResourceSample{Proc: s.name, Pid: p.pid, At: time.Now(),
			Goroutines: int(m["go_goroutines"]), FDs: int(m["process_open_fds"]), Conns: procstat.Established(p.pid)})
		_, dumped := h.earlyDumps[p.pid]
		h.mu.Unlock()
		if age := time.Since(p.start); !dumped && age > 50*time.Second && age < 90*time.Second {
			if d, err := goroutines(p.http); err == nil {
				h.mu.Lock()
				h.earlyDumps[p.pid] = d
				h.mu.Unlock()
			}
		}
	}
}

// quiet waits, after the faults, until everything the run started has
// drained: every message and fragment extracted, every due prompt fired,
// no task retrying, none left pending or active without a live worker.
// It returns what was still stuck at MaxQuiet.
func (h *harness) quiet(ctx context.Context, from time.Time) []check.Stuck {
	insp := asynq.NewInspectorFromRedisClient(h.rdb)
	pendingSince := map[string]time.Time{}
	var last []check.Stuck
	for {
		now := time.Now()
		last = h.undrained(ctx, insp, pendingSince, now)
		if len(last) == 0 && now.Sub(from) >= h.o.MinQuiet {
			h.logf("drained %v after the faults", now.Sub(from).Round(time.Second))
			return nil
		}
		if now.Sub(from) >= h.o.MaxQuiet {
			h.logf("not drained %v after the faults: %d stuck", h.o.MaxQuiet, len(last))
			return last
		}
		select {
		case <-ctx.Done():
			return last
		case <-time.After(2 * time.Second):
		}
	}
}

func (h *harness) undrained(ctx context.Context, insp *asynq.Inspector, pendingSince map[string]time.Time, now time.Time) []check.Stuck {
	var out []check.Stuck
	done, err := h.rdb.ZRange(ctx, extract.DoneKey, 0, -1).Result()
	if err != nil {
		return []check.Stuck{{What: "redis", ID: "unreadable", Detail: err.Error()}}
	}
	doneSet := map[string]bool{}
	for _, d := range done {
		doneSet[d] = true
	}
	anchor, _ := legacy.ReadHandOver(ctx, h.rdb, jobs.LimbicAnchoringWorker)
	h.bot.mu.Lock()
	msgs := slices.Clone(h.bot.messages)
	frags := slices.Clone(h.bot.fragments)
	ps := slices.Clone(h.bot.prompts)
	h.bot.mu.Unlock()
	waiting := 0
	for _, m := range msgs {
		if m.user && m.time.After(anchor) && !doneSet[m.key] {
			waiting++
		}
	}
	for _, f := range frags {
		if !doneSet[f] {
			waiting++
		}
	}
	if waiting > 0 {
		out = append(out, check.Stuck{What: "extraction", ID: "backlog", Detail: fmt.Sprintf("%d messages and fragments not extracted", waiting)})
	}
	due, err := h.rdb.ZRangeByScore(ctx, prompts.DueKey, &redis.ZRangeBy{Min: "-inf", Max: fmt.Sprint(now.Add(-4 * time.Second).UnixMilli())}).Result()
	if err == nil && len(due) > 0 {
		known := map[string]bool{}
		for _, p := range ps {
			known[p.ID] = true
		}
		for _, id := range due {
			if known[id] {
				out = append(out, check.Stuck{What: "prompt", ID: id, Detail: "due and not fired"})
			}
		}
	}
	queues, err := insp.Queues()
	if err != nil {
		return append(out, check.Stuck{What: "redis", ID: "queues", Detail: err.Error()})
	}
	seen := map[string]bool{}
	for _, q := range queues {
		if ts, err := insp.ListPendingTasks(q, asynq.PageSize(1000)); err == nil {
			for _, t := range ts {
				seen[t.ID] = true
				if _, ok := pendingSince[t.ID]; !ok {
					pendingSince[t.ID] = now
				}
				if now.Sub(pendingSince[t.ID]) > 20*time.Second {
					out = append(out, check.Stuck{What: "task", ID: t.ID, Detail: fmt.Sprintf("pending for %v in %s", now.Sub(pendingSince[t.ID]).Round(time.Second), q)})
				}
			}
		}
		// An active task's worker extends its lease every 5 s; one whose
		// lease ran out is its dead worker's, until the recoverer requeues it.
		if ls, err := h.rdb.ZRangeByScoreWithScores(ctx, "asynq:{"+q+"}:lease", &redis.ZRangeBy{Min: "-inf", Max: fmt.Sprint(now.Unix())}).Result(); err == nil {
			for _, z := range ls {
				id, _ := z.Member.(string)
				out = append(out, check.Stuck{What: "task", ID: id, Detail: fmt.Sprintf("active in %s with a lease expired at %s: no live worker runs it",
					q, time.Unix(int64(z.Score), 0).Format("15:04:05"))})
			}
		}
		if ts, err := insp.ListRetryTasks(q, asynq.PageSize(1000)); err == nil {
			for _, t := range ts {
				out = append(out, check.Stuck{What: "task", ID: t.ID, Detail: fmt.Sprintf("retrying in %s (retried %d, next at %s): %s", q, t.Retried,
					t.NextProcessAt.Format("15:04:05"), clip(t.LastErr, 200))})
			}
		}
		if ts, err := insp.ListScheduledTasks(q, asynq.PageSize(1000)); err == nil {
			for _, t := range ts {
				if now.Sub(t.NextProcessAt) > 15*time.Second {
					out = append(out, check.Stuck{What: "task", ID: t.ID, Detail: fmt.Sprintf("scheduled in %s for %s, overdue", q, t.NextProcessAt.Format("15:04:05"))})
				}
			}
		}
	}
	for id := range pendingSince {
		if !seen[id] {
			delete(pendingSince, id)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// graphOf is the run's knowledge graph, read directly (not through a
// worker's proxy).
func (h *harness) graphOf(name string) (*graph.Graph, *redis.Client) {
	c := redis.NewClient(&redis.Options{Addr: h.falkor.Addr, ReadTimeout: 2 * time.Minute, MaxRetries: -1})
	return graph.New(c, name), c
}

// saveGrowth writes, for each worker alive since its early dump, the
// goroutine stacks it holds more of at the end than then, to
// logs/<name>.growth.txt: what to read when the resource invariant fails.
func (h *harness) saveGrowth() {
	h.mu.Lock()
	early := maps.Clone(h.earlyDumps)
	h.mu.Unlock()
	h.stackGrowth(early, func(s *slot, pid, more int, report string) {
		_ = os.WriteFile(filepath.Join(h.dir, "logs", s.name+".growth.txt"),
			[]byte(fmt.Sprintf("pid %d: %d goroutines more at the end than a minute after its start, in these stacks:\n\n%s", pid, more, report)), 0o644)
	})
}
