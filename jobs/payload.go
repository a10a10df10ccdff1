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

// Bounds of an extraction unit's payload.
const (
	// MaxUnitSegments bounds the segments of one unit: one LLM call holds
	// at most 30 messages, so more segments than that can only be empty
	// ones (bot messages, deleted members).
	MaxUnitSegments = 64
	maxPositionKey  = 1024
)

// ExtractUnit is the payload of kg_extract_unit: which planner made it and
// the segments of channels it extracts. A segment is the messages of a
// channel after After up to End inclusive, in the message set's order.
type ExtractUnit struct {
	// Task is the planner (limbic_anchoring_worker or auto_kg_extraction):
	// it names the cursors and the chain the unit settles.
	Task     string        `json:"task"`
	Segments []UnitSegment `json:"segments"`
}

// UnitSegment is one channel's range of a unit.
type UnitSegment struct {
	Channel string      `json:"channel"` // "<platform>:<channel id>"
	After   SegPosition `json:"after"`
	End     SegPosition `json:"end"`
}

// SegPosition is a place in a channel's message set: time (Unix ms), then
// member key (msgcache.Position).
type SegPosition struct {
	TS  int64  `json:"ts"`
	Key string `json:"key"`
}

// Validate checks the planner, the segment count and each segment's
// channel and range.
func (p *ExtractUnit) Validate() error {
	if p.Task != LimbicAnchoringWorker && p.Task != AutoKGExtraction {
		return fmt.Errorf("task must be %s or %s, got %q", LimbicAnchoringWorker, AutoKGExtraction, p.Task)
	}
	if len(p.Segments) < 1 || len(p.Segments) > MaxUnitSegments {
		return fmt.Errorf("segments must hold 1 to %d segments, got %d", MaxUnitSegments, len(p.Segments))
	}
	seen := map[string]bool{}
	for i, s := range p.Segments {
		plat, id, ok := strings.Cut(s.Channel, ":")
		if !ok || (plat != "discord" && plat != "matrix") || id == "" || len(id) > 255 {
			return fmt.Errorf("segments[%d].channel must be discord:<id> or matrix:<id>, got %q", i, s.Channel)
		}
		if seen[s.Channel] {
			return fmt.Errorf("segments[%d]: channel %s appears twice", i, s.Channel)
		}
		seen[s.Channel] = true
		if len(s.After.Key) > maxPositionKey || len(s.End.Key) > maxPositionKey || s.After.TS < 0 {
			return fmt.Errorf("segments[%d]: position out of range", i)
		}
		if !(s.After.TS < s.End.TS || s.After.TS == s.End.TS && s.After.Key < s.End.Key) {
			return fmt.Errorf("segments[%d]: end must come after after", i)
		}
	}
	return nil
}
