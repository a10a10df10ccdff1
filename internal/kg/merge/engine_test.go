package merge

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
	"github.com/stargazer/stargazer-jobs/internal/testkit/falkortest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

// buildDuplicates builds two exact duplicates, "Alice" (kept: more
// mentions) and "ALICE", whose relationships cover every case a merge
// meets: both link to the same third node in both directions, one has a
// relationship of its own, they link to each other and one to itself (both
// would become self-loops), and one has a stray parallel duplicate of a
// relationship, so a single batch maps two rows onto the same relationship
// of the kept node. No schema: exact duplicates only exist in graphs
// without the unique key constraint.
func buildDuplicates(t *testing.T, g *graph.Graph) {
	t.Helper()
	addEntities(t, g,
		ent{Name: "Alice", Type: "person", Key: "alice-k", Mentions: 5, First: 100, Last: 500},
		ent{Name: "ALICE", Type: "Person", Key: "alice-d", Mentions: 2, First: 50, Last: 900},
		ent{Name: "Mallory", Type: "person", Key: "mallory", Mentions: 1, First: 1, Last: 1},
		ent{Name: "Acme", Type: "organization", Key: "acme", Mentions: 1, First: 1, Last: 1},
	)
	addRels(t, g,
		rel{"alice-k", "knows", "mallory", 1, 100},
		rel{"alice-d", "knows", "mallory", 2, 200},
		rel{"alice-d", "knows", "mallory", 0.5, 300}, // parallel duplicate
		rel{"mallory", "likes", "alice-d", 3, 50},
		rel{"mallory", "likes", "alice-k", 4, 60},
		rel{"alice-d", "works_at", "acme", 1.5, 70},
		rel{"alice-k", "knows", "alice-d", 1, 10}, // becomes a self-loop
		rel{"alice-d", "knows", "alice-k", 1, 10}, // becomes a self-loop
		rel{"alice-d", "self", "alice-d", 1, 10},  // already a self-loop
	)
}

var wantAfterMerge = []string{
	"Alice -knows-> Mallory 3.5 300",
	"Alice -works_at-> Acme 1.5 70",
	"Mallory -likes-> Alice 7 60",
}

func TestMergeMovesEveryRelationshipSumsWeightsAndDropsSelfLoops(t *testing.T) {
	g := falkortest.Graph(t, false)
	buildDuplicates(t, g)
	e := &Engine{Graph: g}
	rep, err := e.Merge(context.Background(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got := relsOf(t, g); !slices.Equal(got, wantAfterMerge) {
		t.Errorf("relationships after merge:\n%q\nwant\n%q", got, wantAfterMerge)
	}
	res := falkortest.Exec(t, g, `MATCH (e:Entity {key: 'alice-k'}) RETURN e.name, e.mention_count, e.first_seen, e.last_seen, e.aliases`, nil)
	want := []any{"Alice", int64(7), int64(50), int64(900), []any{"ALICE"}}
	if len(res.Rows) != 1 || !equalRow(res.Rows[0], want) {
		t.Errorf("kept entity %v, want %v", res.Rows, want)
	}
	if n := falkortest.Exec(t, g, `MATCH (e:Entity {key: 'alice-d'}) RETURN count(e)`, nil).Rows[0][0]; n != int64(0) {
		t.Errorf("duplicate still there (%v)", n)
	}
	if rep.Merged != 1 || rep.ExactMerged != 1 || rep.EdgesMoved != 4 || rep.SelfLoopsDropped != 3 || rep.LLMCalls != 0 {
		t.Errorf("report %+v, want 1 exact merge, 4 moved, 3 self-loops dropped, no call", rep)
	}

	before := snapshot(t, g)
	rep, err = e.Merge(context.Background(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if after := snapshot(t, g); after != before || rep.Merged != 0 || rep.EdgesMoved != 0 {
		t.Errorf("second run changed the graph (report %+v):\n%s\nwas\n%s", rep, after, before)
	}
}

func equalRow(got, want []any) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		gl, ok1 := got[i].([]any)
		wl, ok2 := want[i].([]any)
		if ok1 && ok2 {
			if !slices.Equal(gl, wl) {
				return false
			}
			continue
		}
		if got[i] != want[i] {
			return false
		}
	}
	return true
}

// failAfter returns a verify that passes n times, then fails like a lost
// lease.
func failAfter(n int) func(context.Context) error {
	return func(context.Context) error {
		if n == 0 {
			return errLost
		}
		n--
		return nil
	}
}

var errLost = errors.New("singleton lease lost (test)")

func TestAMergeInterruptedBetweenWritesConvergesOnTheNextRun(t *testing.T) {
	for _, writes := range []int{1, 2, 4, 6} {
		g := falkortest.Graph(t, false)
		buildDuplicates(t, g)
		ids := falkortest.Exec(t, g, `MATCH (k:Entity {key: 'alice-k'}), (d:Entity {key: 'alice-d'}) RETURN id(k), id(d)`, nil).Rows[0]
		keep, dup := node{ids[0].(int64), "alice-k"}, node{ids[1].(int64), "alice-d"}
		// One relationship per write, and the "process dies" (the lease is
		// lost) after a few writes.
		m := merger{g: g, verify: failAfter(writes), batch: 1}
		if _, err := m.merge(context.Background(), keep, dup); !errors.Is(err, errLost) {
			t.Fatalf("after %d writes: err = %v, want the lost lease", writes, err)
		}
		if _, err := (&Engine{Graph: g}).Merge(context.Background(), Options{}); err != nil {
			t.Fatal(err)
		}
		if got := relsOf(t, g); !slices.Equal(got, wantAfterMerge) {
			t.Errorf("interrupted after %d writes, then rerun:\n%q\nwant\n%q", writes, got, wantAfterMerge)
		}
		res := falkortest.Exec(t, g, `MATCH (e:Entity {key: 'alice-k'}) RETURN e.mention_count`, nil)
		if res.Rows[0][0] != int64(7) {
			t.Errorf("interrupted after %d writes: mention_count %v, want 7 (counted once)", writes, res.Rows[0][0])
		}
	}
}

func TestAMergeWhoseOwnershipCheckFailsWritesNothing(t *testing.T) {
	g := falkortest.Graph(t, false)
	buildDuplicates(t, g)
	before := snapshot(t, g)
	_, err := (&Engine{Graph: g, Verify: failAfter(0)}).Merge(context.Background(), Options{})
	if !errors.Is(err, errLost) {
		t.Fatalf("err = %v, want the lost lease", err)
	}
	if after := snapshot(t, g); after != before {
		t.Errorf("graph changed:\n%s\nwas\n%s", after, before)
	}
}

// buildCandidates builds entities whose duplicates need judging.
func buildCandidates(t *testing.T, g *graph.Graph) {
	t.Helper()
	addEntities(t, g,
		ent{Name: "New York City", Type: "place", Mentions: 10, First: 1, Last: 10},
		ent{Name: "New York Cty", Type: "place", Mentions: 1, First: 5, Last: 20},
		ent{Name: "Apple", Type: "organization", Mentions: 4, First: 1, Last: 1},
		ent{Name: "apple", Type: "fruit", Mentions: 2, First: 1, Last: 1},
		ent{Name: "John Smith", Type: "person", Mentions: 3, First: 1, Last: 1},
		ent{Name: "John Smyth", Type: "person", Mentions: 3, First: 1, Last: 1},
		ent{Name: "Open AI", Type: "organization", Mentions: 1, First: 1, Last: 1},
		ent{Name: "OpenAI", Type: "organization", Mentions: 6, First: 1, Last: 1},
		ent{Name: "Zebra", Type: "animal", Mentions: 1, First: 1, Last: 1},
	)
	k := func(name, typ string) string { return graph.EntityKey(name, typ) }
	addRels(t, g,
		rel{k("New York Cty", "place"), "located_in", k("Zebra", "animal"), 1, 20},
		rel{k("John Smith", "person"), "works_at", k("Apple", "organization"), 1, 1},
		rel{k("Open AI", "organization"), "employs", k("John Smyth", "person"), 2, 1},
	)
}

var judgeGroups = [][]string{{"New York City", "New York Cty"}, {"Open AI", "OpenAI"}}

func TestTheLLMJudgesUncertainPairsAndItsVerdictsAreRemembered(t *testing.T) {
	g := falkortest.Graph(t, true)
	buildCandidates(t, g)
	rdb := redistest.Start(t).Client(t)
	fake := newFakeLLM(t, sameNames(judgeGroups...))
	now := time.UnixMilli(1_800_000_000_000)
	e := &Engine{Graph: g, LLM: fake.client(), Memory: NewMemory(rdb, 0)}
	opts := Options{Model: "judge", Now: func() time.Time { return now }}

	rep, err := e.Merge(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Candidates != 4 || rep.Judged != 4 || rep.Same != 2 || rep.Merged != 2 || rep.LLMCalls != 1 || rep.LLMErrors != 0 {
		t.Errorf("report %+v, want 4 candidates judged in one call, 2 merged", rep)
	}
	res := falkortest.Exec(t, g, `MATCH (e:Entity) RETURN e.name ORDER BY e.name`, nil)
	var names []string
	for _, row := range res.Rows {
		names = append(names, row[0].(string))
	}
	want := []string{"Apple", "John Smith", "John Smyth", "New York City", "Open AI", "Zebra", "apple"}
	if !slices.Equal(names, want) {
		t.Errorf("entities %q, want %q (the longer name kept by the model's choice)", names, want)
	}
	if got := relsOf(t, g); !slices.Contains(got, "New York City -located_in-> Zebra 1 20") || !slices.Contains(got, "Open AI -employs-> John Smyth 2 1") {
		t.Errorf("relationships %q do not follow the merges", got)
	}
	if n := rdb.HLen(context.Background(), VerdictsKey).Val(); n != 4 {
		t.Errorf("%d verdicts remembered, want 4", n)
	}
	for _, p := range fake.Seen() {
		if p.A.Name == "New York Cty" || p.B.Name == "New York Cty" {
			cty := p.A
			if p.B.Name == "New York Cty" {
				cty = p.B
			}
			if cty.Type != "place" || cty.Mentions != 1 || !slices.Equal(cty.Related, []string{"located_in Zebra"}) {
				t.Errorf("the model was shown %+v, want its type, mentions and relationships", cty)
			}
		}
	}

	before := snapshot(t, g)
	rep, err = e.Merge(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if fake.Calls() != 1 || rep.Remembered != 2 || rep.Merged != 0 {
		t.Errorf("second run: %d calls in all, report %+v; want no new call, the 2 distinct pairs remembered", fake.Calls(), rep)
	}
	if after := snapshot(t, g); after != before {
		t.Errorf("second run changed the graph:\n%s\nwas\n%s", after, before)
	}

	// The merged-away spelling is extracted again (same key): the memory
	// merges it without asking.
	addEntities(t, g, ent{Name: "New York Cty", Type: "place", Mentions: 1, First: 30, Last: 30})
	rep, err = e.Merge(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if fake.Calls() != 1 || rep.Merged != 1 {
		t.Errorf("re-extracted duplicate: %d calls in all, report %+v; want merged from memory", fake.Calls(), rep)
	}

	// A month later the verdicts are forgotten and asked again.
	now = now.Add(DefaultMemoryTTL + time.Hour)
	if _, err := e.Merge(context.Background(), opts); err != nil {
		t.Fatal(err)
	}
	if fake.Calls() != 2 {
		t.Errorf("%d calls after the memory expired, want 2", fake.Calls())
	}
}

func TestBadLLMAnswersMergeNothing(t *testing.T) {
	valid := sameNames(judgeGroups...)
	tests := []struct {
		name    string
		answer  func([]promptPair) (int, string, string)
		timeout time.Duration
		check   func(t *testing.T, err error)
		// merged is how many pairs still merge (from the valid part of
		// a partly valid answer).
		merged     int
		remembered int64
	}{
		{name: "garbage", answer: func([]promptPair) (int, string, string) { return 200, "", "they look the same to me" },
			check: func(t *testing.T, err error) { wantIs(t, err, ErrBadAnswer) }},
		{name: "wrong schema", answer: func([]promptPair) (int, string, string) { return 200, "", `{"same":[1,2]}` },
			check: func(t *testing.T, err error) { wantIs(t, err, ErrBadAnswer) }},
		{name: "verdicts with the wrong types", answer: func(ps []promptPair) (int, string, string) {
			return 200, "", `{"verdicts":[{"pair":1,"same":"true","keep":"a","confidence":"high"}]}`
		}, check: func(t *testing.T, err error) { wantNil(t, err) }},
		{name: "only the first pairs answered", answer: func(ps []promptPair) (int, string, string) {
			_, _, all := valid(ps[:1])
			return 200, "", all
		}, check: func(t *testing.T, err error) { wantNil(t, err) }, merged: -1, remembered: 1},
		{name: "rate limited", answer: func([]promptPair) (int, string, string) { return http.StatusTooManyRequests, "7", "" },
			check: func(t *testing.T, err error) {
				var rl *llm.RateLimitError
				if !errors.As(err, &rl) || rl.RetryAfter() != 7*time.Second {
					t.Errorf("err = %v, want a rate limit with its Retry-After", err)
				}
			}},
		{name: "timeout", timeout: 100 * time.Millisecond, answer: func(ps []promptPair) (int, string, string) {
			time.Sleep(400 * time.Millisecond)
			return valid(ps)
		}, check: func(t *testing.T, err error) {
			if err == nil || errors.Is(err, ErrBadAnswer) {
				t.Errorf("err = %v, want a timeout error", err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := falkortest.Graph(t, true)
			buildCandidates(t, g)
			rdb := redistest.Start(t).Client(t)
			fake := newFakeLLM(t, tt.answer)
			client := llm.New(llm.Options{BaseURL: fake.srv.URL + "/v1", Timeout: tt.timeout})
			e := &Engine{Graph: g, LLM: client, Memory: NewMemory(rdb, 0)}
			before := snapshot(t, g)
			rep, err := e.Merge(context.Background(), Options{Model: "judge"})
			tt.check(t, err)
			if tt.merged == 0 && snapshot(t, g) != before {
				t.Errorf("graph changed")
			}
			if tt.merged == 0 && rep.Merged != 0 {
				t.Errorf("merged %d", rep.Merged)
			}
			if rep.LLMErrors != 1 || rep.Unjudged == 0 || rep.LastLLMError == "" {
				t.Errorf("report %+v, want the failed call counted", rep)
			}
			if n := rdb.HLen(context.Background(), VerdictsKey).Val(); n != tt.remembered {
				t.Errorf("%d verdicts remembered, want %d (unjudged pairs are asked again next time)", n, tt.remembered)
			}
		})
	}
}

func wantIs(t *testing.T, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Errorf("err = %v, want %v", err, target)
	}
}

func wantNil(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Errorf("err = %v, want none (the problems are counted)", err)
	}
}

func TestPruneDeletesExactlyTheLowValueEntities(t *testing.T) {
	g := falkortest.Graph(t, true)
	const day = int64(24 * time.Hour / time.Millisecond)
	now := int64(1_800_000_000_000)
	old, recent := now-40*day, now-2*day
	addEntities(t, g,
		ent{Name: "old once", Type: "t", Mentions: 1, First: old, Last: old},       // pruned
		ent{Name: "old never", Type: "t", Mentions: 0, First: old, Last: old},      // pruned
		ent{Name: "old twice", Type: "t", Mentions: 2, First: old, Last: old},      // more than one mention
		ent{Name: "recent once", Type: "t", Mentions: 1, First: old, Last: recent}, // seen recently
		ent{Name: "old linked", Type: "t", Mentions: 1, First: old, Last: old},     // has a relationship
		ent{Name: "old target", Type: "t", Mentions: 1, First: old, Last: old},     // has a relationship
	)
	falkortest.Exec(t, g, `CREATE (:Entity {key: 'undated', name: 'undated', mention_count: 1})`, nil)                                            // unknown age
	falkortest.Exec(t, g, `CREATE (:Entity {key: 'first only', name: 'first only', mention_count: 1, first_seen: $f})`, map[string]any{"f": old}) // pruned
	falkortest.Exec(t, g, `CREATE (:Category {key: 'cat', name: 'cat'})`, nil)                                                                    // not an entity
	addRels(t, g, rel{graph.EntityKey("old linked", "t"), "about", graph.EntityKey("old target", "t"), 1, old})

	cutoff := time.UnixMilli(now - 30*day)
	n, err := Prune(context.Background(), g, nil, cutoff)
	if err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Errorf("pruned %d, want 3", n)
	}
	res := falkortest.Exec(t, g, `MATCH (e) RETURN e.name ORDER BY e.name`, nil)
	var left []string
	for _, row := range res.Rows {
		left = append(left, row[0].(string))
	}
	want := []string{"cat", "old linked", "old target", "old twice", "recent once", "undated"}
	if !slices.Equal(left, want) {
		t.Errorf("left %q, want %q", left, want)
	}
	if n, err := Prune(context.Background(), g, nil, cutoff); err != nil || n != 0 {
		t.Errorf("second prune: %d, %v; want nothing", n, err)
	}
	if _, err := Prune(context.Background(), g, failAfter(0), time.UnixMilli(now)); !errors.Is(err, errLost) {
		t.Errorf("prune with a lost lease: %v", err)
	}
}

func TestTheScanReadsEveryPageOfIDs(t *testing.T) {
	g := falkortest.Graph(t, false)
	falkortest.Exec(t, g, `UNWIND range(1, $n) AS i CREATE (:Entity {key: 'filler' + toString(i), name: 'filler ' + toString(i), normalized_name: 'filler ' + toString(i), type: 'filler'})`,
		map[string]any{"n": 2*scanPage + 10})
	addEntities(t, g,
		ent{Name: "Late", Type: "thing", Key: "late-1", Mentions: 2},
		ent{Name: "LATE", Type: "thing", Key: "late-2", Mentions: 1},
	)
	rep, err := (&Engine{Graph: g}).Merge(context.Background(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Entities != 2*scanPage+12 || rep.ExactMerged != 1 {
		t.Errorf("report %+v, want every entity read and the late duplicates merged", rep)
	}
}

// A merge in the middle of a decay run must not let the decay reach a
// moved relationship twice: the moved relationship keeps the newest decay
// stamp of the ones it replaces.
func TestAMergeKeepsTheNewestDecayStamp(t *testing.T) {
	g := falkortest.Graph(t, false)
	buildDuplicates(t, g)
	falkortest.Exec(t, g, `MATCH (:Entity {key: 'alice-d'})-[r:REL {type: 'knows'}]->(:Entity {key: 'mallory'}) SET r.decayed_at = 7`, nil)
	falkortest.Exec(t, g, `MATCH (:Entity {key: 'alice-k'})-[r:REL {type: 'knows'}]->(:Entity {key: 'mallory'}) SET r.decayed_at = 3`, nil)
	falkortest.Exec(t, g, `MATCH (:Entity {key: 'alice-d'})-[r:REL {type: 'works_at'}]->() SET r.decayed_at = 5`, nil)
	if _, err := (&Engine{Graph: g}).Merge(context.Background(), Options{}); err != nil {
		t.Fatal(err)
	}
	res := falkortest.Exec(t, g, `MATCH (:Entity {key: 'alice-k'})-[r:REL]->(b) WHERE r.type IN ['knows', 'works_at'] RETURN r.type, r.decayed_at ORDER BY r.type`, nil)
	if len(res.Rows) != 2 || !equalRow(res.Rows[0], []any{"knows", int64(7)}) || !equalRow(res.Rows[1], []any{"works_at", int64(5)}) {
		t.Fatalf("decay stamps after the merge: %v, want knows 7 and works_at 5", res.Rows)
	}
}
