package merge

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/clients/llm/llmtest"
	"github.com/stargazer/stargazer-jobs/internal/kg/graph"
	"github.com/stargazer/stargazer-jobs/internal/testkit/falkortest"
)

// ent is an entity to create; Key defaults to graph.EntityKey(Name, Type).
type ent struct {
	Name, Type string
	Key        string
	Mentions   int64
	First      int64
	Last       int64
}

func (e ent) key() string {
	if e.Key != "" {
		return e.Key
	}
	return graph.EntityKey(e.Name, e.Type)
}

func addEntities(t *testing.T, g *graph.Graph, es ...ent) {
	t.Helper()
	rows := make([]any, len(es))
	for i, e := range es {
		rows[i] = map[string]any{"key": e.key(), "name": e.Name, "norm": graph.NormalizeName(e.Name),
			"type": graph.NormalizeName(e.Type), "m": e.Mentions, "f": e.First, "l": e.Last}
	}
	falkortest.Exec(t, g, `UNWIND $rows AS r CREATE (:Entity {key: r.key, name: r.name, normalized_name: r.norm, type: r.type,
mention_count: r.m, first_seen: r.f, last_seen: r.l})`, map[string]any{"rows": rows})
}

// rel is a relationship to create, between keys. CREATE, not MERGE: tests
// build parallel duplicates on purpose.
type rel struct {
	From, Type, To string
	Weight         float64
	Last           int64
}

func addRels(t *testing.T, g *graph.Graph, rs ...rel) {
	t.Helper()
	for _, r := range rs {
		res := falkortest.Exec(t, g, `MATCH (a {key: $a}), (b {key: $b}) CREATE (a)-[:REL {type: $t, weight: $w, last_seen: $l}]->(b)`,
			map[string]any{"a": r.From, "b": r.To, "t": r.Type, "w": r.Weight, "l": r.Last})
		if res.Stats.RelationshipsCreated != 1 {
			t.Fatalf("relationship %+v: created %d (endpoints must exist exactly once)", r, res.Stats.RelationshipsCreated)
		}
	}
}

// snapshot renders the whole graph, sorted, for comparisons: nodes with
// their properties, relationships by the keys of their ends.
func snapshot(t *testing.T, g *graph.Graph) string {
	t.Helper()
	var lines []string
	res := falkortest.Exec(t, g, `MATCH (n) RETURN labels(n)[0], n.key, n.name, n.type, n.mention_count, n.first_seen, n.last_seen, n.aliases`, nil)
	for _, row := range res.Rows {
		lines = append(lines, fmt.Sprintf("node %v", row))
	}
	res = falkortest.Exec(t, g, `MATCH (a)-[r:REL]->(b) RETURN coalesce(a.name, a.key), r.type, coalesce(b.name, b.key), r.weight, r.last_seen, r.organised`, nil)
	for _, row := range res.Rows {
		lines = append(lines, fmt.Sprintf("rel %v", row))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// relsOf lists "from -type-> to weight last" of every relationship, sorted.
func relsOf(t *testing.T, g *graph.Graph) []string {
	t.Helper()
	res := falkortest.Exec(t, g, `MATCH (a)-[r:REL]->(b) RETURN a.name, r.type, b.name, r.weight, r.last_seen`, nil)
	var out []string
	for _, row := range res.Rows {
		out = append(out, fmt.Sprintf("%v -%v-> %v %v %v", row[0], row[1], row[2], row[3], row[4]))
	}
	slices.Sort(out)
	return out
}

// fakeLLM is an OpenAI-compatible chat/completions server. answer gets the
// pairs of each prompt (parsed back from its JSON lines) and returns the
// HTTP status, a Retry-After value and the message content.
type fakeLLM struct {
	srv    *httptest.Server
	mu     sync.Mutex
	calls  int
	seen   []promptPair
	answer func(pairs []promptPair) (status int, retryAfter, content string)
}

func newFakeLLM(t *testing.T, answer func(pairs []promptPair) (int, string, string)) *fakeLLM {
	f := &fakeLLM{answer: answer}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Model          string        `json:"model"`
			Messages       []llm.Message `json:"messages"`
			ResponseFormat *struct {
				Type string `json:"type"`
			} `json:"response_format"`
		}
		if r.URL.Path != "/v1/chat/completions" || json.NewDecoder(r.Body).Decode(&req) != nil || len(req.Messages) == 0 {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		if req.ResponseFormat == nil || req.ResponseFormat.Type != "json_object" {
			http.Error(w, "expected JSON mode", http.StatusBadRequest)
			return
		}
		var pairs []promptPair
		for _, line := range strings.Split(req.Messages[len(req.Messages)-1].Content, "\n") {
			var p promptPair
			if strings.HasPrefix(line, `{"pair":`) && json.Unmarshal([]byte(line), &p) == nil {
				pairs = append(pairs, p)
			}
		}
		f.mu.Lock()
		f.calls++
		f.seen = append(f.seen, pairs...)
		answer := f.answer
		f.mu.Unlock()
		status, retryAfter, content := answer(pairs)
		if retryAfter != "" {
			w.Header().Set("Retry-After", retryAfter)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		if status != http.StatusOK {
			_, _ = io.WriteString(w, `{"error":{"message":"nope"}}`)
			return
		}
		_, _ = w.Write(llmtest.Completion(req.Model, content, llm.Usage{PromptTokens: 10, CompletionTokens: 5, TotalTokens: 15}))
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeLLM) client() *llm.Client {
	return llm.New(llm.Options{BaseURL: f.srv.URL + "/v1", APIKey: "sk-test"})
}

// Seen returns every pair shown to the model.
func (f *fakeLLM) Seen() []promptPair {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.seen)
}

func (f *fakeLLM) Calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// sameNames answers "same, keep the longer name" for pairs whose two names
// are both in one of groups, "distinct" otherwise.
func sameNames(groups ...[]string) func([]promptPair) (int, string, string) {
	return func(pairs []promptPair) (int, string, string) {
		type v struct {
			Pair       int     `json:"pair"`
			Same       bool    `json:"same"`
			Keep       string  `json:"keep,omitempty"`
			Confidence float64 `json:"confidence"`
		}
		var out []v
		for _, p := range pairs {
			same := false
			for _, g := range groups {
				if slices.Contains(g, p.A.Name) && slices.Contains(g, p.B.Name) {
					same = true
				}
			}
			keep := "a"
			if len(p.B.Name) > len(p.A.Name) {
				keep = "b"
			}
			if !same {
				keep = ""
			}
			out = append(out, v{Pair: p.Pair, Same: same, Keep: keep, Confidence: 0.95})
		}
		b, _ := json.Marshal(map[string]any{"verdicts": out})
		return http.StatusOK, "", string(b)
	}
}
