// Command devfake stands in for every external service of the worker —
// an OpenAI-compatible LLM (chat/completions and embeddings), the Gemini
// API, Discord's REST API and a Matrix homeserver — speaking their wire
// formats, and seeds a Redis with a small message cache and two wikis. It
// is for trying the worker end to end on one machine:
//
//	go run ./cmd/devfake -redis redis://127.0.0.1:6379/0
//
// then start the worker with the environment it prints.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm/llmtest"
	"github.com/stargazer/stargazer-jobs/internal/kg/extract/extracttest"
	"github.com/stargazer/stargazer-jobs/internal/store/msgcache"
	"github.com/stargazer/stargazer-jobs/internal/store/wiki"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:9911", "listen address")
	redisURL := flag.String("redis", "", "Redis to seed with messages and wikis (empty: seed nothing)")
	chatDelay := flag.Duration("chat-delay", 0, "how long each chat/completions call takes, a slow model (deploy/stack kills a worker in the middle of one)")
	flag.Parse()
	if *redisURL != "" {
		if err := seed(context.Background(), *redisURL); err != nil {
			log.Fatalf("devfake: seeding %s: %v", *redisURL, err)
		}
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	base := "http://" + ln.Addr().String()
	fmt.Printf("devfake listening on %s; run the worker with:\n", base)
	fmt.Printf("  LLM_BASE_URL=%s/v1 GEMINI_BASE_URL=%s GEMINI_API_KEYS=demo-key-1,demo-key-2 \\\n", base, base)
	fmt.Printf("  DISCORD_BOT_TOKEN=demo DISCORD_API_BASE_URL=%s/api/v10 MATRIX_HOMESERVER_URL=%s MATRIX_ACCESS_TOKEN=demo \\\n", base, base)
	fmt.Printf("  STARWIKI_ENABLED=true\n")
	log.Fatal(http.Serve(ln, routes(*chatDelay)))
}

func routes(chatDelay time.Duration) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/chat/completions", slow(chatDelay, chat))
	mux.HandleFunc("POST /v1/embeddings", embeddings)
	mux.HandleFunc("POST /v1beta/models/{model}", geminiEmbed)
	mux.HandleFunc("GET /api/v10/users/@me", js(map[string]any{"id": "900000000000000001", "username": "stargazer", "bot": true}))
	mux.HandleFunc("GET /api/v10/users/@me/guilds", js([]any{map[string]any{"id": "100000000000000001", "name": "Demo guild"}}))
	mux.HandleFunc("GET /api/v10/guilds/{id}/channels", js([]any{map[string]any{"id": "110000000000000001", "type": 0, "name": "general"}}))
	mux.HandleFunc("GET /api/v10/channels/{id}/messages", discordMessages)
	mux.HandleFunc("GET /_matrix/client/v3/account/whoami", js(map[string]any{"user_id": "@stargazer:demo.org"}))
	mux.HandleFunc("GET /_matrix/client/v3/joined_rooms", js(map[string]any{"joined_rooms": []string{"!lobby:demo.org"}}))
	mux.HandleFunc("GET /_matrix/client/v3/rooms/{room}/state/m.room.name", js(map[string]any{"name": "Lobby"}))
	mux.HandleFunc("GET /_matrix/client/v3/rooms/{room}/joined_members", js(map[string]any{"joined": map[string]any{
		"@stargazer:demo.org": map[string]any{"display_name": "Stargazer"}, "@ada:demo.org": map[string]any{"display_name": "Ada"},
		"@bob:demo.org": map[string]any{"display_name": "Bob"}}}))
	mux.HandleFunc("GET /_matrix/client/v3/rooms/{room}/messages", matrixMessages)
	return logged(mux)
}

func logged(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		log.Printf("%s %s", r.Method, r.URL.Path)
		h.ServeHTTP(w, r)
	})
}

// slow answers after d, or not at all if the caller goes away first.
func slow(d time.Duration, h http.HandlerFunc) http.HandlerFunc {
	if d <= 0 {
		return h
	}
	return func(w http.ResponseWriter, r *http.Request) {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			h(w, r)
		case <-r.Context().Done():
		}
	}
}

func js(v any) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, v) }
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func chat(w http.ResponseWriter, r *http.Request) {
	var req llmtest.ChatRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(extracttest.ChatCompletion(req.Model, req.Prompt(), req.ResponseFormat != nil))
}

func embeddings(w http.ResponseWriter, r *http.Request) {
	var req llmtest.EmbeddingsRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	data := make([]any, len(req.Input))
	for i, in := range req.Input {
		data[i] = map[string]any{"object": "embedding", "index": i, "embedding": llmtest.Vector(in)}
	}
	writeJSON(w, map[string]any{"object": "list", "model": req.Model, "data": data, "usage": map[string]any{"prompt_tokens": len(req.Input), "total_tokens": len(req.Input)}})
}

func geminiEmbed(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("x-goog-api-key") == "" {
		w.WriteHeader(http.StatusForbidden)
		writeJSON(w, map[string]any{"error": map[string]any{"code": 403, "message": "Method doesn't allow unregistered callers.", "status": "PERMISSION_DENIED"}})
		return
	}
	writeJSON(w, map[string]any{"embedding": map[string]any{"values": llmtest.Vector(r.URL.Path)}})
}

func discordMessages(w http.ResponseWriter, r *http.Request) {
	ch := r.PathValue("id")
	base := time.Now().Add(-time.Hour).UTC()
	var out []any
	for i := 5; i >= 1; i-- { // newest first, as Discord answers
		out = append(out, map[string]any{
			"id": fmt.Sprintf("12%016d", i), "channel_id": ch, "content": fmt.Sprintf("discord message %d", i),
			"timestamp": base.Add(time.Duration(i) * time.Minute).Format(time.RFC3339Nano),
			"author":    map[string]any{"id": "300000000000000001", "username": "ada", "bot": false},
		})
	}
	writeJSON(w, out)
}

func matrixMessages(w http.ResponseWriter, r *http.Request) {
	base := time.Now().Add(-time.Hour)
	var chunk []any
	for i := 5; i >= 1; i-- {
		chunk = append(chunk, map[string]any{
			"type": "m.room.message", "event_id": fmt.Sprintf("$devfake%d:demo.org", i), "sender": "@bob:demo.org",
			"origin_server_ts": base.Add(time.Duration(i) * time.Minute).UnixMilli(), "room_id": r.PathValue("room"),
			"content": map[string]any{"msgtype": "m.text", "body": fmt.Sprintf("matrix message %d", i)},
		})
	}
	writeJSON(w, map[string]any{"chunk": chunk, "start": "t1", "end": "t0"})
}

// seed writes a small message cache and two wikis (one public, one private
// that did not opt in to linting) for the demo.
func seed(ctx context.Context, url string) error {
	opt, err := redis.ParseURL(url)
	if err != nil {
		return err
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	cache := msgcache.New(rdb)
	now := time.Now()
	channels := []msgcache.Channel{{Platform: "discord", ID: "110000000000000001"}, {Platform: "matrix", ID: "!lobby:demo.org"}}
	for ci, c := range channels {
		for i := range 30 {
			m := msgcache.Message{Channel: c, MessageID: fmt.Sprintf("seed-%d-%d", ci, i), UserID: "u1", UserName: "ada",
				Text: fmt.Sprintf("message %d: Ada and Bob discuss the Orion launch plan in %s", i, c), Time: now.Add(time.Duration(i-60) * time.Minute)}
			if _, _, err := cache.Log(ctx, m); err != nil {
				return err
			}
		}
	}
	w := wiki.New(rdb)
	if err := w.PutWiki(ctx, "lore", wiki.Meta{Title: "Lore", Visibility: "public"}); err != nil {
		return err
	}
	if err := w.PutWiki(ctx, "diary", wiki.Meta{Title: "Diary", Visibility: "private"}); err != nil {
		return err
	}
	for _, p := range []wiki.Page{
		{Slug: "home", Title: "Home", Body: "See [[Stars]] and [[Missing Page]]."},
		{Slug: "stars", Title: "Stars", Body: "Back to [[Home]]."},
		{Slug: "orphan", Title: "Orphan", Body: "Nobody links here."},
		{Slug: "empty", Title: "Empty", Body: "  "},
	} {
		p.UpdatedAt = now
		if err := w.PutPage(ctx, "lore", p); err != nil {
			return err
		}
	}
	log.Printf("seeded %d channels and 2 wikis in %s", len(channels), opt.Addr)
	return nil
}
