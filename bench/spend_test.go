package bench

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/clients/llm/killswitch"
	"github.com/stargazer/stargazer-jobs/internal/clients/llm/meter"
	"github.com/stargazer/stargazer-jobs/internal/kg/extract"
	"github.com/stargazer/stargazer-jobs/internal/kg/extract/extracttest"
	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
	"github.com/stargazer/stargazer-jobs/internal/spend"
	"github.com/stargazer/stargazer-jobs/internal/testkit/falkortest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

// roundTrips counts a client's round trips to Redis: each command, and
// each pipeline as one.
type roundTrips struct{ n atomic.Int64 }

func (r *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }
func (r *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { r.n.Add(1); return next(ctx, cmd) }
}
func (r *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { r.n.Add(1); return next(ctx, cmds) }
}

// BenchmarkSpendAccounting measures what charging every LLM call to the
// spend ledger costs the extraction benchmark: 10,000 messages through the
// extraction engine against a real Redis and a real FalkorDB, the LLM faked
// (it answers at once, so the engine's own cost is all there is), in rounds
// that alternate the call path before the ledger (the kill switch read
// before each call: killswitch.Guard) and with it (a reservation before
// each call, with the switch read inside it, and a settlement after:
// spend.Ledger.Chat, with a budget and a price so every check runs). It
// reports the median wall time of each path, their ratio, and the Redis
// round trips per LLM call each makes, counted on the client they use.
//
//	go test -run '^$' -bench SpendAccounting -benchtime 8x -timeout 30m ./bench/
func BenchmarkSpendAccounting(b *testing.B) {
	const n = 10_000
	srv := redistest.Start(b)
	falkor := falkortest.Start(b).Client(b)
	fake := extracttest.Start(b)
	engineRedis := srv.Client(b)
	// The accounting's own clients, so its round trips are counted apart.
	var before, after roundTrips
	guardRedis, ledgerRedis := srv.Client(b), srv.Client(b)
	guardRedis.AddHook(&before)
	ledgerRedis.AddHook(&after)
	// Each path's added time on the call's critical path is measured in
	// place: the time a call spends in the path (outer) minus the time in
	// the model (inner).
	var outerBefore, innerBefore, outerAfter, innerAfter timed
	guarded := outerBefore.wrap(killswitch.New(guardRedis, killswitch.DefaultKey, true).Guard(innerBefore.wrap(fake.Client())))
	ledger := spend.New(ledgerRedis, spend.Options{
		Prices:    map[string]spend.Price{"kg-model": {Prompt: 0.30, Completion: 2.50}},
		Budgets:   map[string]spend.Limit{"limbic_anchoring_worker": spend.Tokens(1 << 40), spend.Cluster: spend.USD(1e6)},
		SwitchKey: killswitch.DefaultKey,
	})
	metered := outerAfter.wrap(meter.Chat(ledger, innerAfter.wrap(fake.Client()), 3*time.Minute))
	paths := []struct {
		name  string
		m     extract.ChatModel
		trips *roundTrips
	}{{"before", guarded, &before}, {"after", metered, &after}}
	ctx := spend.WithTask(context.Background(), "limbic_anchoring_worker")
	took := map[string][]time.Duration{}
	calls := map[string]int{}
	var ratios []float64
	round := 0
	for b.Loop() {
		// Each path extracts into a graph of its own, new each round, so
		// every round does the same work; the order alternates.
		order := []int{0, 1}
		if round%2 == 1 {
			order = []int{1, 0}
		}
		var pair [2]time.Duration
		for _, i := range order {
			p := paths[i]
			g := graph.New(falkor, fmt.Sprintf("kg-%d-%s", round, p.name))
			if err := graph.EnsureSchema(context.Background(), g); err != nil {
				b.Fatal(err)
			}
			e, err := extract.New(extract.Config{LLM: p.m, Model: "kg-model", Graph: g, Redis: engineRedis})
			if err != nil {
				b.Fatal(err)
			}
			frags := extracttest.Corpus(fmt.Sprintf("r%d-%s", round, p.name), n, time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC))
			start := time.Now()
			res, err := e.Extract(ctx, frags)
			if err != nil {
				b.Fatal(err)
			}
			pair[i] = time.Since(start)
			took[p.name] = append(took[p.name], pair[i])
			calls[p.name] += res.LLMCalls
			_ = g.Delete(context.Background())
		}
		ratios = append(ratios, pair[1].Seconds()/pair[0].Seconds())
		round++
	}
	med := func(name string) float64 {
		return median(took[name], func(d time.Duration) float64 { return d.Seconds() })
	}
	b.ReportMetric(med("before"), "s/10k-before")
	b.ReportMetric(med("after"), "s/10k-after")
	b.ReportMetric(100*(median(ratios, func(r float64) float64 { return r })-1), "%wall-after/before")
	var total time.Duration
	for _, d := range took["after"] {
		total += d
	}
	addedBefore := outerBefore.sum.Load() - innerBefore.sum.Load()
	addedAfter := outerAfter.sum.Load() - innerAfter.sum.Load()
	b.ReportMetric(float64(addedBefore)/float64(calls["before"])/1e3, "µs/call-before")
	b.ReportMetric(float64(addedAfter)/float64(calls["after"])/1e3, "µs/call-after")
	b.ReportMetric(100*float64(addedAfter-addedBefore)/float64(total), "%added")
	b.ReportMetric(float64(before.n.Load())/float64(calls["before"]), "rtt/call-before")
	b.ReportMetric(float64(after.n.Load())/float64(calls["after"]), "rtt/call-after")
	b.Logf("rounds %d: before %v, after %v; %d and %d LLM calls; after/before per round %.3f", round, took["before"], took["after"],
		calls["before"], calls["after"], ratios)
	ledger.Wait()
	days, err := spend.ReadDays(context.Background(), ledgerRedis, time.Now(), 1)
	if err != nil {
		b.Fatal(err)
	}
	if got := days[0].Totals["limbic_anchoring_worker"]; got.SpentTokens == 0 || days[0].Lines[0].Calls != int64(calls["after"]) {
		b.Fatalf("ledger %+v %+v, want every call of the metered rounds", got, days[0].Lines)
	}
}

// timed adds up the time calls spend in the model it wraps.
type timed struct{ sum atomic.Int64 }

func (t *timed) wrap(m extract.ChatModel) extract.ChatModel { return timedChat{t: t, m: m} }

type timedChat struct {
	t *timed
	m extract.ChatModel
}

func (c timedChat) Chat(ctx context.Context, r llm.Request) (*llm.Response, error) {
	start := time.Now()
	resp, err := c.m.Chat(ctx, r)
	c.t.sum.Add(int64(time.Since(start)))
	return resp, err
}

// nopChat answers at once, with usage.
type nopChat struct{}

func (nopChat) Chat(_ context.Context, r llm.Request) (*llm.Response, error) {
	return &llm.Response{Content: "{}", Model: r.Model, Usage: llm.Usage{PromptTokens: 1060, CompletionTokens: 2230}}, nil
}

// BenchmarkSpendCallPath is the accounting's own cost per LLM call, with
// a model that answers at once: before, the kill switch's read (a GET);
// with the ledger, the reservation and the settlement scripts. Their
// difference is what the ledger adds to each call.
func BenchmarkSpendCallPath(b *testing.B) {
	srv := redistest.Start(b)
	rdb := srv.Client(b)
	req := llm.Extraction("kg-model", strings.Repeat("x", 4000), llm.JSONObject)
	ctx := spend.WithTask(context.Background(), "limbic_anchoring_worker")
	ledger := spend.New(rdb, spend.Options{
		Prices:    map[string]spend.Price{"kg-model": {Prompt: 0.30, Completion: 2.50}},
		Budgets:   map[string]spend.Limit{"limbic_anchoring_worker": spend.Tokens(1 << 50), spend.Cluster: spend.USD(1e9)},
		SwitchKey: killswitch.DefaultKey,
	})
	for _, c := range []struct {
		name string
		m    extract.ChatModel
	}{
		{"switch-read", killswitch.New(rdb, killswitch.DefaultKey, true).Guard(nopChat{})},
		{"ledger", meter.Chat(ledger, nopChat{}, 3*time.Minute)},
	} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := c.m.Chat(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
			ledger.Wait()
		})
	}
}
