package monitor_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/testkit/faultproxy"
	"github.com/stargazer/stargazer-jobs/internal/testkit/poll"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/workerproc"
)

// scrapeTimeout is the timeout Prometheus gives a scrape unless told
// otherwise, and the one the compose file and the PodMonitor leave in
// place.
const scrapeTimeout = 10 * time.Second

// TestFirstScrapeAnswersWhileRedisDoesNot: a monitor's first scrape is
// where its Redis clients dial for the first time (the monitor role starts
// no task and pings nothing at startup). A Redis that does not answer yet
// (here a proxy that holds every byte, as a slow name lookup or a stalled
// network would) must not hold the scrape past Prometheus's timeout: the
// scrape is answered, saying Redis could not be read yet, and the queue
// series come with the first scrape after Redis answers. Before the
// collectors read in the background this scrape took 5 s (the backlog
// collector's deadline; the queue collector's read failed after 3 s), and
// with a Redis that takes no connection at all over 60 s: asynq's client
// dials five times per attempt, 5 s each, with no deadline of the scrape's.
func TestFirstScrapeAnswersWhileRedisDoesNot(t *testing.T) {
	if workerBinary == "" {
		t.Skip("multi-process test: skipped under -short")
	}
	srv := redistest.Start(t)
	proxy, err := faultproxy.Start(srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	proxy.SetMode(faultproxy.Stall)
	w := workerproc.Start(t, workerBinary, map[string]string{
		"ROLE": "monitor", "REDIS_URL": "redis://" + proxy.Addr(), "QUEUE_METRICS": "true",
		"MONITOR_TOKEN": adminToken, "SHUTDOWN_TIMEOUT": "2s",
	}, workerproc.Serves("/healthz"), 20*time.Second)

	scrape := func() (int, string, time.Duration) {
		req, err := http.NewRequest(http.MethodGet, "http://"+w.Addr+"/metrics", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("X-Prometheus-Scrape-Timeout-Seconds", "10")
		c := &http.Client{Timeout: 2 * scrapeTimeout}
		start := time.Now()
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("scrape: %v", err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), time.Since(start)
	}
	code, body, took := scrape()
	t.Logf("first scrape with Redis silent: %d in %v", code, took.Round(time.Millisecond))
	// The bound: the scrape timeout with a margin for a loaded machine.
	if code != http.StatusOK || took > scrapeTimeout/2 {
		t.Fatalf("first scrape %d after %v, want 200 well within Prometheus's %v timeout", code, took, scrapeTimeout)
	}
	for _, want := range []string{"stargazer_redis_up 0", "stargazer_queue_scrape_ok 0", "stargazer_extraction_backlog_scrape_ok 0"} {
		if !strings.Contains(body, want) || strings.Contains(body, "stargazer_queue_tasks{") {
			t.Errorf("first scrape with Redis silent: want %s and no queue series yet:\n%s", want, grepLines(body, "stargazer_redis_up", "stargazer_queue_", "stargazer_extraction_"))
		}
	}

	proxy.SetMode(faultproxy.Pass)
	poll.Until(t, "queue metrics read once Redis answers", func() bool {
		code, body, took := scrape()
		if code != http.StatusOK || took > scrapeTimeout/2 {
			t.Fatalf("scrape %d after %v while Redis recovers", code, took)
		}
		return strings.Contains(body, "stargazer_queue_scrape_ok 1")
	})
}

// grepLines returns the lines of s that start with one of prefixes.
func grepLines(s string, prefixes ...string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		for _, p := range prefixes {
			if strings.HasPrefix(l, p) {
				out = append(out, l)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}
