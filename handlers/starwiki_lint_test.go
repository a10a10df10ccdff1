package handlers_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"maps"
	"reflect"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/handlers"
	"github.com/stargazer/stargazer-jobs/internal/store/wiki"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// seedWikis writes four wikis: a public one, a private one that opted in
// (with a malformed page), a private one that did not (with a report left
// from when it was public) and a registered one without metadata.
func seedWikis(t *testing.T, rdb *redis.Client, now time.Time) {
	t.Helper()
	ctx := context.Background()
	s := wiki.New(rdb)
	day := 24 * time.Hour
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.PutWiki(ctx, "pub", wiki.Meta{Title: "Public", Visibility: wiki.VisibilityPublic, Owner: "u1", UpdatedAt: now}))
	for _, p := range []wiki.Page{
		{Slug: "Home", Body: "Start at [[Guide]], not [[Nowhere]]; see [old](Old).", UpdatedAt: now.Add(-day)},
		{Slug: "Guide", Body: "# Guide\n\n## To do\n", UpdatedAt: now.Add(-day)},
		{Slug: "Old", Body: "written long ago", UpdatedAt: now.Add(-200 * day)},
		{Slug: "Lonely", Body: "nobody links here", UpdatedAt: now.Add(-day)},
	} {
		must(s.PutPage(ctx, "pub", p))
	}

	must(s.PutWiki(ctx, "optin", wiki.Meta{Title: "Team", Visibility: wiki.VisibilityPrivate, LintOptIn: true}))
	must(s.PutPage(ctx, "optin", wiki.Page{Slug: "home", Body: "[[Notes]] [[Missing]]", UpdatedAt: now}))
	must(rdb.HSet(ctx, wiki.PageKey("optin", "notes"), "slug", "notes", "updated_at", "soon").Err())
	must(rdb.SAdd(ctx, wiki.PagesKey("optin"), "notes").Err())

	must(s.PutWiki(ctx, "secret", wiki.Meta{Title: "Diary", Visibility: wiki.VisibilityPrivate}))
	must(s.PutPage(ctx, "secret", wiki.Page{Slug: "home", Body: "[[dear diary]]", UpdatedAt: now}))
	must(rdb.HSet(ctx, wiki.LintKey("secret"), "report", `{"broken_links":[{"page":"home","target":"dear-diary"}]}`).Err())

	must(rdb.SAdd(ctx, wiki.RegistryKey, "nometa").Err())
}

// linterClient is a Redis user that may read only the registry, every
// wiki's meta and lint report, and the pages of the two lintable wikis: a
// lint that touched the private wiki's pages would fail with NOPERM.
func linterClient(t *testing.T, srv *redistest.Server, admin *redis.Client) *redis.Client {
	t.Helper()
	err := admin.Do(context.Background(), "ACL", "SETUSER", "linter", "on", ">pw", "resetkeys",
		"~"+wiki.RegistryKey, "~sg:wiki:*:meta", "~sg:wiki:*:lint", "~sg:wiki:pub:*", "~sg:wiki:optin:*", "+@all").Err()
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(&redis.Options{Addr: srv.Addr, Username: "linter", Password: "pw"})
	t.Cleanup(func() { c.Close() })
	if err := c.SMembers(context.Background(), wiki.PagesKey("secret")).Err(); !redis.HasErrorPrefix(err, "NOPERM") {
		t.Fatalf("the linter user can read the private wiki's pages (err %v): the test would prove nothing", err)
	}
	return c
}

func TestStarwikiLintReportsPublicAndOptInWikisAndNeverReadsPrivateOnes(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	admin := srv.Client(t)
	start := time.UnixMilli(1_800_000_000_000)
	seedWikis(t, admin, start)
	var clock atomic.Int64 // the worker goroutine reads it
	clock.Store(start.UnixMilli())

	conn := asynq.RedisClientOpt{Addr: srv.Addr}
	mux := asynq.NewServeMux()
	deps := handlers.Deps{
		Redis: linterClient(t, srv, admin), Now: func() time.Time { return time.UnixMilli(clock.Load()) },
		Logger:             slog.New(slog.NewTextHandler(io.Discard, nil)),
		StarwikiStaleAfter: 180 * 24 * time.Hour,
	}
	for _, r := range handlers.Register(mux, deps, jobs.Catalog(), jobs.Redis) {
		if r.Task == jobs.StarwikiLint && !r.Registered {
			t.Fatalf("starwiki_lint not registered: %s", r.Reason)
		}
	}
	asrv := asynq.NewServer(conn, asynq.Config{Concurrency: 1, Queues: jobs.Queues(), LogLevel: asynq.FatalLevel})
	if err := asrv.Start(mux); err != nil {
		t.Fatal(err)
	}
	defer asrv.Shutdown()
	client := asynq.NewClient(conn)
	defer client.Close()
	insp := asynq.NewInspector(conn)
	defer insp.Close()

	run := func() map[string]float64 {
		t.Helper()
		info, err := client.Enqueue(asynq.NewTask(jobs.StarwikiLint, []byte(`{}`)),
			asynq.Queue(jobs.QueueMaintenance), asynq.Retention(time.Hour), asynq.MaxRetry(0))
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(20 * time.Second)
		for {
			got, err := insp.GetTaskInfo(jobs.QueueMaintenance, info.ID)
			if err == nil && got.State == asynq.TaskStateCompleted {
				var res map[string]float64
				if err := json.Unmarshal(got.Result, &res); err != nil {
					t.Fatalf("result %q: %v", got.Result, err)
				}
				return res
			}
			if err == nil && got.State == asynq.TaskStateArchived {
				t.Fatalf("run failed: %s", got.LastErr)
			}
			if time.Now().After(deadline) {
				t.Fatalf("run did not complete: %+v %v", got, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	reports := func() map[string]map[string]string {
		out := map[string]map[string]string{}
		for _, id := range []string{"pub", "optin", "secret", "nometa"} {
			h, err := admin.HGetAll(ctx, wiki.LintKey(id)).Result()
			if err != nil {
				t.Fatal(err)
			}
			if len(h) > 0 {
				out[id] = h
			}
		}
		return out
	}

	want := map[string]float64{
		"wikis": 2, "pages": 6, "broken_links": 2, "orphans": 1, "empty": 2, "stale": 1,
		"malformed": 2, "skipped": 2, "reports_written": 2, "reports_removed": 1,
	}
	if got := run(); !reflect.DeepEqual(got, want) {
		t.Fatalf("first run = %v, want %v", got, want)
	}
	first := reports()
	if _, ok := first["secret"]; ok {
		t.Error("the private wiki's old report was kept")
	}
	if len(first) != 2 {
		t.Fatalf("reports of %v, want pub and optin", slices.Collect(maps.Keys(first)))
	}
	st, err := wiki.New(admin).ReadReport(ctx, "pub")
	if err != nil {
		t.Fatal(err)
	}
	pub := st.Report
	if pub.Counts != (wiki.Counts{Pages: 4, BrokenLinks: 1, Orphans: 1, Empty: 1, Stale: 1}) ||
		pub.BrokenLinks[0] != (wiki.BrokenLink{Page: "home", Target: "nowhere", Text: "Nowhere", Kind: wiki.KindWiki}) ||
		pub.Orphans[0] != "lonely" || pub.Empty[0] != "guide" || pub.Stale[0].Page != "old" {
		t.Errorf("pub report %+v", pub)
	}
	if first["pub"]["generated_at"] != "1800000000000" || first["pub"]["broken_links"] != "1" {
		t.Errorf("pub report hash %v", first["pub"])
	}
	opt, err := wiki.New(admin).ReadReport(ctx, "optin")
	if err != nil {
		t.Fatal(err)
	}
	if m := opt.Report.Malformed; len(m) != 2 || m[0] != (wiki.Problem{Page: "notes", Problem: "missing body"}) {
		t.Errorf("optin malformed %+v", m)
	}

	// Run twice equals run once: same counts, nothing rewritten.
	clock.Add(time.Hour.Milliseconds())
	want["reports_written"], want["reports_removed"] = 0, 0
	if got := run(); !reflect.DeepEqual(got, want) {
		t.Fatalf("second run = %v, want %v", got, want)
	}
	if second := reports(); !reflect.DeepEqual(first, second) {
		t.Errorf("reports changed on unchanged wikis:\n%v\n%v", first, second)
	}
	for _, k := range []string{wiki.PagesKey("secret"), wiki.PageKey("secret", "home"), wiki.MetaKey("secret")} {
		if n, _ := admin.Exists(ctx, k).Result(); n != 1 {
			t.Errorf("%s was changed", k)
		}
	}
}
