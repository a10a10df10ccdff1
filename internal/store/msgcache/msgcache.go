// Package msgcache reads and writes the bot's message cache in Redis: the
// per-channel message sets, the active-channels index, channel metadata and
// message embeddings. docs/data-model.md is the contract with the bot; this
// package is its only Go implementation, so every task that reads messages
// agrees on the keys.
package msgcache

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Message kinds, as the bot records them.
const (
	KindUserIn       = "user_in"
	KindAssistantOut = "assistant_out"
)

// ActiveKey is the sorted set of channels by their newest message (ms).
const ActiveKey = "sg:channels:active"

// Keys of the message cache.
const (
	activeKey     = ActiveKey
	msgsPrefix    = "sg:msgs:"
	msgPrefix     = "sg:msg:"
	channelPrefix = "sg:channel:"
)

// Channel names one channel (Discord) or room (Matrix).
type Channel struct {
	Platform string
	ID       string
}

func (c Channel) String() string { return c.Platform + ":" + c.ID }

// ParseChannel reads "<platform>:<id>". The id may itself contain colons
// (Matrix room ids do); the platform never does.
func ParseChannel(s string) (Channel, error) {
	p, id, ok := strings.Cut(s, ":")
	if !ok || p == "" || id == "" {
		return Channel{}, fmt.Errorf("msgcache: %q is not <platform>:<channel id>", s)
	}
	return Channel{Platform: p, ID: id}, nil
}

// MessagesKey is the sorted set of a channel's message keys, scored by
// message time in Unix milliseconds.
func MessagesKey(c Channel) string { return msgsPrefix + c.String() }

// MessageKey is the hash of one message. Messages with a platform id are
// keyed by it, so the same platform message is stored once.
func MessageKey(c Channel, messageID string) string {
	return msgPrefix + c.String() + ":" + messageID
}

// MetaKey is the hash of a channel's metadata.
func MetaKey(c Channel) string { return channelPrefix + c.String() + ":meta" }

// Message is one cached chat message.
type Message struct {
	Key       string
	Channel   Channel
	MessageID string
	UserID    string
	UserName  string
	Text      string
	Time      time.Time
	ReplyToID string
	Kind      string
}

// Meta is a channel's metadata, recorded so recall never fails closed on an
// unknown channel.
type Meta struct {
	Name      string
	GuildID   string
	GuildName string
	IsDM      bool
}

// Store is the message cache in one Redis.
type Store struct {
	rdb redis.UniversalClient
}

// New returns the store on rdb.
func New(rdb redis.UniversalClient) *Store { return &Store{rdb: rdb} }

// ActiveChannels returns up to limit channels, most recently active first.
func (s *Store) ActiveChannels(ctx context.Context, limit int) ([]Channel, error) {
	if limit <= 0 {
		return nil, nil
	}
	members, err := s.rdb.ZRevRange(ctx, activeKey, 0, int64(limit-1)).Result()
	if err != nil {
		return nil, fmt.Errorf("msgcache: active channels: %w", err)
	}
	out := make([]Channel, 0, len(members))
	for _, m := range members {
		c, err := ParseChannel(m)
		if err != nil {
			continue // a foreign member must not stop the others
		}
		out = append(out, c)
	}
	return out, nil
}

// discoverScanCount is the COUNT of DiscoverChannels' SCAN. The scan
// visits every key of the cache (a million messages are a million keys for
// a few thousand channels) at about 1.5 µs a key of server time, whatever
// the COUNT; the COUNT only sets how long each call holds the server: 0.9
// ms at 500, 3.6 ms at 2,000, 6.9 ms at 5,000 over a million keys
// (docs/performance.md, "Data at scale"). 500 keeps every other client's
// wait (the bot's) under a millisecond.
const discoverScanCount = 500

// DiscoverChannels returns every channel with a message set, found by
// scanning the key space (no static list: channels appear as the bot
// caches their first message). It costs as much as the cache is large:
// the planners read AllActive and scan only through Reconcile, hourly;
// operators' one-off listings scan.
func (s *Store) DiscoverChannels(ctx context.Context) ([]Channel, error) {
	var out []Channel
	seen := map[string]bool{}
	iter := s.rdb.Scan(ctx, 0, msgsPrefix+"*", discoverScanCount).Iterator()
	for iter.Next(ctx) {
		k := strings.TrimPrefix(iter.Val(), msgsPrefix)
		if seen[k] {
			continue // SCAN may return a key twice
		}
		seen[k] = true
		if c, err := ParseChannel(k); err == nil {
			out = append(out, c)
		}
	}
	if err := iter.Err(); err != nil {
		return nil, fmt.Errorf("msgcache: scanning channels: %w", err)
	}
	return out, nil
}

// AllActive returns every channel of the active set, read whole (one
// ZRANGE: it grows with channels, not with the cache, unlike
// DiscoverChannels). Members that are not "<platform>:<id>" are returned
// apart, for the caller to warn about: the set is the bot's, untrusted, and
// one bad member must not stop the others.
func (s *Store) AllActive(ctx context.Context) (chans []Channel, malformed []string, err error) {
	members, err := s.rdb.ZRange(ctx, activeKey, 0, -1).Result()
	if err != nil {
		return nil, nil, fmt.Errorf("msgcache: reading the active channels: %w", err)
	}
	chans = make([]Channel, 0, len(members))
	for _, m := range members {
		c, err := ParseChannel(m)
		if err != nil {
			malformed = append(malformed, m)
			continue
		}
		chans = append(chans, c)
	}
	return chans, malformed, nil
}

// Reconcile finds, by DiscoverChannels' full scan, every channel with a
// message set, and adds those missing from the active set to it (ZADD NX,
// at the score of the channel's newest message), so readers of the active
// set alone miss no channel for long. It returns the channels it added and
// how many it scanned. A message set emptied meanwhile, or a key of the
// pattern that is no sorted set, is left alone.
func (s *Store) Reconcile(ctx context.Context) (added []Channel, scanned int, err error) {
	found, err := s.DiscoverChannels(ctx)
	if err != nil {
		return nil, 0, err
	}
	members, err := s.rdb.ZRange(ctx, activeKey, 0, -1).Result()
	if err != nil {
		return nil, len(found), fmt.Errorf("msgcache: reading the active channels: %w", err)
	}
	known := make(map[string]bool, len(members))
	for _, m := range members {
		known[m] = true
	}
	for _, c := range found {
		if known[c.String()] {
			continue
		}
		newest, err := s.rdb.ZRevRangeWithScores(ctx, MessagesKey(c), 0, 0).Result()
		var refused redis.Error
		switch {
		case errors.As(err, &refused):
			continue // not a sorted set (a foreign key): not a channel, and it must not stop the others
		case err != nil:
			return added, len(found), fmt.Errorf("msgcache: newest message of %s: %w", c, err)
		case len(newest) == 0:
			continue
		}
		n, err := s.rdb.ZAddNX(ctx, activeKey, redis.Z{Score: newest[0].Score, Member: c.String()}).Result()
		if err != nil {
			return added, len(found), fmt.Errorf("msgcache: adding %s to the active channels: %w", c, err)
		}
		if n == 1 {
			added = append(added, c)
		}
	}
	return added, len(found), nil
}

// RecordMeta stores a channel's metadata.
func (s *Store) RecordMeta(ctx context.Context, c Channel, m Meta, now time.Time) error {
	err := s.rdb.HSet(ctx, MetaKey(c),
		"platform", c.Platform, "channel_id", c.ID, "channel_name", m.Name,
		"guild_id", m.GuildID, "guild_name", m.GuildName, "is_dm", boolString(m.IsDM),
		"updated_at", ms(now)).Err()
	if err != nil {
		return fmt.Errorf("msgcache: channel meta %s: %w", c, err)
	}
	return nil
}

// Meta reads a channel's metadata; ok is false when none is recorded.
func (s *Store) Meta(ctx context.Context, c Channel) (m Meta, ok bool, err error) {
	h, err := s.rdb.HGetAll(ctx, MetaKey(c)).Result()
	if err != nil {
		return Meta{}, false, fmt.Errorf("msgcache: channel meta %s: %w", c, err)
	}
	if len(h) == 0 {
		return Meta{}, false, nil
	}
	return Meta{Name: h["channel_name"], GuildID: h["guild_id"], GuildName: h["guild_name"], IsDM: h["is_dm"] == "1"}, true, nil
}

// logScript stores a message once: it creates the hash only if absent,
// indexes it in the channel's set and bumps the channel's activity, and
// returns 1 if it created the message.
var logScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('ZADD', KEYS[2], ARGV[1], KEYS[1])
local cur = redis.call('ZSCORE', KEYS[3], ARGV[2])
if not cur or tonumber(cur) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[3], ARGV[1], ARGV[2])
end
return 1
`)

// ErrNoMessageID is returned by Log for a message without a platform id:
// the cache is keyed by it.
var ErrNoMessageID = errors.New("msgcache: message without a message id")

// Log caches m if it is not cached yet. It reports whether it was created
// and the message's key.
func (s *Store) Log(ctx context.Context, m Message) (key string, created bool, err error) {
	if m.MessageID == "" {
		return "", false, ErrNoMessageID
	}
	if m.Kind == "" {
		m.Kind = KindUserIn
	}
	key = MessageKey(m.Channel, m.MessageID)
	args := []any{ms(m.Time), m.Channel.String(),
		"platform", m.Channel.Platform, "channel_id", m.Channel.ID, "message_id", m.MessageID,
		"user_id", m.UserID, "user_name", m.UserName, "text", m.Text, "ts", ms(m.Time),
		"reply_to_id", m.ReplyToID, "kind", m.Kind}
	n, err := logScript.Run(ctx, s.rdb, []string{key, MessagesKey(m.Channel), activeKey}, args...).Int()
	if err != nil {
		return "", false, fmt.Errorf("msgcache: logging %s: %w", key, err)
	}
	return key, n == 1, nil
}

// Range returns up to limit messages of c with after < time <= until
// (Unix ms; 0 means unbounded), oldest first.
func (s *Store) Range(ctx context.Context, c Channel, after, until int64, limit int) ([]Message, error) {
	maxS := "+inf"
	if until > 0 {
		maxS = strconv.FormatInt(until, 10)
	}
	keys, err := s.rdb.ZRangeByScore(ctx, MessagesKey(c), &redis.ZRangeBy{
		Min: "(" + strconv.FormatInt(after, 10), Max: maxS, Count: int64(limit),
	}).Result()
	if err != nil {
		return nil, fmt.Errorf("msgcache: messages of %s: %w", c, err)
	}
	return s.Get(ctx, keys)
}

// Recent returns the last limit messages of c, oldest first.
func (s *Store) Recent(ctx context.Context, c Channel, limit int) ([]Message, error) {
	if limit <= 0 {
		return nil, nil
	}
	keys, err := s.rdb.ZRevRange(ctx, MessagesKey(c), 0, int64(limit-1)).Result()
	if err != nil {
		return nil, fmt.Errorf("msgcache: recent messages of %s: %w", c, err)
	}
	for i, j := 0, len(keys)-1; i < j; i, j = i+1, j-1 {
		keys[i], keys[j] = keys[j], keys[i]
	}
	return s.Get(ctx, keys)
}

var messageFields = []string{"platform", "channel_id", "message_id", "user_id", "user_name", "text", "ts", "reply_to_id", "kind"}

// Get reads messages by key in one round trip, skipping keys that expired
// or were deleted since they were indexed.
func (s *Store) Get(ctx context.Context, keys []string) ([]Message, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.SliceCmd, len(keys))
	for i, k := range keys {
		cmds[i] = pipe.HMGet(ctx, k, messageFields...)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("msgcache: reading messages: %w", err)
	}
	out := make([]Message, 0, len(keys))
	for i, cmd := range cmds {
		v := cmd.Val()
		if len(v) != len(messageFields) || v[2] == nil {
			continue
		}
		f := func(j int) string { s, _ := v[j].(string); return s }
		t, _ := strconv.ParseInt(f(6), 10, 64)
		out = append(out, Message{
			Key: keys[i], Channel: Channel{Platform: f(0), ID: f(1)}, MessageID: f(2),
			UserID: f(3), UserName: f(4), Text: f(5), Time: time.UnixMilli(t),
			ReplyToID: f(7), Kind: f(8),
		})
	}
	return out, nil
}

// Texts returns the text field of each key ("" where missing), in order.
func (s *Store) Texts(ctx context.Context, keys []string) ([]string, error) {
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.StringCmd, len(keys))
	for i, k := range keys {
		cmds[i] = pipe.HGet(ctx, k, "text")
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("msgcache: reading texts: %w", err)
	}
	out := make([]string, len(keys))
	for i, c := range cmds {
		out[i] = c.Val()
	}
	return out, nil
}

// Exists reports, for each key, whether the message is cached.
func (s *Store) Exists(ctx context.Context, keys []string) ([]bool, error) {
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.IntCmd, len(keys))
	for i, k := range keys {
		cmds[i] = pipe.Exists(ctx, k)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("msgcache: checking messages: %w", err)
	}
	out := make([]bool, len(keys))
	for i, c := range cmds {
		out[i] = c.Val() == 1
	}
	return out, nil
}

// HasEmbedding reports, for each key, whether the message has a real
// embedding: present, of nonzero length, and not all zeros (the bot writes
// a zero placeholder when embedding failed).
func (s *Store) HasEmbedding(ctx context.Context, keys []string) ([]bool, error) {
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.StringCmd, len(keys))
	for i, k := range keys {
		cmds[i] = pipe.HGet(ctx, k, "embedding")
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("msgcache: reading embeddings: %w", err)
	}
	out := make([]bool, len(keys))
	for i, c := range cmds {
		out[i] = realVector([]byte(c.Val()))
	}
	return out, nil
}

// SetEmbedding stores a message's vector as little-endian float32s, the
// layout Redis vector search reads. It does not create a message that was
// deleted meanwhile.
func (s *Store) SetEmbedding(ctx context.Context, key string, vec []float32, model string) (bool, error) {
	n, err := setIfExists.Run(ctx, s.rdb, []string{key}, EncodeVector(vec), model).Int()
	if err != nil {
		return false, fmt.Errorf("msgcache: storing embedding of %s: %w", key, err)
	}
	return n == 1, nil
}

var setIfExists = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'embedding', ARGV[1], 'embedding_model', ARGV[2])
return 1
`)

// EncodeVector is the byte layout of stored vectors: little-endian float32.
func EncodeVector(v []float32) string {
	b := make([]byte, 4*len(v))
	for i, f := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(f))
	}
	return string(b)
}

// DecodeVector reverses EncodeVector.
func DecodeVector(b []byte) []float32 {
	v := make([]float32, len(b)/4)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return v
}

func realVector(b []byte) bool {
	if len(b) < 4 || len(b)%4 != 0 {
		return false
	}
	for _, x := range b {
		if x != 0 {
			return true
		}
	}
	return false
}

func ms(t time.Time) string { return strconv.FormatInt(t.UnixMilli(), 10) }

func boolString(b bool) string {
	if b {
		return "1"
	}
	return "0"
}
