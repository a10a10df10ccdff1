// Package matrix reads the Matrix client-server API as the bot: its
// identity, its joined rooms and a room's recent messages.
package matrix

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/clients/platform"
)

// Name is the platform name in the message cache.
const Name = "matrix"

// MaxHistory is the most messages one history call asks for.
const MaxHistory = 100

// Client calls one homeserver with an access token.
type Client struct {
	api platform.API
}

// Options configure a Client.
type Options struct {
	// HomeserverURL is the homeserver's base URL (https://matrix.example.org).
	HomeserverURL string
	// Token is the access token; it is sent as a bearer token and never
	// appears in errors.
	Token string
	// HTTP overrides the HTTP client (default: platform.NewHTTPClient).
	HTTP *http.Client
}

// New returns a client for o.
func New(o Options) *Client {
	if o.HTTP == nil {
		o.HTTP = platform.NewHTTPClient(0)
	}
	return &Client{api: platform.API{
		Platform: Name, BaseURL: strings.TrimRight(o.HomeserverURL, "/") + "/_matrix/client/v3",
		Authorization: "Bearer " + o.Token, Secret: o.Token, RetryAfter: retryAfter, HTTP: o.HTTP,
	}}
}

// Name is "matrix".
func (c *Client) Name() string { return Name }

// Identity is the bot's own user (GET /account/whoami); a success means
// the token works.
func (c *Client) Identity(ctx context.Context) (platform.Identity, error) {
	var w struct {
		UserID string `json:"user_id"`
	}
	if err := c.api.GetJSON(ctx, "/account/whoami", nil, &w); err != nil {
		return platform.Identity{}, err
	}
	if w.UserID == "" {
		return platform.Identity{}, fmt.Errorf("%w: matrix whoami without a user_id", platform.ErrMalformed)
	}
	return platform.Identity{UserID: w.UserID, UserName: w.UserID}, nil
}

func roomPath(roomID, rest string) string { return "/rooms/" + url.PathEscape(roomID) + rest }

// Channels lists the joined rooms with their names; a room of at most two
// members is a DM. A room whose details cannot be read is still listed,
// without them; the errors are returned along with the rooms.
func (c *Client) Channels(ctx context.Context) ([]platform.Channel, error) {
	var jr struct {
		JoinedRooms []string `json:"joined_rooms"`
	}
	if err := c.api.GetJSON(ctx, "/joined_rooms", nil, &jr); err != nil {
		return nil, err
	}
	out := make([]platform.Channel, 0, len(jr.JoinedRooms))
	var errs []error
	for _, id := range jr.JoinedRooms {
		if id == "" {
			continue
		}
		ch := platform.Channel{ID: id}
		var name struct {
			Name string `json:"name"`
		}
		switch err := c.api.GetJSON(ctx, roomPath(id, "/state/m.room.name"), nil, &name); {
		case err == nil:
			ch.Name = name.Name
		case !platform.NotFound(err): // 404: the room has no name
			errs = append(errs, err)
		}
		members, err := c.members(ctx, id)
		if err != nil {
			errs = append(errs, err)
		} else {
			ch.IsDM = len(members) <= 2
		}
		out = append(out, ch)
	}
	return out, errors.Join(errs...)
}

type member struct {
	DisplayName string `json:"display_name"`
}

func (c *Client) members(ctx context.Context, roomID string) (map[string]member, error) {
	var jm struct {
		Joined map[string]member `json:"joined"`
	}
	if err := c.api.GetJSON(ctx, roomPath(roomID, "/joined_members"), nil, &jm); err != nil {
		return nil, err
	}
	return jm.Joined, nil
}

type event struct {
	Type     string          `json:"type"`
	EventID  string          `json:"event_id"`
	Sender   string          `json:"sender"`
	TS       int64           `json:"origin_server_ts"`
	Content  content         `json:"content"`
	Unsigned json.RawMessage `json:"unsigned"`
}

type content struct {
	Body      *string `json:"body"`
	RelatesTo *struct {
		RelType   string `json:"rel_type"`
		EventID   string `json:"event_id"`
		InReplyTo *struct {
			EventID string `json:"event_id"`
		} `json:"m.in_reply_to"`
	} `json:"m.relates_to"`
	NewContent *struct {
		Body *string `json:"body"`
	} `json:"m.new_content"`
}

// replacement is the edit a server aggregates into an event's unsigned
// m.relations (Matrix v1.7+).
type replacement struct {
	Relations struct {
		Replace *struct {
			Content content `json:"content"`
		} `json:"m.replace"`
	} `json:"m.relations"`
}

// History returns up to limit (at most 100) of the room's latest text
// messages, oldest first. Edits are applied to the message they replace
// (the latest edit wins) rather than returned as messages of their own,
// and a reply's quoted fallback is dropped from its text.
func (c *Client) History(ctx context.Context, roomID string, limit int) ([]platform.Message, error) {
	limit = min(max(limit, 1), MaxHistory)
	q := url.Values{
		"dir":    {"b"},
		"limit":  {strconv.Itoa(limit)},
		"filter": {`{"types":["m.room.message"]}`},
	}
	var page struct {
		Chunk []event `json:"chunk"`
	}
	if err := c.api.GetJSON(ctx, roomPath(roomID, "/messages"), q, &page); err != nil {
		return nil, err
	}
	// Display names are a nicety: without them the sender's id is the name.
	names, _ := c.members(ctx, roomID)

	// The chunk is newest first, so the first edit seen of an event is
	// its latest.
	edits := map[string]string{}
	for _, e := range page.Chunk {
		if r := e.Content.RelatesTo; e.Type == "m.room.message" && r != nil && r.RelType == "m.replace" && r.EventID != "" &&
			e.Content.NewContent != nil && e.Content.NewContent.Body != nil {
			if _, seen := edits[r.EventID]; !seen {
				edits[r.EventID] = *e.Content.NewContent.Body
			}
		}
	}
	out := make([]platform.Message, 0, len(page.Chunk))
	for _, e := range page.Chunk {
		if e.Type != "m.room.message" || e.EventID == "" || e.Content.Body == nil {
			continue // other events, and redacted messages (no body)
		}
		if r := e.Content.RelatesTo; r != nil && r.RelType == "m.replace" {
			continue // an edit: applied to its target above
		}
		m := platform.Message{
			ID: e.EventID, UserID: e.Sender, UserName: e.Sender, Text: *e.Content.Body,
			Time: time.UnixMilli(e.TS),
		}
		if n := names[e.Sender].DisplayName; n != "" {
			m.UserName = n
		}
		if body, ok := edits[e.EventID]; ok {
			m.Text = body
		} else if body, ok := aggregatedEdit(e.Unsigned); ok {
			m.Text = body
		}
		if r := e.Content.RelatesTo; r != nil && r.InReplyTo != nil && r.InReplyTo.EventID != "" {
			m.ReplyToID = r.InReplyTo.EventID
			m.Text = stripReplyFallback(m.Text)
		}
		out = append(out, m)
	}
	slices.Reverse(out)
	return out, nil
}

func aggregatedEdit(unsigned json.RawMessage) (string, bool) {
	if len(unsigned) == 0 {
		return "", false
	}
	var u replacement
	if json.Unmarshal(unsigned, &u) != nil || u.Relations.Replace == nil {
		return "", false
	}
	nc := u.Relations.Replace.Content.NewContent
	if nc == nil || nc.Body == nil {
		return "", false
	}
	return *nc.Body, true
}

// stripReplyFallback drops the "> <@user> quoted text" lines and the blank
// line after them that clients prepend to a reply's body.
func stripReplyFallback(body string) string {
	if !strings.HasPrefix(body, "> ") {
		return body
	}
	lines := strings.Split(body, "\n")
	i := 0
	for i < len(lines) && strings.HasPrefix(lines[i], ">") {
		i++
	}
	if i < len(lines) && lines[i] == "" {
		i++
	}
	return strings.Join(lines[i:], "\n")
}

// retryAfter reads a 429: M_LIMIT_EXCEEDED's retry_after_ms, else the
// Retry-After header.
func retryAfter(h http.Header, body []byte) time.Duration {
	var b struct {
		RetryAfterMS *int64 `json:"retry_after_ms"`
	}
	if json.Unmarshal(body, &b) == nil && b.RetryAfterMS != nil && *b.RetryAfterMS >= 0 {
		return time.Duration(*b.RetryAfterMS) * time.Millisecond
	}
	return platform.HeaderRetryAfter(h)
}
