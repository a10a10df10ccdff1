package chaos

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/spend"
	"github.com/stargazer/stargazer-jobs/internal/testkit/chaos/check"
	"github.com/stargazer/stargazer-jobs/internal/testkit/faultproxy"
)

// inject runs the schedule from warm: each fault at its time, healed
// after its duration; faults overlap as planned. It returns when every
// fault has been healed.
func (h *harness) inject(ctx context.Context, warm time.Time) {
	var wg sync.WaitGroup
	for _, p := range h.plan {
		if h.o.Drop[p.ID] {
			continue
		}
		wg.Go(func() {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Until(warm.Add(p.At))):
			}
			f := h.run(ctx, p)
			h.mu.Lock()
			h.faults = append(h.faults, f)
			h.mu.Unlock()
			line := fmt.Sprintf("fault #%d %s %s %s", f.ID, f.Kind, f.Target, f.Detail)
			if f.Skipped != "" {
				line += " (not injected: " + f.Skipped + ")"
			}
			h.logf("%s", line)
		})
	}
	wg.Wait()
	// Whatever the period's end: nothing stays faulted.
	h.fakes.SetLLMFault(LLMFault{})
	h.liftBudget(ctx)
	for _, s := range h.slots {
		s.redisProxy.SetMode(faultproxy.Pass)
		s.redisProxy.SetLatency(0)
		s.falkorProxy.SetMode(faultproxy.Pass)
		s.falkorProxy.SetLatency(0)
		_ = os.WriteFile(s.clockFile, []byte("0s"), 0o644)
	}
	if time.Until(warm.Add(h.o.Duration)) > 0 {
		select {
		case <-ctx.Done():
		case <-time.After(time.Until(warm.Add(h.o.Duration))):
		}
	}
}

func (h *harness) slotOf(name string) *slot {
	for _, s := range h.slots {
		if s.name == name {
			return s
		}
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// run injects one fault, waits its duration, heals it, and returns it as
// executed.
func (h *harness) run(ctx context.Context, p Planned) (f check.Fault) {
	f = check.Fault{ID: p.ID, Kind: p.Kind, Target: p.Target, Start: time.Now()}
	defer func() {
		if f.End.IsZero() {
			f.End = time.Now()
		}
	}()
	switch p.Kind {
	case check.KindKill, check.KindTerm:
		s := h.slotOf(p.Target)
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.cur == nil || !s.cur.alive() {
			f.Skipped = "worker not running"
			return f
		}
		sig, name := syscall.SIGKILL, "SIGKILL"
		if p.Kind == check.KindTerm {
			sig, name = syscall.SIGTERM, "SIGTERM"
		}
		pid := s.cur.pid
		f.Start = time.Now()
		s.cur.stop(sig, 20*time.Second)
		f.Detail = fmt.Sprintf("%s pid %d, restart after %v", name, pid, p.For)
		sleepCtx(ctx, p.For)
		np, err := h.start(s, h.currentDeployment())
		f.End = time.Now()
		if err != nil {
			f.Detail += "; restart failed: " + err.Error()
		} else {
			f.Detail += fmt.Sprintf(" as pid %d", np.pid)
		}
	case check.KindRedisKill:
		f.Detail = fmt.Sprintf("SIGKILL redis-server, restart from its AOF after %v", p.For)
		h.redis.Crash()
		sleepCtx(ctx, p.For)
		if err := h.redis.Relaunch(); err != nil {
			f.Detail += "; restart failed: " + err.Error()
		}
	case check.KindRedisPause:
		f.Detail = fmt.Sprintf("SIGSTOP redis-server for %v", p.For)
		_ = h.redis.Signal(syscall.SIGSTOP)
		sleepCtx(ctx, p.For)
		_ = h.redis.Signal(syscall.SIGCONT)
	case check.KindPartitionRedis, check.KindPartitionFalkor:
		s := h.slotOf(p.Target)
		px, what := s.redisProxy, "Redis"
		if p.Kind == check.KindPartitionFalkor {
			px, what = s.falkorProxy, "FalkorDB"
		}
		mode := faultproxy.Stall
		if p.Mode == "drop" {
			mode = faultproxy.Drop
		}
		f.Detail = fmt.Sprintf("%s ↔ %s %s for %v", p.Target, what, p.Mode, p.For)
		px.SetMode(mode)
		sleepCtx(ctx, p.For)
		px.SetMode(faultproxy.Pass)
	case check.KindLatencyRedis, check.KindLatencyFalkor:
		s := h.slotOf(p.Target)
		px, what := s.redisProxy, "Redis"
		if p.Kind == check.KindLatencyFalkor {
			px, what = s.falkorProxy, "FalkorDB"
		}
		f.Detail = fmt.Sprintf("%s ↔ %s +%v per chunk each way for %v", p.Target, what, p.Amount, p.For)
		px.SetLatency(p.Amount)
		sleepCtx(ctx, p.For)
		px.SetLatency(0)
	case check.KindFalkorStall:
		f.Detail = fmt.Sprintf("SIGSTOP FalkorDB for %v", p.For)
		before := h.dumps()
		_ = h.falkor.Signal(syscall.SIGSTOP)
		sleepCtx(ctx, p.For)
		// What the workers hold while FalkorDB is frozen, against before.
		f.Detail += h.saveStackGrowth(fmt.Sprintf("falkordb-stall-%d", p.ID), before)
		_ = h.falkor.Signal(syscall.SIGCONT)
	case check.KindLLM429, check.KindLLM5xx, check.KindLLMHang:
		lf := LLMFault{}
		switch p.Kind {
		case check.KindLLM429:
			lf = LLMFault{Mode: "429", RetryAfter: int(p.Amount / time.Second)}
			f.Detail = fmt.Sprintf("429 with Retry-After %d for %v", lf.RetryAfter, p.For)
		case check.KindLLM5xx:
			lf = LLMFault{Mode: "5xx", Status: p.Status}
			f.Detail = fmt.Sprintf("%d for %v", p.Status, p.For)
		default:
			lf = LLMFault{Mode: "hang"}
			f.Detail = fmt.Sprintf("calls hang past the deadline for %v", p.For)
		}
		h.fakes.SetLLMFault(lf)
		sleepCtx(ctx, p.For)
		h.fakes.SetLLMFault(LLMFault{})
	case check.KindMalformed:
		f.Detail = p.What
		if err := h.bot.malformed(ctx, p.What); err != nil {
			f.Detail += "; not written: " + err.Error()
		}
	case check.KindClock:
		s := h.slotOf(p.Target)
		f.Detail, f.Offset = fmt.Sprintf("clock %+v for %v", p.Amount, p.For), p.Amount
		h.mu.Lock()
		h.maxOffset = max(h.maxOffset, p.Amount.Abs())
		h.mu.Unlock()
		_ = os.WriteFile(s.clockFile, []byte(p.Amount.String()), 0o644)
		sleepCtx(ctx, p.For)
		_ = os.WriteFile(s.clockFile, []byte("0s"), 0o644)
	case check.KindDeploy:
		h.mu.Lock()
		h.deployN++
		id := fmt.Sprintf("deploy-%d", h.deployN)
		h.deployment = id
		h.deployments = append(h.deployments, check.Deployment{ID: id, Start: time.Now()})
		h.mu.Unlock()
		var out []string
		for _, s := range h.slots {
			s.mu.Lock()
			if s.cur != nil && s.cur.alive() {
				s.cur.stop(syscall.SIGTERM, 20*time.Second)
			}
			np, err := h.start(s, id)
			s.mu.Unlock()
			if err != nil {
				out = append(out, s.name+" failed: "+err.Error())
				continue
			}
			out = append(out, fmt.Sprintf("%s→%d", s.name, np.pid))
		}
		f.Detail = "rolling restart to " + id + ": " + strings.Join(out, " ")
	case check.KindBudget:
		// As an operator would: the run-time budget of the whole cluster
		// set to nothing, then cleared. The fault starts once Redis has
		// it (Redis may be down at that moment: retried for 15 s).
		h.budgetMu.Lock()
		defer h.budgetMu.Unlock()
		f.Detail = fmt.Sprintf("budget of %s spent (0 tokens) for %v", p.What, p.For)
		if err := retryFor(ctx, 15*time.Second, func(ctx context.Context) error {
			return spend.SetOverride(ctx, h.rdb, p.What, spend.Override{Limit: spend.Tokens(0)})
		}); err != nil {
			f.Skipped = "not set: " + err.Error()
			return f
		}
		f.Start = time.Now()
		sleepCtx(ctx, p.For)
		h.liftBudget(ctx)
		f.End = time.Now()
	case check.KindForeignScheduler:
		fr, err := h.bot.foreignRun(ctx, p.What)
		f.Detail = "task=" + p.What
		if err != nil {
			f.Skipped = "not published: " + err.Error()
			return f
		}
		h.mu.Lock()
		h.foreign = append(h.foreign, fr)
		h.mu.Unlock()
		if !fr.StandDownUntil.IsZero() {
			f.End = fr.StandDownUntil
		} else {
			f.Detail += " (no worker recorded it)"
		}
	}
	return f
}

// liftBudget clears the run-time budget a budget fault set, retrying
// while Redis is down: a budget left spent would stop the run's LLM work.
func (h *harness) liftBudget(ctx context.Context) {
	err := retryFor(ctx, time.Minute, func(ctx context.Context) error {
		_, err := spend.ClearOverride(ctx, h.rdb, spend.Cluster)
		return err
	})
	if err != nil {
		h.logf("budget: could not clear the run-time budget: %v", err)
	}
}

// retryFor calls fn until it succeeds or d has passed.
func retryFor(ctx context.Context, d time.Duration, fn func(context.Context) error) error {
	deadline := time.Now().Add(d)
	for {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err := fn(cctx)
		cancel()
		if err == nil || ctx.Err() != nil || time.Now().After(deadline) {
			return err
		}
		sleepCtx(ctx, 500*time.Millisecond)
	}
}

// dumps takes each live worker's goroutine dump, by pid.
func (h *harness) dumps() map[int]string {
	out := map[int]string{}
	for _, s := range h.slots {
		p := s.live()
		if p == nil {
			continue
		}
		if d, err := goroutines(p.http); err == nil {
			out[p.pid] = d
		}
	}
	return out
}

// stackGrowth takes a goroutine dump of each running worker that has one
// in before (by pid) and calls each with the stacks it holds more
// goroutines in now than then (newStacks).
func (h *harness) stackGrowth(before map[int]string, each func(s *slot, pid, more int, report string)) {
	for _, s := range h.slots {
		p := s.live()
		if p == nil || before[p.pid] == "" {
			continue
		}
		now, err := goroutines(p.http)
		if err != nil {
			continue
		}
		more, report := newStacks(before[p.pid], now)
		each(s, p.pid, more, report)
	}
}

// saveStackGrowth writes, for each worker that holds more goroutines now
// than in before, the stacks that grew, to logs/<name>.<what>.txt, and
// says how many more each holds.
func (h *harness) saveStackGrowth(what string, before map[int]string) string {
	var notes []string
	h.stackGrowth(before, func(s *slot, _, more int, report string) {
		if more == 0 {
			return
		}
		path := filepath.Join(h.dir, "logs", s.name+"."+what+".txt")
		_ = os.WriteFile(path, []byte(report), 0o644)
		notes = append(notes, fmt.Sprintf("%s +%d", s.name, more))
	})
	if len(notes) == 0 {
		return ""
	}
	return "; goroutines meanwhile: " + strings.Join(notes, ", ")
}
