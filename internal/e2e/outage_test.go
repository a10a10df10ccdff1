package e2e

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/scrape"
)

// outageLength is the Redis outage of TestReliabilityRedisOutage:
// SGJOBS_OUTAGE (a Go duration, e.g. 10m), 75 s by default so that the
// normal suite can afford it. scripts/reliability.sh runs the long ones.
func outageLength(t *testing.T) time.Duration {
	v := os.Getenv("SGJOBS_OUTAGE")
	if v == "" {
		return 75 * time.Second
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("SGJOBS_OUTAGE=%q: want a positive Go duration such as 10m", v)
	}
	return d
}

// usage is what a process holds: open file descriptors, goroutines and
// resident memory.
type usage struct {
	fds, goroutines int
	rss             float64 // bytes, anonymous (see procRSS), median of the samples
	rssMax          float64 // the highest sample
	rssFile         float64 // bytes, file-backed
	heap            float64 // Go heap in use
}

func (u usage) String() string {
	return fmt.Sprintf("%d fds, %d goroutines, %.1f MiB RSS (up to %.1f; +%.1f MiB file-backed; Go heap in use %.1f MiB)",
		u.fds, u.goroutines, u.rss/(1<<20), u.rssMax/(1<<20), u.rssFile/(1<<20), u.heap/(1<<20))
}

// procRSS reads a process's resident memory from /proc/PID/status: the
// anonymous part (heap, stacks: what a leak grows) and the file-backed
// part (the executable's pages, mapped in as code first runs, shared and
// reclaimable: a process that has run its outage and reconnection code
// paths has more of them, which is not a leak).
func procRSS(pid int) (anon, file float64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) != 3 || f[2] != "kB" {
			continue
		}
		n, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "RssAnon:":
			anon = n * 1024
		case "RssFile:":
			file = n * 1024
		}
	}
	return anon, file, nil
}

var scrapeClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// scrape reads the named series from p's /metrics (no keep-alive, so the
// scrape leaves no connection behind).
func (p *proc) scrape(names ...string) (map[string]float64, error) {
	return scrape.Series(scrapeClient, p.Addr, names...)
}

// usage samples p five times, a second apart, and keeps the lowest file
// descriptor and goroutine counts (a sample can catch a scrape's own
// connection) and the median RSS.
func (p *proc) usage(t *testing.T) usage {
	t.Helper()
	var fds, gs []int
	var rss, rssFile, heap []float64
	for range 5 {
		m, err := p.scrape("go_goroutines", "go_memstats_heap_inuse_bytes")
		if err != nil {
			t.Fatalf("scraping %d: %v", p.Pid(), err)
		}
		time.Sleep(200 * time.Millisecond)
		ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.Pid()))
		if err != nil {
			t.Fatal(err)
		}
		anon, file, err := procRSS(p.Pid())
		if err != nil {
			t.Fatal(err)
		}
		fds = append(fds, len(ents))
		gs = append(gs, int(m["go_goroutines"]))
		rss, rssFile, heap = append(rss, anon), append(rssFile, file), append(heap, m["go_memstats_heap_inuse_bytes"])
		time.Sleep(800 * time.Millisecond)
	}
	sort.Ints(fds)
	sort.Ints(gs)
	sort.Float64s(rss)
	sort.Float64s(rssFile)
	sort.Float64s(heap)
	return usage{fds: fds[0], goroutines: gs[0], rss: rss[len(rss)/2], rssMax: rss[len(rss)-1], rssFile: rssFile[len(rssFile)/2], heap: heap[len(heap)/2]}
}

// within reports whether after is within 10% of before: file descriptors
// and goroutines (within 2 of a count that small, where 10% is less than
// one), and resident memory, which must not exceed the highest pre-outage
// sample by more than 10%. A process's resident memory moves with the
// garbage collector's cycle by itself (the runtime keeps freed pages up to
// about its heap goal), so the pre-outage value is a band, not a point.
func within(before, after usage) bool {
	ok := func(b, a float64, slack float64) bool { return a <= b*1.1+slack && a >= b*0.9-slack }
	return ok(float64(before.fds), float64(after.fds), 2) && ok(float64(before.goroutines), float64(after.goroutines), 2) && after.rss <= before.rssMax*1.1
}

// lines splits the part of a process's log written in [from, to) into
// JSON lines and others.
func lines(logs string, from, to int) (json, plain int, sample []string) {
	for _, l := range strings.Split(strings.TrimSpace(logs[from:to]), "\n") {
		switch {
		case l == "":
		case strings.HasPrefix(l, "{"):
			json++
		default:
			plain++
			if len(sample) < 3 {
				sample = append(sample, l)
			}
		}
	}
	return json, plain, sample
}

// byComponent counts the JSON lines of logs[from:to] per component.
func byComponent(logs string, from, to int) string {
	n := map[string]int{}
	for _, l := range strings.Split(logs[from:to], "\n") {
		if !strings.HasPrefix(l, "{") {
			continue
		}
		var r struct {
			Component string `json:"component"`
			Level     string `json:"level"`
		}
		_ = json.Unmarshal([]byte(l), &r)
		n[cmp.Or(r.Component, "-")+" "+r.Level]++
	}
	keys := make([]string, 0, len(n))
	for k := range n {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %d", k, n[k])
	}
	return b.String()
}

// scraper scrapes every process's /metrics and /readyz every 2 s, as
// Prometheus and a load balancer would, until stopped.
type scraper struct {
	mu     sync.Mutex
	paused bool
	stop   chan struct{}
	done   chan struct{}
}

func startScraper(ps ...*proc) *scraper {
	s := &scraper{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
			s.mu.Lock()
			paused := s.paused
			s.mu.Unlock()
			if paused {
				continue
			}
			for _, p := range ps {
				for _, path := range []string{"/metrics", "/readyz"} {
					if resp, err := scrapeClient.Get("http://" + p.Addr + path); err == nil {
						resp.Body.Close()
					}
				}
			}
		}
	}()
	return s
}

func (s *scraper) pause(p bool) { s.mu.Lock(); s.paused = p; s.mu.Unlock() }
func (s *scraper) close()       { close(s.stop); <-s.done }

// hit GETs path on p n times (a dashboard user, a scraper).
func (p *proc) hit(path string, n int) {
	for range n {
		if resp, err := scrapeClient.Get("http://" + p.Addr + path); err == nil {
			resp.Body.Close()
		}
	}
}

// steady drives the processes until their memory stops moving: a process
// a minute old has not yet grown its heap to the size the garbage
// collector settles at (measured with no outage at all: resident memory
// rose 12-17% over four minutes), so a baseline taken earlier would make
// any later measurement look like a leak. Each round runs every drive, then
// samples every process 10 s later; it returns their usage once two rounds
// agree within 5% for each process, after at least 10 garbage collections.
// The processes warm up together: one after the other doubled the test's
// warm-up.
func steady(t *testing.T, ps []*proc, drives ...func()) []usage {
	t.Helper()
	deadline := time.Now().Add(4 * time.Minute)
	prev := make([]usage, len(ps))
	for {
		for _, d := range drives {
			d()
		}
		time.Sleep(10 * time.Second)
		cur := make([]usage, len(ps))
		settled := true
		for i, p := range ps {
			cur[i] = p.usage(t)
			m, _ := p.scrape("go_gc_duration_seconds_count")
			if !(prev[i].rss > 0 && m["go_gc_duration_seconds_count"] >= 10 && cur[i].rss <= prev[i].rss*1.05 && cur[i].rss >= prev[i].rss*0.95) {
				settled = false
			}
		}
		if settled {
			for i := range cur {
				cur[i].rssMax = max(cur[i].rssMax, prev[i].rssMax)
			}
			return cur
		}
		if time.Now().After(deadline) {
			t.Logf("memory still moving after 4 min of warm-up: %v then %v", prev, cur)
			return cur
		}
		prev = cur
	}
}

func TestReliabilityRedisOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process scenario with a long Redis outage (SGJOBS_OUTAGE, default 75s)")
	}
	// Mostly waiting (the outage, the settling), and measuring only its own
	// processes: it runs beside the other waiting scenarios, not after them.
	t.Parallel()
	outage := outageLength(t)
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	conn := asynq.RedisClientOpt{Addr: srv.Addr}
	env := map[string]string{"TASK_INTERVALS": "e2e_plain=off,e2e_single=5s", "E2E_SLEEP": "20ms", "WORKER_CONCURRENCY": "4", "QUEUE_METRICS": "false"}
	w := start(t, srv.URL(), env)
	mon := startUntil(t, srv.URL(), map[string]string{"ROLE": "monitor"}, `"msg":"monitor role`)
	sc := startScraper(w, mon)
	defer sc.close()
	batch := 0
	work := func() (lost []string, took time.Duration) {
		batch++
		ids := enqueueLoad(t, conn, fmt.Sprintf("batch%d", batch), 300)
		lost, _, took = waitDone(t, ids, 2*time.Minute, func() map[string]int { return completions(t, rdb) })
		return lost, took
	}
	browse := func() { mon.hit("/dashboard/api/queues", 20); mon.hit("/metrics", 20) }

	// Baseline, at steady state.
	sc.pause(true)
	before := steady(t, []*proc{w, mon}, func() {
		if lost, _ := work(); len(lost) > 0 {
			t.Fatalf("%d warm-up tasks not done", len(lost))
		}
	}, browse)
	wBefore, mBefore := before[0], before[1]
	sc.pause(false)

	wFrom, mFrom := len(w.Logs()), len(mon.Logs())
	if os.Getenv("SGJOBS_CONTROL") == "" {
		srv.Crash()
	}
	time.Sleep(outage)
	wTo, mTo := len(w.Logs()), len(mon.Logs())
	srv.Restart(t)
	back := time.Now()

	// Tasks flow again, on the same processes.
	lost, took := work()
	if len(lost) > 0 {
		t.Errorf("%d of 300 tasks enqueued after the outage not done within 2 min", len(lost))
	}
	singletonBack := waitFor(30*time.Second, func() bool {
		for _, r := range runs(t, rdb, "e2e_single") {
			if r.start.After(back) {
				return true
			}
		}
		return false
	})
	if !singletonBack {
		t.Error("the scheduled singleton did not run again after the outage")
	}
	browse()
	stillRunning(t, []*proc{w, mon}, "the Redis outage")

	// Resources go back to their baseline, measured as the baseline was:
	// idle, 10 s after a batch of work. They are allowed 150 s to: an
	// idle Go process collects garbage only when the runtime forces it
	// (every 2 minutes), and until then its heap goal, and the freed pages
	// the runtime keeps up to it, are those of the burst of work that
	// followed the outage (in CI: RSS 17% above the baseline 100 s after
	// it, with the Go heap in use 4% below).
	var wAfter, mAfter usage
	sc.pause(true)
	time.Sleep(10 * time.Second)
	settled := waitFor(150*time.Second, func() bool {
		wAfter, mAfter = w.usage(t), mon.usage(t)
		return within(wBefore, wAfter) && within(mBefore, mAfter)
	})
	sc.pause(false)
	if !settled {
		t.Errorf("not back within 10%% of the pre-outage baseline:\nworker  before %v, after %v\nmonitor before %v, after %v", wBefore, wAfter, mBefore, mAfter)
	}

	wJSON, wPlain, wSample := lines(w.Logs(), wFrom, wTo)
	mJSON, mPlain, mSample := lines(mon.Logs(), mFrom, mTo)
	if wPlain+mPlain > 0 {
		t.Errorf("plain-text lines outside the JSON log during the outage: worker %d %q, monitor %d %q", wPlain, wSample, mPlain, mSample)
	}
	// One line per component and kind per minute, with a count: a few
	// dozen at most per minute, whatever the outage's length.
	if limit := 20 * (int(outage/time.Minute) + 2); wJSON+wPlain > limit || mJSON+mPlain > limit {
		t.Errorf("worker logged %d lines and monitor %d during a %v outage, want at most %d each", wJSON+wPlain, mJSON+mPlain, outage, limit)
	}
	w.term()
	mon.term()
	figure(t, "Redis down %v under a worker and a monitor: 300 tasks after the outage lost %d (done in %.1fs), singleton ran again %v, restarts 0; lines logged during the outage: worker %d (%d plain text; %s), monitor %d (%d plain text; %s); worker before %v, after %v; monitor before %v, after %v",
		outage, len(lost), took.Seconds(), singletonBack, wJSON+wPlain, wPlain, byComponent(w.Logs(), wFrom, wTo), mJSON+mPlain, mPlain, byComponent(mon.Logs(), mFrom, mTo), wBefore, wAfter, mBefore, mAfter)
}

// asynq v0.26's cancelation subscriber retries a failed SUBSCRIBE every
// 5 s without closing the connection it opened (hibiken/asynq#1095). A
// Redis that refuses SUBSCRIBE (a proxy or managed Redis without pub/sub;
// here the command is renamed away) makes a worker open one more
// connection every 5 s unless that is worked around.
func TestAFailingSubscribeLeaksNoConnections(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process scenario")
	}
	t.Parallel() // a minute of waiting, measuring only its own worker
	srv := redistest.Start(t, "--rename-command", "SUBSCRIBE", "")
	rdb := srv.Client(t)
	w := start(t, srv.URL(), map[string]string{"TASK_INTERVALS": "e2e_plain=off,e2e_single=off"})
	clients := func() int {
		n, _ := rdb.ClientList(context.Background()).Result()
		return strings.Count(n, "\n") - 1 // minus the test's own client
	}
	time.Sleep(5 * time.Second)
	fds0, c0 := w.usage(t).fds, clients()
	time.Sleep(60 * time.Second)
	fds1, c1 := w.usage(t).fds, clients()
	if fds1-fds0 > 2 || c1-c0 > 2 {
		t.Errorf("over 60 s of refused SUBSCRIBEs the worker went from %d to %d fds and from %d to %d Redis connections", fds0, fds1, c0, c1)
	}
	w.term()
	figure(t, "Redis refusing SUBSCRIBE for 60 s: worker fds %d -> %d, its Redis connections %d -> %d", fds0, fds1, c0, c1)
}
