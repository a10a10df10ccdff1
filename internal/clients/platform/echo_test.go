package platform_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stargazer/stargazer-jobs/internal/clients/platform"
	"github.com/stargazer/stargazer-jobs/internal/testkit/leak"
)

func TestAnUpstreamEchoingTheTokenAtAnyOffsetNeverLeaksAPartOfIt(t *testing.T) {
	const secret = "MTA5ODc2NTQzMjEw.secret-bot-token-0123456789"
	for _, code := range []int{403, 200} { // a status error and a 200 that is not JSON
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			var offset int
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(code)
				fmt.Fprint(w, strings.Repeat("x", offset)+r.Header.Get("Authorization")+" refused")
			}))
			defer srv.Close()
			api := &platform.API{Platform: "discord", BaseURL: srv.URL, Authorization: "Bot " + secret, Secret: secret}
			for offset = 0; offset <= 400; offset++ {
				var out struct{}
				err := api.GetJSON(context.Background(), "/users/@me", nil, &out)
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
