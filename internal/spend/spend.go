// Package spend is the LLM spend ledger: every chat/completions and
// embeddings call is charged, exactly once, to the catalog task that made
// it (the parent task for children and extraction units), its model and
// its purpose, per UTC day, in Redis, where every worker shares it; and
// the daily budgets (LLM_BUDGETS) are enforced before each call, across
// the cluster. A task whose budget is spent is deferred, not failed: its
// run stops, and it waits for the next window or a raised budget.
//
// Keys (docs/data-model.md, "LLM spend"):
//
//	sgjobs:llm:spend:day:<YYYY-MM-DD>  hash, the day's ledger, kept 90 days:
//	    line|<task>|<purpose>|<model>  "calls prompt completion usd_nano
//	                                   estimated unpriced items": calls charged,
//	                                   tokens reported (or estimated), cost in
//	                                   1e-9 USD, calls charged from an estimate,
//	                                   calls of a model without a price, messages
//	                                   the calls covered
//	    total|<task or *>              "spent_tokens spent_usd_nano held_tokens
//	                                   held_usd_nano orphaned": settled, reserved
//	                                   by calls in flight, reservations released at
//	                                   their lease's end (the worker died mid-call)
//	sgjobs:llm:spend:inflight           zset, the reservations of calls in
//	                                    flight, scored by their lease's end
//	sgjobs:llm:spend:budgets            hash, run-time budget overrides
//	                                    (enqueuer budget set): task -> t:N | u:N | none
//	sgjobs:llm:spend:deferred           hash, task -> deferral (JSON)
//	sgjobs:llm:spend:parked:<task>      set, queued runs of the task (children,
//	                                    units) waiting for the deferral to lift
//
// A call reserves its estimate (prompt characters / 4 plus max_tokens, and
// their price) before it starts, in one script that also reads the kill
// switch (a budget of 0), sweeps reservations whose worker died, and
// refuses the call if the task's or the cluster's spend plus what is
// reserved plus the estimate would cross the budget. After the call a
// second script settles the reservation to the reported usage. A call ID
// reserved before the request makes the charge idempotent: the settlement
// removes the reservation, and a settlement that finds none (a replay, or
// a lease that ended) charges nothing. Two Redis round trips per call, one
// of which replaces the kill switch's read.
package spend

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"
)

// Keys.
const (
	KeyPrefix    = "sgjobs:llm:spend:"
	dayPrefix    = KeyPrefix + "day:"
	InflightKey  = KeyPrefix + "inflight"
	OverridesKey = KeyPrefix + "budgets"
	DeferredKey  = KeyPrefix + "deferred"
	parkedPrefix = KeyPrefix + "parked:"
)

// DayKey is the ledger of day (YYYY-MM-DD, UTC).
func DayKey(day string) string { return dayPrefix + day }

// Retention is how long a day's ledger is kept.
const Retention = 90 * 24 * time.Hour

// Cluster is the budget scope of every task together (LLM_BUDGETS's *).
const Cluster = "*"

// Unknown is the task of a call made outside any task's run.
const Unknown = "unknown"

// Deferral reasons.
const (
	ReasonBudget     = "budget"
	ReasonKillSwitch = "kill_switch"
)

// Day is the UTC day of t, the budget window it falls in.
func Day(t time.Time) string { return t.UTC().Format(time.DateOnly) }

// WindowEnd is when the budget window of t ends: the next UTC midnight.
func WindowEnd(t time.Time) time.Time {
	y, m, d := t.UTC().Date()
	return time.Date(y, m, d+1, 0, 0, 0, 0, time.UTC)
}

// Price is a model's price in USD per million prompt and completion
// tokens.
type Price struct {
	Prompt, Completion float64
}

// nano is the cost of tokens at perMillion USD per million, in 1e-9 USD.
func nano(tokens int64, perMillion float64) int64 {
	return int64(math.Round(float64(tokens) * perMillion * 1000))
}

// Cost is the price of prompt and completion tokens, in 1e-9 USD.
func (p Price) Cost(prompt, completion int64) int64 {
	return nano(prompt, p.Prompt) + nano(completion, p.Completion)
}

// Limit is a daily budget: tokens, or nano-USD when InUSD.
type Limit struct {
	Tokens  int64
	USDNano int64
	InUSD   bool
}

// USD is a dollar amount as a Limit.
func USD(dollars float64) Limit { return Limit{USDNano: int64(math.Round(dollars * 1e9)), InUSD: true} }

// Tokens is a token count as a Limit.
func Tokens(n int64) Limit { return Limit{Tokens: n} }

// arg is the limit as the scripts read it.
func (l Limit) arg() string {
	if l.InUSD {
		return fmt.Sprintf("u:%d", l.USDNano)
	}
	return fmt.Sprintf("t:%d", l.Tokens)
}

// Unit names the limit's unit: tokens or usd.
func (l Limit) Unit() string {
	if l.InUSD {
		return "usd"
	}
	return "tokens"
}

// Amount is the limit in its unit (dollars for a USD limit).
func (l Limit) Amount() float64 {
	if l.InUSD {
		return float64(l.USDNano) / 1e9
	}
	return float64(l.Tokens)
}

func (l Limit) String() string {
	if l.InUSD {
		return fmt.Sprintf("$%.2f", l.Amount())
	}
	return fmt.Sprintf("%d tokens", l.Tokens)
}

// parseLimit reads a limit as the scripts store it; ok is false for
// "none" (an override that lifts the configured budget) and for anything
// that is not a limit.
func parseLimit(s string) (Limit, bool) {
	var n int64
	switch {
	case len(s) > 2 && s[:2] == "t:":
		if _, err := fmt.Sscanf(s[2:], "%d", &n); err == nil && n >= 0 {
			return Limit{Tokens: n}, true
		}
	case len(s) > 2 && s[:2] == "u:":
		if _, err := fmt.Sscanf(s[2:], "%d", &n); err == nil && n >= 0 {
			return Limit{USDNano: n, InUSD: true}, true
		}
	}
	return Limit{}, false
}

// Refusal is a call that did not start: the kill switch is off (Reason
// ReasonKillSwitch), or the call would cross a budget (ReasonBudget:
// Scope's, the task's or the cluster's). The metered LLM clients return it
// as an llm.ErrRefused (internal/clients/llm/meter).
type Refusal struct {
	Task   string
	Reason string
	// Scope is the budget crossed: the task, or Cluster.
	Scope string
	// Limit is the budget; Used what was spent and reserved when the call
	// was refused; NeedTokens and NeedUSDNano the refused call's estimate.
	Limit       Limit
	Used        int64
	NeedTokens  int64
	NeedUSDNano int64
	// Window is the day whose budget is spent; Until when it ends (zero
	// for the kill switch: until it is back on).
	Window string
	Until  time.Time
	// Switch says what the kill switch holds (ReasonKillSwitch).
	Switch string
}

func (r *Refusal) Error() string {
	if r.Reason == ReasonKillSwitch {
		return fmt.Sprintf("LLM call of %s refused: the chat-LLM kill switch is off (%s)", r.Task, r.Switch)
	}
	used := fmt.Sprintf("%d tokens", r.Used)
	if r.Limit.InUSD {
		used = fmt.Sprintf("$%.4f", float64(r.Used)/1e9)
	}
	return fmt.Sprintf("LLM call of %s refused: budget of %s (%s a UTC day) spent: %s used on %s; deferred until %s",
		r.Task, r.Scope, r.Limit, used, r.Window, r.Until.UTC().Format(time.RFC3339))
}

// AsRefusal finds a refusal in err's chain.
func AsRefusal(err error) (*Refusal, bool) {
	var r *Refusal
	if errors.As(err, &r) {
		return r, true
	}
	return nil, false
}

type taskKey struct{}

// attribution is what ctx says about its calls: the task they are charged
// to, and the run's last settlement in flight, which its next call waits
// for, so a run's calls settle in order and a run calling one at a time
// has one call in flight, as far as its budget can tell.
type attribution struct {
	task string
	mu   sync.Mutex
	last chan struct{}
}

// WithTask attributes the LLM calls made under ctx to task: one run's.
func WithTask(ctx context.Context, task string) context.Context {
	return context.WithValue(ctx, taskKey{}, &attribution{task: task})
}

// TaskOf is the task ctx's calls are charged to (Unknown if none).
func TaskOf(ctx context.Context) string {
	if a, ok := ctx.Value(taskKey{}).(*attribution); ok && a.task != "" {
		return a.task
	}
	return Unknown
}

// settled waits until the run's last settlement has landed (or ctx ends).
func settled(ctx context.Context) error {
	a, ok := ctx.Value(taskKey{}).(*attribution)
	if !ok {
		return nil
	}
	a.mu.Lock()
	last := a.last
	a.mu.Unlock()
	if last == nil {
		return nil
	}
	select {
	case <-last:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// settling records done as the run's last settlement in flight.
func settling(ctx context.Context, done chan struct{}) {
	if a, ok := ctx.Value(taskKey{}).(*attribution); ok {
		a.mu.Lock()
		a.last = done
		a.mu.Unlock()
	}
}
