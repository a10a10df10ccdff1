package llm_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/testkit/leak"
)

// TestAnUpstreamEchoingTheKeyAtAnyOffsetNeverLeaksAPartOfIt covers every
// way an answer is quoted into an error: a non-2xx body, a 200 that is not
// JSON, and a 200 with an error object.
func TestAnUpstreamEchoingTheKeyAtAnyOffsetNeverLeaksAPartOfIt(t *testing.T) {
	const secret = "sk-SECRETabcdefghijklmnopqrstuvwxyz0123456789"
	kinds := []struct {
		name string
		code int
		body func(echo string) string
	}{
		{"status error", 500, func(e string) string { return e }},
		{"not json", 200, func(e string) string { return e }},
		{"error object", 200, func(e string) string { return fmt.Sprintf(`{"error":{"message":%q}}`, e) }},
	}
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			var offset int
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				key := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
				w.WriteHeader(k.code)
				fmt.Fprint(w, k.body(strings.Repeat("x", offset)+"your key "+key+" is wrong"))
			}))
			defer srv.Close()
			c := llm.New(llm.Options{BaseURL: srv.URL, APIKey: secret})
			for offset = 0; offset <= 400; offset++ {
				_, err := c.Chat(context.Background(), llm.Prompt("m", "hi"))
				if err == nil {
					t.Fatal("want an error")
				}
				if sub, ok := leak.Find(err.Error(), secret); ok {
					t.Fatalf("offset %d: error shows %q: %v", offset, sub, err)
				}
			}
		})
	}
}
