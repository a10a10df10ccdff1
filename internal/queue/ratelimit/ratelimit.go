// Package ratelimit holds a rate limit shared by every worker through one
// Redis key, so a fleet as a whole stays under an upstream's quota however
// many processes take part.
package ratelimit

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Limiter is a GCRA limiter (a token bucket kept as one timestamp, the
// "theoretical arrival time"): Rate tokens per minute on average, bursts of
// up to Burst tokens. The time is Redis's own (TIME inside the script), so
// workers' clock skew does not matter.
type Limiter struct {
	rdb      redis.UniversalClient
	key      string
	interval time.Duration
	burst    int
}

// New returns a limiter of perMinute tokens per minute (> 0) with bursts
// of up to burst tokens (at least 1), kept in key.
func New(rdb redis.UniversalClient, key string, perMinute float64, burst int) *Limiter {
	return &Limiter{
		rdb: rdb, key: key,
		interval: time.Duration(float64(time.Minute) / perMinute),
		burst:    max(burst, 1),
	}
}

// gcra takes cost tokens if the bucket has them and returns 0, or takes
// nothing and returns the microseconds until it will have them. With force
// it takes them regardless (a debt later takers wait out) and returns 0.
var gcra = redis.NewScript(`
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3] or '1')
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval * cost
local allow_at = new_tat - interval * burst
if ARGV[4] ~= '1' and allow_at > now then return math.ceil(allow_at - now) end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return 0
`)

// Take takes one token. It returns zero when the caller may go ahead, or
// how long until a token will be free, having taken nothing.
func (l *Limiter) Take(ctx context.Context) (time.Duration, error) { return l.TakeN(ctx, 1) }

// TakeN takes n tokens at once (an LLM call's estimated tokens), like
// Take. n is capped at the burst, which could never hold more.
func (l *Limiter) TakeN(ctx context.Context, n int) (time.Duration, error) {
	return l.run(ctx, min(max(n, 1), l.burst), false)
}

// Charge takes n tokens whether or not the bucket has them: what a call
// used beyond its estimate, which later takers then wait out.
func (l *Limiter) Charge(ctx context.Context, n int) error {
	if n <= 0 {
		return nil
	}
	_, err := l.run(ctx, n, true)
	return err
}

func (l *Limiter) run(ctx context.Context, n int, force bool) (time.Duration, error) {
	f := "0"
	if force {
		f = "1"
	}
	us, err := gcra.Run(ctx, l.rdb, []string{l.key}, l.interval.Microseconds(), l.burst, n, f).Int64()
	if err != nil {
		return 0, fmt.Errorf("ratelimit %s: %w", l.key, err)
	}
	return time.Duration(us) * time.Microsecond, nil
}

// Interval is the average time between two tokens.
func (l *Limiter) Interval() time.Duration { return l.interval }
