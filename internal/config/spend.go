package config

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// Price is a model's price in USD per million prompt (input) and
// completion (output) tokens, as providers list them.
type Price struct {
	Prompt, Completion float64
}

// Prices are LLM_PRICES: model -> price. A model without one is charged
// tokens only and reported as unpriced.
type Prices map[string]Price

// Budget is one daily LLM budget: tokens, or USD when InUSD.
type Budget struct {
	Tokens int64
	USD    float64
	InUSD  bool
}

// String writes b as LLM_BUDGETS takes it: "2M", "120000", "$0.50".
func (b Budget) String() string {
	if b.InUSD {
		return "$" + strconv.FormatFloat(b.USD, 'f', -1, 64)
	}
	switch {
	case b.Tokens >= 1_000_000 && b.Tokens%1_000_000 == 0:
		return strconv.FormatInt(b.Tokens/1_000_000, 10) + "M"
	case b.Tokens >= 1000 && b.Tokens%1000 == 0:
		return strconv.FormatInt(b.Tokens/1000, 10) + "k"
	}
	return strconv.FormatInt(b.Tokens, 10)
}

// Budgets are LLM_BUDGETS: catalog task (or "*", every task together) ->
// its budget per UTC day.
type Budgets map[string]Budget

// ClusterBudget is the budget name of the whole cluster.
const ClusterBudget = "*"

// ParsePrices reads LLM_PRICES: comma-separated MODEL=PROMPT/COMPLETION,
// USD per million tokens ("google/gemini-2.5-flash=0.30/2.50"). An error
// names the entry.
func ParsePrices(v string) (Prices, error) {
	out := Prices{}
	for _, item := range strings.Split(v, ",") {
		if item = strings.TrimSpace(item); item == "" {
			continue
		}
		model, val, ok := strings.Cut(item, "=")
		model, val = strings.TrimSpace(model), strings.TrimSpace(val)
		in, outp, ok2 := strings.Cut(val, "/")
		if !ok || !ok2 || model == "" {
			return nil, fmt.Errorf("entry %q is not MODEL=PROMPT/COMPLETION (USD per million tokens, e.g. google/gemini-2.5-flash=0.30/2.50)", item)
		}
		p, err1 := usdAmount(in)
		c, err2 := usdAmount(outp)
		if err := errors.Join(err1, err2); err != nil {
			return nil, fmt.Errorf("entry %q: %v", item, err)
		}
		if _, dup := out[model]; dup {
			return nil, fmt.Errorf("entry %q: model %s is priced twice", item, model)
		}
		out[model] = Price{Prompt: p, Completion: c}
	}
	return out, nil
}

// usdAmount is a non-negative, finite number of dollars.
func usdAmount(s string) (float64, error) {
	x, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || x < 0 || math.IsInf(x, 0) || math.IsNaN(x) {
		return 0, fmt.Errorf("%q is not a non-negative number", strings.TrimSpace(s))
	}
	return x, nil
}

// ParseBudgets reads LLM_BUDGETS: comma-separated TASK=AMOUNT, where TASK
// is a catalog task or * (the whole cluster) and AMOUNT is tokens ("2M",
// "500k", "120000") or dollars ("$0.50"), per UTC day. An error names the
// entry.
func ParseBudgets(v string) (Budgets, error) {
	out := Budgets{}
	for _, item := range strings.Split(v, ",") {
		if item = strings.TrimSpace(item); item == "" {
			continue
		}
		task, val, ok := strings.Cut(item, "=")
		task = strings.TrimSpace(task)
		if !ok || task == "" {
			return nil, fmt.Errorf("entry %q is not TASK=AMOUNT (tokens such as 2M, 500k, 120000, or dollars such as $0.50)", item)
		}
		b, err := ParseBudget(val)
		if err != nil {
			return nil, fmt.Errorf("entry %q: %v", item, err)
		}
		if _, dup := out[task]; dup {
			return nil, fmt.Errorf("entry %q: %s has two budgets", item, task)
		}
		out[task] = b
	}
	return out, nil
}

// ParseBudget reads one amount: tokens ("2M", "1.5M", "500k", "120000")
// or dollars ("$0.50").
func ParseBudget(v string) (Budget, error) {
	v = strings.TrimSpace(v)
	if rest, ok := strings.CutPrefix(v, "$"); ok {
		x, err := usdAmount(rest)
		if err != nil {
			return Budget{}, fmt.Errorf("%q is not a dollar amount such as $0.50", v)
		}
		return Budget{USD: x, InUSD: true}, nil
	}
	mult := 1.0
	num := v
	switch {
	case strings.HasSuffix(v, "M") || strings.HasSuffix(v, "m"):
		mult, num = 1e6, v[:len(v)-1]
	case strings.HasSuffix(v, "k") || strings.HasSuffix(v, "K"):
		mult, num = 1e3, v[:len(v)-1]
	}
	x, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
	n := x * mult
	if err != nil || num == "" || x < 0 || math.IsInf(n, 0) || math.IsNaN(n) || n > 1e15 || n != math.Trunc(n) {
		return Budget{}, fmt.Errorf("%q is not a number of tokens (2M, 500k, 120000) or a dollar amount ($0.50)", v)
	}
	return Budget{Tokens: int64(n)}, nil
}

// String writes ps as LLM_PRICES takes it, sorted by model.
func (ps Prices) String() string {
	models := make([]string, 0, len(ps))
	for m := range ps {
		models = append(models, m)
	}
	sort.Strings(models)
	parts := make([]string, len(models))
	for i, m := range models {
		parts[i] = fmt.Sprintf("%s=%s/%s", m, strconv.FormatFloat(ps[m].Prompt, 'f', -1, 64), strconv.FormatFloat(ps[m].Completion, 'f', -1, 64))
	}
	return strings.Join(parts, ",")
}
