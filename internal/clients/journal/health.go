package journal

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Health defaults.
const (
	// CheckEvery is how often Health looks at the journal's files again.
	CheckEvery = 30 * time.Second
	// IdleAfter is how long without an entry of the unit makes it idle.
	IdleAfter = time.Hour
)

// Health watches whether this node's journal can be read and whether the
// unit logs, and says so on a change only: in the log (once per change),
// in Detail (for /readyz) and in metrics. A journal that cannot be read
// is an error an operator must fix (the agent then streams and ingests
// nothing); a unit with no entry for IdleAfter is only worth a line, as a
// quiet unit and a JOURNAL_UNIT that names no unit on this node look the
// same from here.
type Health struct {
	check   CheckOptions
	unit    string
	idle    time.Duration
	log     *slog.Logger
	now     func() time.Time
	metrics healthMetrics

	mu        sync.Mutex
	checked   bool
	status    Status
	started   time.Time
	lastEntry time.Time // the newest entry's own time
	isIdle    bool
}

// HealthOptions configure a Health.
type HealthOptions struct {
	Check CheckOptions
	// Unit is the systemd unit whose entries are counted.
	Unit string
	// IdleAfter is how long without an entry makes the unit idle (default
	// IdleAfter); negative turns idleness off (no loop reads entries).
	IdleAfter time.Duration
	Logger    *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

type healthMetrics struct {
	readable  prometheus.Gauge
	state     *prometheus.GaugeVec
	entries   prometheus.Counter
	lastEntry prometheus.Gauge
}

// NewHealth returns a Health whose series are registered on reg. It has
// checked nothing yet: Run or Check does.
func NewHealth(o HealthOptions, reg prometheus.Registerer) *Health {
	h := &Health{check: o.Check, unit: o.Unit, idle: o.IdleAfter, log: o.Logger, now: o.Now}
	if h.idle == 0 {
		h.idle = IdleAfter
	}
	if h.now == nil {
		h.now = time.Now
	}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	h.started = h.now()
	h.metrics = healthMetrics{
		readable: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "stargazer_journal_readable",
			Help: "1 if this node agent can read a journal file of this machine, else 0 (stargazer_journal_state says why).",
		}),
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "stargazer_journal_state",
			Help: "1 for the state of this node's journal (readable, missing, empty, unreadable), 0 for the others.",
		}, []string{"state"}),
		entries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "stargazer_journal_entries_total",
			Help: "Journal entries of JOURNAL_UNIT that journal_stream read on this node.",
		}),
		lastEntry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "stargazer_journal_last_entry_timestamp_seconds",
			Help: "Unix time at which the newest entry of JOURNAL_UNIT journal_stream read was logged; 0 before any.",
		}),
	}
	reg.MustRegister(h.metrics.readable, h.metrics.state, h.metrics.entries, h.metrics.lastEntry)
	return h
}

// Run checks at once, then every interval (CheckEvery when 0) until ctx
// ends.
func (h *Health) Run(ctx context.Context, every time.Duration) {
	if every <= 0 {
		every = CheckEvery
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		h.Check()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Check looks at the journal once, updates the metrics, and logs what
// changed since the last Check.
func (h *Health) Check() Status {
	st := Check(h.check)
	h.mu.Lock()
	defer h.mu.Unlock()
	changed := !h.checked || st.State != h.status.State
	h.checked, h.status = true, st
	for _, s := range States {
		v := 0.0
		if s == st.State {
			v = 1
		}
		h.metrics.state.WithLabelValues(string(s)).Set(v)
	}
	readable := 0.0
	if st.State == StateReadable {
		readable = 1
	}
	h.metrics.readable.Set(readable)
	if changed {
		switch st.State {
		case StateReadable:
			h.log.Info("journal readable", "component", "journal", "state", st.State, "unit", h.unit, "detail", st.Detail)
		case StateEmpty:
			h.log.Warn("journal empty: node-local journal tasks have nothing to read", "component", "journal", "state", st.State, "unit", h.unit, "detail", st.Detail)
		default:
			h.log.Error("journal cannot be read: node-local journal tasks stream and ingest nothing on this node", "component", "journal", "state", st.State, "unit", h.unit, "detail", st.Detail)
		}
	}
	if st.State == StateReadable && h.idle > 0 && !h.isIdle {
		since := h.lastEntry
		if since.IsZero() {
			since = h.started
		}
		if h.now().Sub(since) >= h.idle {
			h.isIdle = true
			h.log.Info("journal: no entry of the unit for a while; a quiet unit is normal, a JOURNAL_UNIT that names no unit on this node looks the same",
				"component", "journal", "unit", h.unit, "idle_after", h.idle.String(), "last_entry", timeOrNone(h.lastEntry))
		}
	}
	return st
}

// Entry records an entry of the unit read, logged at at (zero: now).
func (h *Health) Entry(at time.Time) {
	if at.IsZero() {
		at = h.now()
	}
	h.metrics.entries.Inc()
	h.mu.Lock()
	defer h.mu.Unlock()
	if at.After(h.lastEntry) {
		h.lastEntry = at
		h.metrics.lastEntry.Set(float64(at.UnixMilli()) / 1000)
	}
	if h.isIdle && h.now().Sub(h.lastEntry) < h.idle {
		h.isIdle = false
		h.log.Info("journal: entries of the unit again", "component", "journal", "unit", h.unit, "last_entry", at.UTC().Format(time.RFC3339))
	}
}

// Err is nil when the journal can be read (or has not been checked yet),
// else an error saying why not.
func (h *Health) Err() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.checked || h.status.State == StateReadable {
		return nil
	}
	return fmt.Errorf("journal %s: %s", h.status.State, h.status.Detail)
}

// Detail is one line for /readyz: the journal's state and, when it is
// readable, the unit's last entry. Empty before the first Check.
func (h *Health) Detail() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.checked {
		return ""
	}
	st := h.status
	if st.State != StateReadable {
		return fmt.Sprintf("journal: %s: %s", st.State, st.Detail)
	}
	line := fmt.Sprintf("journal: readable (%s); unit %s", st.Detail, h.unit)
	switch {
	case h.idle < 0:
	case h.lastEntry.IsZero():
		line += fmt.Sprintf(": no entry read since %s", h.started.UTC().Format(time.RFC3339))
	default:
		line += fmt.Sprintf(": last entry %s", h.lastEntry.UTC().Format(time.RFC3339))
	}
	if h.isIdle {
		line += fmt.Sprintf(" (idle for over %s: normal for a quiet unit; check JOURNAL_UNIT if it should log)", h.idle)
	}
	return line
}

func timeOrNone(t time.Time) string {
	if t.IsZero() {
		return "none"
	}
	return t.UTC().Format(time.RFC3339)
}
