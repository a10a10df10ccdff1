package journal_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/clients/journal"
)

// entryLine is one line of `journalctl --output=json`.
func entryLine(i int, msg any) string {
	b, _ := json.Marshal(map[string]any{
		"__CURSOR":             fmt.Sprintf("s=5e1f;i=%x;b=9c;m=%x;t=6%d;x=ab", i, i, i),
		"__REALTIME_TIMESTAMP": fmt.Sprint(int64(1_777_000_000_000_000) + int64(i)*1_000_000),
		"PRIORITY":             "6",
		"_SYSTEMD_UNIT":        "stargazer.service",
		"MESSAGE":              msg,
	})
	return string(b)
}

func cursor(i int) string { return fmt.Sprintf("s=5e1f;i=%x;b=9c;m=%x;t=6%d;x=ab", i, i, i) }

// readFake writes a journalctl that prints the lines of its entries file
// (after --after-cursor's entry when given) and records its arguments;
// tail is run after printing ("exit 0", or "exec sleep 1000" to act like a
// journalctl that keeps printing).
func readFake(t *testing.T, lines []string, tail string) (bin, dir string) {
	t.Helper()
	dir = t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "entries"), []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	script := `#!/bin/sh
echo "$@" >> "` + dir + `/args"
echo $$ > "` + dir + `/pid"
after=""
for a in "$@"; do
  case "$a" in --after-cursor=*) after="${a#--after-cursor=}";; esac
done
if [ -z "$after" ]; then
  cat "` + dir + `/entries"
else
  awk -v c="\"__CURSOR\":\"$after\"" 'found {print} index($0, c) {found=1}' "` + dir + `/entries"
fi
` + tail + "\n"
	bin = filepath.Join(dir, "journalctl")
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin, dir
}

func messages(b journal.Batch) []string {
	var out []string
	for _, e := range b.Entries {
		out = append(out, e.Message)
	}
	return out
}

func TestReadStartsAtTheCursorOrTheGivenTime(t *testing.T) {
	var lines []string
	for i := 1; i <= 4; i++ {
		lines = append(lines, entryLine(i, fmt.Sprintf("line %d", i)))
	}
	bin, dir := readFake(t, lines, "exit 0")
	ctx := context.Background()
	since := time.Unix(1_777_000_000, 0)
	b, err := journal.Read(ctx, journal.ReadOptions{Command: bin, Unit: "stargazer", Since: since})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(messages(b)) != "[line 1 line 2 line 3 line 4]" || b.Last != cursor(4) || b.Truncated || b.Lines != 4 {
		t.Errorf("from since: %+v", b)
	}
	b, err = journal.Read(ctx, journal.ReadOptions{Command: bin, Unit: "stargazer", AfterCursor: cursor(2)})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(messages(b)) != "[line 3 line 4]" || b.Last != cursor(4) {
		t.Errorf("after cursor 2: %+v", b)
	}
	args, _ := os.ReadFile(filepath.Join(dir, "args"))
	want := "-u stargazer --output=json --no-pager --quiet --since=@1777000000\n" +
		"-u stargazer --output=json --no-pager --quiet --after-cursor=" + cursor(2) + "\n"
	if string(args) != want {
		t.Errorf("journalctl args:\n%s\nwant:\n%s", args, want)
	}
	e := b.Entries[0]
	if e.Cursor != cursor(3) || e.Priority != 6 || e.Unit != "stargazer.service" || !e.Time.Equal(time.Unix(1_777_000_003, 0)) {
		t.Errorf("entry %+v", e)
	}
}

func TestReadStopsAtTheLimitOrTheStopCursorAndStopsJournalctl(t *testing.T) {
	var lines []string
	for i := 1; i <= 6; i++ {
		lines = append(lines, entryLine(i, fmt.Sprintf("line %d", i)))
	}
	tests := []struct {
		name      string
		opts      journal.ReadOptions
		want      string
		truncated bool
	}{
		{"limit", journal.ReadOptions{Limit: 3}, "[line 1 line 2 line 3]", true},
		{"stop cursor", journal.ReadOptions{StopAt: cursor(2)}, "[line 1 line 2]", false},
		{"stop cursor after the cursor", journal.ReadOptions{AfterCursor: cursor(2), StopAt: cursor(4)}, "[line 3 line 4]", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// This journalctl never ends by itself: Read must stop it.
			bin, dir := readFake(t, lines, "exec sleep 1000")
			tt.opts.Command, tt.opts.Unit = bin, "stargazer"
			b, err := journal.Read(context.Background(), tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			if got := fmt.Sprint(messages(b)); got != tt.want || b.Truncated != tt.truncated {
				t.Errorf("read %s truncated=%v, want %s truncated=%v", got, b.Truncated, tt.want, tt.truncated)
			}
			if alive(t, dir) {
				t.Error("journalctl left running")
			}
		})
	}
}

func TestReadDecodesJournalJSONAndSkipsWhatIsNot(t *testing.T) {
	noMessage := strings.Replace(entryLine(4, "x"), `"MESSAGE":"x",`, "", 1)
	noPriority := strings.Replace(entryLine(5, "no priority"), `"PRIORITY":"6",`, "", 1)
	lines := []string{
		entryLine(1, "plain"),
		entryLine(2, []int{104, 105, 0xff, 10}), // bytes: "hi\xff\n"
		"this is not json",
		strings.Replace(entryLine(3, "an error"), `"PRIORITY":"6"`, `"PRIORITY":"3"`, 1),
		noMessage,
		noPriority,
		entryLine(6, strings.Repeat("x", journal.MaxLineBytes)), // too long: skipped unbuffered
		`{"MESSAGE":"no cursor"}`,
	}
	bin, _ := readFake(t, lines, "exit 0")
	b, err := journal.Read(context.Background(), journal.ReadOptions{Command: bin, Unit: "stargazer"})
	if err != nil {
		t.Fatal(err)
	}
	if b.Lines != 8 || b.Skipped != 3 || b.Last != cursor(5) {
		t.Errorf("lines %d skipped %d last %q", b.Lines, b.Skipped, b.Last)
	}
	want := []string{"plain", "hi\uFFFD\n", "an error", "no priority"}
	if fmt.Sprintf("%q", messages(b)) != fmt.Sprintf("%q", want) {
		t.Errorf("messages %q, want %q", messages(b), want)
	}
	if b.Entries[2].Priority != 3 || b.Entries[3].Priority != 6 {
		t.Errorf("priorities %d, %d", b.Entries[2].Priority, b.Entries[3].Priority)
	}
}

// log_rag_ingest reads through a line of several MiB (a process that
// logged megabytes at once) and keeps the entries after it.
func TestReadSkipsAFourMiBLineAndReadsOn(t *testing.T) {
	lines := []string{entryLine(1, "before"), entryLine(2, strings.Repeat("x", 4<<20)), entryLine(3, "after")}
	bin, _ := readFake(t, lines, "exit 0")
	b, err := journal.Read(context.Background(), journal.ReadOptions{Command: bin, Unit: "stargazer"})
	if err != nil {
		t.Fatal(err)
	}
	if b.Lines != 3 || b.Skipped != 1 || b.Last != cursor(3) || fmt.Sprint(messages(b)) != "[before after]" {
		t.Errorf("lines %d skipped %d last %q messages %q", b.Lines, b.Skipped, b.Last, messages(b))
	}
}

func TestReadReportsJournalctlFailures(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "journalctl")
	script := "#!/bin/sh\necho 'Failed to seek to cursor: Invalid argument' >&2\nexit 1\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := journal.Read(context.Background(), journal.ReadOptions{Command: bin, Unit: "stargazer", AfterCursor: "garbage"})
	if err == nil || !strings.Contains(err.Error(), "Failed to seek to cursor") {
		t.Errorf("err = %v", err)
	}
	_, err = journal.Read(context.Background(), journal.ReadOptions{Command: "journalctl-does-not-exist", Unit: "stargazer"})
	if !errors.Is(err, journal.ErrNoJournal) {
		t.Errorf("without journalctl: err = %v", err)
	}
}
