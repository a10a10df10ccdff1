package spend

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Line is what one task spent on one model for one purpose in a day.
type Line struct {
	Task, Purpose, Model string
	Calls                int64
	Prompt, Completion   int64
	USDNano              int64
	// Estimated calls reported no usage; Unpriced calls had no price.
	Estimated, Unpriced int64
	// Items are the messages the calls covered (extraction).
	Items int64
}

// Tokens is the line's prompt and completion tokens.
func (l Line) Tokens() int64 { return l.Prompt + l.Completion }

// USD is the line's cost in dollars.
func (l Line) USD() float64 { return float64(l.USDNano) / 1e9 }

// Totals are a scope's (a task's, or Cluster's) totals of a day.
type Totals struct {
	SpentTokens, SpentUSDNano int64
	HeldTokens, HeldUSDNano   int64
	Orphaned                  int64
}

// Used is what counts against a budget in l's unit: spent and reserved.
func (t Totals) Used(l Limit) int64 {
	if l.InUSD {
		return t.SpentUSDNano + t.HeldUSDNano
	}
	return t.SpentTokens + t.HeldTokens
}

// Spent is what was settled, in l's unit.
func (t Totals) Spent(l Limit) int64 {
	if l.InUSD {
		return t.SpentUSDNano
	}
	return t.SpentTokens
}

// Remaining is what is left of l, in its unit (never below zero).
func (t Totals) Remaining(l Limit) int64 {
	if l.InUSD {
		return max(0, l.USDNano-t.Used(l))
	}
	return max(0, l.Tokens-t.Used(l))
}

// DayLedger is one UTC day of the ledger.
type DayLedger struct {
	Day    string
	Lines  []Line
	Totals map[string]Totals
}

// ReadDays reads the ledgers of the n UTC days ending with now's, newest
// first, in one round trip. Fields that are not the ledger's are skipped:
// the hash is in Redis, which is untrusted.
func ReadDays(ctx context.Context, rdb redis.UniversalClient, now time.Time, n int) ([]DayLedger, error) {
	n = max(n, 1)
	pipe := rdb.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, n)
	days := make([]string, n)
	for i := range n {
		days[i] = Day(now.AddDate(0, 0, -i))
		cmds[i] = pipe.HGetAll(ctx, DayKey(days[i]))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("llm spend: reading the ledger: %w", err)
	}
	out := make([]DayLedger, n)
	for i := range n {
		out[i] = parseDay(days[i], cmds[i].Val())
	}
	return out, nil
}

func parseDay(day string, h map[string]string) DayLedger {
	d := DayLedger{Day: day, Totals: map[string]Totals{}}
	lines := map[[3]string]*Line{}
	for f, v := range h {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			continue
		}
		p := splitField(f)
		switch {
		case len(p) == 2:
			t := d.Totals[p[1]]
			switch p[0] {
			case "spent_tokens":
				t.SpentTokens = n
			case "spent_usd_nano":
				t.SpentUSDNano = n
			case "held_tokens":
				t.HeldTokens = n
			case "held_usd_nano":
				t.HeldUSDNano = n
			case "orphaned":
				t.Orphaned = n
			default:
				continue
			}
			d.Totals[p[1]] = t
		case len(p) == 4:
			k := [3]string{p[1], p[2], p[3]}
			l := lines[k]
			if l == nil {
				l = &Line{Task: p[1], Purpose: p[2], Model: p[3]}
				lines[k] = l
			}
			switch p[0] {
			case "calls":
				l.Calls = n
			case "prompt":
				l.Prompt = n
			case "completion":
				l.Completion = n
			case "usd_nano":
				l.USDNano = n
			case "estimated":
				l.Estimated = n
			case "unpriced":
				l.Unpriced = n
			case "items":
				l.Items = n
			}
		}
	}
	for _, l := range lines {
		d.Lines = append(d.Lines, *l)
	}
	sort.Slice(d.Lines, func(i, j int) bool {
		a, b := d.Lines[i], d.Lines[j]
		if a.Task != b.Task {
			return a.Task < b.Task
		}
		if a.Model != b.Model {
			return a.Model < b.Model
		}
		return a.Purpose < b.Purpose
	})
	return d
}
