// Package singleton keeps a singleton task to one running instance in the
// whole cluster and lets its handler check, right before a destructive step,
// that it is still the one.
//
// Two locks cooperate. At enqueue time asynq's Unique option refuses a second
// copy while one is queued or running (the caller gets ErrDuplicateTask).
// asynq keeps that lock after a failure, an archive or a crash until its TTL,
// so the worker releases it itself when a run ends for good
// (asynqcompat.ReleaseUnique).
// At run time this package holds a short lease, renewed while the handler
// runs: a dead worker's lease lapses within Lease, and a second instance that
// slipped past the enqueue lock (a different payload, an expired TTL) finds
// it held and stands down.
package singleton

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/queue/asynqcompat"
)

// KeyPrefix prefixes the run-lease key of each singleton task.
const KeyPrefix = "sgjobs:singleton:"

// DefaultLease is how long a run's lease lasts without renewal; it is
// renewed every third of it.
const DefaultLease = 30 * time.Second

// Errors.
var (
	// ErrHeld means another instance holds the task's lease.
	ErrHeld = errors.New("singleton is held by another instance")
	// ErrLost means this instance no longer holds its lease.
	ErrLost = errors.New("singleton lease lost")
)

// Locks acquires run leases.
type Locks struct {
	rdb   redis.UniversalClient
	lease time.Duration
	log   *slog.Logger
}

// NewLocks returns Locks over rdb; lease 0 means DefaultLease. log gets a
// line when a lease is taken or released (debug) and when one is lost
// (warn), with the lease's value, so the lease history of a task can be
// read from the logs; nil logs nothing.
func NewLocks(rdb redis.UniversalClient, lease time.Duration, log *slog.Logger) *Locks {
	if lease <= 0 {
		lease = DefaultLease
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Locks{rdb: rdb, lease: lease, log: log}
}

// Lease is a held run lease.
//
// Everything a lease takes is released by Release or by the end of the
// context given to Acquire, whichever comes first: the renewal goroutine
// stops, and the lease's context (Context) is cancelled.
type Lease struct {
	rdb    redis.UniversalClient
	log    *slog.Logger
	key    string
	value  string
	ttl    time.Duration
	ctx    context.Context
	cancel context.CancelCauseFunc

	mu   sync.Mutex
	lost error
	done chan struct{}
}

var acquireScript = redis.NewScript(`
-- KEYS[1] lease key; ARGV[1] our value (taskID|nonce); ARGV[2] task ID; ARGV[3] ttl ms
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
  return {1, ''}
end
-- The same task run again (a retry, or a requeue after shutdown) takes its
-- lease over; a straggler of the earlier attempt then fails Verify.
if string.sub(cur, 1, string.len(ARGV[2]) + 1) == ARGV[2] .. '|' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
  return {1, ''}
end
return {0, cur}
`)

var renewScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
`)

var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

// checkScript reads the holder and the time left in one round trip, so a
// failed call leaves nothing half-known.
var checkScript = redis.NewScript(`
return {redis.call('GET', KEYS[1]) or '', redis.call('PTTL', KEYS[1])}
`)

// errReleased is the cause of a lease context ended by Release.
var errReleased = errors.New("singleton lease released")

// Acquire takes the lease of task for the run with ID taskID and keeps it
// renewed until Release or until ctx ends. If another task holds it, the
// error wraps ErrHeld and names the holder.
func (l *Locks) Acquire(ctx context.Context, task, taskID string) (*Lease, error) {
	nonce := make([]byte, 8)
	_, _ = rand.Read(nonce)
	value := taskID + "|" + hex.EncodeToString(nonce)
	key := KeyPrefix + task
	res, err := acquireScript.Run(ctx, l.rdb, []string{key}, value, taskID, l.lease.Milliseconds()).Slice()
	if err != nil {
		return nil, fmt.Errorf("acquiring singleton lease of %s: %w", task, err)
	}
	if res[0].(int64) != 1 {
		holder, _, _ := strings.Cut(res[1].(string), "|")
		return nil, fmt.Errorf("%w: %s is running as task %s", ErrHeld, task, holder)
	}
	le := &Lease{rdb: l.rdb, key: key, value: value, ttl: l.lease, done: make(chan struct{}),
		log: l.log.With("task", task, "task_id", taskID, "lease", value)}
	le.ctx, le.cancel = context.WithCancelCause(ctx)
	go le.renew(time.Now())
	le.log.Debug("singleton lease taken", "ttl", l.lease.String())
	return le, nil
}

// Context is the context given to Acquire, cancelled as soon as the lease
// is known to be lost (its cause, context.Cause, wraps ErrLost and says
// how) or released. Run the work the lease protects under it.
func (le *Lease) Context() context.Context { return le.ctx }

// renew extends the lease every third of its TTL until the lease context
// ends. A renewal that finds the lease gone or taken marks it lost; so does
// a TTL without a successful renewal (Redis unreachable): by then the key
// has expired in Redis and another instance may hold it.
func (le *Lease) renew(lastOK time.Time) {
	defer close(le.done)
	t := time.NewTicker(le.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-le.ctx.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(le.ctx, le.ttl/3)
		n, err := renewScript.Run(ctx, le.rdb, []string{le.key}, le.value, le.ttl.Milliseconds()).Int()
		cancel()
		switch {
		case le.ctx.Err() != nil:
			return
		case err == nil && n == 0:
			le.setLost(fmt.Errorf("%w: %s was taken over or expired", ErrLost, le.key))
			return
		case err == nil:
			lastOK = time.Now()
		case time.Since(lastOK) >= le.ttl:
			le.setLost(fmt.Errorf("%w: %s not renewed for %v (%v): it has lapsed", ErrLost, le.key, le.ttl, err))
			return
		}
		// A failed renewal within the TTL is not yet a loss: the next one
		// may succeed, and Verify asks Redis itself before anything
		// destructive happens.
	}
}

// setLost records the first loss and cancels the lease context with it.
func (le *Lease) setLost(err error) {
	le.mu.Lock()
	first := le.lost == nil
	if first {
		le.lost = err
	}
	err = le.lost
	le.mu.Unlock()
	le.cancel(err)
	if first {
		le.log.Warn("singleton lease lost; the run is stopped", "error", err)
	}
}

func (le *Lease) lostErr() error {
	le.mu.Lock()
	defer le.mu.Unlock()
	return le.lost
}

// Verify reports whether this run still holds its lease with at least a
// third of it left (one missed renewal is tolerated, two are not), asking
// Redis, and whether ctx is still live. Call it right before a destructive
// step; on error, abort. A step that may take longer than a third of the
// lease uses VerifyFor with its own bound.
func (le *Lease) Verify(ctx context.Context) error { return le.VerifyFor(ctx, le.ttl/3) }

// VerifyFor is Verify requiring at least need of lease left.
//
// Errors wrap ErrLost. A lease found expired or held by another run is lost
// for good (and its context cancelled); a Redis error or too little time
// left is not: the step must not run now, but a later Verify may pass.
func (le *Lease) VerifyFor(ctx context.Context, need time.Duration) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: task context ended: %w", ErrLost, context.Cause(ctx))
	}
	if lost := le.lostErr(); lost != nil {
		return lost
	}
	res, err := checkScript.Run(ctx, le.rdb, []string{le.key}).Slice()
	if err != nil {
		return fmt.Errorf("%w: cannot confirm %s: %w", ErrLost, le.key, err)
	}
	cur, _ := res[0].(string)
	pttl, _ := res[1].(int64)
	left := time.Duration(pttl) * time.Millisecond
	switch {
	case cur == "":
		le.setLost(fmt.Errorf("%w: %s expired", ErrLost, le.key))
		return le.lostErr()
	case cur != le.value:
		holder, _, _ := strings.Cut(cur, "|")
		le.setLost(fmt.Errorf("%w: %s now held by task %s", ErrLost, le.key, holder))
		return le.lostErr()
	case pttl >= 0 && left < need:
		return fmt.Errorf("%w: %s has %v left, below the %v this step needs", ErrLost, le.key, left, need)
	}
	return nil
}

// Release stops renewal and deletes the lease if this run still holds it.
// It may be called more than once.
func (le *Lease) Release(ctx context.Context) error {
	le.cancel(errReleased)
	<-le.done
	n, err := releaseScript.Run(ctx, le.rdb, []string{le.key}, le.value).Int()
	if err != nil {
		return fmt.Errorf("releasing %s: %w", le.key, err)
	}
	le.log.Debug("singleton lease released", "held", n == 1)
	return nil
}

type ctxKey struct{}

// WithLease returns ctx carrying le for Verify.
func WithLease(ctx context.Context, le *Lease) context.Context {
	return context.WithValue(ctx, ctxKey{}, le)
}

// Verify is the one call a handler makes before a destructive step (merging
// or deleting graph nodes): it returns nil only if this run still holds its
// singleton lease, with at least a third of it left, and its task lease is
// live. A handler of a task that is not a singleton passes whenever its
// context is live.
func Verify(ctx context.Context) error {
	le, _ := ctx.Value(ctxKey{}).(*Lease)
	if le == nil {
		return live(ctx)
	}
	return le.Verify(ctx)
}

// VerifyFor is Verify for a step that needs more than a third of the lease
// (a long graph write): it requires need of lease left. A step longer than
// the lease itself can never pass; raise SINGLETON_LEASE or split it.
func VerifyFor(ctx context.Context, need time.Duration) error {
	le, _ := ctx.Value(ctxKey{}).(*Lease)
	if le == nil {
		return live(ctx)
	}
	return le.VerifyFor(ctx, need)
}

func live(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: task context ended: %w", ErrLost, context.Cause(ctx))
	}
	return nil
}

// Holder describes a held lock, for operators.
type Holder struct {
	Task   string
	Kind   string // "lease" (running) or "unique" (queued or running)
	TaskID string
	TTL    time.Duration
	Key    string
}

// List returns every singleton lease and every asynq unique lock of the
// given task names.
func List(ctx context.Context, rdb redis.UniversalClient, tasks map[string]string) ([]Holder, error) {
	var out []Holder
	for task, queue := range tasks {
		keys := []string{KeyPrefix + task}
		uk, err := scanKeys(ctx, rdb, asynqcompat.UniqueKeyPattern(queue, task))
		if err != nil {
			return nil, err
		}
		keys = append(keys, uk...)
		for _, k := range keys {
			v, err := rdb.Get(ctx, k).Result()
			if errors.Is(err, redis.Nil) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("reading %s: %w", k, err)
			}
			ttl, _ := rdb.PTTL(ctx, k).Result()
			kind := "unique"
			if strings.HasPrefix(k, KeyPrefix) {
				kind = "lease"
			}
			id, _, _ := strings.Cut(v, "|")
			out = append(out, Holder{Task: task, Kind: kind, TaskID: id, TTL: ttl, Key: k})
		}
	}
	return out, nil
}

func scanKeys(ctx context.Context, rdb redis.UniversalClient, pattern string) ([]string, error) {
	var keys []string
	iter := rdb.Scan(ctx, 0, pattern, 200).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		return nil, fmt.Errorf("scanning %s: %w", pattern, err)
	}
	return keys, nil
}

// ForceRelease deletes every lock of task (lease and unique locks): the
// operator's escape hatch. It returns how many keys it deleted.
func ForceRelease(ctx context.Context, rdb redis.UniversalClient, task, queue string) (int, error) {
	keys, err := scanKeys(ctx, rdb, asynqcompat.UniqueKeyPattern(queue, task))
	if err != nil {
		return 0, err
	}
	keys = append(keys, KeyPrefix+task)
	deleted := 0
	for _, k := range keys { // one by one: the keys live in different cluster slots
		n, err := rdb.Del(ctx, k).Result()
		if err != nil {
			return deleted, fmt.Errorf("deleting %s: %w", k, err)
		}
		deleted += int(n)
	}
	return deleted, nil
}
