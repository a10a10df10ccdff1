package app

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/config"
	"github.com/stargazer/stargazer-jobs/internal/spend"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// reservationMargin is how long a call's reservation outlives its timeout:
// past it, the reservation of a worker that died mid-call is released.
const reservationMargin = time.Minute

// SpendPrices turns LLM_PRICES into the ledger's prices.
func SpendPrices(ps config.Prices) map[string]spend.Price {
	out := make(map[string]spend.Price, len(ps))
	for m, p := range ps {
		out[m] = spend.Price{Prompt: p.Prompt, Completion: p.Completion}
	}
	return out
}

// SpendLimit turns one budget into the ledger's limit.
func SpendLimit(b config.Budget) spend.Limit {
	if b.InUSD {
		return spend.USD(b.USD)
	}
	return spend.Tokens(b.Tokens)
}

// SpendBudgets turns LLM_BUDGETS into the ledger's budgets.
func SpendBudgets(bs config.Budgets) map[string]spend.Limit {
	out := make(map[string]spend.Limit, len(bs))
	for t, b := range bs {
		out[t] = SpendLimit(b)
	}
	return out
}

// CheckBudgets refuses an LLM_BUDGETS entry that names no task of catalog,
// or a child, whose calls count against its parent's budget.
func CheckBudgets(bs config.Budgets, catalog []jobs.Spec) error {
	specs := map[string]jobs.Spec{}
	for _, s := range catalog {
		specs[s.Name] = s
	}
	names := make([]string, 0, len(bs))
	for t := range bs {
		names = append(names, t)
	}
	slices.Sort(names)
	for _, t := range names {
		if t == config.ClusterBudget {
			continue
		}
		s, ok := specs[t]
		entry := fmt.Sprintf("%s=%s", t, bs[t])
		switch {
		case !ok:
			return &config.Error{Setting: "LLM_BUDGETS", Reason: fmt.Sprintf("entry %q: no task %q in the catalog (enqueuer list)", entry, t)}
		case len(jobs.Parents(t)) > 0:
			return &config.Error{Setting: "LLM_BUDGETS", Reason: fmt.Sprintf("entry %q: %s's calls count against its parent's budget: budget %s instead",
				entry, t, strings.Join(jobs.Parents(t), " or "))}
		case !s.CallsLLM():
			return &config.Error{Setting: "LLM_BUDGETS", Reason: fmt.Sprintf("entry %q: %s makes no LLM call", entry, t)}
		}
	}
	return nil
}

// unpricedModels are the configured models LLM_PRICES has no price for.
func unpricedModels(cfg config.Config) []string {
	var out []string
	for _, m := range []string{cfg.LLMModel, cfg.KGExtractionModel, cfg.FlashModel, cfg.EmbeddingsModel} {
		if _, ok := cfg.LLMPrices[m]; !ok && m != "" && !slices.Contains(out, m) {
			out = append(out, m)
		}
	}
	return out
}

// newLedger is the cluster's LLM spend ledger for this configuration.
func (a *app) newLedger() *spend.Ledger {
	return spend.New(a.qdb, spend.Options{
		Prices: SpendPrices(a.cfg.LLMPrices), Budgets: SpendBudgets(a.cfg.LLMBudgets),
		SwitchKey: a.cfg.ChatLLMSwitchKey, Switch: a.rdb, SwitchOff: !a.cfg.ChatLLMEnabled, Now: a.now,
		Logger: a.log.With("component", "spend"),
	})
}

// warnUnpriced says, once at startup, which models are charged tokens only.
func (a *app) warnUnpriced() {
	if ms := unpricedModels(a.cfg); len(ms) > 0 {
		a.log.Warn("LLM models without a price in LLM_PRICES: their calls are charged tokens only and reported as unpriced, and a dollar budget does not hold them",
			"models", strings.Join(ms, ","))
	}
}
