//! The vocabulary of placement: classes of service, fleet policy, shapes and gang levels.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::string_enum;

string_enum!(
    /// Class of an instance; decides who may take capacity from whom (invariant 3 in docs/architecture.md).
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

/// What an instance asks for. Unknown fields are refused, as in every request body, so that
/// a typo (`{"kind": "share", "mili": 250}`) is an error rather than a silent default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(
    tag = "kind",
    rename_all = "snake_case",
    deny_unknown_fields,
    from = "ShapeBody"
)]
pub enum Shape {
    /// 1, 2, 4 or 8 GPUs inside one node, taken together as the board's topology allows
    /// (the model's `topology`): any free GPUs on an NVSwitch board, one group of its
    /// real topology elsewhere (GPUs behind one PCIe switch, an NVLink quad), an aligned
    /// group of GPU indexes where the board is not known.
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
    /// A share of one GPU, time-sliced with the other shares of that GPU.
    Share {
        /// Thousandths of the GPU: 1 to 1000.
        milli: u32,
    },
    /// One NVIDIA MIG instance: a hardware partition of one GPU.
    Mig {
        /// The profile, named as `nvidia-smi mig -lgip` names it for the GPU model.
        profile: MigProfile,
    },
    /// No GPU: CPU cores and memory of one node only.
    Cpu,
}

/// How a shape is read: [`Shape`] with `cpu` as an empty struct variant, because serde lets a
/// unit variant of an internally tagged enum ignore unknown fields (`{"kind": "cpu",
/// "bogus": 1}` would pass).
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum ShapeBody {
    Gpus { gpus: u32 },
    Nodes { count: u32, level: GangLevel },
    Share { milli: u32 },
    Mig { profile: MigProfile },
    Cpu {},
}

impl From<ShapeBody> for Shape {
    fn from(b: ShapeBody) -> Shape {
        match b {
            ShapeBody::Gpus { gpus } => Shape::Gpus { gpus },
            ShapeBody::Nodes { count, level } => Shape::Nodes { count, level },
            ShapeBody::Share { milli } => Shape::Share { milli },
            ShapeBody::Mig { profile } => Shape::Mig { profile },
            ShapeBody::Cpu {} => Shape::Cpu,
        }
    }
}

impl Shape {
    /// Thousandths of a GPU an instance of this shape counts as, for quotas and billing,
    /// given the GPUs it holds: 1000 per GPU held, the share of a share, the compute slices
    /// out of 7 of a MIG profile, 0 for CPU-only.
    pub fn gpu_milli(&self, gpu_count: u32) -> u64 {
        match self {
            Shape::Gpus { .. } | Shape::Nodes { .. } => u64::from(gpu_count) * 1000,
            _ => self.gpu_milli_of_one_node(0),
        }
    }

    /// A short description: "2 GPUs", "4 nodes (leaf_group)", "0.250 GPU", "MIG 1g.10gb",
    /// "CPU only".
    pub fn describe(&self) -> String {
        match *self {
            Shape::Gpus { gpus: 1 } => "1 GPU".into(),
            Shape::Gpus { gpus } => format!("{gpus} GPUs"),
            Shape::Nodes { count, level } => format!("{count} nodes ({level})"),
            Shape::Share { milli } => format!("{}.{:03} GPU", milli / 1000, milli % 1000),
            Shape::Mig { profile } => format!("MIG {profile}"),
            Shape::Cpu => "CPU only".into(),
        }
    }

    /// Thousandths of a GPU per instance-hour this shape is billed and counted as: 1000 per
    /// GPU, the share for a share, the profile's compute slices out of 7 for MIG, 0 for a
    /// CPU-only instance. A gang is counted by the caller (nodes × GPUs per node).
    pub fn gpu_milli_of_one_node(&self, gpus_per_node: u32) -> u64 {
        match *self {
            Shape::Gpus { gpus } => u64::from(gpus) * 1000,
            Shape::Nodes { count, .. } => u64::from(count) * u64::from(gpus_per_node) * 1000,
            Shape::Share { milli } => u64::from(milli),
            Shape::Mig { profile } => u64::from(profile.compute_slices()) * 1000 / 7,
            Shape::Cpu => 0,
        }
    }

    /// Whether the shape takes part of one GPU (a share or a MIG instance) or no GPU.
    pub fn is_slice(&self) -> bool {
        matches!(self, Shape::Share { .. } | Shape::Mig { .. } | Shape::Cpu)
    }
}

string_enum!(
    /// A MIG profile. The same name can mean different geometry on different models (a
    /// `1g.10gb` is the smallest slice of an 80 GB GPU but the two-slice one of a 40 GB
    /// A100); [`MigFamily::geometry`] says what a profile takes on one family.
    MigProfile {
        /// A100 40GB: 1 compute slice, 1 memory slice.
        P1g5gb = "1g.5gb",
        /// A100 40GB: 1 compute, 2 memory slices; A100/H100 80GB: 1 compute, 1 memory.
        P1g10gb = "1g.10gb",
        /// A100 40GB: 2 compute, 2 memory slices.
        P2g10gb = "2g.10gb",
        /// A100 40GB: 3 compute, 4 memory slices.
        P3g20gb = "3g.20gb",
        /// A100 40GB: 4 compute, 4 memory slices.
        P4g20gb = "4g.20gb",
        /// A100 40GB: the whole GPU.
        P7g40gb = "7g.40gb",
        /// 80 GB: 1 compute, 2 memory slices.
        P1g20gb = "1g.20gb",
        /// 80 GB: 2 compute, 2 memory slices.
        P2g20gb = "2g.20gb",
        /// 80 GB: 3 compute, 4 memory slices.
        P3g40gb = "3g.40gb",
        /// 80 GB: 4 compute, 4 memory slices.
        P4g40gb = "4g.40gb",
        /// 80 GB: the whole GPU.
        P7g80gb = "7g.80gb",
        /// H100 NVL 94 GB: 1 compute, 1 memory slice.
        P1g12gb = "1g.12gb",
        /// H100 NVL 94 GB: 1 compute, 2 memory slices.
        P1g24gb = "1g.24gb",
        /// H100 NVL 94 GB: 2 compute, 2 memory slices.
        P2g24gb = "2g.24gb",
        /// H100 NVL 94 GB: 3 compute, 4 memory slices.
        P3g47gb = "3g.47gb",
        /// H100 NVL 94 GB: 4 compute, 4 memory slices.
        P4g47gb = "4g.47gb",
        /// H100 NVL 94 GB: the whole GPU.
        P7g94gb = "7g.94gb",
        /// H200 141 GB: 1 compute, 1 memory slice.
        P1g18gb = "1g.18gb",
        /// H200 141 GB: 1 compute, 2 memory slices.
        P1g35gb = "1g.35gb",
        /// H200 141 GB: 2 compute, 2 memory slices.
        P2g35gb = "2g.35gb",
        /// H200 141 GB: 3 compute, 4 memory slices.
        P3g71gb = "3g.71gb",
        /// H200 141 GB: 4 compute, 4 memory slices.
        P4g71gb = "4g.71gb",
        /// H200 141 GB: the whole GPU.
        P7g141gb = "7g.141gb",
        /// B200 180 GB: 1 compute, 1 memory slice.
        P1g23gb = "1g.23gb",
        /// B200 180 GB: 1 compute, 2 memory slices.
        P1g45gb = "1g.45gb",
        /// B200 180 GB: 2 compute, 2 memory slices.
        P2g45gb = "2g.45gb",
        /// B200 180 GB: 3 compute, 4 memory slices.
        P3g90gb = "3g.90gb",
        /// B200 180 GB: 4 compute, 4 memory slices.
        P4g90gb = "4g.90gb",
        /// B200 180 GB: the whole GPU.
        P7g180gb = "7g.180gb",
    }
);

impl MigProfile {
    /// Compute slices (of 7) the profile takes: the number before the `g`.
    pub fn compute_slices(self) -> u32 {
        self.as_str()
            .split('g')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(7)
    }
}

string_enum!(
    /// A family of GPUs with one MIG geometry: eight memory slices and seven compute slices
    /// per GPU, with profile names that depend on the GPU's memory.
    MigFamily {
        /// A100 40 GB.
        A100_40gb = "a100-40gb",
        /// A100 80 GB and H100 80 GB.
        Gpu80gb = "80gb",
        /// H100 NVL 94 GB.
        H100_94gb = "h100-94gb",
        /// H200 141 GB.
        H200_141gb = "h200-141gb",
        /// B200 180 GB.
        B200_180gb = "b200-180gb",
    }
);

/// Where one MIG profile may sit on a GPU of a family: the memory slices it takes and the
/// first slice it may start at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MigGeometry {
    /// Memory slices taken (1, 2, 4 or 8 of 8).
    pub slices: u32,
    /// Allowed start slices, ascending.
    pub starts: &'static [u32],
}

impl MigFamily {
    /// The family of a GPU model, from its name and memory: `None` for GPUs without MIG.
    pub fn of_model(name: &str, memory_gib: u32) -> Option<MigFamily> {
        let n = name.to_ascii_uppercase();
        if n.contains("A100") {
            Some(if memory_gib <= 40 {
                MigFamily::A100_40gb
            } else {
                MigFamily::Gpu80gb
            })
        } else if n.contains("H100") {
            Some(if memory_gib > 80 {
                MigFamily::H100_94gb
            } else {
                MigFamily::Gpu80gb
            })
        } else if n.contains("H200") {
            Some(MigFamily::H200_141gb)
        } else if n.contains("B200") && !n.contains("GB200") {
            Some(MigFamily::B200_180gb)
        } else {
            None
        }
    }

    /// The six profiles of the family, smallest first.
    pub fn profiles(self) -> [MigProfile; 6] {
        use MigProfile::*;
        match self {
            MigFamily::A100_40gb => [P1g5gb, P1g10gb, P2g10gb, P3g20gb, P4g20gb, P7g40gb],
            MigFamily::Gpu80gb => [P1g10gb, P1g20gb, P2g20gb, P3g40gb, P4g40gb, P7g80gb],
            MigFamily::H100_94gb => [P1g12gb, P1g24gb, P2g24gb, P3g47gb, P4g47gb, P7g94gb],
            MigFamily::H200_141gb => [P1g18gb, P1g35gb, P2g35gb, P3g71gb, P4g71gb, P7g141gb],
            MigFamily::B200_180gb => [P1g23gb, P1g45gb, P2g45gb, P3g90gb, P4g90gb, P7g180gb],
        }
    }

    /// What `profile` takes on a GPU of this family; `None` when the family has no such
    /// profile. The rules (NVIDIA's MIG user guide, "supported profiles"): the smallest
    /// profile takes one memory slice and may start at slices 0–6; the one-compute profile
    /// with double memory and the two-compute profile take two slices at 0, 2, 4 (and 6
    /// for the one-compute one); the three-compute profile takes four slices at 0 or 4; the
    /// four-compute profile four slices at 0; the whole-GPU profile all eight.
    pub fn geometry(self, profile: MigProfile) -> Option<MigGeometry> {
        let at = self.profiles().iter().position(|&p| p == profile)?;
        let (slices, starts): (u32, &'static [u32]) = match at {
            0 => (1, &[0, 1, 2, 3, 4, 5, 6]),
            1 => (2, &[0, 2, 4, 6]),
            2 => (2, &[0, 2, 4]),
            3 => (4, &[0, 4]),
            4 => (4, &[0]),
            _ => (8, &[0]),
        };
        Some(MigGeometry { slices, starts })
    }
}

string_enum!(
    /// Lifecycle of an instance.
    InstanceState {
        /// Accepted, waiting for capacity (queued) or for preempted work to leave.
        Pending = "pending",
        /// Placed on GPUs; the agents of its nodes are preparing its delivery (image,
        /// account, SSH). Not metered.
        Provisioning = "provisioning",
        /// Placed on GPUs and running (for a delivered instance: confirmed live by its
        /// agents). Metered.
        Running = "running",
        /// A delivered instance being stopped: its agents are stopping, removing and
        /// scrubbing it; its GPUs are freed when they confirm.
        Stopping = "stopping",
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
            InstanceState::Provisioning
                | InstanceState::Running
                | InstanceState::Terminating
                | InstanceState::Preempting
                | InstanceState::Stopping
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

/// The GPU indexes an instance holds on one node, ascending. Up to 8 (a board's usual
/// count) sit inline, so copying a placement allocates nothing per node. Serialized as a
/// list of integers.
pub type GpuIndexes = smallvec::SmallVec<[u32; 8]>;

/// A node's name as placements carry it: shared with the scheduler's table of names, so that
/// placing a gang copies no name. Serialized as a string.
pub type NodeName = std::sync::Arc<str>;

/// An instance's nodes, shared: copies of an instance (the scheduler's, its effects', the
/// writer's) share one list, which changes only when the instance moves.
pub type PlacedNodes = std::sync::Arc<[PlacedNode]>;

/// GPUs of one node held by an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PlacedNode {
    /// Node id.
    pub node_id: crate::NodeId,
    /// Node name.
    #[schema(value_type = String)]
    pub node: NodeName,
    /// GPU indexes on that node: the one GPU of a share or MIG instance, none for a
    /// CPU-only instance.
    #[schema(value_type = Vec<u32>)]
    pub gpus: GpuIndexes,
    /// For a MIG instance: the first memory slice (0-7) of its GPU instance on that GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mig_start: Option<u32>,
    /// CPU held on that node, thousandths of a core (absent where not modelled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_milli: Option<u64>,
    /// Memory held on that node, MiB (absent where not modelled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
}

/// Most nodes an instance's answer lists in `placement`; a larger one is summarised (see
/// [`Instance::summarised`]).
pub const LISTED_NODES: usize = 128;

/// A large instance's nodes counted by block, in place of listing them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PlacementSummary {
    /// Nodes it holds GPUs on.
    pub nodes: u32,
    /// GPUs it holds on them.
    pub gpus: u32,
    /// Its nodes by the block they sit in (leaf group, else pod, else NVLink domain), most
    /// nodes first, then by block id.
    pub blocks: Vec<BlockNodes>,
}

/// An instance's nodes in one block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BlockNodes {
    /// The block; null for nodes in none.
    pub block_id: Option<crate::BlockId>,
    /// The instance's nodes in it.
    pub nodes: u32,
    /// The instance's GPUs on those nodes.
    pub gpus: u32,
}

impl Instance {
    /// The instance as an answer shows it: on more than [`LISTED_NODES`] nodes, its
    /// placement is replaced by a [`PlacementSummary`], each node counted in the block
    /// `block_of` says (a whole node's answer is 150 bytes: a 1,024-node gang's would be
    /// 150 KB, written with its audit event and idempotency record). Otherwise, or shown
    /// already, unchanged.
    pub fn summarised(
        mut self,
        block_of: impl Fn(crate::NodeId) -> Option<crate::BlockId>,
    ) -> Instance {
        if self.placement.len() <= LISTED_NODES {
            return self;
        }
        let mut by: std::collections::BTreeMap<Option<crate::BlockId>, (u32, u32)> =
            std::collections::BTreeMap::new();
        let mut gpus = 0u32;
        for p in self.placement.iter() {
            let n = u32::try_from(p.gpus.len()).unwrap_or(u32::MAX);
            let e = by.entry(block_of(p.node_id)).or_default();
            e.0 += 1;
            e.1 = e.1.saturating_add(n);
            gpus = gpus.saturating_add(n);
        }
        let mut blocks: Vec<BlockNodes> = by
            .into_iter()
            .map(|(block_id, (nodes, gpus))| BlockNodes {
                block_id,
                nodes,
                gpus,
            })
            .collect();
        // Stable: equal counts stay in block order.
        blocks.sort_by_key(|b| std::cmp::Reverse(b.nodes));
        self.placement_summary = Some(PlacementSummary {
            nodes: u32::try_from(self.placement.len()).unwrap_or(u32::MAX),
            gpus,
            blocks,
        });
        self.placement = PlacedNodes::default();
        self
    }
}

string_enum!(
    /// What happens to a running instance when one of its nodes fails.
    NodeFailurePolicy {
        /// The instance ends `failed` (the default for everything but gangs).
        Fail = "fail",
        /// A healthy node from the same block at the gang's level takes the failed one's
        /// place and the instance keeps running (the default for gangs). Until one is free
        /// the gang runs one node short, billed for the nodes it holds.
        Replace = "replace",
        /// The failed node is dropped and the instance keeps running on the others, billed
        /// for fewer GPUs from the fault on; the last node failing ends it.
        Shrink = "shrink",
    }
);

impl NodeFailurePolicy {
    /// The policy an instance of `shape` gets when its launch names none.
    pub fn default_for(shape: &Shape) -> Self {
        match shape {
            Shape::Nodes { .. } => NodeFailurePolicy::Replace,
            _ => NodeFailurePolicy::Fail,
        }
    }
}

fn default_failure_policy() -> NodeFailurePolicy {
    NodeFailurePolicy::Fail
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
    /// GPU model: the one it runs on.
    pub gpu_model: String,
    /// The GPU models the launch accepted (`gpu_models`), in its order; absent when it
    /// named one. `gpu_model` is then the model it was placed on (while it waits, the first
    /// of these): the one it is billed and counted in quotas as.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_models: Vec<String>,
    /// What was asked for.
    pub shape: Shape,
    /// GPUs the instance holds (or will hold); a share or MIG instance holds part of one
    /// GPU and counts 1 here, a CPU-only instance 0.
    pub gpu_count: u32,
    /// CPU asked for on its node, thousandths of a core; absent: in proportion to its part
    /// of the node's GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_milli: Option<u64>,
    /// Memory asked for on its node, MiB; absent: in proportion, as for CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
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
    /// Where it runs: each node it holds GPUs (or a slice, or CPU) on. An instance on more
    /// than 128 nodes is shown with this empty and `placement_summary` in its place;
    /// `GET /v1/instances/{id}/nodes` pages through its nodes.
    #[schema(value_type = Vec<PlacedNode>)]
    pub placement: PlacedNodes,
    /// For an instance on more than 128 nodes, in place of `placement`:
    /// its nodes and GPUs counted by block. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement_summary: Option<PlacementSummary>,
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
    /// What runs for it on its nodes; absent for a bare allocation (the tenant's own
    /// orchestration uses the GPUs), which runs as soon as it is placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<crate::Delivery>,
    /// Names of the tenant's SSH keys allowed to log in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_key_names: Vec<String>,
    /// The public keys those names stood for at launch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorized_keys: Vec<String>,
    /// How to reach it over SSH, once running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<crate::Access>,
    /// For a stopping instance: the state it ends in once its agents confirm
    /// (`terminated`, `preempted` or `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_as: Option<InstanceState>,
    /// What happens when one of its nodes fails: `fail`, `replace` or `shrink`.
    #[serde(default = "default_failure_policy")]
    pub on_node_failure: NodeFailurePolicy,
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

/// How the GPUs of one board (a node of one GPU model) connect, as placement sees it.
///
/// Work of several GPUs runs best on GPUs that talk to each other directly. A board is
/// either all-to-all (NVSwitch on 8-GPU SXM boards and GB200 trays, AMD's Infinity Fabric
/// mesh on MI300X: every set of GPUs is equally connected) or built from nested groups of
/// consecutive GPU indexes (a PCIe switch's GPUs, a NUMA node's, an NVLink-bridged pair, a
/// quad of a V100 hybrid cube-mesh). Group sizes are powers of two, each dividing the next.
///
/// The placement rule: `k` GPUs lie inside one group of the smallest size that holds `k`
/// (any `k` GPUs of that group), or anywhere on the board when no group is that large.
/// On an all-to-all board any `k` free GPUs fit.
///
/// Written as `nvswitch` (all-to-all), `groups:2,4` (the group sizes, smallest first), or
/// `aligned` (groups of every power of two: a pair is GPUs 0-1, 2-3, …, a quad 0-3 or 4-7;
/// the rule for boards whose topology is not known).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BoardTopology {
    /// Bit `i` (1 to 6) set: the board has aligned groups of `2^i` GPUs.
    levels: u8,
}

impl BoardTopology {
    /// Every set of GPUs is equally connected.
    pub const NVSWITCH: BoardTopology = BoardTopology { levels: 0 };
    /// Groups of every power of two: the rule when nothing is known of the board.
    pub const ALIGNED: BoardTopology = BoardTopology {
        levels: 0b0111_1110,
    };

    /// A board of nested groups of these sizes (powers of two from 2 to 64, ascending).
    /// No size at all is [`BoardTopology::NVSWITCH`].
    pub fn groups(sizes: &[u32]) -> Result<BoardTopology, String> {
        let mut levels = 0u8;
        let mut last = 1u32;
        for &s in sizes {
            if !s.is_power_of_two() || !(2..=64).contains(&s) {
                return Err(format!(
                    "a group of GPUs is a power of two from 2 to 64, not {s}"
                ));
            }
            if s <= last {
                return Err(format!(
                    "group sizes go smallest first, each once: {s} after {last}"
                ));
            }
            last = s;
            levels |= 1 << s.trailing_zeros();
        }
        Ok(BoardTopology { levels })
    }

    /// The group sizes, smallest first (empty on an all-to-all board).
    pub fn group_sizes(self) -> impl Iterator<Item = u32> {
        (1..=6u32)
            .filter(move |i| self.levels & (1 << i) != 0)
            .map(|i| 1 << i)
    }

    /// Whether every set of GPUs is equally connected.
    pub fn all_to_all(self) -> bool {
        self.levels == 0
    }

    /// The size of the group `k` GPUs must share: the smallest group that holds `k`, or
    /// 64 (the whole board) when none does.
    pub fn domain(self, k: u32) -> u32 {
        self.group_sizes().find(|&s| s >= k).unwrap_or(64)
    }

    /// The topology of a GPU model known by name: the built-in models, the usual SXM, OAM
    /// and PCIe parts, and the Alibaba GPU cluster trace's model codes. Anything else is
    /// [`BoardTopology::ALIGNED`].
    pub fn of_model(name: &str) -> BoardTopology {
        let n = name.to_ascii_uppercase();
        let any = |words: &[&str]| words.iter().any(|w| n.contains(w));
        // PCIe cards (no NVLink, or bridges between two at most): GPUs behind one PCIe
        // switch in pairs, a NUMA node's in quads.
        let pcie = BoardTopology {
            levels: 1 << 1 | 1 << 2,
        };
        if any(&["PCIE"]) {
            pcie
        } else if any(&[
            "SXM", "GB200", "GB300", "B200", "B300", "H200", "H100", "H800", "A800", "MI300",
            "MI325", "MI355",
        ]) {
            // HGX/DGX boards (NVSwitch), GB200 trays (NVLink switch trays), AMD OAM boards
            // (an all-to-all Infinity Fabric mesh).
            BoardTopology::NVSWITCH
        } else if any(&["V100"]) {
            // SXM2 hybrid cube-mesh: each quad all-to-all over NVLink, quads partly linked.
            BoardTopology { levels: 1 << 2 }
        } else if any(&["T4", "P100", "A10", "A30", "A40", "L4", "L40", "RTX"]) {
            pcie
        } else {
            BoardTopology::ALIGNED
        }
    }
}

impl std::fmt::Display for BoardTopology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if *self == BoardTopology::NVSWITCH {
            return f.write_str("nvswitch");
        }
        if *self == BoardTopology::ALIGNED {
            return f.write_str("aligned");
        }
        let sizes: Vec<String> = self.group_sizes().map(|s| s.to_string()).collect();
        write!(f, "groups:{}", sizes.join(","))
    }
}

impl std::str::FromStr for BoardTopology {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "nvswitch" | "all-to-all" => Ok(BoardTopology::NVSWITCH),
            "aligned" => Ok(BoardTopology::ALIGNED),
            other => {
                let Some(list) = other.strip_prefix("groups:") else {
                    return Err(format!(
                        "board topology '{other}' is not one of nvswitch, aligned, groups:N,M,…"
                    ));
                };
                let sizes = list
                    .split(',')
                    .map(|x| {
                        x.trim()
                            .parse::<u32>()
                            .map_err(|_| format!("group size '{}' is not a number", x.trim()))
                    })
                    .collect::<Result<Vec<u32>, String>>()?;
                if sizes.is_empty() {
                    return Err("groups: names at least one size".to_string());
                }
                BoardTopology::groups(&sizes)
            }
        }
    }
}

impl Serialize for BoardTopology {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BoardTopology {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_refuse_unknown_fields() {
        for ok in [
            r#"{"kind":"gpus","gpus":1}"#,
            r#"{"kind":"nodes","count":2,"level":"pod"}"#,
            r#"{"kind":"share","milli":250}"#,
            r#"{"kind":"mig","profile":"1g.10gb"}"#,
            r#"{"kind":"cpu"}"#,
        ] {
            assert!(serde_json::from_str::<Shape>(ok).is_ok(), "{ok}");
        }
        for bad in [
            r#"{"kind":"gpus","gpus":1,"bogus":1}"#,
            r#"{"kind":"nodes","count":2,"level":"pod","bogus":1}"#,
            r#"{"kind":"share","mili":250}"#,
            r#"{"kind":"mig","profile":"1g.10gb","bogus":1}"#,
            r#"{"kind":"cpu","bogus":1}"#,
        ] {
            let e = serde_json::from_str::<Shape>(bad).unwrap_err().to_string();
            assert!(e.contains("unknown field"), "{bad}: {e}");
        }
    }

    #[test]
    fn board_topologies() {
        use super::BoardTopology as T;
        for (text, sizes) in [
            ("nvswitch", vec![]),
            ("aligned", vec![2, 4, 8, 16, 32, 64]),
            ("groups:2,4", vec![2, 4]),
            ("groups:4", vec![4]),
        ] {
            let t: T = text.parse().unwrap();
            assert_eq!(t.group_sizes().collect::<Vec<_>>(), sizes);
            assert_eq!(t.to_string(), text);
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{text}\""));
        }
        assert_eq!("all-to-all".parse::<T>().unwrap(), T::NVSWITCH);
        for bad in [
            "groups:",
            "groups:3",
            "groups:4,2",
            "groups:2,2",
            "groups:128",
            "mesh",
        ] {
            assert!(bad.parse::<T>().is_err(), "{bad}");
        }
        let pcie = T::groups(&[2, 4]).unwrap();
        assert_eq!(
            (
                pcie.domain(1),
                pcie.domain(2),
                pcie.domain(3),
                pcie.domain(8)
            ),
            (2, 2, 4, 64)
        );
        assert_eq!(T::NVSWITCH.domain(2), 64);
        // The built-in models.
        for (m, t) in [
            ("A100-SXM-80GB", "nvswitch"),
            ("H100-SXM-80GB", "nvswitch"),
            ("H200-SXM-141GB", "nvswitch"),
            ("B200", "nvswitch"),
            ("GB200", "nvswitch"),
            ("MI300X", "nvswitch"),
            ("L40S", "groups:2,4"),
            ("H100-PCIe-80GB", "groups:2,4"),
            ("V100M32", "groups:4"),
            ("T4", "groups:2,4"),
            ("A10", "groups:2,4"),
            ("G2", "aligned"),
        ] {
            assert_eq!(T::of_model(m).to_string(), t, "{m}");
        }
    }
}
