// Package embedqueue is the embedding queue: cached messages waiting for a
// vector travel as embed_messages tasks (batches of message keys, on the
// lowest-weight queue), and a pending set in Redis keeps a message from
// being queued twice while it waits.
//
// Why a pending set rather than deterministic task IDs: a task ID made
// from a batch's keys only catches the exact same batch, but two backfills
// rarely batch alike (one new message shifts every batch after it), and a
// deferred batch must be re-enqueued while its own ID is still taken. The
// set works per message whatever the batching.
package embedqueue

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/jobs"
)

// PendingKey is the sorted set of message keys queued for embedding,
// scored by when they were queued (Unix ms, Redis's clock).
const PendingKey = "sgjobs:embed:pending"

// Defaults.
const (
	// BatchSize is how many messages one task embeds: one embeddings call.
	BatchSize = 64
	// PendingTTL is how long a pending mark holds without being cleared.
	// Marks are cleared when a batch ends, for good or for bad; the TTL only
	// frees messages whose mark outlived a crash between marking and
	// enqueueing.
	PendingTTL = 6 * time.Hour
)

// Enqueuer adds tasks to the queues.
type Enqueuer interface {
	EnqueueContext(ctx context.Context, t *asynq.Task, opts ...asynq.Option) (*asynq.TaskInfo, error)
}

// Queue is the embedding queue on one Redis.
type Queue struct {
	rdb redis.UniversalClient
	enq Enqueuer
}

// New returns the queue; enq adds the tasks.
func New(rdb redis.UniversalClient, enq Enqueuer) *Queue { return &Queue{rdb: rdb, enq: enq} }

// markScript drops stale marks, then marks the keys with Redis's time and
// returns those that were not pending before. ARGV[2] "nx" leaves existing
// marks alone; "refresh" restamps them.
var markScript = redis.NewScript(`
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%.0f', now - tonumber(ARGV[1])))
local added = {}
for i = 3, #ARGV do
  local n
  if ARGV[2] == 'nx' then
    n = redis.call('ZADD', KEYS[1], 'NX', now, ARGV[i])
  else
    n = redis.call('ZADD', KEYS[1], now, ARGV[i])
  end
  if n == 1 then added[#added + 1] = ARGV[i] end
end
return added
`)

// markChunk bounds the keys of one script call.
const markChunk = 1000

// Add queues the keys that are not already waiting, in batches of
// BatchSize, and returns how many it queued. Keys must be message keys
// (sg:msg:...). If an enqueue fails, the keys it did not queue are
// unmarked so a later run can queue them.
func (q *Queue) Add(ctx context.Context, keys []string) (int, error) {
	keys = unique(keys)
	if err := validate(keys); err != nil {
		return 0, err
	}
	marked, err := q.mark(ctx, keys, "nx")
	if err != nil {
		return 0, err
	}
	queued := 0
	for b := range slices.Chunk(marked, BatchSize) {
		if err := q.enqueue(ctx, b); err != nil {
			if uerr := q.Done(ctx, marked[queued:]); uerr != nil {
				err = errors.Join(err, uerr)
			}
			return queued, err
		}
		queued += len(b)
	}
	return queued, nil
}

func (q *Queue) mark(ctx context.Context, keys []string, mode string) ([]string, error) {
	var marked []string
	for c := range slices.Chunk(keys, markChunk) {
		args := append([]any{PendingTTL.Milliseconds(), mode}, toAny(c)...)
		got, err := markScript.Run(ctx, q.rdb, []string{PendingKey}, args...).StringSlice()
		if err != nil {
			return nil, fmt.Errorf("embedqueue: marking pending: %w", err)
		}
		marked = append(marked, got...)
	}
	return marked, nil
}

func validate(keys []string) error {
	for _, k := range keys {
		if err := (&jobs.EmbedBatch{Keys: []string{k}}).Validate(); err != nil {
			return fmt.Errorf("embedqueue: %w", err)
		}
	}
	return nil
}

// Defer re-queues keys to run in d, refreshing their pending marks: the
// batch waits for the rate limit without holding a worker.
func (q *Queue) Defer(ctx context.Context, keys []string, d time.Duration) error {
	keys = unique(keys)
	if len(keys) == 0 {
		return nil
	}
	if err := validate(keys); err != nil {
		return err
	}
	if _, err := q.mark(ctx, keys, "refresh"); err != nil {
		return err
	}
	return q.enqueue(ctx, keys, asynq.ProcessIn(d))
}

// Done clears keys' pending marks: their batch ended.
func (q *Queue) Done(ctx context.Context, keys []string) error {
	if len(keys) == 0 {
		return nil
	}
	if err := q.rdb.ZRem(ctx, PendingKey, toAny(keys)...).Err(); err != nil {
		return fmt.Errorf("embedqueue: clearing pending: %w", err)
	}
	return nil
}

// Pending returns how many messages are waiting.
func (q *Queue) Pending(ctx context.Context) (int64, error) {
	n, err := q.rdb.ZCard(ctx, PendingKey).Result()
	if err != nil {
		return 0, fmt.Errorf("embedqueue: counting pending: %w", err)
	}
	return n, nil
}

func (q *Queue) enqueue(ctx context.Context, keys []string, opts ...asynq.Option) error {
	if q.enq == nil {
		return errors.New("embedqueue: no enqueuer configured")
	}
	payload, err := jobs.EncodePayload(&jobs.EmbedBatch{Keys: keys})
	if err != nil {
		return fmt.Errorf("embedqueue: %w", err)
	}
	spec, _ := jobs.Lookup(jobs.EmbedMessages)
	opts = append([]asynq.Option{asynq.Queue(spec.Queue), asynq.MaxRetry(spec.MaxRetry), asynq.Timeout(spec.Timeout)}, opts...)
	if _, err := q.enq.EnqueueContext(ctx, asynq.NewTask(jobs.EmbedMessages, payload), opts...); err != nil {
		return fmt.Errorf("embedqueue: enqueueing %d messages: %w", len(keys), err)
	}
	return nil
}

func unique(keys []string) []string {
	seen := make(map[string]bool, len(keys))
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		if !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	return out
}

func toAny(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}
