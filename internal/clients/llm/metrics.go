package llm

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the Prometheus series of LLM calls; it is an Observer.
type Metrics struct {
	calls    *prometheus.CounterVec
	tokens   *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// NewMetrics creates the series and registers them on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stargazer_llm_calls_total",
			Help: "LLM calls by endpoint (chat, embeddings), model, purpose and outcome (ok, rate_limited, empty, malformed, timeout, http_<code>, error).",
		}, []string{"endpoint", "model", "purpose", "outcome"}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stargazer_llm_tokens_total",
			Help: "Tokens reported by the LLM server, by model, purpose and kind (prompt, completion).",
		}, []string{"model", "purpose", "kind"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "stargazer_llm_call_duration_seconds",
			Help:    "Wall time of LLM calls, by endpoint and purpose.",
			Buckets: []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120},
		}, []string{"endpoint", "purpose"}),
	}
	reg.MustRegister(m.calls, m.tokens, m.duration)
	return m
}

// LLMCall records one call (Observer).
func (m *Metrics) LLMCall(endpoint, model, purpose, outcome string, elapsed time.Duration, u Usage) {
	m.calls.WithLabelValues(endpoint, model, purpose, outcome).Inc()
	m.duration.WithLabelValues(endpoint, purpose).Observe(elapsed.Seconds())
	if u.PromptTokens > 0 {
		m.tokens.WithLabelValues(model, purpose, "prompt").Add(float64(u.PromptTokens))
	}
	if u.CompletionTokens > 0 {
		m.tokens.WithLabelValues(model, purpose, "completion").Add(float64(u.CompletionTokens))
	}
}
