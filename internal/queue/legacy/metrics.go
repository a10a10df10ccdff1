package legacy

import "github.com/prometheus/client_golang/prometheus"

// Metrics count the Python runs the detector saw.
type Metrics struct {
	runs *prometheus.CounterVec
}

// NewMetrics registers stargazer_legacy_runs_total on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{runs: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "stargazer_legacy_runs_total",
		Help: "Runs of a task the Go workers schedule that the Python scheduler made too (its scheduler_task_run events), each counted by one worker. Should stay 0 once the cut-over is done (docs/migration.md).",
	}, []string{"task"})}
	reg.MustRegister(m.runs)
	return m
}

// Watch creates task's series at 0, so the first run seen is an increase
// and "0 for two intervals" can be read off a graph.
func (m *Metrics) Watch(tasks ...string) {
	for _, t := range tasks {
		m.runs.WithLabelValues(t)
	}
}

func (m *Metrics) inc(task string) {
	if m != nil {
		m.runs.WithLabelValues(task).Inc()
	}
}
