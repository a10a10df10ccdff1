package logstore

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// NodeCursor is one node's ingestion state of one unit's journal.
type NodeCursor struct {
	Host, Unit string
	Cursor
	UpdatedAt time.Time
}

// Cursors lists the ingestion state of every node and unit (a SCAN of the
// cursor hashes).
func (s *Store) Cursors(ctx context.Context) ([]NodeCursor, error) {
	var keys []string
	seen := map[string]bool{}
	iter := s.rdb.Scan(ctx, 0, cursorPrefix+"*", 500).Iterator()
	for iter.Next(ctx) {
		if k := iter.Val(); !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
	}
	if err := iter.Err(); err != nil {
		return nil, fmt.Errorf("logstore: scanning cursors: %w", err)
	}
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(keys))
	for i, k := range keys {
		cmds[i] = pipe.HGetAll(ctx, k)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("logstore: reading cursors: %w", err)
	}
	out := make([]NodeCursor, 0, len(keys))
	for i, k := range keys {
		rest := strings.TrimPrefix(k, cursorPrefix)
		cut := strings.LastIndexByte(rest, ':')
		if cut <= 0 {
			continue
		}
		m := cmds[i].Val()
		out = append(out, NodeCursor{Host: rest[:cut], Unit: rest[cut+1:],
			Cursor:    Cursor{After: m["cursor"], Since: msTime(m["since"]), PendingEnd: m["pending_end"]},
			UpdatedAt: msTime(m["updated_at"])})
	}
	return out, nil
}

// journalCursor is the form of a systemd journal cursor.
var journalCursor = regexp.MustCompile(`^s=[0-9a-f]+;i=[0-9a-f]+;b=[0-9a-f]+;m=[0-9a-f]+;t=[0-9a-f]+;x=[0-9a-f]+$`)

// ValidJournalCursor reports whether c has the form of a journal cursor
// (journalctl --show-cursor).
func ValidJournalCursor(c string) bool { return journalCursor.MatchString(c) }

// SetAfter moves the cursor of unit's journal on host to after an entry
// (an operator's hand-over), dropping any pending run.
func (s *Store) SetAfter(ctx context.Context, host, unit, after string, now time.Time) error {
	return s.Advance(ctx, host, unit, after, now)
}

// SetSince makes the next run on host read unit's journal from since, as
// a first run: the cursor and any pending run are dropped.
func (s *Store) SetSince(ctx context.Context, host, unit string, since, now time.Time) error {
	k := CursorKey(host, unit)
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HDel(ctx, k, "cursor", "pending_end")
		p.HSet(ctx, k, "since", since.UnixMilli(), "updated_at", now.UnixMilli())
		return nil
	})
	if err != nil {
		return fmt.Errorf("logstore: setting start: %w", err)
	}
	return nil
}
