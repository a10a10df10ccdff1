package spend

import (
	"context"
	"time"
)

// Reserve and Settle expose the two scripts to the tests, which replay
// them as a client retry would.
func (l *Ledger) Reserve(ctx context.Context, task, model string, tokens int64, lease time.Duration) (any, error) {
	return l.reserve(ctx, task, model, reserved{Tokens: tokens}, false, lease)
}

func (l *Ledger) Settle(ctx context.Context, r any, prompt, completion int64) (bool, error) {
	return l.settle(ctx, r.(*reservation), Charge{Purpose: "chat", Prompt: prompt, Completion: completion, Answered: true})
}

func (l *Ledger) Replay(ctx context.Context, r any) error {
	return l.runReserve(ctx, r.(*reservation), false, time.Minute, l.o.Now())
}
