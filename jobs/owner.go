package jobs

import "encoding/json"

// Owner is the catalog task a run's LLM calls are charged to and budgeted
// under (LLM_BUDGETS): the parent task for a child and an extraction unit,
// else the task itself. An extraction unit names its planner in its
// payload; a payload that does not say (or does not decode) charges the
// unit itself, which the budget check reports as it is.
func Owner(task string, payload []byte) string {
	switch task {
	case KGExtractUnit:
		var p struct {
			Task string `json:"task"`
		}
		if json.Unmarshal(payload, &p) == nil && (p.Task == LimbicAnchoringWorker || p.Task == AutoKGExtraction) {
			return p.Task
		}
	case ChannelHeartbeatChannel:
		return ChannelHeartbeat
	}
	return task
}

// Parents are the tasks whose budget a child task's calls count against
// (nil when the task is charged to itself). It answers from the name
// alone, for configuration checks: an extraction unit's parent is one of
// two planners, named in each unit's payload.
func Parents(task string) []string {
	switch task {
	case KGExtractUnit:
		return []string{LimbicAnchoringWorker, AutoKGExtraction}
	case ChannelHeartbeatChannel:
		return []string{ChannelHeartbeat}
	}
	return nil
}

// CallsLLM reports whether the spec declares an LLM dependency (chat,
// extraction or embeddings): its runs are charged and may be deferred.
func (s Spec) CallsLLM() bool {
	return s.All()&(LLM|Embeddings|ChatLLM) != 0
}
