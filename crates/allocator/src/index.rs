//! The indexes that let a decision find free capacity without scanning the fleet.
//!
//! Nodes are grouped into scopes: (model, pool, site, GPUs per node). A request only ever
//! looks at the scopes it may use, and inside a scope:
//!
//! - partly free nodes sit in one ordered set per sub-node shape (1, 2, 4, 8 GPUs) that they
//!   can still host, keyed by (free GPUs, score, node id), so the best fit is the first
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

use neocloud_types::{Class, ContractId, InstanceId, NodeId, SiteId, TenantId};

use crate::PlacementPolicy;
use crate::allocator::IdMap;
use neocloud_types::BlockId;

use crate::node::{BlockKey, LEVELS, Node, SHAPES, choose_group};

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

/// A partly free node in a shape set: (free GPUs, score of the group it would give, id).
/// First-fit keys every node as (0, 0, id) so that the first entry is the lowest id.
pub(crate) type PartialKey = (u8, u8, NodeId);

/// Entirely free nodes of one level, per block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Level {
    /// (free whole nodes, block) for every block with at least one.
    pub by_count: BTreeSet<(u32, BlockKey)>,
    /// The free whole nodes of each block, in id order (the order gangs take them in).
    pub blocks: BTreeMap<BlockKey, BTreeSet<NodeId>>,
}

impl Level {
    fn insert(&mut self, key: BlockKey, node: NodeId) {
        let set = self.blocks.entry(key).or_default();
        let before = count(set);
        if set.insert(node) {
            if before > 0 {
                self.by_count.remove(&(before, key));
            }
            self.by_count.insert((before + 1, key));
        }
    }

    fn remove(&mut self, key: BlockKey, node: NodeId) {
        let Some(set) = self.blocks.get_mut(&key) else {
            return;
        };
        let before = count(set);
        if set.remove(&node) {
            self.by_count.remove(&(before, key));
            if before > 1 {
                self.by_count.insert((before - 1, key));
            } else {
                self.blocks.remove(&key);
            }
        }
    }

    /// Free whole nodes in a block.
    pub fn count(&self, key: &BlockKey) -> u32 {
        self.blocks.get(key).map_or(0, count)
    }

    /// The most free whole nodes in one block.
    pub fn largest(&self) -> u32 {
        self.by_count.last().map_or(0, |&(c, _)| c)
    }
}

fn count(set: &BTreeSet<NodeId>) -> u32 {
    u32::try_from(set.len()).unwrap_or(u32::MAX)
}

/// Free whole nodes of one level, counted per (parent path, block), so that a search can
/// descend from the emptiest pod into its emptiest leaf group and NVLink domain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tree {
    counts: BTreeMap<(Parent, BlockId), u32>,
    /// (parent, free whole nodes, block) for every count above zero.
    order: BTreeSet<(Parent, u32, BlockKey)>,
}

/// The blocks above a block: (pod, leaf group), `None` where the node has none.
pub(crate) type Parent = (Option<BlockId>, Option<BlockId>);

impl Tree {
    fn change(&mut self, parent: Parent, block: BlockId, add: bool) {
        let count = self.counts.entry((parent, block)).or_default();
        let before = *count;
        if before > 0 {
            self.order.remove(&(parent, before, Some(block)));
        }
        *count = if add {
            before + 1
        } else {
            before.saturating_sub(1)
        };
        if *count > 0 {
            self.order.insert((parent, *count, Some(block)));
        } else {
            self.counts.remove(&(parent, block));
        }
    }

    /// The child of `parent` with the fewest (`most`: the most) free whole nodes.
    fn child(&self, parent: Parent, most: bool) -> Option<BlockId> {
        let mut under = self
            .order
            .range((parent, 1, None)..(parent, u32::MAX, None));
        let found = if most {
            under.next_back()
        } else {
            under.next()
        };
        found.and_then(|&(_, _, b)| b)
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
    /// The same, per parent: NVLink domains under (pod, leaf group), leaf groups under
    /// (pod, -).
    pub trees: [Tree; 2],
    /// Nodes per (peak − idle) watts: bounds what a placement can add to the site's draw.
    pub spans: BTreeMap<u32, u32>,
    /// Allocations holding GPUs in this scope, with how many of their nodes are here: the
    /// candidates for preemption. Hashed: preemption orders what it takes from here.
    pub allocs: IdMap<(Class, InstanceId), u32>,
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

    /// The free whole node a sub-node shape should open: best-fit descends from the pod
    /// with the fewest free whole nodes into its leaf group and NVLink domain with the
    /// fewest, so that work packs into blocks already in use and whole pods, leaf groups
    /// and domains stay free for gangs; worst-fit takes the most at every step. Returns
    /// (free whole nodes of the pod or, without pods, of the block picked, block, node).
    pub fn whole_pick(&self, most: bool) -> Option<(u32, BlockKey, NodeId)> {
        if std::env::var("VARIANT").is_ok_and(|v| v == "A") {
            let level = self.levels.iter().find(|l| !l.by_count.is_empty())?;
            let block = if most {
                level.by_count.last()
            } else {
                level.by_count.first()
            };
            let &(count, block) = block?;
            let id = *level.blocks.get(&block)?.first()?;
            return Some((count, block, id));
        }
        let pods = &self.levels[2].by_count;
        let pod = if most { pods.last() } else { pods.first() };
        let pod_id = pod.and_then(|&(_, b)| b);
        let leaf = self.trees[1].child((pod_id, None), most);
        let domain = self.trees[0].child((pod_id, leaf), most);
        let (level, block) = match (domain, leaf, pod_id) {
            (Some(d), _, _) => (0, Some(d)),
            (None, Some(l), _) => (1, Some(l)),
            (None, None, Some(p)) => (2, Some(p)),
            (None, None, None) => (crate::node::LEVEL_SITE, None),
        };
        let index = &self.levels[level];
        let node = *index.blocks.get(&block)?.first()?;
        let count = pod.map_or_else(|| index.count(&block), |&(c, _)| c);
        Some((count, block, node))
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

    /// Counts one more (or one fewer) node of an allocation in a scope.
    pub fn alloc_ref(&mut self, key: &ScopeKey, class: Class, id: InstanceId, add: bool) {
        if add {
            *self.entry(key).allocs.entry((class, id)).or_default() += 1;
            return;
        }
        let Some(bucket) = self.get_mut(key) else {
            return;
        };
        let Some(n) = bucket.allocs.get_mut(&(class, id)) else {
            return;
        };
        if *n > 1 {
            *n -= 1;
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
) {
    let key = node.scope_key();
    let bucket = scopes.entry(&key);
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
                    if add {
                        index.insert(block, node.id);
                    } else {
                        index.remove(block, node.id);
                    }
                }
            }
            let [pod, leaf, domain] = node.blocks;
            if let Some(d) = domain {
                bucket.trees[0].change((pod, leaf), d, add);
            }
            if let Some(l) = leaf {
                bucket.trees[1].change((pod, None), l, add);
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
                if let Some((_, score)) = choose_group(free, node.gpus, k, placement) {
                    let pk = match placement {
                        PlacementPolicy::FirstFit => (0, 0, node.id),
                        _ if std::env::var("KEY").is_ok_and(|v| v == "S") => {
                            (score, free_u8, node.id)
                        }
                        _ => (free_u8, score, node.id),
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
