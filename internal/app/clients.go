package app

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/handlers"
	"github.com/stargazer/stargazer-jobs/internal/clients/gemini"
	"github.com/stargazer/stargazer-jobs/internal/clients/journal"
	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/clients/llm/budget"
	"github.com/stargazer/stargazer-jobs/internal/clients/llm/killswitch"
	"github.com/stargazer/stargazer-jobs/internal/clients/llm/meter"
	"github.com/stargazer/stargazer-jobs/internal/clients/platform/discord"
	"github.com/stargazer/stargazer-jobs/internal/clients/platform/matrix"
	"github.com/stargazer/stargazer-jobs/internal/config"
	"github.com/stargazer/stargazer-jobs/internal/embeddedredis"
	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
	"github.com/stargazer/stargazer-jobs/internal/kg/plan"
	"github.com/stargazer/stargazer-jobs/internal/queue/events"
	"github.com/stargazer/stargazer-jobs/internal/queue/legacy"
	"github.com/stargazer/stargazer-jobs/internal/queue/ratelimit"
	"github.com/stargazer/stargazer-jobs/internal/spend"
	"github.com/stargazer/stargazer-jobs/jobs"
	"github.com/stargazer/stargazer-jobs/monitor"
)

// EmbeddingsRateKey holds the shared embeddings rate limit
// (EMBEDDINGS_RATE_PER_MINUTE).
const EmbeddingsRateKey = "sgjobs:ratelimit:embeddings"

// connect opens Redis (the embedded one when none is configured), asynq's
// client and inspector, and the metrics registry.
func (a *app) connect() error {
	if a.cfg.Embedded() {
		emb, err := embeddedredis.Start()
		if err != nil {
			return err
		}
		a.stops.push(emb.Close)
		a.cfg.RedisURL = emb.URL()
		a.log.Warn("no REDIS_URL set: using an embedded in-process Redis; nothing persists and no other process can share it",
			"embedded_redis", emb.Addr())
	}
	rconf, err := a.cfg.Redis()
	if err != nil {
		return err
	}
	qconf, err := a.cfg.QueueRedis()
	if err != nil {
		return err
	}
	a.rdb = rconf.NewClient()
	a.stops.push(func() { a.rdb.Close() })
	a.qdb = a.rdb
	if a.cfg.SeparateQueue() {
		a.qdb = qconf.NewClient()
		a.stops.push(func() { a.qdb.Close() })
		a.log.Info("the job system's keys (asynq:*, sgjobs:*) are on QUEUE_REDIS_URL, the bot's on REDIS_URL",
			"queue_redis", qconf.String(), "bot_redis", rconf.String())
	}
	a.connOpt = qconf.Asynq()
	a.insp = asynq.NewInspector(a.connOpt)
	a.stops.push(func() { a.insp.Close() })
	// The shared client's calls honour their context's deadline; asynq's
	// own would wait for its read timeout.
	a.client = asynq.NewClientFromRedisClient(a.qdb)
	a.publisher = events.NewPublisher(a.rdb, a.cfg.DebugEventsChannel)
	a.killSwitch = killswitch.New(a.rdb, a.cfg.ChatLLMSwitchKey, a.cfg.ChatLLMEnabled)
	a.spend = a.newLedger()
	a.stops.push(a.spend.Wait) // settlements in flight land before Redis closes
	a.warnUnpriced()
	a.stops.push(func() { a.client.Close() })

	a.reg = prometheus.NewRegistry()
	a.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a.metrics = monitor.NewMetrics(a.reg)
	a.metrics.Catalog(a.catalog)
	a.reg.MustRegister(monitor.NewRedisUp(monitor.PingFunc(a.ping)))
	a.llmMetrics = llm.NewMetrics(a.reg)
	a.budgetMetrics = budget.NewMetrics(a.reg)
	a.journal = a.newJournalHealth()
	if a.cfg.QueueMetrics {
		a.reg.MustRegister(monitor.NewQueueCollector(a.insp))
		a.reg.MustRegister(plan.NewCollector(a.qdb, []string{jobs.LimbicAnchoringWorker, jobs.AutoKGExtraction}, 0))
		names := make([]string, 0, len(a.catalog))
		for _, s := range a.catalog {
			names = append(names, s.Name)
		}
		a.reg.MustRegister(spend.NewCollector(a.qdb, a.spend, names, 0))
	}
	return nil
}

// ping reaches both Redis servers (one, when they are the same): the
// process is up only when it reaches both.
func (a *app) ping(ctx context.Context) error {
	if err := a.rdb.Ping(ctx).Err(); err != nil {
		return err
	}
	if a.qdb != a.rdb {
		if err := a.qdb.Ping(ctx).Err(); err != nil {
			return fmt.Errorf("queue redis: %w", err)
		}
	}
	return nil
}

// handlerDeps builds what the handlers may use: every client this
// configuration provides. A client that is not configured stays nil, and
// handlers.Register leaves out the tasks that need it.
func (a *app) handlerDeps(ctx context.Context) (handlers.Deps, error) {
	cfg := a.cfg
	d := handlers.Deps{
		Redis: a.rdb, Jobs: a.qdb, Logger: a.log, Now: a.now, JournalUnit: cfg.JournalUnit, JournalDir: cfg.JournalDir, NodeName: nodeName(cfg.NodeName),
		Models:   handlers.Models{Chat: cfg.LLMModel, Extraction: cfg.KGExtractionModel, Flash: cfg.FlashModel, Embeddings: cfg.EmbeddingsModel},
		Enqueuer: a.client, Tasks: a.insp, Events: a.publisher, Counter: a.metrics,
		Intervals:          map[string]time.Duration{},
		StarwikiStaleAfter: time.Duration(cfg.StarwikiStaleDays) * 24 * time.Hour,
		OrgHubDegree:       cfg.KAOrgHubDegreeThreshold,
		PruneAge:           time.Duration(cfg.KGPruneAgeDays) * 24 * time.Hour,
		KGBulkDir:          cfg.KGBulkDir,
	}
	for _, dec := range a.decisions {
		d.Intervals[dec.Spec.Name] = dec.Interval
	}
	if a.journal != nil {
		d.Journal = a.journal
	}
	if cfg.LegacyCoexistence {
		d.HandOver = legacy.HandOver{Redis: a.qdb, Now: a.now}
	}
	if cfg.FalkorDBURL != "" && cfg.Role != config.RoleNode { // no node-local task uses the graph
		g, closeGraph, err := openGraph(ctx, a.log, cfg)
		if err != nil {
			return d, err
		}
		a.stops.push(closeGraph)
		d.Graph = g
		d.KG = handlers.KGSettings{DecayFactor: cfg.KGDecayFactor, DecayMinWeight: cfg.KGDecayMinWeight, BatchSize: cfg.KGBatchSize,
			ClaimTTL: cfg.KGExtractionClaimTTL}
	}
	for _, e := range cfg.LLMEndpoints() {
		c := llm.New(llm.Options{BaseURL: e.BaseURL, APIKey: e.APIKey, Timeout: e.Timeout, Observer: a.llmMetrics})
		switch e.Purpose {
		case config.PurposeChat:
			d.LLM = a.chatModel(e, c)
		case config.PurposeExtraction:
			d.ExtractionLLM = a.chatModel(e, c)
			d.LLMKeyMissing = e.APIKey == "" && !e.Own
		case config.PurposeEmbeddings:
			d.Embedder = meter.Embedder(a.spend, c, e.Timeout+reservationMargin)
		}
	}
	if len(cfg.GeminiAPIKeys) > 0 {
		prober, err := gemini.NewProber(gemini.NewPool(a.rdb), gemini.ProberOptions{
			BaseURL: cfg.GeminiBaseURL, Keys: cfg.GeminiAPIKeys, Model: cfg.GeminiEmbeddingModel,
		})
		if err != nil {
			return d, err
		}
		d.KeyProber = prober
	}
	if cfg.EmbeddingsRatePerMinute > 0 {
		d.EmbedLimiter = ratelimit.New(a.qdb, EmbeddingsRateKey, cfg.EmbeddingsRatePerMinute, int(cfg.EmbeddingsRatePerMinute/10))
	}
	if cfg.DiscordBotToken != "" {
		d.Platforms = append(d.Platforms, discord.New(discord.Options{BaseURL: cfg.DiscordAPIBaseURL, Token: cfg.DiscordBotToken}))
	}
	if cfg.MatrixHomeserverURL != "" && cfg.MatrixAccessToken != "" {
		d.Platforms = append(d.Platforms, matrix.New(matrix.Options{HomeserverURL: cfg.MatrixHomeserverURL, Token: cfg.MatrixAccessToken}))
	}
	return d, nil
}

// newJournalHealth returns the watch of this node's journal when a journal
// task is scheduled here and journalctl is installed (a cluster worker's
// image has none: its journal tasks idle, and it has no journal to watch).
func (a *app) newJournalHealth() *journal.Health {
	if a.cfg.Role == config.RoleMonitor {
		return nil
	}
	scheduled := map[string]bool{}
	for _, d := range a.nodeLocalDecisions() {
		scheduled[d.Spec.Name] = d.Scheduled
	}
	if !scheduled[jobs.JournalStream] && !scheduled[jobs.LogRAGIngest] {
		return nil
	}
	if _, err := exec.LookPath("journalctl"); err != nil {
		return nil
	}
	o := journal.HealthOptions{Unit: a.cfg.JournalUnit, Logger: a.log}
	if a.cfg.JournalDir != "" {
		o.Check = journal.CheckOptions{Dirs: []string{a.cfg.JournalDir}, Directory: true}
	} else if b, err := os.ReadFile("/etc/machine-id"); err == nil {
		o.Check.MachineID = strings.TrimSpace(string(b))
	}
	if !scheduled[jobs.JournalStream] {
		o.IdleAfter = -1 // nothing reads entries as they come
	}
	return journal.NewHealth(o, a.reg)
}

// nodeName names this node for per-node state: NODE_NAME, else the
// machine id (which outlives pods, containers and renames: a DaemonSet pod
// gets a new name on every rollout), else the host name.
func nodeName(configured string) string {
	if configured != "" {
		return configured
	}
	if b, err := os.ReadFile("/etc/machine-id"); err == nil {
		if id := strings.TrimSpace(string(b)); id != "" {
			return "machine-" + id
		}
	}
	host, _ := os.Hostname()
	return host
}

// chatModel wraps an endpoint's chat/completions client: right before each
// call, the spend ledger reserves its estimate, refusing it while the kill
// switch is off or when it would cross its task's daily budget
// (LLM_BUDGETS), and charges it after; that happens inside the cluster-wide
// rate budget (LLM_MAX_IN_FLIGHT, LLM_REQUESTS_PER_MINUTE,
// LLM_TOKENS_PER_MINUTE), which every worker shares through Redis and which
// a 429 pauses for all. An endpoint shared by several purposes shares one
// rate budget.
func (a *app) chatModel(e config.LLMEndpoint, c *llm.Client) handlers.ChatModel {
	name := config.PurposeChat
	if e.Own {
		name = e.Purpose
	}
	return budget.New(meter.Chat(a.spend, c, e.Timeout+reservationMargin), a.qdb, name, budget.Limits{
		MaxInFlight: a.cfg.LLMMaxInFlight, RequestsPerMinute: a.cfg.LLMRequestsPerMinute, TokensPerMinute: a.cfg.LLMTokensPerMinute,
	}, a.budgetMetrics)
}

// openGraph connects to FalkorDB with a client of its own from
// graph.NewClient (calls bounded by the task's deadline, no retried
// writes). It creates the schema in the background: a FalkorDB that is
// down at startup must not stop the worker, and the graph tasks' writes
// are keyed MERGEs that stay correct without it.
func openGraph(ctx context.Context, log *slog.Logger, cfg config.Config) (*graph.Graph, func(), error) {
	rdb, err := graph.NewClient(cfg.FalkorDBURL)
	if err != nil {
		return nil, nil, &config.Error{Setting: "FALKORDB_URL", Reason: "must be a redis:// URL"}
	}
	g := graph.New(rdb, cfg.FalkorDBGraph, graph.Timeout(graphQueryTimeout))
	sctx, stop := context.WithCancel(ctx)
	go ensureSchema(sctx, log, g, cfg.FalkorDBGraph)
	// Closing the client ends a schema query in flight, so the goroutine
	// ends with it.
	return g, func() { stop(); rdb.Close() }, nil
}

// ensureSchema creates the graph's indexes and constraints, retrying with
// backoff until it succeeds or ctx ends.
func ensureSchema(ctx context.Context, log *slog.Logger, g *graph.Graph, name string) {
	backoff := time.Second
	for {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		err := graph.EnsureSchema(sctx, g)
		cancel()
		if err == nil {
			log.Info("knowledge graph schema ensured", "graph", name)
			return
		}
		if ctx.Err() != nil {
			return
		}
		log.Error("knowledge graph schema not ensured; retrying", "graph", name, "error", err, "retry_in", backoff.String())
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Minute)
	}
}

// graphQueryTimeout bounds each read query on the FalkorDB server; the
// maintenance tasks write in batches sized to finish far below it.
const graphQueryTimeout = 60 * time.Second

// waitForRedis waits for the bot's Redis and, when it is another, the
// queue's.
func (a *app) waitForRedis(ctx context.Context) {
	waitForRedis(ctx, a.log, a.rdb)
	if a.qdb != a.rdb {
		waitForRedis(ctx, a.log.With("redis", "queue"), a.qdb)
	}
}

// waitForRedis reports an unreachable Redis and keeps trying with backoff
// instead of exiting: a crash loop would help nobody, and asynq recovers by
// itself once Redis is back.
func waitForRedis(ctx context.Context, log *slog.Logger, rdb *redis.Client) {
	backoff := 500 * time.Millisecond
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := rdb.Ping(pctx).Err()
		cancel()
		if err == nil || ctx.Err() != nil {
			return
		}
		log.Error("redis unreachable; retrying", "component", "startup", "error", err, "retry_in", backoff.String())
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 30*time.Second)
	}
}
