package periodic

import (
	"context"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Holds holds tasks' occurrences back while their work is deferred (their
// LLM budget is spent, the kill switch is off: spend.Gate), and says when a
// hold lifted, so the task runs at once rather than at its next
// occurrence: a task deferred to the next budget window runs when the
// window starts, one whose budget was raised within a tick.
type Holds interface {
	// Check returns the tasks held now and those whose hold just lifted
	// (each reported once across the schedulers).
	Check(ctx context.Context) (held map[string]bool, lifted []string, err error)
}

// resumeScript makes an occurrence due now, unless one already is.
var resumeScript = redis.NewScript(`
local n = tonumber(redis.call('HGET', KEYS[1], 'next_ms') or '')
if n and n > tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'next_ms', ARGV[1])
  return 1
end
return 0
`)

// holds asks s's Holds which tasks are held, and makes the lifted ones due
// now. A Holds that cannot answer holds nothing back (the runs of a
// deferred task then stand down when they start).
func (s *Scheduler) holds(ctx context.Context, now time.Time) map[string]bool {
	if s.cfg.Holds == nil {
		return nil
	}
	held, lifted, err := s.cfg.Holds.Check(ctx)
	s.holdsAt = now
	// Something deferred (or no answer): check again on the next tick, so
	// a lifted hold resumes its task within Poll.
	s.holdsActive = err != nil || held != nil || len(lifted) > 0
	if err != nil {
		s.cfg.Logger.Warn("scheduler: reading the deferred tasks failed; their runs stand down when they start", "error", err)
		return nil
	}
	for _, task := range lifted {
		if _, ok := s.entry(task); !ok {
			continue
		}
		if err := resumeScript.Run(ctx, s.cfg.Redis, []string{StateKeyPrefix + task}, strconv.FormatInt(now.UnixMilli(), 10)).Err(); err != nil {
			s.cfg.Logger.Warn("scheduler: a deferred task could not be resumed now; it runs at its next occurrence", "task", task, "error", err)
			continue
		}
		delete(s.next, task)
		s.cfg.Logger.Info("scheduler: deferred task resumed", "task", task)
	}
	return held
}

func (s *Scheduler) entry(name string) (Entry, bool) {
	for _, e := range s.entries {
		if e.Name == name {
			return e, true
		}
	}
	return Entry{}, false
}
