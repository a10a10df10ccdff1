package asynqcompat

import (
	"context"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// Cancelation subscriber leak.
//
// asynq v0.26's server subscribes to its task-cancelation channel at start
// and, while SUBSCRIBE fails, retries every 5 s without closing the pub/sub
// connection it opened (hibiken/asynq#1095, fixed after v0.26): a Redis
// that refuses SUBSCRIBE (a proxy or managed Redis without pub/sub, an ACL
// without it) costs one connection and file descriptor every 5 s for as
// long as it lasts. ServerConn gives the server a client whose Subscribe
// checks the subscription first and, if it fails, hands asynq a pub/sub
// that is already closed: asynq's receive fails at once, holding no
// connection, and it retries as before.

// subscribeProbeTimeout bounds the check of one subscription.
const subscribeProbeTimeout = 10 * time.Second

// ServerConn returns the connection option to give asynq.NewServer: o,
// with the subscriber leak worked around. Use it only where Gate accepted
// the linked asynq version.
func ServerConn(o asynq.RedisConnOpt) asynq.RedisConnOpt { return serverConn{o} }

type serverConn struct{ asynq.RedisConnOpt }

// MakeRedisClient implements asynq.RedisConnOpt.
func (o serverConn) MakeRedisClient() any {
	c := o.RedisConnOpt.MakeRedisClient()
	if u, ok := c.(redis.UniversalClient); ok {
		return checkedSubscribe{u}
	}
	return c
}

// checkedSubscribe is a client whose Subscribe never leaves a failed
// subscription's connection open.
type checkedSubscribe struct{ redis.UniversalClient }

// Subscribe subscribes once to check, then returns a fresh subscription
// (whose confirmation asynq reads itself) or, if the check failed, the
// closed probe.
func (c checkedSubscribe) Subscribe(ctx context.Context, channels ...string) *redis.PubSub {
	probe := c.UniversalClient.Subscribe(ctx, channels...)
	_, err := probe.ReceiveTimeout(ctx, subscribeProbeTimeout)
	_ = probe.Close()
	if err != nil {
		return probe
	}
	return c.UniversalClient.Subscribe(ctx, channels...)
}
