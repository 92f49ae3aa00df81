//! The spare buffer, spread over the fabric.
//!
//! A site keeps a share of its GPUs unsold for failover (see [`crate::selling`]). Left to
//! itself that share ends up wherever contracts did not pin nodes — typically the last pod
//! — so a failed node in the first pod would be replaced from the far end of the site,
//! outside its gang's block. Instead, each pod (a leaf group, for nodes in no pod) keeps its
//! share of the buffer as whole nodes pinned to [`SPARE_POOL`], its last free nodes, so that
//! the spares of a pod sit in as few of its leaf groups as they fill and every other leaf
//! group can be sold whole (a spare in every leaf group would leave none whole): contract pools,
//! on-demand and internal work never take them, spot work may borrow them, and a failure
//! takes the nearest one. The shares are in proportion to the blocks' nodes (largest
//! remainder), and a block whose spare was taken is topped up from its own free nodes as
//! they come free.
//!
//! The pinning lives in memory only: it is derived again whenever an allocator is built.

use std::collections::{BTreeMap, BTreeSet};

use neocloud_types::{ContractId, NodeId, SiteId};

use crate::Allocator;
use crate::node::Node;

/// The pseudo-pool spare nodes are pinned to. It is no contract's: no request names it and
/// [`Allocator::node_pool`] never returns it.
pub const SPARE_POOL: ContractId = ContractId::from_u128(u128::MAX);

/// A block that keeps spares: (site, interned model, pod or else leaf group).
pub(crate) type SpareKey = (SiteId, u32, Option<neocloud_types::BlockId>);

/// The spares of every block.
#[derive(Clone, Debug, Default)]
pub(crate) struct Spares {
    /// Per block: how many spare nodes it keeps, and its nodes' slots.
    blocks: BTreeMap<SpareKey, (u32, Vec<usize>)>,
    /// Blocks holding fewer spares than their share.
    short: BTreeSet<SpareKey>,
    /// Short blocks that a top-up found without a free node, none of whose nodes changed
    /// since: the next top-up would pin nothing there, so it passes them over.
    quiet: BTreeSet<SpareKey>,
}

/// The block a node keeps its spares in: its pod (its leaf group, for nodes in no pod). Not
/// the leaf group: a spare in every leaf group would leave no leaf group whole, and a gang
/// that asks for one (a common training shape) could never run.
pub(crate) fn spare_key(n: &Node) -> SpareKey {
    (n.site, n.model, n.blocks[0].or(n.blocks[1]))
}

/// Whether a top-up may pin the node as a spare: free, in no pool, holding nothing.
fn spare_candidate(n: &Node) -> bool {
    n.pool.is_none() && n.whole_free() && n.allocs.is_empty()
}

impl Allocator {
    /// Pins `count` whole nodes of `model` in `site` as spares, spread over its pods (leaf
    /// groups, for nodes in no pod) in proportion to their nodes. Nodes that hold
    /// work or are pinned to a pool are passed over; a block without enough free nodes is
    /// topped up later ([`Allocator::top_up_spares`]). Replaces any earlier spread of the
    /// same site and model.
    pub fn spread_spares(&mut self, site: SiteId, model: &str, count: u32) {
        let Some(&m) = self.model_ids.get(model) else {
            return;
        };
        let mut by_block: BTreeMap<SpareKey, Vec<usize>> = BTreeMap::new();
        for (slot, n) in self.nodes.iter().enumerate() {
            if n.site == site && n.model == m {
                by_block.entry(spare_key(n)).or_default().push(slot);
            }
        }
        let total: u64 = by_block.values().map(|v| v.len() as u64).sum();
        if total == 0 {
            return;
        }
        // Largest remainder: each block its whole share, then one more for the blocks with
        // the largest fractions (ties to the first block) until `count` are given.
        let count = u64::from(count).min(total);
        let mut shares: Vec<(SpareKey, u64, u64)> = by_block
            .iter()
            .map(|(k, v)| {
                let exact = count * v.len() as u64;
                (*k, exact / total, exact % total)
            })
            .collect();
        let given: u64 = shares.iter().map(|s| s.1).sum();
        let mut order: Vec<usize> = (0..shares.len()).collect();
        order.sort_by_key(|&i| (std::cmp::Reverse(shares[i].2), i));
        for &i in order
            .iter()
            .take(usize::try_from(count - given).unwrap_or(0))
        {
            shares[i].1 += 1;
        }
        // Unpin the old spread of this site and model.
        let old: Vec<SpareKey> = self
            .spares
            .blocks
            .keys()
            .filter(|k| k.0 == site && k.1 == m)
            .copied()
            .collect();
        for k in old {
            if let Some((_, slots)) = self.spares.blocks.remove(&k) {
                for slot in slots {
                    if self.nodes[slot].pool == Some(SPARE_POOL) {
                        let id = self.nodes[slot].id;
                        let _ = self.set_pool(id, None);
                    }
                }
            }
            self.spares.short.remove(&k);
            self.spares.quiet.remove(&k);
        }
        for (k, want, _) in shares {
            let slots = by_block.remove(&k).unwrap_or_default();
            self.spares
                .blocks
                .insert(k, (u32::try_from(want).unwrap_or(u32::MAX), slots));
            self.spares.short.insert(k);
        }
        self.top_up_spares();
    }

    /// Pins free nodes of blocks that hold fewer spares than their share (a spare was
    /// taken for a failure) until they have it again. Returns the nodes pinned.
    pub fn top_up_spares(&mut self) -> usize {
        let mut pinned = 0;
        let short: Vec<SpareKey> = self
            .spares
            .short
            .difference(&self.spares.quiet)
            .copied()
            .collect();
        for k in short {
            let Some((want, slots)) = self.spares.blocks.get(&k) else {
                self.spares.short.remove(&k);
                continue;
            };
            let want = usize::try_from(*want).unwrap_or(usize::MAX);
            let have = slots
                .iter()
                .filter(|&&s| self.nodes[s].pool == Some(SPARE_POOL))
                .count();
            // The last free nodes of the block: placements fill blocks from the front.
            let free: Vec<NodeId> = slots
                .iter()
                .rev()
                .map(|&s| &self.nodes[s])
                .filter(|n| spare_candidate(n))
                .map(|n| n.id)
                .take(want.saturating_sub(have))
                .collect();
            let done = have + free.len() >= want;
            for id in free {
                if self.set_pool(id, Some(SPARE_POOL)).is_ok() {
                    pinned += 1;
                }
            }
            if done {
                self.spares.short.remove(&k);
            } else {
                // Every free node it had is pinned now: it waits for one of its nodes to
                // change.
                self.spares.quiet.insert(k);
            }
        }
        pinned
    }

    /// Forgets which short blocks were found without a free node (nodes moved slots).
    pub(crate) fn spare_blocks_all_changed(&mut self) {
        self.spares.quiet.clear();
    }

    /// Notes that the node in `slot` changed (its work, pool, health or cordon): a short
    /// block of it is looked at again by the next top-up if the node could be pinned now.
    /// A quiet block had no such node at its last look, and only a node that becomes one
    /// can change that (work placed on a node, for one, never does).
    pub(crate) fn spare_block_changed(&mut self, slot: usize) {
        if !self.spares.quiet.is_empty() && spare_candidate(&self.nodes[slot]) {
            let k = spare_key(&self.nodes[slot]);
            self.spares.quiet.remove(&k);
        }
    }

    /// Whether a node is one of the spare buffer's.
    pub fn is_spare(&self, node: NodeId) -> bool {
        self.slot(node)
            .is_ok_and(|s| self.nodes[s].pool == Some(SPARE_POOL))
    }

    /// Spare nodes of `model` in `site` now, and how many the spread asks for.
    pub fn spare_count(&self, site: SiteId, model: &str) -> (u32, u32) {
        let Some(&m) = self.model_ids.get(model) else {
            return (0, 0);
        };
        let mut have = 0;
        let mut want = 0;
        for (k, (w, slots)) in &self.spares.blocks {
            if k.0 != site || k.1 != m {
                continue;
            }
            want += *w;
            let pinned = slots
                .iter()
                .filter(|&&s| self.nodes[s].pool == Some(SPARE_POOL))
                .count();
            have += u32::try_from(pinned).unwrap_or(u32::MAX);
        }
        (have, want)
    }

    /// A block the top-up passes over (quiet) has no node it could pin: its look would
    /// find nothing.
    pub(crate) fn check_spares(&self) -> Result<(), String> {
        for k in &self.spares.quiet {
            let Some((_, slots)) = self.spares.blocks.get(k) else {
                continue;
            };
            if let Some(&s) = slots.iter().find(|&&s| spare_candidate(&self.nodes[s])) {
                return Err(format!(
                    "spare block {k:?} is passed over, but its node {} could be pinned",
                    self.nodes[s].id
                ));
            }
        }
        Ok(())
    }

    /// Notes that a spare left the buffer: its block is topped up when it can be.
    pub(crate) fn spare_taken(&mut self, slot: usize) {
        let k = spare_key(&self.nodes[slot]);
        if self.spares.blocks.contains_key(&k) {
            self.spares.short.insert(k);
            self.spares.quiet.remove(&k);
        }
    }
}
