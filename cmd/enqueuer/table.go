package main

import (
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"
)

// lineWidth is what a table fits in unless --wide is given.
const lineWidth = 100

// table prints rows under header in aligned columns. Unless wide, lines
// fit lineWidth: the widest columns are narrowed until the last column has
// at least minLast runes, and cells longer than their column are cut with
// an ellipsis.
func table(w io.Writer, wide bool, header []string, rows [][]string) {
	const minLast = 12
	all := append([][]string{header}, rows...)
	widths := make([]int, len(header)-1)
	for _, r := range all {
		for i, cell := range r[:len(r)-1] {
			widths[i] = max(widths[i], utf8.RuneCountInString(cell))
		}
	}
	used := func() int {
		n := 0
		for _, c := range widths {
			n += c + 2
		}
		return n
	}
	for !wide && used()+minLast > lineWidth {
		widest := 0
		for i, c := range widths {
			if c > widths[widest] {
				widest = i
			}
		}
		if widths[widest] <= 8 {
			break
		}
		widths[widest]--
	}
	last := lineWidth - used()
	for _, r := range all {
		var b strings.Builder
		for i, cell := range r[:len(r)-1] {
			if !wide {
				cell = cut(cell, widths[i])
			}
			b.WriteString(cell)
			b.WriteString(strings.Repeat(" ", max(widths[i]-utf8.RuneCountInString(cell), 0)+2))
		}
		cell := r[len(r)-1]
		if !wide {
			cell = cut(cell, last)
		}
		fmt.Fprintln(w, strings.TrimRight(b.String()+cell, " "))
	}
}

// cut shortens s to at most n runes, an ellipsis marking the cut.
func cut(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	if n < 1 {
		return ""
	}
	return string([]rune(s)[:n-1]) + "…"
}

// short writes a duration the way it is typed: 1h, 48h, 10m, 1h30m, 90s.
func short(d time.Duration) string {
	s := d.Round(time.Second).String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
