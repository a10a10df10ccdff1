package msgcache_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/store/msgcache"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

func TestAfterWalksTheSetInOrderThroughEqualTimestamps(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	s := msgcache.New(rdb)
	c := msgcache.Channel{Platform: "discord", ID: "1"}
	base := time.UnixMilli(1_700_000_000_000)
	// Five messages in the same millisecond, then two later ones.
	for _, id := range []string{"e", "b", "d", "a", "c"} {
		if _, _, err := s.Log(ctx, msgcache.Message{Channel: c, MessageID: id, Text: id, Time: base}); err != nil {
			t.Fatal(err)
		}
	}
	for i, id := range []string{"z", "y"} {
		if _, _, err := s.Log(ctx, msgcache.Message{Channel: c, MessageID: id, Text: id, Time: base.Add(time.Duration(i+1) * time.Second)}); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	pos := msgcache.Position{}
	for range 10 {
		p, err := s.After(ctx, c, pos, 2)
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Messages) == 0 {
			if p.End != pos {
				t.Fatalf("an empty page moved the end: %v -> %v", pos, p.End)
			}
			break
		}
		for i, m := range p.Messages {
			got = append(got, m.Text)
			if p.Positions[i] != (msgcache.Position{TS: m.Time.UnixMilli(), Key: m.Key}) {
				t.Errorf("position %v of %s", p.Positions[i], m.Key)
			}
		}
		pos = p.End
	}
	if want := []string{"a", "b", "c", "d", "e", "z", "y"}; !slices.Equal(got, want) {
		t.Fatalf("read %v, want %v (time, then key)", got, want)
	}

	t.Run("members whose hash is gone are passed over by End", func(t *testing.T) {
		if err := rdb.Del(ctx, msgcache.MessageKey(c, "z"), msgcache.MessageKey(c, "y")).Err(); err != nil {
			t.Fatal(err)
		}
		from := msgcache.Position{TS: base.UnixMilli(), Key: msgcache.MessageKey(c, "e")}
		p, err := s.After(ctx, c, from, 10)
		if err != nil || len(p.Messages) != 0 || p.End != (msgcache.Position{TS: base.Add(2 * time.Second).UnixMilli(), Key: msgcache.MessageKey(c, "y")}) {
			t.Fatalf("page %+v, %v", p, err)
		}
	})
}

func TestSetCursorMovesOnlyFromWhereItWas(t *testing.T) {
	ctx := context.Background()
	s := msgcache.New(redistest.Start(t).Client(t))
	key := "test:cursor"
	a := msgcache.Position{TS: 10, Key: "k10"}
	b := msgcache.Position{TS: 20, Key: "k20"}
	steps := []struct {
		name     string
		from, to msgcache.Position
		moved    bool
		want     msgcache.Position
	}{
		{"a new cursor moves from the zero position", msgcache.Position{}, a, true, a},
		{"a run that read no cursor lost the race", msgcache.Position{}, b, false, a},
		{"a run that read a moves it", a, b, true, b},
		{"a stale run cannot move it back", a, msgcache.Position{TS: 15, Key: "k15"}, false, b},
	}
	for _, st := range steps {
		moved, err := s.SetCursor(ctx, key, st.from, st.to, 1)
		if err != nil || moved != st.moved {
			t.Fatalf("%s: moved=%v err=%v", st.name, moved, err)
		}
		got, err := s.Cursors(ctx, []string{key, "test:none"})
		if err != nil || got[0] != st.want || got[1] != (msgcache.Position{}) {
			t.Fatalf("%s: cursors %v, %v", st.name, got, err)
		}
	}
}

func TestNewestReadsTheActiveIndex(t *testing.T) {
	ctx := context.Background()
	s := msgcache.New(redistest.Start(t).Client(t))
	c := msgcache.Channel{Platform: "discord", ID: "1"}
	at := time.UnixMilli(1_700_000_000_000)
	if _, _, err := s.Log(ctx, msgcache.Message{Channel: c, MessageID: "m", Text: "x", Time: at}); err != nil {
		t.Fatal(err)
	}
	got, err := s.Newest(ctx, []msgcache.Channel{c, {Platform: "matrix", ID: "!x:y"}})
	if err != nil || !slices.Equal(got, []int64{at.UnixMilli(), 0}) {
		t.Fatalf("newest %v, %v", got, err)
	}
}
