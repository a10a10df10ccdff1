package msgcache

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/redis/go-redis/v9"
)

// Position is a place in a channel's message set. The set orders messages
// by time (the score, Unix ms) and messages of the same millisecond by key
// (byte order), so (TS, Key) names a point even among equal times. The
// empty Key is before every message of TS; the zero Position is before
// every message.
type Position struct {
	TS  int64
	Key string
}

// Before reports whether p comes before q in the set's order.
func (p Position) Before(q Position) bool {
	return p.TS < q.TS || p.TS == q.TS && p.Key < q.Key
}

// Page is a run of a channel's messages, in the set's order.
type Page struct {
	Messages []Message
	// Positions[i] is Messages[i]'s place in the set.
	Positions []Position
	// End is the place of the last member read, which is past the last
	// message when members at the end had no hash any more (expired or
	// deleted): a cursor moved to End does not read them again.
	End Position
}

// After reads up to limit members of c's message set that come after pos,
// oldest first. End is pos when there are none.
func (s *Store) After(ctx context.Context, c Channel, pos Position, limit int) (Page, error) {
	page := Page{End: pos}
	if limit <= 0 {
		return page, nil
	}
	key := MessagesKey(c)
	ts := strconv.FormatInt(pos.TS, 10)
	pipe := s.rdb.Pipeline()
	// Members of pos's own millisecond that sort after its key, then the
	// later ones: no offset paging, so a concurrent insert or delete
	// cannot make a read skip a member.
	ties := pipe.ZRangeByScoreWithScores(ctx, key, &redis.ZRangeBy{Min: ts, Max: ts})
	later := pipe.ZRangeByScoreWithScores(ctx, key, &redis.ZRangeBy{Min: "(" + ts, Max: "+inf", Count: int64(limit)})
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return page, fmt.Errorf("msgcache: messages of %s after %d: %w", c, pos.TS, err)
	}
	var members []Position
	for _, z := range append(ties.Val(), later.Val()...) {
		m, _ := z.Member.(string)
		p := Position{TS: int64(z.Score), Key: m}
		if pos.Before(p) && len(members) < limit {
			members = append(members, p)
		}
	}
	if len(members) == 0 {
		return page, nil
	}
	keys := make([]string, len(members))
	at := make(map[string]Position, len(members))
	for i, p := range members {
		keys[i] = p.Key
		at[p.Key] = p
	}
	msgs, err := s.Get(ctx, keys)
	if err != nil {
		return page, err
	}
	page.Messages = msgs
	page.Positions = make([]Position, len(msgs))
	for i, m := range msgs {
		page.Positions[i] = at[m.Key]
	}
	page.End = members[len(members)-1]
	return page, nil
}

// Newest returns, per channel, the time (ms) of its newest message from the
// active-channels index, or 0 when the index does not know the channel: a
// cheap test of whether a channel has anything after a cursor.
func (s *Store) Newest(ctx context.Context, chans []Channel) ([]int64, error) {
	out := make([]int64, len(chans))
	if len(chans) == 0 {
		return out, nil
	}
	members := make([]string, len(chans))
	for i, c := range chans {
		members[i] = c.String()
	}
	scores, err := s.rdb.ZMScore(ctx, activeKey, members...).Result()
	if err != nil {
		return nil, fmt.Errorf("msgcache: newest messages: %w", err)
	}
	for i, sc := range scores {
		out[i] = int64(sc)
	}
	return out, nil
}

// Cursors reads positions stored by SetCursor (the zero Position where
// none is stored).
func (s *Store) Cursors(ctx context.Context, keys []string) ([]Position, error) {
	out := make([]Position, len(keys))
	if len(keys) == 0 {
		return out, nil
	}
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.SliceCmd, len(keys))
	for i, k := range keys {
		cmds[i] = pipe.HMGet(ctx, k, "ts", "key")
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("msgcache: reading cursors: %w", err)
	}
	for i, cmd := range cmds {
		v := cmd.Val()
		ts, _ := v[0].(string)
		k, _ := v[1].(string)
		out[i].TS, _ = strconv.ParseInt(ts, 10, 64)
		out[i].Key = k
	}
	return out, nil
}

// advanceScript moves a cursor from one position to another only if it is
// still at the first (compare-and-set): of two runs that read the same
// cursor, only the first to finish moves it, and the other cannot move it
// back or past work it did not do.
var advanceScript = redis.NewScript(`
local v = redis.call('HMGET', KEYS[1], 'ts', 'key')
if (v[1] or '0') ~= ARGV[1] or (v[2] or '') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'ts', ARGV[3], 'key', ARGV[4], 'updated_at', ARGV[5])
return 1
`)

// SetCursor moves the cursor hash at key from from (the zero Position: no
// cursor yet) to to, if no one moved it meanwhile, and reports whether it
// did. The hash has fields ts, key and updated_at (ms).
func (s *Store) SetCursor(ctx context.Context, key string, from, to Position, nowMS int64) (bool, error) {
	n, err := advanceScript.Run(ctx, s.rdb, []string{key},
		strconv.FormatInt(from.TS, 10), from.Key, to.TS, to.Key, nowMS).Int()
	if err != nil {
		return false, fmt.Errorf("msgcache: moving cursor %s: %w", key, err)
	}
	return n == 1, nil
}

// Backlog counts, per channel, the messages after from[i] and returns the
// time (ms) of the oldest of them (0: none), in one round trip. Messages of
// from's own millisecond are not counted: it is a gauge for operators, not
// a read.
func (s *Store) Backlog(ctx context.Context, chans []Channel, from []Position) (counts, oldest []int64, err error) {
	counts, oldest = make([]int64, len(chans)), make([]int64, len(chans))
	if len(chans) == 0 {
		return counts, oldest, nil
	}
	pipe := s.rdb.Pipeline()
	ns := make([]*redis.IntCmd, len(chans))
	firsts := make([]*redis.ZSliceCmd, len(chans))
	for i, c := range chans {
		min := "(" + strconv.FormatInt(from[i].TS, 10)
		ns[i] = pipe.ZCount(ctx, MessagesKey(c), min, "+inf")
		firsts[i] = pipe.ZRangeByScoreWithScores(ctx, MessagesKey(c), &redis.ZRangeBy{Min: min, Max: "+inf", Count: 1})
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, nil, fmt.Errorf("msgcache: counting backlog: %w", err)
	}
	for i := range chans {
		counts[i] = ns[i].Val()
		if z := firsts[i].Val(); len(z) > 0 {
			oldest[i] = int64(z[0].Score)
		}
	}
	return counts, oldest, nil
}
