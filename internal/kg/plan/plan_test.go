package plan_test

import (
	"context"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/kg/plan"
	"github.com/stargazer/stargazer-jobs/internal/store/msgcache"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

const (
	task   = "limbic_anchoring_worker"
	prefix = "sg:ka:cursor:"
	chA    = "discord:1"
	chB    = "matrix:!room:example.org"
)

func pos(ts int64) msgcache.Position {
	return msgcache.Position{TS: ts, Key: "sg:msg:x:" + string(rune('a'+ts%26))}
}

func unit(id string, segs ...plan.Segment) plan.Unit {
	u := plan.Unit{ID: id, TaskID: "kg_extract_unit:" + id, Payload: []byte(`{}`), Segments: segs}
	u.Roots = make([]bool, len(segs))
	return u
}

func seg(ch string, after, end msgcache.Position) plan.Segment {
	return plan.Segment{Channel: ch, After: after, End: end, Messages: 3}
}

func cursor(t *testing.T, s *plan.Store, ch string) (msgcache.Position, bool) {
	t.Helper()
	chains, err := s.Follow(context.Background(), []string{ch})
	if err != nil {
		t.Fatal(err)
	}
	return chains[0].Start, chains[0].HasCursor
}

func TestCursorsMoveOnlyOverSettledSegmentsWhateverOrderUnitsFinishIn(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	s := plan.New(rdb, task, prefix)
	now := time.UnixMilli(1_000_000)
	start := msgcache.Position{TS: 100}
	// Three units after the lookback of a channel without a cursor; the
	// second also holds a segment of another channel, whose cursor exists.
	if _, err := msgcache.New(rdb).SetCursor(ctx, prefix+chB, msgcache.Position{}, pos(50), now.UnixMilli()); err != nil {
		t.Fatal(err)
	}
	u1 := unit("u1", seg(chA, start, pos(110)))
	u1.Roots[0] = true
	u2 := unit("u2", seg(chA, pos(110), pos(120)), seg(chB, pos(50), pos(60)))
	u3 := unit("u3", seg(chA, pos(120), pos(130)))
	for _, u := range []plan.Unit{u1, u2, u3} {
		if ok, err := s.Plan(ctx, u, now); err != nil || !ok {
			t.Fatalf("plan %s: %v %v", u.ID, ok, err)
		}
	}
	chains, err := s.Follow(ctx, []string{chA, chB})
	if err != nil {
		t.Fatal(err)
	}
	if chains[0].HasCursor || chains[0].Start != start || chains[0].Tail != pos(130) || len(chains[0].Segments) != 3 || chains[0].Planned() != 9 {
		t.Fatalf("chain A %+v", chains[0])
	}
	if !chains[1].HasCursor || chains[1].Tail != pos(60) {
		t.Fatalf("chain B %+v", chains[1])
	}

	steps := []struct {
		name    string
		u       plan.Unit
		wantA   msgcache.Position
		hasA    bool
		wantB   msgcache.Position
		movedOf []bool
	}{
		{"the last unit first: no cursor moves", u3, msgcache.Position{}, false, pos(50), []bool{false}},
		{"the middle one: only B, whose chain it heads, moves", u2, msgcache.Position{}, false, pos(60), []bool{false, true}},
		{"the first one: A moves over all three", u1, pos(130), true, pos(60), []bool{true}},
		{"completing again changes nothing", u1, pos(130), true, pos(60), []bool{false}},
	}
	for _, st := range steps {
		moved, err := s.Complete(ctx, st.u.ID, st.u.Segments, now)
		if err != nil {
			t.Fatal(err)
		}
		a, hasA := cursor(t, s, chA)
		b, _ := cursor(t, s, chB)
		if hasA != st.hasA || (st.hasA && a != st.wantA) || b != st.wantB || len(moved) != len(st.movedOf) {
			t.Fatalf("%s: A %v (%v), B %v, moved %v", st.name, a, hasA, b, moved)
		}
		for i := range moved {
			if moved[i] != st.movedOf[i] {
				t.Fatalf("%s: moved %v, want %v", st.name, moved, st.movedOf)
			}
		}
	}
	// Settled segments are gone, and so are the units.
	if n, _ := rdb.HLen(ctx, plan.ChainKey(task, chA)).Result(); n != 0 {
		t.Errorf("chain A keeps %d fields", n)
	}
	if units, _ := s.Units(ctx); len(units) != 0 {
		t.Errorf("units left: %v", units)
	}
	// The cursor is msgcache's: SetCursor's compare-and-set sees it.
	if ok, err := msgcache.New(rdb).SetCursor(ctx, prefix+chA, pos(130), pos(140), now.UnixMilli()); err != nil || !ok {
		t.Errorf("msgcache does not see the moved cursor: %v %v", ok, err)
	}
}

func TestPlanningOnlyAppendsAtTheTail(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	s := plan.New(rdb, task, prefix)
	now := time.UnixMilli(1_000_000)
	if _, err := msgcache.New(rdb).SetCursor(ctx, prefix+chA, msgcache.Position{}, pos(10), now.UnixMilli()); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.Plan(ctx, unit("u1", seg(chA, pos(10), pos(20))), now); !ok || err != nil {
		t.Fatalf("first plan: %v %v", ok, err)
	}
	tests := []struct {
		name string
		u    plan.Unit
		want bool
	}{
		{"a second planner that read the same tail", unit("u1b", seg(chA, pos(10), pos(25))), false},
		{"a segment starting before the cursor", unit("u0", seg(chA, pos(5), pos(8))), false},
		{"a segment past a gap", unit("u9", seg(chA, pos(21), pos(30))), false},
		{"a root on a channel that has a cursor", func() plan.Unit {
			u := unit("ur", seg(chA, msgcache.Position{TS: 1}, pos(30)))
			u.Roots[0] = true
			return u
		}(), false},
		{"one segment off its tail fails the whole unit", unit("u2", seg(chA, pos(20), pos(30)), seg(chB, pos(1), pos(2))), false},
		{"at the tail", unit("u3", seg(chA, pos(20), pos(30))), true},
	}
	for _, tt := range tests {
		ok, err := s.Plan(ctx, tt.u, now)
		if err != nil || ok != tt.want {
			t.Errorf("%s: planned %v, %v; want %v", tt.name, ok, err, tt.want)
		}
	}
	chains, _ := s.Follow(ctx, []string{chA, chB})
	if chains[0].Tail != pos(30) || len(chains[0].Segments) != 2 || len(chains[1].Segments) != 0 {
		t.Fatalf("chains %+v", chains)
	}
	units, _ := s.Units(ctx)
	if len(units) != 2 || units["u1"].TaskID != "kg_extract_unit:u1" || units["u1"].PlannedAt != now.UnixMilli() {
		t.Fatalf("units %+v", units)
	}
}

func TestSegmentsBehindAMovedCursorAreStray(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	s := plan.New(rdb, task, prefix)
	now := time.UnixMilli(1_000_000)
	cache := msgcache.New(rdb)
	if _, err := cache.SetCursor(ctx, prefix+chA, msgcache.Position{}, pos(10), now.UnixMilli()); err != nil {
		t.Fatal(err)
	}
	if ok, _ := s.Plan(ctx, unit("u1", seg(chA, pos(10), pos(20))), now); !ok {
		t.Fatal("not planned")
	}
	// An old-style pass moves the cursor past the planned segment.
	if ok, _ := cache.SetCursor(ctx, prefix+chA, pos(10), pos(25), now.UnixMilli()); !ok {
		t.Fatal("cursor not moved")
	}
	chains, _ := s.Follow(ctx, []string{chA})
	if chains[0].Tail != pos(25) || len(chains[0].Stray) != 1 {
		t.Fatalf("chain %+v", chains[0])
	}
	if err := s.DropStray(ctx, chA, chains[0].Stray); err != nil {
		t.Fatal(err)
	}
	if n, _ := rdb.HLen(ctx, plan.ChainKey(task, chA)).Result(); n != 0 {
		t.Fatalf("%d fields left", n)
	}
}

func TestBacklogRoundTripsAndIgnoresForeignFields(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	s := plan.New(rdb, task, prefix)
	now := time.UnixMilli(1_700_000_000_000)
	b := plan.Backlog{Task: task, Updated: now, Units: 3, Planned: 70, Sources: []plan.SourceBacklog{
		{Source: chA, Pending: 50, Oldest: now.Add(-time.Hour)},
		{Source: chB, Pending: 20, Oldest: now.Add(-time.Minute)},
		{Source: "discord:2", Pending: 0},
	}}
	if err := s.WriteBacklog(ctx, b); err != nil {
		t.Fatal(err)
	}
	rdb.HSet(ctx, plan.BacklogKey(task), "discord:evil", "not a number")
	got, err := plan.ReadBacklog(ctx, rdb, task)
	if err != nil {
		t.Fatal(err)
	}
	if got.Units != 3 || got.Planned != 70 || !got.Updated.Equal(now) || len(got.Sources) != 2 ||
		got.Pending() != 70 || !got.Oldest().Equal(now.Add(-time.Hour)) {
		t.Fatalf("backlog %+v", got)
	}
}
