package gemini_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
	// Hermetic tests: the Pacific time zone without the system's tzdata.
	_ "time/tzdata"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/clients/gemini"
	"github.com/stargazer/stargazer-jobs/internal/clients/gemini/geminitest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

// Keys shaped like real ones, so a leak would be easy to spot.
const (
	keyOK      = "AIzaSyTEST-ok-00000000000000000000000"
	keyDay     = "AIzaSyTEST-day-0000000000000000000000"
	keyMinute  = "AIzaSyTEST-minute-000000000000000000"
	keyInvalid = "AIzaSyTEST-invalid-00000000000000000"
	keyDenied  = "AIzaSyTEST-denied-0000000000000000000"
)

var allKeys = []string{keyOK, keyDay, keyMinute, keyInvalid, keyDenied}

// now is 2026-03-07 15:04 in Los Angeles (PST, UTC-8), the day before DST
// starts: the next Pacific midnight is 08:00 UTC on the 8th.
var now = time.Date(2026, 3, 7, 23, 4, 5, 0, time.UTC)

func newProber(t *testing.T, rdb redis.UniversalClient, base string, keys []string) (*gemini.Pool, *gemini.Prober) {
	t.Helper()
	pool := gemini.NewPool(rdb)
	p, err := gemini.NewProber(pool, gemini.ProberOptions{BaseURL: base, Keys: keys, Model: "gemini-embedding-001", Concurrency: 2})
	if err != nil {
		t.Fatal(err)
	}
	return pool, p
}

func state(t *testing.T, pool *gemini.Pool, key string) gemini.State {
	t.Helper()
	s, ok, err := pool.Get(context.Background(), gemini.Fingerprint(key))
	if err != nil || !ok {
		t.Fatalf("state of %s: ok=%v err=%v", gemini.Fingerprint(key), ok, err)
	}
	return s
}

// assertNoKeyInRedis dumps every key, member and value in Redis and fails
// if any configured key appears.
func assertNoKeyInRedis(t *testing.T, rdb *redis.Client, keys []string) {
	t.Helper()
	ctx := context.Background()
	var dump strings.Builder
	names, err := rdb.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		dump.WriteString(name + "\n")
		switch rdb.Type(ctx, name).Val() {
		case "hash":
			fmt.Fprintln(&dump, rdb.HGetAll(ctx, name).Val())
		case "zset":
			fmt.Fprintln(&dump, rdb.ZRangeWithScores(ctx, name, 0, -1).Val())
		case "string":
			dump.WriteString(rdb.Get(ctx, name).Val() + "\n")
		default:
			t.Fatalf("unexpected key type of %s", name)
		}
	}
	for _, k := range keys {
		if strings.Contains(dump.String(), k) {
			t.Fatalf("API key found in Redis:\n%s", dump.String())
		}
	}
}

func TestProbeClassifiesEachKeyFromGeminisAnswer(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	fake := geminitest.NewServer(t, map[string]string{
		keyOK: geminitest.OK, keyDay: geminitest.PerDay, keyMinute: geminitest.PerMinute,
		keyInvalid: geminitest.Invalid, keyDenied: geminitest.Denied,
	})
	pool, p := newProber(t, rdb, fake.URL, allKeys)
	rep, err := p.Probe(context.Background(), now)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Keys != 5 || rep.OK != 1 || rep.Exhausted != 2 || rep.Invalid != 2 || rep.Errors != 0 || rep.Recovered != 0 {
		t.Errorf("report %+v", rep)
	}
	if fake.BadRequests() != 0 {
		t.Errorf("%d probes were not well-formed embedContent calls", fake.BadRequests())
	}
	tests := []struct {
		name   string
		key    string
		status gemini.Status
		until  time.Time
		reason string
	}{
		{"answering key is ok", keyOK, gemini.OK, time.Time{}, ""},
		{"per-day quota waits for the next Pacific midnight", keyDay, gemini.Exhausted, time.Date(2026, 3, 8, 8, 0, 0, 0, time.UTC), "HTTP 429 RESOURCE_EXHAUSTED"},
		{"per-minute quota waits for the retry delay", keyMinute, gemini.Exhausted, now.Add(37 * time.Second), "HTTP 429 RESOURCE_EXHAUSTED"},
		{"API_KEY_INVALID is invalid", keyInvalid, gemini.Invalid, time.Time{}, "HTTP 400 API_KEY_INVALID"},
		{"PERMISSION_DENIED is invalid", keyDenied, gemini.Invalid, time.Time{}, "HTTP 403 PERMISSION_DENIED"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := state(t, pool, tt.key)
			if s.Status != tt.status || !s.ExhaustedUntil.Equal(tt.until) || s.LastError != tt.reason || !s.LastProbe.Equal(now) {
				t.Errorf("state %+v, want %s until %v reason %q", s, tt.status, tt.until, tt.reason)
			}
		})
	}
	avail, err := pool.Available(context.Background(), now)
	if err != nil {
		t.Fatal(err)
	}
	if len(avail) != 1 || avail[0] != gemini.Fingerprint(keyOK) {
		t.Errorf("available now = %v, want only the ok key", avail)
	}
	// After the retry delay the per-minute key is usable again without a
	// new probe; the per-day one only after midnight Pacific.
	later, _ := pool.Available(context.Background(), now.Add(38*time.Second))
	if len(later) != 2 {
		t.Errorf("available after 38 s = %v, want the ok and per-minute keys", later)
	}
	tomorrow, _ := pool.Available(context.Background(), time.Date(2026, 3, 8, 8, 0, 0, 0, time.UTC))
	if len(tomorrow) != 3 {
		t.Errorf("available after Pacific midnight = %v, want all but the invalid keys", tomorrow)
	}
	for _, o := range rep.Outcomes {
		if strings.Contains(fmt.Sprintf("%+v", o), "AIza") {
			t.Errorf("outcome carries a key: %+v", o)
		}
	}
	assertNoKeyInRedis(t, rdb, allKeys)
}

func TestProbeClearsRecoveredKeysAndIsIdempotent(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	fake := geminitest.NewServer(t, map[string]string{keyDay: geminitest.PerDay, keyInvalid: geminitest.Invalid, keyOK: geminitest.OK})
	pool, p := newProber(t, rdb, fake.URL, []string{keyDay, keyInvalid, keyOK})
	ctx := context.Background()
	if _, err := p.Probe(ctx, now); err != nil {
		t.Fatal(err)
	}
	fake.Set(keyDay, geminitest.OK)
	fake.Set(keyInvalid, geminitest.OK)
	rep, err := p.Probe(ctx, now.Add(2*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Recovered != 2 || rep.OK != 3 {
		t.Errorf("report %+v, want 2 recovered, 3 ok", rep)
	}
	for _, k := range []string{keyDay, keyInvalid} {
		if s := state(t, pool, k); s.Status != gemini.OK || !s.ExhaustedUntil.IsZero() || s.LastError != "" {
			t.Errorf("recovered key state %+v", s)
		}
	}
	before := rdb.ZRangeWithScores(ctx, gemini.PoolKey, 0, -1).Val()
	again, err := p.Probe(ctx, now.Add(2*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if again.Recovered != 0 || again.OK != 3 {
		t.Errorf("second run report %+v, want nothing recovered twice", again)
	}
	if after := rdb.ZRangeWithScores(ctx, gemini.PoolKey, 0, -1).Val(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("pool changed on an identical run: %v -> %v", before, after)
	}
}

func TestProbeFailuresLeaveTheKeysStatusAlone(t *testing.T) {
	tests := []struct {
		name   string
		answer string
		reason string
	}{
		{"server error", geminitest.ServerError, "HTTP 500 INTERNAL"},
		{"unknown model", geminitest.WrongModel, "HTTP 404 NOT_FOUND"},
		{"200 without an embedding", geminitest.Malformed200, "HTTP 200 without an embedding"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := redistest.Start(t)
			rdb := srv.Client(t)
			fake := geminitest.NewServer(t, map[string]string{keyDay: geminitest.PerDay, keyOK: geminitest.OK})
			pool, p := newProber(t, rdb, fake.URL, []string{keyDay, keyOK})
			ctx := context.Background()
			if _, err := p.Probe(ctx, now); err != nil {
				t.Fatal(err)
			}
			fake.Set(keyDay, tt.answer)
			fake.Set(keyOK, tt.answer)
			rep, err := p.Probe(ctx, now.Add(time.Hour))
			if !errors.Is(err, gemini.ErrAllProbesFailed) || rep.Errors != 2 {
				t.Fatalf("err %v, report %+v: want every probe failed", err, rep)
			}
			day := state(t, pool, keyDay)
			if day.Status != gemini.Exhausted || !day.ExhaustedUntil.Equal(time.Date(2026, 3, 8, 8, 0, 0, 0, time.UTC)) {
				t.Errorf("exhausted key changed by a failed probe: %+v", day)
			}
			if ok := state(t, pool, keyOK); ok.Status != gemini.OK || !strings.HasPrefix(ok.LastError, tt.reason) || !ok.LastProbe.Equal(now.Add(time.Hour)) {
				t.Errorf("ok key after failed probe: %+v, want status ok, reason %q", ok, tt.reason)
			}
		})
	}
}

func TestNetworkErrorDoesNotMarkAKeyExhausted(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	dead := httptest.NewServer(http.NotFoundHandler())
	base := dead.URL
	dead.Close() // connection refused from now on
	pool, p := newProber(t, rdb, base, []string{keyOK, keyDay})
	rep, err := p.Probe(context.Background(), now)
	if !errors.Is(err, gemini.ErrAllProbesFailed) {
		t.Fatalf("err = %v", err)
	}
	if rep.Exhausted != 0 || rep.Errors != 2 {
		t.Errorf("report %+v", rep)
	}
	for _, k := range []string{keyOK, keyDay} {
		s := state(t, pool, k)
		if s.Status != gemini.Unknown || !s.Usable(now) || s.LastError == "" {
			t.Errorf("key after network error %+v, want unknown and usable with a reason", s)
		}
		if strings.Contains(s.LastError, k) {
			t.Errorf("reason carries the key: %q", s.LastError)
		}
	}
	if avail, _ := pool.Available(context.Background(), now); len(avail) != 2 {
		t.Errorf("available = %v, want both keys", avail)
	}
	if strings.Contains(err.Error(), "AIza") {
		t.Errorf("error carries a key: %v", err)
	}
	assertNoKeyInRedis(t, rdb, []string{keyOK, keyDay})
}

func TestProbeDropsKeysNoLongerConfigured(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	fake := geminitest.NewServer(t, map[string]string{keyOK: geminitest.OK, keyDay: geminitest.PerDay})
	pool, p := newProber(t, rdb, fake.URL, []string{keyOK, keyDay, keyOK})
	ctx := context.Background()
	rep, err := p.Probe(ctx, now)
	if err != nil || rep.Keys != 2 || fake.Calls(keyOK) != 1 {
		t.Fatalf("report %+v err %v calls %d: a duplicated key is probed once", rep, err, fake.Calls(keyOK))
	}
	_, p2 := newProber(t, rdb, fake.URL, []string{keyOK})
	rep, err = p2.Probe(ctx, now)
	if err != nil || rep.Removed != 1 {
		t.Fatalf("report %+v err %v", rep, err)
	}
	if _, ok, _ := pool.Get(ctx, gemini.Fingerprint(keyDay)); ok {
		t.Error("state of a removed key is still in Redis")
	}
	if fps, _ := pool.Fingerprints(ctx); len(fps) != 1 || fps[0] != gemini.Fingerprint(keyOK) {
		t.Errorf("pool = %v", fps)
	}
}

func TestPickRoutesAroundExhaustedKeys(t *testing.T) {
	srv := redistest.Start(t)
	pool := gemini.NewPool(srv.Client(t))
	ctx := context.Background()
	unseen := "AIzaSyTEST-never-probed-00000000000"
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(pool.Set(ctx, gemini.State{Fingerprint: gemini.Fingerprint(keyDay), Status: gemini.Exhausted, ExhaustedUntil: now.Add(time.Hour), LastProbe: now}))
	must(pool.Set(ctx, gemini.State{Fingerprint: gemini.Fingerprint(keyInvalid), Status: gemini.Invalid, LastProbe: now}))
	must(pool.Set(ctx, gemini.State{Fingerprint: gemini.Fingerprint(keyOK), Status: gemini.OK, LastProbe: now}))
	usable, err := pool.Usable(ctx, []string{keyDay, keyInvalid, keyOK, unseen}, now)
	if err != nil || fmt.Sprint(usable) != fmt.Sprint([]string{keyOK, unseen}) {
		t.Fatalf("usable = %v, err %v", usable, err)
	}
	for range 20 {
		k, err := pool.Pick(ctx, []string{keyDay, keyInvalid, keyOK}, now)
		if err != nil || k != keyOK {
			t.Fatalf("picked %q, err %v", k, err)
		}
	}
	if _, err := pool.Pick(ctx, []string{keyDay, keyInvalid}, now); !errors.Is(err, gemini.ErrNoUsableKey) {
		t.Errorf("pick among bad keys: err = %v", err)
	}
	if k, err := pool.Pick(ctx, []string{keyDay, keyInvalid}, now.Add(time.Hour)); err != nil || k != keyDay {
		t.Errorf("after the reset: picked %q, err %v", k, err)
	}
}

func TestNextPacificMidnightFollowsDaylightSaving(t *testing.T) {
	la, err := time.LoadLocation("America/Los_Angeles")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		now  time.Time
		want time.Time
	}{
		{"winter (PST)", time.Date(2026, 1, 15, 12, 0, 0, 0, time.UTC), time.Date(2026, 1, 16, 8, 0, 0, 0, time.UTC)},
		{"summer (PDT)", time.Date(2026, 7, 15, 12, 0, 0, 0, time.UTC), time.Date(2026, 7, 16, 7, 0, 0, 0, time.UTC)},
		{"UTC date ahead of Pacific", time.Date(2026, 7, 16, 3, 0, 0, 0, time.UTC), time.Date(2026, 7, 16, 7, 0, 0, 0, time.UTC)},
		{"exactly midnight waits a day", time.Date(2026, 7, 16, 7, 0, 0, 0, time.UTC), time.Date(2026, 7, 17, 7, 0, 0, 0, time.UTC)},
		{"across the DST change", time.Date(2026, 3, 8, 7, 59, 0, 0, time.UTC), time.Date(2026, 3, 8, 8, 0, 0, 0, time.UTC)},
		{"month end", time.Date(2026, 2, 28, 20, 0, 0, 0, time.UTC), time.Date(2026, 3, 1, 8, 0, 0, 0, time.UTC)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := gemini.NextPacificMidnight(tt.now, la); !got.Equal(tt.want) {
				t.Errorf("got %v, want %v", got.UTC(), tt.want)
			}
		})
	}
}

func TestPerMinuteQuotaWithoutRetryInfoWaitsAMinute(t *testing.T) {
	srv := redistest.Start(t)
	fake := geminitest.NewServer(t, map[string]string{keyMinute: geminitest.PerMinuteBare})
	pool, p := newProber(t, srv.Client(t), fake.URL, []string{keyMinute})
	if _, err := p.Probe(context.Background(), now); err != nil {
		t.Fatal(err)
	}
	if s := state(t, pool, keyMinute); s.Status != gemini.Exhausted || !s.ExhaustedUntil.Equal(now.Add(time.Minute)) {
		t.Errorf("state %+v", s)
	}
}
