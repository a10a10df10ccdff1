package msgcache_test

import (
	"context"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/store/msgcache"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

func TestLatestIsTheLastPositionOfTheSetEvenAmongEqualTimes(t *testing.T) {
	ctx := context.Background()
	s := msgcache.New(redistest.Start(t).Client(t))
	c := msgcache.Channel{Platform: "discord", ID: "1"}
	if p, err := s.Latest(ctx, c); err != nil || p != (msgcache.Position{}) {
		t.Fatalf("empty channel: %v, %v", p, err)
	}
	base := time.UnixMilli(1_700_000_000_000)
	var keys []string
	for _, id := range []string{"a", "c", "b"} {
		k, _, err := s.Log(ctx, msgcache.Message{Channel: c, MessageID: id, Text: id, Time: base})
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	p, err := s.Latest(ctx, c)
	if err != nil || p != (msgcache.Position{TS: base.UnixMilli(), Key: keys[1]}) {
		t.Fatalf("latest %v, %v; want the greatest key of the last millisecond %s", p, err, keys[1])
	}
	page, err := s.After(ctx, c, p, 10)
	if err != nil || len(page.Messages) != 0 {
		t.Errorf("messages after the latest position: %v, %v", page.Messages, err)
	}
}
