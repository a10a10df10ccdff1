package handlers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/stargazer/stargazer-jobs/internal/clients/gemini"
	"github.com/stargazer/stargazer-jobs/internal/clients/gemini/geminitest"
	"github.com/stargazer/stargazer-jobs/internal/testkit/redistest"
	"github.com/stargazer/stargazer-jobs/jobs"
)

func TestGeminiKeyProbeReportsThePoolWithoutEverShowingAKey(t *testing.T) {
	const (
		okKey      = "AIzaSyHANDLER-ok-000000000000000000000"
		dayKey     = "AIzaSyHANDLER-day-00000000000000000000"
		invalidKey = "AIzaSyHANDLER-invalid-0000000000000000"
		flakyKey   = "AIzaSyHANDLER-flaky-00000000000000000"
	)
	keys := []string{okKey, dayKey, invalidKey, flakyKey}
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	fake := geminitest.NewServer(t, map[string]string{
		okKey: geminitest.OK, dayKey: geminitest.PerDay, invalidKey: geminitest.Invalid, flakyKey: geminitest.ServerError,
	})
	prober, err := gemini.NewProber(gemini.NewPool(rdb), gemini.ProberOptions{BaseURL: fake.URL, Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	now := time.Date(2026, 5, 4, 18, 0, 0, 0, time.UTC)
	d := Deps{
		Redis: rdb, Now: func() time.Time { return now }, KeyProber: prober,
		Logger: slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	ctx := context.Background()
	run := func() Result {
		t.Helper()
		res, err := work(ctx, d, jobs.GeminiKeyProbe, &jobs.Empty{})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	first := run()
	want := Result{"keys": 4, "ok": 1, "exhausted": 1, "invalid": 1, "recovered": 0, "errors": 1, "removed": 0}
	if fmt.Sprint(first) != fmt.Sprint(want) {
		t.Errorf("first run %v, want %v", first, want)
	}
	fake.Set(dayKey, geminitest.OK)
	second := run()
	if second["recovered"] != 1 || second["ok"] != 2 || second["exhausted"] != 0 {
		t.Errorf("second run %v, want the per-day key recovered", second)
	}
	third := run()
	if third["recovered"] != 0 || fmt.Sprint(third["ok"]) != "2" {
		t.Errorf("third run %v: a recovery is reported once", third)
	}
	for _, want := range []string{"gemini key recovered", gemini.Fingerprint(dayKey), "gemini key probe inconclusive"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("logs lack %q:\n%s", want, logs.String())
		}
	}

	// The key never appears: not in the logs, the results, nor anywhere in Redis.
	results, _ := json.Marshal([]Result{first, second, third})
	var dump strings.Builder
	for _, name := range rdb.Keys(ctx, "*").Val() {
		dump.WriteString(name)
		switch rdb.Type(ctx, name).Val() {
		case "hash":
			fmt.Fprint(&dump, rdb.HGetAll(ctx, name).Val())
		case "zset":
			fmt.Fprint(&dump, rdb.ZRange(ctx, name, 0, -1).Val())
		default:
			t.Errorf("unexpected key %s", name)
		}
	}
	if dump.Len() == 0 {
		t.Fatal("nothing in Redis")
	}
	for _, k := range keys {
		for where, text := range map[string]string{"logs": logs.String(), "results": string(results), "redis": dump.String()} {
			if strings.Contains(text, k) {
				t.Errorf("key %s found in %s", gemini.Fingerprint(k), where)
			}
		}
	}
}

func TestGeminiKeyProbeRetriesOnlyWhatRetryingCanFix(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	d := Deps{Redis: rdb, Now: time.Now, Logger: slog.New(slog.DiscardHandler)}
	if _, err := work(context.Background(), d, jobs.GeminiKeyProbe, &jobs.Empty{}); !errors.Is(err, asynq.SkipRetry) {
		t.Errorf("without a pool: err = %v, want SkipRetry", err)
	}
	fake := geminitest.NewServer(t, map[string]string{"AIzaSyHANDLER-down": geminitest.ServerError})
	prober, err := gemini.NewProber(gemini.NewPool(rdb), gemini.ProberOptions{BaseURL: fake.URL, Keys: []string{"AIzaSyHANDLER-down"}})
	if err != nil {
		t.Fatal(err)
	}
	d.KeyProber = prober
	_, err = work(context.Background(), d, jobs.GeminiKeyProbe, &jobs.Empty{})
	if !errors.Is(err, gemini.ErrAllProbesFailed) || errors.Is(err, asynq.SkipRetry) {
		t.Errorf("Gemini down: err = %v, want a retryable ErrAllProbesFailed", err)
	}
	if strings.Contains(err.Error(), "AIzaSyHANDLER-down") {
		t.Errorf("error carries the key: %v", err)
	}
}
