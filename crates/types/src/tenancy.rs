//! Tenants, API keys, roles and the audit trail.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{ApiKeyId, EventId, Money, TenantId, Timestamp, string_enum};

string_enum!(
    /// Whether a tenant is the operator's own lab or a customer.
    TenantKind {
        /// The operator's own lab: billed by chargeback, not invoiced.
        Internal = "internal",
        /// A paying customer.
        External = "external",
    }
);

string_enum!(
    /// Whether a tenant may use the cloud.
    TenantStatus {
        /// In good standing.
        Active = "active",
        /// Blocked from new work; its keys still read.
        Suspended = "suspended",
    }
);

string_enum!(
    /// What an API key may do.
    Role {
        /// Everything.
        OperatorAdmin = "operator-admin",
        /// Read everything, change nothing.
        OperatorViewer = "operator-viewer",
        /// Everything inside one tenant, its keys included.
        TenantAdmin = "tenant-admin",
        /// Use one tenant's resources; no key management.
        TenantMember = "tenant-member",
        /// A node agent: register, heartbeat, report health.
        NodeAgent = "node-agent",
    }
);

impl Role {
    /// Whether keys of this role belong to a tenant.
    pub fn is_tenant_role(self) -> bool {
        matches!(self, Role::TenantAdmin | Role::TenantMember)
    }

    /// Whether keys of this role act for the operator.
    pub fn is_operator_role(self) -> bool {
        matches!(self, Role::OperatorAdmin | Role::OperatorViewer)
    }
}

/// A customer, or the operator's own lab.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Tenant {
    /// Tenant id.
    pub id: TenantId,
    /// Unique name, e.g. `frontier-lab`.
    pub name: String,
    /// Display name.
    pub display_name: String,
    /// Internal (the operator's lab) or external (a customer).
    pub kind: TenantKind,
    /// Active or suspended.
    pub status: TenantStatus,
    /// Largest unpaid balance allowed, US dollars; none means unlimited.
    pub credit_limit: Option<Money>,
    /// When the tenant was created.
    pub created_at: Timestamp,
    /// When the tenant last changed.
    pub updated_at: Timestamp,
}

/// An API key, as listed (never with its secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiKey {
    /// Key id.
    pub id: ApiKeyId,
    /// Human label.
    pub name: String,
    /// What the key may do.
    pub role: Role,
    /// Tenant the key belongs to (tenant roles only).
    pub tenant_id: Option<TenantId>,
    /// The first characters of the secret, to tell keys apart.
    pub prefix: String,
    /// When the key was created.
    pub created_at: Timestamp,
    /// When the key stops working, if ever.
    pub expires_at: Option<Timestamp>,
    /// When the key was revoked, if it was.
    pub revoked_at: Option<Timestamp>,
    /// When the key was last used (updated at most once a minute).
    pub last_used_at: Option<Timestamp>,
    /// The node a node-agent key speaks for; none for other roles and for enrollment keys
    /// (node-agent keys that may only register agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<crate::NodeId>,
}

/// An entry of the audit trail: who changed what, when.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Event id (ids sort by time).
    pub id: EventId,
    /// When it happened.
    pub at: Timestamp,
    /// The key that acted, or none for the system itself.
    pub actor_key_id: Option<ApiKeyId>,
    /// The tenant the change belongs to, if any.
    pub tenant_id: Option<TenantId>,
    /// What happened, e.g. `tenant.created`.
    pub action: String,
    /// Kind of resource changed, e.g. `tenant`.
    pub resource_kind: String,
    /// Id or name of the resource changed.
    pub resource_id: String,
    /// The resource before the change (JSON), if it existed.
    pub before: Option<serde_json::Value>,
    /// The resource after the change (JSON), if it still exists.
    pub after: Option<serde_json::Value>,
}
