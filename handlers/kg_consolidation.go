package handlers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/kg/hubs"
	"github.com/stargazer/stargazer-jobs/internal/kg/merge"
	"github.com/stargazer/stargazer-jobs/internal/queue/events"
	"github.com/stargazer/stargazer-jobs/internal/queue/singleton"
	"github.com/stargazer/stargazer-jobs/jobs"
)

const (
	// consolidationMaxJudged bounds the pairs the daily consolidation sends
	// to the LLM: ten calls of twenty pairs. What is left waits for the next
	// run or for limbic_dedup_task; the verdict memory keeps either from
	// asking twice.
	consolidationMaxJudged = 200
	// defaultPruneAge applies when Deps.PruneAge is unset.
	defaultPruneAge = 30 * 24 * time.Hour
	// consolidationTopic is the original's debug event topic.
	consolidationTopic = "kg_consolidation"
)

// kgConsolidation merges duplicate entities and prunes low-value ones, the
// daily full pass over the knowledge graph: exact duplicates merge at once,
// uncertain pairs are judged by the LLM (remembered verdicts first), then
// entities with no relationship, at most one mention and not seen for
// Deps.PruneAge are deleted. Every write is preceded by singleton.Verify.
// Like the original it publishes a kg_consolidation debug event with the
// counts, or with the error.
type kgConsolidation struct {
	merger   *merge.Engine
	graph    Graph // under the graph write lock
	model    string
	pruneAge time.Duration
	now      func() time.Time
	log      *slog.Logger
	events   EventPublisher
	counter  Counter
}

func newKGConsolidation(k kit) Worker[*jobs.Empty] {
	age := k.PruneAge
	if age <= 0 {
		age = defaultPruneAge
	}
	return &kgConsolidation{merger: k.mergeEngine(), graph: k.writeLockedGraph(), model: k.Models.Extraction, pruneAge: age,
		now: k.Now, log: k.Logger, events: k.Events, counter: k.Counter}
}

func (h *kgConsolidation) Work(ctx context.Context, _ *jobs.Empty) (Result, error) {
	start := time.Now()
	rep, err := h.merger.Merge(ctx, merge.Options{
		Model: h.model, MaxJudged: consolidationMaxJudged, Now: h.now,
	})
	pruned := 0
	var calls *merge.CallErrors
	if err == nil || errors.As(err, &calls) {
		// The merge pass went through all its pairs (some calls may have
		// failed): prune too. A stopped pass (rate limit, lost lease, graph
		// error) prunes on its retry.
		var perr error
		pruned, perr = merge.Prune(ctx, h.graph, singleton.Verify, h.now().Add(-h.pruneAge))
		switch {
		case perr != nil && err != nil:
			// The prune failure decides how the run is retried.
			err = fmt.Errorf("pruning: %w (and merging: %v)", perr, err)
		case perr != nil:
			err = fmt.Errorf("pruning: %w", perr)
		}
	}
	res := mergeResult(rep)
	res["pruned_entities"] = pruned
	if rep.Merged > 0 || pruned > 0 {
		h.log.InfoContext(ctx, fmt.Sprintf("KG consolidation: merged=%d pruned=%d", rep.Merged, pruned),
			"task", jobs.KGConsolidation, "edges_moved", rep.EdgesMoved, "llm_calls", rep.LLMCalls, "llm_errors", rep.LLMErrors)
	}
	ev := events.Event{Topic: consolidationTopic, Source: "background_tasks", Status: "ok",
		DurationMS: float64(time.Since(start).Microseconds()) / 1000,
		Preview:    fmt.Sprintf("merged=%d pruned=%d", rep.Merged, pruned),
		Payload:    map[string]any{"merged": rep.Merged, "pruned_entities": pruned, "llm_errors": rep.LLMErrors},
	}
	switch {
	case errors.Is(err, llm.ErrRefused):
		// Deferred (budget spent, kill switch off), not failed: the worker
		// resumes the task when the deferral lifts.
		ev.Status, ev.Preview = "deferred", "deferred: "+clip(err.Error(), 100)
		ev.Payload = map[string]any{"error": err.Error(), "merged": rep.Merged, "pruned_entities": pruned}
	case err != nil:
		h.log.ErrorContext(ctx, "KG consolidation failed", "task", jobs.KGConsolidation, "error", err,
			"merged", rep.Merged, "pruned", pruned)
		ev.Status, ev.Preview = "error", "error="+clip(err.Error(), 100)
		ev.Payload = map[string]any{"error": err.Error(), "merged": rep.Merged, "pruned_entities": pruned, "llm_errors": rep.LLMErrors}
	}
	publishEvent(ctx, h.events, h.log, ev)
	if err != nil {
		countItems(h.counter, jobs.KGConsolidation, res) // what was merged before the failure stays merged
		return nil, graphLLMFailure("kg consolidation", err)
	}
	return res, nil
}

// mergeEngine is the duplicate merge engine of the task, checking the
// run's singleton lease before every write and remembering verdicts in
// Redis.
func (k kit) mergeEngine() *merge.Engine {
	return &merge.Engine{Graph: k.writeLockedGraph(), LLM: k.LLM(), Memory: merge.NewMemory(k.Jobs(), 0),
		Verify: singleton.Verify, Logger: k.Logger.With("task", k.spec.Name)}
}

// mergeResult is a merge report as a task result.
func mergeResult(r merge.Report) Result {
	res := Result{
		"entities_scanned":   r.Entities,
		"merged":             r.Merged,
		"exact_merged":       r.ExactMerged,
		"edges_moved":        r.EdgesMoved,
		"self_loops_dropped": r.SelfLoopsDropped,
		"pairs_candidate":    r.Candidates,
		"pairs_remembered":   r.Remembered,
		"pairs_judged":       r.Judged,
		"pairs_same":         r.Same,
		"pairs_unjudged":     r.Unjudged,
		"merges_vanished":    r.Vanished,
		"llm_calls":          r.LLMCalls,
		"llm_errors":         r.LLMErrors,
	}
	if r.LastLLMError != "" {
		res["last_llm_error"] = r.LastLLMError
	}
	return res
}

// publishEvent sends a debug event, best effort (pub may be nil).
func publishEvent(ctx context.Context, pub EventPublisher, log *slog.Logger, e events.Event) {
	if pub == nil {
		return
	}
	if err := pub.Publish(context.WithoutCancel(ctx), e); err != nil {
		log.DebugContext(ctx, "debug event not published", "topic", e.Topic, "error", err)
	}
}

// graphLLMFailure turns the error of a graph maintenance run that calls
// the LLM into the run's error:
//   - a rate limit is returned wrapped, so the retry waits its Retry-After;
//   - a lost singleton lease is archived (asynq.SkipRetry): another run
//     owns the graph now;
//   - failed calls are archived when none of them can pass on a retry (the
//     model's answers were not the requested JSON, or the request was
//     refused); the next scheduled run asks again. Timeouts and 5xx are
//     retried, a bounded number of times (the catalog's MaxRetry).
//
// What was written before the failure stays: every write is complete or
// resumable.
func graphLLMFailure(what string, err error) error {
	err = fmt.Errorf("%s: %w", what, err)
	var rl *llm.RateLimitError
	if errors.As(err, &rl) {
		return err
	}
	if errors.Is(err, singleton.ErrLost) {
		return fmt.Errorf("%w: %w", err, asynq.SkipRetry)
	}
	var calls []error
	var me *merge.CallErrors
	var he *hubs.CallErrors
	switch {
	case errors.As(err, &me):
		calls = me.Errs
	case errors.As(err, &he):
		calls = he.Errs
	default:
		return err
	}
	for _, e := range calls {
		if !errors.Is(e, merge.ErrBadAnswer) && !errors.Is(e, hubs.ErrBadAnswer) && !hopeless(e) {
			return err
		}
	}
	return fmt.Errorf("%w: %w", err, asynq.SkipRetry)
}
