package hubs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/clients/llm/llmtest"
	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
	"github.com/stargazer/stargazer-jobs/internal/testkit/falkortest"
)

func TestParseCategoriesKeepsOnlyValidParts(t *testing.T) {
	h := hub{Key: "hub", ExistingCategory: map[string]category{
		"colleagues": {Key: "existing-key", Name: "Colleagues", Existing: true},
	}}
	ns := make([]neighbour, 6)
	tests := []struct {
		name    string
		content string
		bad     bool
		want    string // "name:key-kind:members;..."
		dropped int
	}{
		{"valid", `{"categories":[{"name":"Friends","members":[1,2]},{"name":"Places","members":[3,4,5]}]}`, false, "Friends:new:0,1;Places:new:2,3,4", 0},
		{"existing category reused by normalized name", `{"categories":[{"name":"colleagues.","members":[6]}]}`, false, "Colleagues:existing:5", 0},
		{"same name twice is one category", `{"categories":[{"name":"Friends","members":[1]},{"name":"FRIENDS","members":[2]}]}`, false, "Friends:new:0,1", 0},
		{"unknown, fractional, string and repeated members dropped", `{"categories":[{"name":"Friends","members":[1,7,0,1.5,"2",1,2]}]}`, false, "Friends:new:0,1", 5},
		{"a member in two categories stays in the first", `{"categories":[{"name":"A","members":[1,2]},{"name":"B","members":[2,3,4]}]}`, false, "A:new:0,1;B:new:2,3", 1},
		{"a new category of one is dropped", `{"categories":[{"name":"Solo","members":[1]},{"name":"Pair","members":[2,3]}]}`, false, "Pair:new:1,2", 1},
		{"nameless and overlong names dropped", `{"categories":[{"name":"  ","members":[1,2]},{"members":[3,4]},{"name":"` + strings.Repeat("x", 61) + `","members":[5,6]}]}`, false, "", 3},
		{"empty answer is valid", `{"categories":[]}`, false, "", 0},
		{"garbage", `Here are some categories: friends`, true, "", 0},
		{"wrong schema", `{"groups":[{"name":"A","members":[1,2]}]}`, true, "", 0},
		{"categories not an array", `{"categories":"A"}`, true, "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cats, dropped, err := parseCategories(tt.content, h, ns, 12)
			if tt.bad != (err != nil) || err != nil && !errors.Is(err, ErrBadAnswer) {
				t.Fatalf("err = %v, want ErrBadAnswer: %v", err, tt.bad)
			}
			var got []string
			for _, c := range cats {
				kind := "new"
				if c.Existing {
					kind = "existing"
					if c.Key != "existing-key" {
						t.Errorf("existing category got key %s", c.Key)
					}
				} else if c.Key != CategoryKey("hub", c.Name) {
					t.Errorf("category %s key %s, want CategoryKey", c.Name, c.Key)
				}
				var ms []string
				for _, m := range c.Members {
					ms = append(ms, fmt.Sprint(m))
				}
				got = append(got, c.Name+":"+kind+":"+strings.Join(ms, ","))
			}
			if g := strings.Join(got, ";"); g != tt.want {
				t.Errorf("categories %q, want %q", g, tt.want)
			}
			if dropped != tt.dropped {
				t.Errorf("dropped %d, want %d", dropped, tt.dropped)
			}
		})
	}
}

func TestCategoryKeyIsStablePerHubAndName(t *testing.T) {
	if CategoryKey("h1", "Projects") != CategoryKey("h1", " projects. ") {
		t.Error("the same name, spelled differently, gives another key")
	}
	if CategoryKey("h1", "Projects") == CategoryKey("h2", "Projects") {
		t.Error("two hubs share a category")
	}
	if k := CategoryKey("h1", "Projects"); len(k) != 32 {
		t.Errorf("key %q is not 32 hex digits", k)
	}
}

// orgLLM answers chat/completions with categories chosen by name: groups
// maps a category name to the entity names it takes.
type orgLLM struct {
	srv    *httptest.Server
	mu     sync.Mutex
	shown  [][]string // the names shown in each call
	answer func(names []string) (status int, retryAfter, content string)
}

func newOrgLLM(t *testing.T, answer func(names []string) (int, string, string)) *orgLLM {
	f := &orgLLM{answer: answer}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Messages []llm.Message `json:"messages"`
		}
		if json.NewDecoder(r.Body).Decode(&req) != nil || len(req.Messages) == 0 {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		var names []string
		for _, line := range strings.Split(req.Messages[len(req.Messages)-1].Content, "\n") {
			var e shownEntity
			if strings.HasPrefix(line, `{"n":`) && json.Unmarshal([]byte(line), &e) == nil {
				names = append(names, e.Name)
			}
		}
		f.mu.Lock()
		f.shown = append(f.shown, names)
		f.mu.Unlock()
		status, retryAfter, content := f.answer(names)
		if retryAfter != "" {
			w.Header().Set("Retry-After", retryAfter)
		}
		w.WriteHeader(status)
		if status != http.StatusOK {
			return
		}
		_, _ = w.Write(llmtest.Completion("", content, llm.Usage{}))
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *orgLLM) Shown() [][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.shown)
}

// byName puts each shown name into the category groups lists it under.
func byName(groups map[string][]string) func([]string) (int, string, string) {
	return func(names []string) (int, string, string) {
		type cat struct {
			Name    string `json:"name"`
			Members []int  `json:"members"`
		}
		var cats []cat
		for _, cname := range slices.Sorted(func(yield func(string) bool) {
			for k := range groups {
				if !yield(k) {
					return
				}
			}
		}) {
			c := cat{Name: cname}
			for i, n := range names {
				if slices.Contains(groups[cname], n) {
					c.Members = append(c.Members, i+1)
				}
			}
			if len(c.Members) > 0 {
				cats = append(cats, c)
			}
		}
		b, _ := json.Marshal(map[string]any{"categories": cats})
		return http.StatusOK, "", string(b)
	}
}

// link creates entities as needed and a relationship from one to another.
func link(t *testing.T, g *graph.Graph, from, typ, to string, w float64) {
	t.Helper()
	falkortest.Exec(t, g, `MERGE (a:Entity {key: $ak}) ON CREATE SET a.name = $a, a.type = 'thing', a.mention_count = 1
MERGE (b:Entity {key: $bk}) ON CREATE SET b.name = $b, b.type = 'thing', b.mention_count = 1
MERGE (a)-[r:REL {type: $t}]->(b) ON CREATE SET r.weight = $w, r.last_seen = 1000`,
		map[string]any{"a": from, "ak": graph.EntityKey(from, "thing"), "b": to, "bk": graph.EntityKey(to, "thing"), "t": typ, "w": w})
}

func dump(t *testing.T, g *graph.Graph) string {
	t.Helper()
	var lines []string
	for _, row := range falkortest.Exec(t, g, `MATCH (n) RETURN labels(n)[0], n.key, n.name, n.hub`, nil).Rows {
		lines = append(lines, fmt.Sprint("node ", row))
	}
	for _, row := range falkortest.Exec(t, g, `MATCH (a)-[r:REL]->(b) RETURN a.name, r.type, b.name, r.weight, r.last_seen, r.organised`, nil).Rows {
		lines = append(lines, fmt.Sprint("rel ", row))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

var aliceGroups = map[string][]string{
	"Colleagues": {"Bob", "Carol", "Dave", "Erin"},
	"Places":     {"Paris", "Rome", "Milan"},
	"Loners":     {"Zed"}, // a category of one: dropped
}

func TestOrganiseGroupsAHubOnceAndNeverNests(t *testing.T) {
	g := falkortest.Graph(t, true)
	for _, n := range []string{"Bob", "Carol", "Dave"} {
		link(t, g, "Alice", "works_with", n, 2)
	}
	link(t, g, "Carol", "mentors", "Alice", 1) // both directions with one neighbour
	link(t, g, "Alice", "visited", "Paris", 1.5)
	link(t, g, "Alice", "visited", "Rome", 0.5)
	link(t, g, "Alice", "knows", "Zed", 0.2)
	link(t, g, "Bob", "knows", "Carol", 1) // Bob has 2 neighbours: not a hub
	falkortest.Exec(t, g, `MATCH (a:Entity {name: 'Alice'}) CREATE (a)-[:REL {type: 'mentioned_in', weight: 1.0}]->(:Epoch {key: '2026-11-27'})`, nil)

	fake := newOrgLLM(t, byName(aliceGroups))
	o := &Organizer{Graph: g, LLM: llm.New(llm.Options{BaseURL: fake.srv.URL})}
	now := time.UnixMilli(2_000_000)
	opts := Options{Model: "org", MinNeighbours: 1, Now: func() time.Time { return now }}
	rep, err := o.Run(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Hubs != 1 || rep.Organised != 1 || rep.CategoriesCreated != 2 || rep.Placed != 5 || rep.LeftOut != 1 || rep.Dropped != 1 || rep.LLMCalls != 1 {
		t.Errorf("report %+v, want Alice organised into 2 categories, 5 placed, Zed left out", rep)
	}
	shown := fake.Shown()
	if len(shown) != 1 || len(shown[0]) != 6 || shown[0][0] != "Bob" && shown[0][0] != "Carol" && shown[0][0] != "Dave" {
		t.Errorf("shown %q, want Alice's six entity neighbours, strongest first (no epoch)", shown)
	}
	rels := falkortest.Exec(t, g, `MATCH (a)-[r:REL]->(b) WHERE r.type IN ['has_category', 'in_category'] RETURN a.name, r.type, b.name, r.weight ORDER BY a.name, b.name`, nil).Rows
	want := [][]any{
		{"Alice", "has_category", "Colleagues", 2.0},
		{"Alice", "has_category", "Places", 1.5},
		{"Colleagues", "in_category", "Bob", 2.0},
		{"Colleagues", "in_category", "Carol", 2.0},
		{"Colleagues", "in_category", "Dave", 2.0},
		{"Places", "in_category", "Paris", 1.5},
		{"Places", "in_category", "Rome", 0.5},
	}
	if fmt.Sprint(rels) != fmt.Sprint(want) {
		t.Errorf("category relationships\n%v\nwant\n%v", rels, want)
	}
	res := falkortest.Exec(t, g, `MATCH (a:Entity {name: 'Alice'})-[r:REL]-(m:Entity) RETURN m.name, r.type, r.organised ORDER BY m.name, r.type`, nil)
	wantMarks := "[[Bob works_with true] [Carol mentors true] [Carol works_with true] [Dave works_with true] [Paris visited true] [Rome visited true] [Zed knows false]]"
	if fmt.Sprint(res.Rows) != wantMarks {
		t.Errorf("Alice's original relationships %v, want kept and marked %v", res.Rows, wantMarks)
	}
	if k := falkortest.Exec(t, g, `MATCH (c:Category {name: 'Colleagues'}) RETURN c.key, c.hub`, nil).Rows; len(k) != 1 || k[0][0] != CategoryKey(graph.EntityKey("Alice", "thing"), "Colleagues") || k[0][1] != graph.EntityKey("Alice", "thing") {
		t.Errorf("category node %v", k)
	}

	before := dump(t, g)
	rep, err = o.Run(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Hubs != 0 || len(fake.Shown()) != 1 {
		t.Errorf("second run: %+v, %d calls; want nothing to do", rep, len(fake.Shown()))
	}
	if after := dump(t, g); after != before {
		t.Errorf("second run changed the graph:\n%s\nwas\n%s", after, before)
	}

	// New neighbours: only they are shown, with the existing categories,
	// and a reused name lands in the existing category.
	link(t, g, "Alice", "works_with", "Erin", 1)
	link(t, g, "Alice", "visited", "Milan", 1)
	link(t, g, "Alice", "knows", "Yan", 1)
	if _, err := o.Run(context.Background(), opts); err != nil {
		t.Fatal(err)
	}
	if s := fake.Shown(); len(s) != 2 || !slices.Equal(slices.Sorted(slices.Values(s[1])), []string{"Erin", "Milan", "Yan"}) {
		t.Errorf("shown %q, want only the three new neighbours", s)
	}
	if n := falkortest.Exec(t, g, `MATCH (c:Category) RETURN count(c)`, nil).Rows[0][0]; n != int64(2) {
		t.Errorf("%v categories, want still 2", n)
	}
	if n := falkortest.Exec(t, g, `MATCH (:Category {name: 'Colleagues'})-[:REL {type: 'in_category'}]->(m:Entity {name: 'Erin'}) RETURN count(m)`, nil).Rows[0][0]; n != int64(1) {
		t.Error("Erin is not in the existing Colleagues category")
	}
	// Never nested: no category hangs from a category, and no category
	// is a hub.
	if n := falkortest.Exec(t, g, `MATCH (:Category)-[r:REL]->(:Category) RETURN count(r)`, nil).Rows[0][0]; n != int64(0) {
		t.Errorf("%v category-to-category relationships", n)
	}
	if rep, err := o.Run(context.Background(), opts); err != nil || rep.Hubs != 0 {
		t.Errorf("third run: %+v, %v; want nothing to do", rep, err)
	}
}

func TestAnUnusableAnswerOrALostLeaseLeavesTheHubAsItWas(t *testing.T) {
	tests := []struct {
		name   string
		answer func([]string) (int, string, string)
		verify func(context.Context) error
		check  func(t *testing.T, rep Report, err error)
	}{
		{name: "garbage", answer: func([]string) (int, string, string) { return 200, "", "Colleagues: Bob, Carol" },
			check: func(t *testing.T, rep Report, err error) {
				if !errors.Is(err, ErrBadAnswer) || rep.LLMErrors != 1 || rep.Organised != 0 {
					t.Errorf("%+v, %v", rep, err)
				}
			}},
		{name: "wrong schema", answer: func([]string) (int, string, string) { return 200, "", `{"Colleagues":[1,2]}` },
			check: func(t *testing.T, rep Report, err error) {
				if !errors.Is(err, ErrBadAnswer) || rep.LLMErrors != 1 {
					t.Errorf("%+v, %v", rep, err)
				}
			}},
		{name: "rate limited", answer: func([]string) (int, string, string) { return 429, "3", "" },
			check: func(t *testing.T, rep Report, err error) {
				var rl *llm.RateLimitError
				if !errors.As(err, &rl) || rl.RetryAfter() != 3*time.Second {
					t.Errorf("%+v, %v", rep, err)
				}
			}},
		{name: "lost lease", answer: byName(aliceGroups), verify: func(context.Context) error { return errors.New("lease lost") },
			check: func(t *testing.T, rep Report, err error) {
				if err == nil || err.Error() != "lease lost" || rep.Organised != 0 {
					t.Errorf("%+v, %v", rep, err)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := falkortest.Graph(t, true)
			for _, n := range []string{"Bob", "Carol", "Dave", "Paris"} {
				link(t, g, "Alice", "knows", n, 1)
			}
			before := dump(t, g)
			fake := newOrgLLM(t, tt.answer)
			o := &Organizer{Graph: g, LLM: llm.New(llm.Options{BaseURL: fake.srv.URL}), Verify: tt.verify}
			rep, err := o.Run(context.Background(), Options{Model: "org"})
			tt.check(t, rep, err)
			if after := dump(t, g); after != before {
				t.Errorf("graph changed:\n%s\nwas\n%s", after, before)
			}
		})
	}
}
