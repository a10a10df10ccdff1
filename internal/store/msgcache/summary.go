package msgcache

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Summary is a channel's rolling summary: channel_summarization folds the
// messages newer than LastMessageTS into it, and the bot reads it as the
// channel's long-term context.
type Summary struct {
	Text string
	// UpdatedAt is when the summary was last written.
	UpdatedAt time.Time
	// MessageCount is how many messages have been folded into the summary
	// since it was first written.
	MessageCount int64
	// LastMessageTS is the time (Unix ms) of the newest message the summary
	// covers; only newer messages are summarised next time.
	LastMessageTS int64
	// Model is the model that wrote the last update.
	Model string
}

// Note is a channel's heartbeat: a short note, written by the flash model,
// of what is happening in the channel now.
type Note struct {
	Text          string
	UpdatedAt     time.Time
	LastMessageTS int64
	Model         string
}

// SummaryKey is the hash of a channel's rolling summary.
func SummaryKey(c Channel) string { return channelPrefix + c.String() + ":summary" }

// HeartbeatKey is the hash of a channel's heartbeat note.
func HeartbeatKey(c Channel) string { return channelPrefix + c.String() + ":heartbeat" }

// Summary reads c's rolling summary; ok is false when there is none.
func (s *Store) Summary(ctx context.Context, c Channel) (sum Summary, ok bool, err error) {
	h, err := s.rdb.HGetAll(ctx, SummaryKey(c)).Result()
	if err != nil {
		return Summary{}, false, fmt.Errorf("msgcache: summary of %s: %w", c, err)
	}
	if len(h) == 0 {
		return Summary{}, false, nil
	}
	return Summary{
		Text: h["summary"], UpdatedAt: time.UnixMilli(parseInt(h["updated_at"])),
		MessageCount: parseInt(h["message_count"]), LastMessageTS: parseInt(h["last_message_ts"]),
		Model: h["model"],
	}, true, nil
}

// SetSummary stores c's summary unless the stored one already covers
// messages as new as sum.LastMessageTS: a slow or repeated run never
// replaces a newer summary with an older one. It reports whether it wrote.
func (s *Store) SetSummary(ctx context.Context, c Channel, sum Summary) (bool, error) {
	ok, err := setIfNewer(ctx, s.rdb, SummaryKey(c), sum.LastMessageTS,
		"summary", sum.Text, "updated_at", ms(sum.UpdatedAt),
		"message_count", strconv.FormatInt(sum.MessageCount, 10), "model", sum.Model)
	if err != nil {
		return false, fmt.Errorf("msgcache: storing summary of %s: %w", c, err)
	}
	return ok, nil
}

// Heartbeat reads c's heartbeat note; ok is false when there is none.
func (s *Store) Heartbeat(ctx context.Context, c Channel) (n Note, ok bool, err error) {
	h, err := s.rdb.HGetAll(ctx, HeartbeatKey(c)).Result()
	if err != nil {
		return Note{}, false, fmt.Errorf("msgcache: heartbeat of %s: %w", c, err)
	}
	if len(h) == 0 {
		return Note{}, false, nil
	}
	return Note{
		Text: h["note"], UpdatedAt: time.UnixMilli(parseInt(h["updated_at"])),
		LastMessageTS: parseInt(h["last_message_ts"]), Model: h["model"],
	}, true, nil
}

// SetHeartbeat stores c's note unless the stored one already covers
// messages as new as n.LastMessageTS (two runs for the same channel, one
// by hand and one fanned out, keep the newer). It reports whether it wrote.
func (s *Store) SetHeartbeat(ctx context.Context, c Channel, n Note) (bool, error) {
	ok, err := setIfNewer(ctx, s.rdb, HeartbeatKey(c), n.LastMessageTS,
		"note", n.Text, "updated_at", ms(n.UpdatedAt), "model", n.Model)
	if err != nil {
		return false, fmt.Errorf("msgcache: storing heartbeat of %s: %w", c, err)
	}
	return ok, nil
}

// Since returns the newest limit messages of c later than after (Unix ms),
// oldest first. A busy channel's backlog beyond limit is skipped rather
// than summarised oldest-first, so a summary never lags behind the channel.
func (s *Store) Since(ctx context.Context, c Channel, after int64, limit int) ([]Message, error) {
	if limit <= 0 {
		return nil, nil
	}
	keys, err := s.rdb.ZRevRangeByScore(ctx, MessagesKey(c), &redis.ZRangeBy{
		Min: "(" + strconv.FormatInt(after, 10), Max: "+inf", Count: int64(limit),
	}).Result()
	if err != nil {
		return nil, fmt.Errorf("msgcache: messages of %s: %w", c, err)
	}
	for i, j := 0, len(keys)-1; i < j; i, j = i+1, j-1 {
		keys[i], keys[j] = keys[j], keys[i]
	}
	return s.Get(ctx, keys)
}

// setIfNewerScript writes the hash only if its last_message_ts is older
// than ARGV[1] (or absent or unreadable), atomically.
var setIfNewerScript = redis.NewScript(`
local cur = tonumber(redis.call('HGET', KEYS[1], 'last_message_ts'))
if cur and cur >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'last_message_ts', ARGV[1], unpack(ARGV, 2))
return 1
`)

func setIfNewer(ctx context.Context, rdb redis.Scripter, key string, lastTS int64, fields ...any) (bool, error) {
	args := append([]any{strconv.FormatInt(lastTS, 10)}, fields...)
	n, err := setIfNewerScript.Run(ctx, rdb, []string{key}, args...).Int()
	return n == 1, err
}

func parseInt(s string) int64 {
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}
