package handlers

import (
	"context"
	"log/slog"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/store/prompts"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// promptTick fires the scheduled prompts that have come due.
type promptTick struct {
	store *prompts.Store
	now   func() time.Time
	log   *slog.Logger
}

func newPromptTick(k kit) Worker[*jobs.PromptTick] {
	return &promptTick{store: prompts.NewStore(k.Redis()), now: k.Now, log: k.Logger}
}

func (h *promptTick) Work(ctx context.Context, p *jobs.PromptTick) (Result, error) {
	fired, malformed, err := h.store.Tick(ctx, h.now(), p.Limit)
	if err != nil {
		return nil, err
	}
	for _, f := range fired {
		h.log.InfoContext(ctx, "scheduled prompt fired", "prompt_id", f.PromptID,
			"occurrence", f.Occurrence, "scheduled_for", f.ScheduledFor, "stream_id", f.StreamID)
	}
	// Each is reported by one tick only: it is invalid and out of the due
	// set now. "invalid" counts them in stargazer_task_items_total.
	for _, m := range malformed {
		h.log.WarnContext(ctx, "scheduled prompt invalid; skipped", "task", jobs.ScheduledPromptTick,
			"prompt_id", m.PromptID, "reason", m.Reason)
	}
	return Result{"fired": len(fired), "invalid": len(malformed), "more_due": len(fired)+len(malformed) == p.Limit}, nil
}

// promptCleanup deletes executed and cancelled prompts past their
// retention.
type promptCleanup struct {
	store *prompts.Store
	now   func() time.Time
	log   *slog.Logger
}

func newPromptCleanup(k kit) Worker[*jobs.PromptCleanup] {
	return &promptCleanup{store: prompts.NewStore(k.Redis()), now: k.Now, log: k.Logger}
}

func (h *promptCleanup) Work(ctx context.Context, p *jobs.PromptCleanup) (Result, error) {
	days := p.DaysToKeep
	n, err := h.store.Cleanup(ctx, h.now(), time.Duration(days)*24*time.Hour)
	if err != nil {
		return nil, err
	}
	if n > 0 {
		h.log.InfoContext(ctx, "scheduled prompts cleaned up", "deleted", n, "days_to_keep", days)
	}
	return Result{"deleted": n, "days_to_keep": days}, nil
}
