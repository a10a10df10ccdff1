package monitor

import (
	"container/list"
	"math"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"
)

// Failed-authentication throttling: each client address has a bucket of
// Burst failures that refills at Rate per second. While a bucket is empty
// every protected request from that address gets 429, whatever its
// credentials, so guessing runs at Rate per second at most.
const (
	AuthFailureBurst = 10
	AuthFailureRate  = 0.5
	// authThrottleAddrs bounds the memory: the least recently failing
	// addresses are forgotten first.
	authThrottleAddrs = 10_000
	// AuthThrottleLogInterval is how often an address that keeps running
	// out of guesses is logged: once when it first does, then at most once
	// per interval, with the failures counted in between.
	AuthThrottleLogInterval = time.Minute
)

// throttle is a token bucket per client address with bounded memory.
type throttle struct {
	burst, rate float64
	max         int
	logEvery    time.Duration
	now         func() time.Time

	mu    sync.Mutex
	lru   *list.List // of *bucket, most recent first
	byKey map[netip.Prefix]*list.Element
}

type bucket struct {
	key    netip.Prefix
	tokens float64
	at     time.Time
	// failures counts the failures since since, for the next log line;
	// logged is when the last one was written.
	failures      int
	since, logged time.Time
}

func newThrottle(burst, rate float64, max int) *throttle {
	return &throttle{burst: burst, rate: rate, max: max, logEvery: AuthThrottleLogInterval, now: time.Now,
		lru: list.New(), byKey: map[netip.Prefix]*list.Element{}}
}

// throttled is an address that ran out of guesses, for the log: its
// failures within window, and how long its next guess waits.
type throttled struct {
	key        netip.Prefix
	failures   int
	window     time.Duration
	retryAfter time.Duration
}

// clientKey is the address a request came from: the host of RemoteAddr,
// IPv6 addresses by /64 (one subscriber's whole prefix). The worker does
// not trust X-Forwarded-For: behind a proxy every client shares the
// proxy's bucket.
func clientKey(r *http.Request) netip.Prefix { return addrKey(r.RemoteAddr) }

// addrKey is clientKey of a host:port address.
func addrKey(addr string) netip.Prefix {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Prefix{}
	}
	ip = ip.Unmap()
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, _ := ip.Prefix(bits)
	return p
}

// refill brings b's tokens up to date.
func (t *throttle) refill(b *bucket, now time.Time) {
	if el := now.Sub(b.at).Seconds(); el > 0 {
		b.tokens = math.Min(t.burst, b.tokens+el*t.rate)
	}
	b.at = now
}

// wait is how long key must wait before its next attempt is evaluated;
// zero when it may go on.
func (t *throttle) wait(key netip.Prefix) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	el, ok := t.byKey[key]
	if !ok {
		return 0
	}
	b := el.Value.(*bucket)
	t.refill(b, t.now())
	if b.tokens >= 1 {
		return 0
	}
	return time.Duration((1 - b.tokens) / t.rate * float64(time.Second))
}

// fail takes a token from key's bucket. When that leaves the address
// throttled and it was not logged within the log interval, fail returns
// what to log, and true.
func (t *throttle) fail(key netip.Prefix) (throttled, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	el, ok := t.byKey[key]
	if !ok {
		if t.lru.Len() >= t.max {
			oldest := t.lru.Back()
			t.lru.Remove(oldest)
			delete(t.byKey, oldest.Value.(*bucket).key)
		}
		el = t.lru.PushFront(&bucket{key: key, tokens: t.burst, at: now})
		t.byKey[key] = el
	}
	t.lru.MoveToFront(el)
	b := el.Value.(*bucket)
	t.refill(b, now)
	b.tokens = math.Max(b.tokens-1, 0)
	if b.failures == 0 {
		b.since = now
	}
	b.failures++
	if b.tokens >= 1 || (!b.logged.IsZero() && now.Sub(b.logged) < t.logEvery) {
		return throttled{}, false
	}
	ev := throttled{key: key, failures: b.failures, window: now.Sub(b.since),
		retryAfter: time.Duration((1 - b.tokens) / t.rate * float64(time.Second))}
	b.failures, b.since, b.logged = 0, now, now
	return ev, true
}

// size is the number of addresses remembered.
func (t *throttle) size() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lru.Len()
}
