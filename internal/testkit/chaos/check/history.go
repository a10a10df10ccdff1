// Package check holds the history of a chaos run and the checker that
// verifies it against the guarantees the docs promise (docs/reliability.md,
// "Chaos: random faults, all at once"). The history is what the run
// recorded: the fault schedule as executed, the worker processes, and what
// the workers logged (runs, scheduler occurrences, singleton leases,
// prompts fired, extraction batches committed), what the fakes of the
// external services logged, samples taken while it ran, and the state of
// Redis and the graph at its end. The checker is a pure function of it, so
// a history can be written by hand (the self-test) or saved and checked
// again.
package check

import "time"

// History is everything a chaos run recorded.
type History struct {
	Seed int64
	// Start is when the run started; Warm when the faults and the bot's
	// traffic began; FaultsEnd when the last fault was healed; End when
	// the quiet period ended and the final state was read.
	Start, Warm, FaultsEnd, End time.Time
	Config                      Config

	Faults []Fault
	Procs  []Proc

	// From the workers' logs.
	Runs        []Run
	Occurrences []Occurrence
	// Resumes are the deferred tasks a scheduler made due at once when
	// their hold lifted ("scheduler: deferred task resumed"): the grid
	// starts again from that moment.
	Resumes []Resume
	// Enqueued are the task IDs a scheduler enqueued ("scheduler:
	// enqueued"), with when.
	Enqueued    map[string]time.Time
	Leases      []LeaseEvent
	FireLogs    []Fire
	InvalidLogs []InvalidLog
	Commits     []Commit

	// Sampled while the run went on.
	LeaseSamples    []LeaseSample
	ResourceSamples []ResourceSample

	// What the bot wrote, and what the fakes saw.
	Prompts     []PromptSeed
	Messages    []Message
	Fragments   []string // RAG fragment keys appended during the run
	Deployments []Deployment
	Foreign     []ForeignRun
	LLMCalls    []LLMCall

	// Read at the end.
	Fires    []Fire // the fired stream
	Done     map[string]bool
	Poisoned map[string]bool
	// Graph and Reference are snapshots of the knowledge graph and of the
	// graph a fault-free extraction of the same fragments makes.
	Graph, Reference string
	// Stuck is what had not drained when the quiet period ended.
	Stuck []Stuck
	// PromptStatus is each seeded prompt's final status.
	PromptStatus map[string]string
}

// Config is the run's configuration the checker needs.
type Config struct {
	// Intervals of the periodic tasks, by name.
	Intervals map[string]time.Duration
	// Singletons names the singleton tasks.
	Singletons     map[string]bool
	SingletonLease time.Duration
	// MaxClockOffset is the largest clock offset a worker was given.
	MaxClockOffset time.Duration
	// Resource growth allowed in a surviving worker.
	MaxGoroutineGrowth, MaxFDGrowth, MaxConnGrowth int
}

// Fault kinds.
const (
	KindKill             = "kill"
	KindTerm             = "term"
	KindRedisKill        = "redis-kill"
	KindRedisPause       = "redis-pause"
	KindPartitionRedis   = "partition-redis"
	KindLatencyRedis     = "latency-redis"
	KindPartitionFalkor  = "partition-falkordb"
	KindLatencyFalkor    = "latency-falkordb"
	KindFalkorStall      = "falkordb-stall"
	KindLLM429           = "llm-429"
	KindLLM5xx           = "llm-5xx"
	KindLLMHang          = "llm-hang"
	KindMalformed        = "malformed"
	KindClock            = "clock"
	KindDeploy           = "deploy"
	KindForeignScheduler = "foreign-scheduler"
	// KindBudget spends the whole cluster's LLM budget at run time (the
	// run-time override of "*" set to 0 tokens, as `enqueuer budget set`
	// does), then lifts it.
	KindBudget = "budget"
)

// Kinds lists every fault kind, in the order reports show them.
var Kinds = []string{
	KindKill, KindTerm, KindRedisKill, KindRedisPause, KindPartitionRedis, KindLatencyRedis,
	KindPartitionFalkor, KindLatencyFalkor, KindFalkorStall, KindLLM429, KindLLM5xx, KindLLMHang,
	KindMalformed, KindClock, KindDeploy, KindForeignScheduler, KindBudget,
}

// Fault is one injected fault as executed.
type Fault struct {
	ID     int
	Kind   string
	Target string // a worker ("w2"), "redis", "falkordb", "llm", "bot", "cluster"
	// Start is when it was injected, End when it was healed (Start for an
	// instantaneous fault such as a SIGKILL, whose recovery is the
	// system's own).
	Start, End time.Time
	Detail     string
	// Offset is a clock fault's offset of its worker's clock.
	Offset time.Duration
	// Skipped says why a planned fault was not injected ("" if it was).
	Skipped string
}

// Proc is one incarnation of a process: a worker from its start to its
// end.
type Proc struct {
	Name       string // "w0".."wN", "node"
	Pid        int
	Start, End time.Time // End zero while it runs
	// Ended is how it ended: "killed", "terminated", "exited", or "" if it
	// was running at the end.
	Ended      string
	Deployment string
}

// Run is one attempt of a task on a worker: "task started" and "task
// finished" of the observe middleware.
type Run struct {
	Task, TaskID string
	Proc         string
	Pid          int
	Start, End   time.Time // End zero if it never finished (its worker died)
	Status       string    // ok, error, skipped, panic, invalid, not_found
	Err          string
	Archived     bool
}

// Occurrence is one due occurrence of a periodic task as the scheduler
// that moved the schedule on handled it ("scheduler: occurrence handled").
type Occurrence struct {
	Task    string
	Due     time.Time
	ID      string // task@due ms
	Outcome string // enqueued, duplicate, overlap, coalesced
	TaskID  string // the task ID enqueued, or the previous one it deferred to
	Missed  int    // occurrences before the next one coalesced into this
	At      time.Time
	Pid     int
}

// Resume is a deferred task made due at once, by the scheduler of Pid.
type Resume struct {
	Task string
	At   time.Time
	Pid  int
}

// LeaseEvent is a singleton lease taken, lost or released.
type LeaseEvent struct {
	Task, TaskID, Lease string
	Pid                 int
	Kind                string // taken, lost, released
	Held                bool   // released: whether it was still this run's
	At                  time.Time
}

// LeaseSample is a singleton lease seen in Redis.
type LeaseSample struct {
	At         time.Time
	Task       string
	Lease      string
	TTL        time.Duration
	Unreadable bool
}

// ResourceSample is one reading of a worker's goroutines, open file
// descriptors and TCP connections.
type ResourceSample struct {
	Proc                   string
	Pid                    int
	At                     time.Time
	Goroutines, FDs, Conns int
}

// PromptSeed is a scheduled prompt the bot wrote.
type PromptSeed struct {
	ID       string
	FireAt   time.Time
	Interval time.Duration
	EndAt    time.Time
	// Malformed says how the record is broken ("" for a valid prompt).
	Malformed string
	AddedAt   time.Time
}

// Fire is one fired prompt occurrence.
type Fire struct {
	PromptID     string
	ScheduledFor time.Time
	Occurrence   int
	// FiredAt is the worker's clock when it fired (the stream's
	// fired_at); At is when it was logged, on the real clock.
	FiredAt, At time.Time
	StreamID    string
	Pid         int
}

// InvalidLog is a prompt the tick reported invalid.
type InvalidLog struct {
	PromptID, Reason string
	At               time.Time
}

// Commit is an extraction batch committed to the ledger.
type Commit struct {
	Batch     string
	Fragments []string
	Recovered bool
	At        time.Time
	Pid       int
}

// Message is a chat message the bot cached.
type Message struct {
	Key  string
	Time time.Time
	// Expect: it must be extracted (a user's message with something to
	// extract, after the hand-over point).
	Expect bool
}

// Deployment is a rollout: every worker started from it has its
// DEPLOYMENT_ID.
type Deployment struct {
	ID    string
	Start time.Time
}

// ForeignRun is a scheduler_task_run event of the Python scheduler, as
// the stand-in published it.
type ForeignRun struct {
	At   time.Time
	Task string
	// StandDownUntil is what the workers recorded for it (zero: none
	// recorded it, e.g. every worker was cut off from Redis).
	StandDownUntil time.Time
}

// LLMCall is one call the LLM fake answered.
type LLMCall struct {
	// At is when the call arrived.
	At      time.Time
	Service string // llm (chat/completions) or embeddings
	Purpose string // extraction, chat, embeddings
	Status  int
	Fault   string
	// RetryAfter is a 429's Retry-After.
	RetryAfter time.Duration
}

// Stuck is something that had not drained at the end of the quiet
// period: a task still queued, active without a live worker, retrying; a
// prompt or a fragment still waiting.
type Stuck struct {
	What, ID, Detail string
}
