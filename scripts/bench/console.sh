#!/usr/bin/env bash
# Console pages on the full-size demo (45,500 nodes, 292,000 GPUs; SQLite), under wrk with a
# signed-in session, against GET /healthz on the same server in the same run.
#
# Before measuring it puts the fleet to work the way the README's tour does: frontier-lab
# leases every sellable H100 of memphis-1 for three years and runs a 1,024-node gang in it,
# home-lab runs a gang on memphis-2, and a customer runs a few on-demand instances there.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/lib.sh
dir="$BENCH_DIR/console"
stop_server "$dir"; rm -rf "$dir"; mkdir -p "$dir"
start_server "$dir" --demo ${DB_ARGS:-}
KEY=$(cat "$dir/operator.key")
api() { curl -sf -X POST -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d "$2" "$URL$1"; }
start=$(date -u +%Y-%m-%dT%H:%M:%SZ)
end=$(date -u -d '+3 years' +%Y-%m-%dT%H:%M:%SZ)
contract=$(api /v1/contracts "{\"tenant_id\":\"frontier-lab\",\"gpu_model\":\"H100-SXM-80GB\",\"gpu_count\":215600,\"start_at\":\"$start\",\"end_at\":\"$end\",\"site\":\"memphis-1\",\"sla_percent\":\"99.9\"}" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
gang=$(api /v1/instances "{\"tenant_id\":\"frontier-lab\",\"class\":\"reserved\",\"contract_id\":\"$contract\",\"gpu_model\":\"H100-SXM-80GB\",\"nodes\":1024,\"gang_level\":\"pod\"}" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
# A few nodes needing attention, for the problems view.
for n in m1-pod05-leaf03-n07 m1-pod09-leaf11-n02 m1-pod20-leaf01-n40; do
  api "/v1/nodes/$n/cordon" '{"reason":"bench"}' >/dev/null
done
api /v1/instances '{"tenant_id":"home-lab","class":"internal","gpu_model":"GB200","nodes":18,"gang_level":"nvlink_domain"}' >/dev/null
api /v1/tenants '{"name":"acme-ai"}' >/dev/null
for _ in 1 2 3 4 5; do
  api /v1/instances '{"tenant_id":"acme-ai","gpu_model":"GB200","gpus":4}' >/dev/null
done
COOKIE="Cookie: neocloud_session=$KEY"
# The first map of each site after a start reads its layout once (about 130 ms); warm them.
for site in memphis-1 memphis-2; do curl -s -H "$COOKIE" -o /dev/null "$URL/sites/$site"; done
dur=${DURATION:-10s}
echo "== baseline: GET /healthz"
wrk -t1 -c1 -d"$dur" --latency "$URL/healthz" | grep -E '^ +(50|99)%|Requests/sec'
for page in / /problems /sites/memphis-1 "/sites/memphis-1?color=tenant" /sites/memphis-2 \
            /nodes/m1-pod03-leaf07-n12 /nodes/m1-pod01-leaf01-n01 /contracts "/contracts/$contract" \
            "/instances/$gang" /tenants /tenants/frontier-lab /reports /events /instances /usage /invoices; do
  bytes=$(curl -s -H "$COOKIE" -o /dev/null -w '%{http_code} %{size_download}' "$URL$page")
  gz=$(curl -s -H "$COOKIE" -H 'Accept-Encoding: gzip' -o /dev/null -w '%{size_download}' "$URL$page")
  echo "== GET $page ($bytes bytes, $gz gzipped)"
  wrk -t1 -c1 -d"$dur" --latency -H "$COOKIE" "$URL$page" | grep -E '^ +(50|99)%|Requests/sec'
done
# What a browser gets: the largest page gzipped (the compression's cost included).
echo "== GET /sites/memphis-1, Accept-Encoding: gzip"
wrk -t1 -c1 -d"$dur" --latency -H "$COOKIE" -H 'Accept-Encoding: gzip' "$URL/sites/memphis-1" |
  grep -E '^ +(50|99)%|Requests/sec'
stop_server "$dir"
