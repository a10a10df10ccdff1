// Package asynqcompat holds every use this project makes of asynq's
// private Redis layout (key names, hash fields, list ends), which asynq
// keeps in an internal package and may change in any release:
//
//   - fast lease recovery (RunRecoverer) reads and rewrites a queue's
//     lease, active and pending keys and the task hash's state;
//   - asynq's Unique enqueue lock is released early (ReleaseUnique) when
//     a singleton's run ends for good or an enqueue leaked it, and listed
//     or force-released by operators (UniqueKeyPattern).
//
// Contract tests (contract_test.go) check each of them against a real
// asynq.Server of the version go.mod pins. At startup Gate reads the
// asynq version linked into the binary; if the contract tests do not cover
// it, the workarounds turn themselves off and asynq's own behaviour
// applies (slower recovery, locks that last until their TTL).
package asynqcompat

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// queuePrefix is the hash-tagged prefix of every key of a queue: all of a
// queue's keys live in one cluster slot.
func queuePrefix(queue string) string { return "asynq:{" + queue + "}:" }

func leaseKey(queue string) string      { return queuePrefix(queue) + "lease" }
func activeKey(queue string) string     { return queuePrefix(queue) + "active" }
func pendingKey(queue string) string    { return queuePrefix(queue) + "pending" }
func taskKeyPrefix(queue string) string { return queuePrefix(queue) + "t:" }
func taskKey(queue, id string) string   { return taskKeyPrefix(queue) + id }

// UniqueKey is the key asynq's Unique option locks for a task enqueued with
// payload: asynq:{queue}:unique:type:md5(payload), or without the hash for
// a nil payload. The lock's value is the holding task's ID.
func UniqueKey(queue, taskType string, payload []byte) string {
	prefix := queuePrefix(queue) + "unique:" + taskType + ":"
	if payload == nil {
		return prefix
	}
	sum := md5.Sum(payload)
	return prefix + hex.EncodeToString(sum[:])
}

// UniqueKeyPattern matches every Unique lock of taskType in queue (SCAN).
func UniqueKeyPattern(queue, taskType string) string {
	return queuePrefix(queue) + "unique:" + taskType + ":*"
}

// releaseUniqueScript deletes a task's Unique lock if the task still holds
// it, as asynq's own DeleteTask does: the lock's key is the one asynq
// recorded in the task's hash at enqueue (field unique_key), else the one
// computed from the payload (KEYS[2]).
//
// KEYS[1] task hash  KEYS[2] computed unique key  ARGV[1] task ID
var releaseUniqueScript = redis.NewScript(`
local key = redis.call('HGET', KEYS[1], 'unique_key')
if not key or key == '' then key = KEYS[2] end
if redis.call('GET', key) == ARGV[1] then
  return redis.call('DEL', key)
end
return 0
`)

// ReleaseUnique deletes the Unique lock of the task with ID taskID if that
// task holds it. asynq itself releases the lock only on success or
// deletion; a run that failed for good, was archived or must be enqueued
// again would otherwise block the task until the lock's TTL. It reports
// whether a lock was released. Call it only where Gate accepted the linked
// asynq version.
//
// The key asynq recorded at enqueue is preferred to the computed one: a
// task enqueued with an empty payload is locked under md5(""), but reaches
// the handler with a nil payload.
func ReleaseUnique(ctx context.Context, rdb redis.UniversalClient, queue, taskType string, payload []byte, taskID string) (bool, error) {
	n, err := releaseUniqueScript.Run(ctx, rdb, []string{taskKey(queue, taskID), UniqueKey(queue, taskType, payload)}, taskID).Int()
	if err != nil {
		return false, fmt.Errorf("releasing unique lock of %s %s: %w", taskType, taskID, err)
	}
	return n == 1, nil
}
