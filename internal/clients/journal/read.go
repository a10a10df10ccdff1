package journal

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"
)

// MaxLineBytes bounds one journal line read; longer lines (a process that
// logged megabytes at once) are skipped, not buffered.
const MaxLineBytes = 1 << 20

// Entry is one journal entry, the fields of `journalctl --output=json` that
// matter for reading logs back.
type Entry struct {
	// Cursor is the entry's position in the journal (__CURSOR).
	Cursor string
	// Time is when it was logged (__REALTIME_TIMESTAMP).
	Time time.Time
	// Priority is the syslog level, 0 (emerg) to 7 (debug); 6 (info) when
	// the entry has none.
	Priority int
	// Unit is the systemd unit that logged it (_SYSTEMD_UNIT).
	Unit string
	// Message is MESSAGE as text (journalctl prints binary messages as byte
	// arrays; they are decoded, invalid UTF-8 replaced).
	Message string
}

// ReadOptions say which entries Read returns.
type ReadOptions struct {
	// Command is the journalctl binary (default "journalctl" on PATH).
	Command string
	// Unit is the systemd unit read.
	Unit string
	// AfterCursor starts after the entry with this cursor. Empty: Since.
	AfterCursor string
	// Since is where to start without a cursor.
	Since time.Time
	// StopAt ends the read after the entry with this cursor, so a batch
	// that was started can be read again exactly.
	StopAt string
	// Limit bounds the lines read (default 20,000).
	Limit int
	// Directory is journalctl's --directory (empty: this machine's
	// journal).
	Directory string
}

// Batch is what one Read returned.
type Batch struct {
	// Entries are the entries with a message, in journal order.
	Entries []Entry
	// Last is the cursor of the last entry read, with or without a message:
	// where the next read starts.
	Last string
	// Lines is how many lines were read; Skipped how many of them were not
	// a journal entry (not JSON, no cursor, too long).
	Lines, Skipped int
	// Truncated means Limit was reached: more entries may follow.
	Truncated bool
}

// DefaultReadLimit is the default bound of Read.
const DefaultReadLimit = 20_000

// Read runs `journalctl -u UNIT --output=json --no-pager --quiet` from the
// cursor (or since the time) and returns at most Limit lines of it, then
// stops journalctl: reading forward and cutting is how to bound a read,
// since journalctl's -n counts from the end. It returns ErrNoJournal when
// journalctl is absent.
func Read(ctx context.Context, o ReadOptions) (Batch, error) {
	bin := o.Command
	if bin == "" {
		bin = "journalctl"
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return Batch{}, fmt.Errorf("%w: %w", ErrNoJournal, err)
	}
	limit := o.Limit
	if limit <= 0 {
		limit = DefaultReadLimit
	}
	args := []string{"-u", o.Unit, "--output=json", "--no-pager", "--quiet"}
	if o.Directory != "" {
		args = append(args, "--directory="+o.Directory)
	}
	if o.AfterCursor != "" {
		args = append(args, "--after-cursor="+o.AfterCursor)
	} else {
		args = append(args, "--since=@"+strconv.FormatInt(o.Since.Unix(), 10))
	}
	cctx, stop := context.WithCancel(ctx)
	defer stop()
	cmd := exec.CommandContext(cctx, path, args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 2 * time.Second
	var stderr bytes.Buffer
	cmd.Stderr = &limitedWriter{w: &stderr, n: 4 << 10}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return Batch{}, err
	}
	if err := cmd.Start(); err != nil {
		return Batch{}, fmt.Errorf("starting journalctl: %w", err)
	}
	var b Batch
	r := bufio.NewReaderSize(stdout, 64<<10)
	stopped := false
	for {
		line, size, err := readLine(r)
		tooLong := size > MaxLineBytes
		if len(line) > 0 || tooLong {
			b.Lines++
			e, ok := parseEntry(line)
			switch {
			case tooLong || !ok:
				b.Skipped++
			default:
				b.Last = e.Cursor
				if e.Message != "" {
					b.Entries = append(b.Entries, e)
				}
			}
			if (ok && o.StopAt != "" && e.Cursor == o.StopAt) || b.Lines >= limit {
				b.Truncated = b.Lines >= limit
				stopped = true
				break
			}
		}
		if err != nil {
			break
		}
	}
	if stopped {
		// We have what we want: stop journalctl rather than drain it.
		stop()
	}
	werr := cmd.Wait()
	switch {
	case ctx.Err() != nil:
		return b, ctx.Err()
	case werr != nil && !stopped:
		msg := strings.TrimSpace(stderr.String())
		return b, fmt.Errorf("journalctl %s: %w: %s", strings.Join(args, " "), werr, msg)
	}
	return b, nil
}

// readLine reads one line without its line ending and returns its length.
// A line longer than MaxLineBytes is read through without keeping its
// content: line is nil and size says how long it was.
func readLine(r *bufio.Reader) (line []byte, size int, err error) {
	for {
		chunk, err := r.ReadSlice('\n')
		full := errors.Is(err, bufio.ErrBufferFull)
		if !full {
			chunk = bytes.TrimRight(chunk, "\r\n")
		}
		size += len(chunk)
		if size <= MaxLineBytes {
			line = append(line, chunk...)
		} else {
			line = nil
		}
		if !full {
			return line, size, err
		}
	}
}

// parseEntry decodes one JSON line; ok is false for anything that is not a
// journal entry with a cursor.
func parseEntry(line []byte) (Entry, bool) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(line, &raw); err != nil {
		return Entry{}, false
	}
	cursor := field(raw["__CURSOR"])
	if cursor == "" {
		return Entry{}, false
	}
	e := Entry{Cursor: cursor, Priority: 6, Unit: field(raw["_SYSTEMD_UNIT"]), Message: field(raw["MESSAGE"])}
	if us, err := strconv.ParseInt(field(raw["__REALTIME_TIMESTAMP"]), 10, 64); err == nil {
		e.Time = time.UnixMicro(us).UTC()
	}
	if p, err := strconv.Atoi(field(raw["PRIORITY"])); err == nil && p >= 0 && p <= 7 {
		e.Priority = p
	}
	return e, true
}

// field decodes a journal JSON field: a string, an array of bytes (binary
// or non-UTF-8 data), or an array of those (a field set several times: the
// first is kept). Anything else is "".
func field(v json.RawMessage) string {
	if len(v) == 0 {
		return ""
	}
	var s string
	if json.Unmarshal(v, &s) == nil {
		return s
	}
	var bs []byte
	var nums []int
	if json.Unmarshal(v, &nums) == nil {
		for _, n := range nums {
			if n < 0 || n > 255 {
				return ""
			}
			bs = append(bs, byte(n))
		}
		return strings.ToValidUTF8(string(bs), string(utf8.RuneError))
	}
	var many []json.RawMessage
	if json.Unmarshal(v, &many) == nil && len(many) > 0 {
		return field(many[0])
	}
	return ""
}

// limitedWriter keeps the first n bytes written and discards the rest, so
// a chatty stderr cannot grow without bound.
type limitedWriter struct {
	w io.Writer
	n int
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if l.n > 0 {
		k := min(len(p), l.n)
		_, _ = l.w.Write(p[:k])
		l.n -= k
	}
	return len(p), nil
}
