package app

import (
	"log/slog"
	"slices"
	"testing"
)

func TestStackStopsEverythingInReverseOrderEvenWhenAStopPanics(t *testing.T) {
	var got []int
	var s stack
	s.push(func() { got = append(got, 1) })
	s.push(func() { got = append(got, 2); panic("broken stop") })
	s.push(func() { got = append(got, 3) })
	s.run(slog.New(slog.DiscardHandler))
	if want := []int{3, 2, 1}; !slices.Equal(got, want) {
		t.Fatalf("stops ran in order %v, want %v", got, want)
	}
	s.run(slog.New(slog.DiscardHandler)) // a second run stops nothing twice
	if len(got) != 3 {
		t.Fatalf("stops ran again: %v", got)
	}
}
