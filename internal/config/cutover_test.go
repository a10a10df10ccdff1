package config

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

// With no setting at all the workers honour the bot's own SG_LEADER_KEY
// default and stand down for Python runs for 30 days.
func TestCoexistenceIsOnByDefault(t *testing.T) {
	c, err := Load(env(nil), nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.LegacyLeaseKey() != "sg:leader:supervisor" || c.LegacyRunStandDown() != 720*time.Hour {
		t.Errorf("lease key %q, stand-down window %v; want sg:leader:supervisor and 720h", c.LegacyLeaseKey(), c.LegacyRunStandDown())
	}
}

func TestCoexistenceSettings(t *testing.T) {
	for _, tt := range []struct {
		name   string
		env    map[string]string
		key    string
		window time.Duration
	}{
		{"the bot's variable", map[string]string{"SG_LEADER_KEY": "sg:leader:blue"}, "sg:leader:blue", 720 * time.Hour},
		{"the older name", map[string]string{"LEGACY_LEADER_KEY": "sg:leader:old"}, "sg:leader:old", 720 * time.Hour},
		{"both, the same", map[string]string{"LEGACY_LEADER_KEY": "k", "SG_LEADER_KEY": "k"}, "k", 720 * time.Hour},
		{"opted out", map[string]string{"LEGACY_COEXISTENCE": "false", "SG_LEADER_KEY": "k"}, "", 0},
		{"stand down off", map[string]string{"LEGACY_RUN_STAND_DOWN_WINDOW": "off"}, "sg:leader:supervisor", 0},
		{"stand down 0", map[string]string{"LEGACY_RUN_STAND_DOWN_WINDOW": "0"}, "sg:leader:supervisor", 0},
		{"a week", map[string]string{"LEGACY_RUN_STAND_DOWN_WINDOW": "168h"}, "sg:leader:supervisor", 168 * time.Hour},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Load(env(tt.env), nil, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if c.LegacyLeaseKey() != tt.key || c.LegacyRunStandDown() != tt.window {
				t.Errorf("lease key %q, window %v; want %q, %v", c.LegacyLeaseKey(), c.LegacyRunStandDown(), tt.key, tt.window)
			}
		})
	}
}

func TestCoexistenceMistakesStopStartupNamingTheSetting(t *testing.T) {
	for _, tt := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"LEGACY_LEADER_KEY": "a", "SG_LEADER_KEY": "b"}, "LEGACY_LEADER_KEY"},
		{map[string]string{"SG_LEADER_KEY": "   "}, "SG_LEADER_KEY"},
		{map[string]string{"LEGACY_RUN_STAND_DOWN_WINDOW": "a month"}, "LEGACY_RUN_STAND_DOWN_WINDOW"},
		{map[string]string{"LEGACY_RUN_STAND_DOWN_WINDOW": "-1h"}, "LEGACY_RUN_STAND_DOWN_WINDOW"},
		{map[string]string{"LEGACY_COEXISTENCE": "sometimes"}, "LEGACY_COEXISTENCE"},
	} {
		_, err := Load(env(tt.env), nil, io.Discard)
		var ce *Error
		if !errors.As(err, &ce) || ce.Setting != tt.want || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: error %v, want one naming %s", tt.env, err, tt.want)
		}
	}
}
