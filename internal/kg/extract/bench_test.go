package extract_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/stargazer/stargazer-jobs/internal/kg/extract"
	"github.com/stargazer/stargazer-jobs/internal/kg/extract/extracttest"
)

// corpus is the benchmarks' workload (extracttest.Corpus).
func corpus(prefix string, n int) []extract.Fragment { return extracttest.Corpus(prefix, n, t0) }

// BenchmarkExtract10kMessages runs 10,000 short messages through the engine
// against a real Redis and FalkorDB, with the LLM faked (it answers at
// once: the figures are the engine's own cost, not a model's latency).
// Run with: go test -run '^$' -bench Extract10k -benchtime 3x ./internal/kg/extract/
func BenchmarkExtract10kMessages(b *testing.B) {
	const n = 10_000
	v := newEnv(b)
	e := v.engine(b)
	ctx := context.Background()
	var total extract.Counts
	runs := 0
	for b.Loop() {
		res, err := e.Extract(ctx, corpus(fmt.Sprintf("run%d", runs), n))
		if err != nil {
			b.Fatal(err)
		}
		total.Add(res.Counts)
		runs++
	}
	msgs := float64(runs * n)
	b.ReportMetric(msgs/b.Elapsed().Seconds(), "msgs/s")
	b.ReportMetric(100*float64(total.LLMCalls)/msgs, "calls/100msgs")
	b.ReportMetric(total.TokensPerFragment(), "tokens/msg")
	b.ReportMetric(float64(total.PromptTokens)/msgs, "prompt-tokens/msg")
	b.ReportMetric(float64(total.EntitiesAdded+total.EntitiesUpdated)/msgs, "entity-rows/msg")
	b.ReportMetric(float64(total.RelationshipsAdded+total.RelationshipsUpdated)/msgs, "rel-rows/msg")
	b.Logf("graph after %d messages: %d entities, %d relationships", runs*n,
		count(b, v.g, "MATCH (e:Entity) RETURN count(e)"), count(b, v.g, "MATCH ()-[r:REL]->() RETURN count(r)"))
}

// BenchmarkReExtract10kMessages is the cost of asking again for 10,000
// messages already extracted: ledger look-ups only, no LLM call, no write.
func BenchmarkReExtract10kMessages(b *testing.B) {
	const n = 10_000
	v := newEnv(b)
	e := v.engine(b)
	ctx := context.Background()
	frags := corpus("once", n)
	if _, err := e.Extract(ctx, frags); err != nil {
		b.Fatal(err)
	}
	calls := len(v.llm.Calls())
	for b.Loop() {
		res, err := e.Extract(ctx, frags)
		if err != nil || res.Duplicates != n || res.LLMCalls != 0 {
			b.Fatalf("%+v, %v", res.Counts, err)
		}
	}
	if len(v.llm.Calls()) != calls {
		b.Fatal("re-extraction called the LLM")
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "msgs/s")
}
