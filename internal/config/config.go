// Package config loads the worker's and the enqueuer's settings from
// environment variables (the original's config names, upper-cased) and
// command-line flags, and turns them into what the rest of the system needs:
// a Redis connection option, gating inputs, timeouts.
//
// Each setting is declared once, as a field of Config whose struct tags give
// its variable, default, help text and bounds; the flags, the validation and
// the README's settings table are derived from those tags.
//
// config imports only jobs (for the gating inputs) and never a handler, a
// client or the monitor.
package config

import (
	"log/slog"
	"time"
)

// Config holds every setting. The zero value is not useful; use Load.
//
// Tags: env names the variable (the flag is its lower-case, dashed form);
// default is the value when neither is set; help documents it; secret keeps
// its value out of every message; min, max and above (exclusive minimum)
// bound numbers; oneof lists the accepted words; check names a validator
// (see checkValue).
type Config struct {
	RedisURL      string `env:"REDIS_URL" secret:"true" check:"redis_url" help:"Redis of the bot's state and, unless QUEUE_REDIS_URL is set, of the job queue: redis://[user:password@]host:port/db, rediss:// for TLS, unix:///path. With ?master_name=M it is a Sentinel URL (redis://sentinel:26379/0?master_name=M&addr=sentinel2:26379) and every process follows the primary across failovers. Empty: an embedded in-process Redis (demo only, nothing persists). It may hold a password. Never logged."`
	QueueRedisURL string `env:"QUEUE_REDIS_URL" secret:"true" check:"redis_url" help:"Optional Redis of the job system's own keys (asynq:* queues, sgjobs:* schedules, leases, ledgers, cursors), apart from REDIS_URL, which keeps the bot's data (sg:*, stargazer_logs:*, the debug channel, the leader key, the kill switch). Same URL forms as REDIS_URL, Sentinel included. Empty (or equal to REDIS_URL): everything on REDIS_URL, one client. Needs REDIS_URL: the embedded Redis cannot be shared. It may hold a password. Never logged."`
	FalkorDBURL   string `env:"FALKORDB_URL" secret:"true" check:"falkordb_url" help:"FalkorDB (knowledge graph) as redis://host:port. Empty: graph tasks are not scheduled. It may hold a password. Never logged."`
	FalkorDBGraph string `env:"FALKORDB_GRAPH" default:"stargazer" help:"Name of the knowledge graph in FalkorDB."`

	LLMBaseURL              string        `env:"LLM_BASE_URL" check:"http_url" help:"OpenAI-compatible chat/completions base URL (OpenRouter or the local proxy): summaries, heartbeats, the merge judge, hub categories, epoch summaries, and every other LLM call without an endpoint of its own. Empty: LLM tasks are not scheduled."`
	APIKey                  string        `env:"API_KEY" secret:"true" help:"Bearer key for LLM_BASE_URL, and for the extraction and embeddings calls only while they go to LLM_BASE_URL too (a key is never sent to another endpoint). Never logged."`
	LLMTimeout              time.Duration `env:"LLM_TIMEOUT_SECONDS" default:"120" help:"Timeout of one chat call to LLM_BASE_URL (the connect timeout is 10 s)."`
	ExtractionLLMBaseURL    string        `env:"EXTRACTION_LLM_BASE_URL" check:"http_url" help:"Endpoint of the knowledge-extraction calls (auto_kg_extraction, limbic_anchoring_worker, anamnesis_digest, agentic_kg_bulk_incremental), e.g. the keyless local proxy the original used. Empty: LLM_BASE_URL with API_KEY."`
	ExtractionAPIKey        string        `env:"EXTRACTION_API_KEY" secret:"true" help:"Bearer key for EXTRACTION_LLM_BASE_URL; empty sends no Authorization header (keyless proxies). Never logged."`
	LLMModel                string        `env:"LLM_MODEL" default:"google/gemini-2.5-flash" help:"Default chat model (channel summaries)."`
	KGExtractionModel       string        `env:"KG_EXTRACTION_MODEL" default:"google/gemini-2.5-flash" help:"Model for knowledge extraction, dedup, org and sunset calls."`
	FlashModel              string        `env:"FLASH_MODEL" default:"google/gemini-2.5-flash-lite" help:"Cheap model for channel heartbeats."`
	KAExtractionHTTPTimeout time.Duration `env:"KA_EXTRACTION_HTTP_TIMEOUT_SECONDS" default:"120" help:"Timeout of one knowledge-extraction LLM call (the connect timeout is 10 s)."`
	EmbeddingsBaseURL       string        `env:"EMBEDDINGS_BASE_URL" check:"http_url" help:"OpenAI-compatible embeddings base URL. Empty: LLM_BASE_URL with API_KEY."`
	EmbeddingsAPIKey        string        `env:"EMBEDDINGS_API_KEY" secret:"true" help:"Bearer key for EMBEDDINGS_BASE_URL; empty sends no Authorization header. Never logged."`
	EmbeddingsTimeout       time.Duration `env:"EMBEDDINGS_TIMEOUT_SECONDS" default:"60" help:"Timeout of one embeddings call (the connect timeout is 10 s)."`
	LLMMaxInFlight          int           `env:"LLM_MAX_IN_FLIGHT" default:"0" min:"0" help:"Most chat/completions calls in flight at once across every worker of the cluster, per endpoint (chat, and extraction when it has its own) (a Redis semaphore; a dead worker's slot comes back within 30 s). Extraction units queue for a slot instead of overrunning the endpoint. 0: no limit."`
	LLMRequestsPerMinute    float64       `env:"LLM_REQUESTS_PER_MINUTE" default:"0" min:"0" help:"chat/completions calls per minute across the cluster (bursts of a tenth of it). 0: no limit. Whatever the limits, a 429 pauses every worker's calls for its Retry-After."`
	LLMTokensPerMinute      float64       `env:"LLM_TOKENS_PER_MINUTE" default:"0" min:"0" help:"chat/completions tokens (prompt and answer) per minute across the cluster: a call takes its prompt's estimate before it is made and is charged the rest after. 0: no limit."`
	LLMPrices               Prices        `env:"LLM_PRICES" help:"Prices of the LLM models, for the spend ledger: comma-separated MODEL=PROMPT/COMPLETION in USD per million tokens (\"google/gemini-2.5-flash=0.30/2.50,google/gemini-2.5-flash-lite=0.10/0.40\"). Every chat and embeddings call is charged to its task in Redis (enqueuer spend); a model without a price is charged tokens only and reported as unpriced (a startup warning, stargazer_llm_spend_unpriced_calls_total), never as $0."`
	LLMBudgets              Budgets       `env:"LLM_BUDGETS" help:"Daily LLM budgets per catalog task, per UTC day, across every worker: comma-separated TASK=AMOUNT, AMOUNT in tokens (2M, 500k, 120000) or dollars ($0.50); * is the whole cluster (\"anamnesis_digest=$0.50,channel_summarization=2M,*=$5\"). Extraction units and other children count against their parent task. A call that would cross a budget does not start: its run is deferred to the next UTC day (or until the budget is raised with enqueuer budget set), not retried and not failed. Empty: no budget."`
	EmbeddingsModel         string        `env:"EMBEDDINGS_MODEL" default:"text-embedding-3-small" help:"Embeddings model."`
	EmbeddingsRatePerMinute float64       `env:"EMBEDDINGS_RATE_PER_MINUTE" default:"60" min:"0" help:"Embeddings calls per minute (one call embeds up to 64 messages) shared by all workers through Redis, so a backfill cannot exhaust the endpoint's quota; bursts of up to a tenth of it. A throttled batch is rescheduled, not failed. 0: no limit."`
	GeminiAPIKeys           []string      `env:"GEMINI_API_KEYS" secret:"true" help:"Comma-separated shared Gemini key pool probed by gemini_key_probe. Never logged."`
	GeminiBaseURL           string        `env:"GEMINI_BASE_URL" default:"https://generativelanguage.googleapis.com" check:"http_url" help:"Gemini API base URL."`
	GeminiEmbeddingModel    string        `env:"GEMINI_EMBEDDING_MODEL" default:"gemini-embedding-001" help:"Embedding model of the Gemini key pool, which gemini_key_probe calls: quotas are per model, so it must be the model the bot's pool uses."`
	DiscordBotToken         string        `env:"DISCORD_BOT_TOKEN" secret:"true" help:"Discord bot token for startup_channel_backfill. Never logged."`
	DiscordAPIBaseURL       string        `env:"DISCORD_API_BASE_URL" default:"https://discord.com/api/v10" check:"http_url" help:"Discord REST API root."`
	MatrixHomeserverURL     string        `env:"MATRIX_HOMESERVER_URL" check:"http_url" help:"Matrix homeserver for startup_channel_backfill."`
	MatrixAccessToken       string        `env:"MATRIX_ACCESS_TOKEN" secret:"true" help:"Matrix access token. Never logged."`

	ChatLLMEnabled           bool    `env:"BACKGROUND_SCHEDULER_CHAT_LLM_ENABLED" default:"true" help:"false drops every task that calls chat/completions (prompt tick, extraction, bulk, summaries, heartbeat, consolidation, anamnesis, anchoring, sunset) and stops every chat/completions call, queued and manual runs included."`
	ChatLLMSwitchKey         string  `env:"CHAT_LLM_SWITCH_KEY" default:"sg:switch:chat_llm" help:"Redis key of the runtime chat-LLM kill switch: while it holds off (or false, 0, no), no chat-LLM task starts and no chat/completions call starts, without a restart (SET sg:switch:chat_llm off; DEL or on turns it back)."`
	LogRAGIngestEnabled      bool    `env:"BACKGROUND_SCHEDULER_LOG_RAG_INGEST_ENABLED" default:"false" help:"Opt-in for log_rag_ingest."`
	LegacyKGExtraction       bool    `env:"LEGACY_KG_EXTRACTION" default:"false" help:"Opt-in for auto_kg_extraction."`
	StarwikiEnabled          bool    `env:"STARWIKI_ENABLED" default:"false" help:"Opt-in for starwiki_lint."`
	StarwikiLintIntervalMins float64 `env:"STARWIKI_LINT_INTERVAL_MINUTES" default:"60" min:"0" help:"starwiki_lint interval in minutes; like the original, anything under 5 minutes (0 included, and a TASK_INTERVALS override) runs every 5 minutes."`
	StarwikiStaleDays        int     `env:"STARWIKI_STALE_DAYS" default:"180" min:"1" help:"starwiki_lint reports a page not updated for this many days as stale."`
	KAEnabled                bool    `env:"KA_ENABLED" default:"false" help:"Knowledge anchoring: limbic_anchoring_worker, limbic_sunset_processor, limbic_maintenance."`
	KADedupEnabled           bool    `env:"KA_DEDUP_ENABLED" default:"true" help:"limbic_dedup_task."`
	KAOrgEnabled             bool    `env:"KA_ORG_ENABLED" default:"true" help:"limbic_org_task."`
	KAOrgIntervalSeconds     float64 `env:"KA_ORG_INTERVAL_SECONDS" default:"600" min:"1" help:"Interval of limbic_org_task."`
	KAOrgHubDegreeThreshold  int     `env:"KA_ORG_HUB_DEGREE_THRESHOLD" default:"1" min:"1" help:"Minimum degree of a hub entity for limbic_org_task."`
	KADedupIntervalSeconds   float64 `env:"KA_DEDUP_INTERVAL_SECONDS" default:"600" min:"1" help:"Interval of limbic_dedup_task (the original loop paced itself; this is the Go port's pace)."`
	KGPruneAgeDays           int     `env:"KG_PRUNE_AGE_DAYS" default:"30" min:"1" help:"kg_consolidation_task deletes entities with no relationship and at most one mention that were last seen more than this many days ago."`
	KGDecayFactor            float64 `env:"KG_DECAY_FACTOR" default:"0.95" above:"0" max:"1" help:"kg_decay_task multiplies every relationship weight by this, once per run; in (0, 1]."`
	KGDecayMinWeight         float64 `env:"KG_DECAY_MIN_WEIGHT" default:"0.1" min:"0" help:"kg_decay_task deletes relationships whose decayed weight is below this (0: none)."`
	KGBatchSize              int     `env:"KG_BATCH_SIZE" default:"2000" min:"100" max:"5000" help:"Most edges or nodes one knowledge-graph maintenance write touches (decay, orphan GC), 100-5000: each write's commit stalls the whole FalkorDB server."`
	KGBulkDir                string  `env:"KG_BULK_DIR" default:"var/kg_bulk_scheduled" help:"agentic_kg_bulk_incremental writes each run's working set and results under <dir>/<UTC timestamp>/ (relative to the working directory)."`

	KGExtractionClaimTTL time.Duration `env:"KG_EXTRACTION_CLAIM_TTL" default:"5m" help:"How long one extraction batch may hold its messages between claiming them and storing the LLM's answer (and between storing and writing it): the messages of a worker killed mid-call wait this long before another takes them. Keep it above KA_EXTRACTION_HTTP_TIMEOUT_SECONDS plus the LLM budget's waits."`

	Concurrency       int           `env:"WORKER_CONCURRENCY" default:"10" min:"1" help:"Tasks one worker process runs at once."`
	TaskCheckInterval time.Duration `env:"TASK_CHECK_INTERVAL" default:"1s" help:"How long a worker whose queues are all empty waits before it asks Redis for work again (asynq's TaskCheckInterval); a periodic occurrence enqueued meanwhile waits for it. Lower starts runs sooner at a cost of about 15 Redis commands per check per worker (asynq's fetch tries each queue) (docs/performance.md, Many pods on one Redis); 10ms to 1m."`
	ShutdownTimeout   time.Duration `env:"SHUTDOWN_TIMEOUT" default:"30s" help:"On SIGTERM/SIGINT, how long in-flight tasks may run before they go back to the queue."`
	HTTPAddr          string        `env:"HTTP_ADDR" default:"127.0.0.1:8080" check:"host_port" help:"Address of the dashboard, the enqueue API, /metrics, /healthz and /readyz."`
	ProbeAddr         string        `env:"PROBE_ADDR" default:"127.0.0.1:8081" check:"host_port" help:"Address of the probe listener: GET /healthz, /readyz and /metrics only, no credentials, with its own connection limits (32 at once, 4 per client address) and short timeouts, so clients of HTTP_ADDR cannot starve the kubelet's probes or Prometheus. Every role serves it, whether or not credentials are set; it serves nothing HTTP_ADDR does not serve openly. Keep it off public networks (the manifests' NetworkPolicies admit only Prometheus; compose publishes no port)."`
	DashboardPath     string        `env:"DASHBOARD_PATH" default:"/dashboard" check:"dashboard_path" help:"Root path of the asynqmon dashboard."`
	DashboardReadOnly bool          `env:"DASHBOARD_READ_ONLY" default:"false" help:"Hide the dashboard's delete, run, archive and pause actions and refuse every state change with 403, POST /api/v1/tasks included, whatever the credential."`
	QueueMetrics      bool          `env:"QUEUE_METRICS" default:"true" help:"Export asynq queue sizes and latency on /metrics. They are read from Redis at most once per 10 s per process (about 130 commands for four queues), whatever the scrape rate; in a fleet turn it off on the workers and leave it on the monitor."`
	Role              string        `env:"ROLE" default:"worker" oneof:"worker,monitor,node" help:"worker: run tasks, the scheduler, the monitor and this node's node-local tasks; monitor: serve only the dashboard, the enqueue API and metrics; node: the node agent, which runs only the node-local tasks (journal_stream, log_rag_ingest) on its node and serves /healthz, /readyz and /metrics."`
	MonitorToken      string        `env:"MONITOR_TOKEN" secret:"true" help:"Admin bearer token for the dashboard and POST /api/v1/tasks. Never logged. Use at least 32 random characters (openssl rand -hex 32): only such a token gets in from an address throttled for failed authentications; a shorter one waits like a password (a warning at startup says so)."`
	MonitorUser       string        `env:"MONITOR_USER" help:"Admin basic-auth user for the dashboard and the API (with MONITOR_PASSWORD)."`
	MonitorPassword   string        `env:"MONITOR_PASSWORD" secret:"true" help:"Basic-auth password. Never logged. With no token and no user/password, the HTTP server binds to loopback only."`
	// MonitorViewToken, MonitorViewUser and MonitorViewPassword are the
	// view-only credential: dashboard read, no state change.
	MonitorViewToken    string     `env:"MONITOR_VIEW_TOKEN" secret:"true" help:"View-only bearer token: reads the dashboard, gets 403 on every state change (dashboard actions, POST /api/v1/tasks). Never logged. At least 32 characters to get in from a throttled address, as MONITOR_TOKEN."`
	MonitorViewUser     string     `env:"MONITOR_VIEW_USER" help:"View-only basic-auth user (with MONITOR_VIEW_PASSWORD)."`
	MonitorViewPassword string     `env:"MONITOR_VIEW_PASSWORD" secret:"true" help:"View-only basic-auth password. Never logged."`
	HTTPMaxConnections  int        `env:"HTTP_MAX_CONNECTIONS" default:"256" min:"1" help:"Most connections the HTTP server holds open at once; more wait in the kernel's accept queue without holding a descriptor of the process."`
	LogLevel            slog.Level `env:"LOG_LEVEL" default:"info" help:"debug, info, warn or error."`
	SchedulerEnabled    bool       `env:"SCHEDULER_ENABLED" default:"true" help:"Run the periodic scheduler in this process. Safe on every replica: each due run is enqueued once."`
	// TaskIntervals overrides periodic tasks' intervals by task name; a zero
	// duration disables the task.
	TaskIntervals map[string]time.Duration `env:"TASK_INTERVALS" help:"Per-task schedule overrides: comma-separated NAME=DURATION (\"kg_decay_task=12h\") or NAME=off to disable a task. Wins over STARWIKI_LINT_INTERVAL_MINUTES and KA_ORG_INTERVAL_SECONDS."`
	JournalUnit   string                   `env:"JOURNAL_UNIT" default:"stargazer" help:"systemd unit whose journal journal_stream tails on every node and log_rag_ingest reads."`
	JournalDir    string                   `env:"JOURNAL_DIR" help:"Directory of the journal files journal_stream and log_rag_ingest read (journalctl --directory), for a journal mounted elsewhere; every machine id's files there are read. Empty: this machine's journal (/var/log/journal and /run/log/journal)."`
	NodeName      string                   `env:"NODE_NAME" help:"Names this node for its log_rag_ingest cursor (one per node and unit). Empty: the machine id (/etc/machine-id, which outlives pods and renames), else the host name. In Kubernetes, spec.nodeName through the downward API."`
	// DeploymentID names this rollout; startup tasks run once per ID.
	DeploymentID string `env:"DEPLOYMENT_ID" check:"deployment_id" help:"Names this rollout: startup_channel_backfill is enqueued once per DEPLOYMENT_ID however many workers start (task ID startup_channel_backfill@<id>, kept 24 h). Set it per rollout (image tag, commit, Kubernetes pod-template-hash). Empty: derived from the worker binary (its VCS revision, else a hash of the file), so restarting the same build within 24 h does not backfill again."`
	// LegacyCoexistence, SGLeaderKey, LegacyLeaderKey and
	// LegacyRunStandDownWindow make a cut-over from the Python scheduler
	// safe by default (docs/migration.md, "Coexistence"); cutover.go
	// resolves them.
	LegacyCoexistence        bool   `env:"LEGACY_COEXISTENCE" default:"true" help:"The workers defer to a Python scheduler that may still run beside them (docs/migration.md): limbic_dedup_task and limbic_org_task stand down while the Python TaskSupervisor holds its lease (SG_LEADER_KEY); a task seen running in the Python scheduler stands down for the rest of its interval (LEGACY_RUN_STAND_DOWN_WINDOW); cursor-driven tasks start where the Python side left off, not in history. false: a deployment with no Python side, ever (the cursors then start from their own look-backs, anamnesis_digest at the first fragment); Python runs are still reported."`
	SGLeaderKey              string `env:"SG_LEADER_KEY" default:"sg:leader:supervisor" help:"The Python TaskSupervisor's leader lease, under the bot's own variable and default: while this key exists (and LEGACY_COEXISTENCE is on), limbic_dedup_task and limbic_org_task stand down at each occurrence; they run at the first occurrence after it is gone."`
	LegacyLeaderKey          string `env:"LEGACY_LEADER_KEY" help:"Older name of SG_LEADER_KEY, still honoured: when set it is the lease key. Setting both to different keys is an error."`
	LegacyRunStandDownWindow Window `env:"LEGACY_RUN_STAND_DOWN_WINDOW" default:"720h" help:"How long after the cut-over started (the first worker scheduler on this Redis) a task seen running in the Python scheduler stands down in Go for the rest of its interval, so a run is not paid twice. After it, such runs are only reported (log, stargazer_legacy_runs_total, alert): standing down for good on the word of a pub/sub message would let any stray publisher stop the Go side. 0 or off: never stand down."`
	// SingletonLease is how long a singleton run's lease lasts unrenewed.
	SingletonLease time.Duration `env:"SINGLETON_LEASE" default:"30s" help:"Lease of a running singleton task, renewed every third of it. A worker that stops renewing (dead, frozen, cut off) loses it after this long, and its ownership checks fail from then on."`
	// FastLeaseRecovery runs the worker's own lease recoverer.
	FastLeaseRecovery  bool   `env:"FAST_LEASE_RECOVERY" default:"true" help:"Requeue tasks of dead workers about 5 s after their 30 s lease expires (recovery in 35-40 s) instead of waiting for asynq's recoverer (60-120 s). false leaves recovery to asynq alone."`
	DebugEventsChannel string `env:"DEBUG_EVENTS_CHANNEL" default:"stargazer:debug_events" help:"Redis pub/sub channel of the scheduler_task_run debug events."`
}

// Roles of a process.
const (
	RoleWorker  = "worker"
	RoleMonitor = "monitor"
	RoleNode    = "node"
)

// Embedded reports whether no Redis was configured, so the worker runs an
// in-process one.
func (c Config) Embedded() bool { return c.RedisURL == "" }
