# Helpers shared by the benchmark scripts: start and stop a release `neocloud serve`.
BIN="${NEOCLOUD_BIN:-target/release/neocloud}"
BENCH_DIR="${BENCH_DIR:-/tmp/neocloud-bench}"
PORT="${BENCH_PORT:-18900}"
URL="http://127.0.0.1:$PORT"

# start_server DATA_DIR [serve args...]: starts serve in the background, waits for /readyz.
start_server() {
  local dir="$1"; shift
  "$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$dir" "$@" >"$dir.log" 2>&1 &
  echo $! >"$dir.pid"
  for _ in $(seq 1 6000); do
    curl -sf "$URL/readyz" >/dev/null 2>&1 && return 0
    sleep 0.005
  done
  echo "server did not become ready; log:" >&2; cat "$dir.log" >&2; return 1
}

stop_server() {
  local dir="$1"
  if [ -f "$dir.pid" ]; then
    local pid; pid=$(cat "$dir.pid")
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    # Not our child when called from another shell (hyperfine's --prepare): wait until the
    # process is gone, so the next start does not find the data directory still locked.
    for _ in $(seq 1 1200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    rm -f "$dir.pid"
  fi
  # Wait for the port to be free.
  for _ in $(seq 1 100); do curl -s "$URL/healthz" >/dev/null 2>&1 || return 0; sleep 0.05; done
}
