package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
	"github.com/stargazer/stargazer-jobs/internal/kg/merge"
	"github.com/stargazer/stargazer-jobs/internal/queue/events"
	"github.com/stargazer/stargazer-jobs/internal/queue/singleton"
	"github.com/stargazer/stargazer-jobs/internal/testkit/falkortest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// kgNow is the clock of the graph maintenance tests.
var kgNow = time.UnixMilli(1_800_000_000_000)

const kgDay = int64(24 * time.Hour / time.Millisecond)

// kgFixture is a FalkorDB graph with the production schema, a Redis and an
// LLM fake for the graph maintenance handlers.
type kgFixture struct {
	g   *graph.Graph
	rdb *redis.Client
	llm *scriptedLLM
}

func newKGFixture(t *testing.T, reply func(prompt string) scriptedReply) *kgFixture {
	t.Helper()
	g := falkortest.Graph(t, false)
	if err := graph.EnsureSchema(context.Background(), g); err != nil {
		t.Fatal(err)
	}
	return &kgFixture{g: g, rdb: redistest.Start(t).Client(t), llm: newScriptedLLM(t, reply)}
}

func (f *kgFixture) deps() Deps {
	return Deps{
		Redis: f.rdb, Graph: f.g, LLM: f.llm.client(), Logger: slog.New(slog.DiscardHandler),
		Now: func() time.Time { return kgNow }, Models: Models{Extraction: "extraction-model"},
		PruneAge: 30 * 24 * time.Hour, OrgHubDegree: 1,
	}
}

func (f *kgFixture) exec(t *testing.T, cypher string, params map[string]any) *graph.Result {
	t.Helper()
	res, err := f.g.Query(context.Background(), cypher, params)
	if err != nil {
		t.Fatalf("%s: %v", cypher, err)
	}
	return res
}

// entity creates an entity of type "thing" seen lastSeen days before kgNow.
func (f *kgFixture) entity(t *testing.T, name string, mentions, lastSeenDaysAgo int64) {
	t.Helper()
	seen := kgNow.UnixMilli() - lastSeenDaysAgo*kgDay
	f.exec(t, `CREATE (:Entity {key: $k, name: $n, normalized_name: $nn, type: 'thing', mention_count: $m, first_seen: $s, last_seen: $s})`,
		map[string]any{"k": graph.EntityKey(name, "thing"), "n": name, "nn": graph.NormalizeName(name), "m": mentions, "s": seen})
}

func (f *kgFixture) link(t *testing.T, from, typ, to string, w float64) {
	t.Helper()
	res := f.exec(t, `MATCH (a:Entity {key: $a}), (b:Entity {key: $b}) CREATE (a)-[:REL {type: $t, weight: $w, last_seen: 1}]->(b)`,
		map[string]any{"a": graph.EntityKey(from, "thing"), "b": graph.EntityKey(to, "thing"), "t": typ, "w": w})
	if res.Stats.RelationshipsCreated != 1 {
		t.Fatalf("link %s -> %s: endpoints missing", from, to)
	}
}

// dump renders the graph, sorted, for before/after comparisons.
func (f *kgFixture) dump(t *testing.T) string {
	t.Helper()
	var lines []string
	for _, row := range f.exec(t, `MATCH (n) RETURN labels(n)[0], n.key, n.name, n.mention_count, n.last_seen, n.aliases`, nil).Rows {
		lines = append(lines, fmt.Sprint("node ", row))
	}
	for _, row := range f.exec(t, `MATCH (a)-[r:REL]->(b) RETURN a.name, r.type, b.name, r.weight, r.last_seen, r.organised`, nil).Rows {
		lines = append(lines, fmt.Sprint("rel ", row))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

func (f *kgFixture) names(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, row := range f.exec(t, `MATCH (e:Entity) RETURN e.name ORDER BY e.name`, nil).Rows {
		out = append(out, row[0].(string))
	}
	return out
}

// judgeBySets answers a dedup prompt: a pair is the same when both names
// are in one of sets (keep "a"), distinct otherwise.
func judgeBySets(sets ...[]string) func(string) scriptedReply {
	return func(prompt string) scriptedReply {
		var verdicts []map[string]any
		for _, line := range strings.Split(prompt, "\n") {
			var p struct {
				Pair int
				A, B struct{ Name string }
			}
			if !strings.HasPrefix(line, `{"pair":`) || json.Unmarshal([]byte(line), &p) != nil {
				continue
			}
			v := map[string]any{"pair": p.Pair, "same": false, "confidence": 0.9}
			for _, s := range sets {
				if slices.Contains(s, p.A.Name) && slices.Contains(s, p.B.Name) {
					v["same"], v["keep"] = true, "a"
				}
			}
			verdicts = append(verdicts, v)
		}
		b, _ := json.Marshal(map[string]any{"verdicts": verdicts})
		return completion(string(b))
	}
}

// buildConsolidationGraph: two spellings of one place (the model calls
// them the same), two different people with close names, and low-value
// entities, only one of which is old enough to prune.
func buildConsolidationGraph(t *testing.T, f *kgFixture) {
	f.entity(t, "New York City", 10, 1)
	f.entity(t, "New York Cty", 1, 1)
	f.entity(t, "John Smith", 3, 1)
	f.entity(t, "John Smyth", 3, 1)
	f.entity(t, "Statue of Liberty", 4, 1)
	f.entity(t, "forgotten thing", 1, 60) // pruned
	f.entity(t, "recent thing", 1, 2)     // too recent to prune
	f.link(t, "Statue of Liberty", "located_in", "New York City", 1)
	f.link(t, "Statue of Liberty", "located_in", "New York Cty", 0.5)
	f.link(t, "John Smith", "lives_in", "New York Cty", 1)
	f.link(t, "John Smyth", "knows", "John Smith", 1)
}

// subscribe returns the debug events published on channel from now on.
func subscribe(t *testing.T, rdb *redis.Client, channel string) func() []events.Event {
	t.Helper()
	sub := rdb.Subscribe(context.Background(), channel)
	if _, err := sub.Receive(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Close() })
	var mu sync.Mutex
	var got []events.Event
	go func() {
		for m := range sub.Channel() {
			var e events.Event
			if json.Unmarshal([]byte(m.Payload), &e) == nil {
				mu.Lock()
				got = append(got, e)
				mu.Unlock()
			}
		}
	}()
	return func() []events.Event {
		deadline := time.Now().Add(5 * time.Second)
		for {
			mu.Lock()
			n := len(got)
			mu.Unlock()
			if n > 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		mu.Lock()
		defer mu.Unlock()
		out := slices.Clone(got)
		got = nil
		return out
	}
}

// lease takes the singleton lease of task as run id.
func lease(t *testing.T, rdb *redis.Client, task, id string) *singleton.Lease {
	t.Helper()
	le, err := singleton.NewLocks(rdb, 0, nil).Acquire(context.Background(), task, id)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = le.Release(context.Background()) })
	return le
}

type recordingCounter struct {
	mu    sync.Mutex
	items map[string]float64
}

func (c *recordingCounter) AddItems(task, item string, n float64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.items == nil {
		c.items = map[string]float64{}
	}
	c.items[task+"/"+item] += n
}

func TestKGConsolidationMergesPrunesAndPublishesItsCounts(t *testing.T) {
	f := newKGFixture(t, judgeBySets([]string{"New York City", "New York Cty"}))
	buildConsolidationGraph(t, f)
	d := f.deps()
	d.Events = events.NewPublisher(f.rdb, "debug-events")
	received := subscribe(t, f.rdb, "debug-events")
	ctx := singleton.WithLease(context.Background(), lease(t, f.rdb, jobs.KGConsolidation, "run-1"))

	res, err := work(ctx, d, jobs.KGConsolidation, &jobs.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	if res["merged"] != 1 || res["pruned_entities"] != 1 || res["llm_errors"] != 0 || res["pairs_judged"] != 2 || res["llm_calls"] != 1 {
		t.Errorf("result %v", res)
	}
	want := []string{"John Smith", "John Smyth", "New York City", "Statue of Liberty", "recent thing"}
	if got := f.names(t); !slices.Equal(got, want) {
		t.Errorf("entities %q, want %q", got, want)
	}
	rels := f.exec(t, `MATCH (a)-[r:REL]->(b) RETURN a.name + ' -' + r.type + '-> ' + b.name + ' ' + toString(r.weight) ORDER BY a.name, b.name`, nil).Rows
	if fmt.Sprint(rels) != "[[John Smith -lives_in-> New York City 1.000000] [John Smyth -knows-> John Smith 1.000000] [Statue of Liberty -located_in-> New York City 1.500000]]" {
		t.Errorf("relationships %v", rels)
	}
	evs := received()
	if len(evs) != 1 {
		t.Fatalf("events %+v, want one", evs)
	}
	if e := evs[0]; e.Topic != "kg_consolidation" || e.Source != "background_tasks" || e.Status != "ok" ||
		e.Preview != "merged=1 pruned=1" || e.Payload["merged"] != 1.0 || e.Payload["pruned_entities"] != 1.0 {
		t.Errorf("event %+v", e)
	}
	c := &recordingCounter{}
	countItems(c, jobs.KGConsolidation, res)
	if c.items["kg_consolidation_task/merged"] != 1 || c.items["kg_consolidation_task/pruned_entities"] != 1 {
		t.Errorf("counted %v", c.items)
	}

	before := f.dump(t)
	res, err = work(ctx, d, jobs.KGConsolidation, &jobs.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	if res["merged"] != 0 || res["pruned_entities"] != 0 || len(f.llm.Calls()) != 1 {
		t.Errorf("second run: %v after %d calls in all; want nothing done and nothing asked", res, len(f.llm.Calls()))
	}
	if after := f.dump(t); after != before {
		t.Errorf("second run changed the graph:\n%s\nwas\n%s", after, before)
	}
	if evs := received(); len(evs) != 1 || evs[0].Preview != "merged=0 pruned=0" {
		t.Errorf("second run's events %+v", evs)
	}
}

func TestKGConsolidationWithALostLeaseWritesNothing(t *testing.T) {
	f := newKGFixture(t, judgeBySets([]string{"New York City", "New York Cty"}))
	buildConsolidationGraph(t, f)
	d := f.deps()
	d.Events = events.NewPublisher(f.rdb, "debug-events")
	received := subscribe(t, f.rdb, "debug-events")
	ours := lease(t, f.rdb, jobs.KGConsolidation, "run-1")
	lease(t, f.rdb, jobs.KGConsolidation, "run-1") // a retry of the same run takes the lease over
	before := f.dump(t)

	_, err := work(singleton.WithLease(context.Background(), ours), d, jobs.KGConsolidation, &jobs.Empty{})
	if !errors.Is(err, singleton.ErrLost) || !errors.Is(err, asynq.SkipRetry) {
		t.Fatalf("err = %v, want a lost lease, not retried", err)
	}
	if after := f.dump(t); after != before {
		t.Errorf("a run without its lease changed the graph:\n%s\nwas\n%s", after, before)
	}
	if evs := received(); len(evs) != 1 || evs[0].Status != "error" || !strings.HasPrefix(evs[0].Preview, "error=") {
		t.Errorf("events %+v, want one error event", evs)
	}
}

func TestLimbicDedupBadLLMAnswersMergeNothing(t *testing.T) {
	tests := []struct {
		name      string
		reply     scriptedReply
		timeout   time.Duration
		is        error
		skipRetry bool
	}{
		{name: "garbage is not retried", reply: completion("They are the same, trust me."), is: merge.ErrBadAnswer, skipRetry: true},
		{name: "wrong schema is not retried", reply: completion(`{"answer":"same"}`), is: merge.ErrBadAnswer, skipRetry: true},
		{name: "a refused request is not retried", reply: scriptedReply{Status: http.StatusBadRequest, Body: `{"error":{"message":"bad model"}}`}, skipRetry: true},
		{name: "a rate limit is retried after Retry-After", reply: scriptedReply{Status: http.StatusTooManyRequests, RetryAfter: "12", Body: `{}`}},
		{name: "a timeout is retried", reply: completion("late"), timeout: 50 * time.Millisecond, is: context.DeadlineExceeded},
		{name: "a server error is retried", reply: scriptedReply{Status: http.StatusBadGateway, Body: "bad gateway"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newKGFixture(t, func(string) scriptedReply {
				if tt.timeout > 0 {
					time.Sleep(4 * tt.timeout)
				}
				return tt.reply
			})
			buildConsolidationGraph(t, f)
			d := f.deps()
			if tt.timeout > 0 {
				d.LLM = llm.New(llm.Options{BaseURL: f.llm.srv.URL + "/v1", Timeout: tt.timeout})
			}
			before := f.dump(t)
			_, err := work(context.Background(), d, jobs.LimbicDedup, &jobs.Empty{})
			if err == nil {
				t.Fatal("no error")
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("err = %v, want %v", err, tt.is)
			}
			if errors.Is(err, asynq.SkipRetry) != tt.skipRetry {
				t.Errorf("err = %v, SkipRetry %v, want %v", err, !tt.skipRetry, tt.skipRetry)
			}
			var rl *llm.RateLimitError
			if tt.reply.Status == http.StatusTooManyRequests && (!errors.As(err, &rl) || rl.RetryAfter() != 12*time.Second) {
				t.Errorf("err = %v, want the rate limit with its Retry-After", err)
			}
			if strings.Contains(err.Error(), "sk-test-secret") {
				t.Error("the API key leaked into the error")
			}
			if after := f.dump(t); after != before {
				t.Errorf("graph changed:\n%s\nwas\n%s", after, before)
			}
			if n := f.rdb.HLen(context.Background(), merge.VerdictsKey).Val(); n != 0 {
				t.Errorf("%d verdicts remembered from a failed call", n)
			}
		})
	}
}

func TestLimbicDedupMergesJudgedDuplicatesOnce(t *testing.T) {
	f := newKGFixture(t, judgeBySets([]string{"New York City", "New York Cty"}))
	buildConsolidationGraph(t, f)
	d := f.deps()
	res, err := work(context.Background(), d, jobs.LimbicDedup, &jobs.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	if res["merged"] != 1 || res["edges_moved"] != 2 {
		t.Errorf("result %v", res)
	}
	if got := f.names(t); slices.Contains(got, "New York Cty") || !slices.Contains(got, "forgotten thing") {
		t.Errorf("entities %q: want the duplicate merged and nothing pruned (dedup does not prune)", got)
	}
	before := f.dump(t)
	res, err = work(context.Background(), d, jobs.LimbicDedup, &jobs.Empty{})
	if err != nil || res["merged"] != 0 || res["llm_calls"] != 0 || f.dump(t) != before {
		t.Errorf("second run: %v, %v; want nothing to do", res, err)
	}
}
