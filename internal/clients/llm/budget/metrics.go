package budget

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the budget's Prometheus series; it is an Observer.
type Metrics struct {
	inFlight    *prometheus.GaugeVec
	waits       *prometheus.CounterVec
	waitSeconds *prometheus.CounterVec
	limited     *prometheus.CounterVec
}

// NewMetrics creates the series and registers them on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "stargazer_llm_in_flight",
			Help: "LLM calls this process has in flight, by endpoint (sum over pods: the cluster's, which LLM_MAX_IN_FLIGHT bounds).",
		}, []string{"endpoint"}),
		waits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stargazer_llm_budget_waits_total",
			Help: "LLM calls that waited for the cluster-wide budget, by endpoint and reason (in_flight, requests, tokens, paused).",
		}, []string{"endpoint", "reason"}),
		waitSeconds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stargazer_llm_budget_wait_seconds_total",
			Help: "Time LLM calls waited for the cluster-wide budget, by endpoint and reason.",
		}, []string{"endpoint", "reason"}),
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stargazer_llm_rate_limited_total",
			Help: "429 answers, each of which paused every caller of the endpoint for its Retry-After.",
		}, []string{"endpoint"}),
	}
	reg.MustRegister(m.inFlight, m.waits, m.waitSeconds, m.limited)
	return m
}

// InFlight moves the in-flight gauge (Observer).
func (m *Metrics) InFlight(endpoint string, delta int) {
	m.inFlight.WithLabelValues(endpoint).Add(float64(delta))
}

// Waited records a wait (Observer).
func (m *Metrics) Waited(endpoint, reason string, d time.Duration) {
	m.waits.WithLabelValues(endpoint, reason).Inc()
	m.waitSeconds.WithLabelValues(endpoint, reason).Add(d.Seconds())
}

// RateLimited records a 429 (Observer).
func (m *Metrics) RateLimited(endpoint string) { m.limited.WithLabelValues(endpoint).Inc() }
