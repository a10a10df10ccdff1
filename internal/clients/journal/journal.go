// Package journal tails the local systemd journal and republishes each
// entry on a Redis pub/sub channel, powering the bot's live log console.
// Every node runs its own: the journal is local to the machine.
package journal

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// Channel is where the original published journal lines.
const Channel = "stargazer:journal"

// ErrNoJournal means journalctl is not installed on this node.
var ErrNoJournal = errors.New("journalctl not found")

// Streamer tails one systemd unit.
type Streamer struct {
	Redis   redis.UniversalClient
	Unit    string
	Channel string
	// Command is the journalctl binary (default "journalctl" on PATH).
	Command string
	// StopGrace is how long the child gets after SIGTERM before SIGKILL
	// (default 2 s, as in the original).
	StopGrace time.Duration
	// Logger receives a warning per skipped line (optional).
	Logger *slog.Logger
	// Directory is journalctl's --directory: read the journal files there
	// instead of this machine's (empty: this machine's).
	Directory string
	// OnEntry is called with each line's log time (zero when it has none)
	// as it is published (optional; Health.Entry).
	OnEntry func(at time.Time)
}

// Run runs `journalctl -u UNIT -f -n 50 --output=json` and publishes each
// line until the child exits or ctx ends. On return the child is gone: it
// is sent SIGTERM, then SIGKILL after StopGrace, and always waited for, so
// no journalctl is left orphaned. It returns ErrNoJournal at once when
// journalctl is absent. It returns the number of lines published.
func (s *Streamer) Run(ctx context.Context) (int, error) {
	bin := s.Command
	if bin == "" {
		bin = "journalctl"
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrNoJournal, err)
	}
	grace := s.StopGrace
	if grace <= 0 {
		grace = 2 * time.Second
	}
	cctx, stop := context.WithCancel(ctx)
	defer stop()
	args := []string{"-u", s.Unit, "-f", "-n", "50", "--output=json"}
	if s.Directory != "" {
		args = append(args, "--directory="+s.Directory)
	}
	cmd := exec.CommandContext(cctx, path, args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = grace
	// What journalctl says when it gives up goes into the error.
	var stderr bytes.Buffer
	cmd.Stderr = &limitedWriter{w: &stderr, n: 4 << 10}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("starting journalctl: %w", err)
	}
	// Lines over MaxLineBytes (a process that logged megabytes at once) are
	// read through and skipped: a reader that stopped at one would leave
	// journalctl blocked on a full pipe and the stream silent for good.
	n := 0
	r := bufio.NewReaderSize(stdout, 64<<10)
	for {
		line, size, rerr := readLine(r)
		switch {
		case size > MaxLineBytes:
			if s.Logger != nil {
				s.Logger.Warn("journal line too long; skipped", "task", "journal_stream", "unit", s.Unit,
					"bytes", size, "max_bytes", MaxLineBytes)
			}
		case len(line) > 0:
			// A failed publish (Redis blip) drops one line, as the original
			// did; the stream is a live view, not a record.
			if err := s.Redis.Publish(cctx, s.Channel, string(line)).Err(); err == nil {
				n++
			}
			if s.OnEntry != nil {
				s.OnEntry(loggedAt(line))
			}
		}
		if rerr != nil {
			if !errors.Is(rerr, io.EOF) {
				stop() // a reader that gives up must not leave journalctl running
			}
			break
		}
	}
	err = cmd.Wait()
	if ctx.Err() != nil {
		return n, ctx.Err()
	}
	if err != nil {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			return n, fmt.Errorf("journalctl exited: %w: %s", err, msg)
		}
		return n, fmt.Errorf("journalctl exited: %w", err)
	}
	return n, nil
}

// loggedAt is the time a journal JSON line was logged
// (__REALTIME_TIMESTAMP), zero when it has none.
func loggedAt(line []byte) time.Time {
	var e struct {
		Realtime string `json:"__REALTIME_TIMESTAMP"`
	}
	if json.Unmarshal(line, &e) != nil {
		return time.Time{}
	}
	us, err := strconv.ParseInt(e.Realtime, 10, 64)
	if err != nil {
		return time.Time{}
	}
	return time.UnixMicro(us)
}
