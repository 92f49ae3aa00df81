#!/usr/bin/env bash
# Delivery: time from launch to `running` for a container instance (p50/p99 over N launches
# on one node, one after another), with the agent's long poll (the default) and with
# heartbeats only (`--no-long-poll`, the baseline) in the same run; then the agent's CPU and
# memory while 8 instances run.
#
#   sudo scripts/bench/delivery.sh            # N=50 launches, N_BASELINE=10 heartbeats-only
#   N=20 HEARTBEAT=10 sudo scripts/bench/delivery.sh
#   ONLY_AGENT=1 sudo scripts/bench/delivery.sh   # only the agent with 8 instances
#
# Needs root, podman, runc, OpenSSH's server and a static busybox (the test image is built
# from it offline, as the test suite does). Launch to running is the instance's
# `started_at - created_at`, both stamped by the control plane: the agent pulling nothing
# (the image is local), creating the container with its CDI GPUs, starting its sshd, and
# reporting it running.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/lib.sh
N="${N:-50}"
N_BASELINE="${N_BASELINE:-10}"
HEARTBEAT="${HEARTBEAT:-10}"
IMAGE="localhost/neocloud-test:busybox"
HOST=gpu-node-1

if ! podman image exists "$IMAGE"; then
  root=$(mktemp -d)
  mkdir -p "$root/bin" "$root/tmp" "$root/etc" "$root/root"
  cp "$(command -v busybox)" "$root/bin/busybox"
  (cd "$root" && for a in $(./bin/busybox --list); do [ -e "bin/$a" ] || ln -s busybox "bin/$a"; done
   tar -c . | podman import - "$IMAGE" >/dev/null)
  rm -rf "$root"
fi

dir="$BENCH_DIR/delivery"
agent_pid=
cleanup() {
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null || true
  stop_server "$dir"
  podman ps -a -q --filter label=neocloud.node="$HOST" | xargs -r podman rm -f -t 0 >/dev/null 2>&1 || true
}
trap cleanup EXIT

secret() { python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])'; }

# A fresh control plane on the one-node fleet, a tenant `bench` (its key in $tk), and the
# node's agent (extra agent flags as arguments).
start_node() {
  stop_server "$dir"; rm -rf "$dir" "$dir-agent"; mkdir -p "$dir"
  start_server "$dir" --fleet examples/one-node.toml --heartbeat-interval "$HEARTBEAT"
  op=$(cat "$dir/operator.key")
  nc tenants create bench >/dev/null
  tk=$(nc -o json keys create --name bench --role tenant-admin --tenant bench | secret)
  local enroll; enroll=$(nc -o json keys create --name enroll --role node-agent | secret)
  "$BIN" agent --server "$URL" --key "$enroll" --backend sim --hostname "$HOST" \
    --runtime podman --state-dir "$dir-agent" --ssh-listen 127.0.0.1 --ssh-host 127.0.0.1 \
    --ssh-ports 22200-22299 --cpu-cores 224 --ram-gib 2048 "$@" >"$dir-agent.log" 2>&1 &
  agent_pid=$!
  sleep 2
}
nc() { "$BIN" --url "$URL" --api-key "$op" "$@"; }

# One mode: a fresh control plane and agent, N launches of a 1-GPU container, each
# terminated once running. Prints the percentiles.
measure() {
  local mode="$1" n="$2"; shift 2
  start_node "$@"
  python3 - "$URL" "$tk" "$n" "$IMAGE" "$mode" <<'PY'
import json, sys, time, urllib.request
from datetime import datetime
url, key, n, image, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
def call(method, path, body=None):
    req = urllib.request.Request(url + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)
def ts(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
waits = []
for _ in range(n):
    i = call("POST", "/v1/instances", {"gpu_model": "H100-SXM-80GB", "gpus": 1,
        "delivery": {"mode": "container", "image": image,
                     "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"]}})
    while i["state"] in ("pending", "provisioning"):
        time.sleep(0.02)
        i = call("GET", "/v1/instances/" + i["id"])
    assert i["state"] == "running", i
    waits.append(ts(i["started_at"]) - ts(i["created_at"]))
    call("POST", "/v1/instances/%s/terminate" % i["id"], {})
    while call("GET", "/v1/instances/" + i["id"])["state"] == "stopping":
        time.sleep(0.05)
waits.sort()
q = lambda p: waits[min(len(waits) - 1, int(round(p * (len(waits) - 1))))]
print("%-22s launches %d  launch->running p50 %.3f s  p99 %.3f s  max %.3f s"
      % (mode, n, q(0.5), q(0.99), waits[-1]))
PY
  kill "$agent_pid"; wait "$agent_pid" 2>/dev/null || true; agent_pid=
}

if [ -z "${ONLY_AGENT:-}" ]; then
  echo "== launch -> running, one node, heartbeat every $HEARTBEAT s"
  measure "long poll" "$N"
  measure "heartbeats only" "$N_BASELINE" --no-long-poll
fi

echo "== the agent with 8 instances running (60 s)"
start_node
ids=()
for _ in $(seq 1 8); do
  # Spot: a one-node site keeps 2% (one GPU) unsold for failover, spot may use it.
  ids+=("$(nc -o json instances launch --tenant bench --gpu-model H100-SXM-80GB --gpus 1 --class spot \
    --image "$IMAGE" -- sh -c 'while true; do echo tick; sleep 1; done' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')")
done
for id in "${ids[@]}"; do
  until [ "$(nc -o json instances show "$id" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')" = running ]; do sleep 0.2; done
done
cpu() { awk '{print ($14 + $15) / 100}' "/proc/$agent_pid/stat"; }
c0=$(cpu); sleep 60; c1=$(cpu)
rss=$(awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$agent_pid/status")
echo "agent: 8 instances running, each printing a line a second: CPU $(echo "$c0 $c1" | awk '{printf "%.2f", ($2 - $1) / 60 * 100}')% of one core over 60 s, RSS $rss MiB"
