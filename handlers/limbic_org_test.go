package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/kg/hubs"
	"github.com/stargazer/stargazer-jobs/internal/queue/singleton"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// categoriseBy answers an org prompt, putting each shown entity into the
// category groups lists it under.
func categoriseBy(groups map[string][]string) func(string) scriptedReply {
	return func(prompt string) scriptedReply {
		var names []string
		for _, line := range strings.Split(prompt, "\n") {
			var e struct{ Name string }
			if strings.HasPrefix(line, `{"n":`) && json.Unmarshal([]byte(line), &e) == nil {
				names = append(names, e.Name)
			}
		}
		var cats []map[string]any
		for _, name := range slices.Sorted(func(yield func(string) bool) {
			for k := range groups {
				if !yield(k) {
					return
				}
			}
		}) {
			var members []int
			for i, n := range names {
				if slices.Contains(groups[name], n) {
					members = append(members, i+1)
				}
			}
			if len(members) > 0 {
				cats = append(cats, map[string]any{"name": name, "members": members})
			}
		}
		b, _ := json.Marshal(map[string]any{"categories": cats})
		return completion(string(b))
	}
}

func buildHub(t *testing.T, f *kgFixture) {
	for _, n := range []string{"Alice", "Bob", "Carol", "Dave", "Paris", "Rome", "Zed"} {
		f.entity(t, n, 2, 1)
	}
	for _, n := range []string{"Bob", "Carol", "Dave"} {
		f.link(t, "Alice", "works_with", n, 1)
	}
	f.link(t, "Alice", "visited", "Paris", 1)
	f.link(t, "Rome", "visited_by", "Alice", 1)
	f.link(t, "Alice", "knows", "Zed", 1)
}

func TestLimbicOrgOrganisesEachHubOnce(t *testing.T) {
	f := newKGFixture(t, categoriseBy(map[string][]string{"Colleagues": {"Bob", "Carol", "Dave"}, "Places": {"Paris", "Rome"}}))
	buildHub(t, f)
	d := f.deps()
	d.OrgHubDegree = 6 // Alice has exactly six neighbours
	ctx := singleton.WithLease(context.Background(), lease(t, f.rdb, jobs.LimbicOrg, "run-1"))

	res, err := work(ctx, d, jobs.LimbicOrg, &jobs.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	if res["hubs_organised"] != 1 || res["categories_created"] != 2 || res["members_placed"] != 5 || res["members_left_out"] != 1 || res["llm_calls"] != 1 {
		t.Errorf("result %v", res)
	}
	paths := f.exec(t, `MATCH (h:Entity)-[:REL {type: 'has_category'}]->(c:Category)-[:REL {type: 'in_category'}]->(m:Entity)
RETURN h.name + ' > ' + c.name + ' > ' + m.name ORDER BY c.name, m.name`, nil).Rows
	var got []string
	for _, row := range paths {
		got = append(got, row[0].(string))
	}
	want := []string{"Alice > Colleagues > Bob", "Alice > Colleagues > Carol", "Alice > Colleagues > Dave", "Alice > Places > Paris", "Alice > Places > Rome"}
	if !slices.Equal(got, want) {
		t.Errorf("hierarchy %q, want %q", got, want)
	}

	before := f.dump(t)
	res, err = work(ctx, d, jobs.LimbicOrg, &jobs.Empty{})
	if err != nil || res["hubs_examined"] != 0 || len(f.llm.Calls()) != 1 {
		t.Errorf("second run: %v, %v after %d calls; want nothing to do", res, err, len(f.llm.Calls()))
	}
	if after := f.dump(t); after != before {
		t.Errorf("second run changed the graph:\n%s\nwas\n%s", after, before)
	}
}

func TestLimbicOrgBelowTheThresholdAsksNothing(t *testing.T) {
	f := newKGFixture(t, categoriseBy(nil))
	buildHub(t, f)
	d := f.deps()
	d.OrgHubDegree = 7
	res, err := work(context.Background(), d, jobs.LimbicOrg, &jobs.Empty{})
	if err != nil || res["hubs_examined"] != 0 || len(f.llm.Calls()) != 0 {
		t.Errorf("%v, %v, %d calls; want no hub (Alice has six neighbours)", res, err, len(f.llm.Calls()))
	}
}

func TestLimbicOrgGarbageOrALostLeaseLeavesTheGraphAlone(t *testing.T) {
	t.Run("garbage", func(t *testing.T) {
		f := newKGFixture(t, func(string) scriptedReply { return completion("Colleagues: Bob, Carol, Dave") })
		buildHub(t, f)
		before := f.dump(t)
		_, err := work(context.Background(), f.deps(), jobs.LimbicOrg, &jobs.Empty{})
		if !errors.Is(err, hubs.ErrBadAnswer) || !errors.Is(err, asynq.SkipRetry) {
			t.Errorf("err = %v, want a bad answer, not retried", err)
		}
		if f.dump(t) != before {
			t.Error("graph changed")
		}
	})
	t.Run("lost lease", func(t *testing.T) {
		f := newKGFixture(t, categoriseBy(map[string][]string{"Colleagues": {"Bob", "Carol", "Dave"}}))
		buildHub(t, f)
		before := f.dump(t)
		ours := lease(t, f.rdb, jobs.LimbicOrg, "run-1")
		lease(t, f.rdb, jobs.LimbicOrg, "run-1")
		_, err := work(singleton.WithLease(context.Background(), ours), f.deps(), jobs.LimbicOrg, &jobs.Empty{})
		if !errors.Is(err, singleton.ErrLost) || !errors.Is(err, asynq.SkipRetry) {
			t.Errorf("err = %v, want a lost lease, not retried", err)
		}
		if f.dump(t) != before {
			t.Error("graph changed")
		}
	})
}
