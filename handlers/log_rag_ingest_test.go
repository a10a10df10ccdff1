package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/clients/journal"
	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/store/logstore"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/jobs"
)

var ingestNow = time.Date(2026, 5, 4, 12, 0, 0, 0, time.UTC)

func journalCursor(i int) string { return fmt.Sprintf("s=7a2b;i=%x;b=e4;m=%x;t=%x;x=1f", i, i, i) }

// fakeJournal is a journalctl on disk that prints the JSON entries of its
// file, honouring --after-cursor, and records its arguments.
type fakeJournal struct {
	t        *testing.T
	bin, dir string
	n        int
}

func newFakeJournal(t *testing.T) *fakeJournal {
	dir := t.TempDir()
	f := &fakeJournal{t: t, dir: dir, bin: filepath.Join(dir, "journalctl")}
	script := `#!/bin/sh
echo "$@" >> "` + dir + `/args"
after=""
for a in "$@"; do
  case "$a" in --after-cursor=*) after="${a#--after-cursor=}";; esac
done
touch "` + dir + `/entries"
if [ -z "$after" ]; then
  cat "` + dir + `/entries"
else
  awk -v c="\"__CURSOR\":\"$after\"" 'found {print} index($0, c) {found=1}' "` + dir + `/entries"
fi
`
	if err := os.WriteFile(f.bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return f
}

// add appends n entries whose messages are msg(i), i counting on from the
// last entry added.
func (f *fakeJournal) add(n int, msg func(i int) string) {
	file, err := os.OpenFile(filepath.Join(f.dir, "entries"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		f.t.Fatal(err)
	}
	defer file.Close()
	for range n {
		f.n++
		b, _ := json.Marshal(map[string]string{
			"__CURSOR":             journalCursor(f.n),
			"__REALTIME_TIMESTAMP": fmt.Sprint(ingestNow.Add(-time.Hour).UnixMicro() + int64(f.n)*1_000_000),
			"PRIORITY":             "6",
			"_SYSTEMD_UNIT":        "stargazer.service",
			"MESSAGE":              msg(f.n),
		})
		fmt.Fprintf(file, "%s\n", b)
	}
}

func (f *fakeJournal) args() []string {
	b, _ := os.ReadFile(filepath.Join(f.dir, "args"))
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

// fakeEmbeddings is an OpenAI-compatible /embeddings endpoint. okCalls
// calls succeed, then it answers with mode ("429" or "malformed"); a
// negative okCalls means always succeed.
type fakeEmbeddings struct {
	mu      sync.Mutex
	okCalls int
	mode    string
	calls   int
	inputs  [][]string
}

func (f *fakeEmbeddings) set(okCalls int, mode string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.okCalls, f.mode = okCalls, mode
}

func (f *fakeEmbeddings) served() (calls int, inputs [][]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls, append([][]string(nil), f.inputs...)
}

func (f *fakeEmbeddings) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Model string   `json:"model"`
		Input []string `json:"input"`
	}
	if r.URL.Path != "/v1/embeddings" || json.NewDecoder(r.Body).Decode(&req) != nil || req.Model == "" {
		http.Error(w, `{"error":{"message":"bad request"}}`, 400)
		return
	}
	f.mu.Lock()
	f.calls++
	fail := f.okCalls >= 0 && f.calls > f.okCalls
	mode := f.mode
	if !fail {
		f.inputs = append(f.inputs, req.Input)
	}
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	switch {
	case fail && mode == "429":
		w.Header().Set("Retry-After", "7")
		w.WriteHeader(429)
		_, _ = w.Write([]byte(`{"error":{"message":"Rate limit reached for text-embedding-3-small","type":"requests","code":"rate_limit_exceeded"}}`))
		return
	case fail && mode == "malformed":
		_, _ = w.Write([]byte(`{"object":"list","data":[],"model":"text-embedding-3-small"}`))
		return
	}
	var data []any
	for i, in := range req.Input {
		data = append(data, map[string]any{"object": "embedding", "index": i, "embedding": []float32{float32(len(in)), 0.5, -0.25}})
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"object": "list", "model": req.Model, "data": data,
		"usage": map[string]any{"prompt_tokens": 10, "total_tokens": 10}})
}

type ingestEnv struct {
	d     Deps
	rdb   *redis.Client
	j     *fakeJournal
	emb   *fakeEmbeddings
	store *logstore.Store
	host  string
}

func newIngestEnv(t *testing.T) *ingestEnv {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	emb := &fakeEmbeddings{okCalls: -1}
	hs := httptest.NewServer(emb)
	t.Cleanup(hs.Close)
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	j := newFakeJournal(t)
	return &ingestEnv{
		d: Deps{
			Redis: rdb, Logger: slog.New(slog.DiscardHandler), Now: func() time.Time { return ingestNow },
			JournalUnit: "stargazer", JournalCommand: j.bin,
			Embedder: llm.New(llm.Options{BaseURL: hs.URL + "/v1"}),
			Models:   Models{Embeddings: "text-embedding-3-small"},
		},
		rdb: rdb, j: j, emb: emb, store: logstore.New(rdb), host: host,
	}
}

func (e *ingestEnv) run(t *testing.T) (Result, error) {
	t.Helper()
	return work(context.Background(), e.d, jobs.LogRAGIngest, &jobs.Empty{})
}

func (e *ingestEnv) mustRun(t *testing.T) Result {
	t.Helper()
	res, err := e.run(t)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func (e *ingestEnv) cursor(t *testing.T) logstore.Cursor {
	t.Helper()
	c, err := e.store.Cursor(context.Background(), e.host, "stargazer")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// storedMessages counts, per message, the stored chunks holding it, and
// checks every chunk has its embedding.
func (e *ingestEnv) storedMessages(t *testing.T) map[string]int {
	t.Helper()
	ctx := context.Background()
	seen := map[string]int{}
	for _, id := range e.rdb.ZRange(ctx, logstore.IndexKey, 0, -1).Val() {
		c, vec, model, ok, err := e.store.Get(ctx, id)
		if err != nil || !ok {
			t.Fatalf("chunk %s: ok=%v err=%v", id, ok, err)
		}
		if len(vec) != 3 || vec[0] != float32(len(c.Text)) || model != "text-embedding-3-small" {
			t.Errorf("chunk %s embedding %v model %q", id, vec, model)
		}
		if c.Host != e.host || c.Unit != "stargazer" || c.FirstCursor == "" || c.LastCursor == "" {
			t.Errorf("chunk metadata %+v", c)
		}
		for _, line := range strings.Split(strings.TrimSpace(c.Text), "\n") {
			msg := line[strings.Index(line, " info ")+len(" info "):]
			seen[msg]++
		}
	}
	return seen
}

func checkEachOnce(t *testing.T, seen map[string]int, n int, msg func(int) string) {
	t.Helper()
	if len(seen) != n {
		t.Errorf("%d distinct messages stored, want %d", len(seen), n)
	}
	for i := 1; i <= n; i++ {
		if seen[msg(i)] != 1 {
			t.Errorf("message %d stored %d times", i, seen[msg(i)])
		}
	}
}

func TestLogRAGIngestStoresEachChunkOnceAndLaterOnlyNewLines(t *testing.T) {
	e := newIngestEnv(t)
	msg := func(i int) string { return fmt.Sprintf("request %d handled", i) }
	e.j.add(120, msg)

	first := e.mustRun(t)
	if first["lines"] != 120 || first["chunks"] != 3 || first["stored"] != 3 || first["already_stored"] != 0 {
		t.Errorf("first run %v", first)
	}
	if c := e.cursor(t); c.After != journalCursor(120) || c.PendingEnd != "" {
		t.Errorf("cursor after the first run %+v", c)
	}
	checkEachOnce(t, e.storedMessages(t), 120, msg)

	second := e.mustRun(t)
	calls, _ := e.emb.served()
	if second["lines"] != 0 || second["stored"] != 0 || calls != 1 {
		t.Errorf("second run with no new lines: %v, %d embeddings calls", second, calls)
	}

	e.j.add(10, msg)
	third := e.mustRun(t)
	calls, inputs := e.emb.served()
	if third["lines"] != 10 || third["stored"] != 1 || calls != 2 {
		t.Errorf("third run %v, %d calls", third, calls)
	}
	if last := inputs[len(inputs)-1]; len(last) != 1 || strings.Contains(last[0], msg(120)+"\n") || !strings.Contains(last[0], msg(121)) {
		t.Errorf("third run embedded %q, want only the new lines", last)
	}
	checkEachOnce(t, e.storedMessages(t), 130, msg)
	if c := e.cursor(t); c.After != journalCursor(130) {
		t.Errorf("cursor %+v", c)
	}

	args := e.j.args()
	wantSince := fmt.Sprintf("--since=@%d", ingestNow.Add(-6*time.Hour).Unix())
	if !strings.HasPrefix(args[0], "-u stargazer --output=json --no-pager") || !strings.HasSuffix(args[0], wantSince) {
		t.Errorf("first journalctl call %q, want a 6 h lookback %s", args[0], wantSince)
	}
	if !strings.HasSuffix(args[2], "--after-cursor="+journalCursor(120)) {
		t.Errorf("third journalctl call %q, want after the stored cursor", args[2])
	}
}

func TestLogRAGIngestRateLimitedEmbeddingsLeaveTheCursor(t *testing.T) {
	e := newIngestEnv(t)
	msg := func(i int) string { return fmt.Sprintf("event %d", i) }
	e.j.add(30, msg)
	e.emb.set(0, "429")
	_, err := e.run(t)
	var rl *llm.RateLimitError
	if !errors.As(err, &rl) || rl.RetryAfter() != 7*time.Second || errors.Is(err, asynq.SkipRetry) {
		t.Fatalf("err = %v, want a retryable RateLimitError after 7 s", err)
	}
	if c := e.cursor(t); c.After != "" {
		t.Errorf("cursor advanced past unstored lines: %+v", c)
	}
	if n := e.rdb.ZCard(context.Background(), logstore.IndexKey).Val(); n != 0 {
		t.Errorf("%d chunks stored", n)
	}
	e.emb.set(-1, "")
	if res := e.mustRun(t); res["stored"] != 1 {
		t.Errorf("retry %v", res)
	}
	checkEachOnce(t, e.storedMessages(t), 30, msg)
	if c := e.cursor(t); c.After != journalCursor(30) {
		t.Errorf("cursor %+v", c)
	}
}

func TestLogRAGIngestMalformedEmbeddingsStopWithoutAdvancing(t *testing.T) {
	e := newIngestEnv(t)
	msg := func(i int) string { return fmt.Sprintf("event %d", i) }
	e.j.add(5, msg)
	e.mustRun(t)
	e.j.add(5, msg)
	e.emb.set(0, "malformed")
	_, err := e.run(t)
	if !errors.Is(err, llm.ErrMalformed) || !errors.Is(err, asynq.SkipRetry) || !strings.Contains(err.Error(), "embedding log chunks") {
		t.Fatalf("err = %v, want a malformed-answer error that is not retried", err)
	}
	if c := e.cursor(t); c.After != journalCursor(5) {
		t.Errorf("cursor moved: %+v", c)
	}
	checkEachOnce(t, e.storedMessages(t), 5, msg)
}

func TestLogRAGIngestResumesAnInterruptedRunWithoutDuplicates(t *testing.T) {
	e := newIngestEnv(t)
	// ~900-byte messages: two per chunk, so 140 lines make 70 chunks, two
	// embeddings calls (64 + 6).
	msg := func(i int) string { return fmt.Sprintf("%d ", i) + strings.Repeat("z", 900) }
	e.j.add(140, msg)
	e.emb.set(1, "429")
	if _, err := e.run(t); err == nil {
		t.Fatal("second embeddings call was rate limited, yet the run succeeded")
	}
	if c := e.cursor(t); c.After != "" || c.PendingEnd != journalCursor(140) {
		t.Errorf("after the interrupted run: %+v", c)
	}
	if n := e.rdb.ZCard(context.Background(), logstore.IndexKey).Val(); n != 64 {
		t.Errorf("%d chunks stored by the interrupted run, want the first batch of 64", n)
	}
	// New lines arrive before the retry; the retry still finishes exactly
	// the interrupted batch, and the next run takes the new lines.
	e.j.add(5, msg)
	e.emb.set(-1, "")
	retry := e.mustRun(t)
	if retry["chunks"] != 70 || retry["already_stored"] != 64 || retry["stored"] != 6 || retry["lines"] != 140 {
		t.Errorf("retry %v", retry)
	}
	next := e.mustRun(t)
	if next["lines"] != 5 || next["already_stored"] != 0 {
		t.Errorf("next run %v", next)
	}
	checkEachOnce(t, e.storedMessages(t), 145, msg)
	if c := e.cursor(t); c.After != journalCursor(145) || c.PendingEnd != "" {
		t.Errorf("cursor %+v", c)
	}
}

func TestLogRAGIngestFailsClearlyWhereItCannotWork(t *testing.T) {
	tests := []struct {
		name  string
		setup func(e *ingestEnv)
		want  string
		is    error
	}{
		{"no journalctl on this node", func(e *ingestEnv) { e.d.JournalCommand = "journalctl-not-installed" }, "journalctl not found", journal.ErrNoJournal},
		{"journalctl output is not JSON", func(e *ingestEnv) {
			_ = os.WriteFile(filepath.Join(e.j.dir, "entries"), []byte("Mon 12:00 host stargazer[1]: plain text\n"), 0o644)
		}, "none of the 1 lines journalctl printed is a journal entry", nil},
		{"no embeddings endpoint", func(e *ingestEnv) { e.d.Embedder = nil }, "no embeddings endpoint", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newIngestEnv(t)
			tt.setup(e)
			res, err := e.run(t)
			if res != nil || !errors.Is(err, asynq.SkipRetry) || !strings.Contains(err.Error(), tt.want) || (tt.is != nil && !errors.Is(err, tt.is)) {
				t.Fatalf("result %v err %v, want a SkipRetry error saying %q", res, err, tt.want)
			}
			if c := e.cursor(t); c.After != "" {
				t.Errorf("cursor %+v", c)
			}
		})
	}
}

func TestLogRAGIngestPrunesChunksPastRetention(t *testing.T) {
	e := newIngestEnv(t)
	ctx := context.Background()
	old := logstore.Chunks([]logstore.Line{{Cursor: "old", Time: ingestNow.Add(-15 * 24 * time.Hour), Message: "ancient"}}, e.host, "stargazer")
	if err := e.store.Put(ctx, old, [][]float32{{1}}, "m", ingestNow); err != nil {
		t.Fatal(err)
	}
	e.j.add(3, func(i int) string { return fmt.Sprint("fresh ", i) })
	res := e.mustRun(t)
	if res["pruned"] != 1 || res["stored"] != 1 {
		t.Errorf("result %v", res)
	}
	if have, _ := e.store.Exists(ctx, []string{old[0].ID}); have[0] {
		t.Error("a chunk past retention survived")
	}
}
