package chaos

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/store/prompts"
	"github.com/stargazer/stargazer-jobs/internal/testkit/chaos/check"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

// A prompt write that timed out while Redis was paused may still have
// been applied; its retry must not put the prompt back in the due set
// once a tick has fired it or found it invalid (a seed-5 chaos run saw a
// malformed prompt reported twice that way).
func TestAPromptWrittenAgainAfterItsTickIsNotDueAgain(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	b := &bot{rdb: rdb}
	now := time.Now()
	for _, tt := range []struct {
		name   string
		fields map[string]any
	}{
		{"valid", map[string]any{"id": "p1", "platform": "discord", "channel_id": "1", "user_id": "u", "text": "hi",
			"fire_at": now.UnixMilli(), "interval_seconds": 0, "end_at": 0, "status": "pending", "fire_count": 0}},
		{"malformed", map[string]any{"id": "p2", "platform": "discord", "channel_id": "1", "user_id": "u", "text": "hi",
			"fire_at": now.UnixMilli(), "interval_seconds": 0, "end_at": 0, "status": "pending", "fire_count": "1e400"}},
		{"not a hash", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			id := "p-" + tt.name
			if tt.fields != nil {
				tt.fields["id"] = id
			}
			seed := check.PromptSeed{ID: id, FireAt: now, AddedAt: now}
			if err := b.addPrompt(ctx, seed, tt.fields); err != nil {
				t.Fatal(err)
			}
			fired, malformed, err := prompts.NewStore(rdb).Tick(ctx, now.Add(time.Second), 10)
			if err != nil || len(fired)+len(malformed) != 1 {
				t.Fatalf("first tick: fired %v, malformed %v, %v", fired, malformed, err)
			}
			if err := b.addPrompt(ctx, seed, tt.fields); err != nil { // the retry
				t.Fatal(err)
			}
			fired, malformed, err = prompts.NewStore(rdb).Tick(ctx, now.Add(2*time.Second), 10)
			if err != nil || len(fired)+len(malformed) != 0 {
				t.Fatalf("after the retry: fired %v, malformed %v, %v", fired, malformed, err)
			}
		})
	}
}
