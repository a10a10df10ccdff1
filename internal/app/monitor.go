package app

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/config"
	"github.com/stargazer/stargazer-jobs/monitor"
)

// serveMonitor starts the HTTP server of the dashboard, the enqueue API,
// /metrics and the probes. It comes before the asynq server so that probes
// answer (/readyz with 503) while Redis is still unreachable.
func (a *app) serveMonitor() error {
	cfg := a.cfg
	auth := monitor.Auth{Token: cfg.MonitorToken, User: cfg.MonitorUser, Password: cfg.MonitorPassword,
		ViewToken: cfg.MonitorViewToken, ViewUser: cfg.MonitorViewUser, ViewPassword: cfg.MonitorViewPassword}
	mon := monitor.New(monitor.Options{
		Gatherer: a.reg, Registerer: a.reg,
		Redis:        monitor.PingFunc(a.ping),
		RedisConnOpt: a.connOpt, DashboardPath: cfg.DashboardPath, ReadOnly: cfg.DashboardReadOnly,
		Auth: auth, Catalog: a.catalog, Enqueuer: a.client, ProbesOnly: cfg.Role == config.RoleNode,
		Log:         a.log.With("component", "http"),
		ReadyDetail: a.readyDetail,
	})
	a.stops.push(func() { mon.Close() })
	if err := a.serveProbes(mon.Probes); err != nil {
		return err
	}
	if cfg.Role != config.RoleNode {
		for _, setting := range auth.WeakTokens() {
			a.log.Warn("bearer token shorter than 32 characters: it is refused like a password from an address throttled for failed authentications; use 32 or more random characters (openssl rand -hex 32)",
				"setting", setting, "min_length", monitor.MinStrongTokenLength)
		}
	}
	addr := cfg.HTTPAddr
	if !auth.Enabled() && cfg.Role != config.RoleNode {
		addr = loopback(addr)
		a.log.Warn("no MONITOR_TOKEN or MONITOR_USER/MONITOR_PASSWORD configured: the dashboard and the enqueue API are unauthenticated, so the HTTP server binds to loopback only",
			"addr", addr)
	}
	httpSrv, ln, err := monitor.NewHTTPServer(addr, cfg.HTTPMaxConnections, mon, a.log)
	if err != nil {
		return &config.Error{Setting: "HTTP_ADDR", Reason: err.Error()}
	}
	go func() {
		if err := httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("http server stopped", "error", err)
		}
	}()
	a.stops.push(func() {
		shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = httpSrv.Shutdown(shutCtx)
	})
	a.log.Info("monitor listening", "addr", ln.Addr().String(), "auth", auth.Enabled(), "read_only", cfg.DashboardReadOnly,
		"dashboard", "http://"+ln.Addr().String()+cfg.DashboardPath+"/", "metrics", "/metrics", "api", "/api/v1/tasks")
	return nil
}

// serveProbes starts the probe listener on PROBE_ADDR: /healthz, /readyz
// and /metrics on a connection budget of their own, so that clients of
// HTTP_ADDR cannot starve the kubelet's probes or Prometheus. It binds
// where PROBE_ADDR says whether or not credentials are set: it serves only
// what HTTP_ADDR serves to anyone.
func (a *app) serveProbes(h http.Handler) error {
	srv, ln, err := monitor.NewProbeServer(a.cfg.ProbeAddr, h, a.log)
	if err != nil {
		return &config.Error{Setting: "PROBE_ADDR", Reason: err.Error()}
	}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("probe server stopped", "error", err)
		}
	}()
	// Pushed first, so it stops after the public listener: the probes
	// answer as long as anything does.
	a.stops.push(func() {
		shutCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutCtx)
	})
	a.log.Info("probes listening", "addr", ln.Addr().String(), "paths", "/healthz /readyz /metrics",
		"max_connections", monitor.ProbeMaxConnections, "max_connections_per_addr", monitor.ProbeMaxConnectionsPerAddr)
	return nil
}

// loopback rewrites addr's host to the loopback address, keeping its port.
func loopback(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); (ip != nil && ip.IsLoopback()) || host == "localhost" {
		return addr
	}
	return net.JoinHostPort("127.0.0.1", port)
}

// readyDetail is what /readyz says beside readiness: the journal's state on
// a node that reads it. A journal that cannot be read does not make the
// process unready: a restart or a routing change cannot make it appear,
// and an unready node agent would hold up every DaemonSet rollout behind
// one host's journal settings; the log, this line and the
// stargazer_journal_readable metric (and its alert) say it instead.
func (a *app) readyDetail() []string {
	if a.journal == nil {
		return nil
	}
	if line := a.journal.Detail(); line != "" {
		return []string{line}
	}
	return nil
}
