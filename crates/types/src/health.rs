//! The health history of GPUs and nodes, the XID policy overrides, and outages of contracted
//! capacity, as the API shows them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{ContractId, NodeId, Timestamp};

/// One fact in a GPU's or node's health history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HealthEvent {
    /// Event id (ids sort by time).
    pub id: String,
    /// When it happened (the agent's time for agent events).
    pub at: Timestamp,
    /// The node it happened on.
    pub node_id: NodeId,
    /// The node's name (at read time).
    #[serde(default)]
    pub node: String,
    /// The GPU's UUID, when it concerns one GPU.
    pub gpu_uuid: Option<String>,
    /// The GPU's index in the node then.
    pub gpu_index: Option<u32>,
    /// What it was: `xid`, `thermal_slowdown`, `remap_pending`, `remap_failed`, `burn_in`,
    /// `heartbeat_lost`, `state` (a lifecycle change), `repair`.
    pub kind: String,
    /// The XID code, for `xid`.
    pub code: Option<u32>,
    /// What the policy did: `ignore`, `record`, `drain`, `fail`, or the new state.
    pub action: String,
    /// Human detail.
    pub detail: String,
}

/// An operator's override of the policy for one XID code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthRuleRow {
    /// The XID code.
    pub code: u32,
    /// `ignore`, `record`, `drain` or `fail`.
    pub action: String,
    /// Why.
    pub note: String,
    /// When it was set.
    pub updated_at: Timestamp,
}

/// An outage of contracted capacity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Outage {
    /// Outage id.
    pub id: String,
    /// The contract that lost capacity.
    pub contract_id: ContractId,
    /// The node that left the pool.
    pub node_id: NodeId,
    /// GPUs out of service.
    pub gpus: u32,
    /// When the capacity was lost.
    pub start_at: Timestamp,
    /// When it was back (a spare replaced the node, or it returned); none while open.
    pub end_at: Option<Timestamp>,
    /// Why.
    pub reason: String,
}
