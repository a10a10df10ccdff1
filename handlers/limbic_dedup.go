package handlers

import (
	"context"
	"log/slog"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/kg/merge"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// dedupMaxJudged bounds the pairs one dedup pass sends to the LLM: two
// calls of twenty pairs every ten minutes keeps the pass short and the
// model's load even, while the verdict memory lets the passes walk through
// a large backlog without asking twice.
const dedupMaxJudged = 40

// limbicDedup is the Limbic deduplication pass, once a loop supervised by
// a leader: the same merge engine as kg_consolidation_task (exact
// duplicates at once, uncertain pairs judged by the LLM via
// kg_extraction_model), run often with a small budget so that duplicates
// the anchoring worker creates are merged within minutes, without pruning.
type limbicDedup struct {
	merger  *merge.Engine
	model   string
	now     func() time.Time
	log     *slog.Logger
	counter Counter
}

func newLimbicDedup(k kit) Worker[*jobs.Empty] {
	return &limbicDedup{merger: k.mergeEngine(), model: k.Models.Extraction, now: k.Now, log: k.Logger, counter: k.Counter}
}

func (h *limbicDedup) Work(ctx context.Context, _ *jobs.Empty) (Result, error) {
	rep, err := h.merger.Merge(ctx, merge.Options{
		Model: h.model, MaxJudged: dedupMaxJudged, Now: h.now,
	})
	res := mergeResult(rep)
	if rep.Merged > 0 {
		h.log.InfoContext(ctx, "limbic dedup merged duplicate entities", "task", jobs.LimbicDedup,
			"merged", rep.Merged, "edges_moved", rep.EdgesMoved, "llm_calls", rep.LLMCalls)
	}
	if err != nil {
		countItems(h.counter, jobs.LimbicDedup, res)
		return nil, graphLLMFailure("limbic dedup", err)
	}
	return res, nil
}
