// Package prompts is the Redis store of user-scheduled prompts: the contract
// between the bot, which writes prompts and consumes fired ones, and the
// scheduled_prompt_tick / scheduled_prompt_cleanup tasks. The key layout is
// documented in docs/data-model.md.
package prompts

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
)

// Key names. They are fixed because the bot reads them.
const (
	KeyPrefix   = "sg:sched_prompt:"
	DueKey      = "sg:sched_prompts:due"
	FinishedKey = "sg:sched_prompts:finished"
	StreamKey   = "sg:sched_prompts:fired"
	// StreamMaxLen bounds the fired stream (approximate trimming); the bot
	// consumes it with a consumer group long before this many accumulate.
	StreamMaxLen = 10_000
	// MaxTextBytes bounds a prompt's text.
	MaxTextBytes = 16 << 10
)

// Status of a prompt.
type Status string

// The states of a prompt. A one-shot prompt goes pending → executed; a
// recurring one stays pending until it is cancelled or passes its end. A
// pending prompt the tick cannot fire (a field missing or not a number)
// becomes invalid, with the reason in its invalid_reason field.
const (
	Pending   Status = "pending"
	Executed  Status = "executed"
	Cancelled Status = "cancelled"
	Invalid   Status = "invalid"
)

// Errors returned by the store.
var (
	ErrNotFound   = errors.New("scheduled prompt not found")
	ErrNotPending = errors.New("scheduled prompt is no longer pending")
	ErrInvalid    = errors.New("invalid scheduled prompt")
)

// Prompt is one scheduled prompt.
type Prompt struct {
	ID        string
	Platform  string
	ChannelID string
	UserID    string
	Text      string
	// FireAt is the next time the prompt fires.
	FireAt time.Time
	// Interval is zero for a one-shot prompt.
	Interval time.Duration
	// EndAt, if not zero, is when a recurring prompt stops.
	EndAt  time.Time
	Status Status
	// InvalidReason says why an invalid prompt could not fire.
	InvalidReason string
	FireCount     int
	CreatedAt     time.Time
	LastFiredAt   time.Time
	FinishedAt    time.Time
}

// New is what a caller supplies to add a prompt.
type New struct {
	Platform  string
	ChannelID string
	UserID    string
	Text      string
	FireAt    time.Time
	Interval  time.Duration
	EndAt     time.Time
}

// Validate reports the first problem with n, naming the field.
func (n New) Validate() error {
	switch {
	case strings.TrimSpace(n.Platform) == "":
		return fmt.Errorf("%w: platform is required", ErrInvalid)
	case strings.TrimSpace(n.ChannelID) == "":
		return fmt.Errorf("%w: channel_id is required", ErrInvalid)
	case strings.TrimSpace(n.Text) == "":
		return fmt.Errorf("%w: text is required", ErrInvalid)
	case len(n.Text) > MaxTextBytes:
		return fmt.Errorf("%w: text exceeds %d bytes", ErrInvalid, MaxTextBytes)
	case !utf8.ValidString(n.Text + n.Platform + n.ChannelID + n.UserID):
		return fmt.Errorf("%w: fields must be valid UTF-8", ErrInvalid)
	case n.FireAt.IsZero():
		return fmt.Errorf("%w: fire_at is required", ErrInvalid)
	case n.Interval < 0 || (n.Interval > 0 && n.Interval < time.Minute):
		return fmt.Errorf("%w: interval must be zero (one-shot) or at least one minute", ErrInvalid)
	case !n.EndAt.IsZero() && n.Interval == 0:
		return fmt.Errorf("%w: end_at only applies to recurring prompts", ErrInvalid)
	case !n.EndAt.IsZero() && n.EndAt.Before(n.FireAt):
		return fmt.Errorf("%w: end_at is before fire_at", ErrInvalid)
	}
	return nil
}

// Fired is one prompt occurrence handed to the bot.
type Fired struct {
	StreamID     string
	PromptID     string
	ScheduledFor time.Time
	Occurrence   int
}

// Store reads and writes scheduled prompts.
type Store struct {
	rdb redis.UniversalClient
}

// NewStore returns a store over rdb.
func NewStore(rdb redis.UniversalClient) *Store { return &Store{rdb: rdb} }

func key(id string) string { return KeyPrefix + id }

func ms(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func fromMS(s string) time.Time {
	n, _ := strconv.ParseInt(s, 10, 64)
	if n == 0 {
		return time.Time{}
	}
	return time.UnixMilli(n).UTC()
}

// Add stores a new pending prompt and returns it.
func (s *Store) Add(ctx context.Context, n New, now time.Time) (Prompt, error) {
	if err := n.Validate(); err != nil {
		return Prompt{}, err
	}
	p := Prompt{
		ID: uuid.NewString(), Platform: n.Platform, ChannelID: n.ChannelID, UserID: n.UserID, Text: n.Text,
		FireAt: n.FireAt.UTC().Truncate(time.Millisecond), Interval: n.Interval.Truncate(time.Second),
		EndAt: n.EndAt, Status: Pending, CreatedAt: now.UTC().Truncate(time.Millisecond),
	}
	_, err := s.rdb.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
		pipe.HSet(ctx, key(p.ID), map[string]any{
			"id": p.ID, "platform": p.Platform, "channel_id": p.ChannelID, "user_id": p.UserID,
			"text": p.Text, "fire_at": ms(p.FireAt), "interval_seconds": int64(p.Interval / time.Second),
			"end_at": ms(p.EndAt), "status": string(Pending), "fire_count": 0,
			"created_at": ms(p.CreatedAt), "updated_at": ms(p.CreatedAt),
		})
		pipe.ZAdd(ctx, DueKey, redis.Z{Score: float64(ms(p.FireAt)), Member: p.ID})
		return nil
	})
	if err != nil {
		return Prompt{}, fmt.Errorf("adding scheduled prompt: %w", err)
	}
	return p, nil
}

// Get reads one prompt.
func (s *Store) Get(ctx context.Context, id string) (Prompt, error) {
	h, err := s.rdb.HGetAll(ctx, key(id)).Result()
	if err != nil {
		return Prompt{}, fmt.Errorf("reading scheduled prompt %s: %w", id, err)
	}
	if len(h) == 0 {
		return Prompt{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	iv, _ := strconv.ParseInt(h["interval_seconds"], 10, 64)
	fc, _ := strconv.Atoi(h["fire_count"])
	return Prompt{
		ID: h["id"], Platform: h["platform"], ChannelID: h["channel_id"], UserID: h["user_id"], Text: h["text"],
		FireAt: fromMS(h["fire_at"]), Interval: time.Duration(iv) * time.Second, EndAt: fromMS(h["end_at"]),
		Status: Status(h["status"]), InvalidReason: h["invalid_reason"], FireCount: fc, CreatedAt: fromMS(h["created_at"]),
		LastFiredAt: fromMS(h["last_fired_at"]), FinishedAt: fromMS(h["finished_at"]),
	}, nil
}

// ListPending returns up to limit pending prompts, soonest first.
func (s *Store) ListPending(ctx context.Context, limit int64) ([]Prompt, error) {
	ids, err := s.rdb.ZRange(ctx, DueKey, 0, limit-1).Result()
	if err != nil {
		return nil, fmt.Errorf("listing scheduled prompts: %w", err)
	}
	out := make([]Prompt, 0, len(ids))
	for _, id := range ids {
		p, err := s.Get(ctx, id)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

//go:embed cancel.lua
var cancelSrc string
var cancelScript = redis.NewScript(cancelSrc)

// Cancel marks a pending prompt cancelled so it never fires again.
func (s *Store) Cancel(ctx context.Context, id string, now time.Time) error {
	n, err := cancelScript.Run(ctx, s.rdb, []string{key(id), DueKey, FinishedKey}, id, ms(now)).Int()
	if err != nil {
		return fmt.Errorf("cancelling scheduled prompt %s: %w", id, err)
	}
	switch n {
	case 0:
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	case 2:
		return fmt.Errorf("%w: %s", ErrNotPending, id)
	}
	return nil
}

//go:embed tick.lua
var tickSrc string
var tickScript = redis.NewScript(tickSrc)

// Malformed is a due prompt the tick could not fire: it is now invalid and
// out of the due set.
type Malformed struct {
	PromptID string
	Reason   string
}

// Tick fires up to limit due prompts in one atomic step: each is appended to
// the fired stream and then either rescheduled (recurring) or marked
// executed. Because the whole step is one Lua script, two workers ticking at
// once never fire the same occurrence twice. Occurrences a recurring prompt
// missed while nothing ticked are coalesced into the one fired now.
//
// The bot writes the prompts, so the script trusts none of their fields: a
// due prompt it cannot fire (a required field missing, a time or count that
// is not a number, a key that is not a hash) is marked invalid, moved to the
// finished set and returned in malformed, once, while the others fire.
func (s *Store) Tick(ctx context.Context, now time.Time, limit int) (fired []Fired, malformed []Malformed, err error) {
	res, err := tickScript.Run(ctx, s.rdb, []string{DueKey, FinishedKey, StreamKey},
		ms(now), limit, KeyPrefix, StreamMaxLen).Slice()
	if err != nil {
		return nil, nil, fmt.Errorf("ticking scheduled prompts: %w", err)
	}
	f, m, err := tickLists(res)
	if err != nil {
		return nil, nil, fmt.Errorf("ticking scheduled prompts: %w", err)
	}
	for i := 0; i+3 < len(f); i += 4 {
		occ, _ := strconv.Atoi(f[i+3])
		fired = append(fired, Fired{PromptID: f[i], StreamID: f[i+1], ScheduledFor: fromMS(f[i+2]), Occurrence: occ})
	}
	for i := 0; i+1 < len(m); i += 2 {
		malformed = append(malformed, Malformed{PromptID: m[i], Reason: m[i+1]})
	}
	return fired, malformed, nil
}

// tickLists splits tick.lua's reply, {fired, malformed}, into two lists of
// strings.
func tickLists(res []any) (fired, malformed []string, err error) {
	if len(res) != 2 {
		return nil, nil, fmt.Errorf("tick script replied %d lists, want 2", len(res))
	}
	var lists [2][]string
	for i, r := range res {
		items, ok := r.([]any)
		if !ok {
			return nil, nil, fmt.Errorf("tick script reply %d is a %T", i, r)
		}
		for _, it := range items {
			s, ok := it.(string)
			if !ok {
				return nil, nil, fmt.Errorf("tick script reply %d holds a %T", i, it)
			}
			lists[i] = append(lists[i], s)
		}
	}
	return lists[0], lists[1], nil
}

//go:embed cleanup.lua
var cleanupSrc string
var cleanupScript = redis.NewScript(cleanupSrc)

// CleanupBatch bounds the work of one cleanup script call so a large backlog
// never blocks Redis for long.
const CleanupBatch = 500

// Cleanup deletes executed and cancelled prompts that finished before
// now-keep, in batches, and returns how many it deleted.
func (s *Store) Cleanup(ctx context.Context, now time.Time, keep time.Duration) (int, error) {
	cutoff := ms(now.Add(-keep))
	total := 0
	for {
		n, err := cleanupScript.Run(ctx, s.rdb, []string{FinishedKey}, cutoff, CleanupBatch, KeyPrefix).Int()
		if err != nil {
			return total, fmt.Errorf("cleaning up scheduled prompts: %w", err)
		}
		total += n
		if n < CleanupBatch {
			return total, nil
		}
		if err := ctx.Err(); err != nil {
			return total, err
		}
	}
}
