#!/usr/bin/env bash
# Full demo fleet import (45,500 nodes, 292,000 GPUs) through `neocloud fleet import` into a
# fresh database, on SQLite and (when PG_URL is set, e.g. postgres://postgres@127.0.0.1:5432)
# on PostgreSQL. Baseline in the same run: re-importing the same file into a database that already
# holds it (parse, validate, read and diff the fleet; nothing to write).
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/lib.sh
mkdir -p "$BENCH_DIR"
"$BIN" fleet demo > "$BENCH_DIR/demo.toml"
fresh_sqlite="stop_server $BENCH_DIR/imp; rm -rf $BENCH_DIR/imp; mkdir -p $BENCH_DIR/imp; start_server $BENCH_DIR/imp"
export -f start_server stop_server; export BIN PORT URL BENCH_DIR
imp="NEOCLOUD_API_KEY=\$(cat $BENCH_DIR/imp/operator.key) $BIN --url $URL fleet import $BENCH_DIR/demo.toml >/dev/null"
runs=${RUNS:-5}
hyperfine --shell=bash --runs "$runs" --export-markdown "$BENCH_DIR/import-sqlite.md" \
  --prepare "$fresh_sqlite" -n "import, SQLite" "$imp" \
  --prepare "$fresh_sqlite; $imp" -n "re-import, no changes (baseline)" "$imp"
stop_server "$BENCH_DIR/imp"
if [ -n "${PG_URL:-}" ]; then
  fresh_pg="stop_server $BENCH_DIR/imp; rm -rf $BENCH_DIR/imp; mkdir -p $BENCH_DIR/imp; psql -q '$PG_URL/postgres' -c 'DROP DATABASE IF EXISTS nc_bench' -c 'CREATE DATABASE nc_bench'; start_server $BENCH_DIR/imp --database-url $PG_URL/nc_bench"
  hyperfine --shell=bash --runs "$runs" --export-markdown "$BENCH_DIR/import-pg.md" \
    --prepare "$fresh_pg" -n "import, PostgreSQL" "$imp" \
    --prepare "$fresh_pg; $imp" -n "re-import, no changes (baseline)" "$imp"
  stop_server "$BENCH_DIR/imp"
fi
