package journal_test

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stargazer/stargazer-jobs/internal/clients/journal"
	"github.com/stargazer/stargazer-jobs/internal/testkit/journaltest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/syncbuf"
)

const (
	thisMachine  = "0123456789abcdef0123456789abcdef"
	otherMachine = "fedcba9876543210fedcba9876543210"
)

func writeJournal(t *testing.T, path, machine string) {
	t.Helper()
	journaltest.Write(t, path, machine, []journaltest.Entry{{Unit: "stargazer.service", Message: "hello", Priority: 6, Time: time.Now()}})
}

func TestCheckTellsWhyTheJournalCannotBeRead(t *testing.T) {
	tests := []struct {
		name      string
		setup     func(t *testing.T, root string) journal.CheckOptions
		want      journal.State
		detail    string
		files     int
		foreignID bool
	}{
		{"no directory", func(t *testing.T, root string) journal.CheckOptions {
			return journal.CheckOptions{Dirs: []string{filepath.Join(root, "var"), filepath.Join(root, "run")}, MachineID: thisMachine}
		}, journal.StateMissing, "do not exist", 0, false},
		{"empty directory", func(t *testing.T, root string) journal.CheckOptions {
			mkdir(t, filepath.Join(root, "var"))
			return journal.CheckOptions{Dirs: []string{filepath.Join(root, "var"), filepath.Join(root, "run")}, MachineID: thisMachine}
		}, journal.StateEmpty, "no journal file in", 0, false},
		{"only another machine's files", func(t *testing.T, root string) journal.CheckOptions {
			mkdir(t, filepath.Join(root, "var", otherMachine))
			writeJournal(t, filepath.Join(root, "var", otherMachine, "system.journal"), otherMachine)
			return journal.CheckOptions{Dirs: []string{filepath.Join(root, "var")}, MachineID: thisMachine}
		}, journal.StateEmpty, "1 files of other machine ids", 0, true},
		{"this machine's files", func(t *testing.T, root string) journal.CheckOptions {
			mkdir(t, filepath.Join(root, "var", thisMachine))
			writeJournal(t, filepath.Join(root, "var", thisMachine, "system.journal"), thisMachine)
			mkdir(t, filepath.Join(root, "run"))
			return journal.CheckOptions{Dirs: []string{filepath.Join(root, "var"), filepath.Join(root, "run")}, MachineID: thisMachine}
		}, journal.StateReadable, "1 journal files", 1, false},
		{"a directory given to journalctl reads every machine's files", func(t *testing.T, root string) journal.CheckOptions {
			mkdir(t, filepath.Join(root, "dir", otherMachine))
			// A dirty file (unclean shutdown) counts too.
			writeJournal(t, filepath.Join(root, "dir", otherMachine, "system.journal"), otherMachine)
			if err := os.Rename(filepath.Join(root, "dir", otherMachine, "system.journal"), filepath.Join(root, "dir", otherMachine, "system@0001-0002.journal~")); err != nil {
				t.Fatal(err)
			}
			return journal.CheckOptions{Dirs: []string{filepath.Join(root, "dir")}, Directory: true, MachineID: thisMachine}
		}, journal.StateReadable, "1 journal files", 1, false},
		{"files at the top of the directory", func(t *testing.T, root string) journal.CheckOptions {
			mkdir(t, filepath.Join(root, "dir"))
			writeJournal(t, filepath.Join(root, "dir", "remote.journal"), otherMachine)
			os.WriteFile(filepath.Join(root, "dir", "notes.txt"), []byte("not a journal"), 0o644)
			return journal.CheckOptions{Dirs: []string{filepath.Join(root, "dir")}, MachineID: thisMachine}
		}, journal.StateReadable, "1 journal files", 1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := journal.Check(tt.setup(t, t.TempDir()))
			if st.State != tt.want || !strings.Contains(st.Detail, tt.detail) || st.Files != tt.files || (st.Foreign > 0) != tt.foreignID {
				t.Errorf("Check = %+v, want %s with %q, %d files", st, tt.want, tt.detail, tt.files)
			}
		})
	}
}

// Unreadable files need a process that the file modes stop: root reads
// everything, so as root the check runs in a child as uid 65532.
func TestCheckSaysUnreadableFilesAndTheirGroup(t *testing.T) {
	if os.Getuid() == 0 {
		t.Skip("as root every file is readable; cmd/worker's TestNodeAgentSaysWhyItCannotReadTheJournal runs the agent as uid 65532")
	}
	dir := t.TempDir()
	mkdir(t, filepath.Join(dir, thisMachine))
	f := filepath.Join(dir, thisMachine, "system.journal")
	writeJournal(t, f, thisMachine)
	if err := os.Chmod(f, 0); err != nil {
		t.Fatal(err)
	}
	st := journal.Check(journal.CheckOptions{Dirs: []string{dir}, MachineID: thisMachine})
	if st.State != journal.StateUnreadable || !strings.Contains(st.Detail, "none readable by uid") || !strings.Contains(st.Detail, "belong to gid") {
		t.Errorf("Check = %+v, want unreadable naming the uid and the files' gid", st)
	}
}

func mkdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
}

// clock is a settable time for Health.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func TestHealthLogsOncePerChangeAndExportsTheState(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "journal")
	var logs syncbuf.Buffer
	reg := prometheus.NewRegistry()
	h := journal.NewHealth(journal.HealthOptions{
		Check: journal.CheckOptions{Dirs: []string{dir}, Directory: true}, Unit: "stargazer",
		Logger: slog.New(slog.NewJSONHandler(&logs, nil)),
	}, reg)
	if h.Err() != nil || h.Detail() != "" {
		t.Fatalf("before any check: Err %v, Detail %q; want nothing", h.Err(), h.Detail())
	}
	for range 3 {
		h.Check()
	}
	if n := strings.Count(logs.String(), "journal cannot be read"); n != 1 {
		t.Errorf("%d error lines for 3 checks of a missing journal, want 1:\n%s", n, logs.String())
	}
	if h.Err() == nil || !strings.HasPrefix(h.Detail(), "journal: missing: ") {
		t.Errorf("missing journal: Err %v, Detail %q", h.Err(), h.Detail())
	}
	gauge := func(name string, labels ...string) float64 { return metricValue(t, reg, name, labels...) }
	if gauge("stargazer_journal_readable") != 0 || gauge("stargazer_journal_state", "state", "missing") != 1 || gauge("stargazer_journal_state", "state", "readable") != 0 {
		t.Error("metrics do not say missing")
	}
	if n := testutil.CollectAndCount(reg, "stargazer_journal_state"); n != len(journal.States) {
		t.Errorf("%d state series, want one per state (%d)", n, len(journal.States))
	}

	mkdir(t, dir)
	h.Check()
	h.Check()
	if n := strings.Count(logs.String(), "journal empty"); n != 1 || gauge("stargazer_journal_state", "state", "empty") != 1 {
		t.Errorf("empty journal: %d warnings, want 1:\n%s", n, logs.String())
	}

	writeJournal(t, filepath.Join(dir, "system.journal"), thisMachine)
	h.Check()
	h.Check()
	if n := strings.Count(logs.String(), `"msg":"journal readable"`); n != 1 || gauge("stargazer_journal_readable") != 1 || h.Err() != nil {
		t.Errorf("readable journal: %d info lines, want 1; Err %v:\n%s", n, h.Err(), logs.String())
	}
	if d := h.Detail(); !strings.HasPrefix(d, "journal: readable (1 journal files in ") || !strings.Contains(d, "unit stargazer: no entry read since") {
		t.Errorf("Detail = %q", d)
	}
}

func TestHealthSaysOnceThatTheUnitIsIdleAndWhenItLogsAgain(t *testing.T) {
	dir := t.TempDir()
	writeJournal(t, filepath.Join(dir, "system.journal"), thisMachine)
	c := &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	var logs syncbuf.Buffer
	reg := prometheus.NewRegistry()
	h := journal.NewHealth(journal.HealthOptions{
		Check: journal.CheckOptions{Dirs: []string{dir}, Directory: true}, Unit: "stargazer", IdleAfter: time.Hour,
		Logger: slog.New(slog.NewJSONHandler(&logs, nil)), Now: c.now,
	}, reg)
	h.Check()
	h.Entry(c.now())
	c.add(59 * time.Minute)
	h.Check()
	if strings.Contains(logs.String(), "no entry of the unit") {
		t.Fatalf("idle after 59 min without an entry, want after an hour:\n%s", logs.String())
	}
	for range 3 {
		c.add(time.Minute)
		h.Check()
	}
	if n := strings.Count(logs.String(), "no entry of the unit"); n != 1 || !strings.Contains(h.Detail(), "idle for over 1h0m0s") {
		t.Errorf("%d idle lines, want 1; Detail %q:\n%s", n, h.Detail(), logs.String())
	}
	if h.Err() != nil {
		t.Errorf("an idle unit is not an error: %v", h.Err())
	}
	h.Entry(c.now())
	if n := strings.Count(logs.String(), "entries of the unit again"); n != 1 || strings.Contains(h.Detail(), "idle") {
		t.Errorf("after a new entry: %d lines, Detail %q", n, h.Detail())
	}
	if v := metricValue(t, reg, "stargazer_journal_entries_total"); v != 2 {
		t.Errorf("entries_total = %v, want 2", v)
	}
	if v := metricValue(t, reg, "stargazer_journal_last_entry_timestamp_seconds"); v != float64(c.now().Unix()) {
		t.Errorf("last entry timestamp = %v, want %d", v, c.now().Unix())
	}
}

// metricValue is the value of the series of name with labels (name,
// value pairs) that reg gathers.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, l := range m.GetLabel() {
					found = found || (l.GetName() == labels[i] && l.GetValue() == labels[i+1])
				}
				if !found {
					continue metric
				}
			}
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("no %s%v", name, labels)
	return 0
}
