package check

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// Write prints the report: the faults injected per kind, the counts, the
// invariant table, recovery times, and every violation with the seed, the
// fault timeline around it and the history entries that show it. It does
// not print the final "violations=" line; the command does.
func Write(w io.Writer, h *History, r *Report) {
	fmt.Fprintf(w, "\nseed %d: %s of faults, %s in all\n", h.Seed, h.FaultsEnd.Sub(h.Warm).Round(time.Second), h.End.Sub(h.Start).Round(time.Second))
	fmt.Fprintln(w, "\nfaults injected per kind:")
	perKind := map[string]int{}
	skipped := map[string]int{}
	for _, f := range h.Faults {
		if f.Skipped != "" {
			skipped[f.Kind]++
			continue
		}
		perKind[f.Kind]++
	}
	for _, k := range Kinds {
		if perKind[k] == 0 && skipped[k] == 0 {
			continue
		}
		line := fmt.Sprintf("  %-20s %4d", k, perKind[k])
		if skipped[k] > 0 {
			line += fmt.Sprintf("  (%d not injected)", skipped[k])
		}
		fmt.Fprintln(w, line)
	}
	fmt.Fprintln(w, "\ncounts:")
	keys := make([]string, 0, len(r.Counts))
	for k := range r.Counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "  %-22s %6d\n", k, r.Counts[k])
	}
	fmt.Fprintln(w, "\ninvariants:")
	fmt.Fprintf(w, "  %-58s %8s  %-38s %s\n", "invariant", "checked", "", "violations")
	for _, inv := range r.Invariants {
		fmt.Fprintf(w, "  %-58s %8d  %-38s %d\n", inv.Name, inv.Checked, inv.Unit, len(inv.Violations))
		notes := make([]string, 0, len(inv.Notes))
		for n := range inv.Notes {
			notes = append(notes, n)
		}
		sort.Strings(notes)
		for _, n := range notes {
			fmt.Fprintf(w, "      allowed %4d× %s\n", inv.Notes[n], n)
		}
		if len(inv.Growth) > 0 {
			fmt.Fprintf(w, "      largest growth: goroutines %+d (bound %+d), fds %+d (%+d), TCP connections %+d (%+d)\n",
				inv.Growth["goroutines"], h.Config.MaxGoroutineGrowth, inv.Growth["fds"], h.Config.MaxFDGrowth, inv.Growth["conns"], h.Config.MaxConnGrowth)
		}
	}
	fmt.Fprintln(w, "\nrecovery (fault healed → work flowing again):")
	fmt.Fprintf(w, "  %-20s %8s %8s %9s %9s\n", "kind", "faults", "measured", "p95", "max")
	for _, rc := range r.Recovery {
		line := fmt.Sprintf("  %-20s %8d %8d %9s %9s", rc.Kind, rc.Injected, rc.Measured, dur(rc.P95, rc.Measured), dur(rc.Max, rc.Measured))
		if rc.NotMeasured > 0 {
			line += fmt.Sprintf("  (%d not measured: %s)", rc.NotMeasured, rc.NotMeasuredWhy)
		}
		fmt.Fprintln(w, line)
	}
	n := 0
	for _, inv := range r.Invariants {
		for _, v := range inv.Violations {
			n++
			if n > 40 {
				continue
			}
			fmt.Fprintf(w, "\nVIOLATION (seed %d) %s at %s: %s\n", h.Seed, v.Invariant, v.At.Format("15:04:05.000"), v.What)
			for _, e := range v.Entries {
				fmt.Fprintf(w, "    %s\n", e)
			}
			if tl := Timeline(h, v.At, 30*time.Second); len(tl) > 0 {
				fmt.Fprintf(w, "    faults within 30 s:\n")
				for _, l := range tl {
					fmt.Fprintf(w, "      %s\n", l)
				}
			}
		}
	}
	if n > 40 {
		fmt.Fprintf(w, "\n(%d more violations not shown)\n", n-40)
	}
}

// Timeline lists the faults active within around of at.
func Timeline(h *History, at time.Time, around time.Duration) []string {
	var out []string
	for _, f := range h.Faults {
		if f.Skipped != "" || f.End.Before(at.Add(-around)) || f.Start.After(at.Add(around)) {
			continue
		}
		out = append(out, FaultLine(h, f))
	}
	return out
}

// FaultLine describes one fault with its times relative to the start.
func FaultLine(h *History, f Fault) string {
	rel := func(t time.Time) string { return fmt.Sprintf("%7.1fs", t.Sub(h.Start).Seconds()) }
	line := fmt.Sprintf("#%-3d %s → %s  %-18s %-8s %s", f.ID, rel(f.Start), rel(f.End), f.Kind, f.Target, f.Detail)
	if f.Skipped != "" {
		line += " (not injected: " + f.Skipped + ")"
	}
	return strings.TrimRight(line, " ")
}

func dur(d time.Duration, n int) string {
	if n == 0 {
		return "-"
	}
	return d.Round(100 * time.Millisecond).String()
}
