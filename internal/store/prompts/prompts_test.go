package prompts_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/store/prompts"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

var t0 = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

func newStore(t *testing.T) (*prompts.Store, *redis.Client) {
	rdb := redistest.Start(t).Client(t)
	return prompts.NewStore(rdb), rdb
}

func add(t *testing.T, s *prompts.Store, n prompts.New) prompts.Prompt {
	t.Helper()
	if n.Platform == "" {
		n.Platform, n.ChannelID, n.UserID, n.Text = "discord", "123", "u1", "remind me"
	}
	p, err := s.Add(context.Background(), n, t0)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func streamLen(t *testing.T, rdb *redis.Client) int64 {
	n, err := rdb.XLen(context.Background(), prompts.StreamKey).Result()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestOneShotPromptFiresOnceAndIsMarkedExecuted(t *testing.T) {
	ctx := context.Background()
	s, rdb := newStore(t)
	p := add(t, s, prompts.New{FireAt: t0.Add(time.Minute)})

	if f, _, _ := s.Tick(ctx, t0.Add(30*time.Second), 100); len(f) != 0 {
		t.Fatalf("fired %d before due", len(f))
	}
	f, _, err := s.Tick(ctx, t0.Add(2*time.Minute), 100)
	if err != nil || len(f) != 1 || f[0].PromptID != p.ID || f[0].Occurrence != 1 || !f[0].ScheduledFor.Equal(p.FireAt) {
		t.Fatalf("tick = %+v, %v", f, err)
	}
	if f, _, _ := s.Tick(ctx, t0.Add(3*time.Minute), 100); len(f) != 0 {
		t.Fatalf("fired again: %+v", f)
	}
	got, _ := s.Get(ctx, p.ID)
	if got.Status != prompts.Executed || got.FireCount != 1 || got.FinishedAt.IsZero() {
		t.Errorf("after firing: %+v", got)
	}
	msgs, err := rdb.XRange(ctx, prompts.StreamKey, "-", "+").Result()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("stream = %v, %v", msgs, err)
	}
	v := msgs[0].Values
	if v["prompt_id"] != p.ID || v["text"] != "remind me" || v["channel_id"] != "123" || v["recurring"] != "0" {
		t.Errorf("stream entry %v", v)
	}
}

func TestRecurringPromptReschedulesAndCoalescesMissedRuns(t *testing.T) {
	ctx := context.Background()
	s, rdb := newStore(t)
	p := add(t, s, prompts.New{FireAt: t0, Interval: time.Hour, EndAt: t0.Add(10 * time.Hour)})

	if f, _, _ := s.Tick(ctx, t0, 10); len(f) != 1 {
		t.Fatalf("first tick fired %d", len(f))
	}
	got, _ := s.Get(ctx, p.ID)
	if got.Status != prompts.Pending || !got.FireAt.Equal(t0.Add(time.Hour)) {
		t.Fatalf("after first fire: %+v", got)
	}
	// Nothing ticked for 5.5 hours: one catch-up fire, next on the grid.
	if f, _, _ := s.Tick(ctx, t0.Add(5*time.Hour+30*time.Minute), 10); len(f) != 1 || f[0].Occurrence != 2 {
		t.Fatalf("catch-up tick = %+v", f)
	}
	got, _ = s.Get(ctx, p.ID)
	if !got.FireAt.Equal(t0.Add(6 * time.Hour)) {
		t.Errorf("next fire = %v, want %v", got.FireAt, t0.Add(6*time.Hour))
	}
	// Past end_at: the last fire executes it.
	if f, _, _ := s.Tick(ctx, t0.Add(10*time.Hour), 10); len(f) != 1 {
		t.Fatalf("last tick = %+v", f)
	}
	got, _ = s.Get(ctx, p.ID)
	if got.Status != prompts.Executed || got.FireCount != 3 {
		t.Errorf("after end: %+v", got)
	}
	if n := streamLen(t, rdb); n != 3 {
		t.Errorf("stream has %d entries, want 3", n)
	}
}

func TestConcurrentTicksFireEachPromptExactlyOnce(t *testing.T) {
	ctx := context.Background()
	s, rdb := newStore(t)
	const n = 300
	for i := 0; i < n; i++ {
		add(t, s, prompts.New{FireAt: t0.Add(time.Duration(i) * time.Millisecond)})
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		seen  = map[string]int{}
		start = make(chan struct{})
	)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for {
				f, _, err := s.Tick(ctx, t0.Add(time.Minute), 7)
				if err != nil {
					t.Error(err)
					return
				}
				if len(f) == 0 {
					return
				}
				mu.Lock()
				for _, x := range f {
					seen[x.PromptID]++
				}
				mu.Unlock()
			}
		}()
	}
	close(start)
	wg.Wait()
	if len(seen) != n {
		t.Fatalf("fired %d distinct prompts, want %d", len(seen), n)
	}
	for id, c := range seen {
		if c != 1 {
			t.Errorf("prompt %s fired %d times", id, c)
		}
	}
	if got := streamLen(t, rdb); got != n {
		t.Errorf("stream has %d entries, want %d", got, n)
	}
}

func TestCancel(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	p := add(t, s, prompts.New{FireAt: t0.Add(time.Minute), Interval: time.Hour})
	if err := s.Cancel(ctx, p.ID, t0); err != nil {
		t.Fatal(err)
	}
	if f, _, _ := s.Tick(ctx, t0.Add(time.Hour), 10); len(f) != 0 {
		t.Errorf("cancelled prompt fired")
	}
	if err := s.Cancel(ctx, p.ID, t0); !errors.Is(err, prompts.ErrNotPending) {
		t.Errorf("second cancel: %v", err)
	}
	if err := s.Cancel(ctx, "nope", t0); !errors.Is(err, prompts.ErrNotFound) {
		t.Errorf("cancel unknown: %v", err)
	}
	if l, _ := s.ListPending(ctx, 10); len(l) != 0 {
		t.Errorf("pending after cancel: %+v", l)
	}
}

func TestCleanupDeletesOnlyFinishedPromptsOlderThanTheCutoff(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	old := add(t, s, prompts.New{FireAt: t0})
	cancelled := add(t, s, prompts.New{FireAt: t0.Add(time.Hour)})
	recent := add(t, s, prompts.New{FireAt: t0.Add(6 * 24 * time.Hour)})
	pending := add(t, s, prompts.New{FireAt: t0.Add(30 * 24 * time.Hour)})
	s.Tick(ctx, t0, 10)
	s.Cancel(ctx, cancelled.ID, t0)
	s.Tick(ctx, t0.Add(6*24*time.Hour), 10)

	n, err := s.Cleanup(ctx, t0.Add(8*24*time.Hour), 7*24*time.Hour)
	if err != nil || n != 2 {
		t.Fatalf("cleanup = %d, %v; want 2", n, err)
	}
	for _, id := range []string{old.ID, cancelled.ID} {
		if _, err := s.Get(ctx, id); !errors.Is(err, prompts.ErrNotFound) {
			t.Errorf("%s still there: %v", id, err)
		}
	}
	for _, id := range []string{recent.ID, pending.ID} {
		if _, err := s.Get(ctx, id); err != nil {
			t.Errorf("%s deleted: %v", id, err)
		}
	}
	if n, _ := s.Cleanup(ctx, t0.Add(8*24*time.Hour), 7*24*time.Hour); n != 0 {
		t.Errorf("second cleanup deleted %d", n)
	}
}

func TestCleanupWorksInBatches(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	const n = prompts.CleanupBatch*2 + 17
	for i := 0; i < n; i++ {
		add(t, s, prompts.New{FireAt: t0})
	}
	for {
		if f, _, _ := s.Tick(ctx, t0, 1000); len(f) == 0 {
			break
		}
	}
	got, err := s.Cleanup(ctx, t0.Add(8*24*time.Hour), 7*24*time.Hour)
	if err != nil || got != n {
		t.Fatalf("cleanup = %d, %v; want %d", got, err, n)
	}
}

func TestAddValidates(t *testing.T) {
	s, _ := newStore(t)
	tests := []struct {
		name string
		n    prompts.New
	}{
		{"no channel", prompts.New{Platform: "discord", Text: "x", FireAt: t0}},
		{"no text", prompts.New{Platform: "discord", ChannelID: "1", FireAt: t0}},
		{"no fire time", prompts.New{Platform: "discord", ChannelID: "1", Text: "x"}},
		{"interval too short", prompts.New{Platform: "discord", ChannelID: "1", Text: "x", FireAt: t0, Interval: time.Second}},
		{"end on one-shot", prompts.New{Platform: "discord", ChannelID: "1", Text: "x", FireAt: t0, EndAt: t0.Add(time.Hour)}},
		{"bad utf-8", prompts.New{Platform: "discord", ChannelID: "1", Text: "\xff", FireAt: t0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := s.Add(context.Background(), tt.n, t0); !errors.Is(err, prompts.ErrInvalid) {
				t.Errorf("err = %v", err)
			}
		})
	}
}
