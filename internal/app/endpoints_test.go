package app_test

import (
	"context"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/app"
	"github.com/stargazer/stargazer-jobs/internal/kg/extract/extracttest"
	"github.com/stargazer/stargazer-jobs/internal/store/msgcache"
	"github.com/stargazer/stargazer-jobs/internal/testkit/falkortest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/poll"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// Each purpose's calls reach its own endpoint: summaries the chat endpoint
// with API_KEY, extraction its keyless proxy with no Authorization header
// at all (the chat key never leaves for another endpoint).
func TestEachLLMPurposeCallsItsOwnEndpoint(t *testing.T) {
	r := redistest.Start(t)
	fk := falkortest.Start(t)
	chat, extraction := extracttest.Start(t), extracttest.Start(t)
	ctx := context.Background()
	cache := msgcache.New(r.Client(t))
	c := msgcache.Channel{Platform: "discord", ID: "2100000000000000002"}
	for i := range 6 {
		_, _, err := cache.Log(ctx, msgcache.Message{Channel: c, MessageID: fmt.Sprintf("m%d", i), UserID: "u1", UserName: "ada",
			Text: fmt.Sprintf("Orion and Vega, message %d", i), Time: time.Now().Add(-time.Duration(10-i) * time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
	}
	env := map[string]string{
		"REDIS_URL": r.URL(), "FALKORDB_URL": fk.URL(), "HTTP_ADDR": redistest.FreeAddr(t), "PROBE_ADDR": redistest.FreeAddr(t), "SHUTDOWN_TIMEOUT": "2s",
		"LLM_BASE_URL": chat.BaseURL(), "API_KEY": "sk-chat-secret",
		"EXTRACTION_LLM_BASE_URL": extraction.BaseURL(),
		"KA_ENABLED":              "true", "SCHEDULER_ENABLED": "false",
		// No Python side: anchoring reads the last hour, not only what
		// arrives after its hand-over point.
		"LEGACY_COEXISTENCE": "false",
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- app.Run(runCtx, app.Params{Getenv: func(k string) string { return env[k] }, Stdout: io.Discard, Stderr: io.Discard})
	}()
	t.Cleanup(func() { cancel(); <-done })

	client := asynq.NewClient(asynq.RedisClientOpt{Addr: r.Addr})
	defer client.Close()
	for _, task := range []string{jobs.ChannelSummarization, jobs.LimbicAnchoringWorker} {
		if _, err := client.Enqueue(asynq.NewTask(task, nil)); err != nil {
			t.Fatal(err)
		}
	}
	poll.Until(t, "a chat call and an extraction call", func() bool {
		return len(chat.Calls()) > 0 && len(extraction.Calls()) > 0
	})
	for _, call := range chat.Calls() {
		if call.Authorization != "Bearer sk-chat-secret" {
			t.Errorf("chat endpoint got Authorization %q", call.Authorization)
		}
		if call.ResponseFormat == "json_object" {
			t.Errorf("an extraction call (JSON mode) reached the chat endpoint")
		}
	}
	for _, call := range extraction.Calls() {
		if call.Authorization != "" {
			t.Errorf("the keyless extraction endpoint got Authorization %q", call.Authorization)
		}
		if call.ResponseFormat != "json_object" {
			t.Errorf("a chat call reached the extraction endpoint: %.80q", call.Prompt)
		}
	}
}
