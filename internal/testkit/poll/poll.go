// Package poll waits in tests for a condition that another process or
// goroutine brings about, failing the test after a bound instead of hanging.
package poll

import (
	"testing"
	"time"
)

// Until calls cond every 20 ms until it holds, and fails t after 20 s.
func Until(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}
