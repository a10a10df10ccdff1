package jobs

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

type originalTask struct {
	name         string
	interval     time.Duration
	initialDelay time.Duration
	requires     Requirement
	optIn        string
}

var (
	decoratorRe = regexp.MustCompile(`@background_task\(([^()]*)\)\s*async def (\w+)\(`)
	argRe       = regexp.MustCompile(`(\w+)=("[^"]*"|[\w.]+)`)
)

// parseOriginal reads the @background_task decorators out of the original
// module, so the parity test checks the catalog against the source rather
// than against a second hand-written table.
func parseOriginal(t *testing.T) []originalTask {
	t.Helper()
	src, err := os.ReadFile("testdata/background_tasks_original.txt")
	if err != nil {
		t.Fatal(err)
	}
	flags := map[string]Requirement{
		"requires_redis": Redis, "requires_kg": KG, "requires_openrouter": LLM,
		"requires_bot_runner": BotRuntime, "requires_chat_llm": ChatLLM, "requires_config": Config,
	}
	var out []originalTask
	for _, m := range decoratorRe.FindAllStringSubmatch(string(src), -1) {
		ot := originalTask{name: m[2]}
		for _, a := range argRe.FindAllStringSubmatch(m[1], -1) {
			key, val := a[1], strings.Trim(a[2], `"`)
			switch key {
			case "interval", "initial_delay":
				f, err := strconv.ParseFloat(strings.ReplaceAll(val, "_", ""), 64)
				if err != nil {
					t.Fatalf("%s: %s=%q: %v", m[2], key, val, err)
				}
				d := time.Duration(f * float64(time.Second))
				if key == "interval" {
					ot.interval = d
				} else {
					ot.initialDelay = d
				}
			case "name":
				ot.name = val
			case "opt_in_config_flag":
				ot.optIn = val
			default:
				r, ok := flags[key]
				if !ok {
					t.Fatalf("%s: unknown decorator argument %s", m[2], key)
				}
				if val == "True" {
					ot.requires |= r
				}
			}
		}
		out = append(out, ot)
	}
	return out
}

func TestCatalogMatchesOriginalDecorators(t *testing.T) {
	orig := parseOriginal(t)
	if len(orig) != 16 {
		t.Fatalf("parsed %d decorated tasks from the original, want 16", len(orig))
	}
	for _, o := range orig {
		t.Run(o.name, func(t *testing.T) {
			s, ok := Lookup(o.name)
			if !ok {
				t.Fatalf("catalog has no task %q", o.name)
			}
			if s.Kind != Periodic {
				t.Errorf("kind = %s, want periodic", s.Kind)
			}
			if s.Interval != o.interval {
				t.Errorf("interval = %v, want %v", s.Interval, o.interval)
			}
			if s.InitialDelay != o.initialDelay {
				t.Errorf("initial delay = %v, want %v", s.InitialDelay, o.initialDelay)
			}
			if s.Requires != o.requires {
				t.Errorf("requires = %v, want %v", s.Requires, o.requires)
			}
			if s.OptInFlag != o.optIn {
				t.Errorf("opt-in flag = %q, want %q", s.OptInFlag, o.optIn)
			}
		})
	}
}

func TestCatalogHasSupervisorLoopsAndBackfill(t *testing.T) {
	src, err := os.ReadFile("testdata/background_tasks_original.txt")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{LimbicDedup, LimbicOrg, StartupChannelBackfill} {
		if !strings.Contains(string(src), "async def "+name+"(") {
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
	if got := len(Catalog()); got != 19 {
		t.Errorf("catalog has %d tasks, want 19 (16 decorated + 2 supervised + backfill)", got)
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
		if s.Kind != Startup && s.Interval <= 0 {
			t.Errorf("%s: %s task without an interval", s.Name, s.Kind)
		}
		if s.NewPayload == nil {
			t.Fatalf("%s: no payload constructor", s.Name)
		}
		if err := s.NewPayload().Validate(); err != nil {
			t.Errorf("%s: default payload invalid: %v", s.Name, err)
		}
		if s.Summary == "" {
			t.Errorf("%s: no summary", s.Name)
		}
	}
}
