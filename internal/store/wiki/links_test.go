package wiki_test

import (
	"slices"
	"testing"

	"github.com/stargazer/stargazer-jobs/internal/store/wiki"
)

func TestNormalizeSlugLowercasesTrimsAndDashesSpaces(t *testing.T) {
	tests := []struct{ in, want string }{
		{"Home", "home"},
		{"  Star  Maps ", "star-maps"},
		{"star-maps", "star-maps"},
		{"Tab\tand\nnewline", "tab-and-newline"},
		{"Über Uns", "über-uns"},
		{"日本語 ページ", "日本語-ページ"},
		{"Help:Contents", "help:contents"},
		{"   ", ""},
	}
	for _, tt := range tests {
		if got := wiki.NormalizeSlug(tt.in); got != tt.want {
			t.Errorf("NormalizeSlug(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestExtractLinksFindsInternalLinksOnly(t *testing.T) {
	tests := []struct {
		name string
		body string
		want []wiki.Link
	}{
		{"wiki link", "see [[Star Maps]]", []wiki.Link{{Target: "star-maps", Text: "Star Maps", Kind: wiki.KindWiki}}},
		{"wiki link with label", "[[Star Maps|the maps]]", []wiki.Link{{Target: "star-maps", Text: "the maps", Kind: wiki.KindWiki}}},
		{"wiki link with section", "[[Star Maps#North]]", []wiki.Link{{Target: "star-maps", Text: "Star Maps#North", Kind: wiki.KindWiki}}},
		{"wiki link to own section", "[[#North]]", nil},
		{"two on a line", "[[a]] and [[B]]", []wiki.Link{{Target: "a", Text: "a", Kind: wiki.KindWiki}, {Target: "b", Text: "B", Kind: wiki.KindWiki}}},
		{"markdown relative", "[maps](star-maps)", []wiki.Link{{Target: "star-maps", Text: "maps", Kind: wiki.KindMarkdown}}},
		{"markdown dot slash and escapes", "[maps](./Star%20Maps)", []wiki.Link{{Target: "star-maps", Text: "maps", Kind: wiki.KindMarkdown}}},
		{"markdown with title and fragment", `[maps](star-maps#north "Maps")`, []wiki.Link{{Target: "star-maps", Text: "maps", Kind: wiki.KindMarkdown}}},
		{"markdown angle brackets", "[maps](<Star Maps>)", []wiki.Link{{Target: "star-maps", Text: "maps", Kind: wiki.KindMarkdown}}},
		{"markdown absolute to this wiki", "[maps](/wiki/w1/Star-Maps)", []wiki.Link{{Target: "star-maps", Text: "maps", Kind: wiki.KindMarkdown}}},
		{"markdown absolute to another wiki", "[maps](/wiki/w2/star-maps)", nil},
		{"markdown other absolute path", "[x](/static/a)", nil},
		{"markdown with directories", "[x](docs/a)", nil},
		{"external url", "[x](https://example.org/a) [y](mailto:a@b.c) [z](//cdn/x)", nil},
		{"anchor", "[x](#top)", nil},
		{"image", "![x](diagram)", nil},
		{"reference definition", "[maps]: Star%20Maps", []wiki.Link{{Target: "star-maps", Text: "maps", Kind: wiki.KindReference}}},
		{"external reference definition", "[site]: https://example.org", nil},
		{"inline code", "`[[not a link]]` and ``[x](nope)`` but [[Yes]]", []wiki.Link{{Target: "yes", Text: "Yes", Kind: wiki.KindWiki}}},
		{"unmatched backtick", "it`s [[Yes]]", []wiki.Link{{Target: "yes", Text: "Yes", Kind: wiki.KindWiki}}},
		{"fenced code", "```go\n[[no]]\n```\n~~~\n[x](no)\n~~~\n[[yes]]", []wiki.Link{{Target: "yes", Text: "yes", Kind: wiki.KindWiki}}},
		{"unclosed fence hides the rest", "```\n[[no]]", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := wiki.ExtractLinks(tt.body, "w1")
			if !slices.Equal(got, tt.want) {
				t.Fatalf("ExtractLinks = %+v, want %+v", got, tt.want)
			}
		})
	}
}
