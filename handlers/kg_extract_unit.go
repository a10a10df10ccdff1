package handlers

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/kg/extract"
	"github.com/stargazer/stargazer-jobs/internal/kg/plan"
	"github.com/stargazer/stargazer-jobs/internal/store/msgcache"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// ErrUnsettled is a unit some of whose messages another caller is
// extracting right now (Busy): it is retried, and its cursors wait.
var ErrUnsettled = errors.New("extraction unit: fragments not settled")

// unitPage is how many members a unit reads at a time.
const unitPage = 500

// extractUnit runs one extraction unit planned by limbic_anchoring_worker
// or auto_kg_extraction: it reads its segments' messages, extracts them
// (one LLM call; more only when messages arrived late inside a planned
// range or a batch failed before), and, only when every fragment settled,
// marks its segments done and moves the cursors over the settled prefix
// of each chain. Anything less is an error, and asynq retries the unit
// (a rate limit after its Retry-After).
type extractUnit struct {
	// eng is shared by every run of this worker: an engine sweeps old
	// write marks once, not once per unit.
	eng    *extract.Engine
	engErr error
	cache  *msgcache.Store
	rdb    redis.UniversalClient
	now    func() time.Time
	log    *slog.Logger
	events EventPublisher
}

func newExtractUnit(k kit) Worker[*jobs.ExtractUnit] {
	eng, err := extract.New(k.extraction())
	return &extractUnit{eng: eng, engErr: err, cache: msgcache.New(k.Redis()), rdb: k.Jobs(), now: k.Now, log: k.Logger, events: k.Events}
}

func (h *extractUnit) Work(ctx context.Context, p *jobs.ExtractUnit) (Result, error) {
	start := h.now()
	pass, ok := passFor(p.Task)
	if !ok { // Validate admits only the planners
		return nil, fmt.Errorf("%s: unknown planner %q: %w", jobs.KGExtractUnit, p.Task, asynq.SkipRetry)
	}
	if h.engErr != nil {
		return nil, fmt.Errorf("%s: %w: %w", jobs.KGExtractUnit, h.engErr, asynq.SkipRetry)
	}
	eng := h.eng
	segs := make([]plan.Segment, len(p.Segments))
	var frags []extract.Fragment
	read, bot := 0, 0
	for i, s := range p.Segments {
		c, err := msgcache.ParseChannel(s.Channel)
		if err != nil {
			return nil, fmt.Errorf("%s: %w: %w", jobs.KGExtractUnit, err, asynq.SkipRetry)
		}
		segs[i] = plan.Segment{Channel: s.Channel, After: msgcache.Position{TS: s.After.TS, Key: s.After.Key},
			End: msgcache.Position{TS: s.End.TS, Key: s.End.Key}}
		msgs, err := h.segment(ctx, c, segs[i].After, segs[i].End)
		if err != nil {
			return nil, err
		}
		read += len(msgs)
		for _, m := range msgs {
			if m.Kind == msgcache.KindAssistantOut {
				bot++ // the graph is what people said, not the bot's replies
				continue
			}
			frags = append(frags, extract.Fragment{
				ID: m.Key, Source: m.Channel.String(), Author: cmp.Or(m.UserName, m.UserID), Text: m.Text, Time: m.Time,
			})
		}
	}
	res, err := eng.Extract(ctx, frags)
	c := res.Counts
	unsettled := 0
	for _, ok := range res.Settled {
		if !ok {
			unsettled++
		}
	}
	if err == nil && unsettled > 0 {
		err = fmt.Errorf("%w: %d of %d busy with another extraction", ErrUnsettled, unsettled, len(frags))
	}
	moved := 0
	if err == nil {
		mv, cerr := plan.New(h.rdb, pass.task, pass.cursorPrefix).Complete(ctx, unitID(p), segs, h.now())
		err = cerr
		for _, m := range mv {
			if m {
				moved++
			}
		}
	}
	out := withCounts(c, Result{
		"planner": p.Task, "segments": len(segs), "messages_read": read, "messages_extracted": c.Fragments,
		"bot_messages_skipped": bot, "cursors_moved": moved,
		// A ratio: a json.Number is shown but not added up into a counter
		// (rate(prompt_tokens) / rate(messages_extracted) gives it).
		"tokens_per_message": json.Number(strconv.FormatFloat(c.TokensPerFragment(), 'f', 1, 64)),
	})
	if c.Fragments > 0 || err != nil {
		publishExtraction(ctx, h.events, h.now, pass.topic, start, c, out, err)
	}
	log := h.log.With("task", jobs.KGExtractUnit, "planner", p.Task)
	if c.Fragments > 0 {
		switch p.Task {
		case jobs.AutoKGExtraction:
			log.InfoContext(ctx, fmt.Sprintf("KG extraction added %d entities/relationships", c.EntitiesAdded+c.RelationshipsAdded),
				"messages", c.Fragments, "llm_calls", c.LLMCalls, "lock_wait", c.LockWait.String())
		default:
			log.InfoContext(ctx, fmt.Sprintf("Knowledge anchoring: anchored %d message(s) from %d channel(s)", c.Fragments, len(segs)),
				"entities_added", c.EntitiesAdded, "relationships_added", c.RelationshipsAdded, "llm_calls", c.LLMCalls,
				"lock_wait", c.LockWait.String())
		}
	}
	if err != nil {
		log.WarnContext(ctx, "extraction unit failed; it is retried", "error", err, "outcome", llm.Outcome(err),
			"messages_extracted", c.Fragments)
		return nil, extractionFailure(fmt.Errorf("%s: %w", p.Task, err))
	}
	return out, nil
}

// segment reads c's messages after after up to end inclusive, in pages.
func (h *extractUnit) segment(ctx context.Context, c msgcache.Channel, after, end msgcache.Position) ([]msgcache.Message, error) {
	var out []msgcache.Message
	pos := after
	for {
		page, err := h.cache.After(ctx, c, pos, unitPage)
		if err != nil {
			return nil, err
		}
		for i, m := range page.Messages {
			if end.Before(page.Positions[i]) {
				return out, nil
			}
			out = append(out, m)
		}
		if page.End == pos || end.Before(page.End) || page.End == end {
			return out, nil
		}
		pos = page.End
	}
}
