// Package faultproxy is a TCP proxy for fault-injection tests: it sits
// between a worker and Redis and can add latency, stall traffic (a
// partition that keeps sockets open, like a dead switch) or cut every
// connection and refuse new ones (a partition the kernel reports).
package faultproxy

import (
	"net"
	"sync"
	"time"
)

// Mode is what the proxy does to traffic.
type Mode int

const (
	// Pass forwards traffic (after Latency, if set).
	Pass Mode = iota
	// Stall stops forwarding in both directions but keeps connections
	// open, so peers see silence, not errors.
	Stall
	// Drop closes every connection and refuses new ones.
	Drop
)

// Proxy forwards a loopback port to a target address.
type Proxy struct {
	ln     net.Listener
	target string

	mu      sync.Mutex
	mode    Mode
	latency time.Duration
	resume  chan struct{} // closed when leaving Stall
	conns   map[net.Conn]struct{}
	closed  bool
	wg      sync.WaitGroup
}

// Start listens on a free loopback port and forwards to target.
func Start(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target, resume: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	close(p.resume)
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the proxy's listening address.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetLatency delays every forwarded chunk by d in each direction.
func (p *Proxy) SetLatency(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.latency = d
}

// SetMode switches the fault. Entering Drop closes every open connection.
func (p *Proxy) SetMode(m Mode) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if m == p.mode {
		return
	}
	if m == Stall {
		p.resume = make(chan struct{})
	} else if p.mode == Stall {
		close(p.resume)
	}
	p.mode = m
	if m == Drop {
		for c := range p.conns {
			c.Close()
		}
	}
}

// Close stops the proxy and closes every connection.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	if p.mode == Stall {
		close(p.resume)
		p.mode = Pass
	}
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	err := p.ln.Close()
	p.wg.Wait()
	return err
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.mode == Drop {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			c.Close()
			continue
		}
		up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil || !p.track(up) {
			if up != nil {
				up.Close()
			}
			p.untrack(c)
			continue
		}
		p.wg.Add(2)
		go p.pipe(c, up)
		go p.pipe(up, c)
	}
}

// gate waits while the proxy stalls and returns the current latency, or
// false when the connection must go.
func (p *Proxy) gate() (time.Duration, bool) {
	for {
		p.mu.Lock()
		mode, resume, latency, closed := p.mode, p.resume, p.latency, p.closed
		p.mu.Unlock()
		switch {
		case closed || mode == Drop:
			return 0, false
		case mode == Stall:
			<-resume
		default:
			return latency, true
		}
	}
}

func (p *Proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	defer p.untrack(dst)
	defer p.untrack(src)
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			latency, ok := p.gate()
			if !ok {
				return
			}
			if latency > 0 {
				time.Sleep(latency)
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
