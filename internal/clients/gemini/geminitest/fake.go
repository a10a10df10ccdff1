// Package geminitest fakes the Gemini API for tests, speaking its real wire
// format: embedContent answers and Google error bodies.
package geminitest

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// Answers of the fake server, by what they say about a key.
const (
	OK            = "ok"
	PerDay        = "per_day"
	PerMinute     = "per_minute"
	Invalid       = "invalid"
	Denied        = "denied"
	ServerError   = "server_error"
	WrongModel    = "wrong_model"
	Malformed200  = "malformed_200"
	PerMinuteBare = "per_minute_bare"
)

// Server is an httptest server speaking Gemini's embedContent wire
// format, answering each key as told. Other packages' tests use it too.
type Server struct {
	*httptest.Server
	mu      sync.Mutex
	answers map[string]string
	calls   map[string]int
	bad     int
}

// NewServer starts a fake Gemini API, closed at cleanup. answers maps a
// key to one of the answers above; unknown keys are answered as invalid.
func NewServer(tb testing.TB, answers map[string]string) *Server {
	f := &Server{answers: map[string]string{}, calls: map[string]int{}}
	for k, v := range answers {
		f.answers[k] = v
	}
	f.Server = httptest.NewServer(http.HandlerFunc(f.serve))
	tb.Cleanup(f.Close)
	return f
}

// Set changes how a key is answered.
func (f *Server) Set(key, answer string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.answers[key] = answer
}

// Calls is how many probes of key the server saw.
func (f *Server) Calls(key string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[key]
}

// BadRequests counts requests that were not a well-formed embedContent call
// with the key in its header (and none in the URL).
func (f *Server) BadRequests() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.bad
}

func (f *Server) serve(w http.ResponseWriter, r *http.Request) {
	key := r.Header.Get("x-goog-api-key")
	var body struct {
		Content struct {
			Parts []struct {
				Text string `json:"text"`
			} `json:"parts"`
		} `json:"content"`
	}
	okReq := r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, "/v1beta/models/") &&
		strings.HasSuffix(r.URL.Path, ":embedContent") && key != "" && r.URL.RawQuery == "" &&
		json.NewDecoder(r.Body).Decode(&body) == nil && len(body.Content.Parts) == 1 && body.Content.Parts[0].Text != ""
	f.mu.Lock()
	answer, known := f.answers[key]
	f.calls[key]++
	if !okReq {
		f.bad++
	}
	f.mu.Unlock()
	if !okReq {
		writeJSON(w, 400, `{"error":{"code":400,"message":"Invalid JSON payload received.","status":"INVALID_ARGUMENT"}}`)
		return
	}
	if !known {
		answer = Invalid
	}
	switch answer {
	case OK:
		writeJSON(w, 200, `{"embedding":{"values":[0.0123,-0.0456,0.0789]}}`)
	case PerDay:
		writeJSON(w, 429, `{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":"generativelanguage.googleapis.com/embed_content_free_tier_requests","quotaId":"EmbedContentRequestsPerDayPerUserPerProjectPerModel-FreeTier","quotaDimensions":{"location":"global","model":"gemini-embedding-1.0"},"quotaValue":"1000"}]},{"@type":"type.googleapis.com/google.rpc.Help","links":[{"description":"Learn more about Gemini API quotas","url":"https://ai.google.dev/gemini-api/docs/rate-limits"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"37s"}]}}`)
	case PerMinute:
		writeJSON(w, 429, `{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":"generativelanguage.googleapis.com/embed_content_free_tier_requests","quotaId":"EmbedContentRequestsPerMinutePerUserPerProjectPerModel-FreeTier","quotaDimensions":{"location":"global","model":"gemini-embedding-1.0"},"quotaValue":"100"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"37s"}]}}`)
	case PerMinuteBare:
		writeJSON(w, 429, `{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}`)
	case Invalid:
		writeJSON(w, 400, `{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com","metadata":{"service":"generativelanguage.googleapis.com"}},{"@type":"type.googleapis.com/google.rpc.LocalizedMessage","locale":"en-US","message":"API key not valid. Please pass a valid API key."}]}}`)
	case Denied:
		writeJSON(w, 403, `{"error":{"code":403,"message":"Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.","status":"PERMISSION_DENIED"}}`)
	case WrongModel:
		writeJSON(w, 404, `{"error":{"code":404,"message":"models/nope is not found for API version v1beta, or is not supported for embedContent.","status":"NOT_FOUND"}}`)
	case Malformed200:
		writeJSON(w, 200, `<html>captive portal</html>`)
	default:
		writeJSON(w, 500, `{"error":{"code":500,"message":"An internal error has occurred.","status":"INTERNAL"}}`)
	}
}

func writeJSON(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(body))
}
