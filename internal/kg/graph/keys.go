package graph

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"unicode"

	"golang.org/x/text/cases"
	"golang.org/x/text/unicode/norm"
)

// NormalizeName is the form of an entity name that decides whether two
// mentions are the same entity: the Entity property normalized_name and
// the input of EntityKey. Every producer of entities must use it, so that
// "Alice", " alice ", "ALICE." and "“Alice”" meet in one node.
//
// Steps, all Unicode-aware:
//   - NFKC normalization, so composed and decomposed accents, full-width
//     and other compatibility forms compare equal;
//   - case folding (lowercase; also ß → ss, final ς → σ);
//   - punctuation stripped from both ends (quotes, brackets, dashes,
//     commas, trailing full stops and the like), with exceptions that are
//     usually part of a name: a leading "." (".NET") and a trailing "#" or
//     "%" ("C#", "100%"); symbols such as "+" ("C++") and "$" are kept,
//     except trailing trademark signs;
//   - runs of whitespace and control characters collapsed to one space,
//     and none at the ends.
//
// It is idempotent: NormalizeName(NormalizeName(s)) == NormalizeName(s). A
// name that is only punctuation normalizes to "", which is no entity.
func NormalizeName(s string) string {
	s = trimName(s) // first, so that "™" goes before NFKC turns it into "TM"
	s = norm.NFKC.String(s)
	s = cases.Fold().String(s)
	s = norm.NFKC.String(s) // folding can leave the normal form
	s = trimName(s)
	return strings.Join(strings.FieldsFunc(s, isNameSpace), " ")
}

func trimName(s string) string {
	s = strings.TrimLeftFunc(s, func(r rune) bool {
		return isNameSpace(r) || unicode.Is(unicode.Cf, r) || unicode.IsPunct(r) && r != '.'
	})
	return strings.TrimRightFunc(s, func(r rune) bool {
		switch r {
		case '#', '%':
			return false
		case '™', '®', '©', '℠':
			return true
		}
		return isNameSpace(r) || unicode.Is(unicode.Cf, r) || unicode.IsPunct(r)
	})
}

func isNameSpace(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }

// EntityKey is the stable identity of an entity: the Entity node's key
// property, unique in the graph. It is derived from the entity's type and
// name, both put through NormalizeName first (so a raw name gives the same
// key as its normalized form, and "Person" the same as "person").
//
// The key is the first 128 bits of SHA-256 over type, NUL, name, in hex (32
// characters). A hash rather than a readable "type:name" because it has a
// fixed, short length for the unique index whatever the name, needs no
// escaping, and cannot be ambiguous (a ":" in a type or name would make
// "type:name" ambiguous; NUL cannot occur in either). 128 bits make an
// accidental collision negligible. The readable parts are stored beside
// it, in normalized_name and type.
//
// FalkorDB reuses internal node ids after deletes, so this key, not id(n),
// is what anything outside the graph may store.
func EntityKey(name, typ string) string {
	sum := sha256.Sum256([]byte(NormalizeName(typ) + "\x00" + NormalizeName(name)))
	return hex.EncodeToString(sum[:16])
}
