package e2e

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// scheduledTasks reads, from a worker's startup log, the periodic tasks its
// scheduler runs (the ones asynqmon's Schedulers page must list).
func scheduledTasks(t *testing.T, p *proc) []string {
	t.Helper()
	var out []string
	for line := range strings.SplitSeq(p.Logs(), "\n") {
		var l struct{ Msg, Task, Kind string }
		if json.Unmarshal([]byte(line), &l) != nil || l.Msg != "task scheduled" {
			continue
		}
		if l.Kind == string(jobs.Periodic) || l.Kind == string(jobs.Supervised) {
			out = append(out, l.Task)
		}
	}
	slices.Sort(out)
	if len(out) == 0 {
		t.Fatalf("no periodic task in the worker's log:\n%s", p.Logs())
	}
	return out
}

// entriesOnce reads the Inspector's scheduler entries, failing the test if
// an entry is listed twice.
func entriesOnce(t *testing.T, insp *asynq.Inspector) map[string]*asynq.SchedulerEntry {
	t.Helper()
	es, err := insp.SchedulerEntries()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*asynq.SchedulerEntry{}
	for _, e := range es {
		if out[e.ID] != nil {
			t.Errorf("scheduler entry %s listed twice (%d entries)", e.ID, len(es))
		}
		out[e.ID] = e
	}
	return out
}

// waitEntries samples the entries every 100 ms until ok holds for them,
// checking at every sample that no task is listed twice.
func waitEntries(t *testing.T, insp *asynq.Inspector, what string, timeout time.Duration, ok func(map[string]*asynq.SchedulerEntry) bool) (map[string]*asynq.SchedulerEntry, int) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for samples := 1; ; samples++ {
		got := entriesOnce(t, insp)
		if ok(got) {
			return got, samples
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v; entries: %v", what, timeout, slices.Sorted(func(yield func(string) bool) {
				for id := range got {
					yield(id)
				}
			}))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func eventIDs(t *testing.T, insp *asynq.Inspector, task string) []string {
	t.Helper()
	events, err := insp.ListSchedulerEnqueueEvents(task, asynq.PageSize(1000))
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range events {
		ids = append(ids, e.TaskID)
	}
	return ids
}

func TestSchedulerEntriesListEachTaskOnceWithThreePodsAndSurviveARestartOfAll(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: srv.Addr})
	defer insp.Close()
	env := map[string]string{"TASK_INTERVALS": "e2e_plain=2s,e2e_single=3s", "E2E_SLEEP": "50ms"}
	pods := func() []*proc {
		return []*proc{start(t, srv.URL(), env), start(t, srv.URL(), env), start(t, srv.URL(), env)}
	}
	ps := pods()
	want := scheduledTasks(t, ps[0])
	all := func(es map[string]*asynq.SchedulerEntry) bool {
		for _, task := range want {
			if es[task] == nil {
				return false
			}
		}
		return len(es) == len(want) && !es["e2e_plain"].Prev.IsZero() && !es["e2e_single"].Prev.IsZero()
	}

	got, samples := waitEntries(t, insp, "every periodic task listed with a previous enqueue", 20*time.Second, all)
	// Keep sampling for a while: three pods republish every 5 s and none
	// may ever make a task appear twice.
	end := time.Now().Add(8 * time.Second)
	for time.Now().Before(end) {
		entriesOnce(t, insp)
		samples++
		time.Sleep(100 * time.Millisecond)
	}
	for _, task := range want {
		e := got[task]
		if e.Task.Type() != task || !strings.HasPrefix(e.Spec, "@every ") || e.Next.IsZero() {
			t.Errorf("%s: type %q spec %q next %v", task, e.Task.Type(), e.Spec, e.Next)
		}
	}
	plain, single := got["e2e_plain"], got["e2e_single"]
	if plain.Spec != "@every 2s" || single.Spec != "@every 3s" {
		t.Errorf("specs %q and %q, want the TASK_INTERVALS overrides @every 2s and @every 3s", plain.Spec, single.Spec)
	}
	if !plain.Next.After(plain.Prev) || plain.Next.Sub(plain.Prev) > 2*time.Second+500*time.Millisecond {
		t.Errorf("e2e_plain prev %v next %v, want next one interval on", plain.Prev, plain.Next)
	}
	t.Logf("%d tasks %v listed once each over %d samples with 3 pods", len(want), want, samples)

	for _, p := range ps {
		p.term()
	}
	before := map[string][]string{"e2e_plain": eventIDs(t, insp, "e2e_plain"), "e2e_single": eventIDs(t, insp, "e2e_single")}
	// Every completed run was an enqueue event, each recorded once.
	for task, ids := range before {
		if len(ids) == 0 || len(slices.Compact(slices.Sorted(slices.Values(ids)))) != len(ids) {
			t.Errorf("%s history %v: empty or with an occurrence twice", task, ids)
		}
		for _, r := range runs(t, rdb, task) {
			if !slices.Contains(ids, r.id) {
				t.Errorf("%s run %s is not in the enqueue history %v", task, r.id, ids)
			}
		}
	}
	singleNext := got["e2e_single"].Next

	// With no scheduler running the entries lapse...
	stopped := time.Now()
	waitEntries(t, insp, "entries gone with every pod stopped", 40*time.Second, func(es map[string]*asynq.SchedulerEntry) bool { return len(es) == 0 })
	t.Logf("entries lapsed %.1fs after the last pod stopped", time.Since(stopped).Seconds())

	// ...and come back, once each, when the pods start again, on the same
	// schedule (the state is in Redis), with the history kept.
	ps = pods()
	got, _ = waitEntries(t, insp, "every periodic task listed again after the restart", 20*time.Second, all)
	if d := got["e2e_single"].Next.Sub(singleNext); d <= 0 || d%(3*time.Second) != 0 {
		t.Errorf("e2e_single next moved by %v across the restart, want whole 3s intervals (the grid kept in Redis)", d)
	}
	for task, old := range before {
		deadline := time.Now().Add(15 * time.Second)
		now := eventIDs(t, insp, task)
		for len(now) <= len(old) && time.Now().Before(deadline) {
			time.Sleep(200 * time.Millisecond)
			now = eventIDs(t, insp, task)
		}
		if len(now) <= len(old) {
			t.Errorf("%s: no enqueue recorded after the restart (%d events before and after)", task, len(old))
		}
		for _, id := range old {
			if !slices.Contains(now, id) {
				t.Errorf("%s: event %s lost across the restart", task, id)
			}
		}
	}
	for _, p := range ps {
		p.term()
	}
}
