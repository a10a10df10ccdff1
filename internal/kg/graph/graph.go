// Package graph is a small FalkorDB client over go-redis: Cypher queries
// with parameters, decoded results, typed errors, and the knowledge graph's
// schema (schema.go).
//
// It exists because FalkorDB's own Go client is not available to this
// project; FalkorDB speaks plain Redis commands (GRAPH.QUERY and friends),
// so the job system's go-redis client carries it.
//
// Data never goes into query text: every value is passed as a parameter
// ($name in the query, a map entry in params), encoded in one place
// (withParams). Relationship types and labels cannot be parameters in
// FalkorDB, which is one reason the knowledge graph uses a single
// relationship type (see docs/data-model.md).
package graph

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Graph is one named graph on a FalkorDB server. It is safe for concurrent
// use.
//
// Give a Graph its own go-redis client from [NewClient], which is
// configured for graph queries: calls bounded by their context's deadline,
// no go-redis read timeout cutting long queries, no retried writes. A
// go-redis client with default options cuts every query at 5 s and retries
// it (a write then runs twice); one with ReadTimeout -1 but without
// ContextTimeoutEnabled waits for ever on a FalkorDB that stopped
// answering, whatever the context says.
type Graph struct {
	rdb  redis.UniversalClient
	name string
	opts options

	// names resolves the label, relationship type and property key ids of
	// compact replies; see schemaNames.
	names schemaNames
}

type options struct {
	timeout time.Duration
}

// Option configures a Graph (as its default) or a single query.
type Option func(*options)

// Timeout makes the server abort a query that runs longer than d (the
// TIMEOUT argument, in milliseconds, rounded up). It always applies to
// read-only queries; writes honour it only when the server is configured
// with TIMEOUT_MAX or TIMEOUT_DEFAULT, and are then rolled back. The server
// checks the time between records, so one expensive expression (such as
// range(1, 100000000)) is not interrupted. Zero means the server's default.
func Timeout(d time.Duration) Option {
	return func(o *options) { o.timeout = d }
}

// New returns the graph name on the server rdb talks to. The graph itself
// is created by the first write.
func New(rdb redis.UniversalClient, name string, opts ...Option) *Graph {
	g := &Graph{rdb: rdb, name: name}
	for _, o := range opts {
		o(&g.opts)
	}
	return g
}

// Name is the graph's key on the server.
func (g *Graph) Name() string { return g.name }

// Query runs a read-write Cypher query (GRAPH.QUERY).
//
// params are bound to $name placeholders. Names are letters, digits and _.
// Values may be nil, bool, string (any text but NUL), integers (up to
// MaxInt64), finite floats, slices and arrays of values (lists) and maps
// with string keys (Cypher maps; keys may not contain a back-quote), and
// named types of those kinds. Other types are an error rather than a guess:
// time.Time and time.Duration in particular (FalkorDB has no datetime; pass
// unix milliseconds).
func (g *Graph) Query(ctx context.Context, cypher string, params map[string]any, opts ...Option) (*Result, error) {
	return g.query(ctx, "GRAPH.QUERY", cypher, params, opts)
}

// ROQuery runs a read-only query (GRAPH.RO_QUERY): the server refuses any
// write in it. A read-only query on a graph that does not exist yet fails
// with [ErrNoGraph].
func (g *Graph) ROQuery(ctx context.Context, cypher string, params map[string]any, opts ...Option) (*Result, error) {
	return g.query(ctx, "GRAPH.RO_QUERY", cypher, params, opts)
}

func (g *Graph) query(ctx context.Context, cmd, cypher string, params map[string]any, opts []Option) (*Result, error) {
	o := g.opts
	for _, opt := range opts {
		opt(&o)
	}
	q, err := withParams(cypher, params)
	if err != nil {
		return nil, fmt.Errorf("graph %s: %w", g.name, err)
	}
	args := []any{cmd, g.name, q, "--compact"}
	if o.timeout > 0 {
		ms := int64(math.Ceil(float64(o.timeout) / float64(time.Millisecond)))
		args = append(args, "TIMEOUT", ms)
	}
	reply, err := g.do(ctx, cypher, args...)
	if err != nil {
		return nil, err
	}
	res, err := g.decodeReply(ctx, reply)
	if err != nil {
		var gerr *Error
		if errors.As(err, &gerr) {
			gerr.Query = cypher
			return nil, gerr
		}
		return nil, fmt.Errorf("graph %s: decoding the reply to %s: %w", g.name, cmd, err)
	}
	return res, nil
}

// do sends one command, turning error replies into *Error and wrapping
// transport errors.
func (g *Graph) do(ctx context.Context, cypher string, args ...any) (any, error) {
	reply, err := g.rdb.Do(ctx, args...).Result()
	if err != nil {
		var rerr redis.Error
		if errors.As(err, &rerr) && !errors.Is(err, redis.Nil) {
			return nil, &Error{Graph: g.name, Query: cypher, Msg: rerr.Error()}
		}
		if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) && !errors.Is(err, context.DeadlineExceeded) {
			// The deadline cut the read (the socket's deadline is the
			// context's, and can fire before the context's own timer):
			// say so, so that callers see a timeout, not a socket error.
			return nil, fmt.Errorf("graph %s: %s: %w: %w", g.name, args[0], context.DeadlineExceeded, err)
		}
		return nil, fmt.Errorf("graph %s: %s: %w", g.name, args[0], err)
	}
	return reply, nil
}

// Delete removes the graph and everything in it (GRAPH.DELETE). Deleting a
// graph that does not exist is not an error.
func (g *Graph) Delete(ctx context.Context) error {
	_, err := g.do(ctx, "", "GRAPH.DELETE", g.name)
	g.names.reset() // ids are reused by whatever graph takes the name next
	var gerr *Error
	if errors.As(err, &gerr) && errors.Is(gerr, ErrNoGraph) {
		return nil
	}
	return err
}

// schemaNames caches the graph's labels, relationship types and property
// keys by id. Compact replies name them by id to stay small; the ids are
// append-only while the graph exists, so a miss means "new since the last
// look" and triggers a refresh of that one list.
type schemaNames struct {
	mu    sync.Mutex
	lists [3][]string // indexed by nameKind
}

type nameKind int

const (
	labelNames nameKind = iota
	relTypeNames
	propKeyNames
)

var nameProcedures = [...]string{
	labelNames:   "CALL db.labels()",
	relTypeNames: "CALL db.relationshipTypes()",
	propKeyNames: "CALL db.propertyKeys()",
}

func (s *schemaNames) get(kind nameKind, id int64) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.lists[kind]
	if id < 0 || id >= int64(len(l)) {
		return "", false
	}
	return l[id], true
}

func (s *schemaNames) set(kind nameKind, names []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(names) > len(s.lists[kind]) {
		s.lists[kind] = names
	}
}

func (s *schemaNames) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lists = [3][]string{}
}

// schemaName resolves an id of a compact reply, refreshing the cache once
// on a miss.
func (g *Graph) schemaName(ctx context.Context, kind nameKind, id int64) (string, error) {
	if name, ok := g.names.get(kind, id); ok {
		return name, nil
	}
	reply, err := g.do(ctx, nameProcedures[kind], "GRAPH.RO_QUERY", g.name, nameProcedures[kind], "--compact")
	if err != nil {
		return "", err
	}
	res, err := g.decodeReply(ctx, reply)
	if err != nil {
		return "", err
	}
	names := make([]string, len(res.Rows))
	for i, row := range res.Rows {
		if len(row) != 1 {
			return "", fmt.Errorf("%s: row %v", nameProcedures[kind], row)
		}
		if names[i], err = AsString(row[0]); err != nil {
			return "", fmt.Errorf("%s: %w", nameProcedures[kind], err)
		}
	}
	g.names.set(kind, names)
	if name, ok := g.names.get(kind, id); ok {
		return name, nil
	}
	return "", fmt.Errorf("%s has no id %d", nameProcedures[kind], id)
}
