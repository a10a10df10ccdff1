package spend_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/clients/llm/killswitch"
	"github.com/stargazer/stargazer-jobs/internal/clients/llm/meter"
	"github.com/stargazer/stargazer-jobs/internal/spend"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

// fakeChat answers every call with usage u (after hold, if set).
type fakeChat struct {
	u       llm.Usage
	content string
	err     error
	calls   atomic.Int64
	hold    chan struct{}
}

func (f *fakeChat) Chat(ctx context.Context, r llm.Request) (*llm.Response, error) {
	f.calls.Add(1)
	if f.hold != nil {
		select {
		case <-f.hold:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if f.err != nil {
		return nil, f.err
	}
	return &llm.Response{Content: f.content, Model: r.Model, Usage: f.u}, nil
}

// clock is a controllable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

const model = "google/gemini-2.5-flash"

func TestCallsAreChargedToTheirTaskModelAndPurposeWithTheirPrice(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	ctx := context.Background()
	clk := &clock{t: time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)}
	l := spend.New(rdb, spend.Options{Prices: map[string]spend.Price{model: {Prompt: 0.30, Completion: 2.50}}, Now: clk.Now})
	fake := &fakeChat{u: llm.Usage{PromptTokens: 1000, CompletionTokens: 200}, content: "ok"}
	m := meter.Chat(l, fake, time.Minute)
	tctx := spend.WithTask(ctx, "channel_summarization")
	for range 3 {
		if _, err := m.Chat(tctx, llm.Request{Model: model, Purpose: "summary", Messages: []llm.Message{{Role: "user", Content: "hello"}}}); err != nil {
			t.Fatal(err)
		}
	}
	// An unpriced model is charged tokens only; a reply without usage is
	// charged from the estimate.
	fake.u = llm.Usage{}
	fake.content = strings.Repeat("y", 400)
	if _, err := m.Chat(tctx, llm.Request{Model: "other/model", Messages: []llm.Message{{Role: "user", Content: strings.Repeat("x", 800)}}}); err != nil {
		t.Fatal(err)
	}
	l.Wait()
	days, err := spend.ReadDays(ctx, rdb, clk.Now(), 1)
	if err != nil {
		t.Fatal(err)
	}
	d := days[0]
	if d.Day != "2026-05-01" || len(d.Lines) != 2 {
		t.Fatalf("ledger of %s: %+v", d.Day, d.Lines)
	}
	got := d.Lines[0]
	if got.Model != model || got.Purpose != "summary" || got.Calls != 3 || got.Prompt != 3000 || got.Completion != 600 {
		t.Errorf("priced line %+v", got)
	}
	// 3 × (1000 × 0.30 + 200 × 2.50) / 1e6 USD = $0.0024
	if want := int64(2_400_000); got.USDNano != want {
		t.Errorf("cost %d nano-USD, want %d", got.USDNano, want)
	}
	un := d.Lines[1]
	if un.Model != "other/model" || un.Purpose != "chat" || un.Unpriced != 1 || un.Estimated != 1 || un.Prompt != 200 || un.Completion != 100 || un.USDNano != 0 {
		t.Errorf("unpriced, estimated line %+v", un)
	}
	tot := d.Totals["channel_summarization"]
	if tot.SpentTokens != 3900 || tot.HeldTokens != 0 || d.Totals[spend.Cluster].SpentTokens != 3900 {
		t.Errorf("totals %+v, cluster %+v", tot, d.Totals[spend.Cluster])
	}
	if ttl := rdb.TTL(ctx, spend.DayKey("2026-05-01")).Val(); ttl < 89*24*time.Hour || ttl > 90*24*time.Hour {
		t.Errorf("ledger TTL %v, want 90 days", ttl)
	}
}

func TestACallThatWouldCrossItsBudgetDoesNotStart(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	ctx := context.Background()
	clk := &clock{t: time.Date(2026, 5, 1, 23, 0, 0, 0, time.UTC)}
	l := spend.New(rdb, spend.Options{Budgets: map[string]spend.Limit{"channel_summarization": spend.Tokens(3000)}, Now: clk.Now})
	fake := &fakeChat{u: llm.Usage{PromptTokens: 800, CompletionTokens: 200}, content: "ok"}
	m := meter.Chat(l, fake, time.Minute)
	tctx := spend.WithTask(ctx, "channel_summarization")
	req := llm.Request{Model: model, Messages: []llm.Message{{Role: "user", Content: strings.Repeat("x", 400)}}} // 100 tokens
	var refusal error
	for i := range 5 {
		_, err := m.Chat(tctx, req)
		if err != nil {
			refusal = err
			if i != 3 {
				t.Fatalf("call %d refused, want the 4th: %v", i+1, err)
			}
			break
		}
	}
	if !errors.Is(refusal, llm.ErrRefused) {
		t.Fatalf("err = %v, want a refusal", refusal)
	}
	r, ok := spend.AsRefusal(refusal)
	if !ok || r.Reason != spend.ReasonBudget || r.Scope != "channel_summarization" || r.Used != 3000 ||
		!r.Until.Equal(time.Date(2026, 5, 2, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("refusal %+v", r)
	}
	if n := fake.calls.Load(); n != 3 {
		t.Fatalf("%d calls reached the model, want 3", n)
	}
	// Another task is not held by this task's budget; the next day starts
	// afresh.
	if _, err := m.Chat(spend.WithTask(ctx, "anamnesis_digest"), req); err != nil {
		t.Fatalf("another task: %v", err)
	}
	clk.Add(time.Hour)
	if _, err := m.Chat(tctx, req); err != nil {
		t.Fatalf("next day: %v", err)
	}
}

func TestTheClusterBudgetHoldsEveryTaskTogether(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	ctx := context.Background()
	l := spend.New(rdb, spend.Options{
		Prices:  map[string]spend.Price{model: {Prompt: 1, Completion: 1}}, // $1 per million
		Budgets: map[string]spend.Limit{spend.Cluster: spend.USD(0.002)},   // 2,000 tokens' worth
	})
	fake := &fakeChat{u: llm.Usage{PromptTokens: 500, CompletionTokens: 500}, content: "ok"}
	m := meter.Chat(l, fake, time.Minute)
	req := llm.Request{Model: model, Messages: []llm.Message{{Role: "user", Content: "hi"}}}
	if _, err := m.Chat(spend.WithTask(ctx, "a"), req); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Chat(spend.WithTask(ctx, "b"), req); err != nil {
		t.Fatal(err)
	}
	l.Wait() // three runs: b's call is in flight until its settlement lands
	_, err := m.Chat(spend.WithTask(ctx, "c"), req)
	r, ok := spend.AsRefusal(err)
	if !ok || r.Scope != spend.Cluster || !r.Limit.InUSD {
		t.Fatalf("third task's call: %v (%+v), want the cluster's budget refusing it", err, r)
	}
}

// The kill switch is the bot's key: with QUEUE_REDIS_URL it lives on
// another Redis than the ledger, and holds calls the same.
func TestTheKillSwitchIsABudgetOfZero(t *testing.T) {
	for _, layout := range []string{"one-redis", "queue-redis"} {
		t.Run(layout, func(t *testing.T) {
			rdb := redistest.Start(t).Client(t)
			bot := rdb
			o := spend.Options{SwitchKey: killswitch.DefaultKey}
			if layout == "queue-redis" {
				bot = redistest.Start(t).Client(t)
				o.Switch = bot
			}
			ctx := context.Background()
			l := spend.New(rdb, o)
			fake := &fakeChat{u: llm.Usage{PromptTokens: 1, CompletionTokens: 1}, content: "ok"}
			m := meter.Chat(l, fake, time.Minute)
			req := llm.Request{Model: model, Messages: []llm.Message{{Role: "user", Content: "hi"}}}
			bot.Set(ctx, killswitch.DefaultKey, " OFF ", 0)
			_, err := m.Chat(spend.WithTask(ctx, "limbic_dedup_task"), req)
			r, ok := spend.AsRefusal(err)
			if !ok || r.Reason != spend.ReasonKillSwitch || r.Switch != " OFF " || fake.calls.Load() != 0 {
				t.Fatalf("switch off: %v (%+v), %d calls", err, r, fake.calls.Load())
			}
			// Embeddings are not chat: the switch does not hold them.
			if _, _, err := meter.Embedder(l, embedFunc(func() {}), time.Minute).Embed(ctx, "emb", []string{"x"}); err != nil {
				t.Fatalf("embeddings with the switch off: %v", err)
			}
			bot.Set(ctx, killswitch.DefaultKey, "on", 0)
			if _, err := m.Chat(ctx, req); err != nil {
				t.Fatalf("switch on: %v", err)
			}
			o.SwitchOff = true
			off := meter.Chat(spend.New(rdb, o), fake, time.Minute)
			if _, err := off.Chat(ctx, req); !errors.Is(err, llm.ErrRefused) {
				t.Fatalf("switched off by the startup setting: %v", err)
			}
			if layout == "queue-redis" {
				if n, _ := rdb.Exists(ctx, killswitch.DefaultKey).Result(); n != 0 {
					t.Fatal("the switch key is on the ledger's Redis")
				}
				if keys, _ := bot.Keys(ctx, "sgjobs:*").Result(); len(keys) != 0 {
					t.Fatalf("ledger keys on the bot's Redis: %v", keys)
				}
			}
		})
	}
}

type embedFunc func()

func (f embedFunc) Embed(_ context.Context, _ string, in []string) ([][]float32, llm.Usage, error) {
	f()
	out := make([][]float32, len(in))
	for i := range out {
		out[i] = []float32{1}
	}
	return out, llm.Usage{PromptTokens: 3 * len(in), TotalTokens: 3 * len(in)}, nil
}

// In-flight calls are what a budget can be overrun by: each call reserves
// its estimate, so concurrent calls cannot all pass the check on the same
// spend, and the overrun is what the calls in flight used beyond their
// estimates.
func TestOverrunIsBoundedByTheCallsInFlight(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	ctx := spend.WithTask(context.Background(), "limbic_anchoring_worker")
	const budget, perCall = 20_000, 1_000
	l := spend.New(rdb, spend.Options{Budgets: map[string]spend.Limit{"limbic_anchoring_worker": spend.Tokens(budget)}})
	fake := &fakeChat{u: llm.Usage{PromptTokens: 900, CompletionTokens: 100}, content: "ok", hold: make(chan struct{})}
	m := meter.Chat(l, fake, time.Minute)
	req := llm.Request{Model: model, Messages: []llm.Message{{Role: "user", Content: strings.Repeat("x", 400)}}} // estimate: 100
	const workers = 40
	var wg sync.WaitGroup
	var refused atomic.Int64
	for range workers {
		wg.Go(func() {
			for {
				if _, err := m.Chat(ctx, req); err != nil {
					refused.Add(1)
					return
				}
			}
		})
	}
	for fake.calls.Load() < workers && refused.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	close(fake.hold)
	wg.Wait()
	l.Wait()
	d, _ := spend.ReadDays(context.Background(), rdb, time.Now(), 1)
	spent := d[0].Totals["limbic_anchoring_worker"].SpentTokens
	inFlight := int64(workers)
	t.Logf("spent %d tokens of a %d budget with up to %d calls in flight (bound %d)", spent, budget, workers, budget+inFlight*perCall)
	if spent > budget+inFlight*perCall {
		t.Fatalf("spent %d, above the bound %d", spent, budget+inFlight*perCall)
	}
	if spent < budget {
		t.Fatalf("spent %d: the budget was not used up", spent)
	}
	if h := d[0].Totals["limbic_anchoring_worker"].HeldTokens; h != 0 {
		t.Fatalf("%d tokens still reserved after every call settled", h)
	}
}

// A reservation or a settlement that runs twice (a client that retried a
// script whose answer it lost) reserves and charges once: the call ID
// reserved before the request makes the charge idempotent.
func TestAReplayedReservationOrSettlementChargesOnce(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	ctx := context.Background()
	l := spend.New(rdb, spend.Options{})
	r, err := l.Reserve(ctx, spend.Call{Task: "t", Model: model, Tokens: 100}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := spend.ReadDays(ctx, rdb, time.Now(), 1)
	if h := d[0].Totals["t"].HeldTokens; h != 100 {
		t.Fatalf("held %d", h)
	}
	for i, want := range []bool{true, false, false} {
		charged, err := l.Settle(ctx, r, spend.Charge{Purpose: "chat", Prompt: 700, Completion: 300, Answered: true})
		if err != nil || charged != want {
			t.Fatalf("settlement %d: charged %v (%v), want %v", i+1, charged, err, want)
		}
	}
	d, _ = spend.ReadDays(ctx, rdb, time.Now(), 1)
	if tot := d[0].Totals["t"]; tot.SpentTokens != 1000 || tot.HeldTokens != 0 || d[0].Lines[0].Calls != 1 {
		t.Fatalf("after three settlements: %+v, %+v", tot, d[0].Lines)
	}
	// A reservation replayed while it is held reserves nothing more.
	r2, _ := l.Reserve(ctx, spend.Call{Task: "t", Model: model, Tokens: 100}, time.Minute)
	if err := l.Replay(ctx, r2); err != nil {
		t.Fatal(err)
	}
	d, _ = spend.ReadDays(ctx, rdb, time.Now(), 1)
	if h := d[0].Totals["t"].HeldTokens; h != 100 {
		t.Fatalf("held %d after a replayed reservation, want 100", h)
	}
}

// The reservation of a worker that died mid-call is released at its
// lease's end by the next reservation, counted as orphaned and not
// charged: its usage was never reported. A settlement arriving after that
// charges nothing either.
func TestAnOrphanedReservationIsReleasedAtItsLeaseEnd(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	ctx := context.Background()
	l := spend.New(rdb, spend.Options{Budgets: map[string]spend.Limit{"t": spend.Tokens(150)}})
	orphan, err := l.Reserve(ctx, spend.Call{Task: "t", Model: model, Tokens: 100}, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Reserve(ctx, spend.Call{Task: "t", Model: model, Tokens: 100}, time.Minute); !errors.As(err, new(*spend.Refusal)) {
		t.Fatalf("while the orphan holds 100 of 150: %v, want a refusal", err)
	}
	time.Sleep(100 * time.Millisecond)
	if _, err := l.Reserve(ctx, spend.Call{Task: "t", Model: model, Tokens: 100}, time.Minute); err != nil {
		t.Fatalf("after the orphan's lease: %v", err)
	}
	d, _ := spend.ReadDays(ctx, rdb, time.Now(), 1)
	if tot := d[0].Totals["t"]; tot.Orphaned != 1 || tot.HeldTokens != 100 || tot.SpentTokens != 0 {
		t.Fatalf("totals %+v", tot)
	}
	if charged, err := l.Settle(ctx, orphan, spend.Charge{Purpose: "chat", Prompt: 500, Completion: 500, Answered: true}); err != nil || charged {
		t.Fatalf("late settlement charged %v (%v)", charged, err)
	}
}

// A kill-switch deferral holds while the switch is off and lifts when it
// is back on, whichever Redis holds the switch.
func TestAKillSwitchDeferralFollowsTheSwitchOnEitherRedis(t *testing.T) {
	for _, layout := range []string{"one-redis", "queue-redis"} {
		t.Run(layout, func(t *testing.T) {
			rdb := redistest.Start(t).Client(t)
			bot := rdb
			o := spend.Options{SwitchKey: killswitch.DefaultKey}
			if layout == "queue-redis" {
				bot = redistest.Start(t).Client(t)
				o.Switch = bot
			}
			ctx := context.Background()
			l := spend.New(rdb, o)
			const task = "channel_heartbeat_channel"
			bot.Set(ctx, killswitch.DefaultKey, "off", 0)
			if _, err := l.Defer(ctx, spend.Deferral{Task: task, Reason: spend.ReasonKillSwitch}, spend.Parked{}); err != nil {
				t.Fatal(err)
			}
			if _, held, err := l.Held(ctx, task); err != nil || !held {
				t.Fatalf("switch off: held %v, %v; want held", held, err)
			}
			bot.Set(ctx, killswitch.DefaultKey, "on", 0)
			if _, held, err := l.Held(ctx, task); err != nil || held {
				t.Fatalf("switch on: held %v, %v; want lifted", held, err)
			}
		})
	}
}
