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
// they were in the original (fire-and-forget tasks): when the buffer is
// full, new events are dropped and counted.
type Async struct {
	p       *Publisher
	ch      chan Event
	dropped atomic.Int64
	done    chan struct{}
}

// asyncBatch bounds one pipeline; asyncLinger is how long the first event
// of a batch waits for company.
const (
	asyncBatch  = 256
	asyncLinger = 20 * time.Millisecond
)

// NewAsync returns a background publisher with room for buffer events.
// Call Run to start it.
func NewAsync(p *Publisher, buffer int) *Async {
	return &Async{p: p, ch: make(chan Event, buffer), done: make(chan struct{})}
}

// Offer queues e without waiting; false means it was dropped.
func (a *Async) Offer(e Event) bool {
	if e.TS == 0 {
		e.TS = float64(time.Now().UnixMicro()) / 1e6
	}
	select {
	case a.ch <- e:
		return true
	default:
		a.dropped.Add(1)
		return false
	}
}

// Dropped is how many events were dropped on a full buffer.
func (a *Async) Dropped() int64 { return a.dropped.Load() }

// Run publishes until ctx ends, then flushes what is queued (bounded by a
// short timeout) and returns.
func (a *Async) Run(ctx context.Context) {
	defer close(a.done)
	batch := make([]Event, 0, asyncBatch)
	for {
		select {
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
			a.send(ctx, batch)
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			defer cancel()
			for {
				select {
				case e := <-a.ch:
					a.send(fctx, []Event{e})
				default:
					return
				}
			}
		}
	}
}

// Done is closed when Run has returned.
func (a *Async) Done() <-chan struct{} { return a.done }

func (a *Async) send(ctx context.Context, batch []Event) {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	pipe := a.p.rdb.Pipeline()
	for _, e := range batch {
		b, err := json.Marshal(e)
		if err != nil {
			continue
		}
		pipe.Publish(sctx, a.p.channel, b)
	}
	_, _ = pipe.Exec(sctx)
}
