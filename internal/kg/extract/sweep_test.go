package extract_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/kg/extract"
)

// A claim whose batch died and whose fragments nobody asks about again is
// dropped by the next engine's sweep, as the engine would drop it on the
// next touch; a claim that still means something is kept.
func TestEngineSweepsClaimsNobodyWillResolve(t *testing.T) {
	ctx := context.Background()
	v := newEnv(t)
	ms := func(d time.Duration) int64 { return now.Add(d).UnixMilli() }
	claims := []struct {
		id, value string
		batch     bool // its stored answer exists
		kept      bool
	}{
		{"expired-days-ago", fmt.Sprintf("b1|%d|c", ms(-73*time.Hour)), false, false},
		{"expired-an-hour-ago", fmt.Sprintf("b2|%d|c", ms(-time.Hour)), false, true},
		{"live", fmt.Sprintf("b3|%d|c", ms(time.Minute)), false, true},
		{"answered-answer-stored", fmt.Sprintf("b4|%d|a", ms(-time.Hour)), true, true},
		{"answered-answer-gone", fmt.Sprintf("b5|%d|a", ms(-time.Hour)), false, false},
		{"answered-write-failed-answer-gone", "b6|0|a", false, false},
		{"answered-live", fmt.Sprintf("b7|%d|a", ms(time.Minute)), false, true},
		{"malformed", "whatever", false, true},
	}
	for _, c := range claims {
		if err := v.rdb.HSet(ctx, extract.ClaimsKey, c.id, c.value).Err(); err != nil {
			t.Fatal(err)
		}
		if c.batch {
			batch := c.value[:2]
			if err := v.rdb.Set(ctx, extract.BatchKeyPrefix+batch, `{"fragments":[]}`, time.Hour).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := v.engine(t).Extract(ctx, chat("discord:1", 1)); err != nil {
		t.Fatal(err)
	}
	left, err := v.rdb.HGetAll(ctx, extract.ClaimsKey).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range claims {
		if _, ok := left[c.id]; ok != c.kept {
			t.Errorf("claim %s (%s): kept %v, want %v", c.id, c.value, ok, c.kept)
		}
	}
}
