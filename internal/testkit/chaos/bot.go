package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/queue/legacy"
	"github.com/stargazer/stargazer-jobs/internal/store/msgcache"
	"github.com/stargazer/stargazer-jobs/internal/store/prompts"
	"github.com/stargazer/stargazer-jobs/internal/store/ragstore"
	"github.com/stargazer/stargazer-jobs/internal/store/wiki"
	"github.com/stargazer/stargazer-jobs/internal/testkit/chaos/check"
)

// bot stands in for the chat bot: it writes what the bot writes to Redis
// (chat messages, scheduled prompts, RAG fragments, wikis), as the bot
// would, through its own connection, and keeps trying through Redis
// faults as the bot's own retries would. Its traffic is drawn from the
// seed, so two runs of a seed write the same things (at times that
// depend on the run).
type bot struct {
	rdb  *redis.Client
	r    *rand.Rand // traffic: the seed's
	seed int64

	mu        sync.Mutex
	messages  []seeded
	prompts   []check.PromptSeed
	fragments []string
	nmsg      int
	nfrag     int
	nprompt   int
}

// seeded is a message the bot cached.
type seeded struct {
	key  string
	time time.Time
	user bool // a user's message (not the bot's own, not a malformed record)
}

var channels = []msgcache.Channel{
	{Platform: "discord", ID: "2000"}, {Platform: "discord", ID: "2001"}, {Platform: "discord", ID: "2002"},
	{Platform: "discord", ID: "2003"}, {Platform: "discord", ID: "2004"}, {Platform: "matrix", ID: "!chaos:chaos.org"},
}

func newBot(rdb *redis.Client, seed int64) *bot {
	return &bot{rdb: rdb, seed: seed, r: rand.New(rand.NewPCG(uint64(seed), 0xb07))}
}

// retry runs fn until it succeeds or ctx ends, as a bot would through an
// outage.
func retry(ctx context.Context, fn func(context.Context) error) error {
	for {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err := fn(cctx)
		cancel()
		if err == nil || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// setup writes what exists before the run: two wikis for starwiki_lint.
func (b *bot) setup(ctx context.Context) error {
	w := wiki.New(b.rdb)
	if err := w.PutWiki(ctx, "lore", wiki.Meta{Title: "Lore", Visibility: "public"}); err != nil {
		return err
	}
	if err := w.PutWiki(ctx, "diary", wiki.Meta{Title: "Diary", Visibility: "private"}); err != nil {
		return err
	}
	now := time.Now()
	for _, p := range []wiki.Page{
		{Slug: "home", Title: "Home", Body: "See [[Stars]] and [[Missing Page]]."},
		{Slug: "stars", Title: "Stars", Body: "Back to [[Home]]."},
		{Slug: "orphan", Title: "Orphan", Body: "Nobody links here."},
	} {
		p.UpdatedAt = now
		if err := w.PutPage(ctx, "lore", p); err != nil {
			return err
		}
	}
	return nil
}

// message writes the next chat message: mostly a user naming two of 150
// topics, sometimes small talk with nothing to extract, sometimes the
// bot's own reply.
func (b *bot) message(ctx context.Context) error {
	b.mu.Lock()
	b.nmsg++
	n := b.nmsg
	ch := channels[b.r.IntN(len(channels))]
	m := msgcache.Message{Channel: ch, MessageID: fmt.Sprintf("c%d-%06d", b.seed, n)}
	user := true
	switch x := b.r.IntN(20); {
	case x == 0:
		m.UserID, m.UserName, m.Kind, user = "stargazer", "Stargazer", msgcache.KindAssistantOut, false
		m.Text = "Noted, I will remember Everything about it."
	case x <= 2:
		a := b.r.IntN(40)
		m.UserID, m.UserName = fmt.Sprintf("u%02d", a), fmt.Sprintf("chaosuser%02d", a)
		m.Text = "ok sounds good, thanks"
	default:
		// Authors come back to the same topics: batches that run at once
		// merge the same entities and relationships.
		a := b.r.IntN(40)
		m.UserID, m.UserName = fmt.Sprintf("u%02d", a), fmt.Sprintf("chaosuser%02d", a)
		t1, t2 := b.r.IntN(150), b.r.IntN(149)
		if t2 >= t1 {
			t2++
		}
		m.Text = fmt.Sprintf("has anyone tried Topic%03d with Topic%03d yet? works for me", t1, t2)
	}
	b.mu.Unlock()
	store := msgcache.New(b.rdb)
	m.Time = time.Now()
	var key string
	err := retry(ctx, func(ctx context.Context) error {
		k, _, err := store.Log(ctx, m)
		key = k
		return err
	})
	if err != nil {
		return err
	}
	b.mu.Lock()
	b.messages = append(b.messages, seeded{key: key, time: m.Time.Truncate(time.Millisecond), user: user})
	b.mu.Unlock()
	return nil
}

// fragment appends the next RAG fragment: lore whose capitalised words
// are its own, so each is one entity of "someone".
func (b *bot) fragment(ctx context.Context) error {
	b.mu.Lock()
	b.nfrag++
	n := b.nfrag
	b.mu.Unlock()
	f := ragstore.Fragment{ID: fmt.Sprintf("chaos-%d-%05d", b.seed, n), Source: "chaos lore",
		Title: fmt.Sprintf("Chapter%d", n), Text: fmt.Sprintf("the keepers of Rune%dx%d remember Vale%dx%d", b.seed%1000, n, b.seed%1000, n),
		Created: time.Now()}
	store := ragstore.New(b.rdb)
	err := retry(ctx, func(ctx context.Context) error {
		_, err := store.Append(ctx, f)
		if err != nil && strings.Contains(err.Error(), "already stored") {
			return nil // an earlier attempt got through
		}
		return err
	})
	if err != nil {
		return err
	}
	b.mu.Lock()
	b.fragments = append(b.fragments, f.Key())
	b.mu.Unlock()
	return nil
}

// prompt writes a scheduled prompt due within the run, as the bot does
// (one MULTI: the hash, then the due set): a one-shot one, or a recurring
// one every few seconds (the bot's own minimum is a minute; the tick takes
// any interval), sometimes with an end.
func (b *bot) prompt(ctx context.Context, latest time.Duration) error {
	b.mu.Lock()
	b.nprompt++
	n := b.nprompt
	now := time.Now()
	p := check.PromptSeed{ID: fmt.Sprintf("chaos-%d-p%04d", b.seed, n), AddedAt: now}
	p.FireAt = now.Add(time.Duration(2000+b.r.IntN(int(max(latest, 3*time.Second)/time.Millisecond))) * time.Millisecond).Truncate(time.Millisecond)
	if b.r.IntN(3) == 0 {
		p.Interval = time.Duration(3+b.r.IntN(10)) * time.Second
		if b.r.IntN(2) == 0 {
			p.EndAt = p.FireAt.Add(time.Duration(2+b.r.IntN(8)) * p.Interval)
		}
	}
	b.mu.Unlock()
	return b.addPrompt(ctx, p, map[string]any{
		"id": p.ID, "platform": "discord", "channel_id": "2000", "user_id": "u01", "text": "remind me: " + p.ID,
		"fire_at": p.FireAt.UnixMilli(), "interval_seconds": int64(p.Interval / time.Second),
		"end_at": endMS(p.EndAt), "status": "pending", "fire_count": 0,
		"created_at": now.UnixMilli(), "updated_at": now.UnixMilli(),
	})
}

// addPrompt writes a prompt record, fields as its hash (nil: a string in
// its place, not a prompt at all), and its entry in the due set in one
// MULTI, as the bot does, retried through the faults; then records p for
// the check.
// addPromptScript writes a prompt (KEYS[1]) and adds it to the due set
// (KEYS[2]) at ARGV[1] as ARGV[2], unless the prompt exists: ARGV[3] is
// "string" (a key that is not a hash) or "hash", then field, value pairs.
var addPromptScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
if ARGV[3] == 'string' then
  redis.call('SET', KEYS[1], 'not a prompt')
else
  redis.call('HSET', KEYS[1], unpack(ARGV, 4))
end
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
return 1
`)

func (b *bot) addPrompt(ctx context.Context, p check.PromptSeed, fields map[string]any) error {
	args := []any{p.FireAt.UnixMilli(), p.ID}
	if fields == nil {
		args = append(args, "string")
	} else {
		args = append(args, "hash")
		for k, v := range fields {
			args = append(args, k, v)
		}
	}
	// Written once: a write that timed out (Redis paused) may still have
	// been applied, and its retry must not put a prompt that has since
	// fired, or been found invalid, back in the due set.
	err := retry(ctx, func(ctx context.Context) error {
		return addPromptScript.Run(ctx, b.rdb, []string{prompts.KeyPrefix + p.ID, prompts.DueKey}, args...).Err()
	})
	if err != nil {
		return err
	}
	b.mu.Lock()
	b.prompts = append(b.prompts, p)
	b.mu.Unlock()
	return nil
}

func endMS(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

// malformed writes a broken record of the kind named, as a buggy bot (or
// a hand edit) might.
func (b *bot) malformed(ctx context.Context, what string) error {
	b.mu.Lock()
	b.nprompt++
	n := b.nprompt
	b.mu.Unlock()
	now := time.Now()
	id := fmt.Sprintf("chaos-%d-bad%04d", b.seed, n)
	valid := map[string]any{"id": id, "platform": "discord", "channel_id": "2000", "user_id": "u01", "text": "broken " + id,
		"fire_at": now.UnixMilli(), "interval_seconds": 0, "end_at": 0, "status": "pending", "fire_count": 0}
	var fields map[string]any // nil: not a hash
	switch what {
	case "prompt-fire-at":
		fields, valid["fire_at"] = valid, "soon"
	case "prompt-interval":
		fields, valid["interval_seconds"] = valid, "-5"
	case "prompt-no-text":
		fields = valid
		delete(fields, "text")
	case "prompt-huge-count":
		fields, valid["fire_count"] = valid, "1e400"
	case "prompt-not-a-hash":
		// fields nil: a string where the hash should be
	case "message-dangling":
		ch := channels[n%len(channels)]
		return retry(ctx, func(ctx context.Context) error {
			return b.rdb.ZAdd(ctx, msgcache.MessagesKey(ch), redis.Z{Score: float64(now.UnixMilli()), Member: msgcache.MessageKey(ch, "ghost-"+id)}).Err()
		})
	case "message-bad-fields":
		ch := channels[n%len(channels)]
		key := msgcache.MessageKey(ch, "bad-"+id)
		if err := retry(ctx, func(ctx context.Context) error {
			_, err := b.rdb.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
				pipe.HSet(ctx, key, "message_id", "bad-"+id, "ts", "yesterday", "text", "\xff\xfe not UTF-8 at all", "kind", "mystery", "platform", 7)
				pipe.ZAdd(ctx, msgcache.MessagesKey(ch), redis.Z{Score: float64(now.UnixMilli()), Member: key})
				return nil
			})
			return err
		}); err != nil {
			return err
		}
		b.mu.Lock()
		b.messages = append(b.messages, seeded{key: key, time: now})
		b.mu.Unlock()
		return nil
	case "fragment-dangling":
		return retry(ctx, func(ctx context.Context) error {
			return b.rdb.RPush(ctx, ragstore.FragmentsKey, "ghost-"+id).Err()
		})
	default:
		return fmt.Errorf("unknown malformed record %q", what)
	}
	return b.addPrompt(ctx, check.PromptSeed{ID: id, FireAt: now, Malformed: what, AddedAt: now}, fields)
}

// foreignRun publishes what the Python scheduler publishes after a run of
// task (no origin, no task ID), then reads what the workers recorded.
func (b *bot) foreignRun(ctx context.Context, task string) (check.ForeignRun, error) {
	at := time.Now()
	ev, _ := json.Marshal(map[string]any{"topic": "scheduler_task_run", "source": "scheduler", "status": "ok",
		"duration_ms": 120.5, "preview": "task=" + task + " status=ok", "payload": map[string]any{"task": task, "error": ""},
		"ts": float64(at.UnixMicro()) / 1e6})
	fr := check.ForeignRun{At: at, Task: task}
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	err := b.rdb.Publish(pctx, "stargazer:debug_events", ev).Err()
	cancel()
	if err != nil {
		return fr, err
	}
	// The detector records the run within moments (one worker counts it).
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		v, err := b.rdb.HGet(rctx, legacy.RunKey(task), "stand_down_until").Result()
		cancel()
		if ms, perr := strconv.ParseInt(v, 10, 64); err == nil && perr == nil && ms >= at.UnixMilli() {
			fr.StandDownUntil = time.UnixMilli(ms)
			return fr, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fr, nil
}
