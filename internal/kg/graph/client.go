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
	return redis.NewClient(opt), nil
}
