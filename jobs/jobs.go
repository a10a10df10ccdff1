// Package jobs describes Stargazer's background tasks as data: their names,
// cadences, dependencies, gating flags, queues, retry policies and payloads.
//
// The catalog is a plain table (see Catalog) so that the worker, the
// scheduler, the enqueuer CLI and the tests all read one source of truth;
// nothing registers itself at import time.
package jobs

import (
	"strings"
	"time"
)

// Requirement is a set of dependencies a task needs before it may run.
type Requirement uint16

// The dependencies of the original build_scheduler, plus the ones the Go
// handlers need beyond them.
const (
	// Redis is the bot's Redis (message cache, prompts, summaries).
	Redis Requirement = 1 << iota
	// KG is the FalkorDB knowledge graph.
	KG
	// LLM is an OpenAI-compatible chat/completions endpoint (the original's
	// "openrouter" client).
	LLM
	// BotRuntime stood for the bot runner object in the original. In the Go
	// port the bot's runtime state lives in Redis, so it is available exactly
	// when Redis is; what a task used the runner for beyond that is listed
	// explicitly in Spec.Needs.
	BotRuntime
	// Config means the task reads configuration. Always available.
	Config
	// ChatLLM marks a task gated by background_scheduler_chat_llm_enabled.
	ChatLLM
	// Platform is a chat platform API (Discord bot token or Matrix access token).
	Platform
	// GeminiKeys is the shared Gemini API key pool.
	GeminiKeys
	// Embeddings is an OpenAI-compatible embeddings endpoint.
	Embeddings
)

var requirementNames = []struct {
	r    Requirement
	name string
}{
	{Redis, "redis"},
	{KG, "kg"},
	{LLM, "llm"},
	{BotRuntime, "bot_runtime"},
	{Config, "config"},
	{ChatLLM, "chat_llm"},
	{Platform, "platform"},
	{GeminiKeys, "gemini_keys"},
	{Embeddings, "embeddings"},
}

// Has reports whether every dependency of o is in r.
func (r Requirement) Has(o Requirement) bool { return r&o == o }

// Names lists the dependencies in r in a fixed order.
func (r Requirement) Names() []string {
	names := []string{}
	for _, n := range requirementNames {
		if r.Has(n.r) {
			names = append(names, n.name)
		}
	}
	return names
}

func (r Requirement) String() string { return strings.Join(r.Names(), ",") }

// Kind says how a task is driven.
type Kind string

const (
	// Periodic tasks are enqueued by the scheduler once per interval.
	Periodic Kind = "periodic"
	// Supervised tasks were long-lived loops under the original's
	// leader-elected TaskSupervisor; here each pass is a singleton task that
	// the scheduler enqueues at the loop's own pace.
	Supervised Kind = "supervised"
	// Startup tasks run once when a deployment starts.
	Startup Kind = "startup"
	// NodeLocal tasks run in every node agent (ROLE=node) and every worker,
	// each on its own node, restarted Interval after they end: they serve
	// the machine they run on (its journal). They are never queued.
	NodeLocal Kind = "node_local"
	// Child tasks are enqueued by other tasks (one step of a fan-out, a
	// batch of the embedding queue) or by hand, never by the scheduler.
	Child Kind = "child"
)

// Queue names. Weights are in Queues.
const (
	QueueCritical    = "critical"
	QueueDefault     = "default"
	QueueMaintenance = "maintenance"
	// QueueEmbeddings holds the embedding queue, at the lowest weight so a
	// large backfill cannot starve the other queues.
	QueueEmbeddings = "embeddings"
	// QueueExtraction holds the extraction units (kg_extract_unit): a
	// backlog of hundreds of units must not sit in front of the default
	// queue's tasks (FIFO within a queue), and its weight keeps it from
	// starving them.
	QueueExtraction = "extraction"
)

// Queues maps each queue to its asynq priority weight: scheduled prompts are
// user-visible and must not wait behind hours-long graph maintenance.
func Queues() map[string]int {
	return map[string]int{
		QueueCritical:    6,
		QueueDefault:     3,
		QueueMaintenance: 1,
		QueueEmbeddings:  1,
		QueueExtraction:  2,
	}
}

// Spec describes one background task.
type Spec struct {
	// Name is the task's name in the original registry (the decorator's
	// name= or the function's name); it is also the asynq task type.
	Name string
	Kind Kind
	// Interval and InitialDelay are the original's, to the second. A zero
	// Interval means the task is not periodic (Startup).
	Interval     time.Duration
	InitialDelay time.Duration
	// Requires holds the original's requires_* flags.
	Requires Requirement
	// Needs holds dependencies the Go handler has beyond Requires, typically
	// what the original reached through the bot runner object.
	Needs Requirement
	// OptInFlag is the original's opt_in_config_flag: a config flag that must
	// be true for the task to be scheduled.
	OptInFlag string
	// EnabledBy is a config switch the original checked inside the task
	// (ka_enabled and friends); the Go port gates on it up front instead.
	EnabledBy string
	// Singleton tasks never run twice at once anywhere in the cluster.
	Singleton bool
	Queue     string
	MaxRetry  int
	Timeout   time.Duration
	// NewPayload returns the task's payload with its defaults filled in.
	NewPayload func() Payload
	Summary    string
}

// All returns every dependency the task needs, original and Go-side.
func (s Spec) All() Requirement { return s.Requires | s.Needs }

// Declares reports whether the task declares every dependency of r, in
// Requires or Needs: the handlers may use only what their task declares, so
// gating and registration know everything a handler reaches for.
func (s Spec) Declares(r Requirement) bool { return s.All().Has(r) }

// UniqueTTL is how long asynq's enqueue lock of a singleton lasts: long
// enough to cover every attempt and a crash recovery. The worker releases it
// early when a run ends for good, and asynq releases it on success.
func (s Spec) UniqueTTL() time.Duration {
	return s.Timeout*time.Duration(s.MaxRetry+1) + 10*time.Minute
}
