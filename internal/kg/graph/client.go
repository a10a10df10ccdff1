package graph

import (
	"time"

	"github.com/redis/go-redis/v9"
)

// CallLimit bounds one call of a client from NewClient whose context has no
// deadline. Calls are meant to carry their task's deadline; this only keeps
// a call without one from waiting forever on a server that stopped
// answering. It is far above any query the worker runs (each is stopped
// on the server by its Timeout).
const CallLimit = 10 * time.Minute

// DialTimeout bounds establishing a connection of a client from NewClient
// (its TCP handshake, and TLS's for rediss://), in one attempt. go-redis
// dials in a goroutine of its own that a call's deadline does not end (so
// that a connection dialled for a call that gave up still reaches the
// pool); with go-redis' defaults (5 attempts of 5 s) a dial to a FalkorDB
// that completes no handshake — frozen with its accept queue full, or a
// host that drops packets — outlived its call by up to 25 s. A server on
// the cluster's network that has not completed a handshake in a second is
// not accepting: the call fails with the dial's error, and the next call
// dials again.
const DialTimeout = time.Second

// NewClient returns a go-redis client for the FalkorDB server at url
// (redis://[user:password@]host:port[/db]), configured for graph queries:
//
//   - Every call returns by its context's deadline (ContextTimeoutEnabled):
//     the deadline becomes the socket's read and write deadline, so a
//     FalkorDB that stops answering (frozen, wedged, partitioned) holds a
//     task no longer than the task's timeout. A call whose context has no
//     deadline is bounded by CallLimit. go-redis' own ReadTimeout (5 s by
//     default) would cut legitimate long queries; it is CallLimit here.
//   - No retries (MaxRetries -1): a write retried after a timeout would run
//     twice, and the server may still be running the first.
//   - A connection is dialled in one attempt bounded by DialTimeout, so the
//     goroutine go-redis dials in ends at most DialTimeout after it
//     started, whatever the deadline of the call it dials for.
//
// A deadline ends the wait, not the query: the server stops a query only at
// its Timeout, and a write only when FalkorDB runs with TIMEOUT_MAX or
// TIMEOUT_DEFAULT set (see docs/reliability.md). The connection of a call
// cut by its deadline is closed, not reused.
func NewClient(url string) (*redis.Client, error) {
	opt, err := redis.ParseURL(url)
	if err != nil {
		return nil, err
	}
	opt.ContextTimeoutEnabled = true
	opt.ReadTimeout, opt.WriteTimeout = CallLimit, CallLimit
	opt.MaxRetries = -1
	opt.DialTimeout, opt.DialerRetries = DialTimeout, 1
	return redis.NewClient(opt), nil
}
