// Package extract is the knowledge-extraction engine every extraction task
// uses (auto_kg_extraction, limbic_anchoring_worker, anamnesis_digest and
// agentic_kg_bulk_incremental): it takes text fragments with provenance, asks an LLM
// for the entities and relationships they state, validates the answer, and
// upserts it into the knowledge graph.
//
// Extraction is exactly-once per fragment, whoever calls it and however
// often. A ledger in Redis records every extracted fragment ID, so asking
// again costs neither an LLM call nor a mention; claims keep two concurrent
// callers from extracting the same fragment; and each batch's validated
// answer is stored before it is written, with every graph write guarded by
// a mark created in the same atomic query, so a crash between the graph
// write and the ledger's commit is finished from the stored answer without
// counting anything twice. docs/data-model.md ("Knowledge extraction")
// describes the keys and the reasoning.
package extract

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
)

// ErrInvalidFragment is a fragment the caller built wrong (no ID).
var ErrInvalidFragment = errors.New("extract: invalid fragment")

// Fragment is a piece of text to extract from, with its provenance.
type Fragment struct {
	// ID identifies the fragment across all sources and all time, e.g. the
	// message's cache key (sg:msg:discord:<channel>:<message>). It is what
	// the ledger records, so the same ID is never extracted twice.
	ID string
	// Source is where it comes from (a channel "discord:<id>", a fragment
	// store); shown to the model.
	Source string
	// Author is who wrote it (a display name), shown to the model.
	Author string
	Text   string
	// Time is when it was written; it dates the mentions (first_seen,
	// last_seen). Zero means now.
	Time time.Time
}

// Counts are what one or more Extract calls did.
type Counts struct {
	EntitiesAdded        int `json:"entities_added"`
	EntitiesUpdated      int `json:"entities_updated"`
	RelationshipsAdded   int `json:"relationships_added"`
	RelationshipsUpdated int `json:"relationships_updated"`
	// Fragments were extracted (written to the graph) by this call,
	// Recovered of them from a crashed run's stored answer.
	Fragments int `json:"fragments"`
	Recovered int `json:"recovered"`
	// Duplicates were extracted before; Skipped have no text; Busy are
	// being extracted by another caller right now (not settled); Poisoned
	// made the model fail too often and were given up on.
	Duplicates int `json:"duplicates"`
	Skipped    int `json:"skipped"`
	Busy       int `json:"busy"`
	Poisoned   int `json:"poisoned"`
	// Rejected counts entities and relationships of answers dropped by
	// validation.
	Rejected         int `json:"rejected"`
	LLMCalls         int `json:"llm_calls"`
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	// LockWait is how long the graph writes waited for the graph write
	// lock (writelock): the next ceiling once LLM calls run in parallel.
	LockWait time.Duration `json:"lock_wait_ns"`
}

// Add adds o to c.
func (c *Counts) Add(o Counts) {
	c.EntitiesAdded += o.EntitiesAdded
	c.EntitiesUpdated += o.EntitiesUpdated
	c.RelationshipsAdded += o.RelationshipsAdded
	c.RelationshipsUpdated += o.RelationshipsUpdated
	c.Fragments += o.Fragments
	c.Recovered += o.Recovered
	c.Duplicates += o.Duplicates
	c.Skipped += o.Skipped
	c.Busy += o.Busy
	c.Poisoned += o.Poisoned
	c.Rejected += o.Rejected
	c.LLMCalls += o.LLMCalls
	c.PromptTokens += o.PromptTokens
	c.CompletionTokens += o.CompletionTokens
	c.LockWait += o.LockWait
}

// TokensPerFragment is the LLM tokens (prompt and completion) spent per
// extracted fragment, 0 when none was.
func (c Counts) TokensPerFragment() float64 {
	if c.Fragments == 0 {
		return 0
	}
	return float64(c.PromptTokens+c.CompletionTokens) / float64(c.Fragments)
}

// Result is an Extract call's outcome.
type Result struct {
	Counts
	// Settled[i] reports whether the i-th fragment passed to Extract is
	// done with: extracted now or before, without text, or poisoned. A
	// caller that keeps a cursor moves it only over settled fragments.
	Settled []bool
}

// ChatModel makes chat/completions calls (*llm.Client).
type ChatModel interface {
	Chat(ctx context.Context, r llm.Request) (*llm.Response, error)
}

// Graph runs Cypher (*graph.Graph).
type Graph interface {
	Query(ctx context.Context, cypher string, params map[string]any, opts ...graph.Option) (*graph.Result, error)
}

// Defaults of Config.
const (
	// DefaultBatchMessages: short chat messages per LLM call. The answer
	// (about 50 tokens per entity and relationship) must fit the
	// extraction calls' 4,096 output tokens.
	DefaultBatchMessages = 30
	// DefaultBatchChars bounds a batch's prompt (about 3,000 tokens of
	// messages), so long messages make smaller batches.
	DefaultBatchChars = 12_000
	// DefaultMaxFragmentRunes clips one fragment in the prompt.
	DefaultMaxFragmentRunes = 2_000
	// DefaultClaimTTL is how long a batch may take between claiming its
	// fragments and storing its answer (an LLM call, 120 s at most by
	// default), and between storing and committing it (the graph write).
	// A crashed run's fragments wait this long before anyone retakes them.
	DefaultClaimTTL = 5 * time.Minute
	// DefaultRecoveryWindow is how long a stored answer and its write
	// marks are kept for a crashed run to be finished.
	DefaultRecoveryWindow = 72 * time.Hour
	// DefaultWriteLockTTL bounds how long one batch's graph write holds
	// the write lock (it takes milliseconds) if its process dies or
	// freezes.
	DefaultWriteLockTTL = 30 * time.Second
	// DefaultLedgerRetention is how long an extracted fragment ID is
	// remembered: re-extracting it within that time is a no-op. An entry
	// takes about 160 bytes (a message key as ID), so 10,000 messages a
	// day keep about 48 MB.
	DefaultLedgerRetention = 30 * 24 * time.Hour
)

// Config configures an Engine. LLM, Model, Graph and Redis are required.
type Config struct {
	LLM ChatModel
	// Model is kg_extraction_model.
	Model string
	Graph Graph
	// Redis holds the ledger.
	Redis redis.UniversalClient

	// BatchMessages and BatchChars bound one LLM call's fragments and
	// prompt characters (defaults above).
	BatchMessages    int
	BatchChars       int
	MaxFragmentRunes int
	ClaimTTL         time.Duration
	RecoveryWindow   time.Duration
	LedgerRetention  time.Duration
	WriteLockTTL     time.Duration
	// PoisonAfter is how many bad answers a fragment's batches may get
	// before the fragment is given up on. Default: enough halvings of
	// BatchMessages to isolate it, and two tries alone.
	PoisonAfter int

	// Verify, if set, is called right before each batch is stored and
	// written (singleton.Verify); an error aborts the batch.
	Verify func(ctx context.Context) error
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Logger (default: discard) receives poisoned fragments and recoveries.
	Logger *slog.Logger
}

// Engine extracts knowledge from fragments into the graph. It is safe for
// concurrent use; the ledger coordinates concurrent callers, in this
// process or others.
type Engine struct {
	cfg    Config
	ledger ledger
	swept  atomic.Bool // old marks and stale claims were swept (once per engine)
}

// New returns an engine, filling in defaults.
func New(cfg Config) (*Engine, error) {
	if cfg.LLM == nil || cfg.Graph == nil || cfg.Redis == nil || cfg.Model == "" {
		return nil, errors.New("extract: Config needs LLM, Model, Graph and Redis")
	}
	if cfg.BatchMessages <= 0 {
		cfg.BatchMessages = DefaultBatchMessages
	}
	if cfg.BatchChars <= 0 {
		cfg.BatchChars = DefaultBatchChars
	}
	if cfg.MaxFragmentRunes <= 0 {
		cfg.MaxFragmentRunes = DefaultMaxFragmentRunes
	}
	if cfg.ClaimTTL <= 0 {
		cfg.ClaimTTL = DefaultClaimTTL
	}
	if cfg.RecoveryWindow <= 0 {
		cfg.RecoveryWindow = DefaultRecoveryWindow
	}
	if cfg.LedgerRetention <= 0 {
		cfg.LedgerRetention = DefaultLedgerRetention
	}
	if cfg.WriteLockTTL <= 0 {
		cfg.WriteLockTTL = DefaultWriteLockTTL
	}
	if cfg.PoisonAfter <= 0 {
		cfg.PoisonAfter = bits.Len(uint(cfg.BatchMessages)) + 1
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Engine{cfg: cfg, ledger: ledger{rdb: cfg.Redis}}, nil
}

// Extract extracts frags, in order, in batches of several fragments per
// LLM call, and returns what it did. It stops at the first failure and
// returns it with the partial Result: batches before it are written and
// settled, the failed batch wrote nothing. Errors to expect:
//   - *llm.RateLimitError (wrapped): retry after its RetryAfter;
//   - ErrBadAnswer or llm.ErrEmptyContent: the model's answer was unusable;
//     a retry may succeed (answers vary) and puts the batch's fragments in
//     smaller batches, and a fragment that keeps failing is poisoned;
//   - other llm and graph errors, and ctx's.
//
// A fragment already extracted (by any caller) is only settled, and one
// another caller is extracting right now is left unsettled (Busy).
func (e *Engine) Extract(ctx context.Context, frags []Fragment) (Result, error) {
	res := Result{Settled: make([]bool, len(frags))}
	frags = slices.Clone(frags)
	now := e.cfg.Now()
	first := map[string]int{} // fragment ID -> index of its first occurrence
	var ids []string
	var uniq []int
	for i := range frags {
		if frags[i].ID == "" {
			return res, fmt.Errorf("%w: fragment %d has no ID", ErrInvalidFragment, i)
		}
		if frags[i].Time.IsZero() {
			frags[i].Time = now
		}
		if _, dup := first[frags[i].ID]; !dup {
			first[frags[i].ID] = i
			ids = append(ids, frags[i].ID)
			uniq = append(uniq, i)
		}
	}
	defer func() { // an ID passed twice is settled with its first occurrence (Settled is shared with the returned copy)
		for i := range frags {
			res.Settled[i] = res.Settled[first[frags[i].ID]]
		}
	}()
	if len(frags) == 0 {
		return res, nil
	}
	if !e.swept.Load() {
		if err := e.sweep(ctx, now); err != nil {
			return res, err
		}
		if _, err := e.ledger.sweepClaims(ctx, now, e.cfg.RecoveryWindow); err != nil {
			return res, err
		}
		e.swept.Store(true)
	}

	st, err := e.ledger.status(ctx, ids)
	if err != nil {
		return res, err
	}
	recovered, n, err := e.recoverExpired(ctx, ids, st, now, &res.Counts)
	if err != nil {
		return res, err
	}
	if n > 0 {
		if st, err = e.ledger.status(ctx, ids); err != nil {
			return res, err
		}
	}

	var todo []Fragment
	var todoIdx, failures []int
	for j, i := range uniq {
		s := st[j]
		switch {
		case s.done:
			res.Settled[i] = true
			if !recovered[frags[i].ID] {
				res.Duplicates++
			}
		case strings.TrimSpace(frags[i].Text) == "":
			res.Settled[i] = true
			res.Skipped++
		case s.claim.batch != "" && (s.claim.answered || s.claim.expires > now.UnixMilli()):
			res.Busy++
		default:
			todo = append(todo, frags[i])
			todoIdx = append(todoIdx, i)
			failures = append(failures, s.failures)
		}
	}
	for _, b := range e.cut(todo, failures) {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		batch := make([]Fragment, len(b))
		for k, j := range b {
			batch[k] = todo[j]
		}
		settled, err := e.extractBatch(ctx, batch, &res.Counts)
		for k, j := range b {
			if settled[k] {
				res.Settled[todoIdx[j]] = true
			}
		}
		if err != nil {
			return res, err
		}
	}
	return res, nil
}

// extractBatch claims batch, asks the LLM, and writes and commits the
// answer. It returns which fragments of batch are settled.
func (e *Engine) extractBatch(ctx context.Context, batch []Fragment, c *Counts) ([]bool, error) {
	settled := make([]bool, len(batch))
	now := e.cfg.Now()
	id := newBatchID()
	ids := make([]string, len(batch))
	for i, f := range batch {
		ids[i] = f.ID
	}
	codes, err := e.ledger.claim(ctx, id, ids, now, now.Add(e.cfg.ClaimTTL))
	if err != nil {
		return settled, err
	}
	var mine []Fragment
	var mineIdx []int
	for i, code := range codes {
		switch code {
		case claimed:
			mine = append(mine, batch[i])
			mineIdx = append(mineIdx, i)
		case wasDone:
			settled[i] = true
			c.Duplicates++
		default:
			c.Busy++
		}
	}
	if len(mine) == 0 {
		return settled, nil
	}
	mineIDs := make([]string, len(mine))
	for i, f := range mine {
		mineIDs[i] = f.ID
	}

	// From here until the answer is stored, a failure gives the claims up
	// (and, for an unusable answer, counts it against the fragments).
	giveUp := func(cause error, bad bool) error {
		rctx, cancel := cleanupContext(ctx)
		defer cancel()
		poisoned, err := e.ledger.release(rctx, id, mineIDs, bad, e.cfg.PoisonAfter, e.cfg.Now())
		for _, p := range poisoned {
			k := slices.Index(mineIDs, p)
			settled[mineIdx[k]] = true
			c.Poisoned++
			e.cfg.Logger.WarnContext(ctx, "extraction gave up on a fragment: the model failed on it too often",
				"fragment", p, "failures", e.cfg.PoisonAfter)
		}
		return errors.Join(cause, err)
	}

	req := llm.Extraction(e.cfg.Model, e.prompt(mine), llm.JSONObject)
	req.Items = len(mine) // the spend ledger's tokens per message
	resp, err := e.cfg.LLM.Chat(ctx, req)
	if !errors.Is(err, llm.ErrRefused) {
		c.LLMCalls++ // a refused call was never made
	}
	if err != nil {
		return settled, giveUp(fmt.Errorf("extract: batch of %d fragment(s) from %s: %w", len(mine), mine[0].ID, err),
			errors.Is(err, llm.ErrEmptyContent))
	}
	c.PromptTokens += resp.Usage.PromptTokens
	c.CompletionTokens += resp.Usage.CompletionTokens
	p, err := parseAnswer(resp.Content, mine)
	if err != nil {
		if resp.FinishReason == "length" {
			err = fmt.Errorf("%w (the answer was cut at the output token limit)", err)
		}
		return settled, giveUp(fmt.Errorf("extract: batch of %d fragment(s) from %s: %w", len(mine), mine[0].ID, err), true)
	}
	if e.cfg.Verify != nil {
		if err := e.cfg.Verify(ctx); err != nil {
			return settled, giveUp(err, false)
		}
	}
	in := intent{Fragments: mineIDs, Entities: p.Entities, Relationships: p.Relationships, Created: now.UnixMilli()}
	now = e.cfg.Now()
	ok, err := e.ledger.store(ctx, id, in, now.Add(e.cfg.ClaimTTL), e.cfg.RecoveryWindow)
	if err != nil {
		return settled, giveUp(err, false)
	}
	if !ok { // the claims were taken over: the batch took longer than ClaimTTL
		c.Busy += len(mine)
		return settled, nil
	}
	c.Rejected += p.Rejected

	w, err := e.write(ctx, id, in, now)
	if err == nil {
		err = e.ledger.commit(ctx, id, mineIDs, now, now.Add(-e.cfg.LedgerRetention))
	}
	if err != nil {
		// The answer is stored: make it due for recovery at once, so the
		// next call finishes it instead of waiting out ClaimTTL.
		rctx, cancel := cleanupContext(ctx)
		defer cancel()
		return settled, errors.Join(err, e.ledger.expire(rctx, id, mineIDs, false))
	}
	c.Add(w)
	c.Fragments += len(mine)
	e.cfg.Logger.DebugContext(ctx, "extraction batch committed", "batch", id, "fragments", mineIDs)
	for _, i := range mineIdx {
		settled[i] = true
	}
	return settled, nil
}

// recoverExpired finishes batches whose answer was stored but whose run
// died before committing it (their claims expired), and frees the claims
// of batches whose stored answer is gone. It returns the fragments it
// extracted and how many batches it touched.
func (e *Engine) recoverExpired(ctx context.Context, ids []string, st []status, now time.Time, c *Counts) (map[string]bool, int, error) {
	recovered := map[string]bool{}
	var batches []string
	for _, s := range st {
		if s.claim.batch != "" && s.claim.answered && s.claim.expires <= now.UnixMilli() && !slices.Contains(batches, s.claim.batch) {
			batches = append(batches, s.claim.batch)
		}
	}
	for _, b := range batches {
		in, ok, err := e.ledger.load(ctx, b)
		if err != nil {
			return nil, 0, err
		}
		if !ok { // the answer expired with the recovery window: extract anew
			var held []string
			for i, s := range st {
				if s.claim.batch == b {
					held = append(held, ids[i])
				}
			}
			if err := e.ledger.expire(ctx, b, held, true); err != nil {
				return nil, 0, err
			}
			continue
		}
		w, err := e.write(ctx, b, in, now)
		if err == nil {
			err = e.ledger.commit(ctx, b, in.Fragments, now, now.Add(-e.cfg.LedgerRetention))
		}
		if err != nil {
			return nil, 0, fmt.Errorf("extract: recovering batch %s: %w", b, err)
		}
		e.cfg.Logger.InfoContext(ctx, "extraction finished a crashed run's batch from its stored answer",
			"batch", b, "fragments", len(in.Fragments))
		e.cfg.Logger.DebugContext(ctx, "extraction batch committed", "batch", b, "fragments", in.Fragments, "recovered", true)
		c.Add(w)
		c.Fragments += len(in.Fragments)
		c.Recovered += len(in.Fragments)
		for _, id := range in.Fragments {
			recovered[id] = true
		}
	}
	return recovered, len(batches), nil
}

// cleanupContext is for giving claims back after ctx ended: the release
// must still reach Redis.
func cleanupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
}

func newBatchID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
