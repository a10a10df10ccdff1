package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/clients/llm/llmtest"
	"github.com/stargazer/stargazer-jobs/internal/store/msgcache"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// scriptedLLM is an OpenAI-compatible chat/completions server whose
// answers the test scripts, recording every call.
type scriptedLLM struct {
	srv   *httptest.Server
	mu    sync.Mutex
	calls []chatCall
	reply func(prompt string) scriptedReply
}

type chatCall struct {
	Model  string
	Prompt string // the last user message
}

type scriptedReply struct {
	Status     int
	RetryAfter string
	Body       string
}

// completion is a 200 chat/completions answer with content.
func completion(content string) scriptedReply {
	body := llmtest.Completion("served", content, llm.Usage{PromptTokens: 50, CompletionTokens: 10, TotalTokens: 60})
	return scriptedReply{Status: http.StatusOK, Body: string(body)}
}

func newScriptedLLM(t *testing.T, reply func(prompt string) scriptedReply) *scriptedLLM {
	f := &scriptedLLM{reply: reply}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/chat/completions" || r.Method != http.MethodPost {
			http.Error(w, "no route "+r.URL.Path, http.StatusNotFound)
			return
		}
		var req struct {
			Model    string        `json:"model"`
			Messages []llm.Message `json:"messages"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || len(req.Messages) == 0 {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		prompt := req.Messages[len(req.Messages)-1].Content
		f.mu.Lock()
		f.calls = append(f.calls, chatCall{Model: req.Model, Prompt: prompt})
		reply := f.reply
		f.mu.Unlock()
		rep := reply(prompt)
		if rep.RetryAfter != "" {
			w.Header().Set("Retry-After", rep.RetryAfter)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(rep.Status)
		_, _ = io.WriteString(w, rep.Body)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *scriptedLLM) client() *llm.Client {
	return llm.New(llm.Options{BaseURL: f.srv.URL + "/v1", APIKey: "sk-test-secret"})
}

func (f *scriptedLLM) Calls() []chatCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]chatCall(nil), f.calls...)
}

func (f *scriptedLLM) setReply(reply func(prompt string) scriptedReply) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reply = reply
}

// counting answers "<prefix> #<n>" to the n-th call.
func counting(prefix string) func(string) scriptedReply {
	var mu sync.Mutex
	n := 0
	return func(string) scriptedReply {
		mu.Lock()
		defer mu.Unlock()
		n++
		return completion(prefix + " #" + strconv.Itoa(n))
	}
}

var (
	testBase    = time.UnixMilli(1_790_000_000_000)
	guildChan   = msgcache.Channel{Platform: "discord", ID: "1100000000000000001"}
	roomChan    = msgcache.Channel{Platform: "matrix", ID: "!room:example.org"}
	summaryDeps = func(rdb redis.UniversalClient, f *scriptedLLM, now *time.Time) Deps {
		return Deps{
			Redis: rdb, Logger: slog.New(slog.DiscardHandler), Now: func() time.Time { return *now },
			LLM: f.client(), Models: Models{Chat: "chat-model", Flash: "flash-model"},
		}
	}
)

// seed caches texts in c, one a minute from at, and returns the last
// message's time.
func seed(t *testing.T, rdb redis.UniversalClient, c msgcache.Channel, at time.Time, texts ...string) time.Time {
	t.Helper()
	s := msgcache.New(rdb)
	for i, text := range texts {
		at = at.Add(time.Minute)
		m := msgcache.Message{Channel: c, MessageID: c.ID + "-" + strconv.Itoa(int(at.UnixMilli())) + "-" + strconv.Itoa(i),
			UserID: "u" + strconv.Itoa(i%2), UserName: []string{"alice", "bob"}[i%2], Text: text, Time: at}
		if _, _, err := s.Log(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	return at
}

func hash(t *testing.T, rdb redis.UniversalClient, key string) map[string]string {
	t.Helper()
	h, err := rdb.HGetAll(context.Background(), key).Result()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestChannelSummarizationFoldsOnlyNewMessagesIntoRollingSummaries(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	f := newScriptedLLM(t, counting("summary"))
	now := testBase.Add(time.Hour)
	d := summaryDeps(rdb, f, &now)
	guildLast := seed(t, rdb, guildChan, testBase, "shall we ship on friday?", "only if the tests pass", "deal")
	roomLast := seed(t, rdb, roomChan, testBase.Add(10*time.Minute), "anyone up for chess", "me!")
	if err := msgcache.New(rdb).RecordMeta(ctx, guildChan, msgcache.Meta{Name: "release", GuildName: "Stargazer HQ"}, now); err != nil {
		t.Fatal(err)
	}

	res, err := work(ctx, d, jobs.ChannelSummarization, &jobs.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	if res["channels_processed"] != 2 || res["messages_summarized"] != 5 {
		t.Fatalf("first run result = %v", res)
	}
	calls := f.Calls()
	if len(calls) != 2 {
		t.Fatalf("%d LLM calls, want 2", len(calls))
	}
	for _, c := range calls {
		if c.Model != "chat-model" || !strings.Contains(c.Prompt, "no previous summary") {
			t.Errorf("first call model=%s prompt=%q", c.Model, c.Prompt)
		}
	}
	// The room spoke last, so it comes first.
	if p := calls[1].Prompt; !strings.Contains(p, "Channel: #release in Stargazer HQ (discord)") || !strings.Contains(p, "] bob: only if the tests pass\n") {
		t.Errorf("the guild's prompt lacks its name or messages: %q", p)
	}
	if p := calls[0].Prompt; !strings.Contains(p, "Channel: matrix:!room:example.org") || !strings.Contains(p, "] alice: anyone up for chess\n") {
		t.Errorf("the room's prompt lacks its name or messages: %q", p)
	}
	for c, want := range map[msgcache.Channel]struct {
		count string
		last  time.Time
	}{guildChan: {"3", guildLast}, roomChan: {"2", roomLast}} {
		h := hash(t, rdb, "sg:channel:"+c.String()+":summary")
		if !strings.HasPrefix(h["summary"], "summary #") || h["message_count"] != want.count ||
			h["last_message_ts"] != strconv.FormatInt(want.last.UnixMilli(), 10) ||
			h["updated_at"] != strconv.FormatInt(now.UnixMilli(), 10) || h["model"] != "chat-model" {
			t.Errorf("summary of %s = %v", c, h)
		}
	}

	t.Run("a second run calls nothing and changes nothing", func(t *testing.T) {
		before := map[string]map[string]string{}
		for _, c := range []msgcache.Channel{guildChan, roomChan} {
			before[c.String()] = hash(t, rdb, msgcache.SummaryKey(c))
		}
		now = now.Add(6 * time.Hour)
		res, err := work(ctx, d, jobs.ChannelSummarization, &jobs.Empty{})
		if err != nil || res["channels_processed"] != 0 || res["channels_unchanged"] != 2 {
			t.Fatalf("second run = %v, %v", res, err)
		}
		if n := len(f.Calls()); n != 2 {
			t.Fatalf("second run made %d more LLM call(s)", n-2)
		}
		for _, c := range []msgcache.Channel{guildChan, roomChan} {
			if h := hash(t, rdb, msgcache.SummaryKey(c)); !maps.Equal(h, before[c.String()]) {
				t.Errorf("summary of %s changed: %v -> %v", c, before[c.String()], h)
			}
		}
	})

	t.Run("new messages update the previous summary", func(t *testing.T) {
		prev := hash(t, rdb, msgcache.SummaryKey(guildChan))["summary"]
		last := seed(t, rdb, guildChan, now, "tests passed, shipping")
		now = now.Add(time.Hour)
		res, err := work(ctx, d, jobs.ChannelSummarization, &jobs.Empty{})
		if err != nil || res["channels_processed"] != 1 || res["messages_summarized"] != 1 {
			t.Fatalf("third run = %v, %v", res, err)
		}
		calls := f.Calls()
		if len(calls) != 3 {
			t.Fatalf("%d LLM calls in all, want 3", len(calls))
		}
		p := calls[2].Prompt
		if !strings.Contains(p, "<summary>\n"+prev+"\n</summary>") || !strings.Contains(p, "tests passed, shipping") || strings.Contains(p, "ship on friday") {
			t.Errorf("update prompt must hold the previous summary and only the new message: %q", p)
		}
		h := hash(t, rdb, msgcache.SummaryKey(guildChan))
		if h["summary"] != "summary #3" || h["message_count"] != "4" || h["last_message_ts"] != strconv.FormatInt(last.UnixMilli(), 10) {
			t.Errorf("updated summary = %v", h)
		}
	})
}

func TestChannelSummarizationRateLimitStopsTheRunAndCarriesRetryAfter(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	f := newScriptedLLM(t, func(string) scriptedReply {
		return scriptedReply{Status: http.StatusTooManyRequests, RetryAfter: "30", Body: `{"error":{"message":"slow down"}}`}
	})
	now := testBase.Add(time.Hour)
	seed(t, rdb, guildChan, testBase, "one")
	seed(t, rdb, roomChan, testBase, "two")

	_, err := work(ctx, summaryDeps(rdb, f, &now), jobs.ChannelSummarization, &jobs.Empty{})
	var rl *llm.RateLimitError
	if !errors.As(err, &rl) || rl.RetryAfter() != 30*time.Second {
		t.Fatalf("error = %v, want a RateLimitError with Retry-After 30s", err)
	}
	if errors.Is(err, asynq.SkipRetry) {
		t.Fatal("a rate limit must be retried")
	}
	if strings.Contains(err.Error(), "sk-test-secret") {
		t.Fatal("the API key leaked into the error")
	}
	if n := len(f.Calls()); n != 1 {
		t.Fatalf("%d calls after a 429, want 1: the rest would be refused too", n)
	}
	if n, _ := rdb.Exists(ctx, msgcache.SummaryKey(guildChan), msgcache.SummaryKey(roomChan)).Result(); n != 0 {
		t.Fatalf("%d summaries stored after a 429", n)
	}
}

func TestChannelSummarizationBadAnswerLosesOnlyThatChannel(t *testing.T) {
	tests := []struct {
		name      string
		bad       scriptedReply
		is        error
		skipRetry bool
	}{
		{"empty content is retried", completion("   "), llm.ErrEmptyContent, false},
		{"an answer that is not JSON is not retried", scriptedReply{Status: 200, Body: "<html>gateway</html>"}, llm.ErrMalformed, true},
		{"an answer without choices is not retried", scriptedReply{Status: 200, Body: `{"choices":[]}`}, llm.ErrMalformed, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			rdb := redistest.Start(t).Client(t)
			good := counting("fine")
			f := newScriptedLLM(t, func(p string) scriptedReply {
				if strings.Contains(p, roomChan.String()) {
					return tt.bad
				}
				return good(p)
			})
			now := testBase.Add(time.Hour)
			d := summaryDeps(rdb, f, &now)
			seed(t, rdb, roomChan, testBase.Add(time.Minute), "the room talks")
			seed(t, rdb, guildChan, testBase, "the guild talks")

			_, err := work(ctx, d, jobs.ChannelSummarization, &jobs.Empty{})
			if !errors.Is(err, tt.is) || !strings.Contains(err.Error(), roomChan.String()) || errors.Is(err, asynq.SkipRetry) != tt.skipRetry {
				t.Fatalf("error = %v; want %v naming %s, SkipRetry=%v", err, tt.is, roomChan, tt.skipRetry)
			}
			if n, _ := rdb.Exists(ctx, msgcache.SummaryKey(roomChan)).Result(); n != 0 {
				t.Fatal("a summary was stored from a bad answer")
			}
			if h := hash(t, rdb, msgcache.SummaryKey(guildChan)); h["summary"] != "fine #1" {
				t.Fatalf("the other channel's summary = %v", h)
			}

			// The retry only calls for the channel that failed.
			f.setReply(func(string) scriptedReply { return completion("room summary") })
			res, err := work(ctx, d, jobs.ChannelSummarization, &jobs.Empty{})
			if err != nil || res["channels_processed"] != 1 || len(f.Calls()) != 3 {
				t.Fatalf("retry = %v, %v after %d calls in all", res, err, len(f.Calls()))
			}
			if h := hash(t, rdb, msgcache.SummaryKey(roomChan)); h["summary"] != "room summary" {
				t.Fatalf("room summary after retry = %v", h)
			}
		})
	}
}
