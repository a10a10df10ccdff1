package extract

import (
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
)

var t0 = time.UnixMilli(1_790_000_000_000)

func frags(n int) []Fragment {
	out := make([]Fragment, n)
	for i := range out {
		out[i] = Fragment{ID: "f" + string(rune('a'+i)), Text: "text", Time: t0.Add(time.Duration(i) * time.Minute)}
	}
	return out
}

func TestParseAnswerRejectsWhatIsNotTheSchema(t *testing.T) {
	for _, content := range []string{
		"", "not json", "[]", "null", `"entities"`, `{"entities": "alice"}`, `{"relationships": []}`,
		`{"entities": null}`, `{"entities": [], "relationships": {"a": 1}}`, `{"entities": [`, "```json\n{\"entities\": [\n```",
	} {
		if _, err := parseAnswer(content, frags(2)); !errors.Is(err, ErrBadAnswer) {
			t.Errorf("parseAnswer(%q) error = %v, want ErrBadAnswer", content, err)
		}
	}
}

func TestParseAnswerKeepsOnlyWhatFitsTheRules(t *testing.T) {
	long := strings.Repeat("x", MaxNameRunes+1)
	tests := []struct {
		name     string
		content  string
		entities []string // "type/name×mentions"
		rels     []string // "src -type-> dst"
		rejected int
	}{
		{"empty lists", `{"entities":[],"relationships":[]}`, nil, nil, 0},
		{"no relationships key", `{"entities":[{"name":"Alice","type":"person","messages":[1]}]}`,
			[]string{"person/Alice×1"}, nil, 0},
		{"a fenced answer", "```json\n{\"entities\":[{\"name\":\"Alice\",\"type\":\"person\"}]}\n```",
			[]string{"person/Alice×1"}, nil, 0},
		{"unknown fields are ignored", `{"entities":[{"name":"Alice","type":"person","confidence":0.9,"messages":[1,2]}],"notes":"x"}`,
			[]string{"person/Alice×2"}, nil, 0},
		{"empty, punctuation-only, over-long and mistyped names are dropped",
			`{"entities":[{"name":""},{"name":"  "},{"name":"!!"},{"name":"` + long + `"},{"name":42},{"type":"person"},{"name":"Bob","type":"person"}]}`,
			[]string{"person/Bob×1"}, nil, 6},
		{"a 200-character name is kept", `{"entities":[{"name":"` + long[:MaxNameRunes] + `","type":"topic"}]}`,
			[]string{"topic/" + long[:MaxNameRunes] + "×1"}, nil, 0},
		{"types are normalised onto the list", `{"entities":[{"name":"Acme","type":"Company"},{"name":"Go","type":"Programming Language"},{"name":"Paris","type":"LOCATION"},{"name":"X","type":"spaceship"},{"name":"Y"},{"name":"Zed","type":"persons"}]}`,
			[]string{"organization/Acme×1", "technology/Go×1", "place/Paris×1", "other/X×1", "other/Y×1", "person/Zed×1"}, nil, 0},
		{"the same entity twice is one row, mentions counted per message",
			`{"entities":[{"name":"Alice","type":"person","messages":[1,2]},{"name":"alice.","type":"Person","messages":[2,3,3,9,0,1.5,"2"]}]}`,
			[]string{"person/Alice×3"}, nil, 0},
		{"relationships: types in snake case, weights clamped, duplicates merged",
			`{"entities":[{"name":"Alice","type":"person"},{"name":"Acme","type":"organization"}],
			  "relationships":[{"source":"Alice","target":"Acme","type":"Works At","weight":3},
			                   {"source":"alice","target":"ACME","type":"works-at","weight":0.2},
			                   {"source":"Alice","target":"Acme","type":"likes","weight":"very"}]}`,
			[]string{"person/Alice×1", "organization/Acme×1"}, []string{"Alice -works_at-> Acme", "Alice -likes-> Acme"}, 0},
		{"relationships to unknown entities, self-loops, bad types and ambiguous names are dropped",
			`{"entities":[{"name":"Alice","type":"person"},{"name":"Acme","type":"organization"},{"name":"Mercury","type":"place"},{"name":"Mercury","type":"topic"}],
			  "relationships":[{"source":"Alice","target":"Bob","type":"knows"},{"source":"Alice","target":"Alice","type":"is"},
			                   {"source":"Alice","target":"Acme","type":"  "},{"source":"Alice","target":"Acme","type":"42"},
			                   {"source":"Alice","target":"Mercury","type":"visited"},{"source":"Alice","type":"x"},{"source":1,"target":"Acme","type":"x"},
			                   {"source":"Acme","target":"Alice","type":"employs"}]}`,
			[]string{"person/Alice×1", "organization/Acme×1", "place/Mercury×1", "topic/Mercury×1"}, []string{"Acme -employs-> Alice"}, 7},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := parseAnswer(tt.content, frags(3))
			if err != nil {
				t.Fatal(err)
			}
			var ents []string
			names := map[string]string{}
			for _, e := range p.Entities {
				ents = append(ents, e.Type+"/"+e.Name+"×"+strconv.FormatInt(e.Mentions, 10))
				names[e.Key] = e.Name
				if e.Key != graph.EntityKey(e.Name, e.Type) || e.Norm != graph.NormalizeName(e.Name) {
					t.Errorf("entity %+v: key or normalized name do not follow graph's", e)
				}
			}
			var rels []string
			for _, r := range p.Relationships {
				rels = append(rels, names[r.Src]+" -"+r.Type+"-> "+names[r.Dst])
				if r.Weight < minWeight || r.Weight > 1 {
					t.Errorf("relationship %+v: weight outside [%v, 1]", r, minWeight)
				}
			}
			if strings.Join(ents, ",") != strings.Join(tt.entities, ",") || strings.Join(rels, ",") != strings.Join(tt.rels, ",") || p.Rejected != tt.rejected {
				t.Errorf("got entities %q rels %q rejected %d\nwant entities %q rels %q rejected %d", ents, rels, p.Rejected, tt.entities, tt.rels, tt.rejected)
			}
		})
	}
}

func TestParseAnswerDatesMentionsByTheirMessages(t *testing.T) {
	b := frags(3)
	p, err := parseAnswer(`{"entities":[{"name":"Alice","type":"person","messages":[3,1]},{"name":"Bob","type":"person"}],
		"relationships":[{"source":"Alice","target":"Bob","type":"knows","weight":0.7}]}`, b)
	if err != nil {
		t.Fatal(err)
	}
	a, bob := p.Entities[0], p.Entities[1]
	if a.Mentions != 2 || a.First != b[0].Time.UnixMilli() || a.Last != b[2].Time.UnixMilli() || a.Source != b[2].ID {
		t.Errorf("Alice = %+v", a)
	}
	// Without message numbers: one mention, dated by the batch's latest fragment.
	if bob.Mentions != 1 || bob.First != b[2].Time.UnixMilli() || bob.Source != b[2].ID {
		t.Errorf("Bob = %+v", bob)
	}
	if r := p.Relationships[0]; r.Weight != 0.7 || r.Last != b[2].Time.UnixMilli() {
		t.Errorf("relationship = %+v", r)
	}
}

func TestParseAnswerBoundsARunawayAnswer(t *testing.T) {
	var b strings.Builder
	b.WriteString(`{"entities":[`)
	for i := range 100 {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(`{"name":"E` + strconv.Itoa(i) + `","type":"topic"}`)
	}
	b.WriteString(`]}`)
	p, err := parseAnswer(b.String(), frags(2))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Entities) != 2*maxEntitiesPerFragment || p.Rejected != 100-2*maxEntitiesPerFragment {
		t.Errorf("%d entities kept, %d rejected", len(p.Entities), p.Rejected)
	}
}

func TestCutBatchesByCountAndCharactersAndHalvesAfterFailures(t *testing.T) {
	e := &Engine{cfg: Config{BatchMessages: 8, BatchChars: 1000, MaxFragmentRunes: DefaultMaxFragmentRunes}}
	short := func(n int) []Fragment {
		out := make([]Fragment, n)
		for i := range out {
			out[i] = Fragment{ID: strconv.Itoa(i), Text: "hi"}
		}
		return out
	}
	sizes := func(bs [][]int) []int {
		var out []int
		for _, b := range bs {
			out = append(out, len(b))
		}
		return out
	}
	tests := []struct {
		name     string
		frags    []Fragment
		failures []int
		want     []int
	}{
		{"by count", short(20), make([]int, 20), []int{8, 8, 4}},
		{"by characters", append(short(3), Fragment{ID: "long", Text: strings.Repeat("x", 900)}, Fragment{ID: "after", Text: "x"}), make([]int, 5), []int{3, 1, 1}},
		{"a fragment longer than the budget is a batch of its own", []Fragment{{ID: "a", Text: "x"}, {ID: "huge", Text: strings.Repeat("x", 5000)}}, []int{0, 0}, []int{1, 1}},
		{"failed fragments go in halved batches", short(12), []int{1, 1, 1, 1, 1, 1, 3, 0, 0, 0, 0, 0}, []int{4, 2, 1, 5}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := sizes(e.cut(tt.frags, tt.failures)); !slices.Equal(got, tt.want) {
				t.Errorf("batch sizes %v, want %v", got, tt.want)
			}
		})
	}
}
