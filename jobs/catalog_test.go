package jobs

import (
	"strings"
	"testing"

	"github.com/stargazer/stargazer-jobs/internal/testkit/original"
)

// fromOriginal maps the original's requires_* names onto Requirement.
var fromOriginal = map[string]Requirement{
	"redis": Redis, "kg": KG, "openrouter": LLM, "bot_runner": BotRuntime, "chat_llm": ChatLLM, "config": Config,
}

func TestCatalogMatchesOriginalDecorators(t *testing.T) {
	orig, err := original.Tasks()
	if err != nil {
		t.Fatal(err)
	}
	if len(orig) != 16 {
		t.Fatalf("parsed %d decorated tasks from the original, want 16", len(orig))
	}
	for _, o := range orig {
		t.Run(o.Name, func(t *testing.T) {
			s, ok := Lookup(o.Name)
			if !ok {
				t.Fatalf("catalog has no task %q", o.Name)
			}
			var req Requirement
			for _, r := range o.Requires {
				req |= fromOriginal[r]
			}
			wantKind := Periodic
			if s.Name == JournalStream || s.Name == LogRAGIngest {
				wantKind = NodeLocal // reads this node's journal: every node runs it, as the original did
			}
			if s.Kind != wantKind {
				t.Errorf("kind = %s, want %s", s.Kind, wantKind)
			}
			if s.Interval != o.Interval {
				t.Errorf("interval = %v, want %v", s.Interval, o.Interval)
			}
			if s.InitialDelay != o.InitialDelay {
				t.Errorf("initial delay = %v, want %v", s.InitialDelay, o.InitialDelay)
			}
			if s.Requires != req {
				t.Errorf("requires = %v, want %v", s.Requires, req)
			}
			if s.OptInFlag != o.OptIn {
				t.Errorf("opt-in flag = %q, want %q", s.OptInFlag, o.OptIn)
			}
		})
	}
}

func TestCatalogHasSupervisorLoopsAndBackfill(t *testing.T) {
	src, err := original.Source()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{LimbicDedup, LimbicOrg, StartupChannelBackfill} {
		if !strings.Contains(src, "async def "+name+"(") {
			t.Errorf("original has no function %s", name)
		}
		s, ok := Lookup(name)
		if !ok {
			t.Fatalf("catalog has no task %q", name)
		}
		if !s.Singleton {
			t.Errorf("%s must be a singleton", name)
		}
	}
	original := 0
	for _, s := range Catalog() {
		if s.Kind != Child {
			original++
		}
	}
	if original != 19 {
		t.Errorf("catalog has %d tasks of the original, want 19 (16 decorated + 2 supervised + backfill)", original)
	}
}

func TestCatalogSpecsAreWellFormed(t *testing.T) {
	seen := map[string]bool{}
	queues := Queues()
	for _, s := range Catalog() {
		if seen[s.Name] {
			t.Errorf("duplicate task %s", s.Name)
		}
		seen[s.Name] = true
		if _, ok := queues[s.Queue]; !ok {
			t.Errorf("%s: unknown queue %q", s.Name, s.Queue)
		}
		if s.Timeout <= 0 || s.MaxRetry < 0 {
			t.Errorf("%s: timeout %v, max retry %d", s.Name, s.Timeout, s.MaxRetry)
		}
		if s.Kind != Startup && s.Kind != Child && s.Interval <= 0 {
			t.Errorf("%s: %s task without an interval", s.Name, s.Kind)
		}
		if s.NewPayload == nil {
			t.Fatalf("%s: no payload constructor", s.Name)
		}
		// A child's payload names its work (a channel, message keys): it has
		// no valid default.
		if err := s.NewPayload().Validate(); err != nil && s.Kind != Child {
			t.Errorf("%s: default payload invalid: %v", s.Name, err)
		}
		if s.Summary == "" {
			t.Errorf("%s: no summary", s.Name)
		}
	}
}

func TestSpecDeclaresWhatItRequiresOrNeeds(t *testing.T) {
	s := Spec{Requires: KG | ChatLLM, Needs: Redis}
	for _, tt := range []struct {
		r    Requirement
		want bool
	}{
		{KG, true}, {Redis, true}, {KG | Redis, true}, {LLM, false}, {Redis | LLM, false},
	} {
		if got := s.Declares(tt.r); got != tt.want {
			t.Errorf("Declares(%v) = %v, want %v", tt.r, got, tt.want)
		}
	}
}
