package check

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Invariant names, in the order the report lists them.
const (
	InvOccurrenceOnce   = "periodic occurrence ran at most once"
	InvOccurrenceMissed = "no periodic occurrence missed beyond coalescing"
	InvPromptOnce       = "each due prompt fired exactly once"
	InvExtractedOnce    = "each message and fragment extracted exactly once"
	InvGraph            = "graph equals a fault-free extraction"
	InvSingleton        = "no two runs of a singleton overlapped"
	InvLeaseLapse       = "no lease held past its timeout after its holder died"
	InvStuck            = "nothing stuck: queues drained, nothing waiting"
	InvResources        = "no goroutine/fd/connection growth in surviving workers"
	InvDeployment       = "startup task once per deployment"
	InvStandDown        = "a Python run stands the Go task down, then it runs again"
	InvRetryAfter       = "a 429 pauses every worker's LLM calls for its Retry-After"
	InvBudget           = "a spent budget defers LLM work, never fails it"
)

var invariantOrder = []string{InvOccurrenceOnce, InvOccurrenceMissed, InvPromptOnce, InvExtractedOnce, InvGraph,
	InvSingleton, InvLeaseLapse, InvStuck, InvResources, InvDeployment, InvStandDown, InvRetryAfter, InvBudget}

// Violation is one breach of an invariant.
type Violation struct {
	Invariant string
	At        time.Time
	What      string
	// Entries are the history entries that show it.
	Entries []string
}

// Invariant is one guarantee and what checking it found.
type Invariant struct {
	Name string
	// Checked counts what was checked (occurrences, prompts, fragments...).
	Checked    int
	Unit       string
	Violations []Violation
	// Notes are what the check allowed, with the rule that allowed it
	// (documented at-least-once, coalescing, takeovers...).
	Notes map[string]int
	// Growth is the largest growth seen per measure (resources only).
	Growth map[string]int
}

// Recovery is how long the system took to work again after each fault of
// a kind healed.
type Recovery struct {
	Kind           string
	Injected       int
	Measured       int
	Max, P95       time.Duration
	NotMeasured    int
	NotMeasuredWhy string
}

// Report is what Check found.
type Report struct {
	Invariants []*Invariant
	Recovery   []Recovery
	// Counts are the run's sizes: occurrences, prompts, messages...
	Counts map[string]int
}

// Violations counts every violation.
func (r *Report) Violations() int {
	n := 0
	for _, inv := range r.Invariants {
		n += len(inv.Violations)
	}
	return n
}

// Check verifies h. It never fails: what it cannot decide it notes.
func Check(h *History) *Report {
	c := &checker{h: h, inv: map[string]*Invariant{}}
	c.index()
	c.occurrenceOnce()
	c.occurrenceMissed()
	c.promptsOnce()
	c.extractedOnce()
	c.graph()
	c.singletonOverlap()
	c.leaseLapse()
	c.stuck()
	c.resources()
	c.deployments()
	c.standDowns()
	c.retryAfter()
	c.budgets()
	r := &Report{Counts: c.counts()}
	for _, name := range invariantOrder {
		r.Invariants = append(r.Invariants, c.get(name))
	}
	r.Recovery = recoveries(h)
	return r
}

type checker struct {
	h     *History
	inv   map[string]*Invariant
	procs map[int]Proc // by pid
	// runsByID are the runs of each task ID, by start.
	runsByID map[string][]Run
}

func (c *checker) get(name string) *Invariant {
	inv, ok := c.inv[name]
	if !ok {
		inv = &Invariant{Name: name, Notes: map[string]int{}}
		c.inv[name] = inv
	}
	return inv
}

func (c *checker) violate(name string, at time.Time, what string, entries ...string) {
	inv := c.get(name)
	inv.Violations = append(inv.Violations, Violation{Invariant: name, At: at, What: what, Entries: entries})
}

func (c *checker) note(name, what string) { c.get(name).Notes[what]++ }

func (c *checker) checked(name, unit string, n int) {
	inv := c.get(name)
	inv.Checked += n
	inv.Unit = unit
}

func (c *checker) index() {
	c.procs = map[int]Proc{}
	for _, p := range c.h.Procs {
		c.procs[p.Pid] = p
	}
	c.runsByID = map[string][]Run{}
	for _, r := range c.h.Runs {
		c.runsByID[r.TaskID] = append(c.runsByID[r.TaskID], r)
	}
	for id := range c.runsByID {
		rs := c.runsByID[id]
		sort.Slice(rs, func(i, j int) bool { return rs[i].Start.Before(rs[j].Start) })
	}
}

func (c *checker) counts() map[string]int {
	h := c.h
	ok := 0
	for _, r := range h.Runs {
		if r.Status == "ok" {
			ok++
		}
	}
	expected := 0
	for _, m := range h.Messages {
		if m.Expect {
			expected++
		}
	}
	return map[string]int{
		"occurrences": len(h.Occurrences), "runs": len(h.Runs), "runs ok": ok,
		"prompts": len(h.Prompts), "prompt fires": len(h.Fires), "messages": len(h.Messages),
		"messages to extract": expected, "fragments": len(h.Fragments), "llm calls": len(h.LLMCalls),
		"worker starts": len(h.Procs), "deployments": len(h.Deployments),
	}
}

// Periodic runs carry the occurrence's due time in their ID: task@ms.
func occurrenceOf(taskID string) (task string, due time.Time, ok bool) {
	task, ms, found := strings.Cut(taskID, "@")
	if !found {
		return "", time.Time{}, false
	}
	n, err := strconv.ParseInt(ms, 10, 64)
	if err != nil {
		return "", time.Time{}, false
	}
	return task, time.UnixMilli(n), true
}

// impaired reports whether the worker with pid could not have told Redis
// that a run ending at t was done: Redis was down or paused then, the
// worker was cut off from it (or slowed), or it died within seconds. Those
// are the documented at-least-once windows (docs/reliability.md 2).
func (c *checker) impaired(pid int, t time.Time) (bool, string) {
	p := c.procs[pid]
	for _, f := range c.h.Faults {
		if f.Skipped != "" {
			continue
		}
		in := !t.Before(f.Start.Add(-2*time.Second)) && !t.After(f.End.Add(3*time.Second))
		switch f.Kind {
		case KindRedisKill, KindRedisPause:
			if in {
				return true, fmt.Sprintf("fault %d %s", f.ID, f.Kind)
			}
		case KindPartitionRedis, KindLatencyRedis:
			if in && f.Target == p.Name {
				return true, fmt.Sprintf("fault %d %s of %s", f.ID, f.Kind, f.Target)
			}
		}
	}
	if !p.End.IsZero() && (p.Ended == "killed" || p.Ended == "terminated") && !p.End.Before(t) && p.End.Sub(t) < 5*time.Second {
		return true, fmt.Sprintf("%s %s %v after the run", p.Name, p.Ended, p.End.Sub(t).Round(time.Millisecond))
	}
	return false, ""
}

func (c *checker) runLine(r Run) string {
	end := "never finished"
	if !r.End.IsZero() {
		end = "finished " + r.End.Format("15:04:05.000") + " " + r.Status
		if r.Err != "" {
			end += ": " + clip(r.Err, 160)
		}
	}
	return fmt.Sprintf("run %s on %s (pid %d) started %s, %s", r.TaskID, r.Proc, r.Pid, r.Start.Format("15:04:05.000"), end)
}

// occurrenceOnce: at most one successful run per occurrence, save the
// documented at-least-once windows.
func (c *checker) occurrenceOnce() {
	n := 0
	for id, rs := range c.runsByID {
		task, _, ok := occurrenceOf(id)
		if _, periodic := c.h.Config.Intervals[task]; !ok || !periodic {
			continue
		}
		n++
		var oks []Run
		for _, r := range rs {
			if r.Status == "ok" {
				oks = append(oks, r)
			}
		}
		sort.Slice(oks, func(i, j int) bool { return oks[i].End.Before(oks[j].End) })
		for i := 1; i < len(oks); i++ {
			prev := oks[i-1]
			if ok, why := c.impaired(prev.Pid, prev.End); ok {
				c.note(InvOccurrenceOnce, "ran again after a run whose completion Redis could not record (at-least-once: "+kindOf(why)+")")
				continue
			}
			c.violate(InvOccurrenceOnce, oks[i].Start, fmt.Sprintf("occurrence %s completed %d times", id, len(oks)),
				c.runLine(prev), c.runLine(oks[i]))
		}
	}
	c.checked(InvOccurrenceOnce, "occurrences run", n)
}

func kindOf(why string) string {
	f := strings.Fields(why)
	switch {
	case len(f) >= 3 && f[0] == "fault":
		return f[2]
	case len(f) >= 2:
		return f[1]
	}
	return why
}

// occurrenceMissed: the occurrences a scheduler handled follow the grid,
// each skipping only the occurrences it coalesced, up to the end; every
// occurrence enqueued was run. A deferred task resumed when its hold
// lifted starts a new grid at that moment (docs/operations.md, "LLM
// spend"): the grid is checked from one resume to the next.
func (c *checker) occurrenceMissed() {
	h := c.h
	byTask := map[string][]Occurrence{}
	for _, o := range h.Occurrences {
		byTask[o.Task] = append(byTask[o.Task], o)
	}
	resumes := map[string][]time.Time{}
	for _, r := range h.Resumes {
		resumes[r.Task] = append(resumes[r.Task], r.At)
	}
	n := 0
	for task, all := range byTask {
		iv := h.Config.Intervals[task]
		if iv <= 0 {
			continue
		}
		sort.Slice(all, func(i, j int) bool { return all[i].Due.Before(all[j].Due) })
		var once []Occurrence
		for i, o := range all {
			if i > 0 && o.Due.Equal(all[i-1].Due) {
				n++
				c.violate(InvOccurrenceMissed, o.At, fmt.Sprintf("occurrence %s handled twice by the schedulers", o.ID),
					occLine(all[i-1]), occLine(o))
				continue
			}
			once = append(once, o)
		}
		segs := segments(once, resumes[task])
		if len(segs) > 1 {
			c.note(InvOccurrenceMissed, "grids restarted: a deferred task resumed when its hold lifted")
		}
		for si, os := range segs {
			n += c.grid(task, iv, os, si == len(segs)-1)
		}
	}
	// Enqueues logged without an occurrence record (its scheduler's
	// advance failed, a peer's record has it): the task must still run.
	for id, at := range h.Enqueued {
		if _, ok := c.runsByID[id]; ok {
			continue
		}
		task, _, ok := occurrenceOf(id)
		if !ok || h.Config.Intervals[task] == 0 {
			continue
		}
		if at.After(h.End.Add(-h.Config.Intervals[task] - 20*time.Second)) {
			continue
		}
		c.violate(InvOccurrenceMissed, at, fmt.Sprintf("%s was enqueued and never ran", id), "enqueued "+at.Format("15:04:05.000"))
	}
	c.checked(InvOccurrenceMissed, "occurrences handled", n)
}

// segments splits a task's occurrences (sorted by due time) at its
// resumes: those handled before a resume, and those after it. Each keeps
// its order by due time.
func segments(os []Occurrence, resumes []time.Time) [][]Occurrence {
	if len(resumes) == 0 {
		return [][]Occurrence{os}
	}
	resumes = slices.Clone(resumes)
	slices.SortFunc(resumes, func(a, b time.Time) int { return a.Compare(b) })
	segs := make([][]Occurrence, len(resumes)+1)
	for _, o := range os {
		i := sort.Search(len(resumes), func(i int) bool { return resumes[i].After(o.At) })
		segs[i] = append(segs[i], o)
	}
	out := segs[:0]
	for _, s := range segs {
		if len(s) > 0 {
			out = append(out, s)
		}
	}
	return out
}

// grid checks one unbroken run of a task's occurrences; last says whether
// it is the task's last, which must go on to the end of the run. It
// returns how many it checked.
func (c *checker) grid(task string, iv time.Duration, os []Occurrence, last bool) int {
	h := c.h
	for i, o := range os {
		if i > 0 {
			p := os[i-1]
			want := p.Due.Add(time.Duration(1+p.Missed) * iv)
			switch {
			case o.Due.After(want):
				for d := want; d.Before(o.Due); d = d.Add(iv) {
					c.missing(task, d, p, o)
				}
			case o.Due.Before(want):
				c.violate(InvOccurrenceMissed, o.At, fmt.Sprintf("%s: occurrence %s handled though the previous one coalesced up to %s",
					task, o.ID, want.Format("15:04:05.000")), occLine(p), occLine(o))
			}
			if p.Missed > 0 {
				c.note(InvOccurrenceMissed, "occurrences coalesced (no scheduler handled them in time)")
			}
		}
		c.ranIfEnqueued(o)
	}
	if !last || len(os) == 0 {
		return len(os)
	}
	// The schedule went on to the end.
	end := os[len(os)-1]
	next := end.Due.Add(time.Duration(1+end.Missed) * iv)
	if next.Before(h.End.Add(-iv - 15*time.Second)) {
		c.violate(InvOccurrenceMissed, next, fmt.Sprintf("%s: no occurrence handled after %s (interval %v) though the run went on to %s",
			task, end.ID, iv, h.End.Format("15:04:05")), occLine(end))
	}
	return len(os)
}

// missing judges a grid point no scheduler recorded.
func (c *checker) missing(task string, due time.Time, prev, next Occurrence) {
	id := task + "@" + strconv.FormatInt(due.UnixMilli(), 10)
	if _, ok := c.runsByID[id]; ok {
		c.note(InvOccurrenceMissed, "occurrence ran without its scheduler's record (the record was lost with a fault)")
		return
	}
	if _, ok := c.h.Enqueued[id]; ok {
		c.note(InvOccurrenceMissed, "occurrence ran without its scheduler's record (the record was lost with a fault)")
		return
	}
	// The scheduler that handled it may have died (or lost Redis's reply)
	// between moving the schedule on and logging it.
	for _, f := range c.h.Faults {
		if (f.Kind == KindKill || f.Kind == KindRedisKill || f.Kind == KindDeploy || f.Kind == KindTerm) && f.Skipped == "" &&
			!f.Start.Before(due.Add(-time.Second)) && f.Start.Before(next.At.Add(time.Second)) {
			c.note(InvOccurrenceMissed, "occurrence record unverifiable: its scheduler may have died with it ("+f.Kind+")")
			return
		}
	}
	c.violate(InvOccurrenceMissed, due, fmt.Sprintf("%s: occurrence %s was never handled (not coalesced into another)", task, id),
		occLine(prev), occLine(next))
}

func (c *checker) ranIfEnqueued(o Occurrence) {
	if o.Outcome == "duplicate" {
		// Either a peer enqueued this very occurrence (and this scheduler
		// moved the schedule on), or an instance of the singleton was
		// still queued or running: the occurrence is skipped.
		if _, ran := c.runsByID[o.ID]; ran {
			c.note(InvOccurrenceMissed, "occurrence enqueued by one scheduler, recorded by another (duplicate)")
			o.TaskID = o.ID
		} else if _, enq := c.h.Enqueued[o.ID]; enq {
			o.TaskID = o.ID
		} else {
			c.note(InvOccurrenceMissed, "occurrences skipped: duplicate (an instance of the singleton was queued or running)")
			return
		}
	} else if o.Outcome != "enqueued" {
		switch o.Outcome {
		case "overlap", "coalesced":
			c.note(InvOccurrenceMissed, "occurrences skipped: "+o.Outcome)
		}
		return
	}
	if _, ok := c.runsByID[o.TaskID]; ok {
		return
	}
	iv := c.h.Config.Intervals[o.Task]
	if o.At.After(c.h.End.Add(-iv - 20*time.Second)) {
		return // enqueued at the very end
	}
	c.violate(InvOccurrenceMissed, o.At, fmt.Sprintf("occurrence %s was enqueued and never ran", o.ID), occLine(o))
}

func occLine(o Occurrence) string {
	return fmt.Sprintf("occurrence %s %s by pid %d at %s (missed %d, task %s)", o.ID, o.Outcome, o.Pid, o.At.Format("15:04:05.000"), o.Missed, o.TaskID)
}

// promptsOnce: every due time of every valid prompt fired once (a
// recurring prompt that missed several fires once for them, then goes on
// from the next point of its grid), none fired twice, none lost; each
// malformed prompt reported invalid once and never fired.
func (c *checker) promptsOnce() {
	h := c.h
	fires := map[string][]Fire{}
	for _, f := range h.Fires {
		fires[f.PromptID] = append(fires[f.PromptID], f)
	}
	logged := map[string]Fire{}
	for _, f := range h.FireLogs {
		logged[f.PromptID+"@"+strconv.FormatInt(f.ScheduledFor.UnixMilli(), 10)] = f
	}
	invalid := map[string]int{}
	for _, l := range h.InvalidLogs {
		invalid[l.PromptID]++
	}
	inStream := map[string]bool{}
	n := 0
	// The last moment a due time must have fired by: the tick's interval
	// and the quiet period's end leave room.
	deadline := h.End.Add(-c.tickSlack())
	for _, p := range h.Prompts {
		fs := fires[p.ID]
		sort.Slice(fs, func(i, j int) bool { return fs[i].ScheduledFor.Before(fs[j].ScheduledFor) })
		for _, f := range fs {
			inStream[p.ID+"@"+strconv.FormatInt(f.ScheduledFor.UnixMilli(), 10)] = true
		}
		if p.Malformed != "" {
			n++
			if len(fs) > 0 {
				c.violate(InvPromptOnce, fs[0].At, fmt.Sprintf("malformed prompt %s (%s) fired", p.ID, p.Malformed))
			}
			switch {
			case invalid[p.ID] == 0 && p.AddedAt.Before(deadline) && p.FireAt.Before(deadline):
				c.violate(InvPromptOnce, p.AddedAt, fmt.Sprintf("malformed prompt %s (%s) never reported invalid (status %q)", p.ID, p.Malformed, h.PromptStatus[p.ID]))
			case invalid[p.ID] > 1:
				c.violate(InvPromptOnce, p.AddedAt, fmt.Sprintf("malformed prompt %s reported invalid %d times", p.ID, invalid[p.ID]))
			}
			continue
		}
		// Due times fired twice.
		for i := 1; i < len(fs); i++ {
			if fs[i].ScheduledFor.Equal(fs[i-1].ScheduledFor) {
				c.violate(InvPromptOnce, fs[i].At, fmt.Sprintf("prompt %s fired twice for %s", p.ID, fs[i].ScheduledFor.Format("15:04:05.000")),
					fireLine(fs[i-1]), fireLine(fs[i]))
			}
		}
		fs = slices.CompactFunc(fs, func(a, b Fire) bool { return a.ScheduledFor.Equal(b.ScheduledFor) })
		// Walk the grid as the tick does.
		due := p.FireAt
		for i := 0; ; i++ {
			if !p.EndAt.IsZero() && due.After(p.EndAt) {
				break
			}
			if i >= len(fs) {
				if due.Before(deadline) && (i > 0 || p.AddedAt.Before(deadline)) {
					c.violate(InvPromptOnce, due, fmt.Sprintf("prompt %s never fired for its due time %s (lost)", p.ID, due.Format("15:04:05.000")),
						fmt.Sprintf("prompt %s: fire_at %s, interval %v, end %s; %d fire(s)", p.ID, p.FireAt.Format("15:04:05.000"), p.Interval, fmtTime(p.EndAt), len(fs)))
				}
				break
			}
			f := fs[i]
			n++
			if !f.ScheduledFor.Equal(due) {
				c.violate(InvPromptOnce, f.At, fmt.Sprintf("prompt %s fired for %s where its next due time was %s", p.ID,
					f.ScheduledFor.Format("15:04:05.000"), due.Format("15:04:05.000")), fireLine(f))
				due = f.ScheduledFor
			}
			if early := f.ScheduledFor.Sub(f.At); !f.At.IsZero() && early > h.Config.MaxClockOffset+time.Second {
				c.violate(InvPromptOnce, f.At, fmt.Sprintf("prompt %s fired %v before its due time (largest clock offset %v)", p.ID,
					early.Round(time.Millisecond), h.Config.MaxClockOffset), fireLine(f))
			}
			if p.Interval <= 0 {
				if i+1 < len(fs) {
					c.violate(InvPromptOnce, fs[i+1].At, fmt.Sprintf("one-shot prompt %s fired again", p.ID), fireLine(fs[i+1]))
				}
				break
			}
			// The next due time: the first point of the grid after the
			// worker's clock when it fired (tick.lua).
			next := due.Add(p.Interval)
			if !next.After(f.FiredAt) {
				k := f.FiredAt.Sub(due) / p.Interval
				next = due.Add((k + 1) * p.Interval)
				c.note(InvPromptOnce, "recurring prompt's missed due times coalesced into one fire")
			}
			due = next
		}
	}
	// Every logged fire reached the stream.
	for key, f := range logged {
		if !inStream[key] {
			c.violate(InvPromptOnce, f.At, fmt.Sprintf("prompt %s was logged fired for %s but is not in the stream", f.PromptID, f.ScheduledFor.Format("15:04:05.000")), fireLine(f))
		}
	}
	c.checked(InvPromptOnce, "due times and malformed prompts", n)
}

// tickSlack is how long after a due time a prompt may still be unfired at
// the end: a tick interval and a half, and the tick's own run.
func (c *checker) tickSlack() time.Duration {
	iv := c.h.Config.Intervals["scheduled_prompt_tick"]
	if iv == 0 {
		iv = time.Minute
	}
	return 3*iv/2 + 5*time.Second
}

func fireLine(f Fire) string {
	return fmt.Sprintf("fired %s for %s (occurrence %d, worker clock %s, logged %s by pid %d, stream %s)", f.PromptID,
		f.ScheduledFor.Format("15:04:05.000"), f.Occurrence, f.FiredAt.Format("15:04:05.000"), fmtTime(f.At), f.Pid, f.StreamID)
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Format("15:04:05.000")
}

// extractedOnce: every message and fragment to extract is in the ledger,
// none poisoned, and none committed by two different batches.
func (c *checker) extractedOnce() {
	h := c.h
	batches := map[string]map[string]time.Time{} // fragment -> batch -> when
	for _, cm := range h.Commits {
		for _, f := range cm.Fragments {
			if batches[f] == nil {
				batches[f] = map[string]time.Time{}
			}
			if _, ok := batches[f][cm.Batch]; ok {
				c.note(InvExtractedOnce, "batch committed again from its stored answer (guarded writes: applied once)")
				continue
			}
			batches[f][cm.Batch] = cm.At
		}
	}
	var expect []string
	for _, m := range h.Messages {
		if m.Expect {
			expect = append(expect, m.Key)
		}
	}
	expect = append(expect, h.Fragments...)
	for _, id := range expect {
		switch {
		case h.Poisoned[id]:
			c.violate(InvExtractedOnce, h.End, fmt.Sprintf("%s was given up on (poisoned), not extracted", id))
		case !h.Done[id]:
			c.violate(InvExtractedOnce, h.End, fmt.Sprintf("%s was never extracted (lost)", id))
		}
	}
	for f, bs := range batches {
		if len(bs) < 2 {
			continue
		}
		var lines []string
		var first time.Time
		for b, at := range bs {
			lines = append(lines, fmt.Sprintf("batch %s committed it at %s", b, at.Format("15:04:05.000")))
			if first.IsZero() || at.Before(first) {
				first = at
			}
		}
		sort.Strings(lines)
		c.violate(InvExtractedOnce, first, fmt.Sprintf("%s extracted by %d batches", f, len(bs)), lines...)
	}
	c.checked(InvExtractedOnce, "messages and fragments", len(expect))
}

// graph: the graph is what a fault-free extraction of the same fragments
// makes.
func (c *checker) graph() {
	h := c.h
	if h.Reference == "" && h.Graph == "" {
		c.checked(InvGraph, "graph lines", 0)
		return
	}
	want, got := lines(h.Reference), lines(h.Graph)
	c.checked(InvGraph, "graph lines", len(want))
	if h.Reference == h.Graph {
		return
	}
	wm, gm := map[string]bool{}, map[string]bool{}
	for _, l := range want {
		wm[l] = true
	}
	for _, l := range got {
		gm[l] = true
	}
	var diff []string
	for _, l := range want {
		if !gm[l] && len(diff) < 12 {
			diff = append(diff, "missing: "+l)
		}
	}
	for _, l := range got {
		if !wm[l] && len(diff) < 24 {
			diff = append(diff, "extra:   "+l)
		}
	}
	c.violate(InvGraph, h.End, fmt.Sprintf("the graph differs from a fault-free extraction's (%d lines vs %d)", len(got), len(want)), diff...)
}

func lines(s string) []string {
	s = strings.TrimSuffix(s, "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// hold is one singleton lease from taken to its end.
type hold struct {
	task, taskID, lease string
	pid                 int
	from, to            time.Time
	how                 string
}

// holds reconstructs each lease's span: from taken to the first of lost,
// released, the run's end and its worker's death.
func (c *checker) holds() map[string][]hold {
	h := c.h
	ends := map[string]LeaseEvent{}
	for _, e := range h.Leases {
		if e.Kind == "taken" {
			continue
		}
		if prev, ok := ends[e.Lease]; !ok || e.At.Before(prev.At) {
			ends[e.Lease] = e
		}
	}
	out := map[string][]hold{}
	for _, e := range h.Leases {
		if e.Kind != "taken" {
			continue
		}
		hd := hold{task: e.Task, taskID: e.TaskID, lease: e.Lease, pid: e.Pid, from: e.At, to: h.End, how: "held to the end"}
		if end, ok := ends[e.Lease]; ok {
			hd.to, hd.how = end.At, end.Kind
		}
		for _, r := range c.runsByID[e.TaskID] {
			if r.Pid == e.Pid && !r.End.IsZero() && !r.End.Before(e.At) && r.End.Before(hd.to) {
				hd.to, hd.how = r.End, "run finished"
			}
		}
		if p := c.procs[e.Pid]; !p.End.IsZero() && p.End.Before(hd.to) {
			hd.to, hd.how = p.End, "worker "+p.Ended
		}
		out[e.Task] = append(out[e.Task], hd)
	}
	for t := range out {
		hs := out[t]
		sort.Slice(hs, func(i, j int) bool { return hs[i].from.Before(hs[j].from) })
	}
	return out
}

func holdLine(hd hold) string {
	return fmt.Sprintf("lease %s of %s on pid %d from %s to %s (%s)", hd.lease, hd.taskID, hd.pid,
		hd.from.Format("15:04:05.000"), hd.to.Format("15:04:05.000"), hd.how)
}

// singletonOverlap: no lease is taken while another run of the task holds
// one. A run taking over its own task's lease (a retry, a requeue) is
// documented: the straggler fails its ownership checks.
func (c *checker) singletonOverlap() {
	n := 0
	for task, hs := range c.holds() {
		n += len(hs)
		var open []hold
		for _, hd := range hs {
			kept := open[:0]
			for _, o := range open {
				if o.to.After(hd.from) {
					kept = append(kept, o)
				}
			}
			open = kept
			for _, o := range open {
				if o.taskID == hd.taskID {
					c.note(InvSingleton, "a run took its own task's lease over (retry or requeue)")
					continue
				}
				c.violate(InvSingleton, hd.from, fmt.Sprintf("%s: lease taken by %s while %s held it (%v of overlap)", task, hd.taskID, o.taskID,
					o.to.Sub(hd.from).Round(time.Millisecond)), holdLine(o), holdLine(hd))
			}
			open = append(open, hd)
		}
	}
	c.checked(InvSingleton, "leases", n)
}

// leaseLapse: a lease seen in Redis belongs to a live run: not to a
// worker dead for longer than the lease, nor to a run that released it.
func (c *checker) leaseLapse() {
	h := c.h
	taken := map[string]LeaseEvent{}
	released := map[string]time.Time{}
	for _, e := range h.Leases {
		switch {
		case e.Kind == "taken":
			taken[e.Lease] = e
		case e.Kind == "released" && e.Held:
			released[e.Lease] = e.At
		}
	}
	reported := map[string]bool{}
	n := 0
	grace := h.Config.SingletonLease + 2*time.Second
	for _, s := range h.LeaseSamples {
		if s.Unreadable || s.Lease == "" {
			continue
		}
		n++
		e, ok := taken[s.Lease]
		if !ok || reported[s.Lease] {
			continue
		}
		if p := c.procs[e.Pid]; !p.End.IsZero() && s.At.Sub(p.End) > grace {
			reported[s.Lease] = true
			c.violate(InvLeaseLapse, s.At, fmt.Sprintf("%s: lease of %s still in Redis %v after its worker %s (lease %v)", s.Task, e.TaskID,
				s.At.Sub(p.End).Round(time.Millisecond), p.Ended, h.Config.SingletonLease),
				fmt.Sprintf("sample %s: %s ttl %v", s.At.Format("15:04:05.000"), s.Lease, s.TTL))
		}
		if r, ok := released[s.Lease]; ok && s.At.Sub(r) > 2*time.Second {
			reported[s.Lease] = true
			c.violate(InvLeaseLapse, s.At, fmt.Sprintf("%s: lease of %s still in Redis %v after its release", s.Task, e.TaskID, s.At.Sub(r).Round(time.Millisecond)))
		}
	}
	c.checked(InvLeaseLapse, "lease samples", n)
}

// stuck: what the harness found undrained at the end.
func (c *checker) stuck() {
	for _, s := range c.h.Stuck {
		c.violate(InvStuck, c.h.End, fmt.Sprintf("%s %s: %s", s.What, s.ID, s.Detail))
	}
	c.checked(InvStuck, "queues, prompts and fragments at the end", 1)
}

// resources: a worker that lived through the run holds no more
// goroutines, file descriptors and connections at the end than early on,
// beyond the stated bounds. The lowest sample of each window is taken:
// in-flight tasks come and go.
func (c *checker) resources() {
	h := c.h
	byPid := map[int][]ResourceSample{}
	for _, s := range h.ResourceSamples {
		byPid[s.Pid] = append(byPid[s.Pid], s)
	}
	n := 0
	for _, p := range h.Procs {
		if !p.End.IsZero() || h.End.Sub(p.Start) < 2*time.Minute {
			continue
		}
		ss := byPid[p.Pid]
		early := window(ss, p.Start.Add(20*time.Second), p.Start.Add(80*time.Second))
		late := window(ss, h.End.Add(-25*time.Second), h.End)
		if early == nil || late == nil {
			continue
		}
		n++
		inv := c.get(InvResources)
		if inv.Growth == nil {
			inv.Growth = map[string]int{}
		}
		for what, d := range map[string]int{"goroutines": late.Goroutines - early.Goroutines, "fds": late.FDs - early.FDs, "conns": late.Conns - early.Conns} {
			inv.Growth[what] = max(inv.Growth[what], d)
		}
		for _, m := range []struct {
			what        string
			early, late int
			bound       int
		}{
			{"goroutines", early.Goroutines, late.Goroutines, h.Config.MaxGoroutineGrowth},
			{"open fds", early.FDs, late.FDs, h.Config.MaxFDGrowth},
			{"TCP connections", early.Conns, late.Conns, h.Config.MaxConnGrowth},
		} {
			if m.late-m.early > m.bound {
				c.violate(InvResources, h.End, fmt.Sprintf("%s (pid %d): %s %d → %d (+%d, bound +%d)", p.Name, p.Pid, m.what, m.early, m.late,
					m.late-m.early, m.bound))
			}
		}
	}
	c.checked(InvResources, "surviving workers", n)
}

// window returns the lowest reading of ss in [from, to] (per measure).
func window(ss []ResourceSample, from, to time.Time) *ResourceSample {
	var out *ResourceSample
	for _, s := range ss {
		if s.At.Before(from) || s.At.After(to) {
			continue
		}
		if out == nil {
			cp := s
			out = &cp
			continue
		}
		out.Goroutines = min(out.Goroutines, s.Goroutines)
		out.FDs = min(out.FDs, s.FDs)
		out.Conns = min(out.Conns, s.Conns)
	}
	return out
}

// deployments: startup_channel_backfill ran once per deployment.
func (c *checker) deployments() {
	for _, d := range c.h.Deployments {
		id := "startup_channel_backfill@" + d.ID
		var oks []Run
		for _, r := range c.runsByID[id] {
			if r.Status == "ok" {
				oks = append(oks, r)
			}
		}
		switch {
		case len(oks) == 0 && d.Start.Before(c.h.End.Add(-time.Minute)):
			var ls []string
			for _, r := range c.runsByID[id] {
				ls = append(ls, c.runLine(r))
			}
			c.violate(InvDeployment, d.Start, fmt.Sprintf("deployment %s: its startup backfill never completed", d.ID), ls...)
		case len(oks) > 1:
			for i := 1; i < len(oks); i++ {
				if ok, why := c.impaired(oks[i-1].Pid, oks[i-1].End); ok {
					c.note(InvDeployment, "ran again after a run whose completion Redis could not record ("+kindOf(why)+")")
					continue
				}
				c.violate(InvDeployment, oks[i].Start, fmt.Sprintf("deployment %s: startup backfill completed %d times", d.ID, len(oks)),
					c.runLine(oks[i-1]), c.runLine(oks[i]))
			}
		}
	}
	c.checked(InvDeployment, "deployments", len(c.h.Deployments))
}

// standDowns: after a Python run of a task, no scheduled Go occurrence of
// it starts until the recorded stand-down ends, and one runs after it.
// clockOffset is how far the clock of the worker pid ran from the real
// one at t (a clock fault's offset; 0 without one).
func (c *checker) clockOffset(pid int, t time.Time) time.Duration {
	name := c.procs[pid].Name
	for _, f := range c.h.Faults {
		if f.Kind == KindClock && f.Skipped == "" && f.Target == name && !t.Before(f.Start) && !t.After(f.End) {
			return f.Offset
		}
	}
	return 0
}

func (c *checker) standDowns() {
	h := c.h
	for _, f := range h.Foreign {
		if f.StandDownUntil.IsZero() {
			c.note(InvStandDown, "Python run not recorded by any worker (published while they were cut off)")
			continue
		}
		// The event reaches the workers within moments; a run that
		// started just before it may finish.
		from := f.At.Add(2 * time.Second)
		ranAfter := false
		for _, r := range h.Runs {
			if r.Task != f.Task || !strings.HasPrefix(r.TaskID, f.Task+"@") || r.Status != "ok" {
				continue
			}
			switch {
			case r.Start.After(from) && r.Start.Before(f.StandDownUntil.Add(-500*time.Millisecond)) &&
				!r.Start.Add(c.clockOffset(r.Pid, r.Start)).Before(f.StandDownUntil.Add(-500*time.Millisecond)):
				// The stand-down ends at a time of day; a worker whose
				// clock runs ahead sees it end early.
				c.note(InvStandDown, "run during a stand-down by a worker whose clock was past its end (clock fault)")
			case r.Start.After(from) && r.Start.Before(f.StandDownUntil.Add(-500*time.Millisecond)):
				c.violate(InvStandDown, r.Start, fmt.Sprintf("%s ran in Go at %s, during the stand-down after a Python run at %s (until %s)", f.Task,
					r.Start.Format("15:04:05.000"), f.At.Format("15:04:05.000"), f.StandDownUntil.Format("15:04:05.000")), c.runLine(r))
			case r.Start.After(f.StandDownUntil):
				ranAfter = true
			}
		}
		iv := h.Config.Intervals[f.Task]
		if !ranAfter && f.StandDownUntil.Add(2*iv+20*time.Second).Before(h.End) {
			c.violate(InvStandDown, f.StandDownUntil, fmt.Sprintf("%s never ran in Go again after its stand-down ended at %s", f.Task,
				f.StandDownUntil.Format("15:04:05.000")))
		}
	}
	c.checked(InvStandDown, "Python runs", len(h.Foreign))
}

// retryAfter: after a 429 with a Retry-After, no chat/completions call
// arrives from any worker until it has passed (the cluster-wide pause in
// Redis). Calls already admitted may still arrive for a moment; a pause
// the worker could not write (Redis down, or that worker cut off from it,
// around the 429) is not one.
func (c *checker) retryAfter() {
	h := c.h
	var calls []LLMCall
	for _, l := range h.LLMCalls {
		if l.Service == "llm" {
			calls = append(calls, l)
		}
	}
	sort.Slice(calls, func(i, j int) bool { return calls[i].At.Before(calls[j].At) })
	const admitted = 500 * time.Millisecond
	n := 0
	for i, l := range calls {
		if l.Status != 429 || l.RetryAfter <= 0 {
			continue
		}
		n++
		end := l.At.Add(l.RetryAfter - 200*time.Millisecond)
		for _, m := range calls[i+1:] {
			if m.At.After(end) {
				break
			}
			if m.At.Before(l.At.Add(admitted)) {
				continue
			}
			if why := c.redisImpairedAround(l.At); why != "" {
				c.note(InvRetryAfter, "call during a pause the workers could not all see ("+why+")")
				break
			}
			c.violate(InvRetryAfter, m.At, fmt.Sprintf("an LLM call arrived %v after a 429 with Retry-After %v", m.At.Sub(l.At).Round(time.Millisecond), l.RetryAfter),
				fmt.Sprintf("429 at %s", l.At.Format("15:04:05.000")), fmt.Sprintf("call at %s (%s, answered %d)", m.At.Format("15:04:05.000"), m.Purpose, m.Status))
			break
		}
	}
	c.checked(InvRetryAfter, "429s answered", n)
}

// budgets: while the cluster's budget is spent, no LLM call reaches the
// provider (a call reserved just before may still arrive for a moment),
// and no run fails, retries or is archived for a refused call: its run is
// deferred. The work that was deferred is not lost: the other invariants
// (prompts, extraction, nothing stuck) check it was done after.
func (c *checker) budgets() {
	h := c.h
	const admitted = 2 * time.Second
	n := 0
	for _, f := range h.Faults {
		if f.Kind != KindBudget || f.Skipped != "" {
			continue
		}
		n++
		for _, l := range h.LLMCalls {
			if l.At.After(f.Start.Add(admitted)) && l.At.Before(f.End) {
				c.violate(InvBudget, l.At, fmt.Sprintf("an LLM call arrived %v into a spent budget", l.At.Sub(f.Start).Round(time.Millisecond)),
					FaultLine(h, f), fmt.Sprintf("call at %s (%s %s, answered %d)", l.At.Format("15:04:05.000"), l.Service, l.Purpose, l.Status))
				break
			}
		}
	}
	for _, r := range h.Runs {
		switch {
		case r.Status == "deferred":
			c.note(InvBudget, "runs deferred (not failed)")
		case r.Status != "ok" && r.Status != "" && refusal(r.Err):
			c.violate(InvBudget, r.End, fmt.Sprintf("%s failed on a refused LLM call instead of being deferred", r.TaskID), c.runLine(r))
		}
	}
	c.checked(InvBudget, "budget faults", n)
}

// refusal tells a budget's or the kill switch's refusal in a run's error.
func refusal(err string) bool {
	return strings.Contains(err, "refused: budget of") || strings.Contains(err, "refused: the chat-LLM kill switch")
}

// redisImpairedAround names a fault that kept a worker from Redis within
// a few seconds of t, or "".
func (c *checker) redisImpairedAround(t time.Time) string {
	for _, f := range c.h.Faults {
		switch f.Kind {
		case KindRedisKill, KindRedisPause, KindPartitionRedis, KindLatencyRedis, KindKill, KindTerm, KindDeploy:
			if f.Skipped == "" && !t.Before(f.Start.Add(-3*time.Second)) && !t.After(f.End.Add(3*time.Second)) {
				return f.Kind
			}
		}
	}
	return ""
}

// recoveries measures, per fault kind, the time from a fault's healing to
// work flowing again: the first successful run after it that the fault
// had stopped, and for a worker's death, the completion elsewhere of every
// task it was running.
func recoveries(h *History) []Recovery {
	got := map[string][]time.Duration{}
	injected := map[string]int{}
	missing := map[string]int{}
	procs := map[string][]Proc{}
	for _, p := range h.Procs {
		procs[p.Name] = append(procs[p.Name], p)
	}
	graphTasks := map[string]bool{"kg_extract_unit": true, "kg_decay_task": true, "kg_consolidation_task": true, "limbic_maintenance": true,
		"limbic_dedup_task": true, "limbic_org_task": true, "anamnesis_digest": true, "limbic_sunset_processor": true, "agentic_kg_bulk_incremental": true}
	llmTasks := map[string]bool{"kg_extract_unit": true, "channel_summarization": true, "channel_heartbeat_channel": true, "anamnesis_digest": true,
		"kg_consolidation_task": true, "limbic_dedup_task": true, "limbic_org_task": true, "limbic_sunset_processor": true, "agentic_kg_bulk_incremental": true}
	runs := slices.Clone(h.Runs)
	sort.Slice(runs, func(i, j int) bool { return runs[i].End.Before(runs[j].End) })
	// firstOK is the end of the first successful run matching want that
	// ended after t.
	firstOK := func(t time.Time, want func(Run) bool) (time.Time, bool) {
		i := sort.Search(len(runs), func(i int) bool { return runs[i].End.After(t) })
		for ; i < len(runs); i++ {
			if runs[i].Status == "ok" && want(runs[i]) {
				return runs[i].End, true
			}
		}
		return time.Time{}, false
	}
	pidsOf := func(name string) map[int]bool {
		m := map[int]bool{}
		for _, p := range procs[name] {
			m[p.Pid] = true
		}
		return m
	}
	for _, f := range h.Faults {
		if f.Skipped != "" {
			continue
		}
		injected[f.Kind]++
		var end time.Time
		ok := false
		switch f.Kind {
		case KindKill, KindTerm:
			// Every task the dead incarnation was running completes
			// elsewhere (or again): measured from the death. With nothing
			// running, the restarted worker's first run, from its start.
			var victim Proc
			for _, p := range procs[f.Target] {
				if !p.End.IsZero() && !p.End.Before(f.Start.Add(-time.Second)) && p.End.Before(f.Start.Add(30*time.Second)) {
					victim = p
					break
				}
			}
			if victim.Pid == 0 {
				break
			}
			interrupted := false
			for _, r := range h.Runs {
				if r.Pid != victim.Pid || !r.End.IsZero() || r.Start.After(victim.End) {
					continue
				}
				e, found := firstOK(victim.End, func(x Run) bool { return x.TaskID == r.TaskID })
				if !found {
					continue // archived or stood down: another invariant's business
				}
				interrupted, ok = true, true
				if d := e.Sub(victim.End); d > 0 && e.After(end) {
					end = e
				}
			}
			if interrupted {
				got[f.Kind] = append(got[f.Kind], max(0, end.Sub(victim.End)))
				continue
			}
			for _, p := range procs[f.Target] {
				if p.Start.After(victim.End) {
					if e, found := firstOK(p.Start, func(x Run) bool { return x.Pid == p.Pid }); found && !e.After(h.End) {
						got[f.Kind] = append(got[f.Kind], e.Sub(p.Start))
						ok = true
					}
					break
				}
			}
			if !ok {
				missing[f.Kind]++
			}
			continue
		case KindRedisKill, KindRedisPause, KindMalformed, KindDeploy:
			end, ok = firstOK(f.End, func(Run) bool { return true })
		case KindPartitionRedis, KindLatencyRedis, KindClock:
			pids := pidsOf(f.Target)
			end, ok = firstOK(f.End, func(r Run) bool { return pids[r.Pid] })
		case KindPartitionFalkor, KindLatencyFalkor:
			pids := pidsOf(f.Target)
			end, ok = firstOK(f.End, func(r Run) bool { return pids[r.Pid] && graphTasks[r.Task] })
		case KindFalkorStall:
			end, ok = firstOK(f.End, func(r Run) bool { return graphTasks[r.Task] })
		case KindLLM429, KindLLM5xx, KindLLMHang:
			end, ok = firstOK(f.End, func(r Run) bool { return llmTasks[r.Task] })
		case KindBudget:
			end, ok = firstOK(f.End, func(r Run) bool { return llmTasks[r.Task] })
		case KindForeignScheduler:
			end, ok = firstOK(f.End, func(r Run) bool {
				return strings.HasPrefix(r.TaskID, strings.TrimPrefix(f.Detail, "task=")+"@")
			})
		}
		if !ok || end.After(h.End) {
			missing[f.Kind]++
			continue
		}
		got[f.Kind] = append(got[f.Kind], max(0, end.Sub(f.End)))
	}
	var out []Recovery
	for _, k := range Kinds {
		if injected[k] == 0 {
			continue
		}
		ds := got[k]
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		r := Recovery{Kind: k, Injected: injected[k], Measured: len(ds), NotMeasured: missing[k]}
		if len(ds) > 0 {
			r.Max = ds[len(ds)-1]
			r.P95 = ds[int(math.Ceil(0.95*float64(len(ds))))-1]
		}
		if r.NotMeasured > 0 {
			r.NotMeasuredWhy = "no run of the affected work after it healed"
		}
		out = append(out, r)
	}
	return out
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
