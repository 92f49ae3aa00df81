#!/usr/bin/env bash
# End-to-end POST /v1/instances over HTTP with durable commits (SQLite, full-size demo):
# each request authenticates, places one GPU, and commits the instance, its GPU holder and
# its audit event before answering. Baseline in the same run: GET /v1/instances/{id} (an
# authenticated read of one instance). At the end, the scheduler's lock hold per command
# (p50/p99/p999 from its histogram on /metrics).
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/lib.sh
dir="$BENCH_DIR/launch"
stop_server "$dir"; rm -rf "$dir"; mkdir -p "$dir"
start_server "$dir" --demo ${DB_ARGS:-}
export NEOCLOUD_API_KEY=$(cat "$dir/operator.key")
"$BIN" --url "$URL" tenants create bench >/dev/null
id=$("$BIN" --url "$URL" -o json instances launch --tenant bench --gpu-model H100-SXM-80GB --gpus 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
dur=${DURATION:-10s}; conns=${CONNECTIONS:-16}
echo "== baseline: GET /v1/instances/$id"
wrk -t2 -c"$conns" -d"$dur" --latency -H "Authorization: Bearer $NEOCLOUD_API_KEY" "$URL/v1/instances/$id"
echo "== POST /v1/instances (1 GPU, on-demand, durable commit)"
wrk -t2 -c"$conns" -d"$dur" --latency -s scripts/bench/launch.lua "$URL/v1/instances"
"$BIN" --url "$URL" capacity --site memphis-1
echo "== scheduler lock hold per command (from /metrics: neocloud_scheduler_lock_hold_seconds)"
curl -sf "$URL/metrics" | python3 scripts/bench/quantiles.py neocloud_scheduler_lock_hold_seconds
stop_server "$dir"
