package config

import (
	"fmt"
	"time"

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

// LLM call purposes, each with its own endpoint.
const (
	PurposeChat       = "chat"
	PurposeExtraction = "extraction"
	PurposeEmbeddings = "embeddings"
)

// LLMEndpoint is where one purpose's LLM calls go.
type LLMEndpoint struct {
	Purpose string
	BaseURL string
	// APIKey is sent as a bearer token; empty sends none.
	APIKey  string
	Timeout time.Duration
	// Own is true when the purpose has an endpoint of its own rather than
	// sharing LLM_BASE_URL.
	Own bool
}

// LLMEndpoints resolves the endpoint of each purpose that has one. A
// purpose without a base URL of its own shares LLM_BASE_URL and API_KEY;
// one with its own URL sends only its own key (possibly none), so a key is
// never sent to an endpoint it was not configured for.
func (c Config) LLMEndpoints() []LLMEndpoint {
	resolve := func(purpose, url, key string, timeout time.Duration) (LLMEndpoint, bool) {
		if url != "" {
			return LLMEndpoint{Purpose: purpose, BaseURL: url, APIKey: key, Timeout: timeout, Own: true}, true
		}
		if c.LLMBaseURL == "" {
			return LLMEndpoint{}, false
		}
		return LLMEndpoint{Purpose: purpose, BaseURL: c.LLMBaseURL, APIKey: c.APIKey, Timeout: timeout}, true
	}
	var out []LLMEndpoint
	for _, e := range []struct {
		purpose, url, key string
		timeout           time.Duration
	}{
		{PurposeChat, "", "", c.LLMTimeout},
		{PurposeExtraction, c.ExtractionLLMBaseURL, c.ExtractionAPIKey, c.KAExtractionHTTPTimeout},
		{PurposeEmbeddings, c.EmbeddingsBaseURL, c.EmbeddingsAPIKey, c.EmbeddingsTimeout},
	} {
		if ep, ok := resolve(e.purpose, e.url, e.key, e.timeout); ok {
			out = append(out, ep)
		}
	}
	return out
}
