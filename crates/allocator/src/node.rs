//! One node's GPUs as bit masks, and the aligned groups that sub-node shapes use.
//!
//! A shape of k GPUs (k = 1, 2, 4, 8) takes an aligned group: GPU indexes `o..o+k` with `o`
//! a multiple of k. Keeping groups aligned is what lets a freed pair or quad be reused by
//! the next pair or quad, the way a buddy allocator keeps memory reusable.

use neocloud_types::{BlockId, ContractId, InstanceId, NodeId, SiteId, TenantId};

use crate::PlacementPolicy;

/// The sub-node shapes, smallest first; an index into this array names a shape in indexes.
pub(crate) const SHAPES: [u32; 4] = [1, 2, 4, 8];

/// Gang levels in index order: NVLink domain, leaf group, pod, site.
pub(crate) const LEVELS: usize = 4;
pub(crate) const LEVEL_SITE: usize = 3;

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
    (0..64).filter(|i| mask & (1u64 << i) != 0).collect()
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
    pub used: u64,
    /// Allocations holding GPUs here, sorted by instance id.
    pub allocs: Vec<(InstanceId, TenantId)>,
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
        self.schedulable && self.used == 0 && self.unhealthy == 0
    }

    /// The one tenant that may place here, when the node is not shareable and holds work.
    pub fn owner(&self) -> Option<TenantId> {
        if self.shareable {
            None
        } else {
            self.allocs.first().map(|&(_, t)| t)
        }
    }

    /// IT watts drawn: idle plus the allocated share of (peak − idle), rounded up.
    pub fn draw_watts(&self) -> i64 {
        draw_watts(
            self.idle_watts,
            self.peak_watts,
            self.gpus,
            self.used.count_ones(),
        )
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

/// IT watts of a node with `used` of its `gpus` GPUs allocated.
pub(crate) fn draw_watts(idle: u32, peak: u32, gpus: u32, used: u32) -> i64 {
    let span = i64::from(peak.saturating_sub(idle));
    let gpus = i64::from(gpus.max(1));
    let extra = ceil_div(i128::from(span) * i128::from(used), i128::from(gpus));
    i64::from(idle) + i64::try_from(extra).unwrap_or(i64::MAX)
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
    fn draw_rounds_up() {
        assert_eq!(draw_watts(2500, 10200, 8, 0), 2500);
        assert_eq!(draw_watts(2500, 10200, 8, 8), 10200);
        assert_eq!(draw_watts(2500, 10200, 8, 1), 2500 + 963); // 962.5 up
        assert_eq!(facility_watts(1000, 1050), 1050);
        assert_eq!(facility_watts(1001, 1050), 1052); // 1051.05 up
    }
}
