package app_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/handlers"
	"github.com/stargazer/stargazer-jobs/internal/kg/extract/extracttest"
	"github.com/stargazer/stargazer-jobs/internal/store/ragstore"
	"github.com/stargazer/stargazer-jobs/internal/testkit/falkortest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/poll"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// A RAG store the Python side digested for months, and no Go cursor: the
// first anamnesis_digest run after the cut-over digests none of it (0 LLM
// calls), and the fragments appended afterwards are digested. With
// QUEUE_REDIS_URL the fragments are on the bot's Redis and the cursor, the
// extraction ledger and the queue on the other, and each keeps to its own.
func TestTheFirstAnamnesisRunAfterACutOverDigestsNoHistory(t *testing.T) {
	if testing.Short() {
		t.Skip("a whole worker over a 10,000-fragment store: skipped under -short")
	}
	for _, layout := range []string{"one-redis", "queue-redis"} {
		t.Run(layout, func(t *testing.T) { firstAnamnesisRun(t, layout) })
	}
}

func firstAnamnesisRun(t *testing.T, layout string) {
	const history, appended = 10_000, 20
	r := redistest.Start(t)
	q := r
	if layout == "queue-redis" {
		q = redistest.Start(t)
	}
	fk := falkortest.Start(t)
	llm := extracttest.Start(t)
	rdb, qdb := r.Client(t), q.Client(t)
	ctx := context.Background()
	store := ragstore.New(rdb).WithCursors(qdb)
	for i := range history {
		if _, err := store.Append(ctx, ragstore.Fragment{ID: fmt.Sprintf("old-%05d", i), Title: "Lore",
			Text: fmt.Sprintf("Old lore %d: the Spiral Goddess watches over the archive of volume %d.", i, i)}); err != nil {
			t.Fatal(err)
		}
	}
	// The runs are enqueued here rather than waited for: the task's first
	// occurrence comes 5 minutes after a scheduler first sees it.
	env := map[string]string{
		"REDIS_URL": r.URL(), "FALKORDB_URL": fk.URL(), "LLM_BASE_URL": llm.BaseURL(), "SCHEDULER_ENABLED": "false",
	}
	if q != r {
		env["QUEUE_REDIS_URL"] = q.URL()
	}
	addr := runApp(t, env)
	client := asynq.NewClient(asynq.RedisClientOpt{Addr: q.Addr})
	defer client.Close()
	digest := func() {
		t.Helper()
		if _, err := client.Enqueue(asynq.NewTask(jobs.AnamnesisDigest, nil)); err != nil {
			t.Fatal(err)
		}
	}
	runs := `stargazer_task_runs_total{status="ok",task="anamnesis_digest"}`
	digest()
	poll.Until(t, "the first anamnesis_digest run", func() bool { return metric(t, addr, runs) >= 1 })
	if n := len(llm.Calls()); n != 0 {
		t.Fatalf("the first run after the cut-over made %d LLM calls over the Python side's history, want 0", n)
	}
	if c, _ := store.Cursor(ctx, handlers.AnamnesisCursorKey); c != history {
		t.Fatalf("cursor %d after the first run, want the end of the store, %d", c, history)
	}
	for i := range appended {
		if _, err := store.Append(ctx, ragstore.Fragment{ID: fmt.Sprintf("new-%02d", i), Title: "Lore",
			Text: fmt.Sprintf("New lore %d: Ada Lovelace joined the Order of the Spiral.", i)}); err != nil {
			t.Fatal(err)
		}
	}
	digest()
	poll.Until(t, "the appended fragments digested", func() bool {
		c, _ := store.Cursor(ctx, handlers.AnamnesisCursorKey)
		return c == history+appended
	})
	calls := llm.Calls()
	if len(calls) == 0 {
		t.Fatal("the appended fragments were digested without an LLM call")
	}
	for _, c := range calls {
		if strings.Contains(c.Prompt, "Old lore") {
			t.Errorf("an LLM call after the cut-over carried a fragment of the history:\n%.300s", c.Prompt)
		}
	}
	t.Logf("FIGURE %d fragments of history: first run 0 LLM calls; %d appended fragments digested in %d calls", history, appended, len(calls))
	if q == r {
		return
	}
	if keys := scanKeys(t, rdb, "asynq:*", "sgjobs:*"); len(keys) > 0 {
		t.Errorf("job-system keys on the bot's Redis: %v", keys)
	}
	if keys := scanKeys(t, qdb, "sg:*"); len(keys) > 0 {
		t.Errorf("bot keys on the queue Redis: %v", keys)
	}
	if keys := scanKeys(t, qdb, "sgjobs:kgx:done"); len(keys) != 1 {
		t.Error("the extraction ledger is not on the queue Redis")
	}
}
