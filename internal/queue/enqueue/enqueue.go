// Package enqueue is the one way to enqueue a catalog task by hand, shared by
// the enqueuer CLI and the monitor's HTTP API so both validate alike.
package enqueue

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/jobs"
)

// Errors, checked with errors.Is.
var (
	// ErrInvalid means the request cannot be enqueued as given.
	ErrInvalid = errors.New("invalid request")
	// ErrUnknownTask means the task is not in the catalog; it also wraps
	// ErrInvalid.
	ErrUnknownTask = errors.New("unknown task")
	// ErrSingletonBusy means the task is a singleton and an instance is
	// already queued or running.
	ErrSingletonBusy = errors.New("singleton already queued or running")
)

// Upper bounds of a hand-enqueued task's durations. Without them a typo
// (or a hostile caller) could park a task, or a unique lock that blocks a
// periodic task's every occurrence, for centuries.
const (
	// MaxDelay bounds in, and at's distance from now.
	MaxDelay = 30 * 24 * time.Hour
	// MaxUnique bounds unique: longer than any catalog interval's worth of
	// blocking an operator could mean.
	MaxUnique = 7 * 24 * time.Hour
	// MaxTimeout bounds timeout: the longest catalog task needs an hour.
	MaxTimeout = 24 * time.Hour
)

// DefaultRetention keeps a hand-enqueued task's result and state readable
// (enqueuer status, the dashboard) for a day after it finishes.
const DefaultRetention = 24 * time.Hour

// Duration is a time.Duration written as a Go duration string ("90s") in JSON.
type Duration time.Duration

// UnmarshalJSON accepts "90s"-style strings.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("a duration must be a string such as \"90s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// Request asks for one run of a catalog task.
type Request struct {
	Task    string          `json:"task"`
	Payload json.RawMessage `json:"payload,omitempty"`
	// Queue overrides the task's queue.
	Queue string `json:"queue,omitempty"`
	// In delays the run; At schedules it at a time. At most one of them.
	In Duration   `json:"in,omitempty"`
	At *time.Time `json:"at,omitempty"`
	// Unique refuses the enqueue while another copy with the same payload
	// is queued or running, for this long. Singletons always get it.
	// Unique and Timeout are pointers so that an explicit zero ("0s") is
	// refused as out of range rather than taken for "the task's default".
	Unique   *Duration `json:"unique,omitempty"`
	MaxRetry *int      `json:"max_retry,omitempty"`
	Timeout  *Duration `json:"timeout,omitempty"`
}

// Prepared is a validated request, ready for asynq.
type Prepared struct {
	Spec    jobs.Spec
	Task    *asynq.Task
	Options []asynq.Option
	Queue   string
}

// Prepare validates r against the catalog and now. Every error wraps
// ErrInvalid and says which field is wrong.
func Prepare(catalog []jobs.Spec, r Request, now time.Time) (Prepared, error) {
	var spec jobs.Spec
	found := false
	for _, s := range catalog {
		if s.Name == r.Task {
			spec, found = s, true
			break
		}
	}
	if !found {
		return Prepared{}, fmt.Errorf("%w: %w %q", ErrInvalid, ErrUnknownTask, r.Task)
	}
	if spec.Kind == jobs.NodeLocal {
		return Prepared{}, fmt.Errorf("%w: %s is node-local: every node agent runs it on its own node and schedule, so it cannot be enqueued", ErrInvalid, spec.Name)
	}
	raw := []byte(r.Payload)
	if key, ok := duplicateKey(raw); ok {
		return Prepared{}, fmt.Errorf("%w: duplicate key %q in payload", ErrInvalid, key)
	}
	if strings.TrimSpace(string(raw)) == "null" {
		raw = nil
	}
	p, err := jobs.DecodePayload(spec, raw)
	if err != nil {
		return Prepared{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	data, err := json.Marshal(p)
	if err != nil {
		return Prepared{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	queue := spec.Queue
	if r.Queue != "" {
		if _, ok := jobs.Queues()[r.Queue]; !ok {
			return Prepared{}, fmt.Errorf("%w: unknown queue %q (queues: critical, default, maintenance)", ErrInvalid, r.Queue)
		}
		queue = r.Queue
	}
	maxRetry := spec.MaxRetry
	if r.MaxRetry != nil {
		if *r.MaxRetry < 0 || *r.MaxRetry > 100 {
			return Prepared{}, fmt.Errorf("%w: max_retry must be between 0 and 100", ErrInvalid)
		}
		maxRetry = *r.MaxRetry
	}
	timeout := spec.Timeout
	if r.Timeout != nil {
		if d := time.Duration(*r.Timeout); d < time.Second || d > MaxTimeout {
			return Prepared{}, fmt.Errorf("%w: timeout %s: must be between 1s and %s", ErrInvalid, d, hours(MaxTimeout))
		}
		timeout = time.Duration(*r.Timeout)
	}
	opts := []asynq.Option{asynq.Queue(queue), asynq.MaxRetry(maxRetry), asynq.Timeout(timeout), asynq.Retention(DefaultRetention)}
	switch {
	case r.In != 0 && r.At != nil:
		return Prepared{}, fmt.Errorf("%w: give at most one of in and at", ErrInvalid)
	case r.In < 0:
		return Prepared{}, fmt.Errorf("%w: in must not be negative", ErrInvalid)
	case time.Duration(r.In) > MaxDelay:
		return Prepared{}, fmt.Errorf("%w: in must be at most %s (30 days)", ErrInvalid, hours(MaxDelay))
	case r.In > 0:
		opts = append(opts, asynq.ProcessIn(time.Duration(r.In)))
	case r.At != nil:
		if r.At.Before(now.Add(-time.Minute)) {
			return Prepared{}, fmt.Errorf("%w: at %s is in the past", ErrInvalid, r.At.Format(time.RFC3339))
		}
		if r.At.After(now.Add(MaxDelay)) {
			return Prepared{}, fmt.Errorf("%w: at %s is more than 30 days ahead", ErrInvalid, r.At.Format(time.RFC3339))
		}
		opts = append(opts, asynq.ProcessAt(*r.At))
	}
	var unique time.Duration
	if r.Unique != nil {
		if unique = time.Duration(*r.Unique); unique < time.Second || unique > MaxUnique {
			return Prepared{}, fmt.Errorf("%w: unique %s: must be between 1s and %s (7 days)", ErrInvalid, unique, hours(MaxUnique))
		}
	}
	if spec.Singleton && unique == 0 {
		unique = spec.UniqueTTL()
	}
	if unique > 0 {
		opts = append(opts, asynq.Unique(unique))
	}
	return Prepared{Spec: spec, Task: asynq.NewTask(spec.Name, data), Options: opts, Queue: queue}, nil
}

// hours writes a bound the way an operator types it ("720h").
func hours(d time.Duration) string { return fmt.Sprintf("%dh", int(d.Hours())) }

// DecodeRequest reads one JSON request from r: unknown fields, a key that
// appears twice in one object (at any depth, the payload's included) and
// anything but white space after the object are refused, so a request that
// is not what the caller meant ("{...}{...}", or a "task" that a proxy
// reading the first of two sees differently) is never half-applied.
func DecodeRequest(r io.Reader) (Request, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return Request{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	var req Request
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return Request{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Request{}, fmt.Errorf("%w: data after the JSON object", ErrInvalid)
	}
	if key, ok := duplicateKey(data); ok {
		return Request{}, fmt.Errorf("%w: duplicate key %q", ErrInvalid, key)
	}
	return req, nil
}

// duplicateKey finds the first member of a JSON object whose name an
// earlier member of the same object has, at any depth, and returns its path
// ("payload.days_to_keep", "items[2].id"). encoding/json keeps the last of
// two and says nothing, while other readers (a proxy, a log reviewer, the
// bot's Python) may take the first; RFC 8259 leaves the outcome undefined.
// Invalid JSON is not its business: it reports nothing and the decoder
// does.
func duplicateKey(data []byte) (string, bool) {
	type frame struct {
		keys    map[string]struct{} // nil for an array
		path    string
		key     string // of the member whose value is being read
		wantKey bool
		index   int // of an array's next element
	}
	var stack []*frame
	// done is called when a value ends, and reports whether it was the
	// top-level one.
	done := func() bool {
		if len(stack) == 0 {
			return true
		}
		f := stack[len(stack)-1]
		if f.keys != nil {
			f.wantKey = true
		} else {
			f.index++
		}
		return false
	}
	child := func() string {
		if len(stack) == 0 {
			return ""
		}
		f := stack[len(stack)-1]
		if f.keys == nil {
			return fmt.Sprintf("%s[%d]", f.path, f.index)
		}
		if f.path == "" {
			return f.key
		}
		return f.path + "." + f.key
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	for {
		tok, err := dec.Token()
		if err != nil {
			return "", false
		}
		if n := len(stack); n > 0 && stack[n-1].wantKey {
			f := stack[n-1]
			if k, ok := tok.(string); ok {
				if _, dup := f.keys[k]; dup {
					f.key = k
					return child(), true
				}
				f.keys[k], f.key, f.wantKey = struct{}{}, k, false
				continue
			}
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{keys: map[string]struct{}{}, path: child(), wantKey: true})
		case json.Delim('['):
			stack = append(stack, &frame{path: child()})
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
			if done() {
				return "", false
			}
		default:
			if done() {
				return "", false
			}
		}
	}
}

// Enqueuer is the part of asynq.Client Submit uses.
type Enqueuer interface {
	EnqueueContext(ctx context.Context, task *asynq.Task, opts ...asynq.Option) (*asynq.TaskInfo, error)
}

// Submit enqueues a prepared request. A refused singleton wraps
// ErrSingletonBusy.
func Submit(ctx context.Context, c Enqueuer, p Prepared) (*asynq.TaskInfo, error) {
	info, err := c.EnqueueContext(ctx, p.Task, p.Options...)
	if errors.Is(err, asynq.ErrDuplicateTask) {
		return nil, fmt.Errorf("%w: a copy of %s is already queued or running (`enqueuer locks` shows singleton holders): %w", ErrSingletonBusy, p.Spec.Name, err)
	}
	if err != nil {
		return nil, fmt.Errorf("enqueuing %s: %w", p.Spec.Name, err)
	}
	return info, nil
}
