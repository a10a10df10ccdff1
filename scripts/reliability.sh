#!/usr/bin/env bash
# Runs the reliability suite (real worker processes and redis-server under
# SIGKILL, Redis crashes, partitions, SIGTERM, bad input, Sentinel failover
# and injected latency) and prints each scenario's measured figures.
# The same tests also run in ./scripts/test.sh; this script runs only them,
# verbosely, and collects the FIGURE lines.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null 2>&1 || { echo "redis-server missing: run ./scripts/test.sh once (it installs it)" >&2; exit 1; }
out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0
go test -count=1 -timeout 30m -run 'TestReliability|TestKilledWorkers' -v ./internal/e2e/ | tee "$out" || status=$?
echo
echo "== figures"
grep -o 'FIGURE .*' "$out" || true
grep -E '^\s+e2e_test.go:[0-9]+: SIGKILL' "$out" || true
exit $status
