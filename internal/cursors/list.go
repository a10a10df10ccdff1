package cursors

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/kg/plan"
	"github.com/stargazer/stargazer-jobs/internal/queue/legacy"
	"github.com/stargazer/stargazer-jobs/internal/store/logstore"
	"github.com/stargazer/stargazer-jobs/internal/store/msgcache"
	"github.com/stargazer/stargazer-jobs/internal/store/ragstore"
)

// Entry is one task's position for one source.
type Entry struct {
	Task   string `json:"task"`
	Source string `json:"source"`
	// Set is false when the task has no position for the source yet: its
	// first run starts where the task's First says.
	Set bool `json:"set"`
	// Position is the position as `enqueuer cursors set` takes it.
	Position string `json:"position"`
	// Key is the message a channel cursor stands at (messages of the
	// same millisecond are ordered by it).
	Key string `json:"key,omitempty"`
	// Time is the position's time, where it has one.
	Time *time.Time `json:"time,omitempty"`
	// Pending is what is left after the position (Task.Items), where it
	// can be counted from Redis.
	Pending *int64 `json:"pending,omitempty"`
	// Note adds what matters: planned work, a pending run, the first
	// position.
	Note string `json:"note,omitempty"`
}

func ptr[T any](v T) *T { return &v }

// Redis is where positions live: Bot holds the bot's keys (the message
// cache, summaries' and heartbeats' watermarks, the journal cursors, the
// RAG fragments), Jobs the job system's (the task cursors, plans,
// hand-over points, done days). With one Redis both are the same client;
// with QUEUE_REDIS_URL Jobs is that Redis.
type Redis struct{ Bot, Jobs redis.UniversalClient }

// OneRedis is the layout with everything on rdb.
func OneRedis(rdb redis.UniversalClient) Redis { return Redis{Bot: rdb, Jobs: rdb} }

// positionsOn is the Redis holding t's per-channel positions: a
// watermark is the bot's summary or heartbeat hash, a cursor the job
// system's.
func (t Task) positionsOn(r Redis) redis.UniversalClient {
	if t.Kind == Watermark {
		return r.Bot
	}
	return r.Jobs
}

// List returns task's position per source.
func List(ctx context.Context, r Redis, t Task, now time.Time) ([]Entry, error) {
	switch t.Kind {
	case Index:
		return listIndex(ctx, r, t)
	case Channel, Watermark:
		return listChannels(ctx, r, t)
	case Journal:
		return listJournal(ctx, r.Bot, t)
	case Days:
		return listDays(ctx, r.Jobs, t, now)
	}
	return nil, fmt.Errorf("cursors: %s has no positions", t.Name)
}

func listIndex(ctx context.Context, r Redis, t Task) ([]Entry, error) {
	n, err := ragstore.New(r.Bot).Len(ctx)
	if err != nil {
		return nil, err
	}
	e := Entry{Task: t.Name, Source: "fragments"}
	v, err := r.Jobs.Get(ctx, AnamnesisKey).Int64()
	switch {
	case errors.Is(err, redis.Nil):
		e.Position = "-"
		e.Note = fmt.Sprintf("no cursor yet: the first run starts at the end of the store (%d) after a cut-over, at 0 with LEGACY_COEXISTENCE=false", n)
	case err != nil:
		return nil, fmt.Errorf("cursors: reading %s: %w", AnamnesisKey, err)
	default:
		e.Set, e.Position, e.Pending = true, strconv.FormatInt(v, 10), ptr(max(n-v, 0))
		e.Note = fmt.Sprintf("of %d fragments", n)
	}
	return []Entry{e}, nil
}

// channelKey is the key holding t's position for channel c.
func (t Task) channelKey(c msgcache.Channel) string {
	switch {
	case t.Kind == Watermark && t.prefix == "summary":
		return msgcache.SummaryKey(c)
	case t.Kind == Watermark:
		return msgcache.HeartbeatKey(c)
	}
	return t.prefix + c.String()
}

func listChannels(ctx context.Context, r Redis, t Task) ([]Entry, error) {
	cache := msgcache.New(r.Bot)
	// The full scan, not the active set: an operator's one-off listing
	// shows every channel with messages, one the active set lost too.
	chans, err := cache.DiscoverChannels(ctx)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(chans, func(a, b msgcache.Channel) int { return strings.Compare(a.String(), b.String()) })
	pos, set, err := positions(ctx, t.positionsOn(r), t, chans)
	if err != nil {
		return nil, err
	}
	counts, _, err := cache.Backlog(ctx, chans, pos)
	if err != nil {
		return nil, err
	}
	var chains []plan.Chain
	if t.planner {
		names := make([]string, len(chans))
		for i, c := range chans {
			names[i] = c.String()
		}
		if chains, err = plan.New(r.Jobs, t.Name, t.prefix).Follow(ctx, names); err != nil {
			return nil, err
		}
	}
	point, err := legacy.ReadHandOver(ctx, r.Jobs, t.Name)
	if err != nil {
		return nil, err
	}
	out := make([]Entry, 0, len(chans))
	for i, c := range chans {
		e := Entry{Task: t.Name, Source: c.String(), Set: set[i], Position: "-"}
		if set[i] {
			at := time.UnixMilli(pos[i].TS).UTC()
			e.Position, e.Key, e.Time, e.Pending = strconv.FormatInt(pos[i].TS, 10), pos[i].Key, &at, ptr(counts[i])
		} else {
			e.Note = "no position yet: " + t.First
			if !point.IsZero() && t.Kind == Channel && t.Name != "agentic_kg_bulk_incremental" {
				e.Note += "; hand-over point " + point.UTC().Format(time.RFC3339)
			}
		}
		if t.planner && len(chains[i].Segments) > 0 {
			if n := chains[i].Planned(); n > 0 {
				e.Note = strings.TrimPrefix(e.Note+"; ", "; ") + fmt.Sprintf("%d messages planned in %d segments, not settled", n, len(chains[i].Segments))
			}
		}
		out = append(out, e)
	}
	return out, nil
}

// positions reads t's position for each channel: a cursor hash (ts, key)
// or a watermark (last_message_ts).
func positions(ctx context.Context, rdb redis.UniversalClient, t Task, chans []msgcache.Channel) ([]msgcache.Position, []bool, error) {
	pipe := rdb.Pipeline()
	cmds := make([]*redis.SliceCmd, len(chans))
	for i, c := range chans {
		if t.Kind == Watermark {
			cmds[i] = pipe.HMGet(ctx, t.channelKey(c), "last_message_ts")
		} else {
			cmds[i] = pipe.HMGet(ctx, t.channelKey(c), "ts", "key")
		}
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, nil, fmt.Errorf("cursors: reading the positions of %s: %w", t.Name, err)
	}
	pos := make([]msgcache.Position, len(chans))
	set := make([]bool, len(chans))
	for i, cmd := range cmds {
		v := cmd.Val()
		ts, ok := v[0].(string)
		if !ok {
			continue
		}
		set[i] = true
		pos[i].TS, _ = strconv.ParseInt(ts, 10, 64)
		if len(v) > 1 {
			pos[i].Key, _ = v[1].(string)
		}
	}
	return pos, set, nil
}

func listJournal(ctx context.Context, rdb redis.UniversalClient, t Task) ([]Entry, error) {
	cs, err := logstore.New(rdb).Cursors(ctx)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(cs, func(a, b logstore.NodeCursor) int { return strings.Compare(a.Host+":"+a.Unit, b.Host+":"+b.Unit) })
	out := make([]Entry, 0, len(cs))
	for _, c := range cs {
		e := Entry{Task: t.Name, Source: c.Host + ":" + c.Unit, Set: c.After != "", Position: c.After}
		switch {
		case c.After != "" && !c.UpdatedAt.IsZero():
			at := c.UpdatedAt.UTC()
			e.Time = &at
			e.Note = "moved " + at.Format(time.RFC3339)
		case c.After == "" && !c.Since.IsZero():
			at := c.Since.UTC()
			e.Position, e.Time = strconv.FormatInt(c.Since.UnixMilli(), 10), &at
			e.Note = "no cursor yet: the next run reads from " + at.Format(time.RFC3339)
		}
		if c.PendingEnd != "" {
			e.Note = strings.TrimPrefix(e.Note+"; ", "; ") + "a run is storing up to " + c.PendingEnd
		}
		out = append(out, e)
	}
	if len(out) == 0 {
		out = append(out, Entry{Task: t.Name, Source: "-", Position: "-", Note: "no node has run it yet: " + t.First})
	}
	return out, nil
}

func listDays(ctx context.Context, rdb redis.UniversalClient, t Task, now time.Time) ([]Entry, error) {
	done, err := rdb.ZRange(ctx, SunsetDoneKey, 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("cursors: reading %s: %w", SunsetDoneKey, err)
	}
	slices.Sort(done)
	e := Entry{Task: t.Name, Source: "days", Position: "-"}
	window := windowDays(now)
	var missing int64
	for _, d := range window {
		if _, ok := slices.BinarySearch(done, d.Format(time.DateOnly)); !ok {
			missing++
		}
	}
	e.Pending = &missing
	if len(done) > 0 {
		e.Set, e.Position = true, done[len(done)-1]
		e.Note = fmt.Sprintf("%d of the last %d days done", int64(len(window))-missing, len(window))
	} else {
		e.Note = "no day synthesised yet: " + t.First
	}
	return []Entry{e}, nil
}

// windowDays are the days a sunset pass considers: the look-back, up to
// yesterday (UTC).
func windowDays(now time.Time) []time.Time {
	now = now.UTC()
	today := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC)
	var out []time.Time
	for k := SunsetLookbackDays; k >= 1; k-- {
		out = append(out, today.AddDate(0, 0, -k))
	}
	return out
}
