// Package journaltest writes real systemd journal files for tests, with
// Debian's systemd-journal-remote, which turns journal export format into
// a journal file that journalctl reads like any other.
package journaltest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// remote is where Debian's systemd-journal-remote package installs it.
const remote = "/lib/systemd/systemd-journal-remote"

// Entry is one entry to write.
type Entry struct {
	Unit     string // _SYSTEMD_UNIT, e.g. "stargazer.service"
	Message  string
	Priority int
	Time     time.Time
}

// Require fails the test when journalctl or systemd-journal-remote is
// missing.
func Require(tb testing.TB) {
	tb.Helper()
	if _, err := exec.LookPath("journalctl"); err != nil {
		tb.Fatal("journalctl is not installed: run ./scripts/test.sh --install-only (Debian: apt-get install systemd)")
	}
	if _, err := os.Stat(remote); err != nil {
		tb.Fatal("systemd-journal-remote is not installed: run ./scripts/test.sh --install-only (Debian: apt-get install systemd-journal-remote)")
	}
}

// Write writes entries as the journal file path (its name must end in
// .journal), logged by machine machineID in the current boot.
func Write(tb testing.TB, path, machineID string, entries []Entry) {
	tb.Helper()
	Require(tb)
	if err := WriteFile(path, machineID, entries); err != nil {
		tb.Fatal(err)
	}
}

// WriteFile is Write outside a test (the chaos command).
func WriteFile(path, machineID string, entries []Entry) error {
	if _, err := os.Stat(remote); err != nil {
		return fmt.Errorf("systemd-journal-remote is not installed: run ./scripts/test.sh --install-only (Debian: apt-get install systemd-journal-remote)")
	}
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return err
	}
	bootID := strings.ReplaceAll(strings.TrimSpace(string(boot)), "-", "")
	var export strings.Builder
	for i, e := range entries {
		fmt.Fprintf(&export, "__REALTIME_TIMESTAMP=%d\n__MONOTONIC_TIMESTAMP=%d\n_BOOT_ID=%s\n_MACHINE_ID=%s\n_SYSTEMD_UNIT=%s\nPRIORITY=%d\nMESSAGE=%s\n\n",
			e.Time.UnixMicro(), i+1, bootID, machineID, e.Unit, e.Priority, e.Message)
	}
	tmp, err := os.MkdirTemp("", "journaltest")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	in := filepath.Join(tmp, "entries.export")
	if err := os.WriteFile(in, []byte(export.String()), 0o600); err != nil {
		return err
	}
	if out, err := exec.Command(remote, "--output="+path, in).CombinedOutput(); err != nil {
		return fmt.Errorf("systemd-journal-remote: %v\n%s", err, out)
	}
	return nil
}
