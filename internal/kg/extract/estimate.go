package extract

import (
	"strings"
	"time"
)

// AnswerTokensPerMessage is the answer's share of one message, as the
// extraction benchmark measured it (docs/performance.md: 74.2 tokens of
// answer per message for short chat messages naming two topics).
const AnswerTokensPerMessage = 74

// EstimatePerMessage is the engine's own estimate of the tokens one
// message of avgChars characters costs, before the ledger has measured any:
// its share of a full batch's prompt (the instructions, its line) at a
// quarter token per character, and AnswerTokensPerMessage of answer. The
// backlog's cost forecast falls back on it.
func EstimatePerMessage(avgChars int) (prompt, completion float64) {
	avgChars = min(max(avgChars, 1), DefaultMaxFragmentRunes)
	e := &Engine{cfg: Config{MaxFragmentRunes: DefaultMaxFragmentRunes}}
	batch := make([]Fragment, DefaultBatchMessages)
	text := strings.Repeat("x", avgChars)
	for i := range batch {
		batch[i] = Fragment{Source: "discord:100000000000000000", Author: "someone", Text: text, Time: time.Unix(0, 0)}
	}
	chars := len(e.prompt(batch))
	return float64(chars) / 4 / float64(len(batch)), AnswerTokensPerMessage
}
