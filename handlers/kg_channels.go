package handlers

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/kg/extract"
	"github.com/stargazer/stargazer-jobs/internal/kg/plan"
	"github.com/stargazer/stargazer-jobs/internal/queue/events"
	"github.com/stargazer/stargazer-jobs/internal/store/msgcache"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// channelPass is an extraction planner over the new messages of every
// channel, behind a per-channel cursor: the shape both auto_kg_extraction
// and limbic_anchoring_worker have. They differ in cursors, bounds and
// cadence.
//
// The planner makes no LLM call. It reads each channel's cursor and chain
// of planned segments (internal/kg/plan), reads the messages after the
// chain's tail, cuts them into units of one LLM call (the engine's batch
// bounds: 30 messages, 12,000 prompt characters) and enqueues each unit as
// a kg_extract_unit child task under a task ID derived from the task and
// the unit's ranges, so planning again never enqueues a unit twice. Any
// worker runs units, as many at once as it has concurrency; the cluster's
// LLM budget (internal/clients/llm/budget) bounds the calls.
//
// A full 30-message chunk of a busy channel is a unit of its own; the
// remainders of several channels share a unit, so scattered chatter costs
// what it cost when one pass batched across channels.
//
// Exactly-once: a unit whose fragments all settled marks its segments done
// and moves each cursor over the done segments at the head of its chain,
// in one script; a unit that did not settle fails and is retried. So a
// cursor never passes an unsettled message, units may finish in any order,
// and the extraction ledger makes a message read twice (a retried or
// re-run unit) cost nothing.
type channelPass struct {
	task string
	// cursorPrefix + "<platform>:<channel id>" is a channel's cursor hash.
	cursorPrefix string
	// lookback is where a channel without a cursor starts: this long
	// before now.
	lookback time.Duration
	// perChannel and perPass bound the messages planned in one pass;
	// maxPlanned bounds the messages planned and not yet settled, so a
	// stalled LLM does not let the chains grow without end.
	perChannel, perPass, maxPlanned int
	// topic is the debug event a unit publishes.
	topic string
}

// passFor is the planner a unit belongs to.
func passFor(task string) (channelPass, bool) {
	switch task {
	case jobs.LimbicAnchoringWorker:
		return anchoringPass, true
	case jobs.AutoKGExtraction:
		return autoKGPass, true
	}
	return channelPass{}, false
}

// unitSpec is the catalog's kg_extract_unit.
func unitSpec() jobs.Spec {
	s, _ := jobs.Lookup(jobs.KGExtractUnit)
	return s
}

// unitStallAfter is how long a planned unit may stay unsettled before the
// planner checks that asynq still has it, and re-enqueues it if not. A
// unit's task is enqueued right after its segments are planned, so a
// missing one is a stall at any age past that moment; the check costs one
// look-up, and a queued, running or retrying task is left alone.
func unitStallAfter() time.Duration { return unitSpec().Timeout }

// archivedStallAfter is how long after its last (re-)enqueue an archived
// unit is enqueued again: its timeout times its attempts. A unit archived
// for a cause retries cannot fix (a refused request: a bad model or key)
// is so tried again about hourly, not on every pass.
func archivedStallAfter() time.Duration {
	s := unitSpec()
	return s.Timeout * time.Duration(s.MaxRetry+1)
}

// unitRetention keeps a finished unit's task (and so its ID) for a while:
// its result stays readable, and an accidental re-enqueue of the same ID
// is refused.
const unitRetention = time.Hour

// passDeps are what a planner works with.
type passDeps struct {
	cache    *msgcache.Store
	rdb      redis.UniversalClient
	enqueuer Enqueuer
	tasks    TaskInspector
	now      func() time.Time
	log      *slog.Logger
	batch    batchBounds
	// handOver, when set, bounds where a channel without a cursor
	// starts: no earlier than the task's hand-over point.
	handOver HandOver
}

// batchBounds are the engine's bounds of one LLM call, which a unit
// follows.
type batchBounds struct{ messages, chars, maxRunes int }

func engineBounds(c extract.Config) batchBounds {
	return batchBounds{
		messages: cmp.Or(c.BatchMessages, extract.DefaultBatchMessages),
		chars:    cmp.Or(c.BatchChars, extract.DefaultBatchChars),
		maxRunes: cmp.Or(c.MaxFragmentRunes, extract.DefaultMaxFragmentRunes),
	}
}

func newPassDeps(k kit) passDeps {
	return passDeps{cache: msgcache.New(k.Redis()), rdb: k.Jobs(), enqueuer: k.Enqueuer, tasks: k.Tasks, now: k.Now, log: k.Logger,
		batch: engineBounds(extract.Config{}), handOver: k.HandOver}
}

// floor is where a channel with neither cursor nor chain starts: its
// look-back, and, after a cut-over, no earlier than the task's hand-over
// point (the Python side extracted what came before).
func (p channelPass) floor(ctx context.Context, d passDeps) (msgcache.Position, error) {
	from := d.now().Add(-p.lookback)
	if d.handOver != nil {
		point, err := d.handOver.Point(ctx, p.task)
		if err != nil {
			return msgcache.Position{}, err
		}
		if point.After(from) {
			from = point
		}
	}
	return msgcache.Position{TS: from.UnixMilli()}, nil
}

// planStats are a planning pass's counts.
type planStats struct {
	channels, channelsWithNew, messages, botMessages                          int
	unitsPlanned, unitsEnqueued, unitsAlready, unitsRepaired, segmentsDropped int
	pending, unitsQueued, planned                                             int64
	oldest                                                                    time.Time
}

// result is the planner's Result. Levels (the backlog) are json.Numbers,
// shown but not added up into stargazer_task_items_total.
func (s planStats) result() Result {
	r := Result{
		"channels": s.channels, "channels_with_new": s.channelsWithNew,
		"messages_read": s.messages, "bot_messages_planned": s.botMessages,
		"units_planned": s.unitsPlanned, "units_enqueued": s.unitsEnqueued,
		"units_already_enqueued": s.unitsAlready, "units_repaired": s.unitsRepaired,
		"segments_dropped": s.segmentsDropped,
		"backlog_messages": json.Number(strconv.FormatInt(s.pending, 10)),
		"units_queued":     json.Number(strconv.FormatInt(s.unitsQueued, 10)),
	}
	if !s.oldest.IsZero() {
		r["backlog_oldest"] = s.oldest.UTC().Format(time.RFC3339)
	}
	return r
}

// withCounts adds the extraction engine's counts, under the names every
// extraction task reports them by, to a task's own result fields.
// lock_wait_seconds is a float, so it adds up into a counter: its rate over
// the rate of llm_calls is the write-lock wait per call.
func withCounts(c extract.Counts, r Result) Result {
	maps.Copy(r, Result{
		"entities_added": c.EntitiesAdded, "entities_updated": c.EntitiesUpdated,
		"relationships_added": c.RelationshipsAdded, "relationships_updated": c.RelationshipsUpdated,
		"already_extracted": c.Duplicates, "empty": c.Skipped, "busy": c.Busy, "poisoned": c.Poisoned,
		"recovered": c.Recovered, "rejected": c.Rejected,
		"llm_calls": c.LLMCalls, "prompt_tokens": c.PromptTokens, "completion_tokens": c.CompletionTokens,
		"lock_wait_seconds": c.LockWait.Seconds(),
	})
	return r
}

// chanWork is what the planner read of one channel.
type chanWork struct {
	c     msgcache.Channel
	chain plan.Chain
	from  msgcache.Position // where the new segments start (the chain's tail)
	root  bool              // from is the lookback: the channel has neither cursor nor chain
	page  msgcache.Page
}

// run is one planning pass.
func (p channelPass) run(ctx context.Context, d passDeps) (planStats, error) {
	var st planStats
	if d.enqueuer == nil {
		return st, fmt.Errorf("%s: no task client configured: %w", p.task, asynq.SkipRetry)
	}
	store := plan.New(d.rdb, p.task, p.cursorPrefix)
	chans, err := p.discover(ctx, d)
	if err != nil {
		return st, err
	}
	st.channels = len(chans)
	names := make([]string, len(chans))
	for i, c := range chans {
		names[i] = c.String()
	}
	chains, err := store.Follow(ctx, names)
	if err != nil {
		return st, err
	}
	if err := p.repair(ctx, d, store, names, chains, &st); err != nil {
		return st, err
	}
	newest, err := d.cache.Newest(ctx, chans)
	if err != nil {
		return st, err
	}
	floor, err := p.floor(ctx, d)
	if err != nil {
		return st, err
	}
	outstanding := 0
	var work []*chanWork
	for i, c := range chans {
		outstanding += chains[i].Planned()
		w := &chanWork{c: c, chain: chains[i], from: chains[i].Tail}
		if !chains[i].HasCursor && len(chains[i].Segments) == 0 && chains[i].Start == (msgcache.Position{}) {
			w.from, w.root = floor, true // a channel seen for the first time starts at the lookback
		}
		if newest[i] != 0 && newest[i] < w.from.TS {
			continue // nothing after the tail (the index knows the channel's newest message)
		}
		work = append(work, w)
	}
	slices.SortFunc(work, func(a, b *chanWork) int { // the channels furthest behind first
		return cmp.Or(cmp.Compare(a.from.TS, b.from.TS), cmp.Compare(a.c.String(), b.c.String()))
	})
	budget := min(p.perPass, p.maxPlanned-outstanding)
	var read []*chanWork
	for _, w := range work {
		if st.messages >= budget {
			break
		}
		page, err := d.cache.After(ctx, w.c, w.from, min(p.perChannel, budget-st.messages))
		if err != nil {
			return st, err
		}
		if len(page.Messages) == 0 && page.End == w.from {
			continue
		}
		w.page = page
		st.messages += len(page.Messages)
		read = append(read, w)
	}
	st.channelsWithNew = len(read)
	for _, u := range p.cut(read, d.batch, &st) {
		ok, err := store.Plan(ctx, u, d.now())
		if err != nil {
			return st, err
		}
		if !ok {
			// Another planner extended a chain since it was read: what is
			// planned so far stands, the next pass goes on from the tails.
			d.log.InfoContext(ctx, "extraction planner: a chain moved under this pass; the next pass goes on",
				"task", p.task, "unit", u.ID)
			break
		}
		st.unitsPlanned++
		if err := p.enqueue(ctx, d, u, &st); err != nil {
			// Planned but not enqueued: the next pass re-enqueues it
			// (repair) once it is unitStallAfter old.
			return st, err
		}
	}
	if err := p.measure(ctx, d, store, chans, floor, &st); err != nil {
		return st, err
	}
	return st, nil
}

// discoveryScanKey is the fleet's turn at reconciling the active set
// with a full scan (on the job system's Redis): whoever sets it first
// scans, nobody else for discoveryScanEvery.
const discoveryScanKey = "sgjobs:discovery:scan"

// discoveryScanEvery bounds how long a channel with messages but missing
// from sg:channels:active goes unplanned.
const discoveryScanEvery = time.Hour

// releaseTurn deletes the turn key only if it still holds this pass's
// token.
var releaseTurn = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)

// discover returns the channels to plan: the bot's active set (one ZRANGE,
// whatever the cache's size), and, at most once per discoveryScanEvery
// across the fleet, the full SCAN of sg:msgs:* too, which adds to the
// active set any channel missing from it. The scan, over every key of the
// cache, cost 1.4-1.8 s of Redis time a pass at a million messages
// (docs/performance.md, "Data at scale"). A failed scan gives the turn
// back, logged, and the pass goes on with the active set.
func (p channelPass) discover(ctx context.Context, d passDeps) ([]msgcache.Channel, error) {
	var added []msgcache.Channel
	token := p.task + "@" + strconv.FormatInt(d.now().UnixMilli(), 10)
	turn, err := d.rdb.SetNX(ctx, discoveryScanKey, token, discoveryScanEvery).Result()
	if err != nil {
		return nil, fmt.Errorf("%s: discovery turn: %w", p.task, err)
	}
	if turn {
		var scanned int
		added, scanned, err = d.cache.Reconcile(ctx)
		switch {
		case err != nil:
			d.log.WarnContext(ctx, "channel discovery: the reconciling scan failed; the pass uses the active set",
				"task", p.task, "err", err)
			// Given back even when the pass's deadline ended the scan, so
			// the next pass scans; bounded on its own.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			err := releaseTurn.Run(rctx, d.rdb, []string{discoveryScanKey}, token).Err()
			cancel()
			if err != nil {
				d.log.WarnContext(ctx, "channel discovery: giving the turn back failed", "task", p.task, "err", err)
			}
		case len(added) > 0:
			d.log.InfoContext(ctx, "channel discovery: added channels missing from the active set",
				"task", p.task, "added", len(added), "scanned", scanned)
		default:
			d.log.DebugContext(ctx, "channel discovery: the active set was complete", "task", p.task, "scanned", scanned)
		}
	}
	active, malformed, err := d.cache.AllActive(ctx)
	if err != nil {
		return nil, err
	}
	if len(malformed) > 0 {
		d.log.WarnContext(ctx, "channel discovery: skipped members of the active set that are not <platform>:<channel id>",
			"task", p.task, "skipped", len(malformed), "first", clip(malformed[0], 200))
	}
	seen := make(map[msgcache.Channel]bool, len(active))
	for _, c := range active {
		seen[c] = true
	}
	for _, c := range added { // the union, should the active set have lost one meanwhile
		if !seen[c] {
			seen[c] = true
			active = append(active, c)
		}
	}
	return active, nil
}

// piece is a run of one channel's messages bound for one unit.
type piece struct {
	w          *chanWork
	after, end msgcache.Position
	msgs       int // messages in it, the bot's included
}

// cut turns what was read into units of at most one LLM call each (the
// engine's bounds). Each channel's messages are cut, in order, into full
// calls, which are units of their own; what is left of every channel (its
// remainder, which reaches the page's end so that the segments tile the
// positions) is laid end to end with the others' and cut the same way, a
// remainder split between two units where a call fills up. So the calls
// per message are what one pass batching across channels made.
func (p channelPass) cut(read []*chanWork, b batchBounds, st *planStats) []plan.Unit {
	var units []plan.Unit
	// acc accumulates one unit's pieces against the bounds.
	type acc struct {
		pieces       []piece
		frags, chars int
	}
	full := func(a acc, cost int) bool {
		return a.frags > 0 && (a.frags+1 > b.messages || a.chars+cost > b.chars)
	}
	prev := func(w *chanWork, i int) msgcache.Position {
		if i == 0 {
			return w.from
		}
		return w.page.Positions[i-1]
	}
	// First the full calls of each channel; rest[w] is where its remainder
	// starts (an index into its page).
	rest := make([]int, len(read))
	for k, w := range read {
		var cur acc
		start := 0
		for i, m := range w.page.Messages {
			if m.Kind == msgcache.KindAssistantOut {
				// The bot's own replies restate what people said or what
				// the model made up; the graph is what people said. They
				// stay in the segments, which tile the positions.
				st.botMessages++
				continue
			}
			cost := extract.PromptCost(m.Text, b.maxRunes)
			if full(cur, cost) {
				units = append(units, p.unit([]piece{{w: w, after: prev(w, start), end: prev(w, i), msgs: i - start}}))
				cur, start = acc{}, i
			}
			cur.frags++
			cur.chars += cost
		}
		rest[k] = start
	}
	// Then the remainders, end to end.
	var cur acc
	for k, w := range read {
		if len(cur.pieces) >= jobs.MaxUnitSegments { // many channels with only the bot's messages
			units = append(units, p.unit(cur.pieces))
			cur = acc{}
		}
		pc := piece{w: w, after: prev(w, rest[k])}
		for i := rest[k]; i < len(w.page.Messages); i++ {
			m := w.page.Messages[i]
			if m.Kind == msgcache.KindAssistantOut {
				pc.msgs++
				continue
			}
			cost := extract.PromptCost(m.Text, b.maxRunes)
			if full(cur, cost) {
				if pc.msgs > 0 {
					pc.end = prev(w, i)
					cur.pieces = append(cur.pieces, pc)
					pc = piece{w: w, after: pc.end}
				}
				units = append(units, p.unit(cur.pieces))
				cur = acc{}
			}
			cur.frags++
			cur.chars += cost
			pc.msgs++
		}
		pc.end = w.page.End
		if pc.after.Before(pc.end) {
			cur.pieces = append(cur.pieces, pc)
		}
	}
	if len(cur.pieces) > 0 {
		units = append(units, p.unit(cur.pieces))
	}
	return units
}

// unit makes a unit of pieces (of distinct channels).
func (p channelPass) unit(pieces []piece) plan.Unit {
	payload := jobs.ExtractUnit{Task: p.task}
	u := plan.Unit{}
	for _, pc := range pieces {
		ch := pc.w.c.String()
		payload.Segments = append(payload.Segments, jobs.UnitSegment{Channel: ch,
			After: jobs.SegPosition{TS: pc.after.TS, Key: pc.after.Key}, End: jobs.SegPosition{TS: pc.end.TS, Key: pc.end.Key}})
		u.Segments = append(u.Segments, plan.Segment{Channel: ch, After: pc.after, End: pc.end, Messages: pc.msgs})
		u.Roots = append(u.Roots, pc.w.root && pc.after == pc.w.from)
	}
	u.Payload, _ = json.Marshal(&payload) // strings and ints always marshal
	u.ID = unitID(&payload)
	u.TaskID = jobs.KGExtractUnit + ":" + u.ID
	return u
}

// unitID names a unit by its planner, its first source and range, and a
// digest of all its ranges: the same unit always gets the same ID.
func unitID(p *jobs.ExtractUnit) string {
	h := sha256.New()
	h.Write([]byte(p.Task))
	for _, s := range p.Segments {
		fmt.Fprintf(h, "\x00%s\x00%d\x00%s\x00%d\x00%s", s.Channel, s.After.TS, s.After.Key, s.End.TS, s.End.Key)
	}
	first := p.Segments[0]
	return fmt.Sprintf("%s:%s:%d-%d:%s", p.Task, first.Channel, first.After.TS, first.End.TS, hex.EncodeToString(h.Sum(nil))[:16])
}

// enqueue enqueues u's task; an ID asynq already has is that unit, queued,
// running or finished.
func (p channelPass) enqueue(ctx context.Context, d passDeps, u plan.Unit, st *planStats) error {
	spec := unitSpec()
	_, err := d.enqueuer.EnqueueContext(ctx, asynq.NewTask(spec.Name, u.Payload),
		asynq.TaskID(u.TaskID), asynq.Queue(spec.Queue), asynq.MaxRetry(spec.MaxRetry),
		asynq.Timeout(spec.Timeout), asynq.Retention(unitRetention))
	switch {
	case errors.Is(err, asynq.ErrTaskIDConflict):
		st.unitsAlready++
		return nil
	case err != nil:
		return fmt.Errorf("%s: enqueueing unit %s: %w", p.task, u.ID, err)
	}
	st.unitsEnqueued++
	return nil
}

// repair drops what no chain refers to any more and re-enqueues units that
// stalled: planned more than unitStallAfter ago, not settled, and either
// gone from asynq (the planner died between planning and enqueueing) or
// archived (out of retries). Re-enqueueing uses the unit's own task ID.
func (p channelPass) repair(ctx context.Context, d passDeps, store *plan.Store, names []string, chains []plan.Chain, st *planStats) error {
	live := map[string]bool{}
	for _, ch := range chains {
		for _, s := range ch.Segments {
			if !s.Done {
				live[s.Unit] = true
			}
		}
	}
	for i, ch := range chains {
		if len(ch.Stray) == 0 {
			continue
		}
		st.segmentsDropped += len(ch.Stray)
		if err := store.DropStray(ctx, names[i], ch.Stray); err != nil {
			return err
		}
	}
	units, err := store.Units(ctx)
	if err != nil {
		return err
	}
	stall := d.now().Add(-unitStallAfter())
	var garbage []string
	for id, u := range units {
		old := time.UnixMilli(u.PlannedAt).Before(stall)
		switch {
		case !live[id] && old:
			garbage = append(garbage, id)
		case live[id] && old && u.TaskID != "" && len(u.Payload) > 0:
			if err := p.reenqueue(ctx, d, store, u, st); err != nil {
				return err
			}
		}
	}
	return store.DropUnits(ctx, garbage)
}

// reenqueue enqueues a stalled unit again under its own ID, deleting an
// archived copy first (only archivedStallAfter after its last enqueue),
// and restarts its clock.
func (p channelPass) reenqueue(ctx context.Context, d passDeps, store *plan.Store, u plan.Unit, st *planStats) error {
	spec := unitSpec()
	if d.tasks != nil {
		info, err := d.tasks.GetTaskInfo(spec.Queue, u.TaskID)
		switch {
		case err == nil && info.State == asynq.TaskStateArchived:
			if time.UnixMilli(u.PlannedAt).After(d.now().Add(-archivedStallAfter())) {
				return nil // it gave up recently: not on every pass
			}
			if err := d.tasks.DeleteTask(spec.Queue, u.TaskID); err != nil {
				return fmt.Errorf("%s: deleting archived unit %s: %w", p.task, u.ID, err)
			}
		case err == nil:
			return nil // queued, running or retrying: not stalled
		}
	}
	_, err := d.enqueuer.EnqueueContext(ctx, asynq.NewTask(spec.Name, u.Payload),
		asynq.TaskID(u.TaskID), asynq.Queue(spec.Queue), asynq.MaxRetry(spec.MaxRetry),
		asynq.Timeout(spec.Timeout), asynq.Retention(unitRetention))
	switch {
	case errors.Is(err, asynq.ErrTaskIDConflict):
		return nil
	case err != nil:
		return fmt.Errorf("%s: re-enqueueing unit %s: %w", p.task, u.ID, err)
	}
	st.unitsRepaired++
	d.log.WarnContext(ctx, "extraction planner re-enqueued a stalled unit", "task", p.task, "unit", u.ID,
		"planned_at", time.UnixMilli(u.PlannedAt).UTC())
	return store.Touch(ctx, u, d.now())
}

// measure writes the backlog: per channel the messages after its cursor
// (or its chain's root) and the oldest of them.
func (p channelPass) measure(ctx context.Context, d passDeps, store *plan.Store, chans []msgcache.Channel, floor msgcache.Position, st *planStats) error {
	names := make([]string, len(chans))
	for i, c := range chans {
		names[i] = c.String()
	}
	chains, err := store.Follow(ctx, names)
	if err != nil {
		return err
	}
	from := make([]msgcache.Position, len(chans))
	live := map[string]bool{}
	for i, ch := range chains {
		from[i] = ch.Start
		if !ch.HasCursor && ch.Start == (msgcache.Position{}) {
			from[i] = floor
		}
		st.planned += int64(ch.Planned())
		for _, s := range ch.Segments {
			if !s.Done {
				live[s.Unit] = true
			}
		}
	}
	st.unitsQueued = int64(len(live))
	counts, oldest, err := d.cache.Backlog(ctx, chans, from)
	if err != nil {
		return err
	}
	b := plan.Backlog{Task: p.task, Updated: d.now(), Units: st.unitsQueued, Planned: st.planned}
	for i, c := range chans {
		if counts[i] == 0 {
			continue
		}
		o := time.UnixMilli(oldest[i])
		b.Sources = append(b.Sources, plan.SourceBacklog{Source: c.String(), Pending: counts[i], Oldest: o})
		st.pending += counts[i]
		if st.oldest.IsZero() || o.Before(st.oldest) {
			st.oldest = o
		}
	}
	return store.WriteBacklog(ctx, b)
}

func publishExtraction(ctx context.Context, pub EventPublisher, now func() time.Time, topic string, start time.Time, c extract.Counts, res Result, err error) {
	if pub == nil {
		return
	}
	status, preview := "ok", fmt.Sprintf("messages=%d entities_added=%d relationships_added=%d", c.Fragments, c.EntitiesAdded, c.RelationshipsAdded)
	payload := map[string]any(maps.Clone(res))
	if payload == nil {
		payload = map[string]any{}
	}
	if err != nil {
		status = "error"
		payload["error"] = err.Error()
	}
	_ = pub.Publish(ctx, events.Event{
		Topic: topic, Source: "background_tasks", Status: status,
		DurationMS: float64(now().Sub(start).Microseconds()) / 1000, Preview: preview,
		Payload: payload, TS: float64(now().UnixMilli()) / 1000,
	})
}
