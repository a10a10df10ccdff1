package discord_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/clients/platform"
	"github.com/stargazer/stargazer-jobs/internal/clients/platform/discord"
)

const token = "MTA5.secret-bot-token"

// fakeDiscord answers like Discord's REST API v10, with snowflake string
// ids, for one bot in guilds: guild "2000...0" holds a text channel, a
// voice channel and a category; the guild list is paged by 200.
func fakeDiscord(t *testing.T, extraGuilds int) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	auth := func(h http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Authorization") != "Bot "+token {
				w.WriteHeader(401)
				fmt.Fprint(w, `{"message": "401: Unauthorized", "code": 0}`)
				return
			}
			if !strings.HasPrefix(r.Header.Get("User-Agent"), "DiscordBot (") {
				http.Error(w, "no user agent", 400)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			h(w, r)
		}
	}
	mux.HandleFunc("GET /api/v10/users/@me", auth(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"id":"1000000000000000001","username":"stargazer","discriminator":"0","global_name":null,"avatar":null,"bot":true,"flags":0}`)
	}))
	mux.HandleFunc("GET /api/v10/users/@me/guilds", auth(func(w http.ResponseWriter, r *http.Request) {
		var gs []string
		gs = append(gs, `{"id":"2000000000000000001","name":"Star Club","icon":null,"owner":false,"permissions":"2248473465835073","features":[]}`)
		for i := range extraGuilds {
			gs = append(gs, fmt.Sprintf(`{"id":"%d","name":"g%d","icon":null,"owner":false,"permissions":"0","features":[]}`, 3000000000000000000+i, i))
		}
		after := r.URL.Query().Get("after")
		limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
		start := 0
		if after != "" {
			for i, g := range gs {
				if strings.Contains(g, `"id":"`+after+`"`) {
					start = i + 1
				}
			}
		}
		end := min(start+limit, len(gs))
		fmt.Fprint(w, "["+strings.Join(gs[start:end], ",")+"]")
	}))
	mux.HandleFunc("GET /api/v10/guilds/{id}/channels", auth(func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") != "2000000000000000001" {
			fmt.Fprint(w, `[]`)
			return
		}
		fmt.Fprint(w, `[
 {"id":"2100000000000000001","type":4,"guild_id":"2000000000000000001","position":0,"name":"Text Channels","parent_id":null},
 {"id":"2100000000000000002","type":0,"guild_id":"2000000000000000001","position":0,"name":"general","topic":null,"nsfw":false,"last_message_id":"2200000000000000003","parent_id":"2100000000000000001","rate_limit_per_user":0},
 {"id":"2100000000000000003","type":2,"guild_id":"2000000000000000001","position":0,"name":"Voice","bitrate":64000,"user_limit":0,"parent_id":null}
]`)
	}))
	mux.HandleFunc("GET /api/v10/channels/{id}/messages", auth(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("limit") != "100" {
			http.Error(w, "limit", 400)
			return
		}
		fmt.Fprint(w, `[
 {"id":"2200000000000000003","type":19,"channel_id":"2100000000000000002","author":{"id":"1000000000000000001","username":"stargazer","bot":true},"content":"hello Ada","timestamp":"2025-03-01T10:00:02.500000+00:00","edited_timestamp":null,"tts":false,"mention_everyone":false,"mentions":[],"attachments":[],"embeds":[],"pinned":false,"message_reference":{"type":0,"message_id":"2200000000000000002","channel_id":"2100000000000000002","guild_id":"2000000000000000001"}},
 {"id":"2200000000000000002","type":0,"channel_id":"2100000000000000002","author":{"id":"1000000000000000042","username":"ada","global_name":"Ada"},"content":"hi bot","timestamp":"2025-03-01T10:00:01+00:00","edited_timestamp":null,"attachments":[],"embeds":[]}
]`)
	}))
	return httptest.NewServer(mux)
}

func TestClientReadsIdentityTextChannelsAndHistory(t *testing.T) {
	srv := fakeDiscord(t, 200) // 201 guilds: two pages
	defer srv.Close()
	c := discord.New(discord.Options{BaseURL: srv.URL + "/api/v10", Token: token})
	ctx := context.Background()

	id, err := c.Identity(ctx)
	if err != nil || id.UserID != "1000000000000000001" || id.UserName != "stargazer" {
		t.Fatalf("identity = %+v, %v", id, err)
	}
	chans, err := c.Channels(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := platform.Channel{ID: "2100000000000000002", Name: "general", GuildID: "2000000000000000001", GuildName: "Star Club"}
	if len(chans) != 1 || chans[0] != want {
		t.Fatalf("channels = %+v, want only %+v", chans, want)
	}
	msgs, err := c.History(ctx, "2100000000000000002", 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 2 {
		t.Fatalf("history = %+v", msgs)
	}
	first, second := msgs[0], msgs[1]
	if first.ID != "2200000000000000002" || first.UserID != "1000000000000000042" || first.UserName != "ada" ||
		first.Text != "hi bot" || first.IsBot || !first.Time.Equal(time.Date(2025, 3, 1, 10, 0, 1, 0, time.UTC)) {
		t.Errorf("oldest message = %+v", first)
	}
	if second.ReplyToID != "2200000000000000002" || !second.IsBot || second.Time.UnixMilli() != first.Time.UnixMilli()+1500 {
		t.Errorf("reply = %+v", second)
	}
}

func TestFailuresAreTypedAndNeverCarryTheToken(t *testing.T) {
	tests := []struct {
		name   string
		status int
		header string
		body   string
		check  func(error) bool
		after  time.Duration
	}{
		{"429 with retry_after in the body", 429, "", `{"message": "You are being rate limited.", "retry_after": 1.5, "global": false}`, nil, 1500 * time.Millisecond},
		{"429 with Retry-After only", 429, "3", `rate limited`, nil, 3 * time.Second},
		{"401 echoing the token", 401, "", `{"message": "401: Unauthorized ` + token + `", "code": 0}`, platform.Unauthorized, 0},
		{"malformed JSON", 200, "", `<html>gateway</html>`, func(err error) bool { return errors.Is(err, platform.ErrMalformed) }, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tt.header != "" {
					w.Header().Set("Retry-After", tt.header)
				}
				w.WriteHeader(tt.status)
				fmt.Fprint(w, tt.body)
			}))
			defer srv.Close()
			_, err := discord.New(discord.Options{BaseURL: srv.URL, Token: token}).History(context.Background(), "1", 100)
			if err == nil || strings.Contains(err.Error(), token) {
				t.Fatalf("err = %v", err)
			}
			if tt.check != nil && !tt.check(err) {
				t.Fatalf("err = %v, not of the expected kind", err)
			}
			if tt.status == 429 {
				var rl *platform.RateLimitError
				if !errors.As(err, &rl) || rl.RetryAfter() != tt.after {
					t.Fatalf("err = %v, want a rate limit of %s", err, tt.after)
				}
			}
		})
	}
}
