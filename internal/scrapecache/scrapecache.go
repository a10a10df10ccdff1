// Package scrapecache keeps what a Prometheus collector reads from Redis
// at scrape time, so that a scrape never waits on Redis longer than it can
// afford.
//
// A collector that reads Redis inside Collect makes the scrape as slow as
// the slowest Redis call, and Prometheus's collectors get no deadline: a
// first dial that is slow (name resolution, a Redis still loading, a
// stalled network) held the monitor's first scrape past Prometheus's 10 s
// timeout, so the process read as down exactly when its metrics mattered.
// With a Cache the read runs in the background; the scrape waits for it at
// most Wait, then answers with what the last read that ended returned.
package scrapecache

import (
	"sync"
	"time"
)

// DefaultWait is how long a scrape waits for a read in progress: far
// below any scrape timeout Prometheus is configured with in practice (its
// default is 10 s; the tests scrape with 1 s), and far above what a read
// takes when Redis answers (milliseconds).
const DefaultWait = 500 * time.Millisecond

// Cache holds the value the last read returned and when it ended.
type Cache[T any] struct {
	read   func() T
	maxAge time.Duration
	wait   time.Duration

	mu      sync.Mutex
	val     T
	at      time.Time     // zero until the first read ends
	running chan struct{} // closed when the read in progress ends; nil when none runs
}

// New returns a cache of read, which is called again at most once per
// maxAge, never twice at once, and waited for at most wait by Get
// (DefaultWait when 0). read must end by itself: its Redis calls carry
// their own deadline.
func New[T any](read func() T, maxAge, wait time.Duration) *Cache[T] {
	if wait <= 0 {
		wait = DefaultWait
	}
	return &Cache[T]{read: read, maxAge: maxAge, wait: wait}
}

// Get returns the last value read and when its read ended; at is zero
// while no read has ended yet. When the value is older than maxAge (or
// there is none) Get starts a read, unless one runs already, and waits for
// it at most wait: a read that takes longer goes on in the background and
// serves the next Get.
func (c *Cache[T]) Get() (val T, at time.Time) {
	c.mu.Lock()
	if c.running == nil && (c.at.IsZero() || time.Since(c.at) >= c.maxAge) {
		done := make(chan struct{})
		c.running = done
		go c.refresh(done)
	}
	running := c.running
	c.mu.Unlock()
	if running != nil {
		t := time.NewTimer(c.wait)
		select {
		case <-running:
		case <-t.C:
		}
		t.Stop()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.val, c.at
}

// refresh runs one read. Whatever happens to it, even a panic, the next Get
// may start another.
func (c *Cache[T]) refresh(done chan struct{}) {
	var (
		v  T
		ok bool
	)
	defer func() {
		c.mu.Lock()
		if ok {
			c.val, c.at = v, time.Now()
		}
		c.running = nil
		c.mu.Unlock()
		close(done)
	}()
	v = c.read()
	ok = true
}
