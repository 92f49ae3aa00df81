//! What a decision asks the durable store to record.

use neocloud_allocator::Allocation;
use neocloud_types::{
    Contract, ContractId, ContractState, GpuIndexes, Instance, NodeId, TenantId, Timestamp,
};

/// An audit event that is not an instance's own.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// What happened, e.g. `contract.pool_node_lost`.
    pub action: &'static str,
    /// The kind of resource.
    pub resource_kind: &'static str,
    /// Its id.
    pub resource_id: String,
    /// The tenant it belongs to, if any.
    pub tenant_id: Option<TenantId>,
    /// State before.
    pub before: Option<serde_json::Value>,
    /// State after.
    pub after: Option<serde_json::Value>,
}

/// One change to record. Effects are recorded in the order a command returned them, and the
/// commands' effects in the order the commands were applied.
#[derive(Clone, Debug)]
pub enum Effect {
    /// A new instance: its row, pending, or running on `alloc` (whose GPUs it then holds).
    Insert {
        /// The instance as it now stands.
        inst: Instance,
        /// Where it runs, if it started at once.
        alloc: Option<Allocation>,
    },
    /// A pending instance started on `alloc`.
    Start {
        /// The row before.
        before: Instance,
        /// The row after.
        after: Instance,
        /// Where it runs.
        alloc: Allocation,
    },
    /// An instance changed state other than by starting (a notice, or its end).
    Update {
        /// The row before.
        before: Instance,
        /// The row after.
        after: Instance,
        /// The audit action, e.g. `instance.preempted`.
        action: &'static str,
        /// Meter its run up to this time (it held GPUs until then).
        meter_until: Option<Timestamp>,
        /// Free the GPUs it held.
        release: bool,
    },
    /// A running gang changed nodes after a node failed: a replacement took the failed
    /// node's place, the gang shrank, or it runs short until a node of its block is free.
    Reshape {
        /// The row before.
        before: Instance,
        /// The row after (its placement, GPU count and, for a shrink, its shape).
        after: Instance,
        /// Meter the run first, piece by piece: the GPUs it held and until when.
        meter: Vec<(u32, Timestamp)>,
        /// The node whose GPUs it gives back.
        release: Option<NodeId>,
        /// The GPUs it takes.
        hold: Option<(NodeId, GpuIndexes)>,
        /// The audit action: `instance.node_replaced`, `instance.node_lost` or
        /// `instance.shrunk`.
        action: &'static str,
        /// What the audit event records after.
        detail: serde_json::Value,
    },
    /// A node joins (`Some`) or leaves (`None`) a contract's pool.
    Pool {
        /// The node.
        node: NodeId,
        /// The contract whose pool it is in now.
        contract: Option<ContractId>,
    },
    /// A newly signed contract.
    ContractInsert(Contract),
    /// A contract changed state.
    ContractState {
        /// The contract before.
        before: Contract,
        /// Its new state.
        state: ContractState,
        /// The audit action.
        action: &'static str,
        /// What the audit event records after, if more than the state.
        detail: Option<serde_json::Value>,
    },
    /// A pool node left service: an outage of the contract opens.
    OutageOpen {
        /// The contract.
        contract: ContractId,
        /// The node that left.
        node: NodeId,
        /// Its GPUs.
        gpus: u32,
        /// When.
        at: Timestamp,
        /// Why.
        note: String,
    },
    /// One open outage of the contract closes (a node took the lost one's place).
    OutageClose {
        /// The contract.
        contract: ContractId,
        /// When.
        at: Timestamp,
        /// How.
        note: String,
        /// An audit event to record with it; it gets `"outage"` (the closed outage) added.
        event: Option<Event>,
    },
    /// An audit event.
    Event(Event),
    /// Something went wrong in memory that the operator should see in the log.
    Warning(String),
}
