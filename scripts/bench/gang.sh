#!/usr/bin/env bash
# A large gang through the API: a release `neocloud serve --demo` (SQLite, or PostgreSQL
# with DB_ARGS="--database postgres://…"). Each repetition launches a gang of NODES nodes
# (default 1,024, 8,192 H100s) in one pod of memphis-1 with POST /v1/instances and then
# terminates it; each request is timed from send to the whole answer read. Baseline in the
# same run: POST /v1/instances of one GPU, and its terminate. Prints the median, p99 and
# maximum over REPS repetitions (default 30), and the answer's size.
#
#   scripts/bench/gang.sh
#   REPS=100 NODES=256 scripts/bench/gang.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/lib.sh
dir="$BENCH_DIR/gang"
stop_server "$dir"; rm -rf "$dir"; mkdir -p "$dir"
start_server "$dir" --demo ${DB_ARGS:-}
trap 'stop_server "$dir"' EXIT
REPS="${REPS:-30}" NODES="${NODES:-1024}" OP="$(cat "$dir/operator.key")" PORT="$PORT" python3 - <<'PY'
import http.client, json, os, statistics, time, uuid

reps, size, op = int(os.environ["REPS"]), int(os.environ["NODES"]), os.environ["OP"]
conn = http.client.HTTPConnection("127.0.0.1", int(os.environ["PORT"]))

def call(method, path, body, want):
    headers = {"Authorization": f"Bearer {op}", "Content-Type": "application/json",
               "Idempotency-Key": str(uuid.uuid4())}
    t0 = time.perf_counter()
    conn.request(method, path, json.dumps(body), headers)
    r = conn.getresponse()
    text = r.read()
    ms = (time.perf_counter() - t0) * 1000
    if r.status != want:
        raise SystemExit(f"{method} {path}: {r.status} {text[:500]!r}")
    return json.loads(text), ms, len(text)

def run(body):
    launch, term, size = [], [], 0
    for _ in range(reps):
        inst, ms, size = call("POST", "/v1/instances", body, 201)
        assert inst["state"] == "running", inst
        launch.append(ms)
        _, ms, _ = call("POST", f"/v1/instances/{inst['id']}/terminate", {}, 200)
        term.append(ms)
    return launch, term, size

def show(what, xs):
    xs = sorted(xs)
    p99 = xs[min(len(xs) - 1, int(len(xs) * 0.99))]
    print(f"{what:<44} median {statistics.median(xs):8.2f} ms  p99 {p99:8.2f} ms  max {xs[-1]:8.2f} ms")

base = run({"tenant_id": "frontier-lab", "gpu_model": "H100-SXM-80GB", "gpus": 1})
gang = run({"tenant_id": "frontier-lab", "gpu_model": "H100-SXM-80GB",
            "nodes": size, "gang_level": "pod"})
print(f"{reps} repetitions each; answer {base[2]} bytes (1 GPU), {gang[2]} bytes ({size} nodes)")
show("baseline: launch 1 GPU", base[0])
show("baseline: terminate it", base[1])
show(f"launch a {size}-node gang (pod)", gang[0])
show("terminate it", gang[1])
PY
