package server_test

import (
	"context"
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/clients/llm/killswitch"
	"github.com/stargazer/stargazer-jobs/internal/clients/llm/meter"
	"github.com/stargazer/stargazer-jobs/internal/queue/events"
	"github.com/stargazer/stargazer-jobs/internal/queue/server"
	"github.com/stargazer/stargazer-jobs/internal/spend"
	"github.com/stargazer/stargazer-jobs/internal/testkit/poll"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// okChat answers every call with 1,000 tokens.
type okChat struct{ calls atomic.Int32 }

func (c *okChat) Chat(context.Context, llm.Request) (*llm.Response, error) {
	c.calls.Add(1)
	return &llm.Response{Content: "ok", Usage: llm.Usage{PromptTokens: 900, CompletionTokens: 100}}, nil
}

// A task whose budget is spent is deferred, not failed: its run ends at
// the refusal (not retried, not archived, no failure counted, one debug
// event), its next runs stand down at start, its queued children wait
// parked in the retry set without counting a retry, and raising the budget
// lifts the deferral and runs the parked children at once.
func TestARunWhoseBudgetIsSpentIsDeferredNotFailed(t *testing.T) {
	h := newHarness(t, 5*time.Second)
	rdb := h.srv.Client(t)
	ctx := context.Background()
	ledger := spend.New(rdb, spend.Options{Budgets: map[string]spend.Limit{jobs.ChannelHeartbeat: spend.Tokens(1000)}})
	h.opts.Spend = ledger
	h.mux = newMux(h)
	fake := &okChat{}
	model := meter.Chat(ledger, fake, time.Minute)
	call := func(ctx context.Context) error {
		_, err := model.Chat(ctx, llm.Request{Model: "m", Messages: []llm.Message{{Role: "user", Content: "hello"}}})
		return err
	}
	var parentRuns, childRuns atomic.Int32
	h.mux.HandleFunc(jobs.ChannelHeartbeat, func(ctx context.Context, _ *asynq.Task) error {
		parentRuns.Add(1)
		return call(ctx)
	})
	h.mux.HandleFunc(jobs.ChannelHeartbeatChannel, func(ctx context.Context, _ *asynq.Task) error {
		childRuns.Add(1)
		if err := call(ctx); err != nil {
			return err
		}
		return call(ctx)
	})
	sub := rdb.Subscribe(ctx, "test:debug")
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	s := h.start(t)
	defer s.Shutdown()

	// The child's first call passes (1,000 tokens: the whole budget), its second is
	// refused: it is parked.
	child, err := h.client.Enqueue(asynq.NewTask(jobs.ChannelHeartbeatChannel, []byte(`{"platform":"discord","channel_id":"1"}`)),
		asynq.Queue(jobs.QueueDefault), asynq.MaxRetry(2))
	if err != nil {
		t.Fatal(err)
	}
	poll.Until(t, "the child parked", func() bool {
		info, err := h.insp.GetTaskInfo(jobs.QueueDefault, child.ID)
		return err == nil && info.State == asynq.TaskStateRetry
	})
	info, _ := h.insp.GetTaskInfo(jobs.QueueDefault, child.ID)
	if info.Retried != 0 || !strings.HasPrefix(info.LastErr, "deferred: budget until ") || info.NextProcessAt.Before(time.Now().Add(time.Minute)) {
		t.Fatalf("parked child: retried %d, last error %q, next run %v: want no retry counted, a deferral, and a wait until the window ends",
			info.Retried, info.LastErr, info.NextProcessAt)
	}
	select {
	case msg := <-sub.Channel():
		var e events.Event
		if err := json.Unmarshal([]byte(msg.Payload), &e); err != nil {
			t.Fatal(err)
		}
		if e.Status != "deferred" || e.Payload["task"] != jobs.ChannelHeartbeatChannel || e.Payload["charged_to"] != jobs.ChannelHeartbeat || e.Payload["reason"] != "budget" {
			t.Fatalf("debug event %+v", e)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no debug event for the deferral")
	}

	// The parent's run stands down at start: its handler does not run.
	parent, err := h.client.Enqueue(asynq.NewTask(jobs.ChannelHeartbeat, nil), asynq.Queue(jobs.QueueDefault), asynq.MaxRetry(3))
	if err != nil {
		t.Fatal(err)
	}
	poll.Until(t, "the parent's run standing down", func() bool {
		_, err := h.insp.GetTaskInfo(jobs.QueueDefault, parent.ID)
		return err != nil // revoked: gone, neither retried nor archived
	})
	if n := parentRuns.Load(); n != 0 {
		t.Fatalf("the parent's handler ran %d times while its task was deferred", n)
	}
	if n := testutil.ToFloat64(h.metrics.TaskStoodDown.WithLabelValues(jobs.ChannelHeartbeat, "budget")); n != 1 {
		t.Errorf("parent stood down %v times, want 1", n)
	}
	for _, task := range []string{jobs.ChannelHeartbeat, jobs.ChannelHeartbeatChannel} {
		if n := testutil.ToFloat64(h.metrics.TaskRuns.WithLabelValues(task, "deferred")); n != 1 {
			t.Errorf("%s: %v deferred runs, want 1", task, n)
		}
		if n := testutil.ToFloat64(h.metrics.TaskArchived.WithLabelValues(task)); n != 0 {
			t.Errorf("%s: %v archived", task, n)
		}
	}
	if n := testutil.CollectAndCount(h.metrics.TaskCrashes); n != 0 {
		t.Errorf("%d failure series: a deferral is no failure", n)
	}
	q, err := h.insp.GetQueueInfo(jobs.QueueDefault)
	if err != nil || q.Failed != 0 {
		t.Fatalf("queue stats %+v (%v): want no failure counted by asynq", q, err)
	}

	// Raising the budget lifts the deferral: the gate runs the parked
	// child at once (it would wait for midnight otherwise).
	gate := spend.NewGate(ledger, h.insp, nil)
	held, lifted, err := gate.Check(ctx)
	if err != nil || !held[jobs.ChannelHeartbeat] || len(lifted) != 0 {
		t.Fatalf("before the raise: held %v, lifted %v, %v", held, lifted, err)
	}
	if err := spend.SetOverride(ctx, rdb, jobs.ChannelHeartbeat, spend.Override{Limit: spend.Tokens(10_000)}); err != nil {
		t.Fatal(err)
	}
	held, lifted, err = gate.Check(ctx)
	if err != nil || len(held) != 0 || len(lifted) != 1 || lifted[0] != jobs.ChannelHeartbeat {
		t.Fatalf("after the raise: held %v, lifted %v, %v", held, lifted, err)
	}
	poll.Until(t, "the parked child completed", func() bool {
		info, err := h.insp.GetTaskInfo(jobs.QueueDefault, child.ID)
		return err != nil || info.State == asynq.TaskStateCompleted
	})
	if n := childRuns.Load(); n != 2 {
		t.Errorf("child ran %d times, want 2 (deferred, then resumed)", n)
	}
}

// newMux rebuilds h's mux after its options changed.
func newMux(h *harness) *asynq.ServeMux { return server.Mux(h.opts) }

// With the kill switch off, a chat-LLM run stands down at start on the
// deferral path: its handler does not run, nothing is retried or failed,
// and the task is recorded as deferred (kill_switch) until the switch is
// back on, as `enqueuer schedules` and the alert read it.
func TestAKillSwitchStandDownIsADeferral(t *testing.T) {
	h := newHarness(t, 5*time.Second)
	rdb := h.srv.Client(t)
	ctx := context.Background()
	// The runtime switch in Redis, off: the ledger and the switch read the
	// same key, as the app wires them.
	const key = "test:chat_llm_enabled"
	if err := rdb.Set(ctx, key, "0", 0).Err(); err != nil {
		t.Fatal(err)
	}
	ledger := spend.New(rdb, spend.Options{SwitchKey: key})
	h.opts.Spend = ledger
	h.opts.KillSwitch = killswitch.New(rdb, key, true)
	h.mux = newMux(h)
	var runs atomic.Int32
	h.mux.HandleFunc(jobs.ChannelHeartbeat, func(context.Context, *asynq.Task) error {
		runs.Add(1)
		return nil
	})
	s := h.start(t)
	defer s.Shutdown()

	run, err := h.client.Enqueue(asynq.NewTask(jobs.ChannelHeartbeat, nil), asynq.Queue(jobs.QueueDefault), asynq.MaxRetry(3))
	if err != nil {
		t.Fatal(err)
	}
	poll.Until(t, "the run standing down", func() bool {
		_, err := h.insp.GetTaskInfo(jobs.QueueDefault, run.ID)
		return err != nil // revoked: neither retried nor archived
	})
	if n := runs.Load(); n != 0 {
		t.Fatalf("the handler ran %d times with the kill switch off", n)
	}
	d, held, err := ledger.Held(ctx, jobs.ChannelHeartbeat)
	if err != nil || !held || d.Reason != spend.ReasonKillSwitch {
		t.Fatalf("deferral %+v held %v (%v): want the task deferred by the kill switch", d, held, err)
	}
	if n := testutil.ToFloat64(h.metrics.TaskStoodDown.WithLabelValues(jobs.ChannelHeartbeat, server.StandDownKillSwitch)); n != 1 {
		t.Errorf("stood down %v times (kill_switch), want 1", n)
	}
	if n := testutil.ToFloat64(h.metrics.TaskRuns.WithLabelValues(jobs.ChannelHeartbeat, server.StatusDeferred)); n != 1 {
		t.Errorf("%v deferred runs, want 1", n)
	}
	if q, err := h.insp.GetQueueInfo(jobs.QueueDefault); err != nil || q.Failed != 0 || q.Archived != 0 || q.Retry != 0 {
		t.Fatalf("queue stats %+v (%v): want nothing failed, archived or waiting for a retry", q, err)
	}
}
