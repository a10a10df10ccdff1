package msgcache_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/store/msgcache"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

func TestReplaceTextDropsTheStaleEmbedding(t *testing.T) {
	ctx := context.Background()
	s := msgcache.New(redistest.Start(t).Client(t))
	c := msgcache.Channel{Platform: "discord", ID: "1"}
	k, _, _ := s.Log(ctx, msgcache.Message{Channel: c, MessageID: "7", Text: "teh moon", Time: time.Now()})
	if _, err := s.SetEmbedding(ctx, k, []float32{1, 2}, "m"); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.ReplaceText(ctx, k, "the moon"); !ok || err != nil {
		t.Fatal(ok, err)
	}
	texts, _ := s.Texts(ctx, []string{k})
	has, _ := s.HasEmbedding(ctx, []string{k})
	if texts[0] != "the moon" || has[0] {
		t.Fatalf("text %q, has embedding %v; want the new text and no embedding", texts[0], has[0])
	}
	if ok, _ := s.ReplaceText(ctx, msgcache.MessageKey(c, "gone"), "x"); ok {
		t.Fatal("repair created a deleted message")
	}
	if found, _ := s.Exists(ctx, []string{msgcache.MessageKey(c, "gone")}); found[0] {
		t.Fatal("deleted message exists after repair")
	}
}

func TestSetEmbeddingForTextStoresOnlyForTheEmbeddedText(t *testing.T) {
	ctx := context.Background()
	s := msgcache.New(redistest.Start(t).Client(t))
	c := msgcache.Channel{Platform: "matrix", ID: "!r:x"}
	k, _, _ := s.Log(ctx, msgcache.Message{Channel: c, MessageID: "$1", Text: "new", Time: time.Now()})
	tests := []struct {
		name, key, text string
		want            bool
	}{
		{"text edited meanwhile", k, "old", false},
		{"message deleted", msgcache.MessageKey(c, "$gone"), "new", false},
		{"text unchanged", k, "new", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ok, err := s.SetEmbeddingForText(ctx, tt.key, tt.text, []float32{0.25}, "m")
			if err != nil || ok != tt.want {
				t.Fatalf("stored = %v, %v; want %v", ok, err, tt.want)
			}
		})
	}
	has, _ := s.HasEmbedding(ctx, []string{k, msgcache.MessageKey(c, "$gone")})
	if !slices.Equal(has, []bool{true, false}) {
		t.Fatalf("has = %v", has)
	}
}
