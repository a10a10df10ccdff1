package monitor

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// Auth holds the credentials that protect the dashboard and the API: a
// bearer token, basic-auth credentials, or both.
type Auth struct {
	Token    string
	User     string
	Password string
}

// Enabled reports whether any credential is configured.
func (a Auth) Enabled() bool { return a.Token != "" || (a.User != "" && a.Password != "") }

// equal compares in constant time, whatever the lengths.
func equal(a, b string) bool {
	ha, hb := sha256.Sum256([]byte(a)), sha256.Sum256([]byte(b))
	return subtle.ConstantTimeCompare(ha[:], hb[:]) == 1
}

func (a Auth) allows(r *http.Request) bool {
	if !a.Enabled() {
		return true
	}
	if a.Token != "" {
		if h := r.Header.Get("Authorization"); strings.HasPrefix(h, "Bearer ") && equal(strings.TrimPrefix(h, "Bearer "), a.Token) {
			return true
		}
	}
	if a.User != "" && a.Password != "" {
		if u, p, ok := r.BasicAuth(); ok && equal(u, a.User) && equal(p, a.Password) {
			return true
		}
	}
	return false
}

// protect refuses requests without valid credentials with 401 and counts
// them under area.
func (a Auth) protect(area string, refused *prometheus.CounterVec, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a.allows(r) {
			next.ServeHTTP(w, r)
			return
		}
		refused.WithLabelValues(area).Inc()
		if a.User != "" {
			w.Header().Set("WWW-Authenticate", `Basic realm="stargazer-jobs", charset="UTF-8"`)
		} else {
			w.Header().Set("WWW-Authenticate", `Bearer realm="stargazer-jobs"`)
		}
		http.Error(w, "unauthorized", http.StatusUnauthorized)
	})
}
