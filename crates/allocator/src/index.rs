//! The indexes that let a decision find free capacity without scanning the fleet.
//!
//! Nodes are grouped into scopes: (model, pool, site, GPUs per node). A request only ever
//! looks at the scopes it may use, and inside a scope:
//!
//! - partly free nodes sit in one ordered set per sub-node shape (1, 2, 4, 8 GPUs) that they
//!   can still host, keyed by (score, free GPUs, node id), so the best fit is the first
//!   entry. Nodes of one tenant that must not be shared are kept apart, per tenant, so
//!   that other tenants never see them;
//! - entirely free nodes sit in per-level block sets (NVLink domain, leaf group, pod, site)
//!   with an ordered set of (free whole nodes, block), so that the best-fitting block for a
//!   gang is one range lookup.
//!
//! Every change to a node is "remove its contributions, change it, add them back" through
//! [`apply`]; `check_invariants` rebuilds these indexes from scratch with the same function
//! and compares.

use std::collections::{BTreeMap, BTreeSet};

use neocloud_types::{Class, ContractId, FleetPolicy, InstanceId, NodeId, SiteId, TenantId};

use crate::PlacementPolicy;
use crate::allocator::IdMap;
use crate::node::{BlockKey, LEVELS, Node, SHAPES, choose_group};
use crate::slices::{GroupKey, grouped};

/// A group of interchangeable nodes: same model, same pool, same site, same GPU count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ScopeKey {
    pub model: u32,
    pub pool: Option<ContractId>,
    pub site: SiteId,
    pub gpus: u32,
}

impl Node {
    pub fn scope_key(&self) -> ScopeKey {
        ScopeKey {
            model: self.model,
            pool: self.pool,
            site: self.site,
            gpus: self.gpus,
        }
    }
}

/// A partly free node in a shape set: (score of the group it would give, free GPUs, id).
/// The score is the size class of the free block the group would be cut from: a node
/// where the shape fills a hole comes before one where it breaks a larger free block, and
/// among those the node with the fewest free GPUs. (Free GPUs first measured slightly
/// worse in `examples/quality.rs`.) First-fit keys every node as (0, 0, id) so that the
/// first entry is the lowest id.
pub(crate) type PartialKey = (u8, u8, NodeId);

/// The entirely free nodes of one block, by slot: a sparse bitset (64 slots a word, only
/// words with a bit set kept). A block's nodes sit in neighbouring slots, so a gang that
/// takes or returns a block's nodes changes a word per 64 nodes, and a single node's change
/// is one lookup keyed by a small integer. Slots are taken in ascending order, which is
/// the nodes' id order wherever nodes were added in id order and none removed (a removed
/// node's slot goes to the last node).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FreeNodes {
    len: u32,
    words: BTreeMap<u32, u64>,
}

impl FreeNodes {
    /// Sets or clears one word's `bits`; returns how many changed.
    fn change_word(&mut self, word: u32, bits: u64, add: bool) -> u32 {
        let changed = if add {
            let w = self.words.entry(word).or_insert(0);
            let new = bits & !*w;
            *w |= new;
            new.count_ones()
        } else {
            let Some(w) = self.words.get_mut(&word) else {
                return 0;
            };
            let gone = bits & *w;
            *w &= !gone;
            if *w == 0 {
                self.words.remove(&word);
            }
            gone.count_ones()
        };
        if add {
            self.len += changed;
        } else {
            self.len -= changed;
        }
        changed
    }

    /// Adds (or removes) slots, each word changed once per run of slots in it.
    fn change(&mut self, slots: impl IntoIterator<Item = u32>, add: bool) -> u32 {
        let mut changed = 0;
        let mut run: Option<(u32, u64)> = None;
        for slot in slots {
            let (word, bit) = (slot / 64, 1u64 << (slot % 64));
            match &mut run {
                Some((w, bits)) if *w == word => *bits |= bit,
                _ => {
                    if let Some((w, bits)) = run.replace((word, bit)) {
                        changed += self.change_word(w, bits, add);
                    }
                }
            }
        }
        if let Some((w, bits)) = run {
            changed += self.change_word(w, bits, add);
        }
        changed
    }

    /// How many free nodes.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// The lowest free slot.
    pub fn first(&self) -> Option<u32> {
        self.words
            .first_key_value()
            .map(|(&w, &bits)| w * 64 + bits.trailing_zeros())
    }

    /// The free slots, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().flat_map(|(&w, &bits)| {
            let mut rest = bits;
            std::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let b = rest.trailing_zeros();
                rest &= rest - 1;
                Some(w * 64 + b)
            })
        })
    }
}

/// Entirely free nodes of one level, per block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Level {
    /// (free whole nodes, block) for every block with at least one.
    pub by_count: BTreeSet<(u32, BlockKey)>,
    /// The free whole nodes of each block, by slot (the order gangs take them in).
    pub blocks: BTreeMap<BlockKey, FreeNodes>,
}

impl Level {
    /// Adds or removes nodes (by slot) of one block, re-keying the block once.
    fn change(&mut self, key: BlockKey, slots: impl IntoIterator<Item = u32>, add: bool) {
        let set = self.blocks.entry(key).or_default();
        let before = set.len();
        if set.change(slots, add) == 0 {
            if before == 0 {
                self.blocks.remove(&key);
            }
            return;
        }
        let after = set.len();
        if before > 0 {
            self.by_count.remove(&(before, key));
        }
        if after > 0 {
            self.by_count.insert((after, key));
        } else {
            self.blocks.remove(&key);
        }
    }

    /// Free whole nodes in a block.
    pub fn count(&self, key: &BlockKey) -> u32 {
        self.blocks.get(key).map_or(0, FreeNodes::len)
    }

    /// The most free whole nodes in one block.
    pub fn largest(&self) -> u32 {
        self.by_count.last().map_or(0, |&(c, _)| c)
    }
}

/// One set per sub-node shape.
pub(crate) type ShapeSets = [BTreeSet<PartialKey>; 4];

/// The index of one scope.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Bucket {
    /// Nodes in the scope, schedulable or not.
    pub nodes: u32,
    /// Healthy, schedulable, unallocated GPUs.
    pub free_gpus: u64,
    /// Partly free nodes any tenant may use.
    pub open: ShapeSets,
    /// Partly free nodes that only their one tenant may use (not shareable, holding work).
    pub owned: BTreeMap<TenantId, ShapeSets>,
    /// Entirely free nodes, per level (see `node::LEVELS`).
    pub levels: [Level; LEVELS],
    /// Nodes per (peak − idle) watts: bounds what a placement can add to the site's draw.
    pub spans: BTreeMap<u32, u32>,
    /// Allocations holding GPUs in this scope, with how many of their nodes are here: the
    /// candidates for preemption. Hashed: preemption orders what it takes from here.
    pub allocs: IdMap<(Class, InstanceId), u32>,
    /// Per level, per block: its schedulable, healthy nodes that hold work, counted by the
    /// highest priority of that work (see [`Node::top_priority`]). A gang's preemption plan
    /// reads here which blocks could free enough nodes before it looks at any victim.
    pub held: [IdMap<BlockKey, [Held; 4]>; LEVELS],
    /// Schedulable nodes that take slices or CPU-only work (every node, under the
    /// fragmentation policy), grouped by identical free state.
    /// Hashed: only looked up; decisions walk the ordered sets below.
    pub groups: IdMap<GroupKey, BTreeSet<NodeId>>,
    /// The same groups by free GPU thousandths: the tightest first.
    pub tight: GroupIndex,
    /// Groups with partly used GPUs (shares or MIG instances with room), by the tenant those
    /// GPUs are kept for (`None`: GPUs any tenant may share), the tightest first: where a
    /// slice can fill a fragment.
    pub partial: BTreeMap<Option<TenantId>, GroupIndex>,
    /// Groups by how many entirely free GPUs they have (1 or more), the tightest first:
    /// where whole GPUs can go.
    pub whole: BTreeMap<u32, GroupIndex>,
    /// Groups with at least one entirely free GPU, the tightest first: where a slice can
    /// open a fresh GPU.
    pub fresh: GroupIndex,
    /// The same groups by free CPU thousandths, the tightest first: where CPU-only work can
    /// go.
    pub by_cpu: BTreeMap<(u64, GroupKey), NodeId>,
}

/// Nodes counted in [`Bucket::held`]: how many, and the sum of their [`Node::share`].
pub(crate) type Held = (u32, u64);

/// An ordered index of groups: (free GPU thousandths, group) → the group's lowest node id.
pub(crate) type GroupIndex = BTreeMap<(u64, GroupKey), NodeId>;

impl Bucket {
    /// Records that a group's lowest node is now `rep` (`None`: the group is gone) in the
    /// ordered group indexes.
    fn set_group(&mut self, gk: GroupKey, rep: Option<NodeId>) {
        let key = (gk.free_milli(), gk);
        let whole = key.1.whole_gpus();
        let tenants = key.1.partial_tenants();
        let put = |index: &mut GroupIndex| match rep {
            Some(id) => {
                index.insert(key.clone(), id);
            }
            None => {
                index.remove(&key);
            }
        };
        for t in tenants {
            let p = self.partial.entry(t).or_default();
            put(p);
            if p.is_empty() {
                self.partial.remove(&t);
            }
        }
        if whole > 0 {
            let w = self.whole.entry(whole).or_default();
            put(w);
            if w.is_empty() {
                self.whole.remove(&whole);
            }
            put(&mut self.fresh);
        }
        let by_cpu = (key.1.cpu_free, key.1.clone());
        match rep {
            Some(id) => {
                self.by_cpu.insert(by_cpu, id);
            }
            None => {
                self.by_cpu.remove(&by_cpu);
            }
        }
        put(&mut self.tight);
    }
}

/// Which pool scopes of a model a request looks at, in one pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tier {
    /// One pool (`None`: the unpinned nodes).
    Pool(Option<ContractId>),
    /// Every pool (spot borrowing).
    AllPools,
}

impl Bucket {
    /// The largest IT watts one node of this scope adds when fully allocated.
    pub fn max_span(&self) -> u32 {
        self.spans.last_key_value().map_or(0, |(&w, _)| w)
    }

    /// Free whole nodes in the scope.
    pub fn whole_free_nodes(&self) -> u32 {
        self.levels[crate::node::LEVEL_SITE].count(&None)
    }

    /// The free whole node a sub-node shape should open: best-fit takes it from the block
    /// with the fewest free whole nodes at the innermost level the scope has (packing work
    /// into blocks already in use keeps other blocks whole for gangs), worst-fit from the
    /// one with the most. Returns (that block's free whole nodes, block, node).
    ///
    /// Measured against descending from the emptiest pod into its emptiest leaf group
    /// (`examples/quality.rs`): the innermost block alone refused slightly less.
    pub fn whole_pick(&self, most: bool) -> Option<(u32, BlockKey, u32)> {
        let level = self.levels.iter().find(|l| !l.by_count.is_empty())?;
        let found = if most {
            level.by_count.last()
        } else {
            level.by_count.first()
        };
        let &(count, block) = found?;
        let slot = level.blocks.get(&block)?.first()?;
        Some((count, block, slot))
    }
}

/// The buckets of one (model, pool), by (site, GPUs per node).
pub(crate) type SiteBuckets = BTreeMap<(SiteId, u32), Bucket>;

/// Every scope's index: (model, pool) → (site, GPUs per node) → bucket. The outer key lets
/// a request take exactly the pool scopes it may use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Scopes {
    pub map: BTreeMap<(u32, Option<ContractId>), SiteBuckets>,
}

impl Scopes {
    pub fn get(&self, key: &ScopeKey) -> Option<&Bucket> {
        self.map
            .get(&(key.model, key.pool))
            .and_then(|m| m.get(&(key.site, key.gpus)))
    }

    fn get_mut(&mut self, key: &ScopeKey) -> Option<&mut Bucket> {
        self.map
            .get_mut(&(key.model, key.pool))
            .and_then(|m| m.get_mut(&(key.site, key.gpus)))
    }

    fn entry(&mut self, key: &ScopeKey) -> &mut Bucket {
        self.map
            .entry((key.model, key.pool))
            .or_default()
            .entry((key.site, key.gpus))
            .or_default()
    }

    /// Drops a scope that holds nothing any more, so that a rebuilt index compares equal.
    pub fn prune(&mut self, key: &ScopeKey) {
        let outer = (key.model, key.pool);
        let Some(inner) = self.map.get_mut(&outer) else {
            return;
        };
        if inner
            .get(&(key.site, key.gpus))
            .is_some_and(|b| b.nodes == 0 && b.allocs.is_empty())
        {
            inner.remove(&(key.site, key.gpus));
        }
        if inner.is_empty() {
            self.map.remove(&outer);
        }
    }

    /// Counts `nodes` more (or fewer) nodes of an allocation in a scope.
    pub fn alloc_ref(
        &mut self,
        key: &ScopeKey,
        class: Class,
        id: InstanceId,
        add: bool,
        nodes: u32,
    ) {
        if add {
            *self.entry(key).allocs.entry((class, id)).or_default() += nodes;
            return;
        }
        let Some(bucket) = self.get_mut(key) else {
            return;
        };
        let Some(n) = bucket.allocs.get_mut(&(class, id)) else {
            return;
        };
        if *n > nodes {
            *n -= nodes;
            return;
        }
        bucket.allocs.remove(&(class, id));
        if bucket.nodes == 0 && bucket.allocs.is_empty() {
            self.prune(key);
        }
    }

    /// The buckets of a model in one tier, optionally of one site only, in (pool, site)
    /// order.
    pub fn buckets(
        &self,
        model: u32,
        tier: Tier,
        site: Option<SiteId>,
    ) -> impl Iterator<Item = (ScopeKey, &Bucket)> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let from = match tier {
            Tier::Pool(pool) => Included((model, pool)),
            Tier::AllPools => Excluded((model, None)),
        };
        self.map
            .range((from, Unbounded))
            .take_while(move |((m, p), _)| {
                *m == model
                    && match tier {
                        Tier::Pool(want) => *p == want,
                        Tier::AllPools => true,
                    }
            })
            .flat_map(move |(&(_, pool), inner)| {
                inner
                    .iter()
                    .filter(move |((s, _), _)| site.is_none_or(|want| *s == want))
                    .map(move |(&(s, gpus), b)| {
                        (
                            ScopeKey {
                                model,
                                pool,
                                site: s,
                                gpus,
                            },
                            b,
                        )
                    })
            })
    }
}

/// Adds (or removes) the contributions of one node to the indexes: its free capacity, and
/// with `member` its membership of the scope (joining, leaving, changing pool).
pub(crate) fn apply(
    scopes: &mut Scopes,
    node: &Node,
    add: bool,
    member: bool,
    placement: PlacementPolicy,
    policy: FleetPolicy,
) {
    let key = node.scope_key();
    let bucket = scopes.entry(&key);
    if member {
        // Otherwise `update_node` moves the node's count itself (see `held_moved`).
        held_change(bucket, node, add, policy);
    }
    let span = node.peak_watts.saturating_sub(node.idle_watts);
    if member && add {
        bucket.nodes += 1;
        *bucket.spans.entry(span).or_default() += 1;
    } else if member {
        bucket.nodes = bucket.nodes.saturating_sub(1);
        if let Some(n) = bucket.spans.get_mut(&span) {
            *n -= 1;
            if *n == 0 {
                bucket.spans.remove(&span);
            }
        }
    }
    if node.schedulable && grouped(node, placement) {
        let gk = node.group_key();
        let set = bucket.groups.entry(gk.clone()).or_default();
        let before = set.first().copied();
        if add {
            set.insert(node.id);
        } else {
            set.remove(&node.id);
        }
        let after = set.first().copied();
        if after.is_none() {
            bucket.groups.remove(&gk);
        }
        if before != after {
            bucket.set_group(gk, after);
        }
    }
    if node.schedulable {
        let free = node.free();
        let free_count = free.count_ones();
        if add {
            bucket.free_gpus += u64::from(free_count);
        } else {
            bucket.free_gpus = bucket.free_gpus.saturating_sub(u64::from(free_count));
        }
        let whole = node.whole_free();
        if whole {
            for (level, index) in bucket.levels.iter_mut().enumerate() {
                if let Some(block) = node.level_key(level) {
                    index.change(block, [node.slot], add);
                }
            }
        }
        if free != 0 && (!whole || placement == PlacementPolicy::FirstFit) {
            let owner = node.owner();
            let sets = match owner {
                Some(t) => bucket.owned.entry(t).or_default(),
                None => &mut bucket.open,
            };
            let free_u8 = u8::try_from(free_count).unwrap_or(u8::MAX);
            for (i, &k) in SHAPES.iter().enumerate() {
                if let Some((_, score)) = choose_group(node.topology, free, node.gpus, k, placement)
                {
                    let pk = match placement {
                        PlacementPolicy::FirstFit => (0, 0, node.id),
                        _ => (score, free_u8, node.id),
                    };
                    if add {
                        sets[i].insert(pk);
                    } else {
                        sets[i].remove(&pk);
                    }
                }
            }
            if let Some(t) = owner
                && !add
                && bucket
                    .owned
                    .get(&t)
                    .is_some_and(|s| s.iter().all(BTreeSet::is_empty))
            {
                bucket.owned.remove(&t);
            }
        }
    }
    if member && !add {
        scopes.prune(&key);
    }
}

/// Counts (or stops counting) a node in its scope's [`Bucket::held`]: only schedulable,
/// healthy nodes that hold work are counted.
fn held_change(bucket: &mut Bucket, node: &Node, add: bool, policy: FleetPolicy) {
    held_change_many(bucket, &[node], add, policy);
}

/// [`held_change`] for many nodes of one scope: each run of nodes of one block whose work
/// has the same highest priority is counted at once (a gang's nodes come in slot order,
/// where a block's nodes sit next to each other).
fn held_change_many(bucket: &mut Bucket, nodes: &[&Node], add: bool, policy: FleetPolicy) {
    // Per level, the run being counted: (block, highest priority, nodes, their shares). Each
    // node's priority is read once for all levels.
    let mut runs: [Option<(BlockKey, usize, u32, u64)>; LEVELS] = [None; LEVELS];
    for node in nodes {
        if !node.schedulable || node.unhealthy != 0 {
            continue;
        }
        let Some(top) = node.top_priority(policy) else {
            continue;
        };
        let top = usize::from(top).min(3);
        for (level, run) in runs.iter_mut().enumerate() {
            let Some(block) = node.level_key(level) else {
                continue;
            };
            match run {
                Some((b, t, n, share)) if *b == block && *t == top => {
                    *n += 1;
                    *share += node.share;
                }
                _ => {
                    if let Some(r) = run.replace((block, top, 1, node.share)) {
                        count_held(&mut bucket.held[level], r, add);
                    }
                }
            }
        }
    }
    for (level, run) in runs.into_iter().enumerate() {
        if let Some(r) = run {
            count_held(&mut bucket.held[level], r, add);
        }
    }
}

fn count_held(
    held: &mut IdMap<BlockKey, [Held; 4]>,
    (block, top, n, share): (BlockKey, usize, u32, u64),
    add: bool,
) {
    if add {
        let h = &mut held.entry(block).or_default()[top];
        h.0 += n;
        h.1 += share;
    } else if let Some(counts) = held.get_mut(&block) {
        let h = &mut counts[top];
        h.0 = h.0.saturating_sub(n);
        h.1 = h.1.saturating_sub(share);
        if counts.iter().all(|&(n, _)| n == 0) {
            held.remove(&block);
        }
    }
}

/// How a node counts in [`Bucket::held`]: (highest priority of its work, its share);
/// `None` when it does not count.
pub(crate) fn held_state(node: &Node, policy: FleetPolicy) -> Option<(usize, u64)> {
    if !node.schedulable || node.unhealthy != 0 {
        return None;
    }
    let top = node.top_priority(policy)?;
    Some((usize::from(top).min(3), node.share))
}

/// Moves a node's count in [`Bucket::held`] from `before` to `after` (see [`held_state`]),
/// the node staying in its scope: one lookup per level when only its share changed.
pub(crate) fn held_moved(
    scopes: &mut Scopes,
    node: &Node,
    before: Option<(usize, u64)>,
    after: Option<(usize, u64)>,
) {
    if before == after {
        return;
    }
    let bucket = scopes.entry(&node.scope_key());
    for (level, held) in bucket.held.iter_mut().enumerate() {
        let Some(block) = node.level_key(level) else {
            continue;
        };
        match (before, after) {
            (Some((t0, s0)), Some((t1, s1))) if t0 == t1 => {
                if let Some(counts) = held.get_mut(&block) {
                    let h = &mut counts[t0].1;
                    *h = h.saturating_sub(s0).saturating_add(s1);
                }
            }
            _ => {
                if let Some((t, s)) = before {
                    count_held(held, (block, t, 1, s), false);
                }
                if let Some((t, s)) = after {
                    count_held(held, (block, t, 1, s), true);
                }
            }
        }
    }
}

/// [`held_change`] for the nodes of a gang (all of scope `key`) whose other indexes go
/// through [`apply_whole_many`].
pub(crate) fn apply_held_many(
    scopes: &mut Scopes,
    key: &ScopeKey,
    nodes: &[&Node],
    add: bool,
    policy: FleetPolicy,
) {
    held_change_many(scopes.entry(key), nodes, add, policy);
}

/// What [`apply`] does for nodes that are entirely free before (`add == false`) or after
/// (`add == true`) a change, for many nodes of one scope at once: a gang re-keys each of
/// its blocks once instead of once per node.
pub(crate) fn apply_whole_many(
    scopes: &mut Scopes,
    key: &ScopeKey,
    nodes: &[&Node],
    add: bool,
    placement: PlacementPolicy,
) {
    let bucket = scopes.entry(key);
    let gpus: u64 = nodes.iter().map(|n| u64::from(n.gpus)).sum();
    if add {
        bucket.free_gpus += gpus;
    } else {
        bucket.free_gpus = bucket.free_gpus.saturating_sub(gpus);
    }
    // A gang's nodes come in slot order, where a block's nodes sit next to each other: each
    // run of one block is re-keyed once (a block met in two runs is re-keyed twice, to the
    // same end).
    for (level, index) in bucket.levels.iter_mut().enumerate() {
        let mut start = 0;
        while start < nodes.len() {
            let block = nodes[start].level_key(level);
            let end = nodes[start..]
                .iter()
                .position(|n| n.level_key(level) != block)
                .map_or(nodes.len(), |p| start + p);
            if let Some(block) = block {
                index.change(block, nodes[start..end].iter().map(|n| n.slot), add);
            }
            start = end;
        }
    }
    if placement == PlacementPolicy::FirstFit {
        // First-fit keeps entirely free nodes in the shape sets too.
        for n in nodes {
            for (i, &k) in SHAPES.iter().enumerate() {
                if k <= n.gpus {
                    if add {
                        bucket.open[i].insert((0, 0, n.id));
                    } else {
                        bucket.open[i].remove(&(0, 0, n.id));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FreeNodes;

    #[test]
    fn free_nodes_keep_slots_across_words_in_order() {
        let mut f = FreeNodes::default();
        // A run that crosses a word, a lone slot far off, and a slot added twice.
        assert_eq!(f.change([60, 61, 62, 63, 64, 65, 1000], true), 7);
        assert_eq!(f.change([64], true), 0);
        assert_eq!(f.len(), 7);
        assert_eq!(f.first(), Some(60));
        assert_eq!(
            f.iter().collect::<Vec<_>>(),
            vec![60, 61, 62, 63, 64, 65, 1000]
        );
        // Removing what is not there changes nothing; emptied words are dropped.
        assert_eq!(f.change([5, 63, 64, 999], false), 2);
        assert_eq!(f.iter().collect::<Vec<_>>(), vec![60, 61, 62, 65, 1000]);
        assert_eq!(f.change([60, 61, 62, 65], false), 4);
        assert_eq!(f.first(), Some(1000));
        assert_eq!(f.words.len(), 1);
        assert_eq!(f.change([1000], false), 1);
        assert_eq!((f.len(), f.first()), (0, None));
        assert_eq!(f, FreeNodes::default());
    }
}
