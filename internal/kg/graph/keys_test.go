package graph_test

import (
	"regexp"
	"testing"

	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
)

func TestNormalizeName(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"lowercases", "Alice", "alice"},
		{"trims and collapses whitespace", "  Alice \t\n  Smith  ", "alice smith"},
		{"non-breaking and ideographic spaces", "Alice\u00a0Smith\u3000", "alice smith"},
		{"control characters count as space", "Alice\x00\x1fSmith", "alice smith"},
		{"surrounding quotes", `"Alice"`, "alice"},
		{"curly and guillemet quotes", "“Alice” «Bob»", "alice” «bob"},
		{"brackets", "(Acme Corp)", "acme corp"},
		{"trailing full stop and comma", "Acme Inc.,", "acme inc"},
		{"markdown emphasis", "**Alice**", "alice"},
		{"dashes and bullets", "- Alice —", "alice"},
		{"inner punctuation kept", "O'Brien-Smith & Co.", "o'brien-smith & co"},
		{"leading dot kept", ".NET", ".net"},
		{"trailing hash kept", "C#", "c#"},
		{"trailing percent kept", "100%", "100%"},
		{"symbols kept", "C++", "c++"},
		{"trademark dropped", "Google™", "google"},
		{"composed and decomposed accents agree", "Cafe\u0301", "café"},
		{"full-width forms", "ＡＬＩＣＥ", "alice"},
		{"ligature", "ﬁnance", "finance"},
		{"sharp s folds", "STRASSE", "strasse"},
		{"sharp s folds too", "Straße", "strasse"},
		{"greek final sigma", "ΟΔΥΣΣΕΥΣ", "οδυσσευσ"},
		{"emoji inside kept", "team 👩‍👩‍👧", "team 👩‍👩‍👧"},
		{"zero-width space at the ends", "\u200bAlice\ufeff", "alice"},
		{"only punctuation", `"...!?"`, ""},
		{"empty", "", ""},
		{"cyrillic", "  Москва ", "москва"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := graph.NormalizeName(tt.in); got != tt.want {
				t.Errorf("NormalizeName(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func FuzzNormalizeNameIsIdempotent(f *testing.F) {
	for _, s := range []string{"Alice", " “Straße” ", "C#.", ".NET™", "ﬁ", "İstanbul", "ǅ", "\u0345", "ᾈ", "a\u200d"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		once := graph.NormalizeName(s)
		if twice := graph.NormalizeName(once); twice != once {
			t.Errorf("NormalizeName(%q) = %q, but NormalizeName(%q) = %q", s, once, once, twice)
		}
	})
}

func TestEntityKey(t *testing.T) {
	key := graph.EntityKey("alice", "person")
	if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(key) {
		t.Fatalf("EntityKey = %q, want 32 hex digits", key)
	}
	same := []struct{ name, typ string }{
		{"Alice", "Person"},
		{"  ALICE. ", " person"},
		{"“Alice”", "PERSON"},
	}
	for _, s := range same {
		if got := graph.EntityKey(s.name, s.typ); got != key {
			t.Errorf("EntityKey(%q, %q) = %s, want %s (same entity)", s.name, s.typ, got, key)
		}
	}
	different := []struct{ name, typ string }{
		{"alice", "organization"},
		{"alicia", "person"},
		{"person", "alice"},
		{"alice", ""},
		{"", "alice person"},
	}
	for _, d := range different {
		if got := graph.EntityKey(d.name, d.typ); got == key {
			t.Errorf("EntityKey(%q, %q) = %s, the same as alice/person", d.name, d.typ, got)
		}
	}
	// Pinned (sha256("person\x00alice")[:16]): keys are stored in the graph,
	// so the derivation must never change.
	if want := "92b401c656b9b15a1da01fa5cef4dc18"; key != want {
		t.Errorf("EntityKey(alice, person) = %s, want %s", key, want)
	}
}
