// Package llmtest holds the OpenAI chat/completions wire format for the
// fake LLM servers of tests (and the local devfake), so every fake answers
// exactly as the real protocol does, and the fakes' embedding of a text.
package llmtest

import (
	"crypto/sha256"
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

// Vector is a fake embedding of text: 8 numbers from its hash, so the same
// text always embeds the same and different texts (almost surely) differ.
func Vector(text string) []float32 {
	h := sha256.Sum256([]byte(text))
	v := make([]float32, 8)
	for i := range v {
		v[i] = float32(h[i])/255 + 0.001
	}
	return v
}

// ChatRequest is what the fakes read of a chat/completions request.
type ChatRequest struct {
	Model          string              `json:"model"`
	Messages       []llm.Message       `json:"messages"`
	Temperature    *float64            `json:"temperature"`
	MaxTokens      int                 `json:"max_tokens"`
	ResponseFormat *llm.ResponseFormat `json:"response_format"`
}

// Prompt is the last message's content ("" if there is none): what the
// fakes derive their answer from.
func (r ChatRequest) Prompt() string {
	if len(r.Messages) == 0 {
		return ""
	}
	return r.Messages[len(r.Messages)-1].Content
}

// EmbeddingsRequest is what the fakes read of an embeddings request.
type EmbeddingsRequest struct {
	Model string   `json:"model"`
	Input []string `json:"input"`
}
