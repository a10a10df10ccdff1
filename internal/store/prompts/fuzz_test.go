package prompts_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/store/prompts"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

// promptFields are the hash fields tick.lua reads, fuzzed one by one.
var promptFields = []string{"status", "fire_at", "interval_seconds", "end_at", "fire_count", "platform", "channel_id", "text"}

// absent marks a field the fuzzed hash does not have (fuzz inputs are
// strings; this one cannot come from the bot's Python str()).
const absent = "\x00absent"

// FuzzTick writes one prompt key with arbitrary field values (or of another
// type) next to a valid prompt and ticks twice. Whatever the bot wrote, no
// tick fails, the valid prompt fires once, and the fuzzed one ends in
// exactly one of: fired, recorded invalid (reported once, out of the due
// set), or left alone because it was not pending. The seeds (every
// malformed and lenient case of the acceptance test) run as a regular test.
func FuzzTick(f *testing.F) {
	seed := func(fields map[string]*string, keyType string) {
		h := validFields("x")
		var v8 [8]string
		for i, k := range promptFields {
			v, ok := h[k], true
			if p, set := fields[k]; set {
				if ok = p != nil; ok {
					v = *p
				}
			}
			if !ok {
				v = absent
			}
			v8[i] = v
		}
		f.Add(keyType, v8[0], v8[1], v8[2], v8[3], v8[4], v8[5], v8[6], v8[7])
	}
	for _, c := range malformedCases {
		seed(c.fields, c.keyType)
	}
	for _, c := range lenientCases {
		seed(c.fields, "")
	}
	seed(map[string]*string{"interval_seconds": ptr("3600"), "end_at": ptr(strconv.FormatInt(t0.Add(5*time.Hour).UnixMilli(), 10))}, "")
	seed(map[string]*string{"status": ptr("executed")}, "")

	rdb := redistest.Start(f).Client(f)
	s := prompts.NewStore(rdb)
	f.Fuzz(func(t *testing.T, keyType, status, fireAt, interval, endAt, fireCount, platform, channelID, text string) {
		ctx := context.Background()
		if err := rdb.FlushDB(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		values := []string{status, fireAt, interval, endAt, fireCount, platform, channelID, text}
		fields := map[string]*string{}
		for i, k := range promptFields {
			if values[i] == absent {
				fields[k] = nil
			} else {
				fields[k] = &values[i]
			}
		}
		switch keyType {
		case "", "string", "list", "set":
		default:
			keyType = ""
		}
		writeRaw(t, rdb, "fuzzed", fields, keyType)
		ok := add(t, s, prompts.New{FireAt: t0})

		now := t0.Add(time.Second)
		var fired, reported int
		for range 2 {
			fs, ms, err := s.Tick(ctx, now, 10)
			if err != nil {
				t.Fatalf("tick: %v", err)
			}
			for _, x := range fs {
				if x.PromptID == "fuzzed" {
					fired++
				}
			}
			for _, m := range ms {
				if m.PromptID != "fuzzed" || m.Reason == "" {
					t.Fatalf("malformed %+v", m)
				}
				reported++
			}
		}
		if n := firedCounts(t, rdb); n[ok.ID] != 1 {
			t.Fatalf("valid prompt fired %d times", n[ok.ID])
		}
		due, dueErr := rdb.ZScore(ctx, prompts.DueKey, "fuzzed").Result()
		_, finErr := rdb.ZScore(ctx, prompts.FinishedKey, "fuzzed").Result()
		var p prompts.Prompt
		if keyType == "" {
			var err error
			if p, err = s.Get(ctx, "fuzzed"); err != nil {
				t.Fatal(err)
			}
		}
		switch {
		case fired+reported > 1:
			t.Fatalf("fired %d and reported %d times", fired, reported)
		case reported == 1:
			if dueErr != redis.Nil || finErr != nil {
				t.Fatalf("invalid prompt: due %v, finished %v", dueErr, finErr)
			}
			if keyType == "" && (p.Status != prompts.Invalid || p.InvalidReason == "") {
				t.Fatalf("not recorded invalid: %+v", p)
			}
		case fired == 1:
			switch {
			case p.Status == prompts.Pending && dueErr == nil:
				if due <= float64(now.UnixMilli()) || !p.FireAt.Equal(time.UnixMilli(int64(due))) {
					t.Fatalf("rescheduled to %v (score %v), now %v", p.FireAt, due, now)
				}
			case p.Status != prompts.Executed || dueErr != redis.Nil || finErr != nil:
				t.Fatalf("fired prompt: %+v, due %v, finished %v", p, dueErr, finErr)
			}
		default: // not pending: dropped from the index, untouched
			if keyType != "" || status == "pending" || status == absent || dueErr != redis.Nil || p.Status != prompts.Status(status) {
				t.Fatalf("neither fired nor reported: status %q, %+v, due %v", status, p, dueErr)
			}
		}
	})
}
