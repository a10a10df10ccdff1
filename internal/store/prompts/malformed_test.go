package prompts_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/store/prompts"
)

// validFields is a pending prompt hash as the bot writes it, due at t0.
func validFields(id string) map[string]string {
	ms := strconv.FormatInt(t0.UnixMilli(), 10)
	return map[string]string{
		"id": id, "platform": "discord", "channel_id": "123", "user_id": "u1", "text": "remind me",
		"fire_at": ms, "interval_seconds": "0", "end_at": "0", "status": "pending", "fire_count": "0",
		"created_at": ms, "updated_at": ms,
	}
}

// malformedCases are pending prompts the bot could write that cannot be
// fired: each changes one thing in a valid hash (nil: remove the field),
// or replaces the hash by a key of another type (keyType).
var malformedCases = []struct {
	name    string
	reason  string
	fields  map[string]*string
	keyType string
}{
	{name: "fire_at beyond year 33658", reason: "fire_at is out of range", fields: map[string]*string{"fire_at": ptr("99999999999999999999")}},
	{name: "interval beyond 30,000 years", reason: "interval_seconds is out of range", fields: map[string]*string{"interval_seconds": ptr("1000000000000")}},
	{name: "empty interval_seconds", reason: "interval_seconds must be a non-negative decimal number", fields: map[string]*string{"interval_seconds": ptr("")}},
	{name: "non-numeric interval_seconds", reason: "interval_seconds must be a non-negative decimal number", fields: map[string]*string{"interval_seconds": ptr("hourly")}},
	{name: "negative interval_seconds", reason: "interval_seconds must be a non-negative decimal number", fields: map[string]*string{"interval_seconds": ptr("-60")}},
	{name: "non-numeric fire_at", reason: "fire_at must be a non-negative decimal number", fields: map[string]*string{"fire_at": ptr("tomorrow")}},
	{name: "empty fire_at", reason: "fire_at must be a non-negative decimal number", fields: map[string]*string{"fire_at": ptr("")}},
	{name: "hex fire_at", reason: "fire_at must be a non-negative decimal number", fields: map[string]*string{"fire_at": ptr("0x1A")}},
	{name: "infinite fire_at", reason: "fire_at must be a non-negative decimal number", fields: map[string]*string{"fire_at": ptr("1e999")}},
	{name: "nan fire_at", reason: "fire_at must be a non-negative decimal number", fields: map[string]*string{"fire_at": ptr("nan")}},
	{name: "non-numeric end_at", reason: "end_at must be a non-negative decimal number", fields: map[string]*string{"interval_seconds": ptr("3600"), "end_at": ptr("never")}},
	{name: "non-numeric fire_count", reason: "fire_count must be a non-negative decimal number", fields: map[string]*string{"fire_count": ptr("many")}},
	{name: "missing fire_at", reason: "fire_at is missing", fields: map[string]*string{"fire_at": nil}},
	{name: "missing channel_id", reason: "channel_id is missing", fields: map[string]*string{"channel_id": nil}},
	{name: "missing platform", reason: "platform is missing", fields: map[string]*string{"platform": nil}},
	{name: "missing text", reason: "text is missing", fields: map[string]*string{"text": nil}},
	{name: "blank text", reason: "text is missing", fields: map[string]*string{"text": ptr(" \n\t")}},
	{name: "no status", reason: "status is missing", fields: map[string]*string{"status": nil}},
	{name: "only a status", reason: "fire_at is missing", fields: map[string]*string{"id": nil, "platform": nil, "channel_id": nil, "user_id": nil,
		"text": nil, "fire_at": nil, "interval_seconds": nil, "end_at": nil, "fire_count": nil, "created_at": nil, "updated_at": nil}},
	{name: "a string, not a hash", reason: "key is a string, not a hash", keyType: "string"},
	{name: "a list, not a hash", reason: "key is a list, not a hash", keyType: "list"},
	{name: "a set, not a hash", reason: "key is a set, not a hash", keyType: "set"},
}

// lenientCases are hashes that differ from what the Go store writes but can
// fire: they must.
var lenientCases = []struct {
	name   string
	fields map[string]*string
}{
	{"fractional fire_at", map[string]*string{"fire_at": ptr(strconv.FormatInt(t0.UnixMilli(), 10) + ".5")}},
	{"no interval, end or count", map[string]*string{"interval_seconds": nil, "end_at": nil, "fire_count": nil}},
	{"no user or timestamps", map[string]*string{"user_id": nil, "created_at": nil, "updated_at": nil, "id": nil}},
	{"fractional interval", map[string]*string{"interval_seconds": ptr("90.5")}},
}

func ptr(s string) *string { return &s }

// writeRaw writes a prompt key and its due entry the way the bot would,
// without the store's validation.
func writeRaw(t *testing.T, rdb *redis.Client, id string, fields map[string]*string, keyType string) {
	t.Helper()
	ctx := context.Background()
	key := prompts.KeyPrefix + id
	var err error
	switch keyType {
	case "string":
		err = rdb.Set(ctx, key, "pending", 0).Err()
	case "list":
		err = rdb.RPush(ctx, key, "pending").Err()
	case "set":
		err = rdb.SAdd(ctx, key, "pending").Err()
	default:
		h := validFields(id)
		for k, v := range fields {
			if v == nil {
				delete(h, k)
			} else {
				h[k] = *v
			}
		}
		err = rdb.HSet(ctx, key, h).Err()
	}
	if err == nil {
		err = rdb.ZAdd(ctx, prompts.DueKey, redis.Z{Score: float64(t0.UnixMilli()), Member: id}).Err()
	}
	if err != nil {
		t.Fatal(err)
	}
}

// firedCounts counts the fired stream's entries per prompt id.
func firedCounts(t *testing.T, rdb *redis.Client) map[string]int {
	t.Helper()
	msgs, err := rdb.XRange(context.Background(), prompts.StreamKey, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	n := map[string]int{}
	for _, m := range msgs {
		n[m.Values["prompt_id"].(string)]++
	}
	return n
}

func TestTickRecordsMalformedPromptsAndFiresTheRest(t *testing.T) {
	ctx := context.Background()
	s, rdb := newStore(t)
	// Valid prompts before, between and after the malformed ones in the
	// due set (same score: ordered by id).
	var valid []string
	for i := 0; i < 3; i++ {
		valid = append(valid, add(t, s, prompts.New{FireAt: t0}).ID)
		valid = append(valid, add(t, s, prompts.New{FireAt: t0, Interval: time.Hour}).ID)
	}
	for i, c := range lenientCases {
		id := "lenient-" + strconv.Itoa(i)
		writeRaw(t, rdb, id, c.fields, "")
		valid = append(valid, id)
	}
	bad := map[string]string{} // id -> case
	for i, c := range malformedCases {
		id := "bad-" + strconv.Itoa(i)
		writeRaw(t, rdb, id, c.fields, c.keyType)
		bad[id] = c.name
	}
	before := map[string]string{}
	for id, c := range bad {
		if c := malformedCases[caseIndex(c)]; c.keyType != "" {
			before[id] = dump(t, rdb, id)
		}
	}

	// A small limit: several ticks, each taking some of each kind.
	reported := map[string]int{}
	for i := 1; i <= 10; i++ {
		_, malformed, err := s.Tick(ctx, t0.Add(time.Duration(i)*time.Second), 5)
		if err != nil {
			t.Fatalf("tick %d: %v", i, err)
		}
		for _, m := range malformed {
			reported[m.PromptID]++
			if c := malformedCases[caseIndex(bad[m.PromptID])]; m.Reason != c.reason {
				t.Errorf("%s: reason %q, want %q", c.name, m.Reason, c.reason)
			}
		}
	}
	fired := firedCounts(t, rdb)
	for _, id := range valid {
		if fired[id] != 1 {
			t.Errorf("valid prompt %s fired %d times, want 1", id, fired[id])
		}
	}
	for id, name := range bad {
		if fired[id] != 0 {
			t.Errorf("%s: fired %d times", name, fired[id])
		}
		if reported[id] != 1 {
			t.Errorf("%s: reported malformed %d times, want once", name, reported[id])
		}
		if err := rdb.ZScore(ctx, prompts.DueKey, id).Err(); err != redis.Nil {
			t.Errorf("%s: still in the due set (%v)", name, err)
		}
		if err := rdb.ZScore(ctx, prompts.FinishedKey, id).Err(); err != nil {
			t.Errorf("%s: not in the finished set: %v", name, err)
		}
		if want, ok := before[id]; ok {
			if got := dump(t, rdb, id); got != want {
				t.Errorf("%s: key changed", name)
			}
			continue
		}
		p, err := s.Get(ctx, id)
		if err != nil || p.Status != prompts.Invalid || p.InvalidReason != malformedCases[caseIndex(name)].reason || p.FinishedAt.IsZero() {
			t.Errorf("%s: not recorded invalid: %+v %v", name, p, err)
		}
	}
}

func caseIndex(name string) int {
	for i, c := range malformedCases {
		if c.name == name {
			return i
		}
	}
	panic(name)
}

func dump(t *testing.T, rdb *redis.Client, id string) string {
	t.Helper()
	v, err := rdb.Dump(context.Background(), prompts.KeyPrefix+id).Result()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// Invalid prompts leave with the other finished ones, whatever their type,
// and cancelling one is refused rather than failing.
func TestInvalidPromptsAreRefusedByCancelAndCleanedUp(t *testing.T) {
	ctx := context.Background()
	s, rdb := newStore(t)
	writeRaw(t, rdb, "bad-hash", map[string]*string{"fire_at": ptr("soon")}, "")
	writeRaw(t, rdb, "bad-type", nil, "list")
	ok := add(t, s, prompts.New{FireAt: t0})
	if _, _, err := s.Tick(ctx, t0, 10); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"bad-hash", "bad-type"} {
		if err := s.Cancel(ctx, id, t0); !errors.Is(err, prompts.ErrNotPending) {
			t.Errorf("cancel %s: %v, want ErrNotPending", id, err)
		}
	}
	n, err := s.Cleanup(ctx, t0.Add(8*24*time.Hour), 7*24*time.Hour)
	if err != nil || n != 3 {
		t.Fatalf("cleanup = %d, %v; want 3", n, err)
	}
	for _, id := range []string{"bad-hash", "bad-type", ok.ID} {
		if k, err := rdb.Exists(ctx, prompts.KeyPrefix+id).Result(); err != nil || k != 0 {
			t.Errorf("%s still there (%v)", id, err)
		}
	}
}
