package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/store/msgcache"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/jobs"
)

func TestChannelHeartbeatChannelWritesANoteOnlyWhenThereIsSomethingNew(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	f := newScriptedLLM(t, counting("note"))
	now := testBase.Add(time.Hour)
	d := summaryDeps(rdb, f, &now)
	ref := &jobs.ChannelRef{Platform: guildChan.Platform, ChannelID: guildChan.ID}
	cache := msgcache.New(rdb)

	res, err := work(ctx, d, jobs.ChannelHeartbeatChannel, ref)
	if err != nil || res["notes_written"] != 0 || len(f.Calls()) != 0 {
		t.Fatalf("empty channel: %v, %v after %d calls", res, err, len(f.Calls()))
	}

	last := seed(t, rdb, guildChan, testBase, "is the deploy stuck?", "looks like it", "I'll restart it")
	if _, err := cache.SetSummary(ctx, guildChan, msgcache.Summary{Text: "The team runs weekly deploys.", LastMessageTS: 1}); err != nil {
		t.Fatal(err)
	}
	res, err = work(ctx, d, jobs.ChannelHeartbeatChannel, ref)
	if err != nil || res["notes_written"] != 1 || res["messages_read"] != 3 {
		t.Fatalf("first heartbeat = %v, %v", res, err)
	}
	calls := f.Calls()
	if len(calls) != 1 || calls[0].Model != "flash-model" {
		t.Fatalf("calls = %+v, want one to the flash model", calls)
	}
	if p := calls[0].Prompt; !strings.Contains(p, "The team runs weekly deploys.") || !strings.Contains(p, "] alice: I'll restart it\n") {
		t.Errorf("prompt lacks the summary or the messages: %q", p)
	}
	want := map[string]string{"note": "note #1", "updated_at": strconv.FormatInt(now.UnixMilli(), 10),
		"last_message_ts": strconv.FormatInt(last.UnixMilli(), 10), "model": "flash-model"}
	if h := hash(t, rdb, "sg:channel:"+guildChan.String()+":heartbeat"); !maps.Equal(h, want) {
		t.Fatalf("heartbeat = %v, want %v", h, want)
	}

	now = now.Add(time.Hour)
	res, err = work(ctx, d, jobs.ChannelHeartbeatChannel, ref)
	if err != nil || res["notes_written"] != 0 || len(f.Calls()) != 1 {
		t.Fatalf("second run = %v, %v after %d calls; want no call", res, err, len(f.Calls()))
	}
	if h := hash(t, rdb, msgcache.HeartbeatKey(guildChan)); !maps.Equal(h, want) {
		t.Fatalf("second run changed the note: %v", h)
	}

	seed(t, rdb, guildChan, now, "restarted, all green")
	if res, err := work(ctx, d, jobs.ChannelHeartbeatChannel, ref); err != nil || res["notes_written"] != 1 {
		t.Fatalf("run after a new message = %v, %v", res, err)
	}
	if h := hash(t, rdb, msgcache.HeartbeatKey(guildChan)); h["note"] != "note #2" {
		t.Fatalf("note after a new message = %v", h)
	}
}

func TestChannelHeartbeatChannelFailuresStoreNothing(t *testing.T) {
	tests := []struct {
		name      string
		reply     scriptedReply
		check     func(error) bool
		skipRetry bool
	}{
		{"a 429 carries its Retry-After",
			scriptedReply{Status: http.StatusTooManyRequests, RetryAfter: "12", Body: `{}`},
			func(err error) bool {
				var rl *llm.RateLimitError
				return errors.As(err, &rl) && rl.RetryAfter() == 12*time.Second
			}, false},
		{"empty content is retried", completion(""), func(err error) bool { return errors.Is(err, llm.ErrEmptyContent) }, false},
		{"a malformed answer is not retried", scriptedReply{Status: 200, Body: `{"choices":`},
			func(err error) bool { return errors.Is(err, llm.ErrMalformed) }, true},
		{"a refused request is not retried", scriptedReply{Status: http.StatusUnauthorized, Body: `{"error":"bad key"}`},
			func(err error) bool { var se *llm.StatusError; return errors.As(err, &se) && se.Code == 401 }, true},
		{"a server error is retried", scriptedReply{Status: http.StatusBadGateway, Body: `upstream down`},
			func(err error) bool { var se *llm.StatusError; return errors.As(err, &se) && se.Code == 502 }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			rdb := redistest.Start(t).Client(t)
			f := newScriptedLLM(t, func(string) scriptedReply { return tt.reply })
			now := testBase.Add(time.Hour)
			seed(t, rdb, roomChan, testBase, "hello")
			_, err := work(ctx, summaryDeps(rdb, f, &now), jobs.ChannelHeartbeatChannel, &jobs.ChannelRef{Platform: roomChan.Platform, ChannelID: roomChan.ID})
			if err == nil || !tt.check(err) || errors.Is(err, asynq.SkipRetry) != tt.skipRetry || !strings.Contains(err.Error(), roomChan.String()) {
				t.Fatalf("error = %v; want SkipRetry=%v and the channel named", err, tt.skipRetry)
			}
			if strings.Contains(err.Error(), "sk-test-secret") {
				t.Fatal("the API key leaked into the error")
			}
			if n, _ := rdb.Exists(ctx, msgcache.HeartbeatKey(roomChan)).Result(); n != 0 {
				t.Fatal("a note was stored after a failed call")
			}
		})
	}
}

func TestChannelHeartbeatFansOutOneChildPerChannelSpreadOverTheInterval(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	opt := asynq.RedisClientOpt{Addr: srv.Addr}
	client := asynq.NewClient(opt)
	defer client.Close()
	insp := asynq.NewInspector(opt)
	defer insp.Close()

	third := msgcache.Channel{Platform: "discord", ID: "1100000000000000003"}
	seed(t, rdb, guildChan, testBase.Add(20*time.Minute), "newest")
	seed(t, rdb, roomChan, testBase.Add(10*time.Minute), "middle")
	seed(t, rdb, third, testBase, "oldest")
	// A member the bot would never write; it must not stop the others.
	rdb.ZAdd(ctx, "sg:channels:active", redis.Z{Score: float64(testBase.UnixMilli()), Member: "irc:#old"})

	// TASK_INTERVALS=channel_heartbeat=3h: the worker passes the effective
	// interval, and the three children are one hour apart.
	interval := 3 * time.Hour
	now := testBase.Add(time.Hour)
	d := Deps{Redis: rdb, Logger: slog.New(slog.DiscardHandler),
		Now: func() time.Time { return now }, Enqueuer: client,
		Intervals: map[string]time.Duration{jobs.ChannelHeartbeat: interval}}
	period := now.UnixMilli() / interval.Milliseconds() * interval.Milliseconds()

	before := time.Now()
	res, err := work(ctx, d, jobs.ChannelHeartbeat, &jobs.Empty{})
	after := time.Now()
	if err != nil || res["enqueued"] != 3 || res["already_enqueued"] != 0 || res["skipped_invalid"] != 1 || res["spread_over"] != "3h0m0s" {
		t.Fatalf("fan-out = %v, %v", res, err)
	}

	order := []msgcache.Channel{guildChan, roomChan, third} // most recently active first
	children := func() map[string]*asynq.TaskInfo {
		t.Helper()
		out := map[string]*asynq.TaskInfo{}
		pending, err := insp.ListPendingTasks(jobs.QueueDefault)
		if err != nil {
			t.Fatal(err)
		}
		scheduled, err := insp.ListScheduledTasks(jobs.QueueDefault)
		if err != nil {
			t.Fatal(err)
		}
		for _, ti := range append(pending, scheduled...) {
			out[ti.ID] = ti
		}
		return out
	}
	got := children()
	if len(got) != 3 {
		t.Fatalf("%d children queued, want 3: %v", len(got), slices.Collect(maps.Keys(got)))
	}
	for i, c := range order {
		ti := got[heartbeatTaskID(c, period)]
		if ti == nil {
			t.Fatalf("no child %s", heartbeatTaskID(c, period))
		}
		var ref jobs.ChannelRef
		if err := json.Unmarshal(ti.Payload, &ref); err != nil || ref.Platform != c.Platform || ref.ChannelID != c.ID {
			t.Errorf("child %d payload %s (%v)", i, ti.Payload, err)
		}
		if ti.Type != jobs.ChannelHeartbeatChannel || ti.Queue != jobs.QueueDefault || ti.MaxRetry != 2 || ti.Timeout != 2*time.Minute {
			t.Errorf("child %d = type %s queue %s max_retry %d timeout %s", i, ti.Type, ti.Queue, ti.MaxRetry, ti.Timeout)
		}
		delay := time.Duration(i) * time.Hour
		if i == 0 {
			if ti.State != asynq.TaskStatePending {
				t.Errorf("the first child is %v, want pending (due now)", ti.State)
			}
			continue
		}
		// asynq keeps schedule times to the second.
		lo, hi := before.Add(delay).Truncate(time.Second), after.Add(delay).Add(time.Second)
		if ti.State != asynq.TaskStateScheduled || ti.NextProcessAt.Before(lo) || ti.NextProcessAt.After(hi) {
			t.Errorf("child %d is %v at %s, want scheduled in [%s, %s]", i, ti.State, ti.NextProcessAt, lo, hi)
		}
	}

	t.Run("a re-run in the same period enqueues nothing", func(t *testing.T) {
		now = now.Add(30 * time.Minute)
		res, err := work(ctx, d, jobs.ChannelHeartbeat, &jobs.Empty{})
		if err != nil || res["enqueued"] != 0 || res["already_enqueued"] != 3 {
			t.Fatalf("re-run = %v, %v", res, err)
		}
		if again := children(); !maps.EqualFunc(again, got, func(a, b *asynq.TaskInfo) bool {
			// A pending task's NextProcessAt is "now" whenever it is read.
			return a.State == b.State && (a.State == asynq.TaskStatePending || a.NextProcessAt.Equal(b.NextProcessAt))
		}) {
			t.Fatalf("re-run changed the queued children: %d now", len(again))
		}
	})

	t.Run("the next period fans out again", func(t *testing.T) {
		now = now.Add(interval)
		res, err := work(ctx, d, jobs.ChannelHeartbeat, &jobs.Empty{})
		if err != nil || res["enqueued"] != 3 || len(children()) != 6 {
			t.Fatalf("next period = %v, %v with %d children", res, err, len(children()))
		}
	})
}

func TestChannelHeartbeatSpreadsOverTheCatalogIntervalByDefault(t *testing.T) {
	if got := heartbeatInterval(nil); got != 24*time.Hour {
		t.Fatalf("interval = %s, want the catalog's 24h", got)
	}
}

// A real asynq server runs the parent and both children it fans out, and
// the bot finds a note for each channel.
func TestChannelHeartbeatEndToEndOnAWorker(t *testing.T) {
	if testing.Short() {
		t.Skip("a whole worker: skipped under -short")
	}
	ctx := context.Background()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	opt := asynq.RedisClientOpt{Addr: srv.Addr}
	client := asynq.NewClient(opt)
	defer client.Close()
	insp := asynq.NewInspector(opt)
	defer insp.Close()
	seed(t, rdb, guildChan, testBase, "first channel")
	seed(t, rdb, roomChan, testBase, "second channel")

	f := newScriptedLLM(t, counting("awareness"))
	now := time.Now()
	d := summaryDeps(rdb, f, &now)
	d.Enqueuer = client
	// Two children over 2 s: the second is scheduled one second out.
	d.Intervals = map[string]time.Duration{jobs.ChannelHeartbeat: 2 * time.Second}
	mux := asynq.NewServeMux()
	for _, r := range Register(mux, d, jobs.Catalog(), jobs.Redis|jobs.LLM) {
		if (r.Task == jobs.ChannelHeartbeat || r.Task == jobs.ChannelHeartbeatChannel) && !r.Registered {
			t.Fatalf("%s not registered: %s", r.Task, r.Reason)
		}
	}
	worker := asynq.NewServer(opt, asynq.Config{
		Concurrency: 2, Queues: map[string]int{jobs.QueueDefault: 1},
		DelayedTaskCheckInterval: 100 * time.Millisecond, LogLevel: asynq.FatalLevel,
	})
	if err := worker.Start(mux); err != nil {
		t.Fatal(err)
	}
	defer worker.Shutdown()

	parent, err := client.EnqueueContext(ctx, asynq.NewTask(jobs.ChannelHeartbeat, nil),
		asynq.Queue(jobs.QueueDefault), asynq.Retention(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		n, err := rdb.Exists(ctx, msgcache.HeartbeatKey(guildChan), msgcache.HeartbeatKey(roomChan)).Result()
		if err != nil {
			t.Fatal(err)
		}
		if n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of 2 notes written before the deadline", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, c := range []msgcache.Channel{guildChan, roomChan} {
		if h := hash(t, rdb, msgcache.HeartbeatKey(c)); !strings.HasPrefix(h["note"], "awareness #") || h["model"] != "flash-model" {
			t.Errorf("note of %s = %v", c, h)
		}
	}
	info, err := insp.GetTaskInfo(jobs.QueueDefault, parent.ID)
	if err != nil {
		t.Fatal(err)
	}
	var res map[string]any
	if err := json.Unmarshal(info.Result, &res); err != nil || res["enqueued"] != 2.0 {
		t.Fatalf("parent result %s (%v)", info.Result, err)
	}
}
