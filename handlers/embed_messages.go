package handlers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/store/embedqueue"
	"github.com/stargazer/stargazer-jobs/internal/store/msgcache"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// maxEmbedRunes bounds the text embedded for one message: embeddings
// models refuse inputs over ~8k tokens, and one over-long message must not
// make the endpoint refuse its whole batch.
const maxEmbedRunes = 8000

// maxDeferral caps how far ahead a throttled batch is rescheduled.
const maxDeferral = time.Hour

// embedMessages embeds a batch of cached messages and stores the vectors.
// Messages that are gone, empty or already embedded are skipped, so a
// batch run twice embeds nothing the second time. When the shared rate
// limit has no token, the batch is rescheduled for when one will be free
// (spread over the backlog) and this run ends without a call: a throttled
// batch neither holds a worker nor uses up its retries.
type embedMessages struct {
	store    *msgcache.Store
	queue    *embedqueue.Queue
	embedder Embedder
	model    string
	limiter  Limiter
	log      *slog.Logger
}

func newEmbedMessages(k kit) Worker[*jobs.EmbedBatch] {
	return &embedMessages{store: msgcache.New(k.Redis()), queue: embedqueue.New(k.Jobs(), k.Enqueuer),
		embedder: k.Embedder(), model: k.Models.Embeddings, limiter: k.EmbedLimiter, log: k.Logger}
}

func (h *embedMessages) Work(ctx context.Context, p *jobs.EmbedBatch) (Result, error) {
	keys := p.Keys
	store, queue := h.store, h.queue
	var embedded, already, missing, changed int
	result := func() Result {
		return Result{"embedded": embedded, "already_embedded": already, "missing": missing, "changed": changed}
	}

	msgs, err := store.Get(ctx, keys)
	if err != nil {
		return nil, err
	}
	present := make([]string, len(msgs))
	for i, m := range msgs {
		present[i] = m.Key
	}
	has, err := store.HasEmbedding(ctx, present)
	if err != nil {
		return nil, err
	}
	var todo []msgcache.Message
	seen := map[string]bool{}
	for i, m := range msgs {
		switch {
		case seen[m.Key]:
			continue
		case has[i]:
			already++
		case m.Text == "":
			missing++
		default:
			todo = append(todo, m)
		}
		seen[m.Key] = true
	}
	for _, k := range keys {
		if !seen[k] {
			seen[k] = true
			missing++ // deleted or expired since it was queued
		}
	}
	if len(todo) == 0 {
		return result(), queue.Done(ctx, keys)
	}

	if h.limiter != nil {
		wait, err := h.limiter.Take(ctx)
		if err != nil {
			return nil, err
		}
		if wait > 0 {
			in := deferral(ctx, queue, h.limiter, wait)
			todoKeys := make([]string, len(todo))
			for i, m := range todo {
				todoKeys[i] = m.Key
			}
			if err := queue.Defer(ctx, todoKeys, in); err != nil {
				return nil, err
			}
			if err := queue.Done(ctx, without(keys, todoKeys)); err != nil {
				return nil, err
			}
			h.log.DebugContext(ctx, "embedding batch throttled; rescheduled", "task", jobs.EmbedMessages,
				"messages", len(todo), "in", in.String())
			res := result()
			res["deferred"] = len(todo)
			res["deferred_for"] = in.Round(time.Millisecond).String()
			return res, nil
		}
	}

	texts := make([]string, len(todo))
	for i, m := range todo {
		texts[i] = truncateRunes(m.Text, maxEmbedRunes)
	}
	vecs, _, err := h.embedder.Embed(ctx, h.model, texts)
	if err == nil {
		err = checkVectors(vecs, len(texts))
	}
	if err != nil {
		return nil, embedFailure(ctx, queue, keys, err)
	}
	for i, m := range todo {
		ok, err := store.SetEmbeddingForText(ctx, m.Key, m.Text, vecs[i], h.model)
		if err != nil {
			return nil, err
		}
		if ok {
			embedded++
		} else {
			changed++ // edited or deleted meanwhile; an edit queues its own embedding
		}
	}
	return result(), queue.Done(ctx, keys)
}

// deferral is how long a throttled batch waits: until the next token, plus
// a random share of the time the whole backlog needs at the limit's pace,
// so throttled batches come back spread out instead of all at once.
func deferral(ctx context.Context, q *embedqueue.Queue, l Limiter, wait time.Duration) time.Duration {
	pending, err := q.Pending(ctx)
	if err != nil {
		pending = 0
	}
	batches := max(1, (pending+embedqueue.BatchSize-1)/embedqueue.BatchSize)
	spread := min(l.Interval()*time.Duration(batches), maxDeferral)
	if spread <= 0 {
		return min(wait, maxDeferral)
	}
	return min(wait+rand.N(spread), maxDeferral)
}

// checkVectors rejects an answer whose vectors cannot all belong to one
// model's space.
func checkVectors(vecs [][]float32, n int) error {
	if len(vecs) != n {
		return fmt.Errorf("%w: %d embeddings for %d inputs", llm.ErrMalformed, len(vecs), n)
	}
	for i, v := range vecs {
		if len(v) == 0 || len(v) != len(vecs[0]) {
			return fmt.Errorf("%w: embedding %d has %d dimensions, embedding 0 has %d", llm.ErrMalformed, i, len(v), len(vecs[0]))
		}
	}
	return nil
}

// embedFailure classifies a failed embeddings call. A rate limit is
// retried after the endpoint's Retry-After; an unusable answer or a
// refused request (4xx) would fail the same way again, so the batch is
// archived at once (its keys stay in the archived task for a manual
// rerun). When the batch ends for good its messages are unmarked, so the
// next backfill queues them again.
func embedFailure(ctx context.Context, q *embedqueue.Queue, keys []string, err error) error {
	var rl *llm.RateLimitError
	var se *llm.StatusError
	switch {
	case errors.As(err, &rl):
		err = fmt.Errorf("embed_messages: embeddings endpoint rate limited: %w", err)
	case errors.Is(err, llm.ErrMalformed):
		err = fmt.Errorf("embed_messages: unusable embeddings answer: %w: %w", err, asynq.SkipRetry)
	case errors.As(err, &se) && se.Code >= 400 && se.Code < 500 && se.Code != http.StatusRequestTimeout:
		err = fmt.Errorf("embed_messages: embeddings endpoint refused the batch: %w: %w", err, asynq.SkipRetry)
	default:
		err = fmt.Errorf("embed_messages: embedding %d messages: %w", len(keys), err)
	}
	if lastAttempt(ctx, err) {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if derr := q.Done(dctx, keys); derr != nil {
			err = errors.Join(err, derr)
		}
	}
	return err
}

// lastAttempt reports whether asynq will archive the task after err
// rather than retry it.
func lastAttempt(ctx context.Context, err error) bool {
	if errors.Is(err, asynq.SkipRetry) {
		return true
	}
	retried, ok1 := asynq.GetRetryCount(ctx)
	maxRetry, ok2 := asynq.GetMaxRetry(ctx)
	return ok1 && ok2 && retried >= maxRetry
}

func truncateRunes(s string, n int) string {
	i := 0
	for pos := range s {
		if i == n {
			return s[:pos]
		}
		i++
	}
	return s
}

// without returns the keys of all that are not in drop.
func without(all, drop []string) []string {
	skip := make(map[string]bool, len(drop))
	for _, k := range drop {
		skip[k] = true
	}
	var out []string
	for _, k := range all {
		if !skip[k] {
			out = append(out, k)
		}
	}
	return out
}
