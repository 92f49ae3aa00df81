//! Placement of allocations on concrete GPUs, and the capacity calendar.
//!
//! [`Allocator`] decides where an instance runs: which node, which GPU indexes, or which
//! whole nodes of one topology block for a gang. It keeps the fleet's occupancy in memory,
//! indexed so that no decision scans the fleet, and it upholds invariants (docs/architecture.md) 1 (a
//! GPU belongs to at most one allocation), 3 (a class only takes capacity from a lower one),
//! 4 (tenants share a node only where the operator allows it) and 5 (a site never draws more
//! than its power limit).
//!
//! [`calendar::Calendar`] is the time axis: GPUs promised by contracts per (site, model), so
//! that a quote can say what fits and when.
//!
//! The crate is pure and deterministic: no I/O, no clocks, no hash-map iteration order in a
//! decision. `serve` rebuilds an [`Allocator`] from the database at start ([`Allocator::restore`]);
//! the simulator drives the same code with [`synthetic`] fleets.

mod allocator;
pub mod calendar;
mod check;
mod index;
mod node;
mod preempt;
pub mod selling;
pub mod slices;
mod spares;
pub mod synthetic;

#[cfg(test)]
mod tests;

use neocloud_types::{
    BlockId, BlockKind, Class, ContractId, GpuIndexes, InstanceId, MigFamily, NodeId, SiteId,
    TenantId,
};

pub use allocator::{Allocator, IdHasher, IdMap};
pub use check::{NodeSnapshot, Snapshot};
pub use neocloud_types::{FleetPolicy, GangLevel, MigProfile, Shape};
pub use spares::SPARE_POOL;

/// How the allocator chooses among nodes and blocks that all fit a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PlacementPolicy {
    /// Ours: fill partly used nodes and blocks first, so that whole nodes and whole blocks
    /// stay free for large shapes and gangs. A sub-node shape goes where it fills a hole (an
    /// aligned free group inside an already broken block, buddy-allocator style), then to
    /// the node with the fewest free GPUs, and opens a whole node only when no used node
    /// fits, from the block with the fewest free whole nodes. A gang takes the block of its
    /// level with the fewest free whole nodes that still has enough.
    #[default]
    BestFit,
    /// The naive baseline, kept for measurements: the first node or block in id order that
    /// fits.
    FirstFit,
    /// The opposite of best-fit, kept for measurements: spread work over the emptiest nodes
    /// and blocks.
    WorstFit,
    /// Ours, for fleets that sell slices: every request that fits inside one node goes where
    /// the fleet's fragmentation grows least, measured against the shapes of recent requests
    /// (see [`crate::slices`]); gangs and whole nodes as best-fit. Nodes in identical states
    /// are scored once.
    Fragmentation,
}

/// A site as the allocator sees it: its power envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteSpec {
    /// Site id.
    pub id: SiteId,
    /// Power the site may draw, watts, facility overhead (PUE) included.
    pub power_limit_watts: i64,
    /// Power usage effectiveness in thousandths (1050 = PUE 1.05).
    pub pue_milli: u32,
}

/// A node as the allocator sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    /// Node id.
    pub id: NodeId,
    /// Site holding the node.
    pub site: SiteId,
    /// GPU model of every GPU in the node.
    pub gpu_model: String,
    /// Number of GPUs (1 to 64).
    pub gpus: u32,
    /// The blocks holding the node, outermost first: any subset of pod, leaf group and NVLink
    /// domain, each kind at most once.
    pub blocks: Vec<(BlockKind, BlockId)>,
    /// Power drawn with nothing allocated, watts.
    pub idle_watts: u32,
    /// Power drawn with every GPU allocated, watts.
    pub peak_watts: u32,
    /// Operator policy: whether different tenants may share this node (sub-node shapes).
    pub shareable: bool,
    /// CPU capacity in thousandths of a core; 0 when not modelled (then CPU bounds nothing).
    pub cpu_milli: u64,
    /// Memory in MiB; 0 when not modelled.
    pub memory_mib: u64,
    /// The MIG geometry of its GPUs, when they support MIG.
    pub mig: Option<MigFamily>,
    /// What may run on the node besides whole GPUs.
    pub sharing: Sharing,
}

/// Operator policy: what a node may run besides whole GPUs and gangs (invariant 4 in docs/architecture.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sharing {
    /// Fractional (time-shared) and MIG instances may run on the node's GPUs.
    pub slices: bool,
    /// Different tenants may hold slices of one GPU. Only where the node is shareable too;
    /// off by default: one tenant per GPU.
    pub tenants_per_gpu: bool,
    /// Instances without GPUs may run on the node.
    pub cpu_only: bool,
}

/// What an instance asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The instance the allocation is for.
    pub id: InstanceId,
    /// Its tenant.
    pub tenant: TenantId,
    /// Its class of service.
    pub class: Class,
    /// The GPU model it needs.
    pub gpu_model: String,
    /// GPUs in one node, or a gang of whole nodes.
    pub shape: Shape,
    /// The site it must run in, if it names one.
    pub site: Option<SiteId>,
    /// The contract whose reserved pool it runs in: required for class reserved, refused for
    /// every other class.
    pub pool: Option<ContractId>,
    /// CPU thousandths of a core it needs on its node; `None`: in proportion to its share of
    /// the node's GPUs. Required for a CPU-only request. Ignored for gangs (whole nodes).
    pub cpu_milli: Option<u64>,
    /// Memory MiB it needs on its node; `None`: in proportion, as for CPU.
    pub memory_mib: Option<u64>,
}

/// What [`Allocator::replacement_where`] shows of a candidate node.
#[derive(Clone, Copy, Debug)]
pub struct NodeView<'a> {
    /// The node.
    pub id: neocloud_types::NodeId,
    /// Schedulable, healthy and empty: it can be given whole now.
    pub whole_free: bool,
    /// Instances holding GPUs there, with their tenants, by instance id.
    pub holders: &'a [(neocloud_types::InstanceId, neocloud_types::TenantId)],
}

/// GPUs given to one instance.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Allocation {
    /// The instance.
    pub id: InstanceId,
    /// Its tenant.
    pub tenant: TenantId,
    /// Its class of service.
    pub class: Class,
    /// GPU model of every GPU given.
    pub gpu_model: String,
    /// The shape it asked for.
    pub shape: Shape,
    /// The site of every node given.
    pub site: SiteId,
    /// The contract pool it runs in (class reserved only).
    pub pool: Option<ContractId>,
    /// Nodes and GPU indexes, both sorted ascending. A gang holds every GPU of its nodes; a
    /// share or MIG instance names its one GPU; a CPU-only instance names its node and no
    /// GPU.
    pub gpus: Vec<(NodeId, GpuIndexes)>,
    /// CPU thousandths of a core held on each of its nodes.
    pub cpu_milli: u64,
    /// Memory MiB held on each of its nodes.
    pub memory_mib: u64,
    /// For a MIG instance, the first memory slice (0–7) of its GPU instance.
    pub mig_start: Option<u32>,
}

impl Allocation {
    /// Number of GPUs held, a slice counting as one.
    pub fn gpu_count(&self) -> u64 {
        self.gpus.iter().map(|(_, g)| g.len() as u64).sum()
    }

    /// Thousandths of a GPU held: 1000 per whole GPU, the share of a share, a MIG
    /// instance's compute slices out of 7.
    pub fn gpu_milli(&self) -> u64 {
        match self.shape {
            Shape::Share { .. } | Shape::Mig { .. } | Shape::Cpu => {
                self.shape.gpu_milli_of_one_node(0)
            }
            _ => self.gpu_count() * 1000,
        }
    }
}

/// Why a request cannot be placed. The messages are written for operators and tenants.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No node of the model exists.
    #[error("no node has GPU model '{model}'")]
    UnknownModel {
        /// The model asked for.
        model: String,
    },
    /// The shape, class or pool of the request is malformed.
    #[error("{reason}")]
    BadShape {
        /// What is wrong, in words.
        reason: String,
    },
    /// The instance already holds an allocation.
    #[error("instance {id} already has an allocation")]
    Duplicate {
        /// The instance.
        id: InstanceId,
    },
    /// No node is pinned to the contract's pool.
    #[error("no node is pinned to the reserved pool of contract {pool}")]
    UnknownPool {
        /// The contract.
        pool: ContractId,
    },
    /// The site named by the request is not known.
    #[error("site {site} is not known")]
    UnknownSite {
        /// The site.
        site: SiteId,
    },
    /// No free GPUs fit the shape.
    #[error("no capacity: {reason} ({free_gpus} free GPUs of that model in scope)")]
    NoCapacity {
        /// Healthy, schedulable, unallocated GPUs of the model in the request's scope, usable
        /// for this shape or not.
        free_gpus: u64,
        /// Why none fit, e.g. "no single leaf_group has 64 free whole nodes of H100-SXM-80GB;
        /// the largest has 41".
        reason: String,
    },
    /// GPUs fit, but placing them would take the site over its power limit.
    #[error(
        "site {site} is at its power limit: the placement needs {needed_watts} W more, \
         {allocated_watts} W of {limit_watts} W are allocated"
    )]
    PowerLimit {
        /// The site.
        site: SiteId,
        /// Facility watts the placement would add.
        needed_watts: i64,
        /// The site's limit, facility watts.
        limit_watts: i64,
        /// Facility watts drawn now.
        allocated_watts: i64,
    },
}

/// A site's power: what its nodes draw and what it may draw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PowerUse {
    /// IT watts: Σ node draw, where a node draws idle + (peak − idle) × allocated GPUs / GPUs.
    pub it_watts: i64,
    /// Facility watts: IT watts × PUE, rounded up. This is what the limit bounds.
    pub allocated_watts: i64,
    /// The site's limit, facility watts.
    pub limit_watts: i64,
}

/// How fragmented the free GPUs of one model in one site are.
#[derive(Clone, Debug, PartialEq)]
pub struct Fragmentation {
    /// Healthy, schedulable, unallocated GPUs.
    pub free_gpus: u64,
    /// Free GPUs on nodes that are not entirely free: they cannot host a whole-node shape.
    pub free_gpus_not_in_full_free_node: u64,
    /// `free_gpus_not_in_full_free_node / free_gpus` (0 when nothing is free).
    pub stranded_share: f64,
    /// For each gang level, the largest number of free whole nodes in one block of that level
    /// (one pool scope at a time: a gang never mixes pools).
    pub largest_gang_by_level: Vec<(GangLevel, u32)>,
}
