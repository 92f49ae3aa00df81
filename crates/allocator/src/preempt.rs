//! Preemption plans: which lower-class allocations to release so that a request fits.
//!
//! Only allocations of a strictly lower class (invariant 3 in docs/architecture.md, ordered by the fleet policy)
//! in the scopes the request may use are victims; for a reserved request that means the
//! spot work borrowing its pool. The plan is a heuristic that prefers the fewest preempted
//! GPUs, per site:
//!
//! - one node's GPUs: every node that holds a victim is examined, every aligned group on it
//!   (valid on every board) and, per group of the board's topology, its k cheapest GPUs
//!   priced at the GPUs of the allocations that overlap them (plus, on a node that is not
//!   shareable, the other tenants' work); the cheapest group wins. A gang victim costs all
//!   its GPUs, so a 1-GPU request does not tear down a 64-node job when a spot single will
//!   do;
//! - a gang: per block of the requested level, the free whole nodes plus the nodes that
//!   become free when their victims go, cheapest nodes first (priced at each victim's GPUs
//!   per node); the cheapest block wins;
//! - then power: when the site would still be over its limit, further victims of the same
//!   scopes are added, smallest first, until it is not.
//!
//! The plan is exact about feasibility (a plan it returns makes the request placeable) but
//! greedy about cost. It reads only the victims' nodes, or the members of the blocks that
//! could take a gang, never the whole fleet.
//!
//! A gang plan first reads, per block, how many schedulable, healthy nodes hold only work of
//! each highest class (an index kept with the others): blocks that could not gather the
//! gang are never read, and a block that needs every such node is priced from the index
//! and read only if it can win. A plan for single GPUs still reads every node holding a
//! victim in its scopes (O(eligible victims)); planning is rare for those (a placement
//! already failed).

use std::collections::{BTreeMap, BTreeSet};

use neocloud_types::{Class, InstanceId, NodeId, Shape, SiteId};

use crate::allocator::{Allocator, usize_of};
use crate::index::{Bucket, ScopeKey};
use crate::node::BlockKey;
use crate::node::{SHAPES, facility_watts, group_mask, indexes_of, level_index, mask_of};
use crate::{GangLevel, Refusal, Request};

/// Victims chosen so far, and what the placement may add to the site's draw: one
/// (GPUs per node, (peak − idle) × GPUs) per scope it could land in; the site must have
/// room for each.
type Plan = (BTreeSet<InstanceId>, Vec<(u32, i64)>);

/// An allocation on a node, as a plan for GPUs in one node weighs it: (GPUs here, may go,
/// same tenant, GPUs in all, CPU and memory here).
type Held = (u64, bool, bool, u64, (u64, u64));

/// A node a gang plan could free: (GPUs preempted there, id, slot).
type Freeable = (u64, NodeId, usize);

/// A block a gang plan could use (see [`Allocator::gang_blocks`]).
type GangBlock = (u64, BlockKey, Option<Vec<Freeable>>);

impl Allocator {
    /// The lower-class allocations whose release would make `req` placeable: empty when it
    /// fits already, `None` when even releasing every eligible victim would not do.
    /// Deterministic; see the module documentation for how victims are chosen.
    pub fn preemption_plan(&self, req: &Request) -> Option<Vec<InstanceId>> {
        let scope = self.scope_of(req).ok()?;
        match self.try_place_quiet(req) {
            Ok(_) => return Some(Vec::new()),
            Err(Refusal::NoCapacity { .. } | Refusal::PowerLimit { .. }) => {}
            Err(_) => return None,
        }
        let mut by_site: BTreeMap<SiteId, Vec<(ScopeKey, &Bucket)>> = BTreeMap::new();
        for (key, b) in self.scope_buckets(req, &scope) {
            by_site.entry(key.site).or_default().push((key, b));
        }
        let mut best: Option<(u64, SiteId, BTreeSet<InstanceId>)> = None;
        for (site, buckets) in by_site {
            let plan = match req.shape {
                Shape::Gpus { gpus } => self.plan_gpus(req, gpus, &buckets),
                Shape::Nodes { count, level } => self.plan_nodes(req, count, level, &buckets),
                // Slices never preempt.
                Shape::Share { .. } | Shape::Mig { .. } | Shape::Cpu => None,
            };
            let Some((victims, adds)) = plan else {
                continue;
            };
            let Some(victims) = self.plan_power(req, site, victims, &adds, &buckets) else {
                continue;
            };
            let cost = self.cost(&victims);
            if best
                .as_ref()
                .is_none_or(|(c, s, _)| (cost, site) < (*c, *s))
            {
                best = Some((cost, site, victims));
            }
        }
        best.map(|(_, _, v)| v.into_iter().collect())
    }

    fn eligible(&self, req: &Request, class: Class) -> bool {
        req.class.can_preempt(class, self.policy)
    }

    fn cost(&self, victims: &BTreeSet<InstanceId>) -> u64 {
        victims
            .iter()
            .filter_map(|v| self.allocations.get(v))
            .map(|a| a.gpu_count())
            .sum()
    }

    /// The GPUs an allocation holds on one node.
    fn mask_on(&self, inst: InstanceId, node: NodeId) -> u64 {
        self.allocations.get(&inst).map_or(0, |a| {
            a.gpus
                .binary_search_by(|(n, _)| n.cmp(&node))
                .map_or(0, |i| mask_of(&a.gpus[i].1))
        })
    }

    /// Nodes of a scope holding eligible victims, in id order.
    fn victim_nodes(&self, req: &Request, key: &ScopeKey, b: &Bucket) -> Vec<NodeId> {
        let mut nodes = Vec::new();
        for &(class, inst) in b.allocs.keys() {
            if !self.eligible(req, class) {
                continue;
            }
            let Some(a) = self.allocations.get(&inst) else {
                continue;
            };
            for (node, _) in &a.gpus {
                if self
                    .slots
                    .get(node)
                    .is_some_and(|&s| self.nodes[s].scope_key() == *key)
                {
                    nodes.push(*node);
                }
            }
        }
        // Sorted, not hashed order: the plan must not depend on the hash map's order.
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    /// The blocks of level `li` of a scope where a gang of `need` nodes could go once
    /// lower-class work is preempted, as (lower bound of the GPUs preempted, block, the
    /// cheapest nodes to free). The nodes are (GPUs preempted there, id, slot):
    /// schedulable, healthy nodes every one of whose allocations `req` may preempt, each
    /// priced at its victims' shares (see [`crate::node::plan_share`]); `None` where the gang
    /// needs every such node of the block, whose bound is then read from the index and
    /// whose nodes are read only if the plan gets that far.
    ///
    /// Below the site level the scope's [`Bucket::held`] says which blocks could gather
    /// enough nodes, and only their nodes are read: a plan's victims are usually spread
    /// over the whole site, the blocks that could take the gang few. At the site level
    /// the victims are read.
    fn gang_blocks(
        &self,
        req: &Request,
        key: &ScopeKey,
        b: &Bucket,
        li: usize,
        need: usize,
    ) -> Vec<GangBlock> {
        let free = |block: &BlockKey| usize_of(b.levels[li].count(block));
        let pick = |block: BlockKey, mut nodes: Vec<Freeable>| {
            let have = free(&block);
            if have + nodes.len() < need {
                return None;
            }
            let take = need - have;
            if take < nodes.len() {
                nodes.select_nth_unstable(take);
                nodes.truncate(take);
            }
            let bound = nodes.iter().map(|n| n.0).sum();
            Some((bound, block, Some(nodes)))
        };
        if crate::node::depth_of(li).is_none() {
            return self
                .freeable_by_victims(req, key, b, li)
                .into_iter()
                .filter_map(|(block, nodes)| pick(block, nodes))
                .collect();
        }
        let rank = usize::from(req.class.priority(self.policy)).min(4);
        // No block has more free nodes than the level's largest: a block whose freeable
        // nodes cannot make up the rest even then is passed over without its count.
        let most_free = usize_of(b.levels[li].largest());
        // (block, its free nodes, nodes holding only lower-class work, their shares)
        let mut candidates: Vec<(BlockKey, usize, usize, u64)> = b.held[li]
            .iter()
            .filter_map(|(&block, held)| {
                let (n, share) = held[..rank].iter().fold((0usize, 0u64), |(n, s), h| {
                    (n + usize::try_from(h.0).unwrap_or(0), s + h.1)
                });
                if n == 0 || n + most_free < need {
                    return None;
                }
                let have = free(&block);
                (have + n >= need).then_some((block, have, n, share))
            })
            .collect();
        // Hashed: the plan must not depend on the map's order.
        candidates.sort_unstable_by_key(|c| c.0);
        let mut out = Vec::with_capacity(candidates.len());
        for (block, have, n, share) in candidates {
            if have + n == need {
                out.push((share, block, None));
            } else {
                out.extend(pick(block, self.block_freeable(req, key, li, block)));
            }
        }
        out
    }

    /// The freeable nodes (see [`Allocator::gang_blocks`]) of one block below the site
    /// level, read from the block's members.
    fn block_freeable(
        &self,
        req: &Request,
        key: &ScopeKey,
        li: usize,
        block: BlockKey,
    ) -> Vec<Freeable> {
        let rank = usize::from(req.class.priority(self.policy)).min(4);
        let (Some(depth), Some(id)) = (crate::node::depth_of(li), block) else {
            return Vec::new();
        };
        let members = self
            .members
            .get(&(depth, id))
            .map_or(&[][..], Vec::as_slice);
        members
            .iter()
            .filter_map(|&slot| {
                let node = &self.nodes[slot];
                let eligible = node
                    .top_priority(self.policy)
                    .is_some_and(|p| usize::from(p) < rank);
                (eligible && node.schedulable && node.unhealthy == 0 && node.scope_key() == *key)
                    .then_some((node.share, node.id, slot))
            })
            .collect()
    }

    /// Every block of level `li` with a freeable node (see [`Allocator::gang_blocks`]),
    /// read from the scope's victims.
    ///
    /// One pass over the scope's eligible allocations, each priced once, gives (slot,
    /// share) per victim and node; sorted by slot, each node is then read once, in slot
    /// order. A node is freeable when every allocation it holds was counted (all of them are
    /// in the scope's allocation index, so the count tells whether all may go).
    fn freeable_by_victims(
        &self,
        req: &Request,
        key: &ScopeKey,
        b: &Bucket,
        li: usize,
    ) -> BTreeMap<BlockKey, Vec<Freeable>> {
        let mut held: Vec<(usize, u64)> = Vec::new();
        for &(class, inst) in b.allocs.keys() {
            if !self.eligible(req, class) {
                continue;
            }
            let Some(a) = self.allocations.get(&inst) else {
                continue;
            };
            let share = crate::node::plan_share(a);
            held.extend(
                a.gpus
                    .iter()
                    .filter_map(|(node, _)| self.slots.get(node).map(|&s| (s, share))),
            );
        }
        held.sort_unstable_by_key(|&(slot, _)| slot);
        // Runs of one block (nodes of a block mostly sit next to each other in slot order),
        // merged per block at the end.
        let mut runs: Vec<(BlockKey, Vec<Freeable>)> = Vec::new();
        let mut i = 0;
        while i < held.len() {
            let slot = held[i].0;
            let mut share = 0u64;
            let mut victims = 0usize;
            while i < held.len() && held[i].0 == slot {
                share += held[i].1;
                victims += 1;
                i += 1;
            }
            let node = &self.nodes[slot];
            if node.allocs.len() != victims
                || !node.schedulable
                || node.unhealthy != 0
                || node.scope_key() != *key
            {
                continue;
            }
            let Some(block) = node.level_key(li) else {
                continue;
            };
            match runs.last_mut() {
                Some((last, nodes)) if *last == block => nodes.push((share, node.id, slot)),
                _ => runs.push((block, vec![(share, node.id, slot)])),
            }
        }
        let mut freeable: BTreeMap<BlockKey, Vec<Freeable>> = BTreeMap::new();
        for (block, mut nodes) in runs {
            match freeable.entry(block) {
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(nodes);
                }
                std::collections::btree_map::Entry::Occupied(mut e) => {
                    e.get_mut().append(&mut nodes)
                }
            }
        }
        freeable
    }

    fn plan_gpus(&self, req: &Request, k: u32, buckets: &[(ScopeKey, &Bucket)]) -> Option<Plan> {
        let ki = SHAPES.iter().position(|&s| s == k)?;
        let mut adds = Vec::new();
        let mut candidates = Vec::new();
        let mut fits_already = false;
        for &(key, b) in buckets {
            if key.gpus < k {
                continue;
            }
            adds.push((key.gpus, i64::from(b.max_span()) * i64::from(k)));
            // Nodes that fit already (the request failed on power, not on GPUs).
            let owned = b.owned.get(&req.tenant).map(|s| &s[ki]);
            let level = &b.levels[crate::node::LEVEL_SITE];
            let fit: Vec<NodeId> = [Some(&b.open[ki]), owned]
                .into_iter()
                .flatten()
                .filter_map(|set| set.first().map(|&(_, _, id)| id))
                .chain(
                    level
                        .blocks
                        .get(&None)
                        .and_then(|s| s.first())
                        .map(|slot| self.nodes[usize_of(slot)].id),
                )
                .collect();
            fits_already |= !fit.is_empty();
            candidates.extend(fit);
            candidates.extend(self.victim_nodes(req, &key, b));
        }
        // Nothing cheaper than one GPU exists when no node fits already.
        let floor = u64::from(!fits_already);
        candidates.sort_unstable();
        candidates.dedup();
        let mut best: Option<(u64, usize, u64)> = None;
        for id in candidates {
            let Some(&slot) = self.slots.get(&id) else {
                continue;
            };
            let Some((cost, group)) = self.node_plan(req, slot, k) else {
                continue;
            };
            if best.is_none_or(|(c, _, _)| cost < c) {
                best = Some((cost, slot, group));
                if cost <= floor {
                    break;
                }
            }
        }
        let (_, slot, group) = best?;
        Some((self.in_the_way(req, slot, group), adds))
    }

    /// The allocations on a node that must go for `req` to take `group` there: those holding
    /// GPUs of the group and, on a node that is not shareable, other tenants' work.
    fn in_the_way(&self, req: &Request, slot: usize, group: u64) -> BTreeSet<InstanceId> {
        let node = &self.nodes[slot];
        node.allocs
            .iter()
            .filter(|&&(inst, tenant)| {
                self.mask_on(inst, node.id) & group != 0
                    || (!node.shareable && tenant != req.tenant)
            })
            .map(|&(inst, _)| inst)
            .collect()
    }

    /// The cheapest group of `k` GPUs on one node to free for `req`, as (GPUs
    /// preempted, group mask); `None` when every group holds work `req` may not preempt.
    fn node_plan(&self, req: &Request, slot: usize, k: u32) -> Option<(u64, u64)> {
        let node = &self.nodes[slot];
        if !node.schedulable || node.gpus < k {
            return None;
        }
        // (GPUs here, may go, same tenant, GPUs in all, CPU and memory here) per allocation
        // on the node.
        let held: Vec<Held> = node
            .allocs
            .iter()
            .filter_map(|&(inst, tenant)| {
                let a = self.allocations.get(&inst)?;
                Some((
                    self.mask_on(inst, node.id),
                    self.eligible(req, a.class),
                    tenant == req.tenant,
                    a.gpu_count(),
                    node.host_of(a),
                ))
            })
            .collect();
        let (need_cpu, need_mem) = crate::slices::host_need(node, req);
        let mut best: Option<(u64, u64)> = None;
        // Aligned groups (valid on every board), and per group of the board's topology the
        // k cheapest GPUs whose holders may all go (where the board is not aligned, they
        // may be GPUs no aligned group holds together).
        let mut groups: Vec<u64> = (0..node.gpus / k).map(|i| group_mask(i * k, k)).collect();
        let domain = node.topology.domain(k).min(64);
        let mut start = 0;
        while start < node.gpus {
            let block = group_mask(start, domain) & node.full() & !node.unhealthy;
            start += domain;
            let mut gpus: Vec<(u64, u32)> = Vec::new();
            for g in indexes_of(block) {
                let bit = 1u64 << g;
                let holders = held.iter().filter(|h| h.0 & bit != 0);
                if holders.clone().all(|h| h.1) {
                    gpus.push((holders.map(|h| h.3).sum(), g));
                }
            }
            if gpus.len() >= usize::try_from(k).unwrap_or(usize::MAX) {
                gpus.sort_unstable();
                let pick = gpus
                    .iter()
                    .take(usize::try_from(k).unwrap_or(0))
                    .fold(0u64, |m, &(_, g)| m | 1u64 << g);
                if !groups.contains(&pick) {
                    groups.push(pick);
                }
            }
        }
        for group in groups {
            if node.unhealthy & group != 0 {
                continue;
            }
            let mut cost = 0;
            let mut ok = true;
            let (mut cpu_freed, mut mem_freed) = (0u64, 0u64);
            for &(mask, eligible, same_tenant, gpus, (cpu, mem)) in &held {
                if mask & group == 0 && (node.shareable || same_tenant) {
                    continue;
                }
                if !eligible {
                    ok = false;
                    break;
                }
                cost += gpus;
                cpu_freed += cpu;
                mem_freed += mem;
            }
            // The group must leave the request the CPU and memory it needs too, or the plan
            // would preempt work and still not place it.
            ok &= (node.cpu_milli == 0
                || node
                    .cpu_used
                    .saturating_sub(cpu_freed)
                    .saturating_add(need_cpu)
                    <= node.cpu_milli)
                && (node.mem_mib == 0
                    || node
                        .mem_used
                        .saturating_sub(mem_freed)
                        .saturating_add(need_mem)
                        <= node.mem_mib);
            if ok && best.is_none_or(|(c, _)| cost < c) {
                best = Some((cost, group));
            }
        }
        best
    }

    fn plan_nodes(
        &self,
        req: &Request,
        count: u32,
        level: GangLevel,
        buckets: &[(ScopeKey, &Bucket)],
    ) -> Option<Plan> {
        let li = level_index(level);
        let need_all = usize::try_from(count).unwrap_or(usize::MAX);
        let adds: Vec<(u32, i64)> = buckets
            .iter()
            .map(|(key, b)| {
                let per_node = i64::from(b.max_span()) * i64::from(key.gpus);
                (key.gpus, per_node * i64::from(count))
            })
            .collect();
        // The cheapest plan, ties to the earliest scope and then block (as visiting them in
        // order and keeping only strictly cheaper plans would give).
        let mut best: Option<(u64, (usize, BlockKey), BTreeSet<InstanceId>)> = None;
        for (bi, &(key, b)) in buckets.iter().enumerate() {
            let index = &b.levels[li];
            if index.largest() >= count {
                return Some((BTreeSet::new(), adds));
            }
            // Per block the cheapest nodes it needs, and a lower bound of their cost (each
            // victim costs at least its share on each chosen node); exact costs only for
            // blocks whose bound can still win.
            let mut blocks = self.gang_blocks(req, &key, b, li, need_all);
            blocks.sort_unstable_by_key(|b| (b.0, b.1));
            for (bound, block, nodes) in blocks {
                // The cost is at least the bound: a block that cannot beat the best so far
                // (cheaper, or as cheap and earlier) is not priced.
                if best
                    .as_ref()
                    .is_some_and(|(c, k, _)| (bound, (bi, block)) > (*c, *k))
                {
                    continue;
                }
                let nodes = nodes.unwrap_or_else(|| self.block_freeable(req, &key, li, block));
                let victims: BTreeSet<InstanceId> = nodes
                    .iter()
                    .flat_map(|&(_, _, slot)| self.nodes[slot].allocs.iter().map(|&(i, _)| i))
                    .collect();
                let cost = self.cost(&victims);
                if best
                    .as_ref()
                    .is_none_or(|(c, k, _)| (cost, (bi, block)) < (*c, *k))
                {
                    best = Some((cost, (bi, block), victims));
                }
            }
        }
        best.map(|(_, _, v)| (v, adds))
    }

    /// Adds victims until the site has room for the placement's power; `None` if releasing
    /// every eligible allocation of these scopes would not make room.
    fn plan_power(
        &self,
        req: &Request,
        site: SiteId,
        mut victims: BTreeSet<InstanceId>,
        adds: &[(u32, i64)],
        buckets: &[(ScopeKey, &Bucket)],
    ) -> Option<BTreeSet<InstanceId>> {
        let s = self.sites.get(&site)?;
        // The site's draw once the victims are gone.
        let mut load = s.load.clone();
        let release = |inst: &InstanceId, load: &mut crate::node::Load| {
            let Some(a) = self.allocations.get(inst) else {
                return;
            };
            for (node, indexes) in &a.gpus {
                if let Some(&slot) = self.slots.get(node) {
                    let n = &self.nodes[slot];
                    let gpus = i64::try_from(indexes.len()).unwrap_or(i64::MAX);
                    load.add(n.gpus, -n.span_watts() * gpus);
                }
            }
        };
        for v in &victims {
            release(v, &mut load);
        }
        let fits = |load: &crate::node::Load| {
            adds.iter().all(|&(gpus, busy)| {
                facility_watts(load.it_watts_with(gpus, busy), s.spec.pue_milli)
                    <= s.spec.power_limit_watts
            })
        };
        if fits(&load) {
            return Some(victims);
        }
        let mut extra: Vec<(u64, InstanceId)> = buckets
            .iter()
            .flat_map(|(_, b)| b.allocs.keys())
            .filter(|(class, inst)| self.eligible(req, *class) && !victims.contains(inst))
            .filter_map(|(_, inst)| self.allocations.get(inst).map(|a| (a.gpu_count(), *inst)))
            .collect();
        extra.sort_unstable();
        extra.dedup();
        for (_, inst) in extra {
            release(&inst, &mut load);
            victims.insert(inst);
            if fits(&load) {
                return Some(victims);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use neocloud_types::{Class, FleetPolicy, GangLevel, NodeId, Shape};

    use super::Freeable;
    use crate::index::{Bucket, ScopeKey};
    use crate::node::{BlockKey, LEVEL_SITE, LEVELS};
    use crate::synthetic::{Grid, Rng, allocator, contract_id, instance_id, tenant_id};
    use crate::{Allocator, PlacementPolicy, Request};

    /// What `freeable_nodes` must give, read node by node: every node of the scope that
    /// holds a victim, kept when it is schedulable and healthy and every allocation on it
    /// may go, priced at its allocations' shares.
    fn per_node(
        a: &Allocator,
        req: &Request,
        key: &ScopeKey,
        b: &Bucket,
        li: usize,
    ) -> BTreeMap<BlockKey, Vec<Freeable>> {
        let mut out: BTreeMap<BlockKey, Vec<Freeable>> = BTreeMap::new();
        for id in a.victim_nodes(req, key, b) {
            let slot = a.slots[&id];
            let node = &a.nodes[slot];
            let Some(block) = node.level_key(li) else {
                continue;
            };
            if !node.schedulable || node.unhealthy != 0 {
                continue;
            }
            let mut share = 0;
            let mut ok = true;
            for (inst, _) in &node.allocs {
                let v = &a.allocations[inst];
                ok &= a.eligible(req, v.class);
                share += crate::node::plan_share(v);
            }
            if ok {
                out.entry(block).or_default().push((share, id, slot));
            }
        }
        out
    }

    fn sorted(mut m: BTreeMap<BlockKey, Vec<Freeable>>) -> BTreeMap<BlockKey, Vec<Freeable>> {
        for nodes in m.values_mut() {
            nodes.sort_unstable_by_key(|&(_, id, _)| id);
        }
        m
    }

    #[test]
    fn freeable_nodes_match_a_node_by_node_reading() {
        const CLASSES: [Class; 4] = [
            Class::Spot,
            Class::OnDemand,
            Class::Internal,
            Class::Reserved,
        ];
        const LEVEL: [GangLevel; 4] = [
            GangLevel::NvlinkDomain,
            GangLevel::LeafGroup,
            GangLevel::Pod,
            GangLevel::Site,
        ];
        let mut checked = 0;
        for seed in 0..24u64 {
            let mut rng = Rng::new(seed);
            let policy = if seed % 2 == 0 {
                FleetPolicy::LabFirst
            } else {
                FleetPolicy::CloudFirst
            };
            let shared = Grid {
                site: 1,
                pods: 2,
                leaves_per_pod: 2,
                nodes_per_leaf: 6,
                nvlink_per_leaf: 2,
                gpus: 8,
                gpu_model: "H100".to_string(),
                idle_watts: 100,
                peak_watts: 800,
                shareable: true,
                pue_milli: 1000,
                power_limit_watts: None,
            };
            let unshared = Grid {
                site: 2,
                nvlink_per_leaf: 0,
                shareable: false,
                ..shared.clone()
            };
            let mut a = allocator(&[shared, unshared], policy, PlacementPolicy::BestFit);
            let ids: Vec<NodeId> = a.nodes.iter().map(|n| n.id).collect();
            let pick = |rng: &mut Rng| ids[usize::try_from(rng.below(ids.len() as u64)).unwrap()];
            for c in 1..=2 {
                for _ in 0..6 {
                    let _ = a.set_pool(pick(&mut rng), Some(contract_id(c)));
                }
            }
            let request = |rng: &mut Rng, id: u64| {
                let class = CLASSES[usize::try_from(rng.below(4)).unwrap()];
                let shape = if rng.chance(0.5) {
                    Shape::Gpus {
                        gpus: [1, 2, 4, 8][usize::try_from(rng.below(4)).unwrap()],
                    }
                } else {
                    Shape::Nodes {
                        count: 1 + u32::try_from(rng.below(6)).unwrap(),
                        level: LEVEL[usize::try_from(rng.below(4)).unwrap()],
                    }
                };
                Request {
                    id: instance_id(id),
                    tenant: tenant_id(rng.below(3)),
                    class,
                    gpu_model: "H100".to_string(),
                    shape,
                    site: None,
                    pool: (class == Class::Reserved).then(|| contract_id(1 + rng.below(2))),
                    cpu_milli: None,
                    memory_mib: None,
                }
            };
            let mut next = 1;
            for _ in 0..300 {
                match rng.below(10) {
                    0..=5 => {
                        let _ = a.place(&request(&mut rng, next));
                        next += 1;
                    }
                    6 => {
                        let held: Vec<_> = a.allocations().map(|x| x.id).collect();
                        if !held.is_empty() {
                            a.release(held[usize::try_from(rng.below(held.len() as u64)).unwrap()]);
                        }
                    }
                    7 => a.set_schedulable(pick(&mut rng), rng.chance(0.6)),
                    8 => {
                        let gpu = u32::try_from(rng.below(8)).unwrap();
                        a.set_gpu_healthy(pick(&mut rng), gpu, rng.chance(0.6));
                    }
                    _ => {
                        // A claim: compare for every level and every scope it may use.
                        let req = request(&mut rng, next);
                        next += 1;
                        let Ok(scope) = a.scope_of(&req) else {
                            continue;
                        };
                        for li in 0..LEVELS {
                            for (key, b) in a.scope_buckets(&req, &scope) {
                                let fast = sorted(a.freeable_by_victims(&req, &key, b, li));
                                assert_eq!(fast, sorted(per_node(&a, &req, &key, b, li)));
                                checked += usize::from(!fast.is_empty());
                                if li == LEVEL_SITE {
                                    continue;
                                }
                                // The index counts, and the block's members, say the same.
                                let rank = usize::from(req.class.priority(a.policy));
                                let mut counted = BTreeMap::new();
                                for (&block, held) in &b.held[li] {
                                    let (n, share) = held[..rank]
                                        .iter()
                                        .fold((0, 0), |(n, s), h| (n + h.0 as usize, s + h.1));
                                    if n > 0 {
                                        counted.insert(block, (n, share));
                                    }
                                }
                                let read: BTreeMap<_, _> = fast
                                    .iter()
                                    .map(|(block, nodes)| {
                                        (*block, (nodes.len(), nodes.iter().map(|x| x.0).sum()))
                                    })
                                    .collect();
                                assert_eq!(counted, read);
                                for (block, nodes) in &fast {
                                    let mut members = a.block_freeable(&req, &key, li, *block);
                                    members.sort_unstable_by_key(|&(_, id, _)| id);
                                    assert_eq!(&members, nodes);
                                }
                            }
                        }
                    }
                }
            }
            a.check_invariants().unwrap();
        }
        assert!(checked > 100, "only {checked} non-empty comparisons");
    }
}
