// Package config loads the worker's and the enqueuer's settings from
// environment variables (the original's config names, upper-cased) and
// command-line flags, and turns them into what the rest of the system needs:
// a Redis connection option, gating inputs, timeouts.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/jobs"
)

// Config holds every setting. The zero value is not useful; use Load.
type Config struct {
	RedisURL      string
	FalkorDBURL   string
	FalkorDBGraph string

	LLMBaseURL               string
	APIKey                   string
	LLMModel                 string
	KGExtractionModel        string
	FlashModel               string
	KAExtractionHTTPTimeout  time.Duration
	EmbeddingsBaseURL        string
	EmbeddingsModel          string
	EmbeddingsRatePerMinute  float64
	GeminiAPIKeys            []string
	GeminiBaseURL            string
	GeminiEmbeddingModel     string
	DiscordBotToken          string
	DiscordAPIBaseURL        string
	MatrixHomeserverURL      string
	MatrixAccessToken        string
	ChatLLMEnabled           bool
	LogRAGIngestEnabled      bool
	LegacyKGExtraction       bool
	StarwikiEnabled          bool
	StarwikiLintIntervalMins float64
	StarwikiStaleDays        int
	KAEnabled                bool
	KADedupEnabled           bool
	KAOrgEnabled             bool
	KAOrgIntervalSeconds     float64
	KAOrgHubDegreeThreshold  int
	KADedupIntervalSeconds   float64
	KGPruneAgeDays           int
	// KGDecayFactor, KGDecayMinWeight and KGBatchSize tune kg_decay_task
	// and the orphan GC of limbic_maintenance.
	KGDecayFactor    float64
	KGDecayMinWeight float64
	KGBatchSize      int
	KGBulkDir        string

	Concurrency        int
	ShutdownTimeout    time.Duration
	HTTPAddr           string
	DashboardPath      string
	DashboardReadOnly  bool
	QueueMetrics       bool
	Role               string
	MonitorToken       string
	MonitorUser        string
	MonitorPassword    string
	LogLevel           slog.Level
	SchedulerEnabled   bool
	DebugEventsChannel string
	JournalUnit        string
	// DeploymentID names this rollout; startup tasks run once per ID.
	DeploymentID string
	// SingletonLease is how long a singleton run's lease lasts unrenewed.
	SingletonLease time.Duration
	// FastLeaseRecovery runs the worker's own lease recoverer.
	FastLeaseRecovery bool
	// TaskIntervals overrides periodic tasks' intervals by task name; a zero
	// duration disables the task.
	TaskIntervals map[string]time.Duration
}

// Error is a configuration error. It names the setting so the operator
// knows what to fix.
type Error struct {
	Setting string
	Reason  string
}

func (e *Error) Error() string { return fmt.Sprintf("config: %s: %s", e.Setting, e.Reason) }

// ErrHelp is returned by Load when -h or -help was given.
var ErrHelp = flag.ErrHelp

// Setting documents one configuration variable.
type Setting struct {
	Env     string
	Default string
	Help    string
	Secret  bool
	set     func(c *Config, v string) error
}

// Flag is the command-line flag that overrides the variable.
func (s Setting) Flag() string { return strings.ReplaceAll(strings.ToLower(s.Env), "_", "-") }

func str(p func(*Config) *string) func(*Config, string) error {
	return func(c *Config, v string) error { *p(c) = v; return nil }
}

func boolean(p func(*Config) *bool) func(*Config, string) error {
	return func(c *Config, v string) error {
		switch strings.ToLower(strings.TrimSpace(v)) {
		case "1", "t", "true", "yes", "y", "on":
			*p(c) = true
		case "0", "f", "false", "no", "n", "off":
			*p(c) = false
		default:
			return errors.New("must be a boolean (true/false)")
		}
		return nil
	}
}

func number(p func(*Config) *float64, min float64) func(*Config, string) error {
	return func(c *Config, v string) error {
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil {
			return errors.New("must be a number")
		}
		if f < min {
			return fmt.Errorf("must be at least %g", min)
		}
		*p(c) = f
		return nil
	}
}

func integer(p func(*Config) *int, min int) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			return errors.New("must be an integer")
		}
		if n < min {
			return fmt.Errorf("must be at least %d", min)
		}
		*p(c) = n
		return nil
	}
}

func duration(p func(*Config) *time.Duration) func(*Config, string) error {
	return func(c *Config, v string) error {
		d, err := parseDuration(v)
		if err != nil {
			return err
		}
		*p(c) = d
		return nil
	}
}

// parseDuration accepts Go durations ("30s", "2m") and bare seconds ("30").
func parseDuration(v string) (time.Duration, error) {
	v = strings.TrimSpace(v)
	if f, err := strconv.ParseFloat(v, 64); err == nil {
		if f <= 0 {
			return 0, errors.New("must be positive")
		}
		return time.Duration(f * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, errors.New(`must be a duration such as "30s" or a number of seconds`)
	}
	if d <= 0 {
		return 0, errors.New("must be positive")
	}
	return d, nil
}

func httpURL(p func(*Config) *string) func(*Config, string) error {
	return func(c *Config, v string) error {
		if v != "" {
			u, err := url.Parse(v)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return errors.New("must be an http:// or https:// URL")
			}
		}
		*p(c) = v
		return nil
	}
}

// Settings lists every setting in the order the README documents them.
func Settings() []Setting {
	return []Setting{
		{Env: "REDIS_URL", Help: "Redis for the job queue and the bot's state: redis://[user:password@]host:port/db, rediss:// for TLS, unix:///path. With ?master_name=M it is a Sentinel URL (redis://sentinel:26379/0?master_name=M&addr=sentinel2:26379) and every process follows the primary across failovers. Empty: an embedded in-process Redis (demo only, nothing persists).", Secret: true,
			set: func(c *Config, v string) error {
				if v == "" {
					c.RedisURL = v
					return nil
				}
				if _, err := (Config{RedisURL: v}).Redis(); err != nil {
					var ce *Error
					if errors.As(err, &ce) {
						err = errors.New(ce.Reason)
					}
					return fmt.Errorf("must be a redis://, rediss:// or unix:// URL, or a Sentinel URL with master_name (%v)", err)
				}
				c.RedisURL = v
				return nil
			}},
		{Env: "FALKORDB_URL", Help: "FalkorDB (knowledge graph) as redis://host:port. Empty: graph tasks are not scheduled.", Secret: true,
			set: func(c *Config, v string) error {
				if v != "" {
					if _, err := redis.ParseURL(v); err != nil {
						return fmt.Errorf("must be a redis:// URL (%v)", err)
					}
				}
				c.FalkorDBURL = v
				return nil
			}},
		{Env: "FALKORDB_GRAPH", Default: "stargazer", Help: "Name of the knowledge graph in FalkorDB.", set: str(func(c *Config) *string { return &c.FalkorDBGraph })},
		{Env: "LLM_BASE_URL", Help: "OpenAI-compatible chat/completions base URL (OpenRouter or the local proxy). Empty: LLM tasks are not scheduled.", set: httpURL(func(c *Config) *string { return &c.LLMBaseURL })},
		{Env: "API_KEY", Help: "Bearer key for LLM_BASE_URL. Never logged.", Secret: true, set: str(func(c *Config) *string { return &c.APIKey })},
		{Env: "LLM_MODEL", Default: "google/gemini-2.5-flash", Help: "Default chat model (channel summaries).", set: str(func(c *Config) *string { return &c.LLMModel })},
		{Env: "KG_EXTRACTION_MODEL", Default: "google/gemini-2.5-flash", Help: "Model for knowledge extraction, dedup, org and sunset calls.", set: str(func(c *Config) *string { return &c.KGExtractionModel })},
		{Env: "FLASH_MODEL", Default: "google/gemini-2.5-flash-lite", Help: "Cheap model for channel heartbeats.", set: str(func(c *Config) *string { return &c.FlashModel })},
		{Env: "KA_EXTRACTION_HTTP_TIMEOUT_SECONDS", Default: "120", Help: "Timeout of one extraction LLM call (the connect timeout is 10 s).", set: duration(func(c *Config) *time.Duration { return &c.KAExtractionHTTPTimeout })},
		{Env: "EMBEDDINGS_BASE_URL", Help: "OpenAI-compatible embeddings base URL. Empty: LLM_BASE_URL.", set: httpURL(func(c *Config) *string { return &c.EmbeddingsBaseURL })},
		{Env: "EMBEDDINGS_MODEL", Default: "text-embedding-3-small", Help: "Embeddings model.", set: str(func(c *Config) *string { return &c.EmbeddingsModel })},
		{Env: "EMBEDDINGS_RATE_PER_MINUTE", Default: "60", Help: "Embeddings calls per minute (one call embeds up to 64 messages) shared by all workers through Redis, so a backfill cannot exhaust the endpoint's quota; bursts of up to a tenth of it. A throttled batch is rescheduled, not failed. 0: no limit.", set: number(func(c *Config) *float64 { return &c.EmbeddingsRatePerMinute }, 0)},
		{Env: "GEMINI_API_KEYS", Help: "Comma-separated shared Gemini key pool probed by gemini_key_probe. Never logged.", Secret: true,
			set: func(c *Config, v string) error {
				c.GeminiAPIKeys = nil
				for _, k := range strings.Split(v, ",") {
					if k = strings.TrimSpace(k); k != "" {
						c.GeminiAPIKeys = append(c.GeminiAPIKeys, k)
					}
				}
				return nil
			}},
		{Env: "GEMINI_BASE_URL", Default: "https://generativelanguage.googleapis.com", Help: "Gemini API base URL.", set: httpURL(func(c *Config) *string { return &c.GeminiBaseURL })},
		{Env: "GEMINI_EMBEDDING_MODEL", Default: "gemini-embedding-001", Help: "Embedding model of the Gemini key pool, which gemini_key_probe calls: quotas are per model, so it must be the model the bot's pool uses.", set: str(func(c *Config) *string { return &c.GeminiEmbeddingModel })},
		{Env: "DISCORD_BOT_TOKEN", Help: "Discord bot token for startup_channel_backfill. Never logged.", Secret: true, set: str(func(c *Config) *string { return &c.DiscordBotToken })},
		{Env: "DISCORD_API_BASE_URL", Default: "https://discord.com/api/v10", Help: "Discord REST API root.", set: httpURL(func(c *Config) *string { return &c.DiscordAPIBaseURL })},
		{Env: "MATRIX_HOMESERVER_URL", Help: "Matrix homeserver for startup_channel_backfill.", set: httpURL(func(c *Config) *string { return &c.MatrixHomeserverURL })},
		{Env: "MATRIX_ACCESS_TOKEN", Help: "Matrix access token. Never logged.", Secret: true, set: str(func(c *Config) *string { return &c.MatrixAccessToken })},
		{Env: "BACKGROUND_SCHEDULER_CHAT_LLM_ENABLED", Default: "true", Help: "false drops every task that calls chat/completions (prompt tick, extraction, bulk, summaries, heartbeat, consolidation, anamnesis, anchoring, sunset).", set: boolean(func(c *Config) *bool { return &c.ChatLLMEnabled })},
		{Env: "BACKGROUND_SCHEDULER_LOG_RAG_INGEST_ENABLED", Default: "false", Help: "Opt-in for log_rag_ingest.", set: boolean(func(c *Config) *bool { return &c.LogRAGIngestEnabled })},
		{Env: "LEGACY_KG_EXTRACTION", Default: "false", Help: "Opt-in for auto_kg_extraction.", set: boolean(func(c *Config) *bool { return &c.LegacyKGExtraction })},
		{Env: "STARWIKI_ENABLED", Default: "false", Help: "Opt-in for starwiki_lint.", set: boolean(func(c *Config) *bool { return &c.StarwikiEnabled })},
		{Env: "STARWIKI_LINT_INTERVAL_MINUTES", Default: "60", Help: "starwiki_lint interval in minutes (floor: 5 minutes).", set: number(func(c *Config) *float64 { return &c.StarwikiLintIntervalMins }, 0)},
		{Env: "STARWIKI_STALE_DAYS", Default: "180", Help: "starwiki_lint reports a page not updated for this many days as stale.", set: integer(func(c *Config) *int { return &c.StarwikiStaleDays }, 1)},
		{Env: "KA_ENABLED", Default: "false", Help: "Knowledge anchoring: limbic_anchoring_worker, limbic_sunset_processor, limbic_maintenance.", set: boolean(func(c *Config) *bool { return &c.KAEnabled })},
		{Env: "KA_DEDUP_ENABLED", Default: "true", Help: "limbic_dedup_task.", set: boolean(func(c *Config) *bool { return &c.KADedupEnabled })},
		{Env: "KA_ORG_ENABLED", Default: "true", Help: "limbic_org_task.", set: boolean(func(c *Config) *bool { return &c.KAOrgEnabled })},
		{Env: "KA_ORG_INTERVAL_SECONDS", Default: "600", Help: "Interval of limbic_org_task.", set: number(func(c *Config) *float64 { return &c.KAOrgIntervalSeconds }, 1)},
		{Env: "KA_ORG_HUB_DEGREE_THRESHOLD", Default: "1", Help: "Minimum degree of a hub entity for limbic_org_task.", set: integer(func(c *Config) *int { return &c.KAOrgHubDegreeThreshold }, 1)},
		{Env: "KA_DEDUP_INTERVAL_SECONDS", Default: "600", Help: "Interval of limbic_dedup_task (the original loop paced itself; this is the Go port's pace).", set: number(func(c *Config) *float64 { return &c.KADedupIntervalSeconds }, 1)},
		{Env: "KG_PRUNE_AGE_DAYS", Default: "30", Help: "kg_consolidation_task deletes entities with no relationship and at most one mention that were last seen more than this many days ago.", set: integer(func(c *Config) *int { return &c.KGPruneAgeDays }, 1)},
		{Env: "KG_DECAY_FACTOR", Default: "0.95", Help: "kg_decay_task multiplies every relationship weight by this, once per run; in (0, 1].",
			set: func(c *Config, v string) error {
				f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
				if err != nil || !(f > 0 && f <= 1) {
					return errors.New("must be a number in (0, 1]")
				}
				c.KGDecayFactor = f
				return nil
			}},
		{Env: "KG_DECAY_MIN_WEIGHT", Default: "0.1", Help: "kg_decay_task deletes relationships whose decayed weight is below this (0: none).", set: number(func(c *Config) *float64 { return &c.KGDecayMinWeight }, 0)},
		{Env: "KG_BATCH_SIZE", Default: "2000", Help: "Most edges or nodes one knowledge-graph maintenance write touches (decay, orphan GC), 100-5000: each write's commit stalls the whole FalkorDB server.",
			set: func(c *Config, v string) error {
				n, err := strconv.Atoi(strings.TrimSpace(v))
				if err != nil || n < 100 || n > 5000 {
					return errors.New("must be an integer from 100 to 5000")
				}
				c.KGBatchSize = n
				return nil
			}},
		{Env: "KG_BULK_DIR", Default: "var/kg_bulk_scheduled", Help: "agentic_kg_bulk_incremental writes each run's working set and results under <dir>/<UTC timestamp>/ (relative to the working directory).", set: str(func(c *Config) *string { return &c.KGBulkDir })},
		{Env: "WORKER_CONCURRENCY", Default: "10", Help: "Tasks one worker process runs at once.", set: integer(func(c *Config) *int { return &c.Concurrency }, 1)},
		{Env: "SHUTDOWN_TIMEOUT", Default: "30s", Help: "On SIGTERM/SIGINT, how long in-flight tasks may run before they go back to the queue.", set: duration(func(c *Config) *time.Duration { return &c.ShutdownTimeout })},
		{Env: "HTTP_ADDR", Default: "127.0.0.1:8080", Help: "Address of the dashboard, /metrics, /healthz and /readyz.",
			set: func(c *Config, v string) error {
				if _, _, err := net.SplitHostPort(v); err != nil {
					return errors.New("must be host:port")
				}
				c.HTTPAddr = v
				return nil
			}},
		{Env: "DASHBOARD_PATH", Default: "/dashboard", Help: "Root path of the asynqmon dashboard.",
			set: func(c *Config, v string) error {
				if !strings.HasPrefix(v, "/") || v == "/" {
					return errors.New(`must start with "/" and not be "/" alone`)
				}
				c.DashboardPath = strings.TrimSuffix(v, "/")
				return nil
			}},
		{Env: "DASHBOARD_READ_ONLY", Default: "false", Help: "Hide the dashboard's delete, run, archive and pause actions (asynqmon refuses non-GET API calls).", set: boolean(func(c *Config) *bool { return &c.DashboardReadOnly })},
		{Env: "QUEUE_METRICS", Default: "true", Help: "Export asynq queue sizes and latency on /metrics. Each scrape reads every queue from Redis, so in a fleet turn it off on the workers and leave it on the monitor.", set: boolean(func(c *Config) *bool { return &c.QueueMetrics })},
		{Env: "ROLE", Default: "worker", Help: "worker: run tasks, the scheduler and the monitor; monitor: serve only the dashboard, the enqueue API and metrics.",
			set: func(c *Config, v string) error {
				if v != RoleWorker && v != RoleMonitor {
					return errors.New("must be worker or monitor")
				}
				c.Role = v
				return nil
			}},
		{Env: "MONITOR_TOKEN", Help: "Bearer token for the dashboard and POST /api/v1/tasks. Never logged.", Secret: true, set: str(func(c *Config) *string { return &c.MonitorToken })},
		{Env: "MONITOR_USER", Help: "Basic-auth user for the dashboard and the API (with MONITOR_PASSWORD).", set: str(func(c *Config) *string { return &c.MonitorUser })},
		{Env: "MONITOR_PASSWORD", Help: "Basic-auth password. Never logged. With no token and no user/password, the HTTP server binds to loopback only.", Secret: true, set: str(func(c *Config) *string { return &c.MonitorPassword })},
		{Env: "LOG_LEVEL", Default: "info", Help: "debug, info, warn or error.",
			set: func(c *Config, v string) error {
				if err := c.LogLevel.UnmarshalText([]byte(v)); err != nil {
					return errors.New("must be debug, info, warn or error")
				}
				return nil
			}},
		{Env: "SCHEDULER_ENABLED", Default: "true", Help: "Run the periodic scheduler in this process. Safe on every replica: each due run is enqueued once.", set: boolean(func(c *Config) *bool { return &c.SchedulerEnabled })},
		{Env: "TASK_INTERVALS", Help: "Per-task schedule overrides: comma-separated NAME=DURATION (\"kg_decay_task=12h\") or NAME=off to disable a task. Wins over STARWIKI_LINT_INTERVAL_MINUTES and KA_ORG_INTERVAL_SECONDS.",
			set: func(c *Config, v string) error {
				c.TaskIntervals = map[string]time.Duration{}
				for _, item := range strings.Split(v, ",") {
					if item = strings.TrimSpace(item); item == "" {
						continue
					}
					name, val, ok := strings.Cut(item, "=")
					name, val = strings.TrimSpace(name), strings.TrimSpace(val)
					if !ok || name == "" {
						return fmt.Errorf("%q is not NAME=DURATION or NAME=off", item)
					}
					if strings.EqualFold(val, "off") {
						c.TaskIntervals[name] = 0
						continue
					}
					d, err := parseDuration(val)
					if err != nil {
						return fmt.Errorf("%s: %v", name, err)
					}
					if d < time.Second {
						return fmt.Errorf("%s: interval must be at least 1s", name)
					}
					c.TaskIntervals[name] = d
				}
				return nil
			}},
		{Env: "JOURNAL_UNIT", Default: "stargazer", Help: "systemd unit whose journal journal_stream tails on every node and log_rag_ingest reads.", set: str(func(c *Config) *string { return &c.JournalUnit })},
		{Env: "DEPLOYMENT_ID", Help: "Names this rollout: startup_channel_backfill is enqueued once per DEPLOYMENT_ID however many workers start (task ID startup_channel_backfill@<id>, kept 24 h). Set it per rollout (image tag, commit, Kubernetes pod-template-hash). Empty: derived from the worker binary (its VCS revision, else a hash of the file), so restarting the same build within 24 h does not backfill again.",
			set: func(c *Config, v string) error {
				if len(v) > 128 || strings.IndexFunc(v, func(r rune) bool {
					return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._:+-/", r))
				}) >= 0 {
					return errors.New("must be at most 128 letters, digits and . _ : + - /")
				}
				c.DeploymentID = v
				return nil
			}},
		{Env: "SINGLETON_LEASE", Default: "30s", Help: "Lease of a running singleton task, renewed every third of it. A worker that stops renewing (dead, frozen, cut off) loses it after this long, and its ownership checks fail from then on.", set: duration(func(c *Config) *time.Duration { return &c.SingletonLease })},
		{Env: "FAST_LEASE_RECOVERY", Default: "true", Help: "Requeue tasks of dead workers about 5 s after their 30 s lease expires (recovery in 35-40 s) instead of waiting for asynq's recoverer (60-120 s). false leaves recovery to asynq alone.", set: boolean(func(c *Config) *bool { return &c.FastLeaseRecovery })},
		{Env: "DEBUG_EVENTS_CHANNEL", Default: "stargazer:debug_events", Help: "Redis pub/sub channel of the scheduler_task_run debug events.", set: str(func(c *Config) *string { return &c.DebugEventsChannel })},
	}
}

// Roles of a process.
const (
	RoleWorker  = "worker"
	RoleMonitor = "monitor"
)

// Load reads the settings from getenv and then from args (flags win). An
// invalid value yields an *Error naming the variable.
func Load(getenv func(string) string, args []string, usage io.Writer) (Config, error) {
	var c Config
	settings := Settings()
	fs := flag.NewFlagSet("stargazer-jobs", flag.ContinueOnError)
	fs.SetOutput(usage)
	flagVals := make([]*string, len(settings))
	for i, s := range settings {
		flagVals[i] = fs.String(s.Flag(), "", fmt.Sprintf("%s (env %s, default %q)", s.Help, s.Env, s.Default))
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return c, ErrHelp
		}
		return c, &Error{Setting: "command line", Reason: err.Error()}
	}
	if fs.NArg() > 0 {
		return c, &Error{Setting: "command line", Reason: fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	explicit := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { explicit[f.Name] = true })
	for i, s := range settings {
		v, name := s.Default, s.Env
		if ev := getenv(s.Env); ev != "" {
			v = ev
		}
		if explicit[s.Flag()] {
			v, name = *flagVals[i], "-"+s.Flag()
		}
		if err := s.set(&c, v); err != nil {
			reason := err.Error()
			if !s.Secret {
				reason = fmt.Sprintf("%q %s", v, reason)
			}
			return c, &Error{Setting: name, Reason: reason}
		}
	}
	if (c.MonitorUser == "") != (c.MonitorPassword == "") {
		return c, &Error{Setting: "MONITOR_USER", Reason: "MONITOR_USER and MONITOR_PASSWORD must be set together"}
	}
	return c, nil
}

// Embedded reports whether no Redis was configured, so the worker runs an
// in-process one.
func (c Config) Embedded() bool { return c.RedisURL == "" }

// RedisOptions parses RedisURL for go-redis.
func (c Config) RedisOptions() (*redis.Options, error) {
	opt, err := redis.ParseURL(c.RedisURL)
	if err != nil {
		return nil, &Error{Setting: "REDIS_URL", Reason: err.Error()}
	}
	return opt, nil
}

// Redis is a resolved REDIS_URL: one server, or a Sentinel-managed primary
// when the URL names a master (?master_name=...).
type Redis struct {
	Single   *redis.Options
	Failover *redis.FailoverOptions
}

// Redis resolves REDIS_URL. A URL with master_name is a Sentinel URL:
// redis://[user:password@]sentinel:26379/db?master_name=M&addr=sentinel2:26379,
// where user and password are the Sentinels' and the primary's password
// comes from the password query parameter.
func (c Config) Redis() (Redis, error) {
	if strings.Contains(c.RedisURL, "master_name=") {
		fo, err := redis.ParseFailoverURL(c.RedisURL)
		if err != nil {
			return Redis{}, &Error{Setting: "REDIS_URL", Reason: err.Error()}
		}
		if fo.MasterName == "" {
			return Redis{}, &Error{Setting: "REDIS_URL", Reason: "master_name is empty"}
		}
		return Redis{Failover: fo}, nil
	}
	opt, err := c.RedisOptions()
	if err != nil {
		return Redis{}, err
	}
	return Redis{Single: opt}, nil
}

// NewClient returns a go-redis client; with Sentinel it follows the
// current primary across failovers. Its calls return by their context's
// deadline (docs/deadlines.md), not only at go-redis' read timeout.
func (r Redis) NewClient() *redis.Client {
	if r.Failover != nil {
		r.Failover.ContextTimeoutEnabled = true
		return redis.NewFailoverClient(r.Failover)
	}
	r.Single.ContextTimeoutEnabled = true
	return redis.NewClient(r.Single)
}

// Asynq returns asynq's connection option for the same Redis (asynqmon
// takes one).
func (r Redis) Asynq() asynq.RedisConnOpt {
	if f := r.Failover; f != nil {
		return asynq.RedisFailoverClientOpt{
			MasterName: f.MasterName, SentinelAddrs: f.SentinelAddrs,
			SentinelUsername: f.SentinelUsername, SentinelPassword: f.SentinelPassword,
			Username: f.Username, Password: f.Password, DB: f.DB, TLSConfig: f.TLSConfig, PoolSize: f.PoolSize,
		}
	}
	return AsynqRedis(r.Single)
}

// String names the server for messages, without credentials.
func (r Redis) String() string {
	if r.Failover != nil {
		return fmt.Sprintf("sentinel master %q via %s", r.Failover.MasterName, strings.Join(r.Failover.SentinelAddrs, ","))
	}
	return r.Single.Addr
}

// FailFast shortens timeouts and retries, for a CLI that should report an
// unreachable Redis at once.
func (r Redis) FailFast() {
	if r.Failover != nil {
		r.Failover.MaxRetries, r.Failover.DialTimeout = 1, 3*time.Second
		return
	}
	r.Single.MaxRetries, r.Single.DialTimeout = 1, 3*time.Second
}

// AsynqRedis converts go-redis options into asynq's connection option.
func AsynqRedis(o *redis.Options) asynq.RedisClientOpt {
	return asynq.RedisClientOpt{
		Network:   o.Network,
		Addr:      o.Addr,
		Username:  o.Username,
		Password:  o.Password,
		DB:        o.DB,
		TLSConfig: o.TLSConfig,
		PoolSize:  o.PoolSize,
	}
}

// Available lists the dependencies this configuration provides.
func (c Config) Available() jobs.Requirement {
	r := jobs.Redis | jobs.Config
	if c.FalkorDBURL != "" {
		r |= jobs.KG
	}
	if c.LLMBaseURL != "" {
		r |= jobs.LLM
	}
	if c.EmbeddingsBaseURL != "" || c.LLMBaseURL != "" {
		r |= jobs.Embeddings
	}
	if len(c.GeminiAPIKeys) > 0 {
		r |= jobs.GeminiKeys
	}
	if c.DiscordBotToken != "" || (c.MatrixHomeserverURL != "" && c.MatrixAccessToken != "") {
		r |= jobs.Platform
	}
	return r
}

// GatingEnv is the input of jobs.Gate for this configuration and catalog.
// implemented is the set of tasks the running build has handlers for (nil:
// all). A TASK_INTERVALS entry naming a task that is not in the catalog is a
// configuration error.
func (c Config) GatingEnv(catalog []jobs.Spec, implemented map[string]bool) (jobs.Env, error) {
	known := map[string]bool{}
	for _, s := range catalog {
		known[s.Name] = true
	}
	for name := range c.TaskIntervals {
		if !known[name] {
			return jobs.Env{}, &Error{Setting: "TASK_INTERVALS", Reason: fmt.Sprintf("unknown task %q", name)}
		}
	}
	return jobs.Env{
		Available:      c.Available(),
		ChatLLMEnabled: c.ChatLLMEnabled,
		Flags: map[string]bool{
			"background_scheduler_log_rag_ingest_enabled": c.LogRAGIngestEnabled,
			"legacy_kg_extraction":                        c.LegacyKGExtraction,
			"starwiki_enabled":                            c.StarwikiEnabled,
			"ka_enabled":                                  c.KAEnabled,
			"ka_dedup_enabled":                            c.KADedupEnabled,
			"ka_org_enabled":                              c.KAOrgEnabled,
		},
		StarwikiLintIntervalMinutes: c.StarwikiLintIntervalMins,
		KAOrgIntervalSeconds:        c.KAOrgIntervalSeconds,
		KADedupIntervalSeconds:      c.KADedupIntervalSeconds,
		Implemented:                 implemented,
		Intervals:                   c.TaskIntervals,
	}, nil
}
