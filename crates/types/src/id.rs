//! Typed, prefixed identifiers (`ten_…`, `node_…`).
//!
//! Every id is a UUIDv7 (time-ordered, so ids sort by creation) rendered as 32 lowercase hex
//! digits after a prefix that names the kind. The Rust types keep a tenant id from being
//! passed where a node id is expected; the prefix does the same for humans and scripts.

use std::fmt;
use std::str::FromStr;

/// Why a string is not a valid id of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{value}' is not a valid {kind} id (expected '{prefix}_' followed by 32 hex digits)")]
pub struct IdParseError {
    /// The kind of id that was expected, e.g. "tenant".
    pub kind: &'static str,
    /// The prefix that was expected, e.g. "ten".
    pub prefix: &'static str,
    /// The rejected input.
    pub value: String,
}

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(uuid::Uuid);

        // Ordered as the UUID's bytes are, compared as one 128-bit integer: the derived
        // order compares a byte slice through `memcmp`, a call per comparison in every
        // ordered map keyed by an id.
        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }

        impl Ord for $name {
            #[inline]
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                self.0.as_u128().cmp(&other.0.as_u128())
            }
        }

        impl $name {
            /// The prefix of this kind of id.
            pub const PREFIX: &'static str = $prefix;
            /// A human name for this kind of id, used in error messages.
            pub const KIND: &'static str = $kind;

            /// A new, time-ordered id.
            pub fn new() -> Self {
                Self(uuid::Uuid::now_v7())
            }

            /// The id's UUID.
            pub fn uuid(&self) -> uuid::Uuid {
                self.0
            }

            /// The id whose UUID is `n`: for fixed, well-known ids.
            pub const fn from_u128(n: u128) -> Self {
                Self(uuid::Uuid::from_u128(n))
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}_{}", $prefix, self.0.simple())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let err = || IdParseError { kind: $kind, prefix: $prefix, value: s.to_string() };
                let rest = s
                    .strip_prefix($prefix)
                    .and_then(|r| r.strip_prefix('_'))
                    .ok_or_else(err)?;
                if rest.len() != 32 {
                    return Err(err());
                }
                uuid::Uuid::try_parse(rest).map(Self).map_err(|_| err())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .pattern(Some(concat!("^", $prefix, "_[0-9a-f]{32}$")))
                    .description(Some(concat!("A ", $kind, " id.")))
                    .examples([serde_json::json!(concat!($prefix, "_0193a1b2c3d47e8f9a0b1c2d3e4f5a6b"))])
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

typed_id!(
    /// Identifies a site (a data center).
    SiteId, "site", "site"
);
typed_id!(
    /// Identifies a topology block (pod, leaf group or NVLink domain).
    BlockId, "blk", "block"
);
typed_id!(
    /// Identifies a node (one server).
    NodeId, "node", "node"
);
typed_id!(
    /// Identifies a tenant.
    TenantId, "ten", "tenant"
);
typed_id!(
    /// Identifies an API key.
    ApiKeyId, "key", "API key"
);
typed_id!(
    /// Identifies an instance (an allocation a tenant runs).
    InstanceId, "inst", "instance"
);
typed_id!(
    /// Identifies a contract (reserved capacity).
    ContractId, "ctr", "contract"
);
typed_id!(
    /// Identifies a tenant's SSH public key.
    SshKeyId, "sshk", "SSH key"
);
typed_id!(
    /// Identifies an audit event.
    EventId, "evt", "event"
);
typed_id!(
    /// Identifies a planned maintenance window.
    MaintenanceId, "mnt", "maintenance window"
);
typed_id!(
    /// Identifies a webhook (a URL subscribed to events).
    WebhookId, "whk", "webhook"
);
typed_id!(
    /// Identifies the delivery of one event to one webhook.
    WebhookDeliveryId, "whd", "webhook delivery"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_order_as_their_bytes_and_their_text() {
        // Ids whose bytes differ first in a late byte, an early one, and at the top bit:
        // the order is the bytes' order (and so the text's), as the UUID's own.
        let raw = [
            0u128,
            1,
            0xff,
            0x100,
            1 << 64,
            (1 << 64) | 0xff,
            1 << 127,
            u128::MAX,
        ];
        for &a in &raw {
            for &b in &raw {
                let (x, y) = (NodeId::from_u128(a), NodeId::from_u128(b));
                assert_eq!(x.cmp(&y), x.uuid().as_bytes().cmp(y.uuid().as_bytes()));
                assert_eq!(x.cmp(&y), x.to_string().cmp(&y.to_string()));
                assert_eq!(x.partial_cmp(&y), Some(x.cmp(&y)));
            }
        }
    }

    #[test]
    fn ids_round_trip_and_reject_other_kinds() {
        let t = TenantId::new();
        let s = t.to_string();
        assert!(s.starts_with("ten_"));
        assert_eq!(s.len(), 4 + 32);
        assert_eq!(s.parse::<TenantId>(), Ok(t));
        let err = s.parse::<NodeId>().unwrap_err();
        assert_eq!(err.kind, "node");
        assert!("ten_xyz".parse::<TenantId>().is_err());
        assert!("ten_".parse::<TenantId>().is_err());
        assert!(
            format!("ten_{}", "g".repeat(32))
                .parse::<TenantId>()
                .is_err()
        );
    }

    #[test]
    fn ids_sort_by_creation() {
        let a = NodeId::new();
        let b = NodeId::new();
        assert!(a < b);
        assert!(a.to_string() < b.to_string());
    }
}
