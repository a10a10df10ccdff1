package asynqcompat

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

// These tests read everything back through asynq's public Inspector, the
// API asynqmon uses, never by decoding the bytes themselves.

func inspector(t *testing.T, srv *redistest.Server) *asynq.Inspector {
	t.Helper()
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: srv.Addr})
	t.Cleanup(func() { insp.Close() })
	return insp
}

func optStrings(opts []asynq.Option) []string {
	out := make([]string, len(opts))
	for i, o := range opts {
		out[i] = o.String()
	}
	return out
}

// byID indexes the Inspector's entries, failing on an ID listed twice.
func byID(t *testing.T, insp *asynq.Inspector) map[string]*asynq.SchedulerEntry {
	t.Helper()
	es, err := insp.SchedulerEntries()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*asynq.SchedulerEntry{}
	for _, e := range es {
		if out[e.ID] != nil {
			t.Errorf("entry %s listed twice", e.ID)
		}
		out[e.ID] = e
	}
	return out
}

func TestPublishedEntriesReadBackThroughTheInspector(t *testing.T) {
	now := time.Now().Truncate(time.Millisecond)
	tests := []struct {
		name  string
		entry SchedulerEntry
		spec  string
	}{
		{"never enqueued yet", SchedulerEntry{Task: "kg_decay_task", Interval: time.Hour, Payload: []byte("{}"),
			Opts: []asynq.Option{asynq.Queue("default"), asynq.MaxRetry(3), asynq.Timeout(10 * time.Minute)},
			Next: now.Add(42 * time.Minute)}, "@every 1h"},
		{"enqueued before, singleton", SchedulerEntry{Task: "limbic_dedup_task", Interval: 90 * time.Second, Payload: []byte(`{"k":1}`),
			Opts: []asynq.Option{asynq.Queue("maintenance"), asynq.MaxRetry(5), asynq.Timeout(time.Hour), asynq.Unique(7*time.Hour + 10*time.Minute)},
			Next: now.Add(30 * time.Second), Prev: now.Add(-60 * time.Second)}, "@every 1m30s"},
		{"no payload, no options, sub-second times", SchedulerEntry{Task: "e2e_plain", Interval: 2 * time.Second,
			Next: now.Add(1500 * time.Millisecond), Prev: now.Add(-500 * time.Millisecond)}, "@every 2s"},
		{"binary payload, daily", SchedulerEntry{Task: "channel_heartbeat", Interval: 24 * time.Hour, Payload: []byte{0, 0xff, 0xfe, '\n', 0x80},
			Opts: []asynq.Option{asynq.Queue("critical")}, Next: now.Add(23 * time.Hour), Prev: now.Add(-time.Hour)}, "@every 24h"},
	}
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	insp := inspector(t, srv)
	var all []SchedulerEntry
	for _, tt := range tests {
		all = append(all, tt.entry)
	}
	if err := PublishSchedulerEntries(context.Background(), rdb, all, EntryTTL, time.Now()); err != nil {
		t.Fatal(err)
	}
	got := byID(t, insp)
	if len(got) != len(tests) {
		t.Fatalf("inspector lists %d entries, want %d", len(got), len(tests))
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := tt.entry
			e := got[want.Task]
			if e == nil {
				t.Fatalf("entry %s not listed", want.Task)
			}
			if e.Spec != tt.spec || e.Task.Type() != want.Task || !bytes.Equal(e.Task.Payload(), want.Payload) {
				t.Errorf("spec %q type %q payload %q, want %q %q %q", e.Spec, e.Task.Type(), e.Task.Payload(), tt.spec, want.Task, want.Payload)
			}
			if g, w := optStrings(e.Opts), optStrings(want.Opts); !slices.Equal(g, w) {
				t.Errorf("options %v, want %v", g, w)
			}
			if !e.Next.Equal(want.Next) {
				t.Errorf("next %v, want %v", e.Next, want.Next)
			}
			if !e.Prev.Equal(want.Prev) || e.Prev.IsZero() != want.Prev.IsZero() {
				t.Errorf("prev %v (zero %v), want %v", e.Prev, e.Prev.IsZero(), want.Prev)
			}
		})
	}
}

func TestSpecIsCompactAndAcceptedByAsynq(t *testing.T) {
	srv := redistest.Start(t)
	sched := asynq.NewScheduler(asynq.RedisClientOpt{Addr: srv.Addr}, nil)
	for _, tt := range []struct {
		d    time.Duration
		want string
	}{
		{time.Minute, "@every 1m"}, {24 * time.Hour, "@every 24h"}, {90 * time.Second, "@every 1m30s"},
		{2 * time.Second, "@every 2s"}, {90 * time.Minute, "@every 1h30m"}, {time.Hour + 5*time.Second, "@every 1h0m5s"},
		{10 * time.Minute, "@every 10m"}, {300 * time.Second, "@every 5m"},
	} {
		if got := Spec(tt.d); got != tt.want {
			t.Errorf("Spec(%v) = %q, want %q", tt.d, got, tt.want)
		}
		// asynq's own Scheduler parses it (robfig/cron), so the spec means
		// what asynq users read it as.
		if _, err := sched.Register(Spec(tt.d), asynq.NewTask("t", nil)); err != nil {
			t.Errorf("asynq rejects spec %q: %v", Spec(tt.d), err)
		}
	}
}

func TestEachTaskIsListedOnceHoweverManyPodsPublish(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	insp := inspector(t, srv)
	next := time.Now().Add(time.Minute).Truncate(time.Millisecond)
	entry := func(task string) SchedulerEntry {
		return SchedulerEntry{Task: task, Interval: time.Minute, Next: next, Opts: []asynq.Option{asynq.Queue("default")}}
	}
	oldPods := []SchedulerEntry{entry("a"), entry("b"), entry("c")}
	newPods := []SchedulerEntry{entry("b"), entry("c"), entry("d")} // mid-rollout: a removed, d added
	var wg sync.WaitGroup
	for i := range 6 {
		es := oldPods
		if i%2 == 1 {
			es = newPods
		}
		wg.Go(func() {
			for range 20 {
				if err := PublishSchedulerEntries(context.Background(), rdb, es, EntryTTL, time.Now()); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	got := byID(t, insp)
	if ids := slices.Sorted(func(yield func(string) bool) {
		for id := range got {
			if !yield(id) {
				return
			}
		}
	}); !slices.Equal(ids, []string{"a", "b", "c", "d"}) {
		t.Errorf("entries %v, want the union [a b c d], each once", ids)
	}
}

func TestEntriesVanishWhenNoSchedulerPublishesAndReturnWithTheNextPublish(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	insp := inspector(t, srv)
	es := []SchedulerEntry{{Task: "a", Interval: time.Minute, Next: time.Now().Add(time.Minute)}}
	// The last publish was longer than EntryTTL ago.
	if err := PublishSchedulerEntries(context.Background(), rdb, es, EntryTTL, time.Now().Add(-EntryTTL-2*time.Second)); err != nil {
		t.Fatal(err)
	}
	if got := byID(t, insp); len(got) != 0 {
		t.Errorf("entries published %v ago are still listed: %v", EntryTTL+2*time.Second, got)
	}
	if err := PublishSchedulerEntries(context.Background(), rdb, es, EntryTTL, time.Now()); err != nil {
		t.Fatal(err)
	}
	if got := byID(t, insp); got["a"] == nil {
		t.Error("entry not listed again after a fresh publish")
	}
	if ttl := rdb.TTL(context.Background(), entriesKey("a")).Val(); ttl <= 0 || ttl > EntryTTL {
		t.Errorf("entry list TTL %v, want in (0, %v]", ttl, EntryTTL)
	}
}

func TestSchedulerEnqueuesAreRecordedOnceThroughTheInspector(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	insp := inspector(t, srv)
	client := asynq.NewClient(asynq.RedisClientOpt{Addr: srv.Addr})
	defer client.Close()
	var logs bytes.Buffer
	// Three pods' schedulers race for each occurrence; asynq accepts one.
	pods := []Enqueuer{
		RecordEnqueues(client, rdb, slog.New(slog.NewTextHandler(&logs, nil))),
		RecordEnqueues(client, rdb, slog.New(slog.NewTextHandler(&logs, nil))),
		RecordEnqueues(client, rdb, slog.New(slog.NewTextHandler(&logs, nil))),
	}
	before := time.Now()
	var ids []string
	for occ := range 3 {
		id := "kg_decay_task@" + strconv.Itoa(1000+occ)
		ids = append(ids, id)
		accepted := 0
		for _, p := range pods {
			_, err := p.EnqueueContext(context.Background(), asynq.NewTask("kg_decay_task", nil), asynq.TaskID(id), asynq.Queue("default"))
			switch {
			case err == nil:
				accepted++
			case !errors.Is(err, asynq.ErrTaskIDConflict):
				t.Fatalf("enqueue %s: %v", id, err)
			}
		}
		if accepted != 1 {
			t.Fatalf("occurrence %s accepted %d times", id, accepted)
		}
	}
	after := time.Now()
	events, err := insp.ListSchedulerEnqueueEvents("kg_decay_task")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range events {
		got = append(got, e.TaskID)
		if e.EnqueuedAt.Before(before.Truncate(time.Second)) || e.EnqueuedAt.After(after) {
			t.Errorf("event %s enqueued at %v, outside [%v, %v]", e.TaskID, e.EnqueuedAt, before, after)
		}
	}
	slices.Sort(got)
	if !slices.Equal(got, ids) {
		t.Errorf("history %v, want each enqueued occurrence once: %v", got, ids)
	}
	if logs.Len() > 0 {
		t.Errorf("unexpected log output: %s", logs.String())
	}
}

func TestHistoryKeepsTheNewestThousandEvents(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	insp := inspector(t, srv)
	t0 := time.Unix(1_700_000_000, 0)
	for i := range historyMax + 5 {
		if err := RecordEnqueueEvent(context.Background(), rdb, "t", fmt.Sprintf("t@%d", i), t0.Add(time.Duration(i)*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	events, err := insp.ListSchedulerEnqueueEvents("t", asynq.PageSize(2*historyMax))
	if err != nil {
		t.Fatal(err)
	}
	if len(events) != historyMax {
		t.Fatalf("%d events kept, want %d", len(events), historyMax)
	}
	newest, oldest := events[0], events[len(events)-1]
	if newest.TaskID != fmt.Sprintf("t@%d", historyMax+4) || !newest.EnqueuedAt.Equal(t0.Add((historyMax+4)*time.Second)) {
		t.Errorf("newest event %+v", newest)
	}
	if oldest.TaskID != "t@5" {
		t.Errorf("oldest kept event %s, want t@5", oldest.TaskID)
	}
	if ttl := rdb.TTL(context.Background(), historyPrefix+"t").Val(); ttl <= historyTTL-time.Minute || ttl > historyTTL {
		t.Errorf("history TTL %v, want about %v", ttl, historyTTL)
	}
}

// commandCalls returns the number of calls of each command since the last
// CONFIG RESETSTAT, without the INFO call itself.
func commandCalls(t *testing.T, srv *redistest.Server) map[string]int {
	t.Helper()
	info, err := srv.Client(t).Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for line := range strings.SplitSeq(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":calls=")
		if !ok {
			continue
		}
		n, _ := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
		if name = strings.TrimPrefix(name, "cmdstat_"); name != "info" {
			out[name] = n
		}
	}
	return out
}

func TestAPublishIsOneScriptCallWhateverTheNumberOfTasks(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	var es []SchedulerEntry
	for i := range 20 {
		es = append(es, SchedulerEntry{Task: fmt.Sprintf("task_%02d", i), Interval: time.Minute, Payload: []byte("{}"),
			Opts: []asynq.Option{asynq.Queue("default"), asynq.MaxRetry(3)}, Next: time.Now(), Prev: time.Now()})
	}
	ctx := context.Background()
	if err := PublishSchedulerEntries(ctx, rdb, es, EntryTTL, time.Now()); err != nil { // loads the script
		t.Fatal(err)
	}
	if err := rdb.ConfigResetStat(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if err := PublishSchedulerEntries(ctx, rdb, es, EntryTTL, time.Now()); err != nil {
		t.Fatal(err)
	}
	calls := commandCalls(t, srv)
	if calls["evalsha"] != 1 {
		t.Errorf("commands of one publish of %d entries: %v, want one evalsha", len(es), calls)
	}
	t.Logf("one publish of %d entries: %v", len(es), calls)
}

func TestPublisherRepublishesUntilCancelledAndSurvivesSourceErrors(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	insp := inspector(t, srv)
	var mu sync.Mutex
	calls := 0
	source := func(context.Context) ([]SchedulerEntry, error) {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls == 1 {
			return nil, errors.New("redis hiccup")
		}
		return []SchedulerEntry{{Task: "a", Interval: time.Minute, Next: time.Now().Add(time.Minute)}}, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		RunSchedulePublisher(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), rdb, 20*time.Millisecond, "", source)
		close(done)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for byID(t, insp)["a"] == nil {
		if time.Now().After(deadline) {
			t.Fatal("entry never published after a failed first attempt")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("publisher did not stop when its context ended")
	}
}

func TestPublishComesForwardToJustAfterTheEarliestDueTime(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	at := func(d time.Duration) SchedulerEntry { return SchedulerEntry{Next: now.Add(d)} }
	for _, tt := range []struct {
		name    string
		entries []SchedulerEntry
		want    time.Duration
	}{
		{"no entries", nil, PublishEvery},
		{"nothing due before the next publish", []SchedulerEntry{at(time.Hour), at(PublishEvery)}, PublishEvery},
		{"one due in a second", []SchedulerEntry{at(time.Hour), at(time.Second)}, time.Second + settle},
		{"the earliest of several", []SchedulerEntry{at(3 * time.Second), at(time.Second), at(2 * time.Second)}, time.Second + settle},
		{"due a moment ago, not yet moved on", []SchedulerEntry{at(-time.Second)}, settle - time.Second},
		{"overdue past settle: the scheduler is late, no spinning", []SchedulerEntry{at(-settle), at(-time.Hour)}, PublishEvery},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := nextPublish(tt.entries, now, PublishEvery); got != tt.want {
				t.Errorf("nextPublish = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestAFailureToRecordTheEventDoesNotFailTheEnqueue(t *testing.T) {
	srv := redistest.Start(t)
	client := asynq.NewClient(asynq.RedisClientOpt{Addr: srv.Addr})
	defer client.Close()
	gone := redis.NewClient(&redis.Options{Addr: redistest.FreeAddr(t), MaxRetries: -1})
	defer gone.Close()
	var logs bytes.Buffer
	e := RecordEnqueues(client, gone, slog.New(slog.NewTextHandler(&logs, nil)))
	info, err := e.EnqueueContext(context.Background(), asynq.NewTask("t", nil), asynq.TaskID("t@1"))
	if err != nil || info == nil || info.ID != "t@1" {
		t.Fatalf("enqueue = %v, %v; want it accepted", info, err)
	}
	if !strings.Contains(logs.String(), "enqueue not recorded") || !strings.Contains(logs.String(), "task_id=t@1") {
		t.Errorf("the lost event is not logged: %s", logs.String())
	}
}
