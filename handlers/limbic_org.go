package handlers

import (
	"context"
	"fmt"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/kg/hubs"
	"github.com/stargazer/stargazer-jobs/internal/queue/singleton"
	"github.com/stargazer/stargazer-jobs/jobs"
)

const (
	// orgMaxHubs bounds the hubs one pass organises (one LLM call each):
	// every ten minutes, the largest first.
	orgMaxHubs = 5
	// orgMaxNeighbours bounds the neighbours shown per hub and pass; a
	// larger hub is organised over several passes, strongest links first.
	orgMaxNeighbours = 200
)

// limbicOrg is the Limbic organisation pass, once a loop supervised by a
// leader: it restructures hub entities (at least ka_org_hub_degree_threshold
// unorganised neighbours, and at least hubs.MinUsefulNeighbours) into
// hub -> category -> member hierarchies proposed by the LLM via
// kg_extraction_model. Writes are preceded by singleton.Verify.
func limbicOrg(ctx context.Context, d Deps, _ jobs.Payload) (Result, error) {
	if d.Graph == nil || d.LLM == nil {
		return nil, fmt.Errorf("limbic org: needs the knowledge graph and an LLM: %w", asynq.SkipRetry)
	}
	o := &hubs.Organizer{Graph: withWriteLock(d.Graph, d.Redis), LLM: d.LLM, Verify: singleton.Verify, Logger: d.Logger.With("task", jobs.LimbicOrg)}
	rep, err := o.Run(ctx, hubs.Options{
		Model: d.Models.Extraction, MinNeighbours: d.OrgHubDegree,
		MaxHubs: orgMaxHubs, MaxNeighbours: orgMaxNeighbours, Now: d.Now,
	})
	res := Result{
		"hubs_examined":        rep.Hubs,
		"hubs_organised":       rep.Organised,
		"categories_created":   rep.CategoriesCreated,
		"members_placed":       rep.Placed,
		"members_left_out":     rep.LeftOut,
		"answer_parts_dropped": rep.Dropped,
		"llm_calls":            rep.LLMCalls,
		"llm_errors":           rep.LLMErrors,
	}
	if rep.LastLLMError != "" {
		res["last_llm_error"] = rep.LastLLMError
	}
	if err != nil {
		countItems(d.Counter, jobs.LimbicOrg, res)
		return nil, graphLLMFailure("limbic org", err)
	}
	return res, nil
}
