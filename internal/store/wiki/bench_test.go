package wiki_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/store/wiki"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
)

// BenchmarkLint10kPages lints a generated 10,000-page wiki of about 1 KiB
// pages with five links each (one in fifty broken).
func BenchmarkLint10kPages(b *testing.B) {
	ctx := context.Background()
	rdb := redistest.Start(b).Client(b)
	const n = 10_000
	seed(b, rdb, "big", public(), nil)
	pipe := rdb.Pipeline()
	filler := strings.Repeat("Lorem ipsum dolor sit amet, consectetur adipiscing elit. ", 16)
	for i := range n {
		slug := fmt.Sprintf("page-%05d", i)
		var body strings.Builder
		fmt.Fprintf(&body, "# Page %d\n\n%s\n", i, filler)
		for j := 1; j <= 5; j++ {
			fmt.Fprintf(&body, "See [[Page %05d]] and [more](page-%05d).\n", (i+j*7)%n, (i+j)%(n+n/50))
		}
		fields := page(slug, body.String(), time.Duration(i%365)*day)
		pipe.HSet(ctx, wiki.PageKey("big", slug), fields)
		pipe.SAdd(ctx, wiki.PagesKey("big"), slug)
		if pipe.Len() >= 1000 {
			if _, err := pipe.Exec(ctx); err != nil {
				b.Fatal(err)
			}
		}
	}
	if _, err := pipe.Exec(ctx); err != nil {
		b.Fatal(err)
	}
	s := wiki.New(rdb)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		rep, err := s.Lint(ctx, "big", wiki.LintOptions{Now: now})
		if err != nil {
			b.Fatal(err)
		}
		if rep.Counts.Pages != n {
			b.Fatalf("pages = %d", rep.Counts.Pages)
		}
	}
}
