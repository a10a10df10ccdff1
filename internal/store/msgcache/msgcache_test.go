package msgcache_test

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/store/msgcache"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

func TestLogStoresEachPlatformMessageOnceAndTracksActivity(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	s := msgcache.New(rdb)
	room := msgcache.Channel{Platform: "matrix", ID: "!abc:example.org"}
	guild := msgcache.Channel{Platform: "discord", ID: "1100000000000000001"}
	base := time.UnixMilli(1_700_000_000_000)
	for i, m := range []msgcache.Message{
		{Channel: room, MessageID: "$e1:example.org", UserID: "@a:example.org", Text: "hello", Time: base},
		{Channel: guild, MessageID: "1200000000000000001", Text: "hi", Time: base.Add(time.Minute)},
		{Channel: room, MessageID: "$e2:example.org", Text: "again", Time: base.Add(2 * time.Minute), Kind: msgcache.KindAssistantOut},
	} {
		if _, created, err := s.Log(ctx, m); err != nil || !created {
			t.Fatalf("log %d: created=%v err=%v", i, created, err)
		}
	}
	key, created, err := s.Log(ctx, msgcache.Message{Channel: room, MessageID: "$e1:example.org", Text: "changed", Time: base})
	if err != nil || created || key != msgcache.MessageKey(room, "$e1:example.org") {
		t.Fatalf("re-log: key=%s created=%v err=%v", key, created, err)
	}
	active, err := s.ActiveChannels(ctx, 10)
	if err != nil || !slices.Equal(active, []msgcache.Channel{room, guild}) {
		t.Fatalf("active = %v, %v", active, err)
	}
	msgs, err := s.Recent(ctx, room, 10)
	if err != nil || len(msgs) != 2 || msgs[0].Text != "hello" || msgs[1].Kind != msgcache.KindAssistantOut || msgs[0].Channel != room {
		t.Fatalf("recent = %+v, %v", msgs, err)
	}
	after, err := s.Range(ctx, room, base.UnixMilli(), 0, 10)
	if err != nil || len(after) != 1 || after[0].MessageID != "$e2:example.org" {
		t.Fatalf("range after first = %+v, %v", after, err)
	}
	found, err := s.DiscoverChannels(ctx)
	slices.SortFunc(found, func(a, b msgcache.Channel) int { return len(a.ID) - len(b.ID) })
	if err != nil || len(found) != 2 {
		t.Fatalf("discovered = %v, %v", found, err)
	}
	if _, _, err := s.Log(ctx, msgcache.Message{Channel: room}); err == nil {
		t.Fatal("a message without id was cached")
	}
}

func TestEmbeddingsAreRealOnlyWhenNonZero(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	s := msgcache.New(rdb)
	c := msgcache.Channel{Platform: "discord", ID: "1"}
	k1, _, _ := s.Log(ctx, msgcache.Message{Channel: c, MessageID: "1", Text: "a", Time: time.Now()})
	k2, _, _ := s.Log(ctx, msgcache.Message{Channel: c, MessageID: "2", Text: "b", Time: time.Now()})
	k3, _, _ := s.Log(ctx, msgcache.Message{Channel: c, MessageID: "3", Text: "c", Time: time.Now()})
	if ok, err := s.SetEmbedding(ctx, k1, []float32{0.5, -1}, "m"); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if ok, err := s.SetEmbedding(ctx, k2, []float32{0, 0}, "m"); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if ok, _ := s.SetEmbedding(ctx, "sg:msg:discord:1:gone", []float32{1}, "m"); ok {
		t.Fatal("embedding created a deleted message")
	}
	has, err := s.HasEmbedding(ctx, []string{k1, k2, k3})
	if err != nil || !slices.Equal(has, []bool{true, false, false}) {
		t.Fatalf("has = %v, %v", has, err)
	}
	raw, _ := rdb.HGet(ctx, k1, "embedding").Bytes()
	if v := msgcache.DecodeVector(raw); !slices.Equal(v, []float32{0.5, -1}) {
		t.Fatalf("decoded %v", v)
	}
}

func TestMetaRoundTrips(t *testing.T) {
	ctx := context.Background()
	s := msgcache.New(redistest.Start(t).Client(t))
	c := msgcache.Channel{Platform: "matrix", ID: "!dm:x"}
	if _, ok, _ := s.Meta(ctx, c); ok {
		t.Fatal("meta before recording")
	}
	want := msgcache.Meta{Name: "DM", IsDM: true}
	if err := s.RecordMeta(ctx, c, want, time.Now()); err != nil {
		t.Fatal(err)
	}
	if got, ok, err := s.Meta(ctx, c); !ok || err != nil || got != want {
		t.Fatalf("meta = %+v %v %v", got, ok, err)
	}
}

func TestSummaryAndHeartbeatKeepTheNewerVersion(t *testing.T) {
	ctx := context.Background()
	s := msgcache.New(redistest.Start(t).Client(t))
	c := msgcache.Channel{Platform: "matrix", ID: "!room:x"}
	if _, ok, err := s.Summary(ctx, c); ok || err != nil {
		t.Fatalf("summary before writing: ok=%v err=%v", ok, err)
	}
	now := time.UnixMilli(1_700_000_100_000)
	sum := msgcache.Summary{Text: "they planned a trip", UpdatedAt: now, MessageCount: 3, LastMessageTS: 1_700_000_000_000, Model: "m"}
	if ok, err := s.SetSummary(ctx, c, sum); !ok || err != nil {
		t.Fatalf("first write: ok=%v err=%v", ok, err)
	}
	stale := sum
	stale.Text, stale.LastMessageTS = "older", sum.LastMessageTS-1
	for _, old := range []msgcache.Summary{stale, sum} {
		if ok, err := s.SetSummary(ctx, c, old); ok || err != nil {
			t.Fatalf("write not newer than the stored one: ok=%v err=%v", ok, err)
		}
	}
	if got, ok, err := s.Summary(ctx, c); !ok || err != nil || got != sum {
		t.Fatalf("summary = %+v %v %v, want %+v", got, ok, err, sum)
	}

	note := msgcache.Note{Text: "quiet today", UpdatedAt: now, LastMessageTS: 5, Model: "flash"}
	if ok, err := s.SetHeartbeat(ctx, c, note); !ok || err != nil {
		t.Fatalf("heartbeat write: ok=%v err=%v", ok, err)
	}
	if ok, _ := s.SetHeartbeat(ctx, c, msgcache.Note{Text: "stale", LastMessageTS: 4}); ok {
		t.Fatal("a stale heartbeat replaced a newer one")
	}
	if got, ok, err := s.Heartbeat(ctx, c); !ok || err != nil || got != note {
		t.Fatalf("heartbeat = %+v %v %v, want %+v", got, ok, err, note)
	}
}

func TestSinceReturnsTheNewestMessagesAfterATime(t *testing.T) {
	ctx := context.Background()
	s := msgcache.New(redistest.Start(t).Client(t))
	c := msgcache.Channel{Platform: "discord", ID: "7"}
	base := time.UnixMilli(1_700_000_000_000)
	for i := range 5 {
		if _, _, err := s.Log(ctx, msgcache.Message{Channel: c, MessageID: strconv.Itoa(i), Text: strconv.Itoa(i), Time: base.Add(time.Duration(i) * time.Second)}); err != nil {
			t.Fatal(err)
		}
	}
	texts := func(ms []msgcache.Message) []string {
		var out []string
		for _, m := range ms {
			out = append(out, m.Text)
		}
		return out
	}
	tests := []struct {
		after int64
		limit int
		want  []string
	}{
		{0, 10, []string{"0", "1", "2", "3", "4"}},
		{0, 2, []string{"3", "4"}},
		{base.Add(2 * time.Second).UnixMilli(), 10, []string{"3", "4"}},
		{base.Add(4 * time.Second).UnixMilli(), 10, nil},
	}
	for _, tt := range tests {
		got, err := s.Since(ctx, c, tt.after, tt.limit)
		if err != nil || !slices.Equal(texts(got), tt.want) {
			t.Errorf("Since(%d, %d) = %v, %v; want %v", tt.after, tt.limit, texts(got), err, tt.want)
		}
	}
}

func TestAllActiveSkipsMalformedMembersAndReturnsTheRest(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	s := msgcache.New(rdb)
	for _, m := range []string{"discord:1", "no-colon", ":x", "matrix:!r:example.org", "discord:"} {
		if err := rdb.ZAdd(ctx, msgcache.ActiveKey, redis.Z{Score: 1, Member: m}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	chans, malformed, err := s.AllActive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []msgcache.Channel{{Platform: "discord", ID: "1"}, {Platform: "matrix", ID: "!r:example.org"}}
	slices.SortFunc(chans, func(a, b msgcache.Channel) int { return strings.Compare(a.String(), b.String()) })
	if !slices.Equal(chans, want) {
		t.Fatalf("channels = %v, want %v", chans, want)
	}
	slices.Sort(malformed)
	if !slices.Equal(malformed, []string{":x", "discord:", "no-colon"}) {
		t.Fatalf("malformed = %q", malformed)
	}
}

func TestReconcileAddsChannelsMissingFromTheActiveSetAtTheirNewestMessage(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	s := msgcache.New(rdb)
	listed := msgcache.Channel{Platform: "discord", ID: "1"}
	missing := msgcache.Channel{Platform: "matrix", ID: "!lost:example.org"}
	base := time.UnixMilli(1_700_000_000_000)
	for i, c := range []msgcache.Channel{listed, missing, missing} {
		if _, _, err := s.Log(ctx, msgcache.Message{Channel: c, MessageID: strconv.Itoa(i), Text: "x", Time: base.Add(time.Duration(i) * time.Minute)}); err != nil {
			t.Fatal(err)
		}
	}
	// The bot lost track of one channel, and the other's score is its own.
	if err := rdb.ZRem(ctx, msgcache.ActiveKey, missing.String()).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.ZAdd(ctx, msgcache.ActiveKey, redis.Z{Score: 42, Member: listed.String()}).Err(); err != nil {
		t.Fatal(err)
	}
	// A foreign key under the pattern, no sorted set, stops nothing.
	if err := rdb.Set(ctx, "sg:msgs:discord:0", "not a set", 0).Err(); err != nil {
		t.Fatal(err)
	}
	added, scanned, err := s.Reconcile(ctx)
	if err != nil || !slices.Equal(added, []msgcache.Channel{missing}) || scanned != 3 {
		t.Fatalf("reconcile: added %v of %d scanned, %v", added, scanned, err)
	}
	score, err := rdb.ZScore(ctx, msgcache.ActiveKey, missing.String()).Result()
	if err != nil || int64(score) != base.Add(2*time.Minute).UnixMilli() {
		t.Fatalf("missing channel's score = %v, %v; want its newest message", score, err)
	}
	if score, _ := rdb.ZScore(ctx, msgcache.ActiveKey, listed.String()).Result(); score != 42 {
		t.Fatalf("a listed channel's score was changed to %v", score)
	}
	if added, _, err := s.Reconcile(ctx); err != nil || len(added) != 0 {
		t.Fatalf("second reconcile added %v, %v", added, err)
	}
}
