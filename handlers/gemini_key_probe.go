package handlers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/clients/gemini"
	"github.com/stargazer/stargazer-jobs/jobs"
)

// KeyProber probes the shared Gemini key pool and records each key's state.
type KeyProber interface {
	Probe(ctx context.Context, now time.Time) (gemini.Report, error)
}

// geminiKeyProbe keeps the pool's exhausted/invalid marks current so the
// bot and the workers route around keys that would fail. Keys appear only
// by fingerprint in logs and the result.
type geminiKeyProbe struct {
	prober KeyProber
	now    func() time.Time
	log    *slog.Logger
}

func newGeminiKeyProbe(k kit) Worker[*jobs.Empty] {
	return &geminiKeyProbe{prober: k.KeyProber(), now: k.Now, log: k.Logger}
}

func (h *geminiKeyProbe) Work(ctx context.Context, _ *jobs.Empty) (Result, error) {
	rep, err := h.prober.Probe(ctx, h.now())
	for _, o := range rep.Outcomes {
		attrs := []any{"task", jobs.GeminiKeyProbe, "key_fingerprint", o.Fingerprint, "status", string(o.Status)}
		if !o.Until.IsZero() && o.Status == gemini.Exhausted {
			attrs = append(attrs, "exhausted_until", o.Until.UTC().Format(time.RFC3339))
		}
		switch {
		case o.Err != "":
			h.log.WarnContext(ctx, "gemini key probe inconclusive; key state unchanged", append(attrs, "reason", o.Err)...)
		case o.Recovered:
			h.log.InfoContext(ctx, "gemini key recovered", append(attrs, "was", string(o.Was))...)
		case o.Was != o.Status:
			h.log.InfoContext(ctx, "gemini key state changed", append(attrs, "was", string(o.Was), "reason", o.Reason)...)
		default:
			h.log.DebugContext(ctx, "gemini key probed", attrs...)
		}
	}
	res := Result{
		"keys": rep.Keys, "ok": rep.OK, "exhausted": rep.Exhausted, "invalid": rep.Invalid,
		"recovered": rep.Recovered, "errors": rep.Errors, "removed": rep.Removed,
	}
	if err != nil {
		if errors.Is(err, gemini.ErrAllProbesFailed) {
			// Gemini or the network is down: retry later; the pool is untouched.
			return nil, fmt.Errorf("%s: %w", jobs.GeminiKeyProbe, err)
		}
		return nil, fmt.Errorf("%s: recording key states: %w", jobs.GeminiKeyProbe, err)
	}
	return res, nil
}
