package handlers

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/kg/extract/extracttest"
	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
	"github.com/stargazer/stargazer-jobs/internal/queue/singleton"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// sunsetDay0 is a UTC midnight.
var sunsetDay0 = testBase.UTC().Truncate(24 * time.Hour)

// sunsetEnv is a kgEnv whose LLM answers synthesis prompts with *summary.
func sunsetEnv(t *testing.T) (*kgEnv, *string) {
	t.Helper()
	v := newKGEnv(t)
	summary := "The day was about Alpha."
	v.llm.SetHook(func(_ int, c extracttest.Call) *extracttest.Reply {
		r := extracttest.Completion(c.Prompt, fmt.Sprintf(`{"summary": %q}`, summary))
		return &r
	})
	return v, &summary
}

func seedEntity(t *testing.T, g *graph.Graph, name string, mentions int64, first, last time.Time) {
	t.Helper()
	_, err := g.Query(context.Background(), `CREATE (:Entity {key: $key, name: $name, normalized_name: $norm, type: 'topic',
mention_count: $m, first_seen: $first, last_seen: $last})`, map[string]any{
		"key": graph.EntityKey(name, "topic"), "name": name, "norm": graph.NormalizeName(name), "m": mentions,
		"first": first.UnixMilli(), "last": last.UnixMilli(),
	})
	if err != nil {
		t.Fatal(err)
	}
}

// epochs describes every epoch: key, date, summary, entity_count and
// its linked entities, in order (a duplicated link shows twice).
func epochs(t *testing.T, g *graph.Graph) string {
	t.Helper()
	res, err := g.ROQuery(context.Background(), `MATCH (ep:Epoch)
OPTIONAL MATCH (e:Entity)-[r:REL {type: 'mentioned_in'}]->(ep)
WITH ep, e ORDER BY e.name
RETURN ep.key, ep.date, ep.summary, ep.entity_count, collect(e.name) ORDER BY ep.key`, nil)
	if errors.Is(err, graph.ErrNoGraph) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, r := range res.Rows {
		fmt.Fprintln(&b, r...)
	}
	return b.String()
}

func epochLine(day time.Time, summary string, names ...string) string {
	return fmt.Sprintln(day.Format(time.DateOnly), day.UnixMilli(), summary, len(names), names)
}

func TestLimbicSunsetSynthesisesEachEndedDayOnce(t *testing.T) {
	ctx := context.Background()
	v, summary := sunsetEnv(t)
	today := sunsetDay0.AddDate(0, 0, 3)
	yesterday := today.AddDate(0, 0, -1)
	v.now = today.Add(time.Hour)
	seedEntity(t, v.g, "Alpha", 5, yesterday.Add(10*time.Hour), yesterday.Add(10*time.Hour))
	seedEntity(t, v.g, "Beta", 2, yesterday.Add(11*time.Hour), today.Add(30*time.Minute)) // first seen yesterday
	seedEntity(t, v.g, "Gamma", 1, today.Add(40*time.Minute), today.Add(40*time.Minute))  // today has not ended
	seedEntity(t, v.g, "Delta", 3, sunsetDay0.Add(12*time.Hour), sunsetDay0.Add(12*time.Hour))
	seedEntity(t, v.g, "Omega", 9, today.AddDate(0, 0, -10), today.AddDate(0, 0, -10)) // beyond the lookback
	if _, err := v.g.Query(ctx, `MATCH (a:Entity {name: 'Alpha'}), (b:Entity {name: 'Beta'})
CREATE (a)-[:REL {type: 'works_with', weight: 0.8, last_seen: $at}]->(b)`, map[string]any{"at": yesterday.Add(11 * time.Hour).UnixMilli()}); err != nil {
		t.Fatal(err)
	}
	d := v.deps()

	res, err := work(ctx, d, jobs.LimbicSunsetProcessor, &jobs.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	if res["days_processed"] != 2 || res["days_empty"] != 5 || res["epochs_created"] != 2 || res["links_created"] != 3 || res["llm_calls"] != 2 {
		t.Fatalf("first run %v", res)
	}
	want := epochLine(sunsetDay0, *summary, "Delta") + epochLine(yesterday, *summary, "Alpha", "Beta")
	if got := epochs(t, v.g); got != want {
		t.Fatalf("epochs\n%s\nwant\n%s", got, want)
	}
	calls := v.llm.Calls()
	if c := calls[len(calls)-1]; c.Model != "kg-model" || c.ResponseFormat != "json_object" ||
		!strings.Contains(c.Prompt, yesterday.Format(time.DateOnly)) || !strings.Contains(c.Prompt, "- Alpha (topic, 5 mentions)") ||
		!strings.Contains(c.Prompt, "- Alpha works_with Beta") || strings.Contains(c.Prompt, "Gamma") {
		t.Errorf("synthesis call %+v", c)
	}
	res2, err := v.g.ROQuery(ctx, `MATCH (ep:Epoch {key: $k}) RETURN ep.updated_at AS u`, map[string]any{"k": yesterday.Format(time.DateOnly)})
	if err != nil {
		t.Fatal(err)
	}
	if u, _ := res2.Int64(0, "u"); u != v.now.UnixMilli() {
		t.Errorf("updated_at %d", u)
	}

	t.Run("a second pass does nothing", func(t *testing.T) {
		before, n := epochs(t, v.g), len(v.llm.Calls())
		v.now = v.now.Add(time.Hour)
		res, err := work(ctx, d, jobs.LimbicSunsetProcessor, &jobs.Empty{})
		if err != nil || res["days_processed"] != 0 || res["days_empty"] != 0 || res["llm_calls"] != 0 {
			t.Fatalf("second pass %v, %v", res, err)
		}
		if len(v.llm.Calls()) != n || epochs(t, v.g) != before {
			t.Fatal("the second pass called the LLM or changed the graph")
		}
	})

	t.Run("re-synthesising a day updates its epoch", func(t *testing.T) {
		seedEntity(t, v.g, "Epsilon", 1, yesterday.Add(20*time.Hour), yesterday.Add(20*time.Hour))
		if err := v.rdb.ZRem(ctx, SunsetDoneKey, yesterday.Format(time.DateOnly)).Err(); err != nil {
			t.Fatal(err)
		}
		*summary = "A second look at the day."
		res, err := work(ctx, d, jobs.LimbicSunsetProcessor, &jobs.Empty{})
		if err != nil || res["epochs_created"] != 0 || res["epochs_updated"] != 1 || res["links_created"] != 1 || res["entities_linked"] != 3 {
			t.Fatalf("re-run %v, %v", res, err)
		}
		want := epochLine(sunsetDay0, "The day was about Alpha.", "Delta") + epochLine(yesterday, *summary, "Alpha", "Beta", "Epsilon")
		if got := epochs(t, v.g); got != want {
			t.Fatalf("epochs\n%s\nwant\n%s", got, want)
		}
	})
}

func TestLimbicSunsetWaitsForTheDayToEnd(t *testing.T) {
	ctx := context.Background()
	v, summary := sunsetEnv(t)
	seedEntity(t, v.g, "Alpha", 1, sunsetDay0.Add(23*time.Hour), sunsetDay0.Add(23*time.Hour))
	seedEntity(t, v.g, "Zeta", 1, sunsetDay0.AddDate(0, 0, 1).Add(time.Minute), sunsetDay0.AddDate(0, 0, 1).Add(time.Minute))
	tests := []struct {
		name string
		now  time.Time
		want string
	}{
		{"during the day", sunsetDay0.Add(23*time.Hour + 30*time.Minute), ""},
		{"just after midnight, within the grace period", sunsetDay0.AddDate(0, 0, 1).Add(5 * time.Minute), ""},
		{"after the grace period", sunsetDay0.AddDate(0, 0, 1).Add(20 * time.Minute), epochLine(sunsetDay0, *summary, "Alpha")},
	}
	for _, tt := range tests {
		v.now = tt.now
		if _, err := work(ctx, v.deps(), jobs.LimbicSunsetProcessor, &jobs.Empty{}); err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if got := epochs(t, v.g); got != tt.want {
			t.Errorf("%s: epochs\n%s\nwant\n%s", tt.name, got, tt.want)
		}
	}
}

func TestLimbicSunsetWithALostLeaseWritesNothing(t *testing.T) {
	v, _ := sunsetEnv(t)
	today := sunsetDay0.AddDate(0, 0, 1)
	v.now = today.Add(time.Hour)
	seedEntity(t, v.g, "Alpha", 1, sunsetDay0.Add(time.Hour), sunsetDay0.Add(time.Hour))
	ours := lease(t, v.rdb, jobs.LimbicSunsetProcessor, "run-1")
	lease(t, v.rdb, jobs.LimbicSunsetProcessor, "run-1") // a retry of the same run takes the lease over

	_, err := work(singleton.WithLease(context.Background(), ours), v.deps(), jobs.LimbicSunsetProcessor, &jobs.Empty{})
	if !errors.Is(err, singleton.ErrLost) || !errors.Is(err, asynq.SkipRetry) {
		t.Fatalf("err = %v, want a lost lease, not retried", err)
	}
	if got := epochs(t, v.g); got != "" {
		t.Errorf("a run without its lease wrote epochs:\n%s", got)
	}
	if n, _ := v.rdb.Exists(context.Background(), SunsetDoneKey).Result(); n != 0 {
		t.Error("a run without its lease recorded a day as done")
	}
}

func TestLimbicSunsetUnusableAnswerWritesNothingAndIsRetried(t *testing.T) {
	v, _ := sunsetEnv(t)
	v.now = sunsetDay0.AddDate(0, 0, 1).Add(time.Hour)
	seedEntity(t, v.g, "Alpha", 1, sunsetDay0.Add(time.Hour), sunsetDay0.Add(time.Hour))
	v.llm.SetHook(func(_ int, c extracttest.Call) *extracttest.Reply {
		r := extracttest.Completion(c.Prompt, `{"summary": "   "}`)
		return &r
	})
	_, err := work(context.Background(), v.deps(), jobs.LimbicSunsetProcessor, &jobs.Empty{})
	if !errors.Is(err, errSunsetAnswer) || errors.Is(err, asynq.SkipRetry) {
		t.Fatalf("err = %v, want a retried bad answer", err)
	}
	if got := epochs(t, v.g); got != "" {
		t.Errorf("epochs written from a bad answer:\n%s", got)
	}
}
