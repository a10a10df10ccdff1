package chaos

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/testkit/chaos/check"
)

// A seed replays: the same seed gives the same schedule, whatever the
// order the kinds are given in; another seed gives another.
func TestTheSameSeedGivesTheSameSchedule(t *testing.T) {
	a := Schedule(42, 10*time.Minute, 4, nil)
	b := Schedule(42, 10*time.Minute, 4, check.Kinds)
	rev := make([]string, len(check.Kinds))
	for i, k := range check.Kinds {
		rev[len(rev)-1-i] = k
	}
	c := Schedule(42, 10*time.Minute, 4, rev)
	if !reflect.DeepEqual(a, b) || !reflect.DeepEqual(a, c) {
		t.Fatal("the same seed gave different schedules")
	}
	if reflect.DeepEqual(a, Schedule(43, 10*time.Minute, 4, nil)) {
		t.Fatal("seeds 42 and 43 gave the same schedule")
	}
	kinds := map[string]int{}
	for _, p := range a {
		kinds[p.Kind]++
	}
	for _, k := range check.Kinds {
		if kinds[k] == 0 {
			t.Errorf("10 minutes of seed 42 inject no %s", k)
		}
	}
	t.Logf("%d faults: %v", len(a), kinds)
}

// The schedule keeps apart what cannot coexist: never every worker down,
// one fault of a worker's process at a time, one fault of the single
// Redis, FalkorDB and LLM at a time, every fault healed before the end.
func TestTheScheduleKeepsApartWhatCannotCoexist(t *testing.T) {
	const period = 10 * time.Minute
	for seed := int64(1); seed <= 30; seed++ {
		ps := Schedule(seed, period, 3, nil)
		overlap := func(a, b Planned) bool { return a.At < b.At+b.For && b.At < a.At+a.For }
		proc := func(k string) bool { return k == check.KindKill || k == check.KindTerm }
		for i, a := range ps {
			if a.At+a.For > period-10*time.Second {
				t.Errorf("seed %d: %v ends after the fault period", seed, a)
			}
			down := map[string]bool{a.Target: true}
			for j, b := range ps {
				if i == j || !overlap(a, b) {
					continue
				}
				single := func(k string) bool {
					return k == check.KindRedisKill || k == check.KindRedisPause
				}
				llm := func(k string) bool { return k == check.KindLLM429 || k == check.KindLLM5xx || k == check.KindLLMHang }
				switch {
				case single(a.Kind) && single(b.Kind), llm(a.Kind) && llm(b.Kind),
					a.Kind == check.KindFalkorStall && b.Kind == check.KindFalkorStall,
					proc(a.Kind) && proc(b.Kind) && a.Target == b.Target,
					a.Kind == check.KindDeploy && (proc(b.Kind) || b.Kind == check.KindDeploy):
					t.Errorf("seed %d: %v and %v overlap", seed, a, b)
				}
				if proc(a.Kind) && proc(b.Kind) {
					down[b.Target] = true
				}
			}
			if proc(a.Kind) && len(down) >= 3 {
				t.Errorf("seed %d: every worker down at once around %v", seed, a)
			}
		}
	}
}

func TestParseKinds(t *testing.T) {
	got, err := ParseKinds("all,-deploy,-clock")
	if err != nil || len(got) != len(check.Kinds)-2 {
		t.Fatalf("all,-deploy,-clock = %v, %v", got, err)
	}
	if _, err := ParseKinds("kill,flood"); err == nil {
		t.Fatal("an unknown kind was accepted")
	}
	if got, _ := ParseKinds("kill"); !reflect.DeepEqual(got, []string{"kill"}) {
		t.Fatalf("kill = %v", got)
	}
}

func TestNewStacksCountsEveryGroupOfADump(t *testing.T) {
	before := "goroutine profile: total 7\n6 @ 0x1 0x2\n#\t0x1\tpkg.loop+0x1\t/x.go:1\n\n1 @ 0x3\n#\t0x3\tpkg.wait+0x3\t/y.go:2\n\n"
	after := "goroutine profile: total 9\n3 @ 0x3\n#\t0x3\tpkg.wait+0x3\t/y.go:2\n\n6 @ 0x1 0x2\n#\t0x1\tpkg.loop+0x1\t/x.go:1\n\n"
	more, report := newStacks(before, after)
	if more != 2 || !strings.Contains(report, "pkg.wait") || strings.Contains(report, "pkg.loop") {
		t.Fatalf("+%d:\n%s", more, report)
	}
}
