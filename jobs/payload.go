package jobs

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// ErrInvalidPayload is wrapped by every payload decoding or validation error.
var ErrInvalidPayload = errors.New("invalid payload")

// MaxPayloadBytes bounds a task payload; every payload in the catalog is a
// handful of small fields, so anything larger is a mistake or an attack.
const MaxPayloadBytes = 64 << 10

// Payload is a task's typed argument. Validate reports the first field that
// is out of range, naming it.
type Payload interface {
	Validate() error
}

// Defaults of the payload fields.
const (
	DefaultPromptTickLimit = 100
	DefaultDaysToKeep      = 7
)

// Empty is the payload of tasks that take no arguments.
type Empty struct{}

// Validate accepts every Empty.
func (*Empty) Validate() error { return nil }

// PromptTick is the payload of scheduled_prompt_tick.
type PromptTick struct {
	// Limit bounds how many due prompts one tick fires; the rest fire on the
	// next tick.
	Limit int `json:"limit"`
}

// Validate checks Limit.
func (p *PromptTick) Validate() error {
	if p.Limit < 1 || p.Limit > 10_000 {
		return fmt.Errorf("limit must be between 1 and 10000, got %d", p.Limit)
	}
	return nil
}

// PromptCleanup is the payload of scheduled_prompt_cleanup.
type PromptCleanup struct {
	DaysToKeep int `json:"days_to_keep"`
}

// Validate checks DaysToKeep.
func (p *PromptCleanup) Validate() error {
	if p.DaysToKeep < 1 || p.DaysToKeep > 3650 {
		return fmt.Errorf("days_to_keep must be between 1 and 3650, got %d", p.DaysToKeep)
	}
	return nil
}

// ChannelBatch is the payload of tasks that walk the most active channels.
type ChannelBatch struct {
	MaxChannels int `json:"max_channels"`
}

// Validate checks MaxChannels.
func (p *ChannelBatch) Validate() error {
	if p.MaxChannels < 1 || p.MaxChannels > 1000 {
		return fmt.Errorf("max_channels must be between 1 and 1000, got %d", p.MaxChannels)
	}
	return nil
}

// ChannelRef names one channel: the payload of per-channel child tasks.
type ChannelRef struct {
	Platform  string `json:"platform"`
	ChannelID string `json:"channel_id"`
}

// Validate checks both fields.
func (p *ChannelRef) Validate() error {
	switch {
	case p.Platform != "discord" && p.Platform != "matrix":
		return fmt.Errorf("platform must be discord or matrix, got %q", p.Platform)
	case p.ChannelID == "" || len(p.ChannelID) > 255:
		return fmt.Errorf("channel_id must be 1 to 255 bytes, got %d", len(p.ChannelID))
	}
	return nil
}

// MaxEmbedBatch bounds an embed_messages batch: one embeddings call.
const MaxEmbedBatch = 256

// EmbedBatch is the payload of embed_messages: message-cache keys.
type EmbedBatch struct {
	Keys []string `json:"keys"`
}

// Validate checks the batch size and that every key is a message key.
func (p *EmbedBatch) Validate() error {
	if len(p.Keys) < 1 || len(p.Keys) > MaxEmbedBatch {
		return fmt.Errorf("keys must hold 1 to %d message keys, got %d", MaxEmbedBatch, len(p.Keys))
	}
	for i, k := range p.Keys {
		if !strings.HasPrefix(k, "sg:msg:") {
			return fmt.Errorf("keys[%d] = %q is not a message key (sg:msg:...)", i, k)
		}
	}
	return nil
}

// DecodePayload parses data as the payload of spec: a JSON object whose
// fields override the defaults. Unknown fields, trailing data, invalid UTF-8,
// oversize input and out-of-range values are rejected with an error that
// wraps ErrInvalidPayload. Empty data yields the defaults.
func DecodePayload(spec Spec, data []byte) (Payload, error) {
	p := spec.NewPayload()
	if len(data) > MaxPayloadBytes {
		return nil, fmt.Errorf("%w for %s: %d bytes exceeds the %d-byte limit", ErrInvalidPayload, spec.Name, len(data), MaxPayloadBytes)
	}
	if !utf8.Valid(data) {
		return nil, fmt.Errorf("%w for %s: not valid UTF-8", ErrInvalidPayload, spec.Name)
	}
	if len(bytes.TrimSpace(data)) > 0 {
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(p); err != nil {
			return nil, fmt.Errorf("%w for %s: %v", ErrInvalidPayload, spec.Name, err)
		}
		if _, err := dec.Token(); !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w for %s: unexpected data after the JSON object", ErrInvalidPayload, spec.Name)
		}
	}
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("%w for %s: %v", ErrInvalidPayload, spec.Name, err)
	}
	return p, nil
}

// EncodePayload validates p and returns its wire form.
func EncodePayload(p Payload) ([]byte, error) {
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidPayload, err)
	}
	return json.Marshal(p)
}
