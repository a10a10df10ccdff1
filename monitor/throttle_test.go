package monitor

import (
	"fmt"
	"net/http"
	"net/netip"
	"testing"
	"time"
)

func TestThrottleAllowsABurstThenARate(t *testing.T) {
	now := time.Unix(0, 0)
	th := newThrottle(3, 0.5, 100)
	th.now = func() time.Time { return now }
	key := netip.MustParsePrefix("192.0.2.1/32")
	for i := range 3 {
		if w := th.wait(key); w != 0 {
			t.Fatalf("failure %d: wait %v within the burst", i, w)
		}
		th.fail(key)
	}
	if w := th.wait(key); w != 2*time.Second {
		t.Fatalf("after the burst: wait %v, want 2s (0.5/s)", w)
	}
	now = now.Add(2 * time.Second)
	if w := th.wait(key); w != 0 {
		t.Fatalf("after 2 s: wait %v, want 0", w)
	}
	th.fail(key)
	if w := th.wait(key); w == 0 {
		t.Fatal("a failure after the refill should wait again")
	}
	if w := th.wait(netip.MustParsePrefix("192.0.2.2/32")); w != 0 {
		t.Errorf("another address waits %v", w)
	}
}

func TestThrottleMemoryIsBounded(t *testing.T) {
	th := newThrottle(1, 0.001, 100)
	for i := range 10_000 {
		th.fail(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 32))
	}
	if n := th.size(); n != 100 {
		t.Fatalf("%d addresses remembered, want the cap of 100", n)
	}
	// The most recent ones are kept.
	if th.wait(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, 39, 15}), 32)) == 0 {
		t.Error("the last failing address was forgotten")
	}
}

func TestClientKeyGroupsAnIPv6SubscriberPrefix(t *testing.T) {
	tests := []struct{ remote, want string }{
		{"192.0.2.7:5555", "192.0.2.7/32"},
		{"[::ffff:192.0.2.7]:5555", "192.0.2.7/32"},
		{"[2001:db8:1:2:aaaa::1]:5555", "2001:db8:1:2::/64"},
		{"[2001:db8:1:2:bbbb::9]:443", "2001:db8:1:2::/64"},
	}
	for _, tt := range tests {
		r := &http.Request{RemoteAddr: tt.remote}
		if got := clientKey(r); fmt.Sprint(got) != tt.want {
			t.Errorf("clientKey(%s) = %v, want %s", tt.remote, got, tt.want)
		}
	}
}

func TestThrottleReportsAnAddressOncePerLogInterval(t *testing.T) {
	now := time.Unix(0, 0)
	th := newThrottle(3, 0.5, 100)
	th.now = func() time.Time { return now }
	a, b := netip.MustParsePrefix("192.0.2.1/32"), netip.MustParsePrefix("192.0.2.2/32")
	var reports []throttled
	fail := func(key netip.Prefix) {
		if ev, ok := th.fail(key); ok {
			reports = append(reports, ev)
		}
	}
	for range 2 {
		fail(a)
		now = now.Add(100 * time.Millisecond)
	}
	if len(reports) != 0 {
		t.Fatalf("reported within the burst: %+v", reports)
	}
	fail(a) // the third failure empties the bucket
	if len(reports) != 1 {
		t.Fatalf("%d reports when the address ran out of guesses, want 1", len(reports))
	}
	if r := reports[0]; r.key != a || r.failures != 3 || r.window != 200*time.Millisecond || r.retryAfter <= 0 {
		t.Errorf("report %+v, want %v with 3 failures within 200ms and a wait", r, a)
	}
	// An attacker who keeps guessing at the allowed rate empties the
	// bucket every 2 s: one line per interval, not one per failure.
	for range 100 {
		now = now.Add(2 * time.Second)
		fail(a)
	}
	if len(reports) != 1+int(200*time.Second/AuthThrottleLogInterval) {
		t.Errorf("%d reports over 200 s, want one at first and one per %v", len(reports), AuthThrottleLogInterval)
	}
	for _, r := range reports[1:] {
		if r.failures < 25 || r.window < 50*time.Second {
			t.Errorf("later report %+v, want the failures counted since the previous one", r)
		}
	}
	// Another address is reported on its own.
	n := len(reports)
	for range 3 {
		fail(b)
	}
	if len(reports) != n+1 || reports[n].key != b {
		t.Errorf("address %v not reported on its own: %+v", b, reports[n:])
	}
}
