package plan

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/scrapecache"
)

// Collector exports the backlog the planners wrote (BacklogKey): per task
// and source the messages not yet extracted and the age of the oldest, and
// per task the units queued. It reads Redis at most once per cacheFor, so
// frequent scrapes of many pods cost Redis little, and in the background
// when a read is slow (scrapecache): a scrape never waits on Redis for long.
type Collector struct {
	rdb   redis.UniversalClient
	tasks []string
	now   func() time.Time
	cache *scrapecache.Cache[backlogRead]

	pending, oldest, units, planned, updated, up *prometheus.Desc
}

// backlogRead is one read of every task's backlog.
type backlogRead struct {
	backlogs []Backlog
	err      error
}

// NewCollector reads the backlog of tasks from rdb, cached for cacheFor
// (0: 10 s).
func NewCollector(rdb redis.UniversalClient, tasks []string, cacheFor time.Duration) *Collector {
	if cacheFor <= 0 {
		cacheFor = 10 * time.Second
	}
	c := &Collector{
		rdb: rdb, tasks: tasks, now: time.Now,
		pending: prometheus.NewDesc("stargazer_extraction_backlog_messages",
			"Messages after the extraction cursor (not yet extracted), by planner task and source, as of the task's last planning pass.", []string{"task", "source"}, nil),
		oldest: prometheus.NewDesc("stargazer_extraction_backlog_oldest_seconds",
			"Age of the oldest message not yet extracted, by planner task and source.", []string{"task", "source"}, nil),
		units: prometheus.NewDesc("stargazer_extraction_units_queued",
			"Extraction units (kg_extract_unit) planned and not yet settled, by planner task (read at the scrape).", []string{"task"}, nil),
		planned: prometheus.NewDesc("stargazer_extraction_planned_messages",
			"Messages in the queued extraction units, by planner task.", []string{"task"}, nil),
		updated: prometheus.NewDesc("stargazer_extraction_backlog_updated_seconds",
			"Age of the backlog figures: time since the task's last planning pass.", []string{"task"}, nil),
		up: prometheus.NewDesc("stargazer_extraction_backlog_scrape_ok",
			"1 if the extraction backlog could be read from Redis.", nil, nil),
	}
	c.cache = scrapecache.New(c.load, cacheFor, 0)
	return c
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.pending, c.oldest, c.units, c.planned, c.updated, c.up} {
		ch <- d
	}
}

func (c *Collector) load() backlogRead {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var r backlogRead
	for _, t := range c.tasks {
		b, err := ReadBacklog(ctx, c.rdb, t)
		if err == nil {
			// Units settle between passes (auto_kg_extraction plans every
			// 4 h): the queue's size is read live.
			b.Units, err = c.rdb.HLen(ctx, UnitsKey(t)).Result()
		}
		if err != nil {
			return backlogRead{err: err}
		}
		r.backlogs = append(r.backlogs, b)
	}
	return r
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	r, at := c.cache.Get()
	bs, err := r.backlogs, r.err
	if at.IsZero() || err != nil { // the first read still runs, or failed
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 0)
		return
	}
	now := c.now()
	for _, b := range bs {
		if b.Updated.IsZero() {
			continue // never planned (task off)
		}
		ch <- prometheus.MustNewConstMetric(c.units, prometheus.GaugeValue, float64(b.Units), b.Task)
		ch <- prometheus.MustNewConstMetric(c.planned, prometheus.GaugeValue, float64(b.Planned), b.Task)
		ch <- prometheus.MustNewConstMetric(c.updated, prometheus.GaugeValue, now.Sub(b.Updated).Seconds(), b.Task)
		for _, s := range b.Sources {
			ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, float64(s.Pending), b.Task, s.Source)
			ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, max(0, now.Sub(s.Oldest).Seconds()), b.Task, s.Source)
		}
	}
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 1)
}
