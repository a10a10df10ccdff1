package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/clients/journal"
	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/clients/platform"
	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
	"github.com/stargazer/stargazer-jobs/internal/queue/events"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// Deps is what a deployment offers the handlers; the process wiring fills
// it. Workers never see it: each is built from a kit that hands out only
// the dependencies its task declares in the catalog.
type Deps struct {
	// Redis is the bot's Redis (REDIS_URL): the message cache, prompts,
	// summaries, stargazer_logs:*, everything the bot reads or writes.
	Redis redis.UniversalClient
	// Jobs is the job system's Redis (QUEUE_REDIS_URL): every sgjobs:* key
	// a handler keeps (ledgers, cursors, plans, locks). Nil: Redis, the
	// one-URL layout.
	Jobs   redis.UniversalClient
	Logger *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
	// NodeName names this node for per-node state (log_rag_ingest's
	// cursor); empty means the host name.
	NodeName string
	// JournalUnit is the systemd unit journal_stream tails.
	JournalUnit string
	// JournalCommand overrides the journalctl binary (tests).
	JournalCommand string
	// JournalDir is JOURNAL_DIR: journalctl's --directory ("": this
	// machine's journal).
	JournalDir string
	// Journal watches whether this node's journal can be read (optional):
	// the journal loops idle while it cannot, and journal_stream reports
	// each entry to it.
	Journal JournalHealth

	// LLM answers chat/completions calls (nil without LLM_BASE_URL): the
	// chat endpoint of summaries, heartbeats, the merge judge, hub
	// categories and epoch summaries.
	LLM ChatModel
	// ExtractionLLM answers the knowledge-extraction calls when they have
	// an endpoint of their own (EXTRACTION_LLM_BASE_URL: the original sent
	// them to a keyless local proxy); nil means LLM.
	ExtractionLLM ChatModel
	// LLMKeyMissing is true when extraction goes to the shared endpoint
	// and API_KEY is empty: agentic_kg_bulk_incremental then skips, as the
	// original did without an api_key.
	LLMKeyMissing bool
	// Embedder turns texts into vectors (nil without an embeddings URL).
	Embedder Embedder
	// Models names the model each kind of call uses.
	Models Models
	// Enqueuer adds follow-up tasks (fan-out, the embedding queue).
	Enqueuer Enqueuer
	// Tasks looks tasks up in the queues: the extraction planners re-enqueue
	// a unit that gave up (archived) or vanished (optional: without it an
	// archived unit stays until an operator runs it).
	Tasks TaskInspector
	// Events publishes the original's debug-observability events.
	Events EventPublisher
	// Graph is the knowledge graph (nil without FALKORDB_URL).
	Graph Graph
	// KG tunes the knowledge-graph maintenance tasks.
	KG KGSettings
	// Counter receives each run's numeric results as item counts, for
	// Prometheus (optional).
	Counter Counter
	// OrgHubDegree is ka_org_hub_degree_threshold: how many unorganised
	// neighbouring entities make an entity a hub for limbic_org_task.
	OrgHubDegree int
	// PruneAge is KG_PRUNE_AGE_DAYS: kg_consolidation_task prunes low-value
	// entities not seen for this long (0: 30 days).
	PruneAge time.Duration
	// KGBulkDir is KG_BULK_DIR: where agentic_kg_bulk_incremental dumps
	// each run's working set and results ("": var/kg_bulk_scheduled).
	KGBulkDir string
	// Intervals holds each task's effective interval, after TASK_INTERVALS
	// and the other overrides; a task missing here runs at its catalog
	// interval. Fan-outs spread their children over it.
	Intervals map[string]time.Duration
	// StarwikiStaleAfter is how long a wiki page may go without an update
	// before starwiki_lint reports it stale (0: wiki.DefaultStaleAfter).
	StarwikiStaleAfter time.Duration
	// KeyProber probes the shared Gemini key pool (nil without
	// GEMINI_API_KEYS).
	KeyProber KeyProber

	// Platforms are the configured chat platforms, in the order the
	// backfill catalogs them (startup_channel_backfill).
	Platforms []Platform
	// PlatformReadyTimeout bounds the backfill's wait for platforms to
	// answer their identity call (default 30 s, the original's);
	// PlatformReadyPoll is how often it asks (default 0.5 s).
	PlatformReadyTimeout time.Duration
	PlatformReadyPoll    time.Duration
	// EmbedLimiter paces embeddings calls across all workers (nil: no
	// limit beyond the embeddings queue's low weight).
	EmbedLimiter Limiter
	// HandOver says where the cursor-driven tasks take over from the
	// Python side after a cut-over (legacy.HandOver); nil when there is
	// no Python side (LEGACY_COEXISTENCE=false): each task then starts
	// from its own look-back, anamnesis_digest at the first fragment.
	HandOver HandOver
}

// HandOver fixes, the first time a task asks, the point from which it
// takes over from the Python side, and returns it ever after: a
// cursor-driven task starts no earlier than it, so its first runs do not
// pay again for history the Python side processed.
type HandOver interface {
	Point(ctx context.Context, task string) (time.Time, error)
}

// Models are the model names of each kind of LLM call.
type Models struct {
	// Chat is the default model (summaries).
	Chat string
	// Extraction is kg_extraction_model: extraction, dedup, org, sunset.
	Extraction string
	// Flash is the cheap model (heartbeats).
	Flash string
	// Embeddings is the embeddings model.
	Embeddings string
}

// ChatModel makes chat/completions calls.
type ChatModel interface {
	Chat(ctx context.Context, r llm.Request) (*llm.Response, error)
}

// Embedder makes embeddings calls.
type Embedder interface {
	Embed(ctx context.Context, model string, inputs []string) ([][]float32, llm.Usage, error)
}

// Graph runs Cypher on the knowledge graph.
type Graph interface {
	Query(ctx context.Context, cypher string, params map[string]any, opts ...graph.Option) (*graph.Result, error)
	ROQuery(ctx context.Context, cypher string, params map[string]any, opts ...graph.Option) (*graph.Result, error)
}

// Enqueuer adds tasks to the queues.
type Enqueuer interface {
	EnqueueContext(ctx context.Context, t *asynq.Task, opts ...asynq.Option) (*asynq.TaskInfo, error)
}

// TaskInspector reads and deletes tasks in the queues (*asynq.Inspector).
type TaskInspector interface {
	GetTaskInfo(queue, id string) (*asynq.TaskInfo, error)
	DeleteTask(queue, id string) error
}

// Platform is a chat platform's REST API, as the backfill reads it.
type Platform interface {
	// Name is the platform's name in the message cache (discord, matrix).
	Name() string
	// Identity is the bot's own account; its success means the platform is
	// ready.
	Identity(ctx context.Context) (platform.Identity, error)
	// Channels lists the channels the bot can read. It may return some
	// channels along with an error about others.
	Channels(ctx context.Context) ([]platform.Channel, error)
	// History returns up to limit of a channel's latest messages.
	History(ctx context.Context, channelID string, limit int) ([]platform.Message, error)
}

// Limiter is a rate limit shared by the workers.
type Limiter interface {
	// Take takes a token and returns zero, or returns how long until one
	// is free, taking nothing.
	Take(ctx context.Context) (time.Duration, error)
	// Interval is the average time between two tokens.
	Interval() time.Duration
}

// EventPublisher sends debug-observability events.
type EventPublisher interface {
	Publish(ctx context.Context, e events.Event) error
}

// Counter records how many items a run handled (merged, pruned, fired...).
type Counter interface {
	AddItems(task, item string, n float64)
}

// Result is what a run reports: counts and facts, stored as the task's
// result (visible in the dashboard) and logged.
type Result map[string]any

// Implemented is the set of tasks this build has handlers for, queued or
// node-local. Every task of jobs.Catalog is one (a test holds that); the set
// matters to callers that gate a catalog extended with tasks of their own.
func Implemented() map[string]bool {
	out := map[string]bool{}
	for name := range builders() {
		out[name] = true
	}
	for name := range NodeLocal(Deps{}) {
		out[name] = true
	}
	return out
}

// JournalHealth is what the journal loops need from the node's watch of
// its journal (journal.Health).
type JournalHealth interface {
	// Err is nil when the journal can be read.
	Err() error
	// Entry records an entry of the unit read, logged at at.
	Entry(at time.Time)
}

// ErrNotOnThisNode is returned by a node-local loop whose tool is missing on
// this machine (journalctl, for journal_stream); the worker then checks
// again at the loop's restart interval without logging every attempt.
var ErrNotOnThisNode = errors.New("not available on this node")

// NodeLocal returns the node-local loops, by task name: functions that run
// until ctx ends or their work ends, which the worker restarts on every node.
// A loop that cannot work on this node (no journalctl) returns an error
// wrapping ErrNotOnThisNode.
func NodeLocal(d Deps) map[string]func(ctx context.Context) error {
	return map[string]func(ctx context.Context) error{
		jobs.LogRAGIngest: nodeLocal(d, jobs.LogRAGIngest),
		jobs.JournalStream: func(ctx context.Context) error {
			if err := journalReadable(d); err != nil {
				return err
			}
			s := &journal.Streamer{Redis: d.Redis, Unit: d.JournalUnit, Channel: journal.Channel, Command: d.JournalCommand, Logger: d.Logger,
				Directory: d.JournalDir}
			if d.Journal != nil {
				s.OnEntry = d.Journal.Entry
			}
			n, err := s.Run(ctx)
			if n > 0 && d.Logger != nil {
				d.Logger.Info("journal stream ended", "task", jobs.JournalStream, "lines", n)
			}
			if errors.Is(err, journal.ErrNoJournal) {
				return fmt.Errorf("%w: %w", ErrNotOnThisNode, err)
			}
			return err
		},
	}
}

// nodeLocal runs a worker as a node-local loop: one run per call, its
// counts reported like a queued run's, and a missing journal reported as
// ErrNotOnThisNode.
func nodeLocal(d Deps, task string) func(ctx context.Context) error {
	spec, ok := jobs.Lookup(task)
	if !ok {
		panic("handlers: " + task + " is not in the catalog")
	}
	run := nodeWorkers()[task].handler(newKit(d, spec))
	return func(ctx context.Context) error {
		if err := journalReadable(d); err != nil {
			return err
		}
		res, err := run(ctx, spec.NewPayload())
		if errors.Is(err, journal.ErrNoJournal) {
			return fmt.Errorf("%w: %w", ErrNotOnThisNode, err)
		}
		if err == nil && res != nil {
			countItems(d.Counter, task, res)
		}
		return err
	}
}

// journalReadable is ErrNotOnThisNode while the node's journal cannot be
// read: journalctl would stream nothing, in silence (`-f` waits for files
// to appear) or failing every round; the watch says why, once.
func journalReadable(d Deps) error {
	if d.Journal == nil {
		return nil
	}
	if err := d.Journal.Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrNotOnThisNode, err)
	}
	return nil
}

// Registration says, per task, whether a handler was registered and if not
// why.
type Registration struct {
	Task       string
	Registered bool
	Reason     string
}

// Register adds to mux a handler for every catalog task that is implemented
// and whose dependencies are in available. Tasks switched off by flags are
// still registered so an operator can run them by hand; only a handler that
// cannot work is left out. Each handler is built from d through its task's
// spec, so it gets only what the catalog says the task uses.
func Register(mux *asynq.ServeMux, d Deps, catalog []jobs.Spec, available jobs.Requirement) []Registration {
	var regs []Registration
	fns := builders()
	local := NodeLocal(d)
	for _, spec := range catalog {
		b, ok := fns[spec.Name]
		switch missing := spec.Missing(available); {
		case local[spec.Name] != nil:
			// A queued copy (enqueued by an older build, or by hand past
			// the checks) is refused with the reason instead of running on
			// whichever node picked it up: its work belongs to each node.
			mux.Handle(spec.Name, refuseNodeLocal(spec.Name))
			regs = append(regs, Registration{Task: spec.Name, Reason: "node-local: runs on every node agent (ROLE=node) and worker on its own schedule, not from the queue"})
		case !ok:
			regs = append(regs, Registration{Task: spec.Name, Reason: "no handler for this task in this build yet"})
		case missing != 0:
			regs = append(regs, Registration{Task: spec.Name, Reason: "missing dependency: " + missing.String()})
		default:
			mux.Handle(spec.Name, typed(spec, d.Counter, b.handler(newKit(d, spec))))
			regs = append(regs, Registration{Task: spec.Name, Registered: true})
		}
	}
	return regs
}

// refuseNodeLocal archives a queued run of a node-local task at once, saying
// why.
func refuseNodeLocal(task string) asynq.Handler {
	return asynq.HandlerFunc(func(context.Context, *asynq.Task) error {
		return fmt.Errorf("%s is node-local: each node agent (ROLE=node) runs it on its own journal and schedule; a cluster worker never runs it from the queue: %w",
			task, asynq.SkipRetry)
	})
}

// typed decodes and validates the payload before calling run. A payload
// that does not validate can never succeed, so it is archived at once with
// the reason (asynq.SkipRetry) instead of being retried. The result is
// stored with the task and its counts go to c.
func typed(spec jobs.Spec, c Counter, run runFunc) asynq.Handler {
	return asynq.HandlerFunc(func(ctx context.Context, t *asynq.Task) error {
		p, err := jobs.DecodePayload(spec, t.Payload())
		if err != nil {
			return fmt.Errorf("%w: %w", err, asynq.SkipRetry)
		}
		res, err := run(ctx, p)
		if err != nil {
			return err
		}
		if res != nil {
			countItems(c, spec.Name, res)
			if b, err := json.Marshal(res); err == nil {
				// The result is informational; failing to store it (for
				// example on a lost lease) must not fail a run that did its
				// work.
				_, _ = t.ResultWriter().Write(b)
			}
		}
		return nil
	})
}

// countItems passes a result's numeric values to c: every count a handler
// reports becomes a Prometheus series without per-task wiring.
func countItems(c Counter, task string, res Result) {
	if c == nil {
		return
	}
	for k, v := range res {
		switch n := v.(type) {
		case int:
			c.AddItems(task, k, float64(n))
		case int64:
			c.AddItems(task, k, float64(n))
		case float64:
			c.AddItems(task, k, n)
		}
	}
}
