package spend

import (
	"context"
	"math"
	"time"

	"github.com/redis/go-redis/v9"
)

// ForecastDays is how many days of the ledger a forecast measures tokens
// per message over.
const ForecastDays = 7

// Forecast sources.
const (
	SourceMeasured = "measured"
	SourceEngine   = "engine estimate"
)

// PerMessage is what extracting one message costs, in tokens.
type PerMessage struct {
	Prompt, Completion float64
	// Source says where the figure comes from (SourceMeasured, SourceEngine).
	Source string
	// Messages is how many messages the measure covered (0: an estimate).
	Messages int64
}

// Tokens is the tokens of one message.
func (p PerMessage) Tokens() float64 { return p.Prompt + p.Completion }

// Forecast is the cost of extracting some messages.
type Forecast struct {
	Task, Model string
	Messages    int64
	PerMessage  PerMessage
	Tokens      int64
	// USD is the cost at the model's price; Priced is false when it has
	// none (USD is then 0 and means nothing).
	USD    float64
	Priced bool
}

// MeasuredPerMessage is the tokens per message of task's extraction calls
// over the ForecastDays UTC days ending with now's: the tokens the ledger
// charged to calls that said how many messages they covered, divided by
// those messages. Messages is 0 when nothing was measured.
func MeasuredPerMessage(ctx context.Context, rdb redis.UniversalClient, now time.Time, task string) (PerMessage, error) {
	days, err := ReadDays(ctx, rdb, now, ForecastDays)
	if err != nil {
		return PerMessage{}, err
	}
	var prompt, completion, items int64
	for _, d := range days {
		for _, l := range d.Lines {
			if l.Task == task && l.Items > 0 {
				prompt += l.Prompt
				completion += l.Completion
				items += l.Items
			}
		}
	}
	if items == 0 {
		return PerMessage{Source: SourceMeasured}, nil
	}
	return PerMessage{Prompt: float64(prompt) / float64(items), Completion: float64(completion) / float64(items),
		Source: SourceMeasured, Messages: items}, nil
}

// Cost is the cost of messages at per, priced with price (priced
// false: tokens only).
func Cost(task, model string, messages int64, per PerMessage, price Price, priced bool) Forecast {
	f := Forecast{Task: task, Model: model, Messages: messages, PerMessage: per, Priced: priced}
	prompt := int64(math.Round(per.Prompt * float64(messages)))
	completion := int64(math.Round(per.Completion * float64(messages)))
	f.Tokens = prompt + completion
	if priced {
		f.USD = float64(price.Cost(prompt, completion)) / 1e9
	}
	return f
}

// ForecastExtraction estimates what extracting messages of task's backlog
// with model will cost: from the tokens per message the ledger measured
// over the last ForecastDays days, or, with nothing measured, from
// fallback (the engine's own estimate, extract.EstimatePerMessage). It is
// what `enqueuer backlog --cost` prints, and what a cursor move's dry run
// can quote.
func ForecastExtraction(ctx context.Context, rdb redis.UniversalClient, prices map[string]Price, now time.Time,
	task, model string, messages int64, fallback PerMessage) (Forecast, error) {
	per, err := MeasuredPerMessage(ctx, rdb, now, task)
	if err != nil {
		return Forecast{}, err
	}
	if per.Messages == 0 {
		per = fallback
		per.Source = SourceEngine
	}
	price, priced := prices[model]
	return Cost(task, model, messages, per, price, priced), nil
}

// The extraction engine's own estimate of a message's cost, before the
// ledger measured any: a full batch's prompt is the instructions and one
// line per message, enginePromptOverhead characters a message (its share
// of the instructions, its line's number, time, source and author) plus
// its text, at a quarter token a character; the answer is
// EngineAnswerTokensPerMessage, as the extraction benchmark measured it
// (docs/performance.md: 74.2 tokens of answer a message). A test in the
// engine's package holds the overhead to its prompt.
const (
	enginePromptOverhead         = 83.13
	EngineAnswerTokensPerMessage = 74
	engineMaxChars               = 2000 // the engine clips a message at 2,000 characters
)

// EnginePerMessage is the engine's estimate for messages of avgChars
// characters.
func EnginePerMessage(avgChars int) PerMessage {
	c := float64(min(max(avgChars, 1), engineMaxChars))
	return PerMessage{Prompt: (c + enginePromptOverhead) / 4, Completion: EngineAnswerTokensPerMessage, Source: SourceEngine}
}
