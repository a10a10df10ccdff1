package handlers_test

import (
	"testing"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/handlers"
	"github.com/stargazer/stargazer-jobs/jobs"
)

func TestRegisterLeavesOutHandlersThatCannotWork(t *testing.T) {
	tests := []struct {
		name      string
		available jobs.Requirement
		task      string
		want      bool
		reason    string
	}{
		{"prompt tick with redis", jobs.Redis, jobs.ScheduledPromptTick, true, ""},
		{"prompt tick without redis", 0, jobs.ScheduledPromptTick, false, "missing dependency: redis"},
		{"anamnesis digest with redis, graph and an LLM", jobs.Redis | jobs.KG | jobs.LLM | jobs.ChatLLM | jobs.Config, jobs.AnamnesisDigest, true, ""},
		{"anamnesis digest without the graph", jobs.Redis | jobs.LLM | jobs.ChatLLM | jobs.Config, jobs.AnamnesisDigest, false, "missing dependency: kg"},
		{"bulk extraction with redis, graph and an LLM", jobs.Redis | jobs.KG | jobs.LLM | jobs.ChatLLM, jobs.AgenticKGBulkIncremental, true, ""},
		{"sunset without an LLM", jobs.Redis | jobs.KG | jobs.BotRuntime | jobs.ChatLLM, jobs.LimbicSunsetProcessor, false, "missing dependency: llm"},
		{"sunset with redis, graph and an LLM", jobs.Redis | jobs.KG | jobs.LLM | jobs.BotRuntime | jobs.ChatLLM, jobs.LimbicSunsetProcessor, true, ""},
		{"kg decay with a graph", jobs.Redis | jobs.KG, jobs.KGDecay, true, ""},
		{"kg decay without a graph", jobs.Redis, jobs.KGDecay, false, "missing dependency: kg"},
		{"limbic maintenance with a graph, no LLM", jobs.Redis | jobs.KG, jobs.LimbicMaintenance, true, ""},
		{"limbic maintenance without a graph", jobs.Redis, jobs.LimbicMaintenance, false, "missing dependency: kg"},
		{"summaries with redis and an LLM", jobs.Redis | jobs.LLM, jobs.ChannelSummarization, true, ""},
		{"summaries without an LLM", jobs.Redis, jobs.ChannelSummarization, false, "missing dependency: llm"},
		{"heartbeat fan-out with redis and an LLM", jobs.Redis | jobs.LLM, jobs.ChannelHeartbeat, true, ""},
		{"one channel's heartbeat without an LLM", jobs.Redis, jobs.ChannelHeartbeatChannel, false, "missing dependency: llm"},
		{"key probe with a key pool", jobs.Redis | jobs.GeminiKeys, jobs.GeminiKeyProbe, true, ""},
		{"key probe without a key pool", jobs.Redis, jobs.GeminiKeyProbe, false, "missing dependency"},
		{"log ingest is node-local: the queue only refuses it", jobs.Redis | jobs.Embeddings, jobs.LogRAGIngest, false, "node-local"},
		{"backfill with a platform", jobs.Redis | jobs.Platform, jobs.StartupChannelBackfill, true, ""},
		{"backfill without a platform", jobs.Redis, jobs.StartupChannelBackfill, false, "missing dependency: platform"},
		{"embedding queue without an endpoint", jobs.Redis, jobs.EmbedMessages, false, "missing dependency: embeddings"},
		{"KG extraction with redis, graph and an LLM", jobs.Redis | jobs.KG | jobs.LLM, jobs.AutoKGExtraction, true, ""},
		{"KG extraction without the graph", jobs.Redis | jobs.LLM, jobs.AutoKGExtraction, false, "missing dependency: kg"},
		{"anchoring with redis, graph and an LLM", jobs.Redis | jobs.KG | jobs.LLM, jobs.LimbicAnchoringWorker, true, ""},
		{"anchoring without an LLM", jobs.Redis | jobs.KG, jobs.LimbicAnchoringWorker, false, "missing dependency: llm"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mux := asynq.NewServeMux()
			for _, r := range handlers.Register(mux, handlers.Deps{}, jobs.Catalog(), tt.available) {
				if r.Task != tt.task {
					continue
				}
				if r.Registered != tt.want || (tt.reason != "" && r.Reason[:len(tt.reason)] != tt.reason) {
					t.Fatalf("registration %+v, want registered=%v reason %q", r, tt.want, tt.reason)
				}
				_, pattern := mux.Handler(asynq.NewTask(tt.task, nil))
				if refuses := tt.reason == "node-local"; (pattern != "") != (tt.want || refuses) {
					t.Errorf("mux pattern %q, want registered=%v", pattern, tt.want)
				}
				return
			}
			t.Fatalf("no registration for %s", tt.task)
		})
	}
}

func TestImplementedTasksAreInTheCatalog(t *testing.T) {
	for name := range handlers.Implemented() {
		if _, ok := jobs.Lookup(name); !ok {
			t.Errorf("handler for unknown task %s", name)
		}
	}
}
