package app

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/handlers"
	"github.com/stargazer/stargazer-jobs/internal/clients/gemini"
	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/clients/platform/discord"
	"github.com/stargazer/stargazer-jobs/internal/clients/platform/matrix"
	"github.com/stargazer/stargazer-jobs/internal/config"
	"github.com/stargazer/stargazer-jobs/internal/embeddedredis"
	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
	"github.com/stargazer/stargazer-jobs/internal/logthrottle"
	"github.com/stargazer/stargazer-jobs/internal/queue/asynqcompat"
	"github.com/stargazer/stargazer-jobs/internal/queue/events"
	"github.com/stargazer/stargazer-jobs/internal/queue/periodic"
	"github.com/stargazer/stargazer-jobs/internal/queue/ratelimit"
	"github.com/stargazer/stargazer-jobs/internal/queue/server"
	"github.com/stargazer/stargazer-jobs/jobs"
	"github.com/stargazer/stargazer-jobs/monitor"
)

// EmbeddingsRateKey holds the shared embeddings rate limit
// (EMBEDDINGS_RATE_PER_MINUTE).
const EmbeddingsRateKey = "sgjobs:ratelimit:embeddings"

// Params are what Run needs from its process.
type Params struct {
	Args   []string
	Getenv func(string) string
	Stdout io.Writer
	Stderr io.Writer
	// Catalog is the task catalog (default jobs.Catalog()). Tests extend it
	// with tasks of their own, served by Extra.
	Catalog []jobs.Spec
	// Extra handlers, by task name, added to the ones of package handlers.
	Extra map[string]asynq.Handler
}

// Run is the worker process: it loads the configuration, starts the
// monitor, the asynq server and the scheduler, and blocks until ctx is
// cancelled (SIGTERM/SIGINT), then shuts down gracefully.
func Run(ctx context.Context, p Params) error {
	cfg, err := config.Load(p.Getenv, p.Args, p.Stderr)
	if err != nil {
		return err
	}
	catalog := p.Catalog
	if catalog == nil {
		catalog = jobs.Catalog()
	}
	implemented := handlers.Implemented()
	for name := range p.Extra {
		implemented[name] = true
	}
	env, err := cfg.GatingEnv(catalog, implemented)
	if err != nil {
		return err
	}
	// A component's repeated warnings (a Redis outage) are logged once per
	// minute with a count; go-redis's own lines join the JSON log.
	throttled := logthrottle.New(slog.NewJSONHandler(p.Stdout, &slog.HandlerOptions{Level: cfg.LogLevel}), logthrottle.Interval)
	defer throttled.Flush()
	log := slog.New(throttled)
	redis.SetLogger(logthrottle.RedisLogger{L: log})

	if cfg.Embedded() {
		emb, err := embeddedredis.Start()
		if err != nil {
			return err
		}
		defer emb.Close()
		cfg.RedisURL = emb.URL()
		log.Warn("no REDIS_URL set: using an embedded in-process Redis; nothing persists and no other process can share it",
			"embedded_redis", emb.Addr())
	}
	rconf, err := cfg.Redis()
	if err != nil {
		return err
	}
	rdb := rconf.NewClient()
	defer rdb.Close()
	connOpt := rconf.Asynq()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := monitor.NewMetrics(reg)
	insp := asynq.NewInspector(connOpt)
	defer insp.Close()
	if cfg.QueueMetrics {
		reg.MustRegister(monitor.NewQueueCollector(insp))
	}

	decisions := jobs.Gate(catalog, env)

	client := asynq.NewClient(connOpt)
	defer client.Close()
	auth := monitor.Auth{Token: cfg.MonitorToken, User: cfg.MonitorUser, Password: cfg.MonitorPassword}
	mon := monitor.New(monitor.Options{
		Gatherer: reg, Registerer: reg,
		Redis:        monitor.PingFunc(func(ctx context.Context) error { return rdb.Ping(ctx).Err() }),
		RedisConnOpt: connOpt, DashboardPath: cfg.DashboardPath, ReadOnly: cfg.DashboardReadOnly,
		Auth: auth, Catalog: catalog, Enqueuer: client,
	})
	defer mon.Close()
	addr := cfg.HTTPAddr
	if !auth.Enabled() {
		addr = loopback(addr)
		log.Warn("no MONITOR_TOKEN or MONITOR_USER/MONITOR_PASSWORD configured: the dashboard and the enqueue API are unauthenticated, so the HTTP server binds to loopback only",
			"addr", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return &config.Error{Setting: "HTTP_ADDR", Reason: err.Error()}
	}
	httpSrv := &http.Server{Handler: mon, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server stopped", "error", err)
		}
	}()
	defer func() {
		shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = httpSrv.Shutdown(shutCtx)
	}()
	log.Info("monitor listening", "addr", ln.Addr().String(), "auth", auth.Enabled(), "read_only", cfg.DashboardReadOnly,
		"dashboard", "http://"+ln.Addr().String()+cfg.DashboardPath+"/", "metrics", "/metrics", "api", "/api/v1/tasks")

	if cfg.Role == config.RoleMonitor {
		log.Info("monitor role: serving the dashboard, the API and metrics; running no tasks and no scheduler")
		<-ctx.Done()
		log.Info("monitor stopped")
		return nil
	}
	logCatalog(log, decisions)

	publisher := events.NewPublisher(rdb, cfg.DebugEventsChannel)
	asyncEvents := events.NewAsync(publisher, 10_000)
	asyncEvents.CountDropsIn(metrics.EventsDropped)
	evCtx, stopEvents := context.WithCancel(context.WithoutCancel(ctx))
	go asyncEvents.Run(evCtx)
	defer func() { stopEvents(); <-asyncEvents.Done() }() // after the server: flush the last runs' events
	wopt := server.Options{
		Redis: connOpt, Concurrency: cfg.Concurrency, ShutdownTimeout: cfg.ShutdownTimeout,
		Logger: log, Metrics: metrics, Events: asyncEvents,
		Catalog: catalog, RedisClient: rdb, SingletonLease: cfg.SingletonLease,
	}
	mux := server.Mux(wopt)
	hdeps := handlers.Deps{
		Redis: rdb, Logger: log, JournalUnit: cfg.JournalUnit,
		Models:   handlers.Models{Chat: cfg.LLMModel, Extraction: cfg.KGExtractionModel, Flash: cfg.FlashModel, Embeddings: cfg.EmbeddingsModel},
		Enqueuer: client, Events: publisher, Counter: metrics,
		Intervals:          map[string]time.Duration{},
		StarwikiStaleAfter: time.Duration(cfg.StarwikiStaleDays) * 24 * time.Hour,
		OrgHubDegree:       cfg.KAOrgHubDegreeThreshold,
		PruneAge:           time.Duration(cfg.KGPruneAgeDays) * 24 * time.Hour,
		KGBulkDir:          cfg.KGBulkDir,
	}
	for _, d := range decisions {
		hdeps.Intervals[d.Spec.Name] = d.Interval
	}
	if cfg.FalkorDBURL != "" {
		g, closeGraph, err := openGraph(ctx, log, cfg)
		if err != nil {
			return err
		}
		defer closeGraph()
		hdeps.Graph = g
		hdeps.KG = handlers.KGSettings{DecayFactor: cfg.KGDecayFactor, DecayMinWeight: cfg.KGDecayMinWeight, BatchSize: cfg.KGBatchSize}
	}
	if cfg.LLMBaseURL != "" {
		hdeps.LLM = llm.New(llm.Options{BaseURL: cfg.LLMBaseURL, APIKey: cfg.APIKey, Timeout: cfg.KAExtractionHTTPTimeout, Observer: metrics})
	}
	if u := cmp.Or(cfg.EmbeddingsBaseURL, cfg.LLMBaseURL); u != "" {
		hdeps.Embedder = llm.New(llm.Options{BaseURL: u, APIKey: cfg.APIKey, Timeout: cfg.KAExtractionHTTPTimeout, Observer: metrics})
	}
	if len(cfg.GeminiAPIKeys) > 0 {
		prober, err := gemini.NewProber(gemini.NewPool(rdb), gemini.ProberOptions{
			BaseURL: cfg.GeminiBaseURL, Keys: cfg.GeminiAPIKeys, Model: cfg.GeminiEmbeddingModel,
		})
		if err != nil {
			return err
		}
		hdeps.KeyProber = prober
	}
	if cfg.EmbeddingsRatePerMinute > 0 {
		hdeps.EmbedLimiter = ratelimit.New(rdb, EmbeddingsRateKey, cfg.EmbeddingsRatePerMinute, int(cfg.EmbeddingsRatePerMinute/10))
	}
	if cfg.DiscordBotToken != "" {
		hdeps.Platforms = append(hdeps.Platforms, discord.New(discord.Options{BaseURL: cfg.DiscordAPIBaseURL, Token: cfg.DiscordBotToken}))
	}
	if cfg.MatrixHomeserverURL != "" && cfg.MatrixAccessToken != "" {
		hdeps.Platforms = append(hdeps.Platforms, matrix.New(matrix.Options{HomeserverURL: cfg.MatrixHomeserverURL, Token: cfg.MatrixAccessToken}))
	}
	for _, r := range handlers.Register(mux, hdeps, catalog, cfg.Available()) {
		if !r.Registered {
			log.Debug("handler not registered", "task", r.Task, "reason", r.Reason)
		}
	}
	for name, h := range p.Extra {
		mux.Handle(name, h)
	}

	waitForRedis(ctx, log, rdb)
	asynqcompat.Gate(log.With("component", "asynqcompat")) // before anything uses asynq's private layout
	srv := server.NewServer(wopt)
	if err := srv.Start(mux); err != nil {
		return fmt.Errorf("starting asynq server: %w", err)
	}
	log.Info("worker started", "concurrency", cfg.Concurrency, "queues", jobs.Queues())

	if cfg.SchedulerEnabled {
		enqueueStartup(ctx, log, client, decisions, func() (string, bool) { return DeploymentID(cfg.DeploymentID) })
	}

	var wg sync.WaitGroup
	schedCtx, stopSched := context.WithCancel(ctx)
	defer stopSched()
	if cfg.FastLeaseRecovery {
		wg.Add(1)
		go func() {
			defer wg.Done()
			asynqcompat.RunRecoverer(schedCtx, log.With("component", "recoverer"), rdb, slices.Sorted(maps.Keys(jobs.Queues())), asynqcompat.RecoverEvery)
		}()
	}
	if cfg.SchedulerEnabled {
		sched, err := periodic.New(periodic.Config{
			Redis: rdb, Enqueuer: client, States: periodic.InspectorStates{Inspector: insp},
			Observer: schedulerMetrics{metrics}, Logger: log.With("component", "scheduler"),
		}, entries(decisions))
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() { defer wg.Done(); sched.Run(schedCtx) }()
		log.Info("scheduler started")
	} else {
		log.Info("scheduler disabled (SCHEDULER_ENABLED=false): this process only runs tasks")
	}

	local := handlers.NodeLocal(hdeps)
	for _, d := range decisions {
		if fn := local[d.Spec.Name]; d.Scheduled && d.Spec.Kind == jobs.NodeLocal && fn != nil {
			wg.Add(1)
			go func() {
				defer wg.Done()
				superviseLocal(schedCtx, log.With("task", d.Spec.Name), d.Spec.InitialDelay, d.Interval, fn)
			}()
		}
	}

	<-ctx.Done()
	log.Info("shutting down", "shutdown_timeout", cfg.ShutdownTimeout.String())
	stopSched()
	wg.Wait()
	// Stop fetching first, then give in-flight tasks until the timeout;
	// asynq puts unfinished ones back on the queue.
	srv.Stop()
	srv.Shutdown()
	log.Info("worker stopped")
	return nil
}

// superviseLocal runs a node-local loop after its initial delay and restarts
// it restart after every end, as the original scheduler did, until ctx ends
// (which also ends the loop's own work, killing any child process).
func superviseLocal(ctx context.Context, log *slog.Logger, initial, restart time.Duration, fn func(context.Context) error) {
	wait := initial
	quiet := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = restart
		err := fn(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, handlers.ErrNotOnThisNode):
			if !quiet {
				log.Info("node-local task cannot run on this node; it idles and checks again periodically", "reason", err.Error(), "retry_every", restart.String())
				quiet = true
			}
		case err != nil:
			log.Warn("node-local task ended with an error; restarting", "error", err, "restart_in", restart.String())
		default:
			log.Info("node-local task ended; restarting", "restart_in", restart.String())
		}
	}
}

// loopback rewrites addr's host to the loopback address, keeping its port.
func loopback(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); (ip != nil && ip.IsLoopback()) || host == "localhost" {
		return addr
	}
	return net.JoinHostPort("127.0.0.1", port)
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

func logCatalog(log *slog.Logger, ds []jobs.Decision) {
	n := 0
	for _, d := range ds {
		switch {
		case d.Scheduled && d.Spec.Kind == jobs.Child:
			n++
			log.Info("task available: enqueued by other tasks or by hand", "task", d.Spec.Name, "kind", d.Spec.Kind, "queue", d.Spec.Queue)
		case d.Scheduled && d.Spec.Kind == jobs.Startup:
			n++
			log.Info("task scheduled once per deployment", "task", d.Spec.Name, "kind", d.Spec.Kind, "queue", d.Spec.Queue)
		case d.Scheduled:
			n++
			log.Info("task scheduled", "task", d.Spec.Name, "kind", d.Spec.Kind,
				"interval", d.Interval.String(), "initial_delay", d.Spec.InitialDelay.String(), "queue", d.Spec.Queue)
		default:
			log.Info("task skipped", "task", d.Spec.Name, "reason", d.SkipReason)
		}
	}
	log.Info("catalog gated", "scheduled", n, "skipped", len(ds)-n)
}

// entries turns the scheduled decisions into scheduler entries.
func entries(ds []jobs.Decision) []periodic.Entry {
	var out []periodic.Entry
	for _, d := range ds {
		if !d.Scheduled || d.Spec.Kind == jobs.Startup || d.Spec.Kind == jobs.NodeLocal || d.Spec.Kind == jobs.Child {
			continue
		}
		payload, err := jobs.EncodePayload(d.Spec.NewPayload())
		if err != nil {
			panic(fmt.Sprintf("catalog default payload of %s is invalid: %v", d.Spec.Name, err))
		}
		e := periodic.Entry{
			Name: d.Spec.Name, Interval: d.Interval, InitialDelay: d.Spec.InitialDelay,
			Queue: d.Spec.Queue, Payload: payload,
			Options: []asynq.Option{asynq.MaxRetry(d.Spec.MaxRetry), asynq.Timeout(d.Spec.Timeout)},
		}
		if d.Spec.Singleton {
			e.Unique = d.Spec.UniqueTTL()
		}
		out = append(out, e)
	}
	return out
}

type schedulerMetrics struct{ m *monitor.Metrics }

// lateThreshold separates on-time fires from late ones in the metrics.
const lateThreshold = 5 * time.Second

func (s schedulerMetrics) Fire(task, outcome string, late time.Duration, missed int) {
	if outcome == periodic.OutcomeEnqueued {
		s.m.SchedulerLate.WithLabelValues(task).Observe(late.Seconds())
		if late > lateThreshold {
			outcome = "late"
		}
	}
	s.m.SchedulerFires.WithLabelValues(task, outcome).Inc()
	if missed > 0 {
		s.m.SchedulerMiss.WithLabelValues(task).Add(float64(missed))
	}
}

// openGraph connects to FalkorDB with a client of its own, configured for
// long queries: no read timeout (queries are bounded on the server by the
// graph's own timeout) and no retries (a write retried after a timeout
// would run twice). It creates the schema in the background: a FalkorDB
// that is down at startup must not stop the worker, and the graph tasks'
// writes are keyed MERGEs that stay correct without it.
func openGraph(ctx context.Context, log *slog.Logger, cfg config.Config) (*graph.Graph, func(), error) {
	opt, err := redis.ParseURL(cfg.FalkorDBURL)
	if err != nil {
		return nil, nil, &config.Error{Setting: "FALKORDB_URL", Reason: err.Error()}
	}
	opt.ReadTimeout, opt.MaxRetries = -1, -1
	rdb := redis.NewClient(opt)
	g := graph.New(rdb, cfg.FalkorDBGraph, graph.Timeout(graphQueryTimeout))
	go func() {
		backoff := time.Second
		for {
			sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			err := graph.EnsureSchema(sctx, g)
			cancel()
			if err == nil {
				log.Info("knowledge graph schema ensured", "graph", cfg.FalkorDBGraph)
				return
			}
			if ctx.Err() != nil {
				return
			}
			log.Error("knowledge graph schema not ensured; retrying", "graph", cfg.FalkorDBGraph, "error", err, "retry_in", backoff.String())
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 5*time.Minute)
		}
	}()
	return g, func() { rdb.Close() }, nil
}

// graphQueryTimeout bounds each read query on the FalkorDB server; the
// maintenance tasks write in batches sized to finish far below it.
const graphQueryTimeout = 60 * time.Second
