package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/kg/plan"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/jobs"
)

func TestBacklogShowsWhatThePlannersMeasured(t *testing.T) {
	srv := redistest.Start(t)
	env := map[string]string{"REDIS_URL": srv.URL()}
	if code, out, _ := runCLI(env, "backlog"); code != exitOK || !strings.Contains(out, "no backlog yet") {
		t.Fatalf("empty backlog: %d %s", code, out)
	}
	now := time.Now()
	err := plan.New(srv.Client(t), jobs.LimbicAnchoringWorker, "sg:ka:cursor:").WriteBacklog(context.Background(), plan.Backlog{
		Updated: now, Units: 4, Planned: 120, Sources: []plan.SourceBacklog{
			{Source: "discord:1", Pending: 100, Oldest: now.Add(-time.Hour)},
			{Source: "discord:2", Pending: 30, Oldest: now.Add(-time.Minute)},
		}})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"u1", "u2", "u3", "u4"} { // four units queued
		srv.Client(t).HSet(context.Background(), plan.UnitsKey(jobs.LimbicAnchoringWorker), id, "{}")
	}
	code, out, stderr := runCLI(env, "backlog", "--json", "--sources", "1")
	if code != exitOK {
		t.Fatalf("exit %d %s", code, stderr)
	}
	var got []backlogEntry
	if err := json.Unmarshal([]byte(out), &got); err != nil || len(got) != 1 {
		t.Fatalf("%s (%v)", out, err)
	}
	e := got[0]
	if e.Task != jobs.LimbicAnchoringWorker || e.Pending != 130 || e.UnitsQueued != 4 || e.PlannedPending != 120 ||
		e.OldestSecs < 3590 || len(e.Sources) != 1 || e.Sources[0].Source != "discord:1" {
		t.Fatalf("entry %+v", e)
	}
	if code, out, _ := runCLI(env, "backlog"); code != exitOK || !strings.Contains(out, "limbic_anchoring_worker  130") ||
		!strings.Contains(out, "4 (120 msgs)") || !strings.Contains(out, "discord:2") {
		t.Fatalf("table: %d %s", code, out)
	}
}
