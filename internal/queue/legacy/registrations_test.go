package legacy

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stargazer/stargazer-jobs/internal/testkit/original"
	"github.com/stargazer/stargazer-jobs/jobs"
)

var mainFile = regexp.MustCompile(`\w+_main\.py`)

func sections(t *testing.T) map[string]string {
	t.Helper()
	s, err := original.Sections()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// The services that own a scheduler are the ones the original's
// BackgroundScheduler names, plus build_scheduler.
func TestServicesAreTheOnesTheOriginalNames(t *testing.T) {
	doc := sections(t)["BackgroundScheduler.__init__"]
	named := slices.Compact(slices.Sorted(slices.Values(mainFile.FindAllString(doc, -1))))
	want := slices.Sorted(slices.Values(Services()[1:]))
	if !slices.Equal(named, want) || Services()[0] != BuildScheduler {
		t.Errorf("services %v; the original's BackgroundScheduler names %v (plus build_scheduler first)", Services(), named)
	}
}

// Every registration is what the task's docstring says, and every service
// a task's docstring names is a registration.
func TestRegistrationsFollowTheOriginalsDocstrings(t *testing.T) {
	docs := sections(t)
	orig, err := original.Tasks()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, o := range orig {
		names = append(names, o.Name)
	}
	if !slices.Equal(slices.Sorted(slices.Values(names)), slices.Sorted(slices.Values(decorated))) {
		t.Errorf("build_scheduler registers %v; the original decorates %v", decorated, names)
	}
	for _, s := range jobs.Catalog() {
		doc, ok := docs[s.Name]
		regs := Registrations(s.Name)
		if !ok {
			if len(regs) > 0 {
				t.Errorf("%s: registrations %v, but the original has no such task", s.Name, regs)
			}
			continue
		}
		var said []string
		for _, r := range regs {
			switch {
			case r.Service == BuildScheduler:
				// build_scheduler registers every decorated task.
				if !strings.Contains(doc, "@background_task(") {
					t.Errorf("%s: registered by build_scheduler, but it is not a @background_task", s.Name)
				}
			case r.Supervisor:
				if !strings.Contains(doc, ":class:`TaskSupervisor`") {
					t.Errorf("%s: a TaskSupervisor loop, but its docstring does not say so", s.Name)
				}
				// The supervisor's own docstring names who constructs it.
				if sup := docs["TaskSupervisor"]; !strings.Contains(doc, r.Service) && !strings.Contains(sup, "by the agents service in ``"+r.Service+"``") {
					t.Errorf("%s: supervised in %s, which neither its docstring nor TaskSupervisor's says", s.Name, r.Service)
				}
				said = append(said, r.Service)
			default:
				if !strings.Contains(doc, "``"+r.Service+"``") {
					t.Errorf("%s: registered by %s, which its docstring does not name", s.Name, r.Service)
				}
				if r.As != s.Name && !strings.Contains(doc, "under ``\""+r.As+"\"``") {
					t.Errorf("%s: registered by %s as %q, which its docstring does not say", s.Name, r.Service, r.As)
				}
				said = append(said, r.Service)
			}
		}
		for _, f := range mainFile.FindAllString(doc, -1) {
			if !slices.Contains(said, f) {
				t.Errorf("%s: its docstring names %s, which registers it; the table lacks it", s.Name, f)
			}
		}
	}
}

func TestTaskForMapsEveryRegisteredName(t *testing.T) {
	for _, tt := range []struct {
		name, task, service string
	}{
		{"kg_decay_task", jobs.KGDecay, BuildScheduler},
		{"kg_decay", jobs.KGDecay, ConsolidationMain},
		{"kg_consolidation", jobs.KGConsolidation, ConsolidationMain},
		{"channel_heartbeat", jobs.ChannelHeartbeat, BuildScheduler},
		{"limbic_maintenance", jobs.LimbicMaintenance, BuildScheduler},
	} {
		task, regs, ok := TaskFor(tt.name)
		if !ok || task != tt.task || len(regs) == 0 || regs[0].Service != tt.service {
			t.Errorf("TaskFor(%q) = %q, %v, %v; want %q from %s", tt.name, task, regs, ok, tt.task, tt.service)
		}
	}
	for _, name := range []string{"", "limbic_dedup_task", "e2e_plain", "kg_extract_unit", "startup_channel_backfill"} {
		if task, _, ok := TaskFor(name); ok {
			t.Errorf("TaskFor(%q) = %q: the original's scheduler publishes no run under that name", name, task)
		}
	}
	if got, want := RegisteredBy(jobs.KGDecay), "build_scheduler, consolidation_main.py (as kg_decay)"; got != want {
		t.Errorf("RegisteredBy(kg_decay_task) = %q, want %q", got, want)
	}
	if got, want := RegisteredBy(jobs.ChannelHeartbeat), "build_scheduler, inference_main.py"; got != want {
		t.Errorf("RegisteredBy(channel_heartbeat) = %q, want %q", got, want)
	}
}

// The migration guide has a step for each service, naming every task it
// registers.
func TestTheMigrationGuideHasAStepForEveryServiceNamingItsTasks(t *testing.T) {
	b, err := os.ReadFile("../../../docs/migration.md")
	if err != nil {
		t.Fatal(err)
	}
	guide := string(b)
	for _, svc := range Services() {
		head := "### `" + svc + "`"
		i := strings.Index(guide, head)
		if i < 0 {
			t.Errorf("docs/migration.md has no section %q", head)
			continue
		}
		section := guide[i+len(head):]
		if j := strings.Index(section, "\n#"); j >= 0 {
			section = section[:j]
		}
		for _, want := range []string{"**Remove**", "**Verify**", "**Roll back**", "stargazer_legacy_runs_total"} {
			if !strings.Contains(section, want) {
				t.Errorf("%s: its step lacks %s", svc, want)
			}
		}
		for _, s := range jobs.Catalog() {
			for _, r := range Registrations(s.Name) {
				if r.Service == svc && !strings.Contains(section, "`"+s.Name+"`") {
					t.Errorf("%s registers %s, which its step does not name", svc, s.Name)
				}
			}
		}
	}
}
