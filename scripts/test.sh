#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine with Rust:
#   formatting, clippy with -D warnings, and every test on SQLite and on PostgreSQL.
# Installs PostgreSQL, promtool (to check /metrics), headless Chromium with chromedriver
# (for the console's browser test) and axe-core from the npm registry (its accessibility
# checks), and podman, runc, OpenSSH and busybox (for delivery:
# containers, SSH, bare-metal accounts) from Debian's packages if missing, and
# openapi-spec-validator, openapi-python-client and lambda-cloud-api-client from PyPI into
# target/pytools (to check the OpenAPI document, a client generated from it, and the
# Lambda-compatible API with a Lambda client library);
# starts a throwaway PostgreSQL cluster on a free local port for the duration of the run,
# and stops it afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

find_pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

PG_BIN="$(find_pg_bin)"
if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/initdb" ]; then
  log "installing PostgreSQL from Debian's packages"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  PG_BIN="$(find_pg_bin)"
fi

if ! command -v promtool >/dev/null 2>&1; then
  log "installing promtool (package prometheus) to check the /metrics format"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    prometheus >/dev/null
fi
# The metrics test must run promtool here, not skip it.
export NEOCLOUD_TEST_REQUIRE_PROMTOOL=1

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  log "installing headless Chromium and chromedriver for the console's browser test"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
# The browser test must run here, not skip it. Its screenshots land in
# target/test-artifacts/console/.
export NEOCLOUD_TEST_REQUIRE_BROWSER=1
# It walks the console at the full demo's size (45,500 nodes, 292,000 GPUs).
export NEOCLOUD_TEST_CONSOLE_SCALE=1

# The browser test runs axe-core (from the npm registry, pinned) on every console page it
# walks; Node.js and npm from Debian's packages if missing.
AXE_VERSION=4.10.2
NPMTOOLS="$PWD/target/npmtools"
if ! grep -qs "\"version\": \"$AXE_VERSION\"" "$NPMTOOLS/node_modules/axe-core/package.json"; then
  if ! command -v npm >/dev/null 2>&1; then
    log "installing Node.js and npm from Debian's packages (for axe-core)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
  fi
  log "installing axe-core $AXE_VERSION into target/npmtools"
  npm install --prefix "$NPMTOOLS" --no-audit --no-fund --silent "axe-core@$AXE_VERSION"
fi
export NEOCLOUD_TEST_AXE_JS="$NPMTOOLS/node_modules/axe-core/axe.min.js"

# The OpenAPI document is checked by the tools tenants use: a validator and a Python client
# generator, in a virtualenv of their own (Debian's python3-venv provides `venv`); the
# Lambda-compatible API by a Lambda client library from PyPI, pinned.
PYTOOLS="$PWD/target/pytools"
LAMBDA_CLIENT="lambda-cloud-api-client==0.1.145"
if [ ! -x "$PYTOOLS/bin/openapi-spec-validator" ] || [ ! -x "$PYTOOLS/bin/openapi-python-client" ]; then
  log "installing openapi-spec-validator and openapi-python-client into target/pytools"
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      python3 python3-venv >/dev/null
  fi
  rm -rf "$PYTOOLS"
  python3 -m venv "$PYTOOLS"
  "$PYTOOLS/bin/pip" install -q --disable-pip-version-check openapi-spec-validator openapi-python-client
fi
if ! "$PYTOOLS/bin/python" -c 'import lambda_cloud_api_client' >/dev/null 2>&1; then
  log "installing $LAMBDA_CLIENT into target/pytools"
  "$PYTOOLS/bin/pip" install -q --disable-pip-version-check "$LAMBDA_CLIENT"
fi
# The OpenAPI and Lambda tests must run those tools here, not skip.
export NEOCLOUD_TEST_PYTOOLS="$PYTOOLS"
export NEOCLOUD_TEST_REQUIRE_PYTOOLS=1

# Delivery (containers through podman with CDI devices, SSH into them, bare-metal
# accounts) runs for real: podman with runc, OpenSSH's server and client, and a static
# busybox to build the test image offline (no registry is reachable).
missing=()
for b in podman runc sshd ssh ssh-keygen busybox newuidmap; do
  command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || missing+=("$b")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing podman, runc, OpenSSH and busybox for the delivery tests (missing: ${missing[*]})"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    podman runc openssh-server openssh-client busybox-static uidmap >/dev/null
fi
# The delivery tests must run here, not skip.
export NEOCLOUD_REQUIRE_DELIVERY=1

log "starting a throwaway PostgreSQL ($("$PG_BIN/postgres" --version))"
PG_DIR="$(mktemp -d -t neocloud-pg.XXXXXX)"
PG_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 55432)"
# PostgreSQL refuses to run as root: run it as the 'postgres' system user when we are root.
RUN_AS=()
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
  chown postgres "$PG_DIR"
  RUN_AS=(runuser -u postgres --)
fi
"${RUN_AS[@]}" "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 >/dev/null
"${RUN_AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w \
  -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DIR -c fsync=off -c max_connections=400" start >/dev/null
stop_pg() { "${RUN_AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$PG_DIR"; }
trap stop_pg EXIT
export NEOCLOUD_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
# The fault suite may freeze this throwaway cluster for a moment (SIGSTOP/SIGCONT).
export NEOCLOUD_TEST_FAULTS_PAUSE_PG=1
unset NEOCLOUD_TEST_SKIP_POSTGRES

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "tests on SQLite and PostgreSQL"
# Every temporary file of the tests (databases, fleet files, agents' state) goes to one
# directory of this run: removed when the tests pass, kept for inspection when they fail.
TEST_TMP="$(mktemp -d -t neocloud-tests.XXXXXX)"
# Some tests run the binary as another user (nobody), who must reach their directories.
chmod 755 "$TEST_TMP"
if cargo nextest --version >/dev/null 2>&1; then
  TMPDIR="$TEST_TMP" cargo nextest run --workspace --locked --no-fail-fast ||
    { log "tests failed; their files are in $TEST_TMP"; exit 1; }
else
  TMPDIR="$TEST_TMP" cargo test --workspace --locked --no-fail-fast ||
    { log "tests failed; their files are in $TEST_TMP"; exit 1; }
fi
rm -rf "$TEST_TMP"
