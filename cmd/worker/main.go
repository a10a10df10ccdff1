// Command worker runs Stargazer's background tasks: an asynq server with a
// handler per available task, the periodic scheduler, and the monitor
// (dashboard, API, /metrics, /healthz, /readyz) on HTTP_ADDR, with /healthz,
// /readyz and /metrics also on the probe listener, PROBE_ADDR.
//
// With no REDIS_URL it starts an embedded in-process Redis, so
// `go run ./cmd/worker` works on a fresh machine.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
	// The Gemini key pool's per-day quotas reset at midnight Pacific time;
	// embed the zone database (~450 KB) so the worker computes it right
	// even on an image without /usr/share/zoneinfo. The system's database
	// is used when present.
	_ "time/tzdata"

	"github.com/stargazer/stargazer-jobs/internal/app"
	"github.com/stargazer/stargazer-jobs/internal/config"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "healthcheck" {
		os.Exit(healthcheck(os.Getenv("PROBE_ADDR"), os.Stderr))
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	switch {
	case errors.Is(err, config.ErrHelp):
		os.Exit(0)
	case err != nil:
		fmt.Fprintf(os.Stderr, "worker: %v\n", err)
		var ce *config.Error
		if errors.As(err, &ce) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// healthcheck probes this process's /healthz on its probe listener
// (PROBE_ADDR), for container HEALTHCHECKs in images that have no curl:
// `worker healthcheck`. The probe listener has its own connection budget,
// so clients of HTTP_ADDR cannot make the check fail.
func healthcheck(addr string, stderr io.Writer) int {
	if addr == "" {
		addr = defaultProbeAddr()
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		fmt.Fprintf(stderr, "healthcheck: PROBE_ADDR %q: %v\n", addr, err)
		return 1
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	client := &http.Client{Timeout: 3 * time.Second}
	resp, err := client.Get("http://" + net.JoinHostPort(host, port) + "/healthz")
	if err != nil {
		fmt.Fprintf(stderr, "healthcheck: %v\n", err)
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "healthcheck: /healthz answered %s\n", resp.Status)
		return 1
	}
	return 0
}

// defaultProbeAddr is PROBE_ADDR's default.
func defaultProbeAddr() string {
	for _, s := range config.Settings() {
		if s.Env == "PROBE_ADDR" {
			return s.Default
		}
	}
	return ""
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	return app.Run(ctx, app.Params{Args: args, Getenv: getenv, Stdout: stdout, Stderr: stderr})
}
