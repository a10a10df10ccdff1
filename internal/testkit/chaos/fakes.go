package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm/llmtest"
	"github.com/stargazer/stargazer-jobs/internal/kg/extract/extracttest"
)

// LLMFault is what the LLM fake does to every chat/completions and
// embeddings call while it is set.
type LLMFault struct {
	// Mode: "" answers, "429" rate-limits with Retry-After, "5xx"
	// answers Status, "hang" holds the call until the caller gives up.
	Mode       string
	Status     int
	RetryAfter int // seconds
}

// Fakes stands in for every external service of the worker, on one
// loopback listener, speaking their wire formats: an OpenAI-compatible LLM
// (chat/completions, whose extraction answers are extracttest's, and
// embeddings), the Gemini API, Discord's REST API and a Matrix homeserver.
// Every call it answers is logged, one JSON line each, to its log file:
// the fakes' side of the run's history.
type Fakes struct {
	srv  *http.Server
	ln   net.Listener
	base string

	mu    sync.Mutex
	fault LLMFault
	log   *os.File
	enc   *json.Encoder
	wg    sync.WaitGroup
}

// FakeCall is one logged call.
type FakeCall struct {
	At      time.Time `json:"at"`
	Service string    `json:"service"` // llm, embeddings, gemini, discord, matrix
	Purpose string    `json:"purpose,omitempty"`
	Status  int       `json:"status"`
	Fault   string    `json:"fault,omitempty"`
	// RetryAfter is the Retry-After of a 429, in seconds.
	RetryAfter int     `json:"retry_after,omitempty"`
	MS         float64 `json:"ms"`
	// Messages are the texts of an extraction prompt's message lines.
	Messages []string `json:"messages,omitempty"`
}

// StartFakes listens on a free loopback port and logs to logPath.
func StartFakes(logPath string) (*Fakes, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Close()
		return nil, err
	}
	fk := &Fakes{ln: ln, base: "http://" + ln.Addr().String(), log: f, enc: json.NewEncoder(f)}
	fk.srv = &http.Server{Handler: fk.routes(), ReadHeaderTimeout: 5 * time.Second}
	fk.wg.Go(func() { _ = fk.srv.Serve(ln) })
	return fk, nil
}

// Base is the fakes' root URL.
func (f *Fakes) Base() string { return f.base }

// SetLLMFault sets what the LLM does from now on (the zero value: answer).
func (f *Fakes) SetLLMFault(lf LLMFault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fault = lf
}

func (f *Fakes) llmFault() LLMFault {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fault
}

func (f *Fakes) record(c FakeCall) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_ = f.enc.Encode(c)
}

// Close stops the server (hanging calls end) and closes the log.
func (f *Fakes) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := f.srv.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		err = f.srv.Close()
	}
	f.wg.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	return errors.Join(err, f.log.Close())
}

func (f *Fakes) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/chat/completions", f.chat)
	mux.HandleFunc("POST /v1/embeddings", f.embeddings)
	mux.HandleFunc("POST /v1beta/models/{model}", f.gemini)
	mux.HandleFunc("GET /api/v10/users/@me", f.js("discord", map[string]any{"id": "900000000000000001", "username": "stargazer", "bot": true}))
	mux.HandleFunc("GET /api/v10/users/@me/guilds", f.js("discord", []any{map[string]any{"id": "100000000000000001", "name": "Chaos guild"}}))
	mux.HandleFunc("GET /api/v10/guilds/{id}/channels", f.js("discord", []any{map[string]any{"id": "110000000000000001", "type": 0, "name": "general"}}))
	mux.HandleFunc("GET /api/v10/channels/{id}/messages", f.discordMessages)
	mux.HandleFunc("GET /_matrix/client/v3/account/whoami", f.js("matrix", map[string]any{"user_id": "@stargazer:chaos.org"}))
	mux.HandleFunc("GET /_matrix/client/v3/joined_rooms", f.js("matrix", map[string]any{"joined_rooms": []string{"!lobby:chaos.org"}}))
	mux.HandleFunc("GET /_matrix/client/v3/rooms/{room}/state/m.room.name", f.js("matrix", map[string]any{"name": "Lobby"}))
	mux.HandleFunc("GET /_matrix/client/v3/rooms/{room}/joined_members", f.js("matrix", map[string]any{"joined": map[string]any{
		"@stargazer:chaos.org": map[string]any{"display_name": "Stargazer"}, "@ada:chaos.org": map[string]any{"display_name": "Ada"}}}))
	mux.HandleFunc("GET /_matrix/client/v3/rooms/{room}/messages", f.matrixMessages)
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (f *Fakes) js(service string, v any) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		f.record(FakeCall{At: time.Now(), Service: service, Status: 200})
		writeJSON(w, 200, v)
	}
}

// faulted answers a call the LLM fault takes, and reports whether it did.
func (f *Fakes) faulted(w http.ResponseWriter, r *http.Request, c *FakeCall) bool {
	lf := f.llmFault()
	switch lf.Mode {
	case "429":
		c.Status, c.Fault, c.RetryAfter = http.StatusTooManyRequests, "429", lf.RetryAfter
		w.Header().Set("Retry-After", strconv.Itoa(lf.RetryAfter))
		writeJSON(w, c.Status, map[string]any{"error": map[string]any{"message": "rate limited", "type": "rate_limit_error"}})
		return true
	case "5xx":
		c.Status, c.Fault = lf.Status, "5xx"
		writeJSON(w, c.Status, map[string]any{"error": map[string]any{"message": "upstream failure"}})
		return true
	case "hang":
		// Past every client deadline of the run; the caller gives up.
		c.Fault = "hang"
		select {
		case <-r.Context().Done():
			c.Status = 499
		case <-time.After(2 * time.Minute):
			c.Status = http.StatusGatewayTimeout
			w.WriteHeader(c.Status)
		}
		return true
	}
	return false
}

func (f *Fakes) chat(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	c := FakeCall{At: start, Service: "llm", Purpose: "chat"}
	defer func() { c.MS = float64(time.Since(start).Microseconds()) / 1000; f.record(c) }()
	var req llmtest.ChatRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4<<20)).Decode(&req); err != nil || len(req.Messages) == 0 {
		c.Status = http.StatusBadRequest
		http.Error(w, "bad request", c.Status)
		return
	}
	prompt := req.Prompt()
	if ls := extracttest.Lines(prompt); len(ls) > 0 {
		c.Purpose = "extraction"
		for _, l := range ls {
			c.Messages = append(c.Messages, l.Text)
		}
	}
	if f.faulted(w, r, &c) {
		return
	}
	// A model's latency, a little of it.
	select {
	case <-time.After(time.Duration(20+len(prompt)%80) * time.Millisecond):
	case <-r.Context().Done():
		c.Status = 499
		return
	}
	c.Status = 200
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(extracttest.ChatCompletion(req.Model, prompt, req.ResponseFormat != nil))
}

func (f *Fakes) embeddings(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	c := FakeCall{At: start, Service: "embeddings", Purpose: "embeddings"}
	defer func() { c.MS = float64(time.Since(start).Microseconds()) / 1000; f.record(c) }()
	var req llmtest.EmbeddingsRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 8<<20)).Decode(&req); err != nil {
		c.Status = http.StatusBadRequest
		http.Error(w, err.Error(), c.Status)
		return
	}
	if f.faulted(w, r, &c) {
		return
	}
	data := make([]any, len(req.Input))
	for i, in := range req.Input {
		data[i] = map[string]any{"object": "embedding", "index": i, "embedding": llmtest.Vector(in)}
	}
	c.Status = 200
	writeJSON(w, 200, map[string]any{"object": "list", "model": req.Model, "data": data,
		"usage": map[string]any{"prompt_tokens": len(req.Input), "total_tokens": len(req.Input)}})
}

func (f *Fakes) gemini(w http.ResponseWriter, r *http.Request) {
	c := FakeCall{At: time.Now(), Service: "gemini", Status: 200}
	defer func() { f.record(c) }()
	if r.Header.Get("x-goog-api-key") == "" {
		c.Status = http.StatusForbidden
		writeJSON(w, c.Status, map[string]any{"error": map[string]any{"code": 403, "message": "Method doesn't allow unregistered callers.", "status": "PERMISSION_DENIED"}})
		return
	}
	writeJSON(w, 200, map[string]any{"embedding": map[string]any{"values": llmtest.Vector(r.URL.Path)}})
}

func (f *Fakes) discordMessages(w http.ResponseWriter, r *http.Request) {
	f.record(FakeCall{At: time.Now(), Service: "discord", Status: 200})
	ch := r.PathValue("id")
	base := time.Now().Add(-3 * time.Hour).UTC()
	var out []any
	for i := 5; i >= 1; i-- { // newest first, as Discord answers
		out = append(out, map[string]any{
			"id": fmt.Sprintf("12%016d", i), "channel_id": ch, "content": fmt.Sprintf("discord backfill message %d", i),
			"timestamp": base.Add(time.Duration(i) * time.Minute).Format(time.RFC3339Nano),
			"author":    map[string]any{"id": "300000000000000001", "username": "ada", "bot": false},
		})
	}
	writeJSON(w, 200, out)
}

func (f *Fakes) matrixMessages(w http.ResponseWriter, r *http.Request) {
	f.record(FakeCall{At: time.Now(), Service: "matrix", Status: 200})
	base := time.Now().Add(-3 * time.Hour)
	var chunk []any
	for i := 5; i >= 1; i-- {
		chunk = append(chunk, map[string]any{
			"type": "m.room.message", "event_id": fmt.Sprintf("$chaos%d:chaos.org", i), "sender": "@ada:chaos.org",
			"origin_server_ts": base.Add(time.Duration(i) * time.Minute).UnixMilli(), "room_id": r.PathValue("room"),
			"content": map[string]any{"msgtype": "m.text", "body": fmt.Sprintf("matrix backfill message %d", i)},
		})
	}
	writeJSON(w, 200, map[string]any{"chunk": chunk, "start": "t1", "end": "t0"})
}
