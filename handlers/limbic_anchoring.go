package handlers

import (
	"context"
	"fmt"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/cursors"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// anchoringPass is limbic_anchoring_worker's planner: every minute, the
// new messages of every channel, found by scanning the message sets (no
// static channel list). A channel seen for the first time starts an hour
// back, and, after a cut-over, no earlier than the task's hand-over point:
// the Python anchoring loop ran in real time, so its first pass plans only
// messages the Python side did not anchor. A pass plans at most 2,000 messages of a channel and 20,000 in all
// (planning is Redis reads: milliseconds per thousand messages), and no
// more while 20,000 are planned and not settled, so a stalled LLM cannot
// grow the chains without end.
var anchoringPass = channelPass{
	task:         jobs.LimbicAnchoringWorker,
	cursorPrefix: cursors.AnchoringPrefix,
	lookback:     time.Hour,
	perChannel:   2_000,
	perPass:      20_000,
	maxPlanned:   20_000,
	topic:        "knowledge_anchoring",
}

// limbicAnchoring anchors new channel messages into the knowledge graph in
// near real time: the original's long-running anchoring loop as a periodic
// singleton planner (docs/scheduling.md) whose units any worker runs.
// Messages of several channels share a unit, so a minute of scattered
// chatter costs one call.
type limbicAnchoring struct{ passDeps }

func newLimbicAnchoring(k kit) Worker[*jobs.Empty] { return &limbicAnchoring{newPassDeps(k)} }

func (h *limbicAnchoring) Work(ctx context.Context, _ *jobs.Empty) (Result, error) {
	st, err := anchoringPass.run(ctx, h.passDeps)
	if st.unitsPlanned > 0 {
		h.log.InfoContext(ctx, fmt.Sprintf("Knowledge anchoring: planned %d message(s) of %d channel(s) in %d unit(s)", st.messages, st.channelsWithNew, st.unitsPlanned),
			"task", jobs.LimbicAnchoringWorker, "units_enqueued", st.unitsEnqueued, "backlog_messages", st.pending, "units_queued", st.unitsQueued)
	}
	if err != nil {
		h.log.WarnContext(ctx, "Knowledge anchoring planning failed", "task", jobs.LimbicAnchoringWorker, "error", err)
		return nil, err
	}
	return st.result(), nil
}

// extractionFailure decides whether a failed extraction is retried.
// Retried: a rate limit (after its Retry-After), an unusable answer (the
// model may answer better, the engine retries in smaller batches and gives
// up on a fragment after a bounded number of bad answers, so this cannot
// storm), timeouts, 5xx, graph and Redis errors. Archived at once
// (SkipRetry): a request the provider refuses (bad model or key: 4xx) and
// a reply that is not the chat/completions protocol; the planner
// re-enqueues an archived unit once it has stalled.
func extractionFailure(err error) error {
	if hopeless(err) {
		return fmt.Errorf("%w: %w", err, asynq.SkipRetry)
	}
	return err
}
