//! The fleet: GPU models, sites, topology blocks, nodes and GPUs.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{BlockId, Money, NodeId, SiteId, Timestamp};

/// Declares a closed set of lowercase string values with one spelling for JSON, SQL, the CLI
/// and the fleet file.
#[macro_export]
macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
                 serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $text)] #[schema(rename = $text)] $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stable spelling of this value.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(format!(
                        "'{}' is not one of: {}",
                        s,
                        [$($text),+].join(", ")
                    )),
                }
            }
        }
    };
}

string_enum!(
    /// Where a site is.
    SiteKind {
        /// A data center on the ground.
        Terrestrial = "terrestrial",
        /// A data center in orbit.
        Orbital = "orbital",
    }
);

string_enum!(
    /// A level of the network topology inside a site, outermost first.
    BlockKind {
        /// An InfiniBand/RoCE pod (spine domain).
        Pod = "pod",
        /// A group of nodes under one set of leaf switches.
        LeafGroup = "leaf_group",
        /// An NVLink domain (e.g. one GB200 NVL72 rack).
        NvlinkDomain = "nvlink_domain",
    }
);

impl BlockKind {
    /// Nesting depth: pod 0, leaf group 1, NVLink domain 2. A child is always deeper.
    pub fn depth(self) -> u8 {
        match self {
            BlockKind::Pod => 0,
            BlockKind::LeafGroup => 1,
            BlockKind::NvlinkDomain => 2,
        }
    }
}

string_enum!(
    /// Lifecycle state of a node.
    NodeState {
        /// Known to the control plane, not yet verified.
        Provisioning = "provisioning",
        /// Running its burn-in check.
        BurnIn = "burn_in",
        /// In service with free capacity.
        Available = "available",
        /// In service, fully allocated.
        Allocated = "allocated",
        /// Taken out of new placements by an operator; running work stays.
        Cordoned = "cordoned",
        /// Being emptied before maintenance.
        Draining = "draining",
        /// Out of service for repair.
        Maintenance = "maintenance",
        /// Out of service after a fatal fault, or after its agent stayed silent past the
        /// operator's grace period.
        Failed = "failed",
        /// Its agent stopped heartbeating (past the missed-heartbeat limit, within the grace
        /// period): it takes no new work, but what runs there keeps running (and billing) and
        /// a contract pool keeps it. Heartbeats again return it to the state it had before.
        Unreachable = "unreachable",
    }
);

string_enum!(
    /// Health of one GPU.
    GpuHealth {
        /// No known fault.
        Healthy = "healthy",
        /// Degraded (e.g. pending row remap); usable but should be drained.
        Degraded = "degraded",
        /// Failed; not usable.
        Failed = "failed",
    }
);

/// A GPU model in the catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GpuModel {
    /// Catalog name, e.g. `H100-SXM-80GB`.
    pub name: String,
    /// Maker, e.g. `NVIDIA`.
    pub vendor: String,
    /// Device memory in GiB.
    pub memory_gib: u32,
    /// Thermal design power in watts: the power one GPU draws at full load.
    pub tdp_watts: u32,
    /// Whether the model ships with neocloud (built-in models cannot be changed).
    pub builtin: bool,
    /// How the GPUs of one board connect, as placement uses it: `nvswitch` (any GPUs
    /// together), `groups:N,M,…` (consecutive groups of GPU indexes, smallest first) or
    /// `aligned`. A model whose fleet file gave none takes the rule for its name.
    #[schema(value_type = String, example = "nvswitch")]
    pub topology: crate::BoardTopology,
}

/// A data center and its power envelope.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Site {
    /// Site id.
    pub id: SiteId,
    /// Unique name, e.g. `memphis-1`.
    pub name: String,
    /// Region label, e.g. `us-south`.
    pub region: String,
    /// Terrestrial or orbital.
    pub kind: SiteKind,
    /// Power the site may draw, in watts, facility overhead (PUE) included.
    pub power_budget_watts: i64,
    /// An operator's cap below the budget, watts; placements keep the site under it.
    pub power_cap_watts: Option<i64>,
    /// Power usage effectiveness, in thousandths (1250 = PUE 1.25).
    pub pue_milli: u32,
    /// Price of energy, US dollars per MWh.
    pub energy_usd_per_mwh: Money,
    /// Nodes in the site.
    pub node_count: i64,
    /// GPUs in the site.
    pub gpu_count: i64,
    /// Facility power at full load of every node: Σ peak watts × PUE.
    pub peak_power_watts: i64,
    /// GPUs per model in this site.
    pub gpus_by_model: Vec<ModelCount>,
    /// When the site was created.
    pub created_at: Timestamp,
}

/// A count of GPUs of one model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ModelCount {
    /// GPU model name.
    pub gpu_model: String,
    /// Number of GPUs.
    pub gpus: i64,
}

/// A topology block: pod, leaf group or NVLink domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Block {
    /// Block id.
    pub id: BlockId,
    /// Site the block belongs to.
    pub site_id: SiteId,
    /// Name, unique within its site.
    pub name: String,
    /// Topology level.
    pub kind: BlockKind,
    /// Enclosing block, if any.
    pub parent_id: Option<BlockId>,
    /// Names from the outermost block down to this one, joined by `/`.
    pub path: String,
    /// Nodes inside this block, nested blocks included.
    pub node_count: i64,
    /// GPUs inside this block, nested blocks included.
    pub gpu_count: i64,
}

/// One server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Node {
    /// Node id.
    pub id: NodeId,
    /// Unique host name.
    pub name: String,
    /// Site id.
    pub site_id: SiteId,
    /// Site name.
    pub site: String,
    /// Innermost block holding the node, if any.
    pub block_id: Option<BlockId>,
    /// Path of block names, outermost first (empty when the node sits directly in the site).
    pub block_path: String,
    /// GPU model of every GPU in the node.
    pub gpu_model: String,
    /// Number of GPUs.
    pub gpu_count: u32,
    /// CPU cores.
    pub cpu_cores: u32,
    /// Memory in GiB.
    pub ram_gib: u32,
    /// Power drawn when idle, watts.
    pub idle_watts: u32,
    /// Power drawn at full load, watts.
    pub peak_watts: u32,
    /// Lifecycle state.
    pub state: NodeState,
    /// Why the node is in its state (the fault, the operator's reason), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<String>,
    /// When the node's agent was last heard from; none if no agent ever registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_at: Option<Timestamp>,
    /// When the node was created.
    pub created_at: Timestamp,
    /// When the node last changed.
    pub updated_at: Timestamp,
    /// The node's GPUs (only in single-node reads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<Vec<Gpu>>,
}

/// One GPU device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Gpu {
    /// Index inside the node (0-based, as NVML numbers them).
    pub index: u32,
    /// Device UUID as the driver reports it (`GPU-…`); unknown until the node's agent reports.
    pub uuid: Option<String>,
    /// Health.
    pub health: GpuHealth,
    /// Product name as the driver reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    /// Board serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// PCI bus id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_bus_id: Option<String>,
    /// Latest telemetry from the node's agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<crate::GpuSample>,
}

/// The GPU models neocloud knows out of the box. Operators add others through the fleet file
/// or `POST /v1/gpu-models`. Memory and TDP are the vendors' published figures for the SXM /
/// OAM parts (GB200: per GPU of a Grace-Blackwell superchip).
pub fn builtin_gpu_models() -> Vec<GpuModel> {
    let m = |name: &str, vendor: &str, memory_gib: u32, tdp_watts: u32| GpuModel {
        name: name.to_string(),
        vendor: vendor.to_string(),
        memory_gib,
        tdp_watts,
        builtin: true,
        topology: crate::BoardTopology::of_model(name),
    };
    vec![
        m("A100-SXM-80GB", "NVIDIA", 80, 400),
        m("H100-SXM-80GB", "NVIDIA", 80, 700),
        m("H200-SXM-141GB", "NVIDIA", 141, 700),
        m("B200", "NVIDIA", 180, 1000),
        m("GB200", "NVIDIA", 186, 1200),
        m("L40S", "NVIDIA", 48, 350),
        m("MI300X", "AMD", 192, 750),
    ]
}

/// What a fleet import changed (or, for a dry run, would change).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImportReport {
    /// True when nothing was written.
    pub dry_run: bool,
    /// GPU models added to the catalog.
    pub gpu_models_added: u64,
    /// GPU models whose figures changed.
    pub gpu_models_updated: u64,
    /// Sites created.
    pub sites_added: u64,
    /// Sites whose fields changed.
    pub sites_updated: u64,
    /// Blocks created.
    pub blocks_added: u64,
    /// Blocks whose kind or parent changed.
    pub blocks_updated: u64,
    /// Blocks removed (no longer in the file).
    pub blocks_removed: u64,
    /// Nodes created.
    pub nodes_added: u64,
    /// Nodes whose fields changed.
    pub nodes_updated: u64,
    /// Nodes removed (no longer in the file).
    pub nodes_removed: u64,
    /// Nodes already as the file says.
    pub nodes_unchanged: u64,
    /// GPUs added (new nodes, or more GPUs in a node).
    pub gpus_added: u64,
    /// GPUs removed.
    pub gpus_removed: u64,
}

/// A node as the allocator needs it.
#[derive(Clone, Debug)]
pub struct AllocatorNode {
    /// Node id.
    pub id: crate::NodeId,
    /// Node name.
    pub name: String,
    /// Site.
    pub site_id: crate::SiteId,
    /// Enclosing blocks, outermost first.
    pub blocks: Vec<(crate::BlockKind, crate::BlockId)>,
    /// GPU model.
    pub gpu_model: String,
    /// GPUs.
    pub gpus: u32,
    /// Idle draw, watts.
    pub idle_watts: u32,
    /// Full-load draw, watts.
    pub peak_watts: u32,
    /// Lifecycle state (only available/allocated nodes take new work).
    pub state: crate::NodeState,
    /// Contract pool the node is pinned to.
    pub pool: Option<crate::ContractId>,
    /// Indexes of GPUs that are not healthy.
    pub unhealthy_gpus: Vec<u32>,
    /// CPU cores.
    pub cpu_cores: u32,
    /// Host memory, GiB.
    pub ram_gib: u32,
    /// Memory of one GPU, GiB (from the model catalog; 0 if the model is not in it).
    pub gpu_memory_gib: u32,
}

/// A site as the allocator needs it.
#[derive(Clone, Debug)]
pub struct AllocatorSite {
    /// Site id.
    pub id: crate::SiteId,
    /// Power limit, watts: the operator's cap if set, else the budget.
    pub power_budget_watts: i64,
    /// PUE in thousandths.
    pub pue_milli: u32,
}
