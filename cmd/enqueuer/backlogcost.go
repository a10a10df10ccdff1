package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/config"
	"github.com/stargazer/stargazer-jobs/internal/spend"
)

// typicalMessageChars is the message length the engine's own estimate
// assumes when nothing was measured: a short chat message, as in the
// extraction benchmark.
const typicalMessageChars = 60

type backlogCost struct {
	Model            string   `json:"model"`
	TokensPerMessage float64  `json:"tokens_per_message"`
	Source           string   `json:"source"` // measured (last 7 days) or engine estimate
	MeasuredMessages int64    `json:"measured_messages"`
	Tokens           int64    `json:"tokens"`
	USD              *float64 `json:"usd"` // null: the model has no price in LLM_PRICES
}

// backlogCosts forecasts what extracting each entry's pending messages
// will cost with the extraction model, from the tokens per message the
// ledger measured over the last 7 days, else the engine's own estimate.
func backlogCosts(ctx context.Context, rdb redis.UniversalClient, cfg config.Config, out []backlogEntry, now time.Time) error {
	fallback := spend.EnginePerMessage(typicalMessageChars)
	for i := range out {
		f, err := spend.ForecastExtraction(ctx, rdb, pricesOf(cfg), now, out[i].Task, cfg.KGExtractionModel, out[i].Pending, fallback)
		if err != nil {
			return err
		}
		c := &backlogCost{Model: f.Model, TokensPerMessage: f.PerMessage.Tokens(), Source: f.PerMessage.Source,
			MeasuredMessages: f.PerMessage.Messages, Tokens: f.Tokens}
		if f.Priced {
			c.USD = &f.USD
		}
		out[i].Cost = c
	}
	return nil
}

func printBacklogCosts(w io.Writer, wide bool, out []backlogEntry) {
	var rows [][]string
	for _, e := range out {
		if e.Cost == nil {
			continue
		}
		usd := "unpriced (LLM_PRICES)"
		if e.Cost.USD != nil {
			usd = fmt.Sprintf("$%.4f", *e.Cost.USD)
		}
		src := e.Cost.Source
		if e.Cost.MeasuredMessages > 0 {
			src = fmt.Sprintf("%s over %d msgs", src, e.Cost.MeasuredMessages)
		}
		rows = append(rows, []string{e.Task, fmt.Sprint(e.Pending), fmt.Sprintf("%.1f", e.Cost.TokensPerMessage), src,
			fmt.Sprint(e.Cost.Tokens), usd})
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "Cost of extracting the backlog (model %s):\n", out[0].Cost.Model)
	table(w, wide, []string{"TASK", "PENDING", "TOKENS/MSG", "FROM", "TOKENS", "USD"}, rows)
}
