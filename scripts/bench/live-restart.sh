#!/usr/bin/env bash
# Restart of 1,000,000 GPUs with live instances (SQLite): the rebuild of the allocator and
# the scheduler from the database, until /readyz answers.
#
# Set-up, once per data directory (kept in $BENCH_DIR/live and reused by later runs):
#   1. first start on examples/million-gpus.fleet.toml (imports 125,000 nodes);
#   2. baseline: restarts without live instances (hyperfine);
#   3. tenants, a reserved contract, and LIVE (default 100,000) launches through
#      POST /v1/instances with wrk and scripts/bench/live.lua (mixed shapes and classes).
# Then, every run: the count of live instances read from the database, the baseline again
# on a second data directory with the same fleet and no instances ($BENCH_DIR/mil, imported
# on first use), restarts with the live instances (hyperfine), and the server's CPU seconds
# for one more.
#
#   RUNS=3 LIVE=100000 scripts/bench/live-restart.sh         # set-up if needed, then measure
#   FRESH=1 scripts/bench/live-restart.sh                    # throw the data directory away first
#   NEOCLOUD_BIN=path/to/other/neocloud scripts/bench/live-restart.sh   # another build, same data
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/lib.sh
FLEET=examples/million-gpus.fleet.toml
MODEL=H100-SXM-80GB
dir="$BENCH_DIR/live"
runs=${RUNS:-3}
live=${LIVE:-100000}
export BIN PORT URL BENCH_DIR
export -f start_server stop_server

count_live() {
  python3 - "$dir/neocloud.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
rows = db.execute("""SELECT class || ' ' || shape_kind, state, COUNT(*), SUM(gpu_count) FROM instances
    WHERE state IN ('pending','provisioning','running','terminating','preempting','stopping')
    GROUP BY 1, state ORDER BY 1, state""").fetchall()
gangs = db.execute("""SELECT COUNT(*) FROM instances WHERE shape_kind = 'nodes'
    AND state IN ('pending','provisioning','running','terminating','preempting','stopping')""").fetchone()[0]
for c, s, n, g in rows:
    print(f"  {c:20} {s:12} {n:8} instances {g or 0:9} GPUs")
print(f"live instances: {sum(r[2] for r in rows)} ({gangs} multi-node gangs), "
      f"GPUs held: {sum(r[3] or 0 for r in rows)}")
PY
}

# restart NAME [DATA_DIR]: hyperfine of restarts on DATA_DIR (default: the live one).
restart() {
  local d="${2:-$dir}"
  hyperfine --shell=bash --runs "$runs" --prepare "stop_server $d" \
    --command-name "$1" "start_server $d --fleet $FLEET"
  stop_server "$d"
}

[ -n "${FRESH:-}" ] && { stop_server "$dir"; rm -rf "$dir"; }
if [ ! -f "$dir/filled" ]; then
  stop_server "$dir"; rm -rf "$dir"; mkdir -p "$dir"
  echo "== first start: import $FLEET"
  /usr/bin/time -f "%e s" bash -c "start_server $dir --fleet $FLEET"
  stop_server "$dir"
  echo "== baseline: restart without live instances"
  restart "restart, no live instances"
  start_server "$dir" --fleet "$FLEET"
  export NEOCLOUD_API_KEY=$(cat "$dir/operator.key")
  for t in acme-ai beta-labs gamma-ml delta-research frontier-lab; do
    "$BIN" --url "$URL" -q tenants create "$t" >/dev/null
  done
  "$BIN" --url "$URL" -q tenants create home-lab --kind internal >/dev/null
  BENCH_CONTRACT=$("$BIN" --url "$URL" -q contracts sign --tenant frontier-lab \
    --gpu-model "$MODEL" --gpus 160000 --years 3 --site giga-1 --sla 99.9)
  export BENCH_CONTRACT BENCH_MODEL=$MODEL LIVE_TARGET=$live WRK_THREADS=2
  echo "== launching $live instances (contract $BENCH_CONTRACT)"
  started=$(date +%s)
  wrk -t2 -c64 -d3600s --timeout 30s -s scripts/bench/live.lua "$URL/v1/instances" &
  wrk_pid=$!
  # wrk sleeps for its whole duration even when every thread has stopped: end it once the
  # server has accepted the launches.
  while kill -0 "$wrk_pid" 2>/dev/null; do
    sleep 3
    n=$(curl -sf "$URL/metrics" | awk '/^neocloud_http_requests_total\{/ && /route="\/v1\/instances"/ && /method="POST"/ && /status="201"/ {s += $NF} END {print s + 0}')
    if [ "$n" -ge "$live" ]; then kill -INT "$wrk_pid"; break; fi
  done
  wait "$wrk_pid" || true
  echo "launched in $(( $(date +%s) - started )) s"
  stop_server "$dir"
  touch "$dir/filled"
fi
count_live
base="$BENCH_DIR/mil"
if [ ! -f "$base/imported" ]; then
  stop_server "$base"; rm -rf "$base"; mkdir -p "$base"
  start_server "$base" --fleet "$FLEET"; stop_server "$base"
  touch "$base/imported"
fi
echo "== baseline: restart without live instances ($BIN)"
restart "restart, no live instances" "$base"
echo "== restart with live instances ($BIN)"
restart "restart, live instances"
# The server's own CPU for one more restart: less sensitive than the wall time to other work
# on the machine.
start_server "$dir" --fleet "$FLEET"
echo "server CPU until /readyz (user+sys): $(awk '{print ($14 + $15) / 100}' "/proc/$(cat "$dir.pid")/stat") s;" \
  "$(grep -o 'startup_ms=[0-9]*' "$dir.log")"
stop_server "$dir"
