package ragstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/store/ragstore"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

func TestRangeReadsFragmentsInCorpusOrderAndRetiredOnesAsEmpty(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	s := ragstore.New(rdb)
	at := time.UnixMilli(1_790_000_000_000)
	for i, id := range []string{"a", "b", "c"} {
		idx, err := s.Append(ctx, ragstore.Fragment{ID: id, Text: "text " + id, Source: "codex", Title: "T" + id, Created: at})
		if err != nil || idx != int64(i) {
			t.Fatalf("append %s: index %d, %v", id, idx, err)
		}
	}
	if _, err := s.Append(ctx, ragstore.Fragment{ID: "b", Text: "again"}); err == nil {
		t.Error("a stored ID was appended twice")
	}
	rdb.Del(ctx, ragstore.FragmentKeyPrefix+"b") // retired

	if n, err := s.Len(ctx); err != nil || n != 3 {
		t.Fatalf("len %d, %v", n, err)
	}
	got, err := s.Range(ctx, 1, 5)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Index != 1 || got[0].ID != "b" || got[0].Text != "" ||
		got[1].Index != 2 || got[1].Text != "text c" || got[1].Source != "codex" || got[1].Title != "Tc" || !got[1].Created.Equal(at) ||
		got[1].Key() != "sg:rag:fragment:c" {
		t.Errorf("range %+v", got)
	}
	if got, err := s.Range(ctx, 3, 5); err != nil || len(got) != 0 {
		t.Errorf("past the end: %v, %v", got, err)
	}
}

func TestMoveCursorIsACompareAndSet(t *testing.T) {
	ctx := context.Background()
	s := ragstore.New(redistest.Start(t).Client(t))
	const key = "cursor"
	steps := []struct {
		from, to int64
		moved    bool
		after    int64
	}{
		{0, 5, true, 5},   // no cursor reads as 0
		{0, 9, false, 5},  // a run that read the old value loses
		{5, 12, true, 12}, // forward from the current value
	}
	for _, st := range steps {
		moved, err := s.MoveCursor(ctx, key, st.from, st.to)
		if err != nil || moved != st.moved {
			t.Fatalf("move %d->%d: %v, %v", st.from, st.to, moved, err)
		}
		if c, err := s.Cursor(ctx, key); err != nil || c != st.after {
			t.Fatalf("after %d->%d: cursor %d, %v", st.from, st.to, c, err)
		}
	}
}
