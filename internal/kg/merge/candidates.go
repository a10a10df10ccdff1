package merge

import (
	"cmp"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// entity is what candidate search and keep choice need of an Entity node.
// ID is FalkorDB's internal id, valid only for the run (ids are reused
// after deletes), so every write checks Key beside it.
type entity struct {
	ID       int64
	Key      string
	Name     string
	Norm     string // normalized_name (computed if the node lacks it)
	Type     string
	Mentions int64
	Degree   int64
}

// pairKind says why two entities are candidates, which decides whether the
// LLM must judge them.
type pairKind int

const (
	// kindSimilar: near-identical names of the same type. The LLM judges.
	kindSimilar pairKind = iota
	// kindSameName: the same normalized name under different types ("apple"
	// the company and "apple" the fruit). The LLM judges.
	kindSameName
)

func (k pairKind) String() string {
	if k == kindSameName {
		return "same_name"
	}
	return "similar"
}

// pair is a candidate pair of entities (indexes into the scanned slice),
// A < B.
type pair struct {
	A, B  int
	Kind  pairKind
	Score float64
}

// Candidate search bounds. Candidates are compared only within blocks
// (same type and first letters, same token set, same letters), so the work
// grows with the graph, not with its square; a block larger than
// fullBlock is compared only between neighbours in name order.
const (
	// similarThreshold is the Jaro-Winkler similarity of two normalized
	// names from which they are worth asking about. It admits spelling
	// variants and extensions ("new york" / "new york city": 0.92,
	// "john smith" / "john smyth": 0.96) and leaves out unrelated names that
	// share a prefix ("alice" / "alicia": 0.89).
	similarThreshold = 0.9
	prefixRunes      = 3
	fullBlock        = 150
	blockWindow      = 25
	// sameNameGroup bounds the types compared for one normalized name.
	sameNameGroup = 8
)

// exactGroups returns the groups of entities that share normalized name
// and type: duplicates by the graph's own identity (graph.EntityKey is
// derived from exactly these), which only legacy writers or a missing
// unique constraint can have produced. They merge without asking the LLM.
// Each group lists the entity to keep first.
func exactGroups(es []entity) [][]int {
	by := map[[2]string][]int{}
	for i, e := range es {
		if e.Norm == "" {
			continue
		}
		k := [2]string{e.Type, e.Norm}
		by[k] = append(by[k], i)
	}
	var groups [][]int
	for _, g := range by {
		if len(g) < 2 {
			continue
		}
		slices.SortFunc(g, func(a, b int) int { return betterKeep(es[a], es[b]) })
		groups = append(groups, g)
	}
	slices.SortFunc(groups, func(a, b []int) int { return cmp.Compare(es[a[0]].ID, es[b[0]].ID) })
	return groups
}

// betterKeep orders entities by which should survive a merge: the most
// mentioned, then the best connected, then the oldest node (lowest id), so
// that the choice is deterministic.
func betterKeep(a, b entity) int {
	return cmp.Or(
		-cmp.Compare(a.Mentions, b.Mentions),
		-cmp.Compare(a.Degree, b.Degree),
		cmp.Compare(a.ID, b.ID),
	)
}

// candidatePairs returns the pairs the LLM should judge among reps (indexes
// of entities with distinct (type, normalized name)), best first, at most
// limit.
func candidatePairs(es []entity, reps []int, limit int) []pair {
	seen := map[[2]int]bool{}
	var out []pair
	add := func(a, b int, kind pairKind, score float64) {
		if a == b {
			return
		}
		if a > b {
			a, b = b, a
		}
		k := [2]int{a, b}
		if seen[k] {
			return
		}
		seen[k] = true
		out = append(out, pair{A: a, B: b, Kind: kind, Score: score})
	}

	sameName := map[string][]int{}
	blocks := map[string][]int{}
	for _, i := range reps {
		e := es[i]
		if e.Norm == "" {
			continue
		}
		sameName[e.Norm] = append(sameName[e.Norm], i)
		keys := []string{"p\x00" + e.Type + "\x00" + prefix(e.Norm, prefixRunes)}
		if strings.Contains(e.Norm, " ") {
			keys = append(keys, "t\x00"+e.Type+"\x00"+tokenSet(e.Norm))
		}
		if c := compact(e.Norm); c != "" {
			keys = append(keys, "c\x00"+e.Type+"\x00"+c)
		}
		for _, k := range keys {
			blocks[k] = append(blocks[k], i)
		}
	}
	for _, g := range sameName {
		g = g[:min(len(g), sameNameGroup)]
		for x := range g {
			for y := x + 1; y < len(g); y++ {
				add(g[x], g[y], kindSameName, 0.99)
			}
		}
	}
	for _, b := range sortedKeys(blocks) {
		members := blocks[b]
		if len(members) < 2 {
			continue
		}
		slices.SortFunc(members, func(x, y int) int {
			return cmp.Or(strings.Compare(es[x].Norm, es[y].Norm), cmp.Compare(es[x].ID, es[y].ID))
		})
		window := len(members)
		if window > fullBlock {
			window = blockWindow
		}
		for x := range members {
			for y := x + 1; y < len(members) && y <= x+window; y++ {
				a, c := es[members[x]], es[members[y]]
				if s, ok := similar(a.Norm, c.Norm); ok {
					add(members[x], members[y], kindSimilar, s)
				}
			}
		}
	}
	slices.SortFunc(out, func(p, q pair) int {
		return cmp.Or(-cmp.Compare(p.Score, q.Score), cmp.Compare(es[p.A].ID, es[q.A].ID), cmp.Compare(es[p.B].ID, es[q.B].ID))
	})
	if len(out) > limit {
		out = out[:limit]
	}
	return out
}

// similar reports whether two different normalized names are near-identical
// and how close they are: the same letters ("open ai" / "openai") or the
// same words in another order count as 0.98, otherwise the Jaro-Winkler
// similarity must reach similarThreshold. Names that both carry numbers,
// different ones, are different things however close they look.
func similar(a, b string) (float64, bool) {
	if a == b {
		return 0, false
	}
	if da, db := numbers(a), numbers(b); da != "" && db != "" && da != db {
		return 0, false // "iphone 14" and "iphone 15", "room 101" and "room 102"
	}
	if compact(a) != "" && compact(a) == compact(b) || tokenSet(a) == tokenSet(b) {
		return 0.98, true
	}
	s := jaroWinkler(a, b)
	return s, s >= similarThreshold
}

func prefix(s string, n int) string {
	i := 0
	for j := range s {
		if i == n {
			return s[:j]
		}
		i++
	}
	return s
}

// tokenSet is the sorted, de-duplicated words of s.
func tokenSet(s string) string {
	ws := strings.Fields(s)
	slices.Sort(ws)
	return strings.Join(slices.Compact(ws), " ")
}

// numbers keeps only the digits of s, each run of them ended by a space.
func numbers(s string) string {
	var b strings.Builder
	in := false
	for _, r := range s {
		if unicode.IsDigit(r) {
			b.WriteRune(r)
			in = true
		} else if in {
			b.WriteByte(' ')
			in = false
		}
	}
	return b.String()
}

// compact keeps only the letters and digits of s.
func compact(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsLetter(r) || unicode.IsDigit(r) {
			return r
		}
		return -1
	}, s)
}

// jaroWinkler is the Jaro-Winkler similarity of a and b in [0, 1], over
// runes, with the usual prefix scale 0.1 and prefix length up to 4.
func jaroWinkler(a, b string) float64 {
	ra, rb := []rune(a), []rune(b)
	if len(ra) == 0 && len(rb) == 0 {
		return 1
	}
	if len(ra) == 0 || len(rb) == 0 {
		return 0
	}
	window := max(len(ra), len(rb))/2 - 1
	window = max(window, 0)
	ma := make([]bool, len(ra))
	mb := make([]bool, len(rb))
	matches := 0
	for i, r := range ra {
		lo, hi := max(0, i-window), min(len(rb)-1, i+window)
		for j := lo; j <= hi; j++ {
			if !mb[j] && rb[j] == r {
				ma[i], mb[j] = true, true
				matches++
				break
			}
		}
	}
	if matches == 0 {
		return 0
	}
	transpositions, j := 0, 0
	for i := range ra {
		if !ma[i] {
			continue
		}
		for !mb[j] {
			j++
		}
		if ra[i] != rb[j] {
			transpositions++
		}
		j++
	}
	m := float64(matches)
	jaro := (m/float64(len(ra)) + m/float64(len(rb)) + (m-float64(transpositions)/2)/m) / 3
	l := 0
	for l < min(4, len(ra), len(rb)) && ra[l] == rb[l] {
		l++
	}
	return jaro + float64(l)*0.1*(1-jaro)
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// clipRunes cuts s to n runes for a prompt.
func clipRunes(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	return string([]rune(s)[:n-1]) + "…"
}
