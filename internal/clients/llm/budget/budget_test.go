package budget_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/clients/llm/budget"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

// model is a fake chat model that counts the calls in flight.
type model struct {
	delay    time.Duration
	inFlight atomic.Int64
	peak     atomic.Int64
	calls    atomic.Int64
	// fail, when set, answers the n-th call (1-based).
	fail func(n int64) error
}

func (m *model) Chat(ctx context.Context, r llm.Request) (*llm.Response, error) {
	n := m.calls.Add(1)
	cur := m.inFlight.Add(1)
	defer m.inFlight.Add(-1)
	for {
		p := m.peak.Load()
		if cur <= p || m.peak.CompareAndSwap(p, cur) {
			break
		}
	}
	if m.fail != nil {
		if err := m.fail(n); err != nil {
			return nil, err
		}
	}
	select {
	case <-time.After(m.delay):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return &llm.Response{Content: "ok", Usage: llm.Usage{PromptTokens: 100, CompletionTokens: 20}}, nil
}

// observer records the budget's events.
type observer struct {
	mu      sync.Mutex
	waits   map[string]int
	limited int
	flight  int
}

func (o *observer) InFlight(_ string, d int) { o.mu.Lock(); o.flight += d; o.mu.Unlock() }
func (o *observer) Waited(_, reason string, _ time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.waits == nil {
		o.waits = map[string]int{}
	}
	o.waits[reason]++
}
func (o *observer) RateLimited(string) { o.mu.Lock(); o.limited++; o.mu.Unlock() }

func req() llm.Request { return llm.Prompt("m", strings.Repeat("x", 400)) }

func TestInFlightCallsAreBoundedAcrossProcesses(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	m := &model{delay: 50 * time.Millisecond}
	obs := &observer{}
	// Two "pods" share the endpoint's budget through Redis.
	pods := []*budget.Budget{
		budget.New(m, rdb, "chat", budget.Limits{MaxInFlight: 3}, obs),
		budget.New(m, rdb, "chat", budget.Limits{MaxInFlight: 3}, obs),
	}
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := pods[i%2].Chat(context.Background(), req()); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if m.calls.Load() != 20 || m.peak.Load() > 3 || m.peak.Load() < 2 {
		t.Fatalf("%d calls, peak %d in flight; want 20 calls, at most 3 at once", m.calls.Load(), m.peak.Load())
	}
	if obs.waits[budget.ReasonInFlight] == 0 || obs.flight != 0 {
		t.Fatalf("observer %+v", obs)
	}
	if n, _ := pods[0].InFlight(context.Background()); n != 0 {
		t.Fatalf("%d slots still held", n)
	}
}

func TestA429PausesEveryCallerForItsRetryAfter(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	m := &model{fail: func(n int64) error {
		if n == 1 {
			return &llm.RateLimitError{Endpoint: "chat/completions", After: 400 * time.Millisecond}
		}
		return nil
	}}
	obs := &observer{}
	a := budget.New(m, rdb, "chat", budget.Limits{}, obs)
	b := budget.New(m, rdb, "chat", budget.Limits{}, obs)
	_, err := a.Chat(context.Background(), req())
	var rl *llm.RateLimitError
	if !errors.As(err, &rl) || obs.limited != 1 {
		t.Fatalf("err %v, limited %d: want the 429 back", err, obs.limited)
	}
	start := time.Now()
	if _, err := b.Chat(context.Background(), req()); err != nil { // another pod
		t.Fatal(err)
	}
	if waited := time.Since(start); waited < 300*time.Millisecond || obs.waits[budget.ReasonPaused] != 1 {
		t.Fatalf("the other pod waited %s (%v), want the pause", waited, obs.waits)
	}
	// Another endpoint is not paused.
	c := budget.New(m, rdb, "flash", budget.Limits{}, nil)
	rdb.Set(context.Background(), budget.PauseKey("chat"), "1", time.Hour)
	start = time.Now()
	if _, err := c.Chat(context.Background(), req()); err != nil || time.Since(start) > 200*time.Millisecond {
		t.Fatalf("another endpoint waited %s, %v", time.Since(start), err)
	}
}

func TestWaitingIsBoundedByTheCallersContext(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	m := &model{}
	tests := []struct {
		name  string
		setup func(rdb *redis.Client)
		lim   budget.Limits
	}{
		{"a pause longer than the deadline", func(rdb *redis.Client) {
			rdb.Set(context.Background(), budget.PauseKey("chat"), "1", time.Hour)
		}, budget.Limits{}},
		{"every slot held", func(rdb *redis.Client) {
			rdb.Del(context.Background(), budget.PauseKey("chat"))
			rdb.ZAdd(context.Background(), budget.KeyPrefix+"chat:inflight", redis.Z{Score: float64(time.Now().Add(time.Hour).UnixMilli()), Member: "other"})
		}, budget.Limits{MaxInFlight: 1}},
		{"a request rate spent", func(rdb *redis.Client) {
			rdb.Del(context.Background(), budget.KeyPrefix+"chat:inflight")
			// Bursts of a tenth of a minute's: one call spends it, the next waits 6 s.
			_, _ = budget.New(&model{}, rdb, "chat", budget.Limits{RequestsPerMinute: 10}, nil).Chat(context.Background(), req())
		}, budget.Limits{RequestsPerMinute: 10}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.setup(rdb)
			before := m.calls.Load()
			ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
			defer cancel()
			start := time.Now()
			_, err := budget.New(m, rdb, "chat", tt.lim, nil).Chat(ctx, req())
			if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 2*time.Second || m.calls.Load() != before {
				t.Fatalf("err %v after %s, %d calls made", err, time.Since(start), m.calls.Load()-before)
			}
		})
	}
}

func TestASlotComesBackAfterAPanicAndAfterItsHolderDied(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	ctx := context.Background()
	panicky := &model{fail: func(int64) error { panic("model panicked") }}
	b := budget.New(panicky, rdb, "chat", budget.Limits{MaxInFlight: 1}, nil)
	func() {
		defer func() { _ = recover() }()
		_, _ = b.Chat(ctx, req())
	}()
	if n, _ := b.InFlight(ctx); n != 0 {
		t.Fatalf("a panic kept %d slot(s)", n)
	}
	// A worker that died holding the only slot (its lease was never
	// released) holds it up for its lease only.
	rdb.ZAdd(ctx, budget.KeyPrefix+"chat:inflight", redis.Z{Score: float64(time.Now().Add(300 * time.Millisecond).UnixMilli()), Member: "dead"})
	start := time.Now()
	if _, err := budget.New(&model{}, rdb, "chat", budget.Limits{MaxInFlight: 1}, nil).Chat(ctx, req()); err != nil {
		t.Fatal(err)
	}
	if w := time.Since(start); w < 200*time.Millisecond || w > 3*time.Second {
		t.Fatalf("waited %s for the dead holder's lease", w)
	}
}

func TestALongCallKeepsItsSlot(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	ctx := context.Background()
	slow := &model{delay: 700 * time.Millisecond}
	lim := budget.Limits{MaxInFlight: 1, LeaseTTL: 300 * time.Millisecond}
	go func() { _, _ = budget.New(slow, rdb, "chat", lim, nil).Chat(ctx, req()) }()
	time.Sleep(100 * time.Millisecond)
	other := &model{}
	cctx, cancel := context.WithTimeout(ctx, 450*time.Millisecond)
	defer cancel()
	// Past the lease TTL the slow call still holds its (renewed) slot.
	if _, err := budget.New(other, rdb, "chat", lim, nil).Chat(cctx, req()); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v: the slot of a running call was taken", err)
	}
}

func TestTokensPerMinuteChargeWhatACallUsed(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	obs := &observer{}
	// 2,400 tokens a minute, bursts of 600; each call is estimated at 100
	// (400 characters) and uses 20 more: five calls fit, the sixth waits.
	b := budget.New(&model{}, rdb, "chat", budget.Limits{TokensPerMinute: 2400}, obs)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	n := 0
	for ; n < 10; n++ {
		if _, err := b.Chat(ctx, req()); err != nil {
			break
		}
	}
	if n != 5 || obs.waits[budget.ReasonTokens] != 1 {
		t.Fatalf("%d calls within the token budget (waits %v), want 5", n, obs.waits)
	}
}
