package app

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/queue/asynqcompat"
	"github.com/stargazer/stargazer-jobs/internal/queue/periodic"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

// The scheduler's own state, read back through asynq's Inspector as
// asynqmon reads it: next and previous times, spec, options and history.
func TestSchedulesShowTheSchedulerStateThroughTheInspector(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := context.Background()
	conn := asynq.RedisClientOpt{Addr: srv.Addr}
	client := asynq.NewClient(conn)
	defer client.Close()
	insp := asynq.NewInspector(conn)
	defer insp.Close()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))

	es := []periodic.Entry{
		{Name: "ran_once", Interval: time.Hour, Queue: "maintenance", Payload: []byte("{}"),
			Options: []asynq.Option{asynq.MaxRetry(3), asynq.Timeout(10 * time.Minute)}, Unique: 2 * time.Hour},
		{Name: "not_yet_due", Interval: 90 * time.Second, InitialDelay: 10 * time.Minute, Queue: "default", Payload: []byte("{}")},
		{Name: "never_seen", Interval: time.Minute, Queue: "default"},
	}
	sched, err := periodic.New(periodic.Config{Redis: rdb, Enqueuer: asynqcompat.RecordEnqueues(client, rdb, log),
		States: periodic.InspectorStates{Inspector: insp}, Logger: log}, es[:2])
	if err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	sched.Tick(ctx)
	after := time.Now()

	source := schedules(rdb, es)
	// A first publish loads the script; the second is measured.
	if warm, err := source(ctx); err != nil || asynqcompat.PublishSchedulerEntries(ctx, rdb, warm, asynqcompat.EntryTTL, time.Now()) != nil {
		t.Fatal("first publish failed", err)
	}
	if err := rdb.ConfigResetStat(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	entries, err := source(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := asynqcompat.PublishSchedulerEntries(ctx, rdb, entries, asynqcompat.EntryTTL, time.Now()); err != nil {
		t.Fatal(err)
	}
	t.Logf("Redis commands of one publish of %d tasks (2 with a schedule): %s", len(es), commandStats(t, srv))

	got, err := insp.SchedulerEntries()
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]*asynq.SchedulerEntry{}
	for _, e := range got {
		byID[e.ID] = e
	}
	if len(got) != 2 || byID["ran_once"] == nil || byID["not_yet_due"] == nil {
		t.Fatalf("entries %v, want ran_once and not_yet_due (never_seen has no schedule yet)", got)
	}

	ran := byID["ran_once"]
	if ran.Spec != "@every 1h" || ran.Task.Type() != "ran_once" || string(ran.Task.Payload()) != "{}" {
		t.Errorf("ran_once: spec %q type %q payload %q", ran.Spec, ran.Task.Type(), ran.Task.Payload())
	}
	var opts []string
	for _, o := range ran.Opts {
		opts = append(opts, o.String())
	}
	if want := []string{`Queue("maintenance")`, "MaxRetry(3)", "Timeout(10m0s)", "Unique(2h0m0s)"}; !slices.Equal(opts, want) {
		t.Errorf("ran_once options %v, want %v", opts, want)
	}
	if ran.Prev.Before(before.Truncate(time.Millisecond)) || ran.Prev.After(after) {
		t.Errorf("ran_once prev %v, want the tick's time in [%v, %v]", ran.Prev, before, after)
	}
	st, _, _ := periodic.ReadState(ctx, rdb, "ran_once")
	if !ran.Next.Equal(st.Next) || !ran.Next.Equal(st.LastDue.Add(time.Hour)) {
		t.Errorf("ran_once next %v, want the schedule's next due time %v (last due + 1h)", ran.Next, st.Next)
	}
	events, err := insp.ListSchedulerEnqueueEvents("ran_once")
	if err != nil {
		t.Fatal(err)
	}
	if len(events) != 1 || events[0].TaskID != st.LastTaskID || !strings.HasPrefix(events[0].TaskID, "ran_once@") {
		t.Errorf("ran_once history %v, want the one enqueued occurrence %s", events, st.LastTaskID)
	}

	wait := byID["not_yet_due"]
	if wait.Spec != "@every 1m30s" || !wait.Prev.IsZero() {
		t.Errorf("not_yet_due: spec %q prev %v, want @every 1m30s and no previous enqueue", wait.Spec, wait.Prev)
	}
	if d := wait.Next.Sub(before); d < 10*time.Minute-time.Second || d > 10*time.Minute+time.Second {
		t.Errorf("not_yet_due next in %v, want the 10m initial delay", d)
	}
	if ev, _ := insp.ListSchedulerEnqueueEvents("not_yet_due"); len(ev) != 0 {
		t.Errorf("not_yet_due history %v, want none", ev)
	}
}

// commandStats lists the calls of each command since CONFIG RESETSTAT,
// counting those run inside scripts too.
func commandStats(t *testing.T, srv *redistest.Server) string {
	t.Helper()
	info, err := srv.Client(t).Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for line := range strings.SplitSeq(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":calls=")
		name = strings.TrimPrefix(name, "cmdstat_")
		if !ok || name == "info" || name == "hello" || strings.HasPrefix(name, "config") {
			continue
		}
		n, _ := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
		out = append(out, name+"="+strconv.Itoa(n))
	}
	slices.Sort(out)
	return strings.Join(out, " ")
}
