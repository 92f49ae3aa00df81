//! Domain types of neocloud, shared by every other crate.
//!
//! This crate is pure: no I/O, no async. It fixes the words of the domain (sites, blocks,
//! nodes, GPUs, tenants, keys, events), typed ids that cannot be mixed up, exact money and
//! timestamps, so that the allocator, the store, the API and the simulator all speak the
//! same language.

pub mod agent;
pub mod billing;
pub mod clock;
pub mod delivery;
pub mod fleet;
pub mod health;
pub mod id;
pub mod maintenance;
pub mod money;
pub mod placement;
pub mod tenancy;
pub mod time;
pub mod webhook;

pub use agent::*;
pub use billing::*;
pub use clock::Clock;
pub use delivery::*;
pub use fleet::*;
pub use health::*;
pub use id::*;
pub use maintenance::*;
pub use money::Money;
pub use placement::*;
pub use tenancy::*;
pub use time::Timestamp;
pub use webhook::*;

/// Whether a header (lower-case name) belongs to one HTTP connection and is not passed on
/// by a replica forwarding a write or by a relay: the hop-by-hop headers of RFC 9110, plus
/// `host` and `content-length`, which the next hop sets itself.
pub fn hop_by_hop_header(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "host"
            | "content-length"
    )
}
