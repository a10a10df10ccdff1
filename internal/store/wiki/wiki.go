// Package wiki reads and writes StarWiki, the bot's wikis, in Redis: the
// registry of wikis, each wiki's metadata and pages, and the lint report the
// starwiki_lint task stores per wiki. docs/data-model.md ("StarWiki") is the
// contract with the bot, which writes the pages; this package is its only Go
// implementation.
package wiki

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// RegistryKey is the set of wiki ids.
const RegistryKey = "sg:wiki:wikis"

const keyPrefix = "sg:wiki:"

// Visibilities of a wiki. Anything but VisibilityPublic is private.
const (
	VisibilityPublic  = "public"
	VisibilityPrivate = "private"
)

// DefaultHome is the home page's slug when the meta names none.
const DefaultHome = "home"

// MetaKey is the hash of a wiki's metadata.
func MetaKey(wikiID string) string { return keyPrefix + wikiID + ":meta" }

// PagesKey is the set of a wiki's page slugs.
func PagesKey(wikiID string) string { return keyPrefix + wikiID + ":pages" }

// PageKey is the hash of one page. slug is the member of the pages set as
// stored (normalised, if the writer followed the contract).
func PageKey(wikiID, slug string) string { return keyPrefix + wikiID + ":page:" + slug }

// LintKey is the hash of a wiki's latest lint report.
func LintKey(wikiID string) string { return keyPrefix + wikiID + ":lint" }

// Meta is a wiki's metadata.
type Meta struct {
	Title string
	// Visibility is VisibilityPublic or VisibilityPrivate.
	Visibility string
	// LintOptIn lets the lint read a private wiki.
	LintOptIn bool
	Owner     string
	// Home is the home page's slug ("" means DefaultHome).
	Home      string
	UpdatedAt time.Time
}

// Public reports whether the wiki is public. Only the exact (trimmed,
// case-insensitive) value "public" is: an unknown visibility is private, so
// a typo never exposes a wiki.
func (m Meta) Public() bool {
	return strings.EqualFold(strings.TrimSpace(m.Visibility), VisibilityPublic)
}

// Lintable reports whether the lint may read the wiki: public, or private
// with lint_opt_in.
func (m Meta) Lintable() bool { return m.Public() || m.LintOptIn }

// HomeSlug is the normalised slug of the home page.
func (m Meta) HomeSlug() string {
	if h := NormalizeSlug(m.Home); h != "" {
		return h
	}
	return DefaultHome
}

// Page is one wiki page.
type Page struct {
	// Slug is normalised by PutPage.
	Slug  string
	Title string
	// Body is markdown.
	Body      string
	Author    string
	CreatedAt time.Time
	UpdatedAt time.Time
	// RedirectTo, when set, makes the page a redirect to that slug.
	RedirectTo string
}

// Page hash fields, in the order the lint reads them.
var pageFields = []string{"slug", "title", "body", "updated_at", "created_at", "author", "redirect_to"}

const (
	fSlug = iota
	fTitle
	fBody
	fUpdatedAt
	fCreatedAt
	fAuthor
	fRedirectTo
)

// ErrNotLintable is returned by Lint for a wiki the lint must not read:
// private without opt-in, without metadata, or with unreadable metadata.
var ErrNotLintable = errors.New("wiki: not lintable")

// Store is StarWiki in one Redis.
type Store struct {
	rdb redis.UniversalClient
}

// New returns the store on rdb.
func New(rdb redis.UniversalClient) *Store { return &Store{rdb: rdb} }

// Wikis returns the registered wiki ids, sorted so runs are deterministic.
func (s *Store) Wikis(ctx context.Context) ([]string, error) {
	ids, err := s.rdb.SMembers(ctx, RegistryKey).Result()
	if err != nil {
		return nil, fmt.Errorf("wiki: reading %s: %w", RegistryKey, err)
	}
	ids = slices.DeleteFunc(ids, func(id string) bool { return id == "" })
	slices.Sort(ids)
	return ids, nil
}

// Meta reads a wiki's metadata; found is false when the wiki has none.
// Metadata that is not a hash yields an error wrapping ErrNotLintable.
func (s *Store) Meta(ctx context.Context, wikiID string) (m Meta, found bool, err error) {
	h, err := s.rdb.HGetAll(ctx, MetaKey(wikiID)).Result()
	if redis.HasErrorPrefix(err, "WRONGTYPE") {
		return Meta{}, false, fmt.Errorf("%w: %s is not a hash", ErrNotLintable, MetaKey(wikiID))
	}
	if err != nil {
		return Meta{}, false, fmt.Errorf("wiki: reading %s: %w", MetaKey(wikiID), err)
	}
	if len(h) == 0 {
		return Meta{}, false, nil
	}
	m = Meta{
		Title: h["title"], Visibility: h["visibility"], Owner: h["owner"], Home: h["home"],
		LintOptIn: optedIn(h["lint_opt_in"]),
	}
	if ms, ok := parseMillis(h["updated_at"]); ok {
		m.UpdatedAt = time.UnixMilli(ms)
	}
	return m, true, nil
}

// optedIn accepts "1" (the contract) and "true": both are unambiguous
// opt-ins; anything else keeps a private wiki closed.
func optedIn(v string) bool {
	v = strings.TrimSpace(v)
	return v == "1" || strings.EqualFold(v, "true")
}

// PutWiki registers a wiki and writes its metadata (the bot's side of the
// contract; the job system uses it to seed tests and demos).
func (s *Store) PutWiki(ctx context.Context, wikiID string, m Meta) error {
	if wikiID == "" {
		return errors.New("wiki: empty wiki id")
	}
	optIn := "0"
	if m.LintOptIn {
		optIn = "1"
	}
	vis := VisibilityPrivate
	if m.Public() {
		vis = VisibilityPublic
	}
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, MetaKey(wikiID), "title", m.Title, "visibility", vis, "lint_opt_in", optIn,
			"owner", m.Owner, "home", m.Home, "updated_at", strconv.FormatInt(m.UpdatedAt.UnixMilli(), 10))
		p.SAdd(ctx, RegistryKey, wikiID)
		return nil
	})
	if err != nil {
		return fmt.Errorf("wiki: writing %s: %w", MetaKey(wikiID), err)
	}
	return nil
}

// PutPage writes a page under its normalised slug and lists it in the
// wiki's pages set (the bot's side of the contract).
func (s *Store) PutPage(ctx context.Context, wikiID string, p Page) error {
	slug := NormalizeSlug(p.Slug)
	if slug == "" {
		return fmt.Errorf("wiki: page %q has an empty slug", p.Slug)
	}
	fields := []any{
		"slug", slug, "title", p.Title, "body", p.Body, "author", p.Author,
		"created_at", strconv.FormatInt(p.CreatedAt.UnixMilli(), 10),
		"updated_at", strconv.FormatInt(p.UpdatedAt.UnixMilli(), 10),
	}
	if p.RedirectTo != "" {
		fields = append(fields, "redirect_to", NormalizeSlug(p.RedirectTo))
	}
	_, err := s.rdb.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
		pipe.Del(ctx, PageKey(wikiID, slug))
		pipe.HSet(ctx, PageKey(wikiID, slug), fields...)
		pipe.SAdd(ctx, PagesKey(wikiID), slug)
		return nil
	})
	if err != nil {
		return fmt.Errorf("wiki: writing %s: %w", PageKey(wikiID, slug), err)
	}
	return nil
}

// parseMillis reads a time in Unix milliseconds. It accepts a decimal
// integer and, because Python writers sometimes produce them, a finite
// float ("1700000000000.0"); it rejects anything else and non-positive
// values.
func parseMillis(v string) (int64, bool) {
	v = strings.TrimSpace(v)
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		return n, n > 0
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f != f || f <= 0 || f > 1<<62 {
		return 0, false
	}
	return int64(f), true
}
