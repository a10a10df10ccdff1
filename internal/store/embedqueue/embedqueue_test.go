package embedqueue_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/store/embedqueue"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/jobs"
)

func keys(from, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("sg:msg:discord:1:%d", from+i)
	}
	return out
}

// batches returns the key counts of the embed_messages tasks in state.
func batches(t *testing.T, insp *asynq.Inspector, state string) []int {
	t.Helper()
	var list []*asynq.TaskInfo
	var err error
	switch state {
	case "pending":
		list, err = insp.ListPendingTasks(jobs.QueueEmbeddings)
	case "scheduled":
		list, err = insp.ListScheduledTasks(jobs.QueueEmbeddings)
	}
	if err != nil && !errors.Is(err, asynq.ErrQueueNotFound) {
		t.Fatal(err)
	}
	var sizes []int
	for _, ti := range list {
		p, err := jobs.DecodePayload(mustSpec(t), ti.Payload)
		if err != nil || ti.Type != jobs.EmbedMessages || ti.MaxRetry != mustSpec(t).MaxRetry {
			t.Fatalf("task %+v: %v", ti, err)
		}
		sizes = append(sizes, len(p.(*jobs.EmbedBatch).Keys))
	}
	slices.Sort(sizes)
	return sizes
}

func mustSpec(t *testing.T) jobs.Spec {
	s, ok := jobs.Lookup(jobs.EmbedMessages)
	if !ok {
		t.Fatal("no embed_messages spec")
	}
	return s
}

func TestAddQueuesEachMessageOnceInBatches(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	conn := asynq.RedisClientOpt{Addr: srv.Addr}
	client, insp := asynq.NewClient(conn), asynq.NewInspector(conn)
	defer client.Close()
	defer insp.Close()
	q := embedqueue.New(srv.Client(t), client)

	n, err := q.Add(ctx, append(keys(0, 150), keys(0, 3)...))
	if err != nil || n != 150 {
		t.Fatalf("first add queued %d, %v; want 150", n, err)
	}
	if got := batches(t, insp, "pending"); !slices.Equal(got, []int{22, 64, 64}) {
		t.Fatalf("batches %v, want 64+64+22", got)
	}
	n, err = q.Add(ctx, keys(100, 60)) // 50 already waiting, 10 new
	if err != nil || n != 10 {
		t.Fatalf("second add queued %d, %v; want the 10 new ones", n, err)
	}
	if p, _ := q.Pending(ctx); p != 160 {
		t.Fatalf("pending %d, want 160", p)
	}
	if err := q.Done(ctx, keys(0, 5)); err != nil {
		t.Fatal(err)
	}
	if n, _ := q.Add(ctx, keys(0, 10)); n != 5 {
		t.Fatalf("after done, add queued %d, want the 5 cleared ones", n)
	}
}

func TestStaleMarksDoNotBlockAMessageForever(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := context.Background()
	client := asynq.NewClient(asynq.RedisClientOpt{Addr: srv.Addr})
	defer client.Close()
	// A mark left by a crash long ago, and a fresh one.
	old := time.Now().Add(-embedqueue.PendingTTL - time.Minute).UnixMilli()
	rdb.ZAdd(ctx, embedqueue.PendingKey, redisZ(old, keys(0, 1)[0]), redisZ(time.Now().UnixMilli(), keys(1, 1)[0]))
	if n, err := embedqueue.New(rdb, client).Add(ctx, keys(0, 2)); n != 1 || err != nil {
		t.Fatalf("queued %d, %v; want only the stale one", n, err)
	}
}

type failingEnqueuer struct{ after int }

func (f *failingEnqueuer) EnqueueContext(ctx context.Context, t *asynq.Task, _ ...asynq.Option) (*asynq.TaskInfo, error) {
	if f.after == 0 {
		return nil, errors.New("redis: connection refused")
	}
	f.after--
	return &asynq.TaskInfo{}, nil
}

func TestAFailedEnqueueUnmarksWhatItDidNotQueue(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	q := embedqueue.New(srv.Client(t), &failingEnqueuer{after: 1})
	n, err := q.Add(ctx, keys(0, 100))
	if err == nil || n != 64 {
		t.Fatalf("queued %d, %v; want the first batch and an error", n, err)
	}
	if p, _ := q.Pending(ctx); p != 64 {
		t.Fatalf("pending %d, want only the queued 64", p)
	}
}

func TestInvalidKeysAreRefusedBeforeAnythingIsMarked(t *testing.T) {
	srv := redistest.Start(t)
	q := embedqueue.New(srv.Client(t), &failingEnqueuer{after: 10})
	if _, err := q.Add(context.Background(), []string{"sg:msg:discord:1:1", "user:42"}); err == nil {
		t.Fatal("a non-message key was accepted")
	}
	if p, _ := q.Pending(context.Background()); p != 0 {
		t.Fatalf("pending %d after a refused add", p)
	}
}

func TestDeferSchedulesTheBatchAndKeepsItPending(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	conn := asynq.RedisClientOpt{Addr: srv.Addr}
	client, insp := asynq.NewClient(conn), asynq.NewInspector(conn)
	defer client.Close()
	defer insp.Close()
	q := embedqueue.New(srv.Client(t), client)
	if err := q.Defer(ctx, keys(0, 3), time.Hour); err != nil {
		t.Fatal(err)
	}
	if got := batches(t, insp, "scheduled"); !slices.Equal(got, []int{3}) {
		t.Fatalf("scheduled batches %v", got)
	}
	if n, _ := q.Add(ctx, keys(0, 3)); n != 0 {
		t.Fatalf("a deferred message was queued again (%d)", n)
	}
}

func redisZ(score int64, member string) redis.Z {
	return redis.Z{Score: float64(score), Member: member}
}
