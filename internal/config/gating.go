package config

import (
	"fmt"

	"github.com/stargazer/stargazer-jobs/jobs"
)

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
		StarwikiLintIntervalMinutes: &c.StarwikiLintIntervalMins,
		KAOrgIntervalSeconds:        c.KAOrgIntervalSeconds,
		KADedupIntervalSeconds:      c.KADedupIntervalSeconds,
		Implemented:                 implemented,
		Intervals:                   c.TaskIntervals,
	}, nil
}
