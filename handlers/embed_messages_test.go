package handlers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/queue/ratelimit"
	"github.com/stargazer/stargazer-jobs/internal/store/embedqueue"
	"github.com/stargazer/stargazer-jobs/internal/store/msgcache"
)

func payloadOf(keys []string) string { return `{"keys":["` + strings.Join(keys, `","`) + `"]}` }

// seedMessages caches n messages in general with texts "message i" and
// marks them pending as the backfill would.
func seedMessages(t *testing.T, d Deps, from, n int) []string {
	t.Helper()
	ctx := context.Background()
	store := msgcache.New(d.Redis)
	var keys []string
	for i := from; i < from+n; i++ {
		k, _, err := store.Log(ctx, msgcache.Message{Channel: general, MessageID: fmt.Sprint(i), Text: fmt.Sprintf("message %d", i), Time: time.UnixMilli(int64(1_700_000_000_000 + i))})
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	return keys
}

func pending(t *testing.T, d Deps) int64 {
	t.Helper()
	n, err := embedqueue.New(d.Redis, nil).Pending(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestEmbedMessagesStoresVectorsOnceAndSkipsWhatNeedsNone(t *testing.T) {
	ctx := context.Background()
	env := newTestEnv(t)
	emb := &embeddingsFake{}
	d := env.deps(t, emb.server(t))
	store := msgcache.New(d.Redis)
	keys := seedMessages(t, d, 1, 3)
	if _, err := store.SetEmbedding(ctx, keys[2], []float32{4, 4, 4}, "old-model"); err != nil {
		t.Fatal(err)
	}
	empty, _, _ := store.Log(ctx, msgcache.Message{Channel: general, MessageID: "empty", Time: time.Now()})
	gone := msgcache.MessageKey(general, "deleted")
	all := append(slices.Clone(keys), empty, gone, keys[0])
	if n, err := embedqueue.New(d.Redis, env.client).Add(ctx, all); err != nil || n != 5 {
		t.Fatalf("queued %d, %v", n, err)
	}

	res, err := run(t, ctx, d, "embed_messages", payloadOf(all))
	if err != nil {
		t.Fatal(err)
	}
	if res["embedded"] != 2 || res["already_embedded"] != 1 || res["missing"] != 2 {
		t.Fatalf("result %v", res)
	}
	if emb.callCount() != 1 || !slices.Equal(emb.inputs, []string{"message 1", "message 2"}) {
		t.Fatalf("embeddings calls %d with %q, want one call with the two texts", emb.callCount(), emb.inputs)
	}
	raw, _ := d.Redis.HGet(ctx, keys[0], "embedding").Bytes()
	model, _ := d.Redis.HGet(ctx, keys[0], "embedding_model").Result()
	if v := msgcache.DecodeVector(raw); !slices.Equal(v, []float32{9, 1, -0.5}) || model != "text-embedding-3-small" {
		t.Fatalf("stored %v by %q", v, model)
	}
	if p := pending(t, d); p != 0 {
		t.Fatalf("%d messages still marked pending", p)
	}

	again, err := run(t, ctx, d, "embed_messages", payloadOf(all))
	if err != nil || again["embedded"] != 0 || again["already_embedded"] != 3 || emb.callCount() != 1 {
		t.Fatalf("second run = %v, %v; %d calls", again, err, emb.callCount())
	}
}

func TestEmbedLimiterCapsCallsAcrossWorkersAndDefersTheRest(t *testing.T) {
	ctx := context.Background()
	env := newTestEnv(t)
	emb := &embeddingsFake{}
	d := env.deps(t, emb.server(t))
	q := embedqueue.New(d.Redis, env.client)
	// One call a minute on average, bursts of two, shared by two workers.
	workerA, workerB := d, d
	workerA.EmbedLimiter = ratelimit.New(env.redis.Client(t), "sgjobs:ratelimit:embeddings", 1, 2)
	workerB.EmbedLimiter = ratelimit.New(env.redis.Client(t), "sgjobs:ratelimit:embeddings", 1, 2)

	var batches [][]string
	for i := range 5 {
		b := seedMessages(t, d, 10*i, 3)
		if _, err := q.Add(ctx, b); err != nil {
			t.Fatal(err)
		}
		batches = append(batches, b)
	}
	deferred := 0
	for i, b := range batches {
		w := workerA
		if i%2 == 1 {
			w = workerB
		}
		res, err := run(t, ctx, w, "embed_messages", payloadOf(b))
		if err != nil {
			t.Fatal(err)
		}
		if res["deferred"] == 3 {
			deferred++
		}
	}
	if emb.callCount() != 2 || deferred != 3 {
		t.Fatalf("%d embeddings calls and %d deferred batches, want the burst of 2 and 3 deferred", emb.callCount(), deferred)
	}
	later := env.embedTasks(t, true)
	if len(later) != 3 {
		t.Fatalf("%d batches scheduled for later, want 3", len(later))
	}
	scheduled, err := env.insp.ListScheduledTasks("embeddings")
	if err != nil {
		t.Fatal(err)
	}
	for _, ti := range scheduled {
		if in := time.Until(ti.NextProcessAt); in <= 0 || in > time.Hour {
			t.Errorf("deferred batch runs in %s, want within (0, 1h]", in)
		}
	}
	// The deferred messages stay marked: a backfill does not queue them again.
	if p := pending(t, d); p != 9 {
		t.Fatalf("pending %d, want the 9 deferred", p)
	}
	if n, _ := q.Add(ctx, later[0]); n != 0 {
		t.Fatalf("a deferred message was queued again")
	}
}

func TestEmbedFailuresAreClassified(t *testing.T) {
	tests := []struct {
		mode        string
		wantSkip    bool
		wantKind    func(error) bool
		keepPending bool
	}{
		{"429", false, func(err error) bool {
			var rl *llm.RateLimitError
			return errors.As(err, &rl) && rl.RetryAfter() == 7*time.Second
		}, true},
		{"malformed", true, func(err error) bool { return errors.Is(err, llm.ErrMalformed) }, false},
		{"400", true, func(err error) bool {
			var se *llm.StatusError
			return errors.As(err, &se) && se.Code == 400
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			ctx := context.Background()
			env := newTestEnv(t)
			emb := &embeddingsFake{mode: tt.mode}
			d := env.deps(t, emb.server(t))
			keys := seedMessages(t, d, 1, 2)
			if _, err := embedqueue.New(d.Redis, env.client).Add(ctx, keys); err != nil {
				t.Fatal(err)
			}
			_, err := run(t, ctx, d, "embed_messages", payloadOf(keys))
			if err == nil || !tt.wantKind(err) || errors.Is(err, asynq.SkipRetry) != tt.wantSkip {
				t.Fatalf("err = %v; want its kind and SkipRetry=%v", err, tt.wantSkip)
			}
			if strings.Contains(err.Error(), "sk-embed-secret") {
				t.Fatal("the API key is in the error")
			}
			if has, _ := msgcache.New(d.Redis).HasEmbedding(ctx, keys); slices.Contains(has, true) {
				t.Fatal("a vector was stored from a failed call")
			}
			// A batch that ends for good frees its messages for the next
			// backfill; one that will be retried keeps them.
			if p := pending(t, d); (p == 2) != tt.keepPending {
				t.Fatalf("pending %d, want kept=%v", p, tt.keepPending)
			}
		})
	}
}

func TestEmbedMessagesDoesNotStoreAVectorForAnEditedText(t *testing.T) {
	ctx := context.Background()
	env := newTestEnv(t)
	store := msgcache.New(env.redis.Client(t))
	// The text changes while the embeddings call is in flight.
	var keys []string
	emb := &embeddingsFake{onCall: func() { _, _ = store.ReplaceText(ctx, keys[0], "edited") }}
	d := env.deps(t, emb.server(t))
	keys = seedMessages(t, d, 1, 1)
	res, err := run(t, ctx, d, "embed_messages", payloadOf(keys))
	if err != nil || res["changed"] != 1 || res["embedded"] != 0 {
		t.Fatalf("result %v, %v", res, err)
	}
	if has, _ := store.HasEmbedding(ctx, keys); has[0] {
		t.Fatal("the old text's vector was stored on the edited message")
	}
}
