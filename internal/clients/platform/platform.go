// Package platform holds what the chat platforms' REST clients (discord,
// matrix) have in common: the channel and message shapes the backfill
// reads, typed failures, and one JSON GET helper that never lets a token
// reach an error.
package platform

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/redact"
)

// Identity is the bot's own account on a platform.
type Identity struct {
	UserID   string
	UserName string
}

// Channel is a text channel (Discord) or room (Matrix) the bot can read,
// with the metadata the bot records for it.
type Channel struct {
	ID        string
	Name      string
	GuildID   string
	GuildName string
	IsDM      bool
}

// Message is one message of a channel's history.
type Message struct {
	ID        string
	UserID    string
	UserName  string
	Text      string
	Time      time.Time
	ReplyToID string
	// IsBot is the platform's own "this author is a bot" flag (Discord);
	// the backfill prefers comparing UserID with the bot's Identity.
	IsBot bool
}

// ErrMalformed is an answer that is not the platform's JSON.
var ErrMalformed = errors.New("platform: malformed response")

// RateLimitError is an HTTP 429. After is the wait the platform asked for
// (zero when it said nothing); the worker's retry policy honours it.
type RateLimitError struct {
	Platform string
	Endpoint string
	After    time.Duration
}

func (e *RateLimitError) Error() string {
	return fmt.Sprintf("%s: %s rate limited (429), retry after %s", e.Platform, e.Endpoint, e.After)
}

// RetryAfter is how long the platform asked us to wait.
func (e *RateLimitError) RetryAfter() time.Duration { return e.After }

// StatusError is any other non-2xx answer. Body is a short excerpt.
type StatusError struct {
	Platform string
	Endpoint string
	Code     int
	Body     string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%s: %s answered HTTP %d: %s", e.Platform, e.Endpoint, e.Code, e.Body)
}

// Unauthorized reports whether err says the credentials were refused
// (401 or 403): waiting or retrying cannot fix it.
func Unauthorized(err error) bool {
	var se *StatusError
	return errors.As(err, &se) && (se.Code == http.StatusUnauthorized || se.Code == http.StatusForbidden)
}

// NotFound reports whether err is a 404.
func NotFound(err error) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Code == http.StatusNotFound
}

// API is one platform's REST endpoint: a base URL and an Authorization
// header. Its errors name the platform and the path, never the token.
type API struct {
	Platform string
	BaseURL  string
	// Authorization is the header value ("Bot <token>", "Bearer <token>").
	Authorization string
	// Secret is redacted from anything an error carries.
	Secret string
	// UserAgent is sent when not empty (Discord requires one).
	UserAgent string
	// RetryAfter reads a 429's wait from its headers and body; nil uses the
	// Retry-After header alone.
	RetryAfter func(h http.Header, body []byte) time.Duration
	HTTP       *http.Client
}

// DefaultTimeout bounds one platform call.
const DefaultTimeout = 30 * time.Second

// NewHTTPClient returns the HTTP client platform clients use by default:
// a bounded connect and a bounded call.
func NewHTTPClient(timeout time.Duration) *http.Client {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	t.TLSHandshakeTimeout = 10 * time.Second
	return &http.Client{Transport: t, Timeout: timeout}
}

// maxBody bounds what is read from an answer.
const maxBody = 16 << 20

// GetJSON GETs BaseURL+path?query and decodes the JSON answer into out.
// path must already be escaped.
func (a *API) GetJSON(ctx context.Context, path string, query url.Values, out any) error {
	u := strings.TrimRight(a.BaseURL, "/") + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("%s: %s: %w", a.Platform, path, err)
	}
	req.Header.Set("Authorization", a.Authorization)
	req.Header.Set("Accept", "application/json")
	if a.UserAgent != "" {
		req.Header.Set("User-Agent", a.UserAgent)
	}
	hc := a.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s: %s: %w", a.Platform, path, a.redactErr(err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return fmt.Errorf("%s: %s: reading answer: %w", a.Platform, path, a.redactErr(err))
	}
	switch {
	case resp.StatusCode == http.StatusTooManyRequests:
		after := HeaderRetryAfter(resp.Header)
		if a.RetryAfter != nil {
			after = a.RetryAfter(resp.Header, body)
		}
		return &RateLimitError{Platform: a.Platform, Endpoint: path, After: after}
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		return &StatusError{Platform: a.Platform, Endpoint: path, Code: resp.StatusCode, Body: a.excerpt(body)}
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("%w: %s %s: %v: %s", ErrMalformed, a.Platform, path, a.redactErr(err), a.excerpt(body))
	}
	return nil
}

// HeaderRetryAfter reads a Retry-After header in seconds (fractions
// allowed); an HTTP date or garbage reads as zero.
func HeaderRetryAfter(h http.Header) time.Duration {
	s, err := strconv.ParseFloat(strings.TrimSpace(h.Get("Retry-After")), 64)
	if err != nil || s < 0 {
		return 0
	}
	return time.Duration(s * float64(time.Second))
}

// excerptRunes bounds how much of an answer an error quotes.
const excerptRunes = 300

// excerpt quotes the start of an answer with the token redacted first, so
// a token echoed near the cut cannot be left half visible.
func (a *API) excerpt(b []byte) string { return redact.Excerpt(b, excerptRunes, a.Secret) }

// redactErr hides the token in err's text while keeping err in the chain
// (context.DeadlineExceeded and friends stay detectable).
func (a *API) redactErr(err error) error { return redact.Error(err, a.Secret) }
