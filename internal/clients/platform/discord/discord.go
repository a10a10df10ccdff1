// Package discord reads Discord's REST API v10 as the bot: its identity,
// its guilds' text channels and a channel's recent messages. It is the
// backfill's view of Discord; the bot itself talks to the gateway.
package discord

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/clients/platform"
)

// DefaultBaseURL is Discord's API root.
const DefaultBaseURL = "https://discord.com/api/v10"

// Name is the platform name in the message cache.
const Name = "discord"

// Discord channel type of a guild text channel.
const channelTypeGuildText = 0

// guildsPage is the largest page of GET /users/@me/guilds.
const guildsPage = 200

// Client calls Discord's REST API with a bot token.
type Client struct {
	api platform.API
}

// Options configure a Client.
type Options struct {
	// BaseURL is the API root (default DefaultBaseURL).
	BaseURL string
	// Token is the bot token; it is sent as "Bot <token>" and never
	// appears in errors.
	Token string
	// HTTP overrides the HTTP client (default: platform.NewHTTPClient).
	HTTP *http.Client
}

// New returns a client for o.
func New(o Options) *Client {
	if o.BaseURL == "" {
		o.BaseURL = DefaultBaseURL
	}
	if o.HTTP == nil {
		o.HTTP = platform.NewHTTPClient(0)
	}
	return &Client{api: platform.API{
		Platform: Name, BaseURL: o.BaseURL, Authorization: "Bot " + o.Token, Secret: o.Token,
		UserAgent:  "DiscordBot (https://github.com/stargazer/stargazer-jobs, 1)",
		RetryAfter: retryAfter, HTTP: o.HTTP,
	}}
}

// Name is "discord".
func (c *Client) Name() string { return Name }

type user struct {
	ID       string `json:"id"`
	Username string `json:"username"`
	Bot      bool   `json:"bot"`
}

// Identity is the bot's own user (GET /users/@me); a success means the
// token works.
func (c *Client) Identity(ctx context.Context) (platform.Identity, error) {
	var u user
	if err := c.api.GetJSON(ctx, "/users/@me", nil, &u); err != nil {
		return platform.Identity{}, err
	}
	if u.ID == "" {
		return platform.Identity{}, fmt.Errorf("%w: discord /users/@me without an id", platform.ErrMalformed)
	}
	return platform.Identity{UserID: u.ID, UserName: u.Username}, nil
}

type guild struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

type channel struct {
	ID   string `json:"id"`
	Type int    `json:"type"`
	Name string `json:"name"`
}

// Channels lists the text channels of every guild the bot is in. A guild
// whose channels cannot be read is left out and its error returned along
// with the channels of the others.
func (c *Client) Channels(ctx context.Context) ([]platform.Channel, error) {
	guilds, err := c.guilds(ctx)
	if err != nil {
		return nil, err
	}
	var out []platform.Channel
	var errs []error
	for _, g := range guilds {
		var chans []channel
		if err := c.api.GetJSON(ctx, "/guilds/"+url.PathEscape(g.ID)+"/channels", nil, &chans); err != nil {
			errs = append(errs, err)
			continue
		}
		for _, ch := range chans {
			if ch.Type == channelTypeGuildText && ch.ID != "" {
				out = append(out, platform.Channel{ID: ch.ID, Name: ch.Name, GuildID: g.ID, GuildName: g.Name})
			}
		}
	}
	return out, errors.Join(errs...)
}

// guilds pages through GET /users/@me/guilds (200 per page, by id).
func (c *Client) guilds(ctx context.Context) ([]guild, error) {
	var all []guild
	after := ""
	for {
		q := url.Values{"limit": {strconv.Itoa(guildsPage)}}
		if after != "" {
			q.Set("after", after)
		}
		var page []guild
		if err := c.api.GetJSON(ctx, "/users/@me/guilds", q, &page); err != nil {
			return nil, err
		}
		all = append(all, page...)
		if len(page) < guildsPage || page[len(page)-1].ID == after {
			return all, nil
		}
		after = page[len(page)-1].ID
	}
}

type message struct {
	ID        string `json:"id"`
	Author    user   `json:"author"`
	Content   string `json:"content"`
	Timestamp string `json:"timestamp"`
	Reference *struct {
		MessageID string `json:"message_id"`
	} `json:"message_reference"`
}

// MaxHistory is the most messages one history call returns.
const MaxHistory = 100

// History returns up to limit (at most 100) of the channel's latest
// messages, oldest first.
func (c *Client) History(ctx context.Context, channelID string, limit int) ([]platform.Message, error) {
	limit = min(max(limit, 1), MaxHistory)
	var msgs []message
	path := "/channels/" + url.PathEscape(channelID) + "/messages"
	if err := c.api.GetJSON(ctx, path, url.Values{"limit": {strconv.Itoa(limit)}}, &msgs); err != nil {
		return nil, err
	}
	out := make([]platform.Message, 0, len(msgs))
	for _, m := range msgs {
		if m.ID == "" {
			continue
		}
		t, err := time.Parse(time.RFC3339Nano, m.Timestamp)
		if err != nil {
			return nil, fmt.Errorf("%w: discord message %s: timestamp %q", platform.ErrMalformed, m.ID, m.Timestamp)
		}
		pm := platform.Message{
			ID: m.ID, UserID: m.Author.ID, UserName: m.Author.Username, Text: m.Content,
			Time: t, IsBot: m.Author.Bot,
		}
		if m.Reference != nil {
			pm.ReplyToID = m.Reference.MessageID
		}
		out = append(out, pm)
	}
	// Discord answers newest first.
	slices.Reverse(out)
	return out, nil
}

// retryAfter reads a 429: the JSON body's retry_after (seconds, with
// fractions) is more precise than the Retry-After header.
func retryAfter(h http.Header, body []byte) time.Duration {
	var b struct {
		RetryAfter *float64 `json:"retry_after"`
	}
	if json.Unmarshal(body, &b) == nil && b.RetryAfter != nil && *b.RetryAfter >= 0 {
		return time.Duration(*b.RetryAfter * float64(time.Second))
	}
	return platform.HeaderRetryAfter(h)
}
