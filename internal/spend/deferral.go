package spend

import (
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Deferral is a task held back: its budget is spent (ReasonBudget) or the
// kill switch is off (ReasonKillSwitch). Its runs stand down at start,
// its periodic occurrences wait, and its queued children and units are
// parked until the deferral lifts: at the next window, when the budget is
// raised, or when the switch is back on.
type Deferral struct {
	Task   string `json:"-"`
	Reason string `json:"reason"`
	// Scope is the budget spent: the task's, or Cluster.
	Scope string `json:"scope,omitempty"`
	// Window is the day whose budget is spent.
	Window string `json:"window,omitempty"`
	// UntilMS is when the window ends (0: until the switch is back on);
	// SinceMS when the deferral began.
	UntilMS float64 `json:"until_ms"`
	SinceMS float64 `json:"since_ms"`
	// NeedTokens and NeedUSDNano are the refused call's estimate: the
	// deferral lifts once the budget has room for it, so a raise too small
	// for the next call does not wake the task only to defer it again.
	NeedTokens  float64 `json:"need_tokens"`
	NeedUSDNano float64 `json:"need_usd_nano"`
	// Limit is the budget spent, as LLM_BUDGETS writes it.
	Limit string `json:"limit,omitempty"`
	// TaskID is the run that met the refusal.
	TaskID string `json:"task_id,omitempty"`
	// Held: the deferral still holds (reads only; not stored).
	Held bool `json:"-"`
}

// Until is when the deferral lifts by itself (zero: only when the switch
// is back on).
func (d Deferral) Until() time.Time {
	if d.UntilMS <= 0 {
		return time.Time{}
	}
	return time.UnixMilli(int64(d.UntilMS)).UTC()
}

// Since is when the deferral began.
func (d Deferral) Since() time.Time { return time.UnixMilli(int64(d.SinceMS)).UTC() }

// State is the deferral as `enqueuer schedules` shows it: "deferred:
// budget" (until the window's end) or "deferred: kill_switch".
func (d Deferral) State() string {
	s := "deferred: " + d.Reason
	if u := d.Until(); !u.IsZero() {
		s += " until " + u.Format(time.RFC3339)
	}
	return s
}

// Deferral is the deferral a refusal of a call of task's makes; run is
// the task ID of the run that met it.
func (r *Refusal) Deferral(task, run string, now time.Time) Deferral {
	d := Deferral{Task: task, Reason: r.Reason, Scope: r.Scope, Window: r.Window, SinceMS: float64(now.UnixMilli()),
		NeedTokens: float64(r.NeedTokens), NeedUSDNano: float64(r.NeedUSDNano), TaskID: run}
	if d.Reason == "" {
		d.Reason = ReasonKillSwitch
	}
	if !r.Until.IsZero() {
		d.UntilMS = float64(r.Until.UnixMilli())
	}
	if d.Reason == ReasonBudget {
		d.Limit = r.Limit.String()
	}
	return d
}

//go:embed check.lua
var checkSrc string
var checkScript = redis.NewScript(libSrc + checkSrc)

//go:embed defer.lua
var deferSrc string
var deferScript = redis.NewScript(deferSrc)

// parkedTTL bounds how long a parked run's entry outlives a deferral that
// never lifted (a task removed from the configuration).
const parkedTTL = 8 * 24 * time.Hour

// Parked is a queued run waiting for a deferral to lift.
type Parked struct{ Queue, TaskID string }

func (p Parked) member() string { return p.Queue + "\x00" + p.TaskID }

func parseParked(m string) (Parked, bool) {
	q, id, ok := strings.Cut(m, "\x00")
	return Parked{Queue: q, TaskID: id}, ok && q != "" && id != ""
}

// Defer records that task is deferred (d), with the run parked (zero: the
// run was dropped, its task's next occurrence asks again). It reports
// whether the deferral is new, to announce it once.
func (l *Ledger) Defer(ctx context.Context, d Deferral, parked Parked) (bool, error) {
	rec, err := json.Marshal(d)
	if err != nil {
		return false, fmt.Errorf("llm spend: encoding the deferral of %s: %w", d.Task, err)
	}
	member := ""
	if parked.TaskID != "" {
		member = parked.member()
	}
	n, err := deferScript.Run(ctx, l.rdb, []string{DeferredKey, parkedPrefix + d.Task},
		d.Task, rec, member, int64(parkedTTL/time.Second)).Int()
	if err != nil {
		return false, fmt.Errorf("llm spend: deferring %s: %w", d.Task, err)
	}
	return n == 1, nil
}

// check runs the check script for task ("" every task, lifting).
func (l *Ledger) check(ctx context.Context, task string) ([]any, error) {
	day := Day(l.o.Now())
	switchOff := "0"
	sw, apart, err := l.switchKey(ctx, true)
	if err != nil {
		return nil, err
	}
	if l.o.SwitchOff || SwitchOffValue(apart) {
		switchOff = "1" // held while off, whichever Redis says so
	}
	args := []any{day, switchOff, parkedPrefix, task}
	scopes := make([]string, 0, len(l.o.Budgets))
	for s := range l.o.Budgets {
		scopes = append(scopes, s)
	}
	sort.Strings(scopes)
	for _, s := range scopes {
		args = append(args, s, l.o.Budgets[s].arg())
	}
	return checkScript.Run(ctx, l.rdb, []string{DeferredKey, OverridesKey, sw, DayKey(day)}, args...).Slice()
}

// entry decodes one of the check script's entries.
func entry(v any) (d Deferral, parked []Parked, ok bool) {
	e, _ := v.([]any)
	if len(e) < 3 {
		return d, nil, false
	}
	task, _ := e[0].(string)
	held, _ := e[1].(string)
	raw, _ := e[2].(string)
	if json.Unmarshal([]byte(raw), &d) != nil {
		d = Deferral{Reason: "unknown"}
	}
	d.Task, d.Held = task, held == "1"
	for _, m := range e[3:] {
		if s, ok := m.(string); ok {
			if p, ok := parseParked(s); ok {
				parked = append(parked, p)
			}
		}
	}
	return d, parked, true
}

// Held reports whether task is deferred now: a deferral is recorded and
// the refusal that made it would still be made (its window has not ended,
// its budget was not raised, the switch is still off).
func (l *Ledger) Held(ctx context.Context, task string) (Deferral, bool, error) {
	res, err := l.check(ctx, task)
	if err != nil {
		return Deferral{}, false, fmt.Errorf("llm spend: checking whether %s is deferred: %w", task, err)
	}
	if len(res) == 0 {
		return Deferral{}, false, nil
	}
	d, _, ok := entry(res[0])
	return d, ok && d.Held, nil
}

// Deferrals reads every deferral recorded, held or not, without lifting
// any (enqueuer, metrics).
func Deferrals(ctx context.Context, rdb redis.UniversalClient) ([]Deferral, error) {
	h, err := rdb.HGetAll(ctx, DeferredKey).Result()
	if err != nil {
		return nil, fmt.Errorf("llm spend: reading the deferrals: %w", err)
	}
	out := make([]Deferral, 0, len(h))
	for task, raw := range h {
		var d Deferral
		if json.Unmarshal([]byte(raw), &d) != nil {
			continue // not ours: the hash is in Redis, which is untrusted
		}
		d.Task, d.Held = task, true
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Task < out[j].Task })
	return out, nil
}

// TaskRunner moves a queued task to pending at once (*asynq.Inspector).
type TaskRunner interface {
	RunTask(queue, id string) error
}

// Gate holds deferred tasks back from the scheduler and lifts deferrals
// that ended, running their parked runs at once (periodic.Holds).
type Gate struct {
	l      *Ledger
	runner TaskRunner
	log    *slog.Logger
}

// NewGate returns the gate of l; runner runs parked runs when their
// deferral lifts (nil: they wait for their own time, the window's end).
func NewGate(l *Ledger, runner TaskRunner, log *slog.Logger) *Gate {
	if log == nil {
		log = slog.Default()
	}
	return &Gate{l: l, runner: runner, log: log}
}

// Check returns the tasks held now, and lifts the deferrals that ended
// (compare-and-delete in one script, so one scheduler lifts each),
// returning those tasks: the scheduler makes them due at once, and their
// parked runs are run now. One Redis command while nothing is deferred, a
// script more while something is.
func (g *Gate) Check(ctx context.Context) (held map[string]bool, lifted []string, err error) {
	// Nothing deferred, the common case: one command, not a script.
	n, err := g.l.rdb.Exists(ctx, DeferredKey).Result()
	if err != nil || n == 0 {
		return nil, nil, err
	}
	res, err := g.l.check(ctx, "")
	if err != nil {
		return nil, nil, fmt.Errorf("llm spend: checking the deferrals: %w", err)
	}
	held = map[string]bool{}
	for _, v := range res {
		d, parked, ok := entry(v)
		if !ok {
			continue
		}
		if d.Held {
			held[d.Task] = true
			continue
		}
		lifted = append(lifted, d.Task)
		ran := 0
		for _, p := range parked {
			if g.runner != nil && g.runner.RunTask(p.Queue, p.TaskID) == nil {
				ran++
			}
		}
		g.log.InfoContext(ctx, "LLM work resumed: the deferral lifted", "task", d.Task, "reason", d.Reason,
			"deferred_for", g.l.o.Now().Sub(d.Since()).Round(time.Second).String(), "parked_runs_resumed", ran)
	}
	return held, lifted, nil
}
