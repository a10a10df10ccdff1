package scrapecache_test

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/scrapecache"
)

func TestGetWaitsForAQuickReadAndCachesIt(t *testing.T) {
	var reads atomic.Int32
	c := scrapecache.New(func() int { return int(reads.Add(1)) }, time.Hour, time.Minute)
	for range 3 {
		v, at := c.Get()
		if v != 1 || at.IsZero() {
			t.Fatalf("Get = %d, %v; want the first read's 1", v, at)
		}
	}
	if n := reads.Load(); n != 1 {
		t.Errorf("%d reads within maxAge, want 1", n)
	}
}

func TestGetDoesNotWaitPastItsBoundForASlowRead(t *testing.T) {
	release := make(chan struct{})
	var reads atomic.Int32
	c := scrapecache.New(func() string {
		reads.Add(1)
		<-release
		return "read"
	}, 0, 50*time.Millisecond)
	start := time.Now()
	v, at := c.Get()
	if took := time.Since(start); v != "" || !at.IsZero() || took > 5*time.Second {
		t.Fatalf("Get during a stuck first read = %q, %v after %v; want nothing, at once", v, at, took)
	}
	// Concurrent and later Gets join the read in progress.
	for range 3 {
		c.Get()
	}
	if n := reads.Load(); n != 1 {
		t.Errorf("%d reads started while one runs, want 1", n)
	}
	close(release)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if v, at := c.Get(); v == "read" && !at.IsZero() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the background read's value never served")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestAStaleValueIsServedWhileTheNextReadRuns(t *testing.T) {
	var n atomic.Int32
	block := make(chan struct{})
	c := scrapecache.New(func() int {
		if n.Add(1) > 1 {
			<-block
		}
		return int(n.Load())
	}, time.Nanosecond, 20*time.Millisecond)
	if v, _ := c.Get(); v != 1 {
		t.Fatalf("first Get = %d, want 1", v)
	}
	if v, at := c.Get(); v != 1 || at.IsZero() {
		t.Errorf("Get while the second read hangs = %d, want the first read's 1", v)
	}
	close(block)
}
