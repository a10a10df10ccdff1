#!/usr/bin/env bash
# The long chaos run of docs/reliability.md ("Chaos"): the chaos command
# (go run ./internal/e2e/chaos) for several seeds, a few side by side, each
# on its own Redis, FalkorDB, fakes and workers, then one table over all of
# them. Needs what ./scripts/test.sh --install-only installs.
#
#   ./scripts/chaos.sh                          # seeds 1-10, 10 min each, 2 at a time
#   SEEDS="1 2" DURATION=3m PARALLEL=2 ./scripts/chaos.sh
#   OUT=/tmp/chaos ./scripts/chaos.sh           # keep each seed's report there
#
# Exits non-zero when any seed reports a violation or could not run.
set -euo pipefail
cd "$(dirname "$0")/.."

SEEDS=${SEEDS:-$(seq 1 10)}
DURATION=${DURATION:-10m}
PARALLEL=${PARALLEL:-2}
WORKERS=${WORKERS:-4}
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/chaos-long.XXXXXX")}
mkdir -p "$OUT"

bin="$OUT/bin"
mkdir -p "$bin"
go build -o "$bin/chaos" ./internal/e2e/chaos
go build -o "$bin/testworker" ./internal/e2e/testworker

echo "chaos: seeds $(echo $SEEDS) × $DURATION on $WORKERS workers, $PARALLEL at a time; reports in $OUT"
start=$SECONDS
running=0
for seed in $SEEDS; do
  (
    status=0
    "$bin/chaos" -seed "$seed" -duration "$DURATION" -workers "$WORKERS" -worker-binary "$bin/testworker" >"$OUT/seed$seed.txt" 2>&1 || status=$?
    if [ "$status" -eq 0 ]; then
      echo "seed $seed: $(tail -1 "$OUT/seed$seed.txt")"
    else
      echo "seed $seed: $(tail -1 "$OUT/seed$seed.txt") (exit $status; report: $OUT/seed$seed.txt)"
    fi
  ) &
  running=$((running + 1))
  if [ "$running" -ge "$PARALLEL" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait
echo "chaos: done in $(((SECONDS - start) / 60)) min"

# One table over every seed: per seed its sizes and violations, per fault
# kind the faults injected and the recovery times (p95: the largest of the
# seeds' p95s; max: the largest of all).
awk '
  function secs(s,   v, q) {
    if (s ~ /ms$/) { sub(/ms$/, "", s); return s / 1000 }
    v = 0
    if (s ~ /m/) { split(s, q, "m"); v = q[1] * 60; s = q[2] }
    sub(/s$/, "", s)
    return v + s
  }
  FNR == 1 { seed = FILENAME; sub(/.*seed/, "", seed); sub(/\.txt$/, "", seed); seeds[++ns] = seed; sect = ""; viol[seed] = "(none)" }
  /^faults injected per kind:/ { sect = "faults"; next }
  /^counts:/ { sect = "counts"; next }
  /^invariants:/ { sect = "inv"; next }
  /^recovery/ { sect = "rec"; next }
  /^$/ { sect = ""; next }
  /^violations=/ { split($0, a, "="); viol[seed] = a[2]; total += a[2]; next }
  sect == "faults" { faults[seed] += $2; next }
  sect == "counts" { name = $0; sub(/^ +/, "", name); sub(/ +[0-9]+$/, "", name); c[seed, name] = $NF; next }
  sect == "rec" && $1 != "kind" && NF >= 5 {
    k = $1; inj[k] += $2; meas[k] += $3
    if (!(k in seen)) { seen[k] = 1; kinds[++nk] = k }
    if ($3 > 0) { p = secs($4); m = secs($5); if (p > p95[k]) p95[k] = p; if (m > mx[k]) mx[k] = m }
  }
  END {
    printf "\n%-5s %7s %12s %8s %13s %9s %10s %11s\n", "seed", "faults", "occurrences", "prompts", "prompt fires", "messages", "llm calls", "violations"
    for (i = 1; i <= ns; i++) {
      s = seeds[i]
      printf "%-5s %7d %12s %8s %13s %9s %10s %11s\n", s, faults[s], c[s, "occurrences"], c[s, "prompts"], c[s, "prompt fires"], c[s, "messages"], c[s, "llm calls"], viol[s]
    }
    printf "\n%-20s %8s %8s %9s %9s\n", "fault kind", "injected", "measured", "p95", "max"
    for (j = 1; j <= nk; j++) { k = kinds[j]; printf "%-20s %8d %8d %8.1fs %8.1fs\n", k, inj[k], meas[k], p95[k], mx[k] }
    printf "\nviolations=%d\n", total
  }
' $(for s in $SEEDS; do echo "$OUT/seed$s.txt"; done)
# Every seed ran to its end with no violation.
[ "$(for s in $SEEDS; do tail -1 "$OUT/seed$s.txt"; done | sort -u)" = "violations=0" ]
