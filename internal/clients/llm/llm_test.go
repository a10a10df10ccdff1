package llm_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/clients/llm/llmtest"
)

type recorder struct {
	mu    sync.Mutex
	calls []string
	usage llm.Usage
}

func (r *recorder) LLMCall(endpoint, model, purpose, outcome string, _ time.Duration, u llm.Usage) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, endpoint+"/"+model+"/"+purpose+"/"+outcome)
	r.usage.TotalTokens += u.TotalTokens
}

const key = "sk-secret-123"

func chatAnswer(content string) string {
	return string(llmtest.Completion("m-served", content, llm.Usage{PromptTokens: 7, CompletionTokens: 3, TotalTokens: 10}))
}

func TestChatSendsTheOpenAIRequestAndReadsTheAnswer(t *testing.T) {
	var got map[string]any
	var auth string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/chat/completions" || r.Method != http.MethodPost {
			http.Error(w, "wrong route "+r.URL.Path, 404)
			return
		}
		auth = r.Header.Get("Authorization")
		_ = json.NewDecoder(r.Body).Decode(&got)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(chatAnswer(`{"ok":true}`)))
	}))
	defer srv.Close()
	rec := &recorder{}
	c := llm.New(llm.Options{BaseURL: srv.URL + "/v1/", APIKey: key, Observer: rec})
	resp, err := c.Chat(context.Background(), llm.Extraction("kg-model", "extract this", llm.JSONObject))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Content != `{"ok":true}` || resp.Model != "m-served" || resp.Usage.TotalTokens != 10 {
		t.Fatalf("response = %+v", resp)
	}
	if auth != "Bearer "+key {
		t.Fatalf("Authorization = %q", auth)
	}
	want := map[string]any{"model": "kg-model", "temperature": 0.1, "max_tokens": 4096.0,
		"response_format": map[string]any{"type": "json_object"}}
	for k, v := range want {
		if b1, b2 := mustJSON(got[k]), mustJSON(v); b1 != b2 {
			t.Errorf("request %s = %s, want %s", k, b1, b2)
		}
	}
	msgs := got["messages"].([]any)
	if len(msgs) != 1 || msgs[0].(map[string]any)["content"] != "extract this" || msgs[0].(map[string]any)["role"] != "user" {
		t.Errorf("messages = %v", msgs)
	}
	if len(rec.calls) != 1 || rec.calls[0] != "chat/kg-model/extraction/ok" || rec.usage.TotalTokens != 10 {
		t.Errorf("observer saw %v %+v", rec.calls, rec.usage)
	}
}

func mustJSON(v any) string { b, _ := json.Marshal(v); return string(b) }

func TestChatFailuresAreTyped(t *testing.T) {
	cases := []struct {
		name    string
		handler http.HandlerFunc
		timeout time.Duration
		check   func(t *testing.T, err error)
		outcome string
	}{
		{
			name: "429 with Retry-After seconds is a rate limit carrying the delay",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Retry-After", "17")
				http.Error(w, `{"error":{"message":"slow down"}}`, http.StatusTooManyRequests)
			},
			check: func(t *testing.T, err error) {
				var rl *llm.RateLimitError
				if !errors.As(err, &rl) || rl.RetryAfter() != 17*time.Second {
					t.Fatalf("err = %v, want RateLimitError after 17s", err)
				}
			},
			outcome: "rate_limited",
		},
		{
			name: "429 with an HTTP date Retry-After",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Retry-After", time.Now().Add(90*time.Second).UTC().Format(http.TimeFormat))
				w.WriteHeader(http.StatusTooManyRequests)
			},
			check: func(t *testing.T, err error) {
				var rl *llm.RateLimitError
				if !errors.As(err, &rl) || rl.RetryAfter() < 80*time.Second || rl.RetryAfter() > 91*time.Second {
					t.Fatalf("err = %v, want RateLimitError after ~90s", err)
				}
			},
			outcome: "rate_limited",
		},
		{
			name:    "200 with empty content is an error",
			handler: func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte(chatAnswer("  "))) },
			check:   wantIs(llm.ErrEmptyContent),
			outcome: "empty",
		},
		{
			name: "200 with null content is an error",
			handler: func(w http.ResponseWriter, r *http.Request) {
				_, _ = w.Write([]byte(`{"choices":[{"message":{"role":"assistant","content":null}}]}`))
			},
			check:   wantIs(llm.ErrEmptyContent),
			outcome: "empty",
		},
		{
			name:    "HTML instead of JSON is malformed",
			handler: func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("<html>gateway</html>")) },
			check:   wantIs(llm.ErrMalformed),
			outcome: "malformed",
		},
		{
			name:    "no choices is malformed",
			handler: func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte(`{"choices":[]}`)) },
			check:   wantIs(llm.ErrMalformed),
			outcome: "malformed",
		},
		{
			name: "an error object in a 200 is malformed",
			handler: func(w http.ResponseWriter, r *http.Request) {
				_, _ = w.Write([]byte(`{"error":{"message":"upstream died","code":502}}`))
			},
			check:   wantIs(llm.ErrMalformed),
			outcome: "malformed",
		},
		{
			name: "500 is a status error with the body excerpt and no key",
			handler: func(w http.ResponseWriter, r *http.Request) {
				http.Error(w, "bad key "+strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "), 500)
			},
			check: func(t *testing.T, err error) {
				var se *llm.StatusError
				if !errors.As(err, &se) || se.Code != 500 {
					t.Fatalf("err = %v, want StatusError 500", err)
				}
				if strings.Contains(err.Error(), key) {
					t.Fatalf("error leaks the API key: %v", err)
				}
			},
			outcome: "http_500",
		},
		{
			name: "a slow server hits the call timeout",
			handler: func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body) // lets the server notice the client hanging up
				select {
				case <-r.Context().Done():
				case <-time.After(5 * time.Second):
				}
			},
			timeout: 100 * time.Millisecond,
			check:   wantIs(context.DeadlineExceeded),
			outcome: "timeout",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(tc.handler)
			defer srv.Close()
			rec := &recorder{}
			c := llm.New(llm.Options{BaseURL: srv.URL, APIKey: key, Timeout: tc.timeout, Observer: rec})
			_, err := c.Chat(context.Background(), llm.Prompt("m", "hi"))
			if err == nil {
				t.Fatal("want an error")
			}
			tc.check(t, err)
			if got := llm.Outcome(err); got != tc.outcome {
				t.Errorf("Outcome = %q, want %q", got, tc.outcome)
			}
			if len(rec.calls) != 1 || !strings.HasSuffix(rec.calls[0], "/"+tc.outcome) {
				t.Errorf("observer saw %v", rec.calls)
			}
		})
	}
}

func wantIs(target error) func(t *testing.T, err error) {
	return func(t *testing.T, err error) {
		t.Helper()
		if !errors.Is(err, target) {
			t.Fatalf("err = %v, want %v", err, target)
		}
	}
}

func TestEmbedReturnsVectorsInInputOrder(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/embeddings" {
			http.Error(w, "no", 404)
			return
		}
		var req struct {
			Model string   `json:"model"`
			Input []string `json:"input"`
		}
		_ = json.NewDecoder(r.Body).Decode(&req)
		// Answer in reverse order: the client must sort by index.
		var data []any
		for i := len(req.Input) - 1; i >= 0; i-- {
			data = append(data, map[string]any{"object": "embedding", "index": i, "embedding": []float32{float32(len(req.Input[i])), 1}})
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"object": "list", "model": req.Model, "data": data,
			"usage": map[string]any{"prompt_tokens": 4, "total_tokens": 4}})
	}))
	defer srv.Close()
	c := llm.New(llm.Options{BaseURL: srv.URL})
	vecs, u, err := c.Embed(context.Background(), "emb", []string{"a", "bbb"})
	if err != nil {
		t.Fatal(err)
	}
	if len(vecs) != 2 || vecs[0][0] != 1 || vecs[1][0] != 3 || u.TotalTokens != 4 {
		t.Fatalf("vecs = %v usage = %+v", vecs, u)
	}
}

func TestEmbedRejectsAMismatchedAnswer(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"data":[{"index":0,"embedding":[1]}]}`))
	}))
	defer srv.Close()
	_, _, err := llm.New(llm.Options{BaseURL: srv.URL}).Embed(context.Background(), "emb", []string{"a", "b"})
	if !errors.Is(err, llm.ErrMalformed) {
		t.Fatalf("err = %v, want ErrMalformed", err)
	}
}

func TestStripFenceRemovesOneJSONFenceOnly(t *testing.T) {
	for in, want := range map[string]string{
		`{"a":1}`:                     `{"a":1}`,
		"  ```json\n{\"a\":1}\n```  ": `{"a":1}`,
		"```\n[1]\n```":               `[1]`,
		"```json\n{\"a\":1}":          "```json\n{\"a\":1}", // unterminated: left for the parser to refuse
		"Sure! ```json {} ```":        "Sure! ```json {} ```",
	} {
		if got := llm.StripFence(in); got != want {
			t.Errorf("StripFence(%q) = %q, want %q", in, got, want)
		}
	}
}
