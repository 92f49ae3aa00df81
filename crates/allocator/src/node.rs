//! One node's GPUs as bit masks, and the groups of GPUs that sub-node shapes use.
//!
//! A shape of k GPUs (k = 1, 2, 4, 8) takes k GPUs inside one group of its board's
//! topology ([`BoardTopology`]): any k free GPUs on an all-to-all board (NVSwitch), the
//! GPUs of one PCIe switch, NUMA node or NVLink quad elsewhere. On a board of aligned groups
//! (GPU indexes `o..o+k` with `o` a multiple of k, the rule for boards not known better)
//! keeping groups whole is what lets a freed pair or quad be reused by the next pair or
//! quad, the way a buddy allocator keeps memory reusable; the choice inside a node breaks
//! as few free groups as it can.

use std::collections::BTreeMap;

use neocloud_types::{
    BlockId, BoardTopology, Class, ContractId, FleetPolicy, GangLevel, GpuIndexes, InstanceId,
    MigFamily, NodeId, SiteId, TenantId,
};

use crate::{Allocation, PlacementPolicy, Sharing};

/// The sub-node shapes, smallest first; an index into this array names a shape in indexes.
pub(crate) const SHAPES: [u32; 4] = [1, 2, 4, 8];

/// Gang levels in index order: NVLink domain, leaf group, pod, site.
pub(crate) const LEVELS: usize = 4;
pub(crate) const LEVEL_SITE: usize = 3;

/// The level index of a gang level.
pub(crate) fn level_index(level: GangLevel) -> usize {
    match level {
        GangLevel::NvlinkDomain => 0,
        GangLevel::LeafGroup => 1,
        GangLevel::Pod => 2,
        GangLevel::Site => LEVEL_SITE,
    }
}

/// The depth in [`Node::blocks`] of the blocks of a level index; `None` for the site.
pub(crate) fn depth_of(level: usize) -> Option<usize> {
    match level {
        0 => Some(2),
        1 => Some(1),
        2 => Some(0),
        _ => None,
    }
}

/// A class's place in [`Node::classes`].
pub(crate) fn class_index(class: Class) -> usize {
    match class {
        Class::Reserved => 0,
        Class::Internal => 1,
        Class::OnDemand => 2,
        Class::Spot => 3,
    }
}

/// An allocation's share of each of its nodes, as a preemption plan prices it: its GPUs
/// over its nodes, rounded up.
pub(crate) fn plan_share(a: &Allocation) -> u64 {
    a.gpu_count().div_ceil(a.gpus.len().max(1) as u64)
}

/// The classes in [`class_index`] order.
const CLASSES: [Class; 4] = [
    Class::Reserved,
    Class::Internal,
    Class::OnDemand,
    Class::Spot,
];

/// A block at one level; `None` is the whole site (the pseudo-block of level "site", or the
/// innermost block of a node that sits in no block).
pub(crate) type BlockKey = Option<BlockId>;

/// The GPUs `0..gpus` as a mask.
pub(crate) fn full_mask(gpus: u32) -> u64 {
    if gpus >= 64 {
        u64::MAX
    } else {
        (1u64 << gpus) - 1
    }
}

/// The mask of the aligned group of `k` GPUs at `offset`.
pub(crate) fn group_mask(offset: u32, k: u32) -> u64 {
    full_mask(k) << offset
}

/// The mask of a list of GPU indexes (indexes must be below 64).
pub(crate) fn mask_of(indexes: &[u32]) -> u64 {
    indexes.iter().fold(0, |m, &i| m | (1u64 << i))
}

/// The indexes set in a mask, ascending.
pub(crate) fn indexes_of(mask: u64) -> GpuIndexes {
    let mut out = GpuIndexes::new();
    let mut rest = mask;
    while rest != 0 {
        out.push(rest.trailing_zeros());
        rest &= rest - 1;
    }
    out
}

/// The block of `size` GPUs (a group of the board, or the whole board at 64) holding GPU `g`.
fn block_of(g: u32, size: u32) -> u64 {
    group_mask(g / size * size, size)
}

/// How many intact free blocks the pick `pick` of `k` GPUs breaks: the groups of the board
/// larger than `k` (and no larger than the board) whose GPUs are all free and which the
/// pick would cut into. A pick inside an already broken group scores low: taking it keeps
/// larger free groups intact (on an aligned board, the size class of the largest free
/// aligned block around the pick).
fn breaks(topology: BoardTopology, free: u64, gpus: u32, pick: u64, k: u32) -> u8 {
    if pick == 0 {
        return 0;
    }
    let g = pick.trailing_zeros();
    let mut n = 0u8;
    for size in topology.group_sizes() {
        if size <= k || size > gpus {
            continue;
        }
        let block = block_of(g, size);
        if g / size * size + size <= gpus && free & block == block {
            n += 1;
        }
    }
    n
}

/// `k` of the free GPUs `f` of one block: those in the most broken smaller groups first,
/// then the lowest indexes, so that the smaller groups left free stay whole.
fn select(topology: BoardTopology, free: u64, f: u64, k: u32, domain: u32) -> u64 {
    if f.count_ones() == k {
        return f;
    }
    if topology.group_sizes().all(|s| s >= domain) {
        // No smaller group to keep whole: the lowest k (no allocation on this hot path).
        let mut rest = f;
        let mut pick = 0u64;
        for _ in 0..k {
            let low = rest & rest.wrapping_neg();
            pick |= low;
            rest &= !low;
        }
        return pick;
    }
    let mut gs: Vec<(u64, u32)> = indexes_of(f)
        .into_iter()
        .map(|g| {
            // Free GPUs of g's group at each level below the domain, largest level first.
            let key = topology
                .group_sizes()
                .filter(|&s| s < domain)
                .fold(0u64, |key, s| {
                    key << 7 | u64::from((free & block_of(g, s)).count_ones())
                });
            (key, g)
        })
        .collect();
    gs.sort_unstable();
    gs.iter()
        .take(usize::try_from(k).unwrap_or(0))
        .fold(0, |m, &(_, g)| m | 1u64 << g)
}

/// The `k` free GPUs that `policy` takes in a node of `gpus` GPUs with free mask `free`
/// and board `topology`, as (mask, score); `None` when no group of the board holds `k` free
/// GPUs. The score counts the intact free groups the pick breaks (see [`breaks`]).
/// Best-fit takes the pick that breaks the fewest, the others the one in the lowest block.
pub(crate) fn choose_group(
    topology: BoardTopology,
    free: u64,
    gpus: u32,
    k: u32,
    policy: PlacementPolicy,
) -> Option<(u64, u8)> {
    if k == 0 || k > gpus {
        return None;
    }
    let free = free & full_mask(gpus);
    let domain = topology.domain(k).min(64);
    let mut best: Option<(u64, u8)> = None;
    let mut start = 0;
    while start < gpus {
        let f = free & group_mask(start, domain);
        start += domain;
        if f.count_ones() < k {
            continue;
        }
        let pick = select(topology, free, f, k, domain);
        let score = breaks(topology, free, gpus, pick, k);
        match (policy, best) {
            (PlacementPolicy::BestFit, Some((_, s))) if score >= s => {}
            (PlacementPolicy::BestFit, _) => best = Some((pick, score)),
            _ => return Some((pick, score)),
        }
    }
    best
}

/// How many instances of `k` GPUs the free GPUs `free` of a node could host at once: per
/// group that `k` GPUs must share, its free GPUs divided by `k`.
pub(crate) fn set_count(topology: BoardTopology, free: u64, gpus: u32, k: u32) -> u32 {
    if k == 0 || k > gpus {
        return 0;
    }
    let domain = topology.domain(k).min(64);
    let mut n = 0;
    let mut start = 0;
    while start < gpus {
        n += (free & full_mask(gpus) & group_mask(start, domain)).count_ones() / k;
        start += domain;
    }
    n
}

/// Whether `mask` is `k` GPUs of a node of `gpus` GPUs that one instance may take on a
/// board of `topology`: all inside one group of the size `k` GPUs must share.
pub(crate) fn is_valid_group(topology: BoardTopology, mask: u64, gpus: u32, k: u32) -> bool {
    if k == 0 || k > gpus || mask.count_ones() != k || mask & !full_mask(gpus) != 0 {
        return false;
    }
    let domain = topology.domain(k).min(64);
    mask & !block_of(mask.trailing_zeros(), domain) == 0
}

/// Facility watts of `it_watts` of IT load at `pue_milli`, rounded up.
pub(crate) fn facility_watts(it_watts: i64, pue_milli: u32) -> i64 {
    let w = ceil_div(i128::from(it_watts) * i128::from(pue_milli), 1000);
    i64::try_from(w).unwrap_or(i64::MAX)
}

/// A node's static description and its live state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Node {
    pub id: NodeId,
    /// Its slot in the allocator's node list (kept when another node is removed), stored
    /// with it in the free-node index so that a gang's picks need no lookup by id.
    pub slot: u32,
    pub site: SiteId,
    /// Interned model name (see `Allocator::models`).
    pub model: u32,
    pub gpus: u32,
    /// Blocks by depth: pod, leaf group, NVLink domain.
    pub blocks: [Option<BlockId>; 3],
    pub idle_watts: u32,
    pub peak_watts: u32,
    pub shareable: bool,
    pub pool: Option<ContractId>,
    pub schedulable: bool,
    pub unhealthy: u64,
    /// GPUs that are not entirely free: held whole, or holding slices.
    pub used: u64,
    /// Allocations holding GPUs here, sorted by instance id.
    pub allocs: Vec<(InstanceId, TenantId)>,
    /// How many of `allocs` are of each class (by [`class_index`]): what the preemption
    /// index reads, without looking the allocations up.
    pub classes: [u16; 4],
    /// The sum of [`plan_share`] over `allocs`: what a gang's preemption plan prices the node at.
    pub share: u64,
    /// CPU capacity, thousandths of a core (0: not modelled).
    pub cpu_milli: u64,
    /// Memory capacity, MiB (0: not modelled).
    pub mem_mib: u64,
    pub cpu_used: u64,
    pub mem_used: u64,
    pub mig: Option<MigFamily>,
    /// How its GPUs connect (its model's).
    pub topology: BoardTopology,
    pub sharing: Sharing,
    /// Per GPU, its slices; empty until the node first holds one.
    pub slices: Vec<GpuSlices>,
}

/// The slices one GPU holds: shares (thousandths) or MIG instances (memory slices), never
/// both; `holders` counts them, `tenant` is the tenant of the first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct GpuSlices {
    pub milli: u16,
    pub mig: u8,
    pub holders: u16,
    pub tenant: Option<TenantId>,
}

impl GpuSlices {
    pub fn is_empty(&self) -> bool {
        self.holders == 0
    }
}

impl Node {
    pub fn full(&self) -> u64 {
        full_mask(self.gpus)
    }

    /// Healthy GPUs that nothing holds.
    pub fn free(&self) -> u64 {
        self.full() & !self.used & !self.unhealthy
    }

    /// Whether the node can be given whole: schedulable, healthy, empty.
    pub fn whole_free(&self) -> bool {
        self.schedulable
            && self.used == 0
            && self.unhealthy == 0
            && self.cpu_used == 0
            && self.mem_used == 0
    }

    /// The slices of GPU `g` (empty when it holds none).
    pub fn slices_of(&self, g: u32) -> GpuSlices {
        usize::try_from(g)
            .ok()
            .and_then(|g| self.slices.get(g))
            .copied()
            .unwrap_or_default()
    }

    /// Whether `cpu` more CPU thousandths and `mem` more MiB fit.
    pub fn host_fits(&self, cpu: u64, mem: u64) -> bool {
        (self.cpu_milli == 0 || self.cpu_used.saturating_add(cpu) <= self.cpu_milli)
            && (self.mem_mib == 0 || self.mem_used.saturating_add(mem) <= self.mem_mib)
    }

    /// Free CPU thousandths (`u64::MAX` when not modelled).
    pub fn cpu_free(&self) -> u64 {
        if self.cpu_milli == 0 {
            u64::MAX
        } else {
            self.cpu_milli.saturating_sub(self.cpu_used)
        }
    }

    /// Free memory MiB (`u64::MAX` when not modelled).
    pub fn mem_free(&self) -> u64 {
        if self.mem_mib == 0 {
            u64::MAX
        } else {
            self.mem_mib.saturating_sub(self.mem_used)
        }
    }

    /// The one tenant that may place here, when the node is not shareable and holds work.
    pub fn owner(&self) -> Option<TenantId> {
        if self.shareable {
            None
        } else {
            self.allocs.first().map(|&(_, t)| t)
        }
    }

    /// Watts between idle and peak.
    pub fn span_watts(&self) -> i64 {
        i64::from(self.peak_watts.saturating_sub(self.idle_watts))
    }

    /// The highest priority (under `policy`) of the work the node holds; `None` when it
    /// holds none.
    pub fn top_priority(&self, policy: FleetPolicy) -> Option<u8> {
        CLASSES
            .iter()
            .zip(self.classes)
            .filter(|&(_, n)| n > 0)
            .map(|(c, _)| c.priority(policy))
            .max()
    }

    /// The node's block at a level index (see [`LEVELS`]); `None` when the node has no
    /// block of that level (it then never joins gangs of that level).
    pub fn level_key(&self, level: usize) -> Option<BlockKey> {
        match level {
            0 => self.blocks[2].map(Some),
            1 => self.blocks[1].map(Some),
            2 => self.blocks[0].map(Some),
            _ => Some(None),
        }
    }
}

/// What a site's nodes draw: a node draws idle + (peak − idle) × allocated GPUs / GPUs.
///
/// The fractional part is summed per GPU count and rounded up once per site, not per node:
/// then what a placement adds depends only on the node's power figures, never on how full
/// the node already is, so any node of a scope costs the same and a preemption plan can
/// promise what the placement after it will draw. It differs from rounding every node by
/// less than one watt per node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Load {
    /// Σ idle watts.
    pub idle: i64,
    /// Per GPU count: Σ (peak − idle) × allocated GPUs over nodes of that count.
    pub busy: BTreeMap<u32, i64>,
}

impl Load {
    /// IT watts.
    pub fn it_watts(&self) -> i64 {
        self.idle + self.busy.iter().map(|(&g, &b)| share(b, g)).sum::<i64>()
    }

    /// IT watts once `extra` more (peak − idle) × GPUs are allocated on nodes of `gpus` GPUs.
    pub fn it_watts_with(&self, gpus: u32, extra: i64) -> i64 {
        let now = self.busy.get(&gpus).copied().unwrap_or(0);
        self.it_watts() - share(now, gpus) + share(now + extra, gpus)
    }

    /// Records `busy` more (or, negative, fewer) (peak − idle) × GPUs on nodes of `gpus`.
    pub fn add(&mut self, gpus: u32, busy: i64) {
        let b = self.busy.entry(gpus).or_default();
        *b += busy;
        if *b == 0 {
            self.busy.remove(&gpus);
        }
    }
}

fn share(busy: i64, gpus: u32) -> i64 {
    i64::try_from(ceil_div(i128::from(busy), i128::from(gpus.max(1)))).unwrap_or(i64::MAX)
}

/// `a / b` rounded toward positive infinity, for `b > 0` (signed `div_ceil` is unstable).
pub(crate) fn ceil_div(a: i128, b: i128) -> i128 {
    let q = a / b;
    if a % b > 0 { q + 1 } else { q }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: BoardTopology = BoardTopology::ALIGNED;

    #[test]
    fn groups_are_aligned() {
        assert!(is_valid_group(A, 0b1100, 8, 2));
        assert!(!is_valid_group(A, 0b0110, 8, 2));
        assert!(is_valid_group(A, 0xf0, 8, 4));
        assert!(!is_valid_group(A, 0x3c, 8, 4));
        assert!(is_valid_group(A, 0xff, 8, 8));
        assert!(!is_valid_group(A, 0xff, 4, 8));
        assert!(is_valid_group(A, 0xf, 4, 4));
        assert!(!is_valid_group(A, 0x1_0000_0000, 8, 1));
    }

    #[test]
    fn groups_follow_the_board() {
        let nvswitch = BoardTopology::NVSWITCH;
        let quads = BoardTopology::groups(&[4]).unwrap();
        // Any set on NVSwitch.
        assert!(is_valid_group(nvswitch, 0b1000_0110, 8, 3));
        assert!(is_valid_group(nvswitch, 0b1000_0010, 8, 2));
        // Pairs anywhere inside a quad, not across quads.
        assert!(is_valid_group(quads, 0b0110, 8, 2));
        assert!(is_valid_group(quads, 0b1001, 8, 2));
        assert!(!is_valid_group(quads, 0b1_1000, 8, 2));
        assert!(is_valid_group(quads, 0xff, 8, 8));
        // Free GPUs 1, 2, 5, 6: two pairs on quads, any pair on NVSwitch, no pair aligned.
        let free = 0b0110_0110;
        assert_eq!(set_count(A, free, 8, 2), 0);
        assert_eq!(set_count(quads, free, 8, 2), 2);
        assert_eq!(set_count(nvswitch, free, 8, 2), 2);
        assert_eq!(set_count(nvswitch, free, 8, 4), 1);
        assert_eq!(set_count(quads, free, 8, 4), 0);
        assert_eq!(
            choose_group(nvswitch, free, 8, 4, PlacementPolicy::BestFit),
            Some((free, 0))
        );
        assert_eq!(
            choose_group(quads, free, 8, 2, PlacementPolicy::BestFit),
            Some((0b0110, 0))
        );
        // On quads a single goes to the broken quad, not the whole one.
        assert_eq!(
            choose_group(quads, 0xf2, 8, 1, PlacementPolicy::BestFit),
            Some((0b10, 0))
        );
        // PCIe switch pairs inside NUMA quads: a single fills the broken pair of the
        // broken quad.
        let pcie = BoardTopology::groups(&[2, 4]).unwrap();
        assert_eq!(
            choose_group(pcie, 0b1111_1110, 8, 1, PlacementPolicy::BestFit),
            Some((0b10, 0))
        );
    }

    #[test]
    fn best_fit_takes_the_group_in_the_most_broken_block() {
        let mask = |offset: u32, k: u32| group_mask(offset, k);
        // GPU 0 used: GPU 1 is a lone single, 2-3 a pair, 4-7 a quad.
        let free = 0xfe;
        assert_eq!(
            choose_group(A, free, 8, 1, PlacementPolicy::BestFit),
            Some((mask(1, 1), 0))
        );
        assert_eq!(
            choose_group(A, free, 8, 2, PlacementPolicy::BestFit),
            Some((mask(2, 2), 0))
        );
        assert_eq!(
            choose_group(A, free, 8, 4, PlacementPolicy::BestFit),
            Some((mask(4, 4), 0))
        );
        assert_eq!(choose_group(A, free, 8, 8, PlacementPolicy::BestFit), None);
        // First-fit takes the lowest free offset even if it breaks a pair.
        assert_eq!(
            choose_group(A, 0xfc, 8, 1, PlacementPolicy::FirstFit),
            Some((mask(2, 1), 1))
        );
        assert_eq!(
            choose_group(A, 0xfd, 8, 1, PlacementPolicy::BestFit),
            Some((mask(0, 1), 0))
        );
        // Free GPUs 1 and 2 are not an aligned pair.
        assert_eq!(
            choose_group(A, 0b0110, 8, 2, PlacementPolicy::BestFit),
            None
        );
        // A quad next to a free quad breaks the board's free 8-block.
        assert_eq!(
            choose_group(A, 0xff, 8, 4, PlacementPolicy::BestFit),
            Some((mask(0, 4), 1))
        );
    }

    #[test]
    fn load_rounds_up_once_per_site() {
        let mut l = Load {
            idle: 2500,
            ..Load::default()
        };
        assert_eq!(l.it_watts(), 2500);
        // One GPU of an 8-GPU node spanning 7700 W: 962.5 W, rounded up.
        l.add(8, 7700);
        assert_eq!(l.it_watts(), 2500 + 963);
        // A second one costs 962 W: together exactly 1925.
        assert_eq!(l.it_watts_with(8, 7700), 2500 + 1925);
        l.add(8, 7 * 7700);
        assert_eq!(l.it_watts(), 10200);
        l.add(8, -8 * 7700);
        assert_eq!(
            l,
            Load {
                idle: 2500,
                ..Load::default()
            }
        );
        assert_eq!(facility_watts(1000, 1050), 1050);
        assert_eq!(facility_watts(1001, 1050), 1052); // 1051.05 up
    }
}
