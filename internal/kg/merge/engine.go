// Package merge keeps the knowledge graph free of duplicate entities: it
// finds candidate pairs, has the LLM judge the uncertain ones, and merges
// duplicates into one node without losing a relationship. It also prunes
// the entities that carry almost nothing (prune.go). kg_consolidation_task
// and limbic_dedup_task both run it.
//
// A run:
//
//  1. reads every Entity (page by page, short reads);
//  2. merges exact duplicates, same normalized name and same type, without
//     asking: graph.EntityKey is derived from exactly these, so they are the
//     same entity by the graph's own definition (only legacy writers or a
//     graph without its unique constraint have them);
//  3. finds candidate pairs among the rest: the same normalized name under
//     different types, or near-identical names of one type (same letters,
//     same words, or a Jaro-Winkler similarity of at least 0.9), compared
//     only within blocks so the search stays bounded;
//  4. decides each pair from the verdict memory if the LLM judged it
//     recently, else asks the LLM, a batch of pairs per call, and merges
//     the pairs it calls the same with enough confidence.
//
// Every write is preceded by the caller's ownership check (singleton.Verify
// in the handlers): a run that lost its lease writes nothing more.
package merge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
)

// Graph runs Cypher on the knowledge graph.
type Graph interface {
	Query(ctx context.Context, cypher string, params map[string]any, opts ...graph.Option) (*graph.Result, error)
	ROQuery(ctx context.Context, cypher string, params map[string]any, opts ...graph.Option) (*graph.Result, error)
}

// ChatModel makes chat/completions calls.
type ChatModel interface {
	Chat(ctx context.Context, r llm.Request) (*llm.Response, error)
}

// Engine finds and merges duplicate entities.
type Engine struct {
	Graph Graph
	// LLM judges uncertain pairs; nil merges exact duplicates only.
	LLM ChatModel
	// Memory remembers verdicts across runs; nil asks every run.
	Memory *Memory
	// Verify is called right before every write and must return an error
	// when this run may no longer write (singleton.Verify). Nil checks only
	// that ctx is live.
	Verify func(context.Context) error
	Logger *slog.Logger
}

// Options tune one run.
type Options struct {
	// Model is the chat model that judges pairs.
	Model string
	// MaxJudged bounds the pairs sent to the LLM in one run (default 100).
	MaxJudged int
	// PairsPerCall is how many pairs one call judges (default 20).
	PairsPerCall int
	// MinConfidence is the confidence from which a "same" verdict merges
	// (default 0.8); a less confident "same" counts as distinct.
	MinConfidence float64
	// Now is the clock (default time.Now).
	Now func() time.Time
}

func (o Options) withDefaults() Options {
	if o.MaxJudged <= 0 {
		o.MaxJudged = 100
	}
	if o.PairsPerCall <= 0 {
		o.PairsPerCall = 20
	}
	if o.MinConfidence <= 0 {
		o.MinConfidence = 0.8
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Report counts what a run did. Its fields become the task's result.
type Report struct {
	// Entities is how many Entity nodes the run read.
	Entities int
	// Merged counts duplicates merged into another entity (and deleted),
	// ExactMerged those of them that needed no verdict.
	Merged      int
	ExactMerged int
	// EdgesMoved counts relationships moved onto kept entities;
	// SelfLoopsDropped those dropped because a merge would have turned them
	// into self-loops (a relationship between the two duplicates).
	EdgesMoved       int
	SelfLoopsDropped int
	// Candidates is how many pairs were considered for judging.
	Candidates int
	// Remembered counts pairs decided by the verdict memory, without a
	// call.
	Remembered int
	// Judged counts pairs the LLM gave a valid verdict on, Same those it
	// called the same with enough confidence.
	Judged int
	Same   int
	// LLMCalls counts calls; LLMErrors counts the calls whose answer could
	// not be used in full (failed, not the requested JSON, or with missing
	// or invalid verdicts), and Unjudged the pairs left without a verdict
	// because of them. Those pairs are not merged.
	LLMCalls  int
	LLMErrors int
	Unjudged  int
	// Vanished counts merges skipped because an entity disappeared
	// meanwhile (merged or deleted by someone else).
	Vanished int
	// BadRows counts entities left out because their properties had
	// unexpected types.
	BadRows int
	// LastLLMError describes the last failed call, for the task's result.
	LastLLMError string
}

// maxCandidates bounds the candidate pairs one run considers.
const maxCandidates = 20000

// run is the state of one Merge run.
type run struct {
	e      *Engine
	o      Options
	m      merger
	es     []entity
	parent []int // union-find: parent[i] == i while i is not merged away
	rep    Report
}

// Merge runs one deduplication pass. It returns what it did even when it
// fails: merges done before an error are kept (each is complete or
// resumable). A rate limit stops the run at once and is returned as is
// (wrapped), so the caller can honour its Retry-After; so does a refused
// call (llm.ErrRefused: the budget is spent, the kill switch is off),
// which every next call would meet too; other failed calls
// are counted and returned together at the end, after the rest of the
// pairs were tried.
func (e *Engine) Merge(ctx context.Context, o Options) (Report, error) {
	o = o.withDefaults()
	verify := e.Verify
	if verify == nil {
		verify = ctxAlive
	}
	r := &run{e: e, o: o, m: merger{g: e.Graph, verify: verify, batch: mergeBatch}}
	if e.Memory != nil {
		if _, err := e.Memory.forget(ctx, o.Now()); err != nil {
			return r.rep, err
		}
	}
	es, bad, err := scanEntities(ctx, e.Graph)
	r.rep.BadRows = bad
	if err != nil {
		return r.rep, err
	}
	r.es = es
	r.rep.Entities = len(es)
	r.parent = make([]int, len(es))
	for i := range r.parent {
		r.parent[i] = i
	}

	groups := exactGroups(es)
	merged := map[int]bool{}
	for _, g := range groups {
		for _, dup := range g[1:] {
			ok, err := r.mergeInto(ctx, g[0], dup)
			if err != nil {
				return r.rep, err
			}
			if ok {
				r.rep.ExactMerged++
			}
			merged[dup] = true
		}
	}
	var reps []int
	for i := range es {
		if !merged[i] {
			reps = append(reps, i)
		}
	}
	pairs := candidatePairs(es, reps, maxCandidates)
	r.rep.Candidates = len(pairs)
	if err := r.decide(ctx, pairs); err != nil {
		return r.rep, err
	}
	return r.rep, nil
}

func (r *run) find(i int) int {
	for r.parent[i] != i {
		r.parent[i] = r.parent[r.parent[i]]
		i = r.parent[i]
	}
	return i
}

func (r *run) node(i int) node { return node{ID: r.es[i].ID, Key: r.es[i].Key} }

// mergeInto merges entity dup into keep (indexes of representatives). It
// reports whether the merge happened; a vanished entity is skipped, other
// errors end the run.
func (r *run) mergeInto(ctx context.Context, keep, dup int) (bool, error) {
	st, err := r.m.merge(ctx, r.node(keep), r.node(dup))
	r.rep.EdgesMoved += st.EdgesMoved
	r.rep.SelfLoopsDropped += st.SelfLoopsDropped
	if errors.Is(err, errVanished) {
		r.rep.Vanished++
		if r.e.Logger != nil {
			r.e.Logger.InfoContext(ctx, "merge skipped: an entity vanished", "keep", r.es[keep].Key, "dup", r.es[dup].Key)
		}
		return false, nil
	}
	if err != nil {
		return false, err
	}
	r.parent[dup] = keep
	r.es[keep].Mentions += r.es[dup].Mentions
	r.es[keep].Degree += r.es[dup].Degree
	r.rep.Merged++
	if r.e.Logger != nil {
		r.e.Logger.DebugContext(ctx, "entities merged", "keep", r.es[keep].Key, "keep_name", r.es[keep].Name,
			"dup", r.es[dup].Key, "dup_name", r.es[dup].Name, "edges_moved", st.EdgesMoved)
	}
	return true, nil
}

// mergePair merges the entities of a pair judged the same, following
// earlier merges of the run: the kept side is the representative of the
// entity chosen to keep.
func (r *run) mergePair(ctx context.Context, a, b int, keepA bool) error {
	ra, rb := r.find(a), r.find(b)
	if ra == rb {
		return nil
	}
	keep, dup := ra, rb
	if !keepA {
		keep, dup = rb, ra
	}
	_, err := r.mergeInto(ctx, keep, dup)
	return err
}

// lookupChunk is how many pairs one memory lookup covers.
const lookupChunk = 200

// decide walks the candidate pairs best first: remembered verdicts apply at
// once, the rest are asked about PairsPerCall at a time, up to MaxJudged.
func (r *run) decide(ctx context.Context, pairs []pair) error {
	budget := r.o.MaxJudged
	if r.e.LLM == nil || r.o.Model == "" {
		budget = 0
	}
	seen := map[string]bool{}
	var ask []pair
	var callErrs []error
	flush := func() error {
		if len(ask) == 0 {
			return nil
		}
		err := r.judge(ctx, ask)
		ask = ask[:0]
		var rl *llm.RateLimitError
		switch {
		case err == nil:
		case errors.As(err, &rl) || errors.Is(err, llm.ErrRefused) || ctx.Err() != nil || !errors.Is(err, errCall):
			return err // rate limited, refused (budget, kill switch), out of time, or a graph/lease failure while merging
		default:
			callErrs = append(callErrs, err)
		}
		return nil
	}
	for start := 0; start < len(pairs); start += lookupChunk {
		var chunk []pair
		var fields []string
		for _, p := range pairs[start:min(start+lookupChunk, len(pairs))] {
			a, b := r.find(p.A), r.find(p.B)
			if a == b {
				continue
			}
			f := pairField(r.es[a].Key, r.es[b].Key)
			if seen[f] {
				continue
			}
			seen[f] = true
			chunk = append(chunk, pair{A: a, B: b, Kind: p.Kind, Score: p.Score})
			fields = append(fields, f)
		}
		var mem map[string]verdict
		if r.e.Memory != nil {
			var err error
			if mem, err = r.e.Memory.lookup(ctx, fields); err != nil {
				return err
			}
		}
		for i, p := range chunk {
			if v, ok := mem[fields[i]]; ok {
				r.rep.Remembered++
				if v.Same {
					keepA := r.es[p.A].Key == v.Keep
					if v.Keep != r.es[p.A].Key && v.Keep != r.es[p.B].Key {
						keepA = betterKeep(r.es[p.A], r.es[p.B]) <= 0
					}
					if err := r.mergePair(ctx, p.A, p.B, keepA); err != nil {
						return err
					}
				}
				continue
			}
			if budget == 0 {
				continue
			}
			budget--
			ask = append(ask, p)
			if len(ask) == r.o.PairsPerCall {
				if err := flush(); err != nil {
					return err
				}
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	if len(callErrs) > 0 {
		return &CallErrors{Errs: callErrs, Calls: r.rep.LLMCalls}
	}
	return nil
}

// CallErrors is the error of a run that went through all its pairs but
// had LLM calls fail (their pairs stay unjudged). Errs are the calls'
// errors, each wrapping the cause (ErrBadAnswer, an *llm.StatusError, a
// timeout...), so the caller can tell whether retrying may help.
type CallErrors struct {
	Errs  []error
	Calls int
}

func (e *CallErrors) Error() string {
	return fmt.Sprintf("%d of %d LLM call(s) failed: %v", len(e.Errs), e.Calls, errors.Join(e.Errs...))
}

func (e *CallErrors) Unwrap() []error { return e.Errs }

// errCall marks an error of the LLM call itself (as opposed to a graph or
// lease failure while merging its verdicts).
var errCall = errors.New("judging pairs")

// judge asks the LLM about pairs and merges those it calls the same.
func (r *run) judge(ctx context.Context, pairs []pair) error {
	// Merges since the pairs were queued may have joined some.
	live := pairs[:0:0]
	for _, p := range pairs {
		if a, b := r.find(p.A), r.find(p.B); a != b {
			live = append(live, pair{A: a, B: b, Kind: p.Kind, Score: p.Score})
		}
	}
	if len(live) == 0 {
		return nil
	}
	ids := make([]int64, 0, 2*len(live))
	for _, p := range live {
		ids = append(ids, r.es[p.A].ID, r.es[p.B].ID)
	}
	ctxs, err := related(ctx, r.e.Graph, ids)
	if err != nil {
		return err
	}
	shown := make([]promptPair, len(live))
	for i, p := range live {
		shown[i] = promptPair{Pair: i + 1, A: r.promptEntity(p.A, ctxs), B: r.promptEntity(p.B, ctxs)}
	}
	req := llm.Extraction(r.o.Model, judgePrompt(shown), llm.JSONObject)
	req.Messages = append([]llm.Message{{Role: "system", Content: judgeSystem}}, req.Messages...)
	req.Purpose = "dedup"
	r.rep.LLMCalls++
	resp, err := r.e.LLM.Chat(ctx, req)
	var verdicts map[int]judgement
	problems := 0
	if err == nil {
		verdicts, problems, err = parseVerdicts(resp.Content, len(live))
	}
	if err != nil {
		r.rep.LLMErrors++
		r.rep.Unjudged += len(live)
		r.rep.LastLLMError = err.Error()
		return fmt.Errorf("%w: %d pair(s): %w", errCall, len(live), err)
	}
	if problems > 0 {
		r.rep.LLMErrors++
		r.rep.Unjudged += len(live) - len(verdicts)
		r.rep.LastLLMError = fmt.Sprintf("%d of %d verdicts missing or invalid", len(live)-len(verdicts), len(live))
		if r.e.Logger != nil {
			r.e.Logger.WarnContext(ctx, "LLM verdicts missing or invalid; those pairs are not merged",
				"pairs", len(live), "valid", len(verdicts))
		}
	}
	remember := map[string]verdict{}
	type approved struct {
		a, b  int
		keepA bool
	}
	var merges []approved
	for i, p := range live {
		j, ok := verdicts[i+1]
		if !ok {
			continue
		}
		r.rep.Judged++
		v := verdict{}
		if j.Same && j.Confidence >= r.o.MinConfidence {
			r.rep.Same++
			keep := p.A
			if !j.KeepA {
				keep = p.B
			}
			v = verdict{Same: true, Keep: r.es[keep].Key}
			merges = append(merges, approved{p.A, p.B, j.KeepA})
		}
		remember[pairField(r.es[p.A].Key, r.es[p.B].Key)] = v
	}
	if r.e.Memory != nil {
		if err := r.e.Memory.remember(ctx, r.o.Now(), remember); err != nil {
			return err
		}
	}
	for _, m := range merges {
		if err := r.mergePair(ctx, m.a, m.b, m.keepA); err != nil {
			return err
		}
	}
	return nil
}

func (r *run) promptEntity(i int, ctxs map[int64][]string) promptEntity {
	e := r.es[i]
	return promptEntity{Name: clipRunes(e.Name, 120), Type: e.Type, Mentions: e.Mentions, Related: ctxs[e.ID]}
}
