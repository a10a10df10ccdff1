package handlers

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/kg/extract/extracttest"
	"github.com/stargazer/stargazer-jobs/internal/kg/plan"
	"github.com/stargazer/stargazer-jobs/internal/store/msgcache"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// Two busy channels and fifteen quiet ones: the busy ones' full calls are
// units of their own, the rest share units, and the calls per message are
// those of one pass batching 30 messages across channels.
func TestPlannerCutsUnitsOfOneCallAtTheCostOfBatchingAcrossChannels(t *testing.T) {
	ctx := context.Background()
	v := newKGEnv(t)
	d := v.deps()
	var users []string
	at := v.now.Add(-50 * time.Minute)
	// chatter dates message n at at+n·30 s: each channel starts from its
	// own n (distinct texts), shifted back to start near at.
	for i := range 2 {
		users = append(users, userTexts(chatter(t, v.rdb, msgcache.Channel{Platform: "discord", ID: fmt.Sprint(100 + i)}, at.Add(-time.Duration(1000*i)*30*time.Second), 1000*i, 75))...)
	}
	for i := range 15 {
		users = append(users, userTexts(chatter(t, v.rdb, msgcache.Channel{Platform: "discord", ID: fmt.Sprint(200 + i)}, at.Add(-time.Duration(5000+100*i)*30*time.Second+time.Duration(i)*time.Second), 5000+100*i, 5))...)
	}
	res, err := work(ctx, d, jobs.LimbicAnchoringWorker, &jobs.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	want := int(math.Ceil(float64(len(users)) / 30)) // 180 messages: 6 calls
	if res["units_planned"] != want || res["units_enqueued"] != want || res["channels_with_new"] != 17 {
		t.Fatalf("planner %v, want %d units", res, want)
	}
	if _, err := v.units.drain(ctx, d, true); err != nil {
		t.Fatal(err)
	}
	calls := v.llm.Calls()
	if len(calls) != want {
		t.Fatalf("%d LLM calls, want %d", len(calls), want)
	}
	for _, c := range calls {
		if len(c.Messages) > 30 {
			t.Errorf("a call of %d messages", len(c.Messages))
		}
	}
	sent := sentCounts(calls)
	for _, text := range users {
		if sent[text] != 1 {
			t.Errorf("%q sent %d times", text, sent[text])
		}
	}
}

// Units that finish out of order never move a cursor past a message that
// is not settled: the cursor waits at the first unsettled unit, and moves
// over everything once it settles.
func TestCursorsNeverPassAnUnsettledMessageWhenUnitsFinishOutOfOrder(t *testing.T) {
	ctx := context.Background()
	v := newKGEnv(t)
	d := v.deps()
	msgs := chatter(t, v.rdb, guildChan, v.now.Add(-50*time.Minute), 0, 113) // 91 people's messages: units of 30, 30, 31→30+1
	if _, err := work(ctx, d, jobs.LimbicAnchoringWorker, &jobs.Empty{}); err != nil {
		t.Fatal(err)
	}
	ids := v.units.Pending()
	if len(ids) != 4 {
		t.Fatalf("%d units", len(ids))
	}
	key := "sg:ka:cursor:" + guildChan.String()
	unitEnd := func(id string) msgcache.Position {
		units, _ := plan.New(v.rdb, jobs.LimbicAnchoringWorker, "sg:ka:cursor:").Units(ctx)
		for _, u := range units {
			if u.TaskID == id {
				p, _ := jobs.DecodePayload(unitSpec(), u.Payload)
				e := p.(*jobs.ExtractUnit).Segments[0].End
				return msgcache.Position{TS: e.TS, Key: e.Key}
			}
		}
		t.Fatalf("no unit %s", id)
		return msgcache.Position{}
	}
	end1 := unitEnd(ids[0])
	// The second unit's call fails.
	v.llm.SetHook(func(_ int, c extracttest.Call) *extracttest.Reply {
		if len(c.Messages) > 0 && c.Messages[0] == userTexts(msgs)[30] {
			return &extracttest.Reply{Status: http.StatusServiceUnavailable, Body: `{"error":{"message":"overloaded"}}`}
		}
		return nil
	})
	steps := []struct {
		name   string
		unit   string
		fails  bool
		cursor msgcache.Position
	}{
		{"the last unit first", ids[3], false, msgcache.Position{}},
		{"the third", ids[2], false, msgcache.Position{}},
		{"the second fails", ids[1], true, msgcache.Position{}},
		{"the first: the cursor stops before the failed second", ids[0], false, end1},
	}
	for _, st := range steps {
		_, err := v.units.run(ctx, d, st.unit)
		var se *llm.StatusError
		if st.fails != errors.As(err, &se) || (!st.fails && err != nil) {
			t.Fatalf("%s: err %v", st.name, err)
		}
		if got := cursorOf(t, v.rdb, key); got != st.cursor {
			t.Fatalf("%s: cursor %v, want %v", st.name, got, st.cursor)
		}
	}
	v.llm.SetHook(nil)
	if _, err := v.units.run(ctx, d, ids[1]); err != nil { // asynq's retry
		t.Fatal(err)
	}
	if got := cursorOf(t, v.rdb, key); got != posOf(msgs[len(msgs)-1]) {
		t.Fatalf("cursor %v, want the last message", got)
	}
	if got, want := graphMentions(t, v.g), wantMentions(userTexts(msgs)); !sameMentions(got, want) {
		t.Fatalf("mentions %v, want %v", got, want)
	}
}

// Planning again while units are queued plans and enqueues nothing twice:
// the next pass plans only what arrived since, after the chains' tails.
func TestReplanningWhileUnitsAreQueuedEnqueuesNoDuplicate(t *testing.T) {
	ctx := context.Background()
	v := newKGEnv(t)
	d := v.deps()
	first := chatter(t, v.rdb, guildChan, v.now.Add(-50*time.Minute), 0, 40)
	for range 3 {
		if _, err := work(ctx, d, jobs.LimbicAnchoringWorker, &jobs.Empty{}); err != nil {
			t.Fatal(err)
		}
	}
	if v.units.enqueued != 2 {
		t.Fatalf("%d units enqueued by three passes over the same messages, want 2", v.units.enqueued)
	}
	more := chatter(t, v.rdb, guildChan, v.now.Add(-50*time.Minute), 40, 10)
	res, err := work(ctx, d, jobs.LimbicAnchoringWorker, &jobs.Empty{})
	if err != nil || res["messages_read"] != 10 || res["units_enqueued"] != 1 {
		t.Fatalf("pass after new messages %v, %v", res, err)
	}
	if _, err := v.units.drain(ctx, d, true); err != nil {
		t.Fatal(err)
	}
	sent := sentCounts(v.llm.Calls())
	for _, text := range userTexts(append(first, more...)) {
		if sent[text] != 1 {
			t.Errorf("%q sent %d times", text, sent[text])
		}
	}
	if got := cursorOf(t, v.rdb, "sg:ka:cursor:"+guildChan.String()); got != posOf(more[len(more)-1]) {
		t.Fatalf("cursor %v", got)
	}
}

// A unit that asynq lost (its planner died before enqueueing it) is
// enqueued again under its own ID once it has stalled; one that it
// archived (out of retries, or refused as hopeless) only after its timeout
// times its attempts, so a hopeless unit is not retried on every pass; one
// that is merely queued is left alone. A re-enqueue restarts the clock.
func TestPlannerReenqueuesAStalledUnit(t *testing.T) {
	tests := []struct {
		how   string
		after time.Duration // since planning, when it is re-enqueued
	}{
		{"lost", unitStallAfter()},
		{"archived", archivedStallAfter()},
		{"queued", 0},
	}
	for _, tt := range tests {
		t.Run(tt.how, func(t *testing.T) {
			ctx := context.Background()
			v := newKGEnv(t)
			d := v.deps()
			msgs := chatter(t, v.rdb, guildChan, v.now.Add(-30*time.Minute), 0, 10)
			if _, err := work(ctx, d, jobs.LimbicAnchoringWorker, &jobs.Empty{}); err != nil {
				t.Fatal(err)
			}
			id := v.units.Pending()[0]
			switch tt.how {
			case "lost":
				v.units.lose(id)
			case "archived":
				v.units.archive(id)
			}
			repaired := func(at time.Duration) any {
				v.now = testBase.Add(2 * time.Hour).Add(at)
				res, err := work(ctx, d, jobs.LimbicAnchoringWorker, &jobs.Empty{})
				if err != nil || res["units_planned"] != 0 {
					t.Fatalf("pass at +%s: %v, %v", at, res, err)
				}
				return res["units_repaired"]
			}
			if n := repaired(unitStallAfter() - time.Second); n != 0 {
				t.Fatalf("a fresh unit was repaired: %v", n)
			}
			if tt.how == "queued" {
				if n := repaired(3 * archivedStallAfter()); n != 0 {
					t.Fatalf("a queued unit was re-enqueued: %v", n)
				}
			} else {
				if n := repaired(tt.after - time.Second); n != 0 {
					t.Fatalf("re-enqueued before its time: %v", n)
				}
				if n := repaired(tt.after + time.Second); n != 1 {
					t.Fatalf("not re-enqueued: %v", n)
				}
				if tt.how == "archived" {
					v.units.archive(id) // it gives up again at once
					if n := repaired(tt.after + 2*time.Second); n != 0 {
						t.Fatalf("re-enqueued again on the next pass: %v", n)
					}
					if n := repaired(2*tt.after + 2*time.Second); n != 1 {
						t.Fatalf("not re-enqueued a period after its re-enqueue: %v", n)
					}
				}
			}
			if p := v.units.Pending(); !slices.Equal(p, []string{id}) {
				t.Fatalf("queued %v, want the same unit %s", p, id)
			}
			if _, err := v.units.drain(ctx, d, false); err != nil {
				t.Fatal(err)
			}
			if got := cursorOf(t, v.rdb, "sg:ka:cursor:"+guildChan.String()); got != posOf(msgs[len(msgs)-1]) {
				t.Fatalf("cursor %v", got)
			}
		})
	}
}

// The planner writes each pass's backlog: per channel the messages after
// its cursor and the oldest; what units settled leaves it.
func TestPlannerWritesTheBacklog(t *testing.T) {
	ctx := context.Background()
	v := newKGEnv(t)
	d := v.deps()
	guild := chatter(t, v.rdb, guildChan, v.now.Add(-40*time.Minute), 0, 25)
	chatter(t, v.rdb, roomChan, v.now.Add(-20*time.Minute), 0, 5)
	if _, err := work(ctx, d, jobs.LimbicAnchoringWorker, &jobs.Empty{}); err != nil {
		t.Fatal(err)
	}
	b, err := plan.ReadBacklog(ctx, v.rdb, jobs.LimbicAnchoringWorker)
	if err != nil {
		t.Fatal(err)
	}
	if b.Pending() != 30 || len(b.Sources) != 2 || !b.Oldest().Equal(guild[0].Time) || b.Units != 1 || b.Planned != 30 || !b.Updated.Equal(v.now) {
		t.Fatalf("backlog %+v", b)
	}
	if _, err := v.units.drain(ctx, d, false); err != nil {
		t.Fatal(err)
	}
	if _, err := work(ctx, d, jobs.LimbicAnchoringWorker, &jobs.Empty{}); err != nil {
		t.Fatal(err)
	}
	b, _ = plan.ReadBacklog(ctx, v.rdb, jobs.LimbicAnchoringWorker)
	if b.Pending() != 0 || b.Units != 0 || b.Planned != 0 {
		t.Fatalf("backlog after the units %+v", b)
	}
}

// Channels where only the bot spoke cost no call: their segments ride in
// units (at most jobs.MaxUnitSegments each) that settle at once, and their
// cursors move past the bot's messages.
func TestChannelsWithOnlyTheBotsMessagesMoveTheirCursorsWithoutACall(t *testing.T) {
	ctx := context.Background()
	v := newKGEnv(t)
	d := v.deps()
	var chans []msgcache.Channel
	for i := range 70 {
		c := msgcache.Channel{Platform: "matrix", ID: fmt.Sprintf("!bot%02d:example.org", i)}
		m := msgcache.Message{Channel: c, MessageID: "b1", UserName: "Stargazer", Kind: msgcache.KindAssistantOut,
			Text: "I am the bot", Time: v.now.Add(-10 * time.Minute)}
		if _, _, err := msgcache.New(v.rdb).Log(ctx, m); err != nil {
			t.Fatal(err)
		}
		chans = append(chans, c)
	}
	res, err := v.pass(ctx, d, jobs.LimbicAnchoringWorker)
	if err != nil || res["units_planned"] != 2 || res["llm_calls"] != 0 || res["cursors_moved"] != 70 {
		t.Fatalf("pass %v, %v", res, err)
	}
	if len(v.llm.Calls()) != 0 {
		t.Fatal("the bot's messages were sent to the LLM")
	}
}
