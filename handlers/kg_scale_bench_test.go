package handlers

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm/meter"
	"github.com/stargazer/stargazer-jobs/internal/kg/extract/extracttest"
	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
	"github.com/stargazer/stargazer-jobs/internal/spend"
	"github.com/stargazer/stargazer-jobs/internal/store/msgcache"
	"github.com/stargazer/stargazer-jobs/internal/testkit/falkortest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/kgload"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// The message cache at scale: 1,000,000 messages over 2,000 channels.
const (
	scaleChannels   = 2_000
	scalePerChannel = 500
)

// keyFamily classifies a job-system key for the memory table ("" for the
// message cache and anything else not ours to size here).
func keyFamily(k string) string {
	switch {
	case strings.Contains(k, ":chain:") && strings.HasPrefix(k, "sgjobs:plan:"):
		return "plan chains"
	case strings.HasPrefix(k, "sgjobs:plan:") && strings.HasSuffix(k, ":units"):
		return "plan units"
	case strings.HasPrefix(k, "sgjobs:plan:") && strings.HasSuffix(k, ":backlog"):
		return "plan backlog"
	case strings.HasPrefix(k, "sg:ka:cursor:"), strings.HasPrefix(k, "sgjobs:kgx:cursor:"):
		return "cursors"
	case strings.HasPrefix(k, "asynq:{extraction}:"):
		return "unit tasks (asynq)"
	case k == "sgjobs:kgx:done":
		return "ledger done"
	case k == "sgjobs:kgx:claims":
		return "ledger claims"
	case k == "sgjobs:kgx:failures":
		return "ledger failures"
	case k == "sgjobs:kgx:poisoned":
		return "ledger poisoned"
	case strings.HasPrefix(k, "sgjobs:kgx:batch:"):
		return "ledger stored batches"
	case strings.HasPrefix(k, "sgjobs:llm:spend:"):
		return "spend ledger"
	case strings.HasPrefix(k, "sgjobs:llm:budget:"):
		return "LLM budget"
	}
	return ""
}

// familyMemory sums MEMORY USAGE (exact: SAMPLES 0) of the job system's
// keys by family, and counts them.
func familyMemory(tb testing.TB, rdb *redis.Client) (bytes, keys map[string]int64) {
	tb.Helper()
	ctx := context.Background()
	bytes, keys = map[string]int64{}, map[string]int64{}
	for _, pattern := range []string{"sgjobs:*", "sg:ka:cursor:*", "asynq:{extraction}:*"} {
		iter := rdb.Scan(ctx, 0, pattern, 5000).Iterator()
		var names []string
		for iter.Next(ctx) {
			names = append(names, iter.Val())
		}
		if err := iter.Err(); err != nil {
			tb.Fatal(err)
		}
		slices.Sort(names)
		names = slices.Compact(names)
		pipe := rdb.Pipeline()
		cmds := make([]*redis.IntCmd, len(names))
		for i, k := range names {
			cmds[i] = pipe.MemoryUsage(ctx, k, 0)
		}
		if _, err := pipe.Exec(ctx); err != nil && err != redis.Nil {
			tb.Fatal(err)
		}
		for i, k := range names {
			f := keyFamily(k)
			if f == "" {
				continue
			}
			bytes[f] += cmds[i].Val()
			keys[f]++
		}
	}
	return bytes, keys
}

// commandStats reads INFO commandstats: calls by command.
func commandStats(tb testing.TB, rdb *redis.Client) map[string]int64 {
	tb.Helper()
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		tb.Fatal(err)
	}
	out := map[string]int64{}
	for _, line := range strings.Split(info, "\r\n") {
		name, rest, ok := strings.Cut(strings.TrimPrefix(line, "cmdstat_"), ":calls=")
		if !ok || !strings.HasPrefix(line, "cmdstat_") {
			continue
		}
		calls, _, _ := strings.Cut(rest, ",")
		out[name], _ = strconv.ParseInt(calls, 10, 64)
	}
	return out
}

// infoField reads one integer field of an INFO section.
func infoField(tb testing.TB, rdb *redis.Client, section, field string) int64 {
	tb.Helper()
	info, err := rdb.Info(context.Background(), section).Result()
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	tb.Fatalf("no %s in INFO %s", field, section)
	return 0
}

// passFigures are one planning pass's measurements.
type passFigures struct {
	name    string
	took    time.Duration
	cmds    int64
	top     string // the commands that dominate
	planned any    // messages read
	units   any
}

// measurePass runs one pass of task's planner through its handler and
// counts the Redis commands it caused (INFO commandstats, read on its own
// connection; the INFO calls themselves are left out).
func measurePass(b *testing.B, ctx context.Context, d Deps, probe *redis.Client, task, name string) passFigures {
	b.Helper()
	before := commandStats(b, probe)
	start := time.Now()
	res, err := work(ctx, d, task, &jobs.Empty{})
	took := time.Since(start)
	if err != nil {
		b.Fatalf("%s: %v", name, err)
	}
	after := commandStats(b, probe)
	f := passFigures{name: name, took: took, planned: res["messages_read"], units: res["units_planned"]}
	type kv struct {
		k string
		v int64
	}
	var byCmd []kv
	for k, v := range after {
		if k == "info" {
			continue
		}
		if n := v - before[k]; n > 0 {
			byCmd = append(byCmd, kv{k, n})
			f.cmds += n
		}
	}
	slices.SortFunc(byCmd, func(a, b kv) int { return int(b.v - a.v) })
	var top []string
	for _, c := range byCmd[:min(5, len(byCmd))] {
		top = append(top, fmt.Sprintf("%s %d", c.k, c.v))
	}
	f.top = strings.Join(top, ", ")
	b.Logf("%s: %s, %d commands (%s); %v", name, took.Round(time.Millisecond), f.cmds, f.top, res)
	return f
}

// runUnits runs every kg_extract_unit queued in asynq through its handler,
// as a worker would, and deletes it (asynq would keep it an hour as
// completed: the asynq family is measured before). It returns how many ran.
func runUnits(b *testing.B, ctx context.Context, d Deps, insp *asynq.Inspector) int {
	b.Helper()
	spec := unitSpec()
	n := 0
	for {
		tasks, err := insp.ListPendingTasks(spec.Queue, asynq.PageSize(500))
		if err != nil {
			b.Fatal(err)
		}
		if len(tasks) == 0 {
			return n
		}
		for _, ti := range tasks {
			p, err := jobs.DecodePayload(spec, ti.Payload)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := work(spend.WithTask(ctx, jobs.KGExtractUnit), d, jobs.KGExtractUnit, p); err != nil {
				b.Fatalf("unit %s: %v", ti.ID, err)
			}
			if err := insp.DeleteTask(spec.Queue, ti.ID); err != nil {
				b.Fatal(err)
			}
			n++
		}
	}
}

// BenchmarkPlannerAt1M measures the extraction planners over a generated
// message cache of 1,000,000 messages in 2,000 channels (500 each, dated
// over the last 50 minutes, so both planners' look-backs cover them all; one
// message in ten the bot's), in a real redis-server, units enqueued in real
// asynq: each pass's time and Redis commands (with the fleet's hourly
// discovery turn held, the steady state, and taken: the reconciling
// scan), the planner's keys' memory after it, and, with a real FalkorDB and the extraction LLM fake, the
// extraction ledger's and the spend ledger's keys after the first pass's
// units ran. Run with -benchtime 1x; docs/performance.md ("Data at scale")
// records the figures:
//
//	go test -run '^$' -bench PlannerAt1M -benchtime 1x -timeout 60m ./handlers/
func BenchmarkPlannerAt1M(b *testing.B) {
	ctx := context.Background()
	srv := redistest.Start(b)
	rdb := srv.Client(b)
	probe := srv.Client(b)
	falkor := falkortest.Start(b)
	g := graph.New(falkor.Client(b), "kg")
	if err := graph.EnsureSchema(ctx, g); err != nil {
		b.Fatal(err)
	}
	llmFake := extracttest.Start(b)
	ac := asynq.NewClientFromRedisClient(rdb)
	insp := asynq.NewInspectorFromRedisClient(rdb)
	ledger := spend.New(rdb, spend.Options{Prices: map[string]spend.Price{}})
	d := Deps{
		Redis: rdb, Graph: g, LLM: meter.Chat(ledger, llmFake.Client(), 2*time.Minute),
		Models: Models{Chat: "chat-model", Extraction: "kg-model"},
		Now:    time.Now, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Enqueuer: ac, Tasks: insp,
	}
	for b.Loop() {
		if err := rdb.FlushAll(ctx).Err(); err != nil {
			b.Fatal(err)
		}
		memBefore := infoField(b, probe, "memory", "used_memory")
		gen, err := kgload.SeedBulk(ctx, rdb, scaleChannels, scalePerChannel, time.Now().Add(-time.Minute), 50*time.Minute)
		if err != nil {
			b.Fatal(err)
		}
		cacheMem := infoField(b, probe, "memory", "used_memory") - memBefore
		keys, _ := rdb.DBSize(ctx).Result()
		fmt.Printf("\ngenerated %d messages (%d the bot's) over %d channels in %s (%.0f messages/s); %d keys; used_memory +%.1f MiB (%.0f B per message)\n",
			gen.Messages, gen.Bot, gen.Channels, gen.Took.Round(time.Millisecond), float64(gen.Messages)/gen.Took.Seconds(),
			keys, float64(cacheMem)/(1<<20), float64(cacheMem)/float64(gen.Messages))
		b.ReportMetric(gen.Took.Seconds(), "generate_s")
		b.ReportMetric(float64(cacheMem)/(1<<20), "cache_MiB")

		// Channel discovery alone: the active set, which every pass reads,
		// and the SCAN over the whole key space, which the pass holding
		// the hourly turn adds.
		before := commandStats(b, probe)
		start := time.Now()
		found, err := msgcache.New(rdb).DiscoverChannels(ctx)
		if err != nil || len(found) != scaleChannels {
			b.Fatalf("discovered %d channels: %v", len(found), err)
		}
		discover := time.Since(start)
		scans := commandStats(b, probe)["scan"] - before["scan"]
		fmt.Printf("channel discovery by SCAN (the hourly turn): %d channels in %s, %d SCAN calls\n", len(found), discover.Round(time.Millisecond), scans)
		b.ReportMetric(discover.Seconds(), "discover_scan_s")
		start = time.Now()
		active, malformed, err := msgcache.New(rdb).AllActive(ctx)
		if err != nil || len(active) != scaleChannels || len(malformed) != 0 {
			b.Fatalf("active set: %d channels, %d malformed: %v", len(active), len(malformed), err)
		}
		discoverActive := time.Since(start)
		fmt.Printf("channel discovery by the active set (every pass): %d channels in %s\n", len(active), discoverActive.Round(time.Microsecond))
		b.ReportMetric(discoverActive.Seconds(), "discover_active_s")

		var passes []passFigures
		memTable := func(title string, per int64) {
			bytes, n := familyMemory(b, probe)
			fmt.Printf("\n%s\n%-24s %7s %12s %16s\n", title, "family", "keys", "bytes", "per 1M messages")
			for _, f := range slices.Sorted(maps.Keys(bytes)) {
				perM := "-"
				if per > 0 {
					perM = fmt.Sprintf("%.1f MiB", float64(bytes[f])/float64(per)*1e6/(1<<20))
				}
				fmt.Printf("%-24s %7d %12d %16s\n", f, n[f], bytes[f], perM)
			}
		}
		// limbic_anchoring_worker: the first pass plans to its bound
		// (20,000), the second finds the bound reached.
		// The first pass takes the fleet's discovery turn (it scans); the
		// others hold it (the steady state), but for one bound-reached pass
		// with the turn given up: the hourly reconciling pass.
		passes = append(passes, measurePass(b, ctx, d, probe, jobs.LimbicAnchoringWorker, "anchoring, first pass (scans)"))
		memTable("after the first anchoring pass (per 1M planned messages)", 20_000)
		passes = append(passes, measurePass(b, ctx, d, probe, jobs.LimbicAnchoringWorker, "anchoring, bound reached"))
		// The hourly pass also puts back channels the active set lost:
		// 100 of them here.
		lost, err := rdb.ZRange(ctx, msgcache.ActiveKey, 0, 99).Result()
		if err != nil {
			b.Fatal(err)
		}
		if err := rdb.ZRem(ctx, msgcache.ActiveKey, lost).Err(); err != nil {
			b.Fatal(err)
		}
		if err := rdb.Del(ctx, discoveryScanKey).Err(); err != nil {
			b.Fatal(err)
		}
		passes = append(passes, measurePass(b, ctx, d, probe, jobs.LimbicAnchoringWorker, "anchoring, bound reached (scans, repairs 100)"))
		if n, err := rdb.ZCard(ctx, msgcache.ActiveKey).Result(); err != nil || n != scaleChannels {
			b.Fatalf("after the reconciling pass the active set holds %d channels: %v", n, err)
		}

		// The first pass's units, extracted with the LLM faked.
		start = time.Now()
		ran := runUnits(b, ctx, d, insp)
		took := time.Since(start)
		calls := len(llmFake.Calls())
		fmt.Printf("\nextracted the first pass's %d units (%d LLM calls) in %s\n", ran, calls, took.Round(time.Millisecond))
		memTable("after extracting them (per 1M extracted messages)", 18_000)
		passes = append(passes, measurePass(b, ctx, d, probe, jobs.LimbicAnchoringWorker, "anchoring, after the units settled"))

		// auto_kg_extraction: its own cursors and chains, 40,000 planned.
		passes = append(passes, measurePass(b, ctx, d, probe, jobs.AutoKGExtraction, "auto_kg, first pass"))
		passes = append(passes, measurePass(b, ctx, d, probe, jobs.AutoKGExtraction, "auto_kg, second pass"))
		passes = append(passes, measurePass(b, ctx, d, probe, jobs.AutoKGExtraction, "auto_kg, bound reached"))
		memTable("after the auto_kg passes", 0)

		fmt.Printf("\n%-46s %10s %9s %8s %6s  %s\n", "pass", "time", "commands", "planned", "units", "top commands")
		for _, p := range passes {
			fmt.Printf("%-46s %10s %9d %8v %6v  %s\n", p.name, p.took.Round(time.Millisecond), p.cmds, p.planned, p.units, p.top)
		}
		b.ReportMetric(passes[0].took.Seconds(), "first_pass_s")
		b.ReportMetric(float64(passes[0].cmds), "first_pass_cmds")
		b.ReportMetric(passes[1].took.Seconds(), "bound_pass_s")
		b.ReportMetric(float64(passes[1].cmds), "bound_pass_cmds")
		b.ReportMetric(passes[2].took.Seconds(), "bound_scan_pass_s")
		b.ReportMetric(float64(passes[2].cmds), "bound_scan_pass_cmds")
	}
	fmt.Fprintln(os.Stdout)
}
