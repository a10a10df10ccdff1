package handlers

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/cursors"
	"github.com/stargazer/stargazer-jobs/internal/kg/extract"
	"github.com/stargazer/stargazer-jobs/internal/queue/events"
	"github.com/stargazer/stargazer-jobs/internal/store/msgcache"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// Bounds and names of agentic_kg_bulk_incremental.
const (
	// KGBulkCursorPrefix + "<platform>:<channel id>" is a channel's
	// incremental cursor hash (ts, key, updated_at), separate from the
	// other extraction tasks' cursors.
	KGBulkCursorPrefix = cursors.BulkPrefix
	// DefaultKGBulkDir is where runs are dumped without KG_BULK_DIR.
	DefaultKGBulkDir = "var/kg_bulk_scheduled"
	// kgBulkTopic is the original's debug-event topic.
	kgBulkTopic = "kg_bulk_incremental"
	// kgBulkPerChannel and kgBulkPerRun bound the messages read; the rest
	// waits for the next run (every 4 h).
	kgBulkPerChannel = 2_000
	kgBulkPerRun     = 10_000
	kgBulkChunk      = 60
	// kgBulkBudget: no chunk starts after this long (the task times out
	// after 3 h).
	kgBulkBudget = 2 * time.Hour
)

// agenticKGBulk runs incremental bulk extraction over the most recently
// active channels: the messages newer than each channel's cursor go through
// the extraction engine, channel by channel, and each run leaves its
// working set and results under <KG_BULK_DIR>/<UTC timestamp>/ for review.
//
// A channel seen for the first time is bootstrapped "latest", as the
// original's collect_messages_from_redis(cursor_bootstrap="latest") did:
// its cursor is set to its newest message and nothing of its history is
// extracted (history is what auto_kg_extraction's lookback and the
// anchoring worker cover); only what arrives afterwards is. A channel's
// cursor moves, over the settled prefix of its messages, only after that
// channel's results file is written, so a run that dies mid-way redoes
// that channel and the ledger makes the redo free.
type agenticKGBulk struct {
	engine extract.Config
	cache  *msgcache.Store
	// cursors holds the channel cursors (sgjobs:kgbulk:cursor:*), on the
	// job system's Redis; cache the messages, on the bot's.
	cursors *msgcache.Store
	// dir is KG_BULK_DIR, where runs are dumped.
	dir    string
	now    func() time.Time
	log    *slog.Logger
	events EventPublisher
	// keyMissing: the endpoint has no API key (see Deps.LLMKeyMissing).
	keyMissing bool
}

func newAgenticKGBulk(k kit) Worker[*jobs.ChannelBatch] {
	return &agenticKGBulk{engine: k.extraction(), cache: msgcache.New(k.Redis()), cursors: msgcache.New(k.Jobs()), dir: cmp.Or(k.KGBulkDir, DefaultKGBulkDir),
		now: k.Now, log: k.Logger, events: k.Events, keyMissing: k.LLMKeyMissing}
}

func (h *agenticKGBulk) Work(ctx context.Context, p *jobs.ChannelBatch) (Result, error) {
	b := &bulkRun{h: h, start: h.now(), cache: h.cache, cursors: h.cursors}
	res, err := b.run(ctx, p.MaxChannels)
	if err != nil {
		h.log.WarnContext(ctx, "agentic_kg_bulk_incremental failed", "task", jobs.AgenticKGBulkIncremental,
			"error", err, "out_dir", b.outDir)
		b.emit(ctx, "error", err)
		return nil, extractionFailure(err)
	}
	return res, nil
}

// bulkRun is one run of agentic_kg_bulk_incremental.
type bulkRun struct {
	h       *agenticKGBulk
	start   time.Time
	cache   *msgcache.Store
	cursors *msgcache.Store
	outDir  string
	chans   []*bulkChannel
	totals  extract.Counts
	// read counts every message read, extracted or not; bootstrapped the
	// channels whose cursor was set to their newest message.
	read, botMessages, bootstrapped, moved, withNew int
}

// bulkChannel is one channel's share of a run; its exported fields are its
// entry in working_set.json.
type bulkChannel struct {
	Platform     string            `json:"platform"`
	ChannelID    string            `json:"channel_id"`
	CursorBefore msgcache.Position `json:"cursor_before"`
	Bootstrapped bool              `json:"bootstrapped"`
	Count        int               `json:"count"`
	Messages     []bulkMessage     `json:"messages"`

	c    msgcache.Channel
	key  string
	page msgcache.Page
}

type bulkMessage struct {
	Key       string `json:"key"`
	MessageID string `json:"message_id"`
	TS        int64  `json:"ts"`
	Extracted bool   `json:"extracted"` // false: the bot's own reply
}

// bulkResults is a channel's results/<platform>_<channel>.json.
type bulkResults struct {
	Platform     string            `json:"platform"`
	ChannelID    string            `json:"channel_id"`
	CursorBefore msgcache.Position `json:"cursor_before"`
	// CursorTo is where the cursor is moved once this file is written:
	// past the settled prefix of the messages.
	CursorTo  msgcache.Position `json:"cursor_to"`
	Messages  int               `json:"messages"`
	Unsettled int               `json:"unsettled"`
	Counts    extract.Counts    `json:"counts"`
	Error     string            `json:"error,omitempty"`
}

func (b *bulkRun) run(ctx context.Context, maxChannels int) (Result, error) {
	task := jobs.AgenticKGBulkIncremental
	if b.h.keyMissing {
		// The original skipped without an api_key; a keyless endpoint is
		// used only when configured for extraction on purpose.
		b.h.log.DebugContext(ctx, "agentic_kg_bulk_incremental: skip (api_key missing)", "task", task)
		b.emit(ctx, "skipped", nil)
		return Result{"status": "skipped", "reason": "no API_KEY for the LLM endpoint (set API_KEY, or EXTRACTION_LLM_BASE_URL for a keyless endpoint)"}, nil
	}
	chans, err := b.cache.ActiveChannels(ctx, maxChannels)
	if err != nil {
		return nil, err
	}
	if len(chans) == 0 {
		b.h.log.InfoContext(ctx, "agentic_kg_bulk_incremental: no active channels", "task", task)
		b.emit(ctx, "skipped", nil)
		return Result{"status": "skipped"}, nil
	}
	if err := b.collect(ctx, chans); err != nil {
		return nil, err
	}
	if b.read == 0 {
		b.h.log.InfoContext(ctx, fmt.Sprintf("agentic_kg_bulk_incremental: no new messages for %d channel(s)", len(b.chans)),
			"task", task, "bootstrapped", b.bootstrapped)
		b.emit(ctx, "no_new_messages", nil)
		return b.result("no_new_messages"), nil
	}
	if err := b.dump(); err != nil {
		return nil, err
	}
	eng, err := extract.New(b.h.engine)
	if err != nil {
		return nil, err
	}
	var runErr error
	var summaries []bulkResults
	for _, ch := range b.chans {
		if ch.Count == 0 {
			continue
		}
		r, err := b.extractChannel(ctx, eng, ch)
		summaries = append(summaries, r)
		if err != nil {
			runErr = fmt.Errorf("%s: %s: %w", task, ch.c, err)
			break
		}
	}
	status := "ok"
	if runErr != nil {
		status = "error"
	}
	summary := map[string]any{
		"status": status, "started_at": b.start.UTC(), "finished_at": b.h.now().UTC(),
		"channels": summaries, "totals": b.totals, "messages_processed": b.read,
		"cursors_moved": b.moved, "cursors_bootstrapped": b.bootstrapped,
	}
	if runErr != nil {
		summary["error"] = runErr.Error()
	}
	if err := writeJSON(filepath.Join(b.outDir, "summary.json"), summary); err != nil {
		return nil, errors.Join(runErr, err)
	}
	if runErr != nil {
		return nil, runErr
	}
	b.h.log.InfoContext(ctx, fmt.Sprintf("agentic_kg_bulk_incremental: processed %d message(s) -> %s", b.read, b.outDir),
		"task", task, "entities_added", b.totals.EntitiesAdded, "relationships_added", b.totals.RelationshipsAdded)
	b.emit(ctx, "ok", nil)
	return b.result("ok"), nil
}

// collect reads each channel's cursor and the messages after it; a
// channel without a cursor gets one at its newest message.
func (b *bulkRun) collect(ctx context.Context, chans []msgcache.Channel) error {
	keys := make([]string, len(chans))
	for i, c := range chans {
		keys[i] = KGBulkCursorPrefix + c.String()
	}
	cursors, err := b.cursors.Cursors(ctx, keys)
	if err != nil {
		return err
	}
	for i, c := range chans {
		ch := &bulkChannel{Platform: c.Platform, ChannelID: c.ID, CursorBefore: cursors[i], c: c, key: keys[i], Messages: []bulkMessage{}}
		b.chans = append(b.chans, ch)
		if cursors[i] == (msgcache.Position{}) {
			latest, err := b.cache.Latest(ctx, c)
			if err != nil {
				return err
			}
			if latest == (msgcache.Position{}) {
				continue
			}
			moved, err := b.cursors.SetCursor(ctx, ch.key, msgcache.Position{}, latest, b.h.now().UnixMilli())
			if err != nil {
				return err
			}
			ch.Bootstrapped = moved
			if moved {
				b.bootstrapped++
			}
			continue
		}
		if b.read >= kgBulkPerRun {
			continue
		}
		page, err := b.cache.After(ctx, c, cursors[i], min(kgBulkPerChannel, kgBulkPerRun-b.read))
		if err != nil {
			return err
		}
		ch.page = page
		ch.Count = len(page.Messages)
		if ch.Count == 0 && page.End != cursors[i] {
			// Only members whose message is gone: move past them, nothing to dump.
			if _, err := b.cursors.SetCursor(ctx, ch.key, cursors[i], page.End, b.h.now().UnixMilli()); err != nil {
				return err
			}
		}
		for j, m := range page.Messages {
			ch.Messages = append(ch.Messages, bulkMessage{Key: m.Key, MessageID: m.MessageID, TS: page.Positions[j].TS,
				Extracted: m.Kind != msgcache.KindAssistantOut})
		}
		b.read += len(page.Messages)
	}
	return nil
}

// dump creates the run's directory and writes its working set.
func (b *bulkRun) dump() error {
	root := b.h.dir
	if err := os.MkdirAll(root, 0o755); err != nil {
		return fmt.Errorf("creating the bulk dump directory: %w", err)
	}
	name := filepath.Join(root, b.start.UTC().Format("20060102T150405Z"))
	for i := 2; ; i++ { // a retry within the same second gets its own directory
		err := os.Mkdir(name, 0o755)
		if err == nil {
			break
		}
		if !errors.Is(err, os.ErrExist) || i > 100 {
			return fmt.Errorf("creating the bulk dump directory: %w", err)
		}
		name = filepath.Join(root, b.start.UTC().Format("20060102T150405Z")+"-"+strconv.Itoa(i))
	}
	b.outDir = name
	if err := os.Mkdir(filepath.Join(name, "results"), 0o755); err != nil {
		return fmt.Errorf("creating the bulk dump directory: %w", err)
	}
	ws := map[string]any{"created_at": b.start.UTC(), "messages": b.read, "channels": b.chans}
	return writeJSON(filepath.Join(name, "working_set.json"), ws)
}

// extractChannel extracts one channel's messages in chunks, writes its
// results file and then moves its cursor over the settled prefix.
func (b *bulkRun) extractChannel(ctx context.Context, eng *extract.Engine, ch *bulkChannel) (bulkResults, error) {
	b.withNew++
	var frags []extract.Fragment
	idx := make([]int, len(ch.page.Messages)) // per message: its fragment, or -1
	for i, m := range ch.page.Messages {
		if m.Kind == msgcache.KindAssistantOut {
			// The graph is what people said, not the bot's replies.
			idx[i] = -1
			b.botMessages++
			continue
		}
		idx[i] = len(frags)
		frags = append(frags, extract.Fragment{ID: m.Key, Source: m.Channel.String(), Author: cmp.Or(m.UserName, m.UserID), Text: m.Text, Time: m.Time})
	}
	r := bulkResults{Platform: ch.Platform, ChannelID: ch.ChannelID, CursorBefore: ch.CursorBefore, Messages: len(ch.page.Messages)}
	settled := make([]bool, len(frags))
	var exErr error
	for lo := 0; lo < len(frags); lo += kgBulkChunk {
		if b.h.now().Sub(b.start) > kgBulkBudget {
			b.h.log.InfoContext(ctx, "bulk extraction out of time; the next run goes on from the cursors",
				"task", jobs.AgenticKGBulkIncremental, "channel", ch.c.String())
			break
		}
		hi := min(lo+kgBulkChunk, len(frags))
		res, err := eng.Extract(ctx, frags[lo:hi])
		r.Counts.Add(res.Counts)
		copy(settled[lo:hi], res.Settled)
		if err != nil {
			exErr = err
			break
		}
	}
	b.totals.Add(r.Counts)
	r.CursorTo = ch.page.End
	for i, f := range idx {
		if f >= 0 && !settled[f] {
			r.CursorTo = ch.CursorBefore
			if i > 0 {
				r.CursorTo = ch.page.Positions[i-1]
			}
			r.Unsettled = len(frags) - f
			break
		}
	}
	if exErr != nil {
		r.Error = exErr.Error()
	}
	name := filepath.Join(b.outDir, "results", fileSafe(ch.Platform)+"_"+fileSafe(ch.ChannelID)+".json")
	if err := writeJSON(name, r); err != nil {
		return r, errors.Join(exErr, err) // the cursor stays: the next run redoes the channel
	}
	if ch.CursorBefore.Before(r.CursorTo) {
		moved, err := b.cursors.SetCursor(ctx, ch.key, ch.CursorBefore, r.CursorTo, b.h.now().UnixMilli())
		if err != nil {
			return r, errors.Join(exErr, err)
		}
		if moved {
			b.moved++
		}
	}
	return r, exErr
}

func (b *bulkRun) result(status string) Result {
	return withCounts(b.totals, Result{
		"status": status, "out_dir": b.outDir,
		"channels": len(b.chans), "channels_with_new": b.withNew, "cursors_bootstrapped": b.bootstrapped,
		"messages_read": b.read, "messages_extracted": b.totals.Fragments, "bot_messages_skipped": b.botMessages,
		"cursors_moved": b.moved,
	})
}

// emit publishes the original's kg_bulk_incremental debug event.
func (b *bulkRun) emit(ctx context.Context, status string, err error) {
	if b.h.events == nil {
		return
	}
	// The original's counts per milestone: a skip reports nothing, "no new
	// messages" only the channels looked at, the others what was scanned.
	channels, zsets := len(b.chans), len(b.chans)
	switch status {
	case "skipped":
		channels, zsets = 0, 0
	case "no_new_messages":
		zsets = 0
	}
	payload := map[string]any{
		"channels_processed": channels, "messages_processed": b.read, "n_zsets": zsets,
		"out_dir": b.outDir, "error": "",
	}
	preview := fmt.Sprintf("channels=%d messages=%d out_dir=%s", channels, b.read, b.outDir)
	if err != nil {
		payload["error"] = err.Error()
		preview = "error=" + clip(err.Error(), 100)
	}
	_ = b.h.events.Publish(ctx, events.Event{
		Topic: kgBulkTopic, Source: "background_tasks", Phase: "pipeline", Status: status,
		DurationMS: float64(b.h.now().Sub(b.start).Microseconds()) / 1000, Preview: preview,
		Payload: payload, TS: float64(b.h.now().UnixMilli()) / 1000,
	})
}

// fileSafe maps a platform or channel ID onto a file name part: Matrix
// room IDs carry '!' and ':'.
func fileSafe(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' {
			return r
		}
		return '_'
	}, s)
}

// writeJSON writes v to name through a temporary file and a rename, so a
// file that exists is complete.
func writeJSON(name string, v any) error {
	f, err := os.CreateTemp(filepath.Dir(name), ".tmp-*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	enc := json.NewEncoder(f)
	enc.SetIndent("", "  ")
	err = enc.Encode(v)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), name)
	}
	if err != nil {
		_ = os.Remove(f.Name())
		return fmt.Errorf("writing %s: %w", name, err)
	}
	return nil
}
