// Package budget holds the cluster-wide budget of an LLM endpoint: how many
// calls may be in flight across every worker at once, how many requests and
// tokens a minute they may make, and a pause every caller waits out after
// the endpoint answered 429. It wraps whatever chat model it is given, so
// that with units of LLM work spread over many pods the endpoint sees one
// well-behaved client, and a 429 slows the whole cluster, not only the
// task that got it.
//
// All state is in Redis under KeyPrefix+<endpoint>: a sorted set of
// in-flight leases (expiring, renewed while a call runs, so a killed
// worker's slot comes back within LeaseTTL), GCRA buckets for requests and
// tokens (internal/queue/ratelimit), and the pause key. Waiting is bounded
// by the caller's context.
package budget

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/queue/ratelimit"
)

// KeyPrefix starts every key of an endpoint's budget.
const KeyPrefix = "sgjobs:llm:budget:"

// Keys of an endpoint's budget.
func inflightKey(endpoint string) string { return KeyPrefix + endpoint + ":inflight" }

// PauseKey is set, with the 429's Retry-After as its TTL, when the
// endpoint refused a call for its rate.
func PauseKey(endpoint string) string { return KeyPrefix + endpoint + ":pause" }

func requestsKey(endpoint string) string { return KeyPrefix + endpoint + ":requests" }
func tokensKey(endpoint string) string   { return KeyPrefix + endpoint + ":tokens" }

// Defaults.
const (
	// DefaultLeaseTTL is how long an in-flight slot outlives a worker that
	// died holding it; a running call renews its lease every third of it.
	DefaultLeaseTTL = 30 * time.Second
	// DefaultPause is the pause after a 429 without Retry-After.
	DefaultPause = 2 * time.Second
	// maxPoll bounds the wait between two tries for a slot.
	maxPoll = 200 * time.Millisecond
)

// Wait reasons, as metrics label them.
const (
	ReasonInFlight = "in_flight"
	ReasonRequests = "requests"
	ReasonTokens   = "tokens"
	ReasonPaused   = "paused"
)

// ChatModel makes chat/completions calls (*llm.Client).
type ChatModel interface {
	Chat(ctx context.Context, r llm.Request) (*llm.Response, error)
}

// Limits are an endpoint's budget; a zero limit is no limit.
type Limits struct {
	// MaxInFlight bounds the calls in flight across the cluster.
	MaxInFlight int
	// RequestsPerMinute and TokensPerMinute bound the rate (GCRA: bursts
	// of a tenth of a minute's requests, and of a quarter of a minute's
	// tokens).
	RequestsPerMinute float64
	TokensPerMinute   float64
	// LeaseTTL is the in-flight lease (default DefaultLeaseTTL).
	LeaseTTL time.Duration
}

// Observer receives the budget's events, for metrics. Implementations must
// be safe for concurrent use.
type Observer interface {
	InFlight(endpoint string, delta int)
	Waited(endpoint, reason string, d time.Duration)
	RateLimited(endpoint string)
}

// Budget is a ChatModel whose calls stay within an endpoint's budget.
type Budget struct {
	next     ChatModel
	rdb      redis.UniversalClient
	endpoint string
	lim      Limits
	obs      Observer
	requests *ratelimit.Limiter
	tokens   *ratelimit.Limiter
}

// New wraps next in endpoint's budget, kept in rdb. obs may be nil.
func New(next ChatModel, rdb redis.UniversalClient, endpoint string, lim Limits, obs Observer) *Budget {
	if lim.LeaseTTL <= 0 {
		lim.LeaseTTL = DefaultLeaseTTL
	}
	b := &Budget{next: next, rdb: rdb, endpoint: endpoint, lim: lim, obs: obs}
	if lim.RequestsPerMinute > 0 {
		b.requests = ratelimit.New(rdb, requestsKey(endpoint), lim.RequestsPerMinute, int(lim.RequestsPerMinute/10))
	}
	if lim.TokensPerMinute > 0 {
		b.tokens = ratelimit.New(rdb, tokensKey(endpoint), lim.TokensPerMinute, int(lim.TokensPerMinute/4))
	}
	return b
}

// Chat waits for the budget (a pause, the rate, a slot), makes the call
// holding a slot, and charges the tokens it used. A 429 pauses every
// caller of the endpoint for its Retry-After and is returned as it came.
func (b *Budget) Chat(ctx context.Context, r llm.Request) (*llm.Response, error) {
	est := estimate(r)
	if b.requests != nil {
		if err := b.waitRate(ctx, b.requests, 1, ReasonRequests); err != nil {
			return nil, err
		}
	}
	if b.tokens != nil {
		if err := b.waitRate(ctx, b.tokens, est, ReasonTokens); err != nil {
			return nil, err
		}
	}
	release, err := b.acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	resp, err := b.next.Chat(ctx, r)
	var rl *llm.RateLimitError
	if errors.As(err, &rl) {
		if b.obs != nil {
			b.obs.RateLimited(b.endpoint)
		}
		if perr := b.pause(context.WithoutCancel(ctx), rl.RetryAfter()); perr != nil {
			err = errors.Join(err, perr)
		}
	}
	if b.tokens != nil && resp != nil {
		if used := resp.Usage.PromptTokens + resp.Usage.CompletionTokens; used > est {
			// The estimate covered the prompt; the answer is charged after.
			_ = b.tokens.Charge(context.WithoutCancel(ctx), used-est)
		}
	}
	return resp, err
}

// estimate is a call's tokens before it is made: a quarter token per
// prompt character.
func estimate(r llm.Request) int {
	n := 0
	for _, m := range r.Messages {
		n += len(m.Content)
	}
	return max(1, n/4)
}

// waitRate takes n tokens of l, waiting as long as it says.
func (b *Budget) waitRate(ctx context.Context, l *ratelimit.Limiter, n int, reason string) error {
	start := time.Now()
	waited := false
	defer func() {
		if waited && b.obs != nil {
			b.obs.Waited(b.endpoint, reason, time.Since(start))
		}
	}()
	for {
		wait, err := l.TakeN(ctx, n)
		if err != nil {
			return fmt.Errorf("llm budget %s: %w", b.endpoint, err)
		}
		if wait == 0 {
			return nil
		}
		waited = true
		if err := sleep(ctx, wait); err != nil {
			return fmt.Errorf("llm budget %s: waiting for the %s rate: %w", b.endpoint, reason, err)
		}
	}
}

// admitScript takes an in-flight slot. It returns {0} when taken, {1, ms}
// while the endpoint is paused (ms left), {2} when every slot is held.
// Expired leases (their worker died) are dropped first. The clock is
// Redis's, so workers' clock skew does not matter.
var admitScript = redis.NewScript(`
redis.replicate_commands()
local p = redis.call('PTTL', KEYS[2])
if p > 0 then return {1, p} end
local limit = tonumber(ARGV[1])
if limit <= 0 then return {0, 0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= limit then return {2, 0} end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return {0, 0}
`)

// renewScript extends a held lease (and the set's TTL with it).
var renewScript = redis.NewScript(`
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[2]), ARGV[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return 1
`)

// acquire waits out a pause and, with an in-flight limit, for a slot. Its
// release frees the slot; the caller defers it, so it runs on a panic too.
func (b *Budget) acquire(ctx context.Context) (func(), error) {
	token := newToken()
	ttl := b.lim.LeaseTTL.Milliseconds()
	keys := []string{inflightKey(b.endpoint), PauseKey(b.endpoint)}
	poll := 10 * time.Millisecond
	var waitedPause, waitedSlot time.Duration
	defer func() {
		if b.obs == nil {
			return
		}
		if waitedPause > 0 {
			b.obs.Waited(b.endpoint, ReasonPaused, waitedPause)
		}
		if waitedSlot > 0 {
			b.obs.Waited(b.endpoint, ReasonInFlight, waitedSlot)
		}
	}()
	for {
		res, err := admitScript.Run(ctx, b.rdb, keys, b.lim.MaxInFlight, token, ttl).Int64Slice()
		if err != nil {
			return func() {}, fmt.Errorf("llm budget %s: %w", b.endpoint, err)
		}
		start := time.Now()
		switch res[0] {
		case 0:
			return b.hold(ctx, token), nil
		case 1:
			err = sleep(ctx, time.Duration(res[1])*time.Millisecond+jitter(50*time.Millisecond))
			waitedPause += time.Since(start)
		default:
			err = sleep(ctx, poll+jitter(poll))
			poll = min(2*poll, maxPoll)
			waitedSlot += time.Since(start)
		}
		if err != nil {
			return func() {}, fmt.Errorf("llm budget %s: waiting for a call slot: %w", b.endpoint, err)
		}
	}
}

// hold keeps token's lease alive until the returned release, which frees
// the slot (through a context of its own: the caller's may be over).
func (b *Budget) hold(ctx context.Context, token string) func() {
	if b.obs != nil {
		b.obs.InFlight(b.endpoint, 1)
	}
	if b.lim.MaxInFlight <= 0 {
		return func() {
			if b.obs != nil {
				b.obs.InFlight(b.endpoint, -1)
			}
		}
	}
	key := inflightKey(b.endpoint)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(b.lim.LeaseTTL / 3)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
				_ = renewScript.Run(rctx, b.rdb, []string{key}, token, b.lim.LeaseTTL.Milliseconds()).Err()
				cancel()
			}
		}
	}()
	released := false
	return func() {
		if released {
			return
		}
		released = true
		close(stop)
		<-done
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = b.rdb.ZRem(rctx, key, token).Err() // else the lease lapses at its TTL
		if b.obs != nil {
			b.obs.InFlight(b.endpoint, -1)
		}
	}
}

// pauseScript sets the pause, only ever lengthening it.
var pauseScript = redis.NewScript(`
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 1
`)

// pause makes every caller of the endpoint wait d (DefaultPause when the
// 429 named no delay; an hour at most).
func (b *Budget) pause(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		d = DefaultPause
	}
	d = min(d, time.Hour)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := pauseScript.Run(ctx, b.rdb, []string{PauseKey(b.endpoint)}, d.Milliseconds()).Err(); err != nil {
		return fmt.Errorf("llm budget %s: pausing: %w", b.endpoint, err)
	}
	return nil
}

// InFlight counts the calls in flight across the cluster (expired leases
// excluded); without an in-flight limit nothing is counted and it is 0.
func (b *Budget) InFlight(ctx context.Context) (int64, error) {
	now := time.Now().UnixMilli()
	return b.rdb.ZCount(ctx, inflightKey(b.endpoint), fmt.Sprint(now), "+inf").Result()
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}

func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return rand.N(d)
}

func newToken() string {
	b := make([]byte, 12)
	_, _ = crand.Read(b)
	return hex.EncodeToString(b)
}
