// Package clients holds the worker's clients of network services: the
// OpenAI-compatible LLM and embeddings API (llm), Gemini (gemini), the chat
// platforms (platform/discord, platform/matrix) and the systemd journal
// (journal).
//
// Its own code is only a test of the rule every network client of the
// worker follows, these and the Redis and FalkorDB clients alike: a call
// returns by its context's deadline, whatever the server does (see
// docs/deadlines.md). A task's context carries the task's deadline, so a
// silent service can hold a worker slot no longer than the task's timeout.
package clients
