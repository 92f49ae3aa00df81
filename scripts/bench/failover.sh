#!/usr/bin/env bash
# Failover time and write throughput during failover: the fault suite's long run with the
# release binary. Three `serve` replicas on one PostgreSQL database, four writers, the
# leader killed with SIGKILL every few seconds and PostgreSQL frozen once.
#
# Needs NEOCLOUD_TEST_POSTGRES_URL (an admin URL of a throwaway PostgreSQL; the suite
# creates its own database and may SIGSTOP the cluster's processes for 1.5 s).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${NEOCLOUD_TEST_POSTGRES_URL:?set NEOCLOUD_TEST_POSTGRES_URL to a throwaway PostgreSQL}"
cargo build --release -p neocloud
NEOCLOUD_TEST_SERVE_BIN="$PWD/target/release/neocloud" \
NEOCLOUD_TEST_FAULTS_SECS="${SECS:-60}" NEOCLOUD_TEST_FAULTS_PAUSE_PG="${PAUSE_PG:-1}" \
  cargo nextest run -p neocloud --test integration faults --no-capture 2>&1 |
  grep -E '^fault suite'
