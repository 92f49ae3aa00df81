//! From the fleet file to the production allocator: the same `FleetSpec` that `serve`
//! imports becomes an [`Allocator`] with numbered ids, so that every placement decision of a
//! simulation is taken by the code that takes them in production.

use std::collections::BTreeMap;

use neocloud_allocator::synthetic;
use neocloud_allocator::{Allocator, NodeSpec, PlacementPolicy, SiteSpec};
use neocloud_fleet::FleetSpec;
use neocloud_types::{BlockId, BlockKind, FleetPolicy, Money, NodeId, SiteId};

/// The id of the `i`-th site of the fleet file.
pub fn site_id(i: usize) -> SiteId {
    synthetic::site_id(i as u64 + 1)
}

/// The id of the `i`-th node of the fleet file (all sites, in file order).
pub fn node_id(i: usize) -> NodeId {
    synthetic::node_id(i as u64 + 1)
}

/// What the simulator keeps about a node besides the allocator.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// Its id in the allocator.
    pub id: NodeId,
    /// Index into [`Fleet::models`].
    pub model: usize,
    /// GPUs.
    pub gpus: u32,
}

/// A site's facts for reports.
#[derive(Clone, Debug)]
pub struct SiteInfo {
    /// Its id in the allocator.
    pub id: SiteId,
    /// Name from the fleet file.
    pub name: String,
    /// $ per MWh.
    pub energy_usd_per_mwh: Money,
    /// Facility power budget, watts.
    pub power_budget_watts: i64,
}

/// The fleet as the simulator runs it.
pub struct Fleet {
    /// The production allocator, loaded with every node.
    pub allocator: Allocator,
    /// Nodes in file order (index = slot of [`node_id`]).
    pub nodes: Vec<NodeInfo>,
    /// Sites in file order.
    pub sites: Vec<SiteInfo>,
    /// GPU models present, sorted.
    pub models: Vec<String>,
    /// Nodes of each (site, model), in id order.
    pub pools: BTreeMap<(usize, usize), Vec<usize>>,
}

impl Fleet {
    /// Builds the allocator from a parsed fleet file.
    pub fn build(
        spec: &FleetSpec,
        policy: FleetPolicy,
        placement: PlacementPolicy,
        shared_nodes: bool,
    ) -> Result<Fleet, String> {
        let mut allocator = Allocator::new(policy, placement);
        let mut models: Vec<String> = spec
            .sites
            .iter()
            .flat_map(|s| s.nodes.iter().map(|n| n.gpu_model.clone()))
            .collect();
        models.sort();
        models.dedup();
        let mut nodes = Vec::new();
        let mut sites = Vec::new();
        let mut pools: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
        let mut next_block = 0u64;
        for (si, s) in spec.sites.iter().enumerate() {
            let sid = site_id(si);
            allocator.add_site(SiteSpec {
                id: sid,
                power_limit_watts: s.power_budget_watts,
                pue_milli: s.pue_milli,
            });
            sites.push(SiteInfo {
                id: sid,
                name: s.name.clone(),
                energy_usd_per_mwh: s.energy_usd_per_mwh,
                power_budget_watts: s.power_budget_watts,
            });
            // Block path → (kind, id); parents come before children in the spec.
            let mut blocks: BTreeMap<&str, (BlockKind, BlockId)> = BTreeMap::new();
            for b in &s.blocks {
                next_block += 1;
                blocks.insert(b.path.as_str(), (b.kind, synthetic::block_id(next_block)));
            }
            for n in &s.nodes {
                let mut path = Vec::new();
                if !n.block_path.is_empty() {
                    let mut end = 0;
                    for part in n.block_path.split('/') {
                        end += part.len();
                        if let Some(&b) = blocks.get(&n.block_path[..end]) {
                            path.push(b);
                        }
                        end += 1;
                    }
                }
                // The allocator knows pods, leaf groups and NVLink domains, each once.
                path.retain(|(k, _)| {
                    matches!(
                        k,
                        BlockKind::Pod | BlockKind::LeafGroup | BlockKind::NvlinkDomain
                    )
                });
                let slot = nodes.len();
                let model = models.binary_search(&n.gpu_model).unwrap_or(0);
                let id = node_id(slot);
                allocator.add_node(NodeSpec {
                    id,
                    site: sid,
                    gpu_model: n.gpu_model.clone(),
                    gpus: n.gpu_count,
                    blocks: path,
                    idle_watts: n.idle_watts,
                    peak_watts: n.peak_watts,
                    shareable: shared_nodes,
                    cpu_milli: 0,
                    memory_mib: 0,
                    mig: None,
                    sharing: Default::default(),
                })?;
                pools.entry((si, model)).or_default().push(slot);
                nodes.push(NodeInfo {
                    id,
                    model,
                    gpus: n.gpu_count,
                });
            }
        }
        Ok(Fleet {
            allocator,
            nodes,
            sites,
            models,
            pools,
        })
    }

    /// GPUs of the whole fleet.
    pub fn gpu_count(&self) -> u64 {
        self.nodes.iter().map(|n| u64::from(n.gpus)).sum()
    }

    /// GPUs of a model in a site.
    pub fn gpus_of(&self, site: usize, model: usize) -> u64 {
        self.pools.get(&(site, model)).map_or(0, |v| {
            v.iter().map(|&i| u64::from(self.nodes[i].gpus)).sum()
        })
    }

    /// The slot of a node id built by [`node_id`].
    pub fn slot_of(&self, id: NodeId) -> Option<usize> {
        let s = id.to_string();
        let hex = s.rsplit('_').next()?;
        let n = u64::from_str_radix(hex, 16).ok()?;
        usize::try_from(n.checked_sub(1)?).ok()
    }
}
