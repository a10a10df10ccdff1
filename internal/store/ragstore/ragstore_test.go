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

// With QUEUE_REDIS_URL the cursors live on the job system's Redis, the
// fragments on the bot's: starting and moving a cursor works the same.
func TestACursorStartsAtTheEndOnceInEitherLayout(t *testing.T) {
	for _, layout := range []string{"one-redis", "queue-redis"} {
		t.Run(layout, func(t *testing.T) {
			ctx := context.Background()
			bot := redistest.Start(t).Client(t)
			jobs := bot
			if layout == "queue-redis" {
				jobs = redistest.Start(t).Client(t)
			}
			s := ragstore.New(bot).WithCursors(jobs)
			for _, id := range []string{"a", "b"} {
				if _, err := s.Append(ctx, ragstore.Fragment{ID: id, Text: id}); err != nil {
					t.Fatal(err)
				}
			}
			const key = "sgjobs:anamnesis:cursor"
			if c, started, err := s.StartAtEnd(ctx, key); err != nil || c != 2 || !started {
				t.Fatalf("first start: %d, %v, %v", c, started, err)
			}
			if _, err := s.Append(ctx, ragstore.Fragment{ID: "c", Text: "c"}); err != nil {
				t.Fatal(err)
			}
			if c, started, err := s.StartAtEnd(ctx, key); err != nil || c != 2 || started {
				t.Fatalf("second start: %d, %v, %v (the cursor must stay)", c, started, err)
			}
			if moved, err := s.MoveCursor(ctx, key, 2, 3); err != nil || !moved {
				t.Fatalf("move: %v, %v", moved, err)
			}
			if n, _ := jobs.Exists(ctx, key).Result(); n != 1 {
				t.Fatal("the cursor is not on the job system's Redis")
			}
			if layout == "queue-redis" {
				if n, _ := bot.Exists(ctx, key).Result(); n != 0 {
					t.Fatal("the cursor is on the bot's Redis")
				}
			}
		})
	}
}
