package handlers

import (
	"context"
	"fmt"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/cursors"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// autoKGPass is auto_kg_extraction's planner: every 4 h, everything new
// since each channel's cursor. A channel seen for the first time starts a
// day back ("recent conversations"), and, after a cut-over, no earlier than
// the task's hand-over point (the start of the last Python run seen); a backlog larger than one pass's
// bounds is planned by the next passes as units settle.
var autoKGPass = channelPass{
	task:         jobs.AutoKGExtraction,
	cursorPrefix: cursors.ExtractionPrefix,
	lookback:     24 * time.Hour,
	perChannel:   2_000,
	perPass:      20_000,
	maxPlanned:   40_000,
	topic:        "kg_extraction",
}

// autoKGExtraction mines the conversations since its per-channel cursors
// for knowledge-graph entities and relationships (the legacy batch
// extractor, opt-in with legacy_kg_extraction). It shares the extraction
// ledger with limbic_anchoring_worker, so with both enabled each message is
// still extracted once.
type autoKGExtraction struct{ passDeps }

func newAutoKGExtraction(k kit) Worker[*jobs.Empty] { return &autoKGExtraction{newPassDeps(k)} }

func (h *autoKGExtraction) Work(ctx context.Context, _ *jobs.Empty) (Result, error) {
	st, err := autoKGPass.run(ctx, h.passDeps)
	if st.unitsPlanned > 0 {
		h.log.InfoContext(ctx, fmt.Sprintf("KG extraction planned %d message(s) in %d unit(s)", st.messages, st.unitsPlanned),
			"task", jobs.AutoKGExtraction, "channels", st.channelsWithNew, "backlog_messages", st.pending)
	}
	if err != nil {
		h.log.WarnContext(ctx, "KG extraction planning failed", "task", jobs.AutoKGExtraction, "error", err)
		return nil, err
	}
	return st.result(), nil
}
