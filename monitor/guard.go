package monitor

import (
	"fmt"
	"math"
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// guard is what stands before the dashboard and the API: the cross-origin
// check, failed-authentication throttling, authentication and roles, all
// decided from the request line and headers before anything reads a body.
type guard struct {
	auth     Auth
	readOnly bool
	throttle *throttle
	// unauthorized and throttled count refusals by area.
	unauthorized *prometheus.CounterVec
	throttled    *prometheus.CounterVec
}

// stateChanging reports whether r may change state: browsers, the
// dashboard and the API only change state with other methods than these.
func stateChanging(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return false
	}
	return true
}

// protect lets through to next only the requests area allows: valid
// credentials, and the admin role (and a writable monitor) for a state
// change.
func (g *guard) protect(area string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		role := roleAdmin
		if g.auth.Enabled() {
			key := clientKey(r)
			if wait := g.throttle.wait(key); wait > 0 {
				g.throttled.WithLabelValues(area).Inc()
				w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
				refuse(w, r, http.StatusTooManyRequests, "too many failed authentications from this address; retry later")
				return
			}
			role = g.auth.role(r)
			if role == roleNone {
				// Only a wrong credential is a guess: a browser's first,
				// credential-less request is not held against it.
				if r.Header.Get("Authorization") != "" {
					g.throttle.fail(key)
				}
				g.unauthorized.WithLabelValues(area).Inc()
				if g.auth.basic() {
					w.Header().Set("WWW-Authenticate", `Basic realm="stargazer-jobs", charset="UTF-8"`)
				} else {
					w.Header().Set("WWW-Authenticate", `Bearer realm="stargazer-jobs"`)
				}
				refuse(w, r, http.StatusUnauthorized, "unauthorized")
				return
			}
		}
		if stateChanging(r) {
			switch {
			case role != roleAdmin:
				refuse(w, r, http.StatusForbidden, "this credential is view-only: it cannot change anything")
				return
			case g.readOnly:
				refuse(w, r, http.StatusForbidden, "the monitor is read-only (DASHBOARD_READ_ONLY=true): it changes nothing")
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// refuse answers with an error before the body was read. The connection
// is closed after the answer: otherwise the server would first read (up to
// 256 KiB of) the unread body, at whatever pace the client sends it.
func refuse(w http.ResponseWriter, r *http.Request, code int, msg string) {
	if r.ContentLength != 0 {
		w.Header().Set("Connection", "close")
	}
	writeJSON(w, code, apiError{msg})
}

// crossOrigin refuses state-changing requests a browser sent from another
// site (Sec-Fetch-Site, else Origin against Host): a page open in the
// operator's browser must not enqueue, pause or delete through the
// browser's cached credentials. Clients that are not browsers send neither
// header and pass.
func crossOrigin(next http.Handler) http.Handler {
	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		refuse(w, r, http.StatusForbidden, fmt.Sprintf("cross-origin %s refused", r.Method))
	}))
	return cop.Handler(next)
}
