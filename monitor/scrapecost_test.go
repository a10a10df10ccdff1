package monitor_test

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/jobs"
	"github.com/stargazer/stargazer-jobs/monitor"
)

// redisCommands is the number of commands Redis ran since the last
// CONFIG RESETSTAT, the test's own INFO and CONFIG calls left out.
func redisCommands(t *testing.T, rdb *redis.Client) int {
	t.Helper()
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") || name == "cmdstat_info" || strings.HasPrefix(name, "cmdstat_config") {
			continue
		}
		calls, _, _ := strings.Cut(strings.TrimPrefix(rest, "calls="), ",")
		c, _ := strconv.Atoi(calls)
		n += c
	}
	return n
}

// TestScrapesCostABoundedNumberOfRedisCommands measures the Redis commands
// of one /metrics scrape, then of 100 concurrent scrapers for 10 s, on a
// monitor process (ROLE=monitor: nothing else in it talks to Redis).
func TestScrapesCostABoundedNumberOfRedisCommands(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	client := asynq.NewClient(asynq.RedisClientOpt{Addr: srv.Addr})
	defer client.Close()
	for q := range jobs.Queues() {
		if _, err := client.Enqueue(asynq.NewTask("demo", nil), asynq.Queue(q)); err != nil {
			t.Fatal(err)
		}
	}
	w := startWorkerProcess(t, srv.URL(), map[string]string{"ROLE": "monitor", "MONITOR_TOKEN": adminToken})
	ctx := context.Background()
	scrape := func(c *http.Client) {
		resp, err := c.Get(w.url + "/metrics")
		if err != nil {
			t.Error(err)
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	// startWorkerProcess's /readyz made a PING; the first scrape reads
	// every queue.
	rdb.ConfigResetStat(ctx)
	scrape(http.DefaultClient)
	one := redisCommands(t, rdb)
	rdb.ConfigResetStat(ctx)
	scrape(http.DefaultClient)
	cached := redisCommands(t, rdb)
	t.Logf("one scrape: %d Redis commands; a second one within %v: %d", one, monitor.QueueMetricsMaxAge, cached)
	if one == 0 || cached != 0 {
		t.Fatalf("first scrape %d commands, second %d: want > 0, then 0 from the cache", one, cached)
	}

	rdb.ConfigResetStat(ctx)
	const scrapers, window = 100, 10 * time.Second
	var n atomic.Int64
	var wg sync.WaitGroup
	stop := time.Now().Add(window)
	for range scrapers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
			for time.Now().Before(stop) {
				scrape(c)
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	total := redisCommands(t, rdb)
	t.Logf("%d scrapers for %v: %d scrapes, %d Redis commands (%.2f per scrape)", scrapers, window, n.Load(), total, float64(total)/float64(n.Load()))
	// A window of one cache period holds at most two refreshes.
	if limit := 2 * one; total > limit {
		t.Errorf("%d commands for %d scrapes, want at most %d (two refreshes)", total, n.Load(), limit)
	}
}
