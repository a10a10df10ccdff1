package events

// Origin marks the scheduler_task_run events the Go workers publish
// (payload field "origin"), so a worker watching the debug channel for runs
// of the Python scheduler (internal/queue/legacy) never takes one of the
// Go side's own for one. The original's events have no such field.
const Origin = "stargazer-jobs"
