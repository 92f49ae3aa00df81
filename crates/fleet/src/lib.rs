//! The fleet file: a compact TOML description of a GPU fleet.
//!
//! A fleet file lists extra GPU models and sites; a site holds explicit topology blocks and
//! nodes, and node groups that generate thousands of identical nodes laid out in a regular
//! topology (pods → leaf groups → NVLink domains). [`parse`] reads such a file, checks it
//! completely (every problem is reported with its line, column and field, not just the
//! first one) and expands it into a flat, ordered [`FleetSpec`] that the server imports.
//!
//! The format is documented for operators in `docs/fleet-file.md`.
//!
//! This crate is pure: no I/O, no async. Two generators produce fleet-file text so that
//! everything goes through the same parser: [`demo_fleet_toml`] (the Memphis scenario used by
//! `serve --demo`) and [`alibaba_nodes_to_fleet_toml`] (the node list of the public Alibaba
//! GPU cluster trace).

mod alibaba;
mod check;
mod demo;
mod errors;
mod expand;
mod pattern;
mod read;

pub use alibaba::alibaba_nodes_to_fleet_toml;
pub use demo::demo_fleet_toml;
pub use errors::{FleetError, FleetErrors, MAX_ERRORS};

use neocloud_types::{BlockKind, BoardTopology, GpuModel, Money, SiteKind};

/// Most nodes one fleet file may expand to; larger files are rejected before expansion.
pub const MAX_NODES: u64 = 2_000_000;

/// Most GPUs one fleet file may expand to; larger files are rejected before expansion.
pub const MAX_GPUS: u64 = 10_000_000;

/// A fleet file, checked and expanded: every block and node spelled out.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FleetSpec {
    /// Every GPU model the file defines, in file order. One that is already in the catalog
    /// given to [`parse`] is either built in and repeated identically, or added earlier and
    /// redefined: the file's figures then apply (and nodes were checked against them).
    pub gpu_models: Vec<GpuModelSpec>,
    /// Sites, in file order.
    pub sites: Vec<SiteSpec>,
}

impl FleetSpec {
    /// Number of nodes in every site.
    pub fn node_count(&self) -> usize {
        self.sites.iter().map(|s| s.nodes.len()).sum()
    }

    /// Number of GPUs in every node of every site.
    pub fn gpu_count(&self) -> u64 {
        self.sites
            .iter()
            .flat_map(|s| &s.nodes)
            .map(|n| u64::from(n.gpu_count))
            .sum()
    }
}

/// A GPU model defined by the fleet file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GpuModelSpec {
    /// Model name, unique in the catalog.
    pub name: String,
    /// Maker; `unknown` when the file does not say.
    pub vendor: String,
    /// Device memory in GiB.
    pub memory_gib: u32,
    /// Thermal design power of one GPU, watts.
    pub tdp_watts: u32,
    /// How the GPUs of one board connect (`topology`); when the file does not say,
    /// [`BoardTopology::of_model`] of the name.
    pub topology: BoardTopology,
}

/// One site with all of its blocks and nodes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SiteSpec {
    /// Unique site name.
    pub name: String,
    /// Region label.
    pub region: String,
    /// Terrestrial or orbital.
    pub kind: SiteKind,
    /// Power the site may draw, watts, facility overhead included.
    pub power_budget_watts: i64,
    /// Power usage effectiveness in thousandths (1050 = PUE 1.05).
    pub pue_milli: u32,
    /// Price of energy, US dollars per MWh.
    pub energy_usd_per_mwh: Money,
    /// Topology blocks; a parent always comes before its children, so the list can be
    /// inserted in order.
    pub blocks: Vec<BlockSpec>,
    /// Nodes in file order; a node group's nodes appear where the group is written, in
    /// generation order.
    pub nodes: Vec<NodeSpec>,
}

/// One topology block.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BlockSpec {
    /// Name, unique within the site.
    pub name: String,
    /// Topology level.
    pub kind: BlockKind,
    /// Name of the enclosing block, if any.
    pub parent: Option<String>,
    /// Names from the outermost block down to this one, joined by `/`.
    pub path: String,
}

/// One node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeSpec {
    /// Host name, unique in the whole file.
    pub name: String,
    /// Name of the innermost block holding the node, if any.
    pub block: Option<String>,
    /// Path of that block (empty when the node sits directly in the site).
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
    /// Whether a new node starts in `provisioning` (enters service after its agent's burn-in
    /// check passes) instead of `available`.
    pub burn_in: bool,
}

/// Parses, checks and expands a fleet file.
///
/// `catalog` holds the GPU models already known (built-in and previously added); nodes may
/// use those and the models the file itself defines. On failure every problem found is
/// returned (at most [`MAX_ERRORS`]), in file order.
pub fn parse(source: &str, catalog: &[GpuModel]) -> Result<FleetSpec, FleetErrors> {
    check::parse(source, catalog)
}

#[cfg(test)]
mod tests;
