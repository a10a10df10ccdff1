package handlers

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/kg/maint"
	"github.com/stargazer/stargazer-jobs/internal/queue/events"
	"github.com/stargazer/stargazer-jobs/internal/queue/singleton"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// KGSettings tune the knowledge-graph maintenance tasks (KG_DECAY_FACTOR,
// KG_DECAY_MIN_WEIGHT, KG_BATCH_SIZE).
type KGSettings struct {
	// DecayFactor multiplies every relationship weight once per decay run
	// (zero: maint.DefaultDecayFactor).
	DecayFactor float64
	// DecayMinWeight: relationships decayed under it are deleted (zero:
	// none are).
	DecayMinWeight float64
	// BatchSize bounds the edges or nodes one graph write touches (zero:
	// maint.DefaultBatchSize).
	BatchSize int
	// ClaimTTL is KG_EXTRACTION_CLAIM_TTL, the extraction engine's claim
	// lease (zero: extract.DefaultClaimTTL).
	ClaimTTL time.Duration
}

// kgDecay decays every relationship weight by the configured factor and
// deletes the relationships that fall under the threshold, once per
// scheduled occurrence: the run is recorded under the task's ID
// (kg_decay_task@<due ms>), so a second delivery of the occurrence changes
// nothing and a retry after a crash decays only what the crashed attempt
// had not (see maint.RunLog). A run enqueued by hand has its own ID and
// decays once more, which is what an operator asks for.
//
// Like the original it publishes a kg_decay debug event with the number of
// relationships removed, or the error.
type kgDecay struct {
	graph    Graph // under the graph write lock
	runs     *maint.RunLog
	settings KGSettings
	now      func() time.Time
	log      *slog.Logger
	events   EventPublisher
}

func newKGDecay(k kit) Worker[*jobs.Empty] {
	// The graph write lock keeps each batch out of an extraction batch's
	// writes: FalkorDB 4.16.3 does not fully serialise concurrent writes,
	// and a weight reinforced while being decayed could lose an update.
	return &kgDecay{graph: k.writeLockedGraph(), runs: maint.NewRunLog(k.Jobs()), settings: k.KG,
		now: k.Now, log: k.Logger, events: k.Events}
}

func (h *kgDecay) Work(ctx context.Context, _ *jobs.Empty) (Result, error) {
	start := time.Now()
	id, ok := asynq.GetTaskID(ctx)
	if !ok { // called outside a worker: a run of its own
		id = "direct-" + strconv.FormatInt(h.now().UnixNano(), 10)
	}
	res, err := h.run(ctx, id)
	h.publishEvent(ctx, time.Since(start), res, err)
	return res, err
}

// run decays once for the occurrence taskID names.
func (h *kgDecay) run(ctx context.Context, taskID string) (Result, error) {
	runs := h.runs
	run, err := runs.Begin(ctx, taskID, occurrenceStamp(taskID, h.now()), h.now())
	if err != nil {
		return nil, fmt.Errorf("kg decay: %w", err)
	}
	if run.State == maint.StateDone {
		h.log.InfoContext(ctx, "KG decay already applied for this occurrence", "task", jobs.KGDecay, "run", taskID)
		return Result{"decayed": 0, "removed": 0, "batches": 0, "run": taskID, "already_applied": true}, nil
	}
	st, err := maint.Decay(ctx, h.graph, maint.DecayOptions{
		Run: run.Stamp, From: run.Next,
		Factor: h.settings.DecayFactor, MinWeight: h.settings.DecayMinWeight, BatchSize: h.settings.BatchSize,
		Verify:   singleton.Verify,
		Progress: func(ctx context.Context, next int64) error { return runs.Advance(ctx, run, next) },
	})
	if err != nil {
		h.log.WarnContext(ctx, "KG relationship decay failed", "task", jobs.KGDecay, "run", taskID,
			"decayed", st.Decayed, "removed", st.Removed, "batches", st.Batches, "error", err)
		return nil, fmt.Errorf("kg decay: %w", err)
	}
	if err := runs.Finish(ctx, run, st, h.now()); err != nil {
		return nil, fmt.Errorf("kg decay: %w", err)
	}
	if st.Removed > 0 {
		h.log.InfoContext(ctx, fmt.Sprintf("KG decay removed %d weak relationships", st.Removed),
			"task", jobs.KGDecay, "run", taskID, "decayed", st.Decayed, "batches", st.Batches, "resumed", run.Resumed)
	}
	// The counts are this attempt's, so that the Prometheus counters fed
	// from them add up to the edges decayed, retries or not.
	return Result{"decayed": st.Decayed, "removed": st.Removed, "batches": st.Batches,
		"run": taskID, "resumed": run.Resumed}, nil
}

// occurrenceStamp is a run's candidate stamp: the due time of a scheduled
// occurrence (stable across its retries), else the current time.
func occurrenceStamp(taskID string, now time.Time) int64 {
	if due, ok := strings.CutPrefix(taskID, jobs.KGDecay+"@"); ok {
		if ms, err := strconv.ParseInt(due, 10, 64); err == nil && ms > 0 {
			return ms
		}
	}
	return now.UnixMilli()
}

// publishEvent sends the original's kg_decay debug event. Events are
// best-effort: a failure is logged, never fails the run.
func (h *kgDecay) publishEvent(ctx context.Context, took time.Duration, res Result, runErr error) {
	if h.events == nil {
		return
	}
	e := events.Event{Topic: "kg_decay", Source: "background_tasks", Status: "ok",
		DurationMS: float64(took.Microseconds()) / 1000}
	if runErr != nil {
		e.Status, e.Preview, e.Payload = "error", "error="+clip(runErr.Error(), 100), map[string]any{"error": runErr.Error()}
	} else {
		removed := res["removed"]
		e.Preview, e.Payload = fmt.Sprintf("removed=%v", removed), map[string]any{"removed": removed}
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := h.events.Publish(pctx, e); err != nil {
		h.log.WarnContext(ctx, "kg_decay debug event not published", "task", jobs.KGDecay, "error", err)
	}
}
