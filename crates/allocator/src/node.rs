//! One node's GPUs as bit masks, and the aligned groups that sub-node shapes use.
//!
//! A shape of k GPUs (k = 1, 2, 4, 8) takes an aligned group: GPU indexes `o..o+k` with `o`
//! a multiple of k. Keeping groups aligned is what lets a freed pair or quad be reused by
//! the next pair or quad, the way a buddy allocator keeps memory reusable.

use std::collections::BTreeMap;

use neocloud_types::{
    BlockId, ContractId, GangLevel, InstanceId, MigFamily, NodeId, SiteId, TenantId,
};

use crate::{PlacementPolicy, Sharing};

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
pub(crate) fn indexes_of(mask: u64) -> Vec<u32> {
    let mut out = Vec::with_capacity(usize::try_from(mask.count_ones()).unwrap_or(0));
    let mut rest = mask;
    while rest != 0 {
        out.push(rest.trailing_zeros());
        rest &= rest - 1;
    }
    out
}

/// Size class of the largest free aligned block that contains the group at `offset` (log2
/// of its size). A group inside an already broken block scores low: taking it keeps larger
/// free blocks intact.
fn enclosing_free_block(free: u64, gpus: u32, offset: u32, k: u32) -> u8 {
    let mut size = k;
    let mut score = 0u8;
    while let Some(next) = size.checked_mul(2) {
        if next > gpus || next > 64 {
            break;
        }
        let start = offset / next * next;
        if start + next > gpus {
            break;
        }
        let block = group_mask(start, next);
        if free & block != block {
            break;
        }
        size = next;
        score += 1;
    }
    score
}

/// The aligned group of `k` free GPUs that `policy` takes in a node with free mask `free`,
/// as (offset, score); `None` when no aligned group of `k` is free. Best-fit takes the
/// group in the most broken block (lowest score), the others the lowest offset.
pub(crate) fn choose_group(
    free: u64,
    gpus: u32,
    k: u32,
    policy: PlacementPolicy,
) -> Option<(u32, u8)> {
    if k == 0 || k > gpus {
        return None;
    }
    let mut best: Option<(u32, u8)> = None;
    let mut offset = 0;
    while offset + k <= gpus {
        let g = group_mask(offset, k);
        if free & g == g {
            let score = enclosing_free_block(free, gpus, offset, k);
            match (policy, best) {
                (PlacementPolicy::BestFit, Some((_, s))) if score >= s => {}
                (PlacementPolicy::BestFit, _) => best = Some((offset, score)),
                _ => return Some((offset, score)),
            }
        }
        offset += k;
    }
    best
}

/// Whether `mask` is one aligned group of `k` GPUs inside a node of `gpus` GPUs.
pub(crate) fn is_aligned_group(mask: u64, gpus: u32, k: u32) -> bool {
    if k == 0 || k > gpus || mask.count_ones() != k {
        return false;
    }
    let offset = mask.trailing_zeros();
    offset.is_multiple_of(k) && offset + k <= gpus && mask == group_mask(offset, k)
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
    /// CPU capacity, thousandths of a core (0: not modelled).
    pub cpu_milli: u64,
    /// Memory capacity, MiB (0: not modelled).
    pub mem_mib: u64,
    pub cpu_used: u64,
    pub mem_used: u64,
    pub mig: Option<MigFamily>,
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

    #[test]
    fn groups_are_aligned() {
        assert!(is_aligned_group(0b1100, 8, 2));
        assert!(!is_aligned_group(0b0110, 8, 2));
        assert!(is_aligned_group(0xf0, 8, 4));
        assert!(!is_aligned_group(0x3c, 8, 4));
        assert!(is_aligned_group(0xff, 8, 8));
        assert!(!is_aligned_group(0xff, 4, 8));
        assert!(is_aligned_group(0xf, 4, 4));
    }

    #[test]
    fn best_fit_takes_the_group_in_the_most_broken_block() {
        // GPU 0 used: GPU 1 is a lone single, 2-3 a pair, 4-7 a quad.
        let free = 0xfe;
        assert_eq!(
            choose_group(free, 8, 1, PlacementPolicy::BestFit),
            Some((1, 0))
        );
        assert_eq!(
            choose_group(free, 8, 2, PlacementPolicy::BestFit),
            Some((2, 0))
        );
        assert_eq!(
            choose_group(free, 8, 4, PlacementPolicy::BestFit),
            Some((4, 0))
        );
        assert_eq!(choose_group(free, 8, 8, PlacementPolicy::BestFit), None);
        // First-fit takes the lowest free offset even if it breaks a pair.
        assert_eq!(
            choose_group(0xfc, 8, 1, PlacementPolicy::FirstFit),
            Some((2, 1))
        );
        assert_eq!(
            choose_group(0xfd, 8, 1, PlacementPolicy::BestFit),
            Some((0, 0))
        );
        // Free GPUs 1 and 2 are not an aligned pair.
        assert_eq!(choose_group(0b0110, 8, 2, PlacementPolicy::BestFit), None);
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
