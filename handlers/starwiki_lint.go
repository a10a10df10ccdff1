package handlers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/store/wiki"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// starwikiLint is the original's scheduled_lint_public_and_opt_in: it lints
// every public wiki and every private one that opted in, and stores a
// report per wiki for the bot. A private wiki that did not opt in is never
// read past its metadata, and a report left from when it was lintable is
// deleted so it stops showing the wiki's pages.
type starwikiLint struct {
	store      *wiki.Store
	staleAfter time.Duration
	now        func() time.Time
	log        *slog.Logger
}

func newStarwikiLint(k kit) Worker[*jobs.Empty] {
	return &starwikiLint{store: wiki.New(k.Redis()), staleAfter: k.StarwikiStaleAfter, now: k.Now, log: k.Logger}
}

func (h *starwikiLint) Work(ctx context.Context, _ *jobs.Empty) (Result, error) {
	store := h.store
	ids, err := store.Wikis(ctx)
	if err != nil {
		return nil, err
	}
	now := h.now()
	opts := wiki.LintOptions{Now: now, StaleAfter: h.staleAfter}
	var linted, skipped, written, removed int
	var total wiki.Counts
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		rep, err := store.Lint(ctx, id, opts)
		if errors.Is(err, wiki.ErrNotLintable) {
			skipped++
			gone, err := store.RemoveReport(ctx, id)
			if err != nil {
				return nil, err
			}
			if gone {
				removed++
				h.log.InfoContext(ctx, "starwiki lint report removed: wiki no longer lintable",
					"task", jobs.StarwikiLint, "wiki", id)
			}
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("linting wiki %q: %w", id, err)
		}
		changed, err := store.SaveReport(ctx, id, rep, now)
		if err != nil {
			return nil, err
		}
		linted++
		c := rep.Counts
		total.Pages += c.Pages
		total.BrokenLinks += c.BrokenLinks
		total.Orphans += c.Orphans
		total.Empty += c.Empty
		total.Stale += c.Stale
		total.Malformed += c.Malformed
		if changed {
			written++
			h.log.InfoContext(ctx, "starwiki lint report updated", "task", jobs.StarwikiLint, "wiki", id,
				"pages", c.Pages, "broken_links", c.BrokenLinks, "orphans", c.Orphans,
				"empty", c.Empty, "stale", c.Stale, "malformed", c.Malformed)
		}
	}
	return Result{
		"wikis": linted, "pages": total.Pages, "broken_links": total.BrokenLinks,
		"orphans": total.Orphans, "empty": total.Empty, "stale": total.Stale,
		"malformed": total.Malformed, "skipped": skipped,
		"reports_written": written, "reports_removed": removed,
	}, nil
}
