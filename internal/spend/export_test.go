package spend

import (
	"context"
	"time"
)

// Reserve and Settle are the two scripts; Replay runs a reservation's
// script again, as a client retry would.
func (l *Ledger) Replay(ctx context.Context, r *Reservation) error {
	return l.runReserve(ctx, r, time.Minute, l.o.Now())
}
