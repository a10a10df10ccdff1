package asynqcompat

import (
	"log/slog"
	"runtime/debug"
	"slices"
)

// asynqModule is asynq's module path.
const asynqModule = "github.com/hibiken/asynq"

// CoveredVersions are the asynq versions the contract tests were run
// against. Add a version only after running them (go test
// ./internal/queue/asynqcompat) with it pinned in go.mod.
var CoveredVersions = []string{"v0.26.0"}

// LinkedVersion returns the asynq version in bi ("" if bi lists no asynq,
// as in test binaries), following a replace directive.
func LinkedVersion(bi *debug.BuildInfo) string {
	if bi == nil {
		return ""
	}
	for _, d := range bi.Deps {
		if d.Path != asynqModule {
			continue
		}
		if d.Replace != nil {
			if d.Replace.Version == "" {
				return "(local replace " + d.Replace.Path + ")"
			}
			return d.Replace.Version
		}
		return d.Version
	}
	return ""
}

// Covered reports whether the contract tests cover version.
func Covered(version string) bool { return slices.Contains(CoveredVersions, version) }

// Gate checks, at startup, the asynq version linked into this binary. If
// the contract tests do not cover it, it says so in one log line and
// returns false: the caller then turns fast lease recovery and the
// unique-lock and subscriber workarounds off, and the worker runs on
// asynq's own behaviour.
func Gate(log *slog.Logger) bool {
	bi, _ := debug.ReadBuildInfo()
	v := LinkedVersion(bi)
	if Covered(v) {
		return true
	}
	if v == "" {
		v = "unknown (the binary records no module versions)"
	}
	log.Warn("asynq version not covered by the asynqcompat contract tests: fast lease recovery and the unique-lock workarounds are off; asynq's own recovery (60-120 s after a worker dies) and enqueue-lock TTLs apply",
		"asynq_version", v, "covered", CoveredVersions)
	return false
}
