#!/usr/bin/env bash
# The many-pods benchmark (docs/performance.md, "Many pods on one Redis"):
# 8, 32 and 64 worker processes and as many bare asynq processes against one
# redis-server, idle, under 20 periodic no-op tasks a second, and a SIGKILL
# of a quarter of them; prints one table (about 10 minutes). Run it on an
# otherwise idle machine. PODS (e.g. 1,8), PODS_TCI (TASK_CHECK_INTERVALs,
# e.g. 1s,100ms) and PODS_WINDOW (the load window) change the run.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null 2>&1 || ./scripts/test.sh --install-only
PODS_WINDOW="${PODS_WINDOW:-20s}" PODS_TCI="${PODS_TCI:-1s}" \
  go test -run '^$' -bench 'ManyPods' -benchtime 1x -timeout 40m ./bench/
