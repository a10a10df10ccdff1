package periodic_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/queue/periodic"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

type counter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *counter) Fire(task, outcome string, _ time.Duration, missed int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n[outcome]++
	c.n["missed"] += missed
}

type fixture struct {
	t     *testing.T
	srv   *redistest.Server
	clk   *clock
	obs   *counter
	insp  *asynq.Inspector
	entry periodic.Entry
}

func newFixture(t *testing.T) *fixture {
	srv := redistest.Start(t)
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: srv.Addr})
	t.Cleanup(func() { insp.Close() })
	return &fixture{
		t: t, srv: srv, insp: insp,
		clk: &clock{now: time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC)},
		obs: &counter{n: map[string]int{}},
		entry: periodic.Entry{
			Name: "report", Interval: time.Hour, InitialDelay: 5 * time.Minute, Queue: "default",
		},
	}
}

// scheduler builds a fresh scheduler, as a new process would.
func (f *fixture) scheduler(withStates bool) *periodic.Scheduler {
	client := asynq.NewClient(asynq.RedisClientOpt{Addr: f.srv.Addr})
	f.t.Cleanup(func() { client.Close() })
	cfg := periodic.Config{
		Redis: f.srv.Client(f.t), Enqueuer: client, Observer: f.obs, Now: f.clk.Now,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if withStates {
		cfg.States = periodic.InspectorStates{Inspector: f.insp}
	}
	s, err := periodic.New(cfg, []periodic.Entry{f.entry})
	if err != nil {
		f.t.Fatal(err)
	}
	return s
}

// tasks counts the occurrences asynq holds in any state.
func (f *fixture) tasks() int {
	info, err := f.insp.GetQueueInfo("default")
	if err != nil {
		return 0
	}
	return info.Size + info.Completed
}

// completeAll marks pending occurrences done, as a worker would.
func (f *fixture) completeAll() {
	pending, _ := f.insp.ListPendingTasks("default", asynq.PageSize(1000))
	for _, p := range pending {
		if err := f.insp.DeleteTask("default", p.ID); err != nil {
			f.t.Fatal(err)
		}
	}
}

func TestFirstRunWaitsForTheInitialDelay(t *testing.T) {
	f := newFixture(t)
	s := f.scheduler(false)
	ctx := context.Background()
	s.Tick(ctx)
	f.clk.Add(4 * time.Minute)
	s.Tick(ctx)
	if n := f.tasks(); n != 0 {
		t.Fatalf("%d runs before the initial delay", n)
	}
	f.clk.Add(time.Minute)
	s.Tick(ctx)
	if n := f.tasks(); n != 1 {
		t.Fatalf("%d runs after the initial delay, want 1", n)
	}
}

func TestManySchedulersEnqueueEachOccurrenceOnce(t *testing.T) {
	f := newFixture(t)
	scheds := []*periodic.Scheduler{f.scheduler(false), f.scheduler(false), f.scheduler(false)}
	ctx := context.Background()
	const periods = 6
	for i := 0; i < periods*12; i++ { // every 5 minutes for 6 hours
		var wg sync.WaitGroup
		for _, s := range scheds {
			wg.Add(1)
			go func() { defer wg.Done(); s.Tick(ctx) }()
		}
		wg.Wait()
		f.clk.Add(5 * time.Minute)
	}
	if n := f.tasks(); n != periods {
		t.Fatalf("%d runs over %d periods with 3 schedulers, want %d (outcomes %v)", n, periods, periods, f.obs.n)
	}
}

func TestScheduleSurvivesRestartsMoreFrequentThanTheInterval(t *testing.T) {
	f := newFixture(t)
	f.entry.Interval = 48 * time.Hour
	f.entry.InitialDelay = 0
	ctx := context.Background()
	// A new process every 12 hours for 10 days, each ticking for a while.
	for day := 0; day < 20; day++ {
		s := f.scheduler(false)
		for i := 0; i < 12; i++ {
			s.Tick(ctx)
			f.clk.Add(time.Hour)
		}
	}
	if n := f.tasks(); n != 5 {
		t.Fatalf("%d runs in 10 days at a 48h cadence, want 5", n)
	}
}

func TestMissedRunsCoalesceIntoOne(t *testing.T) {
	f := newFixture(t)
	f.entry.InitialDelay = 0
	ctx := context.Background()
	f.scheduler(false).Tick(ctx)
	f.clk.Add(time.Second)
	f.scheduler(false).Tick(ctx)
	if n := f.tasks(); n != 1 {
		t.Fatalf("first run: %d", n)
	}
	f.clk.Add(10*time.Hour + 30*time.Minute) // ten occurrences missed
	s := f.scheduler(false)
	for i := 0; i < 20; i++ {
		s.Tick(ctx)
		f.clk.Add(time.Second)
	}
	if n := f.tasks(); n != 2 {
		t.Fatalf("%d runs after downtime, want 2 (one catch-up)", n)
	}
	// Ten occurrences (1h..10h) came due while no scheduler ran: one runs,
	// nine are coalesced into it.
	if f.obs.n["missed"] != 9 {
		t.Errorf("missed = %d, want 9 coalesced occurrences", f.obs.n["missed"])
	}
	// The cadence resumes on the original grid.
	f.clk.Add(30 * time.Minute)
	s.Tick(ctx)
	if n := f.tasks(); n != 3 {
		t.Fatalf("%d runs after the next grid point, want 3", n)
	}
}

func TestOccurrenceIsSkippedWhileThePreviousRunIsStillQueued(t *testing.T) {
	f := newFixture(t)
	f.entry.InitialDelay = 0
	ctx := context.Background()
	s := f.scheduler(true)
	s.Tick(ctx)
	f.clk.Add(time.Hour)
	s.Tick(ctx)
	if n := f.tasks(); n != 1 || f.obs.n[periodic.OutcomeOverlap] != 1 {
		t.Fatalf("tasks %d, outcomes %v: want the second occurrence skipped", n, f.obs.n)
	}
	f.completeAll()
	f.clk.Add(time.Hour)
	s.Tick(ctx)
	if f.obs.n[periodic.OutcomeEnqueued] != 2 {
		t.Fatalf("outcomes %v: want a run once the previous one finished", f.obs.n)
	}
}

func TestNewRejectsBadEntries(t *testing.T) {
	if _, err := periodic.New(periodic.Config{}, []periodic.Entry{{Name: "x", Interval: time.Millisecond}}); err == nil {
		t.Error("sub-second interval accepted")
	}
	e := periodic.Entry{Name: "x", Interval: time.Minute}
	if _, err := periodic.New(periodic.Config{}, []periodic.Entry{e, e}); err == nil {
		t.Error("duplicate entry accepted")
	}
}

func TestAnArchivedRunDoesNotBlockTheSchedule(t *testing.T) {
	f := newFixture(t)
	f.entry.InitialDelay = 0
	ctx := context.Background()
	s := f.scheduler(true)
	s.Tick(ctx)
	pending, _ := f.insp.ListPendingTasks("default")
	if len(pending) != 1 {
		t.Fatalf("pending = %d", len(pending))
	}
	if err := f.insp.ArchiveTask("default", pending[0].ID); err != nil {
		t.Fatal(err)
	}
	f.clk.Add(time.Hour)
	s.Tick(ctx)
	if f.obs.n[periodic.OutcomeEnqueued] != 2 {
		t.Fatalf("outcomes %v: the occurrence after an archived run must be enqueued", f.obs.n)
	}
}

// lateStates reports every previous run as completed a second after now:
// a run that was left queued over a downtime and finished late.
type lateStates struct{ clk *clock }

func (l lateStates) TaskState(context.Context, string, string) (periodic.TaskStatus, bool, error) {
	return periodic.TaskStatus{State: asynq.TaskStateCompleted, CompletedAt: l.clk.Now().Add(time.Second)}, true, nil
}

func TestARunThatFinishedAfterTheDueTimeCoalescesTheOccurrence(t *testing.T) {
	f := newFixture(t)
	f.entry.InitialDelay = 0
	ctx := context.Background()
	client := asynq.NewClient(asynq.RedisClientOpt{Addr: f.srv.Addr})
	defer client.Close()
	s, err := periodic.New(periodic.Config{
		Redis: f.srv.Client(t), Enqueuer: client, Observer: f.obs, Now: f.clk.Now,
		States: lateStates{f.clk}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}, []periodic.Entry{f.entry})
	if err != nil {
		t.Fatal(err)
	}
	s.Tick(ctx)
	f.clk.Add(3 * time.Hour)
	s.Tick(ctx)
	if f.obs.n[periodic.OutcomeEnqueued] != 1 || f.obs.n[periodic.OutcomeCoalesced] != 1 {
		t.Fatalf("outcomes %v: want the catch-up coalesced into the late run", f.obs.n)
	}
}

// With a fleet of schedulers, the first to see an occurrence due claims
// it: the others see it as not due until the claim ends, and do not
// enqueue, conflict and fail the advance. A claimer that dies leaves the
// occurrence to a peer once the claim ends, still under one task ID.
func TestOccurrenceClaimedByTheFirstSchedulerUntilTheClaimEnds(t *testing.T) {
	f := newFixture(t)
	client := asynq.NewClient(asynq.RedisClientOpt{Addr: f.srv.Addr})
	t.Cleanup(func() { client.Close() })
	newSched := func(enq periodic.Enqueuer) *periodic.Scheduler {
		s, err := periodic.New(periodic.Config{
			Redis: f.srv.Client(t), Enqueuer: enq, Observer: f.obs, Now: f.clk.Now, Claim: 3 * time.Second,
			States: periodic.InspectorStates{Inspector: f.insp}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		}, []periodic.Entry{f.entry})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	dead := newSched(failingEnqueuer{})
	peer := newSched(client)
	ctx := context.Background()
	dead.Tick(ctx)
	peer.Tick(ctx)
	f.clk.Add(5 * time.Minute) // the first occurrence is due
	dead.Tick(ctx)             // claims it, then fails to enqueue (it "dies")
	peer.Tick(ctx)
	if n := f.tasks(); n != 0 {
		t.Fatalf("%d runs while the occurrence is claimed by another scheduler", n)
	}
	f.clk.Add(time.Second)
	peer.Tick(ctx)
	if n := f.tasks(); n != 0 {
		t.Fatalf("%d runs before the claim ended", n)
	}
	f.clk.Add(3 * time.Second) // the claim has ended
	peer.Tick(ctx)
	if n := f.tasks(); n != 1 {
		t.Fatalf("%d runs after the claim ended, want the occurrence", n)
	}
}

type failingEnqueuer struct{}

func (failingEnqueuer) EnqueueContext(context.Context, *asynq.Task, ...asynq.Option) (*asynq.TaskInfo, error) {
	return nil, errors.New("connection reset")
}
