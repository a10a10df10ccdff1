package handlers

import (
	"context"
	"fmt"

	"github.com/hibiken/asynq"

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
func limbicDedup(ctx context.Context, d Deps, _ jobs.Payload) (Result, error) {
	if d.Graph == nil {
		return nil, fmt.Errorf("limbic dedup: no knowledge graph configured: %w", asynq.SkipRetry)
	}
	rep, err := mergeEngine(d, jobs.LimbicDedup).Merge(ctx, merge.Options{
		Model: d.Models.Extraction, MaxJudged: dedupMaxJudged, Now: d.Now,
	})
	res := mergeResult(rep)
	if rep.Merged > 0 {
		d.Logger.InfoContext(ctx, "limbic dedup merged duplicate entities", "task", jobs.LimbicDedup,
			"merged", rep.Merged, "edges_moved", rep.EdgesMoved, "llm_calls", rep.LLMCalls)
	}
	if err != nil {
		countItems(d.Counter, jobs.LimbicDedup, res)
		return nil, graphLLMFailure("limbic dedup", err)
	}
	return res, nil
}
