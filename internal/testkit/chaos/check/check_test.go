package check

import (
	"bytes"
	"strconv"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func at(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }

// clean is a small history that breaks nothing: a periodic singleton run
// every 2 s on two workers, a one-shot and a recurring prompt, two
// messages extracted once, a deployment with its backfill.
func clean() *History {
	h := &History{
		Seed: 7, Start: t0, Warm: at(5), FaultsEnd: at(40), End: at(60),
		Config: Config{
			Intervals:      map[string]time.Duration{"kg_decay_task": 2 * time.Second, "scheduled_prompt_tick": time.Second},
			Singletons:     map[string]bool{"kg_decay_task": true},
			SingletonLease: 6 * time.Second, MaxGoroutineGrowth: 10, MaxFDGrowth: 10, MaxConnGrowth: 5,
		},
		Procs: []Proc{
			{Name: "w0", Pid: 100, Start: at(0), Deployment: "d1"},
			{Name: "w1", Pid: 101, Start: at(0), Deployment: "d1"},
		},
		Enqueued:     map[string]time.Time{},
		Done:         map[string]bool{"sg:msg:discord:1:m1": true, "sg:msg:discord:1:m2": true},
		Poisoned:     map[string]bool{},
		PromptStatus: map[string]string{},
		Deployments:  []Deployment{{ID: "d1", Start: at(0)}},
		Graph:        "a\nb\n", Reference: "a\nb\n",
	}
	for i := 0; i < 28; i++ {
		due := at(2 + 2*float64(i))
		id := "kg_decay_task@" + itoa(due.UnixMilli())
		pid := 100 + i%2
		h.Occurrences = append(h.Occurrences, Occurrence{Task: "kg_decay_task", Due: due, ID: id, Outcome: "enqueued", TaskID: id,
			At: due.Add(100 * time.Millisecond), Pid: pid})
		h.Runs = append(h.Runs, Run{Task: "kg_decay_task", TaskID: id, Proc: []string{"w0", "w1"}[i%2], Pid: pid,
			Start: due.Add(200 * time.Millisecond), End: due.Add(900 * time.Millisecond), Status: "ok"})
		lease := id + "|n" + itoa(int64(i))
		h.Leases = append(h.Leases,
			LeaseEvent{Task: "kg_decay_task", TaskID: id, Lease: lease, Pid: pid, Kind: "taken", At: due.Add(210 * time.Millisecond)},
			LeaseEvent{Task: "kg_decay_task", TaskID: id, Lease: lease, Pid: pid, Kind: "released", Held: true, At: due.Add(890 * time.Millisecond)})
	}
	h.Runs = append(h.Runs, Run{Task: "startup_channel_backfill", TaskID: "startup_channel_backfill@d1", Proc: "w0", Pid: 100,
		Start: at(1), End: at(2), Status: "ok"})
	h.Prompts = []PromptSeed{
		{ID: "once", FireAt: at(10), AddedAt: at(5)},
		{ID: "every5", FireAt: at(10), Interval: 5 * time.Second, EndAt: at(30), AddedAt: at(5)},
	}
	h.Fires = []Fire{{PromptID: "once", ScheduledFor: at(10), Occurrence: 1, FiredAt: at(10.5), At: at(10.5)}}
	for _, s := range []float64{10, 15, 20, 25, 30} {
		h.Fires = append(h.Fires, Fire{PromptID: "every5", ScheduledFor: at(s), FiredAt: at(s + 0.5), At: at(s + 0.5)})
	}
	h.FireLogs = append(h.FireLogs, h.Fires...)
	h.Messages = []Message{{Key: "sg:msg:discord:1:m1", Time: at(6), Expect: true}, {Key: "sg:msg:discord:1:m2", Time: at(7), Expect: true}}
	h.Commits = []Commit{{Batch: "b1", Fragments: []string{"sg:msg:discord:1:m1", "sg:msg:discord:1:m2"}, At: at(9), Pid: 100}}
	return h
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func violations(t *testing.T, h *History) map[string][]Violation {
	t.Helper()
	r := Check(h)
	out := map[string][]Violation{}
	for _, inv := range r.Invariants {
		for _, v := range inv.Violations {
			out[inv.Name] = append(out[inv.Name], v)
		}
	}
	var buf bytes.Buffer
	Write(&buf, h, r)
	t.Log(buf.String())
	return out
}

func TestACleanHistoryHasNoViolation(t *testing.T) {
	if vs := violations(t, clean()); len(vs) != 0 {
		t.Fatalf("violations in a clean history: %v", vs)
	}
}

// The checker catches what it claims: each history below breaks one
// guarantee, and exactly that invariant reports it.
func TestTheCheckerReportsEachBrokenGuarantee(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(h *History)
		want   string
		has    string
	}{
		{"a duplicate periodic run", func(h *History) {
			r := h.Runs[3]
			r.Pid, r.Proc, r.Start, r.End = 100, "w0", r.End.Add(time.Second), r.End.Add(1500*time.Millisecond)
			h.Runs = append(h.Runs, r)
		}, InvOccurrenceOnce, "completed 2 times"},
		{"an occurrence lost between two others", func(h *History) {
			h.Occurrences = append(h.Occurrences[:5], h.Occurrences[6:]...)
			h.Runs = append(h.Runs[:5], h.Runs[6:]...)
		}, InvOccurrenceMissed, "never handled"},
		{"an occurrence enqueued that never ran", func(h *History) {
			h.Runs = append(h.Runs[:5], h.Runs[6:]...)
		}, InvOccurrenceMissed, "enqueued and never ran"},
		{"a lost one-shot prompt", func(h *History) {
			h.Fires, h.FireLogs = h.Fires[1:], h.FireLogs[1:]
		}, InvPromptOnce, "never fired"},
		{"a lost recurring due time", func(h *History) {
			h.Fires = append(h.Fires[:2], h.Fires[3:]...)
			h.FireLogs = append([]Fire(nil), h.Fires...)
		}, InvPromptOnce, "where its next due time was"},
		{"a prompt fired twice", func(h *History) {
			h.Fires = append(h.Fires, h.Fires[2])
		}, InvPromptOnce, "fired twice"},
		{"a double extraction", func(h *History) {
			h.Commits = append(h.Commits, Commit{Batch: "b2", Fragments: []string{"sg:msg:discord:1:m2"}, At: at(12), Pid: 101})
		}, InvExtractedOnce, "extracted by 2 batches"},
		{"a double extraction seen in the graph only", func(h *History) {
			h.Graph = "a\nb2\n"
		}, InvGraph, "differs"},
		{"a message never extracted", func(h *History) {
			delete(h.Done, "sg:msg:discord:1:m2")
		}, InvExtractedOnce, "never extracted"},
		{"an overlapping singleton", func(h *History) {
			// Run 7's lease taken on w0 while run 6 still holds it on w1.
			h.Leases[14].At = h.Leases[13].At.Add(-300 * time.Millisecond)
			h.Leases[14].Pid = 100
			h.Leases[12].Pid = 101
			h.Runs[6].Pid, h.Runs[6].End = 101, h.Runs[6].End.Add(2*time.Second)
			h.Leases[13].At = h.Leases[13].At.Add(2 * time.Second)
		}, InvSingleton, "while"},
		{"a lease outliving its dead holder", func(h *History) {
			h.Procs[1].End, h.Procs[1].Ended = at(30), "killed"
			h.LeaseSamples = append(h.LeaseSamples, LeaseSample{At: at(45), Task: "kg_decay_task", Lease: h.Leases[0].Lease, TTL: time.Second})
			h.Leases[0].Pid = 101
		}, InvLeaseLapse, "after its worker killed"},
		{"a stuck task", func(h *History) {
			h.Stuck = append(h.Stuck, Stuck{What: "task", ID: "kg_extract_unit:x", Detail: "pending for 3m0s in extraction"})
		}, InvStuck, "pending for"},
		{"a growing worker", func(h *History) {
			h.End = at(200)
			for i := 0; i < 40; i++ {
				g := 30
				if i > 30 {
					g = 80
				}
				h.ResourceSamples = append(h.ResourceSamples, ResourceSample{Proc: "w0", Pid: 100, At: at(float64(5 * i)), Goroutines: g, FDs: 20, Conns: 5})
			}
		}, InvResources, "goroutines 30 → 80"},
		{"an LLM call inside a 429's Retry-After", func(h *History) {
			h.LLMCalls = append(h.LLMCalls,
				LLMCall{At: at(20), Service: "llm", Purpose: "extraction", Status: 429, RetryAfter: 3 * time.Second},
				LLMCall{At: at(20.1), Service: "llm", Purpose: "extraction", Status: 429, RetryAfter: 3 * time.Second}, // already admitted
				LLMCall{At: at(21), Service: "llm", Purpose: "chat", Status: 200})
		}, InvRetryAfter, "arrived 1s after a 429"},
		{"a Go run during a Python run's stand-down", func(h *History) {
			h.Foreign = append(h.Foreign, ForeignRun{At: at(10), Task: "kg_decay_task", StandDownUntil: at(13)})
		}, InvStandDown, "during the stand-down"},
		{"an LLM call while the budget is spent", func(h *History) {
			h.Faults = append(h.Faults, Fault{ID: 1, Kind: KindBudget, Target: "cluster", Start: at(20), End: at(30)})
			h.LLMCalls = append(h.LLMCalls,
				LLMCall{At: at(20.5), Service: "llm", Purpose: "extraction", Status: 200}, // reserved before
				LLMCall{At: at(25), Service: "embeddings", Purpose: "embedding", Status: 200})
		}, InvBudget, "into a spent budget"},
		{"a run failed on a refused call", func(h *History) {
			h.Runs = append(h.Runs, Run{Task: "channel_summarization", TaskID: "x1", Proc: "w0", Pid: 100, Start: at(20), End: at(21),
				Status: "error", Err: "LLM call of channel_summarization refused: budget of * (0 tokens a UTC day) spent: 12 tokens used on 2026-12-06; deferred until 2026-12-07T00:00:00Z"})
		}, InvBudget, "instead of being deferred"},
		{"a deployment whose backfill never ran", func(h *History) {
			h.Deployments = append(h.Deployments, Deployment{ID: "d2", Start: at(20)})
			h.End = at(90)
		}, InvDeployment, "never completed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := clean()
			tt.mutate(h)
			vs := violations(t, h)
			got := vs[tt.want]
			if len(got) == 0 || !strings.Contains(got[0].What, tt.has) {
				t.Fatalf("want a violation of %q saying %q, got %v", tt.want, tt.has, vs)
			}
			for name := range vs {
				// A stretched history makes the periodic task look
				// stalled; that is the only other report allowed.
				if name != tt.want && name != InvOccurrenceMissed {
					t.Errorf("also reported %q: %v", name, vs[name])
				}
			}
		})
	}
}

// A completion Redis could not record (the worker was cut off from it)
// is run again: the documented at-least-once, not a violation.
func TestARunRepeatedAfterAnUnrecordedCompletionIsAllowed(t *testing.T) {
	h := clean()
	r := h.Runs[3]
	h.Faults = append(h.Faults, Fault{ID: 1, Kind: KindPartitionRedis, Target: r.Proc, Start: r.Start, End: r.End.Add(5 * time.Second)})
	r2 := r
	r2.Pid, r2.Proc, r2.Start, r2.End = 100+(r.Pid+1)%2, "w?", r.End.Add(10*time.Second), r.End.Add(11*time.Second)
	h.Runs = append(h.Runs, r2)
	if vs := violations(t, h); len(vs[InvOccurrenceOnce]) != 0 {
		t.Fatalf("a repeat explained by a partition was reported: %v", vs[InvOccurrenceOnce])
	}
}

// A deferred task whose hold lifted is made due at once: its grid starts
// again from that moment. With the scheduler's resume in the history
// that is allowed; without it, the same occurrences break the grid.
func TestAResumedTaskStartsANewGrid(t *testing.T) {
	rephased := func() *History {
		h := clean()
		for i := 10; i < len(h.Occurrences); i++ {
			o := &h.Occurrences[i]
			o.Due = o.Due.Add(-time.Second)
			o.ID = "kg_decay_task@" + itoa(o.Due.UnixMilli())
			o.TaskID, o.At = o.ID, o.At.Add(-time.Second)
			r := &h.Runs[i]
			r.TaskID, r.Start, r.End = o.ID, r.Start.Add(-time.Second), r.End.Add(-time.Second)
			for j := 2 * i; j < 2*i+2; j++ {
				l := &h.Leases[j]
				l.TaskID, l.At = o.ID, l.At.Add(-time.Second)
			}
		}
		return h
	}
	h := rephased()
	h.Resumes = []Resume{{Task: "kg_decay_task", At: at(20.95), Pid: 100}}
	if vs := violations(t, h); len(vs) != 0 {
		t.Fatalf("a grid restarted by a resume was reported: %v", vs)
	}
	vs := violations(t, rephased())
	if got := vs[InvOccurrenceMissed]; len(got) == 0 || !strings.Contains(got[0].What, "coalesced up to") {
		t.Fatalf("without the resume, want the grid broken, got %v", vs)
	}
}

// A stand-down ends at a time of day: a worker whose clock runs ahead
// (a clock fault) sees it end early. Its run is allowed; the same run
// with the clock right is a violation.
func TestARunDuringAStandDownByAWorkerWhoseClockIsAheadIsAllowed(t *testing.T) {
	withStandDown := func(offset time.Duration) *History {
		h := clean()
		h.Foreign = append(h.Foreign, ForeignRun{At: at(10), Task: "kg_decay_task", StandDownUntil: at(13)})
		if offset != 0 {
			h.Faults = append(h.Faults, Fault{ID: 1, Kind: KindClock, Target: "w1", Start: at(9), End: at(20), Offset: offset})
		}
		return h
	}
	// The run due at 12 s is w1's (pid 101).
	if vs := violations(t, withStandDown(4*time.Second)); len(vs[InvStandDown]) != 0 {
		t.Fatalf("a run explained by its worker's clock was reported: %v", vs[InvStandDown])
	}
	if vs := violations(t, withStandDown(0)); len(vs[InvStandDown]) == 0 {
		t.Fatal("a run during the stand-down was not reported")
	}
}
