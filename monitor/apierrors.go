package monitor

import (
	"bytes"
	"context"
	"net/http"
	"strings"
)

// maxErrorBody bounds the part of an error answer apiErrors keeps.
const maxErrorBody = 4 << 10

// apiErrors makes the dashboard API's server errors say what they are.
// asynqmon answers every failure with 500 and the error as plain text, a
// Redis outage included, which reads as a bug of the server. A 5xx answer
// under prefix is held back; if Redis then does not answer a ping it
// becomes 503 (a dependency is down, retry later, as /readyz and POST
// /api/v1/tasks say it), else it stays 500; either way the body is
// {"error": …} like every other error answer of this server.
//
// Except for the dashboard's own page: asynqmon's UI parses any JSON body
// of an error into an object and then shows no error at all (it checks the
// message's length), so a same-origin fetch from a browser keeps the
// message as plain text, which the UI shows in its alert. The status is
// 503 for it too.
func apiErrors(prefix string, redis Pinger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, prefix) {
			next.ServeHTTP(w, r)
			return
		}
		ew := &errorWriter{ResponseWriter: w}
		next.ServeHTTP(ew, r)
		if ew.code == 0 {
			return
		}
		code, msg := ew.code, strings.TrimSpace(ew.body.String())
		if msg == "" {
			msg = http.StatusText(code)
		}
		ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
		defer cancel()
		if err := redis.Ping(ctx); err != nil {
			code, msg = http.StatusServiceUnavailable, "redis unreachable: "+msg
		}
		if r.Header.Get("Sec-Fetch-Site") == "same-origin" && r.Header.Get("Sec-Fetch-Mode") != "navigate" {
			http.Error(w, msg, code)
			return
		}
		writeJSON(w, code, apiError{msg})
	})
}

// errorWriter passes an answer through unless its status is 5xx; then it
// keeps the status and the start of the body instead.
type errorWriter struct {
	http.ResponseWriter
	wrote bool // the header went through
	code  int  // a held-back 5xx
	body  bytes.Buffer
}

func (e *errorWriter) WriteHeader(code int) {
	if e.wrote || e.code != 0 {
		return
	}
	if code >= 500 {
		e.code = code
		return
	}
	e.wrote = true
	e.ResponseWriter.WriteHeader(code)
}

func (e *errorWriter) Write(b []byte) (int, error) {
	if !e.wrote && e.code == 0 {
		e.WriteHeader(http.StatusOK)
	}
	if e.code != 0 {
		if room := maxErrorBody - e.body.Len(); room > 0 {
			e.body.Write(b[:min(len(b), room)])
		}
		return len(b), nil
	}
	return e.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection.
func (e *errorWriter) Unwrap() http.ResponseWriter { return e.ResponseWriter }
