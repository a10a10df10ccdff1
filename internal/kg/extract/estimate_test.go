package extract

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/spend"
)

// The spend ledger's fallback estimate of a message's tokens (which the
// enqueuer, kept free of the engine, computes from constants) is the
// engine's: a full batch's prompt, built here, shared out per message.
func TestTheLedgersEngineEstimateIsThePromptsOwn(t *testing.T) {
	e := &Engine{cfg: Config{MaxFragmentRunes: DefaultMaxFragmentRunes}}
	for _, chars := range []int{1, 60, 200, 1000} {
		batch := make([]Fragment, DefaultBatchMessages)
		for i := range batch {
			batch[i] = Fragment{Source: "discord:100000000000000000", Author: "someone", Text: strings.Repeat("x", chars), Time: time.Unix(0, 0)}
		}
		want := float64(len(e.prompt(batch))) / 4 / float64(len(batch))
		got := spend.EnginePerMessage(chars)
		if math.Abs(got.Prompt-want) > 0.5 || got.Completion != spend.EngineAnswerTokensPerMessage {
			t.Errorf("%d characters: %+v, the engine's prompt makes %.1f prompt tokens a message", chars, got, want)
		}
	}
}
