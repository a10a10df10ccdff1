package handlers

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/clients/platform"
	"github.com/stargazer/stargazer-jobs/internal/clients/platform/discord"
	"github.com/stargazer/stargazer-jobs/internal/clients/platform/matrix"
	"github.com/stargazer/stargazer-jobs/internal/store/msgcache"
)

var (
	general = msgcache.Channel{Platform: "discord", ID: generalID}
	group   = msgcache.Channel{Platform: "matrix", ID: groupRoom}
	dm      = msgcache.Channel{Platform: "matrix", ID: dmRoom}
)

func platforms(dsrv, msrv string) []Platform {
	var out []Platform
	if dsrv != "" {
		out = append(out, discord.New(discord.Options{BaseURL: dsrv + "/api/v10", Token: discordToken}))
	}
	if msrv != "" {
		out = append(out, matrix.New(matrix.Options{HomeserverURL: msrv, Token: matrixToken}))
	}
	return out
}

func msgKey(c msgcache.Channel, id string) string { return msgcache.MessageKey(c, id) }

func TestBackfillBringsTheCacheUpToDateOnBothPlatforms(t *testing.T) {
	ctx := context.Background()
	env := newTestEnv(t)
	var dc, mc calls
	emb := &embeddingsFake{}
	d := env.deps(t, emb.server(t))
	d.Platforms = platforms(fakeDiscord(t, &dc, identityFailures{}).URL, fakeHomeserver(t, &mc, identityFailures{}).URL)
	store := msgcache.New(d.Redis)

	// What the bot cached before it went down: Ada's Discord question
	// before her edit (embedded), the bot's Matrix reply's question
	// (embedded, unchanged) and an older Matrix message (not on the page).
	base := time.UnixMilli(1740823000000)
	seed := []struct {
		m     msgcache.Message
		embed bool
	}{
		{msgcache.Message{Channel: general, MessageID: "2200000000000000001", UserID: "1000000000000000077", UserName: "ada", Text: "hi bot, is teh moon full?", Time: base}, true},
		{msgcache.Message{Channel: group, MessageID: "$ev1", UserID: "@ada:example.org", UserName: "Ada", Text: "saturn tonight?", Time: base}, true},
		{msgcache.Message{Channel: group, MessageID: "$ev0", UserID: "@ada:example.org", Text: "older", Time: base.Add(-time.Hour)}, false},
	}
	for _, s := range seed {
		k, _, err := store.Log(ctx, s.m)
		if err != nil {
			t.Fatal(err)
		}
		if s.embed {
			if _, err := store.SetEmbedding(ctx, k, []float32{9, 9, 9}, "text-embedding-3-small"); err != nil {
				t.Fatal(err)
			}
		}
	}

	res, err := run(t, ctx, d, "startup_channel_backfill", `{"max_channels":10}`)
	if err != nil {
		t.Fatal(err)
	}
	want := Result{"channels_processed": 2, "channels_failed": 0, "messages_cached": 4, "texts_repaired": 1, "embeddings_enqueued": 5}
	for k, v := range want {
		if res[k] != v {
			t.Errorf("%s = %v, want %v (result %v)", k, res[k], v, res)
		}
	}

	msgs, err := store.Get(ctx, []string{
		msgKey(general, "2200000000000000001"), msgKey(general, "2200000000000000002"), msgKey(general, "2200000000000000003"),
		msgKey(general, "2200000000000000004"), msgKey(group, "$ev2"),
	})
	if err != nil || len(msgs) != 5 {
		t.Fatalf("cached = %+v, %v", msgs, err)
	}
	if msgs[0].Text != "hi bot, is the moon full?" {
		t.Errorf("edited text not repaired: %q", msgs[0].Text)
	}
	kinds := []string{msgs[1].Kind, msgs[2].Kind, msgs[3].Kind, msgs[4].Kind}
	// The bot's own reply is assistant_out; another bot's message is a user's.
	if !slices.Equal(kinds, []string{msgcache.KindAssistantOut, msgcache.KindUserIn, msgcache.KindUserIn, msgcache.KindAssistantOut}) {
		t.Errorf("kinds = %v", kinds)
	}
	if m := msgs[1]; m.ReplyToID != "2200000000000000001" || m.UserName != "stargazer" || m.Time.UnixMilli() != time.Date(2025, 3, 1, 10, 0, 2, 0, time.UTC).UnixMilli() {
		t.Errorf("bot reply = %+v", m)
	}
	if m := msgs[4]; m.Text != "Yes, after ten." || m.ReplyToID != "$ev1" || m.UserName != "Stargazer" {
		t.Errorf("matrix reply = %+v", m)
	}
	if has, _ := store.HasEmbedding(ctx, []string{msgKey(general, "2200000000000000001"), msgKey(group, "$ev1")}); !slices.Equal(has, []bool{false, true}) {
		t.Errorf("embeddings after repair = %v, want the edited one's stale vector dropped and the unchanged one's kept", has)
	}
	for c, want := range map[msgcache.Channel]msgcache.Meta{
		general: {Name: "general", GuildID: "2000000000000000001", GuildName: "Star Club"},
		group:   {Name: "Astronomy"},
	} {
		if got, ok, err := store.Meta(ctx, c); !ok || err != nil || got != want {
			t.Errorf("meta of %s = %+v (%v, %v), want %+v", c, got, ok, err, want)
		}
	}

	var queued []string
	firstTasks := len(env.embedTasks(t, false))
	for _, b := range env.embedTasks(t, false) {
		queued = append(queued, b...)
	}
	slices.Sort(queued)
	wantQueued := []string{
		msgKey(general, "2200000000000000001"), msgKey(general, "2200000000000000002"),
		msgKey(general, "2200000000000000003"), msgKey(general, "2200000000000000004"), msgKey(group, "$ev2"),
	}
	slices.Sort(wantQueued)
	if !slices.Equal(queued, wantQueued) {
		t.Fatalf("queued for embedding %v, want %v", queued, wantQueued)
	}
	if !strings.Contains(env.logText(), "Startup backfill complete: 2 channels, 4 new messages cached, 1 texts repaired, 5 embeddings enqueued") {
		t.Errorf("no completion log:\n%s", env.logText())
	}
	for _, secret := range []string{discordToken, matrixToken, "sk-embed-secret"} {
		if strings.Contains(env.logText(), secret) {
			t.Errorf("a token reached the logs")
		}
	}

	// Run twice = run once: nothing new to cache, repair or queue while
	// the batches wait.
	again, err := run(t, ctx, d, "startup_channel_backfill", `{"max_channels":10}`)
	if err != nil || again["messages_cached"] != 0 || again["texts_repaired"] != 0 || again["embeddings_enqueued"] != 0 || again["channels_processed"] != 2 {
		t.Fatalf("second run = %v, %v", again, err)
	}
	if n := len(env.embedTasks(t, false)); n != firstTasks {
		t.Fatalf("%d embed tasks after two runs, want the first run's %d", n, firstTasks)
	}

	// Once the queue has run, the messages have vectors and are not queued again.
	for _, b := range env.embedTasks(t, false) {
		if _, err := run(t, ctx, d, "embed_messages", `{"keys":["`+strings.Join(b, `","`)+`"]}`); err != nil {
			t.Fatal(err)
		}
	}
	if has, _ := store.HasEmbedding(ctx, wantQueued); slices.Contains(has, false) {
		t.Fatalf("embedded = %v", has)
	}
	third, err := run(t, ctx, d, "startup_channel_backfill", `{"max_channels":10}`)
	if err != nil || third["embeddings_enqueued"] != 0 {
		t.Fatalf("third run = %v, %v", third, err)
	}
}

func TestBackfillDiscoversChannelsOnThePlatformsWhenRedisKnowsNone(t *testing.T) {
	ctx := context.Background()
	env := newTestEnv(t)
	var dc, mc calls
	d := env.deps(t, nil) // no embeddings endpoint: nothing is queued
	d.Platforms = platforms(fakeDiscord(t, &dc, identityFailures{}).URL, fakeHomeserver(t, &mc, identityFailures{}).URL)
	store := msgcache.New(d.Redis)

	res, err := run(t, ctx, d, "startup_channel_backfill", `{"max_channels":2}`)
	if err != nil {
		t.Fatal(err)
	}
	// Catalog order: Discord's text channel, then Matrix rooms; two allowed.
	if res["channels_processed"] != 2 || res["messages_cached"] != 6 || res["embeddings_enqueued"] != 0 {
		t.Fatalf("result %v", res)
	}
	active, err := store.ActiveChannels(ctx, 10)
	if err != nil || len(active) != 2 || !slices.Contains(active, general) || !slices.Contains(active, group) {
		t.Fatalf("active channels after discovery = %v, %v", active, err)
	}
	if _, ok, _ := store.Meta(ctx, dm); ok {
		t.Error("the DM beyond max_channels was processed")
	}
	if n := len(env.embedTasks(t, false)); n != 0 {
		t.Errorf("%d embed tasks queued without an embeddings endpoint", n)
	}
	if !strings.Contains(env.logText(), "performing platform fallback discovery") {
		t.Error("fallback discovery not logged")
	}

	// A DM is recognised by its two members.
	res, err = run(t, ctx, d, "startup_channel_backfill", `{"max_channels":10}`)
	if err != nil || res["messages_cached"] != 0 {
		t.Fatalf("rerun = %v, %v", res, err)
	}
}

func TestBackfillRecordsDMRooms(t *testing.T) {
	ctx := context.Background()
	env := newTestEnv(t)
	var mc calls
	d := env.deps(t, nil)
	d.Platforms = platforms("", fakeHomeserver(t, &mc, identityFailures{}).URL)
	if _, err := run(t, ctx, d, "startup_channel_backfill", `{"max_channels":10}`); err != nil {
		t.Fatal(err)
	}
	got, ok, err := msgcache.New(d.Redis).Meta(ctx, dm)
	if !ok || err != nil || !got.IsDM || got.Name != "" {
		t.Fatalf("DM meta = %+v, %v, %v", got, ok, err)
	}
}

func TestBackfillWaitsBoundedlyForPlatforms(t *testing.T) {
	tests := []struct {
		name          string
		matrix        identityFailures
		wantProcessed int
		// identity calls the homeserver should see: exactly, or at least
		// when atLeast.
		identityCalls int
		atLeast       bool
	}{
		{"comes up within the wait", identityFailures{status: 502, times: 2}, 2, 3, false},
		{"stays down: skipped after the wait", identityFailures{status: 502, times: -1}, 1, 2, true},
		{"token refused: skipped without waiting", identityFailures{status: 401, times: -1}, 1, 1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			env := newTestEnv(t)
			var dc, mc calls
			d := env.deps(t, nil)
			d.Platforms = platforms(fakeDiscord(t, &dc, identityFailures{}).URL, fakeHomeserver(t, &mc, tt.matrix).URL)
			d.PlatformReadyTimeout = 2 * time.Second
			d.PlatformReadyPoll = 20 * time.Millisecond
			store := msgcache.New(d.Redis)
			for _, c := range []msgcache.Channel{general, group} {
				if _, _, err := store.Log(ctx, msgcache.Message{Channel: c, MessageID: "seed", Text: "seed", Time: time.Now()}); err != nil {
					t.Fatal(err)
				}
			}
			if tt.matrix.times < 0 {
				d.PlatformReadyTimeout = 200 * time.Millisecond
			}
			res, err := run(t, ctx, d, "startup_channel_backfill", `{"max_channels":10}`)
			if err != nil {
				t.Fatal(err)
			}
			if res["channels_processed"] != tt.wantProcessed {
				t.Errorf("processed %v, want %d (result %v)", res["channels_processed"], tt.wantProcessed, res)
			}
			got := mc.get("identity")
			if got != tt.identityCalls && !(tt.atLeast && got >= tt.identityCalls) {
				t.Errorf("homeserver identity calls %d, want %d", got, tt.identityCalls)
			}
			if skipped := tt.wantProcessed == 1; skipped != (mc.get("history") == 0) {
				t.Errorf("matrix history calls %d with the platform skipped=%v", mc.get("history"), skipped)
			}
			if skipped := tt.wantProcessed == 1; skipped != strings.Contains(env.logText(), "proceeding without fully-ready platforms") {
				t.Errorf("not-ready log present=%v, want %v", !skipped, skipped)
			}
		})
	}
}

// One channel whose records the bot left in a shape the backfill cannot
// read (its metadata key is not a hash; one cached message is a list) is
// skipped or cached without metadata, as the original logged and went on;
// the other channels are still brought up to date.
func TestBackfillGoesOnPastOneChannelsBrokenRecords(t *testing.T) {
	ctx := context.Background()
	env := newTestEnv(t)
	var dc, mc calls
	d := env.deps(t, (&embeddingsFake{}).server(t))
	d.Platforms = platforms(fakeDiscord(t, &dc, identityFailures{}).URL, fakeHomeserver(t, &mc, identityFailures{}).URL)
	store := msgcache.New(d.Redis)
	if _, _, err := store.Log(ctx, msgcache.Message{Channel: group, MessageID: "$ev0", UserID: "@ada:example.org", Text: "older", Time: time.UnixMilli(1740823000000)}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := store.Log(ctx, msgcache.Message{Channel: general, MessageID: "2200000000000000000", UserID: "u", Text: "first", Time: time.UnixMilli(1740823000000)}); err != nil {
		t.Fatal(err)
	}
	rdb := d.Redis
	if err := rdb.Set(ctx, msgcache.MetaKey(general), "not a hash", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.RPush(ctx, msgKey(group, "$ev1"), "not", "a", "hash").Err(); err != nil {
		t.Fatal(err)
	}
	res, err := run(t, ctx, d, "startup_channel_backfill", `{"max_channels":10}`)
	if err != nil {
		t.Fatalf("the run failed for everyone: %v", err)
	}
	if res["channels_processed"] != 1 || res["channels_failed"] != 1 || res["messages_cached"] != 4 {
		t.Fatalf("result %v: want Discord's channel cached despite its broken metadata and the Matrix room skipped", res)
	}
	if !strings.Contains(env.logText(), "Startup backfill: channel skipped") {
		t.Errorf("the skipped channel was not logged:\n%s", env.logText())
	}
}

// With no embeddings endpoint a repaired message keeps the vector of its
// old text (the original's behaviour) instead of losing it for good, and
// the run says how many messages wait for an embedding.
func TestBackfillWithoutAnEmbeddingsEndpointLosesNoVector(t *testing.T) {
	ctx := context.Background()
	env := newTestEnv(t)
	var dc calls
	d := env.deps(t, nil)
	d.Platforms = platforms(fakeDiscord(t, &dc, identityFailures{}).URL, "")
	store := msgcache.New(d.Redis)
	k, _, err := store.Log(ctx, msgcache.Message{Channel: general, MessageID: "2200000000000000001", UserID: "1000000000000000077",
		UserName: "ada", Text: "hi bot, is teh moon full?", Time: time.UnixMilli(1740823000000)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.SetEmbedding(ctx, k, []float32{9, 9, 9}, "text-embedding-3-small"); err != nil {
		t.Fatal(err)
	}
	res, err := run(t, ctx, d, "startup_channel_backfill", `{"max_channels":10}`)
	if err != nil {
		t.Fatal(err)
	}
	if res["texts_repaired"] != 1 || res["embeddings_enqueued"] != 0 || res["embeddings_not_queued"] != 4 {
		t.Fatalf("result %v", res)
	}
	msgs, _ := store.Get(ctx, []string{k})
	has, _ := store.HasEmbedding(ctx, []string{k})
	if len(msgs) != 1 || msgs[0].Text != "hi bot, is the moon full?" || !has[0] {
		t.Fatalf("repaired message %+v, embedded %v: want the new text and the old vector kept", msgs, has)
	}
	if !strings.Contains(env.logText(), "no embeddings endpoint is configured") {
		t.Errorf("the missing endpoint was not reported:\n%s", env.logText())
	}
}

// noIDPlatform is a platform whose history holds a message without an id
// (the Discord and Matrix clients never yield one: both APIs always carry
// ids; another platform's client might).
type noIDPlatform struct{}

func (noIDPlatform) Name() string { return "discord" }
func (noIDPlatform) Identity(context.Context) (platform.Identity, error) {
	return platform.Identity{UserID: "1"}, nil
}
func (noIDPlatform) Channels(context.Context) ([]platform.Channel, error) {
	return []platform.Channel{{ID: generalID, Name: "general"}}, nil
}
func (noIDPlatform) History(context.Context, string, int) ([]platform.Message, error) {
	return []platform.Message{{UserID: "7", UserName: "ada", Text: "no id here", Time: time.UnixMilli(1740823000000)}}, nil
}

func TestBackfillCachesAMessageWithoutAnIDOnce(t *testing.T) {
	ctx := context.Background()
	env := newTestEnv(t)
	d := env.deps(t, nil)
	d.Platforms = []Platform{noIDPlatform{}}
	for run1 := range 2 {
		res, err := run(t, ctx, d, "startup_channel_backfill", `{"max_channels":10}`)
		if err != nil {
			t.Fatal(err)
		}
		if want := 1 - run1; res["messages_cached"] != want {
			t.Fatalf("run %d cached %v, want %d", run1+1, res["messages_cached"], want)
		}
	}
	msgs, err := msgcache.New(d.Redis).Recent(ctx, general, 10)
	if err != nil || len(msgs) != 1 || msgs[0].Text != "no id here" || !strings.HasPrefix(msgs[0].MessageID, "noid-") {
		t.Fatalf("cached %+v, %v", msgs, err)
	}
}
