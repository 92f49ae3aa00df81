#!/usr/bin/env bash
# Generating a month's invoice from 1,000,000 usage records (SQLite): records are inserted
# directly into the ledger of a fresh data directory (set-up, not measured), then
# `neocloud invoices generate` is timed with hyperfine. Baseline in the same run:
# `neocloud invoices list` (an authenticated read).
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/lib.sh
export -f start_server stop_server; export BIN PORT URL BENCH_DIR
dir="$BENCH_DIR/invoice"
RECORDS=${RECORDS:-1000000}
stop_server "$dir"; rm -rf "$dir"; mkdir -p "$dir"
start_server "$dir" --demo --demo-scale 0.01
export NEOCLOUD_API_KEY=$(cat "$dir/operator.key")
"$BIN" --url "$URL" tenants create bench >/dev/null
stop_server "$dir"
month=$(date -u +%Y-%m)
python3 - "$dir/neocloud.db" "$RECORDS" "$month" <<'PY'
import sqlite3, sys, uuid, time
db, n, month = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = sqlite3.connect(db)
tenant = c.execute("select id from tenants where name='bench'").fetchone()[0]
site = c.execute("select id from sites where name='memphis-1'").fetchone()[0]
y, m = map(int, month.split('-'))
import calendar, datetime
start = int(datetime.datetime(y, m, 1, tzinfo=datetime.timezone.utc).timestamp()) * 1_000_000
rows = []
for i in range(n):
    s = start + (i % 86400) * 1_000_000
    gpus = 8
    secs = 3600
    amount = gpus * secs * 3_000_000 // 3600
    rows.append((f"inst_{uuid.uuid4().hex}", s, s + secs * 1_000_000, tenant, "on-demand",
                 "H100-SXM-80GB", site, None, gpus, month, gpus * secs, 3_000_000, amount, 0))
c.executemany("insert into usage_records (instance_id, start_at, end_at, tenant_id, class, gpu_model, site_id, contract_id, gpus, month, gpu_seconds, rate_micros, amount_micros, created_at) values (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
c.commit()
print(f"inserted {n} usage records for {month}")
PY
start_server "$dir"
hyperfine --shell=bash --runs "${RUNS:-5}" \
  -n "invoices generate ($RECORDS usage records)" "$BIN --url $URL invoices generate --tenant bench --month $month >/dev/null" \
  -n "invoices list (baseline)" "$BIN --url $URL invoices list >/dev/null"
"$BIN" --url "$URL" invoices list
stop_server "$dir"
