package extract

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
)

// ErrBadAnswer is an LLM answer that is not the extraction schema at all:
// not a JSON object, or without an "entities" list. Nothing of the batch
// is written. Items that merely break a rule (an empty name, an unknown
// endpoint) are dropped one by one and counted in Counts.Rejected instead.
var ErrBadAnswer = errors.New("extract: LLM answer is not the extraction schema")

// Limits of what is accepted from an answer.
const (
	// MaxNameRunes: a longer "name" is a sentence, not an entity.
	MaxNameRunes = 200
	// maxTypeRunes bounds entity and relationship types.
	maxTypeRunes = 50
	// defaultWeight is a relationship's weight when the answer gives none
	// (or an unusable one); minWeight keeps a stated relationship above
	// the decay job's pruning threshold at first sight.
	defaultWeight = 0.5
	minWeight     = 0.1
	// Per fragment, at most this many entities and twice as many
	// relationships are taken from one answer; a runaway answer cannot
	// flood the graph.
	maxEntitiesPerFragment = 12
)

// EntityTypes are the entity types the prompt offers. An answer's type is
// normalised (case, spaces, synonyms) and anything else becomes "other":
// the type is part of an entity's identity (graph.EntityKey), so a closed
// list keeps "Alice" one node instead of one per word a model picks.
var EntityTypes = []string{"person", "organization", "place", "project", "product", "technology", "event", "topic", "other"}

var typeSynonyms = map[string]string{
	"people": "person", "human": "person", "user": "person", "individual": "person", "character": "person",
	"organisation": "organization", "org": "organization", "company": "organization", "business": "organization",
	"team": "organization", "group": "organization", "institution": "organization", "community": "organization",
	"server": "organization", "guild": "organization",
	"location": "place", "city": "place", "country": "place", "region": "place", "venue": "place", "address": "place",
	"software": "technology", "tool": "technology", "language": "technology", "programming_language": "technology",
	"framework": "technology", "library": "technology", "protocol": "technology", "tech": "technology",
	"app": "product", "application": "product", "service": "product", "game": "product", "device": "product",
	"repository": "project", "repo": "project",
	"meeting": "event", "release": "event", "incident": "event",
	"concept": "topic", "idea": "topic", "subject": "topic", "theme": "topic", "skill": "topic", "interest": "topic",
}

// answer is the schema the prompt asks for. Unknown fields anywhere are
// ignored.
type answer struct {
	Entities      []json.RawMessage `json:"entities"`
	Relationships []json.RawMessage `json:"relationships"`
}

type answerEntity struct {
	Name     string            `json:"name"`
	Type     string            `json:"type"`
	Messages []json.RawMessage `json:"messages"`
}

type answerRelationship struct {
	Source string          `json:"source"`
	Target string          `json:"target"`
	Type   string          `json:"type"`
	Weight json.RawMessage `json:"weight"`
}

// entityRow is one entity to upsert, aggregated over a batch: what the
// graph write sends per node.
type entityRow struct {
	Key      string `json:"key"`
	Name     string `json:"name"`
	Norm     string `json:"norm"`
	Type     string `json:"type"`
	Mentions int64  `json:"mentions"` // distinct fragments that mention it
	First    int64  `json:"first"`    // ms
	Last     int64  `json:"last"`     // ms
	Source   string `json:"source"`   // ID of the latest mentioning fragment
}

// relRow is one relationship to upsert, unique per (Src, Type, Dst) in a
// batch: FalkorDB crashes on a repeated edge in one MERGE … ON MATCH SET.
type relRow struct {
	Src    string  `json:"src"`
	Dst    string  `json:"dst"`
	Type   string  `json:"type"`
	Weight float64 `json:"weight"`
	Last   int64   `json:"last"`
}

// parsed is a validated answer.
type parsed struct {
	Entities      []entityRow `json:"entities"`
	Relationships []relRow    `json:"relationships"`
	Rejected      int         `json:"rejected"`
}

// parseAnswer validates content against the schema for batch (whose
// fragments the answer's message numbers, 1-based, refer to) and returns
// the rows to write. A content that is not the schema is ErrBadAnswer;
// items that break a rule are dropped and counted.
func parseAnswer(content string, batch []Fragment) (parsed, error) {
	var a answer
	body := []byte(stripFence(content))
	if err := json.Unmarshal(body, &a); err != nil {
		return parsed{}, fmt.Errorf("%w: %v: %s", ErrBadAnswer, err, excerpt(content))
	}
	if a.Entities == nil { // missing or null ("entities": [] is an empty list)
		return parsed{}, fmt.Errorf("%w: no \"entities\" list: %s", ErrBadAnswer, excerpt(content))
	}
	var out parsed
	last := batch[0]
	for _, f := range batch[1:] {
		if f.Time.After(last.Time) {
			last = f
		}
	}
	byKey := map[string]int{}         // entity key -> index in out.Entities
	byName := map[string][]int{}      // normalized name -> indexes (one per type)
	seen := map[string]map[int]bool{} // entity key -> fragments counted
	for _, raw := range a.Entities {
		if len(out.Entities) >= maxEntitiesPerFragment*len(batch) {
			out.Rejected++
			continue
		}
		var e answerEntity
		if json.Unmarshal(raw, &e) != nil {
			out.Rejected++
			continue
		}
		name, norm, ok := cleanName(e.Name)
		if !ok {
			out.Rejected++
			continue
		}
		typ := entityType(e.Type)
		key := graph.EntityKey(norm, typ)
		refs := messageRefs(e.Messages, len(batch))
		if len(refs) == 0 {
			refs = []int{indexOf(batch, last)} // unattributed: one mention, the batch's latest
		}
		i, ok := byKey[key]
		if !ok {
			i = len(out.Entities)
			byKey[key] = i
			byName[norm] = append(byName[norm], i)
			seen[key] = map[int]bool{}
			out.Entities = append(out.Entities, entityRow{Key: key, Name: name, Norm: norm, Type: typ, First: math.MaxInt64, Last: math.MinInt64})
		}
		row := &out.Entities[i]
		for _, r := range refs {
			if seen[key][r] {
				continue
			}
			seen[key][r] = true
			row.Mentions++
			t := batch[r].Time.UnixMilli()
			row.First = min(row.First, t)
			if t >= row.Last {
				row.Last, row.Source = t, batch[r].ID
			}
		}
	}

	rels := map[[3]string]int{}
	for _, raw := range a.Relationships {
		if len(out.Relationships) >= 2*maxEntitiesPerFragment*len(batch) {
			out.Rejected++
			continue
		}
		var r answerRelationship
		if json.Unmarshal(raw, &r) != nil {
			out.Rejected++
			continue
		}
		src, ok1 := resolve(byName, out.Entities, r.Source)
		dst, ok2 := resolve(byName, out.Entities, r.Target)
		typ, ok3 := relationType(r.Type)
		if !ok1 || !ok2 || !ok3 || src == dst {
			out.Rejected++
			continue
		}
		w := weight(r.Weight)
		at := max(out.Entities[byKey[src]].Last, out.Entities[byKey[dst]].Last)
		k := [3]string{src, typ, dst}
		if i, ok := rels[k]; ok { // said twice in one answer: one statement
			out.Relationships[i].Weight = max(out.Relationships[i].Weight, w)
			continue
		}
		rels[k] = len(out.Relationships)
		out.Relationships = append(out.Relationships, relRow{Src: src, Dst: dst, Type: typ, Weight: w, Last: at})
	}
	return out, nil
}

// stripFence removes a Markdown code fence some models put around JSON
// even in JSON mode.
func stripFence(s string) string {
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(s, "```") {
		return s
	}
	s = strings.TrimPrefix(s, "```")
	if nl := strings.IndexByte(s, '\n'); nl >= 0 && !strings.ContainsAny(s[:nl], "{[") {
		s = s[nl+1:] // the language tag line
	}
	return strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(s), "```"))
}

// cleanName returns the display form (whitespace collapsed) and the
// normalized form of an entity name, or false for a name that is empty,
// only punctuation, or longer than MaxNameRunes.
func cleanName(s string) (name, norm string, ok bool) {
	name = strings.Join(strings.FieldsFunc(s, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }), " ")
	if name == "" || utf8.RuneCountInString(name) > MaxNameRunes {
		return "", "", false
	}
	norm = graph.NormalizeName(name)
	return name, norm, norm != ""
}

// entityType maps an answer's type onto EntityTypes.
func entityType(s string) string {
	t := snake(s)
	if syn, ok := typeSynonyms[t]; ok {
		return syn
	}
	for _, known := range EntityTypes {
		if t == known {
			return t
		}
	}
	if strings.HasSuffix(t, "s") { // "people" is a synonym; "persons", "places" are plurals
		if u := strings.TrimSuffix(t, "s"); u != "other" {
			for _, known := range EntityTypes {
				if u == known {
					return u
				}
			}
		}
	}
	return "other"
}

// relationType is a relationship type in lower snake_case ("Works At",
// "works-at", "WORKS_AT" → works_at), or false when nothing usable is
// left. Relationship types are free (relations are an open vocabulary),
// but one spelling per relation matters: MERGE matches the type exactly.
func relationType(s string) (string, bool) {
	t := snake(s)
	if t == "" || utf8.RuneCountInString(t) > maxTypeRunes {
		return "", false
	}
	if r, _ := utf8.DecodeRuneInString(t); !unicode.IsLetter(r) {
		return "", false
	}
	return t, true
}

// snake folds s and joins its runs of letters and digits with "_".
func snake(s string) string {
	words := strings.FieldsFunc(graph.NormalizeName(s), func(r rune) bool {
		return !unicode.IsLetter(r) && !unicode.IsDigit(r)
	})
	return strings.Join(words, "_")
}

// messageRefs returns the distinct valid 0-based fragment indexes of an
// entity's "messages" (1-based numbers; non-integers and numbers out of
// range are ignored).
func messageRefs(raw []json.RawMessage, n int) []int {
	var out []int
	seen := map[int]bool{}
	for _, r := range raw {
		var f float64
		if json.Unmarshal(r, &f) != nil || f != math.Trunc(f) || f < 1 || f > float64(n) {
			continue
		}
		if i := int(f) - 1; !seen[i] {
			seen[i] = true
			out = append(out, i)
		}
	}
	return out
}

// resolve finds the entity an endpoint names, by normalized name among the
// answer's entities. A name shared by entities of different types is
// ambiguous and resolves to nothing.
func resolve(byName map[string][]int, ents []entityRow, name string) (string, bool) {
	_, norm, ok := cleanName(name)
	if !ok {
		return "", false
	}
	idx := byName[norm]
	if len(idx) != 1 {
		return "", false
	}
	return ents[idx[0]].Key, true
}

// weight reads a relationship's weight: a number, clamped to
// [minWeight, 1]; anything else is defaultWeight.
func weight(raw json.RawMessage) float64 {
	var w float64
	if len(raw) == 0 || json.Unmarshal(raw, &w) != nil || math.IsNaN(w) || w <= 0 {
		return defaultWeight
	}
	return math.Max(minWeight, math.Min(1, w))
}

func indexOf(batch []Fragment, f Fragment) int {
	for i := range batch {
		if batch[i].ID == f.ID {
			return i
		}
	}
	return 0
}

func excerpt(s string) string {
	s = strings.TrimSpace(s)
	if r := []rune(s); len(r) > 200 {
		return string(r[:200]) + "…"
	}
	return s
}
