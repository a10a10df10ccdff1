package handlers

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/kg/extract"
	"github.com/stargazer/stargazer-jobs/internal/queue/events"
	"github.com/stargazer/stargazer-jobs/internal/store/msgcache"
)

// channelPass is one extraction pass over the new messages of every
// channel, behind a per-channel cursor: the shape both auto_kg_extraction
// and limbic_anchoring_worker have. They differ in cursors, bounds and
// cadence.
//
// The cursor of a channel is the Position (time, then key) of the last
// message it has settled; a pass reads the messages after it, hands them to
// the extraction engine in chunks, and after each chunk moves the cursor
// over the settled prefix with a compare-and-set. So a crash resumes at the
// cursor, a message is never skipped (a cursor only passes settled
// messages), and two racing passes cannot move a cursor backwards or past
// the other's unfinished work. The engine's ledger makes re-reading a
// settled message free: it costs neither an LLM call nor a mention.
type channelPass struct {
	task string
	// cursorPrefix + "<platform>:<channel id>" is a channel's cursor hash.
	cursorPrefix string
	// lookback is where a channel without a cursor starts: this long
	// before now.
	lookback time.Duration
	// perChannel and perPass bound the messages read in one pass.
	perChannel, perPass int
	// chunk is how many fragments go to the engine between cursor moves.
	chunk int
	// budget: no new chunk starts after this long.
	budget time.Duration
}

// passDeps are what a channel pass works with.
type passDeps struct {
	engine extract.Config
	cache  *msgcache.Store
	now    func() time.Time
	log    *slog.Logger
	events EventPublisher
}

func newPassDeps(k kit) passDeps {
	return passDeps{engine: k.extraction(), cache: msgcache.New(k.Redis()), now: k.Now, log: k.Logger, events: k.Events}
}

// passStats are a pass's counts, beyond the engine's.
type passStats struct {
	extract.Counts
	channels, channelsWithNew, messages, botMessages, cursorsMoved, cursorsLost int
}

// result is the handler's Result: every count becomes a Prometheus series
// (stargazer_task_items_total{item}); tokens_per_message is a ratio, so it
// is stored as a json.Number, which the result shows and the counters
// skip (rate(prompt_tokens) / rate(messages_extracted) gives it over time).
func (s passStats) result() Result {
	c := s.Counts
	return withCounts(c, Result{
		"channels": s.channels, "channels_with_new": s.channelsWithNew,
		"messages_read": s.messages, "messages_extracted": c.Fragments, "bot_messages_skipped": s.botMessages,
		"cursors_moved": s.cursorsMoved, "cursors_lost": s.cursorsLost,
		"tokens_per_message": json.Number(strconv.FormatFloat(c.TokensPerFragment(), 'f', 1, 64)),
	})
}

// withCounts adds the extraction engine's counts, under the names every
// extraction task reports them by, to a task's own result fields.
func withCounts(c extract.Counts, r Result) Result {
	maps.Copy(r, Result{
		"entities_added": c.EntitiesAdded, "entities_updated": c.EntitiesUpdated,
		"relationships_added": c.RelationshipsAdded, "relationships_updated": c.RelationshipsUpdated,
		"already_extracted": c.Duplicates, "empty": c.Skipped, "busy": c.Busy, "poisoned": c.Poisoned,
		"recovered": c.Recovered, "rejected": c.Rejected,
		"llm_calls": c.LLMCalls, "prompt_tokens": c.PromptTokens, "completion_tokens": c.CompletionTokens,
	})
	return r
}

// channelWork is what a pass read from one channel.
type channelWork struct {
	c      msgcache.Channel
	key    string            // cursor key
	stored msgcache.Position // the cursor as read (zero: none)
	page   msgcache.Page
	frag   []int // per message of page: index into the pass's fragments, or -1 (not extracted)
	lost   bool  // another pass moved the cursor
	moved  bool  // this pass moved the cursor
}

func (p channelPass) run(ctx context.Context, d passDeps) (passStats, error) {
	var st passStats
	eng, err := extract.New(d.engine)
	if err != nil {
		return st, fmt.Errorf("%s: %w: %w", p.task, err, asynq.SkipRetry)
	}
	start := d.now()
	cache := d.cache
	work, frags, err := p.read(ctx, d, cache, &st)
	if err != nil {
		return st, err
	}
	if len(frags) == 0 { // only the bot spoke, or members without messages: move past them
		return st, p.moveCursors(ctx, d, cache, work, nil, &st)
	}
	settled := make([]bool, len(frags))
	for lo := 0; lo < len(frags); lo += p.chunk {
		if d.now().Sub(start) > p.budget {
			d.log.InfoContext(ctx, "extraction pass out of time; the next pass goes on from the cursors",
				"task", p.task, "left", len(frags)-lo)
			break
		}
		hi := min(lo+p.chunk, len(frags))
		res, err := eng.Extract(ctx, frags[lo:hi])
		st.Add(res.Counts)
		copy(settled[lo:hi], res.Settled)
		moveErr := p.moveCursors(ctx, d, cache, work, settled, &st)
		if err != nil {
			return st, errors.Join(fmt.Errorf("%s: %w", p.task, err), moveErr)
		}
		if moveErr != nil {
			return st, moveErr
		}
	}
	return st, nil
}

// read discovers the channels, reads their cursors and the messages after
// them (the channels furthest behind first), and turns the messages into
// fragments.
func (p channelPass) read(ctx context.Context, d passDeps, cache *msgcache.Store, st *passStats) ([]*channelWork, []extract.Fragment, error) {
	chans, err := cache.DiscoverChannels(ctx)
	if err != nil {
		return nil, nil, err
	}
	st.channels = len(chans)
	keys := make([]string, len(chans))
	for i, c := range chans {
		keys[i] = p.cursorPrefix + c.String()
	}
	cursors, err := cache.Cursors(ctx, keys)
	if err != nil {
		return nil, nil, err
	}
	newest, err := cache.Newest(ctx, chans)
	if err != nil {
		return nil, nil, err
	}
	floor := msgcache.Position{TS: d.now().Add(-p.lookback).UnixMilli()}
	var work []*channelWork
	for i, c := range chans {
		from := cursors[i]
		if from == (msgcache.Position{}) {
			from = floor // a channel seen for the first time starts at the lookback
		}
		if newest[i] != 0 && newest[i] < from.TS {
			continue // nothing after the cursor (the index knows the channel's newest message)
		}
		w := &channelWork{c: c, key: keys[i], stored: cursors[i]}
		w.page.End = from
		work = append(work, w)
	}
	slices.SortFunc(work, func(a, b *channelWork) int {
		return cmp.Or(cmp.Compare(a.page.End.TS, b.page.End.TS), cmp.Compare(a.c.String(), b.c.String()))
	})
	var frags []extract.Fragment
	read := 0
	kept := work[:0]
	for _, w := range work {
		if read >= p.perPass {
			break
		}
		page, err := cache.After(ctx, w.c, w.page.End, min(p.perChannel, p.perPass-read))
		if err != nil {
			return nil, nil, err
		}
		if len(page.Messages) == 0 && page.End == w.page.End {
			continue
		}
		w.page = page
		read += len(page.Messages)
		for _, m := range page.Messages {
			if m.Kind == msgcache.KindAssistantOut {
				// The bot's own replies restate what people said or what
				// the model made up; the graph is what people said.
				w.frag = append(w.frag, -1)
				st.botMessages++
				continue
			}
			w.frag = append(w.frag, len(frags))
			frags = append(frags, extract.Fragment{
				ID: m.Key, Source: m.Channel.String(), Author: cmp.Or(m.UserName, m.UserID), Text: m.Text, Time: m.Time,
			})
		}
		kept = append(kept, w)
	}
	st.channelsWithNew = len(kept)
	st.messages = read
	return kept, frags, nil
}

// moveCursors moves each channel's cursor over the longest prefix of its
// messages that is settled. A message that is not extracted (the bot's)
// counts as settled; a channel settled to its end moves to the page's end,
// past members whose message is gone.
func (p channelPass) moveCursors(ctx context.Context, d passDeps, cache *msgcache.Store, work []*channelWork, settled []bool, st *passStats) error {
	for _, w := range work {
		if w.lost {
			continue
		}
		to := w.page.End
		for i, f := range w.frag {
			if f >= 0 && !settled[f] {
				if i == 0 {
					to = w.stored
				} else {
					to = w.page.Positions[i-1]
				}
				break
			}
		}
		if !w.stored.Before(to) {
			continue
		}
		moved, err := cache.SetCursor(ctx, w.key, w.stored, to, d.now().UnixMilli())
		if err != nil {
			return fmt.Errorf("%s: %w", p.task, err)
		}
		if !moved {
			// Another pass moved it: what it extracted is in the ledger, and
			// the next pass starts from its cursor.
			w.lost = true
			st.cursorsLost++
			continue
		}
		w.stored = to
		if !w.moved {
			w.moved = true
			st.cursorsMoved++ // channels, not moves
		}
	}
	return nil
}

func publishExtraction(ctx context.Context, d passDeps, topic string, start time.Time, st passStats, err error) {
	if d.events == nil {
		return
	}
	status, preview := "ok", fmt.Sprintf("messages=%d entities_added=%d relationships_added=%d", st.Fragments, st.EntitiesAdded, st.RelationshipsAdded)
	payload := map[string]any(st.result())
	if err != nil {
		status = "error"
		payload["error"] = err.Error()
	}
	_ = d.events.Publish(ctx, events.Event{
		Topic: topic, Source: "background_tasks", Status: status,
		DurationMS: float64(d.now().Sub(start).Microseconds()) / 1000, Preview: preview,
		Payload: payload, TS: float64(d.now().UnixMilli()) / 1000,
	})
}
