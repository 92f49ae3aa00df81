#!/usr/bin/env bash
# GET /v1/nodes under load with wrk on the full-size demo (SQLite), against the baseline
# GET /healthz (same server, same connections, no database and no auth) in the same run.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/lib.sh
dir="$BENCH_DIR/http"
stop_server "$dir"; rm -rf "$dir"; mkdir -p "$dir"
start_server "$dir" --demo ${DB_ARGS:-}
key=$(cat "$dir/operator.key")
dur=${DURATION:-20s}; conns=${CONNECTIONS:-32}; threads=${THREADS:-2}
echo "== baseline: GET /healthz"
wrk -t"$threads" -c"$conns" -d"$dur" --latency "$URL/healthz"
echo "== GET /v1/nodes?site=memphis-1&limit=100 (first page)"
wrk -t"$threads" -c"$conns" -d"$dur" --latency -H "Authorization: Bearer $key" "$URL/v1/nodes?site=memphis-1&limit=100"
echo "== GET /v1/nodes?site=memphis-1&block=m1-pod13/m1-pod13-leaf10&limit=100 (a deep page by block)"
wrk -t"$threads" -c"$conns" -d"$dur" --latency -H "Authorization: Bearer $key" "$URL/v1/nodes?site=memphis-1&block=m1-pod13/m1-pod13-leaf10&limit=100"
echo "== GET /v1/nodes/m1-pod13-leaf10-n20 (one node with its GPUs)"
wrk -t"$threads" -c"$conns" -d"$dur" --latency -H "Authorization: Bearer $key" "$URL/v1/nodes/m1-pod13-leaf10-n20"
stop_server "$dir"
