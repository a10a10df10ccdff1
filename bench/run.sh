#!/usr/bin/env bash
# Runs the benchmarks whose figures docs/performance.md records. Each
# benchmark measures ours and bare asynq side by side in the same run.
# Run it on an otherwise idle machine: the figures are throughput and
# latency, which a busy CPU skews.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null 2>&1 || { echo "redis-server missing: run ./scripts/test.sh once (it installs it)" >&2; exit 1; }
go test -run '^$' -bench 'NoopThroughput' -benchtime 10x -timeout 30m ./bench/
go test -run '^$' -bench 'IdleCommands|SchedulerLateness|WorkerRSS' -benchtime 1x -timeout 30m ./bench/
# Many pods on one Redis (about 10 minutes; prints one table).
PODS_TCI=1s,100ms ./bench/pods.sh
# What the LLM spend ledger adds to each call and to the extraction benchmark (needs the FalkorDB module).
go test -run '^$' -bench 'SpendAccounting$' -benchtime 10x -timeout 30m ./bench/
go test -run '^$' -bench 'SpendCallPath' -benchtime 5000x -count 3 ./bench/
# Knowledge extraction on 1, 2 and 4 real worker processes (about 10 minutes; needs the FalkorDB module too).
go test -run '^$' -bench 'ExtractionScaleOut' -benchtime 1x -timeout 90m ./bench/
# Knowledge-graph maintenance on a 200k-edge graph (needs the FalkorDB module: ./scripts/test.sh installs it).
go test -run '^$' -bench 'KGMaintenance200k|KGDecay200kUnbatched' -benchtime 1x -count 3 -timeout 30m ./internal/kg/maint/
# Data at scale: the extraction planners over 1,000,000 cached messages in 2,000 channels (about 3 minutes),
# and decay and orphan GC of a 1,000,000-edge graph with a concurrent reader (about a minute per batch size
# and run). Both need the FalkorDB module.
go test -run '^$' -bench 'PlannerAt1M' -benchtime 1x -timeout 60m ./handlers/
go test -run '^$' -bench 'KGMaintenance1M' -benchtime 1x -count 3 -timeout 60m ./internal/kg/maint/
