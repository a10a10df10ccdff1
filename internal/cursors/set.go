package cursors

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/kg/plan"
	"github.com/stargazer/stargazer-jobs/internal/store/logstore"
	"github.com/stargazer/stargazer-jobs/internal/store/msgcache"
	"github.com/stargazer/stargazer-jobs/internal/store/ragstore"
)

// ErrUsage marks a change that is wrong as given (a malformed position, an
// unknown source, a position out of range): nothing was changed, and
// trying again will not help.
var ErrUsage = errors.New("invalid cursor change")

// usageError is a change wrong as given; it is ErrUsage.
type usageError struct{ msg string }

func (e *usageError) Error() string        { return e.msg }
func (e *usageError) Is(target error) bool { return target == ErrUsage }

func usage(format string, a ...any) error { return &usageError{fmt.Sprintf(format, a...)} }

// Change is a position an operator asked for, parsed but not yet checked
// against Redis.
type Change struct {
	Task   Task
	Source string
	// Raw is the position as given.
	Raw string

	index      int64 // Index
	toEnd      bool  // Index: "end"
	at         time.Time
	latest     bool   // Channel, Watermark: the newest message
	journal    string // Journal: a journal cursor
	day        time.Time
	all        bool             // every channel
	channel    msgcache.Channel // one channel
	host, unit string           // Journal
}

// Parse reads task, source and position as `enqueuer cursors set` takes
// them; every error wraps ErrUsage. now anchors relative positions.
func Parse(task, source, position string, now time.Time) (Change, error) {
	t, ok := Lookup(task)
	if !ok {
		var names []string
		for _, t := range tasks {
			names = append(names, t.Name)
		}
		return Change{}, usage("%q is not a cursor-driven task (%s)", task, strings.Join(names, ", "))
	}
	c := Change{Task: t, Source: source, Raw: position}
	bad := func() error {
		return usage("%s: position %q is malformed: want %s", t.Name, position, t.Positions)
	}
	switch t.Kind {
	case Index:
		if source != "fragments" {
			return c, usage("%s: source %q: its only source is fragments", t.Name, source)
		}
		switch position {
		case "start":
		case "end":
			c.toEnd = true
		default:
			n, err := strconv.ParseInt(position, 10, 64)
			if err != nil || n < 0 {
				return c, bad()
			}
			c.index = n
		}
	case Channel, Watermark:
		if source == "all" {
			c.all = true
		} else {
			ch, err := msgcache.ParseChannel(source)
			if err != nil {
				return c, usage("%s: source %q is not %s", t.Name, source, t.Sources)
			}
			c.channel = ch
		}
		if position == "latest" {
			c.latest = true
			break
		}
		at, ok := parseTime(position, now)
		if !ok {
			return c, bad()
		}
		c.at = at
	case Journal:
		cut := strings.LastIndexByte(source, ':')
		if cut <= 0 || cut == len(source)-1 {
			return c, usage("%s: source %q is not %s", t.Name, source, t.Sources)
		}
		c.host, c.unit = source[:cut], source[cut+1:]
		if logstore.ValidJournalCursor(position) {
			c.journal = position
			break
		}
		at, ok := parseTime(position, now)
		if !ok {
			return c, bad()
		}
		c.at = at
	case Days:
		if source != "days" {
			return c, usage("%s: source %q: its only source is days", t.Name, source)
		}
		d, err := time.ParseInLocation(time.DateOnly, position, time.UTC)
		if err != nil {
			return c, bad()
		}
		c.day = d
	}
	if (!c.at.IsZero() && c.at.After(now.Add(time.Minute))) || (!c.day.IsZero() && !c.day.Before(now.UTC())) {
		return c, usage("%s: position %q is in the future: it would skip what has not been written yet", t.Name, position)
	}
	return c, nil
}

// parseTime reads now, now-DURATION (or -DURATION), an RFC 3339 time or Unix milliseconds.
func parseTime(s string, now time.Time) (time.Time, bool) {
	switch {
	case s == "now":
		return now, true
	case strings.HasPrefix(s, "now-") || strings.HasPrefix(s, "-"):
		d, err := time.ParseDuration(s[strings.IndexByte(s, '-')+1:])
		if err != nil || d <= 0 {
			return time.Time{}, false
		}
		return now.Add(-d), true
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, t.UnixMilli() > 0
	}
	if ms, err := strconv.ParseInt(s, 10, 64); err == nil && ms > 0 {
		return time.UnixMilli(ms), true
	}
	return time.Time{}, false
}

// Move is the change for one source: from where to where, and what the
// new position leaves to process.
type Move struct {
	Source string `json:"source"`
	// From is the current position ("-": none), To the new one.
	From string `json:"from"`
	To   string `json:"to"`
	// PendingNow and Pending are what is left to process before and after
	// the change (Task.Items); Counted is false where Redis cannot tell
	// (a node's journal).
	PendingNow int64 `json:"pending_now"`
	Pending    int64 `json:"pending"`
	Counted    bool  `json:"counted"`

	// DropsPlanned: the channel has segments planned and not settled,
	// which the change drops (their units still run, and move nothing).
	DropsPlanned bool `json:"drops_planned,omitempty"`

	to      msgcache.Position
	index   int64
	toDone  []string // Days: mark done
	undone  []string // Days: unmark
	channel msgcache.Channel
}

// Plan is a change checked against Redis: what it would do.
type Plan struct {
	Change Change `json:"-"`
	Task   string `json:"task"`
	Items  string `json:"items"`
	Moves  []Move `json:"moves"`
}

// Pending is what the change leaves to process, in all.
func (p Plan) Pending() (n int64, counted bool) {
	counted = true
	for _, m := range p.Moves {
		n += m.Pending
		counted = counted && m.Counted
	}
	return n, counted
}

// Resolve checks c against Redis (the source exists, the position is in
// range) and works out what it would change. Its usage errors wrap
// ErrUsage; it changes nothing.
func (c Change) Resolve(ctx context.Context, r Redis, now time.Time) (Plan, error) {
	p := Plan{Change: c, Task: c.Task.Name, Items: c.Task.Items}
	var err error
	switch c.Task.Kind {
	case Index:
		err = c.resolveIndex(ctx, r, &p)
	case Channel, Watermark:
		err = c.resolveChannels(ctx, r, &p)
	case Journal:
		err = c.resolveJournal(ctx, r.Bot, &p)
	case Days:
		err = c.resolveDays(ctx, r.Jobs, &p, now)
	}
	return p, err
}

func (c Change) resolveIndex(ctx context.Context, r Redis, p *Plan) error {
	n, err := ragstore.New(r.Bot).Len(ctx)
	if err != nil {
		return err
	}
	to := c.index
	if c.toEnd {
		to = n
	}
	if to > n {
		return usage("%s: position %d is past the end of the store (%d fragments)", c.Task.Name, to, n)
	}
	m := Move{Source: "fragments", From: "-", To: strconv.FormatInt(to, 10), index: to, Pending: n - to, Counted: true}
	cur, err := r.Jobs.Get(ctx, AnamnesisKey).Int64()
	switch {
	case errors.Is(err, redis.Nil):
	case err != nil:
		return fmt.Errorf("cursors: reading %s: %w", AnamnesisKey, err)
	default:
		m.From, m.PendingNow = strconv.FormatInt(cur, 10), max(n-cur, 0)
	}
	p.Moves = []Move{m}
	return nil
}

func (c Change) resolveChannels(ctx context.Context, r Redis, p *Plan) error {
	cache := msgcache.New(r.Bot)
	chans := []msgcache.Channel{c.channel}
	if c.all {
		var err error
		if chans, err = cache.DiscoverChannels(ctx); err != nil {
			return err
		}
		if len(chans) == 0 {
			return usage("%s: no channel in the message cache", c.Task.Name)
		}
	} else if n, err := r.Bot.Exists(ctx, msgcache.MessagesKey(c.channel)).Result(); err != nil {
		return fmt.Errorf("cursors: looking up %s: %w", c.channel, err)
	} else if n == 0 {
		return usage("%s: no channel %s in the message cache (`enqueuer cursors list %s` lists them)", c.Task.Name, c.channel, c.Task.Name)
	}
	cur, set, err := positions(ctx, c.Task.positionsOn(r), c.Task, chans)
	if err != nil {
		return err
	}
	to := make([]msgcache.Position, len(chans))
	for i, ch := range chans {
		if c.latest {
			if to[i], err = cache.Latest(ctx, ch); err != nil {
				return err
			}
			if c.Task.Kind == Watermark {
				to[i].Key = ""
			}
		} else {
			to[i] = msgcache.Position{TS: c.at.UnixMilli()}
		}
	}
	before, _, err := cache.Backlog(ctx, chans, cur)
	if err != nil {
		return err
	}
	after, _, err := cache.Backlog(ctx, chans, to)
	if err != nil {
		return err
	}
	var chains []plan.Chain
	if c.Task.planner {
		names := make([]string, len(chans))
		for i, ch := range chans {
			names[i] = ch.String()
		}
		if chains, err = plan.New(r.Jobs, c.Task.Name, c.Task.prefix).Follow(ctx, names); err != nil {
			return err
		}
	}
	for i, ch := range chans {
		m := Move{Source: ch.String(), From: "-", To: strconv.FormatInt(to[i].TS, 10), to: to[i], channel: ch,
			Pending: after[i], Counted: true}
		if set[i] {
			m.From, m.PendingNow = strconv.FormatInt(cur[i].TS, 10), before[i]
		}
		if c.Task.PerRun > 0 {
			// A run reads at most perRun messages of a channel.
			m.Pending, m.PendingNow = min(m.Pending, int64(c.Task.PerRun)), min(m.PendingNow, int64(c.Task.PerRun))
		}
		m.DropsPlanned = c.Task.planner && chains[i].Planned() > 0
		p.Moves = append(p.Moves, m)
	}
	return nil
}

func (c Change) resolveJournal(ctx context.Context, rdb redis.UniversalClient, p *Plan) error {
	cs, err := logstore.New(rdb).Cursors(ctx)
	if err != nil {
		return err
	}
	for _, nc := range cs {
		if nc.Host != c.host || nc.Unit != c.unit {
			continue
		}
		m := Move{Source: c.Source, From: "-", To: c.Raw}
		if nc.After != "" {
			m.From = nc.After
		} else if !nc.Since.IsZero() {
			m.From = strconv.FormatInt(nc.Since.UnixMilli(), 10)
		}
		if c.journal == "" {
			m.To = strconv.FormatInt(c.at.UnixMilli(), 10)
		}
		p.Moves = []Move{m}
		return nil
	}
	return usage("%s: no node %s has ingested unit %s (`enqueuer cursors list %s` lists them)", c.Task.Name, c.host, c.unit, c.Task.Name)
}

func (c Change) resolveDays(ctx context.Context, rdb redis.UniversalClient, p *Plan, now time.Time) error {
	days := windowDays(now)
	names := make([]string, len(days))
	for i, d := range days {
		names[i] = d.Format(time.DateOnly)
	}
	scores, err := rdb.ZMScore(ctx, SunsetDoneKey, names...).Result()
	if err != nil {
		return fmt.Errorf("cursors: reading %s: %w", SunsetDoneKey, err)
	}
	last, _ := rdb.ZRevRange(ctx, SunsetDoneKey, 0, 0).Result()
	m := Move{Source: "days", From: "-", To: c.day.Format(time.DateOnly), Counted: true}
	if len(last) > 0 {
		m.From = last[0]
	}
	for i, d := range days {
		done := scores[i] != 0
		if !done {
			m.PendingNow++
		}
		if d.After(c.day) {
			m.Pending++
			if done {
				m.undone = append(m.undone, names[i])
			}
		} else if !done {
			m.toDone = append(m.toDone, names[i])
		}
	}
	p.Moves = []Move{m}
	return nil
}

// setChannelScript sets a channel cursor and drops the channel's segment
// chain, in one step: units already queued still run (the extraction
// ledger keeps them from being paid twice) but move nothing, and a
// planner that read the old chain cannot append to the new one.
var setChannelScript = redis.NewScript(`
redis.call('HSET', KEYS[1], 'ts', ARGV[1], 'key', ARGV[2], 'updated_at', ARGV[3])
if KEYS[2] then redis.call('DEL', KEYS[2]) end
return 1
`)

// Apply makes the change.
func (p Plan) Apply(ctx context.Context, r Redis, now time.Time) error {
	c := p.Change
	rdb := r.Jobs // the task cursors, chains and done days
	if c.Task.Kind == Watermark || c.Task.Kind == Journal {
		rdb = r.Bot // the bot's summaries, heartbeats and journal cursors
	}
	nowMS := now.UnixMilli()
	for _, m := range p.Moves {
		var err error
		switch c.Task.Kind {
		case Index:
			err = rdb.Set(ctx, AnamnesisKey, m.index, 0).Err()
		case Channel:
			keys := []string{c.Task.channelKey(m.channel)}
			if c.Task.planner {
				keys = append(keys, plan.ChainKey(c.Task.Name, m.channel.String()))
			}
			err = setChannelScript.Run(ctx, rdb, keys, m.to.TS, m.to.Key, nowMS).Err()
		case Watermark:
			err = rdb.HSet(ctx, c.Task.channelKey(m.channel), "last_message_ts", m.to.TS).Err()
		case Journal:
			store := logstore.New(rdb)
			if c.journal != "" {
				err = store.SetAfter(ctx, c.host, c.unit, c.journal, now)
			} else {
				err = store.SetSince(ctx, c.host, c.unit, c.at, now)
			}
		case Days:
			_, err = rdb.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
				for _, d := range m.toDone {
					pipe.ZAdd(ctx, SunsetDoneKey, redis.Z{Score: float64(nowMS), Member: d})
				}
				if len(m.undone) > 0 {
					pipe.ZRem(ctx, SunsetDoneKey, toAny(m.undone)...)
				}
				return nil
			})
		}
		if err != nil {
			return fmt.Errorf("cursors: setting %s %s: %w", c.Task.Name, m.Source, err)
		}
	}
	return nil
}

func toAny(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

// CostEstimator prices what a position leaves to process: items of a
// task's Items. Spend accounting provides it from its LLM price table;
// without one, a dry run says the cost is unknown.
type CostEstimator interface {
	EstimateCost(ctx context.Context, task string, items int64) (usd float64, ok bool, err error)
}
