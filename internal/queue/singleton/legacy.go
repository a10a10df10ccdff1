package singleton

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// LegacyLeader is the Python TaskSupervisor's leader lease (its
// SG_LEADER_KEY, "sg:leader:supervisor" by default): while it exists, the
// Python bot runs the supervised loops itself, so during a rolling
// cut-over the Go singletons of those loops stand down.
type LegacyLeader struct {
	Redis redis.UniversalClient
	Key   string
}

// Held reports whether some node holds the lease.
func (l LegacyLeader) Held(ctx context.Context) (bool, error) {
	n, err := l.Redis.Exists(ctx, l.Key).Result()
	if err != nil {
		return false, fmt.Errorf("reading the legacy leader lease %s: %w", l.Key, err)
	}
	return n == 1, nil
}
