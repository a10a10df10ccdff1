// Package logthrottle keeps a failing dependency from flooding the log:
// during a Redis outage every loop that touches Redis fails every second or
// so, and each used to log every failure.
//
// Handler wraps a slog.Handler. A warning or error of a component (a record
// or logger carrying a "component" attribute) is logged the first time;
// repeats of the same kind within the interval are counted instead, and
// one line at the end of the interval reports the last of them with their
// number ("repeated", that line included). A kind is the component plus
// the message up to its first ": ", so messages that embed the error text
// (asynq's, go-redis's) still group, plus the record's task_id if it has
// one: lines about two tasks are never merged. Records without a
// component, and records below Warn, pass untouched.
package logthrottle

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// Interval is the default window: one line per kind per minute.
const Interval = time.Minute

// maxKinds bounds the state kept; kinds idle for a whole interval are
// forgotten first.
const maxKinds = 512

// Handler throttles repeated warnings and errors. Create it with New.
type Handler struct {
	inner     slog.Handler
	component string // from WithAttrs, if any
	taskID    string // from WithAttrs, if any
	grouped   bool   // WithGroup was called: later attributes are nested
	s         *state
}

type state struct {
	interval time.Duration
	now      func() time.Time
	mu       sync.Mutex
	kinds    map[string]*kind
}

type kind struct {
	start      time.Time // of the current window
	suppressed int
	last       slog.Record
	h          slog.Handler // the handler the last record came through
	timer      *time.Timer
}

// New wraps inner, throttling per interval (Interval if zero).
func New(inner slog.Handler, interval time.Duration) *Handler {
	return newHandler(inner, interval, time.Now)
}

func newHandler(inner slog.Handler, interval time.Duration, now func() time.Time) *Handler {
	if interval <= 0 {
		interval = Interval
	}
	return &Handler{inner: inner, s: &state{interval: interval, now: now, kinds: map[string]*kind{}}}
}

// Enabled implements slog.Handler.
func (h *Handler) Enabled(ctx context.Context, l slog.Level) bool { return h.inner.Enabled(ctx, l) }

// WithAttrs implements slog.Handler.
func (h *Handler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.inner = h.inner.WithAttrs(as)
	if !h.grouped {
		for _, a := range as {
			switch a.Key {
			case "component":
				c.component = a.Value.String()
			case "task_id":
				c.taskID = a.Value.String()
			}
		}
	}
	return &c
}

// WithGroup implements slog.Handler.
func (h *Handler) WithGroup(name string) slog.Handler {
	c := *h
	c.inner = h.inner.WithGroup(name)
	c.grouped = c.grouped || name != ""
	return &c
}

// Handle implements slog.Handler.
func (h *Handler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level < slog.LevelWarn {
		return h.inner.Handle(ctx, r)
	}
	component, taskID := h.component, h.taskID
	if !h.grouped {
		r.Attrs(func(a slog.Attr) bool {
			switch a.Key {
			case "component":
				component = a.Value.String()
			case "task_id":
				taskID = a.Value.String()
			}
			return true
		})
	}
	if component == "" {
		return h.inner.Handle(ctx, r)
	}
	msg, _, _ := strings.Cut(r.Message, ": ")
	key := component + "\x00" + msg + "\x00" + taskID

	s := h.s
	s.mu.Lock()
	now := s.now()
	k := s.kinds[key]
	if k == nil || (k.suppressed == 0 && now.Sub(k.start) >= s.interval) {
		if k == nil {
			if s.forget(now); len(s.kinds) >= maxKinds {
				// Hundreds of distinct kinds at once: each is rare.
				s.mu.Unlock()
				return h.inner.Handle(ctx, r)
			}
			k = &kind{}
			s.kinds[key] = k
		}
		k.start = now
		s.mu.Unlock()
		return h.inner.Handle(ctx, r)
	}
	k.suppressed++
	k.last = r.Clone()
	k.h = h.inner
	if k.timer == nil {
		k.timer = time.AfterFunc(k.start.Add(s.interval).Sub(now), func() { s.report(key) })
	}
	s.mu.Unlock()
	return nil
}

// report logs the last suppressed record of key with the count, and starts
// a new window.
func (s *state) report(key string) {
	s.mu.Lock()
	k := s.kinds[key]
	if k == nil || k.suppressed == 0 {
		if k != nil {
			k.timer = nil
		}
		s.mu.Unlock()
		return
	}
	r, h, n := k.last, k.h, k.suppressed
	k.suppressed, k.timer, k.start = 0, nil, s.now()
	k.last = slog.Record{}
	s.mu.Unlock()
	r.AddAttrs(slog.Int("repeated", n), slog.String("repeated_within", s.interval.String()))
	_ = h.Handle(context.Background(), r)
}

// forget drops kinds idle for a whole interval once there are too many.
// Called with s.mu held.
func (s *state) forget(now time.Time) {
	if len(s.kinds) < maxKinds {
		return
	}
	for key, k := range s.kinds {
		if k.suppressed == 0 && now.Sub(k.start) >= s.interval {
			delete(s.kinds, key)
		}
	}
}

// Flush reports every count still pending (at shutdown).
func (h *Handler) Flush() {
	h.s.mu.Lock()
	var keys []string
	for key, k := range h.s.kinds {
		if k.suppressed > 0 {
			if k.timer != nil {
				k.timer.Stop()
			}
			keys = append(keys, key)
		}
	}
	h.s.mu.Unlock()
	for _, key := range keys {
		h.s.report(key)
	}
}
