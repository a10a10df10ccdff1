package handlers

import "github.com/stargazer/stargazer-jobs/internal/kg/writelock"

// writeLockedGraph is the knowledge graph with its writes under the graph
// write lock (internal/kg/writelock), for a task that declares the graph
// and Redis: the maintenance jobs' relationship MERGEs never run at the
// same time as the extraction engine's.
func (k kit) writeLockedGraph() Graph { return writelock.Wrap(k.Graph(), k.Jobs(), 0) }
