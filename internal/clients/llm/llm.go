// Package llm talks to OpenAI-compatible chat/completions and embeddings
// endpoints (OpenRouter, the local Gemini proxy, any OpenAI-style server).
//
// Failures are typed so callers and the worker's retry policy can tell
// them apart: a rate limit (*RateLimitError, retry after its delay), an
// empty answer (ErrEmptyContent), an answer that is not the protocol's
// JSON (ErrMalformed), and other HTTP statuses (*StatusError).
package llm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/redact"
)

// Extraction defaults of the original: a low temperature for stable
// structured output and room for a long JSON answer.
const (
	ExtractionTemperature = 0.1
	ExtractionMaxTokens   = 4096
	// ConnectTimeout bounds the TCP (and TLS) connect, separately from the
	// whole call's timeout, as the original's httpx client did.
	ConnectTimeout = 10 * time.Second
)

var (
	// ErrEmptyContent is a 200 answer whose message content is empty. The
	// original raised on it so the caller retries.
	ErrEmptyContent = errors.New("llm: 200 OK with empty content")
	// ErrMalformed is an answer that is not the protocol's JSON.
	ErrMalformed = errors.New("llm: malformed response")
	// ErrRefused is a call that was not made because it may not be: the
	// chat-LLM kill switch is off, or the task's spend budget is spent.
	// No call of the same run can pass until the refusal lifts, so a run
	// stops at the first one; it is never a failure to retry (the worker
	// defers the run instead, internal/spend).
	ErrRefused = errors.New("llm: call refused before it started")
)

// AnswerError is a 200 answer that could not be used (empty, an error in
// the body, no choices). It carries the usage the answer reported, which
// the provider bills all the same; errors.Is sees the cause (ErrEmptyContent,
// ErrMalformed).
type AnswerError struct {
	Err   error
	Usage Usage
}

func (e *AnswerError) Error() string { return e.Err.Error() }
func (e *AnswerError) Unwrap() error { return e.Err }

// UsageOf is the usage a failed call's answer reported (zero if none).
func UsageOf(err error) Usage {
	var ae *AnswerError
	if errors.As(err, &ae) {
		return ae.Usage
	}
	return Usage{}
}

// RateLimitError is an HTTP 429. RetryAfter is the server's Retry-After
// (zero when it sent none).
type RateLimitError struct {
	Endpoint string
	After    time.Duration
}

func (e *RateLimitError) Error() string {
	if e.After > 0 {
		return fmt.Sprintf("llm: %s rate limited (429), retry after %s", e.Endpoint, e.After)
	}
	return fmt.Sprintf("llm: %s rate limited (429)", e.Endpoint)
}

// RetryAfter is how long the server asked us to wait; the worker's retry
// policy honours it.
func (e *RateLimitError) RetryAfter() time.Duration { return e.After }

// StatusError is any other non-2xx answer. Body is a short excerpt.
type StatusError struct {
	Endpoint string
	Code     int
	Body     string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("llm: %s answered HTTP %d: %s", e.Endpoint, e.Code, e.Body)
}

// Message is one chat message.
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// ResponseFormat asks for structured output: {"type":"json_object"} or a
// json_schema.
type ResponseFormat struct {
	Type       string          `json:"type"`
	JSONSchema json.RawMessage `json:"json_schema,omitempty"`
}

// JSONObject is the response format for "answer with a JSON object".
var JSONObject = &ResponseFormat{Type: "json_object"}

// Request is a chat/completions call. A zero Temperature or MaxTokens is
// left to the server's default.
type Request struct {
	Model          string
	Messages       []Message
	Temperature    float64
	MaxTokens      int
	ResponseFormat *ResponseFormat
	// Purpose labels the call in metrics ("summary", "extraction", ...).
	Purpose string
	// Items is how many units of work (messages) the call covers, when it
	// has a natural unit: the spend ledger keeps tokens per message from
	// it, which the backlog's cost forecast uses. 0: none.
	Items int
}

// Prompt is the one-user-message request most tasks make.
func Prompt(model, prompt string) Request {
	return Request{Model: model, Messages: []Message{{Role: "user", Content: prompt}}}
}

// Extraction is a one-message request with the original's extraction
// settings and, when format is not nil, structured output.
func Extraction(model, prompt string, format *ResponseFormat) Request {
	r := Prompt(model, prompt)
	r.Temperature = ExtractionTemperature
	r.MaxTokens = ExtractionMaxTokens
	r.ResponseFormat = format
	r.Purpose = "extraction"
	return r
}

// Usage is the token accounting of one call.
type Usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

// Response is a chat/completions answer.
type Response struct {
	Content      string
	Model        string
	FinishReason string
	Usage        Usage
}

// Observer records calls, for metrics. Implementations must be safe for
// concurrent use.
type Observer interface {
	LLMCall(endpoint, model, purpose, outcome string, elapsed time.Duration, u Usage)
}

// Client calls one OpenAI-compatible base URL.
type Client struct {
	baseURL  string
	apiKey   string
	http     *http.Client
	timeout  time.Duration
	observer Observer
}

// Options configure a Client.
type Options struct {
	// BaseURL is the API root, e.g. https://openrouter.ai/api/v1.
	BaseURL string
	// APIKey is sent as a bearer token; it never appears in errors or logs.
	APIKey string
	// Timeout bounds one whole call (default 120 s).
	Timeout time.Duration
	// Observer receives every call's outcome and usage (optional).
	Observer Observer
	// Transport overrides the HTTP transport (tests).
	Transport http.RoundTripper
}

// New returns a client for o.BaseURL.
func New(o Options) *Client {
	if o.Timeout <= 0 {
		o.Timeout = 120 * time.Second
	}
	tr := o.Transport
	if tr == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.DialContext = (&net.Dialer{Timeout: ConnectTimeout, KeepAlive: 30 * time.Second}).DialContext
		t.TLSHandshakeTimeout = ConnectTimeout
		tr = t
	}
	return &Client{
		baseURL:  strings.TrimRight(o.BaseURL, "/"),
		apiKey:   o.APIKey,
		http:     &http.Client{Transport: tr},
		timeout:  o.Timeout,
		observer: o.Observer,
	}
}

type chatRequest struct {
	Model          string          `json:"model"`
	Messages       []Message       `json:"messages"`
	Temperature    *float64        `json:"temperature,omitempty"`
	MaxTokens      int             `json:"max_tokens,omitempty"`
	ResponseFormat *ResponseFormat `json:"response_format,omitempty"`
}

type chatResponse struct {
	Model   string `json:"model"`
	Choices []struct {
		Message struct {
			Content *string `json:"content"`
		} `json:"message"`
		FinishReason string `json:"finish_reason"`
	} `json:"choices"`
	Usage Usage `json:"usage"`
	Error *struct {
		Message string `json:"message"`
	} `json:"error"`
}

// Chat makes one chat/completions call.
func (c *Client) Chat(ctx context.Context, r Request) (*Response, error) {
	if r.Model == "" {
		return nil, errors.New("llm: request without a model")
	}
	body := chatRequest{Model: r.Model, Messages: r.Messages, MaxTokens: r.MaxTokens, ResponseFormat: r.ResponseFormat}
	if r.Temperature != 0 {
		t := r.Temperature
		body.Temperature = &t
	}
	var out chatResponse
	start := time.Now()
	err := c.post(ctx, "chat/completions", body, &out)
	resp := &Response{Model: out.Model, Usage: out.Usage}
	if err == nil {
		switch {
		case out.Error != nil:
			err = fmt.Errorf("%w: error in a 200 answer: %s", ErrMalformed, c.excerpt([]byte(out.Error.Message)))
		case len(out.Choices) == 0:
			err = fmt.Errorf("%w: no choices", ErrMalformed)
		case out.Choices[0].Message.Content == nil || strings.TrimSpace(*out.Choices[0].Message.Content) == "":
			err = ErrEmptyContent
		default:
			resp.Content = *out.Choices[0].Message.Content
			resp.FinishReason = out.Choices[0].FinishReason
		}
		if err != nil {
			err = &AnswerError{Err: err, Usage: out.Usage}
		}
	}
	c.observe("chat", r.Model, r.Purpose, err, time.Since(start), out.Usage)
	if err != nil {
		return nil, err
	}
	return resp, nil
}

type embeddingsRequest struct {
	Model string   `json:"model"`
	Input []string `json:"input"`
}

type embeddingsResponse struct {
	Model string `json:"model"`
	Data  []struct {
		Index     int       `json:"index"`
		Embedding []float32 `json:"embedding"`
	} `json:"data"`
	Usage Usage `json:"usage"`
}

// Embed returns one vector per input, in input order.
func (c *Client) Embed(ctx context.Context, model string, inputs []string) ([][]float32, Usage, error) {
	if len(inputs) == 0 {
		return nil, Usage{}, nil
	}
	var out embeddingsResponse
	start := time.Now()
	err := c.post(ctx, "embeddings", embeddingsRequest{Model: model, Input: inputs}, &out)
	var vecs [][]float32
	if err == nil {
		vecs, err = ordered(out, len(inputs))
	}
	c.observe("embeddings", model, "embedding", err, time.Since(start), out.Usage)
	if err != nil {
		return nil, out.Usage, err
	}
	return vecs, out.Usage, nil
}

func ordered(out embeddingsResponse, n int) ([][]float32, error) {
	if len(out.Data) != n {
		return nil, fmt.Errorf("%w: %d embeddings for %d inputs", ErrMalformed, len(out.Data), n)
	}
	vecs := make([][]float32, n)
	for _, d := range out.Data {
		if d.Index < 0 || d.Index >= n || vecs[d.Index] != nil || len(d.Embedding) == 0 {
			return nil, fmt.Errorf("%w: bad embedding index %d", ErrMalformed, d.Index)
		}
		vecs[d.Index] = d.Embedding
	}
	return vecs, nil
}

// maxBody bounds what is read from a response, so a misbehaving server
// cannot exhaust memory.
const maxBody = 32 << 20

func (c *Client) post(ctx context.Context, path string, in, out any) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	b, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("llm: encoding request: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.baseURL+"/"+path, bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("llm: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	if c.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+c.apiKey)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("llm: %s: %w", path, c.redact(err))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return fmt.Errorf("llm: %s: reading answer: %w", path, c.redact(err))
	}
	switch {
	case resp.StatusCode == http.StatusTooManyRequests:
		return &RateLimitError{Endpoint: path, After: retryAfter(resp.Header.Get("Retry-After"), time.Now())}
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		return &StatusError{Endpoint: path, Code: resp.StatusCode, Body: c.excerpt(data)}
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%w: %s: %v: %s", ErrMalformed, path, c.redact(err), c.excerpt(data))
	}
	return nil
}

func (c *Client) observe(endpoint, model, purpose string, err error, elapsed time.Duration, u Usage) {
	if c.observer == nil {
		return
	}
	if purpose == "" {
		purpose = "chat"
	}
	c.observer.LLMCall(endpoint, model, purpose, Outcome(err), elapsed, u)
}

// Outcome names an error's class for metrics and logs: ok, rate_limited,
// empty, malformed, timeout, canceled, http_<code> or error.
func Outcome(err error) string {
	var rl *RateLimitError
	var se *StatusError
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &rl):
		return "rate_limited"
	case errors.Is(err, ErrEmptyContent):
		return "empty"
	case errors.Is(err, ErrMalformed):
		return "malformed"
	case errors.As(err, &se):
		return "http_" + strconv.Itoa(se.Code)
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	}
	return "error"
}

// retryAfter parses a Retry-After header: delta seconds or an HTTP date.
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseFloat(v, 64); err == nil && s >= 0 {
		return time.Duration(s * float64(time.Second))
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// excerptRunes bounds how much of an answer an error quotes.
const excerptRunes = 300

// excerpt quotes the start of an answer with the API key redacted first,
// so a key echoed near the cut cannot be left half visible.
func (c *Client) excerpt(b []byte) string { return redact.Excerpt(b, excerptRunes, c.apiKey) }

// redact removes the API key from err's text: some transports echo
// request details, and keys must never reach logs or task results.
func (c *Client) redact(err error) error { return redact.Error(err, c.apiKey) }

// StripFence removes one Markdown code fence around a JSON answer, which
// some models add even in JSON mode ("```json ... ```"); anything else
// around the JSON is left for the caller's parser to refuse.
func StripFence(s string) string {
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(s, "```") || !strings.HasSuffix(s, "```") || len(s) < 6 {
		return s
	}
	s = strings.TrimSuffix(strings.TrimPrefix(s, "```"), "```")
	s = strings.TrimPrefix(s, "json")
	return strings.TrimSpace(s)
}
