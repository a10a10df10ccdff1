package chaos

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/handlers"
	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/kg/extract"
	"github.com/stargazer/stargazer-jobs/internal/kg/extract/extracttest"
	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
	"github.com/stargazer/stargazer-jobs/internal/queue/legacy"
	"github.com/stargazer/stargazer-jobs/internal/store/msgcache"
	"github.com/stargazer/stargazer-jobs/internal/store/prompts"
	"github.com/stargazer/stargazer-jobs/internal/store/ragstore"
	"github.com/stargazer/stargazer-jobs/internal/testkit/chaos/check"
	"github.com/stargazer/stargazer-jobs/internal/testkit/kgload"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// collect fills hist from the logs, the samples, the fakes' log and the
// final state of Redis and the graph.
func (h *harness) collect(ctx context.Context, hist *check.History) error {
	h.mu.Lock()
	hist.Faults = slices.Clone(h.faults)
	hist.Deployments = slices.Clone(h.deployments)
	hist.Foreign = slices.Clone(h.foreign)
	hist.LeaseSamples = slices.Clone(h.leaseSamples)
	hist.ResourceSamples = slices.Clone(h.resourceSamples)
	maxOffset := h.maxOffset
	h.mu.Unlock()
	sort.Slice(hist.Faults, func(i, j int) bool { return hist.Faults[i].Start.Before(hist.Faults[j].Start) })
	hist.Procs = h.procs.history()

	singletons := map[string]bool{}
	for _, s := range jobs.Catalog() {
		if s.Singleton {
			singletons[s.Name] = true
		}
	}
	hist.Config = check.Config{Intervals: maps.Clone(Intervals), Singletons: singletons, SingletonLease: SingletonLease,
		MaxClockOffset: maxOffset, MaxGoroutineGrowth: MaxGoroutineGrowth, MaxFDGrowth: MaxFDGrowth, MaxConnGrowth: MaxConnGrowth}

	if err := h.readLogs(hist); err != nil {
		return err
	}
	if err := h.readFakes(hist); err != nil {
		return err
	}
	if err := h.readFinal(ctx, hist); err != nil {
		return err
	}
	return h.reference(ctx, hist)
}

// logLine is the part of a worker's JSON log line the history reads.
type logLine struct {
	Time       time.Time       `json:"time"`
	Msg        string          `json:"msg"`
	Task       string          `json:"task"`
	TaskID     string          `json:"task_id"`
	Status     string          `json:"status"`
	Error      string          `json:"error"`
	Archived   bool            `json:"archived"`
	DurationMS int64           `json:"duration_ms"`
	Occurrence json.RawMessage `json:"occurrence"`
	Outcome    string          `json:"outcome"`
	Missed     int             `json:"missed"`
	Lease      string          `json:"lease"`
	Held       bool            `json:"held"`
	PromptID   string          `json:"prompt_id"`
	Scheduled  time.Time       `json:"scheduled_for"`
	StreamID   string          `json:"stream_id"`
	Reason     string          `json:"reason"`
	Batch      string          `json:"batch"`
	Fragments  json.RawMessage `json:"fragments"`
	Recovered  bool            `json:"recovered"`
}

func (h *harness) readLogs(hist *check.History) error {
	hist.Enqueued = map[string]time.Time{}
	for _, p := range h.procs.all {
		f, err := os.Open(p.logPath)
		if err != nil {
			return err
		}
		open := map[string]int{} // task ID -> index in hist.Runs of its open run on this process
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 4<<20), 4<<20)
		for sc.Scan() {
			var l logLine
			if json.Unmarshal(sc.Bytes(), &l) != nil {
				continue
			}
			switch l.Msg {
			case "task started":
				open[l.TaskID] = len(hist.Runs)
				hist.Runs = append(hist.Runs, check.Run{Task: l.Task, TaskID: l.TaskID, Proc: p.name, Pid: p.pid, Start: l.Time})
			case "task finished":
				i, ok := open[l.TaskID]
				if !ok {
					i = len(hist.Runs)
					hist.Runs = append(hist.Runs, check.Run{Task: l.Task, TaskID: l.TaskID, Proc: p.name, Pid: p.pid,
						Start: l.Time.Add(-time.Duration(l.DurationMS) * time.Millisecond)})
				}
				delete(open, l.TaskID)
				r := &hist.Runs[i]
				r.End, r.Status, r.Err, r.Archived = l.Time, l.Status, l.Error, l.Archived
			case "scheduler: occurrence handled":
				var occ string
				_ = json.Unmarshal(l.Occurrence, &occ)
				_, ms, _ := strings.Cut(occ, "@")
				due, _ := strconv.ParseInt(ms, 10, 64)
				hist.Occurrences = append(hist.Occurrences, check.Occurrence{Task: l.Task, Due: time.UnixMilli(due), ID: occ,
					Outcome: l.Outcome, TaskID: l.TaskID, Missed: l.Missed, At: l.Time, Pid: p.pid})
			case "scheduler: deferred task resumed":
				hist.Resumes = append(hist.Resumes, check.Resume{Task: l.Task, At: l.Time, Pid: p.pid})
			case "scheduler: enqueued":
				if _, ok := hist.Enqueued[l.TaskID]; !ok {
					hist.Enqueued[l.TaskID] = l.Time
				}
			case "singleton lease taken", "singleton lease lost; the run is stopped", "singleton lease released":
				kind := map[string]string{"singleton lease taken": "taken", "singleton lease lost; the run is stopped": "lost",
					"singleton lease released": "released"}[l.Msg]
				hist.Leases = append(hist.Leases, check.LeaseEvent{Task: l.Task, TaskID: l.TaskID, Lease: l.Lease, Pid: p.pid,
					Kind: kind, Held: l.Held, At: l.Time})
			case "scheduled prompt fired":
				var n int
				_ = json.Unmarshal(l.Occurrence, &n)
				hist.FireLogs = append(hist.FireLogs, check.Fire{PromptID: l.PromptID, ScheduledFor: l.Scheduled, Occurrence: n,
					At: l.Time, StreamID: l.StreamID, Pid: p.pid})
			case "scheduled prompt invalid; skipped":
				hist.InvalidLogs = append(hist.InvalidLogs, check.InvalidLog{PromptID: l.PromptID, Reason: l.Reason, At: l.Time})
			case "extraction batch committed":
				var frags []string
				_ = json.Unmarshal(l.Fragments, &frags)
				hist.Commits = append(hist.Commits, check.Commit{Batch: l.Batch, Fragments: frags, Recovered: l.Recovered, At: l.Time, Pid: p.pid})
			}
		}
		f.Close()
		if err := sc.Err(); err != nil {
			return fmt.Errorf("reading %s: %w", p.logPath, err)
		}
	}
	sort.Slice(hist.Runs, func(i, j int) bool { return hist.Runs[i].Start.Before(hist.Runs[j].Start) })
	return nil
}

func (h *harness) readFakes(hist *check.History) error {
	f, err := os.Open(filepath.Join(h.dir, "fakes.jsonl"))
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 4<<20), 4<<20)
	for sc.Scan() {
		var c FakeCall
		if json.Unmarshal(sc.Bytes(), &c) != nil || (c.Service != "llm" && c.Service != "embeddings") {
			continue
		}
		hist.LLMCalls = append(hist.LLMCalls, check.LLMCall{At: c.At, Service: c.Service, Purpose: c.Purpose, Status: c.Status, Fault: c.Fault,
			RetryAfter: time.Duration(c.RetryAfter) * time.Second})
	}
	return sc.Err()
}

// readFinal reads what the bot wrote and what the workers left: the fired
// stream, each prompt's status, the extraction ledger.
func (h *harness) readFinal(ctx context.Context, hist *check.History) error {
	b := h.bot
	b.mu.Lock()
	hist.Prompts = slices.Clone(b.prompts)
	hist.Fragments = slices.Clone(b.fragments)
	msgs := slices.Clone(b.messages)
	b.mu.Unlock()
	anchor, err := legacy.ReadHandOver(ctx, h.rdb, jobs.LimbicAnchoringWorker)
	if err != nil {
		return err
	}
	for _, m := range msgs {
		hist.Messages = append(hist.Messages, check.Message{Key: m.key, Time: m.time, Expect: m.user && m.time.After(anchor)})
	}
	entries, err := h.rdb.XRange(ctx, prompts.StreamKey, "-", "+").Result()
	if err != nil {
		return err
	}
	logged := map[string]check.Fire{}
	for _, f := range hist.FireLogs {
		logged[f.StreamID] = f
	}
	ms := func(v any) time.Time {
		s, _ := v.(string)
		n, _ := strconv.ParseInt(s, 10, 64)
		return time.UnixMilli(n)
	}
	for _, e := range entries {
		n, _ := strconv.Atoi(fmt.Sprint(e.Values["occurrence"]))
		f := check.Fire{PromptID: fmt.Sprint(e.Values["prompt_id"]), ScheduledFor: ms(e.Values["scheduled_for"]),
			FiredAt: ms(e.Values["fired_at"]), Occurrence: n, StreamID: e.ID}
		if l, ok := logged[e.ID]; ok {
			f.At, f.Pid = l.At, l.Pid
		}
		hist.Fires = append(hist.Fires, f)
	}
	hist.PromptStatus = map[string]string{}
	for _, p := range hist.Prompts {
		st, _ := h.rdb.HGet(ctx, prompts.KeyPrefix+p.ID, "status").Result()
		hist.PromptStatus[p.ID] = st
	}
	hist.Done, hist.Poisoned = map[string]bool{}, map[string]bool{}
	for key, set := range map[string]map[string]bool{extract.DoneKey: hist.Done, "sgjobs:kgx:poisoned": hist.Poisoned} {
		ids, err := h.rdb.ZRange(ctx, key, 0, -1).Result()
		if err != nil {
			return err
		}
		for _, id := range ids {
			set[id] = true
		}
	}
	return nil
}

// answerModel answers extraction prompts in-process exactly as the fake
// LLM does (extracttest), for the reference extraction.
type answerModel struct{}

func (answerModel) Chat(_ context.Context, r llm.Request) (*llm.Response, error) {
	p := r.Messages[len(r.Messages)-1].Content
	return &llm.Response{Content: extracttest.Answer(p), FinishReason: "stop"}, nil
}

// reference extracts, with no fault, every fragment the run's ledger says
// was extracted, into a graph of its own, and snapshots both graphs: a
// message extracted twice (or not at all, or written twice) shows as a
// difference.
func (h *harness) reference(ctx context.Context, hist *check.History) error {
	var ids []string
	for id := range hist.Done {
		if !hist.Poisoned[id] {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	var msgKeys []string
	var frags []extract.Fragment
	for _, id := range ids {
		switch {
		case strings.HasPrefix(id, "sg:msg:"):
			msgKeys = append(msgKeys, id)
		case strings.HasPrefix(id, ragstore.FragmentKeyPrefix):
			v, err := h.rdb.HMGet(ctx, id, "text", "source", "title", "created_at").Result()
			if err != nil {
				return err
			}
			f := ragstore.Fragment{ID: strings.TrimPrefix(id, ragstore.FragmentKeyPrefix)}
			f.Text, _ = v[0].(string)
			f.Source, _ = v[1].(string)
			f.Title, _ = v[2].(string)
			if s, _ := v[3].(string); s != "" {
				n, _ := strconv.ParseInt(s, 10, 64)
				f.Created = time.UnixMilli(n)
			}
			frags = append(frags, handlers.LoreFragment(f))
		}
	}
	msgs, err := msgcache.New(h.rdb).Get(ctx, msgKeys)
	if err != nil {
		return err
	}
	for _, m := range msgs {
		if m.Kind == msgcache.KindAssistantOut {
			continue
		}
		frags = append(frags, extract.Fragment{ID: m.Key, Source: m.Channel.String(), Author: cmp.Or(m.UserName, m.UserID), Text: m.Text, Time: m.Time})
	}
	sort.SliceStable(frags, func(i, j int) bool { return frags[i].Time.Before(frags[j].Time) })

	// Its own ledger: another logical database of the same Redis.
	ledger := redis.NewClient(&redis.Options{Addr: h.redis.Addr, DB: 9})
	defer ledger.Close()
	if err := ledger.FlushDB(ctx).Err(); err != nil {
		return err
	}
	ref, rc := h.graphOf("chaos-reference")
	defer rc.Close()
	_ = rc.Do(ctx, "GRAPH.DELETE", "chaos-reference").Err()
	if err := graph.EnsureSchema(ctx, ref); err != nil {
		return fmt.Errorf("reference graph schema: %w", err)
	}
	eng, err := extract.New(extract.Config{LLM: answerModel{}, Model: "reference", Graph: ref, Redis: ledger})
	if err != nil {
		return err
	}
	for lo := 0; lo < len(frags); lo += 300 {
		if _, err := eng.Extract(ctx, frags[lo:min(lo+300, len(frags))]); err != nil {
			return fmt.Errorf("reference extraction: %w", err)
		}
	}
	g, gc := h.graphOf("stargazer")
	defer gc.Close()
	if hist.Graph, err = snapshot(ctx, g); err != nil {
		return err
	}
	hist.Reference, err = snapshot(ctx, ref)
	return err
}

// snapshot is the graph as text: every entity with the properties
// extraction sets (its mentions and first and last mention: sums, minima
// and maxima over messages, whatever the batches), and every relationship
// once per edge, so a duplicated edge shows. A relationship's weight and
// last_seen are left out: both are taken per batch (the strongest
// statement, the latest mention of either end in it) and summed or
// maximised across batches, so they depend on how the messages were cut.
func snapshot(ctx context.Context, g *graph.Graph) (string, error) {
	return kgload.SnapshotOf(ctx, g,
		`MATCH (e:Entity) RETURN e.key, e.name, e.type, e.mention_count, e.first_seen, e.last_seen ORDER BY e.key`,
		`MATCH (a:Entity)-[r:REL]->(c:Entity) RETURN a.key, r.type, c.key ORDER BY a.key, r.type, c.key`)
}
