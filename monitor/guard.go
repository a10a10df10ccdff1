package monitor

import (
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// guard is what stands before the dashboard and the API: the cross-origin
// check, failed-authentication throttling, authentication and roles, all
// decided from the request line and headers before anything reads a body.
type guard struct {
	auth     Auth
	readOnly bool
	throttle *throttle
	// log gets one line when an address runs out of guesses (at most one
	// per address per AuthThrottleLogInterval); nil logs nothing.
	log *slog.Logger
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
	return g.protectFor(area, false, next)
}

// protectAdmin is protect for an area only the admin credential may read
// (the goroutine dump: it shows task payloads' fragments, addresses and the
// code's state). It changes nothing, so a read-only monitor serves it too.
func (g *guard) protectAdmin(area string, next http.Handler) http.Handler {
	return g.protectFor(area, true, next)
}

func (g *guard) protectFor(area string, adminOnly bool, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		role := roleAdmin
		if g.auth.Enabled() {
			key := clientKey(r)
			if wait := g.throttle.wait(key); wait > 0 {
				// Only a token too strong to guess is checked here (see
				// MinStrongTokenLength); a wrong one still counts.
				var evaluated bool
				if role, evaluated = g.auth.strongRole(r); role == roleNone {
					if evaluated {
						g.fail(key, area)
					}
					g.throttled.WithLabelValues(area).Inc()
					w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
					refuse(w, r, http.StatusTooManyRequests, "too many failed authentications from this address; retry later")
					return
				}
			} else if role = g.auth.role(r); role == roleNone {
				// Only a wrong credential is a guess: a browser's first,
				// credential-less request is not held against it.
				if r.Header.Get("Authorization") != "" {
					g.fail(key, area)
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
		if adminOnly && role != roleAdmin {
			refuse(w, r, http.StatusForbidden, "this credential is view-only: this endpoint is for the admin credential")
			return
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

// fail counts a failed authentication from key, and logs the address when
// it has just run out of guesses.
func (g *guard) fail(key netip.Prefix, area string) {
	ev, log := g.throttle.fail(key)
	if !log || g.log == nil {
		return
	}
	g.log.Warn("failed authentications throttled: requests from this address get 429 until a guess is allowed again",
		"addr", ev.key.String(), "area", area, "failures", ev.failures, "window", ev.window.Round(time.Millisecond).String(),
		"retry_after", ev.retryAfter.Round(time.Millisecond).String(), "log_interval", g.throttle.logEvery.String())
}

// refuse answers with an error before the body was read, and closes the
// connection at once: otherwise the server would read (up to 256 KiB of)
// the unread body first, at whatever pace the client sends it.
func refuse(w http.ResponseWriter, r *http.Request, code int, msg string) {
	unread := r.ContentLength != 0
	if unread {
		w.Header().Set("Connection", "close")
	}
	writeJSON(w, code, apiError{msg})
	if unread {
		// The answer is written before the server drains the body; a read
		// deadline in the past makes that drain fail at once.
		_ = http.NewResponseController(w).SetReadDeadline(time.Now())
	}
}

// maxPageSize bounds the dashboard API's page size: asynqmon reads a whole
// page from Redis into memory, and takes any size it is given.
const maxPageSize = 1000

// boundedPages refuses dashboard API listings of more than maxPageSize
// tasks.
func boundedPages(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s := r.URL.Query().Get("size"); s != "" {
			if n, err := strconv.Atoi(s); err != nil || n < 1 || n > maxPageSize {
				refuse(w, r, http.StatusBadRequest, fmt.Sprintf("size must be from 1 to %d", maxPageSize))
				return
			}
		}
		next.ServeHTTP(w, r)
	})
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
