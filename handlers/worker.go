package handlers

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/kg/extract"
	"github.com/stargazer/stargazer-jobs/internal/queue/singleton"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// Worker is one task's work on its typed payload. A worker holds exactly
// the dependencies its task uses, taken from a kit when it is built, so its
// fields say what it reaches for and no payload is type-asserted inside.
type Worker[P jobs.Payload] interface {
	Work(ctx context.Context, p P) (Result, error)
}

// runFunc runs a task on its decoded payload.
type runFunc func(ctx context.Context, p jobs.Payload) (Result, error)

// builder makes one task's handler.
type builder struct {
	// handler builds the task's handler from the deployment's kit.
	handler func(k kit) runFunc
	// takes reports whether p is of the payload type the worker works on
	// (the registry test checks it against the catalog's NewPayload).
	takes func(p jobs.Payload) bool
}

// build wraps a worker constructor into a builder: the payload, decoded by
// the catalog's NewPayload, is asserted to P once, here. A mismatch is a
// catalog bug that no retry can fix. A worker that took a dependency the
// kit lacks (Deps that disagree with Register's available set; Register
// itself never builds one) refuses every run, naming what is missing,
// instead of dereferencing nil.
func build[P jobs.Payload](newWorker func(k kit) Worker[P]) builder {
	return builder{
		handler: func(k kit) runFunc {
			k.taken = new(jobs.Requirement)
			w := newWorker(k)
			if missing := *k.taken &^ k.present(); missing != 0 {
				err := fmt.Errorf("%s: no %s: %w", k.spec.Name, strings.Join(missing.Describe(), ", no "), asynq.SkipRetry)
				return func(context.Context, jobs.Payload) (Result, error) { return nil, err }
			}
			return func(ctx context.Context, p jobs.Payload) (Result, error) {
				tp, ok := p.(P)
				if !ok {
					var want P
					return nil, fmt.Errorf("%w for %s: its worker takes %T, the payload is %T: %w",
						jobs.ErrInvalidPayload, k.spec.Name, want, p, asynq.SkipRetry)
				}
				return w.Work(ctx, tp)
			}
		},
		takes: func(p jobs.Payload) bool { _, ok := p.(P); return ok },
	}
}

// builders lists the queued tasks this build can run, by name.
func builders() map[string]builder {
	return map[string]builder{
		jobs.ScheduledPromptTick:      build(newPromptTick),
		jobs.ScheduledPromptCleanup:   build(newPromptCleanup),
		jobs.ChannelSummarization:     build(newChannelSummarization),
		jobs.ChannelHeartbeat:         build(newChannelHeartbeat),
		jobs.ChannelHeartbeatChannel:  build(newChannelHeartbeatChannel),
		jobs.KGConsolidation:          build(newKGConsolidation),
		jobs.LimbicDedup:              build(newLimbicDedup),
		jobs.LimbicOrg:                build(newLimbicOrg),
		jobs.StarwikiLint:             build(newStarwikiLint),
		jobs.GeminiKeyProbe:           build(newGeminiKeyProbe),
		jobs.StartupChannelBackfill:   build(newStartupChannelBackfill),
		jobs.EmbedMessages:            build(newEmbedMessages),
		jobs.KGExtractUnit:            build(newExtractUnit),
		jobs.AutoKGExtraction:         build(newAutoKGExtraction),
		jobs.LimbicAnchoringWorker:    build(newLimbicAnchoring),
		jobs.KGDecay:                  build(newKGDecay),
		jobs.LimbicMaintenance:        build(newLimbicMaintenance),
		jobs.AnamnesisDigest:          build(newAnamnesisDigest),
		jobs.AgenticKGBulkIncremental: build(newAgenticKGBulk),
		jobs.LimbicSunsetProcessor:    build(newLimbicSunset),
	}
}

// nodeWorkers lists the node-local tasks whose work is a Worker, run by
// NodeLocal as a loop on every node instead of from the queue.
func nodeWorkers() map[string]builder {
	return map[string]builder{
		jobs.LogRAGIngest: build(newLogRAGIngest),
	}
}

// kit is what a worker constructor takes its dependencies from: the
// deployment's Deps seen through one task's catalog spec. Values every
// deployment has (logger, clock, enqueuer, events, counter, models,
// settings, intervals) are plain fields, promoted from Deps. The
// dependencies a deployment may lack are behind accessors that panic
// unless the spec declares them (Requires|Needs), so a dependency is
// declared once, in the catalog: gating and registration then know all a
// worker uses, and TestWorkersUseOnlyDeclaredDependencies catches a worker
// that reaches past its declaration.
//
// Constructors take what they need and keep it; a worker never holds the
// kit or Deps.
type kit struct {
	// Deps holds the plain values; its declarable fields are nil here,
	// moved to the fields below.
	Deps
	spec jobs.Spec
	// taken collects the dependencies the constructor took (nil: not
	// recorded).
	taken     *jobs.Requirement
	redis     redis.UniversalClient
	jobs      redis.UniversalClient
	graph     Graph
	llm       ChatModel
	extractor ChatModel
	embedder  Embedder
	keyProber KeyProber
	platforms []Platform
}

// newKit is task spec's view of d, with the clock and logger defaulted.
func newKit(d Deps, spec jobs.Spec) kit {
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Logger == nil {
		d.Logger = slog.Default()
	}
	k := kit{spec: spec, redis: d.Redis, jobs: d.Jobs, graph: d.Graph, llm: d.LLM, extractor: d.ExtractionLLM, embedder: d.Embedder,
		keyProber: d.KeyProber, platforms: d.Platforms}
	if k.extractor == nil {
		k.extractor = d.LLM
	}
	if k.jobs == nil {
		k.jobs = d.Redis
	}
	d.Jobs = nil
	d.Redis, d.Graph, d.LLM, d.ExtractionLLM, d.Embedder, d.KeyProber, d.Platforms = nil, nil, nil, nil, nil, nil, nil
	k.Deps = d
	return k
}

// need panics unless the task declares r: using an undeclared dependency
// is a programming error that the registry test finds. It records r as
// taken.
func (k kit) need(r jobs.Requirement) {
	if !k.spec.Declares(r) {
		panic(fmt.Sprintf("handlers: %s uses %s without declaring it in its catalog spec (Requires or Needs)", k.spec.Name, r))
	}
	if k.taken != nil {
		*k.taken |= r
	}
}

// Redis is the bot's Redis (jobs.Redis): keys the bot reads or writes.
func (k kit) Redis() redis.UniversalClient { k.need(jobs.Redis); return k.redis }

// Jobs is the job system's Redis (jobs.Redis too: the same server unless
// QUEUE_REDIS_URL is set): the sgjobs:* keys a worker keeps.
func (k kit) Jobs() redis.UniversalClient { k.need(jobs.Redis); return k.jobs }

// Graph is the knowledge graph (jobs.KG).
func (k kit) Graph() Graph { k.need(jobs.KG); return k.graph }

// LLM is the chat/completions client (jobs.LLM).
func (k kit) LLM() ChatModel { k.need(jobs.LLM); return k.llm }

// ExtractionLLM is the client of knowledge-extraction calls: their own
// endpoint if configured, else the chat client (jobs.LLM).
func (k kit) ExtractionLLM() ChatModel { k.need(jobs.LLM); return k.extractor }

// Embedder is the embeddings client (jobs.Embeddings).
func (k kit) Embedder() Embedder { k.need(jobs.Embeddings); return k.embedder }

// KeyProber probes the Gemini key pool (jobs.GeminiKeys).
func (k kit) KeyProber() KeyProber { k.need(jobs.GeminiKeys); return k.keyProber }

// Platforms are the configured chat platforms (jobs.Platform).
func (k kit) Platforms() []Platform { k.need(jobs.Platform); return k.platforms }

// present is the set of dependencies the kit holds.
func (k kit) present() jobs.Requirement {
	r := jobs.Config
	if k.redis != nil {
		r |= jobs.Redis | jobs.BotRuntime
	}
	if k.graph != nil {
		r |= jobs.KG
	}
	if k.llm != nil {
		r |= jobs.LLM
	}
	if k.embedder != nil {
		r |= jobs.Embeddings
	}
	if k.keyProber != nil {
		r |= jobs.GeminiKeys
	}
	if len(k.platforms) > 0 {
		r |= jobs.Platform
	}
	return r
}

// offers reports whether the deployment has r, for a worker whose task
// works without it but does more with it (the backfill queues embeddings
// only where an endpoint serves the queue). It hands out nothing.
func (k kit) offers(r jobs.Requirement) bool { return k.present().Has(r) }

// extraction is the extraction engine's configuration for the task, which
// must declare the LLM, the graph and Redis (the engine's ledger).
func (k kit) extraction() extract.Config {
	return extract.Config{
		LLM: k.ExtractionLLM(), Model: k.Models.Extraction, Graph: k.Graph(), Redis: k.Jobs(), ClaimTTL: k.KG.ClaimTTL,
		Verify: singleton.Verify, Now: k.Now, Logger: k.Logger.With("task", k.spec.Name),
	}
}
