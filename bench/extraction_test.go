package bench

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/testkit/falkortest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/kgload"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// Scale-out of knowledge extraction: the backlog, the model's latency and
// the workers' concurrency.
const (
	scaleChannels    = 200
	scalePerChannel  = 100 // 20,000 messages
	scaleLatency     = 2 * time.Second
	scaleConcurrency = 10
	// scaleCap is the LLM_MAX_IN_FLIGHT of the capped runs: below 4 ×
	// WORKER_CONCURRENCY, so four processes hit it.
	scaleCap = 15
)

// scaleResult is one run's figures.
type scaleResult struct {
	procs                    int
	elapsed                  time.Duration
	perSec                   float64
	calls, units, msgs       float64
	promptTokens, compTokens float64
	lockWait                 float64 // seconds, summed over units
	peak                     int64
	loadBefore, loadAfter    string
}

// scaleRun clears a 20,000-message backlog over 200 channels with procs
// worker processes (the real worker binary) against a real Redis and a
// real FalkorDB, the LLM faked with a fixed latency per call. The clock
// runs from the planner's enqueue to the last channel's cursor reaching
// its last message.
func scaleRun(b *testing.B, bin string, procs, maxInFlight int) scaleResult {
	ctx := context.Background()
	srv := redistest.Start(b)
	defer srv.Stop()
	rdb := srv.Client(b)
	falkor := falkortest.Start(b)
	defer falkor.Stop()
	llm := kgload.StartLLM(b, scaleLatency)
	msgs := kgload.Seed(b, rdb, scaleChannels, 0, scalePerChannel, time.Now().Add(-40*time.Minute))
	env := kgload.Env(srv.URL(), falkor.URL(), llm.BaseURL(), map[string]string{
		"WORKER_CONCURRENCY": strconv.Itoa(scaleConcurrency), "LLM_MAX_IN_FLIGHT": strconv.Itoa(maxInFlight),
	})
	var workers []*kgload.Worker
	for range procs {
		workers = append(workers, kgload.StartWorker(b, bin, env))
	}
	time.Sleep(2 * time.Second) // the graph schema, the asynq servers
	res := scaleResult{procs: procs, loadBefore: kgload.Load()}
	start := time.Now()
	if err := kgload.Plan(ctx, rdb); err != nil {
		b.Fatal(err)
	}
	if err := kgload.WaitSettled(ctx, rdb, msgs, 30*time.Minute); err != nil {
		b.Fatal(err)
	}
	res.elapsed = time.Since(start)
	res.loadAfter = kgload.Load()
	res.msgs = kgload.Items(workers, jobs.KGExtractUnit, "messages_extracted")
	res.perSec = float64(kgload.Count(msgs)) / res.elapsed.Seconds()
	res.calls = kgload.Items(workers, jobs.KGExtractUnit, "llm_calls")
	res.units = kgload.Items(workers, jobs.LimbicAnchoringWorker, "units_planned")
	res.promptTokens = kgload.Items(workers, jobs.KGExtractUnit, "prompt_tokens")
	res.compTokens = kgload.Items(workers, jobs.KGExtractUnit, "completion_tokens")
	res.lockWait = kgload.Items(workers, jobs.KGExtractUnit, "lock_wait_seconds")
	res.peak = llm.Peak()
	for _, w := range workers {
		w.Term(30 * time.Second)
	}
	if int(res.msgs) != kgload.Count(msgs) {
		b.Fatalf("%v messages extracted of %d", res.msgs, kgload.Count(msgs))
	}
	return res
}

// BenchmarkExtractionScaleOut measures messages extracted per second with
// 1, 2 and 4 worker processes, once without an LLM budget limit and once
// with LLM_MAX_IN_FLIGHT below 4 × WORKER_CONCURRENCY, and what each
// message costs in calls and tokens, and the graph write-lock wait per
// unit. Ratios are within one run. Run with:
//
//	go test -run '^$' -bench ExtractionScaleOut -benchtime 1x -timeout 90m ./bench/
func BenchmarkExtractionScaleOut(b *testing.B) {
	bin := kgload.BuildWorker(b)
	for b.Loop() {
		var table strings.Builder
		fmt.Fprintf(&table, "\n%-26s %5s %10s %6s %9s %10s %12s %13s %15s %9s %s\n", "budget", "procs", "msgs/s", "ratio", "clear", "calls/100", "tokens/msg", "lock wait/unit", "peak in flight", "units", "load 1m before→after")
		for _, c := range []struct {
			name string
			cap  int
		}{{"no limit", 0}, {fmt.Sprintf("LLM_MAX_IN_FLIGHT=%d", scaleCap), scaleCap}} {
			var one float64
			for _, procs := range []int{1, 2, 4} {
				r := scaleRun(b, bin, procs, c.cap)
				if procs == 1 {
					one = r.perSec
				}
				ratio := r.perSec / one
				fmt.Fprintf(&table, "%-26s %5d %10.1f %6.2f %9s %10.2f %12.1f %13s %15d %9.0f %s→%s\n",
					c.name, procs, r.perSec, ratio, r.elapsed.Round(100*time.Millisecond), 100*r.calls/r.msgs,
					(r.promptTokens+r.compTokens)/r.msgs, (time.Duration(r.lockWait / r.units * float64(time.Second))).Round(10*time.Microsecond),
					r.peak, r.units, r.loadBefore, r.loadAfter)
				b.ReportMetric(r.perSec, fmt.Sprintf("msgs/s-%s-%dp", strings.ReplaceAll(c.name, " ", "_"), procs))
				b.Logf("%s, %d process(es): %.1f msgs/s (×%.2f), cleared in %s", c.name, procs, r.perSec, ratio, r.elapsed.Round(time.Second))
			}
		}
		fmt.Print(table.String()) // b.Log would cut it
	}
}
