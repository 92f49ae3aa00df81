#!/usr/bin/env bash
# GET /metrics on the full-size demo (45,500 nodes; SQLite) under wrk, against GET /healthz
# on the same server in the same run.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/lib.sh
dir="$BENCH_DIR/metrics"
stop_server "$dir"; rm -rf "$dir"; mkdir -p "$dir"
start_server "$dir" --demo ${DB_ARGS:-}
dur=${DURATION:-15s}
echo "== baseline: GET /healthz"
wrk -t1 -c2 -d"$dur" --latency "$URL/healthz"
# The first scrape after a start reads the fleet layout once (about 130 ms); warm it.
curl -s "$URL/metrics" >/dev/null
echo "== GET /metrics"
wrk -t1 -c2 -d"$dur" --latency "$URL/metrics"
curl -s "$URL/metrics" | wc -c
stop_server "$dir"
