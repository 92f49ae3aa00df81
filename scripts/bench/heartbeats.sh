#!/usr/bin/env bash
# Heartbeat load: one simulated agent per node of a site, each beating every 10 s, over real
# HTTP from the load generator (crates/agent/examples/heartbeat_load.rs), against a release
# `neocloud serve` on SQLite. Reports the generator's latency percentiles and the server's CPU
# (user+sys seconds from one interval into the heartbeat phase to its end, over that time)
# and resident memory.
#
#   scripts/bench/heartbeats.sh                     # 27,500 agents: memphis-1 of the demo
#   FLEET=examples/million-gpus.fleet.toml SITE=giga-1 scripts/bench/heartbeats.sh   # 125,000
#   RELAYS=2 scripts/bench/heartbeats.sh            # agents beat to 2 relays (neocloud relay),
#                                                  # which pass them on in batches
#   BATCH=500 scripts/bench/heartbeats.sh           # the generator sends batches of 500 itself,
#                                                  # as relays on other machines would
#   LOADGEN_ARGS=--silent-while-registering ...     # agents silent until the heartbeat phase:
#                                                  # a site coming back from an outage
#
# The generator runs on the same machine and takes CPU from the server: on a 2-core machine
# the figures are a lower bound of what one server does.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/lib.sh
LOADGEN="${LOADGEN:-target/release/examples/heartbeat_load}"
SITE="${SITE:-memphis-1}"
DURATION="${DURATION:-60}"
INTERVAL="${INTERVAL:-10}"
dir="$BENCH_DIR/heartbeats-$SITE"
stop_server "$dir"; rm -rf "$dir"; mkdir -p "$dir"
if [ -n "${FLEET:-}" ]; then
  start_server "$dir" --fleet "$FLEET" --heartbeat-interval "$INTERVAL" ${DB_ARGS:-}
else
  start_server "$dir" --demo --heartbeat-interval "$INTERVAL" ${DB_ARGS:-}
fi
pid=$(cat "$dir.pid")
op=$(cat "$dir/operator.key")
enroll=$("$BIN" --url "$URL" --api-key "$op" -o json keys create --name bench-enroll --role node-agent |
         python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')
# CPU seconds (user+sys) of the server so far.
cpu() { awk '{print ($14 + $15) / 100}' "/proc/$pid/stat"; }
rss() { awk '/VmRSS/ {print $2 / 1024 " MiB"}' "/proc/$pid/status"; }
echo "== server before registration: RSS $(rss)"
# Relays, when asked for: each on its own port, the agents spread over them by name.
servers="$URL"
relay_pids=()
if [ "${RELAYS:-0}" -gt 0 ]; then
  servers=""
  for i in $(seq 1 "$RELAYS"); do
    rport=$((PORT + i))
    "$BIN" relay --listen "127.0.0.1:$rport" --server "$URL" --key "$enroll" \
      ${RELAY_ARGS:-} >"$dir/relay-$i.log" 2>&1 &
    relay_pids+=($!)
    servers="${servers:+$servers,}http://127.0.0.1:$rport"
  done
  for i in $(seq 1 "$RELAYS"); do
    until grep -q "listening on" "$dir/relay-$i.log"; do sleep 0.1; done
  done
fi
# CPU seconds (user+sys) of the relays so far.
relay_cpu() {
  local t=0
  for p in "${relay_pids[@]}"; do t=$(awk -v t="$t" '{print t + ($14 + $15) / 100}' "/proc/$p/stat"); done
  echo "$t"
}
"$LOADGEN" --server "$servers" --key "$enroll" --operator-key "$op" --site "$SITE" \
  --interval-secs "$INTERVAL" --duration-secs "$DURATION" ${AGENTS:+--agents "$AGENTS"} \
  ${BATCH:+--batch "$BATCH"} ${LOADGEN_ARGS:-} \
  2>&1 | tee "$dir/loadgen.out" &
gen=$!
# The heartbeat phase starts when the generator prints it; measure the server's CPU from one
# interval later (every agent has beaten once: its node key is read and cached) to its end.
until grep -q "^phase 2" "$dir/loadgen.out" 2>/dev/null || ! kill -0 $gen 2>/dev/null; do sleep 0.2; done
sleep "$INTERVAL"
c0=$(cpu); r0=$(relay_cpu); t0=$(date +%s.%N)
wait $gen
c1=$(cpu); r1=$(relay_cpu); t1=$(date +%s.%N)
rate=$(python3 -c "import json,sys; print([json.loads(l[7:]) for l in open('$dir/loadgen.out') if l.startswith('RESULT ')][-1]['achieved_rate'])")
echo "== server over the heartbeat phase: $(python3 -c "print(f'{($c1-$c0)/($t1-$t0):.2f}')") cores busy on average, $(python3 -c "print(f'{($c1-$c0)/($t1-$t0)/$rate*1e6:.0f}')") µs of CPU per heartbeat; RSS $(rss)"
if [ "${#relay_pids[@]}" -gt 0 ]; then
  echo "== relays ($RELAYS) over the heartbeat phase: $(python3 -c "print(f'{($r1-$r0)/($t1-$t0):.2f}')") cores busy, $(python3 -c "print(f'{($r1-$r0)/($t1-$t0)/$rate*1e6:.0f}')") µs of CPU per heartbeat"
  kill "${relay_pids[@]}" 2>/dev/null || true
  wait "${relay_pids[@]}" 2>/dev/null || true
  grep -h "relay stopped" "$dir"/relay-*.log || true
fi
stop_server "$dir"
