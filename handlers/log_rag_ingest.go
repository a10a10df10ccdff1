package handlers

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/clients/journal"
	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/store/logstore"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// log_rag_ingest bounds.
const (
	// logRAGLookback is how far back the first run on a node reads: one
	// interval, as if the task had always run.
	logRAGLookback = 6 * time.Hour
	// logRAGMaxLines bounds one run's reading (and so its embeddings:
	// at most a few hundred chunks); the rest waits for the next run.
	logRAGMaxLines = journal.DefaultReadLimit
	// logRAGEmbedBatch is the chunks per embeddings call.
	logRAGEmbedBatch = 64
	// logRAGRetention is how long chunks are kept: the store is for recent
	// diagnostics, and Redis memory is not free.
	logRAGRetention = 14 * 24 * time.Hour
	// logRAGPruneLimit bounds the chunks deleted per run, well above what
	// one run adds, so the store shrinks back after a burst.
	logRAGPruneLimit = 5000
)

// logRAGIngest reads this node's journal since its cursor, chunks it,
// embeds the chunks and stores them in stargazer_logs. The cursor moves only
// once every chunk up to it is stored; chunk ids derive from their content,
// so a retried or repeated run stores nothing twice.
//
// It is node-local: every node agent runs it on its own journal, on the
// task's interval, with a cursor of its own (by NODE_NAME, the machine id
// or the host name). Without journalctl on a node the loop idles there
// (ErrNotOnThisNode) and says so once.
type logRAGIngest struct {
	store    *logstore.Store
	embedder Embedder
	model    string
	limiter  Limiter
	// node names this node's cursor; unit is the systemd unit read;
	// command overrides journalctl (tests); dir is JOURNAL_DIR.
	node, unit, command, dir string
	// handOver bounds a node's first run: no earlier than the task's
	// hand-over point (the Python side ingested what came before).
	handOver HandOver
	now      func() time.Time
	log      *slog.Logger
}

func newLogRAGIngest(k kit) Worker[*jobs.Empty] {
	return &logRAGIngest{store: logstore.New(k.Redis()), embedder: k.Embedder(), model: k.Models.Embeddings,
		limiter: k.EmbedLimiter, node: k.NodeName, unit: cmp.Or(k.JournalUnit, "stargazer"), command: k.JournalCommand, dir: k.JournalDir, handOver: k.HandOver, now: k.Now, log: k.Logger}
}

func (h *logRAGIngest) Work(ctx context.Context, _ *jobs.Empty) (Result, error) {
	const task = jobs.LogRAGIngest
	unit := h.unit
	host := h.node
	if host == "" {
		var err error
		if host, err = os.Hostname(); err != nil {
			return nil, fmt.Errorf("%s: naming this node: %w", task, err)
		}
	}
	now := h.now()
	store := h.store
	cur, err := store.Cursor(ctx, host, unit)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", task, err)
	}
	opts := journal.ReadOptions{
		Command: h.command, Unit: unit, Directory: h.dir,
		AfterCursor: cur.After, StopAt: cur.PendingEnd, Limit: logRAGMaxLines,
	}
	if cur.After == "" {
		since := now.Add(-logRAGLookback)
		if h.handOver != nil {
			point, err := h.handOver.Point(ctx, task)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", task, err)
			}
			if point.After(since) {
				since = point
			}
		}
		if opts.Since, err = store.StartAt(ctx, host, unit, since); err != nil {
			return nil, fmt.Errorf("%s: %w", task, err)
		}
	}
	batch, err := journal.Read(ctx, opts)
	switch {
	case errors.Is(err, journal.ErrNoJournal):
		return nil, fmt.Errorf("%s: %w on node %s: %w", task, err, host, asynq.SkipRetry)
	case err != nil:
		return nil, fmt.Errorf("%s: reading the journal: %w", task, err)
	}
	res := Result{
		"host": host, "unit": unit, "lines": batch.Lines, "skipped_lines": batch.Skipped,
		"entries": len(batch.Entries), "more": batch.Truncated,
		"chunks": 0, "stored": 0, "already_stored": 0, "pruned": 0,
	}
	if batch.Last == "" && batch.Lines > 0 {
		return nil, fmt.Errorf("%s: none of the %d lines journalctl printed is a journal entry (expected --output=json): %w",
			task, batch.Lines, asynq.SkipRetry)
	}
	if batch.Last != "" {
		stored, existing, chunks, err := h.storeChunks(ctx, host, unit, batch, now)
		res["chunks"], res["stored"], res["already_stored"] = chunks, stored, existing
		if err != nil {
			h.log.WarnContext(ctx, "log ingest stopped before the cursor; the next run resumes it",
				"task", task, "host", host, "unit", unit, "stored", stored, "chunks", chunks, "error", err)
			return nil, fmt.Errorf("%s: %w", task, err)
		}
	}
	pruned, err := store.Prune(ctx, now.Add(-logRAGRetention), logRAGPruneLimit)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", task, err)
	}
	res["pruned"] = pruned
	if batch.Truncated {
		h.log.WarnContext(ctx, "journal has more lines than one run reads; the rest waits for the next run",
			"task", task, "host", host, "unit", unit, "max_lines", logRAGMaxLines)
	}
	h.log.InfoContext(ctx, "journal ingested into stargazer_logs", "task", task, "host", host, "unit", unit,
		"lines", batch.Lines, "chunks", res["chunks"], "stored", res["stored"], "pruned", pruned)
	return res, nil
}

// storeChunks chunks the batch, embeds and stores the chunks not stored
// yet, then advances the cursor to the batch's end.
func (h *logRAGIngest) storeChunks(ctx context.Context, host, unit string, batch journal.Batch, now time.Time) (stored, existing, total int, err error) {
	store := h.store
	lines := make([]logstore.Line, len(batch.Entries))
	for i, e := range batch.Entries {
		lines[i] = logstore.Line{Cursor: e.Cursor, Time: e.Time, Priority: e.Priority, Message: e.Message}
	}
	chunks := logstore.Chunks(lines, host, unit)
	// Fix the batch's end first: a run that fails from here on is retried
	// over exactly these lines, so it rebuilds exactly these chunks.
	if err := store.Begin(ctx, host, unit, batch.Last); err != nil {
		return 0, 0, len(chunks), err
	}
	ids := make([]string, len(chunks))
	for i, c := range chunks {
		ids[i] = c.ID
	}
	have, err := store.Exists(ctx, ids)
	if err != nil {
		return 0, 0, len(chunks), err
	}
	var todo []logstore.Chunk
	for i, c := range chunks {
		if have[i] {
			existing++
		} else {
			todo = append(todo, c)
		}
	}
	for start := 0; start < len(todo); start += logRAGEmbedBatch {
		part := todo[start:min(start+logRAGEmbedBatch, len(todo))]
		texts := make([]string, len(part))
		for i, c := range part {
			texts[i] = c.Text
		}
		if err := awaitToken(ctx, h.limiter); err != nil {
			return stored, existing, len(chunks), err
		}
		vecs, _, err := h.embedder.Embed(ctx, h.model, texts)
		if err == nil && len(vecs) != len(part) {
			err = fmt.Errorf("%w: %d embeddings for %d chunks", llm.ErrMalformed, len(vecs), len(part))
		}
		if errors.Is(err, llm.ErrMalformed) {
			// The next scheduled run tries again; a retry storm would not help.
			return stored, existing, len(chunks), fmt.Errorf("embedding log chunks: %w: %w", err, asynq.SkipRetry)
		}
		if err != nil {
			return stored, existing, len(chunks), fmt.Errorf("embedding log chunks: %w", err)
		}
		if err := store.Put(ctx, part, vecs, h.model, now); err != nil {
			return stored, existing, len(chunks), err
		}
		stored += len(part)
	}
	if err := store.Advance(ctx, host, unit, batch.Last, now); err != nil {
		return stored, existing, len(chunks), err
	}
	return stored, existing, len(chunks), nil
}

// awaitToken waits for the shared embeddings budget (nil: no limit). A
// periodic task can afford to wait, unlike the embedding queue's batches,
// which defer themselves instead; both draw from the same budget, so log
// ingestion cannot starve message embeddings.
func awaitToken(ctx context.Context, l Limiter) error {
	for l != nil {
		wait, err := l.Take(ctx)
		if err != nil {
			return fmt.Errorf("embeddings rate limit: %w", err)
		}
		if wait <= 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
	return nil
}
