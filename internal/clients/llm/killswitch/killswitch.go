// Package killswitch is the chat-LLM kill switch: for cost and abuse
// emergencies, no chat/completions call may start while it is off. It is
// off when BACKGROUND_SCHEDULER_CHAT_LLM_ENABLED was false at startup, or
// while a Redis key (SET <key> off) says so, which the bot or an operator
// can flip at any time without restarting a worker.
//
// The worker checks it when a chat-LLM task starts (its middleware) and
// before every call (Guard), so a long pass stops between two calls.
package killswitch

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/spend"
)

// DefaultKey is the Redis key of the runtime switch.
const DefaultKey = "sg:switch:chat_llm"

// ErrOff is returned instead of a call while the switch is off. It is a
// refusal (errors.Is(err, llm.ErrRefused)), and the spend ledger's kind of
// one (spend.AsRefusal finds a *spend.Refusal of reason kill_switch): the
// run that meets it stops and is deferred until the switch is back on,
// never retried as a failure.
var ErrOff error = offError{}

type offError struct{}

func (offError) Error() string        { return "the chat-LLM kill switch is off" }
func (offError) Is(target error) bool { return target == llm.ErrRefused }

func (e offError) As(target any) bool {
	r, ok := target.(**spend.Refusal)
	if ok {
		*r = &spend.Refusal{Reason: spend.ReasonKillSwitch} // Switch: the caller has the whole message
	}
	return ok
}

// Switch reads the switch. The zero value is on.
type Switch struct {
	rdb redis.UniversalClient
	key string
	// disabled is the startup setting's verdict: off for good.
	disabled bool
}

// New returns the switch: off for good unless enabled (the startup
// setting), and then off whenever key holds off, false, 0 or no.
func New(rdb redis.UniversalClient, key string, enabled bool) *Switch {
	return &Switch{rdb: rdb, key: key, disabled: !enabled}
}

// Check returns nil while chat-LLM work may start, an error wrapping ErrOff
// while the switch is off, and the Redis error if the runtime switch cannot
// be read (no call starts on a switch nobody can read: an emergency stop
// must not depend on Redis being well).
func (s *Switch) Check(ctx context.Context) error {
	if s.disabled {
		return fmt.Errorf("%w (BACKGROUND_SCHEDULER_CHAT_LLM_ENABLED=false)", ErrOff)
	}
	if s.rdb == nil || s.key == "" {
		return nil
	}
	v, err := s.rdb.Get(ctx, s.key).Result()
	switch {
	case errors.Is(err, redis.Nil):
		return nil
	case err != nil:
		return fmt.Errorf("reading the chat-LLM kill switch %s: %w", s.key, err)
	}
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "off", "false", "0", "no", "disabled":
		return fmt.Errorf("%w (%s = %q)", ErrOff, s.key, v)
	}
	return nil
}

// ChatModel makes chat/completions calls (*llm.Client).
type ChatModel interface {
	Chat(ctx context.Context, r llm.Request) (*llm.Response, error)
}

// Guard wraps m so that no call starts while the switch is off.
func (s *Switch) Guard(m ChatModel) ChatModel {
	if m == nil {
		return nil
	}
	return guarded{s: s, m: m}
}

type guarded struct {
	s *Switch
	m ChatModel
}

func (g guarded) Chat(ctx context.Context, r llm.Request) (*llm.Response, error) {
	if err := g.s.Check(ctx); err != nil {
		return nil, err
	}
	return g.m.Chat(ctx, r)
}
