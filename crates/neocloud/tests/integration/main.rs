//! Integration tests: the real HTTP server on a real port, real SQLite and real PostgreSQL,
//! the real `neocloud` binary for CLI tests. One test binary (linking dominates build time).
//!
//! Tests written with [`both_backends!`] run twice: `…::sqlite` and `…::postgres`. The
//! PostgreSQL run needs `NEOCLOUD_TEST_POSTGRES_URL` (an admin URL; each test creates its own
//! database); `scripts/test.sh` starts a throwaway PostgreSQL and sets it. Without it the
//! PostgreSQL variants fail, unless `NEOCLOUD_TEST_SKIP_POSTGRES=1` says to skip them.

#![allow(clippy::unwrap_used, missing_docs)]

mod ctx;

mod admin;
mod agent_e2e;
mod api_auth;
mod api_billing;
mod api_delivery;
mod api_errors;
mod api_fleet;
mod api_health;
mod api_idempotency;
mod api_input;
mod api_instances;
mod api_models;
mod api_scheduler;
mod api_slices;
mod api_tenancy;
mod api_unreachable;
mod cli;
mod client_types;
mod connections;
mod console;
mod console_browser;
mod delivery_e2e;
mod differential;
mod faults;
mod gang_repair;
mod lambda;
mod maintenance;
mod openapi;
mod replicas;
mod sim;
mod store;
mod webdriver;
mod webhooks;
