package maint

import "testing"

func TestSpanSizesEachRangeFromWhatThePreviousHeld(t *testing.T) {
	tests := []struct {
		name      string
		width     int64
		items     int64
		wantWidth int64
	}{
		{"empty range widens fourfold", 100, 0, 400},
		{"half-full range doubles", 100, 50, 200},
		{"on target stays", 100, 100, 100},
		{"a hub shrinks at most fourfold", 100, 10_000, 25},
		{"never below one id", 1, 10_000, 1},
		{"never above the cap", 6000, 0, 6400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSpan(0, 1_000_000, tt.width, 100)
			s.advance(tt.items)
			if s.lo != tt.width || s.width != tt.wantWidth {
				t.Errorf("after [0, %d): lo %d width %d, want lo %d width %d", tt.width, s.lo, s.width, tt.width, tt.wantWidth)
			}
		})
	}
}

func TestSpanCoversEveryIDOnce(t *testing.T) {
	s := newSpan(5, 1000, 7, 10)
	next := int64(5)
	for !s.done() {
		if s.lo != next || s.hi() <= s.lo || s.hi() > 1001 {
			t.Fatalf("range [%d, %d), want it to start at %d and end by 1001", s.lo, s.hi(), next)
		}
		next = s.hi()
		s.advance(3)
	}
	if next != 1001 {
		t.Errorf("walk ended at %d, want 1001", next)
	}
}
