package plan_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stargazer/stargazer-jobs/internal/kg/plan"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

// gauges gathers reg into name -> summed value.
func gauges(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			out[mf.GetName()] += m.GetGauge().GetValue()
		}
	}
	return out
}

func TestCollectorExportsTheBacklogCached(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	s := plan.New(rdb, task, prefix)
	now := time.Now()
	write := func(pending int64) {
		err := s.WriteBacklog(ctx, plan.Backlog{Updated: now, Units: 2, Planned: 60, Sources: []plan.SourceBacklog{
			{Source: chA, Pending: pending, Oldest: now.Add(-time.Hour)},
			{Source: chB, Pending: 10, Oldest: now.Add(-time.Minute)},
		}})
		if err != nil {
			t.Fatal(err)
		}
	}
	write(50)
	for _, id := range []string{"u1", "u2"} { // two units queued
		rdb.HSet(ctx, plan.UnitsKey(task), id, "{}")
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(plan.NewCollector(rdb, []string{task, "auto_kg_extraction"}, time.Hour))
	g := gauges(t, reg)
	if g["stargazer_extraction_backlog_messages"] != 60 || g["stargazer_extraction_units_queued"] != 2 ||
		g["stargazer_extraction_planned_messages"] != 60 || g["stargazer_extraction_backlog_scrape_ok"] != 1 ||
		g["stargazer_extraction_backlog_oldest_seconds"] < 3600 {
		t.Fatalf("gauges %v", g)
	}
	// Within the cache period a scrape does not read Redis again.
	write(500)
	if g := gauges(t, reg); g["stargazer_extraction_backlog_messages"] != 60 {
		t.Fatalf("a cached scrape read %v", g["stargazer_extraction_backlog_messages"])
	}
}
