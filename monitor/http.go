package monitor

import (
	"context"
	"fmt"
	"net/http"

	"github.com/hibiken/asynq"
	"github.com/hibiken/asynqmon"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Options configure the handler tree.
type Options struct {
	// Gatherer is served on /metrics.
	Gatherer prometheus.Gatherer
	// Redis is pinged by /readyz.
	Redis Pinger
	// RedisConnOpt lets asynqmon open its own connections.
	RedisConnOpt asynq.RedisConnOpt
	// DashboardPath is where asynqmon is mounted, e.g. "/dashboard".
	DashboardPath string
	// ReadOnly hides the dashboard's delete/run/pause actions.
	ReadOnly bool
}

// Server is the monitor's handler tree. Close releases the dashboard's
// Redis connections.
type Server struct {
	http.Handler
	mon *asynqmon.HTTPHandler
}

// New builds the handler tree: /healthz, /readyz, /metrics and the dashboard.
func New(o Options) *Server {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
		defer cancel()
		if err := o.Redis.Ping(ctx); err != nil {
			http.Error(w, "redis unreachable: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(o.Gatherer, promhttp.HandlerOpts{}))
	mon := asynqmon.New(asynqmon.Options{
		RootPath:     o.DashboardPath,
		RedisConnOpt: o.RedisConnOpt,
		ReadOnly:     o.ReadOnly,
	})
	mux.Handle(o.DashboardPath+"/", mon)
	mux.Handle(o.DashboardPath, http.RedirectHandler(o.DashboardPath+"/", http.StatusFound))
	mux.Handle("GET /{$}", http.RedirectHandler(o.DashboardPath+"/", http.StatusFound))
	return &Server{Handler: mux, mon: mon}
}

// Close releases the dashboard's Redis connections.
func (s *Server) Close() error { return s.mon.Close() }
