// Package journal tails the local systemd journal and republishes each
// entry on a Redis pub/sub channel, powering the bot's live log console.
// Every node runs its own: the journal is local to the machine.
package journal

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
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
	cmd := exec.CommandContext(cctx, path, "-u", s.Unit, "-f", "-n", "50", "--output=json")
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = grace
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
		return n, fmt.Errorf("journalctl exited: %w", err)
	}
	return n, nil
}
