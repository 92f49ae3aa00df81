//! API keys: minting, hashing, authentication, and the authorization table.
//!
//! A key looks like `nck_0a1b2c3d4e5f_<48 hex>`: the part up to the second underscore is the
//! visible prefix, stored in clear to find the key; the whole key is stored only as its
//! SHA-256 and compared in constant time.

use neocloud_types::{ApiKeyId, NodeId, Role, TenantId, Timestamp};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{Error, Result};

/// Who is making a request: the key, its role and its tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The key used.
    pub key_id: ApiKeyId,
    /// The key's role.
    pub role: Role,
    /// The key's tenant, for tenant roles.
    pub tenant_id: Option<TenantId>,
    /// The node a node-agent key speaks for; none for enrollment keys and other roles.
    pub node_id: Option<NodeId>,
}

impl Principal {
    /// The tenant whose data this principal is confined to; `None` for operator roles.
    pub fn tenant_scope(&self) -> Option<TenantId> {
        if self.role.is_tenant_role() {
            self.tenant_id
        } else {
            None
        }
    }
}

/// Something a request wants to do, checked against the caller's role in [`authorize`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Read the GPU model catalog.
    ReadCatalog,
    /// Add GPU models.
    WriteCatalog,
    /// Read sites (names, regions, capacity totals).
    ReadSites,
    /// Read blocks, nodes and GPUs.
    ReadFleet,
    /// Import fleet files.
    WriteFleet,
    /// Read tenants (own tenant for tenant roles).
    ReadTenants,
    /// Create and change tenants.
    WriteTenants,
    /// Read API keys (own tenant's for tenant admins).
    ReadKeys,
    /// Create and revoke API keys (own tenant's for tenant admins).
    WriteKeys,
    /// Read the audit trail (own tenant's for tenant roles).
    ReadEvents,
    /// Read instances (own tenant's for tenant roles).
    ReadInstances,
    /// Launch and terminate instances (own tenant's for tenant roles).
    WriteInstances,
    /// Read quotas (own tenant's for tenant roles).
    ReadQuotas,
    /// Set quotas.
    WriteQuotas,
    /// Read capacity, fragmentation and power.
    ReadCapacity,
    /// Read contracts and ask for quotes (own tenant's for tenant roles).
    ReadContracts,
    /// Sign and cancel contracts (own tenant's for tenant admins).
    WriteContracts,
    /// Read invoices (own tenant's for tenant roles).
    ReadInvoices,
    /// Generate and finalize invoices, record downtime.
    WriteInvoices,
    /// Register a node's agent (node-agent keys).
    AgentRegister,
    /// Send a node's heartbeats and health events (node-agent keys bound to the node).
    AgentHeartbeat,
    /// Read webhooks and their delivery logs (own tenant's for tenant roles).
    ReadWebhooks,
    /// Create, delete and test webhooks (own tenant's for tenant admins; operator webhooks,
    /// which receive every event, for operator admins).
    WriteWebhooks,
}

/// The authorization table: which roles may do what. Every endpoint names its action, and a
/// test walks every endpoint with every role against this table.
pub fn allowed(role: Role, action: Action) -> bool {
    use Action::*;
    use Role::*;
    match role {
        OperatorAdmin => !matches!(action, AgentRegister | AgentHeartbeat),
        OperatorViewer => matches!(
            action,
            ReadCatalog
                | ReadSites
                | ReadFleet
                | ReadTenants
                | ReadKeys
                | ReadEvents
                | ReadInstances
                | ReadQuotas
                | ReadCapacity
                | ReadContracts
                | ReadInvoices
                | ReadWebhooks
        ),
        TenantAdmin => matches!(
            action,
            ReadCatalog
                | ReadSites
                | ReadTenants
                | ReadKeys
                | WriteKeys
                | ReadEvents
                | ReadInstances
                | WriteInstances
                | ReadQuotas
                | ReadContracts
                | WriteContracts
                | ReadInvoices
                | ReadWebhooks
                | WriteWebhooks
        ),
        TenantMember => matches!(
            action,
            ReadCatalog
                | ReadSites
                | ReadTenants
                | ReadEvents
                | ReadInstances
                | WriteInstances
                | ReadQuotas
                | ReadContracts
                | ReadInvoices
                | ReadWebhooks
        ),
        NodeAgent => matches!(action, AgentRegister | AgentHeartbeat),
    }
}

/// Checks the table; a refusal says which role was used.
pub fn authorize(p: &Principal, action: Action) -> Result<()> {
    if allowed(p.role, action) {
        Ok(())
    } else {
        Err(Error::forbidden(format!(
            "a key with role '{}' may not do this",
            p.role.as_str()
        )))
    }
}

/// A freshly minted key: the secret to show once, its prefix and the hash to store.
pub struct MintedKey {
    /// The whole key; shown once, never stored.
    pub secret: String,
    /// The visible prefix.
    pub prefix: String,
    /// SHA-256 of the whole key, hex.
    pub hash: String,
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// SHA-256 of a string, hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Mints a new key from the operating system's random source.
pub fn mint_key() -> Result<MintedKey> {
    let mut buf = [0u8; 30];
    getrandom::fill(&mut buf).map_err(|e| Error::internal(format!("no randomness: {e}")))?;
    let prefix = format!("nck_{}", hex(&buf[..6]));
    let secret = format!("{prefix}_{}", hex(&buf[6..]));
    let hash = sha256_hex(secret.as_bytes());
    Ok(MintedKey {
        secret,
        prefix,
        hash,
    })
}

/// Splits a presented key into its prefix, or refuses it as malformed.
pub fn key_prefix(presented: &str) -> Option<&str> {
    let rest = presented.strip_prefix("nck_")?;
    let (p, secret) = rest.split_once('_')?;
    if p.len() != 12 || secret.len() != 48 {
        return None;
    }
    Some(&presented[..4 + 12])
}

/// Compares a presented key with a stored hash in constant time.
pub fn key_matches(presented: &str, stored_hash: &str) -> bool {
    let h = sha256_hex(presented.as_bytes());
    h.as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

/// Whether a key is past its expiry at `now`.
pub fn expired(expires_at: Option<Timestamp>, now: Timestamp) -> bool {
    expires_at.is_some_and(|e| e <= now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_keys_verify_and_differ() {
        let a = mint_key().unwrap();
        let b = mint_key().unwrap();
        assert_ne!(a.secret, b.secret);
        assert_eq!(key_prefix(&a.secret), Some(a.prefix.as_str()));
        assert!(key_matches(&a.secret, &a.hash));
        assert!(!key_matches(&b.secret, &a.hash));
        assert!(key_prefix("nck_short_x").is_none());
        assert!(key_prefix("Bearer nope").is_none());
    }

    #[test]
    fn roles_follow_the_table() {
        assert!(allowed(Role::OperatorAdmin, Action::WriteFleet));
        assert!(!allowed(Role::OperatorViewer, Action::WriteTenants));
        assert!(allowed(Role::TenantAdmin, Action::WriteKeys));
        assert!(!allowed(Role::TenantMember, Action::WriteKeys));
        assert!(!allowed(Role::TenantAdmin, Action::ReadFleet));
        assert!(!allowed(Role::NodeAgent, Action::ReadTenants));
        assert!(allowed(Role::TenantAdmin, Action::WriteWebhooks));
        assert!(!allowed(Role::TenantMember, Action::WriteWebhooks));
        assert!(allowed(Role::TenantMember, Action::ReadWebhooks));
        assert!(!allowed(Role::OperatorViewer, Action::WriteWebhooks));
        assert!(!allowed(Role::NodeAgent, Action::ReadWebhooks));
    }
}
