package handlers

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/clients/platform"
	"github.com/stargazer/stargazer-jobs/internal/store/embedqueue"
	"github.com/stargazer/stargazer-jobs/internal/store/msgcache"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// Backfill defaults, the original's.
const (
	backfillHistoryLimit        = 100
	defaultPlatformReadyTimeout = 30 * time.Second
	defaultPlatformReadyPoll    = 500 * time.Millisecond
	// maxInlineRateLimitWait is the longest platform rate limit the
	// backfill sits out before asking again; a longer one skips the
	// channel until the next backfill.
	maxInlineRateLimitWait = 10 * time.Second
)

type readyPlatform struct {
	Platform
	botUserID string
}

// startupChannelBackfill fetches the latest messages of the most active
// channels from the platforms and brings the message cache up to date:
// new messages are cached, texts that changed are repaired, and messages
// without an embedding are queued for one. Everything is matched by the
// platform's message id, so a second run caches, repairs and queues
// nothing new.
type startupChannelBackfill struct {
	store *msgcache.Store
	// queue is the embedding queue, nil where no embeddings endpoint
	// serves it: there its tasks would be archived unrun.
	queue     *embedqueue.Queue
	platforms []Platform
	// readyTimeout bounds the wait for platforms to answer, readyPoll is
	// how often they are asked.
	readyTimeout, readyPoll time.Duration
	now                     func() time.Time
	log                     *slog.Logger
}

func newStartupChannelBackfill(k kit) Worker[*jobs.ChannelBatch] {
	h := &startupChannelBackfill{store: msgcache.New(k.Redis()), platforms: k.Platforms(),
		readyTimeout: cmp.Or(k.PlatformReadyTimeout, defaultPlatformReadyTimeout),
		readyPoll:    cmp.Or(k.PlatformReadyPoll, defaultPlatformReadyPoll),
		now:          k.Now, log: k.Logger.With("task", jobs.StartupChannelBackfill)}
	if k.offers(jobs.Embeddings) {
		h.queue = embedqueue.New(k.Jobs(), k.Enqueuer)
	}
	return h
}

func (h *startupChannelBackfill) Work(ctx context.Context, p *jobs.ChannelBatch) (Result, error) {
	maxChannels := p.MaxChannels
	log, store := h.log, h.store
	var processed, failed, cached, repaired, enqueued, unembedded int
	result := func() Result {
		return Result{"channels_processed": processed, "channels_failed": failed, "messages_cached": cached,
			"texts_repaired": repaired, "embeddings_enqueued": enqueued, "embeddings_not_queued": unembedded}
	}

	// 0. Give platforms still coming up a bounded window to answer, so the
	// backfill does not silently skip them; a platform that stays down
	// cannot stall it.
	ready := h.waitForPlatforms(ctx)
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	// 1. Catalog the platforms' channels with their metadata.
	catalog := map[msgcache.Channel]platform.Channel{}
	var discovered []msgcache.Channel
	byName := map[string]readyPlatform{}
	for _, rp := range ready {
		byName[rp.Name()] = rp
		chans, err := rp.Channels(ctx)
		if err != nil {
			log.WarnContext(ctx, "Startup backfill: failed to catalog channels", "platform", rp.Name(), "error", err.Error(), "catalogued", len(chans))
		}
		for _, ch := range chans {
			c := msgcache.Channel{Platform: rp.Name(), ID: ch.ID}
			if _, dup := catalog[c]; !dup {
				catalog[c] = ch
				discovered = append(discovered, c)
			}
		}
	}

	channels, err := store.ActiveChannels(ctx, maxChannels)
	if err != nil {
		return nil, err
	}
	if len(channels) == 0 {
		log.InfoContext(ctx, "Startup backfill: no active channels found in Redis, performing platform fallback discovery")
		channels = discovered[:min(maxChannels, len(discovered))]
	}
	if len(channels) == 0 {
		log.InfoContext(ctx, "Startup backfill: no channels discovered from Redis or platform adapters")
		return result(), nil
	}

	queue := h.queue
	for _, c := range channels {
		rp, ok := byName[c.Platform]
		if !ok {
			continue // platform not configured or not ready
		}
		// Recorded so recall does not fail closed on an unknown channel.
		if meta, ok := catalog[c]; ok {
			m := msgcache.Meta{Name: meta.Name, GuildID: meta.GuildID, GuildName: meta.GuildName, IsDM: meta.IsDM}
			if err := store.RecordMeta(ctx, c, m, h.now()); err != nil {
				// As the original: the history is still worth caching.
				log.DebugContext(ctx, "Startup backfill: failed to record channel metadata", "channel", c.String(), "error", err.Error())
			}
		}
		history, err := fetchHistory(ctx, rp, c.ID)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			failed++
			log.WarnContext(ctx, "Startup backfill: fetching history failed", "channel", c.String(), "error", err.Error())
			continue
		}
		if len(history) == 0 {
			continue
		}
		st, err := backfillChannel(ctx, store, c, rp.botUserID, history, queue != nil)
		cached += st.cached
		repaired += st.repaired
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			// One channel's lookup failure skips that channel, as in the
			// original; the others are still brought up to date.
			failed++
			log.WarnContext(ctx, "Startup backfill: channel skipped", "channel", c.String(), "error", err.Error())
			continue
		}
		if queue == nil {
			unembedded += len(st.embed)
		}
		if queue != nil && len(st.embed) > 0 {
			n, err := queue.Add(ctx, st.embed)
			enqueued += n
			if err != nil {
				log.WarnContext(ctx, "Startup backfill: queueing embeddings failed", "channel", c.String(), "error", err.Error())
			}
		}
		processed++
	}
	if unembedded > 0 {
		log.WarnContext(ctx, "Startup backfill: messages need an embedding but no embeddings endpoint is configured (EMBEDDINGS_BASE_URL or LLM_BASE_URL); repaired ones keep their old vector",
			"messages", unembedded)
	}
	log.InfoContext(ctx, fmt.Sprintf("Startup backfill complete: %d channels, %d new messages cached, %d texts repaired, %d embeddings enqueued",
		processed, cached, repaired, enqueued),
		"channels_processed", processed, "channels_failed", failed, "messages_cached", cached,
		"texts_repaired", repaired, "embeddings_enqueued", enqueued)
	return result(), nil
}

// waitForPlatforms asks each platform for its identity until all answer,
// the wait runs out, or ctx ends, and returns the ones that answered, in
// configuration order. A platform that refuses the credentials is given up
// at once: waiting cannot fix a bad token.
func (h *startupChannelBackfill) waitForPlatforms(ctx context.Context) []readyPlatform {
	log := h.log
	deadline := time.Now().Add(h.readyTimeout)
	poll := h.readyPoll
	ids := make([]*platform.Identity, len(h.platforms))
	errs := make([]error, len(h.platforms))
	for {
		waiting := 0
		for i, p := range h.platforms {
			if ids[i] != nil || platform.Unauthorized(errs[i]) {
				continue
			}
			cctx, cancel := context.WithDeadline(ctx, deadline)
			id, err := p.Identity(cctx)
			cancel()
			if err == nil {
				ids[i], errs[i] = &id, nil
				continue
			}
			errs[i] = err
			if !platform.Unauthorized(err) {
				waiting++
			}
		}
		if waiting == 0 || ctx.Err() != nil || !time.Now().Add(poll).Before(deadline) {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(poll):
		}
	}
	var ready []readyPlatform
	var notReady []string
	for i, p := range h.platforms {
		if ids[i] == nil {
			notReady = append(notReady, p.Name())
			log.WarnContext(ctx, "Startup backfill: platform not ready", "platform", p.Name(), "error", fmt.Sprint(errs[i]))
			continue
		}
		ready = append(ready, readyPlatform{Platform: p, botUserID: ids[i].UserID})
	}
	if len(notReady) > 0 {
		log.InfoContext(ctx, "Startup backfill: proceeding without fully-ready platforms (they will backfill on the next pass once connected)",
			"platforms", notReady)
	}
	return ready
}

// fetchHistory reads a channel's latest messages, sitting out one short
// platform rate limit.
func fetchHistory(ctx context.Context, p Platform, channelID string) ([]platform.Message, error) {
	msgs, err := p.History(ctx, channelID, backfillHistoryLimit)
	var rl *platform.RateLimitError
	if !errors.As(err, &rl) || rl.RetryAfter() > maxInlineRateLimitWait {
		return msgs, err
	}
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(max(rl.RetryAfter(), time.Second)):
	}
	return p.History(ctx, channelID, backfillHistoryLimit)
}

type channelBackfill struct {
	cached, repaired int
	// embed holds the keys of messages that need an embedding.
	embed []string
}

// backfillChannel reconciles one channel's history with the cache. With
// embed false (no embeddings endpoint) a repaired message keeps its old
// vector instead of losing it for good.
func backfillChannel(ctx context.Context, store *msgcache.Store, c msgcache.Channel, botUserID string, history []platform.Message, embed bool) (channelBackfill, error) {
	var st channelBackfill
	msgs := make([]platform.Message, len(history))
	for i, m := range history {
		if m.ID == "" {
			// The original cached these too. A stable id from the message
			// itself keeps a second backfill from caching it twice.
			m.ID = noIDMessageID(m)
		}
		msgs[i] = m
	}
	keys := make([]string, len(msgs))
	for i, m := range msgs {
		keys[i] = msgcache.MessageKey(c, m.ID)
	}
	exists, err := store.Exists(ctx, keys)
	if err != nil {
		return st, err
	}
	texts, err := store.Texts(ctx, keys) // "" for the ones not cached
	if err != nil {
		return st, err
	}
	var check []string // cached, text unchanged: embedded already?
	var fresh []int
	for i, m := range msgs {
		switch {
		case !exists[i]:
			fresh = append(fresh, i)
		case m.Text != texts[i]:
			replace := store.ReplaceText
			if !embed {
				replace = store.ReplaceTextKeepingEmbedding
			}
			ok, err := replace(ctx, keys[i], m.Text)
			if err != nil {
				return st, err
			}
			if ok {
				st.repaired++
				if m.Text != "" {
					st.embed = append(st.embed, keys[i])
				}
			}
		case m.Text != "":
			check = append(check, keys[i])
		}
	}
	has, err := store.HasEmbedding(ctx, check)
	if err != nil {
		return st, err
	}
	for i, k := range check {
		if !has[i] {
			st.embed = append(st.embed, k)
		}
	}
	for _, i := range fresh {
		m := msgs[i]
		isBot := m.IsBot
		if botUserID != "" {
			isBot = m.UserID == botUserID
		}
		kind := msgcache.KindUserIn
		if isBot {
			kind = msgcache.KindAssistantOut
		}
		key, created, err := store.Log(ctx, msgcache.Message{
			Channel: c, MessageID: m.ID, UserID: m.UserID, UserName: m.UserName, Text: m.Text,
			Time: m.Time, ReplyToID: m.ReplyToID, Kind: kind,
		})
		if err != nil {
			return st, err
		}
		if created {
			st.cached++
			if m.Text != "" {
				st.embed = append(st.embed, key)
			}
		}
	}
	return st, nil
}

// noIDMessageID names a platform message that came without an id, from
// who wrote it, when and what: the same message gets the same id on every
// backfill.
func noIDMessageID(m platform.Message) string {
	sum := sha256.Sum256([]byte(m.UserID + "\x00" + strconv.FormatInt(m.Time.UnixMilli(), 10) + "\x00" + m.Text))
	return "noid-" + hex.EncodeToString(sum[:12])
}
