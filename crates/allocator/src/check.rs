//! Self-checks and snapshots.
//!
//! [`Allocator::check_invariants`] recomputes everything the allocator keeps incrementally
//! (GPU masks, indexes, power) from the nodes and the allocations alone, and checks the
//! the invariants in docs/architecture.md on the allocations; property tests call it after every step.
//! [`Snapshot`] is the allocator's state in a form that does not depend on the order in
//! which it was built, so that a test can say "rebuilt after a restart == before".

use std::collections::BTreeMap;
use std::fmt::{self, Write};

use neocloud_types::{
    BlockId, BlockKind, Class, ContractId, FleetPolicy, InstanceId, NodeId, Shape, SiteId, TenantId,
};

use crate::allocator::Allocator;
use crate::index::{Scopes, apply};
use crate::node::{Load, SHAPES, indexes_of, is_valid_group, mask_of};
use crate::{Allocation, PlacementPolicy, SiteSpec};

/// One node as a snapshot sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSnapshot {
    /// Node id.
    pub id: NodeId,
    /// Site.
    pub site: SiteId,
    /// GPU model.
    pub gpu_model: String,
    /// GPU count.
    pub gpus: u32,
    /// Blocks, outermost first.
    pub blocks: Vec<(BlockKind, BlockId)>,
    /// Idle watts.
    pub idle_watts: u32,
    /// Peak watts.
    pub peak_watts: u32,
    /// Whether tenants may share it.
    pub shareable: bool,
    /// The pool it is pinned to.
    pub pool: Option<ContractId>,
    /// Whether it takes new placements.
    pub schedulable: bool,
    /// Indexes of unhealthy GPUs.
    pub unhealthy_gpus: Vec<u32>,
    /// CPU thousandths (0: not modelled).
    pub cpu_milli: u64,
    /// Memory MiB (0: not modelled).
    pub memory_mib: u64,
    /// MIG geometry.
    pub mig: Option<neocloud_types::MigFamily>,
    /// How its GPUs connect (its model's).
    pub topology: neocloud_types::BoardTopology,
    /// What it may run besides whole GPUs.
    pub sharing: crate::Sharing,
}

/// The whole state of an allocator, independent of the order it was built in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Fleet policy.
    pub policy: FleetPolicy,
    /// Placement policy.
    pub placement: PlacementPolicy,
    /// Sites, by id.
    pub sites: Vec<SiteSpec>,
    /// Nodes, by id.
    pub nodes: Vec<NodeSnapshot>,
    /// Allocations, by instance id.
    pub allocations: Vec<Allocation>,
}

/// What the allocations hold of one GPU's slices.
#[derive(Clone, Debug, Default)]
struct SliceSum {
    milli: u32,
    mig: u8,
    holders: u32,
    tenants: std::collections::BTreeSet<TenantId>,
}

/// Two FNV-1a hashes with different offsets: a 128-bit digest without a hashing crate.
/// Not cryptographic; it only has to tell two states apart in tests and logs.
struct Digest(u64, u64);

impl Write for Digest {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            self.1 = (self.1 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Ok(())
    }
}

impl Allocator {
    /// The state as a [`Snapshot`].
    pub fn snapshot(&self) -> Snapshot {
        let mut nodes: Vec<NodeSnapshot> = self
            .nodes
            .iter()
            .map(|n| NodeSnapshot {
                id: n.id,
                site: n.site,
                gpu_model: self.model_name(n.model).to_string(),
                gpus: n.gpus,
                blocks: [
                    BlockKind::Pod,
                    BlockKind::LeafGroup,
                    BlockKind::NvlinkDomain,
                ]
                .into_iter()
                .filter_map(|k| n.blocks[usize::from(k.depth())].map(|b| (k, b)))
                .collect(),
                idle_watts: n.idle_watts,
                peak_watts: n.peak_watts,
                shareable: n.shareable,
                pool: n.pool,
                schedulable: n.schedulable,
                unhealthy_gpus: indexes_of(n.unhealthy).to_vec(),
                cpu_milli: n.cpu_milli,
                memory_mib: n.mem_mib,
                mig: n.mig,
                topology: n.topology,
                sharing: n.sharing,
            })
            .collect();
        nodes.sort_by_key(|n| n.id);
        Snapshot {
            policy: self.policy,
            placement: self.placement,
            sites: self.sites.values().map(|s| s.spec.clone()).collect(),
            nodes,
            allocations: self.allocations().cloned().collect(),
        }
    }

    /// A short digest of [`Allocator::snapshot`]: equal states give equal fingerprints.
    pub fn fingerprint(&self) -> String {
        let mut d = Digest(0xcbf2_9ce4_8422_2325, 0x6c62_272e_07bb_0142);
        // Writing into a digest cannot fail.
        let _ = write!(d, "{:?}", self.snapshot());
        format!("{:016x}{:016x}", d.0, d.1)
    }

    pub(crate) fn model_name(&self, model: u32) -> &str {
        usize::try_from(model)
            .ok()
            .and_then(|m| self.models.get(m))
            .map_or("", String::as_str)
    }

    /// Recomputes every index from the nodes and allocations and compares, and checks the
    /// invariants: a GPU is held at most once (§3.1), work runs only where its class and
    /// pool allow, an unshared node holds one tenant's work (§3.4). Power (§3.5) is checked
    /// at placement: a lowered limit keeps running work, so the draw may exceed it here.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.slots.len() != self.nodes.len() {
            return Err("node lookup and node list differ in length".to_string());
        }
        for (slot, n) in self.nodes.iter().enumerate() {
            if self.slots.get(&n.id) != Some(&slot) || usize::try_from(n.slot) != Ok(slot) {
                return Err(format!("node {} is not found at its slot", n.id));
            }
        }
        self.check_spares()?;
        let mut used = vec![0u64; self.nodes.len()];
        let mut held: Vec<Vec<(InstanceId, TenantId)>> = vec![Vec::new(); self.nodes.len()];
        let mut sliced: Vec<BTreeMap<u32, SliceSum>> = vec![BTreeMap::new(); self.nodes.len()];
        let mut host = vec![(0u64, 0u64); self.nodes.len()];
        for (id, a) in &self.allocations {
            let kept: Vec<(usize, u64)> = a
                .gpus
                .iter()
                .map(|(node, indexes)| {
                    (
                        self.slots.get(node).copied().unwrap_or(usize::MAX),
                        crate::node::mask_of(indexes),
                    )
                })
                .collect();
            if kept[..] != a.picks[..] {
                return Err(format!(
                    "instance {id}: kept slots and masks {:?}, its nodes say {kept:?}",
                    &a.picks[..]
                ));
            }
            self.check_allocation(*id, a, &mut used, &mut held, &mut sliced)?;
            for (node, _) in &a.gpus {
                if let Some(&slot) = self.slots.get(node) {
                    let (c, m) = self.nodes[slot].host_of(a);
                    host[slot].0 += c;
                    host[slot].1 += m;
                }
            }
        }
        for list in &mut held {
            list.sort_unstable();
        }
        for (slot, n) in self.nodes.iter().enumerate() {
            for (&g, sum) in &sliced[slot] {
                let bit = 1u64 << g;
                if used[slot] & bit != 0 {
                    return Err(format!(
                        "GPU {g} of node {} is held whole and sliced (invariant 1)",
                        n.id
                    ));
                }
                used[slot] |= bit;
                if sum.milli > 1000 {
                    return Err(format!(
                        "GPU {g} of node {}: shares sum to {} thousandths (invariant 1)",
                        n.id, sum.milli
                    ));
                }
                if sum.milli > 0 && sum.mig != 0 {
                    return Err(format!(
                        "GPU {g} of node {} holds shares and MIG instances",
                        n.id
                    ));
                }
                if sum.tenants.len() > 1 && !(n.shareable && n.sharing.tenants_per_gpu) {
                    return Err(format!(
                        "GPU {g} of node {} holds slices of two tenants (invariant 4)",
                        n.id
                    ));
                }
                let kept = n.slices_of(g);
                if u32::from(kept.milli) != sum.milli
                    || kept.mig != sum.mig
                    || u32::from(kept.holders) != sum.holders
                    || (!(n.shareable && n.sharing.tenants_per_gpu)
                        && kept.tenant.is_none_or(|t| !sum.tenants.contains(&t)))
                {
                    return Err(format!(
                        "GPU {g} of node {}: kept slices {kept:?}, allocations say {sum:?}",
                        n.id
                    ));
                }
            }
            if n.slices.iter().enumerate().any(|(g, s)| {
                !s.is_empty() && u32::try_from(g).is_ok_and(|g| !sliced[slot].contains_key(&g))
            }) {
                return Err(format!("node {}: slices without allocations", n.id));
            }
            if (n.cpu_used, n.mem_used) != host[slot] {
                return Err(format!(
                    "node {}: CPU and memory held {:?}, allocations say {:?}",
                    n.id,
                    (n.cpu_used, n.mem_used),
                    host[slot]
                ));
            }
            // More CPU or memory held than the node has is legal: a fleet edit may have
            // lowered them under running work (placement never over-commits; the property
            // tests check that from the allocations).
            if n.used != used[slot] {
                return Err(format!(
                    "node {}: GPUs held {:?}, allocations say {:?}",
                    n.id,
                    indexes_of(n.used),
                    indexes_of(used[slot])
                ));
            }
            if n.allocs != held[slot] {
                return Err(format!("node {}: allocation list is stale", n.id));
            }
            let mut classes = [0u16; 4];
            let mut share = 0;
            for (inst, _) in &n.allocs {
                if let Some(a) = self.allocations.get(inst) {
                    classes[crate::node::class_index(a.class)] += 1;
                    share += crate::node::plan_share(a);
                }
            }
            if (n.classes, n.share) != (classes, share) {
                return Err(format!(
                    "node {}: counts work by class and share as {:?}, its allocations say {:?}",
                    n.id,
                    (n.classes, n.share),
                    (classes, share)
                ));
            }
            if !n.shareable && n.allocs.iter().any(|&(_, t)| Some(t) != n.owner()) {
                return Err(format!(
                    "node {} is not shareable but holds work of two tenants (invariant 4)",
                    n.id
                ));
            }
        }
        let mut fresh = Scopes::default();
        for n in &self.nodes {
            apply(&mut fresh, n, true, true, self.placement, self.policy);
        }
        for a in self.allocations() {
            for (node, _) in &a.gpus {
                if let Some(&slot) = self.slots.get(node) {
                    fresh.alloc_ref(&self.nodes[slot].scope_key(), a.class, a.id, true, 1);
                }
            }
        }
        if fresh != self.scopes {
            let keys = |s: &Scopes| -> Vec<_> {
                s.map
                    .iter()
                    .flat_map(|(k, m)| m.keys().map(move |k2| (*k, *k2)))
                    .collect()
            };
            let detail = keys(&fresh)
                .into_iter()
                .zip(keys(&self.scopes))
                .find(|(a, b)| a != b)
                .map_or(String::new(), |(a, b)| {
                    format!(" (first differing scope {a:?} / {b:?})")
                });
            let bucket_detail = fresh
                .map
                .iter()
                .flat_map(|(k, m)| m.iter().map(move |(k2, b)| ((*k, *k2), b)))
                .find(|((k, k2), b)| self.scopes.map.get(k).and_then(|m| m.get(k2)) != Some(*b))
                .map_or(String::new(), |(k, b)| {
                    let now = self.scopes.map.get(&k.0).and_then(|m| m.get(&k.1));
                    format!(" scope {k:?}: rebuilt {b:?}, kept {now:?}")
                });
            return Err(format!(
                "the free-capacity index differs from a rebuild{detail}{bucket_detail}"
            ));
        }
        let mut loads: BTreeMap<SiteId, Load> = BTreeMap::new();
        let mut sizes: BTreeMap<u32, BTreeMap<u32, u32>> = BTreeMap::new();
        let mut pools: BTreeMap<ContractId, u32> = BTreeMap::new();
        for n in &self.nodes {
            let load = loads.entry(n.site).or_default();
            load.idle += i64::from(n.idle_watts);
            load.add(n.gpus, n.span_watts() * i64::from(n.used.count_ones()));
            *sizes.entry(n.model).or_default().entry(n.gpus).or_default() += 1;
            if let Some(p) = n.pool {
                *pools.entry(p).or_default() += 1;
            }
        }
        for (id, s) in &self.sites {
            let want = loads.remove(id).unwrap_or_default();
            if s.load != want {
                return Err(format!(
                    "site {id}: kept draw {} W, nodes draw {} W",
                    s.load.it_watts(),
                    want.it_watts()
                ));
            }
        }
        if sizes != self.model_sizes {
            return Err("node counts per model and GPU count are stale".to_string());
        }
        if pools != self.pools {
            return Err("node counts per pool are stale".to_string());
        }
        Ok(())
    }

    fn check_allocation(
        &self,
        id: InstanceId,
        a: &Allocation,
        used: &mut [u64],
        held: &mut [Vec<(InstanceId, TenantId)>],
        sliced: &mut [BTreeMap<u32, SliceSum>],
    ) -> Result<(), String> {
        if a.id != id || a.gpus.is_empty() {
            return Err(format!("allocation {id} is malformed"));
        }
        if !a.gpus.windows(2).all(|w| w[0].0 < w[1].0) {
            return Err(format!(
                "allocation {id}: nodes are not sorted and distinct"
            ));
        }
        match (a.class, a.pool) {
            (Class::Reserved, Some(_))
            | (Class::Internal | Class::OnDemand | Class::Spot, None) => {}
            _ => return Err(format!("allocation {id}: class and pool disagree")),
        }
        for (node_id, indexes) in &a.gpus {
            let slot = *self
                .slots
                .get(node_id)
                .ok_or_else(|| format!("allocation {id}: node {node_id} is not known"))?;
            let n = &self.nodes[slot];
            if n.site != a.site || self.model_name(n.model) != a.gpu_model {
                return Err(format!(
                    "allocation {id}: node {node_id} has another site or model"
                ));
            }
            if !indexes.windows(2).all(|w| w[0] < w[1]) || indexes.iter().any(|&g| g >= n.gpus) {
                return Err(format!("allocation {id}: bad GPU indexes {indexes:?}"));
            }
            let mask = mask_of(indexes);
            held[slot].push((a.id, a.tenant));
            if a.class != Class::Spot && n.pool != a.pool {
                return Err(format!(
                    "allocation {id}: a {} allocation on node {node_id} of pool {:?}",
                    a.class, n.pool
                ));
            }
            if a.shape.is_slice() {
                let [g] = indexes[..] else {
                    if a.shape == Shape::Cpu && indexes.is_empty() {
                        continue;
                    }
                    return Err(format!("allocation {id}: a slice holds one GPU"));
                };
                let sum = sliced[slot].entry(g).or_default();
                sum.holders += 1;
                sum.tenants.insert(a.tenant);
                match a.shape {
                    Shape::Share { milli } => sum.milli += milli,
                    Shape::Mig { profile } => {
                        let geo = n
                            .mig
                            .and_then(|f| f.geometry(profile))
                            .ok_or_else(|| format!("allocation {id}: no MIG {profile} here"))?;
                        let start = a
                            .mig_start
                            .filter(|s| geo.starts.contains(s))
                            .ok_or_else(|| format!("allocation {id}: bad MIG start"))?;
                        let m = crate::slices::mig_mask(start, geo.slices);
                        if sum.mig & m != 0 {
                            return Err(format!(
                                "allocation {id}: MIG slices of GPU {g} of node {node_id} \
                                 overlap (invariant 1)"
                            ));
                        }
                        sum.mig |= m;
                    }
                    _ => {}
                }
                continue;
            }
            if used[slot] & mask != 0 {
                return Err(format!(
                    "GPU(s) {:?} of node {node_id} are held twice (invariant 1)",
                    indexes_of(used[slot] & mask)
                ));
            }
            used[slot] |= mask;
            match a.shape {
                Shape::Gpus { gpus } => {
                    if a.gpus.len() != 1
                        || !SHAPES.contains(&gpus)
                        || !is_valid_group(n.topology, mask, n.gpus, gpus)
                    {
                        return Err(format!(
                            "allocation {id}: not one group of {gpus} of its board ({})",
                            n.topology
                        ));
                    }
                }
                Shape::Nodes { count, .. } => {
                    if a.gpus.len() != usize::try_from(count).unwrap_or(usize::MAX)
                        || mask != n.full()
                    {
                        return Err(format!("allocation {id}: not {count} whole nodes"));
                    }
                }
                Shape::Share { .. } | Shape::Mig { .. } | Shape::Cpu => {}
            }
        }
        Ok(())
    }
}

impl Allocator {
    /// An allocator in the state a snapshot describes: sites, nodes with their pool, health
    /// and cordon, then every allocation restored. This is what a restart does with the
    /// rows of the database.
    pub fn from_snapshot(s: &Snapshot) -> Result<Allocator, String> {
        let mut a = Allocator::new(s.policy, s.placement);
        for site in &s.sites {
            a.add_site(site.clone());
        }
        for n in &s.nodes {
            a.set_model_topology(&n.gpu_model, n.topology)?;
            a.add_node(crate::NodeSpec {
                id: n.id,
                site: n.site,
                gpu_model: n.gpu_model.clone(),
                gpus: n.gpus,
                blocks: n.blocks.clone(),
                idle_watts: n.idle_watts,
                peak_watts: n.peak_watts,
                shareable: n.shareable,
                cpu_milli: n.cpu_milli,
                memory_mib: n.memory_mib,
                mig: n.mig,
                sharing: n.sharing,
            })?;
            a.set_pool(n.id, n.pool)?;
            a.set_schedulable(n.id, n.schedulable);
            for &g in &n.unhealthy_gpus {
                a.set_gpu_healthy(n.id, g, false);
            }
        }
        for alloc in &s.allocations {
            a.restore(alloc.clone())?;
        }
        Ok(a)
    }
}
