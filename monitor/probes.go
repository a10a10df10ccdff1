package monitor

import (
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/net/netutil"
)

// Limits of the probe listener (PROBE_ADDR). It serves /healthz, /readyz
// and /metrics only, on a connection budget of its own, so that clients of
// the public listener cannot starve the kubelet's probes or Prometheus:
// 300 slowloris connections fill the public listener's 256 slots, and a
// probe queued behind them took up to 5 s, past the manifests' 3 s probe
// timeout. Its clients are the kubelet and Prometheus, whose requests are
// small and prompt, so its timeouts are short.
const (
	// ProbeReadHeaderTimeout bounds sending the request line and headers,
	// and is how long a connection that sends nothing holds a slot.
	ProbeReadHeaderTimeout = 2 * time.Second
	// ProbeReadTimeout bounds a whole request; probes have no body.
	ProbeReadTimeout = 2 * time.Second
	// ProbeWriteTimeout bounds handling and answering: /readyz pings Redis
	// for at most 2 s, and /metrics reads the queues from Redis at most
	// once per 10 s with a deadline of its own.
	ProbeWriteTimeout = 10 * time.Second
	// ProbeIdleTimeout closes a keep-alive connection with no next request:
	// the kubelet opens a connection per probe, and Prometheus reconnects
	// at this cost once per scrape.
	ProbeIdleTimeout = 5 * time.Second
	// ProbeMaxHeaderBytes bounds the request line and headers.
	ProbeMaxHeaderBytes = 8 << 10
	// ProbeMaxConnections is how many connections the probe listener holds
	// at once; more wait in the kernel's accept queue.
	ProbeMaxConnections = 32
	// ProbeMaxConnectionsPerAddr is how many of them one client address
	// (IPv6: one /64) may hold; its further connections are closed as
	// soon as they are accepted. A flood from one address cannot take the
	// slots of the kubelet (the node's address) or of Prometheus.
	ProbeMaxConnectionsPerAddr = 4
)

// NewProbeServer listens on addr and returns the server that serves h there
// with the probe listener's limits above.
func NewProbeServer(addr string, h http.Handler, log *slog.Logger) (*http.Server, net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: ProbeReadHeaderTimeout,
		ReadTimeout:       ProbeReadTimeout,
		WriteTimeout:      ProbeWriteTimeout,
		IdleTimeout:       ProbeIdleTimeout,
		MaxHeaderBytes:    ProbeMaxHeaderBytes,
	}
	if log != nil {
		srv.ErrorLog = slog.NewLogLogger(log.With("component", "http-probes").Handler(), slog.LevelWarn)
	}
	return srv, netutil.LimitListener(perAddrLimit(ln, ProbeMaxConnectionsPerAddr), ProbeMaxConnections), nil
}

// perAddrListener closes, as soon as it is accepted, a connection from an
// address that already holds max connections.
type perAddrListener struct {
	net.Listener
	max int

	mu   sync.Mutex
	open map[netip.Prefix]int
}

func perAddrLimit(ln net.Listener, max int) net.Listener {
	return &perAddrListener{Listener: ln, max: max, open: map[netip.Prefix]int{}}
}

// Accept returns the next connection within its address's budget.
func (l *perAddrListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		key := addrKey(c.RemoteAddr().String())
		l.mu.Lock()
		if l.open[key] >= l.max {
			l.mu.Unlock()
			c.Close()
			continue
		}
		l.open[key]++
		l.mu.Unlock()
		return &addrConn{Conn: c, release: func() { l.release(key) }}, nil
	}
}

func (l *perAddrListener) release(key netip.Prefix) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open[key]--; l.open[key] <= 0 {
		delete(l.open, key)
	}
}

// addrConn gives its address's slot back once, when closed.
type addrConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *addrConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
