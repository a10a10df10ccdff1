// Package monitor holds what operators watch: Prometheus metrics, health
// and readiness probes, and the asynqmon dashboard, served as one handler
// tree.
package monitor

import (
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
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
	LLMCalls       *prometheus.CounterVec
	LLMTokens      *prometheus.CounterVec
	LLMDuration    *prometheus.HistogramVec
	EventsDropped  prometheus.Counter
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
	m.LLMCalls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "stargazer_llm_calls_total",
		Help: "LLM calls by endpoint (chat, embeddings), model, purpose and outcome (ok, rate_limited, empty, malformed, timeout, http_<code>, error).",
	}, []string{"endpoint", "model", "purpose", "outcome"})
	m.LLMTokens = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "stargazer_llm_tokens_total",
		Help: "Tokens reported by the LLM server, by model, purpose and kind (prompt, completion).",
	}, []string{"model", "purpose", "kind"})
	m.LLMDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "stargazer_llm_call_duration_seconds",
		Help:    "Wall time of LLM calls, by endpoint and purpose.",
		Buckets: []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120},
	}, []string{"endpoint", "purpose"})
	m.EventsDropped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "stargazer_debug_events_dropped_total",
		Help: "Debug events (scheduler_task_run) not published: buffer full, Redis unreachable, or still buffered when the stop flush ran out of time.",
	})
	reg.MustRegister(m.TaskItems, m.LLMCalls, m.LLMTokens, m.LLMDuration, m.EventsDropped)
	reg.MustRegister(m.TaskRuns, m.TaskStarts, m.TaskDuration, m.TaskInFlight, m.TaskCrashes,
		m.SchedulerFires, m.SchedulerLate, m.SchedulerMiss)
	return m
}

// AddItems counts items a task run handled.
func (m *Metrics) AddItems(task, item string, n float64) {
	if n > 0 {
		m.TaskItems.WithLabelValues(task, item).Add(n)
	}
}

// LLMCall records one LLM call (it implements llm.Observer).
func (m *Metrics) LLMCall(endpoint, model, purpose, outcome string, elapsed time.Duration, u llm.Usage) {
	m.LLMCalls.WithLabelValues(endpoint, model, purpose, outcome).Inc()
	m.LLMDuration.WithLabelValues(endpoint, purpose).Observe(elapsed.Seconds())
	if u.PromptTokens > 0 {
		m.LLMTokens.WithLabelValues(model, purpose, "prompt").Add(float64(u.PromptTokens))
	}
	if u.CompletionTokens > 0 {
		m.LLMTokens.WithLabelValues(model, purpose, "completion").Add(float64(u.CompletionTokens))
	}
}

// QueueCollector exports asynq's queue sizes and latency. It asks Redis on
// every scrape, so register it in one process per deployment or accept the
// (small) per-scrape cost.
type QueueCollector struct {
	insp    *asynq.Inspector
	size    *prometheus.Desc
	latency *prometheus.Desc
	paused  *prometheus.Desc
	up      *prometheus.Desc
}

// NewQueueCollector reads queue state through insp.
func NewQueueCollector(insp *asynq.Inspector) *QueueCollector {
	return &QueueCollector{
		insp:    insp,
		size:    prometheus.NewDesc("stargazer_queue_tasks", "Tasks in each asynq queue by state.", []string{"queue", "state"}, nil),
		latency: prometheus.NewDesc("stargazer_queue_latency_seconds", "Age of the oldest pending task.", []string{"queue"}, nil),
		paused:  prometheus.NewDesc("stargazer_queue_paused", "1 if the queue is paused.", []string{"queue"}, nil),
		up:      prometheus.NewDesc("stargazer_queue_scrape_ok", "1 if queue state could be read from Redis.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *QueueCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.size
	ch <- c.latency
	ch <- c.paused
	ch <- c.up
}

// Collect implements prometheus.Collector.
func (c *QueueCollector) Collect(ch chan<- prometheus.Metric) {
	queues, err := c.insp.Queues()
	if err != nil {
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 0)
		return
	}
	ok := 1.0
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
			ch <- prometheus.MustNewConstMetric(c.size, prometheus.GaugeValue, float64(n), q, state)
		}
		ch <- prometheus.MustNewConstMetric(c.latency, prometheus.GaugeValue, info.Latency.Seconds(), q)
		paused := 0.0
		if info.Paused {
			paused = 1
		}
		ch <- prometheus.MustNewConstMetric(c.paused, prometheus.GaugeValue, paused, q)
	}
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, ok)
}
