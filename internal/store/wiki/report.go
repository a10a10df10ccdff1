package wiki

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// saveReportScript replaces the report hash unless it already holds a
// report with the same digest (ARGV[1]); ARGV[2:] are the field/value
// pairs. Returns 1 when it wrote.
var saveReportScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'digest') == ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
`)

// SaveReport stores a wiki's report at LintKey unless the stored report has
// the same content, in which case nothing is written and generated_at keeps
// the time these findings were first produced. Skipping the write makes a
// second run over an unchanged wiki a true no-op (no write, no keyspace
// event for the bot) and generated_at meaningful: "findings as of".
func (s *Store) SaveReport(ctx context.Context, wikiID string, r *Report, generatedAt time.Time) (written bool, err error) {
	body, err := json.Marshal(r)
	if err != nil {
		return false, fmt.Errorf("wiki: encoding report of %s: %w", wikiID, err)
	}
	sum := sha256.Sum256(body)
	digest := hex.EncodeToString(sum[:])
	itoa := strconv.Itoa
	n, err := saveReportScript.Run(ctx, s.rdb, []string{LintKey(wikiID)}, digest,
		"generated_at", strconv.FormatInt(generatedAt.UnixMilli(), 10),
		"pages", itoa(r.Counts.Pages), "broken_links", itoa(r.Counts.BrokenLinks),
		"orphans", itoa(r.Counts.Orphans), "empty", itoa(r.Counts.Empty),
		"stale", itoa(r.Counts.Stale), "malformed", itoa(r.Counts.Malformed),
		"digest", digest, "report", string(body)).Int()
	if err != nil {
		return false, fmt.Errorf("wiki: writing %s: %w", LintKey(wikiID), err)
	}
	return n == 1, nil
}

// RemoveReport deletes a wiki's report: a wiki that stopped being lintable
// (made private, opt-in withdrawn) must not keep showing slugs and links
// from when it was.
func (s *Store) RemoveReport(ctx context.Context, wikiID string) (bool, error) {
	n, err := s.rdb.Del(ctx, LintKey(wikiID)).Result()
	if err != nil {
		return false, fmt.Errorf("wiki: deleting %s: %w", LintKey(wikiID), err)
	}
	return n == 1, nil
}

// StoredReport is a report as stored, with its hash fields.
type StoredReport struct {
	Report      Report
	GeneratedAt time.Time
	Digest      string
}

// ErrNoReport is returned by ReadReport for a wiki without a report.
var ErrNoReport = errors.New("wiki: no lint report")

// ReadReport reads a wiki's stored report.
func (s *Store) ReadReport(ctx context.Context, wikiID string) (*StoredReport, error) {
	h, err := s.rdb.HGetAll(ctx, LintKey(wikiID)).Result()
	if err != nil {
		return nil, fmt.Errorf("wiki: reading %s: %w", LintKey(wikiID), err)
	}
	if len(h) == 0 {
		return nil, ErrNoReport
	}
	out := &StoredReport{Digest: h["digest"]}
	if err := json.Unmarshal([]byte(h["report"]), &out.Report); err != nil {
		return nil, fmt.Errorf("wiki: %s: report field: %w", LintKey(wikiID), err)
	}
	if ms, ok := parseMillis(h["generated_at"]); ok {
		out.GeneratedAt = time.UnixMilli(ms)
	}
	return out, nil
}
