package matrix_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/clients/platform"
	"github.com/stargazer/stargazer-jobs/internal/clients/platform/matrix"
)

const token = "syt_c3RhcmdhemVy_secret"

// fakeHomeserver answers like a Synapse client-server API for a bot in a
// named group room and an unnamed DM.
func fakeHomeserver(t *testing.T) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	auth := func(h http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			if r.Header.Get("Authorization") != "Bearer "+token {
				w.WriteHeader(401)
				fmt.Fprint(w, `{"errcode":"M_UNKNOWN_TOKEN","error":"Invalid access token passed.","soft_logout":false}`)
				return
			}
			h(w, r)
		}
	}
	mux.HandleFunc("GET /_matrix/client/v3/account/whoami", auth(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"user_id":"@stargazer:example.org","device_id":"ABCDEFGH","is_guest":false}`)
	}))
	mux.HandleFunc("GET /_matrix/client/v3/joined_rooms", auth(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"joined_rooms":["!group:example.org","!dm:example.org"]}`)
	}))
	mux.HandleFunc("GET /_matrix/client/v3/rooms/{room}/state/m.room.name", auth(func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("room") == "!group:example.org" {
			fmt.Fprint(w, `{"name":"Astronomy"}`)
			return
		}
		w.WriteHeader(404)
		fmt.Fprint(w, `{"errcode":"M_NOT_FOUND","error":"Event not found."}`)
	}))
	mux.HandleFunc("GET /_matrix/client/v3/rooms/{room}/joined_members", auth(func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("room") == "!group:example.org" {
			fmt.Fprint(w, `{"joined":{"@stargazer:example.org":{"display_name":"Stargazer","avatar_url":null},"@ada:example.org":{"display_name":"Ada L.","avatar_url":"mxc://example.org/a"},"@bob:example.org":{"display_name":null,"avatar_url":null}}}`)
			return
		}
		fmt.Fprint(w, `{"joined":{"@stargazer:example.org":{"display_name":"Stargazer"},"@ada:example.org":{"display_name":"Ada L."}}}`)
	}))
	mux.HandleFunc("GET /_matrix/client/v3/rooms/{room}/messages", auth(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if q.Get("dir") != "b" || q.Get("limit") != "100" || r.PathValue("room") != "!group:example.org" {
			http.Error(w, `{"errcode":"M_INVALID_PARAM"}`, 400)
			return
		}
		// Newest first, as dir=b returns them.
		fmt.Fprint(w, `{"start":"t47-1_2_3","end":"t12-1_2_3","chunk":[
 {"type":"m.room.message","room_id":"!group:example.org","sender":"@ada:example.org","event_id":"$edit1","origin_server_ts":1740823205000,
  "content":{"msgtype":"m.text","body":"* the moon is full","m.new_content":{"msgtype":"m.text","body":"the moon is full"},"m.relates_to":{"rel_type":"m.replace","event_id":"$ev1"}}},
 {"type":"m.room.message","room_id":"!group:example.org","sender":"@stargazer:example.org","event_id":"$ev3","origin_server_ts":1740823203000,
  "content":{"msgtype":"m.text","body":"> <@ada:example.org> the moon is ful\n\nIt is!","m.relates_to":{"m.in_reply_to":{"event_id":"$ev1"}}}},
 {"type":"m.room.member","room_id":"!group:example.org","sender":"@bob:example.org","event_id":"$join","origin_server_ts":1740823202500,"state_key":"@bob:example.org","content":{"membership":"join"}},
 {"type":"m.room.message","room_id":"!group:example.org","sender":"@bob:example.org","event_id":"$redacted","origin_server_ts":1740823202000,"content":{},"unsigned":{"redacted_because":{}}},
 {"type":"m.room.message","room_id":"!group:example.org","sender":"@ada:example.org","event_id":"$ev1","origin_server_ts":1740823201000,
  "content":{"msgtype":"m.text","body":"the moon is ful"},"unsigned":{"age":1234}}
]}`)
	}))
	return httptest.NewServer(mux)
}

func TestClientReadsIdentityRoomsAndHistory(t *testing.T) {
	srv := fakeHomeserver(t)
	defer srv.Close()
	c := matrix.New(matrix.Options{HomeserverURL: srv.URL + "/", Token: token})
	ctx := context.Background()

	id, err := c.Identity(ctx)
	if err != nil || id.UserID != "@stargazer:example.org" {
		t.Fatalf("identity = %+v, %v", id, err)
	}
	rooms, err := c.Channels(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []platform.Channel{{ID: "!group:example.org", Name: "Astronomy"}, {ID: "!dm:example.org", IsDM: true}}
	if len(rooms) != 2 || rooms[0] != want[0] || rooms[1] != want[1] {
		t.Fatalf("rooms = %+v, want %+v", rooms, want)
	}
	msgs, err := c.History(ctx, "!group:example.org", 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 2 {
		t.Fatalf("history = %+v, want the two text messages (no edit, no redaction, no membership)", msgs)
	}
	if m := msgs[0]; m.ID != "$ev1" || m.Text != "the moon is full" || m.UserName != "Ada L." || !m.Time.Equal(time.UnixMilli(1740823201000)) {
		t.Errorf("edited message = %+v", m)
	}
	if m := msgs[1]; m.ID != "$ev3" || m.Text != "It is!" || m.ReplyToID != "$ev1" || m.UserID != "@stargazer:example.org" {
		t.Errorf("reply = %+v", m)
	}
}

func TestFailuresAreTypedAndNeverCarryTheToken(t *testing.T) {
	tests := []struct {
		name   string
		status int
		header string
		body   string
		after  time.Duration
		check  func(error) bool
	}{
		{"M_LIMIT_EXCEEDED with retry_after_ms", 429, "", `{"errcode":"M_LIMIT_EXCEEDED","error":"Too Many Requests","retry_after_ms":2500}`, 2500 * time.Millisecond, nil},
		{"429 with Retry-After only", 429, "4", `{"errcode":"M_LIMIT_EXCEEDED"}`, 4 * time.Second, nil},
		{"unknown token", 401, "", `{"errcode":"M_UNKNOWN_TOKEN","error":"bad ` + token + `"}`, 0, platform.Unauthorized},
		{"not JSON", 200, "", `upstream connect error`, 0, func(err error) bool { return errors.Is(err, platform.ErrMalformed) }},
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
			_, err := matrix.New(matrix.Options{HomeserverURL: srv.URL, Token: token}).Identity(context.Background())
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
