#!/usr/bin/env bash
# Cold start of `serve --demo` at full size on an existing data directory (the demo fleet is
# already in the database): process start to /readyz answering. Baseline in the same run:
# `serve` on an empty database without the demo.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/lib.sh
export -f start_server stop_server; export BIN PORT URL BENCH_DIR
stop_server "$BENCH_DIR/start"; rm -rf "$BENCH_DIR/start" "$BENCH_DIR/empty"; mkdir -p "$BENCH_DIR/start"
start_server "$BENCH_DIR/start" --demo; stop_server "$BENCH_DIR/start"   # first start imports
hyperfine --shell=bash --runs "${RUNS:-10}" \
  -n "serve --demo, existing data dir (220k+72k GPUs)" \
  --prepare "stop_server $BENCH_DIR/start; stop_server $BENCH_DIR/empty; sync" \
  "start_server $BENCH_DIR/start --demo" \
  -n "serve, empty database (baseline)" \
  --prepare "stop_server $BENCH_DIR/start; stop_server $BENCH_DIR/empty; rm -rf $BENCH_DIR/empty; mkdir -p $BENCH_DIR/empty" \
  "start_server $BENCH_DIR/empty"
stop_server "$BENCH_DIR/start"; stop_server "$BENCH_DIR/empty"
