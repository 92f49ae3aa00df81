#!/usr/bin/env bash
# Heartbeats through one server, then through followers: three `neocloud serve` replicas on
# one PostgreSQL database, one simulated agent per node of a site registered once, beating
# first to the leader alone (the one-server baseline; the followers idle) and then, for as
# long, to the two followers (`--server F1,F2`: each agent starts at one chosen by its node's
# name and fails over to the other, as `neocloud agent` does), which answer heartbeats
# without news themselves. Reports each replica's CPU (user+sys seconds) in cores and per
# heartbeat, over each phase once every agent has beaten once in it (a follower learns an
# agent registered through the leader from its first heartbeat, which it passes on), and
# over 20 s with no heartbeats before the agents register (the idle baseline).
#
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432 scripts/bench/heartbeats-replicas.sh
#   DATABASE_URL=… FLEET=examples/million-gpus.fleet.toml SITE=giga-1 INTERVAL=60 \
#     scripts/bench/heartbeats-replicas.sh                    # 125,000 agents
#
# DATABASE_URL names a PostgreSQL server (no database): the script creates a database of its
# own there (with psql) and drops it at the end. The generator runs on the same machine.
# SERVE_ARGS go to every replica: on a small machine with the million-GPU fleet, a longer
# lease and follower refresh (`--lease-ttl 30 --follower-refresh 30`) keep 125,000
# registrations from starving the lease renewals with followers' rebuilds.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${DATABASE_URL:?set DATABASE_URL to a PostgreSQL server, e.g. postgres://postgres@127.0.0.1:5432}"
BIN="${NEOCLOUD_BIN:-target/release/neocloud}"
LOADGEN="${LOADGEN:-target/release/examples/heartbeat_load}"
BENCH_DIR="${BENCH_DIR:-/tmp/neocloud-bench}"
SITE="${SITE:-memphis-1}"
DURATION="${DURATION:-60}"
INTERVAL="${INTERVAL:-10}"
PORT0="${BENCH_PORT:-18900}"
server="${DATABASE_URL%/}"
db="neocloud_bench_hb_$$"
psql "$server/postgres" -qc "CREATE DATABASE $db"
dburl="$server/$db"
dir="$BENCH_DIR/heartbeats-replicas"
rm -rf "$dir"; mkdir -p "$dir"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  psql "$server/postgres" -qc "DROP DATABASE IF EXISTS $db" || true
}
trap cleanup EXIT
start() { # start INDEX [args...]
  local i="$1"; shift
  local port=$((PORT0 + i))
  "$BIN" serve --listen "127.0.0.1:$port" --data-dir "$dir/r$i" --database-url "$dburl" \
    --heartbeat-interval "$INTERVAL" ${SERVE_ARGS:-} "$@" >"$dir/r$i.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 60000); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
    kill -0 "${pids[-1]}" 2>/dev/null || break
    sleep 0.01
  done
  echo "replica $i did not become ready; log:" >&2; tail -20 "$dir/r$i.log" >&2; exit 1
}
if [ -n "${FLEET:-}" ]; then start 0 --fleet "$FLEET"; else start 0 --demo; fi
start 1
start 2
urls=("http://127.0.0.1:$PORT0" "http://127.0.0.1:$((PORT0 + 1))" "http://127.0.0.1:$((PORT0 + 2))")
curl -s "${urls[0]}/readyz"; echo
curl -s "${urls[1]}/readyz"; echo
op=$(cat "$dir/r0/operator.key")
enroll=$("$BIN" --url "${urls[0]}" --api-key "$op" -o json keys create --name bench-enroll --role node-agent |
         python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')
cpu() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; }
snap() { local out=""; for p in "${pids[@]}"; do out="$out $(cpu "$p")"; done; echo "$out $(date +%s.%N)"; }
i0=$(snap); sleep 20; i1=$(snap)
"$LOADGEN" --server "${urls[0]}" --then-server "${urls[1]},${urls[2]}" --key "$enroll" \
  --operator-key "$op" --site "$SITE" --interval-secs "$INTERVAL" --duration-secs "$DURATION" \
  ${AGENTS:+--agents "$AGENTS"} 2>&1 | tee "$dir/loadgen.out" &
gen=$!
wait_for() { until grep -q "^$1" "$dir/loadgen.out" 2>/dev/null || ! kill -0 $gen 2>/dev/null; do sleep 0.1; done; }
# Each phase is measured from one interval after it starts (every agent has beaten once)
# to its end.
wait_for "phase 2"; sleep $((INTERVAL + 1)); s2=$(snap)
wait_for "phase 3"; s3=$(snap); sleep $((INTERVAL + 1)); s3w=$(snap)
wait $gen; s4=$(snap)
# Heartbeats each replica answered itself, and those its handler passed on to the leader.
for i in 0 1 2; do
  echo "== replica $i: $(curl -s "${urls[$i]}/metrics" | grep -E '^neocloud_heartbeats(_passed)?_total' | tr '\n' ' ')"
done
report() { # report LABEL BEFORE AFTER HEARTBEATS_PER_SEC
  python3 - "$1" "$2" "$3" "$4" <<'PY'
import sys
label, a, b, rate = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), float(sys.argv[4])
secs = float(b[-1]) - float(a[-1])
beats = rate * secs
names = ["leader", "follower 1", "follower 2"]
parts = []
for n, x, y in zip(names, a[:-1], b[:-1]):
    c = float(y) - float(x)
    parts.append(f"{n} {c / secs:.3f} cores ({c * 1e6 / max(beats, 1):.1f} µs/heartbeat)")
print(f"== {label}: {secs:.0f} s, ~{beats:.0f} heartbeats: " + "; ".join(parts))
PY
}
rate() { grep '^RESULT' "$dir/loadgen.out" | sed -n "$1p" | python3 -c 'import json,sys; print(json.loads(sys.stdin.read()[7:])["achieved_rate"])'; }
report "idle, before the agents register" "$i0" "$i1" 0
report "phase 2, all heartbeats to the leader" "$s2" "$s3" "$(rate 1)"
report "phase 3, all heartbeats to the followers" "$s3w" "$s4" "$(rate 2)"
