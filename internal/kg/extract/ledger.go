package extract

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/kg/writelock"
)

// Keys of the extraction ledger in Redis (docs/data-model.md, "Knowledge
// extraction"). Fragment IDs are unique across sources, so one set of keys
// serves every task that extracts.
const (
	// DoneKey: sorted set of extracted fragment IDs, score = when (ms).
	DoneKey = "sgjobs:kgx:done"
	// ClaimsKey: hash fragment ID -> "<batch>|<expires ms>|<c or a>" while
	// a batch holds it: c = claimed, asking the LLM; a = answered, the
	// answer is stored under BatchKeyPrefix+<batch> and being written.
	ClaimsKey = "sgjobs:kgx:claims"
	// FailuresKey: hash fragment ID -> bad answers of batches it was in.
	FailuresKey = "sgjobs:kgx:failures"
	// PoisonedKey: sorted set of fragment IDs given up on, score = when.
	PoisonedKey = "sgjobs:kgx:poisoned"
	// BatchKeyPrefix + batch ID: the validated answer of a batch being
	// written (JSON), kept until the write is committed, so a crashed
	// write is finished from it instead of asking the LLM again.
	BatchKeyPrefix = "sgjobs:kgx:batch:"
	// poisonedKept bounds PoisonedKey to the newest entries.
	poisonedKept = 10_000
	// statusChunk bounds the IDs per ZMSCORE/HMGET.
	statusChunk = 1000
)

// claim is a fragment's entry in ClaimsKey.
type claim struct {
	batch    string
	expires  int64 // ms
	answered bool
}

func parseClaim(v string) (claim, bool) {
	parts := strings.Split(v, "|")
	if len(parts) != 3 {
		return claim{}, false
	}
	exp, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil {
		return claim{}, false
	}
	return claim{batch: parts[0], expires: exp, answered: parts[2] == "a"}, true
}

// status is what the ledger knows of a fragment.
type status struct {
	done     bool
	claim    claim // zero batch: unclaimed
	failures int
}

// intent is a batch's validated answer, stored before the graph write.
type intent struct {
	Fragments     []string    `json:"fragments"`
	Entities      []entityRow `json:"entities"`
	Relationships []relRow    `json:"relationships"`
	Created       int64       `json:"created"`
}

type ledger struct {
	rdb redis.UniversalClient
}

// status reads the ledger entries of ids.
func (l ledger) status(ctx context.Context, ids []string) ([]status, error) {
	out := make([]status, len(ids))
	for lo := 0; lo < len(ids); lo += statusChunk {
		chunk := ids[lo:min(lo+statusChunk, len(ids))]
		pipe := l.rdb.Pipeline()
		done := pipe.ZMScore(ctx, DoneKey, chunk...)
		claims := pipe.HMGet(ctx, ClaimsKey, chunk...)
		fails := pipe.HMGet(ctx, FailuresKey, chunk...)
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return nil, fmt.Errorf("extract: reading the ledger: %w", err)
		}
		for i := range chunk {
			s := &out[lo+i]
			s.done = done.Val()[i] != 0
			if v, ok := claims.Val()[i].(string); ok {
				s.claim, _ = parseClaim(v)
			}
			if v, ok := fails.Val()[i].(string); ok {
				s.failures, _ = strconv.Atoi(v)
			}
		}
	}
	return out, nil
}

// Claim outcomes of claimScript.
const (
	claimed  = 1 // ours now
	wasDone  = 2 // extracted meanwhile
	busy     = 3 // another batch holds it
	answered = 4 // another batch's answer awaits its write (recover it)
)

// claimScript takes the fragments for a batch. A claim can be taken over
// once it has expired, unless its batch was answered: that answer is
// written by whoever recovers it, never re-asked (two answers of the same
// fragments would both count).
var claimScript = redis.NewScript(`
-- KEYS[1] done, KEYS[2] claims; ARGV[1] batch, ARGV[2] now ms, ARGV[3] expires ms, ARGV[4..] ids
local prefix = ARGV[1] .. '|'
local now = tonumber(ARGV[2])
local out = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  if redis.call('ZSCORE', KEYS[1], id) then
    out[#out + 1] = 2
  else
    local code = 1
    local c = redis.call('HGET', KEYS[2], id)
    if c and string.sub(c, 1, #prefix) ~= prefix then
      local _, _, exp, state = string.find(c, '|(%d+)|(%a)$')
      if state == 'a' then
        code = 4
      elseif exp and tonumber(exp) > now then
        code = 3
      end
    end
    if code == 1 then
      redis.call('HSET', KEYS[2], id, prefix .. ARGV[3] .. '|c')
    end
    out[#out + 1] = code
  end
end
return out
`)

func (l ledger) claim(ctx context.Context, batch string, ids []string, now, expires time.Time) ([]int64, error) {
	args := append([]any{batch, now.UnixMilli(), expires.UnixMilli()}, anys(ids)...)
	res, err := claimScript.Run(ctx, l.rdb, []string{DoneKey, ClaimsKey}, args...).Int64Slice()
	if err != nil {
		return nil, fmt.Errorf("extract: claiming %d fragment(s): %w", len(ids), err)
	}
	return res, nil
}

// storeScript stores a batch's answer and marks its claims answered, only
// if the batch still holds every claim and none of its fragments was
// extracted meanwhile: a batch that lost a claim (it took longer than
// ClaimTTL and another took the fragments over) must not write.
var storeScript = redis.NewScript(`
-- KEYS[1] done, KEYS[2] claims, KEYS[3] batch answer; ARGV[1] batch, ARGV[2] expires ms, ARGV[3] answer, ARGV[4] ttl ms, ARGV[5..] ids
local prefix = ARGV[1] .. '|'
for i = 5, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then return 0 end
  local c = redis.call('HGET', KEYS[2], ARGV[i])
  if not c or string.sub(c, 1, #prefix) ~= prefix then return 0 end
end
redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
for i = 5, #ARGV do
  redis.call('HSET', KEYS[2], ARGV[i], prefix .. ARGV[2] .. '|a')
end
return 1
`)

func (l ledger) store(ctx context.Context, batch string, in intent, expires time.Time, ttl time.Duration) (bool, error) {
	b, err := json.Marshal(in)
	if err != nil {
		return false, fmt.Errorf("extract: encoding batch %s: %w", batch, err)
	}
	args := append([]any{batch, expires.UnixMilli(), b, ttl.Milliseconds()}, anys(in.Fragments)...)
	n, err := storeScript.Run(ctx, l.rdb, []string{DoneKey, ClaimsKey, BatchKeyPrefix + batch}, args...).Int()
	if err != nil {
		return false, fmt.Errorf("extract: storing batch %s: %w", batch, err)
	}
	return n == 1, nil
}

// load reads a stored answer; ok is false when it is gone.
func (l ledger) load(ctx context.Context, batch string) (in intent, ok bool, err error) {
	b, err := l.rdb.Get(ctx, BatchKeyPrefix+batch).Bytes()
	if errors.Is(err, redis.Nil) {
		return intent{}, false, nil
	}
	if err != nil {
		return intent{}, false, fmt.Errorf("extract: reading batch %s: %w", batch, err)
	}
	if err := json.Unmarshal(b, &in); err != nil {
		return intent{}, false, fmt.Errorf("extract: batch %s: %w", batch, err)
	}
	return in, true, nil
}

// commitScript records a written batch: its fragments are done, its claims
// and failure counts go, its answer is deleted. Done entries older than the
// retention are trimmed on the way.
var commitScript = redis.NewScript(`
-- KEYS[1] done, KEYS[2] claims, KEYS[3] failures, KEYS[4] batch answer; ARGV[1] batch, ARGV[2] now ms, ARGV[3] trim before ms, ARGV[4..] ids
local prefix = ARGV[1] .. '|'
for i = 4, #ARGV do
  local id = ARGV[i]
  redis.call('ZADD', KEYS[1], 'NX', ARGV[2], id)
  local c = redis.call('HGET', KEYS[2], id)
  if c and string.sub(c, 1, #prefix) == prefix then redis.call('HDEL', KEYS[2], id) end
  redis.call('HDEL', KEYS[3], id)
end
redis.call('DEL', KEYS[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
return 1
`)

func (l ledger) commit(ctx context.Context, batch string, ids []string, now, trimBefore time.Time) error {
	args := append([]any{batch, now.UnixMilli(), trimBefore.UnixMilli()}, anys(ids)...)
	err := commitScript.Run(ctx, l.rdb, []string{DoneKey, ClaimsKey, FailuresKey, BatchKeyPrefix + batch}, args...).Err()
	if err != nil {
		return fmt.Errorf("extract: committing batch %s: %w", batch, err)
	}
	return nil
}

// releaseScript gives up a batch's claims before anything was stored. For
// a bad answer it counts a failure against each fragment and poisons
// (records as done, without extraction) those that reached the limit.
var releaseScript = redis.NewScript(`
-- KEYS[1] done, KEYS[2] claims, KEYS[3] failures, KEYS[4] poisoned
-- ARGV[1] batch, ARGV[2] bad answer (1/0), ARGV[3] poison after, ARGV[4] now ms, ARGV[5] poisoned kept, ARGV[6..] ids
local prefix = ARGV[1] .. '|'
local poisoned = {}
for i = 6, #ARGV do
  local id = ARGV[i]
  local c = redis.call('HGET', KEYS[2], id)
  if c and string.sub(c, 1, #prefix) == prefix then
    redis.call('HDEL', KEYS[2], id)
    if ARGV[2] == '1' then
      local n = redis.call('HINCRBY', KEYS[3], id, 1)
      if n >= tonumber(ARGV[3]) then
        redis.call('ZADD', KEYS[1], 'NX', ARGV[4], id)
        redis.call('ZADD', KEYS[4], ARGV[4], id)
        redis.call('HDEL', KEYS[3], id)
        poisoned[#poisoned + 1] = id
      end
    end
  end
end
if #poisoned > 0 then
  redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -tonumber(ARGV[5]) - 1)
end
return poisoned
`)

func (l ledger) release(ctx context.Context, batch string, ids []string, bad bool, poisonAfter int, now time.Time) ([]string, error) {
	args := append([]any{batch, boolArg(bad), poisonAfter, now.UnixMilli(), poisonedKept}, anys(ids)...)
	res, err := releaseScript.Run(ctx, l.rdb, []string{DoneKey, ClaimsKey, FailuresKey, PoisonedKey}, args...).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("extract: releasing batch %s: %w", batch, err)
	}
	return res, nil
}

// expireScript makes a batch's claims due for recovery now (its write
// failed; the next run finishes it from the stored answer without waiting
// for ClaimTTL), or drops them (drop=1: the stored answer is gone, so the
// fragments are free again).
var expireScript = redis.NewScript(`
-- KEYS[1] claims; ARGV[1] batch, ARGV[2] drop (1/0), ARGV[3..] ids
local prefix = ARGV[1] .. '|'
for i = 3, #ARGV do
  local c = redis.call('HGET', KEYS[1], ARGV[i])
  if c and string.sub(c, 1, #prefix) == prefix then
    if ARGV[2] == '1' then
      redis.call('HDEL', KEYS[1], ARGV[i])
    else
      redis.call('HSET', KEYS[1], ARGV[i], prefix .. '0|a')
    end
  end
end
return 1
`)

func (l ledger) expire(ctx context.Context, batch string, ids []string, drop bool) error {
	args := append([]any{batch, boolArg(drop)}, anys(ids)...)
	if err := expireScript.Run(ctx, l.rdb, []string{ClaimsKey}, args...).Err(); err != nil {
		return fmt.Errorf("extract: expiring claims of batch %s: %w", batch, err)
	}
	return nil
}

// lockWrites waits for the graph write lock and returns its release and
// how long it waited.
func (l ledger) lockWrites(ctx context.Context, ttl time.Duration) (func(), time.Duration, error) {
	return writelock.Acquire(ctx, l.rdb, ttl)
}

func anys(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

func boolArg(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// Bounds of one claims sweep: HSCAN pages and entries per page.
const (
	sweepPages     = 10
	sweepPageCount = 500
)

// dropClaimScript deletes claims that still hold the value the sweep read
// (compare and delete: a claim taken or answered since is left alone).
var dropClaimScript = redis.NewScript(`
-- KEYS[1] claims; ARGV pairs of id, value
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n
`)

// sweepClaims deletes the claims of fragments that nobody will ask about
// again, so the claims hash stays the size of the batches in flight. A
// claim is normally removed by its batch's commit or release, or resolved
// by the next extraction touching one of its fragments; one whose batch
// died and whose fragments are never asked again (the message left the
// cache, a cursor was moved past it) would stay for ever. Dropped here,
// exactly as the engine would drop it on the next touch:
//
//   - a claim not answered whose lease ended more than stale ago (an
//     expired claim is free to take anyway: its batch can no longer store
//     an answer, since store needs every claim still held);
//   - an answered claim whose lease ended and whose stored answer is gone
//     (the recovery window passed): recoverExpired drops those too.
//
// It reads at most sweepPages pages of the hash; the next sweep goes on
// from the start, so a backlog of old claims shrinks over a few runs.
func (l ledger) sweepClaims(ctx context.Context, now time.Time, stale time.Duration) (int, error) {
	var drop []any
	gone := map[string]bool{} // batch -> its stored answer is gone
	var cursor uint64
	for range sweepPages {
		kv, next, err := l.rdb.HScan(ctx, ClaimsKey, cursor, "*", sweepPageCount).Result()
		if err != nil {
			return 0, fmt.Errorf("extract: scanning claims: %w", err)
		}
		for i := 0; i+1 < len(kv); i += 2 {
			c, ok := parseClaim(kv[i+1])
			switch {
			case !ok || c.expires > now.UnixMilli():
				continue // malformed ones are the claim script's to overwrite
			case !c.answered:
				if c.expires < now.Add(-stale).UnixMilli() {
					drop = append(drop, kv[i], kv[i+1])
				}
			default:
				g, seen := gone[c.batch]
				if !seen {
					n, err := l.rdb.Exists(ctx, BatchKeyPrefix+c.batch).Result()
					if err != nil {
						return 0, fmt.Errorf("extract: checking batch %s: %w", c.batch, err)
					}
					g = n == 0
					gone[c.batch] = g
				}
				if g {
					drop = append(drop, kv[i], kv[i+1])
				}
			}
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	if len(drop) == 0 {
		return 0, nil
	}
	n, err := dropClaimScript.Run(ctx, l.rdb, []string{ClaimsKey}, drop...).Int()
	if err != nil {
		return 0, fmt.Errorf("extract: dropping stale claims: %w", err)
	}
	return n, nil
}
