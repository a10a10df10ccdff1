package spend

import (
	"context"
	crand "crypto/rand"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Options configure a Ledger.
type Options struct {
	// Prices by model; a model without one is charged tokens only.
	Prices map[string]Price
	// Budgets by task, Cluster for every task together, per UTC day. An
	// override set at run time (SetOverride) wins.
	Budgets map[string]Limit
	// SwitchKey is the chat-LLM kill switch's Redis key; SwitchOff is the
	// startup setting's verdict (BACKGROUND_SCHEDULER_CHAT_LLM_ENABLED=false):
	// off for good. While the switch is off every chat call is refused:
	// the switch is a budget of 0.
	SwitchKey string
	SwitchOff bool
	// Switch is the Redis holding SwitchKey when it is not the ledger's
	// (QUEUE_REDIS_URL: the switch is the bot's key, the ledger the job
	// system's). Nil: the ledger's own Redis, read inside each script.
	// Apart, the switch is read just before the script, so a toggle can
	// miss a call that starts within that read's round trip.
	Switch redis.UniversalClient
	// Now is the clock of the budget windows (default time.Now).
	Now func() time.Time
	// Logger reports settlements that did not reach Redis.
	Logger *slog.Logger
}

// Ledger is the cluster's LLM spend, kept in Redis.
type Ledger struct {
	rdb redis.UniversalClient
	o   Options
	// settling counts the settlements in flight (SettleLater), which Wait
	// waits for.
	settling sync.WaitGroup
}

// New returns the ledger kept in rdb.
func New(rdb redis.UniversalClient, o Options) *Ledger {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.SwitchKey == "" {
		o.SwitchKey = KeyPrefix + "no-switch"
	}
	if o.Switch == rdb {
		o.Switch = nil
	}
	return &Ledger{rdb: rdb, o: o}
}

// noSwitchKey is a key the scripts read as the switch when the switch
// lives on another Redis: never set, so never off.
const noSwitchKey = KeyPrefix + "no-switch"

// switchKey is the switch key the scripts read and, when the switch lives
// on another Redis (Options.Switch), its value read from there now ("" when
// unset). Read only when it matters: off for good needs no read.
func (l *Ledger) switchKey(ctx context.Context, applies bool) (key, apart string, err error) {
	if l.o.Switch == nil {
		return l.o.SwitchKey, "", nil
	}
	if !applies || l.o.SwitchOff {
		return noSwitchKey, "", nil
	}
	v, err := l.o.Switch.Get(ctx, l.o.SwitchKey).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return "", "", fmt.Errorf("llm spend: reading the kill switch %s: %w", l.o.SwitchKey, err)
	}
	return noSwitchKey, v, nil
}

// SwitchOffValue reports whether v, the kill switch's value, turns it off
// (the scripts' off()).
func SwitchOffValue(v string) bool {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "off", "false", "0", "no", "disabled":
		return true
	}
	return false
}

// Now is the ledger's clock.
func (l *Ledger) Now() time.Time { return l.o.Now() }

// Price is model's price; ok is false for an unpriced model.
func (l *Ledger) Price(model string) (Price, bool) {
	p, ok := l.o.Prices[model]
	return p, ok
}

// Budget is scope's configured budget (not the run-time override).
func (l *Ledger) Budget(scope string) (Limit, bool) {
	b, ok := l.o.Budgets[scope]
	return b, ok
}

// Budgets are the configured budgets.
func (l *Ledger) Budgets() map[string]Limit { return l.o.Budgets }

// libSrc is the ledger scripts' shared functions (parsing and writing the
// ledger's totals, reading the kill switch), prepended to each.
//
//go:embed lib.lua
var libSrc string

//go:embed reserve.lua
var reserveSrc string
var reserveScript = redis.NewScript(libSrc + reserveSrc)

//go:embed settle.lua
var settleSrc string
var settleScript = redis.NewScript(libSrc + settleSrc)

// Call is a call about to be made: its task, model and estimate (its
// prompt's tokens and max_tokens, and their price). Chat calls are held by
// the kill switch; embeddings calls are not.
type Call struct {
	Task, Model     string
	Tokens, USDNano int64
	Chat            bool
}

// Reservation is a call's reserved estimate, until it is settled.
type Reservation struct {
	member, day string
	call        Call
}

// Task is the task the call is charged to.
func (r *Reservation) Task() string { return r.call.Task }

// Model is the call's model.
func (r *Reservation) Model() string { return r.call.Model }

// ttlSeconds is the ledger's retention as the scripts take it.
var ttlSeconds = int64(Retention / time.Second)

// Reserve reserves c's estimate before the call starts. It returns a
// *Refusal when the kill switch is off (a chat call) or a budget would be
// crossed, a Redis error otherwise. lease bounds how long the reservation
// outlives a worker that dies mid-call (the call's timeout and a margin).
func (l *Ledger) Reserve(ctx context.Context, c Call, lease time.Duration) (*Reservation, error) {
	if c.Task == "" {
		c.Task = Unknown
	}
	// The run's previous call is charged first.
	if err := settled(ctx); err != nil {
		return nil, fmt.Errorf("llm spend: waiting for the previous call's settlement: %w", err)
	}
	now := l.o.Now()
	day := Day(now)
	r := &Reservation{day: day, call: c}
	r.member = fmt.Sprintf("%s|%s|%s|%d|%d", newCallID(), day, c.Task, c.Tokens, c.USDNano)
	if err := l.runReserve(ctx, r, lease, now); err != nil {
		return nil, err
	}
	return r, nil
}

// runReserve runs the reservation script for r: a replay of the same
// reservation (a client retry) reserves nothing twice.
func (l *Ledger) runReserve(ctx context.Context, r *Reservation, lease time.Duration, now time.Time) error {
	c := r.call
	var taskLim, clusterLim string
	if b, ok := l.o.Budgets[c.Task]; ok {
		taskLim = b.arg()
	}
	if b, ok := l.o.Budgets[Cluster]; ok {
		clusterLim = b.arg()
	}
	sw, apart, err := l.switchKey(ctx, c.Chat)
	if err != nil {
		return err
	}
	if SwitchOffValue(apart) {
		return &Refusal{Task: c.Task, Reason: ReasonKillSwitch, Switch: apart}
	}
	res, err := reserveScript.Run(ctx, l.rdb, []string{DayKey(r.day), InflightKey, OverridesKey, sw},
		r.member, c.Task, c.Tokens, c.USDNano, taskLim, clusterLim, lease.Milliseconds(),
		flag(c.Chat), flag(l.o.SwitchOff), dayPrefix, ttlSeconds).Slice()
	if err != nil {
		return fmt.Errorf("llm spend: reserving a call of %s: %w", c.Task, err)
	}
	code, _ := res[0].(int64)
	switch code {
	case 0:
		return nil
	case 1:
		what, _ := res[2].(string)
		return &Refusal{Task: c.Task, Reason: ReasonKillSwitch, Switch: what}
	}
	if len(res) < 5 {
		return fmt.Errorf("llm spend: reserving a call of %s: unexpected answer %v", c.Task, res)
	}
	scope, _ := res[1].(string)
	unit, _ := res[2].(string)
	limit, _ := res[3].(string)
	used, _ := res[4].(string)
	lim, _ := parseLimit(unit + ":" + limit)
	u, _ := strconv.ParseInt(used, 10, 64)
	return &Refusal{Task: c.Task, Reason: ReasonBudget, Scope: scope, Limit: lim, Used: u,
		NeedTokens: c.Tokens, NeedUSDNano: c.USDNano, Window: r.day, Until: WindowEnd(now)}
}

func flag(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// Charge is what a settled call used.
type Charge struct {
	Purpose            string
	Prompt, Completion int64
	// Estimated: the reply reported no usage; the tokens are the prompt's
	// estimate plus the reply's size.
	Estimated bool
	// Items is how many messages the call covered (0: not counted).
	Items int64
	// Answered is false for a call that got no answer (an error before a
	// reply): the reservation is released and nothing is charged.
	Answered bool
}

// Settle turns r into what the call used (or releases it, for a call
// that got no answer). It reports whether it charged: false when r was
// already settled (a replay) or released at its lease's end. Each call is
// charged once.
func (l *Ledger) Settle(ctx context.Context, r *Reservation, c Charge) (bool, error) {
	price, priced := l.o.Prices[r.call.Model]
	var usd int64
	if priced {
		usd = price.Cost(c.Prompt, c.Completion)
	}
	n, err := settleScript.Run(ctx, l.rdb, []string{DayKey(r.day), InflightKey},
		r.member, r.call.Task, c.Purpose, r.call.Model, c.Prompt, c.Completion, usd, flag(c.Estimated), flag(!priced),
		r.call.Tokens, r.call.USDNano, ttlSeconds, c.Items, flag(c.Answered)).Int()
	if err != nil {
		return false, fmt.Errorf("llm spend: settling a call of %s: %w", r.call.Task, err)
	}
	return n == 1, nil
}

// settleTimeout bounds a settlement, which runs after the call whatever
// its context says: the call was made and must be charged.
const settleTimeout = 5 * time.Second

// SettleLater settles r in the background, so the caller, which has its
// answer, does not wait for the bookkeeping: the settlement is sent at
// once, as a synchronous one would be, and only its reply is not waited
// for: the run's next call (same WithTask context) waits for it before it
// reserves, which the run's own work between two calls usually covers.
// Until it lands the call counts as in flight (its reservation holds its
// estimate). A settlement that fails leaves the reservation to lapse
// at its lease's end, uncharged, and is logged. Wait waits for those in
// flight (at shutdown, before the Redis client closes).
func (l *Ledger) SettleLater(ctx context.Context, r *Reservation, c Charge) {
	l.settling.Add(1)
	done := make(chan struct{})
	settling(ctx, done)
	go func() {
		defer l.settling.Done()
		defer close(done)
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
		defer cancel()
		if _, err := l.Settle(sctx, r, c); err != nil {
			l.o.Logger.WarnContext(ctx, "LLM call not charged: the spend ledger could not be written", "task", r.call.Task,
				"model", r.call.Model, "prompt_tokens", c.Prompt, "completion_tokens", c.Completion, "error", err)
		}
	}()
}

// Wait waits for the settlements in flight.
func (l *Ledger) Wait() { l.settling.Wait() }

// newCallID names a call: 96 random bits, reserved before the request.
func newCallID() string {
	b := make([]byte, 12)
	_, _ = crand.Read(b)
	return hex.EncodeToString(b)
}

// Override is a budget set at run time, which wins over LLM_BUDGETS until
// cleared. None lifts the configured budget.
type Override struct {
	Limit Limit
	None  bool
}

// SetOverride sets scope's budget at run time, for every worker, from the
// next call on; a deferral it lifts ends within one scheduler tick.
func SetOverride(ctx context.Context, rdb redis.UniversalClient, scope string, o Override) error {
	v := "none"
	if !o.None {
		v = o.Limit.arg()
	}
	if err := rdb.HSet(ctx, OverridesKey, scope, v).Err(); err != nil {
		return fmt.Errorf("llm spend: setting the budget of %s: %w", scope, err)
	}
	return nil
}

// ClearOverride drops scope's run-time budget: LLM_BUDGETS applies again.
func ClearOverride(ctx context.Context, rdb redis.UniversalClient, scope string) (bool, error) {
	n, err := rdb.HDel(ctx, OverridesKey, scope).Result()
	if err != nil {
		return false, fmt.Errorf("llm spend: clearing the budget of %s: %w", scope, err)
	}
	return n == 1, nil
}

// Overrides reads the run-time budgets. Entries that are not ours (the
// hash is in Redis, which is untrusted) are left out.
func Overrides(ctx context.Context, rdb redis.UniversalClient) (map[string]Override, error) {
	h, err := rdb.HGetAll(ctx, OverridesKey).Result()
	if err != nil {
		return nil, fmt.Errorf("llm spend: reading the budget overrides: %w", err)
	}
	out := map[string]Override{}
	for scope, v := range h {
		if v == "none" {
			out[scope] = Override{None: true}
		} else if lim, ok := parseLimit(v); ok {
			out[scope] = Override{Limit: lim}
		}
	}
	return out, nil
}

// Effective is scope's budget now: its override, else its configured one.
func Effective(configured map[string]Limit, overrides map[string]Override, scope string) (Limit, bool) {
	if o, ok := overrides[scope]; ok {
		return o.Limit, !o.None
	}
	b, ok := configured[scope]
	return b, ok
}

// splitField cuts a ledger field into its parts: kind|task|purpose|model
// (the model last: it may hold anything), or kind|scope.
func splitField(f string) []string { return strings.SplitN(f, "|", 4) }
