package wiki_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stargazer/stargazer-jobs/internal/store/wiki"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

var now = time.UnixMilli(1_800_000_000_000)

const day = 24 * time.Hour

func ms(t time.Time) string { return strconv.FormatInt(t.UnixMilli(), 10) }

// page is a well-formed page hash updated age ago.
func page(slug, body string, age time.Duration) map[string]string {
	return map[string]string{
		"slug": slug, "title": slug, "body": body, "author": "u1",
		"created_at": ms(now.Add(-age)), "updated_at": ms(now.Add(-age)),
	}
}

func redirect(slug, to string) map[string]string {
	p := page(slug, "", day)
	p["redirect_to"] = to
	return p
}

func public() map[string]string { return map[string]string{"title": "W", "visibility": "public"} }

// seed writes a wiki the way the bot does: raw hashes, so tests can also
// write what the contract forbids. A nil page map lists the slug without a
// hash; "$wiki" in a body becomes the wiki id.
func seed(t testing.TB, rdb *redis.Client, id string, meta map[string]string, pages map[string]map[string]string) {
	t.Helper()
	ctx := context.Background()
	if err := rdb.SAdd(ctx, wiki.RegistryKey, id).Err(); err != nil {
		t.Fatal(err)
	}
	if meta != nil {
		if err := rdb.HSet(ctx, wiki.MetaKey(id), meta).Err(); err != nil {
			t.Fatal(err)
		}
	}
	for slug, fields := range pages {
		if err := rdb.SAdd(ctx, wiki.PagesKey(id), slug).Err(); err != nil {
			t.Fatal(err)
		}
		if fields != nil {
			if b, ok := fields["body"]; ok {
				fields = maps.Clone(fields)
				fields["body"] = strings.ReplaceAll(b, "$wiki", id)
			}
			if err := rdb.HSet(ctx, wiki.PageKey(id, slug), fields).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
}

type want struct {
	broken    []wiki.BrokenLink
	orphans   []string
	empty     []string
	stale     []string
	malformed []wiki.Problem
}

func TestLintFindsBrokenOrphanEmptyStaleAndMalformedPages(t *testing.T) {
	tests := []struct {
		name  string
		meta  map[string]string
		pages map[string]map[string]string
		opts  wiki.LintOptions
		want  want
	}{
		{
			name: "broken link forms",
			meta: public(),
			pages: map[string]map[string]string{
				"home": page("home", "[[Alpha]] [[Missing Page|gone]] [[ missing   PAGE ]]\n"+
					"[a](alpha) [b](/wiki/$wiki/nowhere) [c](lost) [d](https://x.org/lost) [e](#top) ![f](pic.png) [g](/wiki/other/lost)\n"+
					"`[[In Code]]`\n```\n[[Fenced]]\n```\n[ref]: ref%20target\n", day),
				"alpha": page("alpha", "[[home]]", day),
			},
			want: want{broken: []wiki.BrokenLink{
				{Page: "home", Target: "lost", Text: "c", Kind: wiki.KindMarkdown},
				{Page: "home", Target: "missing-page", Text: "gone", Kind: wiki.KindWiki},
				{Page: "home", Target: "missing-page", Text: "missing   PAGE", Kind: wiki.KindWiki},
				{Page: "home", Target: "nowhere", Text: "b", Kind: wiki.KindMarkdown},
				{Page: "home", Target: "ref-target", Text: "ref", Kind: wiki.KindReference},
			}},
		},
		{
			name: "the same broken link twice is reported once",
			meta: public(),
			pages: map[string]map[string]string{
				"home": page("home", "[[Gone]] and again [[Gone]]", day),
			},
			want: want{broken: []wiki.BrokenLink{{Page: "home", Target: "gone", Text: "Gone", Kind: wiki.KindWiki}}},
		},
		{
			name: "orphans, with the home page exempt",
			meta: public(),
			pages: map[string]map[string]string{
				"home":    page("home", "[[linked]]", day),
				"linked":  page("linked", "[[home]]", day),
				"selfish": page("selfish", "I link only to [[selfish]] and [[from-orphan]]", day),
				// linked from an orphan: still has an incoming link.
				"from-orphan": page("from-orphan", "text", day),
			},
			want: want{orphans: []string{"selfish"}},
		},
		{
			name: "home page named by the meta",
			meta: map[string]string{"visibility": "public", "home": "Start Page"},
			pages: map[string]map[string]string{
				"start-page": page("start-page", "[[other]]", day),
				"other":      page("other", "x", day),
				"home":       page("home", "x", day),
			},
			want: want{orphans: []string{"home"}},
		},
		{
			name: "empty pages: blank, white space, only headings",
			meta: public(),
			pages: map[string]map[string]string{
				"home":      page("home", "[[blank]] [[spaces]] [[headings]] [[hashtag]] [[text]]", day),
				"blank":     page("blank", "", day),
				"spaces":    page("spaces", "  \n\t\n", day),
				"headings":  page("headings", "# Title\n\n## Section\n###\n", day),
				"hashtag":   page("hashtag", "#hashtag", day),
				"text":      page("text", "# Title\nsome words", day),
				"redirects": redirect("redirects", "home"), // a redirect has no body of its own
			},
			want: want{empty: []string{"blank", "headings", "spaces"}},
		},
		{
			name: "stale boundary",
			meta: public(),
			opts: wiki.LintOptions{StaleAfter: 180 * day},
			pages: map[string]map[string]string{
				"home":       page("home", "[[exactly]] [[just-fresh]] [[ancient]] [[future]]", day),
				"exactly":    page("exactly", "x", 180*day),
				"just-fresh": page("just-fresh", "x", 180*day-time.Millisecond),
				"ancient":    page("ancient", "x", 400*day),
				"future":     page("future", "x", -day),
				"old-redirect": func() map[string]string {
					p := redirect("old-redirect", "home")
					p["updated_at"] = ms(now.Add(-999 * day))
					return p
				}(),
			},
			want: want{stale: []string{"ancient", "exactly"}},
		},
		{
			name: "redirects",
			meta: public(),
			pages: map[string]map[string]string{
				"home":     page("home", "[[Old Name]] [[dangling]] [[loop-a]]", day),
				"old-name": redirect("old-name", "New Name"),
				// reached only through the redirect: not an orphan.
				"new-name": page("new-name", "x", day),
				"dangling": redirect("dangling", "nowhere"),
				"loop-a":   redirect("loop-a", "loop-b"),
				"loop-b":   redirect("loop-b", "loop-a"),
			},
			want: want{
				broken: []wiki.BrokenLink{{Page: "dangling", Target: "nowhere", Kind: wiki.KindRedirect}},
				malformed: []wiki.Problem{
					{Page: "loop-a", Problem: "redirect loop"},
					{Page: "loop-b", Problem: "redirect loop"},
				},
			},
		},
		{
			name: "slugs match whatever the case and spacing",
			meta: public(),
			pages: map[string]map[string]string{
				"home":      page("home", "[[STAR maps]] [x](Star%20Maps) [y](<  Star Maps >) [[über uns]]", day),
				"star-maps": page("star-maps", "x", day),
				"über-uns":  page("Über-Uns", "x", day),
			},
		},
		{
			name: "a private wiki that opted in is linted",
			meta: map[string]string{"visibility": "private", "lint_opt_in": "1"},
			pages: map[string]map[string]string{
				"home": page("home", "[[gone]]", day),
			},
			want: want{broken: []wiki.BrokenLink{{Page: "home", Target: "gone", Text: "gone", Kind: wiki.KindWiki}}},
		},
		{
			name: "malformed page data is reported, not fatal",
			meta: public(),
			pages: map[string]map[string]string{
				"home":       page("home", "[[no-body]] [[bad-time]] [[no-hash]] [[Not Normal]] [[mismatch]] [[no-time]]", day),
				"no-body":    func() map[string]string { p := page("no-body", "", day); delete(p, "body"); return p }(),
				"bad-time":   func() map[string]string { p := page("bad-time", "x", day); p["updated_at"] = "yesterday"; return p }(),
				"no-time":    func() map[string]string { p := page("no-time", "x", day); delete(p, "updated_at"); return p }(),
				"no-hash":    nil,
				"Not Normal": page("Not Normal", "x", day),
				"mismatch":   page("something-else", "x", day),
			},
			want: want{
				broken: []wiki.BrokenLink{{Page: "home", Target: "no-hash", Text: "no-hash", Kind: wiki.KindWiki}},
				empty:  []string{"no-body"},
				malformed: []wiki.Problem{
					{Page: "Not Normal", Problem: `slug "Not Normal" is not normalised ("not-normal")`},
					{Page: "bad-time", Problem: `updated_at "yesterday" is not a time in milliseconds`},
					{Page: "mismatch", Problem: `slug field "something-else" differs from the key's slug`},
					{Page: "no-body", Problem: "missing body"},
					{Page: "no-hash", Problem: "listed in the pages set but the page hash is missing"},
					{Page: "no-time", Problem: "missing updated_at"},
				},
			},
		},
		{
			name: "two members with the same normalised slug",
			meta: public(),
			pages: map[string]map[string]string{
				"home":  page("home", "[[a-b]]", day),
				"a-b":   page("a-b", "x", day),
				"A  B ": page("a-b", "y", day),
			},
			want: want{malformed: []wiki.Problem{
				{Page: "A  B ", Problem: `same slug as "a-b" after normalisation; ignored`},
				{Page: "A  B ", Problem: `slug "A  B " is not normalised ("a-b")`},
			}},
		},
	}
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	s := wiki.New(rdb)
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := fmt.Sprintf("w%d", i)
			seed(t, rdb, id, tt.meta, tt.pages)
			opts := tt.opts
			opts.Now = now
			rep, err := s.Lint(ctx, id, opts)
			if err != nil {
				t.Fatalf("Lint: %v", err)
			}
			checkReport(t, rep, tt.want)
			if rep.Counts.Pages != len(tt.pages) {
				t.Errorf("pages = %d, want %d", rep.Counts.Pages, len(tt.pages))
			}
		})
	}
}

func checkReport(t *testing.T, rep *wiki.Report, w want) {
	t.Helper()
	var stale []string
	for _, p := range rep.Stale {
		stale = append(stale, p.Page)
	}
	for _, c := range []struct {
		name      string
		got, want any
		count     int
	}{
		{"broken links", rep.BrokenLinks, orEmpty(w.broken), rep.Counts.BrokenLinks},
		{"orphans", rep.Orphans, orEmpty(w.orphans), rep.Counts.Orphans},
		{"empty", rep.Empty, orEmpty(w.empty), rep.Counts.Empty},
		{"stale", orEmpty(stale), orEmpty(w.stale), rep.Counts.Stale},
		{"malformed", rep.Malformed, orEmpty(w.malformed), rep.Counts.Malformed},
	} {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s = %+v, want %+v", c.name, c.got, c.want)
		}
		if n := reflect.ValueOf(c.want).Len(); c.count != n {
			t.Errorf("%s count = %d, want %d", c.name, c.count, n)
		}
	}
}

func orEmpty[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func TestLintRefusesWikisItMustNotRead(t *testing.T) {
	tests := []struct {
		name string
		meta map[string]string
	}{
		{"private without opt-in", map[string]string{"visibility": "private", "lint_opt_in": "0"}},
		{"unknown visibility", map[string]string{"visibility": "friends-only"}},
		{"no metadata", nil},
	}
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := fmt.Sprintf("p%d", i)
			seed(t, rdb, id, tt.meta, map[string]map[string]string{"home": page("home", "[[gone]]", day)})
			_, err := wiki.New(rdb).Lint(ctx, id, wiki.LintOptions{Now: now})
			if !errors.Is(err, wiki.ErrNotLintable) {
				t.Fatalf("err = %v, want ErrNotLintable", err)
			}
		})
	}
	t.Run("meta that is not a hash", func(t *testing.T) {
		rdb.Set(ctx, wiki.MetaKey("str"), "public", 0)
		if _, err := wiki.New(rdb).Lint(ctx, "str", wiki.LintOptions{Now: now}); !errors.Is(err, wiki.ErrNotLintable) {
			t.Fatalf("err = %v, want ErrNotLintable", err)
		}
	})
}

func TestLintReportsKeysOfTheWrongType(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	seed(t, rdb, "w", public(), map[string]map[string]string{"home": page("home", "[[str]]", day)})
	rdb.SAdd(ctx, wiki.PagesKey("w"), "str")
	rdb.Set(ctx, wiki.PageKey("w", "str"), "not a hash", 0)
	rep, err := wiki.New(rdb).Lint(ctx, "w", wiki.LintOptions{Now: now})
	if err != nil {
		t.Fatal(err)
	}
	checkReport(t, rep, want{
		broken:    []wiki.BrokenLink{{Page: "home", Target: "str", Text: "str", Kind: wiki.KindWiki}},
		malformed: []wiki.Problem{{Page: "str", Problem: "page key is not a hash"}},
	})

	seed(t, rdb, "v", public(), nil)
	rdb.Set(ctx, wiki.PagesKey("v"), "x", 0)
	rep, err = wiki.New(rdb).Lint(ctx, "v", wiki.LintOptions{Now: now})
	if err != nil {
		t.Fatal(err)
	}
	checkReport(t, rep, want{malformed: []wiki.Problem{{Page: "", Problem: wiki.PagesKey("v") + " is not a set"}}})
}

func TestLintBoundsEachListButCountsEverything(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	pages := map[string]map[string]string{"home": page("home", "[[e]] [[d]] [[c]] [[b]] [[a]]", day)}
	seed(t, rdb, "w", public(), pages)
	rep, err := wiki.New(rdb).Lint(ctx, "w", wiki.LintOptions{Now: now, Limit: 2, Batch: 1})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Counts.BrokenLinks != 5 || len(rep.BrokenLinks) != 2 || rep.BrokenLinks[0].Target != "a" || rep.BrokenLinks[1].Target != "b" {
		t.Fatalf("counts %+v, broken %+v: want the first 2 of 5 in order", rep.Counts, rep.BrokenLinks)
	}
}

func TestLintReadsLargeWikisInBatches(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	s := wiki.New(rdb)
	const n = 1234
	if err := s.PutWiki(ctx, "big", wiki.Meta{Visibility: wiki.VisibilityPublic}); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		// Each page links to the next; the last one to a missing page.
		p := wiki.Page{Slug: fmt.Sprintf("p%04d", i), Body: fmt.Sprintf("[[p%04d]]", i+1), UpdatedAt: now}
		if err := s.PutPage(ctx, "big", p); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := s.Lint(ctx, "big", wiki.LintOptions{Now: now, Batch: 100})
	if err != nil {
		t.Fatal(err)
	}
	want := wiki.Counts{Pages: n, BrokenLinks: 1, Orphans: 1}
	if rep.Counts != want || rep.Orphans[0] != "p0000" || rep.BrokenLinks[0].Target != fmt.Sprintf("p%04d", n) {
		t.Fatalf("counts %+v orphans %v broken %+v", rep.Counts, rep.Orphans, rep.BrokenLinks)
	}
}

func TestSaveReportWritesOnlyWhenTheFindingsChange(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	s := wiki.New(rdb)
	seed(t, rdb, "w", public(), map[string]map[string]string{"home": page("home", "[[gone]]", day)})
	lintAndSave := func(at time.Time) bool {
		t.Helper()
		rep, err := s.Lint(ctx, "w", wiki.LintOptions{Now: now})
		if err != nil {
			t.Fatal(err)
		}
		written, err := s.SaveReport(ctx, "w", rep, at)
		if err != nil {
			t.Fatal(err)
		}
		return written
	}
	if !lintAndSave(now) {
		t.Fatal("first report not written")
	}
	first, err := rdb.HGetAll(ctx, wiki.LintKey("w")).Result()
	if err != nil {
		t.Fatal(err)
	}
	if lintAndSave(now.Add(time.Hour)) {
		t.Error("unchanged wiki: report rewritten")
	}
	second, _ := rdb.HGetAll(ctx, wiki.LintKey("w")).Result()
	if !reflect.DeepEqual(first, second) {
		t.Errorf("report changed on an unchanged wiki:\n%v\n%v", first, second)
	}
	if first["generated_at"] != ms(now) || first["broken_links"] != "1" || first["pages"] != "1" {
		t.Errorf("report hash %v", first)
	}

	if err := s.PutPage(ctx, "w", wiki.Page{Slug: "gone", Body: "[[home]]", UpdatedAt: now}); err != nil {
		t.Fatal(err)
	}
	if !lintAndSave(now.Add(2 * time.Hour)) {
		t.Fatal("changed wiki: report not rewritten")
	}
	got, err := s.ReadReport(ctx, "w")
	if err != nil {
		t.Fatal(err)
	}
	if !got.GeneratedAt.Equal(now.Add(2*time.Hour)) || got.Report.Counts != (wiki.Counts{Pages: 2}) {
		t.Fatalf("stored report %+v", got)
	}
}
