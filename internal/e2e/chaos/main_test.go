package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/testkit/chaos"
)

var (
	buildOnce sync.Once
	binDir    string
	binary    string
	buildErr  error
)

// TestMain removes the worker binary the tests built.
func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

func worker(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "chaos-bin")
		if buildErr != nil {
			return
		}
		binary, buildErr = chaos.BuildWorker(binDir)
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binary
}

// TestChaos runs the command for two seeds of three minutes each, side by
// side (each on its own Redis, FalkorDB, fakes and workers), and wants
// violations=0 from both. A violation prints its seed, the faults around
// it and the history entries that show it; the run's logs are kept.
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos: two seeds of three minutes of faults on real processes; skipped in -short mode")
	}
	bin := worker(t)
	for _, seed := range []int64{1, 2} {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			t.Parallel()
			var out bytes.Buffer
			start := time.Now()
			code := run(context.Background(), []string{"-seed", fmt.Sprint(seed), "-duration", "3m", "-worker-binary", bin}, &out, &out)
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			last := lines[len(lines)-1]
			t.Logf("seed %d: %s in %v", seed, last, time.Since(start).Round(time.Second))
			if code != 0 || last != "violations=0" {
				t.Fatalf("seed %d: exit %d, %s\n%s", seed, code, last, out.String())
			}
			// The report says what was checked.
			for _, want := range []string{"faults injected per kind:", "invariants:", "recovery (fault healed → work flowing again):"} {
				if !strings.Contains(out.String(), want) {
					t.Errorf("the report lacks %q", want)
				}
			}
		})
	}
}

// The command's own flags: a plan is printed without running anything,
// and the same seed prints the same plan.
func TestPlanIsTheSameForTheSameSeed(t *testing.T) {
	plan := func(seed string) string {
		var out bytes.Buffer
		if code := run(context.Background(), []string{"-seed", seed, "-duration", "10m", "-plan"}, &out, &out); code != 0 {
			t.Fatalf("-plan exited %d:\n%s", code, out.String())
		}
		return out.String()
	}
	if a, b := plan("7"), plan("7"); a != b || !strings.Contains(a, "#1 ") {
		t.Fatalf("seed 7 planned differently:\n%s\n%s", a, b)
	}
	if plan("7") == plan("8") {
		t.Fatal("seeds 7 and 8 planned alike")
	}
}

func TestBadFlagsExitTwo(t *testing.T) {
	for _, args := range [][]string{{"-duration", "1s"}, {"-workers", "1"}, {"-faults", "flood"}, {"-drop", "x"}, {"extra"}} {
		var out bytes.Buffer
		if code := run(context.Background(), args, &out, &out); code != 2 {
			t.Errorf("%v: exit %d, want 2\n%s", args, code, out.String())
		}
	}
}
