package handlers

import (
	"context"
	"fmt"
	"time"

	"github.com/hibiken/asynq"

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
func limbicMaintenance(ctx context.Context, d Deps, _ jobs.Payload) (Result, error) {
	if d.Graph == nil {
		return nil, fmt.Errorf("limbic maintenance: no knowledge graph configured: %w", asynq.SkipRetry)
	}
	// Under the graph write lock, which an extraction batch holds from its
	// entities' write to its relationships', GC never sees an entity that
	// is about to be linked; the grace period covers writers without it.
	st, err := maint.CollectOrphans(ctx, withWriteLock(d.Graph, d.Redis), maint.OrphanOptions{
		Before:    d.Now().Add(-orphanGrace).UnixMilli(),
		BatchSize: d.KG.BatchSize,
		Verify:    singleton.Verify,
	})
	if err != nil {
		d.Logger.WarnContext(ctx, "orphan GC failed", "task", jobs.LimbicMaintenance,
			"orphans_removed", st.Removed, "batches", st.Batches, "error", err)
		return nil, fmt.Errorf("limbic maintenance: %w", err)
	}
	if st.Removed > 0 {
		d.Logger.InfoContext(ctx, fmt.Sprintf("Limbic maintenance removed %d orphan entities", st.Removed),
			"task", jobs.LimbicMaintenance, "batches", st.Batches)
	}
	return Result{"orphans_removed": st.Removed, "batches": st.Batches}, nil
}
