package jobs

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
