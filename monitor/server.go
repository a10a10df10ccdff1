package monitor

import (
	"log/slog"
	"net"
	"net/http"
	"time"

	"golang.org/x/net/netutil"
)

// Limits of the monitor's HTTP server: what a reverse proxy in front of it
// would otherwise enforce. Every answer is short (no endpoint streams), so
// the write timeout applies to all of them.
const (
	// ReadHeaderTimeout bounds sending the request line and headers.
	ReadHeaderTimeout = 5 * time.Second
	// ReadTimeout bounds a whole request, body included (at most 68 KiB).
	ReadTimeout = 15 * time.Second
	// WriteTimeout bounds a request's handling and answer: a client that
	// does not read a large answer is cut off after it.
	WriteTimeout = 30 * time.Second
	// IdleTimeout closes a keep-alive connection with no next request.
	IdleTimeout = 30 * time.Second
	// MaxHeaderBytes bounds the request line and headers.
	MaxHeaderBytes = 64 << 10
	// DefaultMaxConnections is HTTP_MAX_CONNECTIONS's default.
	DefaultMaxConnections = 256
)

// NewHTTPServer listens on addr and returns the server that serves h there
// with the limits above. At most maxConns connections are open at once;
// more wait in the kernel's accept queue, holding no descriptor of this
// process. The server's own error log goes to log at warn level.
func NewHTTPServer(addr string, maxConns int, h http.Handler, log *slog.Logger) (*http.Server, net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	if maxConns <= 0 {
		maxConns = DefaultMaxConnections
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
	}
	if log != nil {
		srv.ErrorLog = slog.NewLogLogger(log.With("component", "http").Handler(), slog.LevelWarn)
	}
	return srv, netutil.LimitListener(ln, maxConns), nil
}
