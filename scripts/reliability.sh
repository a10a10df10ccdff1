#!/usr/bin/env bash
# Runs the reliability suite (real worker processes and redis-server under
# SIGKILL, Redis crashes and outages, partitions, SIGTERM, bad input, a
# panicking singleton, Sentinel failover and injected latency) and prints
# each scenario's measured figures.
# The same tests also run in ./scripts/test.sh, where the Redis outage lasts
# 75 s; here it lasts SGJOBS_OUTAGE (default 10m, so the script takes about
# 30 minutes; SGJOBS_OUTAGE=3m ./scripts/reliability.sh for a shorter run).
# This script runs only these tests, verbosely, and collects the FIGURE lines.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null 2>&1 || { echo "redis-server missing: run ./scripts/test.sh once (it installs it)" >&2; exit 1; }
out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0
export SGJOBS_OUTAGE="${SGJOBS_OUTAGE:-10m}"
go test -count=1 -timeout 90m -run 'TestReliability|TestKilledWorkers|TestPanickingSingleton|TestShutdownWithRedisUnreachable|TestAFailingSubscribe' -v ./internal/e2e/ | tee "$out" || status=$?
echo
echo "== figures"
grep -o 'FIGURE .*' "$out" || true
grep -E '^\s+e2e_test.go:[0-9]+: SIGKILL' "$out" || true
exit $status
