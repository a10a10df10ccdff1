// Package cursors knows where every cursor-driven task stands: per task and
// source its position, where it starts after a cut-over from the Python
// scheduler (and the bound on that), and how an operator sets a position by
// hand (`enqueuer cursors`). The handlers read and move their own cursors;
// the keys are declared here so that both sides name the same ones.
package cursors

import (
	"slices"

	"github.com/stargazer/stargazer-jobs/jobs"
)

// Keys of the cursors (docs/data-model.md).
const (
	// AnamnesisKey holds the index in the RAG fragment store of the next
	// fragment anamnesis_digest digests.
	AnamnesisKey = "sgjobs:anamnesis:cursor"
	// ExtractionPrefix, AnchoringPrefix and BulkPrefix + "<platform>:<channel
	// id>" are the channel cursor hashes (ts, key, updated_at) of
	// auto_kg_extraction, limbic_anchoring_worker and
	// agentic_kg_bulk_incremental.
	ExtractionPrefix = "sgjobs:kgx:cursor:"
	AnchoringPrefix  = "sg:ka:cursor:"
	BulkPrefix       = "sgjobs:kgbulk:cursor:"
	// SunsetDoneKey is the sorted set of the UTC days (YYYY-MM-DD) whose
	// epoch limbic_sunset_processor synthesised, score = when (ms).
	SunsetDoneKey = "sgjobs:sunset:done"
	// SunsetLookbackDays: a sunset pass catches up on missed days this far
	// back and no further.
	SunsetLookbackDays = 7
)

// Kind is the shape of a task's position.
type Kind string

// The kinds of positions.
const (
	// Index: one index into an append-only list (anamnesis_digest).
	Index Kind = "index"
	// Channel: per channel, a place in its message set.
	Channel Kind = "channel"
	// Journal: per node and unit, a systemd journal cursor.
	Journal Kind = "journal"
	// Days: the days done, up to a day.
	Days Kind = "days"
	// Watermark: per channel, the time of the newest message a note
	// covers (summaries, heartbeats).
	Watermark Kind = "watermark"
)

// Task is one cursor-driven task.
type Task struct {
	Name string
	Kind Kind
	// Sources and Positions say, for usage messages, what a source and a
	// position are.
	Sources, Positions string
	// First is where the task starts when it has no position yet, after a
	// cut-over (LEGACY_COEXISTENCE on), and the bound on it; Fresh where
	// it starts with no Python side (LEGACY_COEXISTENCE=false).
	First, Fresh string
	// Items names what a position leaves to process.
	Items string

	// prefix of the channel cursors, or key of the watermark hashes.
	prefix string
	// planner: the task plans units over a segment chain (internal/kg/plan).
	planner bool
	// PerRun bounds the messages a watermark task reads per channel and
	// run (0: no such bound).
	PerRun int
}

const (
	channelPositions = "now, latest (the newest message), now-DURATION (e.g. now-2h), an RFC 3339 time (2026-05-04T12:00:00Z) or Unix milliseconds"
	channelSources   = "<platform>:<channel id> or all"
)

var tasks = []Task{
	{Name: jobs.AnamnesisDigest, Kind: Index, Sources: "fragments", Positions: "a fragment index from 0 to the store's length, start or end",
		First: "the end of the RAG fragment store when its first run finds no cursor: 0 fragments of history",
		Fresh: "the first fragment (the whole store, 60 fragments a run)", Items: "fragments"},
	{Name: jobs.LimbicAnchoringWorker, Kind: Channel, Sources: channelSources, Positions: channelPositions,
		First: "per channel, max(now - 1 h, hand-over point = its first Go pass: the Python loop ran in real time): no history",
		Fresh: "per channel, 1 h back", Items: "messages", prefix: AnchoringPrefix, planner: true},
	{Name: jobs.AutoKGExtraction, Kind: Channel, Sources: channelSources, Positions: channelPositions,
		First: "per channel, max(now - 24 h, hand-over point = the start of the last Python run seen, else its first Go pass): at most the messages since the Python side's last run",
		Fresh: "per channel, 24 h back", Items: "messages", prefix: ExtractionPrefix, planner: true},
	{Name: jobs.AgenticKGBulkIncremental, Kind: Channel, Sources: channelSources, Positions: channelPositions,
		First: "per channel, its newest message (bootstrap latest, as the original): no history",
		Fresh: "the same", Items: "messages", prefix: BulkPrefix},
	{Name: jobs.LogRAGIngest, Kind: Journal, Sources: "<node>:<unit>", Positions: "a journal cursor (journalctl --show-cursor), or a time: now, now-DURATION, RFC 3339, Unix milliseconds",
		First: "per node, max(now - 6 h, hand-over point = the start of the last Python run seen, else its first Go run)",
		Fresh: "per node, 6 h back", Items: "journal lines"},
	{Name: jobs.LimbicSunsetProcessor, Kind: Days, Sources: "days", Positions: "a UTC day, YYYY-MM-DD: it and every day before it count as done",
		First: "the days that end after the hand-over point (its first Go pass): none the Python side synthesised",
		Fresh: "the last 7 days not done", Items: "days"},
	{Name: jobs.ChannelSummarization, Kind: Watermark, Sources: channelSources, Positions: channelPositions,
		First: "per channel without a Go summary, its newest 100 messages (one call each, the cost of any run; the 20 most active channels)",
		Fresh: "the same", Items: "messages", prefix: "summary", PerRun: 100},
	{Name: jobs.ChannelHeartbeat, Kind: Watermark, Sources: channelSources, Positions: channelPositions,
		First: "per channel, its newest 30 messages (one flash call per channel and day, the cost of any run)",
		Fresh: "the same", Items: "messages", prefix: "heartbeat", PerRun: 30},
}

// Tasks returns every cursor-driven task, in the order docs list them.
func Tasks() []Task { return slices.Clone(tasks) }

// Lookup finds a cursor-driven task by name.
func Lookup(name string) (Task, bool) {
	for _, t := range tasks {
		if t.Name == name {
			return t, true
		}
	}
	return Task{}, false
}
