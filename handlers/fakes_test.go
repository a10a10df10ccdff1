package handlers

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// Wire-format fakes of the services the backfill and the embedding queue
// talk to: Discord REST v10, a Matrix homeserver and an OpenAI-compatible
// embeddings endpoint.

const (
	discordToken = "MTA5.discord-secret"
	matrixToken  = "syt_matrix_secret"
	botDiscordID = "1000000000000000001"
	generalID    = "2100000000000000002"
	groupRoom    = "!group:example.org"
	dmRoom       = "!dm:example.org"
)

// calls counts requests by route.
type calls struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *calls) add(route string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[route]++
	return c.n[route]
}

func (c *calls) get(route string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[route]
}

// identityFailures makes the identity call answer status for its first
// times calls (forever when times < 0).
type identityFailures struct {
	status int
	times  int
}

func (f identityFailures) fail(n int) bool { return f.status != 0 && (f.times < 0 || n <= f.times) }

// fakeDiscord serves the bot's identity, one guild with a text channel
// (plus a voice channel and a category) and that channel's history.
func fakeDiscord(t *testing.T, c *calls, idf identityFailures) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	route := func(pattern, name string, body func(r *http.Request) string) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			n := c.add(name)
			if r.Header.Get("Authorization") != "Bot "+discordToken {
				w.WriteHeader(401)
				fmt.Fprint(w, `{"message": "401: Unauthorized", "code": 0}`)
				return
			}
			if name == "identity" && idf.fail(n) {
				w.WriteHeader(idf.status)
				fmt.Fprint(w, `{"message": "upstream", "code": 0}`)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprint(w, body(r))
		})
	}
	route("GET /api/v10/users/@me", "identity", func(*http.Request) string {
		return `{"id":"` + botDiscordID + `","username":"stargazer","discriminator":"0","global_name":null,"avatar":null,"bot":true}`
	})
	route("GET /api/v10/users/@me/guilds", "guilds", func(*http.Request) string {
		return `[{"id":"2000000000000000001","name":"Star Club","icon":null,"owner":false,"permissions":"2248473465835073","features":[]}]`
	})
	route("GET /api/v10/guilds/{id}/channels", "channels", func(*http.Request) string {
		return `[
 {"id":"2100000000000000001","type":4,"guild_id":"2000000000000000001","position":0,"name":"Text Channels","parent_id":null},
 {"id":"` + generalID + `","type":0,"guild_id":"2000000000000000001","position":0,"name":"general","topic":null,"nsfw":false,"parent_id":"2100000000000000001"},
 {"id":"2100000000000000003","type":2,"guild_id":"2000000000000000001","position":1,"name":"Voice","bitrate":64000,"parent_id":null}]`
	})
	route("GET /api/v10/channels/{id}/messages", "history", func(r *http.Request) string {
		if r.PathValue("id") != generalID {
			return `[]`
		}
		// Newest first, as Discord answers.
		return `[
 {"id":"2200000000000000004","type":0,"channel_id":"` + generalID + `","author":{"id":"1000000000000000077","username":"ada","global_name":"Ada"},"content":"what about mars?","timestamp":"2025-03-01T10:00:04.000000+00:00","edited_timestamp":null,"attachments":[],"embeds":[],"mentions":[]},
 {"id":"2200000000000000003","type":0,"channel_id":"` + generalID + `","author":{"id":"1000000000000000099","username":"otherbot","bot":true},"content":"beep","timestamp":"2025-03-01T10:00:03.000000+00:00","edited_timestamp":null,"attachments":[],"embeds":[],"mentions":[]},
 {"id":"2200000000000000002","type":19,"channel_id":"` + generalID + `","author":{"id":"` + botDiscordID + `","username":"stargazer","bot":true},"content":"hello Ada","timestamp":"2025-03-01T10:00:02.000000+00:00","edited_timestamp":null,"attachments":[],"embeds":[],"mentions":[],"message_reference":{"type":0,"message_id":"2200000000000000001","channel_id":"` + generalID + `","guild_id":"2000000000000000001"}},
 {"id":"2200000000000000001","type":0,"channel_id":"` + generalID + `","author":{"id":"1000000000000000077","username":"ada","global_name":"Ada"},"content":"hi bot, is the moon full?","timestamp":"2025-03-01T10:00:01.000000+00:00","edited_timestamp":"2025-03-01T10:05:00.000000+00:00","attachments":[],"embeds":[],"mentions":[]}
]`
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// fakeHomeserver serves the bot's identity, a named group room and an
// unnamed DM, and the group room's history.
func fakeHomeserver(t *testing.T, c *calls, idf identityFailures) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	route := func(pattern, name string, body func(r *http.Request) (int, string)) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			n := c.add(name)
			w.Header().Set("Content-Type", "application/json")
			if r.Header.Get("Authorization") != "Bearer "+matrixToken {
				w.WriteHeader(401)
				fmt.Fprint(w, `{"errcode":"M_UNKNOWN_TOKEN","error":"Invalid access token passed."}`)
				return
			}
			if name == "identity" && idf.fail(n) {
				w.WriteHeader(idf.status)
				fmt.Fprint(w, `{"errcode":"M_UNKNOWN","error":"starting up"}`)
				return
			}
			code, b := body(r)
			w.WriteHeader(code)
			fmt.Fprint(w, b)
		})
	}
	route("GET /_matrix/client/v3/account/whoami", "identity", func(*http.Request) (int, string) {
		return 200, `{"user_id":"@stargazer:example.org","device_id":"DEV","is_guest":false}`
	})
	route("GET /_matrix/client/v3/joined_rooms", "rooms", func(*http.Request) (int, string) {
		return 200, `{"joined_rooms":["` + groupRoom + `","` + dmRoom + `"]}`
	})
	route("GET /_matrix/client/v3/rooms/{room}/state/m.room.name", "name", func(r *http.Request) (int, string) {
		if r.PathValue("room") == groupRoom {
			return 200, `{"name":"Astronomy"}`
		}
		return 404, `{"errcode":"M_NOT_FOUND","error":"Event not found."}`
	})
	route("GET /_matrix/client/v3/rooms/{room}/joined_members", "members", func(r *http.Request) (int, string) {
		if r.PathValue("room") == groupRoom {
			return 200, `{"joined":{"@stargazer:example.org":{"display_name":"Stargazer"},"@ada:example.org":{"display_name":"Ada"},"@bob:example.org":{"display_name":"Bob"}}}`
		}
		return 200, `{"joined":{"@stargazer:example.org":{"display_name":"Stargazer"},"@ada:example.org":{"display_name":"Ada"}}}`
	})
	route("GET /_matrix/client/v3/rooms/{room}/messages", "history", func(r *http.Request) (int, string) {
		if r.URL.Query().Get("dir") != "b" {
			return 400, `{"errcode":"M_INVALID_PARAM","error":"dir"}`
		}
		if r.PathValue("room") != groupRoom {
			return 200, `{"chunk":[],"start":"t1"}`
		}
		return 200, `{"start":"t9","end":"t1","chunk":[
 {"type":"m.room.message","room_id":"` + groupRoom + `","sender":"@stargazer:example.org","event_id":"$ev2","origin_server_ts":1740823202000,"content":{"msgtype":"m.text","body":"> <@ada:example.org> saturn tonight?\n\nYes, after ten.","m.relates_to":{"m.in_reply_to":{"event_id":"$ev1"}}}},
 {"type":"m.room.message","room_id":"` + groupRoom + `","sender":"@ada:example.org","event_id":"$ev1","origin_server_ts":1740823201000,"content":{"msgtype":"m.text","body":"saturn tonight?"}}
]}`
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// embeddingsFake answers POST /v1/embeddings as OpenAI does: 3-dimension
// vectors derived from each input. mode "429" rate-limits, "malformed"
// answers vectors of differing sizes, "400" refuses.
type embeddingsFake struct {
	mu     sync.Mutex
	mode   string
	onCall func() // runs inside each call, before the answer
	calls  int
	inputs []string
}

func (f *embeddingsFake) server(t *testing.T) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/embeddings" || r.Method != http.MethodPost {
			http.Error(w, "no route", 404)
			return
		}
		var req struct {
			Model string   `json:"model"`
			Input []string `json:"input"`
		}
		b, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(b, &req); err != nil || req.Model != "text-embedding-3-small" {
			http.Error(w, `{"error":{"message":"bad request"}}`, 400)
			return
		}
		f.mu.Lock()
		f.calls++
		f.inputs = append(f.inputs, req.Input...)
		mode := f.mode
		f.mu.Unlock()
		if f.onCall != nil {
			f.onCall()
		}
		w.Header().Set("Content-Type", "application/json")
		switch mode {
		case "429":
			w.Header().Set("Retry-After", "7")
			w.WriteHeader(429)
			fmt.Fprint(w, `{"error":{"message":"Rate limit reached for text-embedding-3-small","type":"requests","code":"rate_limit_exceeded"}}`)
			return
		case "400":
			w.WriteHeader(400)
			fmt.Fprint(w, `{"error":{"message":"This model's maximum context length is 8192 tokens","type":"invalid_request_error"}}`)
			return
		}
		data := make([]map[string]any, len(req.Input))
		for i, in := range req.Input {
			vec := []float32{float32(len(in)), 1, -0.5}
			if mode == "malformed" && i == 1 {
				vec = vec[:2]
			}
			data[i] = map[string]any{"object": "embedding", "index": i, "embedding": vec}
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"object": "list", "data": data, "model": req.Model,
			"usage": map[string]any{"prompt_tokens": 5 * len(req.Input), "total_tokens": 5 * len(req.Input)}})
	}))
	t.Cleanup(srv.Close)
	return srv
}

func (f *embeddingsFake) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// testEnv is a real Redis with an asynq client and inspector on it.
type testEnv struct {
	redis  *redistest.Server
	client *asynq.Client
	insp   *asynq.Inspector
	logs   *strings.Builder
	logMu  *sync.Mutex
}

func newTestEnv(t *testing.T) *testEnv {
	t.Helper()
	srv := redistest.Start(t)
	conn := asynq.RedisClientOpt{Addr: srv.Addr}
	e := &testEnv{redis: srv, client: asynq.NewClient(conn), insp: asynq.NewInspector(conn), logs: &strings.Builder{}, logMu: &sync.Mutex{}}
	t.Cleanup(func() { e.client.Close(); e.insp.Close() })
	return e
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *strings.Builder
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (e *testEnv) logText() string {
	e.logMu.Lock()
	defer e.logMu.Unlock()
	return e.logs.String()
}

func (e *testEnv) deps(t *testing.T, emb *httptest.Server) Deps {
	d := Deps{
		Redis:    e.redis.Client(t),
		Logger:   slog.New(slog.NewJSONHandler(lockedWriter{e.logMu, e.logs}, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Now:      time.Now,
		Models:   Models{Embeddings: "text-embedding-3-small"},
		Enqueuer: e.client,
	}
	if emb != nil {
		d.Embedder = llm.New(llm.Options{BaseURL: emb.URL + "/v1", APIKey: "sk-embed-secret"})
	}
	return d
}

// run runs task name with payload through the registry, as the worker
// would after decoding.
func run(t *testing.T, ctx context.Context, d Deps, name, payload string) (Result, error) {
	t.Helper()
	spec, ok := jobs.Lookup(name)
	if !ok {
		t.Fatalf("no spec %s", name)
	}
	p, err := jobs.DecodePayload(spec, []byte(payload))
	if err != nil {
		t.Fatal(err)
	}
	return work(ctx, d, name, p)
}

// work runs task name on p with a handler built from d, as Register builds
// it. It does not fail the test itself, so goroutines may call it.
func work(ctx context.Context, d Deps, name string, p jobs.Payload) (Result, error) {
	spec, ok := jobs.Lookup(name)
	if !ok {
		return nil, fmt.Errorf("no spec %s", name)
	}
	b, ok := builders()[name]
	if !ok {
		b, ok = nodeWorkers()[name]
	}
	if !ok {
		return nil, fmt.Errorf("no handler for %s", name)
	}
	return b.handler(newKit(d, spec))(ctx, p)
}

// embedTasks returns the key lists of the embed_messages tasks waiting in
// the embeddings queue (pending, or scheduled when scheduled is true).
func (e *testEnv) embedTasks(t *testing.T, scheduled bool) [][]string {
	t.Helper()
	list := e.insp.ListPendingTasks
	if scheduled {
		list = e.insp.ListScheduledTasks
	}
	tasks, err := list(jobs.QueueEmbeddings, asynq.PageSize(1000))
	if err != nil && !strings.Contains(err.Error(), "not found") {
		t.Fatal(err)
	}
	var out [][]string
	for _, ti := range tasks {
		var b jobs.EmbedBatch
		if err := json.Unmarshal(ti.Payload, &b); err != nil || ti.Type != jobs.EmbedMessages {
			t.Fatalf("task %s %s: %v", ti.Type, ti.Payload, err)
		}
		out = append(out, b.Keys)
	}
	return out
}
