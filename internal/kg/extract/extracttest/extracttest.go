// Package extracttest fakes the LLM of knowledge extraction for tests: an
// httptest server speaking OpenAI chat/completions whose answer is derived
// from the prompt, so a test knows exactly what a batch of messages
// extracts to without a model.
//
// The derivation reads the prompt's <messages> lines ("[n] <time> · <source>
// · <author>: <text>") and answers, per message: the author as a person;
// each capitalised word of three or more letters in the text as a topic,
// mentioned by that message; and a relationship "<author> mentions
// <word>" (weight 0.6). Usage is reported as a quarter token per
// character of prompt and answer. ChatCompletion is the same answer for
// the fakes that stand in for the whole LLM, every task's prompt.
package extracttest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"unicode"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/clients/llm/llmtest"
)

// Call is one request the server received.
type Call struct {
	Model          string
	Prompt         string // the last message's content
	Temperature    *float64
	MaxTokens      int
	ResponseFormat string // response_format.type
	// Messages are the texts of the prompt's message lines, in order.
	Messages []string
	// Authorization is the request's Authorization header ("" if none).
	Authorization string
}

// Reply is an HTTP answer.
type Reply struct {
	Status     int
	RetryAfter string
	Body       string
}

// Hook may replace the answer to the n-th call (1-based): it returns nil
// to let the derived answer through.
type Hook func(n int, c Call) *Reply

// Server is the fake.
type Server struct {
	srv *httptest.Server

	mu    sync.Mutex
	calls []Call
	hook  Hook
}

// Start runs a fake for the test, closed at cleanup.
func Start(tb testing.TB) *Server {
	s := &Server{}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	tb.Cleanup(s.srv.Close)
	return s
}

// BaseURL is the API root to give llm.New.
func (s *Server) BaseURL() string { return s.srv.URL + "/v1" }

// Client returns an llm client for the fake.
func (s *Server) Client() *llm.Client {
	return llm.New(llm.Options{BaseURL: s.BaseURL(), APIKey: "sk-test-secret"})
}

// SetHook installs h (nil removes it).
func (s *Server) SetHook(h Hook) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hook = h
}

// Calls returns the calls so far.
func (s *Server) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Call(nil), s.calls...)
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/v1/chat/completions" || r.Method != http.MethodPost {
		http.Error(w, "no route "+r.URL.Path, http.StatusNotFound)
		return
	}
	var req llmtest.ChatRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || len(req.Messages) == 0 {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	c := Call{Model: req.Model, Prompt: req.Prompt(),
		Temperature: req.Temperature, MaxTokens: req.MaxTokens, Authorization: r.Header.Get("Authorization")}
	if req.ResponseFormat != nil {
		c.ResponseFormat = req.ResponseFormat.Type
	}
	for _, l := range Lines(c.Prompt) {
		c.Messages = append(c.Messages, l.Text)
	}
	s.mu.Lock()
	s.calls = append(s.calls, c)
	n, hook := len(s.calls), s.hook
	s.mu.Unlock()

	var rep Reply
	if hook != nil {
		if h := hook(n, c); h != nil {
			rep = *h
		}
	}
	if rep.Status == 0 {
		rep = Completion(c.Prompt, Answer(c.Prompt))
	}
	if rep.RetryAfter != "" {
		w.Header().Set("Retry-After", rep.RetryAfter)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(rep.Status)
	_, _ = io.WriteString(w, rep.Body)
}

// Completion is a 200 chat/completions answer with content, its usage
// estimated from prompt and content.
func Completion(prompt, content string) Reply {
	u := llm.Usage{PromptTokens: len(prompt) / 4, CompletionTokens: len(content) / 4}
	u.TotalTokens = u.PromptTokens + u.CompletionTokens
	return Reply{Status: http.StatusOK, Body: string(llmtest.Completion("fake-extractor", content, u))}
}

// Line is one message line of a prompt.
type Line struct {
	N      int // its number in the prompt
	Author string
	Text   string
}

// Lines parses the message lines of an extraction prompt.
func Lines(prompt string) []Line {
	_, body, ok := strings.Cut(prompt, "<messages>\n")
	if !ok {
		return nil
	}
	body, _, _ = strings.Cut(body, "</messages>")
	var out []Line
	for _, l := range strings.Split(body, "\n") {
		num, rest, ok := strings.Cut(strings.TrimPrefix(l, "["), "] ")
		n, err := strconv.Atoi(num)
		if !ok || err != nil {
			continue
		}
		parts := strings.Split(rest, " · ")
		who, text, _ := strings.Cut(parts[len(parts)-1], ": ")
		out = append(out, Line{N: n, Author: who, Text: text})
	}
	return out
}

// Words are the capitalised words of text the fake extracts as topics.
func Words(text string) []string {
	var out []string
	for _, w := range strings.Fields(text) {
		w = strings.TrimFunc(w, func(r rune) bool { return !unicode.IsLetter(r) && !unicode.IsDigit(r) })
		if len([]rune(w)) >= 3 && unicode.IsUpper([]rune(w)[0]) {
			out = append(out, w)
		}
	}
	return out
}

// Answer is the fake's extraction JSON for prompt.
func Answer(prompt string) string {
	type entity struct {
		Name     string `json:"name"`
		Type     string `json:"type"`
		Messages []int  `json:"messages"`
	}
	type rel struct {
		Source string  `json:"source"`
		Target string  `json:"target"`
		Type   string  `json:"type"`
		Weight float64 `json:"weight"`
	}
	out := struct {
		Entities      []entity `json:"entities"`
		Relationships []rel    `json:"relationships"`
	}{Entities: []entity{}, Relationships: []rel{}}
	idx := map[string]int{}
	add := func(name, typ string, n int) {
		k := typ + "\x00" + name
		if i, ok := idx[k]; ok {
			out.Entities[i].Messages = append(out.Entities[i].Messages, n)
			return
		}
		idx[k] = len(out.Entities)
		out.Entities = append(out.Entities, entity{Name: name, Type: typ, Messages: []int{n}})
	}
	for _, l := range Lines(prompt) {
		words := Words(l.Text)
		if len(words) == 0 {
			continue
		}
		add(l.Author, "person", l.N)
		for _, w := range words {
			add(w, "topic", l.N)
			out.Relationships = append(out.Relationships, rel{Source: l.Author, Target: w, Type: "mentions", Weight: 0.6})
		}
	}
	b, _ := json.Marshal(out)
	return string(b)
}

// ChatCompletion is the body of the whole-LLM fakes' (devfake's and the
// chaos harness's) chat/completions answer to prompt, so the two answer
// alike: with jsonMode (the call set response_format), JSON in the shape
// the prompt asks for; otherwise a line of summary prose. Usage is a
// quarter token a character.
func ChatCompletion(model, prompt string, jsonMode bool) []byte {
	content := fmt.Sprintf("The channel has been discussing %d lines of conversation; people are friendly and on topic.", strings.Count(prompt, "\n")+1)
	if jsonMode {
		content = jsonAnswer(prompt)
	}
	u := llm.Usage{PromptTokens: len(prompt) / 4, CompletionTokens: len(content) / 4, TotalTokens: (len(prompt) + len(content)) / 4}
	return llmtest.Completion(model, content, u)
}

// jsonAnswer answers a structured-output prompt in the shape it asks for:
// no merge verdicts, no hub categories, a one-line epoch summary, or (by
// default) Answer's extraction. A task that asks for JSON gets JSON it
// can parse, whichever task it is.
func jsonAnswer(prompt string) string {
	switch {
	case strings.Contains(prompt, `"verdicts"`):
		return `{"verdicts":[]}`
	case strings.Contains(prompt, `"categories"`):
		return `{"categories":[]}`
	case strings.Contains(prompt, `"summary"`):
		return `{"summary":"A quiet day of conversation."}`
	}
	return Answer(prompt)
}
