package handlers

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/kg/maint"
	"github.com/stargazer/stargazer-jobs/internal/queue/singleton"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// orphanGrace spares entities seen this recently from orphan GC. Producers
// write an entity and its relationships in separate queries (and anchoring
// may link a new entity on a later pass); a day is far more than that gap
// and costs nothing, since the task runs weekly and catches the entity the
// week after if it is still alone.
const orphanGrace = 24 * time.Hour

// limbicMaintenance is the weekly maintenance of knowledge anchoring:
// garbage-collecting entities left without any relationship (after decay
// pruned their last one, or an extraction that never linked them). A pure
// graph operation, so it is not gated on the chat LLM (the original's
// F9-4); ka_enabled gates its schedule.
type limbicMaintenance struct {
	graph     Graph // under the graph write lock
	batchSize int
	now       func() time.Time
	log       *slog.Logger
}

func newLimbicMaintenance(k kit) Worker[*jobs.Empty] {
	return &limbicMaintenance{graph: k.writeLockedGraph(), batchSize: k.KG.BatchSize, now: k.Now, log: k.Logger}
}

func (h *limbicMaintenance) Work(ctx context.Context, _ *jobs.Empty) (Result, error) {
	st, err := maint.CollectOrphans(ctx, h.graph, maint.OrphanOptions{
		Before:    h.now().Add(-orphanGrace).UnixMilli(),
		BatchSize: h.batchSize,
		Verify:    singleton.Verify,
	})
	if err != nil {
		h.log.WarnContext(ctx, "orphan GC failed", "task", jobs.LimbicMaintenance,
			"orphans_removed", st.Removed, "batches", st.Batches, "error", err)
		return nil, fmt.Errorf("limbic maintenance: %w", err)
	}
	if st.Removed > 0 {
		h.log.InfoContext(ctx, fmt.Sprintf("Limbic maintenance removed %d orphan entities", st.Removed),
			"task", jobs.LimbicMaintenance, "batches", st.Batches)
	}
	return Result{"orphans_removed": st.Removed, "batches": st.Batches}, nil
}
