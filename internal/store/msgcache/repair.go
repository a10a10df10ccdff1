package msgcache

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// replaceTextScript sets a cached message's text and, when ARGV[2] is 1,
// drops its embedding, which described the old text, in one step; it does
// nothing for a message that is gone.
var replaceTextScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'text', ARGV[1])
if ARGV[2] == '1' then redis.call('HDEL', KEYS[1], 'embedding', 'embedding_model') end
return 1
`)

// ReplaceText repairs a cached message whose text changed on the platform
// (an edit the bot missed). It also removes the embedding
// of the old text, so the message counts as needing one (HasEmbedding is
// false) and recall never matches it on words it no longer says. It
// reports whether the message exists.
func (s *Store) ReplaceText(ctx context.Context, key, text string) (bool, error) {
	return s.replaceText(ctx, key, text, "1")
}

// ReplaceTextKeepingEmbedding repairs the text but keeps the embedding of
// the old one, for a deployment that cannot compute a new one: a vector of
// nearly the same words serves recall better than none, which is what the
// original did.
func (s *Store) ReplaceTextKeepingEmbedding(ctx context.Context, key, text string) (bool, error) {
	return s.replaceText(ctx, key, text, "0")
}

func (s *Store) replaceText(ctx context.Context, key, text, dropEmbedding string) (bool, error) {
	n, err := replaceTextScript.Run(ctx, s.rdb, []string{key}, text, dropEmbedding).Int()
	if err != nil {
		return false, fmt.Errorf("msgcache: repairing %s: %w", key, err)
	}
	return n == 1, nil
}

var setIfTextScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'text') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'embedding', ARGV[2], 'embedding_model', ARGV[3])
return 1
`)

// SetEmbeddingForText stores vec as the message's embedding only if the
// message still has text, the text vec was computed from. A message that
// was deleted or edited meanwhile keeps what it has (its edit queues an
// embedding of its own); ok reports whether vec was stored.
func (s *Store) SetEmbeddingForText(ctx context.Context, key, text string, vec []float32, model string) (ok bool, err error) {
	n, err := setIfTextScript.Run(ctx, s.rdb, []string{key}, text, EncodeVector(vec), model).Int()
	if err != nil {
		return false, fmt.Errorf("msgcache: storing embedding of %s: %w", key, err)
	}
	return n == 1, nil
}
