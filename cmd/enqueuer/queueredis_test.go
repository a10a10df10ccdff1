package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/cursors"
	"github.com/stargazer/stargazer-jobs/internal/store/prompts"
	"github.com/stargazer/stargazer-jobs/internal/store/ragstore"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// With QUEUE_REDIS_URL each command reads and writes where the worker
// keeps the keys: tasks and cursors on the queue Redis, prompts and the
// RAG fragments on the bot's.
func TestCommandsUseTheQueueRedisForJobStateAndTheBotsForItsData(t *testing.T) {
	bot, queue := redistest.Start(t), redistest.Start(t)
	botc, queuec := bot.Client(t), queue.Client(t)
	ctx := context.Background()
	env := map[string]string{"REDIS_URL": bot.URL(), "QUEUE_REDIS_URL": queue.URL()}

	if code, _, stderr := runCLI(env, "run", jobs.ScheduledPromptCleanup, "--payload", `{"days_to_keep": 3}`); code != exitOK {
		t.Fatalf("run: exit %d: %s", code, stderr)
	}
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: queue.Addr})
	defer insp.Close()
	if qs, err := insp.Queues(); err != nil || len(qs) == 0 {
		t.Fatalf("no queue on the queue Redis: %v, %v", qs, err)
	}

	code, out, stderr := runCLI(env, "prompts", "add", "--platform", "discord", "--channel", "42", "--text", "hi", "--in", "1h")
	if code != exitOK {
		t.Fatalf("prompts add: exit %d: %s", code, stderr)
	}
	if _, err := prompts.NewStore(botc).Get(ctx, strings.TrimSpace(out)); err != nil {
		t.Fatalf("the prompt is not on the bot's Redis: %v", err)
	}

	rag := ragstore.New(botc)
	for _, id := range []string{"a", "b", "c"} {
		if _, err := rag.Append(ctx, ragstore.Fragment{ID: id, Text: id}); err != nil {
			t.Fatal(err)
		}
	}
	queuec.Set(ctx, cursors.AnamnesisKey, 1, 0)
	code, out, stderr = runCLI(env, "cursors", "list", jobs.AnamnesisDigest, "--json")
	var es []cursors.Entry
	if err := json.Unmarshal([]byte(out), &es); code != exitOK || err != nil || len(es) != 1 || es[0].Position != "1" ||
		es[0].Pending == nil || *es[0].Pending != 2 {
		t.Fatalf("cursors list: exit %d %v %s %s", code, err, out, stderr)
	}
	if code, _, stderr := runCLI(env, "cursors", "set", jobs.AnamnesisDigest, "fragments", "end"); code != exitOK {
		t.Fatalf("cursors set: exit %d: %s", code, stderr)
	}
	if v, _ := queuec.Get(ctx, cursors.AnamnesisKey).Int64(); v != 3 {
		t.Errorf("cursor on the queue Redis %d, want 3", v)
	}
	if code, _, stderr := runCLI(env, "status"); code != exitOK {
		t.Errorf("status: exit %d: %s", code, stderr)
	}

	for _, p := range []string{"asynq:*", "sgjobs:*"} {
		if keys, _ := botc.Keys(ctx, p).Result(); len(keys) > 0 {
			t.Errorf("job-system keys on the bot's Redis: %v", keys)
		}
	}
	if keys, _ := queuec.Keys(ctx, "sg:*").Result(); len(keys) > 0 {
		t.Errorf("bot keys on the queue Redis: %v", keys)
	}
}

// An unreachable queue Redis is named as such.
func TestAnUnreachableQueueRedisIsNamed(t *testing.T) {
	bot := redistest.Start(t)
	env := map[string]string{"REDIS_URL": bot.URL(), "QUEUE_REDIS_URL": "redis://" + redistest.FreeAddr(t) + "/0"}
	code, _, stderr := runCLI(env, "locks")
	if code != exitFailure || !strings.Contains(stderr, "QUEUE_REDIS_URL") {
		t.Fatalf("exit %d: %s", code, stderr)
	}
}
