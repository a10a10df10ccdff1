// Package singleton keeps a singleton task to one running instance in the
// whole cluster and lets its handler check, right before a destructive step,
// that it is still the one.
//
// Two locks cooperate. At enqueue time asynq's Unique option refuses a second
// copy while one is queued or running (the caller gets ErrDuplicateTask).
// asynq keeps that lock after a failure, an archive or a crash until its TTL,
// so the worker releases it itself when a run ends for good (ReleaseUnique).
// At run time this package holds a short lease, renewed while the handler
// runs: a dead worker's lease lapses within Lease, and a second instance that
// slipped past the enqueue lock (a different payload, an expired TTL) finds
// it held and stands down.
package singleton

import (
	"context"
	"crypto/md5"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
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
}

// NewLocks returns Locks over rdb; lease 0 means DefaultLease.
func NewLocks(rdb redis.UniversalClient, lease time.Duration) *Locks {
	if lease <= 0 {
		lease = DefaultLease
	}
	return &Locks{rdb: rdb, lease: lease}
}

// Lease is a held run lease.
type Lease struct {
	rdb   redis.UniversalClient
	key   string
	value string
	ttl   time.Duration

	mu   sync.Mutex
	lost error
	stop chan struct{}
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

// Acquire takes the lease of task for the run with ID taskID and keeps it
// renewed until Release. If another task holds it, the error wraps ErrHeld
// and names the holder.
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
	le := &Lease{rdb: l.rdb, key: key, value: value, ttl: l.lease, stop: make(chan struct{}), done: make(chan struct{})}
	go le.renew()
	return le, nil
}

func (le *Lease) renew() {
	defer close(le.done)
	t := time.NewTicker(le.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-le.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), le.ttl/3)
		n, err := renewScript.Run(ctx, le.rdb, []string{le.key}, le.value, le.ttl.Milliseconds()).Int()
		cancel()
		if err == nil && n == 0 {
			le.setLost(fmt.Errorf("%w: %s was taken over or expired", ErrLost, le.key))
			return
		}
		// A failed renewal (Redis unreachable) is not yet a loss: Verify
		// asks Redis itself before anything destructive happens.
	}
}

func (le *Lease) setLost(err error) {
	le.mu.Lock()
	defer le.mu.Unlock()
	if le.lost == nil {
		le.lost = err
	}
}

// Verify reports whether this run still holds its lease, asking Redis, and
// whether ctx (which asynq cancels when the task's own lease lapses) is
// still live. Call it right before a destructive step; on error, abort.
func (le *Lease) Verify(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: task context ended: %w", ErrLost, err)
	}
	le.mu.Lock()
	lost := le.lost
	le.mu.Unlock()
	if lost != nil {
		return lost
	}
	cur, err := le.rdb.Get(ctx, le.key).Result()
	switch {
	case errors.Is(err, redis.Nil):
		le.setLost(fmt.Errorf("%w: %s expired", ErrLost, le.key))
	case err != nil:
		return fmt.Errorf("%w: cannot confirm %s: %w", ErrLost, le.key, err)
	case cur != le.value:
		holder, _, _ := strings.Cut(cur, "|")
		le.setLost(fmt.Errorf("%w: %s now held by task %s", ErrLost, le.key, holder))
	case le.ttlLeft(ctx) <= 0:
		le.setLost(fmt.Errorf("%w: %s has no time left", ErrLost, le.key))
	}
	le.mu.Lock()
	defer le.mu.Unlock()
	return le.lost
}

func (le *Lease) ttlLeft(ctx context.Context) time.Duration {
	d, err := le.rdb.PTTL(ctx, le.key).Result()
	if err != nil {
		return 0
	}
	return d
}

// Release stops renewal and deletes the lease if this run still holds it.
func (le *Lease) Release(ctx context.Context) error {
	close(le.stop)
	<-le.done
	if err := releaseScript.Run(ctx, le.rdb, []string{le.key}, le.value).Err(); err != nil {
		return fmt.Errorf("releasing %s: %w", le.key, err)
	}
	return nil
}

type ctxKey struct{}

// WithLease returns ctx carrying le for Verify.
func WithLease(ctx context.Context, le *Lease) context.Context {
	return context.WithValue(ctx, ctxKey{}, le)
}

// Verify is the one call a handler makes before a destructive step (merging
// or deleting graph nodes): it returns nil only if this run still holds its
// singleton lease and its task lease is live. A handler of a task that is
// not a singleton passes whenever its context is live.
func Verify(ctx context.Context) error {
	le, _ := ctx.Value(ctxKey{}).(*Lease)
	if le == nil {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("%w: task context ended: %w", ErrLost, err)
		}
		return nil
	}
	return le.Verify(ctx)
}

// UniqueKey is the key asynq's Unique option locks for a task (asynq keeps
// the format in an internal package: asynq:{queue}:unique:type:md5(payload)).
func UniqueKey(queue, taskType string, payload []byte) string {
	prefix := "asynq:{" + queue + "}:unique:" + taskType + ":"
	if payload == nil {
		return prefix
	}
	sum := md5.Sum(payload)
	return prefix + hex.EncodeToString(sum[:])
}

// ReleaseUnique deletes asynq's enqueue lock of a task if taskID holds it.
// asynq itself releases it only on success; a run that failed for good, was
// archived or must be re-enqueued would otherwise block the task until the
// lock's TTL.
func ReleaseUnique(ctx context.Context, rdb redis.UniversalClient, queue, taskType string, payload []byte, taskID string) (bool, error) {
	n, err := releaseScript.Run(ctx, rdb, []string{UniqueKey(queue, taskType, payload)}, taskID).Int()
	if err != nil {
		return false, fmt.Errorf("releasing unique lock of %s: %w", taskType, err)
	}
	return n == 1, nil
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
		uk, err := scanKeys(ctx, rdb, "asynq:{"+queue+"}:unique:"+task+":*")
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
	keys, err := scanKeys(ctx, rdb, "asynq:{"+queue+"}:unique:"+task+":*")
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
