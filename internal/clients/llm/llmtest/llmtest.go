// Package llmtest holds the OpenAI chat/completions wire format for the
// fake LLM servers of tests (and the local devfake), so every fake answers
// exactly as the real protocol does.
package llmtest

import (
	"encoding/json"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
)

// Completion is the body of a 200 chat/completions answer carrying content
// as the assistant's message, with model and token usage as given.
func Completion(model, content string, u llm.Usage) []byte {
	b, err := json.Marshal(map[string]any{
		"id": "chatcmpl-1", "object": "chat.completion", "model": model,
		"choices": []any{map[string]any{"index": 0, "finish_reason": "stop",
			"message": map[string]any{"role": "assistant", "content": content}}},
		"usage": u,
	})
	if err != nil {
		panic(err) // plain strings and ints always marshal
	}
	return b
}
