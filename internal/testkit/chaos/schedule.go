package chaos

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/testkit/chaos/check"
)

// Planned is one fault of a schedule: what, where, when (from the start
// of the fault period) and for how long.
type Planned struct {
	ID     int
	Kind   string
	Target string
	At     time.Duration
	For    time.Duration
	// Parameters, by kind: the partition's mode (stall or drop), the
	// latency, the clock offset, the LLM's status or Retry-After, the
	// restart delay, the malformed record, the task a Python run names.
	Mode   string
	Amount time.Duration
	Status int
	What   string
}

func (p Planned) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "#%d %s %s at %v for %v", p.ID, p.Kind, p.Target, p.At, p.For)
	if p.Mode != "" {
		fmt.Fprintf(&b, " mode=%s", p.Mode)
	}
	if p.Amount != 0 {
		fmt.Fprintf(&b, " amount=%v", p.Amount)
	}
	if p.Status != 0 {
		fmt.Fprintf(&b, " status=%d", p.Status)
	}
	if p.What != "" {
		fmt.Fprintf(&b, " what=%s", p.What)
	}
	return b.String()
}

// ForeignTasks are the tasks a stand-in Python scheduler reports runs of:
// tasks the original registers, that the workers schedule.
var ForeignTasks = []string{"kg_decay_task", "channel_summarization", "limbic_maintenance", "starwiki_lint"}

// malformedRecords are the bot records a "malformed" fault writes.
var malformedRecords = []string{
	"prompt-fire-at", "prompt-interval", "prompt-not-a-hash", "prompt-no-text", "prompt-huge-count",
	"message-dangling", "message-bad-fields", "fragment-dangling",
}

// Schedule plans the faults of a run: a pure function of its arguments,
// so a seed always gives the same schedule. Faults start at random over
// the fault period (about one every rate), overlap, and each is healed
// within it. Faults that cannot coexist are kept apart: one process-level
// fault per worker at a time and never all workers down at once, one
// network fault per link, one fault of the single Redis, FalkorDB and LLM
// at a time, no worker fault during a deploy.
func Schedule(seed int64, period time.Duration, workers int, kinds []string) []Planned {
	r := rand.New(rand.NewPCG(uint64(seed), 0x5eed))
	if len(kinds) == 0 {
		kinds = check.Kinds
	}
	kinds = slices.Clone(kinds)
	sort.Strings(kinds) // the order given must not change the schedule
	end := period - 10*time.Second
	if end <= 0 {
		return nil
	}
	// About one fault every 5 s.
	n := int(period / (5 * time.Second))
	type busy struct{ from, to time.Duration }
	taken := map[string][]busy{} // resource -> spans
	free := func(res string, from, to time.Duration) bool {
		for _, b := range taken[res] {
			if from < b.to && b.from < to {
				return false
			}
		}
		return true
	}
	take := func(res string, from, to time.Duration) { taken[res] = append(taken[res], busy{from, to}) }
	down := func(from, to time.Duration) int { // workers down at once over [from, to)
		c := 0
		for i := range workers {
			if !free(fmt.Sprintf("proc:w%d", i), from, to) {
				c++
			}
		}
		return c
	}
	secs := func(lo, hi float64) time.Duration {
		return time.Duration((lo + r.Float64()*(hi-lo)) * float64(time.Second)).Round(100 * time.Millisecond)
	}
	var out []Planned
	for range n * 4 { // draws; conflicting ones are dropped
		if len(out) >= n {
			break
		}
		p := Planned{Kind: kinds[r.IntN(len(kinds))], At: secs(0, end.Seconds())}
		w := fmt.Sprintf("w%d", r.IntN(workers))
		var res []string
		switch p.Kind {
		case check.KindKill, check.KindTerm:
			p.Target, p.For = w, secs(1, 8) // the restart's delay
			res = []string{"proc:" + w}
		case check.KindRedisKill:
			p.Target, p.For = "redis", secs(1, 6)
			res = []string{"redis"}
		case check.KindRedisPause:
			p.Target, p.For = "redis", secs(2, 8)
			res = []string{"redis"}
		case check.KindPartitionRedis:
			p.Target, p.For, p.Mode = w, secs(3, 15), []string{"stall", "drop"}[r.IntN(2)]
			res = []string{"net-redis:" + w}
		case check.KindLatencyRedis:
			p.Target, p.For, p.Amount = w, secs(5, 20), time.Duration(20+r.IntN(180))*time.Millisecond
			res = []string{"net-redis:" + w}
		case check.KindPartitionFalkor:
			p.Target, p.For, p.Mode = w, secs(3, 15), []string{"stall", "drop"}[r.IntN(2)]
			res = []string{"net-falkordb:" + w}
		case check.KindLatencyFalkor:
			p.Target, p.For, p.Amount = w, secs(5, 20), time.Duration(20+r.IntN(180))*time.Millisecond
			res = []string{"net-falkordb:" + w}
		case check.KindFalkorStall:
			p.Target, p.For = "falkordb", secs(3, 12)
			if r.IntN(4) == 0 {
				// Now and then one longer than the graph write lock's
				// 30 s and the singleton leases.
				p.For = secs(30, 45)
			}
			res = []string{"falkordb"}
		case check.KindLLM429:
			p.Target, p.For, p.Amount = "llm", secs(5, 20), time.Duration(1+r.IntN(3))*time.Second
			res = []string{"llm"}
		case check.KindLLM5xx:
			p.Target, p.For, p.Status = "llm", secs(5, 20), []int{500, 502, 503}[r.IntN(3)]
			res = []string{"llm"}
		case check.KindLLMHang:
			p.Target, p.For = "llm", secs(5, 15)
			res = []string{"llm"}
		case check.KindMalformed:
			p.Target, p.What = "bot", malformedRecords[r.IntN(len(malformedRecords))]
		case check.KindClock:
			off := secs(1, 5)
			if r.IntN(3) == 0 {
				off = secs(10, 40) // beyond the shortest intervals
			}
			if r.IntN(2) == 0 {
				off = -off
			}
			p.Target, p.For, p.Amount = w, secs(8, 30), off
			res = []string{"clock:" + w}
		case check.KindDeploy:
			p.Target, p.For = "cluster", time.Duration(workers)*8*time.Second // a budget; it takes what it takes
			for i := range workers {
				res = append(res, fmt.Sprintf("proc:w%d", i))
			}
			res = append(res, "deploy")
		case check.KindBudget:
			p.Target, p.For, p.What = "cluster", secs(5, 20), "*"
			res = []string{"budget"}
		case check.KindForeignScheduler:
			p.Target, p.What = "python", ForeignTasks[r.IntN(len(ForeignTasks))]
			res = []string{"foreign:" + p.What}
			p.For = 0
		default:
			continue
		}
		to := p.At + p.For
		if to > end {
			continue
		}
		ok := true
		for _, x := range res {
			// A worker's process faults need its worker up a few seconds
			// before and after.
			pad := time.Duration(0)
			if strings.HasPrefix(x, "proc:") {
				pad = 3 * time.Second
			}
			if !free(x, p.At-pad, to+pad) {
				ok = false
			}
		}
		if ok && (p.Kind == check.KindKill || p.Kind == check.KindTerm) && down(p.At-3*time.Second, to+3*time.Second) >= workers-1 {
			ok = false // never all workers down
		}
		if ok && strings.HasPrefix(p.Target, "w") && !free("deploy", p.At-3*time.Second, to+3*time.Second) {
			ok = false
		}
		if ok && p.Kind == check.KindForeignScheduler && !free(res[0], p.At-30*time.Second, p.At+30*time.Second) {
			ok = false // one Python run of a task at a time: each stand-down is checked apart
		}
		if !ok {
			continue
		}
		for _, x := range res {
			take(x, p.At, to)
		}
		if p.Kind == check.KindForeignScheduler {
			take(res[0], p.At, p.At+30*time.Second)
		}
		out = append(out, p)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].At < out[j].At })
	for i := range out {
		out[i].ID = i + 1
	}
	return out
}

// ParseKinds reads a -faults list: comma-separated kinds, "all" (or
// empty) for every kind, a leading "-" to leave a kind out
// ("all,-deploy").
func ParseKinds(s string) ([]string, error) {
	known := map[string]bool{}
	for _, k := range check.Kinds {
		known[k] = true
	}
	set := map[string]bool{}
	if strings.TrimSpace(s) == "" {
		s = "all"
	}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		switch {
		case f == "all":
			for _, k := range check.Kinds {
				set[k] = true
			}
		case strings.HasPrefix(f, "-") && known[f[1:]]:
			delete(set, f[1:])
		case known[f]:
			set[f] = true
		default:
			return nil, fmt.Errorf("unknown fault kind %q (known: all, %s)", f, strings.Join(check.Kinds, ", "))
		}
	}
	var out []string
	for _, k := range check.Kinds {
		if set[k] {
			out = append(out, k)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no fault kind left in %q", s)
	}
	return out, nil
}
