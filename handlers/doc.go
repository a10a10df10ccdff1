// Package handlers does the work of each task: one Worker per catalog task,
// built from the deployment's Deps through the task's spec, and the
// node-local loops. Register wires into an asynq mux the handlers whose
// dependencies this deployment has.
//
// It owns the work, not the process: it may import jobs, the stores, the
// clients, the knowledge-graph packages and the queue helpers, and must not
// import internal/app, monitor or anything under cmd (they import it).
package handlers
