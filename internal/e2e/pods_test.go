package e2e

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

// Thirty-two workers on one Redis, every one running the scheduler, with
// ten periodic tasks every 2 s for 30 s: each occurrence runs exactly once
// (no task ID twice), none is missed (each task's occurrences are
// consecutive on its grid) and no task runs twice at once. The claim in
// the scheduler's due script spares the herd; the deterministic task ID is
// what this checks holds with 32 schedulers racing for every occurrence.
func TestThirtyTwoPodsRunEveryOccurrenceOnceNoneMissed(t *testing.T) {
	const pods, tasks, interval, window = 32, 10, 2 * time.Second, 30 * time.Second
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	intervals := []string{"e2e_plain=off", "e2e_single=off"}
	for i := range tasks {
		intervals = append(intervals, fmt.Sprintf("e2e_p%02d=%v", i, interval))
	}
	env := map[string]string{
		"E2E_PERIODIC": fmt.Sprint(tasks), "TASK_INTERVALS": strings.Join(intervals, ","),
		"WORKER_CONCURRENCY": "3", "QUEUE_METRICS": "false",
	}
	for range pods {
		start(t, srv.URL(), env)
	}
	time.Sleep(3 * time.Second) // every scheduler has read the schedules
	from := time.Now()
	time.Sleep(window)
	to := time.Now()
	time.Sleep(3 * time.Second) // the last occurrences run

	total := 0
	for i := range tasks {
		task := fmt.Sprintf("e2e_p%02d", i)
		var dues []time.Time
		var inWindow []run
		for _, r := range runs(t, rdb, task) {
			if due := dueOf(t, r); !due.Before(from) && due.Before(to) {
				dues = append(dues, due)
				inWindow = append(inWindow, r)
			}
		}
		distinctIDs(t, inWindow)
		slices.SortFunc(dues, func(a, b time.Time) int { return a.Compare(b) })
		dues = slices.CompactFunc(dues, time.Time.Equal)
		if want := int(window / interval); len(dues) < want-1 {
			t.Errorf("%s: %d occurrences ran in %v, want about %d", task, len(dues), window, want)
		}
		for j := 1; j < len(dues); j++ {
			if gap := dues[j].Sub(dues[j-1]); gap != interval {
				t.Errorf("%s: occurrences %v and %v are %v apart: %d missed", task, dues[j-1], dues[j], gap, int(gap/interval)-1)
			}
		}
		total += len(inWindow)
	}
	if o := overlaps(t, rdb); len(o) > 0 {
		t.Errorf("runs overlapped: %v", o)
	}
	t.Logf("FIGURE %d runs of %d tasks in %v on %d pods", total, tasks, window, pods)
}
