// Package plan keeps the extraction planner's state in Redis: per (task,
// channel) a chain of planned segments that starts at the channel's cursor,
// the units planned and not yet settled, and the backlog each planning pass
// measured.
//
// A segment is a channel's messages after one position up to another
// (inclusive), handed to one extraction unit (one LLM call, a child task).
// Segments tile the channel's position space from the cursor: each starts
// where the previous one ends, so the planner plans only after the chain's
// tail and no message is planned twice. When a unit settles, Complete marks
// its segments done and, in the same script, moves each channel's cursor
// over the done segments at the head of its chain: units completing out of
// order leave the cursor before the first unsettled segment, so a cursor
// never passes an unsettled message. docs/data-model.md ("Extraction
// planning") lists the keys.
package plan

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/store/msgcache"
)

const keyPrefix = "sgjobs:plan:"

// ChainKey is the hash of task's segment chain for a channel
// ("<platform>:<id>"): field "p:<after ts>:<after key>" -> the segment
// starting there (JSON), and "root" -> where the chain starts while the
// channel has no cursor yet (the planner's lookback).
func ChainKey(task, channel string) string { return keyPrefix + task + ":chain:" + channel }

// UnitsKey is the hash of task's units not yet settled: unit ID -> JSON
// (its task ID, payload and when it was planned), which is what the
// planner needs to re-enqueue a stalled unit.
func UnitsKey(task string) string { return keyPrefix + task + ":units" }

// BacklogKey is the hash the planner writes each pass: per source its
// messages after the cursor and the time of the oldest, and totals.
func BacklogKey(task string) string { return keyPrefix + task + ":backlog" }

// maxWalk bounds a chain walk (a chain is a few hundred segments at most;
// this only stops a corrupted one from looping).
const maxWalk = 100_000

// field is a segment's field in its chain hash: the position it starts
// after. ts is written by strconv everywhere (Go and the scripts copy it
// as a string), so the same position always has the same field.
func field(p msgcache.Position) string {
	return "p:" + strconv.FormatInt(p.TS, 10) + ":" + p.Key
}

// parseField reads a segment field back into its position.
func parseField(f string) (msgcache.Position, bool) {
	rest, ok := strings.CutPrefix(f, "p:")
	if !ok {
		return msgcache.Position{}, false
	}
	ts, key, ok := strings.Cut(rest, ":")
	n, err := strconv.ParseInt(ts, 10, 64)
	if !ok || err != nil {
		return msgcache.Position{}, false
	}
	return msgcache.Position{TS: n, Key: key}, true
}

// luaCommon are the helpers of the scripts: a segment's field and where a
// channel's chain starts (its cursor, else its root).
const luaCommon = `
local function field(ts, key) return 'p:' .. ts .. ':' .. key end
local function start(chain, cursor)
  local v = redis.call('HMGET', cursor, 'ts', 'key')
  if v[1] then return v[1], (v[2] or '') end
  local r = redis.call('HGET', chain, 'root')
  if r then
    local o = cjson.decode(r)
    return o.ts, o.key
  end
  return nil, nil
end
`

// segment is a chain entry as stored.
type segment struct {
	EndTS  string `json:"e"`
	EndKey string `json:"k"`
	Unit   string `json:"u"`
	Done   int    `json:"d"`
	At     string `json:"at"` // planned, Unix ms
	N      int    `json:"n"`  // messages in it when planned
}

// Segment is one planned range of a channel.
type Segment struct {
	Channel    string
	After, End msgcache.Position
	Unit       string
	Done       bool
	PlannedAt  time.Time
	Messages   int
}

// Chain is what Follow found for one channel.
type Chain struct {
	// HasCursor: the channel has a cursor (Start is it); otherwise Start is
	// the chain's root, or zero when nothing was planned.
	HasCursor bool
	Start     msgcache.Position
	// Tail is where the next segment starts: the end of the chain.
	Tail msgcache.Position
	// Segments are the chain's segments from Start, in order.
	Segments []Segment
	// Stray are fields of segments behind Start that the walk did not
	// reach (the cursor was moved by something else, or a corrupted
	// entry); the planner drops them.
	Stray []string
}

// Planned is how many messages the chain holds not yet done.
func (c Chain) Planned() int {
	n := 0
	for _, s := range c.Segments {
		if !s.Done {
			n += s.Messages
		}
	}
	return n
}

// Store is one task's planner state.
type Store struct {
	rdb  redis.UniversalClient
	task string
	// cursorPrefix + channel is the channel's cursor hash (msgcache).
	cursorPrefix string
}

// New returns task's state on rdb; its cursors are cursorPrefix+channel.
func New(rdb redis.UniversalClient, task, cursorPrefix string) *Store {
	return &Store{rdb: rdb, task: task, cursorPrefix: cursorPrefix}
}

// CursorKey is channel's cursor hash.
func (s *Store) CursorKey(channel string) string { return s.cursorPrefix + channel }

// Follow reads each channel's cursor and chain and walks the chain from
// the cursor (or its root) to its tail.
func (s *Store) Follow(ctx context.Context, channels []string) ([]Chain, error) {
	out := make([]Chain, len(channels))
	if len(channels) == 0 {
		return out, nil
	}
	// One transaction: a unit completing between the read of a cursor and
	// of its chain would make the chain look cut off from the cursor.
	pipe := s.rdb.TxPipeline()
	curs := make([]*redis.SliceCmd, len(channels))
	chains := make([]*redis.MapStringStringCmd, len(channels))
	for i, c := range channels {
		curs[i] = pipe.HMGet(ctx, s.CursorKey(c), "ts", "key")
		chains[i] = pipe.HGetAll(ctx, ChainKey(s.task, c))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("plan: reading chains of %s: %w", s.task, err)
	}
	for i, c := range channels {
		ch := &out[i]
		v := curs[i].Val()
		if ts, ok := v[0].(string); ok {
			ch.HasCursor = true
			ch.Start.TS, _ = strconv.ParseInt(ts, 10, 64)
			ch.Start.Key, _ = v[1].(string)
		}
		h := chains[i].Val()
		if !ch.HasCursor {
			if r, ok := h["root"]; ok {
				var root struct{ TS, Key string }
				if json.Unmarshal([]byte(r), &root) == nil {
					ch.Start.TS, _ = strconv.ParseInt(root.TS, 10, 64)
					ch.Start.Key = root.Key
				}
			}
		}
		ch.Tail = ch.Start
		seen := map[string]bool{}
		for n := 0; n < maxWalk; n++ {
			f := field(ch.Tail)
			raw, ok := h[f]
			if !ok {
				break
			}
			var sg segment
			if err := json.Unmarshal([]byte(raw), &sg); err != nil {
				break // a corrupted entry ends the chain; the planner plans after it
			}
			seen[f] = true
			end := msgcache.Position{Key: sg.EndKey}
			end.TS, _ = strconv.ParseInt(sg.EndTS, 10, 64)
			at, _ := strconv.ParseInt(sg.At, 10, 64)
			ch.Segments = append(ch.Segments, Segment{Channel: c, After: ch.Tail, End: end, Unit: sg.Unit,
				Done: sg.Done == 1, PlannedAt: time.UnixMilli(at), Messages: sg.N})
			if !ch.Tail.Before(end) {
				break // an end not after its start would loop
			}
			ch.Tail = end
		}
		for f := range h {
			if f == "root" || seen[f] {
				continue
			}
			if at, ok := parseField(f); !ok || at.Before(ch.Start) {
				ch.Stray = append(ch.Stray, f)
			}
		}
	}
	return out, nil
}

// DropStray deletes segments no walk reaches from channel's cursor.
func (s *Store) DropStray(ctx context.Context, channel string, fields []string) error {
	if len(fields) == 0 {
		return nil
	}
	if err := s.rdb.HDel(ctx, ChainKey(s.task, channel), fields...).Err(); err != nil {
		return fmt.Errorf("plan: dropping stray segments of %s: %w", channel, err)
	}
	return nil
}

// Unit is a planned unit: the task ID it is enqueued under and its
// payload, for a re-enqueue.
type Unit struct {
	ID        string          `json:"-"`
	TaskID    string          `json:"task_id"`
	Payload   json.RawMessage `json:"payload"`
	PlannedAt int64           `json:"at"` // Unix ms
	// Segments are the unit's ranges, one per channel.
	Segments []Segment `json:"-"`
	// Roots marks the segments whose channel has neither cursor nor chain:
	// they start the chain (at the planner's lookback).
	Roots []bool `json:"-"`
}

// planScript appends a unit's segments to their chains, each only if it
// starts at its chain's tail (so two planners, or a planner that read a
// stale chain, never plan overlapping segments), and records the unit.
// All or nothing: one segment off its tail fails the unit.
var planScript = redis.NewScript(luaCommon + `
-- KEYS[1] units; KEYS[2i], KEYS[2i+1] chain, cursor of segment i
-- ARGV[1] unit, ARGV[2] unit record, ARGV[3] now ms, then per segment:
-- after ts, after key, end ts, end key, root ('1': may start the chain), messages
local n = (#KEYS - 1) / 2
local roots = {}
for i = 1, n do
  local chain, cursor = KEYS[2 * i], KEYS[2 * i + 1]
  local a = 3 + (i - 1) * 6
  local ts, key = start(chain, cursor)
  if not ts then
    if ARGV[a + 5] ~= '1' then return 0 end
    roots[i] = true
  else
    local steps = 0
    while steps < 100000 do
      local v = redis.call('HGET', chain, field(ts, key))
      if not v then break end
      local o = cjson.decode(v)
      ts, key = o.e, o.k
      steps = steps + 1
    end
    if ts ~= ARGV[a + 1] or key ~= ARGV[a + 2] then return 0 end
  end
end
for i = 1, n do
  local chain = KEYS[2 * i]
  local a = 3 + (i - 1) * 6
  if roots[i] then
    redis.call('HSET', chain, 'root', cjson.encode({ts = ARGV[a + 1], key = ARGV[a + 2]}))
  end
  redis.call('HSET', chain, field(ARGV[a + 1], ARGV[a + 2]),
    cjson.encode({e = ARGV[a + 3], k = ARGV[a + 4], u = ARGV[1], d = 0, at = ARGV[3], n = tonumber(ARGV[a + 6])}))
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
`)

// Plan appends u's segments to their chains and records u. It reports
// false, changing nothing, when a segment no longer starts at its chain's
// tail (another planner got there first).
func (s *Store) Plan(ctx context.Context, u Unit, now time.Time) (bool, error) {
	u.PlannedAt = now.UnixMilli()
	rec, err := json.Marshal(u)
	if err != nil {
		return false, fmt.Errorf("plan: encoding unit %s: %w", u.ID, err)
	}
	keys := []string{UnitsKey(s.task)}
	args := []any{u.ID, rec, strconv.FormatInt(now.UnixMilli(), 10)}
	for i, sg := range u.Segments {
		keys = append(keys, ChainKey(s.task, sg.Channel), s.CursorKey(sg.Channel))
		root := "0"
		if i < len(u.Roots) && u.Roots[i] {
			root = "1"
		}
		args = append(args, strconv.FormatInt(sg.After.TS, 10), sg.After.Key,
			strconv.FormatInt(sg.End.TS, 10), sg.End.Key, root, sg.Messages)
	}
	n, err := planScript.Run(ctx, s.rdb, keys, args...).Int()
	if err != nil {
		return false, fmt.Errorf("plan: planning unit %s of %s: %w", u.ID, s.task, err)
	}
	return n == 1, nil
}

// completeScript marks a unit's segments done and moves each of their
// channels' cursors over the done segments at the head of the chain,
// dropping them: the cursor stops at the first segment not done. The
// cursor hash is msgcache's (ts, key, updated_at); being one script, the
// read and the move are one compare-and-set.
var completeScript = redis.NewScript(luaCommon + `
-- KEYS[1] units; KEYS[2i], KEYS[2i+1] chain, cursor of segment i
-- ARGV[1] unit, ARGV[2] now ms, then per segment: after ts, after key
local n = (#KEYS - 1) / 2
for i = 1, n do
  local chain = KEYS[2 * i]
  local f = field(ARGV[1 + 2 * i], ARGV[2 + 2 * i])
  local v = redis.call('HGET', chain, f)
  if v then
    local o = cjson.decode(v)
    if o.u == ARGV[1] and o.d ~= 1 then
      o.d = 1
      redis.call('HSET', chain, f, cjson.encode(o))
    end
  end
end
local out = {}
for i = 1, n do
  local chain, cursor = KEYS[2 * i], KEYS[2 * i + 1]
  local ts, key = start(chain, cursor)
  local moved = 0
  if ts then
    local steps = 0
    while steps < 100000 do
      local f = field(ts, key)
      local v = redis.call('HGET', chain, f)
      if not v then break end
      local o = cjson.decode(v)
      if o.d ~= 1 then break end
      redis.call('HDEL', chain, f)
      ts, key = o.e, o.k
      moved = 1
      steps = steps + 1
    end
    if moved == 1 then
      redis.call('HSET', cursor, 'ts', ts, 'key', key, 'updated_at', ARGV[2])
      redis.call('HDEL', chain, 'root')
    end
  end
  out[#out + 1] = moved
end
redis.call('HDEL', KEYS[1], ARGV[1])
return out
`)

// Complete marks unit's segments done and moves the cursors over every
// done segment at the head of their chains. It returns, per segment,
// whether that channel's cursor moved. Completing a unit twice, or one
// whose segments are gone, changes nothing.
func (s *Store) Complete(ctx context.Context, unit string, segs []Segment, now time.Time) ([]bool, error) {
	keys := []string{UnitsKey(s.task)}
	args := []any{unit, strconv.FormatInt(now.UnixMilli(), 10)}
	for _, sg := range segs {
		keys = append(keys, ChainKey(s.task, sg.Channel), s.CursorKey(sg.Channel))
		args = append(args, strconv.FormatInt(sg.After.TS, 10), sg.After.Key)
	}
	res, err := completeScript.Run(ctx, s.rdb, keys, args...).Int64Slice()
	if err != nil {
		return nil, fmt.Errorf("plan: completing unit %s of %s: %w", unit, s.task, err)
	}
	moved := make([]bool, len(res))
	for i, v := range res {
		moved[i] = v == 1
	}
	return moved, nil
}

// Units returns the units planned and not settled, by ID.
func (s *Store) Units(ctx context.Context) (map[string]Unit, error) {
	h, err := s.rdb.HGetAll(ctx, UnitsKey(s.task)).Result()
	if err != nil {
		return nil, fmt.Errorf("plan: reading units of %s: %w", s.task, err)
	}
	out := make(map[string]Unit, len(h))
	for id, raw := range h {
		var u Unit
		if json.Unmarshal([]byte(raw), &u) != nil {
			u = Unit{} // unreadable: dropped as garbage by the planner
		}
		u.ID = id
		out[id] = u
	}
	return out, nil
}

// touchScript rewrites a unit's record if it is still there (a unit that
// settled meanwhile is not brought back).
var touchScript = redis.NewScript(`
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
`)

// Touch restarts a unit's clock: it was (re-)enqueued at now.
func (s *Store) Touch(ctx context.Context, u Unit, now time.Time) error {
	u.PlannedAt = now.UnixMilli()
	rec, err := json.Marshal(u)
	if err != nil {
		return fmt.Errorf("plan: encoding unit %s: %w", u.ID, err)
	}
	if err := touchScript.Run(ctx, s.rdb, []string{UnitsKey(s.task)}, u.ID, rec).Err(); err != nil {
		return fmt.Errorf("plan: touching unit %s of %s: %w", u.ID, s.task, err)
	}
	return nil
}

// DropUnits deletes unit records no segment refers to any more.
func (s *Store) DropUnits(ctx context.Context, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	if err := s.rdb.HDel(ctx, UnitsKey(s.task), ids...).Err(); err != nil {
		return fmt.Errorf("plan: dropping units of %s: %w", s.task, err)
	}
	return nil
}

// SourceBacklog is one source's backlog: messages after its cursor (those
// of the bot included: they are passed over, not extracted) and the time
// of the oldest.
type SourceBacklog struct {
	Source  string
	Pending int64
	Oldest  time.Time
}

// Backlog is what a planning pass measured for a task.
type Backlog struct {
	Task    string
	Updated time.Time
	// Units are planned and not settled; Planned the messages they hold.
	Units, Planned int64
	Sources        []SourceBacklog
}

// Pending is the messages after the cursors, over all sources.
func (b Backlog) Pending() int64 {
	var n int64
	for _, s := range b.Sources {
		n += s.Pending
	}
	return n
}

// Oldest is the oldest message after a cursor (zero: none).
func (b Backlog) Oldest() time.Time {
	var t time.Time
	for _, s := range b.Sources {
		if t.IsZero() || s.Oldest.Before(t) {
			t = s.Oldest
		}
	}
	return t
}

// Fields of BacklogKey beside the sources (which contain ':').
const (
	backlogUpdated = "~updated"
	backlogUnits   = "~units"
	backlogPlanned = "~planned"
)

// WriteBacklog replaces the task's backlog hash with b; only sources with
// a backlog are kept, so the hash stays as small as the work left.
func (s *Store) WriteBacklog(ctx context.Context, b Backlog) error {
	vals := []any{backlogUpdated, b.Updated.UnixMilli(), backlogUnits, b.Units, backlogPlanned, b.Planned}
	for _, src := range b.Sources {
		if src.Pending > 0 {
			vals = append(vals, src.Source, strconv.FormatInt(src.Pending, 10)+" "+strconv.FormatInt(src.Oldest.UnixMilli(), 10))
		}
	}
	pipe := s.rdb.TxPipeline()
	pipe.Del(ctx, BacklogKey(s.task))
	pipe.HSet(ctx, BacklogKey(s.task), vals...)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("plan: writing the backlog of %s: %w", s.task, err)
	}
	return nil
}

// ReadBacklog reads what task's last planning pass measured; a task that
// never planned has a zero Updated.
func ReadBacklog(ctx context.Context, rdb redis.UniversalClient, task string) (Backlog, error) {
	h, err := rdb.HGetAll(ctx, BacklogKey(task)).Result()
	if err != nil {
		return Backlog{}, fmt.Errorf("plan: reading the backlog of %s: %w", task, err)
	}
	b := Backlog{Task: task}
	for k, v := range h {
		n, _ := strconv.ParseInt(v, 10, 64)
		switch k {
		case backlogUpdated:
			if n > 0 {
				b.Updated = time.UnixMilli(n)
			}
		case backlogUnits:
			b.Units = n
		case backlogPlanned:
			b.Planned = n
		default:
			p, o, ok := strings.Cut(v, " ")
			if !ok {
				continue // not ours: the hash is in Redis, which is untrusted
			}
			pending, err1 := strconv.ParseInt(p, 10, 64)
			oldest, err2 := strconv.ParseInt(o, 10, 64)
			if err1 != nil || err2 != nil || pending < 0 {
				continue
			}
			b.Sources = append(b.Sources, SourceBacklog{Source: k, Pending: pending, Oldest: time.UnixMilli(oldest)})
		}
	}
	return b, nil
}
