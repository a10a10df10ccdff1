package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/kg/extract/extracttest"
	"github.com/stargazer/stargazer-jobs/internal/store/ragstore"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// lore appends n fragments to the RAG store, numbered from from, and
// returns their texts as the LLM sees them (title first).
func lore(t *testing.T, v *kgEnv, from, n int) []string {
	t.Helper()
	var out []string
	for i := from; i < from+n; i++ {
		f := ragstore.Fragment{
			ID: fmt.Sprintf("frag-%03d", i), Title: fmt.Sprintf("verse %d", i), Source: "codex",
			Text:    fmt.Sprintf("the spiral turns through %s and %s", kgTopics[i%len(kgTopics)], kgTopics[(i*3+1)%len(kgTopics)]),
			Created: testBase.Add(time.Duration(i) * time.Minute),
		}
		if _, err := ragstore.New(v.rdb).Append(context.Background(), f); err != nil {
			t.Fatal(err)
		}
		out = append(out, f.Title+": "+f.Text)
	}
	return out
}

func anamnesisCursor(t *testing.T, v *kgEnv) int64 {
	t.Helper()
	c, err := ragstore.New(v.rdb).Cursor(context.Background(), AnamnesisCursorKey)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func num(t *testing.T, r Result, k string) string {
	t.Helper()
	n, ok := r[k].(json.Number)
	if !ok {
		t.Fatalf("%s = %#v, want a json.Number", k, r[k])
	}
	return n.String()
}

func TestAnamnesisDigestWalksTheCorpusOnceAndStaysAtItsEnd(t *testing.T) {
	ctx := context.Background()
	v := newKGEnv(t)
	d := v.deps()
	texts := lore(t, v, 0, 70)

	res, err := work(ctx, d, jobs.AnamnesisDigest, &jobs.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	if res["fragments_read"] != 60 || res["fragments_extracted"] != 60 || num(t, res, "cursor") != "60" ||
		num(t, res, "total_store") != "70" || num(t, res, "progress_pct") != "85.7" || res["llm_calls"] != 4 {
		t.Fatalf("first run %v", res)
	}
	if !strings.Contains(v.logs.String(), "(cursor 60/70, 85.7%)") || !strings.Contains(v.logs.String(), "Anamnesis digest: +") {
		t.Errorf("progress not logged: %s", v.logs)
	}
	for _, c := range v.llm.Calls() {
		if c.Model != "kg-model" || !strings.Contains(c.Prompt, "(in anamnesis · codex)") {
			t.Errorf("call with model %q, prompt %q", c.Model, c.Prompt)
		}
	}
	if got, want := graphMentions(t, v.g), wantMentions(texts[:60]); !sameMentions(got, want) {
		t.Fatalf("mentions %v, want %v", got, want)
	}

	res, err = work(ctx, d, jobs.AnamnesisDigest, &jobs.Empty{})
	if err != nil || res["fragments_read"] != 10 || num(t, res, "cursor") != "70" || num(t, res, "progress_pct") != "100.0" {
		t.Fatalf("second run %v, %v", res, err)
	}

	t.Run("at the end, a run reads nothing and changes nothing", func(t *testing.T) {
		before, calls := graphSnapshot(t, v.g), len(v.llm.Calls())
		res, err := work(ctx, d, jobs.AnamnesisDigest, &jobs.Empty{})
		if err != nil || res["fragments_read"] != 0 || res["entities_added"] != 0 || num(t, res, "cursor") != "70" {
			t.Fatalf("run at the end %v, %v", res, err)
		}
		if len(v.llm.Calls()) != calls || graphSnapshot(t, v.g) != before {
			t.Fatal("a run at the end called the LLM or changed the graph")
		}
	})

	t.Run("fragments appended later are picked up", func(t *testing.T) {
		more := lore(t, v, 70, 5)
		res, err := work(ctx, d, jobs.AnamnesisDigest, &jobs.Empty{})
		if err != nil || res["fragments_extracted"] != 5 || num(t, res, "cursor") != "75" || num(t, res, "total_store") != "75" {
			t.Fatalf("run after appending %v, %v", res, err)
		}
		sent := sentCounts(v.llm.Calls())
		for _, text := range append(texts, more...) {
			if sent[text] != 1 {
				t.Errorf("%q sent %d times", text, sent[text])
			}
		}
		if got, want := graphMentions(t, v.g), wantMentions(append(texts, more...)); !sameMentions(got, want) {
			t.Fatalf("mentions %v, want %v", got, want)
		}
	})
}

func TestAnamnesisDigestResumesAfterAFailureWithoutRepeatingOrSkipping(t *testing.T) {
	ctx := context.Background()
	v := newKGEnv(t)
	d := v.deps()
	texts := lore(t, v, 0, 50)
	v.llm.SetHook(func(n int, _ extracttest.Call) *extracttest.Reply {
		if n == 2 {
			return &extracttest.Reply{Status: http.StatusServiceUnavailable, Body: `{"error":{"message":"overloaded"}}`}
		}
		return nil
	})
	_, err := work(ctx, d, jobs.AnamnesisDigest, &jobs.Empty{})
	var se *llm.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusServiceUnavailable || errors.Is(err, asynq.SkipRetry) {
		t.Fatalf("error %v, want the 503, retried", err)
	}
	if got := anamnesisCursor(t, v); got != anamnesisChunk {
		t.Fatalf("cursor %d after the failed second chunk, want %d", got, anamnesisChunk)
	}
	if got, want := graphMentions(t, v.g), wantMentions(texts[:anamnesisChunk]); !sameMentions(got, want) {
		t.Fatalf("after the failure: mentions %v, want %v", got, want)
	}

	v.llm.SetHook(nil)
	res, err := work(ctx, d, jobs.AnamnesisDigest, &jobs.Empty{})
	if err != nil || res["fragments_read"] != 50-anamnesisChunk || res["fragments_extracted"] != 50-anamnesisChunk ||
		num(t, res, "cursor") != "50" || num(t, res, "progress_pct") != "100.0" {
		t.Fatalf("resumed run %v, %v", res, err)
	}
	failed := v.llm.Calls()[1].Messages
	sent := sentCounts(v.llm.Calls())
	for _, text := range texts {
		if want := 1 + boolInt(contains(failed, text)); sent[text] != want {
			t.Errorf("%q sent %d times, want %d", text, sent[text], want)
		}
	}
	if got, want := graphMentions(t, v.g), wantMentions(texts); !sameMentions(got, want) {
		t.Fatalf("mentions %v, want %v", got, want)
	}
}

func TestAnamnesisDigestStartsOverWhenTheStoreWasRebuiltShorter(t *testing.T) {
	ctx := context.Background()
	v := newKGEnv(t)
	texts := lore(t, v, 0, 5)
	if err := v.rdb.Set(ctx, AnamnesisCursorKey, 40, 0).Err(); err != nil {
		t.Fatal(err)
	}
	res, err := work(ctx, v.deps(), jobs.AnamnesisDigest, &jobs.Empty{})
	if err != nil || res["fragments_extracted"] != 5 || num(t, res, "cursor") != "5" {
		t.Fatalf("run %v, %v", res, err)
	}
	if got, want := graphMentions(t, v.g), wantMentions(texts); !sameMentions(got, want) {
		t.Fatalf("mentions %v, want %v", got, want)
	}
}
