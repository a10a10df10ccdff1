package wiki

import (
	"net/url"
	"regexp"
	"strings"
	"unicode"
)

// NormalizeSlug is the one slug rule the bot and the lint share: trim
// surrounding white space, lowercase (Unicode simple case mapping), and turn
// each run of inner white space into one '-'. Every other character,
// Unicode included, is kept as is; no Unicode normalisation form is applied.
// "  Star  Maps " → "star-maps", "Über Uns" → "über-uns".
func NormalizeSlug(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	space := false
	for _, r := range strings.TrimSpace(s) {
		if unicode.IsSpace(r) {
			space = true
			continue
		}
		if space {
			b.WriteByte('-')
			space = false
		}
		b.WriteRune(unicode.ToLower(r))
	}
	return b.String()
}

// Kinds of link.
const (
	// KindWiki is [[Slug]] or [[Slug|label]].
	KindWiki = "wiki"
	// KindMarkdown is [label](slug) or [label](/wiki/<wiki id>/slug).
	KindMarkdown = "markdown"
	// KindReference is a markdown reference definition "[label]: slug".
	KindReference = "reference"
	// KindRedirect is a page's redirect_to.
	KindRedirect = "redirect"
)

// Link is one internal link found in a page.
type Link struct {
	// Target is the normalised slug linked to.
	Target string
	// Text is what the reader sees: the label, or the target as written.
	Text string
	Kind string
}

var (
	wikiLinkRE = regexp.MustCompile(`\[\[([^\[\]\n]+)\]\]`)
	// [label](target "title"): the label may hold one level of brackets,
	// the target may be <bracketed> or hold balanced parentheses.
	mdLinkRE = regexp.MustCompile(`(!?)\[((?:[^\[\]\n]|\[[^\[\]\n]*\])*)\]\(\s*(<[^<>\n]*>|[^\s()]*(?:\([^\s()]*\)[^\s()]*)*)(?:\s+(?:"[^"\n]*"|'[^'\n]*'|\([^()\n]*\)))?\s*\)`)
	refDefRE = regexp.MustCompile(`^ {0,3}\[([^\[\]]+)\]:[ \t]*(<[^<>]*>|\S+)`)
	schemeRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*:`)
	fenceRE  = regexp.MustCompile("^ {0,3}(`{3,}|~{3,})")
)

// ExtractLinks returns the internal links of a markdown body in the order
// they appear. Links inside fenced code blocks and inline code spans, image
// links, in-page anchors and links with a URL scheme are not page links.
// wikiID lets absolute links to this wiki (/wiki/<wiki id>/slug) count;
// absolute links anywhere else, including other wikis, are not checked.
func ExtractLinks(body, wikiID string) []Link {
	var out []Link
	var fence string
	for line := range strings.SplitSeq(body, "\n") {
		if fence != "" {
			if t := strings.TrimSpace(line); strings.HasPrefix(t, fence) && strings.Trim(t, fence[:1]) == "" {
				fence = ""
			}
			continue
		}
		if t := strings.TrimLeft(line, " "); strings.HasPrefix(t, "```") || strings.HasPrefix(t, "~~~") {
			if m := fenceRE.FindStringSubmatch(line); m != nil {
				fence = m[1]
				continue
			}
		}
		if !strings.Contains(line, "[") {
			continue // the common case: a line without links, at no regexp cost
		}
		line = stripCodeSpans(line)
		if strings.HasPrefix(strings.TrimLeft(line, " "), "[") {
			if m := refDefRE.FindStringSubmatch(line); m != nil {
				if slug, ok := markdownTarget(m[2], wikiID); ok {
					out = append(out, Link{Target: slug, Text: strings.TrimSpace(m[1]), Kind: KindReference})
				}
				continue
			}
		}
		// Wiki links first, blanked out so their brackets are not read
		// again as a markdown link.
		if strings.Contains(line, "[[") {
			line = wikiLinkRE.ReplaceAllStringFunc(line, func(s string) string {
				if l, ok := wikiLink(s[2 : len(s)-2]); ok {
					out = append(out, l)
				}
				return strings.Repeat(" ", len(s))
			})
		}
		if !strings.Contains(line, "](") {
			continue
		}
		for _, m := range mdLinkRE.FindAllStringSubmatch(line, -1) {
			if m[1] == "!" {
				continue
			}
			if slug, ok := markdownTarget(m[3], wikiID); ok {
				out = append(out, Link{Target: slug, Text: strings.TrimSpace(m[2]), Kind: KindMarkdown})
			}
		}
	}
	return out
}

// wikiLink reads the inside of [[...]]: "Target", "Target|label",
// "Target#section". A link to a section of the same page ([[#x]]) is not a
// page link.
func wikiLink(inner string) (Link, bool) {
	target, label, hasLabel := strings.Cut(inner, "|")
	page, _, _ := strings.Cut(target, "#")
	slug := NormalizeSlug(page)
	if slug == "" {
		return Link{}, false
	}
	text := strings.TrimSpace(target)
	if l := strings.TrimSpace(label); hasLabel && l != "" {
		text = l
	}
	return Link{Target: slug, Text: text, Kind: KindWiki}, true
}

// markdownTarget decides whether a markdown link target is a page of this
// wiki and returns its slug: relative targets without a '/' ("slug",
// "./slug", "My%20Page") and /wiki/<wikiID>/slug are; anchors, URLs with a
// scheme, protocol-relative URLs, other absolute paths and relative paths
// with directories are not. Query and fragment are dropped, percent
// escapes decoded.
func markdownTarget(raw, wikiID string) (string, bool) {
	t := strings.TrimSpace(raw)
	if strings.HasPrefix(t, "<") && strings.HasSuffix(t, ">") {
		t = strings.TrimSpace(t[1 : len(t)-1])
	}
	if t == "" || strings.HasPrefix(t, "#") || strings.HasPrefix(t, "//") || schemeRE.MatchString(t) {
		return "", false
	}
	if i := strings.IndexAny(t, "?#"); i >= 0 {
		t = t[:i]
	}
	if u, err := url.PathUnescape(t); err == nil {
		t = u
	}
	if strings.HasPrefix(t, "/") {
		rest, ok := strings.CutPrefix(t, "/wiki/"+wikiID+"/")
		if !ok {
			return "", false
		}
		t = strings.TrimSuffix(rest, "/")
	}
	for strings.HasPrefix(t, "./") {
		t = t[2:]
	}
	if strings.Contains(t, "/") {
		return "", false
	}
	slug := NormalizeSlug(t)
	return slug, slug != ""
}

// stripCodeSpans blanks inline code spans (a run of backticks up to the
// next run of the same length) so links shown as code are not read as links. An unmatched backtick run is
// literal text.
func stripCodeSpans(line string) string {
	if !strings.Contains(line, "`") {
		return line
	}
	b := []byte(line)
	for i := 0; i < len(b); {
		if b[i] != '`' {
			i++
			continue
		}
		n := runLen(b, i)
		end := -1
		for j := i + n; j < len(b); {
			if b[j] != '`' {
				j++
				continue
			}
			m := runLen(b, j)
			if m == n {
				end = j
				break
			}
			j += m
		}
		if end < 0 {
			i += n
			continue
		}
		for k := i; k < end+n; k++ {
			b[k] = ' '
		}
		i = end + n
	}
	return string(b)
}

func runLen(b []byte, i int) int {
	n := 0
	for i+n < len(b) && b[i+n] == '`' {
		n++
	}
	return n
}

// blankBody reports whether a body has no content: only white space and
// ATX headings ("# Title").
func blankBody(body string) bool {
	for line := range strings.SplitSeq(body, "\n") {
		l := strings.TrimSpace(line)
		if l == "" || atxHeading(l) {
			continue
		}
		return false
	}
	return true
}

func atxHeading(l string) bool {
	n := 0
	for n < len(l) && l[n] == '#' {
		n++
	}
	return n >= 1 && n <= 6 && (n == len(l) || l[n] == ' ' || l[n] == '\t')
}
