// Package ragstore reads the Spiral Goddess RAG fragment store: the corpus
// of lore fragments the bot curates in Redis (docs/data-model.md, "RAG
// fragment store"), which anamnesis_digest folds into the knowledge graph
// in corpus order behind a cursor.
//
// The store is append-only: fragment IDs are pushed to the end of one list,
// so a fragment's index never changes and an index is a cursor. A fragment
// is retired by deleting its hash; its list entry stays (and reads as an
// empty fragment) so later indexes do not shift.
package ragstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Keys of the store.
const (
	// FragmentsKey is the list of fragment IDs in corpus order.
	FragmentsKey = "sg:rag:fragments"
	// FragmentKeyPrefix + ID is a fragment's hash: text, source, title,
	// created_at (Unix ms).
	FragmentKeyPrefix = "sg:rag:fragment:"
)

// Fragment is one entry of the corpus.
type Fragment struct {
	// Index is its place in the corpus (0-based).
	Index int64
	ID    string
	// Text is empty when the hash is gone (a retired fragment).
	Text string
	// Source is where the lore comes from (a book, a page, a log).
	Source string
	Title  string
	// Created is zero when unknown.
	Created time.Time
}

// Key is the fragment's hash key: unique across every source of text, so
// it is also its ID in the extraction ledger.
func (f Fragment) Key() string { return FragmentKeyPrefix + f.ID }

// Store is the fragment store in one Redis.
type Store struct {
	rdb redis.UniversalClient
	// cursors holds the readers' cursors: the job system's Redis, which
	// with QUEUE_REDIS_URL is not the fragments' (the bot's).
	cursors redis.UniversalClient
}

// New returns the store on rdb, its cursors there too.
func New(rdb redis.UniversalClient) *Store { return &Store{rdb: rdb, cursors: rdb} }

// WithCursors returns the store with its cursors on cursors.
func (s *Store) WithCursors(cursors redis.UniversalClient) *Store {
	return &Store{rdb: s.rdb, cursors: cursors}
}

// Len is the number of fragments in the corpus.
func (s *Store) Len(ctx context.Context) (int64, error) {
	n, err := s.rdb.LLen(ctx, FragmentsKey).Result()
	if err != nil {
		return 0, fmt.Errorf("ragstore: counting fragments: %w", err)
	}
	return n, nil
}

// Range reads up to n fragments from index from, in corpus order.
func (s *Store) Range(ctx context.Context, from int64, n int) ([]Fragment, error) {
	if n <= 0 || from < 0 {
		return nil, nil
	}
	ids, err := s.rdb.LRange(ctx, FragmentsKey, from, from+int64(n)-1).Result()
	if err != nil {
		return nil, fmt.Errorf("ragstore: fragments from %d: %w", from, err)
	}
	if len(ids) == 0 {
		return nil, nil
	}
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.SliceCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.HMGet(ctx, FragmentKeyPrefix+id, "text", "source", "title", "created_at")
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("ragstore: reading fragments from %d: %w", from, err)
	}
	out := make([]Fragment, len(ids))
	for i, id := range ids {
		v := cmds[i].Val()
		f := Fragment{Index: from + int64(i), ID: id}
		f.Text, _ = v[0].(string)
		f.Source, _ = v[1].(string)
		f.Title, _ = v[2].(string)
		if ms, err := strconv.ParseInt(str(v[3]), 10, 64); err == nil && ms > 0 {
			f.Created = time.UnixMilli(ms)
		}
		out[i] = f
	}
	return out, nil
}

// Append adds a fragment at the end of the corpus (the bot's write; here
// for tools and tests). It refuses an ID already stored.
func (s *Store) Append(ctx context.Context, f Fragment) (int64, error) {
	if f.ID == "" {
		return 0, errors.New("ragstore: a fragment needs an ID")
	}
	var created any = ""
	if !f.Created.IsZero() {
		created = f.Created.UnixMilli()
	}
	idx, err := appendScript.Run(ctx, s.rdb, []string{FragmentsKey, f.Key()},
		f.ID, f.Text, f.Source, f.Title, created).Int64()
	if err != nil {
		return 0, fmt.Errorf("ragstore: appending fragment %s: %w", f.ID, err)
	}
	if idx < 0 {
		return 0, fmt.Errorf("ragstore: fragment %s is already stored", f.ID)
	}
	return idx, nil
}

var appendScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
redis.call('HSET', KEYS[2], 'text', ARGV[2], 'source', ARGV[3], 'title', ARGV[4], 'created_at', ARGV[5])
return redis.call('RPUSH', KEYS[1], ARGV[1]) - 1
`)

// Cursor reads an index cursor stored at key (0 when none).
func (s *Store) Cursor(ctx context.Context, key string) (int64, error) {
	v, err := s.cursors.Get(ctx, key).Int64()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("ragstore: reading cursor %s: %w", key, err)
	}
	return v, nil
}

// moveScript sets the cursor only if it still holds the value read.
var moveScript = redis.NewScript(`
if (redis.call('GET', KEYS[1]) or '0') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
`)

// MoveCursor moves the cursor at key from from to to if no one moved it
// meanwhile (compare-and-set), and reports whether it did: of two runs that
// read the same cursor, the slower cannot move it back.
func (s *Store) MoveCursor(ctx context.Context, key string, from, to int64) (bool, error) {
	n, err := moveScript.Run(ctx, s.cursors, []string{key}, from, to).Int()
	if err != nil {
		return false, fmt.Errorf("ragstore: moving cursor %s: %w", key, err)
	}
	return n == 1, nil
}

func str(v any) string {
	s, _ := v.(string)
	return s
}

// startScript sets an absent cursor to the store's length, in one step:
// a fragment appended meanwhile is after it.
var startScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v then return {v, 0} end
local n = redis.call('LLEN', KEYS[2])
redis.call('SET', KEYS[1], n)
return {tostring(n), 1}
`)

// StartAtEnd sets the cursor at key to the end of the corpus if it has
// none, and returns the cursor and whether this call set it: a reader
// taking over from another (the Python side, after a cut-over) starts with
// what is appended from now on instead of the whole corpus.
func (s *Store) StartAtEnd(ctx context.Context, key string) (int64, bool, error) {
	if s.cursors != s.rdb {
		return s.startApart(ctx, key)
	}
	res, err := startScript.Run(ctx, s.rdb, []string{key, FragmentsKey}).Slice()
	if err != nil {
		return 0, false, fmt.Errorf("ragstore: starting cursor %s at the end: %w", key, err)
	}
	if len(res) != 2 {
		return 0, false, fmt.Errorf("ragstore: starting cursor %s at the end: %d values from the script", key, len(res))
	}
	v, err := strconv.ParseInt(str(res[0]), 10, 64)
	if err != nil {
		return 0, false, fmt.Errorf("ragstore: cursor %s is %q: %w", key, res[0], err)
	}
	started, _ := res[1].(int64)
	return v, started == 1, nil
}

// startApart is StartAtEnd with the cursor on another Redis than the
// fragments: the end is read first, then set unless a cursor exists. The
// cursor is still set once; a fragment appended between the two is
// digested, as one appended just after the script would be.
func (s *Store) startApart(ctx context.Context, key string) (int64, bool, error) {
	n, err := s.rdb.LLen(ctx, FragmentsKey).Result()
	if err != nil {
		return 0, false, fmt.Errorf("ragstore: starting cursor %s at the end: %w", key, err)
	}
	set, err := s.cursors.SetNX(ctx, key, n, 0).Result()
	if err != nil {
		return 0, false, fmt.Errorf("ragstore: starting cursor %s at the end: %w", key, err)
	}
	if set {
		return n, true, nil
	}
	v, err := s.Cursor(ctx, key)
	return v, false, err
}
