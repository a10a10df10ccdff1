package monitor

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"
)

// Auth holds the credentials that protect the dashboard and the API, for
// two roles. The admin credential (a bearer token, basic-auth credentials,
// or both) may do everything; the view-only one may read the dashboard and
// gets 403 on every state change (the dashboard's actions and POST
// /api/v1/tasks).
type Auth struct {
	Token    string
	User     string
	Password string

	ViewToken    string
	ViewUser     string
	ViewPassword string
}

// Enabled reports whether any credential is configured. Without one every
// client is an admin, so the worker binds to loopback only.
func (a Auth) Enabled() bool {
	return a.Token != "" || (a.User != "" && a.Password != "") ||
		a.ViewToken != "" || (a.ViewUser != "" && a.ViewPassword != "")
}

// basic reports whether a basic-auth credential is configured, so a
// refusal offers the browser's login prompt.
func (a Auth) basic() bool { return a.User != "" || a.ViewUser != "" }

// role is what a request's credentials allow.
type role int

const (
	roleNone role = iota
	roleView
	roleAdmin
)

// equal compares in constant time, whatever the lengths.
func equal(a, b string) bool {
	ha, hb := sha256.Sum256([]byte(a)), sha256.Sum256([]byte(b))
	return subtle.ConstantTimeCompare(ha[:], hb[:]) == 1
}

// bearer returns the token of an "Authorization: Bearer" header; the
// scheme is case-insensitive (RFC 9110, section 11.1).
func bearer(r *http.Request) (string, bool) {
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}

// MinStrongTokenLength is the length from which a bearer token is taken to
// be too strong to guess: 32 random hexadecimal characters are 128 bits.
// Such a token is checked even from an address throttled for failed
// authentications, so an attacker guessing from an operator's address (a
// shared proxy, a NAT) does not lock the operator out. Letting a right
// credential through a throttle tells a guesser at full speed which guess
// was right (200) and which was wrong (429), which defeats the throttle for
// anything guessable: so shorter tokens and basic-auth passwords (which
// people choose, and browsers prompt for) wait like every other request
// from the address.
const MinStrongTokenLength = 32

// WeakTokens names the configured bearer-token settings shorter than
// MinStrongTokenLength, for a warning at startup.
func (a Auth) WeakTokens() []string {
	var out []string
	if a.Token != "" && len(a.Token) < MinStrongTokenLength {
		out = append(out, "MONITOR_TOKEN")
	}
	if a.ViewToken != "" && len(a.ViewToken) < MinStrongTokenLength {
		out = append(out, "MONITOR_VIEW_TOKEN")
	}
	return out
}

// strongRole is role for a request from a throttled address: only bearer
// tokens of at least MinStrongTokenLength are checked. evaluated reports
// whether a token was compared at all, so that a wrong one counts as a
// failure.
func (a Auth) strongRole(r *http.Request) (_ role, evaluated bool) {
	tok, ok := bearer(r)
	strong := func(s string) bool { return len(s) >= MinStrongTokenLength }
	if !ok || !(strong(a.Token) || strong(a.ViewToken)) {
		return roleNone, false
	}
	admin := strong(a.Token) && equal(tok, a.Token)
	view := strong(a.ViewToken) && equal(tok, a.ViewToken)
	switch {
	case admin:
		return roleAdmin, true
	case view:
		return roleView, true
	}
	return roleNone, true
}

// role checks every configured credential (no early exit, so the time
// taken does not tell which one nearly matched). The admin credential wins
// over the view-only one.
func (a Auth) role(r *http.Request) role {
	if !a.Enabled() {
		return roleAdmin
	}
	admin, view := false, false
	if tok, ok := bearer(r); ok {
		admin = a.Token != "" && equal(tok, a.Token)
		view = a.ViewToken != "" && equal(tok, a.ViewToken)
	} else if u, p, ok := r.BasicAuth(); ok {
		admin = a.User != "" && a.Password != "" && equal(u, a.User) && equal(p, a.Password)
		view = a.ViewUser != "" && a.ViewPassword != "" && equal(u, a.ViewUser) && equal(p, a.ViewPassword)
	}
	switch {
	case admin:
		return roleAdmin
	case view:
		return roleView
	}
	return roleNone
}
