// Package kgload runs knowledge extraction on real worker processes for the
// acceptance tests (internal/e2e) and the scale-out benchmark (bench/): a
// backlog of chat messages cached in the bot's Redis, the extraction LLM
// fake with a latency, worker processes (the testworker binary) configured
// for extraction, and a snapshot of the graph to compare runs by.
package kgload

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/kg/extract/extracttest"
	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
	"github.com/stargazer/stargazer-jobs/internal/queue/enqueue"
	"github.com/stargazer/stargazer-jobs/internal/store/msgcache"
	"github.com/stargazer/stargazer-jobs/internal/testkit/workerproc"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// CursorPrefix is limbic_anchoring_worker's cursor hash prefix, which the
// runs here drive.
const CursorPrefix = "sg:ka:cursor:"

// Seed caches perChannel messages in each of channels channels, numbered
// from from: short chat messages (about 60 characters) from 200 authors,
// each naming two of 2,000 capitalised topics, like the engine benchmark's
// corpus. Channels are interleaved in time, 100 ms apart, from base. It
// returns each channel's messages, in order.
func Seed(tb testing.TB, rdb redis.UniversalClient, channels, from, perChannel int, base time.Time) map[msgcache.Channel][]msgcache.Message {
	tb.Helper()
	r := rand.New(rand.NewPCG(1, uint64(2+from)))
	topic := func() string { return fmt.Sprintf("Topic%04d", r.IntN(2000)) }
	out := map[msgcache.Channel][]msgcache.Message{}
	cache := msgcache.New(rdb)
	ctx := context.Background()
	for i := from; i < from+perChannel; i++ {
		for c := range channels {
			ch := msgcache.Channel{Platform: "discord", ID: strconv.Itoa(1000 + c)}
			m := msgcache.Message{
				Channel: ch, MessageID: fmt.Sprintf("m%06d", i), UserID: fmt.Sprintf("u%03d", r.IntN(200)),
				Text: fmt.Sprintf("has anyone tried %s with %s yet? works for me", topic(), topic()),
				Time: base.Add(time.Duration(i*channels+c) * 100 * time.Millisecond),
			}
			m.UserName = "user" + m.UserID[1:]
			key, _, err := cache.Log(ctx, m)
			if err != nil {
				tb.Fatal(err)
			}
			m.Key = key
			out[ch] = append(out[ch], m)
		}
	}
	return out
}

// Count is the messages of a seeded backlog.
func Count(msgs map[msgcache.Channel][]msgcache.Message) int {
	n := 0
	for _, m := range msgs {
		n += len(m)
	}
	return n
}

// Settled reports how many channels have their cursor on their last
// message.
func Settled(ctx context.Context, rdb redis.UniversalClient, msgs map[msgcache.Channel][]msgcache.Message) (int, error) {
	var keys []string
	var last []msgcache.Position
	for c, ms := range msgs {
		keys = append(keys, CursorPrefix+c.String())
		m := ms[len(ms)-1]
		last = append(last, msgcache.Position{TS: m.Time.UnixMilli(), Key: m.Key})
	}
	cur, err := msgcache.New(rdb).Cursors(ctx, keys)
	if err != nil {
		return 0, err
	}
	n := 0
	for i := range cur {
		if cur[i] == last[i] {
			n++
		}
	}
	return n, nil
}

// WaitSettled waits until every channel's cursor is on its last message,
// or timeout.
func WaitSettled(ctx context.Context, rdb redis.UniversalClient, msgs map[msgcache.Channel][]msgcache.Message, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		n, err := Settled(ctx, rdb, msgs)
		if err == nil && n == len(msgs) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d channels settled after %s (%v)", n, len(msgs), timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Plan enqueues one run of limbic_anchoring_worker's planner by hand; a run
// already queued or running is not an error.
func Plan(ctx context.Context, rdb redis.UniversalClient) error {
	p, err := enqueue.Prepare(jobs.Catalog(), enqueue.Request{Task: jobs.LimbicAnchoringWorker}, time.Now())
	if err != nil {
		return err
	}
	c := asynqClient(rdb)
	defer c.Close()
	if _, err := enqueue.Submit(ctx, c, p); err != nil && !errors.Is(err, enqueue.ErrSingletonBusy) {
		return err
	}
	return nil
}

// Snapshot is the graph as text: every entity and relationship with the
// properties extraction sets, weights rounded (float sums depend on the
// order batches land in). last_source is left out: on equal times it names
// whichever batch landed last.
func Snapshot(tb testing.TB, g *graph.Graph) string {
	tb.Helper()
	s, err := SnapshotOf(context.Background(), g,
		`MATCH (e:Entity) RETURN e.key, e.name, e.type, e.mention_count, e.first_seen, e.last_seen ORDER BY e.key`,
		`MATCH (a:Entity)-[r:REL]->(c:Entity) RETURN a.key, r.type, c.key, r.weight, r.last_seen ORDER BY a.key, r.type, c.key`)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// SnapshotOf is what the queries return, a line a row, numbers rounded to
// six places so that sums taken in another order compare equal: Snapshot
// with the caller's choice of properties, outside a test (the chaos
// command leaves out what depends on how the messages were batched).
func SnapshotOf(ctx context.Context, g *graph.Graph, queries ...string) (string, error) {
	var b strings.Builder
	for _, q := range queries {
		res, err := g.ROQuery(ctx, q, nil)
		if err != nil {
			return "", err
		}
		for _, r := range res.Rows {
			for i, v := range r {
				if f, ok := v.(float64); ok {
					r[i] = math.Round(f*1e6) / 1e6
				}
			}
			fmt.Fprintln(&b, r...)
		}
	}
	return b.String(), nil
}

// LLM is the extraction fake (extracttest) answering after a latency, with
// an optional hook that may replace an answer (a 429 storm).
type LLM struct {
	*extracttest.Server
	latency  time.Duration
	inFlight atomic.Int64
	peak     atomic.Int64

	mu    sync.Mutex
	hook  func(n int, at time.Time, c extracttest.Call) *extracttest.Reply
	times []time.Time // arrival of each call
}

// StartLLM starts the fake with latency per call.
func StartLLM(tb testing.TB, latency time.Duration) *LLM {
	l := &LLM{Server: extracttest.Start(tb), latency: latency}
	l.Server.SetHook(func(n int, c extracttest.Call) *extracttest.Reply {
		now := time.Now()
		l.mu.Lock()
		l.times = append(l.times, now)
		hook := l.hook
		l.mu.Unlock()
		if hook != nil {
			if r := hook(n, now, c); r != nil {
				return r
			}
		}
		cur := l.inFlight.Add(1)
		defer l.inFlight.Add(-1)
		for p := l.peak.Load(); cur > p && !l.peak.CompareAndSwap(p, cur); p = l.peak.Load() {
		}
		time.Sleep(l.latency)
		return nil
	})
	return l
}

// SetHook installs h, which sees each call (its number, arrival and
// content) before the latency and may answer it instead of the extraction
// answer, or hold it up.
func (l *LLM) SetHook(h func(n int, at time.Time, c extracttest.Call) *extracttest.Reply) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.hook = h
}

// InFlight is the calls being answered now; Peak the most at once.
func (l *LLM) InFlight() int64 { return l.inFlight.Load() }
func (l *LLM) Peak() int64     { return l.peak.Load() }

// Arrivals are the calls' arrival times.
func (l *LLM) Arrivals() []time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]time.Time(nil), l.times...)
}

// Sent counts how often each message text reached the model in an answered
// call (a 429'd call answered nothing).
func Sent(calls []extracttest.Call) map[string]int {
	out := map[string]int{}
	for _, c := range calls {
		for _, m := range c.Messages {
			out[m]++
		}
	}
	return out
}

// BuildWorker builds the testworker binary (the real worker plus recording
// tasks) into a temporary directory.
func BuildWorker(tb testing.TB) string {
	tb.Helper()
	bin := filepath.Join(tb.TempDir(), "testworker")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/stargazer/stargazer-jobs/internal/e2e/testworker").CombinedOutput()
	if err != nil {
		tb.Fatalf("building testworker: %v\n%s", err, out)
	}
	return bin
}

// Env is a worker's environment for extraction runs: the planner and every
// other scheduled task off (the test enqueues planner runs by hand), the
// graph, the fake LLM, and extra on top.
func Env(redisURL, falkorURL, llmURL string, extra map[string]string) map[string]string {
	var off []string
	for _, s := range jobs.Catalog() {
		if s.Kind == jobs.Periodic || s.Kind == jobs.Supervised {
			off = append(off, s.Name+"=off")
		}
	}
	off = append(off, "e2e_plain=off", "e2e_single=off")
	env := map[string]string{
		"REDIS_URL": redisURL, "FALKORDB_URL": falkorURL, "FALKORDB_GRAPH": "kg", "LLM_BASE_URL": llmURL,
		"KA_ENABLED": "true", "TASK_INTERVALS": strings.Join(off, ","), "LOG_LEVEL": "warn",
		"SHUTDOWN_TIMEOUT": "5s", "WORKER_CONCURRENCY": "10", "QUEUE_METRICS": "false",
		// A Go-only deployment: the seeded messages are history the
		// planner must read (after a cut-over it would start at its
		// hand-over point, after them).
		"LEGACY_COEXISTENCE": "false",
	}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

// Worker is a worker process.
type Worker = workerproc.Proc

// StartWorker starts bin with env and waits until it serves /healthz.
func StartWorker(tb testing.TB, bin string, env map[string]string) *Worker {
	tb.Helper()
	return workerproc.Start(tb, bin, env, workerproc.Serves("/healthz"), 30*time.Second)
}

// Items is a task's stargazer_task_items_total for item, summed over
// workers.
func Items(ws []*Worker, task, item string) float64 {
	sum := 0.0
	for _, w := range ws {
		if v := w.Metric(fmt.Sprintf(`stargazer_task_items_total{item=%q,task=%q}`, item, task)); v > 0 {
			sum += v
		}
	}
	return sum
}

// Load is the machine's load average over the last minute.
func Load() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

func asynqClient(rdb redis.UniversalClient) *asynq.Client { return asynq.NewClientFromRedisClient(rdb) }

// BulkStats are what SeedBulk wrote.
type BulkStats struct {
	Channels, Messages, Bot int
	// First and Last are the oldest and newest message times.
	First, Last time.Time
	Took        time.Duration
}

// SeedBulk caches channels × perChannel messages in the bot's layout (the
// message hash, the channel's message set, sg:channels:active and the
// channel's meta hash), pipelined 1,000 messages a round trip, for the
// benchmarks at scale: Seed's corpus (about 60 characters, 200 authors, two
// of 2,000 topics), one message in ten the bot's own reply, Discord
// snowflake ids, and the channels interleaved in time, span/(channels ×
// perChannel) apart, ending at end. Unlike Seed it keeps nothing in memory.
func SeedBulk(ctx context.Context, rdb redis.UniversalClient, channels, perChannel int, end time.Time, span time.Duration) (BulkStats, error) {
	st := BulkStats{Channels: channels, Messages: channels * perChannel}
	if st.Messages == 0 {
		return st, nil
	}
	start := time.Now()
	r := rand.New(rand.NewPCG(1, 2))
	step := span / time.Duration(st.Messages)
	st.First = end.Add(-step * time.Duration(st.Messages-1))
	st.Last = end
	chans := make([]msgcache.Channel, channels)
	for c := range chans {
		chans[c] = msgcache.Channel{Platform: "discord", ID: strconv.FormatInt(1_100_000_000_000_000_000+int64(c)*7_919, 10)}
		if err := rdb.HSet(ctx, msgcache.MetaKey(chans[c]), "platform", "discord", "channel_id", chans[c].ID,
			"channel_name", fmt.Sprintf("channel-%d", c), "guild_id", "900000000000000001", "guild_name", "Stargazers",
			"is_dm", "0", "updated_at", strconv.FormatInt(end.UnixMilli(), 10)).Err(); err != nil {
			return st, err
		}
	}
	pipe := rdb.Pipeline()
	n := 0
	for i := range perChannel {
		for c, ch := range chans {
			seq := i*channels + c
			t := st.First.Add(step * time.Duration(seq)).UnixMilli()
			id := strconv.FormatInt(1_200_000_000_000_000_000+int64(seq)*4_096, 10)
			user, kind := fmt.Sprintf("%d", 300_000_000_000_000_000+r.IntN(200)), msgcache.KindUserIn
			text := fmt.Sprintf("has anyone tried Topic%04d with Topic%04d yet? works for me", r.IntN(2000), r.IntN(2000))
			if seq%10 == 9 {
				user, kind, st.Bot = "100000000000000000", msgcache.KindAssistantOut, st.Bot+1
				text = "Stargazer here: " + text
			}
			key := msgcache.MessageKey(ch, id)
			ts := strconv.FormatInt(t, 10)
			pipe.HSet(ctx, key, "platform", ch.Platform, "channel_id", ch.ID, "message_id", id,
				"user_id", user, "user_name", "user"+user[len(user)-3:], "text", text, "ts", ts,
				"reply_to_id", "", "kind", kind)
			pipe.ZAdd(ctx, msgcache.MessagesKey(ch), redis.Z{Score: float64(t), Member: key})
			pipe.ZAddGT(ctx, msgcache.ActiveKey, redis.Z{Score: float64(t), Member: ch.String()})
			if n++; n%1000 == 0 {
				if _, err := pipe.Exec(ctx); err != nil {
					return st, err
				}
			}
		}
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return st, err
	}
	st.Took = time.Since(start)
	return st, nil
}
