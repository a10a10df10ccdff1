// Package embeddedredis runs an in-process Redis (miniredis) so the worker starts
// on a machine with nothing installed. It is a demo and development aid:
// nothing persists and nothing outside the process can share it.
package embeddedredis

import (
	"fmt"
	"time"

	"github.com/alicebob/miniredis/v2"
)

// Redis is a running in-process Redis.
type Redis struct {
	m    *miniredis.Miniredis
	stop chan struct{}
	done chan struct{}
}

// Start listens on a free loopback port.
func Start() (*Redis, error) {
	m := miniredis.NewMiniRedis()
	if err := m.Start(); err != nil {
		return nil, fmt.Errorf("starting embedded redis: %w", err)
	}
	r := &Redis{m: m, stop: make(chan struct{}), done: make(chan struct{})}
	go r.clock()
	return r, nil
}

// clock makes keys expire in real time: miniredis only expires keys when
// told time has passed, and asynq relies on expiring locks and heartbeats.
func (r *Redis) clock() {
	defer close(r.done)
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-r.stop:
			return
		case now := <-t.C:
			r.m.FastForward(now.Sub(last))
			last = now
		}
	}
}

// Addr is host:port of the server.
func (r *Redis) Addr() string { return r.m.Addr() }

// URL is the redis:// URL of the server.
func (r *Redis) URL() string { return "redis://" + r.m.Addr() + "/0" }

// Close stops the server.
func (r *Redis) Close() {
	close(r.stop)
	<-r.done
	r.m.Close()
}
