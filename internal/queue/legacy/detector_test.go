package legacy

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/queue/events"
	"github.com/stargazer/stargazer-jobs/internal/testkit/poll"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/syncbuf"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// pythonEvent is what the original's BackgroundScheduler._loop publishes
// after a run of task (publish_debug_event, mirrored by events.Event).
func pythonEvent(t *testing.T, task string, end time.Time, dur time.Duration) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{
		"topic": "scheduler_task_run", "source": "scheduler", "status": "ok",
		"duration_ms": float64(dur.Milliseconds()), "preview": "task=" + task + " status=ok",
		"payload": map[string]any{"task": task, "error": ""}, "ts": float64(end.UnixMicro()) / 1e6,
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type fixture struct {
	rdb  *redis.Client
	logs *syncbuf.Buffer
	m    *Metrics
	reg  *prometheus.Registry
}

func newFixture(t *testing.T) *fixture {
	r := redistest.Start(t)
	reg := prometheus.NewRegistry()
	return &fixture{rdb: r.Client(t), logs: &syncbuf.Buffer{}, m: NewMetrics(reg), reg: reg}
}

// detector is one worker's detector scheduling kg_decay_task every hour and
// channel_heartbeat every day (queued), and journal_stream on its node.
func (f *fixture) detector(now time.Time) *Detector {
	return &Detector{
		Redis: f.rdb, Channel: "stargazer:debug_events", Metrics: f.m, Window: 720 * time.Hour,
		Logger: slog.New(slog.NewJSONHandler(f.logs, nil)), Now: func() time.Time { return now },
		Schedules: map[string]Schedule{
			jobs.KGDecay:          {Interval: time.Hour, Queued: true},
			jobs.ChannelHeartbeat: {Interval: 24 * time.Hour, Queued: true},
			jobs.JournalStream:    {Interval: 10 * time.Second},
		},
	}
}

func (f *fixture) count(task string) float64 {
	return testutil.ToFloat64(f.m.runs.WithLabelValues(task))
}

func (f *fixture) record(t *testing.T, task string) Record {
	t.Helper()
	rs, err := Read(context.Background(), f.rdb, []string{task})
	if err != nil {
		t.Fatal(err)
	}
	return rs[0]
}

// Three workers receive every event; a Python run is counted, logged and
// stood down for once, and the log names where the original registers it.
func TestAPythonRunIsCountedOnceAcrossWorkersAndNamesItsService(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	now := time.Now()
	ds := []*Detector{f.detector(now), f.detector(now), f.detector(now)}
	end := now.Add(-time.Second)
	for _, ev := range [][]byte{pythonEvent(t, "kg_decay", end, 3*time.Second), pythonEvent(t, "kg_decay_task", end.Add(time.Minute), time.Second)} {
		counted := 0
		for _, d := range ds {
			if d.Handle(ctx, ev) {
				counted++
			}
		}
		if counted != 1 {
			t.Fatalf("%d workers counted one Python run, want 1", counted)
		}
	}
	if n := f.count(jobs.KGDecay); n != 2 {
		t.Errorf("stargazer_legacy_runs_total{task=kg_decay_task} = %v, want 2", n)
	}
	logs := f.logs.String()
	if strings.Count(logs, "the Python scheduler ran kg_decay_task too") != 2 || !strings.Contains(logs, "consolidation_main.py (as kg_decay)") ||
		!strings.Contains(logs, `"this_run_from":"consolidation_main.py"`) || !strings.Contains(logs, `"this_run_from":"build_scheduler"`) {
		t.Errorf("want one warning per run naming the task and consolidation_main.py:\n%s", logs)
	}
	rec := f.record(t, jobs.KGDecay)
	wantUntil := end.Add(time.Minute).Add(90 * time.Minute).UnixMilli()
	if rec.Count != 2 || rec.As["kg_decay"] != 1 || rec.As["kg_decay_task"] != 1 || rec.StandDownUntil.UnixMilli() != wantUntil ||
		rec.LastStart.UnixMilli() != end.Add(time.Minute-time.Second).UnixMilli() {
		t.Errorf("record %+v; want 2 runs, one per name, stand-down until %v", rec, time.UnixMilli(wantUntil))
	}
	until, err := StandDowns{Redis: f.rdb, Now: func() time.Time { return now }}.Until(ctx, jobs.KGDecay)
	if err != nil || until.UnixMilli() != wantUntil {
		t.Errorf("Until = %v, %v; want %v", until, err, time.UnixMilli(wantUntil))
	}
	if until, _ := (StandDowns{Redis: f.rdb, Now: func() time.Time { return time.UnixMilli(wantUntil) }}).Until(ctx, jobs.KGDecay); !until.IsZero() {
		t.Errorf("still standing down at the end of the stand-down: %v", until)
	}
}

// The Go workers' own events, marked or (older workers) carrying a task
// ID, and everything that is not a Python scheduler run, count nothing.
func TestOwnEventsAndHostileMessagesCountNothing(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	now := time.Now()
	d := f.detector(now)
	own := func(payload map[string]any) []byte {
		b, _ := json.Marshal(events.Event{Topic: "scheduler_task_run", Source: "scheduler", Status: "ok", Payload: payload, TS: float64(now.Unix())})
		return b
	}
	huge := append(pythonEvent(t, "kg_decay_task", now, time.Second), []byte(strings.Repeat(" ", maxEvent))...)
	for name, raw := range map[string][]byte{
		"a Go worker's event":                    own(map[string]any{"task": jobs.KGDecay, "error": "", "task_id": "kg_decay_task@1", "origin": events.Origin}),
		"a node-local round of a Go worker":      own(map[string]any{"task": jobs.JournalStream, "error": "", "origin": events.Origin}),
		"an older Go worker's event (a task ID)": own(map[string]any{"task": jobs.KGDecay, "error": "", "task_id": "kg_decay_task@2"}),
		"another topic":                          []byte(`{"topic":"kg_decay","source":"scheduler","payload":{"task":"kg_decay_task"}}`),
		"another source":                         []byte(`{"topic":"scheduler_task_run","source":"bot","payload":{"task":"kg_decay_task"}}`),
		"not JSON":                               []byte(`scheduler_task_run {{{`),
		"a payload task that is not a string":    []byte(`{"topic":"scheduler_task_run","source":"scheduler","payload":{"task":["kg_decay_task"]}}`),
		"a task the original does not declare":   pythonEvent(t, "drop_all_tables", now, time.Second),
		"an oversized message":                   huge,
	} {
		if d.Handle(ctx, raw) {
			t.Errorf("%s: counted as a Python run", name)
		}
	}
	if n := f.count(jobs.KGDecay) + f.count(jobs.JournalStream); n != 0 {
		t.Errorf("%v Python runs counted, want 0", n)
	}
	if rec := f.record(t, jobs.KGDecay); rec.Seen() {
		t.Errorf("record %+v, want none", rec)
	}
}

// A time the sender made up is not believed; a task this worker does not
// schedule is recorded (for the hand-over point) but neither counted nor
// stood down for; a node-local task is counted but not stood down for;
// outside the cut-over window nothing stands down.
func TestWhatARunChangesDependsOnTheGoSchedule(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	now := time.Now()
	d := f.detector(now)
	if !d.Handle(ctx, pythonEvent(t, jobs.ChannelHeartbeat, now.Add(1000*time.Hour), -time.Hour)) {
		t.Fatal("not counted")
	}
	if rec := f.record(t, jobs.ChannelHeartbeat); rec.LastEnd.UnixMilli() != now.UnixMilli() || rec.LastStart.UnixMilli() != now.UnixMilli() {
		t.Errorf("a run ending 1000 h from now, lasting -1 h: recorded %v-%v, want the receive time %v", rec.LastStart, rec.LastEnd, now)
	}
	if d.Handle(ctx, pythonEvent(t, jobs.AnamnesisDigest, now, 2*time.Second)) {
		t.Error("a task this worker does not schedule was counted")
	}
	if rec := f.record(t, jobs.AnamnesisDigest); rec.Count != 0 || rec.LastStart.UnixMilli() != now.Add(-2*time.Second).UnixMilli() || !rec.StandDownUntil.IsZero() {
		t.Errorf("unscheduled task: record %+v; want its start kept, nothing counted or stood down for", rec)
	}
	if !d.Handle(ctx, pythonEvent(t, jobs.JournalStream, now, time.Second)) || !f.record(t, jobs.JournalStream).StandDownUntil.IsZero() {
		t.Error("a node-local task: want counted, not stood down for")
	}
	if _, err := StartWindow(ctx, f.rdb, now.Add(-721*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if !d.Handle(ctx, pythonEvent(t, jobs.KGDecay, now, time.Second)) {
		t.Fatal("not counted")
	}
	if rec := f.record(t, jobs.KGDecay); !rec.StandDownUntil.IsZero() {
		t.Errorf("outside the cut-over window: stand down until %v, want none", rec.StandDownUntil)
	}
	if !strings.Contains(f.logs.String(), "outside the cut-over window") {
		t.Errorf("the warning does not say the Go task ran too:\n%s", f.logs.String())
	}
}

// The hand-over point is the start of the last Python run seen, else the
// first call; it never moves afterwards.
func TestHandOverPointIsTheLastPythonRunElseTheFirstGoRun(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	now := time.Now()
	f.detector(now).Handle(ctx, pythonEvent(t, jobs.AutoKGExtraction, now.Add(-3*time.Hour), 10*time.Minute))
	h := HandOver{Redis: f.rdb, Now: func() time.Time { return now }}
	for i := range 2 {
		p, err := h.Point(ctx, jobs.AutoKGExtraction)
		if want := now.Add(-3*time.Hour - 10*time.Minute).UnixMilli(); err != nil || p.UnixMilli() != want {
			t.Fatalf("call %d: point %v, %v; want the start of the Python run, %v", i, p, err, time.UnixMilli(want))
		}
		f.detector(now).Handle(ctx, pythonEvent(t, jobs.AutoKGExtraction, now, time.Second)) // later runs do not move it
	}
	p, err := h.Point(ctx, jobs.LimbicAnchoringWorker)
	if err != nil || p.UnixMilli() != now.UnixMilli() {
		t.Errorf("no Python run seen: point %v, %v; want the first call, %v", p, err, now)
	}
	later := HandOver{Redis: f.rdb, Now: func() time.Time { return now.Add(time.Hour) }}
	if p2, _ := later.Point(ctx, jobs.LimbicAnchoringWorker); !p2.Equal(p) {
		t.Errorf("point moved from %v to %v", p, p2)
	}
	if got, _ := ReadHandOver(ctx, f.rdb, jobs.LimbicAnchoringWorker); !got.Equal(p) {
		t.Errorf("ReadHandOver = %v, want %v", got, p)
	}
}

// Run receives what is published on the channel.
func TestRunReceivesEventsPublishedOnTheChannel(t *testing.T) {
	f := newFixture(t)
	d := f.detector(time.Now())
	d.Now = nil
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	for i := 0; f.count(jobs.KGDecay) == 0; i++ {
		if i > 100 {
			t.Fatal("no event received in 10 s")
		}
		// Published until the subscription is up; each is a distinct run.
		f.rdb.Publish(ctx, d.Channel, pythonEvent(t, jobs.KGDecay, time.Now(), time.Duration(i)*time.Millisecond))
		time.Sleep(100 * time.Millisecond)
	}
	poll.Until(t, "the record written", func() bool { return f.record(t, jobs.KGDecay).Count >= 1 })
}

// A Redis that refuses SUBSCRIBE is retried with a backoff, not in a
// loop, and leaves no connection open behind each attempt.
func TestARefusedSubscriptionIsRetriedWithABackoff(t *testing.T) {
	srv := redistest.Start(t, "--rename-command", "SUBSCRIBE", "")
	rdb := srv.Client(t)
	logs := &syncbuf.Buffer{}
	d := &Detector{Redis: rdb, Channel: "stargazer:debug_events", Logger: slog.New(slog.NewJSONHandler(logs, nil))}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.Run(ctx); close(done) }()
	time.Sleep(4 * time.Second)
	clients, err := rdb.ClientList(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	// Attempts at 0, 1, 3 s (1 s, then 2 s of backoff).
	if n := strings.Count(logs.String(), "subscription lost"); n < 2 || n > 4 {
		t.Errorf("%d failed subscriptions logged in 4 s, want 3 (backoff 1 s, 2 s):\n%s", n, logs.String())
	}
	if n := strings.Count(clients, "\n"); n > 3 {
		t.Errorf("%d Redis connections open after refused subscriptions:\n%s", n, clients)
	}
}
