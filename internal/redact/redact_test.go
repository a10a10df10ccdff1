package redact_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/stargazer/stargazer-jobs/internal/redact"
	"github.com/stargazer/stargazer-jobs/internal/testkit/leak"
)

func TestExcerptNeverShowsAPartOfTheSecretAtAnyOffset(t *testing.T) {
	secrets := map[string]string{
		"plain":        "sk-SECRETabcdefghijklmnopqrstuvwxyz0123456789",
		"json-escaped": `sk-"quoted"\back<slash>&amp`,
		"url-escaped":  "sk+key/with=padding==",
	}
	for name, secret := range secrets {
		t.Run(name, func(t *testing.T) {
			for offset := 0; offset <= 400; offset++ {
				for _, enc := range []func(string) string{
					func(s string) string { return s },
					func(s string) string { q := strconv.Quote(s); return q[1 : len(q)-1] },
					func(s string) string { b, _ := json.Marshal(s); return string(b[1 : len(b)-1]) },
					url.QueryEscape,
				} {
					body := strings.Repeat("x", offset) + enc(secret) + strings.Repeat("y", 50)
					got := redact.Excerpt([]byte(body), 300, secret)
					if sub, ok := leak.Find(got, secret); ok {
						t.Fatalf("offset %d: excerpt %q shows %q", offset, got, sub)
					}
				}
			}
		})
	}
}

func TestExcerptCutsAtRunes(t *testing.T) {
	got := redact.Excerpt([]byte("  "+strings.Repeat("é", 10)+"  "), 4)
	if got != "éééé…" {
		t.Errorf("got %q", got)
	}
	if got := redact.Excerpt([]byte("short"), 300, ""); got != "short" {
		t.Errorf("got %q", got)
	}
}

func TestErrorKeepsTheChain(t *testing.T) {
	base := fmt.Errorf("Post \"https://x/?key=sk-123456789\": %w", context.DeadlineExceeded)
	err := redact.Error(base, "sk-123456789")
	if strings.Contains(err.Error(), "sk-123456789") || !strings.Contains(err.Error(), redact.Marker) {
		t.Errorf("error text %q", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Error("redacted error lost its chain")
	}
	plain := errors.New("nothing secret")
	if redact.Error(plain, "sk-123456789") != plain {
		t.Error("an error without secrets should be returned as is")
	}
	if redact.Error(nil, "x") != nil {
		t.Error("nil error")
	}
}
