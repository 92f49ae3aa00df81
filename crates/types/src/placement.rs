//! The vocabulary of placement: classes of service, fleet policy, shapes and gang levels.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::string_enum;

string_enum!(
    /// Class of an instance; decides who may take capacity from whom (DESIGN.md §3.3).
    Class {
        /// Runs in a contract's reserved pool. Highest priority.
        Reserved = "reserved",
        /// The operator's own lab.
        Internal = "internal",
        /// Pay-as-you-go customers.
        OnDemand = "on-demand",
        /// Cheapest, preemptible with notice. Lowest priority.
        Spot = "spot",
    }
);

string_enum!(
    /// Who wins between the operator's lab and on-demand customers when capacity is short.
    FleetPolicy {
        /// Internal work outranks on-demand.
        LabFirst = "lab-first",
        /// On-demand outranks internal work.
        CloudFirst = "cloud-first",
    }
);

impl Class {
    /// Priority under a fleet policy: larger wins. Reserved 3, spot 0; internal and
    /// on-demand are 2 and 1 in the order the policy says.
    pub fn priority(self, policy: FleetPolicy) -> u8 {
        match (self, policy) {
            (Class::Reserved, _) => 3,
            (Class::Internal, FleetPolicy::LabFirst)
            | (Class::OnDemand, FleetPolicy::CloudFirst) => 2,
            (Class::Internal, FleetPolicy::CloudFirst)
            | (Class::OnDemand, FleetPolicy::LabFirst) => 1,
            (Class::Spot, _) => 0,
        }
    }

    /// Whether an instance of this class may be preempted by one of `other` (a class only
    /// takes capacity from a lower class).
    pub fn can_preempt(self, other: Class, policy: FleetPolicy) -> bool {
        self.priority(policy) > other.priority(policy)
    }
}

string_enum!(
    /// The topology level a gang of whole nodes must stay inside.
    GangLevel {
        /// One NVLink domain (e.g. one GB200 NVL72 rack).
        NvlinkDomain = "nvlink_domain",
        /// One leaf group.
        LeafGroup = "leaf_group",
        /// One pod.
        Pod = "pod",
        /// Anywhere in the site.
        Site = "site",
    }
);

/// What an instance asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Shape {
    /// 1, 2, 4 or 8 GPUs inside one node, on an aligned group of GPU indexes.
    Gpus {
        /// Number of GPUs: 1, 2, 4 or 8.
        gpus: u32,
    },
    /// A gang of whole nodes inside one block of the given level.
    Nodes {
        /// Number of whole nodes (at least 1).
        count: u32,
        /// The block level the gang must fit in.
        level: GangLevel,
    },
}

string_enum!(
    /// Lifecycle of an instance.
    InstanceState {
        /// Accepted, waiting for capacity (queued) or for preempted work to leave.
        Pending = "pending",
        /// Placed on GPUs and running.
        Running = "running",
        /// Being stopped at the tenant's request.
        Terminating = "terminating",
        /// Stopped at the tenant's request; its GPUs are free.
        Terminated = "terminated",
        /// Notified of preemption; it stops when the grace period ends.
        Preempting = "preempting",
        /// Stopped by preemption; its GPUs went to higher-priority work.
        Preempted = "preempted",
        /// Could not be placed (or its queue deadline passed).
        Failed = "failed",
    }
);

impl InstanceState {
    /// Whether the instance holds GPUs in this state.
    pub fn holds_gpus(self) -> bool {
        matches!(
            self,
            InstanceState::Running | InstanceState::Terminating | InstanceState::Preempting
        )
    }

    /// Whether the instance has ended for good.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            InstanceState::Terminated | InstanceState::Preempted | InstanceState::Failed
        )
    }
}

/// GPUs of one node held by an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PlacedNode {
    /// Node id.
    pub node_id: crate::NodeId,
    /// Node name.
    pub node: String,
    /// GPU indexes on that node.
    pub gpus: Vec<u32>,
}

/// An allocation a tenant runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Instance {
    /// Instance id.
    pub id: crate::InstanceId,
    /// Owner.
    pub tenant_id: crate::TenantId,
    /// Optional label.
    pub name: Option<String>,
    /// Class of service.
    pub class: Class,
    /// GPU model.
    pub gpu_model: String,
    /// What was asked for.
    pub shape: Shape,
    /// GPUs the instance holds (or will hold).
    pub gpu_count: u32,
    /// Site asked for, if any.
    pub requested_site_id: Option<crate::SiteId>,
    /// Site it runs in, once placed.
    pub site_id: Option<crate::SiteId>,
    /// Contract whose reserved pool it runs in (reserved class).
    pub contract_id: Option<crate::ContractId>,
    /// Lifecycle state.
    pub state: InstanceState,
    /// Why it is pending, failed or preempted.
    pub reason: Option<String>,
    /// Where it runs.
    pub placement: Vec<PlacedNode>,
    /// When it was accepted.
    pub created_at: crate::Timestamp,
    /// When it started running.
    pub started_at: Option<crate::Timestamp>,
    /// When it ended.
    pub ended_at: Option<crate::Timestamp>,
    /// For a preempting instance: when it will be stopped.
    pub preempt_at: Option<crate::Timestamp>,
    /// For a queued instance: when it gives up waiting.
    pub wait_until: Option<crate::Timestamp>,
}

/// A limit on how many GPUs a tenant may hold at once, per GPU model and class.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Quota {
    /// Tenant.
    pub tenant_id: crate::TenantId,
    /// GPU model.
    pub gpu_model: String,
    /// Class of service.
    pub class: Class,
    /// Most GPUs held at once (running, terminating or preempting instances).
    pub max_gpus: u32,
}

string_enum!(
    /// Lifecycle of a contract.
    ContractState {
        /// Signed: its GPUs are promised on the capacity calendar; it has not started yet.
        Signed = "signed",
        /// Running: its reserved pool is pinned.
        Active = "active",
        /// Past its end.
        Ended = "ended",
        /// Cancelled before its end.
        Cancelled = "cancelled",
    }
);

/// Reserved capacity: N GPUs of a model in a site for a time window at a fixed rate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Contract {
    /// Contract id.
    pub id: crate::ContractId,
    /// Tenant.
    pub tenant_id: crate::TenantId,
    /// GPU model.
    pub gpu_model: String,
    /// GPUs reserved.
    pub gpu_count: u32,
    /// Site.
    pub site_id: crate::SiteId,
    /// If set, the pool must sit inside one block of this level.
    pub single_block: Option<GangLevel>,
    /// Start of the reservation.
    pub start_at: crate::Timestamp,
    /// End of the reservation (exclusive).
    pub end_at: crate::Timestamp,
    /// Price per GPU-hour.
    pub price_per_gpu_hour: crate::Money,
    /// Availability promised, percent (e.g. "99.9").
    pub sla_percent: String,
    /// Lifecycle state.
    pub state: ContractState,
    /// GPUs × hours × price over the whole term.
    pub total_value: crate::Money,
    /// When it was signed.
    pub created_at: crate::Timestamp,
    /// When it last changed.
    pub updated_at: crate::Timestamp,
}
