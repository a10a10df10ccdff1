package monitor

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"time"
	"unicode/utf8"

	"github.com/hibiken/asynq"
	"github.com/hibiken/asynqmon"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/stargazer/stargazer-jobs/internal/queue/enqueue"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// Options configure the handler tree.
type Options struct {
	// Gatherer is served on /metrics; Registerer receives the monitor's own
	// counters (refused requests).
	Gatherer   prometheus.Gatherer
	Registerer prometheus.Registerer
	// Redis is pinged by /readyz.
	Redis Pinger
	// RedisConnOpt lets asynqmon open its own connections.
	RedisConnOpt asynq.RedisConnOpt
	// DashboardPath is where asynqmon is mounted, e.g. "/dashboard".
	DashboardPath string
	// ReadOnly hides the dashboard's delete/run/pause actions and refuses
	// every state change, POST /api/v1/tasks included, whatever the
	// credential.
	ReadOnly bool
	// Auth protects the dashboard and the API.
	Auth Auth
	// Catalog and Enqueuer serve POST /api/v1/tasks.
	Catalog  []jobs.Spec
	Enqueuer enqueue.Enqueuer
	// ProbesOnly serves /healthz, /readyz and /metrics and nothing else (the
	// node agent): no dashboard, no API, so nothing that needs credentials.
	ProbesOnly bool
	// Log gets the line logged when an address is throttled for failed
	// authentications; nil logs nothing.
	Log *slog.Logger
	// ReadyDetail returns lines /readyz adds to its answer: what an
	// operator should see that does not make the process unready (the node
	// agent's journal). Optional.
	ReadyDetail func() []string
}

// Server is the monitor's handler tree. Close releases the dashboard's
// Redis connections.
type Server struct {
	http.Handler
	// Probes serves GET /healthz, /readyz and /metrics alone, exactly as
	// Handler serves them, for the probe listener (NewProbeServer).
	Probes http.Handler
	mon    *asynqmon.HTTPHandler
}

// New builds the handler tree. /healthz, /readyz and /metrics are open (for
// probes and scrapers); the dashboard and /api/v1/ require Auth when it is
// enabled, and a state change requires its admin credential. Every
// state-changing request a browser sends from another site is refused.
func New(o Options) *Server {
	g := &guard{
		auth: o.Auth, readOnly: o.ReadOnly, log: o.Log,
		throttle: newThrottle(AuthFailureBurst, AuthFailureRate, authThrottleAddrs),
		unauthorized: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stargazer_http_unauthorized_total",
			Help: "HTTP requests refused for missing or wrong credentials, by area (dashboard, api, debug).",
		}, []string{"area"}),
		throttled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stargazer_http_auth_throttled_total",
			Help: "HTTP requests refused with 429 because their address failed authentication too often, by area (dashboard, api, debug).",
		}, []string{"area"}),
	}
	if o.Registerer != nil {
		o.Registerer.MustRegister(g.unauthorized, g.throttled)
	}
	healthz := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	readyz := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
		defer cancel()
		if err := o.Redis.Ping(ctx); err != nil {
			http.Error(w, "redis unreachable: "+err.Error(), http.StatusServiceUnavailable)
		} else {
			fmt.Fprintln(w, "ready")
		}
		if o.ReadyDetail != nil {
			for _, line := range o.ReadyDetail() {
				fmt.Fprintln(w, line)
			}
		}
	})
	metrics := promhttp.HandlerFor(o.Gatherer, promhttp.HandlerOpts{})
	probes := http.NewServeMux()
	mux := http.NewServeMux()
	for _, m := range []*http.ServeMux{probes, mux} {
		m.Handle("GET /healthz", healthz)
		m.Handle("GET /readyz", readyz)
		m.Handle("GET /metrics", metrics)
	}
	if o.ProbesOnly {
		return &Server{Handler: mux, Probes: probes}
	}
	// A goroutine dump, for an operator asking what a worker waits on
	// (net/http/pprof's goroutine profile: ?debug=1 counts stacks, ?debug=2
	// prints every goroutine). Admin only, and never on the probe
	// listener, which serves the three endpoints above and nothing else.
	mux.Handle("GET /debug/pprof/goroutine", g.protectAdmin("debug", pprof.Handler("goroutine")))
	if o.Enqueuer != nil {
		mux.Handle("POST /api/v1/tasks", g.protect("api", enqueueAPI(o.Catalog, o.Enqueuer)))
	}
	mon := asynqmon.New(asynqmon.Options{
		RootPath:         o.DashboardPath,
		RedisConnOpt:     o.RedisConnOpt,
		ReadOnly:         o.ReadOnly,
		PayloadFormatter: asynqmon.PayloadFormatterFunc(func(_ string, b []byte) string { return printable(b) }),
		ResultFormatter:  asynqmon.ResultFormatterFunc(func(_ string, b []byte) string { return printable(b) }),
	})
	mux.Handle(o.DashboardPath+"/", g.protect("dashboard", boundedPages(apiErrors(o.DashboardPath+"/api/", o.Redis, mon))))
	// The browser fetches the web manifest without credentials; it holds
	// nothing but the app's name.
	mux.Handle("GET "+o.DashboardPath+"/manifest.json", mon)
	mux.Handle(o.DashboardPath, http.RedirectHandler(o.DashboardPath+"/", http.StatusFound))
	mux.Handle("GET /{$}", http.RedirectHandler(o.DashboardPath+"/", http.StatusFound))
	return &Server{Handler: crossOrigin(mux), Probes: probes, mon: mon}
}

// printable shows payloads and results as text: they are JSON by
// construction, and an empty payload means "the task's defaults".
func printable(b []byte) string {
	switch {
	case len(b) == 0:
		return "(defaults)"
	case utf8.Valid(b):
		return string(b)
	}
	return fmt.Sprintf("(%d bytes, not UTF-8)", len(b))
}

// Close releases the dashboard's Redis connections.
func (s *Server) Close() error {
	if s.mon == nil {
		return nil
	}
	return s.mon.Close()
}

// Pinger is what readiness needs from Redis.
type Pinger interface {
	Ping(ctx context.Context) error
}

// PingFunc adapts a function to Pinger.
type PingFunc func(ctx context.Context) error

// Ping calls f.
func (f PingFunc) Ping(ctx context.Context) error { return f(ctx) }

const readyTimeout = 2 * time.Second
