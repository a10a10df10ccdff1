package periodic_test

import (
	"context"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/queue/periodic"
)

func TestAnIntervalChangeTakesEffectAtTheNextPass(t *testing.T) {
	const week = 7 * 24 * time.Hour
	tests := []struct {
		name     string
		old, new time.Duration
		// sinceLast is how long after the last run the new interval is
		// deployed.
		sinceLast time.Duration
		// quiet: no run may come before it (after the last run); fires: a
		// run must have come by then.
		quiet, fires time.Duration
	}{
		{"shortened: next run one new interval after the last", week, time.Hour, 10 * time.Minute, 59 * time.Minute, time.Hour},
		{"shortened below the time already waited: runs at the next pass", week, time.Hour, 3 * time.Hour, 0, 3*time.Hour + time.Second},
		{"lengthened: does not fire at the old due time", time.Hour, week, 10 * time.Minute, week - time.Minute, week},
		{"lengthened after the old due time passed unseen: not early either", time.Hour, 4 * time.Hour, 2 * time.Hour, 4*time.Hour - time.Minute, 4 * time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			f.entry.Interval = tt.old
			ctx := context.Background()
			first := f.scheduler(false)
			first.Tick(ctx)
			f.clk.Add(f.entry.InitialDelay)
			first.Tick(ctx)
			if n := f.tasks(); n != 1 {
				t.Fatalf("%d runs at the first due time, want 1", n)
			}
			f.completeAll()
			last := f.clk.Now()

			// The operator changes TASK_INTERVALS; a restarted worker's
			// scheduler makes its first pass.
			f.clk.Add(tt.sinceLast)
			f.entry.Interval = tt.new
			s := f.scheduler(false)
			s.Tick(ctx)
			st, _, err := periodic.ReadState(ctx, f.srv.Client(t), f.entry.Name)
			if err != nil {
				t.Fatal(err)
			}
			if st.Interval != tt.new {
				t.Errorf("stored interval %v, want %v", st.Interval, tt.new)
			}
			if max := f.clk.Now().Add(tt.new); st.Next.After(max) {
				t.Errorf("next occurrence %v after the change, more than one new interval (%v) away", st.Next.Sub(f.clk.Now()), tt.new)
			}
			// Walk the clock minute by minute (then by hours) and record
			// when the next run comes.
			var firedAt time.Duration = -1
			for d := tt.sinceLast; ; d += step(tt.fires) {
				d = min(d, tt.fires)
				f.clk.Add(d - f.clk.Now().Sub(last))
				s.Tick(ctx)
				if f.tasks() > 0 {
					firedAt = f.clk.Now().Sub(last)
					break
				}
				if d == tt.fires {
					break
				}
			}
			switch {
			case firedAt < 0:
				t.Errorf("no run within %v of the last one with the interval changed to %v", tt.fires, tt.new)
			case firedAt < tt.quiet:
				t.Errorf("ran %v after the last run, before %v (interval changed %v → %v)", firedAt, tt.quiet, tt.old, tt.new)
			}
		})
	}
}

func step(span time.Duration) time.Duration {
	if span > 24*time.Hour {
		return time.Hour
	}
	return time.Minute
}
