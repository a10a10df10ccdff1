// Package legacy is the Go side's watch on the Python scheduler during a
// cut-over: where the original registers each task (from its docstrings),
// a detector that recognises the original's scheduler_task_run events on
// the debug channel, the record of those runs in Redis that makes a Go
// occurrence stand down, and the hand-over point from which the
// cursor-driven tasks start. docs/migration.md explains the cut-over.
package legacy

import (
	"slices"
	"strings"

	"github.com/stargazer/stargazer-jobs/jobs"
)

// The places the original schedules background work.
const (
	// BuildScheduler is background_tasks.build_scheduler, which registers
	// every @background_task on a BackgroundScheduler.
	BuildScheduler = "build_scheduler"
	// The service entry points that own a scheduler and register tasks on
	// it explicitly (BackgroundScheduler.__init__'s docstring), besides
	// build_scheduler.
	AgentsMain        = "agents_main.py"
	InferenceMain     = "inference_main.py"
	ConsolidationMain = "consolidation_main.py"
)

// Services are the places that schedule background work in the original,
// in the order docs/migration.md removes them.
var services = []string{BuildScheduler, AgentsMain, InferenceMain, ConsolidationMain}

// Services returns the places that schedule background work in the
// original.
func Services() []string { return slices.Clone(services) }

// Registration is one place the original registers a task.
type Registration struct {
	// Task is the Go catalog's name.
	Task string
	// Service is BuildScheduler or the entry point that registers it.
	Service string
	// As is the name it is registered under, which its scheduler_task_run
	// events carry (payload "task"); "" for the TaskSupervisor loops,
	// which publish none.
	As string
	// Supervisor: registered on the leader-elected TaskSupervisor rather
	// than a BackgroundScheduler.
	Supervisor bool
}

// registrations is what the reference module's docstrings say
// (internal/testkit/original; the test of this package checks it against
// the text): every @background_task is registered by build_scheduler
// under its registry name, and these are registered again explicitly.
var registrations = []Registration{
	{Task: jobs.ScheduledPromptTick, Service: AgentsMain, As: jobs.ScheduledPromptTick},
	{Task: jobs.ScheduledPromptCleanup, Service: AgentsMain, As: jobs.ScheduledPromptCleanup},
	{Task: jobs.AutoKGExtraction, Service: AgentsMain, As: jobs.AutoKGExtraction},
	{Task: jobs.ChannelSummarization, Service: AgentsMain, As: jobs.ChannelSummarization},
	{Task: jobs.KGConsolidation, Service: ConsolidationMain, As: "kg_consolidation"},
	{Task: jobs.KGDecay, Service: ConsolidationMain, As: "kg_decay"},
	{Task: jobs.JournalStream, Service: AgentsMain, As: jobs.JournalStream},
	{Task: jobs.LogRAGIngest, Service: AgentsMain, As: jobs.LogRAGIngest},
	{Task: jobs.GeminiKeyProbe, Service: AgentsMain, As: jobs.GeminiKeyProbe},
	{Task: jobs.AgenticKGBulkIncremental, Service: AgentsMain, As: jobs.AgenticKGBulkIncremental},
	{Task: jobs.AnamnesisDigest, Service: AgentsMain, As: jobs.AnamnesisDigest},
	{Task: jobs.ChannelHeartbeat, Service: InferenceMain, As: jobs.ChannelHeartbeat},
	{Task: jobs.StarwikiLint, Service: AgentsMain, As: jobs.StarwikiLint},
	{Task: jobs.LimbicAnchoringWorker, Service: AgentsMain, As: jobs.LimbicAnchoringWorker},
	{Task: jobs.LimbicSunsetProcessor, Service: AgentsMain, As: jobs.LimbicSunsetProcessor},
	{Task: jobs.LimbicDedup, Service: AgentsMain, Supervisor: true},
	{Task: jobs.LimbicOrg, Service: AgentsMain, Supervisor: true},
}

// decorated are the tasks build_scheduler registers (the @background_task
// functions), under the catalog's name.
var decorated = []string{
	jobs.ScheduledPromptTick, jobs.ScheduledPromptCleanup, jobs.AutoKGExtraction, jobs.ChannelSummarization,
	jobs.KGConsolidation, jobs.KGDecay, jobs.JournalStream, jobs.LogRAGIngest, jobs.GeminiKeyProbe,
	jobs.AgenticKGBulkIncremental, jobs.AnamnesisDigest, jobs.ChannelHeartbeat, jobs.StarwikiLint,
	jobs.LimbicAnchoringWorker, jobs.LimbicSunsetProcessor, jobs.LimbicMaintenance,
}

// Registrations lists every place the original registers task, build_scheduler
// first.
func Registrations(task string) []Registration {
	var out []Registration
	if slices.Contains(decorated, task) {
		out = append(out, Registration{Task: task, Service: BuildScheduler, As: task})
	}
	for _, r := range registrations {
		if r.Task == task {
			out = append(out, r)
		}
	}
	return out
}

// TaskFor maps a name the original's scheduler_task_run events carry to
// the Go task, and reports the registrations that use that name.
func TaskFor(name string) (string, []Registration, bool) {
	if slices.Contains(decorated, name) {
		var out []Registration
		for _, r := range Registrations(name) {
			if r.As == name {
				out = append(out, r)
			}
		}
		return name, out, true
	}
	for _, r := range registrations {
		if r.As != "" && r.As == name {
			return r.Task, []Registration{r}, true
		}
	}
	return "", nil, false
}

// RegisteredBy names, for an operator, every place that registers task:
// "build_scheduler, consolidation_main.py (as kg_decay)".
func RegisteredBy(task string) string {
	var parts []string
	for _, r := range Registrations(task) {
		s := r.Service
		switch {
		case r.Supervisor:
			s += " (TaskSupervisor)"
		case r.As != task:
			s += " (as " + r.As + ")"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ", ")
}
