package logstore_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/store/logstore"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

var t0 = time.Date(2026, 5, 4, 12, 0, 0, 0, time.UTC)

func lines(n int, msg func(i int) string) []logstore.Line {
	out := make([]logstore.Line, n)
	for i := range out {
		out[i] = logstore.Line{Cursor: fmt.Sprintf("c%d", i), Time: t0.Add(time.Duration(i) * time.Second), Priority: 6, Message: msg(i)}
	}
	return out
}

func TestChunksAreBoundedAndDeterministic(t *testing.T) {
	short := func(i int) string { return fmt.Sprintf("m%d", i) }
	long := func(i int) string { return fmt.Sprintf("%d ", i) + strings.Repeat("y", 700) }
	huge := func(i int) string { return strings.Repeat("é", 5000) }
	tests := []struct {
		name      string
		lines     []logstore.Line
		wantSizes []int
	}{
		{"by line count", lines(120, short), []int{50, 50, 20}},
		{"by bytes", lines(5, long), []int{2, 2, 1}},
		{"an oversize message is cut to fit", lines(2, huge), []int{1, 1}},
		{"nothing", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cs := logstore.Chunks(tt.lines, "node1", "stargazer")
			var sizes []int
			n := 0
			for _, c := range cs {
				sizes = append(sizes, c.Lines)
				if len(c.Text) > logstore.MaxChunkBytes {
					t.Errorf("chunk of %d bytes", len(c.Text))
				}
				if c.FirstCursor != tt.lines[n].Cursor || c.LastCursor != tt.lines[n+c.Lines-1].Cursor ||
					!c.Start.Equal(tt.lines[n].Time) || !c.End.Equal(tt.lines[n+c.Lines-1].Time) || c.Host != "node1" || c.Unit != "stargazer" {
					t.Errorf("chunk metadata %+v", c)
				}
				n += c.Lines
			}
			if fmt.Sprint(sizes) != fmt.Sprint(tt.wantSizes) {
				t.Errorf("chunk sizes %v, want %v", sizes, tt.wantSizes)
			}
			if again := logstore.Chunks(tt.lines, "node1", "stargazer"); fmt.Sprint(again) != fmt.Sprint(cs) {
				t.Error("chunking the same lines twice differs")
			}
		})
	}
}

func TestChunkTextCarriesTimeAndPriority(t *testing.T) {
	ls := lines(3, func(i int) string { return fmt.Sprintf("m%d", i) })
	ls[1].Priority = 3
	c := logstore.Chunks(ls, "h", "u")[0]
	want := "2026-05-04T12:00:00.000Z info m0\n2026-05-04T12:00:01.000Z err m1\n2026-05-04T12:00:02.000Z info m2\n"
	if c.Text != want || c.Priority != 3 {
		t.Errorf("text %q priority %d", c.Text, c.Priority)
	}
}

func TestStorePutsChunksWithEmbeddingsAndPrunesOldOnes(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	s := logstore.New(rdb)
	ctx := context.Background()
	cs := logstore.Chunks(lines(60, func(i int) string { return fmt.Sprint(i) }), "h", "u")
	vecs := [][]float32{{0.5, -1}, {0.25, 2}}
	if err := s.Put(ctx, cs, vecs, "emb-model", t0); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, cs, vecs, "emb-model", t0); err != nil {
		t.Fatal(err)
	}
	if n := rdb.ZCard(ctx, logstore.IndexKey).Val(); n != 2 {
		t.Errorf("index holds %d chunks after storing 2 twice", n)
	}
	got, vec, model, ok, err := s.Get(ctx, cs[1].ID)
	if err != nil || !ok || got.Text != cs[1].Text || fmt.Sprint(vec) != "[0.25 2]" || model != "emb-model" || got.Lines != 10 || !got.Start.Equal(cs[1].Start) {
		t.Errorf("get: %+v %v %q ok=%v err=%v", got, vec, model, ok, err)
	}
	have, _ := s.Exists(ctx, []string{cs[0].ID, "nope"})
	if fmt.Sprint(have) != "[true false]" {
		t.Errorf("exists %v", have)
	}
	n, err := s.Prune(ctx, cs[1].Start, 100)
	if err != nil || n != 1 {
		t.Fatalf("pruned %d, err %v", n, err)
	}
	if have, _ := s.Exists(ctx, []string{cs[0].ID, cs[1].ID}); fmt.Sprint(have) != "[false true]" {
		t.Errorf("after prune: exists %v", have)
	}
}

func TestCursorAdvancesOnlyWhenTold(t *testing.T) {
	srv := redistest.Start(t)
	s := logstore.New(srv.Client(t))
	ctx := context.Background()
	first, err := s.StartAt(ctx, "h", "u", t0)
	if err != nil || !first.Equal(t0) {
		t.Fatalf("start %v err %v", first, err)
	}
	if again, _ := s.StartAt(ctx, "h", "u", t0.Add(time.Hour)); !again.Equal(t0) {
		t.Errorf("a retried first run moved the start to %v", again)
	}
	if err := s.Begin(ctx, "h", "u", "c9"); err != nil {
		t.Fatal(err)
	}
	c, _ := s.Cursor(ctx, "h", "u")
	if c.After != "" || c.PendingEnd != "c9" || !c.Since.Equal(t0) {
		t.Errorf("pending: %+v", c)
	}
	if err := s.Advance(ctx, "h", "u", "c9", t0); err != nil {
		t.Fatal(err)
	}
	if c, _ := s.Cursor(ctx, "h", "u"); c.After != "c9" || c.PendingEnd != "" {
		t.Errorf("advanced: %+v", c)
	}
	if c, _ := s.Cursor(ctx, "other-host", "u"); c.After != "" {
		t.Errorf("cursors are per node: %+v", c)
	}
}
