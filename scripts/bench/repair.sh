#!/usr/bin/env bash
# From a node failure to its gang running again: a release `neocloud serve --demo` on SQLite
# (memphis-1: 27,500 H100 nodes). Each repetition launches a gang (NODES nodes in one pod,
# default 64, `on_node_failure` replace by default), and the agent of one of its nodes reports
# XID 79 on GPU 0 in a heartbeat. Measured from just before that heartbeat is sent:
#   reported  the heartbeat answered (the node is failed by then);
#   running   the first GET /v1/instances/{id} (polled back to back) that shows the gang
#             running on NODES nodes without the failed one.
# Then the gang is terminated; the failed node stays out of service. Baseline in the same
# run: the same agent's heartbeat without news just before (the request's own cost). Prints
# the median, p99 and maximum over REPS repetitions (default 50).
#
#   scripts/bench/repair.sh
#   REPS=200 NODES=8 scripts/bench/repair.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/lib.sh
dir="$BENCH_DIR/repair"
stop_server "$dir"; rm -rf "$dir"; mkdir -p "$dir"
start_server "$dir" --demo
trap 'stop_server "$dir"' EXIT
op=$(cat "$dir/operator.key")
enroll=$("$BIN" --url "$URL" --api-key "$op" -o json keys create --name bench-enroll --role node-agent |
         python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')
REPS="${REPS:-50}" NODES="${NODES:-64}" OP="$op" ENROLL="$enroll" PORT="$PORT" python3 - <<'PY'
import http.client, json, os, statistics, time, uuid
from datetime import datetime, timezone

reps, size = int(os.environ["REPS"]), int(os.environ["NODES"])
op, enroll = os.environ["OP"], os.environ["ENROLL"]
conn = http.client.HTTPConnection("127.0.0.1", int(os.environ["PORT"]))

def call(method, path, key, body=None, want=200):
    headers = {"Authorization": f"Bearer {key}"}
    data = None
    if body is not None:
        data = json.dumps(body)
        headers["Content-Type"] = "application/json"
        headers["Idempotency-Key"] = str(uuid.uuid4())
    conn.request(method, path, data, headers)
    r = conn.getresponse()
    text = r.read()
    if r.status != want:
        raise SystemExit(f"{method} {path}: {r.status} {text[:500]!r}")
    return json.loads(text) if text else None

def now():
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")

def gpus(host, f):
    return [f(host, i) for i in range(8)]

def nodes_of(inst):
    # An instance on more than 128 nodes is answered with its nodes counted by block:
    # they are read page by page.
    if "placement_summary" not in inst:
        return [p["node"] for p in inst["placement"]]
    nodes, cursor = [], ""
    while True:
        page = call("GET", f"/v1/instances/{inst['id']}/nodes?limit=1000{cursor}", op)
        nodes += [p["node"] for p in page["items"]]
        if "next_cursor" not in page:
            return nodes
        cursor = f"&cursor={page['next_cursor']}"

quiet, reported, running = [], [], []
for rep in range(reps):
    inst = call("POST", "/v1/instances", op, {
        "tenant_id": "frontier-lab", "gpu_model": "H100-SXM-80GB",
        "nodes": size, "gang_level": "pod"}, want=201)
    assert inst["state"] == "running", inst
    iid = inst["id"]
    before = nodes_of(inst)
    host = before[-1]
    node = call("POST", "/v1/agent/register", enroll, {
        "hostname": host, "agent_version": "bench", "backend": "sim",
        "cpu_cores": 112, "ram_gib": 2048,
        "gpus": gpus(host, lambda h, i: {
            "index": i, "uuid": f"GPU-{h}-{i}", "name": "NVIDIA H100 80GB HBM3",
            "memory_mib": 81559, "pci_bus_id": f"00000000:{0x18 + i:02X}:00.0"}),
    })
    samples = gpus(host, lambda h, i: {
        "uuid": f"GPU-{h}-{i}", "temperature_c": 41, "power_watts": 350,
        "utilization_pct": 60, "memory_used_mib": 1000,
        "ecc_corrected": 0, "ecc_uncorrected": 0})
    t0 = time.perf_counter()
    ack = call("POST", "/v1/agent/heartbeat", node["node_key"],
               {"sent_at": now(), "gpus": samples, "events": []})
    quiet.append((time.perf_counter() - t0) * 1000)
    assert ack["state"] != "failed", ack
    beat = {
        "sent_at": now(),
        "gpus": samples,
        "events": [{"seq": 1, "at": now(), "gpu_uuid": f"GPU-{host}-0",
                    "kind": {"type": "xid", "code": 79}}],
    }
    t0 = time.perf_counter()
    ack = call("POST", "/v1/agent/heartbeat", node["node_key"], beat)
    t1 = time.perf_counter()
    assert ack["state"] == "failed", ack
    while True:
        cur = call("GET", f"/v1/instances/{iid}", op)
        nodes = nodes_of(cur)
        if cur["state"] == "running" and len(nodes) == size and host not in nodes:
            break
        if time.perf_counter() - t0 > 30:
            raise SystemExit(f"gang {iid} not running again after 30 s: {cur}")
    t2 = time.perf_counter()
    reported.append((t1 - t0) * 1000)
    running.append((t2 - t0) * 1000)
    call("POST", f"/v1/instances/{iid}/terminate", op, {})

def summary(name, xs):
    xs = sorted(xs)
    p99 = xs[min(len(xs) - 1, round(0.99 * (len(xs) - 1)))]
    print(f"{name:9} median {statistics.median(xs):7.2f} ms   p99 {p99:7.2f} ms   "
          f"max {xs[-1]:7.2f} ms   ({len(xs)} gangs of {size} nodes)")

summary("baseline", quiet)
summary("reported", reported)
summary("running", running)
PY
