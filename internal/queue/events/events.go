// Package events publishes the debug-observability events the original
// emitted (scheduler_task_run and friends) on a Redis pub/sub channel, where
// the bot's web debug console listens.
package events

import (
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Event mirrors the original publish_debug_event(topic, source, status,
// duration_ms, preview, payload).
type Event struct {
	Topic  string `json:"topic"`
	Source string `json:"source"`
	// Phase is the step of a multi-step task the event reports (the
	// original's phase argument, e.g. "pipeline"); empty for most topics.
	Phase      string         `json:"phase,omitempty"`
	Status     string         `json:"status"`
	DurationMS float64        `json:"duration_ms"`
	Preview    string         `json:"preview"`
	Payload    map[string]any `json:"payload"`
	TS         float64        `json:"ts"`
}

// Publisher sends events to one channel.
type Publisher struct {
	rdb     redis.UniversalClient
	channel string
}

// NewPublisher returns a publisher on channel.
func NewPublisher(rdb redis.UniversalClient, channel string) *Publisher {
	return &Publisher{rdb: rdb, channel: channel}
}

// Channel is the pub/sub channel events go to.
func (p *Publisher) Channel() string { return p.channel }

// Publish sends e, stamping its time if unset.
func (p *Publisher) Publish(ctx context.Context, e Event) error {
	if e.TS == 0 {
		e.TS = float64(time.Now().UnixMicro()) / 1e6
	}
	b, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("encoding debug event %s: %w", e.Topic, err)
	}
	if err := p.rdb.Publish(ctx, p.channel, b).Err(); err != nil {
		return fmt.Errorf("publishing debug event %s: %w", e.Topic, err)
	}
	return nil
}

// Async publishes events in the background, pipelining whatever has queued
// up into one round trip, so a busy worker sends one Redis command batch
// per burst instead of one PUBLISH per task. Events are best-effort, as
// they were in the original (fire-and-forget tasks): events that find the
// buffer full, fail to reach Redis, or are still buffered when the stop
// flush runs out of time are dropped and counted.
type Async struct {
	p       *Publisher
	ch      chan Event
	dropped atomic.Int64
	counter interface{ Add(float64) }
	done    chan struct{}
	// FlushTimeout bounds the flush when Run stops (default 2 s); set it
	// before Run.
	FlushTimeout time.Duration
}

// asyncBatch bounds one pipeline; asyncLinger is how long the first event
// of a batch waits for company; sendTimeout bounds one pipeline's round
// trip, and flushTimeout the whole flush when Run stops, however many
// events are left (a stop with Redis unreachable must not wait for each).
const (
	asyncBatch   = 256
	asyncLinger  = 20 * time.Millisecond
	sendTimeout  = 2 * time.Second
	flushTimeout = 2 * time.Second
)

// NewAsync returns a background publisher with room for buffer events.
// Call Run to start it.
func NewAsync(p *Publisher, buffer int) *Async {
	return &Async{p: p, ch: make(chan Event, buffer), done: make(chan struct{}), FlushTimeout: flushTimeout}
}

// CountDropsIn adds every dropped event to c as well (a Prometheus
// counter). Call it before Run and before the first Offer.
func (a *Async) CountDropsIn(c interface{ Add(float64) }) { a.counter = c }

// Offer queues e without waiting; false means it was dropped.
func (a *Async) Offer(e Event) bool {
	if e.TS == 0 {
		e.TS = float64(time.Now().UnixMicro()) / 1e6
	}
	select {
	case a.ch <- e:
		return true
	default:
		a.drop(1)
		return false
	}
}

func (a *Async) drop(n int) {
	if n == 0 {
		return
	}
	a.dropped.Add(int64(n))
	if a.counter != nil {
		a.counter.Add(float64(n))
	}
}

// Dropped is how many events were dropped.
func (a *Async) Dropped() int64 { return a.dropped.Load() }

// Run publishes until ctx ends, then flushes what is queued within
// flushTimeout and returns.
func (a *Async) Run(ctx context.Context) {
	defer close(a.done)
	batch := make([]Event, 0, asyncBatch)
	for {
		select {
		case <-ctx.Done():
			a.flush(batch[:0])
			return
		case e := <-a.ch:
			batch = append(batch[:0], e)
			// Linger briefly so a burst shares one round trip; debug
			// events can afford the delay.
			linger := time.NewTimer(asyncLinger)
		collect:
			for len(batch) < asyncBatch {
				select {
				case e := <-a.ch:
					batch = append(batch, e)
				case <-linger.C:
					break collect
				case <-ctx.Done():
					break collect
				}
			}
			linger.Stop()
			if ctx.Err() != nil {
				a.flush(batch)
				return
			}
			// A stop arriving now must not cancel the round trip of a
			// batch already taken off the buffer: the batch would be
			// dropped whole. The send is still bounded by sendTimeout.
			a.send(context.WithoutCancel(ctx), batch)
		}
	}
}

// flush sends pending and what is buffered, in batches, until the buffer
// is empty or flushTimeout has passed; what is left then is dropped and
// counted.
func (a *Async) flush(pending []Event) {
	fctx, cancel := context.WithTimeout(context.Background(), a.FlushTimeout)
	defer cancel()
	batch := pending
	for {
	take:
		for len(batch) < asyncBatch {
			select {
			case e := <-a.ch:
				batch = append(batch, e)
			default:
				break take
			}
		}
		switch {
		case len(batch) == 0:
			return
		case fctx.Err() != nil:
			a.drop(len(batch))
		default:
			a.send(fctx, batch)
		}
		batch = batch[:0]
	}
}

// Done is closed when Run has returned.
func (a *Async) Done() <-chan struct{} { return a.done }

// send publishes batch in one pipeline within sendTimeout (or ctx's
// deadline, if sooner); on failure the batch is dropped and counted.
func (a *Async) send(ctx context.Context, batch []Event) {
	sctx, cancel := context.WithTimeout(ctx, sendTimeout)
	defer cancel()
	pipe := a.p.rdb.Pipeline()
	n := 0
	for _, e := range batch {
		b, err := json.Marshal(e)
		if err != nil {
			a.drop(1)
			continue
		}
		pipe.Publish(sctx, a.p.channel, b)
		n++
	}
	if n == 0 {
		return
	}
	// The client may not apply context deadlines to its sockets
	// (ContextTimeoutEnabled off: a silent Redis holds a read for
	// ReadTimeout), so the wait is bounded here: a pipeline still out at
	// the deadline is counted as dropped and left to finish on its own,
	// within the client's ReadTimeout.
	res := make(chan []redis.Cmder, 1)
	go func() {
		cmds, _ := pipe.Exec(sctx)
		res <- cmds
	}()
	select {
	case cmds := <-res:
		failed := 0
		for _, c := range cmds {
			if c.Err() != nil {
				failed++
			}
		}
		a.drop(failed)
	case <-sctx.Done():
		a.drop(n)
	}
}
