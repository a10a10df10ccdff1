// Package hubs organises the knowledge graph's hubs: an entity linked to
// many others gets a level of named categories between it and them, which
// the LLM proposes, so that the bot can walk "Alice → Colleagues → Bob"
// instead of a flat list of hundreds of neighbours. limbic_org_task runs
// it.
//
// Restructuring adds and never removes: for a hub H and a category C the
// LLM puts neighbour M in, it creates
//
//	(H)-[:REL {type:'has_category'}]->(C:Category)-[:REL {type:'in_category'}]->(M)
//
// and keeps the original relationships between H and M, marking them
// organised = true. The neighbours the model saw but left out of every
// category get organised = false. A relationship with an organised
// property has been examined: hubs are found by counting only unexamined
// relationships to other entities, so an organised hub is not a hub any
// more until new neighbours arrive, and a re-run finds nothing to do.
// Category nodes are never hubs and never members (only Entity nodes are),
// so categories never nest.
package hubs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
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

// Relationship types of the category level.
const (
	HasCategory = "has_category"
	InCategory  = "in_category"
)

// MinUsefulNeighbours is the fewest unexamined neighbours worth organising:
// categories over fewer add nodes without adding structure. It is the
// floor of Options.MinNeighbours (ka_org_hub_degree_threshold defaults to
// 1, which would otherwise send every entity with one neighbour to the
// LLM).
const MinUsefulNeighbours = 3

// Organizer restructures hubs.
type Organizer struct {
	Graph Graph
	LLM   ChatModel
	// Verify is called right before every write and must return an error
	// when this run may no longer write (singleton.Verify). Nil checks only
	// that ctx is live.
	Verify func(context.Context) error
	Logger *slog.Logger
}

// Options tune one run.
type Options struct {
	// Model is the chat model that proposes categories.
	Model string
	// MinNeighbours is the hub threshold: an entity is a hub when it has at
	// least this many neighbouring entities over relationships not yet
	// examined (at least MinUsefulNeighbours).
	MinNeighbours int
	// MaxHubs bounds the hubs organised per run (default 5), and
	// MaxNeighbours the neighbours shown per hub (default 200, the
	// strongest first; the rest wait for a later run).
	MaxHubs       int
	MaxNeighbours int
	// MaxCategories bounds the categories taken from one answer (default 12).
	MaxCategories int
	// Now is the clock (default time.Now).
	Now func() time.Time
}

func (o Options) withDefaults() Options {
	o.MinNeighbours = max(o.MinNeighbours, MinUsefulNeighbours)
	if o.MaxHubs <= 0 {
		o.MaxHubs = 5
	}
	if o.MaxNeighbours <= 0 {
		o.MaxNeighbours = 200
	}
	if o.MaxCategories <= 0 {
		o.MaxCategories = 12
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Report counts what a run did. Its fields become the task's result.
type Report struct {
	// Hubs is how many hubs were examined, Organised how many of them got
	// the model's answer applied.
	Hubs      int
	Organised int
	// CategoriesCreated counts new Category nodes; Placed the neighbours put
	// under a category, LeftOut those the model saw and left out.
	CategoriesCreated int
	Placed            int
	LeftOut           int
	// Dropped counts the parts of answers that were not valid (an unknown
	// or repeated member, a nameless category, one too small) and were
	// ignored.
	Dropped int
	// LLMCalls counts calls; LLMErrors those whose answer could not be used
	// (failed or not the requested JSON); those hubs are left as they were.
	LLMCalls     int
	LLMErrors    int
	LastLLMError string
	// BadRows counts graph rows skipped because their properties had
	// unexpected types.
	BadRows int
}

// Run organises up to MaxHubs hubs, the largest first. A hub whose answer
// is unusable is left untouched and counted; a rate limit stops the run at
// once and is returned (wrapped) so the caller can honour its Retry-After,
// and so does a refused call (llm.ErrRefused: budget spent, kill switch
// off); other failed calls are returned together after the remaining hubs.
func (o *Organizer) Run(ctx context.Context, opts Options) (Report, error) {
	opts = opts.withDefaults()
	var rep Report
	if o.LLM == nil || opts.Model == "" {
		return rep, errors.New("hubs: no LLM to propose categories")
	}
	hubs, err := o.findHubs(ctx, opts, &rep.BadRows)
	if err != nil {
		return rep, err
	}
	var callErrs []error
	for _, h := range hubs {
		rep.Hubs++
		err := o.organise(ctx, opts, h, &rep)
		var rl *llm.RateLimitError
		switch {
		case err == nil:
		case errors.As(err, &rl) || errors.Is(err, llm.ErrRefused) || ctx.Err() != nil || !errors.Is(err, errCall):
			return rep, err
		default:
			rep.LLMErrors++
			rep.LastLLMError = err.Error()
			callErrs = append(callErrs, err)
			if o.Logger != nil {
				o.Logger.WarnContext(ctx, "hub left as it was: unusable answer", "hub", h.Key, "error", err)
			}
		}
	}
	if len(callErrs) > 0 {
		return rep, &CallErrors{Errs: callErrs, Hubs: len(hubs)}
	}
	return rep, nil
}

// CallErrors is the error of a run that went through all its hubs but had
// LLM calls fail or answer unusably (those hubs are left as they were).
// Errs are the calls' errors, each wrapping the cause (ErrBadAnswer, an
// *llm.StatusError, a timeout...), so the caller can tell whether retrying
// may help.
type CallErrors struct {
	Errs []error
	Hubs int
}

func (e *CallErrors) Error() string {
	return fmt.Sprintf("%d of %d hub(s) not organised: %v", len(e.Errs), e.Hubs, errors.Join(e.Errs...))
}

func (e *CallErrors) Unwrap() []error { return e.Errs }

// errCall marks a failure of the LLM call or its answer.
var errCall = errors.New("proposing categories")

// hub is an entity with many unexamined neighbours.
type hub struct {
	ID               int64
	Key, Name, Type  string
	Unexamined       int64
	ExistingCategory map[string]category // by normalized name
}

// findHubsQuery finds hubs in two steps: the cheap degree functions first,
// so that only well-connected entities have their relationships walked.
const findHubsQuery = `MATCH (h:Entity) WHERE indegree(h) + outdegree(h) >= $min
MATCH (h)-[r:REL]-(m:Entity) WHERE r.organised IS NULL AND m <> h
WITH h, count(DISTINCT m) AS n WHERE n >= $min
RETURN id(h) AS id, h.key AS key, h.name AS name, h.type AS type, n ORDER BY n DESC, h.key LIMIT $hubs`

func (o *Organizer) findHubs(ctx context.Context, opts Options, bad *int) ([]hub, error) {
	res, err := o.Graph.ROQuery(ctx, findHubsQuery, map[string]any{"min": opts.MinNeighbours, "hubs": opts.MaxHubs})
	if errors.Is(err, graph.ErrNoGraph) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("finding hubs: %w", err)
	}
	var out []hub
	for i := range res.Rows {
		h := hub{}
		if err := res.Scan(i, map[string]any{"id": &h.ID, "key": &h.Key, "name": &h.Name, "type": &h.Type, "n": &h.Unexamined}); err != nil || h.Key == "" {
			*bad++ // the bot writes to the graph too: one odd node is skipped, not fatal
			continue
		}
		out = append(out, h)
	}
	return out, nil
}

// neighbour is an entity linked to a hub by unexamined relationships.
type neighbour struct {
	ID        int64
	Key, Name string
	Type      string
	Rels      []string // relationship types, "<-" marking those towards the hub
	Weight    float64  // the strongest of them
	LastSeen  any      // int64 or nil
}

const neighboursQuery = `MATCH (h:Entity) WHERE id(h) = $h AND h.key = $hk
MATCH (h)-[r:REL]-(m:Entity) WHERE r.organised IS NULL AND m <> h
WITH h, m, collect(DISTINCT CASE WHEN startNode(r) = h THEN r.type ELSE '<-' + r.type END) AS rels,
  max(coalesce(r.weight, 1.0)) AS w, max(r.last_seen) AS ls
RETURN id(m) AS id, m.key AS key, m.name AS name, m.type AS type, rels, w, ls ORDER BY w DESC, m.key LIMIT $n`

const categoriesQuery = `MATCH (h:Entity) WHERE id(h) = $h AND h.key = $hk
MATCH (h)-[:REL {type: 'has_category'}]->(c:Category)
RETURN c.key AS key, c.name AS name`

func (o *Organizer) neighbours(ctx context.Context, opts Options, h *hub, bad *int) ([]neighbour, error) {
	params := map[string]any{"h": h.ID, "hk": h.Key, "n": opts.MaxNeighbours}
	res, err := o.Graph.ROQuery(ctx, neighboursQuery, params)
	if err != nil {
		return nil, fmt.Errorf("reading neighbours of %s: %w", h.Key, err)
	}
	var out []neighbour
	for i := range res.Rows {
		n := neighbour{}
		var rels []any
		if err := res.Scan(i, map[string]any{"id": &n.ID, "key": &n.Key, "name": &n.Name, "type": &n.Type,
			"rels": &rels, "w": &n.Weight, "ls": &n.LastSeen}); err != nil || n.Key == "" {
			*bad++
			continue
		}
		for _, v := range rels {
			if s, ok := v.(string); ok {
				n.Rels = append(n.Rels, s)
			}
		}
		out = append(out, n)
	}
	res, err = o.Graph.ROQuery(ctx, categoriesQuery, params)
	if err != nil {
		return nil, fmt.Errorf("reading categories of %s: %w", h.Key, err)
	}
	h.ExistingCategory = map[string]category{}
	for i := range res.Rows {
		var key, name string
		if err := res.Scan(i, map[string]any{"key": &key, "name": &name}); err != nil {
			*bad++
			continue
		}
		if norm := graph.NormalizeName(name); key != "" && norm != "" {
			h.ExistingCategory[norm] = category{Key: key, Name: name, Existing: true}
		}
	}
	return out, nil
}

// organise asks the model about one hub and applies its answer.
func (o *Organizer) organise(ctx context.Context, opts Options, h hub, rep *Report) error {
	ns, err := o.neighbours(ctx, opts, &h, &rep.BadRows)
	if err != nil {
		return err
	}
	if len(ns) < opts.MinNeighbours {
		return nil // examined meanwhile
	}
	req := llm.Extraction(opts.Model, orgPrompt(h, ns), llm.JSONObject)
	req.Messages = append([]llm.Message{{Role: "system", Content: orgSystem}}, req.Messages...)
	req.Purpose = "org"
	rep.LLMCalls++
	resp, err := o.LLM.Chat(ctx, req)
	if err != nil {
		return fmt.Errorf("%w for %s: %w", errCall, h.Key, err)
	}
	cats, dropped, err := parseCategories(resp.Content, h, ns, opts.MaxCategories)
	if err != nil {
		return fmt.Errorf("%w for %s: %w", errCall, h.Key, err)
	}
	rep.Dropped += dropped
	verify := o.Verify
	if verify == nil {
		verify = func(ctx context.Context) error { return ctx.Err() }
	}
	if err := verify(ctx); err != nil {
		return err
	}
	created, placed, err := o.apply(ctx, opts, h, ns, cats)
	if err != nil {
		return err
	}
	rep.Organised++
	rep.CategoriesCreated += created
	rep.Placed += placed
	rep.LeftOut += len(ns) - placed
	if o.Logger != nil {
		o.Logger.InfoContext(ctx, "hub organised", "hub", h.Key, "name", h.Name, "categories", len(cats),
			"created", created, "placed", placed, "left_out", len(ns)-placed)
	}
	return nil
}

// applyQuery writes one hub's categories and marks every relationship the
// model was shown, in one atomic query: categories and the marks that say
// "done" appear together or not at all. Rows are unique per relationship
// merged (one per category, one per member): FalkorDB 4.16 crashes on a
// relationship MERGE with ON MATCH SET that meets the same relationship
// twice in a batch.
const applyQuery = `MATCH (h:Entity) WHERE id(h) = $h AND h.key = $hk
UNWIND $cats AS c
MERGE (cat:Category {key: c.key})
ON CREATE SET cat.name = c.name, cat.hub = h.key, cat.created = $now
MERGE (h)-[hc:REL {type: 'has_category'}]->(cat)
ON CREATE SET hc.weight = c.w, hc.last_seen = c.ls
ON MATCH SET hc.weight = CASE WHEN c.w > hc.weight OR hc.weight IS NULL THEN c.w ELSE hc.weight END,
  hc.last_seen = CASE WHEN c.ls > hc.last_seen OR hc.last_seen IS NULL THEN c.ls ELSE hc.last_seen END
WITH cat, c
UNWIND c.members AS mem
WITH cat, mem, mem.id AS mid
MATCH (m:Entity) WHERE id(m) = mid AND m.key = mem.key
MERGE (cat)-[ic:REL {type: 'in_category'}]->(m)
ON CREATE SET ic.weight = mem.w, ic.last_seen = mem.ls
ON MATCH SET ic.weight = CASE WHEN mem.w > ic.weight OR ic.weight IS NULL THEN mem.w ELSE ic.weight END,
  ic.last_seen = CASE WHEN mem.ls > ic.last_seen OR ic.last_seen IS NULL THEN mem.ls ELSE ic.last_seen END
WITH count(m) AS placed
UNWIND $marks AS mk
WITH placed, mk, mk.id AS mid
MATCH (h:Entity) WHERE id(h) = $h AND h.key = $hk
MATCH (m:Entity) WHERE id(m) = mid AND m.key = mk.key
MATCH (h)-[r:REL]-(m) WHERE r.organised IS NULL
SET r.organised = mk.placed
RETURN placed, count(r)`

func (o *Organizer) apply(ctx context.Context, opts Options, h hub, ns []neighbour, cats []category) (created, placed int, err error) {
	member := map[int]bool{}
	var catRows []any
	for _, c := range cats {
		var members []any
		w, ls := 0.0, any(nil)
		for _, i := range c.Members {
			n := ns[i]
			member[i] = true
			members = append(members, map[string]any{"id": n.ID, "key": n.Key, "w": n.Weight, "ls": n.LastSeen})
			w = max(w, n.Weight)
			if later(n.LastSeen, ls) {
				ls = n.LastSeen
			}
		}
		catRows = append(catRows, map[string]any{"key": c.Key, "name": c.Name, "members": members, "w": w, "ls": ls})
	}
	marks := make([]any, len(ns))
	for i, n := range ns {
		marks[i] = map[string]any{"id": n.ID, "key": n.Key, "placed": member[i]}
	}
	res, err := o.Graph.Query(ctx, applyQuery, map[string]any{
		"h": h.ID, "hk": h.Key, "cats": catRows, "marks": marks, "now": opts.Now().UnixMilli(),
	})
	if err != nil {
		return 0, 0, fmt.Errorf("organising hub %s: %w", h.Key, err)
	}
	placed = len(member)
	if len(res.Rows) == 1 {
		if n, err := graph.AsInt64(res.Rows[0][0]); err == nil {
			placed = int(n) // a member deleted meanwhile is not placed
		}
	}
	return int(res.Stats.NodesCreated), placed, nil
}

func later(a, b any) bool {
	x, ok := a.(int64)
	if !ok {
		return false
	}
	y, ok := b.(int64)
	return !ok || x > y
}

// CategoryKey is the key of the category named name under the hub with key
// hubKey: stable (the same name under the same hub is the same node on
// every run) and distinct between hubs ("Projects" of Alice is not
// "Projects" of Bob). Same form as graph.EntityKey: 32 hex digits of
// SHA-256.
func CategoryKey(hubKey, name string) string {
	sum := sha256.Sum256([]byte("category\x00" + hubKey + "\x00" + graph.NormalizeName(name)))
	return hex.EncodeToString(sum[:16])
}
