package merge

import (
	"errors"
	"math"
	"testing"
)

func TestSimilarAdmitsVariantsAndLeavesOutMereNeighbours(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"new york city", "new york cty", true},
		{"new york", "new york city", true},
		{"john smith", "john smyth", true},
		{"open ai", "openai", true},          // same letters
		{"smith john", "john smith", true},   // same words
		{"o'reilly", "oreilly", true},        // same letters
		{"alice", "alicia", false},           // 0.89
		{"apple", "microsoft", false},        // unrelated
		{"cat", "car", false},                // short names differ a lot
		{"python", "python", false},          // identical is not "similar": exact groups handle it
		{"münchen", "munchen", true},         // runes, not bytes
		{"münchen", "muenchen", false},       // transliteration is for the LLM if anything, not this
		{"stargazer bot", "stargazer", true}, // prefix extension
		{"iphone 14", "iphone 15", false},    // different numbers: different things
		{"room 101", "room 110", false},
		{"python 3", "python3", true}, // same letters, same number
		{"python", "python 3", true},  // only one has a number: the LLM decides
	}
	for _, tt := range tests {
		t.Run(tt.a+"~"+tt.b, func(t *testing.T) {
			s, got := similar(tt.a, tt.b)
			if got != tt.want {
				t.Errorf("similar(%q, %q) = %.3f, %v; want %v", tt.a, tt.b, s, got, tt.want)
			}
		})
	}
}

func TestJaroWinklerKnownValues(t *testing.T) {
	tests := []struct {
		a, b string
		want float64
	}{
		{"martha", "marhta", 0.961},
		{"dwayne", "duane", 0.84},
		{"dixon", "dicksonx", 0.813},
		{"", "", 1},
		{"a", "", 0},
	}
	for _, tt := range tests {
		if got := jaroWinkler(tt.a, tt.b); math.Abs(got-tt.want) > 0.001 {
			t.Errorf("jaroWinkler(%q, %q) = %.4f, want %.3f", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestCandidatePairsStayWithinTypeExceptForTheSameName(t *testing.T) {
	es := []entity{
		{ID: 1, Key: "a", Norm: "new york city", Type: "place"},
		{ID: 2, Key: "b", Norm: "new york cty", Type: "place"},
		{ID: 3, Key: "c", Norm: "new york cty", Type: "band"}, // similar name, other type: no pair with 1
		{ID: 4, Key: "d", Norm: "apple", Type: "organization"},
		{ID: 5, Key: "e", Norm: "apple", Type: "fruit"}, // same name, other type: a pair
		{ID: 6, Key: "f", Norm: "zebra", Type: "animal"},
	}
	got := map[[2]int64]pairKind{}
	for _, p := range candidatePairs(es, []int{0, 1, 2, 3, 4, 5}, 100) {
		got[[2]int64{es[p.A].ID, es[p.B].ID}] = p.Kind
	}
	want := map[[2]int64]pairKind{{1, 2}: kindSimilar, {2, 3}: kindSameName, {4, 5}: kindSameName}
	if len(got) != len(want) {
		t.Fatalf("pairs %v, want %v", got, want)
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("pair %v: %v (present %v), want %v", k, g, ok, v)
		}
	}
	if n := len(candidatePairs(es, []int{0, 1, 2, 3, 4, 5}, 2)); n != 2 {
		t.Errorf("limit 2 gave %d pairs", n)
	}
}

func TestExactGroupsKeepTheMostMentionedEntity(t *testing.T) {
	es := []entity{
		{ID: 1, Key: "x1", Norm: "alice", Type: "person", Mentions: 2, Degree: 9},
		{ID: 2, Key: "x2", Norm: "alice", Type: "person", Mentions: 5},
		{ID: 3, Key: "x3", Norm: "alice", Type: "place", Mentions: 1},
		{ID: 4, Key: "x4", Norm: "alice", Type: "person", Mentions: 5, Degree: 1},
	}
	groups := exactGroups(es)
	if len(groups) != 1 || len(groups[0]) != 3 {
		t.Fatalf("groups %v, want one group of the three persons", groups)
	}
	if keep := es[groups[0][0]]; keep.ID != 4 {
		t.Errorf("kept %d, want 4 (most mentions, then degree)", keep.ID)
	}
}

func TestParseVerdictsIsStrict(t *testing.T) {
	tests := []struct {
		name     string
		content  string
		bad      bool
		valid    []int
		problems int
	}{
		{"all valid", `{"verdicts":[{"pair":1,"same":true,"keep":"b","confidence":0.9},{"pair":2,"same":false,"confidence":0.7}]}`, false, []int{1, 2}, 0},
		{"code fence", "```json\n" + `{"verdicts":[{"pair":1,"same":false,"confidence":1},{"pair":2,"same":false,"confidence":1}]}` + "\n```", false, []int{1, 2}, 0},
		{"extra fields are ignored", `{"verdicts":[{"pair":1,"same":false,"confidence":1,"reason":"x"},{"pair":2,"same":false,"confidence":1}],"note":1}`, false, []int{1, 2}, 0},
		{"garbage", `I think they are the same`, true, nil, 2},
		{"prose around JSON", `Sure! {"verdicts":[]}`, true, nil, 2},
		{"no verdicts", `{"results":[{"pair":1,"same":true}]}`, true, nil, 2},
		{"verdicts not an array", `{"verdicts":{"pair":1}}`, true, nil, 2},
		{"a pair missing", `{"verdicts":[{"pair":1,"same":false,"confidence":0.5}]}`, false, []int{1}, 1},
		{"same as a string", `{"verdicts":[{"pair":1,"same":"yes","keep":"a","confidence":0.9},{"pair":2,"same":false,"confidence":1}]}`, false, []int{2}, 2},
		{"pair as a string", `{"verdicts":[{"pair":"1","same":false,"confidence":0.9},{"pair":2,"same":false,"confidence":1}]}`, false, []int{2}, 2},
		{"fractional pair", `{"verdicts":[{"pair":1.5,"same":false,"confidence":0.9},{"pair":2,"same":false,"confidence":1}]}`, false, []int{2}, 2},
		{"unknown pair", `{"verdicts":[{"pair":3,"same":false,"confidence":0.9},{"pair":2,"same":false,"confidence":1}]}`, false, []int{2}, 2},
		{"same without keep", `{"verdicts":[{"pair":1,"same":true,"confidence":0.9},{"pair":2,"same":false,"confidence":1}]}`, false, []int{2}, 2},
		{"keep neither a nor b", `{"verdicts":[{"pair":1,"same":true,"keep":"c","confidence":0.9},{"pair":2,"same":false,"confidence":1}]}`, false, []int{2}, 2},
		{"confidence out of range", `{"verdicts":[{"pair":1,"same":true,"keep":"a","confidence":95},{"pair":2,"same":false,"confidence":1}]}`, false, []int{2}, 2},
		{"null confidence", `{"verdicts":[{"pair":1,"same":false,"confidence":null},{"pair":2,"same":false,"confidence":1}]}`, false, []int{2}, 2},
		{"pair judged twice", `{"verdicts":[{"pair":1,"same":true,"keep":"a","confidence":0.9},{"pair":1,"same":false,"confidence":0.9},{"pair":2,"same":false,"confidence":1}]}`, false, []int{2}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, problems, err := parseVerdicts(tt.content, 2)
			if tt.bad != (err != nil) {
				t.Fatalf("err = %v, want error: %v", err, tt.bad)
			}
			if err != nil && !errors.Is(err, ErrBadAnswer) {
				t.Errorf("err = %v, want ErrBadAnswer", err)
			}
			if len(got) != len(tt.valid) {
				t.Errorf("valid verdicts %v, want pairs %v", got, tt.valid)
			}
			for _, p := range tt.valid {
				if _, ok := got[p]; !ok {
					t.Errorf("no verdict for pair %d", p)
				}
			}
			if problems != tt.problems {
				t.Errorf("problems = %d, want %d", problems, tt.problems)
			}
		})
	}
}
