package spend

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
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
	var lines []Line
	for f, v := range h {
		n, ok := ints(v)
		p := splitField(f)
		switch {
		case !ok:
			continue
		case len(p) == 2 && p[0] == "total" && len(n) == 5:
			d.Totals[p[1]] = Totals{SpentTokens: n[0], SpentUSDNano: n[1], HeldTokens: n[2], HeldUSDNano: n[3], Orphaned: n[4]}
		case len(p) == 4 && p[0] == "line" && len(n) == 7:
			lines = append(lines, Line{Task: p[1], Purpose: p[2], Model: p[3], Calls: n[0], Prompt: n[1], Completion: n[2],
				USDNano: n[3], Estimated: n[4], Unpriced: n[5], Items: n[6]})
		}
	}
	d.Lines = lines
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

// ints reads a packed ledger value: integers separated by spaces.
func ints(v string) ([]int64, bool) {
	f := strings.Fields(v)
	out := make([]int64, len(f))
	for i, x := range f {
		n, err := strconv.ParseInt(x, 10, 64)
		if err != nil {
			return nil, false
		}
		out[i] = n
	}
	return out, true
}
