package e2e

import (
	"context"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/cursors"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

// layouts are the Redis layouts a scenario runs with: everything on
// REDIS_URL, and the job system's keys on a Redis of their own
// (QUEUE_REDIS_URL).
var layouts = []string{"one-redis", "queue-redis"}

// redises are a scenario's Redis servers: bot is REDIS_URL's, queue
// QUEUE_REDIS_URL's (bot itself in the one-redis layout). The testworker's
// recording keys (e2e:*) are on bot, where it opens its own client from
// REDIS_URL, so a scenario reads them the same in both layouts.
type redises struct {
	bot, queue *redistest.Server
	apart      bool
}

func startRedises(t *testing.T, layout string) redises {
	t.Helper()
	bot := redistest.Start(t)
	if layout == "queue-redis" {
		return redises{bot: bot, queue: redistest.Start(t), apart: true}
	}
	return redises{bot: bot, queue: bot}
}

// env adds QUEUE_REDIS_URL to a worker's environment in the split layout.
func (r redises) env(env map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range env {
		out[k] = v
	}
	if r.apart {
		out["QUEUE_REDIS_URL"] = r.queue.URL()
	}
	return out
}

// checkApart asserts, in the split layout, that the bot's Redis holds no
// job-system key and the queue Redis no bot key, and that the job system
// did use its Redis.
func (r redises) checkApart(t *testing.T) {
	t.Helper()
	if !r.apart {
		return
	}
	if keys := scan(t, r.bot.Client(t), "asynq:*", "sgjobs:*"); len(keys) > 0 {
		t.Errorf("job-system keys on the bot's Redis: %v", keys)
	}
	var botKeys []string
	for _, k := range scan(t, r.queue.Client(t), "sg:*", "stargazer_logs:*", "e2e:*") {
		// The anchoring cursors are the job system's despite their prefix
		// (docs/data-model.md, "Which Redis holds each key").
		if !strings.HasPrefix(k, cursors.AnchoringPrefix) {
			botKeys = append(botKeys, k)
		}
	}
	if len(botKeys) > 0 {
		t.Errorf("bot keys on the queue Redis: %v", botKeys)
	}
	if keys := scan(t, r.queue.Client(t), "asynq:*"); len(keys) == 0 {
		t.Error("no asynq key on the queue Redis")
	}
}

// scan lists the keys matching any of the patterns with SCAN.
func scan(t *testing.T, rdb *redis.Client, patterns ...string) []string {
	t.Helper()
	ctx := context.Background()
	var out []string
	for _, p := range patterns {
		iter := rdb.Scan(ctx, 0, p, 1000).Iterator()
		for iter.Next(ctx) {
			out = append(out, iter.Val())
		}
		if err := iter.Err(); err != nil {
			t.Fatal(err)
		}
	}
	return out
}
