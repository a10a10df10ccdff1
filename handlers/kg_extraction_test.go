package handlers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/kg/extract"
	"github.com/stargazer/stargazer-jobs/internal/kg/extract/extracttest"
	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
	"github.com/stargazer/stargazer-jobs/internal/store/msgcache"
	"github.com/stargazer/stargazer-jobs/internal/testkit/falkortest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/syncbuf"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// kgEnv is a real Redis (the message cache and the ledger), a real
// FalkorDB and the extraction LLM fake.
type kgEnv struct {
	rdb  *redis.Client
	addr string
	g    *graph.Graph
	llm  *extracttest.Server
	now  time.Time
	logs *syncbuf.Buffer
	// units is the queue the planners enqueue their units in.
	units *unitQueue
}

func newKGEnv(t *testing.T) *kgEnv {
	t.Helper()
	g := falkortest.Graph(t, false)
	if err := graph.EnsureSchema(context.Background(), g); err != nil {
		t.Fatal(err)
	}
	srv := redistest.Start(t)
	return &kgEnv{rdb: srv.Client(t), addr: srv.Addr, g: g, llm: extracttest.Start(t), now: testBase.Add(2 * time.Hour), logs: &syncbuf.Buffer{},
		units: newUnitQueue()}
}

func (v *kgEnv) deps() Deps {
	return Deps{
		Redis: v.rdb, Graph: v.g, LLM: v.llm.Client(), Models: Models{Chat: "chat-model", Extraction: "kg-model"},
		Now: func() time.Time { return v.now }, Logger: slog.New(slog.NewTextHandler(v.logs, nil)),
		Enqueuer: v.units, Tasks: v.units,
	}
}

// unitQueue stands in for asynq in handler tests of the extraction
// planners: it keeps the enqueued units by task ID, refusing an ID it
// holds or has run (as asynq does with Retention), and runs them as
// workers would, all at once; a failed unit stays queued (a retry).
type unitQueue struct {
	mu       sync.Mutex
	pending  map[string][]byte
	order    []string
	finished map[string]bool
	archived map[string][]byte
	enqueued int
}

func newUnitQueue() *unitQueue {
	return &unitQueue{pending: map[string][]byte{}, finished: map[string]bool{}, archived: map[string][]byte{}}
}

// GetTaskInfo and DeleteTask make the queue the planners' TaskInspector.
func (q *unitQueue) GetTaskInfo(queue, id string) (*asynq.TaskInfo, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	switch _, pending := q.pending[id]; {
	case pending:
		return &asynq.TaskInfo{ID: id, Queue: queue, State: asynq.TaskStatePending}, nil
	case q.archived[id] != nil:
		return &asynq.TaskInfo{ID: id, Queue: queue, State: asynq.TaskStateArchived}, nil
	case q.finished[id]:
		return &asynq.TaskInfo{ID: id, Queue: queue, State: asynq.TaskStateCompleted}, nil
	}
	return nil, asynq.ErrTaskNotFound
}

func (q *unitQueue) DeleteTask(_, id string) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.pending, id)
	delete(q.archived, id)
	delete(q.finished, id)
	return nil
}

// archive moves a queued unit to the archive (out of retries); lose drops
// it (a planner that died before enqueueing it).
func (q *unitQueue) archive(id string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.archived[id] = q.pending[id]
	delete(q.pending, id)
}

func (q *unitQueue) lose(id string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.pending, id)
}

func (q *unitQueue) EnqueueContext(_ context.Context, t *asynq.Task, opts ...asynq.Option) (*asynq.TaskInfo, error) {
	id := ""
	for _, o := range opts {
		if o.Type() == asynq.TaskIDOpt {
			id = o.Value().(string)
		}
	}
	if t.Type() != jobs.KGExtractUnit || id == "" {
		return nil, fmt.Errorf("unexpected task %s %q", t.Type(), id)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if _, ok := q.pending[id]; ok || q.finished[id] || q.archived[id] != nil {
		return nil, asynq.ErrTaskIDConflict
	}
	q.pending[id] = t.Payload()
	q.order = append(q.order, id)
	q.enqueued++
	return &asynq.TaskInfo{ID: id, Queue: jobs.QueueExtraction}, nil
}

// Pending is the task IDs queued, in enqueue order.
func (q *unitQueue) Pending() []string {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out []string
	for _, id := range q.order {
		if _, ok := q.pending[id]; ok && !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out
}

// run runs the queued unit id once; it stays queued if it fails.
func (q *unitQueue) run(ctx context.Context, d Deps, id string) (Result, error) {
	q.mu.Lock()
	payload, ok := q.pending[id]
	q.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("no unit %s", id)
	}
	spec, _ := jobs.Lookup(jobs.KGExtractUnit)
	p, err := jobs.DecodePayload(spec, payload)
	if err != nil {
		return nil, err
	}
	res, err := work(ctx, d, jobs.KGExtractUnit, p)
	if err == nil {
		q.mu.Lock()
		delete(q.pending, id)
		q.finished[id] = true
		q.mu.Unlock()
	}
	return res, err
}

// drain runs every queued unit once, in enqueue order or all at once
// (parallel), and adds up their results' counts; the error is the first
// failed unit's.
func (q *unitQueue) drain(ctx context.Context, d Deps, parallel bool) (Result, error) {
	ids := q.Pending()
	results := make([]Result, len(ids))
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		if !parallel {
			results[i], errs[i] = q.run(ctx, d, id)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = q.run(ctx, d, id)
		}()
	}
	wg.Wait()
	sum := Result{}
	for _, r := range results {
		for k, v := range r {
			if n, ok := v.(int); ok {
				s, _ := sum[k].(int)
				sum[k] = s + n
			} else if _, ok := sum[k]; !ok {
				sum[k] = v
			}
		}
	}
	for _, err := range errs {
		if err != nil {
			return sum, err
		}
	}
	return sum, nil
}

// pass is what one pass of an extraction task did before the planner:
// the planner runs, then the queued units (this pass's and any earlier
// failed ones, as asynq would retry them). The result is the planner's,
// with the units' counts added (messages_read stays the planner's).
// cursors_moved counts the channels whose cursor moved, as the pass did
// (a unit counts its own moves).
func (v *kgEnv) pass(ctx context.Context, d Deps, task string) (Result, error) {
	pass, _ := passFor(task)
	cursors := func() map[string]msgcache.Position {
		chans, err := msgcache.New(v.rdb).DiscoverChannels(ctx)
		if err != nil {
			panic(err)
		}
		out := map[string]msgcache.Position{}
		for _, c := range chans {
			p, _ := msgcache.New(v.rdb).Cursors(ctx, []string{pass.cursorPrefix + c.String()})
			out[c.String()] = p[0]
		}
		return out
	}
	before := cursors()
	res, err := work(ctx, d, task, &jobs.Empty{})
	if err != nil {
		return res, err
	}
	units, err := v.units.drain(ctx, d, false)
	for k, val := range units {
		if _, ok := res[k]; !ok {
			res[k] = val
		}
	}
	for _, k := range []string{"llm_calls", "messages_extracted"} {
		if _, ok := res[k]; !ok {
			res[k] = 0
		}
	}
	moved := 0
	for c, p := range cursors() {
		if p != before[c] {
			moved++
		}
	}
	res["cursors_moved"] = moved
	return res, err
}

var kgTopics = []string{"Acme", "Paris", "Golang", "FalkorDB", "Redis", "Berlin", "Kubernetes", "Stargazer"}

// chatter caches n messages in c, one every 30 s from at; every fifth is
// the bot's; each mentions two topics.
func chatter(t *testing.T, rdb redis.UniversalClient, c msgcache.Channel, at time.Time, from, n int) []msgcache.Message {
	t.Helper()
	var out []msgcache.Message
	for i := from; i < from+n; i++ {
		m := msgcache.Message{
			Channel: c, MessageID: fmt.Sprintf("m%04d", i), UserID: "u" + strconv.Itoa(i%3),
			UserName: []string{"alice", "bob", "carol"}[i%3],
			Text:     fmt.Sprintf("%s message %d on %s and %s", c.Platform, i, kgTopics[i%len(kgTopics)], kgTopics[(i*3+1)%len(kgTopics)]),
			Time:     at.Add(time.Duration(i) * 30 * time.Second),
		}
		if i%5 == 4 {
			m.Kind, m.UserName = msgcache.KindAssistantOut, "Stargazer"
		}
		key, _, err := msgcache.New(rdb).Log(context.Background(), m)
		if err != nil {
			t.Fatal(err)
		}
		m.Key = key
		out = append(out, m)
	}
	return out
}

// userTexts are the texts of the people's messages: what extraction reads.
func userTexts(msgs []msgcache.Message) []string {
	var out []string
	for _, m := range msgs {
		if m.Kind != msgcache.KindAssistantOut {
			out = append(out, m.Text)
		}
	}
	return out
}

// wantMentions is mention_count per topic after extracting texts once.
func wantMentions(texts []string) map[string]int64 {
	out := map[string]int64{}
	for _, text := range texts {
		seen := map[string]bool{}
		for _, w := range extracttest.Words(text) {
			if !seen[w] {
				seen[w] = true
				out[w]++
			}
		}
	}
	return out
}

func graphMentions(t *testing.T, g *graph.Graph) map[string]int64 {
	t.Helper()
	res, err := g.ROQuery(context.Background(), `MATCH (e:Entity {type: 'topic'}) RETURN e.name, e.mention_count`, nil)
	if errors.Is(err, graph.ErrNoGraph) {
		return map[string]int64{}
	}
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, r := range res.Rows {
		out[r[0].(string)] = r[1].(int64)
	}
	return out
}

func sameMentions(a, b map[string]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func graphSnapshot(t *testing.T, g *graph.Graph) string {
	t.Helper()
	var b strings.Builder
	for _, q := range []string{
		`MATCH (e:Entity) RETURN e.key, e.name, e.mention_count, e.first_seen, e.last_seen, e.last_source ORDER BY e.key`,
		`MATCH (a:Entity)-[r:REL]->(c:Entity) RETURN a.key, r.type, c.key, r.weight, r.last_seen ORDER BY a.key, r.type, c.key`,
	} {
		res, err := g.ROQuery(context.Background(), q, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range res.Rows {
			fmt.Fprintln(&b, r...)
		}
	}
	return b.String()
}

// sentCounts counts how often each message text was sent to the LLM.
func sentCounts(calls []extracttest.Call) map[string]int {
	out := map[string]int{}
	for _, c := range calls {
		for _, m := range c.Messages {
			out[m]++
		}
	}
	return out
}

func cursorOf(t *testing.T, rdb redis.UniversalClient, key string) msgcache.Position {
	t.Helper()
	p, err := msgcache.New(rdb).Cursors(context.Background(), []string{key})
	if err != nil {
		t.Fatal(err)
	}
	return p[0]
}

func posOf(m msgcache.Message) msgcache.Position {
	return msgcache.Position{TS: m.Time.UnixMilli(), Key: m.Key}
}

type extractionTask struct {
	name   string
	cursor string // cursor key prefix
	// since is where messages must start to be read on a first run.
	since time.Duration
}

var extractionTasks = []extractionTask{
	{jobs.AutoKGExtraction, "sgjobs:kgx:cursor:", 24 * time.Hour},
	{jobs.LimbicAnchoringWorker, "sg:ka:cursor:", time.Hour},
}

func TestExtractionTasksExtractNewMessagesOnceAndMoveTheirCursors(t *testing.T) {
	for _, task := range extractionTasks {
		t.Run(task.name, func(t *testing.T) {
			ctx := context.Background()
			v := newKGEnv(t)
			d := v.deps()
			start := v.now.Add(-task.since + time.Minute)
			old := chatter(t, v.rdb, guildChan, v.now.Add(-task.since-time.Hour), 0, 3) // before the lookback
			guild := chatter(t, v.rdb, guildChan, start, 10, 25)
			room := chatter(t, v.rdb, roomChan, start, 0, 15)

			res, err := v.pass(ctx, d, task.name)
			if err != nil {
				t.Fatal(err)
			}
			users := append(userTexts(guild), userTexts(room)...)
			if res["channels"] != 2 || res["channels_with_new"] != 2 || res["messages_read"] != 40 ||
				res["messages_extracted"] != len(users) || res["bot_messages_skipped"] != 40-len(users) ||
				res["llm_calls"] != 2 || res["cursors_moved"] != 2 {
				t.Fatalf("first run %v", res)
			}
			if b, _ := json.Marshal(res); !bytes.Contains(b, []byte(`"tokens_per_message":`)) || bytes.Contains(b, []byte(`"tokens_per_message":"`)) {
				t.Errorf("tokens_per_message must be a JSON number: %s", b)
			}
			sent := sentCounts(v.llm.Calls())
			for _, text := range users {
				if sent[text] != 1 {
					t.Errorf("%q sent %d times", text, sent[text])
				}
			}
			for _, m := range old {
				if sent[m.Text] != 0 {
					t.Errorf("a message before the lookback was read: %q", m.Text)
				}
			}
			for _, c := range v.llm.Calls() {
				if c.Model != "kg-model" || c.ResponseFormat != "json_object" {
					t.Errorf("call with model %q format %q", c.Model, c.ResponseFormat)
				}
			}
			if got, want := graphMentions(t, v.g), wantMentions(users); !sameMentions(got, want) {
				t.Fatalf("mentions %v, want %v", got, want)
			}
			if got := cursorOf(t, v.rdb, task.cursor+guildChan.String()); got != posOf(guild[len(guild)-1]) {
				t.Errorf("guild cursor %v, want the last message", got)
			}
			if got := cursorOf(t, v.rdb, task.cursor+roomChan.String()); got != posOf(room[len(room)-1]) {
				t.Errorf("room cursor %v, want the last message", got)
			}
			if task.name == jobs.AutoKGExtraction && !strings.Contains(v.logs.String(), "KG extraction added ") {
				t.Errorf("no count logged: %s", v.logs)
			}

			t.Run("a second run calls nothing and changes nothing", func(t *testing.T) {
				before, calls := graphSnapshot(t, v.g), len(v.llm.Calls())
				v.now = v.now.Add(time.Minute)
				res, err := v.pass(ctx, d, task.name)
				if err != nil || res["messages_read"] != 0 || res["messages_extracted"] != 0 || res["llm_calls"] != 0 {
					t.Fatalf("second run %v, %v", res, err)
				}
				if len(v.llm.Calls()) != calls || graphSnapshot(t, v.g) != before {
					t.Fatal("the second run called the LLM or changed the graph")
				}
			})

			t.Run("new messages, some of the same millisecond as the cursor, are read once", func(t *testing.T) {
				calls := len(v.llm.Calls())
				last := guild[len(guild)-1]
				// Same millisecond as the cursor: one sorts before it (never
				// read: the cursor is past it), one after.
				same := []msgcache.Message{
					{Channel: guildChan, MessageID: "m0000-early", UserName: "dave", Text: "tie before the cursor on Berlin", Time: last.Time},
					{Channel: guildChan, MessageID: "m9999-late", UserName: "dave", Text: "tie after the cursor on Paris", Time: last.Time},
				}
				for _, m := range same {
					if _, _, err := msgcache.New(v.rdb).Log(ctx, m); err != nil {
						t.Fatal(err)
					}
				}
				more := chatter(t, v.rdb, guildChan, start, 35, 5)
				res, err := v.pass(ctx, d, task.name)
				if err != nil || res["messages_read"] != 6 || res["llm_calls"] != 1 {
					t.Fatalf("third run %v, %v", res, err)
				}
				sent := sentCounts(v.llm.Calls()[calls:])
				if sent[same[1].Text] != 1 || sent[same[0].Text] != 0 {
					t.Errorf("ties: sent %v", sent)
				}
				all := append(users, append(userTexts(more), same[1].Text)...)
				if got, want := graphMentions(t, v.g), wantMentions(all); !sameMentions(got, want) {
					t.Fatalf("mentions %v, want %v", got, want)
				}
			})
		})
	}
}

func TestExtractionCursorsResumeAfterAFailedBatchWithoutRepeatingOrSkipping(t *testing.T) {
	for _, task := range extractionTasks {
		t.Run(task.name, func(t *testing.T) {
			ctx := context.Background()
			v := newKGEnv(t)
			d := v.deps()
			msgs := chatter(t, v.rdb, guildChan, v.now.Add(-40*time.Minute), 0, 75) // 60 people's messages: two batches of 30
			users := userTexts(msgs)
			v.llm.SetHook(func(n int, _ extracttest.Call) *extracttest.Reply {
				if n == 2 {
					return &extracttest.Reply{Status: http.StatusServiceUnavailable, Body: `{"error":{"message":"overloaded"}}`}
				}
				return nil
			})
			_, err := v.pass(ctx, d, task.name)
			var se *llm.StatusError
			if !errors.As(err, &se) || se.Code != http.StatusServiceUnavailable || errors.Is(err, asynq.SkipRetry) {
				t.Fatalf("error %v, want the 503, retried", err)
			}
			// The first batch is written and the cursor is on its last
			// message (the bot's reply right after it counts as settled).
			first := v.llm.Calls()[0].Messages
			if len(first) != 30 {
				t.Fatalf("first batch of %d", len(first))
			}
			if got, want := graphMentions(t, v.g), wantMentions(first); !sameMentions(got, want) {
				t.Fatalf("after the failure: mentions %v, want %v", got, want)
			}
			var lastSettled msgcache.Message
			for _, m := range msgs {
				if m.Text == first[len(first)-1] {
					lastSettled = m
				}
			}
			if got := cursorOf(t, v.rdb, task.cursor+guildChan.String()); got != posOf(lastSettled) && got != posOf(msgs[slicesIndex(msgs, lastSettled)+1]) {
				t.Fatalf("cursor %v, want at the first batch's end %v", got, posOf(lastSettled))
			}

			v.llm.SetHook(nil)
			res, err := v.pass(ctx, d, task.name)
			if err != nil || res["messages_extracted"] != 30 || res["llm_calls"] != 1 {
				t.Fatalf("resumed run %v, %v", res, err)
			}
			sent := sentCounts(v.llm.Calls())
			for _, text := range users {
				// The failed call saw the second batch once; successful calls once more.
				if want := 1 + boolInt(!contains(first, text)); sent[text] != want {
					t.Errorf("%q sent %d times, want %d", text, sent[text], want)
				}
			}
			if got, want := graphMentions(t, v.g), wantMentions(users); !sameMentions(got, want) {
				t.Fatalf("mentions %v, want %v", got, want)
			}
			if got := cursorOf(t, v.rdb, task.cursor+guildChan.String()); got != posOf(msgs[len(msgs)-1]) {
				t.Errorf("cursor %v, want the last message", got)
			}
		})
	}
}

func slicesIndex(msgs []msgcache.Message, m msgcache.Message) int {
	for i := range msgs {
		if msgs[i].Key == m.Key {
			return i
		}
	}
	return -1
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestLimbicAnchoringRacingPassesAnchorEachMessageOnce(t *testing.T) {
	ctx := context.Background()
	v := newKGEnv(t)
	d := v.deps()
	guild := chatter(t, v.rdb, guildChan, v.now.Add(-50*time.Minute), 0, 90)
	room := chatter(t, v.rdb, roomChan, v.now.Add(-50*time.Minute), 0, 40)
	users := append(userTexts(guild), userTexts(room)...)
	v.llm.SetHook(func(int, extracttest.Call) *extracttest.Reply {
		time.Sleep(30 * time.Millisecond) // keep the passes overlapping
		return nil
	})
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Two planners race, then each runs every queued unit at once:
			// the same unit may run twice concurrently (as after a lost
			// lease), which the ledger's claims settle.
			if _, err := work(ctx, d, jobs.LimbicAnchoringWorker, &jobs.Empty{}); err != nil {
				t.Error(err)
			}
			if _, err := v.units.drain(ctx, d, true); err != nil && !errors.Is(err, ErrUnsettled) {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	// A later pass finishes whatever the racers left to each other.
	if _, err := v.pass(ctx, d, jobs.LimbicAnchoringWorker); err != nil {
		t.Fatal(err)
	}
	if p := v.units.Pending(); len(p) != 0 {
		t.Fatalf("units left: %v", p)
	}
	sent := sentCounts(v.llm.Calls())
	for _, text := range users {
		if sent[text] != 1 {
			t.Errorf("%q sent %d times", text, sent[text])
		}
	}
	if got, want := graphMentions(t, v.g), wantMentions(users); !sameMentions(got, want) {
		t.Fatalf("mentions %v, want %v", got, want)
	}
	// Concurrent relationship MERGEs could create an edge twice without
	// the engine's write lock.
	res, err := v.g.ROQuery(ctx, `MATCH (a:Entity)-[r:REL]->(b:Entity) WITH a, b, r.type AS ty, count(*) AS c WHERE c > 1 RETURN count(*) AS n`, nil)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.Int64(0, "n"); n != 0 {
		t.Errorf("%d relationships exist twice", n)
	}
	for c, msgs := range map[msgcache.Channel][]msgcache.Message{guildChan: guild, roomChan: room} {
		if got := cursorOf(t, v.rdb, "sg:ka:cursor:"+c.String()); got != posOf(msgs[len(msgs)-1]) {
			t.Errorf("cursor of %s %v, want the last message", c, got)
		}
	}
}

func TestExtractionTasksWriteNothingOfAnUnusableAnswer(t *testing.T) {
	tests := []struct {
		name      string
		reply     extracttest.Reply
		is        error
		skipRetry bool
	}{
		{"an answer that is not the schema is retried", extracttest.Completion("", "Here you go: Acme, Paris"), extract.ErrBadAnswer, false},
		{"empty content is retried", extracttest.Completion("", ""), llm.ErrEmptyContent, false},
		{"a reply that is not chat/completions is archived", extracttest.Reply{Status: 200, Body: "<html>gateway</html>"}, llm.ErrMalformed, true},
		{"a refused request is archived", extracttest.Reply{Status: 400, Body: `{"error":{"message":"unknown model"}}`}, nil, true},
	}
	for _, task := range extractionTasks {
		for _, tt := range tests {
			t.Run(task.name+"/"+tt.name, func(t *testing.T) {
				ctx := context.Background()
				v := newKGEnv(t)
				chatter(t, v.rdb, guildChan, v.now.Add(-10*time.Minute), 0, 5)
				v.llm.SetHook(func(int, extracttest.Call) *extracttest.Reply { return &tt.reply })
				_, err := v.pass(ctx, v.deps(), task.name)
				if err == nil || (tt.is != nil && !errors.Is(err, tt.is)) || errors.Is(err, asynq.SkipRetry) != tt.skipRetry {
					t.Fatalf("error %v; want %v, SkipRetry=%v", err, tt.is, tt.skipRetry)
				}
				if n := len(graphMentions(t, v.g)); n != 0 {
					t.Fatalf("%d entities written from a bad answer", n)
				}
				if got := cursorOf(t, v.rdb, task.cursor+guildChan.String()); got != (msgcache.Position{}) {
					t.Fatalf("cursor moved to %v", got)
				}
			})
		}
	}
}

func TestExtractionTasksRateLimitCarriesRetryAfter(t *testing.T) {
	for _, task := range extractionTasks {
		t.Run(task.name, func(t *testing.T) {
			ctx := context.Background()
			v := newKGEnv(t)
			chatter(t, v.rdb, guildChan, v.now.Add(-10*time.Minute), 0, 5)
			v.llm.SetHook(func(int, extracttest.Call) *extracttest.Reply {
				return &extracttest.Reply{Status: http.StatusTooManyRequests, RetryAfter: "30", Body: `{"error":{"message":"slow down"}}`}
			})
			_, err := v.pass(ctx, v.deps(), task.name)
			var rl *llm.RateLimitError
			if !errors.As(err, &rl) || rl.RetryAfter() != 30*time.Second || errors.Is(err, asynq.SkipRetry) {
				t.Fatalf("error %v, want a retried RateLimitError with Retry-After 30s", err)
			}
			if strings.Contains(err.Error(), "sk-test-secret") || strings.Contains(v.logs.String(), "sk-test-secret") {
				t.Fatal("the API key leaked")
			}
			if n := len(graphMentions(t, v.g)); n != 0 || cursorOf(t, v.rdb, task.cursor+guildChan.String()) != (msgcache.Position{}) {
				t.Fatal("something was written after a 429")
			}
		})
	}
}

// A real asynq worker runs limbic_anchoring_worker (as a singleton, with
// its lease), which plans a unit; the worker runs the unit from the
// extraction queue and both store their results.
func TestLimbicAnchoringEndToEndOnAWorker(t *testing.T) {
	if testing.Short() {
		t.Skip("a whole worker: skipped under -short")
	}
	ctx := context.Background()
	v := newKGEnv(t)
	v.now = time.Now()
	msgs := chatter(t, v.rdb, guildChan, v.now.Add(-20*time.Minute), 0, 10)
	opt := asynq.RedisClientOpt{Addr: v.addr}
	client := asynq.NewClient(opt)
	defer client.Close()
	insp := asynq.NewInspector(opt)
	defer insp.Close()
	d := v.deps()
	d.Enqueuer, d.Tasks = client, insp
	mux := asynq.NewServeMux()
	for _, r := range Register(mux, d, jobs.Catalog(), jobs.Redis|jobs.KG|jobs.LLM) {
		if (r.Task == jobs.LimbicAnchoringWorker || r.Task == jobs.KGExtractUnit) && !r.Registered {
			t.Fatalf("%s not registered: %s", r.Task, r.Reason)
		}
	}
	worker := asynq.NewServer(opt, asynq.Config{Concurrency: 2, Queues: map[string]int{jobs.QueueDefault: 1, jobs.QueueExtraction: 1}, LogLevel: asynq.FatalLevel})
	if err := worker.Start(mux); err != nil {
		t.Fatal(err)
	}
	defer worker.Shutdown()
	info, err := client.EnqueueContext(ctx, asynq.NewTask(jobs.LimbicAnchoringWorker, nil), asynq.Queue(jobs.QueueDefault), asynq.Retention(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	completed := func(queue, id string) map[string]any {
		deadline := time.Now().Add(30 * time.Second)
		for {
			ti, err := insp.GetTaskInfo(queue, id)
			if err == nil && ti.State == asynq.TaskStateCompleted {
				var res map[string]any
				if err := json.Unmarshal(ti.Result, &res); err != nil {
					t.Fatal(err)
				}
				return res
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not completed: %+v, %v", id, ti, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if res := completed(jobs.QueueDefault, info.ID); res["messages_read"] != 10.0 || res["units_enqueued"] != 1.0 {
		t.Fatalf("planner result %v", res)
	}
	units, err := insp.ListCompletedTasks(jobs.QueueExtraction)
	deadline := time.Now().Add(30 * time.Second)
	for len(units) == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		units, err = insp.ListCompletedTasks(jobs.QueueExtraction)
	}
	if err != nil || len(units) != 1 {
		t.Fatalf("completed units %v, %v", units, err)
	}
	if res := completed(jobs.QueueExtraction, units[0].ID); res["messages_extracted"] != 8.0 || res["tokens_per_message"].(float64) <= 0 {
		t.Fatalf("unit result %v", res)
	}
	if got := cursorOf(t, v.rdb, "sg:ka:cursor:"+guildChan.String()); got != posOf(msgs[len(msgs)-1]) {
		t.Errorf("cursor %v, want the last message", got)
	}
}
