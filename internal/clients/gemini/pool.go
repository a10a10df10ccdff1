// Package gemini holds the shared Gemini API key pool: its state in Redis,
// which every process (the bot and the workers) reads to route around keys
// that hit their quota, and the prober that keeps that state current.
//
// Keys are known in Redis only by their fingerprint (Fingerprint): the key
// itself is never stored, logged or returned in an error.
package gemini

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis keys of the pool (see docs/data-model.md, "Gemini key pool").
const (
	// PoolKey is a sorted set: member = fingerprint, score = the time (ms)
	// until which the key must not be used: 0 for usable keys, the quota
	// reset for exhausted ones, +inf for invalid ones. "Usable now" is one
	// ZRANGEBYSCORE -inf now.
	PoolKey = "sg:gemini:pool"
	// keyPrefix + fingerprint is the hash of one key's state.
	keyPrefix = "sg:gemini:key:"
)

// Status is a key's state in the pool.
type Status string

// Key states.
const (
	// OK answered the last probe.
	OK Status = "ok"
	// Exhausted hit a quota; usable again at ExhaustedUntil.
	Exhausted Status = "exhausted"
	// Invalid was rejected as not a valid key (or not allowed to call the
	// API); unusable until a probe succeeds again.
	Invalid Status = "invalid"
	// Unknown has never answered a probe conclusively (every probe failed
	// on the network or the server); it is treated as usable.
	Unknown Status = "unknown"
)

// Fingerprint is how a key is known in Redis and logs: the first 8 hex
// digits of its SHA-256. It identifies a key among a handful without
// revealing it.
func Fingerprint(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:4])
}

// KeyKey is the Redis key of a key's state hash.
func KeyKey(fingerprint string) string { return keyPrefix + fingerprint }

// State is one key's state.
type State struct {
	Fingerprint string
	Status      Status
	// ExhaustedUntil is when an exhausted key's quota resets (zero otherwise).
	ExhaustedUntil time.Time
	// LastProbe is when the key was last probed.
	LastProbe time.Time
	// LastError is a short reason of the last failed probe, without the key.
	LastError string
}

// Usable reports whether the key may be used at now.
func (s State) Usable(now time.Time) bool {
	switch s.Status {
	case Invalid:
		return false
	case Exhausted:
		return !now.Before(s.ExhaustedUntil)
	}
	return true
}

// Pool is the pool state in Redis.
type Pool struct {
	rdb redis.UniversalClient
}

// NewPool returns the pool stored in rdb.
func NewPool(rdb redis.UniversalClient) *Pool { return &Pool{rdb: rdb} }

// score is a state's score in PoolKey: the first time it is usable.
func score(s State) float64 {
	switch s.Status {
	case Invalid:
		return math.Inf(1)
	case Exhausted:
		return float64(s.ExhaustedUntil.UnixMilli())
	}
	return 0
}

// Set records a conclusive probe (or live-call) outcome for a key: its
// status, until when it is exhausted, and the reason. The hash and its score
// in the pool change together.
func (p *Pool) Set(ctx context.Context, s State) error {
	until := int64(0)
	if s.Status == Exhausted {
		until = s.ExhaustedUntil.UnixMilli()
	}
	_, err := p.rdb.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
		pipe.HSet(ctx, KeyKey(s.Fingerprint),
			"status", string(s.Status),
			"exhausted_until", until,
			"last_probe", s.LastProbe.UnixMilli(),
			"last_error", s.LastError)
		pipe.ZAdd(ctx, PoolKey, redis.Z{Score: score(s), Member: s.Fingerprint})
		return nil
	})
	if err != nil {
		return fmt.Errorf("gemini pool: recording key %s: %w", s.Fingerprint, err)
	}
	return nil
}

// NoteFailure records a probe that said nothing about the key (network
// error, 5xx): the status stays as it was, so a flaky network never marks a
// key exhausted. A key seen for the first time joins the pool as Unknown,
// which is usable.
func (p *Pool) NoteFailure(ctx context.Context, fingerprint string, at time.Time, reason string) error {
	_, err := p.rdb.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
		k := KeyKey(fingerprint)
		pipe.HSetNX(ctx, k, "status", string(Unknown))
		pipe.HSetNX(ctx, k, "exhausted_until", 0)
		pipe.HSet(ctx, k, "last_probe", at.UnixMilli(), "last_error", reason)
		pipe.ZAddNX(ctx, PoolKey, redis.Z{Score: 0, Member: fingerprint})
		return nil
	})
	if err != nil {
		return fmt.Errorf("gemini pool: recording failed probe of key %s: %w", fingerprint, err)
	}
	return nil
}

// Get returns a key's state; ok is false when the pool does not know it.
func (p *Pool) Get(ctx context.Context, fingerprint string) (s State, ok bool, err error) {
	m, err := p.rdb.HGetAll(ctx, KeyKey(fingerprint)).Result()
	if err != nil {
		return State{}, false, fmt.Errorf("gemini pool: reading key %s: %w", fingerprint, err)
	}
	if len(m) == 0 {
		return State{Fingerprint: fingerprint}, false, nil
	}
	return State{
		Fingerprint:    fingerprint,
		Status:         Status(m["status"]),
		ExhaustedUntil: msTime(m["exhausted_until"]),
		LastProbe:      msTime(m["last_probe"]),
		LastError:      m["last_error"],
	}, true, nil
}

// Fingerprints lists every key in the pool.
func (p *Pool) Fingerprints(ctx context.Context) ([]string, error) {
	fps, err := p.rdb.ZRange(ctx, PoolKey, 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("gemini pool: listing keys: %w", err)
	}
	return fps, nil
}

// Remove drops keys from the pool (keys no longer configured).
func (p *Pool) Remove(ctx context.Context, fingerprints ...string) error {
	if len(fingerprints) == 0 {
		return nil
	}
	_, err := p.rdb.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
		members := make([]any, len(fingerprints))
		for i, fp := range fingerprints {
			members[i] = fp
			pipe.Del(ctx, KeyKey(fp))
		}
		pipe.ZRem(ctx, PoolKey, members...)
		return nil
	})
	if err != nil {
		return fmt.Errorf("gemini pool: removing keys: %w", err)
	}
	return nil
}

// Available returns the fingerprints of the pool's keys usable at now:
// never exhausted or invalid, or exhausted with the quota reset passed.
// Ordered by fingerprint. This is the bot's query: one ZRANGEBYSCORE.
func (p *Pool) Available(ctx context.Context, now time.Time) ([]string, error) {
	fps, err := p.rdb.ZRangeByScore(ctx, PoolKey, &redis.ZRangeBy{
		Min: "-inf", Max: strconv.FormatInt(now.UnixMilli(), 10),
	}).Result()
	if err != nil {
		return nil, fmt.Errorf("gemini pool: listing available keys: %w", err)
	}
	return fps, nil
}

// Usable filters keys (the real keys, held by the caller) to those usable
// at now, keeping their order. A key the pool has never seen is usable: the
// pool only ever subtracts keys known to be bad.
func (p *Pool) Usable(ctx context.Context, keys []string, now time.Time) ([]string, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	fps := make([]string, len(keys))
	for i, k := range keys {
		fps[i] = Fingerprint(k)
	}
	scores, err := p.rdb.ZMScore(ctx, PoolKey, fps...).Result()
	if err != nil {
		return nil, fmt.Errorf("gemini pool: reading key states: %w", err)
	}
	nowMS := float64(now.UnixMilli())
	var out []string
	for i, k := range keys {
		// ZMSCORE answers 0 for a missing member, which is "usable" too.
		if scores[i] <= nowMS {
			out = append(out, k)
		}
	}
	return out, nil
}

// ErrNoUsableKey means every key of the pool is exhausted or invalid.
var ErrNoUsableKey = errors.New("gemini pool: every key is exhausted or invalid")

// Pick returns one of keys usable at now, chosen at random to spread the
// load, or ErrNoUsableKey.
func (p *Pool) Pick(ctx context.Context, keys []string, now time.Time) (string, error) {
	usable, err := p.Usable(ctx, keys, now)
	if err != nil {
		return "", err
	}
	if len(usable) == 0 {
		return "", ErrNoUsableKey
	}
	return usable[rand.IntN(len(usable))], nil
}

func msTime(s string) time.Time {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return time.Time{}
	}
	return time.UnixMilli(n)
}
