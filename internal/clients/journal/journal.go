// Package journal tails the local systemd journal and republishes each
// entry on a Redis pub/sub channel, powering the bot's live log console.
// Every node runs its own: the journal is local to the machine.
package journal

import (
	"bufio"
	"context"
	"errors"
	"fmt"
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
	cmd := exec.CommandContext(ctx, path, "-u", s.Unit, "-f", "-n", "50", "--output=json")
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = grace
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("starting journalctl: %w", err)
	}
	n := 0
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 {
			continue
		}
		// A failed publish (Redis blip) drops one line, as the original did;
		// the stream is a live view, not a record.
		if err := s.Redis.Publish(ctx, s.Channel, string(line)).Err(); err == nil {
			n++
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
