package handlers_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/handlers"
	"github.com/stargazer/stargazer-jobs/internal/store/prompts"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/syncbuf"
	"github.com/stargazer/stargazer-jobs/jobs"
)

type itemCounter struct {
	mu sync.Mutex
	n  map[string]float64
}

func (c *itemCounter) AddItems(task, item string, n float64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n[task+"/"+item] += n
}

// A malformed prompt is logged once by id, counted as an invalid item, and
// does not fail the tick, which fires the valid prompts.
func TestPromptTickLogsAndCountsMalformedPromptsOnce(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	now := time.Now()
	store := prompts.NewStore(rdb)
	for range 2 {
		if _, err := store.Add(ctx, prompts.New{Platform: "discord", ChannelID: "1", Text: "hi", FireAt: now.Add(-time.Minute)}, now); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{"bad-fire-at", "bad-interval"} {
		h := map[string]any{"status": "pending", "platform": "discord", "channel_id": "1", "text": "hi",
			"fire_at": strconv.FormatInt(now.Add(-time.Minute).UnixMilli(), 10), "interval_seconds": "0"}
		if id == "bad-fire-at" {
			h["fire_at"] = "soon"
		} else {
			h["interval_seconds"] = ""
		}
		rdb.HSet(ctx, prompts.KeyPrefix+id, h)
		rdb.ZAdd(ctx, prompts.DueKey, redis.Z{Score: float64(now.Add(-time.Minute).UnixMilli()), Member: id})
	}

	var logs syncbuf.Buffer
	counter := &itemCounter{n: map[string]float64{}}
	mux := asynq.NewServeMux()
	deps := handlers.Deps{Redis: rdb, Logger: slog.New(slog.NewJSONHandler(&logs, nil)), Counter: counter}
	handlers.Register(mux, deps, jobs.Catalog(), jobs.Redis|jobs.ChatLLM)
	conn := asynq.RedisClientOpt{Addr: srv.Addr}
	asrv := asynq.NewServer(conn, asynq.Config{Concurrency: 1, Queues: jobs.Queues(), LogLevel: asynq.FatalLevel})
	if err := asrv.Start(mux); err != nil {
		t.Fatal(err)
	}
	defer asrv.Shutdown()
	client := asynq.NewClient(conn)
	defer client.Close()
	insp := asynq.NewInspector(conn)
	defer insp.Close()

	for run := range 2 {
		info, err := client.Enqueue(asynq.NewTask(jobs.ScheduledPromptTick, []byte(`{"limit":100}`)),
			asynq.Queue(jobs.QueueCritical), asynq.Retention(time.Hour), asynq.MaxRetry(0))
		if err != nil {
			t.Fatal(err)
		}
		var got *asynq.TaskInfo
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			got, err = insp.GetTaskInfo(jobs.QueueCritical, info.ID)
			if err == nil && (got.State == asynq.TaskStateCompleted || got.State == asynq.TaskStateArchived) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("run %d did not finish: %v", run, err)
			}
		}
		if got.State != asynq.TaskStateCompleted {
			t.Fatalf("run %d failed: %s", run, got.LastErr)
		}
		var res map[string]any
		_ = json.Unmarshal(got.Result, &res)
		want := map[int]float64{0: 2, 1: 0}[run]
		if res["fired"] != want || res["invalid"] != want {
			t.Errorf("run %d result %v, want fired and invalid %v", run, res, want)
		}
	}
	for _, id := range []string{"bad-fire-at", "bad-interval"} {
		if n := strings.Count(logs.String(), `"prompt_id":"`+id+`"`); n != 1 {
			t.Errorf("%s logged %d times, want once:\n%s", id, n, logs.String())
		}
	}
	if c := counter.n[jobs.ScheduledPromptTick+"/invalid"]; c != 2 {
		t.Errorf("invalid items counted %v, want 2", c)
	}
}
