package handlers

import (
	"context"
	"time"

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
type limbicOrg struct {
	organizer *hubs.Organizer
	model     string
	// hubDegree is ka_org_hub_degree_threshold.
	hubDegree int
	now       func() time.Time
	counter   Counter
}

func newLimbicOrg(k kit) Worker[*jobs.Empty] {
	return &limbicOrg{
		organizer: &hubs.Organizer{Graph: k.writeLockedGraph(), LLM: k.LLM(), Verify: singleton.Verify, Logger: k.Logger.With("task", jobs.LimbicOrg)},
		model:     k.Models.Extraction, hubDegree: k.OrgHubDegree, now: k.Now, counter: k.Counter,
	}
}

func (h *limbicOrg) Work(ctx context.Context, _ *jobs.Empty) (Result, error) {
	rep, err := h.organizer.Run(ctx, hubs.Options{
		Model: h.model, MinNeighbours: h.hubDegree,
		MaxHubs: orgMaxHubs, MaxNeighbours: orgMaxNeighbours, Now: h.now,
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
		countItems(h.counter, jobs.LimbicOrg, res)
		return nil, graphLLMFailure("limbic org", err)
	}
	return res, nil
}
