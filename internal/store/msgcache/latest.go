package msgcache

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// Latest returns the position of c's newest message set member, or the
// zero Position when the set is empty: where a cursor that should skip a
// channel's history (bootstrap "latest") starts.
func (s *Store) Latest(ctx context.Context, c Channel) (Position, error) {
	zs, err := s.rdb.ZRangeArgsWithScores(ctx, redis.ZRangeArgs{Key: MessagesKey(c), Start: 0, Stop: 0, Rev: true}).Result()
	if err != nil {
		return Position{}, fmt.Errorf("msgcache: newest message of %s: %w", c, err)
	}
	if len(zs) == 0 {
		return Position{}, nil
	}
	m, _ := zs[0].Member.(string)
	return Position{TS: int64(zs[0].Score), Key: m}, nil
}
