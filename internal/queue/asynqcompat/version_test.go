package asynqcompat

import (
	"bytes"
	"log/slog"
	"runtime/debug"
	"strings"
	"testing"
)

func TestOnlyTheVersionsTheContractTestsCoverAreTrusted(t *testing.T) {
	dep := func(v string, replace *debug.Module) *debug.BuildInfo {
		return &debug.BuildInfo{Deps: []*debug.Module{
			{Path: "github.com/redis/go-redis/v9", Version: "v9.23.0"},
			{Path: "github.com/hibiken/asynq", Version: v, Replace: replace},
		}}
	}
	tests := []struct {
		name    string
		bi      *debug.BuildInfo
		version string
		covered bool
	}{
		{"the pinned version", dep("v0.26.0", nil), "v0.26.0", true},
		{"a later release", dep("v0.27.0", nil), "v0.27.0", false},
		{"an earlier release", dep("v0.25.1", nil), "v0.25.1", false},
		{"a pseudo-version of master", dep("v0.26.1-0.20260514000000-785bb72abcde", nil), "v0.26.1-0.20260514000000-785bb72abcde", false},
		{"replaced by a fork at the covered version", dep("v0.27.0", &debug.Module{Path: "example.com/fork/asynq", Version: "v0.26.0"}), "v0.26.0", true},
		{"replaced by a local directory", dep("v0.26.0", &debug.Module{Path: "../asynq"}), "(local replace ../asynq)", false},
		{"no asynq in the build info (a test binary)", &debug.BuildInfo{}, "", false},
		{"no build info", nil, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := LinkedVersion(tt.bi)
			if v != tt.version || Covered(v) != tt.covered {
				t.Errorf("LinkedVersion = %q (covered %v), want %q (covered %v)", v, Covered(v), tt.version, tt.covered)
			}
		})
	}
}

// A version the contract tests do not cover is refused with one log line;
// the caller then leaves asynq's private layout alone
// (server.Options.SkipAsynqWorkarounds, periodic.Config's, no recoverer).
func TestAnUncoveredVersionIsRefusedWithOneLogLine(t *testing.T) {
	var buf bytes.Buffer
	// A test binary records no module versions: Gate must refuse.
	if Gate(slog.New(slog.NewJSONHandler(&buf, nil))) {
		t.Fatal("Gate trusted an unknown asynq version")
	}
	if lines := strings.Count(buf.String(), "\n"); lines != 1 || !strings.Contains(buf.String(), "fast lease recovery") {
		t.Errorf("%d log lines: %s", lines, buf.String())
	}
}
