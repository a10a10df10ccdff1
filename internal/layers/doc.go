// Package layers states the import rules that keep the tree readable, and
// its test enforces them with go list. Dependencies flow one way:
//
//		cmd/worker ─▶ internal/app ─▶ handlers, monitor ─▶ internal/{kg,store,clients,queue} ─▶ jobs
//
//	  - jobs imports nothing of ours: it is the catalog, the contract every
//	    layer shares.
//	  - internal/clients (LLM, Gemini, platforms, journal) and internal/store
//	    (the bot's data in Redis) import no handler, no app, no monitor and no
//	    queue machinery: they are adapters.
//	  - internal/kg (the knowledge graph) may use clients (the LLM), never
//	    handlers, app or monitor.
//	  - internal/queue (server, scheduler, singletons, enqueue) imports no
//	    handler, app, monitor, store or kg: it runs tasks without knowing them.
//	  - handlers do the work through the layers below and never import app,
//	    monitor or cmd.
//	  - monitor (dashboard, metrics, API) never imports handlers or app.
//	  - cmd/enqueuer never links the handler stack: no handlers, no graph, no
//	    LLM client, directly or through another package.
//	  - production code never imports internal/testkit or a *test fake package.
package layers
