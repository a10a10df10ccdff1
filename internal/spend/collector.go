package spend

import (
	"context"
	"encoding/json"
	"time"
	"unicode"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/scrapecache"
)

// maxSeries bounds the lines a scrape exports: the ledger is in Redis,
// which is untrusted, and must not blow up the label cardinality.
const maxSeries = 1000

// Collector exports today's ledger, the budgets and the deferrals, read
// from Redis in one round trip at most once per cacheFor, however many
// scrapers ask, and in the background when a read is slow (scrapecache):
// a scrape never waits on Redis for long. It exports the spend of every task and model (counters that restart
// at each UTC midnight, when the day's ledger starts), each budget's limit,
// use and remainder, and which tasks are deferred.
type Collector struct {
	rdb     redis.UniversalClient
	budgets map[string]Limit
	known   map[string]bool
	now     func() time.Time

	cache *scrapecache.Cache[ledgerRead]

	tokens, usd, calls, unpriced, limit, used, remaining, deferred, up *prometheus.Desc
}

// NewCollector reads the ledger of l's clock and budgets from rdb; known
// are the task names it exports (others in Redis are not ours). cacheFor
// 0 is 10 s.
func NewCollector(rdb redis.UniversalClient, l *Ledger, known []string, cacheFor time.Duration) *Collector {
	if cacheFor <= 0 {
		cacheFor = 10 * time.Second
	}
	k := map[string]bool{Cluster: true, Unknown: true}
	for _, t := range known {
		k[t] = true
	}
	c := &Collector{
		rdb: rdb, budgets: l.o.Budgets, known: k, now: l.o.Now,
		tokens: prometheus.NewDesc("stargazer_llm_spend_tokens_total",
			"LLM tokens charged today (UTC; restarts at midnight) in the cluster's spend ledger, by task (the parent task of children and extraction units), model and kind (prompt, completion).",
			[]string{"task", "model", "kind"}, nil),
		usd: prometheus.NewDesc("stargazer_llm_spend_usd_total",
			"LLM cost in USD charged today (UTC; restarts at midnight), from LLM_PRICES, by task and model; unpriced models add nothing (see stargazer_llm_spend_unpriced_calls_total).",
			[]string{"task", "model"}, nil),
		calls: prometheus.NewDesc("stargazer_llm_spend_calls_total",
			"LLM calls charged today (UTC; restarts at midnight), by task and model.", []string{"task", "model"}, nil),
		unpriced: prometheus.NewDesc("stargazer_llm_spend_unpriced_calls_total",
			"LLM calls charged today of a model without a price in LLM_PRICES (tokens only), by task and model.", []string{"task", "model"}, nil),
		limit: prometheus.NewDesc("stargazer_llm_budget_limit",
			"Daily LLM budget by task (* the cluster) and unit (tokens, usd): LLM_BUDGETS, or the override of enqueuer budget set.", []string{"task", "unit"}, nil),
		used: prometheus.NewDesc("stargazer_llm_budget_used_total",
			"What counts against each budget, settled today (UTC; restarts at midnight), in the budget's unit.", []string{"task", "unit"}, nil),
		remaining: prometheus.NewDesc("stargazer_llm_budget_remaining",
			"What is left of each daily budget (limit minus settled and reserved), in its unit.", []string{"task", "unit"}, nil),
		deferred: prometheus.NewDesc("stargazer_llm_deferred",
			"1 while a task is deferred (its budget spent, or the kill switch off), by task and reason; 0 for a budgeted task that is not.", []string{"task", "reason"}, nil),
		up: prometheus.NewDesc("stargazer_llm_spend_scrape_ok", "1 if the LLM spend ledger could be read from Redis.", nil, nil),
	}
	c.cache = scrapecache.New(func() ledgerRead {
		ms, bad := c.read(c.now())
		return ledgerRead{metrics: ms, bad: bad}
	}, cacheFor, 0)
	return c
}

// ledgerRead is one read of the ledger, as metrics.
type ledgerRead struct {
	metrics []prometheus.Metric
	bad     bool
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.tokens, c.usd, c.calls, c.unpriced, c.limit, c.used, c.remaining, c.deferred, c.up} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	r, at := c.cache.Get()
	for _, m := range r.metrics {
		ch <- m
	}
	ok := 1.0
	if at.IsZero() || r.bad { // the first read still runs, or failed
		ok = 0
	}
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, ok)
}

// label is a model name fit to be a label value.
func label(s string) bool {
	if s == "" || len(s) > 200 {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

func (c *Collector) read(now time.Time) ([]prometheus.Metric, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pipe := c.rdb.Pipeline()
	dayCmd := pipe.HGetAll(ctx, DayKey(Day(now)))
	ovCmd := pipe.HGetAll(ctx, OverridesKey)
	defCmd := pipe.HGetAll(ctx, DeferredKey)
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, true
	}
	day := parseDay(Day(now), dayCmd.Val())
	var ms []prometheus.Metric
	for _, l := range day.Lines {
		if len(ms) >= maxSeries {
			break
		}
		if !c.known[l.Task] || !label(l.Model) {
			continue
		}
		ms = append(ms,
			prometheus.MustNewConstMetric(c.tokens, prometheus.CounterValue, float64(l.Prompt), l.Task, l.Model, "prompt"),
			prometheus.MustNewConstMetric(c.tokens, prometheus.CounterValue, float64(l.Completion), l.Task, l.Model, "completion"),
			prometheus.MustNewConstMetric(c.usd, prometheus.CounterValue, l.USD(), l.Task, l.Model),
			prometheus.MustNewConstMetric(c.calls, prometheus.CounterValue, float64(l.Calls), l.Task, l.Model),
			prometheus.MustNewConstMetric(c.unpriced, prometheus.CounterValue, float64(l.Unpriced), l.Task, l.Model))
	}
	overrides := map[string]Override{}
	for scope, v := range ovCmd.Val() {
		if v == "none" {
			overrides[scope] = Override{None: true}
		} else if lim, ok := parseLimit(v); ok {
			overrides[scope] = Override{Limit: lim}
		}
	}
	scopes := map[string]bool{}
	for s := range c.budgets {
		scopes[s] = true
	}
	for s := range overrides {
		if c.known[s] {
			scopes[s] = true
		}
	}
	budgeted := map[string]bool{}
	for s := range scopes {
		lim, ok := Effective(c.budgets, overrides, s)
		if !ok {
			continue
		}
		budgeted[s] = true
		t := day.Totals[s]
		amount := func(n int64) float64 {
			if lim.InUSD {
				return float64(n) / 1e9
			}
			return float64(n)
		}
		ms = append(ms,
			prometheus.MustNewConstMetric(c.limit, prometheus.GaugeValue, lim.Amount(), s, lim.Unit()),
			prometheus.MustNewConstMetric(c.used, prometheus.CounterValue, amount(t.Spent(lim)), s, lim.Unit()),
			prometheus.MustNewConstMetric(c.remaining, prometheus.GaugeValue, amount(t.Remaining(lim)), s, lim.Unit()))
	}
	deferred := map[string]string{}
	for task, raw := range defCmd.Val() {
		var d Deferral
		if !c.known[task] || json.Unmarshal([]byte(raw), &d) != nil || (d.Reason != ReasonBudget && d.Reason != ReasonKillSwitch) {
			continue
		}
		deferred[task] = d.Reason
		ms = append(ms, prometheus.MustNewConstMetric(c.deferred, prometheus.GaugeValue, 1, task, d.Reason))
	}
	for s := range budgeted {
		if _, ok := deferred[s]; !ok && s != Cluster {
			ms = append(ms, prometheus.MustNewConstMetric(c.deferred, prometheus.GaugeValue, 0, s, ReasonBudget))
		}
	}
	return ms, false
}
