package journal_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/clients/journal"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/syncbuf"
)

// fakeJournalctl writes a journalctl that records its arguments and pid,
// prints two JSON entries, then either exits or blocks (ignoring SIGTERM if
// stubborn), as the real one does with -f.
func fakeJournalctl(t *testing.T, mode string) (bin, dir string) {
	dir = t.TempDir()
	trap := ""
	if mode == "stubborn" {
		trap = "trap '' TERM\n"
	}
	tail := "exec sleep 1000\n"
	if mode == "exit" {
		tail = "exit 0\n"
	} else if mode == "stubborn" {
		tail = "while :; do sleep 0.1; done\n"
	}
	script := "#!/bin/sh\n" + trap +
		"echo \"$@\" > " + filepath.Join(dir, "args") + "\n" +
		"echo $$ > " + filepath.Join(dir, "pid") + "\n" +
		`echo '{"MESSAGE":"hello","_PID":"1"}'` + "\n" +
		`echo '{"MESSAGE":"world","_PID":"1"}'` + "\n" + tail
	bin = filepath.Join(dir, "journalctl")
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin, dir
}

func alive(t *testing.T, dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, "pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return syscall.Kill(pid, 0) == nil
}

func TestStreamPublishesEachLineAndKillsItsChildOnShutdown(t *testing.T) {
	for _, mode := range []string{"follow", "stubborn"} {
		t.Run(mode, func(t *testing.T) {
			srv := redistest.Start(t)
			rdb := srv.Client(t)
			sub := rdb.Subscribe(context.Background(), journal.Channel)
			defer sub.Close()
			if _, err := sub.Receive(context.Background()); err != nil {
				t.Fatal(err)
			}
			bin, dir := fakeJournalctl(t, mode)
			s := &journal.Streamer{Redis: rdb, Unit: "stargazer", Channel: journal.Channel, Command: bin, StopGrace: 300 * time.Millisecond}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { _, err := s.Run(ctx); done <- err }()
			for _, want := range []string{"hello", "world"} {
				select {
				case m := <-sub.Channel():
					if !strings.Contains(m.Payload, want) {
						t.Errorf("published %q, want %q", m.Payload, want)
					}
				case <-time.After(5 * time.Second):
					t.Fatal("nothing published")
				}
			}
			args, _ := os.ReadFile(filepath.Join(dir, "args"))
			if got := strings.TrimSpace(string(args)); got != "-u stargazer -f -n 50 --output=json" {
				t.Errorf("journalctl args %q", got)
			}
			cancel()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("Run did not return after cancel")
			}
			if alive(t, dir) {
				t.Error("journalctl left running after shutdown")
			}
		})
	}
}

func TestStreamReturnsAtOnceWithoutJournalctl(t *testing.T) {
	s := &journal.Streamer{Command: "journalctl-does-not-exist", Unit: "stargazer"}
	start := time.Now()
	if _, err := s.Run(context.Background()); !errors.Is(err, journal.ErrNoJournal) {
		t.Fatalf("err = %v", err)
	}
	if time.Since(start) > time.Second {
		t.Error("did not return at once")
	}
}

func TestStreamEndsWhenJournalctlExits(t *testing.T) {
	srv := redistest.Start(t)
	bin, _ := fakeJournalctl(t, "exit")
	s := &journal.Streamer{Redis: srv.Client(t), Unit: "stargazer", Channel: journal.Channel, Command: bin}
	n, err := s.Run(context.Background())
	if err != nil || n != 2 {
		t.Fatalf("published %d, err %v", n, err)
	}
}

// followFake writes a journalctl that prints lines and then keeps running,
// as `journalctl -f` does.
func followFake(t *testing.T, lines []string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "entries"), []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "journalctl")
	script := "#!/bin/sh\ncat '" + filepath.Join(dir, "entries") + "'\nexec sleep 1000\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// A process that logs megabytes in one line must not stop the live stream:
// the line is skipped and the lines after it still reach the channel.
func TestStreamSkipsALineTooLongAndKeepsFlowing(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	sub := rdb.Subscribe(context.Background(), journal.Channel)
	defer sub.Close()
	if _, err := sub.Receive(context.Background()); err != nil {
		t.Fatal(err)
	}
	huge := `{"MESSAGE":"` + strings.Repeat("x", 4<<20) + `"}`
	bin := followFake(t, []string{`{"MESSAGE":"before"}`, huge, `{"MESSAGE":"after"}`})
	var logs syncbuf.Buffer
	s := &journal.Streamer{Redis: rdb, Unit: "stargazer", Channel: journal.Channel, Command: bin, StopGrace: 300 * time.Millisecond,
		Logger: slog.New(slog.NewJSONHandler(&logs, nil))}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := s.Run(ctx); done <- err }()
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancel")
		}
	}()
	for _, want := range []string{"before", "after"} {
		select {
		case m := <-sub.Channel():
			if !strings.Contains(m.Payload, want) || len(m.Payload) > journal.MaxLineBytes {
				t.Fatalf("published %.80q (%d bytes), want %q", m.Payload, len(m.Payload), want)
			}
		case err := <-done:
			t.Fatalf("Run returned (%v) before publishing %q", err, want)
		case <-time.After(10 * time.Second):
			t.Fatalf("%q not published: the stream stalled", want)
		}
	}
	var warning struct {
		Level, Msg string
		Bytes      int
	}
	if err := json.Unmarshal([]byte(logs.String()), &warning); err != nil || warning.Level != "WARN" || warning.Bytes != len(huge) {
		t.Errorf("want one warning with the skipped line's size %d; logged %q", len(huge), logs.String())
	}
}
