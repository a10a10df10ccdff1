package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestFileOffsetClockFollowsTheFile(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	path := filepath.Join(t.TempDir(), "offset")
	if err := os.WriteFile(path, []byte("4s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := fileOffsetClock(ctx, path, func() time.Time { return base })
	if got := now().Sub(base); got != 4*time.Second {
		t.Fatalf("offset %v at the start, want 4s", got)
	}
	wait := func(want time.Duration) {
		t.Helper()
		for end := time.Now().Add(2 * time.Second); now().Sub(base) != want; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("offset %v, want %v", now().Sub(base), want)
			}
		}
	}
	if err := os.WriteFile(path, []byte("-2.5s"), 0o600); err != nil {
		t.Fatal(err)
	}
	wait(-2500 * time.Millisecond)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	wait(0)
}
