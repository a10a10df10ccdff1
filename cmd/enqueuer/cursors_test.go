package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/cursors"
	"github.com/stargazer/stargazer-jobs/internal/kg/plan"
	"github.com/stargazer/stargazer-jobs/internal/store/logstore"
	"github.com/stargazer/stargazer-jobs/internal/store/msgcache"
	"github.com/stargazer/stargazer-jobs/internal/store/ragstore"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// cursorWorld is a Redis where every cursor-driven task has run: ten
// fragments with the digest at 4, two channels of five messages (one
// with an anchoring cursor and a planned segment, bulk and summary
// positions), a node's journal cursor and a done day.
type cursorWorld struct {
	rdb  *redis.Client
	env  map[string]string
	now  time.Time
	ch   msgcache.Channel
	msgs []time.Time
}

const testJournalCursor = "s=739ad463348b4ceca5a9e69c95a3c93f;i=4ece7;b=6c7c6013a8ee4c6c8d4d4e2e3e7e9f37;m=22b1d84ca;t=5a5ea1f02e6d0;x=4d8d1e5d1b6e0c1d"

func newCursorWorld(t *testing.T) *cursorWorld {
	t.Helper()
	srv := redistest.Start(t)
	w := &cursorWorld{rdb: srv.Client(t), env: map[string]string{"REDIS_URL": srv.URL()}, now: time.Now(),
		ch: msgcache.Channel{Platform: "discord", ID: "42"}}
	ctx := context.Background()
	store := ragstore.New(w.rdb)
	for i := range 10 {
		if _, err := store.Append(ctx, ragstore.Fragment{ID: fmt.Sprint(i), Text: fmt.Sprintf("lore %d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	w.rdb.Set(ctx, cursors.AnamnesisKey, 4, 0)
	cache := msgcache.New(w.rdb)
	for _, c := range []msgcache.Channel{w.ch, {Platform: "matrix", ID: "!room:example.org"}} {
		for i := range 5 {
			at := w.now.Add(-time.Duration(50-10*i) * time.Minute).Truncate(time.Millisecond)
			if _, _, err := cache.Log(ctx, msgcache.Message{Channel: c, MessageID: fmt.Sprint(i), UserID: "u", Text: "hi", Time: at}); err != nil {
				t.Fatal(err)
			}
			if c == w.ch {
				w.msgs = append(w.msgs, at)
			}
		}
	}
	// Anchoring: settled up to message 1, messages 2-3 planned.
	p1 := msgcache.Position{TS: w.msgs[1].UnixMilli()}
	if _, err := cache.SetCursor(ctx, cursors.AnchoringPrefix+w.ch.String(), msgcache.Position{}, p1, w.now.UnixMilli()); err != nil {
		t.Fatal(err)
	}
	ps := plan.New(w.rdb, jobs.LimbicAnchoringWorker, cursors.AnchoringPrefix)
	if ok, err := ps.Plan(ctx, plan.Unit{ID: "u1", TaskID: "kg_extract_unit:u1", Payload: []byte(`{}`),
		Segments: []plan.Segment{{Channel: w.ch.String(), After: p1, End: msgcache.Position{TS: w.msgs[3].UnixMilli()}, Messages: 2}}}, w.now); !ok || err != nil {
		t.Fatalf("planning: %v %v", ok, err)
	}
	cache.SetCursor(ctx, cursors.BulkPrefix+w.ch.String(), msgcache.Position{}, msgcache.Position{TS: w.msgs[4].UnixMilli()}, w.now.UnixMilli())
	w.rdb.HSet(ctx, msgcache.SummaryKey(w.ch), "summary", "they said hi", "last_message_ts", w.msgs[2].UnixMilli())
	if err := logstore.New(w.rdb).Advance(ctx, "node-a", "stargazer", testJournalCursor, w.now); err != nil {
		t.Fatal(err)
	}
	yesterday := w.now.UTC().AddDate(0, 0, -1).Format(time.DateOnly)
	w.rdb.ZAdd(ctx, cursors.SunsetDoneKey, redis.Z{Score: float64(w.now.UnixMilli()), Member: yesterday})
	return w
}

func (w *cursorWorld) list(t *testing.T) []cursors.Entry {
	t.Helper()
	code, out, stderr := runBinary(t, w.env, "cursors", "list", "--json")
	if code != exitOK {
		t.Fatalf("cursors list: exit %d: %s", code, stderr)
	}
	var es []cursors.Entry
	if err := json.Unmarshal([]byte(out), &es); err != nil {
		t.Fatal(err)
	}
	return es
}

func find(es []cursors.Entry, task, source string) (cursors.Entry, bool) {
	for _, e := range es {
		if e.Task == task && e.Source == source {
			return e, true
		}
	}
	return cursors.Entry{}, false
}

func TestCursorsListsEveryCursorDrivenTaskPerSource(t *testing.T) {
	w := newCursorWorld(t)
	es := w.list(t)
	ms := func(i int) string { return fmt.Sprint(w.msgs[i].UnixMilli()) }
	room := "matrix:!room:example.org"
	for _, tt := range []struct {
		task, source, position string
		set                    bool
		pending                int64
		note                   string
	}{
		{jobs.AnamnesisDigest, "fragments", "4", true, 6, "of 10 fragments"},
		{jobs.LimbicAnchoringWorker, w.ch.String(), ms(1), true, 3, "2 messages planned in 1 segments"},
		{jobs.LimbicAnchoringWorker, room, "-", false, -1, "no position yet: per channel, max(now - 1 h"},
		{jobs.AutoKGExtraction, w.ch.String(), "-", false, -1, "24 h"},
		{jobs.AgenticKGBulkIncremental, w.ch.String(), ms(4), true, 0, ""},
		{jobs.AgenticKGBulkIncremental, room, "-", false, -1, "its newest message"},
		{jobs.LogRAGIngest, "node-a:stargazer", testJournalCursor, true, -1, "moved"},
		{jobs.LimbicSunsetProcessor, "days", w.now.UTC().AddDate(0, 0, -1).Format(time.DateOnly), true, 6, "1 of the last 7 days done"},
		{jobs.ChannelSummarization, w.ch.String(), ms(2), true, 2, ""},
		{jobs.ChannelHeartbeat, w.ch.String(), "-", false, -1, "30 messages"},
	} {
		e, ok := find(es, tt.task, tt.source)
		if !ok {
			t.Errorf("%s %s: not listed", tt.task, tt.source)
			continue
		}
		if e.Set != tt.set || e.Position != tt.position || !strings.Contains(e.Note, tt.note) ||
			(tt.pending >= 0 && (e.Pending == nil || *e.Pending != tt.pending)) {
			t.Errorf("%s %s: %+v (pending %v); want set=%v position %q pending %d note containing %q",
				tt.task, tt.source, e, deref(e.Pending), tt.set, tt.position, tt.pending, tt.note)
		}
	}
	listed := map[string]bool{}
	for _, e := range es {
		listed[e.Task] = true
	}
	for _, ct := range cursors.Tasks() {
		if !listed[ct.Name] {
			t.Errorf("%s is not listed", ct.Name)
		}
	}
	code, out, _ := runBinary(t, w.env, "cursors")
	if code != exitOK || !strings.Contains(out, "TASK") || maxLineWidth(out) > lineWidth {
		t.Errorf("cursors (the table): exit %d, widest line %d:\n%s", code, maxLineWidth(out), out)
	}
}

func deref(p *int64) any {
	if p == nil {
		return nil
	}
	return *p
}

// Whatever is wrong with a set exits 2 with a message naming the task and
// what is wrong, and changes nothing.
func TestCursorsSetRefusesWhatIsWrongAndChangesNothing(t *testing.T) {
	w := newCursorWorld(t)
	before := w.list(t)
	future := w.now.Add(time.Hour).UTC().Format(time.RFC3339)
	for _, tt := range []struct {
		name   string
		args   []string
		stderr string
	}{
		{"an index that is not a number", []string{jobs.AnamnesisDigest, "fragments", "banana"}, `position "banana" is malformed`},
		{"a negative index", []string{jobs.AnamnesisDigest, "fragments", "--", "-3"}, "malformed"},
		{"an index past the end", []string{jobs.AnamnesisDigest, "fragments", "11"}, "past the end of the store (10 fragments)"},
		{"the wrong source of the store", []string{jobs.AnamnesisDigest, "store", "0"}, "its only source is fragments"},
		{"a time that is not one", []string{jobs.LimbicAnchoringWorker, w.ch.String(), "yesterday"}, `position "yesterday" is malformed: want now, latest`},
		{"a time with trailing letters", []string{jobs.AutoKGExtraction, w.ch.String(), "2026-05-04T12:00:00Zjunk"}, "malformed"},
		{"a relative time that is not a duration", []string{jobs.AutoKGExtraction, "all", "now-2 hours"}, "malformed"},
		{"a time in the future", []string{jobs.AutoKGExtraction, w.ch.String(), future}, "in the future"},
		{"Unix milliseconds of zero", []string{jobs.AgenticKGBulkIncremental, w.ch.String(), "0"}, "malformed"},
		{"a channel that is not platform:id", []string{jobs.LimbicAnchoringWorker, "42", "now"}, `source "42" is not <platform>:<channel id> or all`},
		{"a channel not in the cache", []string{jobs.LimbicAnchoringWorker, "discord:404", "now"}, "no channel discord:404 in the message cache"},
		{"a journal cursor that is not one", []string{jobs.LogRAGIngest, "node-a:stargazer", "s=1;i=2"}, "malformed"},
		{"an unknown node", []string{jobs.LogRAGIngest, "node-z:stargazer", "now"}, "no node node-z has ingested unit stargazer"},
		{"a day that is not one", []string{jobs.LimbicSunsetProcessor, "days", "2026-02-30"}, "malformed"},
		{"a day in the future", []string{jobs.LimbicSunsetProcessor, "days", w.now.UTC().AddDate(0, 0, 2).Format(time.DateOnly)}, "in the future"},
		{"a task without a cursor", []string{jobs.KGDecay, "all", "now"}, `"kg_decay_task" is not a cursor-driven task`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for _, dry := range []bool{false, true} {
				args := []string{"cursors", "set"}
				if dry {
					args = append(args, "--dry-run")
				}
				args = append(args, tt.args...)
				code, out, stderr := runBinary(t, w.env, args...)
				if code != exitUsage || !strings.Contains(stderr, tt.stderr) || out != "" {
					t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 2 and %q", args, code, out, stderr, tt.stderr)
				}
			}
		})
	}
	after := w.list(t)
	b, _ := json.Marshal(before)
	a, _ := json.Marshal(after)
	if string(a) != string(b) {
		t.Errorf("refused sets changed the cursors:\nbefore %s\nafter  %s", b, a)
	}
}

// A dry run counts what a position leaves to process and changes nothing;
// the same set without it moves the position.
func TestCursorsSetMovesPositionsAndADryRunCountsWithoutMoving(t *testing.T) {
	w := newCursorWorld(t)
	ctx := context.Background()
	type result struct {
		DryRun  bool             `json:"dry_run"`
		Pending int64            `json:"pending"`
		Counted bool             `json:"counted"`
		Cost    *float64         `json:"estimated_cost_usd"`
		Moves   []map[string]any `json:"moves"`
	}
	set := func(t *testing.T, args ...string) result {
		t.Helper()
		code, out, stderr := runBinary(t, w.env, append(append([]string{"cursors", "set"}, args...), "--json")...)
		if code != exitOK {
			t.Fatalf("cursors set %v: exit %d: %s", args, code, stderr)
		}
		var r result
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	t.Run("anamnesis back to the first fragment", func(t *testing.T) {
		r := set(t, jobs.AnamnesisDigest, "fragments", "start", "--dry-run")
		if !r.DryRun || r.Pending != 10 || !r.Counted || r.Cost != nil {
			t.Errorf("dry run %+v: want 10 fragments, no price table", r)
		}
		if v, _ := w.rdb.Get(ctx, cursors.AnamnesisKey).Int64(); v != 4 {
			t.Fatalf("the dry run moved the cursor to %d", v)
		}
		if r := set(t, jobs.AnamnesisDigest, "fragments", "end"); r.Pending != 0 {
			t.Errorf("set end: %+v", r)
		}
		if v, _ := w.rdb.Get(ctx, cursors.AnamnesisKey).Int64(); v != 10 {
			t.Errorf("cursor %d, want 10", v)
		}
	})
	t.Run("an extraction dry run is priced from the engine's estimate at the model's price", func(t *testing.T) {
		code, out, stderr := runBinary(t, map[string]string{"REDIS_URL": w.env["REDIS_URL"],
			"LLM_PRICES": "google/gemini-2.5-flash=0.30/2.50", "KG_EXTRACTION_MODEL": "google/gemini-2.5-flash"},
			"cursors", "set", jobs.AutoKGExtraction, "all", w.msgs[0].Add(-time.Minute).UTC().Format(time.RFC3339Nano), "--dry-run", "--json")
		if code != exitOK {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		var r result
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatal(err)
		}
		// The engine's estimate for a 60-character message: (60+83.13)/4
		// prompt and 74 answer tokens, at $0.30 and $2.50 a million.
		want := float64(r.Pending) * ((60+83.13)/4*0.30 + 74*2.50) / 1e6
		if !r.Counted || r.Pending == 0 || r.Cost == nil || math.Abs(*r.Cost-want) > want*0.01 {
			t.Errorf("dry run %+v (cost %v): want %d messages at about $%.6f", r, r.Cost, r.Pending, want)
		}
	})
	t.Run("anchoring of every channel to a time drops the planned segments", func(t *testing.T) {
		at := w.msgs[2]
		r := set(t, jobs.LimbicAnchoringWorker, "all", at.UTC().Format(time.RFC3339Nano))
		if r.Pending != 4 || len(r.Moves) != 2 { // messages 3 and 4 of each channel
			t.Errorf("set %+v: want 4 messages over 2 channels", r)
		}
		e, _ := find(w.list(t), jobs.LimbicAnchoringWorker, w.ch.String())
		if e.Position != fmt.Sprint(at.UnixMilli()) || strings.Contains(e.Note, "planned") {
			t.Errorf("after set: %+v", e)
		}
		if n, _ := w.rdb.Exists(ctx, plan.ChainKey(jobs.LimbicAnchoringWorker, w.ch.String())).Result(); n != 0 {
			t.Error("the chain planned from the old cursor is still there")
		}
	})
	t.Run("bulk to the newest message", func(t *testing.T) {
		if r := set(t, jobs.AgenticKGBulkIncremental, "matrix:!room:example.org", "latest"); r.Pending != 0 {
			t.Errorf("set latest: %+v", r)
		}
	})
	t.Run("a node's journal from a time, then from a cursor", func(t *testing.T) {
		r := set(t, jobs.LogRAGIngest, "node-a:stargazer", "now-2h")
		if r.Counted {
			t.Errorf("%+v: a journal's lines cannot be counted from Redis", r)
		}
		c, _ := logstore.New(w.rdb).Cursor(ctx, "node-a", "stargazer")
		if c.After != "" || c.Since.Sub(w.now.Add(-2*time.Hour)).Abs() > time.Minute {
			t.Errorf("after set now-2h: %+v", c)
		}
		set(t, jobs.LogRAGIngest, "node-a:stargazer", testJournalCursor)
		if c, _ := logstore.New(w.rdb).Cursor(ctx, "node-a", "stargazer"); c.After != testJournalCursor {
			t.Errorf("after set to a cursor: %+v", c)
		}
	})
	t.Run("sunset: every day up to one counts as done", func(t *testing.T) {
		day := w.now.UTC().AddDate(0, 0, -3)
		r := set(t, jobs.LimbicSunsetProcessor, "days", day.Format(time.DateOnly))
		if r.Pending != 2 {
			t.Errorf("set %+v: want the 2 days after it left", r)
		}
		done, _ := w.rdb.ZRange(ctx, cursors.SunsetDoneKey, 0, -1).Result()
		if len(done) != 5 || done[len(done)-1] != day.Format(time.DateOnly) {
			t.Errorf("done days %v: want the 5 days of the window up to %s", done, day.Format(time.DateOnly))
		}
	})
	t.Run("a summary's watermark", func(t *testing.T) {
		r := set(t, jobs.ChannelSummarization, w.ch.String(), fmt.Sprint(w.msgs[0].UnixMilli()))
		if r.Pending != 4 {
			t.Errorf("set %+v: want 4 messages", r)
		}
		sum, _, _ := msgcache.New(w.rdb).Summary(ctx, w.ch)
		if sum.LastMessageTS != w.msgs[0].UnixMilli() || sum.Text != "they said hi" {
			t.Errorf("summary after set %+v", sum)
		}
	})
}
