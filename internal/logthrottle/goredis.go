package logthrottle

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
)

// RedisLogger routes go-redis's own log lines (connection pool dial
// failures, bad PubSub connections, Sentinel events), which it prints as
// plain text on stderr by default, into l as warnings of component
// go-redis. Install it with redis.SetLogger; go-redis keeps one logger for
// the whole process.
type RedisLogger struct{ L *slog.Logger }

// Printf implements go-redis's internal Logging interface.
func (r RedisLogger) Printf(ctx context.Context, format string, v ...any) {
	msg := strings.TrimPrefix(fmt.Sprintf(format, v...), "redis: ")
	r.L.WarnContext(ctx, "go-redis: "+msg, "component", "go-redis")
}
