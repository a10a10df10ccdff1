package layers

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/stargazer/stargazer-jobs/"

// pkg is what go list says of a package.
type pkg struct {
	ImportPath string
	Imports    []string
	Deps       []string
}

// rule forbids the packages under from importing anything under the
// forbidden prefixes; transitive extends it to every dependency.
type rule struct {
	under      []string
	forbidden  []string
	transitive bool
	why        string
}

var rules = []rule{
	{under: []string{"jobs"}, forbidden: []string{""}, why: "jobs imports nothing of ours"},
	{under: []string{"internal/clients/", "internal/store/"},
		forbidden: []string{"handlers", "internal/app", "monitor", "cmd/", "internal/queue/server", "internal/queue/periodic", "internal/kg/"},
		why:       "clients and stores are adapters"},
	{under: []string{"internal/kg/"}, forbidden: []string{"handlers", "internal/app", "monitor", "cmd/", "internal/queue/"},
		why: "the knowledge graph is a domain layer below the handlers"},
	{under: []string{"internal/queue/"}, forbidden: []string{"handlers", "internal/app", "monitor", "cmd/", "internal/store/", "internal/kg/", "internal/clients/"},
		why: "the queue machinery runs tasks without knowing them"},
	{under: []string{"internal/config"}, forbidden: []string{"handlers", "internal/app", "monitor", "cmd/", "internal/queue/", "internal/store/", "internal/kg/", "internal/clients/"},
		why: "configuration is read by the layers, it does not use them"},
	{under: []string{"handlers"}, forbidden: []string{"internal/app", "monitor", "cmd/"}, why: "handlers sit below the process wiring"},
	{under: []string{"monitor"}, forbidden: []string{"handlers", "internal/app", "cmd/", "internal/kg/", "internal/clients/"}, why: "the monitor never runs task code"},
	{under: []string{"cmd/enqueuer"}, forbidden: []string{"handlers", "internal/kg/graph", "internal/clients/llm", "internal/app"}, transitive: true,
		why: "the CLI never links the handler stack"},
	{under: []string{""}, forbidden: []string{"internal/testkit/", "internal/clients/llm/llmtest", "internal/clients/gemini/geminitest", "internal/kg/extract/extracttest"},
		why: "test fakes stay out of production code"},
}

// exempt lists packages that are test programs themselves.
var exempt = []string{"internal/testkit/", "internal/e2e", "cmd/devfake", "bench", "internal/clients/llm/llmtest",
	"internal/clients/gemini/geminitest", "internal/kg/extract/extracttest", "internal/layers"}

func list(t *testing.T) []pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-json=ImportPath,Imports,Deps", module+"...")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

func under(path string, prefixes []string) bool {
	for _, p := range prefixes {
		switch {
		case p == "", path == p, path == strings.TrimSuffix(p, "/"):
			return true
		case strings.HasSuffix(p, "/") && strings.HasPrefix(path, p):
			return true
		case strings.HasPrefix(path, p+"/"):
			return true
		}
	}
	return false
}

func TestImportsFlowOneWay(t *testing.T) {
	pkgs := list(t)
	if len(pkgs) < 20 {
		t.Fatalf("go list found %d packages", len(pkgs))
	}
	for _, p := range pkgs {
		path := strings.TrimPrefix(p.ImportPath, module)
		for _, r := range rules {
			if !under(path, r.under) || (r.under[0] == "" && under(path, exempt)) {
				continue
			}
			imports := p.Imports
			if r.transitive {
				imports = p.Deps
			}
			for _, imp := range imports {
				if !strings.HasPrefix(imp, module) {
					continue
				}
				dep := strings.TrimPrefix(imp, module)
				if under(dep, r.forbidden) && dep != path {
					t.Errorf("%s imports %s: %s", path, dep, r.why)
				}
			}
		}
	}
}

// The rules must bite: each forbidden edge is caught.
func TestUnderMatchesPrefixesAndWholeNames(t *testing.T) {
	for _, tt := range []struct {
		path     string
		prefixes []string
		want     bool
	}{
		{"handlers", []string{"handlers"}, true},
		{"handlersx", []string{"handlers"}, false},
		{"handlers/sub", []string{"handlers"}, true},
		{"internal/kg/graph", []string{"internal/kg/"}, true},
		{"internal/kgx", []string{"internal/kg/"}, false},
		{"internal/queue/server", []string{"internal/queue/server"}, true},
		{"anything", []string{""}, true},
	} {
		if got := under(tt.path, tt.prefixes); got != tt.want {
			t.Errorf("under(%q, %q) = %v, want %v", tt.path, tt.prefixes, got, tt.want)
		}
	}
}
