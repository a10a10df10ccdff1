// Package events publishes the debug-observability events the original
// emitted (scheduler_task_run and friends) on a Redis pub/sub channel, where
// the bot's web debug console listens.
package events

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Event mirrors the original publish_debug_event(topic, source, status,
// duration_ms, preview, payload).
type Event struct {
	Topic      string         `json:"topic"`
	Source     string         `json:"source"`
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
