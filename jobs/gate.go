package jobs

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// Env is what gating needs to know about a deployment. It is built from
// configuration by the caller; Gate itself reads nothing.
type Env struct {
	// Available holds the dependencies that are configured. Config is
	// always available, and BotRuntime is available whenever Redis is.
	Available Requirement
	// ChatLLMEnabled is background_scheduler_chat_llm_enabled.
	ChatLLMEnabled bool
	// Flags holds boolean config values by their original (lower-case)
	// name: opt-in flags and the ka_* switches. A missing flag is false.
	Flags map[string]bool
	// StarwikiLintIntervalMinutes is starwiki_lint_interval_minutes; nil
	// means its default. Like the original, any value (0 included) is
	// floored at 300 s.
	StarwikiLintIntervalMinutes *float64
	// KAOrgIntervalSeconds is ka_org_interval_seconds.
	KAOrgIntervalSeconds float64
	// KADedupIntervalSeconds paces limbic_dedup_task (a Go-port setting: the
	// original loop paced itself).
	KADedupIntervalSeconds float64
	// Implemented, when not nil, says which tasks this build can run; a task
	// it lacks is skipped with that reason. Nil means "all of them", which is
	// how the original's build_scheduler saw the world.
	Implemented map[string]bool
	// Intervals overrides the interval of tasks by name (TASK_INTERVALS);
	// zero disables the task.
	Intervals map[string]time.Duration
}

// Decision is the gating verdict for one task.
type Decision struct {
	Spec Spec
	// Interval is the effective interval (after overrides such as
	// starwiki_lint_interval_minutes).
	Interval   time.Duration
	Scheduled  bool
	SkipReason string
}

// minStarwikiLintInterval is the original's floor for starwiki_lint.
const minStarwikiLintInterval = 300 * time.Second

// Gate applies the original build_scheduler rules, plus the in-task
// ka_* switches, to every spec. It is pure: same inputs, same answer.
func Gate(specs []Spec, env Env) []Decision {
	out := make([]Decision, 0, len(specs))
	for _, s := range specs {
		d := Decision{Spec: s, Interval: effectiveInterval(s, env)}
		d.SkipReason = skipReason(s, env)
		d.Scheduled = d.SkipReason == ""
		out = append(out, d)
	}
	return out
}

// Missing returns the dependencies of s that available lacks. Config is
// always available and BotRuntime whenever Redis is; ChatLLM is a gate, not
// a dependency.
func (s Spec) Missing(available Requirement) Requirement {
	available |= Config
	if available.Has(Redis) {
		available |= BotRuntime
	}
	return s.All() &^ ChatLLM &^ available
}

func skipReason(s Spec, env Env) string {
	if missing := s.Missing(env.Available); missing != 0 {
		return "missing dependency: " + strings.Join(missing.Describe(), ", ")
	}
	if s.Requires.Has(ChatLLM) && !env.ChatLLMEnabled {
		return "chat-LLM tasks are disabled (BACKGROUND_SCHEDULER_CHAT_LLM_ENABLED=false)"
	}
	if s.OptInFlag != "" && !env.Flags[s.OptInFlag] {
		return fmt.Sprintf("opt-in flag %s is off", strings.ToUpper(s.OptInFlag))
	}
	if s.EnabledBy != "" && !env.Flags[s.EnabledBy] {
		return fmt.Sprintf("switched off by %s=false", strings.ToUpper(s.EnabledBy))
	}
	if d, ok := env.Intervals[s.Name]; ok && d == 0 {
		return "disabled by TASK_INTERVALS"
	}
	if env.Implemented != nil && !env.Implemented[s.Name] {
		return "no handler for this task in this build yet"
	}
	return ""
}

var dependencySettings = map[Requirement]string{
	Redis:      "redis (REDIS_URL)",
	KG:         "knowledge graph (FALKORDB_URL)",
	LLM:        "LLM client (LLM_BASE_URL)",
	BotRuntime: "bot runtime (REDIS_URL)",
	Platform:   "chat platform (DISCORD_BOT_TOKEN or MATRIX_HOMESERVER_URL + MATRIX_ACCESS_TOKEN)",
	GeminiKeys: "Gemini key pool (GEMINI_API_KEYS)",
	Embeddings: "embeddings endpoint (EMBEDDINGS_BASE_URL or LLM_BASE_URL)",
}

// Describe names each dependency in r with the settings that provide it,
// for messages that tell an operator what to configure.
func (r Requirement) Describe() []string {
	var parts []string
	for _, n := range requirementNames {
		if r.Has(n.r) {
			if d, ok := dependencySettings[n.r]; ok {
				parts = append(parts, d)
			} else {
				parts = append(parts, n.name)
			}
		}
	}
	return parts
}

func effectiveInterval(s Spec, env Env) time.Duration {
	if d, ok := env.Intervals[s.Name]; ok && d > 0 {
		if s.Name == StarwikiLint {
			return max(d, minStarwikiLintInterval) // the original's floor holds for overrides too
		}
		return d
	}
	switch s.Name {
	case StarwikiLint:
		minutes := float64(DefaultStarwikiLintMinute)
		if env.StarwikiLintIntervalMinutes != nil {
			minutes = *env.StarwikiLintIntervalMinutes
		}
		return max(seconds(minutes*60), minStarwikiLintInterval)
	case LimbicOrg:
		if env.KAOrgIntervalSeconds > 0 {
			return seconds(env.KAOrgIntervalSeconds)
		}
	case LimbicDedup:
		if env.KADedupIntervalSeconds > 0 {
			return seconds(env.KADedupIntervalSeconds)
		}
	}
	return s.Interval
}

func seconds(f float64) time.Duration {
	if f > math.MaxInt64/float64(time.Second) {
		return time.Duration(math.MaxInt64)
	}
	return time.Duration(f * float64(time.Second))
}
