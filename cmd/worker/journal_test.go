package main

import (
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/clients/journal"
	"github.com/stargazer/stargazer-jobs/internal/testkit/journaltest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/syncbuf"
)

// nodeAgent is a node agent process (ROLE=node) on a journal directory.
type nodeAgent struct {
	addr string
	logs *syncbuf.Buffer
}

// startNodeAgent runs the worker binary as a node agent with JOURNAL_DIR
// dir, as cred when not nil, and waits until /readyz answers 200.
func startNodeAgent(t *testing.T, redisURL, dir string, cred *syscall.Credential) *nodeAgent {
	t.Helper()
	bin := workerBinary(t)
	a := &nodeAgent{addr: redistest.FreeAddr(t), logs: &syncbuf.Buffer{}}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "ROLE=node", "REDIS_URL="+redisURL, "HTTP_ADDR="+a.addr, "PROBE_ADDR="+redistest.FreeAddr(t), "SHUTDOWN_TIMEOUT=2s",
		"JOURNAL_DIR="+dir, "JOURNAL_UNIT=stargazer", "NODE_NAME=node-test")
	cmd.Stdout, cmd.Stderr = a.logs, a.logs
	if cred != nil {
		// The binary's directory must be reachable by that user.
		if err := os.Chmod(filepath.Dir(bin), 0o755); err != nil {
			t.Fatal(err)
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Signal(os.Interrupt); _ = cmd.Wait() })
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if code, _ := httpGet(t, "http://"+a.addr+"/readyz"); code == http.StatusOK {
			return a
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("node agent not ready\n%s", a.logs.String())
	return nil
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metric is the value of a series in a /metrics body (-1 when absent).
func metric(body, series string) float64 {
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(body)
	if m == nil {
		return -1
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

// sharedDir is a directory every user may enter (t.TempDir's parents are
// private to the test's user).
func sharedDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "journal-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// fakeJournalDir is a JOURNAL_DIR for the tests whose fake journalctl
// prints entries of its own: the agent finds a journal file there, so its
// journal loops run (the fake ignores --directory).
func fakeJournalDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "system.journal"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// A node agent whose journal it cannot read says so: one log line (not one
// per check), a line in /readyz's answer, which stays 200 (a restart cannot
// make a journal appear), and stargazer_journal_readable 0 with the state.
// It reads a journal its groups may read, and streams its unit's entries.
func TestNodeAgentSaysWhyItCannotReadTheJournal(t *testing.T) {
	journaltest.Require(t)
	r := redistest.Start(t)
	root := os.Getuid() == 0
	nobody := &syscall.Credential{Uid: 65532, Gid: 65532, Groups: []uint32{}}
	withAdm := &syscall.Credential{Uid: 65532, Gid: 65532, Groups: []uint32{4}}

	// A journal as a host keeps it: files of group adm (4), 0640.
	hostJournal := func(t *testing.T) string {
		dir := sharedDir(t)
		f := filepath.Join(dir, "system.journal")
		journaltest.Write(t, f, "0123456789abcdef0123456789abcdef", []journaltest.Entry{
			{Unit: "stargazer.service", Message: "the bot says one", Priority: 6, Time: time.Now().Add(-time.Minute)},
			{Unit: "stargazer.service", Message: "the bot says two", Priority: 4, Time: time.Now().Add(-time.Second)},
		})
		if root {
			if err := os.Chown(f, 0, 4); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(f, 0o640); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	tests := []struct {
		name   string
		dir    func(t *testing.T) string
		cred   *syscall.Credential
		state  journal.State
		detail string
	}{
		{"no journal directory", func(t *testing.T) string { return filepath.Join(sharedDir(t), "journal") }, nil,
			journal.StateMissing, "no journal directory"},
		{"an empty journal directory", sharedDir, nil, journal.StateEmpty, "no journal file in"},
		{"journal files its groups cannot read", func(t *testing.T) string {
			dir := hostJournal(t)
			if !root {
				// Not root: no other uid to run as; a mode stops the owner.
				if err := os.Chmod(filepath.Join(dir, "system.journal"), 0); err != nil {
					t.Fatal(err)
				}
			}
			return dir
		}, nobody, journal.StateUnreadable, "none readable by uid"},
		{"journal files readable through group adm", hostJournal, withAdm, journal.StateReadable, "1 journal files"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cred := tt.cred
			if !root {
				cred = nil
				if tt.cred == withAdm {
					t.Skip("needs root to run the agent as uid 65532 with group 4; the next case reads as this user")
				}
			}
			a := startNodeAgent(t, r.URL(), tt.dir(t), cred)
			code, body := httpGet(t, "http://"+a.addr+"/readyz")
			want := "journal: " + string(tt.state)
			if code != http.StatusOK || !strings.HasPrefix(body, "ready\n") || !strings.Contains(body, want) || !strings.Contains(body, tt.detail) {
				t.Errorf("/readyz = %d %q, want 200, ready, %q and %q", code, body, want, tt.detail)
			}
			_, m := httpGet(t, "http://"+a.addr+"/metrics")
			readable := 0.0
			if tt.state == journal.StateReadable {
				readable = 1
			}
			if metric(m, "stargazer_journal_readable") != readable || metric(m, `stargazer_journal_state{state="`+string(tt.state)+`"}`) != 1 {
				t.Errorf("metrics: stargazer_journal_readable %v, state %s %v; want %v and 1",
					metric(m, "stargazer_journal_readable"), tt.state, metric(m, `stargazer_journal_state{state="`+string(tt.state)+`"}`), readable)
			}
			if tt.state == journal.StateReadable {
				// journal_stream's first round (5 s after start) reads the
				// unit's entries through the real journalctl.
				deadline := time.Now().Add(30 * time.Second)
				for metric(m, "stargazer_journal_entries_total") < 2 && time.Now().Before(deadline) {
					time.Sleep(200 * time.Millisecond)
					_, m = httpGet(t, "http://"+a.addr+"/metrics")
				}
				if n := metric(m, "stargazer_journal_entries_total"); n != 2 || metric(m, "stargazer_journal_last_entry_timestamp_seconds") < float64(time.Now().Add(-time.Hour).Unix()) {
					t.Errorf("entries_total %v, last entry %v: want the unit's 2 entries\n%s", n, metric(m, "stargazer_journal_last_entry_timestamp_seconds"), a.logs.String())
				}
				if _, body := httpGet(t, "http://"+a.addr+"/readyz"); !strings.Contains(body, "unit stargazer: last entry ") {
					t.Errorf("/readyz %q lacks the unit's last entry", body)
				}
				return
			}
			// Checks repeat every 30 s and journal_stream's rounds every
			// 10 s; the reason is logged once, at startup.
			time.Sleep(6 * time.Second)
			logs := a.logs.String()
			level := `"level":"ERROR"`
			msg := "journal cannot be read"
			if tt.state == journal.StateEmpty {
				level, msg = `"level":"WARN"`, "journal empty"
			}
			if n := strings.Count(logs, `"msg":"`+msg); n != 1 || !strings.Contains(logs, level) || !strings.Contains(logs, tt.detail) {
				t.Errorf("%d %q lines, want 1 at %s naming %q:\n%s", n, msg, level, tt.detail, logs)
			}
			if strings.Contains(logs, "node-local task ended with an error") {
				t.Errorf("journal loops ran on an unreadable journal:\n%s", logs)
			}
		})
	}
}

// The readable journal's entries reach the live log channel.
func TestNodeAgentStreamsARealJournalsEntries(t *testing.T) {
	journaltest.Require(t)
	r := redistest.Start(t)
	dir := sharedDir(t)
	journaltest.Write(t, filepath.Join(dir, "system.journal"), "0123456789abcdef0123456789abcdef", []journaltest.Entry{
		{Unit: "stargazer.service", Message: "the bot started", Priority: 6, Time: time.Now().Add(-time.Second)},
		{Unit: "cron.service", Message: "someone else", Priority: 6, Time: time.Now()},
	})
	sub := r.Client(t).Subscribe(context.Background(), journal.Channel)
	defer sub.Close()
	if _, err := sub.Receive(context.Background()); err != nil {
		t.Fatal(err)
	}
	a := startNodeAgent(t, r.URL(), dir, nil)
	select {
	case m := <-sub.Channel():
		if !strings.Contains(m.Payload, `"MESSAGE":"the bot started"`) {
			t.Errorf("published %.200s, want the unit's entry", m.Payload)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("no journal line published\n%s", a.logs.String())
	}
}
