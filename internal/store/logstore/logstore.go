// Package logstore is the stargazer_logs retrieval store: journal lines
// grouped into chunks, each stored with its embedding so logs can be
// searched by meaning for diagnostics, plus the per-node journal cursor of
// the ingestion.
//
// Everything is plain Redis (hashes and a sorted set); the chunk hashes are
// laid out so a RediSearch index can be put over them where Redis Stack is
// available (see docs/data-model.md), which plain redis-server is not.
package logstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/store/msgcache"
)

// Redis keys (see docs/data-model.md, "Log RAG store").
const (
	// IndexKey is a sorted set of chunk ids, score = the chunk's first
	// line's time (ms).
	IndexKey = "stargazer_logs:index"
	// chunkPrefix + id is a chunk's hash.
	chunkPrefix = "stargazer_logs:chunk:"
	// cursorPrefix + host + ":" + unit is the ingestion cursor of one
	// node's journal.
	cursorPrefix = "stargazer_logs:cursor:"
)

// Chunk bounds: small enough that one chunk is one focused search hit and
// far below any embedding model's input limit.
const (
	MaxChunkLines = 50
	MaxChunkBytes = 2048
	// maxMessageBytes truncates one message so a chunk always fits a line.
	maxMessageBytes = 1800
)

// ChunkKey is the Redis key of a chunk.
func ChunkKey(id string) string { return chunkPrefix + id }

// CursorKey is the Redis key of the cursor of unit's journal on host.
func CursorKey(host, unit string) string { return cursorPrefix + host + ":" + unit }

// Line is one journal line to store.
type Line struct {
	Cursor   string
	Time     time.Time
	Priority int
	Message  string
}

// Chunk is consecutive lines of one unit's journal on one host.
type Chunk struct {
	// ID is derived from the first line's cursor and the text, so the same
	// lines always make the same chunk and storing it twice is a no-op.
	ID          string
	Text        string
	Host, Unit  string
	Start, End  time.Time
	Priority    int // the most severe (lowest) syslog level in the chunk
	Lines       int
	FirstCursor string
	LastCursor  string
}

var priorityNames = [8]string{"emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"}

func formatLine(l Line) string {
	p := "info"
	if l.Priority >= 0 && l.Priority < len(priorityNames) {
		p = priorityNames[l.Priority]
	}
	msg := l.Message
	if len(msg) > maxMessageBytes {
		cut := maxMessageBytes
		for cut > 0 && !utf8.RuneStart(msg[cut]) {
			cut--
		}
		msg = msg[:cut] + "…"
	}
	return l.Time.UTC().Format("2006-01-02T15:04:05.000Z") + " " + p + " " + msg + "\n"
}

// Chunks groups lines, in order, into chunks of at most MaxChunkLines lines
// and MaxChunkBytes bytes of text. The grouping depends only on the lines,
// so a batch read again from the same cursor makes the same chunks.
func Chunks(lines []Line, host, unit string) []Chunk {
	var out []Chunk
	var cur *Chunk
	var text strings.Builder
	flush := func() {
		if cur == nil {
			return
		}
		cur.Text = text.String()
		sum := sha256.Sum256([]byte(cur.FirstCursor + "\n" + cur.Text))
		cur.ID = hex.EncodeToString(sum[:16])
		out = append(out, *cur)
		cur = nil
		text.Reset()
	}
	for _, l := range lines {
		s := formatLine(l)
		if cur != nil && (cur.Lines >= MaxChunkLines || text.Len()+len(s) > MaxChunkBytes) {
			flush()
		}
		if cur == nil {
			cur = &Chunk{Host: host, Unit: unit, Start: l.Time, FirstCursor: l.Cursor, Priority: l.Priority}
		}
		text.WriteString(s)
		cur.Lines++
		cur.End = l.Time
		cur.LastCursor = l.Cursor
		cur.Priority = min(cur.Priority, l.Priority)
	}
	flush()
	return out
}

// Store is the log store in Redis.
type Store struct {
	rdb redis.UniversalClient
}

// New returns the store in rdb.
func New(rdb redis.UniversalClient) *Store { return &Store{rdb: rdb} }

// Exists reports, per id, whether the chunk is stored (with its embedding:
// a chunk is only ever written whole).
func (s *Store) Exists(ctx context.Context, ids []string) ([]bool, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	cmds := make([]*redis.IntCmd, len(ids))
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			cmds[i] = p.Exists(ctx, ChunkKey(id))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("logstore: checking chunks: %w", err)
	}
	out := make([]bool, len(ids))
	for i, c := range cmds {
		out[i] = c.Val() == 1
	}
	return out, nil
}

// Put stores chunks with their embeddings (vecs[i] is chunks[i]'s), each
// hash and its index entry in one transaction.
func (s *Store) Put(ctx context.Context, chunks []Chunk, vecs [][]float32, model string, now time.Time) error {
	if len(vecs) != len(chunks) {
		return fmt.Errorf("logstore: %d embeddings for %d chunks", len(vecs), len(chunks))
	}
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		for i, c := range chunks {
			p.HSet(ctx, ChunkKey(c.ID),
				"text", c.Text,
				"host", c.Host,
				"unit", c.Unit,
				"start_ts", c.Start.UnixMilli(),
				"end_ts", c.End.UnixMilli(),
				"priority", c.Priority,
				"lines", c.Lines,
				"first_cursor", c.FirstCursor,
				"last_cursor", c.LastCursor,
				"embedding", msgcache.EncodeVector(vecs[i]),
				"model", model,
				"created_at", now.UnixMilli())
			p.ZAdd(ctx, IndexKey, redis.Z{Score: float64(c.Start.UnixMilli()), Member: c.ID})
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("logstore: storing %d chunks: %w", len(chunks), err)
	}
	return nil
}

// Get reads a stored chunk and its embedding; ok is false when absent.
func (s *Store) Get(ctx context.Context, id string) (c Chunk, vec []float32, model string, ok bool, err error) {
	m, err := s.rdb.HGetAll(ctx, ChunkKey(id)).Result()
	if err != nil {
		return Chunk{}, nil, "", false, fmt.Errorf("logstore: reading chunk %s: %w", id, err)
	}
	if len(m) == 0 {
		return Chunk{}, nil, "", false, nil
	}
	prio, _ := strconv.Atoi(m["priority"])
	lines, _ := strconv.Atoi(m["lines"])
	c = Chunk{
		ID: id, Text: m["text"], Host: m["host"], Unit: m["unit"],
		Start: msTime(m["start_ts"]), End: msTime(m["end_ts"]), Priority: prio, Lines: lines,
		FirstCursor: m["first_cursor"], LastCursor: m["last_cursor"],
	}
	return c, msgcache.DecodeVector([]byte(m["embedding"])), m["model"], true, nil
}

// Prune deletes up to limit chunks whose first line is older than before,
// and returns how many it deleted.
func (s *Store) Prune(ctx context.Context, before time.Time, limit int64) (int, error) {
	ids, err := s.rdb.ZRangeByScore(ctx, IndexKey, &redis.ZRangeBy{
		Min: "-inf", Max: "(" + strconv.FormatInt(before.UnixMilli(), 10), Count: limit,
	}).Result()
	if err != nil || len(ids) == 0 {
		if err != nil {
			err = fmt.Errorf("logstore: listing old chunks: %w", err)
		}
		return 0, err
	}
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		members := make([]any, len(ids))
		for i, id := range ids {
			members[i] = id
			p.Del(ctx, ChunkKey(id))
		}
		p.ZRem(ctx, IndexKey, members...)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("logstore: pruning chunks: %w", err)
	}
	return len(ids), nil
}

// Cursor is where the ingestion of one node's journal stands.
type Cursor struct {
	// After is the cursor of the last journal entry ingested ("" before the
	// first complete run).
	After string
	// Since is where the first run started reading, fixed when it began so
	// a retried first run reads the same lines.
	Since time.Time
	// PendingEnd is the last entry of a run that started storing but has
	// not finished: a retry reads up to exactly it, so it rebuilds the same
	// chunks.
	PendingEnd string
}

// Cursor reads the ingestion state of unit's journal on host.
func (s *Store) Cursor(ctx context.Context, host, unit string) (Cursor, error) {
	m, err := s.rdb.HGetAll(ctx, CursorKey(host, unit)).Result()
	if err != nil {
		return Cursor{}, fmt.Errorf("logstore: reading cursor: %w", err)
	}
	return Cursor{After: m["cursor"], Since: msTime(m["since"]), PendingEnd: m["pending_end"]}, nil
}

// StartAt fixes where the first run reads from, unless already fixed, and
// returns the fixed time.
func (s *Store) StartAt(ctx context.Context, host, unit string, since time.Time) (time.Time, error) {
	k := CursorKey(host, unit)
	if err := s.rdb.HSetNX(ctx, k, "since", since.UnixMilli()).Err(); err != nil {
		return time.Time{}, fmt.Errorf("logstore: fixing start: %w", err)
	}
	v, err := s.rdb.HGet(ctx, k, "since").Result()
	if err != nil {
		return time.Time{}, fmt.Errorf("logstore: reading start: %w", err)
	}
	return msTime(v), nil
}

// Begin records the last entry of a run about to store its chunks.
func (s *Store) Begin(ctx context.Context, host, unit, end string) error {
	if err := s.rdb.HSet(ctx, CursorKey(host, unit), "pending_end", end).Err(); err != nil {
		return fmt.Errorf("logstore: recording pending end: %w", err)
	}
	return nil
}

// Advance moves the cursor to after and clears the pending run: called only
// once every chunk up to after is stored.
func (s *Store) Advance(ctx context.Context, host, unit, after string, now time.Time) error {
	k := CursorKey(host, unit)
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, k, "cursor", after, "updated_at", now.UnixMilli())
		p.HDel(ctx, k, "pending_end")
		return nil
	})
	if err != nil {
		return fmt.Errorf("logstore: advancing cursor: %w", err)
	}
	return nil
}

func msTime(s string) time.Time {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return time.Time{}
	}
	return time.UnixMilli(n).UTC()
}
