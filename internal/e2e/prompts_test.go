package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/store/prompts"
)

// TestScheduledPromptsFireOnceAcrossWorkerProcesses: three worker
// processes schedule scheduled_prompt_tick every second; prompts due at
// once and prompts due after one of the processes is SIGKILLed each reach
// the fired stream exactly once, in both Redis layouts.
func TestScheduledPromptsFireOnceAcrossWorkerProcesses(t *testing.T) {
	t.Parallel()
	for _, layout := range layouts {
		t.Run(layout, func(t *testing.T) {
			t.Parallel()
			promptsAcrossProcesses(t, layout)
		})
	}
}

func promptsAcrossProcesses(t *testing.T, layout string) {
	r := startRedises(t, layout)
	rdb := r.bot.Client(t)
	ctx := context.Background()
	store := prompts.NewStore(rdb)
	add := func(n int, at time.Time, label string) {
		t.Helper()
		for i := range n {
			if _, err := store.Add(ctx, prompts.New{
				Platform: "matrix", ChannelID: "!room:example.org", UserID: "@u:example.org",
				Text: fmt.Sprintf("%s %d", label, i), FireAt: at,
			}, time.Now()); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitFired := func(n int64) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			l, err := rdb.XLen(ctx, prompts.StreamKey).Result()
			if err == nil && l >= n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("fired stream has %d entries, want %d (err %v)", l, n, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	add(40, time.Now().Add(-time.Minute), "due")
	env := r.env(map[string]string{
		"TASK_INTERVALS": "scheduled_prompt_tick=1s,e2e_plain=off,e2e_single=off",
	})
	var ps []*proc
	for range 3 {
		ps = append(ps, start(t, r.bot.URL(), env))
	}
	defer func() {
		for _, p := range ps[1:] {
			p.term()
		}
	}()
	waitFired(40)

	// A worker dies without a word; what comes due afterwards still fires,
	// once, from the other two.
	ps[0].Kill()
	add(20, time.Now().Add(2*time.Second), "later")
	waitFired(60)
	time.Sleep(3 * time.Second) // ticks that would fire a prompt again

	msgs, err := rdb.XRange(ctx, prompts.StreamKey, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, m := range msgs {
		id, _ := m.Values["prompt_id"].(string)
		seen[id]++
	}
	if len(msgs) != 60 || len(seen) != 60 {
		t.Fatalf("fired stream has %d entries for %d prompts, want 60, each once", len(msgs), len(seen))
	}
	r.checkApart(t)
}
