package handlers

import (
	"context"
	"fmt"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/kg/extract"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// anchoringPass is limbic_anchoring_worker's pass: every minute, the new
// messages of every channel, found by scanning the message sets (no static
// channel list). Passes are short: a channel seen for the first time
// starts an hour back, at most 200 messages of a channel and 1,000 in all
// are read, and no chunk starts after 90 s, so that with one more LLM call
// (120 s at most) a pass ends well within its 5-minute timeout. Chunks are
// one LLM batch, so the cursors follow each call.
var anchoringPass = channelPass{
	task:         jobs.LimbicAnchoringWorker,
	cursorPrefix: "sg:ka:cursor:",
	lookback:     time.Hour,
	perChannel:   200,
	perPass:      1_000,
	chunk:        extract.DefaultBatchMessages,
	budget:       90 * time.Second,
}

// limbicAnchoring anchors new channel messages into the knowledge graph in
// near real time: the original's long-running anchoring loop as a periodic
// one-pass singleton (docs/scheduling.md). Messages of several channels
// share an LLM call, so a minute of scattered chatter costs one call.
type limbicAnchoring struct{ passDeps }

func newLimbicAnchoring(k kit) Worker[*jobs.Empty] { return &limbicAnchoring{newPassDeps(k)} }

func (h *limbicAnchoring) Work(ctx context.Context, _ *jobs.Empty) (Result, error) {
	start := h.now()
	st, err := anchoringPass.run(ctx, h.passDeps)
	if st.Fragments > 0 || err != nil {
		publishExtraction(ctx, h.passDeps, "knowledge_anchoring", start, st, err)
	}
	if st.Fragments > 0 {
		h.log.InfoContext(ctx, fmt.Sprintf("Knowledge anchoring: anchored %d message(s) from %d channel(s)", st.Fragments, st.channelsWithNew),
			"task", jobs.LimbicAnchoringWorker, "entities_added", st.EntitiesAdded, "relationships_added", st.RelationshipsAdded,
			"llm_calls", st.LLMCalls)
	}
	if err != nil {
		h.log.WarnContext(ctx, "Knowledge anchoring failed", "task", jobs.LimbicAnchoringWorker,
			"error", err, "outcome", llm.Outcome(err), "messages_extracted", st.Fragments)
		return nil, extractionFailure(err)
	}
	return st.result(), nil
}

// extractionFailure decides whether a failed extraction pass is retried.
// Retried: a rate limit (after its Retry-After), an unusable answer (the
// model may answer better, the engine retries in smaller batches and gives
// up on a fragment after a bounded number of bad answers, so this cannot
// storm), timeouts, 5xx, graph and Redis errors. Archived at once
// (SkipRetry): a request the provider refuses (bad model or key: 4xx) and
// a reply that is not the chat/completions protocol; the next scheduled
// pass tries again anyway, from the same cursors.
func extractionFailure(err error) error {
	if hopeless(err) {
		return fmt.Errorf("%w: %w", err, asynq.SkipRetry)
	}
	return err
}
