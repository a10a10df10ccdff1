// Package redact removes secrets (API keys, tokens) from text that quotes
// an upstream answer before it becomes an error, a log line or a task
// result. Redaction must happen before any truncation: a secret cut in
// half by an excerpt no longer matches and would leak its first half.
package redact

import (
	"encoding/json"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// Marker replaces every secret.
const Marker = "[REDACTED]"

// String replaces every occurrence of each non-empty secret in s, in the
// forms an upstream may echo it: as is, JSON-escaped and URL-escaped.
func String(s string, secrets ...string) string {
	for _, sec := range secrets {
		if sec == "" {
			continue
		}
		for _, form := range forms(sec) {
			s = strings.ReplaceAll(s, form, Marker)
		}
	}
	return s
}

// forms are the secret as is and as JSON (with and without HTML escaping),
// Go-quoted and URL-escaped text would show it.
func forms(sec string) []string {
	out := []string{sec}
	add := func(f string) {
		if f != "" && !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if enc.Encode(sec) == nil {
		add(unquote(strings.TrimSpace(b.String())))
	}
	if j, err := json.Marshal(sec); err == nil {
		add(unquote(string(j)))
	}
	add(unquote(strconv.Quote(sec)))
	add(url.QueryEscape(sec))
	add(url.PathEscape(sec))
	return out
}

func unquote(q string) string { return q[1 : len(q)-1] }

// Excerpt is the start of an upstream body for an error message: secrets
// redacted first, then trimmed and cut to at most max runes (an ellipsis
// marks a cut).
func Excerpt(b []byte, max int, secrets ...string) string {
	s := strings.TrimSpace(String(string(b), secrets...))
	if r := []rune(s); len(r) > max {
		return string(r[:max]) + "…"
	}
	return s
}

// Error hides the secrets in err's text while keeping err in the chain
// (context.DeadlineExceeded and friends stay detectable with errors.Is).
// It returns err itself when its text holds no secret.
func Error(err error, secrets ...string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	if red := String(msg, secrets...); red != msg {
		return redacted{msg: red, err: err}
	}
	return err
}

type redacted struct {
	msg string
	err error
}

func (e redacted) Error() string { return e.msg }
func (e redacted) Unwrap() error { return e.err }
