//! From the fleet file to the scheduler's snapshot: the same `FleetSpec` that `serve`
//! imports becomes the sites and nodes a [`neocloud_scheduler::Scheduler`] is built from,
//! with numbered ids, so that every decision of a simulation is taken by the code that takes
//! it in production.

use std::collections::BTreeMap;

use neocloud_allocator::synthetic;
use neocloud_fleet::FleetSpec;
use neocloud_scheduler::Snapshot;
use neocloud_types::{
    AllocatorNode, AllocatorSite, BlockId, BlockKind, ModelCount, Money, NodeId, NodeState, Site,
    SiteId, Timestamp,
};

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
    /// Index of its site.
    pub site: usize,
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
    /// Reads a parsed fleet file: the simulator's view of it, and the state a scheduler is
    /// built from (every node available, nothing running, no contract yet). Nodes carry
    /// their CPU cores and memory as `serve` imports them.
    pub fn build(spec: &FleetSpec, start: Timestamp) -> (Fleet, Snapshot) {
        let mut models: Vec<String> = spec
            .sites
            .iter()
            .flat_map(|s| s.nodes.iter().map(|n| n.gpu_model.clone()))
            .collect();
        models.sort();
        models.dedup();
        let memory_of = |m: &str| {
            spec.gpu_models
                .iter()
                .find(|g| g.name == m)
                .map_or(0, |g| g.memory_gib)
        };
        let mut snap = Snapshot {
            // The boards of the file's models as the file describes them (built-in models
            // take the rule for their names, as in `serve`).
            topologies: spec
                .gpu_models
                .iter()
                .map(|g| (g.name.clone(), g.topology))
                .collect(),
            ..Snapshot::default()
        };
        let mut nodes = Vec::new();
        let mut sites = Vec::new();
        let mut pools: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
        let mut next_block = 0u64;
        for (si, s) in spec.sites.iter().enumerate() {
            let sid = site_id(si);
            snap.alloc_sites.push(AllocatorSite {
                id: sid,
                power_budget_watts: s.power_budget_watts,
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
            let mut by_model: BTreeMap<&str, i64> = BTreeMap::new();
            let mut peak_watts = 0i64;
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
                snap.nodes.push(AllocatorNode {
                    id,
                    // Names are for people: no decision reads one, and every placement
                    // would carry copies of them.
                    name: String::new(),
                    site_id: sid,
                    blocks: path,
                    gpu_model: n.gpu_model.clone(),
                    gpus: n.gpu_count,
                    idle_watts: n.idle_watts,
                    peak_watts: n.peak_watts,
                    state: NodeState::Available,
                    pool: None,
                    unhealthy_gpus: Vec::new(),
                    cpu_cores: n.cpu_cores,
                    ram_gib: n.ram_gib,
                    gpu_memory_gib: memory_of(&n.gpu_model),
                });
                *by_model.entry(n.gpu_model.as_str()).or_default() += i64::from(n.gpu_count);
                peak_watts += i64::from(n.peak_watts);
                pools.entry((si, model)).or_default().push(slot);
                nodes.push(NodeInfo {
                    id,
                    model,
                    gpus: n.gpu_count,
                    site: si,
                });
            }
            snap.sites.push(Site {
                id: sid,
                name: s.name.clone(),
                region: s.region.clone(),
                kind: s.kind,
                power_budget_watts: s.power_budget_watts,
                power_cap_watts: None,
                pue_milli: s.pue_milli,
                energy_usd_per_mwh: s.energy_usd_per_mwh,
                node_count: i64::try_from(s.nodes.len()).unwrap_or(i64::MAX),
                gpu_count: by_model.values().sum(),
                peak_power_watts: peak_watts * i64::from(s.pue_milli) / 1000,
                gpus_by_model: by_model
                    .into_iter()
                    .map(|(m, gpus)| ModelCount {
                        gpu_model: m.to_string(),
                        gpus,
                    })
                    .collect(),
                created_at: start,
            });
        }
        let fleet = Fleet {
            nodes,
            sites,
            models,
            pools,
        };
        (fleet, snap)
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
}
