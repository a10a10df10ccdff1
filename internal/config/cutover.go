package config

import (
	"strings"
	"time"
)

// DefaultSGLeaderKey is the Python TaskSupervisor's default leader key
// (its SG_LEADER_KEY).
const DefaultSGLeaderKey = "sg:leader:supervisor"

// Window is a duration setting that may be turned off: "0" and "off" are
// zero, anything else is a positive duration ("720h", or seconds).
type Window time.Duration

// UnmarshalText implements encoding.TextUnmarshaler.
func (w *Window) UnmarshalText(b []byte) error {
	s := strings.TrimSpace(string(b))
	if s == "0" || strings.EqualFold(s, "off") {
		*w = 0
		return nil
	}
	d, err := parseDuration(s)
	if err != nil {
		return err
	}
	*w = Window(d)
	return nil
}

// Duration is the window as a time.Duration (0: off).
func (w Window) Duration() time.Duration { return time.Duration(w) }

// LegacyLeaseKey is the Python supervisor's leader key the supervised tasks
// defer to, or "" when they defer to none (LEGACY_COEXISTENCE=false).
// LEGACY_LEADER_KEY, the older name, wins when set.
func (c Config) LegacyLeaseKey() string {
	switch {
	case !c.LegacyCoexistence:
		return ""
	case c.LegacyLeaderKey != "":
		return c.LegacyLeaderKey
	}
	return c.SGLeaderKey
}

// LegacyRunStandDown is how long after the cut-over started a Python run
// stands the Go task down (0: never).
func (c Config) LegacyRunStandDown() time.Duration {
	if !c.LegacyCoexistence {
		return 0
	}
	return c.LegacyRunStandDownWindow.Duration()
}

// checkCutover refuses an alias that contradicts the key it stands for.
func (c Config) checkCutover() error {
	if c.LegacyLeaderKey != "" && c.SGLeaderKey != DefaultSGLeaderKey && c.SGLeaderKey != c.LegacyLeaderKey {
		return &Error{Setting: "LEGACY_LEADER_KEY", Reason: "is the older name of SG_LEADER_KEY and names another key (" +
			c.LegacyLeaderKey + " vs " + c.SGLeaderKey + "); set only SG_LEADER_KEY"}
	}
	if strings.TrimSpace(c.SGLeaderKey) == "" {
		return &Error{Setting: "SG_LEADER_KEY", Reason: "must not be blank; LEGACY_COEXISTENCE=false turns the lease check off"}
	}
	return nil
}
