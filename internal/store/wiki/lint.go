package wiki

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"
)

// Lint defaults.
const (
	// DefaultStaleAfter is how long a page may go without an update before
	// it is stale (STARWIKI_STALE_DAYS).
	DefaultStaleAfter = 180 * 24 * time.Hour
	// DefaultLimit bounds each list of findings in a report; the counts are
	// always complete.
	DefaultLimit = 500
	// DefaultBatch is how many pages one pipelined round trip reads.
	DefaultBatch = 500
	// maxRedirectHops bounds a redirect chain; longer chains are reported.
	maxRedirectHops = 8
	// maxShown bounds, in characters, a slug or link text in a report.
	maxShown = 200
)

// LintOptions tune a lint run.
type LintOptions struct {
	// Now is the time staleness is measured against.
	Now time.Time
	// StaleAfter: a page not updated for this long is stale (default
	// DefaultStaleAfter).
	StaleAfter time.Duration
	// Limit bounds each list of findings (default DefaultLimit).
	Limit int
	// Batch is the pages read per round trip (default DefaultBatch).
	Batch int
}

// Report is one wiki's lint result. Every list is sorted and the struct
// holds no time of its own, so linting an unchanged wiki yields an
// identical report.
type Report struct {
	Wiki string `json:"wiki"`
	// Home is the slug exempt from the orphan check.
	Home           string `json:"home"`
	StaleAfterDays int    `json:"stale_after_days"`
	// Limit is the most entries each list holds; Counts has the totals.
	Limit       int          `json:"limit"`
	Counts      Counts       `json:"counts"`
	BrokenLinks []BrokenLink `json:"broken_links"`
	Orphans     []string     `json:"orphans"`
	Empty       []string     `json:"empty"`
	Stale       []StalePage  `json:"stale"`
	Malformed   []Problem    `json:"malformed"`
}

// Counts are a report's totals.
type Counts struct {
	Pages       int `json:"pages"`
	BrokenLinks int `json:"broken_links"`
	Orphans     int `json:"orphans"`
	Empty       int `json:"empty"`
	Stale       int `json:"stale"`
	Malformed   int `json:"malformed"`
}

// BrokenLink is a link whose target is not a page of the wiki.
type BrokenLink struct {
	// Page is the slug of the page holding the link.
	Page string `json:"page"`
	// Target is the normalised slug linked to.
	Target string `json:"target"`
	// Text is the link's label or, without one, its target as written.
	Text string `json:"text"`
	Kind string `json:"kind"`
}

// StalePage is a page not updated for StaleAfterDays.
type StalePage struct {
	Page      string `json:"page"`
	UpdatedAt int64  `json:"updated_at"`
}

// Problem is page data the lint could not use as the contract says.
type Problem struct {
	Page    string `json:"page"`
	Problem string `json:"problem"`
}

// errMissing is resolve's answer for a chain ending at no page: the last
// redirect of the chain is reported as a broken link, not its predecessors.
const errMissing = "redirect to a missing page"

// pageInfo is what the lint keeps of a page once its body is parsed, so a
// large wiki is never held in memory whole.
type pageInfo struct {
	key       string // the pages-set member
	slug      string // normalised
	redirect  string // normalised redirect target, "" for a content page
	updatedAt int64  // ms, 0 if unknown
	blank     bool
	links     []Link
	missing   bool // no usable hash
	problems  []string
}

// Lint reads a wiki and reports its broken links, orphans, empty, stale and
// malformed pages. A wiki that is not Lintable (or has no metadata) is not
// read beyond its metadata: Lint returns an error wrapping ErrNotLintable.
// Malformed page data is reported, never an error; errors are Redis
// failures.
func (s *Store) Lint(ctx context.Context, wikiID string, o LintOptions) (*Report, error) {
	meta, found, err := s.Meta(ctx, wikiID)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("%w: %s has no metadata", ErrNotLintable, wikiID)
	}
	if !meta.Lintable() {
		return nil, fmt.Errorf("%w: %s is private and has not opted in", ErrNotLintable, wikiID)
	}
	o = o.withDefaults()
	pages, setProblem, err := s.readPages(ctx, wikiID, o.Batch)
	if err != nil {
		return nil, err
	}
	rep := build(wikiID, meta.HomeSlug(), pages, o)
	if setProblem != "" {
		rep.addProblems(Problem{Page: "", Problem: setProblem})
	}
	rep.finish()
	return rep, nil
}

func (o LintOptions) withDefaults() LintOptions {
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	if o.StaleAfter <= 0 {
		o.StaleAfter = DefaultStaleAfter
	}
	if o.Limit <= 0 {
		o.Limit = DefaultLimit
	}
	if o.Batch <= 0 {
		o.Batch = DefaultBatch
	}
	return o
}

// readPages reads every page listed in the wiki's pages set, o.Batch per
// pipelined round trip, parsing each batch before reading the next. A pages
// key that is not a set is a problem of the wiki, not an error.
func (s *Store) readPages(ctx context.Context, wikiID string, batch int) ([]pageInfo, string, error) {
	slugs, err := s.rdb.SMembers(ctx, PagesKey(wikiID)).Result()
	if redis.HasErrorPrefix(err, "WRONGTYPE") {
		return nil, PagesKey(wikiID) + " is not a set", nil
	}
	if err != nil {
		return nil, "", fmt.Errorf("wiki: reading %s: %w", PagesKey(wikiID), err)
	}
	slices.Sort(slugs)
	out := make([]pageInfo, 0, len(slugs))
	cmds := make([]*redis.SliceCmd, 0, batch)
	for start := 0; start < len(slugs); start += batch {
		if err := ctx.Err(); err != nil {
			return nil, "", err
		}
		chunk := slugs[start:min(start+batch, len(slugs))]
		pipe := s.rdb.Pipeline()
		cmds = cmds[:0]
		for _, slug := range chunk {
			cmds = append(cmds, pipe.HMGet(ctx, PageKey(wikiID, slug), pageFields...))
		}
		if _, err := pipe.Exec(ctx); err != nil && !isReplyError(err) {
			return nil, "", fmt.Errorf("wiki: reading pages of %s: %w", wikiID, err)
		}
		for i, cmd := range cmds {
			info, err := analyze(wikiID, chunk[i], cmd)
			if err != nil {
				return nil, "", err
			}
			out = append(out, info)
		}
	}
	return out, "", nil
}

// isReplyError tells a per-command reply (WRONGTYPE on one page) from a
// failure of the connection, which fails the whole pipeline.
func isReplyError(err error) bool {
	var re redis.Error
	return errors.As(err, &re) && !errors.Is(err, redis.ErrClosed)
}

// analyze turns one page's HMGET reply into what the lint needs.
func analyze(wikiID, key string, cmd *redis.SliceCmd) (pageInfo, error) {
	info := pageInfo{key: key, slug: NormalizeSlug(key)}
	if info.slug == "" {
		info.problems = append(info.problems, "empty slug in the pages set")
		info.missing = true
		return info, nil
	}
	if info.slug != key {
		info.problems = append(info.problems, fmt.Sprintf("slug %q is not normalised (%q)", shorten(key), shorten(info.slug)))
	}
	if err := cmd.Err(); err != nil {
		if redis.HasErrorPrefix(err, "WRONGTYPE") {
			info.problems = append(info.problems, "page key is not a hash")
			info.missing = true
			return info, nil
		}
		return info, fmt.Errorf("wiki: reading %s: %w", PageKey(wikiID, key), err)
	}
	vals := cmd.Val()
	field := func(i int) (string, bool) {
		if i >= len(vals) || vals[i] == nil {
			return "", false
		}
		s, ok := vals[i].(string)
		return s, ok
	}
	present := false
	for i := range pageFields {
		if _, ok := field(i); ok {
			present = true
		}
	}
	if !present {
		info.problems = append(info.problems, "listed in the pages set but the page hash is missing")
		info.missing = true
		return info, nil
	}
	if s, ok := field(fSlug); ok && NormalizeSlug(s) != info.slug {
		info.problems = append(info.problems, fmt.Sprintf("slug field %q differs from the key's slug", shorten(s)))
	}
	if r, ok := field(fRedirectTo); ok && strings.TrimSpace(r) != "" {
		info.redirect = NormalizeSlug(r)
		return info, nil // a redirect's body and age do not matter
	}
	switch u, ok := field(fUpdatedAt); {
	case !ok:
		info.problems = append(info.problems, "missing updated_at")
	default:
		if ms, ok := parseMillis(u); ok {
			info.updatedAt = ms
		} else {
			info.problems = append(info.problems, fmt.Sprintf("updated_at %q is not a time in milliseconds", shorten(u)))
		}
	}
	body, ok := field(fBody)
	if !ok {
		info.problems = append(info.problems, "missing body")
	}
	info.blank = blankBody(body)
	info.links = ExtractLinks(body, wikiID)
	return info, nil
}

// build checks the pages against each other and assembles the report.
func build(wikiID, home string, pages []pageInfo, o LintOptions) *Report {
	rep := &Report{
		Wiki: wikiID, Home: home, Limit: o.Limit,
		StaleAfterDays: int(o.StaleAfter / (24 * time.Hour)),
		BrokenLinks:    []BrokenLink{}, Orphans: []string{}, Empty: []string{},
		Stale: []StalePage{}, Malformed: []Problem{},
	}
	rep.Counts.Pages = len(pages)
	bySlug := make(map[string]*pageInfo, len(pages))
	// Members stored normalised, as the contract says, win over others
	// with the same slug.
	for _, normalised := range []bool{true, false} {
		for i := range pages {
			p := &pages[i]
			if (p.key == p.slug) != normalised {
				continue
			}
			for _, pr := range p.problems {
				rep.addProblems(Problem{Page: p.key, Problem: pr})
			}
			if p.missing {
				continue
			}
			if first, dup := bySlug[p.slug]; dup {
				rep.addProblems(Problem{Page: p.key, Problem: fmt.Sprintf("same slug as %q after normalisation; ignored", shorten(first.key))})
				p.missing = true
				continue
			}
			bySlug[p.slug] = p
		}
	}
	// resolve follows redirects to the page a slug finally shows.
	resolve := func(slug string) (final string, problem string) {
		seen := map[string]bool{}
		for hops := 0; ; hops++ {
			p := bySlug[slug]
			if p == nil {
				return "", errMissing
			}
			if p.redirect == "" {
				return slug, ""
			}
			if seen[slug] {
				return "", "redirect loop"
			}
			if hops == maxRedirectHops {
				return "", fmt.Sprintf("redirect chain longer than %d hops", maxRedirectHops)
			}
			seen[slug] = true
			slug = p.redirect
		}
	}

	var broken []BrokenLink
	incoming := map[string]int{}
	for i := range pages {
		p := &pages[i]
		if p.missing {
			continue
		}
		if p.redirect != "" {
			if bySlug[p.redirect] == nil {
				broken = append(broken, BrokenLink{Page: p.slug, Target: p.redirect, Kind: KindRedirect})
			} else if _, problem := resolve(p.redirect); problem != "" && problem != errMissing {
				rep.addProblems(Problem{Page: p.key, Problem: problem})
			}
			continue
		}
		for _, l := range p.links {
			if bySlug[l.Target] == nil {
				broken = append(broken, BrokenLink{Page: p.slug, Target: l.Target, Text: l.Text, Kind: l.Kind})
				continue
			}
			// A link to a redirect is a link to the page it shows.
			if final, _ := resolve(l.Target); final != "" && final != p.slug {
				incoming[final]++
			}
		}
	}
	slices.SortFunc(broken, func(a, b BrokenLink) int {
		return cmp.Or(cmp.Compare(a.Page, b.Page), cmp.Compare(a.Target, b.Target),
			cmp.Compare(a.Text, b.Text), cmp.Compare(a.Kind, b.Kind))
	})
	broken = slices.Compact(broken)
	rep.Counts.BrokenLinks = len(broken)
	for _, b := range broken[:min(len(broken), o.Limit)] {
		b.Page, b.Target, b.Text = shorten(b.Page), shorten(b.Target), shorten(b.Text)
		rep.BrokenLinks = append(rep.BrokenLinks, b)
	}

	staleBefore := o.Now.Add(-o.StaleAfter).UnixMilli()
	var orphans, empty []string
	var stale []StalePage
	for i := range pages {
		p := &pages[i]
		if p.missing || p.redirect != "" {
			continue
		}
		if incoming[p.slug] == 0 && p.slug != home {
			orphans = append(orphans, p.slug)
		}
		if p.blank {
			empty = append(empty, p.slug)
		}
		if p.updatedAt > 0 && p.updatedAt <= staleBefore {
			stale = append(stale, StalePage{Page: p.slug, UpdatedAt: p.updatedAt})
		}
	}
	rep.Counts.Orphans, rep.Counts.Empty, rep.Counts.Stale = len(orphans), len(empty), len(stale)
	slices.Sort(orphans)
	slices.Sort(empty)
	slices.SortFunc(stale, func(a, b StalePage) int { return cmp.Compare(a.Page, b.Page) })
	for _, s := range orphans[:min(len(orphans), o.Limit)] {
		rep.Orphans = append(rep.Orphans, shorten(s))
	}
	for _, s := range empty[:min(len(empty), o.Limit)] {
		rep.Empty = append(rep.Empty, shorten(s))
	}
	for _, s := range stale[:min(len(stale), o.Limit)] {
		rep.Stale = append(rep.Stale, StalePage{Page: shorten(s.Page), UpdatedAt: s.UpdatedAt})
	}
	return rep
}

// addProblems records malformed data; finish sorts and bounds the list.
func (r *Report) addProblems(ps ...Problem) {
	r.Counts.Malformed += len(ps)
	r.Malformed = append(r.Malformed, ps...)
}

// finish sorts the malformed list and keeps its first Limit entries.
func (r *Report) finish() {
	slices.SortFunc(r.Malformed, func(a, b Problem) int {
		return cmp.Or(cmp.Compare(a.Page, b.Page), cmp.Compare(a.Problem, b.Problem))
	})
	r.Malformed = slices.Compact(r.Malformed)
	r.Counts.Malformed = len(r.Malformed)
	for i := range r.Malformed {
		r.Malformed[i].Page = shorten(r.Malformed[i].Page)
	}
	r.Malformed = slices.Clip(r.Malformed[:min(len(r.Malformed), r.Limit)])
}

// shorten bounds a slug or text shown in a report.
func shorten(s string) string {
	if utf8.RuneCountInString(s) <= maxShown {
		return s
	}
	r := []rune(s)
	return string(r[:maxShown-1]) + "…"
}
