package llmtest

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
)

// Call is one request a Server received.
type Call struct {
	N       int // 1-based, in arrival order
	Model   string
	Excerpt string // the start of the last message (40 bytes), to tell calls apart
	Usage   llm.Usage
	// Delivered: the answer, with its usage, was written to the client. A
	// call whose client went away while it was held reported nothing.
	Delivered bool
}

// Server is a fake OpenAI-compatible chat/completions and embeddings
// server that reports usage on every answer, the way a provider bills:
// per call, in the reply. Tests set what each call uses, hold calls to
// kill a worker mid-call, and read back exactly what was reported.
type Server struct {
	srv *httptest.Server

	mu      sync.Mutex
	calls   []Call
	usage   func(n int) llm.Usage
	content string
	hold    func(n int) bool
	release chan struct{}
	held    chan int
}

// NewServer starts a fake for the test, closed at cleanup. Every call
// answers content with usage(n) for the n-th call (default: 900 prompt and
// 100 completion tokens).
func NewServer(tb testing.TB) *Server {
	s := &Server{
		usage:   func(int) llm.Usage { return llm.Usage{PromptTokens: 900, CompletionTokens: 100, TotalTokens: 1000} },
		content: "ok", release: make(chan struct{}), held: make(chan int, 100),
	}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	tb.Cleanup(func() { s.Release(); s.srv.Close() })
	return s
}

// BaseURL is the API root to give the worker (LLM_BASE_URL).
func (s *Server) BaseURL() string { return s.srv.URL + "/v1" }

// SetUsage sets what the n-th call reports.
func (s *Server) SetUsage(f func(n int) llm.Usage) { s.mu.Lock(); s.usage = f; s.mu.Unlock() }

// SetContent sets every answer's content.
func (s *Server) SetContent(c string) { s.mu.Lock(); s.content = c; s.mu.Unlock() }

// Hold makes the calls for which f is true wait, unanswered, until
// Release or until their client goes away; Held receives their numbers.
func (s *Server) Hold(f func(n int) bool) { s.mu.Lock(); s.hold = f; s.mu.Unlock() }

// Held receives the number of each call as it starts to be held.
func (s *Server) Held() <-chan int { return s.held }

// Release answers every held call (and every later one at once).
func (s *Server) Release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.release:
	default:
		close(s.release)
	}
}

// Calls are the calls received so far.
func (s *Server) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Call(nil), s.calls...)
}

// Reported adds up the usage of the delivered answers.
func (s *Server) Reported() (calls int, u llm.Usage) {
	for _, c := range s.Calls() {
		if c.Delivered {
			calls++
			u.PromptTokens += c.Usage.PromptTokens
			u.CompletionTokens += c.Usage.CompletionTokens
			u.TotalTokens += c.Usage.TotalTokens
		}
	}
	return calls, u
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Model    string        `json:"model"`
		Messages []llm.Message `json:"messages"`
		Input    []string      `json:"input"`
	}
	if r.Method != http.MethodPost || json.NewDecoder(r.Body).Decode(&req) != nil {
		http.Error(w, `{"error":{"message":"bad request"}}`, http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	n := len(s.calls) + 1
	c := Call{N: n, Model: req.Model, Usage: s.usage(n)}
	if len(req.Messages) > 0 {
		c.Excerpt = req.Messages[len(req.Messages)-1].Content[:min(40, len(req.Messages[len(req.Messages)-1].Content))]
	}
	s.calls = append(s.calls, c)
	hold, content, release := s.hold != nil && s.hold(n), s.content, s.release
	s.mu.Unlock()
	if hold {
		s.held <- n
		select {
		case <-release:
		case <-r.Context().Done():
			return // the client went away: nothing was reported
		}
	}
	var body []byte
	switch r.URL.Path {
	case "/v1/chat/completions":
		body = Completion(req.Model, content, c.Usage)
	case "/v1/embeddings":
		data := make([]map[string]any, len(req.Input))
		for i := range data {
			data[i] = map[string]any{"object": "embedding", "index": i, "embedding": []float32{0.1, 0.2, 0.3}}
		}
		body, _ = json.Marshal(map[string]any{"object": "list", "model": req.Model, "data": data, "usage": c.Usage})
	default:
		http.Error(w, `{"error":{"message":"no route"}}`, http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if _, err := w.Write(body); err != nil {
		return
	}
	s.mu.Lock()
	s.calls[n-1].Delivered = true
	s.mu.Unlock()
}
