package monitor_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/store/msgcache"
	"github.com/stargazer/stargazer-jobs/internal/testkit/leak"
	"github.com/stargazer/stargazer-jobs/internal/testkit/poll"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

// dumpRedis reads every key's value as text, whatever its type.
func dumpRedis(t *testing.T, rdb *redis.Client) string {
	t.Helper()
	ctx := context.Background()
	var b strings.Builder
	iter := rdb.Scan(ctx, 0, "*", 1000).Iterator()
	for iter.Next(ctx) {
		key := iter.Val()
		typ, err := rdb.Type(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		var v any
		switch typ {
		case "string":
			v, err = rdb.Get(ctx, key).Result()
		case "hash":
			v, err = rdb.HGetAll(ctx, key).Result()
		case "list":
			v, err = rdb.LRange(ctx, key, 0, -1).Result()
		case "set":
			v, err = rdb.SMembers(ctx, key).Result()
		case "zset":
			v, err = rdb.ZRangeWithScores(ctx, key, 0, -1).Result()
		case "stream":
			v, err = rdb.XRange(ctx, key, "-", "+").Result()
		default:
			t.Fatalf("key %s of type %s", key, typ)
		}
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s %s %v\n", key, typ, v)
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// TestAnLLMEchoingTheKeyNeverLeaksItIntoErrorsLogsOrRedis runs 401 tasks on
// a real worker against an LLM endpoint that echoes the API key at offset
// 0, 1, ... 400 of its answer, in each way an answer is quoted into an
// error, then looks for any 8 characters of the key in the tasks' errors
// (as the dashboard's archived tab shows them), the worker's log and every
// key of Redis.
func TestAnLLMEchoingTheKeyNeverLeaksItIntoErrorsLogsOrRedis(t *testing.T) {
	const secret = "sk-or-v1-0f3c9a7e5b1d4c2a8e6f0b9d7c5a3e1f2b4d6c8a0e9f7d5b"
	const runs = 401
	var calls atomic.Int64
	llm := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := int(calls.Add(1) - 1)
		key := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		if key != secret {
			http.Error(w, "the worker did not send the key", 500)
			return
		}
		echo := strings.Repeat("x", n%runs) + "invalid key " + key + " for this model"
		switch n % 4 {
		case 0:
			http.Error(w, echo, http.StatusUnauthorized)
		case 1:
			http.Error(w, echo, http.StatusBadGateway)
		case 2:
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprint(w, echo) // a 200 that is not JSON
		case 3:
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"error":{"message":%q}}`, echo)
		}
	}))
	defer llm.Close()

	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := context.Background()
	ch := msgcache.Channel{Platform: "discord", ID: "1"}
	if _, _, err := msgcache.New(rdb).Log(ctx, msgcache.Message{Channel: ch, MessageID: "m1", UserID: "u1", UserName: "ann", Text: "hello", Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	w := startWorkerProcess(t, srv.URL(), map[string]string{
		"MONITOR_TOKEN": adminToken, "LLM_BASE_URL": llm.URL, "API_KEY": secret, "LOG_LEVEL": "debug",
	})
	admin := map[string]string{"Authorization": "Bearer " + adminToken, "Content-Type": "application/json"}
	for range runs {
		body := `{"task":"channel_heartbeat_channel","payload":{"platform":"discord","channel_id":"1"},"max_retry":0}`
		if code, resp, _ := w.do(t, request{"POST", "/api/v1/tasks", body, admin}); code != 201 {
			t.Fatalf("enqueue = %d %s", code, resp)
		}
	}
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: srv.Addr})
	defer insp.Close()
	poll.Until(t, "every run archived", func() bool {
		info, err := insp.GetQueueInfo("default")
		return err == nil && info.Archived == runs
	})
	if n := calls.Load(); n < runs {
		t.Fatalf("the LLM was called %d times, want %d", n, runs)
	}

	_, archived, _ := w.do(t, request{"GET", fmt.Sprintf("/dashboard/api/queues/default/archived_tasks?page=1&size=%d", runs), "", admin})
	tasks, err := insp.ListArchivedTasks("default", asynq.PageSize(runs))
	if err != nil {
		t.Fatal(err)
	}
	var errs strings.Builder
	for _, ti := range tasks {
		errs.WriteString(ti.LastErr + "\n")
	}
	if got := strings.Count(errs.String(), "[REDACTED]"); got < runs/2 {
		t.Fatalf("only %d of %d task errors quote the redacted key: the test did not exercise the echo\n%s", got, runs, errs.String()[:2000])
	}
	for where, text := range map[string]string{
		"the tasks' errors":       errs.String(),
		"the dashboard's archive": archived,
		"the worker's log":        w.Logs(),
		"Redis":                   dumpRedis(t, rdb),
	} {
		if sub, ok := leak.Find(text, secret); ok {
			i := strings.Index(text, sub)
			t.Errorf("%s show %q of the key: …%s…", where, sub, text[max(0, i-200):min(len(text), i+100)])
		}
	}
}
