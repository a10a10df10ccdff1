package maint_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/kg/maint"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

func TestRunLogResumesTheSameTaskAndStartsOthersWithALaterStamp(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	log := maint.NewRunLog(rdb)
	now := time.UnixMilli(1_800_000_000_000)

	first, err := log.Begin(ctx, "kg_decay_task@1000", 1000, now)
	if err != nil {
		t.Fatal(err)
	}
	if first.Stamp != 1000 || first.Next != 0 || first.State != maint.StateRunning || first.Resumed {
		t.Fatalf("first run %+v", first)
	}
	if err := log.Advance(ctx, first, 1234); err != nil {
		t.Fatal(err)
	}
	// A retry of the same task resumes: same stamp, recorded progress.
	retry, err := log.Begin(ctx, "kg_decay_task@1000", 5000, now)
	if err != nil {
		t.Fatal(err)
	}
	if retry.Stamp != 1000 || retry.Next != 1234 || retry.State != maint.StateRunning || !retry.Resumed {
		t.Fatalf("retry %+v, want the first run resumed at 1234", retry)
	}
	if err := log.Finish(ctx, retry, maint.DecayStats{Decayed: 5, Removed: 1, Batches: 1}, now); err != nil {
		t.Fatal(err)
	}
	again, err := log.Begin(ctx, "kg_decay_task@1000", 1000, now)
	if err != nil || again.State != maint.StateDone {
		t.Fatalf("third delivery %+v (%v), want the run found done", again, err)
	}
	if h := rdb.HGetAll(ctx, maint.DecayRunKey).Val(); h["removed"] != "1" || h["finished_ms"] != "1800000000000" {
		t.Errorf("run record %v", h)
	}

	// A manual run whose candidate stamp is not later still gets a later
	// one, so it does not skip edges as already decayed.
	manual, err := log.Begin(ctx, "0b6f-manual", 900, now)
	if err != nil {
		t.Fatal(err)
	}
	if manual.Stamp != 1001 || manual.Resumed || manual.Next != 0 {
		t.Fatalf("manual run %+v, want stamp 1001 from the start", manual)
	}
	// The replaced run may no longer record anything.
	if err := log.Advance(ctx, retry, 99); !errors.Is(err, maint.ErrRunReplaced) {
		t.Errorf("advance of a replaced run: %v", err)
	}
	next, err := log.Begin(ctx, "kg_decay_task@2000", 2000, now)
	if err != nil || next.Stamp != 2000 {
		t.Fatalf("next occurrence %+v (%v), want its due time as stamp", next, err)
	}
	if h := rdb.HGetAll(ctx, maint.DecayRunKey).Val(); h["prev_task_id"] != "0b6f-manual" || h["prev_state"] != maint.StateRunning {
		t.Errorf("run record %v, want the unfinished manual run as previous", h)
	}
}
