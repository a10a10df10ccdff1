// Package monitor holds what operators watch: Prometheus metrics, health
// and readiness probes, and the asynqmon dashboard, served as one handler
// tree.
package monitor

import (
	"context"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stargazer/stargazer-jobs/internal/queue/periodic"
	"github.com/stargazer/stargazer-jobs/internal/queue/server"
	"github.com/stargazer/stargazer-jobs/internal/scrapecache"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// Metrics are the worker's own series, labelled by task name.
type Metrics struct {
	TaskRuns       *prometheus.CounterVec
	TaskStarts     *prometheus.CounterVec
	TaskDuration   *prometheus.HistogramVec
	TaskInFlight   *prometheus.GaugeVec
	TaskCrashes    *prometheus.CounterVec
	SchedulerFires *prometheus.CounterVec
	SchedulerLate  *prometheus.HistogramVec
	SchedulerMiss  *prometheus.CounterVec
	TaskItems      *prometheus.CounterVec

	// What the alerting rules (deploy/prometheus/alerts.yml) need beyond
	// counts of runs.
	TaskLastSuccess  *prometheus.GaugeVec
	TaskInterval     *prometheus.GaugeVec
	TaskArchived     *prometheus.CounterVec
	SingletonSince   *prometheus.GaugeVec
	SingletonTimeout *prometheus.GaugeVec
	LeaseRecoveries  prometheus.Counter
	TaskStoodDown    *prometheus.CounterVec
	EventsDropped    prometheus.Counter
}

// NewMetrics creates the series and registers them on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		TaskRuns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stargazer_task_runs_total",
			Help: "Finished task runs by task and status (ok, error, skipped, panic, invalid).",
		}, []string{"task", "status"}),
		TaskStarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stargazer_task_starts_total",
			Help: "Task runs started, by task.",
		}, []string{"task"}),
		TaskDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "stargazer_task_duration_seconds",
			Help:    "Wall time of task runs, by task.",
			Buckets: []float64{.005, .025, .1, .5, 1, 5, 15, 60, 300, 900, 3600},
		}, []string{"task"}),
		TaskInFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "stargazer_task_in_flight",
			Help: "Task runs in progress in this process, by task.",
		}, []string{"task"}),
		TaskCrashes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stargazer_task_crashes_total",
			Help: "Failed task runs by task and error class (error, timeout, canceled, panic, invalid, not_found).",
		}, []string{"task", "class"}),
		SchedulerMiss: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stargazer_scheduler_missed_total",
			Help: "Occurrences missed while no scheduler ran, coalesced into the next run, by task.",
		}, []string{"task"}),
		SchedulerFires: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stargazer_scheduler_fires_total",
			Help: "Due occurrences handled by this scheduler, by task and outcome: enqueued (on time), late (enqueued more than 5 s after due), duplicate (a peer or a running singleton had it), overlap (previous run still going), coalesced (previous run finished after this one was due), error.",
		}, []string{"task", "outcome"}),
		SchedulerLate: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "stargazer_scheduler_lateness_seconds",
			Help:    "Delay between an occurrence's due time and its enqueue, by task.",
			Buckets: []float64{.01, .1, .5, 1, 2, 5, 15, 60, 300, 3600},
		}, []string{"task"}),
	}
	m.TaskItems = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "stargazer_task_items_total",
		Help: "Items handled by task runs (the numeric fields of each run's result: fired, merged, pruned, removed...), by task and item.",
	}, []string{"task", "item"})
	m.TaskLastSuccess = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "stargazer_task_last_success_timestamp_seconds",
		Help: "Unix time of the last successful run of each task in this process.",
	}, []string{"task"})
	m.TaskInterval = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "stargazer_task_interval_seconds",
		Help: "Effective interval of each periodic task this process schedules (after TASK_INTERVALS and the interval settings).",
	}, []string{"task"})
	m.TaskArchived = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "stargazer_task_archived_total",
		Help: "Task runs that failed for good (no retry left, or not retryable) and were archived, by task.",
	}, []string{"task"})
	m.SingletonSince = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "stargazer_singleton_held_since_timestamp_seconds",
		Help: "Unix time at which the singleton run in progress in this process took its lease, by task; absent when none runs here.",
	}, []string{"task"})
	m.SingletonTimeout = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "stargazer_singleton_timeout_seconds",
		Help: "Timeout of the singleton run in progress in this process, by task; absent when none runs here.",
	}, []string{"task"})
	m.LeaseRecoveries = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "stargazer_lease_recoveries_total",
		Help: "Tasks of dead workers (task lease expired) this process put back on their queue (FAST_LEASE_RECOVERY).",
	})
	reg.MustRegister(m.TaskItems)
	m.TaskStoodDown = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "stargazer_task_stood_down_total",
		Help: "Runs refused before they started, by task and reason: kill_switch (the chat-LLM kill switch is off), legacy_leader (the Python supervisor holds its lease), legacy_run (the Python scheduler ran the task within the cut-over window), budget (the task's LLM work is deferred).",
	}, []string{"task", "reason"})
	reg.MustRegister(m.TaskStoodDown)
	reg.MustRegister(m.TaskLastSuccess, m.TaskInterval, m.TaskArchived, m.SingletonSince, m.SingletonTimeout, m.LeaseRecoveries)
	m.EventsDropped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "stargazer_debug_events_dropped_total",
		Help: "Debug events (scheduler_task_run) not published: buffer full, Redis unreachable, or still buffered when the stop flush ran out of time.",
	})
	reg.MustRegister(m.EventsDropped)
	reg.MustRegister(m.TaskRuns, m.TaskStarts, m.TaskDuration, m.TaskInFlight, m.TaskCrashes,
		m.SchedulerFires, m.SchedulerLate, m.SchedulerMiss)
	return m
}

// Periodic records the effective interval of a periodic task this process
// schedules, and creates its scheduler series at zero: an alert on the
// increase of a counter cannot see the increment that creates the series.
func (m *Metrics) Periodic(task string, interval time.Duration) {
	m.TaskInterval.WithLabelValues(task).Set(interval.Seconds())
	m.SchedulerMiss.WithLabelValues(task)
	for _, outcome := range []string{"overlap", "late", "error"} {
		m.SchedulerFires.WithLabelValues(task, outcome)
	}
}

// NewRedisUp returns the stargazer_redis_up gauge: 1 if p answered a ping
// within a second, else 0. It asks at scrape time, so it holds in every
// role and while the worker still waits for Redis at startup, but at most
// once per QueueMetricsMaxAge: like the queue metrics, any number of
// scrapers costs Redis one PING per period, and concurrent scrapes share it.
func NewRedisUp(p Pinger) prometheus.Collector {
	var (
		mu      sync.Mutex
		askedAt time.Time
		up      float64
	)
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "stargazer_redis_up",
		Help: "1 if this process reached Redis (PING) when last asked (at scrape time, at most every 10 s), else 0.",
	}, func() float64 {
		mu.Lock()
		defer mu.Unlock()
		if time.Since(askedAt) < QueueMetricsMaxAge {
			return up
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		up = 1
		if p.Ping(ctx) != nil {
			up = 0
		}
		askedAt = time.Now()
		return up
	})
}

// AddItems counts items a task run handled.
func (m *Metrics) AddItems(task, item string, n float64) {
	if n > 0 {
		m.TaskItems.WithLabelValues(task, item).Add(n)
	}
}

// RunStarted counts a task run that started (server.Observer).
func (m *Metrics) RunStarted(task string) {
	m.TaskStarts.WithLabelValues(task).Inc()
	m.TaskInFlight.WithLabelValues(task).Inc()
}

// RunFinished counts a finished run by status, a failed one by error
// class, an archived one, and stamps a success (server.Observer).
func (m *Metrics) RunFinished(r server.Run) {
	m.TaskInFlight.WithLabelValues(r.Task).Dec()
	m.TaskRuns.WithLabelValues(r.Task, r.Status).Inc()
	m.TaskDuration.WithLabelValues(r.Task).Observe(r.Elapsed.Seconds())
	if r.Class != "" {
		m.TaskCrashes.WithLabelValues(r.Task, r.Class).Inc()
	}
	if r.Archived {
		m.TaskArchived.WithLabelValues(r.Task).Inc()
	}
	if r.Status == server.StatusOK {
		m.TaskLastSuccess.WithLabelValues(r.Task).SetToCurrentTime()
	}
}

// SingletonHeld exports when a singleton run took its lease and its
// timeout, until it ends (server.Observer).
func (m *Metrics) SingletonHeld(task string, timeout time.Duration) func() {
	m.SingletonSince.WithLabelValues(task).SetToCurrentTime()
	m.SingletonTimeout.WithLabelValues(task).Set(timeout.Seconds())
	return func() {
		m.SingletonSince.DeleteLabelValues(task)
		m.SingletonTimeout.DeleteLabelValues(task)
	}
}

// StoodDown counts a run refused before it started, by reason
// (server.Observer).
func (m *Metrics) StoodDown(task, reason string) {
	m.TaskStoodDown.WithLabelValues(task, reason).Inc()
}

// Catalog creates each task's archived-runs series at zero, so that the
// first archived run is an increase an alert can see.
func (m *Metrics) Catalog(specs []jobs.Spec) {
	for _, s := range specs {
		m.TaskArchived.WithLabelValues(s.Name)
	}
}

// lateThreshold separates on-time fires from late ones.
const lateThreshold = 5 * time.Second

// Fire records how the scheduler handled a due occurrence
// (periodic.Observer).
func (m *Metrics) Fire(task, outcome string, late time.Duration, missed int) {
	if outcome == periodic.OutcomeEnqueued {
		m.SchedulerLate.WithLabelValues(task).Observe(late.Seconds())
		if late > lateThreshold {
			outcome = "late"
		}
	}
	m.SchedulerFires.WithLabelValues(task, outcome).Inc()
	if missed > 0 {
		m.SchedulerMiss.WithLabelValues(task).Add(float64(missed))
	}
}

// QueueMetricsMaxAge is how long the queue metrics are served from memory
// before a scrape reads Redis again. Reading every queue costs about 160
// Redis commands (asynq samples each queue's memory); with the cache, any
// number of scrapers costs that much at most once per period.
const QueueMetricsMaxAge = 10 * time.Second

// QueueCollector exports asynq's queue sizes and latency, read from Redis
// at most once per MaxAge whatever the scrape rate. Concurrent scrapes share
// one read, and no scrape waits for it longer than scrapecache.DefaultWait:
// a slow read (a first dial to a Redis that is slow to answer) goes on in
// the background while the scrape is served the previous read (before the
// first read ends: stargazer_queue_scrape_ok 0 and no queue series).
type QueueCollector struct {
	// MaxAge overrides QueueMetricsMaxAge (tests); set it before the first
	// scrape.
	MaxAge time.Duration

	insp    *asynq.Inspector
	size    *prometheus.Desc
	latency *prometheus.Desc
	paused  *prometheus.Desc
	up      *prometheus.Desc
	age     *prometheus.Desc
	workers *prometheus.Desc

	once  sync.Once
	cache *scrapecache.Cache[[]prometheus.Metric]
}

// NewQueueCollector reads queue state through insp.
func NewQueueCollector(insp *asynq.Inspector) *QueueCollector {
	return &QueueCollector{
		MaxAge:  QueueMetricsMaxAge,
		insp:    insp,
		size:    prometheus.NewDesc("stargazer_queue_tasks", "Tasks in each asynq queue by state.", []string{"queue", "state"}, nil),
		latency: prometheus.NewDesc("stargazer_queue_latency_seconds", "Age of the oldest pending task.", []string{"queue"}, nil),
		paused:  prometheus.NewDesc("stargazer_queue_paused", "1 if the queue is paused.", []string{"queue"}, nil),
		up:      prometheus.NewDesc("stargazer_queue_scrape_ok", "1 if queue state could be read from Redis.", nil, nil),
		age:     prometheus.NewDesc("stargazer_queue_metrics_age_seconds", "Age of the queue metrics: they are read from Redis at most once per 10 s.", nil, nil),
		workers: prometheus.NewDesc("stargazer_queue_workers", "Worker processes serving the queues: asynq servers whose heartbeat in Redis is live.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *QueueCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.size
	ch <- c.latency
	ch <- c.paused
	ch <- c.up
	ch <- c.age
	ch <- c.workers
}

// Collect implements prometheus.Collector.
func (c *QueueCollector) Collect(ch chan<- prometheus.Metric) {
	c.once.Do(func() { c.cache = scrapecache.New(c.read, c.MaxAge, 0) })
	ms, at := c.cache.Get()
	if at.IsZero() {
		// The first read still runs: queue state could not be read (yet).
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 0)
		return
	}
	for _, m := range ms {
		ch <- m
	}
	ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, time.Since(at).Seconds())
}

// read asks Redis for every queue's state. A failed read is cached too, so
// an unreachable Redis is not asked harder by more scrapers.
func (c *QueueCollector) read() []prometheus.Metric {
	queues, err := c.insp.Queues()
	if err != nil {
		return []prometheus.Metric{prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 0)}
	}
	var ms []prometheus.Metric
	ok := 1.0
	if servers, err := c.insp.Servers(); err == nil {
		ms = append(ms, prometheus.MustNewConstMetric(c.workers, prometheus.GaugeValue, float64(len(servers))))
	} else {
		ok = 0
	}
	for _, q := range queues {
		info, err := c.insp.GetQueueInfo(q)
		if err != nil {
			ok = 0
			continue
		}
		for state, n := range map[string]int{
			"pending": info.Pending, "active": info.Active, "scheduled": info.Scheduled,
			"retry": info.Retry, "archived": info.Archived, "completed": info.Completed,
		} {
			ms = append(ms, prometheus.MustNewConstMetric(c.size, prometheus.GaugeValue, float64(n), q, state))
		}
		ms = append(ms, prometheus.MustNewConstMetric(c.latency, prometheus.GaugeValue, info.Latency.Seconds(), q))
		paused := 0.0
		if info.Paused {
			paused = 1
		}
		ms = append(ms, prometheus.MustNewConstMetric(c.paused, prometheus.GaugeValue, paused, q))
	}
	return append(ms, prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, ok))
}
