package logthrottle

import (
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/testkit/syncbuf"
)

// syncBuffer is the log, safe for the report timers.
type syncBuffer struct{ syncbuf.Buffer }

func (s *syncBuffer) records(t *testing.T) []map[string]any {
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(s.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("not JSON: %q", l)
		}
		out = append(out, m)
	}
	return out
}

func newLogger(interval time.Duration) (*slog.Logger, *Handler, *syncBuffer) {
	buf := &syncBuffer{}
	h := New(slog.NewJSONHandler(buf, nil), interval)
	return slog.New(h), h, buf
}

func TestRepeatsOfOneKindAreOneLineThenOneCountPerInterval(t *testing.T) {
	log, _, buf := newLogger(200 * time.Millisecond)
	sched := log.With("component", "scheduler")
	for i := range 50 {
		sched.Warn("scheduler: handling periodic task failed; will retry", "task", "t", "attempt", i)
	}
	time.Sleep(350 * time.Millisecond)
	rs := buf.records(t)
	if len(rs) != 2 {
		t.Fatalf("%d lines for 50 repeats in one interval, want 2 (the first, then a count): %v", len(rs), rs)
	}
	if rs[0]["attempt"] != 0.0 || rs[0]["repeated"] != nil {
		t.Errorf("first line %v, want the first record as is", rs[0])
	}
	if rs[1]["attempt"] != 49.0 || rs[1]["repeated"] != 49.0 || rs[1]["component"] != "scheduler" {
		t.Errorf("count line %v, want the last record with repeated=49", rs[1])
	}
}

func TestAFloodLogsABoundedNumberOfLines(t *testing.T) {
	log, h, buf := newLogger(100 * time.Millisecond)
	asynq := log.With("component", "asynq")
	redis := log.With("component", "go-redis")
	stop := time.Now().Add(time.Second)
	n := 0
	for time.Now().Before(stop) {
		asynq.Error("Dequeue error: UNKNOWN: redis eval error: dial tcp 127.0.0.1:6379: connect: connection refused")
		asynq.Error("Failed to write server state data: UNKNOWN: dial tcp: connection refused")
		redis.Warn("go-redis: connection pool: failed to dial after 5 attempts: dial tcp 127.0.0.1:6379: connect: connection refused")
		n += 3
		time.Sleep(time.Millisecond)
	}
	h.Flush()
	rs := buf.records(t)
	// 3 kinds, 1 s, 100 ms windows: at most 3 × (10 + 1) lines.
	if len(rs) > 33 || len(rs) < 6 {
		t.Errorf("%d lines for %d records over 1s in 3 kinds with a 100ms interval, want between 6 and 33", len(rs), n)
	}
	total := 0
	for _, r := range rs {
		if c, ok := r["repeated"].(float64); ok {
			total += int(c) // a count line stands for the records it counts, itself included
		} else {
			total++
		}
	}
	if total != n {
		t.Errorf("lines plus counts = %d, want every one of the %d records accounted for", total, n)
	}
}

func TestWhatIsNotAComponentsWarningPassesUntouched(t *testing.T) {
	log, _, buf := newLogger(time.Hour)
	for range 3 {
		log.Warn("task finished", "task", "kg_decay_task", "status", "error") // no component: every failed run counts
		log.With("component", "scheduler").Info("scheduler started")          // below Warn
		log.WithGroup("req").Warn("bad request", "component", "x")            // component nested in a group
	}
	if rs := buf.records(t); len(rs) != 9 {
		t.Errorf("%d lines, want all 9", len(rs))
	}
}

func TestKindsAreIndependent(t *testing.T) {
	log, h, buf := newLogger(time.Hour)
	recoverer := log.With("component", "recoverer")
	for range 3 {
		recoverer.Warn("recovery failed: x")
		log.Warn("recovery failed: y", "component", "scheduler")
		recoverer.Warn("cannot subscribe to cancelation channel: z")
		// Lines about different tasks are not merged.
		recoverer.Warn("task recovered from a dead worker", "task_id", "a")
		recoverer.Warn("task recovered from a dead worker", "task_id", "b")
	}
	if rs := buf.records(t); len(rs) != 5 {
		t.Errorf("%d lines before the interval ends, want one per kind (5)", len(rs))
	}
	h.Flush()
	if rs := buf.records(t); len(rs) != 10 {
		t.Errorf("%d lines after Flush, want 5 more with counts", len(rs))
	}
}
