package jobs

import "time"

// Task names, as the original registry knows them.
const (
	ScheduledPromptTick      = "scheduled_prompt_tick"
	ScheduledPromptCleanup   = "scheduled_prompt_cleanup"
	AutoKGExtraction         = "auto_kg_extraction"
	ChannelSummarization     = "channel_summarization"
	KGConsolidation          = "kg_consolidation_task"
	KGDecay                  = "kg_decay_task"
	JournalStream            = "journal_stream"
	LogRAGIngest             = "log_rag_ingest"
	GeminiKeyProbe           = "gemini_key_probe"
	AgenticKGBulkIncremental = "agentic_kg_bulk_incremental"
	AnamnesisDigest          = "anamnesis_digest"
	ChannelHeartbeat         = "channel_heartbeat"
	StarwikiLint             = "starwiki_lint"
	LimbicAnchoringWorker    = "limbic_anchoring_worker"
	LimbicSunsetProcessor    = "limbic_sunset_processor"
	LimbicMaintenance        = "limbic_maintenance"
	LimbicDedup              = "limbic_dedup_task"
	LimbicOrg                = "limbic_org_task"
	StartupChannelBackfill   = "startup_channel_backfill"
	// Child tasks of the Go port (not in the original registry).
	ChannelHeartbeatChannel   = "channel_heartbeat_channel"
	EmbedMessages             = "embed_messages"
	KGExtractUnit             = "kg_extract_unit"
	DefaultDedupIntervalSecs  = 600
	DefaultOrgIntervalSecs    = 600
	DefaultStarwikiLintMinute = 60
)

// SupervisedMaxRetry keeps a failing pass of a supervised task restarting
// as the original TaskSupervisor did (1 s doubling to 60 s, see
// RetryDelay in internal/queue/server): six ramp-up restarts, then one a
// minute for a day. The supervisor never gave up; after a day of failures
// the pass is archived, which shows on the dashboard, and the schedule's
// next pass starts afresh from a 1 s backoff.
const SupervisedMaxRetry = 6 + 24*60

func sec(n float64) time.Duration { return time.Duration(n * float64(time.Second)) }

func empty() Payload { return &Empty{} }

// Catalog returns the specification of every task of the original module
// (the sixteen @background_task functions, the two TaskSupervisor loops and
// startup_channel_backfill) and of the child tasks the Go port fans out to.
// Each call returns a fresh slice.
func Catalog() []Spec {
	return []Spec{
		{
			Name: ScheduledPromptTick, Kind: Periodic,
			Interval: sec(60), InitialDelay: sec(10),
			Requires: Redis | ChatLLM,
			Queue:    QueueCritical, MaxRetry: 2, Timeout: 50 * time.Second,
			NewPayload: func() Payload { return &PromptTick{Limit: DefaultPromptTickLimit} },
			Summary:    "Fire user-scheduled prompts that have come due and hand them to the bot.",
		},
		{
			Name: ScheduledPromptCleanup, Kind: Periodic,
			Interval: sec(172_800), InitialDelay: sec(300),
			Requires: Redis,
			Queue:    QueueMaintenance, MaxRetry: 5, Timeout: 10 * time.Minute,
			NewPayload: func() Payload { return &PromptCleanup{DaysToKeep: DefaultDaysToKeep} },
			Summary:    "Delete executed and cancelled scheduled prompts older than days_to_keep.",
		},
		{
			Name: AutoKGExtraction, Kind: Periodic,
			Interval: sec(14_400), InitialDelay: sec(300),
			Requires:  Redis | KG | LLM | Config | ChatLLM,
			OptInFlag: "legacy_kg_extraction", Singleton: true,
			Queue: QueueDefault, MaxRetry: 3, Timeout: time.Hour,
			NewPayload: empty,
			Summary:    "Plan knowledge-graph extraction of the messages since each channel's cursor, as kg_extract_unit units any worker runs.",
		},
		{
			Name: ChannelSummarization, Kind: Periodic,
			Interval: sec(21_600), InitialDelay: sec(600),
			Requires: Redis | ChatLLM, Needs: LLM, Singleton: true,
			Queue: QueueDefault, MaxRetry: 3, Timeout: time.Hour,
			NewPayload: empty,
			Summary:    "Refresh rolling summaries of the most recently active channels.",
		},
		{
			Name: KGConsolidation, Kind: Periodic,
			Interval: sec(86_400), InitialDelay: sec(1800),
			Requires: KG | LLM | ChatLLM, Needs: Redis, Singleton: true,
			Queue: QueueMaintenance, MaxRetry: 3, Timeout: 2 * time.Hour,
			NewPayload: empty,
			Summary:    "Merge duplicate entities and prune low-value ones in the knowledge graph.",
		},
		{
			Name: KGDecay, Kind: Periodic,
			Interval: sec(86_400), InitialDelay: sec(3600),
			Requires: KG, Needs: Redis, Singleton: true,
			Queue: QueueMaintenance, MaxRetry: 3, Timeout: time.Hour,
			NewPayload: empty,
			Summary:    "Decay relationship weights and delete edges below the threshold.",
		},
		{
			Name: JournalStream, Kind: NodeLocal,
			Interval: sec(10), InitialDelay: sec(5),
			Requires: Redis,
			Queue:    QueueDefault, MaxRetry: 0, Timeout: 24 * time.Hour,
			NewPayload: empty,
			Summary:    "Tail this node's systemd journal and publish each line on stargazer:journal (every node; restarted 10 s after it ends).",
		},
		{
			Name: LogRAGIngest, Kind: NodeLocal,
			Interval: sec(21_600), InitialDelay: sec(30),
			OptInFlag: "background_scheduler_log_rag_ingest_enabled",
			Needs:     Redis | Embeddings,
			Queue:     QueueDefault, MaxRetry: 3, Timeout: time.Hour,
			NewPayload: empty,
			Summary:    "Chunk and embed this node's journal since its cursor into stargazer_logs (every node, on its interval, with its own cursor).",
		},
		{
			Name: GeminiKeyProbe, Kind: Periodic,
			Interval: sec(7_200), InitialDelay: sec(60),
			Needs: Redis | GeminiKeys, Singleton: true,
			Queue: QueueDefault, MaxRetry: 2, Timeout: 5 * time.Minute,
			NewPayload: empty,
			Summary:    "Probe every shared Gemini key and mark quota-exhausted ones.",
		},
		{
			Name: AgenticKGBulkIncremental, Kind: Periodic,
			Interval: sec(14_400), InitialDelay: sec(900),
			Requires: Redis | KG | LLM | ChatLLM, Singleton: true,
			Queue: QueueDefault, MaxRetry: 2, Timeout: 3 * time.Hour,
			NewPayload: func() Payload { return &ChannelBatch{MaxChannels: 10} },
			Summary:    "Incremental agentic KG extraction over the ten most active channels.",
		},
		{
			Name: AnamnesisDigest, Kind: Periodic,
			Interval: sec(1200), InitialDelay: sec(300),
			Requires: Redis | KG | LLM | ChatLLM | Config, Singleton: true,
			Queue: QueueDefault, MaxRetry: 2, Timeout: 15 * time.Minute,
			NewPayload: empty,
			Summary:    "Fold the next RAG fragments into the knowledge graph, advancing a cursor.",
		},
		{
			Name: ChannelHeartbeat, Kind: Periodic,
			Interval: sec(86_400), InitialDelay: sec(120),
			Requires: BotRuntime | ChatLLM, Needs: Redis | LLM, Singleton: true,
			Queue: QueueDefault, MaxRetry: 3, Timeout: time.Hour,
			NewPayload: empty,
			Summary:    "Refresh each recently used channel's awareness note with the flash model, staggered.",
		},
		{
			Name: StarwikiLint, Kind: Periodic,
			Interval: sec(3600), InitialDelay: sec(600),
			Requires: BotRuntime, Needs: Redis, OptInFlag: "starwiki_enabled", Singleton: true,
			Queue: QueueMaintenance, MaxRetry: 3, Timeout: 30 * time.Minute,
			NewPayload: empty,
			Summary:    "Lint public and opt-in StarWikis and store a report per wiki.",
		},
		{
			Name: LimbicAnchoringWorker, Kind: Periodic,
			Interval: sec(60), InitialDelay: sec(15),
			Requires: BotRuntime | ChatLLM, Needs: Redis | KG | LLM, EnabledBy: "ka_enabled", Singleton: true,
			Queue: QueueDefault, MaxRetry: 2, Timeout: 5 * time.Minute,
			NewPayload: empty,
			Summary:    "Plan the anchoring of new channel messages into the knowledge graph (per-channel cursors), as kg_extract_unit units any worker runs.",
		},
		{
			Name: LimbicSunsetProcessor, Kind: Periodic,
			Interval: sec(3600), InitialDelay: sec(3600),
			Requires: BotRuntime | ChatLLM, Needs: Redis | KG | LLM, EnabledBy: "ka_enabled", Singleton: true,
			Queue: QueueDefault, MaxRetry: 3, Timeout: 30 * time.Minute,
			NewPayload: empty,
			Summary:    "Synthesise the day's anchored knowledge into one epoch node.",
		},
		{
			Name: LimbicMaintenance, Kind: Periodic,
			Interval: sec(604_800), InitialDelay: sec(7200),
			Requires: BotRuntime, Needs: Redis | KG, EnabledBy: "ka_enabled", Singleton: true,
			Queue: QueueMaintenance, MaxRetry: 3, Timeout: 2 * time.Hour,
			NewPayload: empty,
			Summary:    "Garbage-collect orphan entity nodes (no LLM; not gated on chat_llm).",
		},
		{
			Name: LimbicDedup, Kind: Supervised,
			Interval: sec(DefaultDedupIntervalSecs),
			Requires: BotRuntime | KG | LLM | Config, Needs: Redis, EnabledBy: "ka_dedup_enabled", Singleton: true,
			Queue: QueueMaintenance, MaxRetry: SupervisedMaxRetry, Timeout: 30 * time.Minute,
			NewPayload: empty,
			Summary:    "Merge duplicate graph entities judged by the LLM (was a leader-elected loop).",
		},
		{
			Name: LimbicOrg, Kind: Supervised,
			Interval: sec(DefaultOrgIntervalSecs),
			Requires: BotRuntime | KG | LLM | Config, Needs: Redis, EnabledBy: "ka_org_enabled", Singleton: true,
			Queue: QueueMaintenance, MaxRetry: SupervisedMaxRetry, Timeout: 30 * time.Minute,
			NewPayload: empty,
			Summary:    "Group hub entities' neighbours into named categories (was a leader-elected loop).",
		},
		{
			Name: StartupChannelBackfill, Kind: Startup,
			Requires: Redis | BotRuntime, Needs: Platform, Singleton: true,
			Queue: QueueDefault, MaxRetry: 3, Timeout: 30 * time.Minute,
			NewPayload: func() Payload { return &ChannelBatch{MaxChannels: 10} },
			Summary:    "Backfill recent history of the most active channels once per deployment.",
		},
		{
			Name: ChannelHeartbeatChannel, Kind: Child,
			Requires: Redis | ChatLLM, Needs: LLM,
			Queue: QueueDefault, MaxRetry: 2, Timeout: 2 * time.Minute,
			NewPayload: func() Payload { return &ChannelRef{} },
			Summary:    "One channel's heartbeat: the flash model writes its short awareness note (fanned out by channel_heartbeat).",
		},
		{
			Name: KGExtractUnit, Kind: Child,
			Requires: Redis | KG | LLM | ChatLLM,
			// Retries are cheap (the ledger skips what is settled) and a
			// unit that gives up stalls its channels' cursors until the
			// planner re-enqueues it, so it keeps trying through an outage.
			Queue: QueueExtraction, MaxRetry: 12, Timeout: 5 * time.Minute,
			NewPayload: func() Payload { return &ExtractUnit{} },
			Summary:    "One LLM call of knowledge extraction: segments of channels' new messages, planned by limbic_anchoring_worker or auto_kg_extraction; settled segments move the cursors.",
		},
		{
			Name: EmbedMessages, Kind: Child,
			Requires: Redis, Needs: Embeddings,
			Queue: QueueEmbeddings, MaxRetry: 5, Timeout: 5 * time.Minute,
			NewPayload: func() Payload { return &EmbedBatch{} },
			Summary:    "The embedding queue: embed a batch of cached messages and store their vectors.",
		},
	}
}

// Lookup finds a spec by name in the catalog.
func Lookup(name string) (Spec, bool) {
	for _, s := range Catalog() {
		if s.Name == name {
			return s, true
		}
	}
	return Spec{}, false
}
