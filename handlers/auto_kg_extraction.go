package handlers

import (
	"context"
	"fmt"
	"time"

	"github.com/stargazer/stargazer-jobs/jobs"
)

// autoKGPass is auto_kg_extraction's pass: every 4 h, everything new
// since each channel's cursor, in large bounded chunks. A channel seen for
// the first time starts a day back ("recent conversations"); a backlog
// larger than one run's bounds is worked off over the next runs.
var autoKGPass = channelPass{
	task:         jobs.AutoKGExtraction,
	cursorPrefix: "sgjobs:kgx:cursor:",
	lookback:     24 * time.Hour,
	perChannel:   2_000,
	perPass:      10_000,
	chunk:        60,
	// The task times out after an hour; a chunk is at most two LLM calls
	// (120 s each at the default timeout) after the budget.
	budget: 40 * time.Minute,
}

// autoKGExtraction mines the conversations since its per-channel cursors
// for knowledge-graph entities and relationships (the legacy batch
// extractor, opt-in with legacy_kg_extraction). It shares the extraction
// ledger with limbic_anchoring_worker, so with both enabled each message is
// still extracted once.
type autoKGExtraction struct{ passDeps }

func newAutoKGExtraction(k kit) Worker[*jobs.Empty] { return &autoKGExtraction{newPassDeps(k)} }

func (h *autoKGExtraction) Work(ctx context.Context, _ *jobs.Empty) (Result, error) {
	start := h.now()
	st, err := autoKGPass.run(ctx, h.passDeps)
	publishExtraction(ctx, h.passDeps, "kg_extraction", start, st, err)
	if total := st.EntitiesAdded + st.RelationshipsAdded; total > 0 {
		h.log.InfoContext(ctx, fmt.Sprintf("KG extraction added %d entities/relationships", total),
			"task", jobs.AutoKGExtraction, "messages", st.Fragments, "channels", st.channelsWithNew)
	}
	if err != nil {
		h.log.WarnContext(ctx, "KG extraction failed", "task", jobs.AutoKGExtraction,
			"error", err, "messages_extracted", st.Fragments)
		return nil, extractionFailure(err)
	}
	return st.result(), nil
}
