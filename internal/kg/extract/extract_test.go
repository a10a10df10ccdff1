package extract_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/kg/extract"
	"github.com/stargazer/stargazer-jobs/internal/kg/extract/extracttest"
	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
	"github.com/stargazer/stargazer-jobs/internal/testkit/falkortest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

var (
	t0  = time.UnixMilli(1_790_000_000_000)
	now = t0.Add(24 * time.Hour)
)

// env is a real Redis, a real FalkorDB with the schema, and the LLM fake.
type env struct {
	rdb *redis.Client
	g   *graph.Graph
	llm *extracttest.Server
}

func newEnv(t testing.TB) *env {
	t.Helper()
	g := falkortest.Graph(t, false)
	if err := graph.EnsureSchema(context.Background(), g); err != nil {
		t.Fatal(err)
	}
	return &env{rdb: redistest.Start(t).Client(t), g: g, llm: extracttest.Start(t)}
}

func (v *env) engine(t testing.TB, mods ...func(*extract.Config)) *extract.Engine {
	t.Helper()
	cfg := extract.Config{LLM: v.llm.Client(), Model: "kg-model", Graph: v.g, Redis: v.rdb, Now: func() time.Time { return now }}
	for _, m := range mods {
		m(&cfg)
	}
	e, err := extract.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

var people = []string{"alice", "bob", "carol", "dave"}
var topics = []string{"Acme", "Paris", "Golang", "FalkorDB", "Redis", "Berlin", "Kubernetes", "Stargazer"}

// chat returns n fragments of a channel, one a minute from t0; fragment i
// mentions two of the topics.
func chat(source string, n int) []extract.Fragment {
	out := make([]extract.Fragment, n)
	for i := range out {
		out[i] = extract.Fragment{
			ID: "sg:msg:" + source + ":" + strconv.Itoa(i), Source: source, Author: people[i%len(people)],
			Text: fmt.Sprintf("message %d is about %s and %s.", i, topics[i%len(topics)], topics[(i*3+1)%len(topics)]),
			Time: t0.Add(time.Duration(i) * time.Minute),
		}
	}
	return out
}

// mentions counts, per topic, the fragments that mention it: what
// mention_count must be after extracting frags once.
func mentions(frags []extract.Fragment) map[string]int64 {
	out := map[string]int64{}
	for _, f := range frags {
		seen := map[string]bool{}
		for _, w := range extracttest.Words(f.Text) {
			if !seen[w] {
				seen[w] = true
				out[w]++
			}
		}
	}
	return out
}

// snapshot renders every entity and relationship with the properties
// extraction writes, in a stable order.
func snapshot(t *testing.T, g *graph.Graph) string {
	t.Helper()
	ctx := context.Background()
	var b strings.Builder
	res, err := g.ROQuery(ctx, `MATCH (e:Entity) RETURN e.type, e.name, e.normalized_name, e.key, e.mention_count, e.first_seen, e.last_seen, e.last_source ORDER BY e.key`, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res.Rows {
		fmt.Fprintln(&b, r...)
	}
	res, err = g.ROQuery(ctx, `MATCH (a:Entity)-[r:REL]->(c:Entity) RETURN a.name, r.type, c.name, r.weight, r.last_seen ORDER BY a.key, r.type, c.key`, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res.Rows {
		fmt.Fprintln(&b, r...)
	}
	return b.String()
}

func topicMentions(t *testing.T, g *graph.Graph) map[string]int64 {
	t.Helper()
	res, err := g.ROQuery(context.Background(), `MATCH (e:Entity {type: 'topic'}) RETURN e.name, e.mention_count`, nil)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, r := range res.Rows {
		out[r[0].(string)] = r[1].(int64)
	}
	return out
}

func count(t testing.TB, g *graph.Graph, q string) int64 {
	t.Helper()
	res, err := g.ROQuery(context.Background(), q, nil)
	if err != nil {
		if errors.Is(err, graph.ErrNoGraph) {
			return 0
		}
		t.Fatal(err)
	}
	n, err := res.Int64(0, res.Columns[0])
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func allSettled(r extract.Result) bool { return !slices.Contains(r.Settled, false) }

func equalMentions(a, b map[string]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestExtractWritesTheValidatedAnswerIntoTheGraph(t *testing.T) {
	v := newEnv(t)
	frags := []extract.Fragment{
		{ID: "m1", Source: "discord:1", Author: "alice", Text: "I joined Acme in Paris", Time: t0},
		{ID: "m2", Source: "discord:1", Author: "bob", Text: "Acme is hiring", Time: t0.Add(time.Minute)},
		{ID: "m3", Source: "discord:1", Author: "alice", Text: "nice, congrats", Time: t0.Add(2 * time.Minute)},
	}
	res, err := v.engine(t).Extract(context.Background(), frags)
	if err != nil {
		t.Fatal(err)
	}
	want := extract.Counts{EntitiesAdded: 4, RelationshipsAdded: 3, Fragments: 3, LLMCalls: 1}
	got := res.Counts
	got.PromptTokens, got.CompletionTokens, got.LockWait = 0, 0, 0
	if got != want || !allSettled(res) || res.PromptTokens == 0 || res.CompletionTokens == 0 {
		t.Fatalf("result %+v, want %+v, all settled, tokens counted", res, want)
	}
	calls := v.llm.Calls()
	if len(calls) != 1 {
		t.Fatalf("%d calls", len(calls))
	}
	c := calls[0]
	if c.Model != "kg-model" || c.Temperature == nil || *c.Temperature != llm.ExtractionTemperature ||
		c.MaxTokens != llm.ExtractionMaxTokens || c.ResponseFormat != "json_object" {
		t.Errorf("call %+v: want the extraction model, temperature 0.1, max_tokens 4096, JSON mode", c)
	}
	if !slices.Equal(c.Messages, []string{"I joined Acme in Paris", "Acme is hiring", "nice, congrats"}) ||
		!strings.Contains(c.Prompt, "<messages>\n(in discord:1)\n[1] 2026-") || !strings.Contains(c.Prompt, "[2] 2026-09-21 14:14 · bob: Acme is hiring\n") {
		t.Errorf("prompt lacks the numbered messages with provenance: %q", c.Prompt)
	}
	acme := graph.EntityKey("Acme", "topic")
	res2, err := v.g.ROQuery(context.Background(), `MATCH (e:Entity {key: $k}) RETURN e.name, e.normalized_name, e.type, e.mention_count, e.first_seen, e.last_seen, e.last_source`, map[string]any{"k": acme})
	if err != nil || len(res2.Rows) != 1 {
		t.Fatalf("Acme: %v %v", res2, err)
	}
	if got := fmt.Sprint(res2.Rows[0]...); got != fmt.Sprint("Acme", "acme", "topic", int64(2), t0.UnixMilli(), t0.Add(time.Minute).UnixMilli(), "m2") {
		t.Errorf("Acme = %s", got)
	}
	if n := count(t, v.g, `MATCH (:Entity {name: 'alice'})-[r:REL {type: 'mentions'}]->(:Entity {name: 'Paris'}) RETURN count(r)`); n != 1 {
		t.Errorf("alice -mentions-> Paris: %d", n)
	}
}

func TestExtractTwiceEqualsOnce(t *testing.T) {
	v := newEnv(t)
	e := v.engine(t)
	ctx := context.Background()
	frags := chat("discord:1", 50)
	first, err := e.Extract(ctx, frags)
	if err != nil || first.Fragments != 50 || !allSettled(first) {
		t.Fatalf("first run: %+v, %v", first.Counts, err)
	}
	calls := len(v.llm.Calls())
	before := snapshot(t, v.g)
	if !equalMentions(topicMentions(t, v.g), mentions(frags)) {
		t.Fatalf("mentions %v, want %v", topicMentions(t, v.g), mentions(frags))
	}

	again, err := e.Extract(ctx, frags)
	if err != nil || again.Duplicates != 50 || again.Fragments != 0 || again.LLMCalls != 0 || !allSettled(again) {
		t.Fatalf("second run: %+v, %v", again.Counts, err)
	}
	if n := len(v.llm.Calls()); n != calls {
		t.Fatalf("the second run made %d LLM call(s)", n-calls)
	}
	if after := snapshot(t, v.g); after != before {
		t.Fatalf("the graph changed:\n%s\n---\n%s", before, after)
	}

	t.Run("a mix of old and new fragments extracts only the new", func(t *testing.T) {
		more := chat("discord:1", 60)
		res, err := e.Extract(ctx, more)
		if err != nil || res.Duplicates != 50 || res.Fragments != 10 || res.LLMCalls != 1 {
			t.Fatalf("%+v, %v", res.Counts, err)
		}
		if got := v.llm.Calls()[calls].Messages; len(got) != 10 || got[0] != more[50].Text {
			t.Errorf("the call held %q", got)
		}
		if !equalMentions(topicMentions(t, v.g), mentions(more)) {
			t.Errorf("mentions %v, want %v", topicMentions(t, v.g), mentions(more))
		}
	})
}

func TestExtractPutsManyShortMessagesInOneCall(t *testing.T) {
	v := newEnv(t)
	res, err := v.engine(t).Extract(context.Background(), chat("discord:1", 100))
	if err != nil {
		t.Fatal(err)
	}
	var sizes []int
	for _, c := range v.llm.Calls() {
		sizes = append(sizes, len(c.Messages))
	}
	if !slices.Equal(sizes, []int{30, 30, 30, 10}) || res.LLMCalls != 4 {
		t.Fatalf("messages per call %v", sizes)
	}
	if res.TokensPerFragment() <= 0 {
		t.Errorf("tokens per fragment %v", res.TokensPerFragment())
	}
}

func TestExtractSettlesEmptyAndRepeatedFragmentsAndRefusesOnesWithoutID(t *testing.T) {
	v := newEnv(t)
	e := v.engine(t)
	frags := []extract.Fragment{
		{ID: "a", Author: "alice", Text: "Acme rocks"},
		{ID: "blank", Author: "bob", Text: " \n "},
		{ID: "a", Author: "alice", Text: "Acme rocks"},
	}
	res, err := e.Extract(context.Background(), frags)
	if err != nil || res.Fragments != 1 || res.Skipped != 1 || !allSettled(res) || res.LLMCalls != 1 {
		t.Fatalf("%+v %v, %v", res.Counts, res.Settled, err)
	}
	if got := topicMentions(t, v.g)["Acme"]; got != 1 {
		t.Errorf("a fragment passed twice counted %d mentions", got)
	}
	if _, err := e.Extract(context.Background(), []extract.Fragment{{Text: "no id"}}); !errors.Is(err, extract.ErrInvalidFragment) {
		t.Errorf("fragment without ID: %v", err)
	}
}

// badJSON answers 200 with content that is not the schema.
func badJSON(content string) *extracttest.Reply {
	r := extracttest.Completion("", content)
	return &r
}

func TestExtractWritesNothingOfABadAnswer(t *testing.T) {
	truncated := `{"choices":[{"finish_reason":"length","message":{"role":"assistant","content":"{\"entities\":[{\"name\":\"Ac"}}],"usage":{"prompt_tokens":10,"completion_tokens":4096}}`
	tests := []struct {
		name  string
		reply *extracttest.Reply
		is    error
	}{
		{"prose instead of JSON", badJSON("Sure! Here are the entities: Acme, Paris."), extract.ErrBadAnswer},
		{"a list instead of an object", badJSON(`[{"name":"Acme"}]`), extract.ErrBadAnswer},
		{"an object without entities", badJSON(`{"result":{"entities":[]}}`), extract.ErrBadAnswer},
		{"entities that are not a list", badJSON(`{"entities":"Acme"}`), extract.ErrBadAnswer},
		{"an answer cut at the token limit", &extracttest.Reply{Status: 200, Body: truncated}, extract.ErrBadAnswer},
		{"empty content", badJSON("  "), llm.ErrEmptyContent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := newEnv(t)
			e := v.engine(t)
			ctx := context.Background()
			frags := chat("discord:1", 40) // batches of 30 and 10
			v.llm.SetHook(func(n int, _ extracttest.Call) *extracttest.Reply {
				if n == 2 {
					return tt.reply
				}
				return nil
			})
			res, err := e.Extract(ctx, frags)
			if !errors.Is(err, tt.is) {
				t.Fatalf("error %v, want %v", err, tt.is)
			}
			if res.Fragments != 30 || !allSettled(extract.Result{Settled: res.Settled[:30]}) || slices.Contains(res.Settled[30:], true) {
				t.Fatalf("the good first batch must be settled and the bad one not: %+v %v", res.Counts, res.Settled)
			}
			if !equalMentions(topicMentions(t, v.g), mentions(frags[:30])) {
				t.Fatalf("the graph holds more than the good batch: %v", topicMentions(t, v.g))
			}
			if n, _ := v.rdb.HLen(ctx, extract.ClaimsKey).Result(); n != 0 {
				t.Errorf("%d claims left after a bad answer", n)
			}
			if f, _ := v.rdb.HGet(ctx, extract.FailuresKey, frags[35].ID).Result(); f != "1" {
				t.Errorf("failures of a fragment of the bad batch = %q", f)
			}

			// Asked again, the model answers: the rest is extracted, in
			// halved batches because it failed once.
			v.llm.SetHook(nil)
			res, err = e.Extract(ctx, frags)
			if err != nil || res.Fragments != 10 || res.Duplicates != 30 || !allSettled(res) {
				t.Fatalf("retry: %+v, %v", res.Counts, err)
			}
			if !equalMentions(topicMentions(t, v.g), mentions(frags)) {
				t.Fatalf("mentions after the retry %v", topicMentions(t, v.g))
			}
			if n, _ := v.rdb.HLen(ctx, extract.FailuresKey).Result(); n != 0 {
				t.Errorf("%d failure counts left after success", n)
			}
		})
	}
}

func TestExtractGivesUpOnAFragmentThatAlwaysBreaksTheModel(t *testing.T) {
	v := newEnv(t)
	e := v.engine(t, func(c *extract.Config) { c.BatchMessages = 8 })
	ctx := context.Background()
	frags := chat("discord:1", 12)
	frags[5].Text = "POISON Acme"
	v.llm.SetHook(func(_ int, c extracttest.Call) *extracttest.Reply {
		for _, m := range c.Messages {
			if strings.Contains(m, "POISON") {
				return badJSON("I cannot help with that.")
			}
		}
		return nil
	})
	var total extract.Counts
	runs := 0
	for ; runs < 20; runs++ {
		res, err := e.Extract(ctx, frags)
		total.Add(res.Counts)
		if err == nil {
			if !allSettled(res) {
				t.Fatalf("a run without error left fragments unsettled: %v", res.Settled)
			}
			break
		}
		if !errors.Is(err, extract.ErrBadAnswer) {
			t.Fatal(err)
		}
	}
	// Batches of 8 by default, then 4, 2 and 1 after 1, 2 and 3 failures;
	// PoisonAfter is 5. Runs (LLM calls): [0-7] fails (1); [0-3] ok, [4-7]
	// fails (2); [4,5] fails (1); [4] ok, [5] fails (2); [5] fails and is
	// given up (1); [6,7] and [8-11] ok (2).
	if total.Poisoned != 1 || total.Fragments != 11 || runs != 5 || total.LLMCalls != 9 {
		t.Fatalf("after %d runs: %+v", runs, total)
	}
	if s, err := v.rdb.ZScore(ctx, extract.PoisonedKey, frags[5].ID).Result(); err != nil || s == 0 {
		t.Errorf("the fragment is not recorded as poisoned: %v", err)
	}
	again, err := e.Extract(ctx, frags)
	if err != nil || again.LLMCalls != 0 || !allSettled(again) {
		t.Errorf("after giving up: %+v, %v", again.Counts, err)
	}
}

func TestExtractRateLimitCarriesRetryAfterAndReleasesTheClaims(t *testing.T) {
	v := newEnv(t)
	e := v.engine(t)
	ctx := context.Background()
	v.llm.SetHook(func(int, extracttest.Call) *extracttest.Reply {
		return &extracttest.Reply{Status: http.StatusTooManyRequests, RetryAfter: "30", Body: `{"error":{"message":"slow down"}}`}
	})
	frags := chat("discord:1", 5)
	res, err := e.Extract(ctx, frags)
	var rl *llm.RateLimitError
	if !errors.As(err, &rl) || rl.RetryAfter() != 30*time.Second {
		t.Fatalf("error %v, want a RateLimitError with Retry-After 30s", err)
	}
	if strings.Contains(err.Error(), "sk-test-secret") {
		t.Fatal("the API key leaked into the error")
	}
	if slices.Contains(res.Settled, true) || count(t, v.g, "MATCH (e:Entity) RETURN count(e)") != 0 {
		t.Fatal("something was settled or written after a 429")
	}
	if n, _ := v.rdb.HLen(ctx, extract.ClaimsKey).Result(); n != 0 {
		t.Errorf("%d claims left after a 429", n)
	}
	if n, _ := v.rdb.HLen(ctx, extract.FailuresKey).Result(); n != 0 {
		t.Errorf("a rate limit counted as a bad answer")
	}
	v.llm.SetHook(nil)
	if res, err := e.Extract(ctx, frags); err != nil || res.Fragments != 5 {
		t.Fatalf("after the rate limit: %+v, %v", res.Counts, err)
	}
}

func TestExtractAbortsABatchWhenVerifyFails(t *testing.T) {
	v := newEnv(t)
	lost := errors.New("singleton lease lost")
	e := v.engine(t, func(c *extract.Config) { c.Verify = func(context.Context) error { return lost } })
	res, err := e.Extract(context.Background(), chat("discord:1", 3))
	if !errors.Is(err, lost) || res.Fragments != 0 || count(t, v.g, "MATCH (e:Entity) RETURN count(e)") != 0 {
		t.Fatalf("%+v, %v", res.Counts, err)
	}
	if n, _ := v.rdb.HLen(context.Background(), extract.ClaimsKey).Result(); n != 0 {
		t.Errorf("%d claims left", n)
	}
}

// hookedGraph runs queries on a real graph with hooks around the
// relationship writes.
type hookedGraph struct {
	g      *graph.Graph
	before func(ctx context.Context) error // before a relationship write
	after  func() error                    // after it (applied)
}

func (h *hookedGraph) Query(ctx context.Context, q string, p map[string]any, opts ...graph.Option) (*graph.Result, error) {
	rel := strings.Contains(q, "MERGE (a)-[r:REL")
	if rel && h.before != nil {
		if err := h.before(ctx); err != nil {
			return nil, err
		}
	}
	res, err := h.g.Query(ctx, q, p, opts...)
	if err == nil && rel && h.after != nil {
		err = h.after()
	}
	return res, err
}

// cleanRun is the graph that extracting frags once, without incident,
// produces.
func cleanRun(t *testing.T, frags []extract.Fragment) string {
	v := newEnv(t)
	if _, err := v.engine(t).Extract(context.Background(), frags); err != nil {
		t.Fatal(err)
	}
	return snapshot(t, v.g)
}

func TestExtractFinishesAWriteLostAfterTheServerAppliedIt(t *testing.T) {
	v := newEnv(t)
	ctx := context.Background()
	frags := chat("discord:1", 45) // two batches
	lostOnce := true
	hg := &hookedGraph{g: v.g, after: func() error {
		if lostOnce {
			lostOnce = false
			return errors.New("connection reset after the write") // applied, but the caller cannot know
		}
		return nil
	}}
	res, err := v.engine(t, func(c *extract.Config) { c.Graph = hg }).Extract(ctx, frags)
	if err == nil || res.Fragments != 0 || slices.Contains(res.Settled, true) {
		t.Fatalf("first run: %+v, %v", res.Counts, err)
	}
	calls := len(v.llm.Calls())

	res, err = v.engine(t).Extract(ctx, frags)
	if err != nil || res.Recovered != 30 || res.Fragments != 45 || res.LLMCalls != 1 || !allSettled(res) {
		t.Fatalf("second run: %+v, %v", res.Counts, err)
	}
	if n := len(v.llm.Calls()) - calls; n != 1 {
		t.Fatalf("the second run made %d calls; only the unanswered batch needs one", n)
	}
	if got, want := snapshot(t, v.g), cleanRun(t, frags); got != want {
		t.Fatalf("graph after the recovery differs from a clean run:\n%s\n---\n%s", got, want)
	}
	for _, k := range []string{extract.ClaimsKey, extract.FailuresKey} {
		if n, _ := v.rdb.HLen(ctx, k).Result(); n != 0 {
			t.Errorf("%s has %d entries left", k, n)
		}
	}
	if keys, _ := v.rdb.Keys(ctx, extract.BatchKeyPrefix+"*").Result(); len(keys) != 0 {
		t.Errorf("stored answers left: %v", keys)
	}
}

func TestAFrozenRunsBatchIsFinishedByAnotherAndItsLateWriteCountsNothing(t *testing.T) {
	v := newEnv(t)
	ctx := context.Background()
	frags := chat("discord:1", 20)
	frozen, thaw := make(chan struct{}), make(chan struct{})
	var once sync.Once
	hg := &hookedGraph{g: v.g, before: func(context.Context) error {
		once.Do(func() { close(frozen); <-thaw }) // the run freezes between its entity and relationship writes
		return nil
	}}
	// The frozen run holds the graph write lock; it lapses like a dead
	// process's would.
	lockTTL := func(c *extract.Config) { c.WriteLockTTL = 300 * time.Millisecond }
	type outcome struct {
		res extract.Result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := v.engine(t, lockTTL, func(c *extract.Config) { c.Graph = hg }).Extract(ctx, frags)
		done <- outcome{res, err}
	}()
	<-frozen

	// While its claims are live, another caller leaves the fragments alone.
	res, err := v.engine(t).Extract(ctx, frags)
	if err != nil || res.Busy != 20 || slices.Contains(res.Settled, true) || res.LLMCalls != 0 {
		t.Fatalf("during the claim: %+v, %v", res.Counts, err)
	}
	// Once they expired, it finishes the batch from the stored answer.
	later := v.engine(t, func(c *extract.Config) {
		c.Now = func() time.Time { return now.Add(extract.DefaultClaimTTL + time.Second) }
	})
	res, err = later.Extract(ctx, frags)
	if err != nil || res.Recovered != 20 || res.LLMCalls != 0 || !allSettled(res) {
		t.Fatalf("recovery: %+v, %v", res.Counts, err)
	}
	close(thaw)
	out := <-done
	if out.err != nil || !allSettled(out.res) {
		t.Fatalf("the thawed run: %+v, %v", out.res.Counts, out.err)
	}
	if out.res.RelationshipsAdded+out.res.RelationshipsUpdated != 0 {
		t.Errorf("the thawed run's late write applied: %+v", out.res.Counts)
	}
	if len(v.llm.Calls()) != 1 {
		t.Errorf("%d LLM calls, want 1", len(v.llm.Calls()))
	}
	if got, want := snapshot(t, v.g), cleanRun(t, frags); got != want {
		t.Fatalf("graph differs from a clean run:\n%s\n---\n%s", got, want)
	}
}

func TestConcurrentExtractsOfTheSameFragmentsExtractEachOnce(t *testing.T) {
	v := newEnv(t)
	ctx := context.Background()
	frags := chat("discord:1", 120) // four batches
	v.llm.SetHook(func(int, extracttest.Call) *extracttest.Reply {
		time.Sleep(20 * time.Millisecond) // let the callers overlap
		return nil
	})
	results := make([]extract.Result, 3)
	var wg sync.WaitGroup
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := v.engine(t).Extract(ctx, frags)
			if err != nil {
				t.Error(err)
			}
			results[i] = res
		}()
	}
	wg.Wait()
	seen := map[string]int{}
	for _, c := range v.llm.Calls() {
		for _, m := range c.Messages {
			seen[m]++
		}
	}
	for _, f := range frags {
		if seen[f.Text] != 1 {
			t.Errorf("%s was sent to the LLM %d times", f.ID, seen[f.Text])
		}
	}
	var total extract.Counts
	for _, r := range results {
		total.Add(r.Counts)
	}
	if total.Fragments != 120 {
		t.Errorf("fragments extracted in all: %d", total.Fragments)
	}
	if n := count(t, v.g, `MATCH (a:Entity)-[r:REL]->(b:Entity) WITH a, b, r.type AS ty, count(*) AS c WHERE c > 1 RETURN count(*)`); n != 0 {
		t.Errorf("%d relationships exist twice", n)
	}
	if !equalMentions(topicMentions(t, v.g), mentions(frags)) {
		t.Errorf("mentions %v, want %v", topicMentions(t, v.g), mentions(frags))
	}
}
