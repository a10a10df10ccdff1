package app

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/config"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

// One URL is one client: without QUEUE_REDIS_URL (or with it equal to
// REDIS_URL) the job system uses the bot's client itself, so neither the
// connection count nor anything else changes.
func TestOneRedisURLIsOneClient(t *testing.T) {
	bot, queue := redistest.Start(t), redistest.Start(t)
	for _, tt := range []struct {
		name     string
		queueURL string
		separate bool
	}{
		{"unset", "", false},
		{"equal to REDIS_URL", bot.URL(), false},
		{"another server", queue.URL(), true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			env := map[string]string{"REDIS_URL": bot.URL(), "QUEUE_REDIS_URL": tt.queueURL}
			cfg, err := config.Load(func(k string) string { return env[k] }, nil, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			log := slog.New(slog.DiscardHandler)
			a := &app{cfg: cfg, log: log, now: time.Now}
			defer a.stops.run(log)
			if err := a.connect(); err != nil {
				t.Fatal(err)
			}
			if (a.qdb != a.rdb) != tt.separate {
				t.Fatalf("separate clients = %v, want %v", a.qdb != a.rdb, tt.separate)
			}
			if tt.separate && a.qdb.Options().Addr != queue.Addr {
				t.Fatalf("queue client at %s, want %s", a.qdb.Options().Addr, queue.Addr)
			}
		})
	}
}
