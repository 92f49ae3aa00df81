//! Synthetic fleets, ids and randomness for tests, benchmarks and the simulator.
//!
//! Everything here is deterministic: ids are numbers written as typed ids (so they sort in
//! number order), and randomness comes from a seeded generator, so that a benchmark or a
//! simulated scenario is the same on every run and every machine.

use neocloud_types::{BlockId, BlockKind, ContractId, InstanceId, NodeId, SiteId, TenantId};

use crate::node::facility_watts;
use crate::{Allocator, FleetPolicy, NodeSpec, PlacementPolicy, SiteSpec};

macro_rules! numbered_id {
    ($(#[$doc:meta])* $fn:ident, $ty:ty) => {
        $(#[$doc])*
        pub fn $fn(n: u64) -> $ty {
            format!("{}_{n:032x}", <$ty>::PREFIX)
                .parse()
                .expect("a prefix and 32 hex digits always parse")
        }
    };
}

numbered_id!(
    /// The site id numbered `n`.
    site_id, SiteId
);
numbered_id!(
    /// The node id numbered `n`.
    node_id, NodeId
);
numbered_id!(
    /// The block id numbered `n`.
    block_id, BlockId
);
numbered_id!(
    /// The tenant id numbered `n`.
    tenant_id, TenantId
);
numbered_id!(
    /// The instance id numbered `n`.
    instance_id, InstanceId
);
numbered_id!(
    /// The contract id numbered `n`.
    contract_id, ContractId
);

/// A small, fast, seeded generator (SplitMix64). Not for secrets.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator; equal seeds give equal sequences.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            // Multiply-shift: unbiased enough for workloads, and no division.
            let wide = u128::from(self.next_u64()) * u128::from(n);
            u64::try_from(wide >> 64).unwrap_or(0)
        }
    }

    /// A number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Whether an event of probability `p` happens.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// An exponentially distributed number of the given mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

/// A regular site: pods of leaf groups of identical nodes, optionally split into NVLink
/// domains.
#[derive(Clone, Debug)]
pub struct Grid {
    /// Number of the site (ids of its nodes and blocks derive from it).
    pub site: u64,
    /// Pods.
    pub pods: u32,
    /// Leaf groups per pod.
    pub leaves_per_pod: u32,
    /// Nodes per leaf group.
    pub nodes_per_leaf: u32,
    /// NVLink domains per leaf group (0: none; nodes are spread evenly over them).
    pub nvlink_per_leaf: u32,
    /// GPUs per node.
    pub gpus: u32,
    /// GPU model.
    pub gpu_model: String,
    /// Idle watts per node.
    pub idle_watts: u32,
    /// Peak watts per node.
    pub peak_watts: u32,
    /// Whether tenants may share nodes.
    pub shareable: bool,
    /// Power usage effectiveness, thousandths.
    pub pue_milli: u32,
    /// The site's limit; `None`: exactly every node at peak, so power never refuses.
    pub power_limit_watts: Option<i64>,
}

impl Grid {
    /// `memphis-1` of the demo: 25 pods × 20 leaf groups × 55 HGX H100 nodes, 220,000 GPUs.
    pub fn memphis_1() -> Self {
        Grid {
            site: 1,
            pods: 25,
            leaves_per_pod: 20,
            nodes_per_leaf: 55,
            nvlink_per_leaf: 0,
            gpus: 8,
            gpu_model: "H100-SXM-80GB".to_string(),
            idle_watts: 2500,
            peak_watts: 10200,
            shareable: true,
            pue_milli: 1050,
            power_limit_watts: None,
        }
    }

    /// A million GPUs: 50 pods × 50 leaf groups × 50 HGX H100 nodes (125,000 nodes).
    pub fn million() -> Self {
        Grid {
            pods: 50,
            leaves_per_pod: 50,
            nodes_per_leaf: 50,
            ..Grid::memphis_1()
        }
    }

    /// Nodes in the grid.
    pub fn node_count(&self) -> u64 {
        u64::from(self.pods) * u64::from(self.leaves_per_pod) * u64::from(self.nodes_per_leaf)
    }

    /// The site and its nodes, in id order.
    pub fn build(&self) -> (SiteSpec, Vec<NodeSpec>) {
        let site = site_id(self.site);
        let base = self.site << 40;
        let mut nodes = Vec::new();
        let mut serial = 0u64;
        let mut blocks = 0u64;
        let block = |blocks: &mut u64| {
            *blocks += 1;
            block_id(base | *blocks)
        };
        for _ in 0..self.pods {
            let pod = block(&mut blocks);
            for _ in 0..self.leaves_per_pod {
                let leaf = block(&mut blocks);
                let domains: Vec<BlockId> = (0..self.nvlink_per_leaf)
                    .map(|_| block(&mut blocks))
                    .collect();
                for n in 0..self.nodes_per_leaf {
                    serial += 1;
                    let mut path = vec![(BlockKind::Pod, pod), (BlockKind::LeafGroup, leaf)];
                    if !domains.is_empty() {
                        let per = self.nodes_per_leaf.div_ceil(self.nvlink_per_leaf).max(1);
                        let d = usize::try_from(n / per).unwrap_or(0).min(domains.len() - 1);
                        path.push((BlockKind::NvlinkDomain, domains[d]));
                    }
                    nodes.push(NodeSpec {
                        id: node_id(base | serial),
                        site,
                        gpu_model: self.gpu_model.clone(),
                        gpus: self.gpus,
                        blocks: path,
                        idle_watts: self.idle_watts,
                        peak_watts: self.peak_watts,
                        shareable: self.shareable,
                        cpu_milli: 0,
                        memory_mib: 0,
                        mig: None,
                        sharing: crate::Sharing::default(),
                    });
                }
            }
        }
        let peak = i64::from(self.peak_watts) * i64::try_from(nodes.len()).unwrap_or(i64::MAX);
        let spec = SiteSpec {
            id: site,
            power_limit_watts: self
                .power_limit_watts
                .unwrap_or_else(|| facility_watts(peak, self.pue_milli)),
            pue_milli: self.pue_milli,
        };
        (spec, nodes)
    }
}

/// An allocator holding the given grids.
pub fn allocator(grids: &[Grid], policy: FleetPolicy, placement: PlacementPolicy) -> Allocator {
    let mut a = Allocator::new(policy, placement);
    for g in grids {
        let (site, nodes) = g.build();
        a.add_site(site);
        for n in nodes {
            // Grid ids are unique and sites are added first, so this cannot fail.
            let _ = a.add_node(n);
        }
    }
    a
}
