package embeddedredis_test

import (
	"context"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/embeddedredis"
)

// The embedded Redis must carry asynq end to end and expire keys in real
// time, or demo workers would hold unique locks and leases forever.
func TestEmbeddedRedisRunsAsynqAndExpiresKeys(t *testing.T) {
	r, err := embeddedredis.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	conn := asynq.RedisClientOpt{Addr: r.Addr()}

	done := make(chan string, 1)
	srv := asynq.NewServer(conn, asynq.Config{Concurrency: 1, LogLevel: asynq.ErrorLevel})
	mux := asynq.NewServeMux()
	mux.HandleFunc("ping", func(_ context.Context, t *asynq.Task) error { done <- string(t.Payload()); return nil })
	if err := srv.Start(mux); err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	client := asynq.NewClient(conn)
	defer client.Close()
	if _, err := client.Enqueue(asynq.NewTask("ping", []byte("pong")), asynq.Unique(time.Minute)); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-done:
		if got != "pong" {
			t.Errorf("payload %q", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("task not processed on the embedded Redis")
	}

	rdb := redis.NewClient(&redis.Options{Addr: r.Addr()})
	defer rdb.Close()
	ctx := context.Background()
	if err := rdb.Set(ctx, "short", "x", time.Second).Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1600 * time.Millisecond)
	if n, _ := rdb.Exists(ctx, "short").Result(); n != 0 {
		t.Error("key with a 1s TTL still exists after 1.6s")
	}
}
