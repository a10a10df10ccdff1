package e2e

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/kg/extract"
	"github.com/stargazer/stargazer-jobs/internal/kg/extract/extracttest"
	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
	"github.com/stargazer/stargazer-jobs/internal/store/msgcache"
	"github.com/stargazer/stargazer-jobs/internal/testkit/falkortest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/kgload"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// The extraction backlog of these scenarios: 40 channels of 40 messages,
// dated within limbic_anchoring_worker's hour of lookback.
const (
	kgChannels   = 40
	kgPerChannel = 40
)

var kgBase = time.Now().Add(-30 * time.Minute).Truncate(time.Second)

// kgRun is one extraction run: a Redis with the backlog, a FalkorDB, the
// LLM fake and worker processes.
type kgRun struct {
	t *testing.T
	// rdb is the bot's Redis (the messages), qdb the job system's (the
	// queue, cursors and ledger): the same in the one-redis layout.
	rdb, qdb *redis.Client
	reds     redises
	url      string
	falkor   *falkortest.Server
	g        *graph.Graph
	llm      *kgload.LLM
	msgs     map[msgcache.Channel][]msgcache.Message
	workers  []*kgload.Worker
}

func newKGRun(t *testing.T, latency time.Duration) *kgRun {
	return newKGRunIn(t, latency, "one-redis")
}

func newKGRunIn(t *testing.T, latency time.Duration, layout string) *kgRun {
	reds := startRedises(t, layout)
	r := &kgRun{t: t, rdb: reds.bot.Client(t), reds: reds, url: reds.bot.URL(), falkor: falkortest.Start(t), llm: kgload.StartLLM(t, latency)}
	r.qdb = r.rdb
	if reds.apart {
		r.qdb = reds.queue.Client(t)
	}
	r.g = graph.New(r.falkor.Client(t), "kg")
	r.msgs = kgload.Seed(t, r.rdb, kgChannels, 0, kgPerChannel, kgBase)
	return r
}

func (r *kgRun) start(n int, extra map[string]string) {
	env := kgload.Env(r.url, r.falkor.URL(), r.llm.BaseURL(), r.reds.env(extra))
	for range n {
		r.workers = append(r.workers, kgload.StartWorker(r.t, binary, env))
	}
}

// plan enqueues a planner run and waits until every channel has settled.
func (r *kgRun) plan(timeout time.Duration) {
	ctx := context.Background()
	if err := kgload.Plan(ctx, r.qdb); err != nil {
		r.t.Fatal(err)
	}
	if err := kgload.WaitSettled(ctx, r.qdb, r.msgs, timeout); err != nil {
		r.t.Fatalf("%v\n%s", err, r.workers[len(r.workers)-1].Logs())
	}
}

// checkExactlyOnce checks the ledger: every message extracted, none held.
func (r *kgRun) checkExactlyOnce() {
	ctx := context.Background()
	done, _ := r.qdb.ZCard(ctx, extract.DoneKey).Result()
	claims, _ := r.qdb.HLen(ctx, extract.ClaimsKey).Result()
	if int(done) != kgload.Count(r.msgs) || claims != 0 {
		r.t.Fatalf("ledger: %d extracted of %d, %d claims left", done, kgload.Count(r.msgs), claims)
	}
}

// checkSentOnce checks that every message reached the model once (texts
// can repeat in the corpus: each as often as it occurs).
func (r *kgRun) checkSentOnce() {
	want := map[string]int{}
	for _, ms := range r.msgs {
		for _, m := range ms {
			want[m.Text]++
		}
	}
	sent := kgload.Sent(r.llm.Calls())
	for text, n := range want {
		if sent[text] != n {
			r.t.Fatalf("%q sent %d times, in %d message(s)", text, sent[text], n)
		}
	}
}

var (
	refOnce sync.Once
	refSnap string
)

// reference is the graph one worker process makes of the backlog.
func reference(t *testing.T) string {
	refOnce.Do(func() {
		r := newKGRun(t, 0)
		r.start(1, nil)
		r.plan(2 * time.Minute)
		r.checkExactlyOnce()
		refSnap = kgload.Snapshot(t, r.g)
		if n := len(snapshotLines(refSnap)); n < kgChannels*kgPerChannel {
			t.Fatalf("the reference graph has %d lines", n)
		}
	})
	if refSnap == "" {
		t.Fatal("no reference run")
	}
	return refSnap
}

// Three workers clear the backlog, each message extracted exactly once: the
// graph is the one a single worker makes.
//
// In the queue-redis layout the messages are on the bot's Redis and the
// queue, plans, cursors (sg:ka:cursor:*, the one sg: family of the job
// system's) and ledger on the other.
func TestThreeWorkersExtractEveryMessageExactlyOnce(t *testing.T) {
	for _, layout := range layouts {
		t.Run(layout, func(t *testing.T) { threeWorkersExtract(t, layout) })
	}
}

func threeWorkersExtract(t *testing.T, layout string) {
	want := reference(t)
	r := newKGRunIn(t, 200*time.Millisecond, layout)
	r.start(3, nil)
	r.plan(3 * time.Minute)
	r.checkExactlyOnce()
	if got := kgload.Snapshot(t, r.g); got != want {
		t.Fatalf("the graph of three workers differs from one worker's:\n%s", diff(want, got))
	}
	r.checkSentOnce()
	ran := 0
	for _, w := range r.workers {
		if kgload.Items([]*kgload.Worker{w}, jobs.KGExtractUnit, "llm_calls") > 0 {
			ran++
		}
	}
	if ran < 2 || r.llm.Peak() <= 10 {
		t.Fatalf("%d workers ran units, at most %d calls at once: the work did not spread", ran, r.llm.Peak())
	}
	r.reds.checkApart(t)
}

// A worker SIGKILLed in the middle of its units loses nothing and
// duplicates nothing: asynq hands its units to the survivor once their
// lease expires, the engine finishes or retakes its batches, and the
// cursors wait for them.
func TestAWorkerKilledMidUnitLosesAndDuplicatesNothing(t *testing.T) {
	want := reference(t)
	r := newKGRun(t, 1500*time.Millisecond)
	r.start(2, map[string]string{"KG_EXTRACTION_CLAIM_TTL": "10s"})
	if err := kgload.Plan(context.Background(), r.rdb); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	// The kill must land while worker 0 itself has calls in flight: the
	// fake's count is both workers', so ask worker 0 for its own.
	for r.workers[0].Metric("stargazer_llm_in_flight") < 3 || r.workers[1].Metric("stargazer_llm_in_flight") < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the units did not start on both workers")
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.workers[0].Kill() // mid-call: its units' calls are in flight
	if err := kgload.WaitSettled(context.Background(), r.rdb, r.msgs, 4*time.Minute); err != nil {
		t.Fatalf("%v\n%s", err, r.workers[1].Logs())
	}
	r.checkExactlyOnce()
	if got := kgload.Snapshot(t, r.g); got != want {
		t.Fatalf("the graph after a SIGKILL differs from an undisturbed run's:\n%s", diff(want, got))
	}
	// The kill did interrupt calls: their messages were asked about again
	// (and extracted once all the same).
	occurs := map[string]int{}
	for _, ms := range r.msgs {
		for _, m := range ms {
			occurs[m.Text]++
		}
	}
	resent := 0
	for text, n := range kgload.Sent(r.llm.Calls()) {
		if n > occurs[text] {
			resent++
		}
	}
	if resent == 0 {
		t.Fatal("no message was sent again: the kill interrupted no unit")
	}
	t.Logf("%d messages were in calls the kill interrupted", resent)
}

// A 429 storm slows every worker, not only the one that got it: after a
// 429 no worker calls the endpoint until its Retry-After, and nothing is
// lost.
func TestA429StormSlowsEveryWorkerAndLosesNothing(t *testing.T) {
	want := reference(t)
	r := newKGRun(t, 300*time.Millisecond)
	var mu sync.Mutex
	var storm []time.Time // when each 429 was answered
	r.llm.SetHook(func(n int, at time.Time, _ extracttest.Call) *extracttest.Reply {
		if n < 15 || n >= 45 {
			return nil
		}
		mu.Lock()
		storm = append(storm, at)
		mu.Unlock()
		return &extracttest.Reply{Status: http.StatusTooManyRequests, RetryAfter: "2", Body: `{"error":{"message":"rate limited"}}`}
	})
	r.start(3, nil)
	r.plan(4 * time.Minute)
	r.checkExactlyOnce()
	if got := kgload.Snapshot(t, r.g); got != want {
		t.Fatalf("the graph after a 429 storm differs from an undisturbed run's:\n%s", diff(want, got))
	}
	mu.Lock()
	defer mu.Unlock()
	first := storm[0]
	// Calls already admitted when the first 429 came may still arrive
	// within a few milliseconds; after that, none until the pause ends.
	for _, at := range r.llm.Arrivals() {
		if at.After(first.Add(250*time.Millisecond)) && at.Before(first.Add(1750*time.Millisecond)) {
			t.Fatalf("a call arrived %s after the first 429 (Retry-After 2 s)", at.Sub(first))
		}
	}
	limited := 0.0
	for i, w := range r.workers {
		paused := w.Metric(`stargazer_llm_budget_waits_total{endpoint="chat",reason="paused"}`)
		if paused < 1 {
			t.Errorf("worker %d never waited out a pause", i)
		}
		limited += w.Metric(`stargazer_llm_rate_limited_total{endpoint="chat"}`)
	}
	if int(limited) != len(storm) {
		t.Errorf("workers counted %v 429s, the fake sent %d", limited, len(storm))
	}
}

// Planning again and again while units are in flight, and while new
// messages arrive, enqueues no unit twice: every unit that ran was enqueued
// once, made one call, and no message reached the model twice.
func TestReplanningWhileUnitsAreInFlightEnqueuesNoDuplicate(t *testing.T) {
	r := newKGRun(t, 500*time.Millisecond)
	r.start(2, nil)
	ctx := context.Background()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(250 * time.Millisecond):
				if err := kgload.Plan(ctx, r.rdb); err != nil {
					t.Error(err)
					return
				}
			}
		}
	})
	time.Sleep(time.Second)
	// More messages arrive while the first units run: they are planned
	// after the chains' tails.
	more := kgload.Seed(t, r.rdb, kgChannels, kgPerChannel, 10, kgBase)
	for c, ms := range more {
		r.msgs[c] = append(r.msgs[c], ms...)
	}
	err := kgload.WaitSettled(ctx, r.rdb, r.msgs, 3*time.Minute)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	r.checkExactlyOnce()
	insp := asynq.NewInspectorFromRedisClient(r.rdb)
	defer insp.Close()
	done, err := insp.ListCompletedTasks(jobs.QueueExtraction, asynq.PageSize(10_000))
	if err != nil {
		t.Fatal(err)
	}
	enqueued := kgload.Items(r.workers, jobs.LimbicAnchoringWorker, "units_enqueued")
	planned := kgload.Items(r.workers, jobs.LimbicAnchoringWorker, "units_planned")
	calls := len(r.llm.Calls())
	if int(enqueued) != len(done) || int(planned) != len(done) || calls != len(done) {
		t.Fatalf("%v units planned, %v enqueued, %d completed, %d LLM calls: want all equal", planned, enqueued, len(done), calls)
	}
	r.checkSentOnce()
	runs := kgload.Items(r.workers, jobs.LimbicAnchoringWorker, "channels")
	if runs < 5*kgChannels {
		t.Fatalf("the planner ran only %v channel-passes; the test did not re-plan while units ran", runs)
	}
}

// Units completing out of order never move a cursor past an unsettled
// message: while a channel's first unit is held up at the model, its later
// messages (in another unit) are extracted and settled, and the cursor
// stays before the first; once that unit settles, it moves to the end.
func TestCursorsNeverPassAnUnsettledMessageWhenUnitsFinishOutOfOrder(t *testing.T) {
	r := newKGRun(t, 100*time.Millisecond)
	ch := msgcache.Channel{Platform: "discord", ID: "1000"}
	first, last := r.msgs[ch][0], r.msgs[ch][len(r.msgs[ch])-1]
	release := make(chan struct{})
	r.llm.SetHook(func(_ int, _ time.Time, c extracttest.Call) *extracttest.Reply {
		if slices.Contains(c.Messages, first.Text) {
			<-release // the channel's first unit waits at the model
		}
		return nil
	})
	r.start(2, nil)
	ctx := context.Background()
	if err := kgload.Plan(ctx, r.rdb); err != nil {
		t.Fatal(err)
	}
	key := kgload.CursorPrefix + ch.String()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		// The rest of the backlog settles around the held unit...
		n, err := kgload.Settled(ctx, r.rdb, r.msgs)
		if err != nil {
			t.Fatal(err)
		}
		if cur := r.rdb.HGet(ctx, key, "ts").Val(); cur != "" {
			t.Fatalf("the cursor moved to %s while the channel's first unit was unsettled", cur)
		}
		if n == len(r.msgs)-1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d channels settled", n, len(r.msgs))
		}
		time.Sleep(50 * time.Millisecond)
	}
	// ...including the channel's own later messages, out of order.
	if _, err := r.rdb.ZScore(ctx, extract.DoneKey, last.Key).Result(); err != nil {
		t.Fatalf("the channel's last message is not extracted while its first unit waits: %v", err)
	}
	if cur := r.rdb.HGet(ctx, key, "ts").Val(); cur != "" {
		t.Fatalf("the cursor moved to %s while the channel's first unit was unsettled", cur)
	}
	close(release)
	if err := kgload.WaitSettled(ctx, r.rdb, r.msgs, time.Minute); err != nil {
		t.Fatal(err)
	}
	r.checkExactlyOnce()
}

// diff shows the first lines where two snapshots differ.
func diff(want, got string) string {
	wl, gl := snapshotLines(want), snapshotLines(got)
	var out []string
	for i := 0; i < max(len(wl), len(gl)) && len(out) < 10; i++ {
		var w, g string
		if i < len(wl) {
			w = wl[i]
		}
		if i < len(gl) {
			g = gl[i]
		}
		if w != g {
			out = append(out, fmt.Sprintf("line %d: want %q, got %q", i, w, g))
		}
	}
	return fmt.Sprintf("%d vs %d lines; %v", len(wl), len(gl), out)
}

func snapshotLines(s string) []string { return strings.Split(strings.TrimSuffix(s, "\n"), "\n") }
