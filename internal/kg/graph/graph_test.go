package graph_test

import (
	"context"
	"errors"
	"math"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
	"github.com/stargazer/stargazer-jobs/internal/testkit/falkortest"
)

// newGraph starts a FalkorDB server for the test and returns graph "g" on
// it.
func newGraph(t *testing.T, moduleArgs ...string) *graph.Graph {
	t.Helper()
	g, _ := newGraphClient(t, moduleArgs...)
	return g
}

// newGraphClient is newGraph that also returns the client, for tests that
// need a second graph or client on the same server.
func newGraphClient(t *testing.T, moduleArgs ...string) (*graph.Graph, *redis.Client) {
	t.Helper()
	rdb := falkortest.Start(t, moduleArgs...).Client(t)
	return graph.New(rdb, "g"), rdb
}

// hostileStrings are texts an entity name or relation could contain, which
// would break or change a query if it were pasted into the query text.
var hostileStrings = []string{
	`"}) DETACH DELETE n //`,
	`'}) DETACH DELETE n //`,
	"` DETACH DELETE n //",
	`\`, `\\`, `\"`, `a\`, `\n`, `\u0041`, `\x41`, `\'`,
	"line one\nline two\r\n\ttabbed",
	"$x", "CYPHER x=1 RETURN 2", "RETURN 1; MATCH (n) DELETE n",
	"emoji 😀👩‍👩‍👧 and ünïcödé, 中文, العربية",
	"\u2028\u2029\ufeff",
	"\x01\x1f\x7f",
	"",
	strings.Repeat("long ", 20000),
}

func TestParamsRoundTripThroughTheServer(t *testing.T) {
	g := newGraph(t)
	tests := []struct {
		name  string
		value any
		want  any
	}{
		{"null", nil, nil},
		{"true", true, true},
		{"false", false, false},
		{"zero", 0, int64(0)},
		{"int", 42, int64(42)},
		{"max int64", int64(math.MaxInt64), int64(math.MaxInt64)},
		{"min int64", int64(math.MinInt64), int64(math.MinInt64)},
		{"uint32", uint32(math.MaxUint32), int64(math.MaxUint32)},
		{"float", 0.25, 0.25},
		{"integral float stays a float", 2.0, 2.0},
		{"large float", 1e300, 1e300},
		{"small float", 1.5e-7, 1.5e-7},
		{"negative float", -3.75, -3.75},
		{"float32", float32(0.5), 0.5},
		{"list", []any{1, "a", nil, true, 2.5}, []any{int64(1), "a", nil, true, 2.5}},
		{"typed list", []string{"x", "y"}, []any{"x", "y"}},
		{"empty list", []int{}, []any{}},
		{"nested list", []any{[]any{1, []any{2}}}, []any{[]any{int64(1), []any{int64(2)}}}},
		{"map", map[string]any{"a": 1, "b": "x"}, map[string]any{"a": int64(1), "b": "x"}},
		{"empty map", map[string]any{}, map[string]any{}},
		{"map with odd keys", map[string]any{"a b": 1, `q"\'`: 2, "😀": 3, "": 4, "1x": 5}, map[string]any{"a b": int64(1), `q"\'`: int64(2), "😀": int64(3), "": int64(4), "1x": int64(5)}},
		{"rows of maps", []map[string]any{{"name": "a", "w": 0.5}, {"name": `"b"`, "w": 1.0}}, []any{map[string]any{"name": "a", "w": 0.5}, map[string]any{"name": `"b"`, "w": 1.0}}},
	}
	for i, s := range hostileStrings {
		tests = append(tests, struct {
			name  string
			value any
			want  any
		}{"hostile string " + string(rune('a'+i)), s, s})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := falkortest.Exec(t, g, "RETURN $v AS v", map[string]any{"v": tt.value})
			got, err := res.Value(0, "v")
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("RETURN $v with v=%#v\n got %#v\nwant %#v", tt.value, got, tt.want)
			}
		})
	}
}

func TestHostileStringsAreStoredAsDataNotRunAsCypher(t *testing.T) {
	g := newGraph(t)
	falkortest.Exec(t, g, "CREATE (:Canary {name: 'still here'})", nil)
	for _, s := range hostileStrings {
		res := falkortest.Exec(t, g, "CREATE (n:Item {name: $name, tags: [$name]}) RETURN n.name AS name", map[string]any{"name": s})
		if got, _ := res.Text(0, "name"); got != s {
			t.Errorf("stored %q, read back %q", s, got)
		}
	}
	res := falkortest.Exec(t, g, "MATCH (n:Item) RETURN count(n) AS items", nil)
	if n, _ := res.Int64(0, "items"); n != int64(len(hostileStrings)) {
		t.Errorf("%d items, want %d", n, len(hostileStrings))
	}
	res = falkortest.Exec(t, g, "MATCH (n:Canary) RETURN n.name AS name", nil)
	if len(res.Rows) != 1 {
		t.Errorf("canary: %v, want it untouched", res.Rows)
	}
	// Lookups by a hostile value find exactly the node that holds it.
	for _, s := range hostileStrings {
		res := falkortest.Exec(t, g, "MATCH (n:Item {name: $name}) RETURN count(n) AS n", map[string]any{"name": s})
		if n, _ := res.Int64(0, "n"); n != 1 {
			t.Errorf("MATCH by %.40q found %d nodes, want 1", s, n)
		}
	}
}

func TestMapParamSetsProperties(t *testing.T) {
	g := newGraph(t)
	res := falkortest.Exec(t, g, "CREATE (n:Item) SET n += $props RETURN n",
		map[string]any{"props": map[string]any{"name": "x", "weight": 0.5, "count": 3, "tags": []string{"a", "b"}}})
	n := res.Rows[0][0].(graph.Node)
	want := map[string]any{"name": "x", "weight": 0.5, "count": int64(3), "tags": []any{"a", "b"}}
	if !reflect.DeepEqual(n.Properties, want) {
		t.Errorf("properties %#v, want %#v", n.Properties, want)
	}
	if res.Stats.PropertiesSet != 4 {
		t.Errorf("PropertiesSet = %d, want 4", res.Stats.PropertiesSet)
	}
}

func TestUnwindOfRowsParam(t *testing.T) {
	g := newGraph(t)
	rows := []map[string]any{{"k": "a", "w": 1.5}, {"k": `b"`, "w": 2}, {"k": "c\\", "w": nil}}
	res := falkortest.Exec(t, g, "UNWIND $rows AS row CREATE (n:Item {k: row.k, w: row.w}) RETURN n.k AS k ORDER BY k",
		map[string]any{"rows": rows})
	if res.Stats.NodesCreated != 3 {
		t.Errorf("NodesCreated = %d, want 3", res.Stats.NodesCreated)
	}
	var keys []string
	for i := range res.Rows {
		k, err := res.Text(i, "k")
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	if want := []string{"a", `b"`, "c\\"}; !reflect.DeepEqual(keys, want) {
		t.Errorf("keys %q, want %q", keys, want)
	}
}

func TestNodesEdgesAndPathsAreDecoded(t *testing.T) {
	g := newGraph(t)
	falkortest.Exec(t, g, `CREATE (:Entity:Person {name: 'alice', age: 30, score: 0.5, ok: true, tags: ['a', 'b']})
		-[:REL {type: 'knows', weight: 1.5}]->(:Entity {name: 'bob'})`, nil)
	res := falkortest.Exec(t, g, `MATCH p = (a {name: 'alice'})-[r]->(b) RETURN a, r, b, p`, nil)
	if want := []string{"a", "r", "b", "p"}; !reflect.DeepEqual(res.Columns, want) {
		t.Fatalf("columns %q, want %q", res.Columns, want)
	}
	row := res.Rows[0]
	a, ok := row[0].(graph.Node)
	if !ok {
		t.Fatalf("a is %T, want graph.Node", row[0])
	}
	if want := []string{"Entity", "Person"}; !reflect.DeepEqual(a.Labels, want) {
		t.Errorf("labels %q, want %q", a.Labels, want)
	}
	wantProps := map[string]any{"name": "alice", "age": int64(30), "score": 0.5, "ok": true, "tags": []any{"a", "b"}}
	if !reflect.DeepEqual(a.Properties, wantProps) {
		t.Errorf("properties %#v, want %#v", a.Properties, wantProps)
	}
	r := row[1].(graph.Edge)
	b := row[2].(graph.Node)
	if r.Type != "REL" || r.Src != a.ID || r.Dst != b.ID {
		t.Errorf("edge %+v, want REL from %d to %d", r, a.ID, b.ID)
	}
	if want := map[string]any{"type": "knows", "weight": 1.5}; !reflect.DeepEqual(r.Properties, want) {
		t.Errorf("edge properties %#v, want %#v", r.Properties, want)
	}
	p := row[3].(graph.Path)
	if len(p.Nodes) != 2 || len(p.Edges) != 1 || p.Nodes[0].ID != a.ID || p.Nodes[1].ID != b.ID || p.Edges[0].ID != r.ID {
		t.Errorf("path %+v, want alice -REL-> bob", p)
	}
}

func TestScalarKindsAreDecoded(t *testing.T) {
	g := newGraph(t)
	res := falkortest.Exec(t, g, `RETURN 1 AS i, 2.0 AS f, 'x' AS s, true AS t, null AS n, [1, [2.5]] AS l,
		{a: 1, b: {c: 'd'}} AS m, point({latitude: 1.5, longitude: -2.25}) AS pt,
		vecf32([0.5, 1.0]) AS v, 1.0 / 0 AS inf`, nil)
	want := []any{
		int64(1), 2.0, "x", true, nil, []any{int64(1), []any{2.5}},
		map[string]any{"a": int64(1), "b": map[string]any{"c": "d"}},
		graph.Point{Latitude: 1.5, Longitude: -2.25},
		[]float32{0.5, 1.0}, math.Inf(1),
	}
	for i, w := range want {
		if got := res.Rows[0][i]; !reflect.DeepEqual(got, w) {
			t.Errorf("%s = %#v, want %#v", res.Columns[i], got, w)
		}
	}
}

// The server prints doubles with 15 significant digits, so what a query
// returns can differ from the stored value in the last bits; parameters
// themselves arrive exactly.
func TestFloatsReadBackWith15SignificantDigits(t *testing.T) {
	g := newGraph(t)
	a, b := 0.1, 0.2
	x := a + b // 0.30000000000000004 (a constant expression would be exactly 0.3)
	res := falkortest.Exec(t, g, "RETURN $x AS x, $x = 0.1 + 0.2 AS exact", map[string]any{"x": x})
	if got, _ := res.Float64(0, "x"); got != 0.3 {
		t.Errorf("x read back as %v, want 0.3 (15 digits)", got)
	}
	if exact, _ := res.Value(0, "exact"); exact != true {
		t.Errorf("$x = 0.1 + 0.2 is %v on the server, want true (parameters are exact)", exact)
	}
}

// The schema names of compact replies are cached by id; labels, types and
// keys created after the cache was filled must still resolve.
func TestNamesCreatedAfterAnEarlierQueryResolve(t *testing.T) {
	g := newGraph(t)
	res := falkortest.Exec(t, g, "CREATE (n:First {a: 1}) RETURN n", nil)
	if n := res.Rows[0][0].(graph.Node); n.Labels[0] != "First" {
		t.Fatalf("labels %q", n.Labels)
	}
	res = falkortest.Exec(t, g, "CREATE (n:Second {b: 2})-[r:LATER {c: 3}]->(:First) RETURN n, r", nil)
	n, r := res.Rows[0][0].(graph.Node), res.Rows[0][1].(graph.Edge)
	if n.Labels[0] != "Second" || n.Properties["b"] != int64(2) || r.Type != "LATER" || r.Properties["c"] != int64(3) {
		t.Errorf("node %+v edge %+v", n, r)
	}
}

func TestDeleteForgetsNamesOfTheOldGraph(t *testing.T) {
	g := newGraph(t)
	ctx := context.Background()
	falkortest.Exec(t, g, "CREATE (n:Old {old: 1}) RETURN n", nil)
	if err := g.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	res := falkortest.Exec(t, g, "CREATE (n:New {new: 1}) RETURN n", nil)
	n := res.Rows[0][0].(graph.Node)
	if n.Labels[0] != "New" || n.Properties["new"] != int64(1) {
		t.Errorf("node %+v, want label New and property new (label id 0 was Old's)", n)
	}
	if err := g.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if err := g.Delete(ctx); err != nil {
		t.Errorf("deleting a missing graph: %v, want nil", err)
	}
}

func TestConcurrentQueriesShareTheNameCache(t *testing.T) {
	g := newGraph(t)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Go(func() {
			label := []string{"A", "B", "C", "D"}[i%4]
			for range 10 {
				res, err := g.Query(context.Background(), "MERGE (n:"+label+" {k: $k}) RETURN n", map[string]any{"k": i})
				if err != nil {
					errs <- err
					return
				}
				if n := res.Rows[0][0].(graph.Node); n.Labels[0] != label {
					errs <- errors.New("label " + n.Labels[0] + ", want " + label)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestStatsAreParsed(t *testing.T) {
	g := newGraph(t)
	res := falkortest.Exec(t, g, "CREATE (:A {x: 1, y: 2})-[:REL {type: 't'}]->(:B)", nil)
	s := res.Stats
	if s.NodesCreated != 2 || s.RelationshipsCreated != 1 || s.PropertiesSet != 3 || s.LabelsAdded != 2 {
		t.Errorf("create stats %+v", s)
	}
	if s.ExecutionTime <= 0 || s.Raw["Nodes created"] != "2" {
		t.Errorf("execution time %v, raw %v", s.ExecutionTime, s.Raw)
	}
	if res.Columns != nil || res.Rows != nil {
		t.Errorf("a query without RETURN has columns %v rows %v", res.Columns, res.Rows)
	}

	s = falkortest.Exec(t, g, "MATCH (a:A) SET a.x = null, a:C REMOVE a:A", nil).Stats
	if s.PropertiesRemoved != 1 || s.LabelsAdded != 1 || s.LabelsRemoved != 1 {
		t.Errorf("update stats %+v", s)
	}
	s = falkortest.Exec(t, g, "CREATE INDEX FOR (n:B) ON (n.k)", nil).Stats
	if s.IndicesCreated != 1 {
		t.Errorf("index stats %+v", s)
	}
	s = falkortest.Exec(t, g, "MATCH (n) DETACH DELETE n", nil).Stats
	if s.NodesDeleted != 2 || s.RelationshipsDeleted != 1 {
		t.Errorf("delete stats %+v", s)
	}
	// The same query text again: the plan comes from the cache.
	if s = falkortest.Exec(t, g, "MATCH (n) DETACH DELETE n", nil).Stats; !s.CachedExecution {
		t.Errorf("second run of a query: CachedExecution false (%+v)", s)
	}
}

func TestServerErrorsAreTyped(t *testing.T) {
	g, rdb := newGraphClient(t)
	ctx := context.Background()
	tests := []struct {
		name    string
		run     func() error
		wantMsg string
		is      error
	}{
		{"syntax error", func() error { _, err := g.Query(ctx, "MATCH (n RETURN n", nil); return err }, "Invalid input", nil},
		{"undefined variable", func() error { _, err := g.Query(ctx, "RETURN x", nil); return err }, "'x' not defined", nil},
		{"missing parameter", func() error { _, err := g.Query(ctx, "RETURN $nope", nil); return err }, "Missing parameters", nil},
		{"run-time error", func() error { _, err := g.Query(ctx, "UNWIND [1, 0] AS x RETURN 1 / x", nil); return err }, "Division by zero", nil},
		{"write in a read-only query", func() error { _, err := g.ROQuery(ctx, "CREATE (:X)", nil); return err }, "read-only", nil},
		{"read of a graph that does not exist", func() error {
			_, err := graph.New(rdb, "nosuch").ROQuery(ctx, "MATCH (n) RETURN n", nil)
			return err
		}, "empty key", graph.ErrNoGraph},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.run()
			var gerr *graph.Error
			if !errors.As(err, &gerr) {
				t.Fatalf("error %v (%T), want a *graph.Error", err, err)
			}
			if gerr.Graph == "" || !strings.Contains(gerr.Msg, tt.wantMsg) {
				t.Errorf("error %+v, want message containing %q", gerr, tt.wantMsg)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("errors.Is(%v, %v) = false", err, tt.is)
			}
			if errors.Is(err, graph.ErrTimeout) {
				t.Errorf("%v counts as a timeout", err)
			}
		})
	}
}

func TestBadParamsFailBeforeReachingTheServer(t *testing.T) {
	// A client pointing nowhere: the error must come from encoding, not I/O.
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1})
	defer rdb.Close()
	g := graph.New(rdb, "g")
	_, err := g.Query(context.Background(), "RETURN $v", map[string]any{"v": math.NaN()})
	if err == nil || !strings.Contains(err.Error(), "parameter v") {
		t.Errorf("error %v, want one about parameter v", err)
	}
}

func TestTransportErrorsAreWrappedNotGraphErrors(t *testing.T) {
	s := falkortest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1})
	defer rdb.Close()
	g := graph.New(rdb, "g")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := g.Query(ctx, "RETURN 1", nil)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error %v, want it to wrap context.Canceled", err)
	}
	var gerr *graph.Error
	if errors.As(err, &gerr) {
		t.Errorf("transport error %v is a *graph.Error", err)
	}
}

// slowRead enumerates 10^8 rows on the server (several seconds) without
// returning any of them.
const slowRead = "UNWIND range(1, 10000) AS a UNWIND range(1, 10000) AS b WITH a, b WHERE a * b < 0 RETURN count(*) AS n"

func TestReadTimeoutAbortsTheQueryOnTheServer(t *testing.T) {
	g, rdb := newGraphClient(t)
	falkortest.Exec(t, g, "CREATE (:X)", nil) // RO queries need the graph to exist
	ctx := context.Background()
	for _, tt := range []struct {
		name string
		g    *graph.Graph
		opts []graph.Option
	}{
		{"per query", g, []graph.Option{graph.Timeout(50 * time.Millisecond)}},
		{"graph default", graph.New(rdb, "g", graph.Timeout(50*time.Millisecond)), nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			_, err := tt.g.ROQuery(ctx, slowRead, nil, tt.opts...)
			elapsed := time.Since(start)
			if !errors.Is(err, graph.ErrTimeout) {
				t.Fatalf("error %v, want ErrTimeout", err)
			}
			var gerr *graph.Error
			if !errors.As(err, &gerr) || gerr.Query != slowRead {
				t.Errorf("error %+v does not carry the query", gerr)
			}
			if elapsed > 2*time.Second {
				t.Errorf("timed out after %v, want about 50ms", elapsed)
			}
		})
	}
	// The server is free again: a quick query answers at once.
	res, err := g.ROQuery(ctx, "MATCH (n:X) RETURN count(n) AS n", nil, graph.Timeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.Int64(0, "n"); n != 1 {
		t.Errorf("count %d, want 1", n)
	}
}

const slowWrite = "UNWIND range(1, 200000) AS x CREATE (:T {x: x})"

func TestWriteTimeoutNeedsTimeoutMaxOnTheServer(t *testing.T) {
	ctx := context.Background()
	t.Run("default server config: the write completes", func(t *testing.T) {
		g := newGraph(t)
		res, err := g.Query(ctx, slowWrite, nil, graph.Timeout(time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		if res.Stats.NodesCreated != 200000 {
			t.Errorf("NodesCreated = %d", res.Stats.NodesCreated)
		}
	})
	t.Run("deprecated TIMEOUT set: the write still completes", func(t *testing.T) {
		g := newGraph(t, "TIMEOUT", "60000")
		res, err := g.Query(ctx, slowWrite, nil, graph.Timeout(time.Millisecond))
		if err != nil || res.Stats.NodesCreated != 200000 {
			t.Fatalf("err %v, result %+v", err, res)
		}
	})
	for _, args := range [][]string{
		{"TIMEOUT_MAX", "60000"},
		{"TIMEOUT_DEFAULT", "60000"},
		{"TIMEOUT_MAX", "120000", "TIMEOUT_DEFAULT", "60000"}, // docker-compose.yml
	} {
		t.Run(strings.Join(args, " ")+": the write times out and is rolled back", func(t *testing.T) {
			g := newGraph(t, args...)
			_, err := g.Query(ctx, slowWrite, nil, graph.Timeout(time.Millisecond))
			if !errors.Is(err, graph.ErrTimeout) {
				t.Fatalf("error %v, want ErrTimeout", err)
			}
			res, err := g.ROQuery(ctx, "MATCH (n:T) RETURN count(n) AS n", nil)
			if err != nil {
				t.Fatal(err)
			}
			if n, _ := res.Int64(0, "n"); n != 0 {
				t.Errorf("%d nodes after the timed-out write, want 0", n)
			}
		})
	}
	// So TIMEOUT_MAX must stay at or above the worker's per-query timeout.
	t.Run("a query TIMEOUT above TIMEOUT_MAX is refused", func(t *testing.T) {
		g := newGraph(t, "TIMEOUT_MAX", "1000")
		for _, q := range []func(context.Context, string, map[string]any, ...graph.Option) (*graph.Result, error){g.Query, g.ROQuery} {
			_, err := q(ctx, "RETURN 1", nil, graph.Timeout(2*time.Second))
			var gerr *graph.Error
			if !errors.As(err, &gerr) || !strings.Contains(gerr.Msg, "cannot exceed the TIMEOUT_MAX") {
				t.Errorf("error %v, want the server's refusal", err)
			}
		}
	})
}

func TestResultAccessors(t *testing.T) {
	g := newGraph(t)
	res := falkortest.Exec(t, g, "RETURN 3 AS i, 2.5 AS f, 'x' AS s, true AS b, null AS n", nil)
	if i, err := res.Int64(0, "i"); err != nil || i != 3 {
		t.Errorf("Int64 = %d, %v", i, err)
	}
	if f, err := res.Float64(0, "f"); err != nil || f != 2.5 {
		t.Errorf("Float64 = %v, %v", f, err)
	}
	if f, err := res.Float64(0, "i"); err != nil || f != 3 {
		t.Errorf("Float64 of an integer = %v, %v", f, err)
	}
	if s, err := res.Text(0, "s"); err != nil || s != "x" {
		t.Errorf("Text = %q, %v", s, err)
	}
	v, _ := res.Value(0, "b")
	if b, err := graph.AsBool(v); err != nil || !b {
		t.Errorf("AsBool = %v, %v", b, err)
	}
	for _, tt := range []struct {
		name string
		err  error
	}{
		{"integer from a float", func() error { _, err := res.Int64(0, "f"); return err }()},
		{"integer from null", func() error { _, err := res.Int64(0, "n"); return err }()},
		{"text from an integer", func() error { _, err := res.Text(0, "i"); return err }()},
		{"unknown column", func() error { _, err := res.Value(0, "nope"); return err }()},
		{"row out of range", func() error { _, err := res.Value(1, "i"); return err }()},
	} {
		if tt.err == nil {
			t.Errorf("%s: no error", tt.name)
		}
	}
}

func TestScanReadsColumnsByNameAndRefusesWrongTypes(t *testing.T) {
	res := &graph.Result{Columns: []string{"id", "name", "w", "tags", "gone"}, Rows: [][]any{
		{int64(7), "Ada", int64(2), []any{"a"}, nil},
		{int64(8), int64(42), 0.5, nil, nil},
	}}
	var id int64
	var name string
	var w float64
	var tags []any
	gone := "kept"
	if err := res.Scan(0, map[string]any{"name": &name, "id": &id, "w": &w, "tags": &tags, "gone": &gone}); err != nil {
		t.Fatal(err)
	}
	if id != 7 || name != "Ada" || w != 2 || len(tags) != 1 || gone != "kept" {
		t.Fatalf("scanned %d %q %v %v %q", id, name, w, tags, gone)
	}
	err := res.Scan(1, map[string]any{"name": &name})
	if err == nil || !strings.Contains(err.Error(), `"name"`) {
		t.Fatalf("a number in a string column: err = %v", err)
	}
	if err := res.Scan(0, map[string]any{"missing": &name}); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("a missing column: err = %v", err)
	}
	var unsupported int
	if err := res.Scan(0, map[string]any{"id": &unsupported}); err == nil {
		t.Fatal("an unsupported destination was accepted")
	}
}
