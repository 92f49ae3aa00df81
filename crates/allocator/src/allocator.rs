//! The allocator: the fleet's occupancy, and the placement decisions taken on it.
//!
//! A decision ([`Allocator::try_place`]) reads the indexes of [`crate::index`] only: the
//! scopes a request may use, then the first entries of their ordered sets. Recording it
//! ([`Allocator::place`]) updates the few nodes it touches. Which scopes a request may use:
//!
//! - its GPU model, and its site when it names one;
//! - a reserved request only the nodes pinned to its contract's pool;
//! - any other request only unpinned nodes, except spot, which borrows idle pool nodes when
//!   no unpinned node fits (and is preempted when the pool's tenant needs them back).

use std::collections::{BTreeMap, HashMap};

use neocloud_types::{Class, ContractId, FleetPolicy, InstanceId, NodeId, Shape, SiteId};

use crate::index::{Bucket, ScopeKey, Scopes, apply};
use crate::node::{
    BlockKey, LEVEL_INNERMOST, LEVEL_SITE, Node, SHAPES, choose_group, draw_watts, facility_watts,
    full_mask, group_mask, indexes_of, is_aligned_group, mask_of,
};
use crate::{
    Allocation, Fragmentation, GangLevel, NodeSpec, PlacementPolicy, PowerUse, Refusal, Request,
    SiteSpec,
};

/// A site's power envelope and what its nodes draw now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SiteState {
    pub spec: SiteSpec,
    /// Σ node draw, IT watts.
    pub it_watts: i64,
}

/// Where a decision puts an allocation: nodes (by slot) and the GPUs taken on each.
#[derive(Clone, Debug)]
pub(crate) struct Decision {
    pub site: SiteId,
    pub picks: Vec<(usize, u64)>,
}

/// What a request may use, once it has passed validation.
pub(crate) struct Scope {
    pub model: u32,
    /// Pool scopes in order of preference; each tier is tried before the next.
    pub tiers: Vec<Vec<Option<ContractId>>>,
}

/// Places allocations on concrete GPUs. See the crate documentation.
#[derive(Clone, Debug)]
pub struct Allocator {
    pub(crate) policy: FleetPolicy,
    pub(crate) placement: PlacementPolicy,
    pub(crate) sites: BTreeMap<SiteId, SiteState>,
    /// Interned model names: nodes and scopes carry a small number instead of a string.
    pub(crate) models: Vec<String>,
    pub(crate) model_ids: BTreeMap<String, u32>,
    /// Per model, how many nodes have each GPU count.
    pub(crate) model_sizes: BTreeMap<u32, BTreeMap<u32, u32>>,
    pub(crate) nodes: Vec<Node>,
    /// Node id → slot in `nodes`. Only looked up, never iterated, so its order never leaks
    /// into a decision.
    pub(crate) slots: HashMap<NodeId, usize>,
    pub(crate) scopes: Scopes,
    /// Nodes pinned to each contract's pool.
    pub(crate) pools: BTreeMap<ContractId, u32>,
    pub(crate) allocations: BTreeMap<InstanceId, Allocation>,
}

fn usize_of(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// How an aligned group of `k` GPUs is described to a tenant whose request did not fit.
fn group_words(k: u32) -> String {
    match k {
        1 => "a free GPU".to_string(),
        2 => "a free aligned pair of GPUs (0-1, 2-3, …)".to_string(),
        4 => "a free aligned quad of GPUs (0-3 or 4-7)".to_string(),
        _ => format!("{k} free GPUs"),
    }
}

fn level_index(level: GangLevel) -> usize {
    match level {
        GangLevel::NvlinkDomain => 0,
        GangLevel::LeafGroup => 1,
        GangLevel::Pod => 2,
        GangLevel::Site => LEVEL_SITE,
    }
}

/// Sort key of a candidate: policy class first, then the policy's measures, then ids.
type Rank = (u8, u32, u32, BlockKey, NodeId);

impl Allocator {
    /// An empty allocator: no sites, no nodes.
    pub fn new(policy: FleetPolicy, placement: PlacementPolicy) -> Self {
        Allocator {
            policy,
            placement,
            sites: BTreeMap::new(),
            models: Vec::new(),
            model_ids: BTreeMap::new(),
            model_sizes: BTreeMap::new(),
            nodes: Vec::new(),
            slots: HashMap::new(),
            scopes: Scopes::default(),
            pools: BTreeMap::new(),
            allocations: BTreeMap::new(),
        }
    }

    /// The fleet policy that orders internal and on-demand work.
    pub fn policy(&self) -> FleetPolicy {
        self.policy
    }

    /// The placement policy.
    pub fn placement(&self) -> PlacementPolicy {
        self.placement
    }

    /// Adds a site, or replaces the power envelope of a known one (its nodes stay).
    pub fn add_site(&mut self, s: SiteSpec) {
        match self.sites.get_mut(&s.id) {
            Some(site) => site.spec = s,
            None => {
                self.sites.insert(
                    s.id,
                    SiteState {
                        spec: s,
                        it_watts: 0,
                    },
                );
            }
        }
    }

    /// Sets a site's power limit (facility watts). Unknown sites are ignored. Lowering the
    /// limit below what the site draws keeps running work; it only refuses new placements.
    pub fn set_power_limit(&mut self, site: SiteId, watts: i64) {
        if let Some(s) = self.sites.get_mut(&site) {
            s.spec.power_limit_watts = watts;
        }
    }

    /// Adds a node: schedulable, every GPU healthy, in no pool.
    pub fn add_node(&mut self, n: NodeSpec) -> Result<(), String> {
        if !self.sites.contains_key(&n.site) {
            return Err(format!("node {}: site {} is not known", n.id, n.site));
        }
        if self.slots.contains_key(&n.id) {
            return Err(format!("node {} is already known", n.id));
        }
        if n.gpus == 0 || n.gpus > 64 {
            return Err(format!(
                "node {}: a node has 1 to 64 GPUs, not {}",
                n.id, n.gpus
            ));
        }
        if n.peak_watts < n.idle_watts {
            return Err(format!(
                "node {}: peak power {} W is below idle power {} W",
                n.id, n.peak_watts, n.idle_watts
            ));
        }
        if n.gpu_model.is_empty() {
            return Err(format!("node {}: the GPU model is empty", n.id));
        }
        let mut blocks = [None; 3];
        let mut last_depth = None;
        for &(kind, id) in &n.blocks {
            let depth = kind.depth();
            if last_depth.is_some_and(|d| d >= depth) {
                return Err(format!(
                    "node {}: blocks must be listed outermost first, each kind at most once",
                    n.id
                ));
            }
            last_depth = Some(depth);
            blocks[usize::from(depth)] = Some(id);
        }
        let model = self.intern(&n.gpu_model);
        let node = Node {
            id: n.id,
            site: n.site,
            model,
            gpus: n.gpus,
            blocks,
            idle_watts: n.idle_watts,
            peak_watts: n.peak_watts,
            shareable: n.shareable,
            pool: None,
            schedulable: true,
            unhealthy: 0,
            used: 0,
            allocs: Vec::new(),
        };
        *self
            .model_sizes
            .entry(model)
            .or_default()
            .entry(n.gpus)
            .or_default() += 1;
        if let Some(site) = self.sites.get_mut(&n.site) {
            site.it_watts += node.draw_watts();
        }
        apply(&mut self.scopes, &node, true, self.placement);
        self.slots.insert(n.id, self.nodes.len());
        self.nodes.push(node);
        Ok(())
    }

    fn intern(&mut self, model: &str) -> u32 {
        if let Some(&m) = self.model_ids.get(model) {
            return m;
        }
        let m = u32::try_from(self.models.len()).unwrap_or(u32::MAX);
        self.models.push(model.to_string());
        self.model_ids.insert(model.to_string(), m);
        m
    }

    /// Removes a node that holds no allocation.
    pub fn remove_node(&mut self, id: NodeId) -> Result<(), String> {
        let slot = self.slot(id)?;
        let node = &self.nodes[slot];
        if let Some(&(inst, _)) = node.allocs.first() {
            return Err(format!(
                "node {id} holds {} allocation(s) (e.g. instance {inst}); release them first",
                node.allocs.len()
            ));
        }
        apply(&mut self.scopes, node, false, self.placement);
        if let Some(site) = self.sites.get_mut(&node.site) {
            site.it_watts -= node.draw_watts();
        }
        if let Some(sizes) = self.model_sizes.get_mut(&node.model) {
            if let Some(c) = sizes.get_mut(&node.gpus) {
                *c -= 1;
                if *c == 0 {
                    sizes.remove(&node.gpus);
                }
            }
            if sizes.is_empty() {
                self.model_sizes.remove(&node.model);
            }
        }
        if let Some(pool) = node.pool {
            self.unpin(pool);
        }
        self.slots.remove(&id);
        self.nodes.swap_remove(slot);
        if let Some(moved) = self.nodes.get(slot) {
            self.slots.insert(moved.id, slot);
        }
        Ok(())
    }

    fn unpin(&mut self, pool: ContractId) {
        if let Some(c) = self.pools.get_mut(&pool) {
            *c -= 1;
            if *c == 0 {
                self.pools.remove(&pool);
            }
        }
    }

    fn slot(&self, id: NodeId) -> Result<usize, String> {
        self.slots
            .get(&id)
            .copied()
            .ok_or_else(|| format!("node {id} is not known"))
    }

    /// Changes one node through `f`, keeping the indexes in step. Power is the caller's.
    fn update_node(&mut self, slot: usize, f: impl FnOnce(&mut Node)) {
        apply(&mut self.scopes, &self.nodes[slot], false, self.placement);
        f(&mut self.nodes[slot]);
        apply(&mut self.scopes, &self.nodes[slot], true, self.placement);
    }

    /// Cordons (`false`) or uncordons (`true`) a node: an unschedulable node takes no new
    /// placement; what runs there stays. Unknown nodes are ignored.
    pub fn set_schedulable(&mut self, node: NodeId, yes: bool) {
        if let Ok(slot) = self.slot(node)
            && self.nodes[slot].schedulable != yes
        {
            self.update_node(slot, |n| n.schedulable = yes);
        }
    }

    /// Marks one GPU healthy or not. An unhealthy GPU is never placed on (an allocation
    /// already holding it keeps it). Unknown nodes and indexes are ignored.
    pub fn set_gpu_healthy(&mut self, node: NodeId, index: u32, yes: bool) {
        let Ok(slot) = self.slot(node) else {
            return;
        };
        if index >= self.nodes[slot].gpus {
            return;
        }
        let bit = 1u64 << index;
        let unhealthy = if yes {
            self.nodes[slot].unhealthy & !bit
        } else {
            self.nodes[slot].unhealthy | bit
        };
        if unhealthy != self.nodes[slot].unhealthy {
            self.update_node(slot, |n| n.unhealthy = unhealthy);
        }
    }

    /// Pins a whole node to a contract's reserved pool, or unpins it (`None`). Refused while
    /// the node holds work that could not run under the new pool: spot work may stay (it
    /// borrows), reserved work only in its own pool, other classes only on unpinned nodes.
    pub fn set_pool(&mut self, node: NodeId, pool: Option<ContractId>) -> Result<(), String> {
        let slot = self.slot(node)?;
        let old = self.nodes[slot].pool;
        if old == pool {
            return Ok(());
        }
        for (inst, _) in &self.nodes[slot].allocs {
            let Some(a) = self.allocations.get(inst) else {
                continue;
            };
            if a.class != Class::Spot && a.pool != pool {
                let target = pool.map_or("no pool".to_string(), |p| format!("the pool of {p}"));
                return Err(format!(
                    "node {node} holds {} instance {inst}, which cannot run in {target}; \
                     release or move it first",
                    a.class
                ));
            }
        }
        let old_key = self.nodes[slot].scope_key();
        let refs: Vec<(Class, InstanceId)> = self.nodes[slot]
            .allocs
            .iter()
            .filter_map(|(i, _)| self.allocations.get(i).map(|a| (a.class, *i)))
            .collect();
        for &(class, inst) in &refs {
            self.scopes.alloc_ref(&old_key, class, inst, false);
        }
        self.update_node(slot, |n| n.pool = pool);
        let new_key = self.nodes[slot].scope_key();
        for &(class, inst) in &refs {
            self.scopes.alloc_ref(&new_key, class, inst, true);
        }
        self.scopes.prune(&old_key);
        if let Some(p) = old {
            self.unpin(p);
        }
        if let Some(p) = pool {
            *self.pools.entry(p).or_default() += 1;
        }
        Ok(())
    }

    /// Decides where `req` goes and records it.
    pub fn place(&mut self, req: &Request) -> Result<Allocation, Refusal> {
        let decision = self.decide(req)?;
        Ok(self.commit(req, &decision))
    }

    /// Decides where `req` would go, without recording anything.
    pub fn try_place(&self, req: &Request) -> Result<Allocation, Refusal> {
        let decision = self.decide(req)?;
        Ok(self.allocation_of(req, &decision))
    }

    fn allocation_of(&self, req: &Request, d: &Decision) -> Allocation {
        let mut gpus: Vec<(NodeId, Vec<u32>)> = d
            .picks
            .iter()
            .map(|&(slot, mask)| (self.nodes[slot].id, indexes_of(mask)))
            .collect();
        gpus.sort();
        Allocation {
            id: req.id,
            tenant: req.tenant,
            class: req.class,
            gpu_model: req.gpu_model.clone(),
            shape: req.shape,
            site: d.site,
            pool: req.pool,
            gpus,
        }
    }

    fn commit(&mut self, req: &Request, d: &Decision) -> Allocation {
        let a = self.allocation_of(req, d);
        self.hold(&a, &d.picks);
        self.allocations.insert(a.id, a.clone());
        a
    }

    /// Marks GPUs as held by `a` (not yet in `allocations`), with indexes and power.
    fn hold(&mut self, a: &Allocation, picks: &[(usize, u64)]) {
        for &(slot, mask) in picks {
            let before = self.nodes[slot].draw_watts();
            let (id, tenant) = (a.id, a.tenant);
            self.update_node(slot, |n| {
                n.used |= mask;
                let at = n.allocs.partition_point(|&(i, _)| i < id);
                n.allocs.insert(at, (id, tenant));
            });
            let node = &self.nodes[slot];
            let after = node.draw_watts();
            if let Some(site) = self.sites.get_mut(&node.site) {
                site.it_watts += after - before;
            }
            let key = node.scope_key();
            self.scopes.alloc_ref(&key, a.class, a.id, true);
        }
    }

    /// Releases an instance's GPUs; `None` when it holds none.
    pub fn release(&mut self, id: InstanceId) -> Option<Allocation> {
        let a = self.allocations.remove(&id)?;
        for (node_id, indexes) in &a.gpus {
            let Some(&slot) = self.slots.get(node_id) else {
                continue;
            };
            let mask = mask_of(indexes);
            let before = self.nodes[slot].draw_watts();
            let key = self.nodes[slot].scope_key();
            self.scopes.alloc_ref(&key, a.class, a.id, false);
            self.update_node(slot, |n| {
                n.used &= !mask;
                n.allocs.retain(|&(i, _)| i != id);
            });
            let node = &self.nodes[slot];
            let after = node.draw_watts();
            if let Some(site) = self.sites.get_mut(&node.site) {
                site.it_watts += after - before;
            }
        }
        Some(a)
    }

    /// Records an allocation read back from the database: exactly these GPUs. Refused when
    /// it does not fit the fleet (unknown node, wrong model or site, misaligned group, a
    /// class in the wrong pool, two tenants on an unshared node) or when a GPU is already
    /// held. Health, cordons and the power limit are not checked: work that runs stays.
    pub fn restore(&mut self, a: Allocation) -> Result<(), String> {
        let (a, picks) = self.check_restore(a)?;
        self.hold(&a, &picks);
        self.allocations.insert(a.id, a);
        Ok(())
    }

    fn check_restore(&self, mut a: Allocation) -> Result<(Allocation, Vec<(usize, u64)>), String> {
        let id = a.id;
        if self.allocations.contains_key(&id) {
            return Err(format!("instance {id} already has an allocation"));
        }
        if a.gpus.is_empty() {
            return Err(format!("instance {id}: the allocation holds no GPU"));
        }
        let model =
            self.model_ids.get(&a.gpu_model).copied().ok_or_else(|| {
                format!("instance {id}: GPU model '{}' is not known", a.gpu_model)
            })?;
        for (_, indexes) in &mut a.gpus {
            indexes.sort_unstable();
        }
        a.gpus.sort();
        match (a.class, a.pool) {
            (Class::Reserved, None) => {
                return Err(format!("instance {id}: a reserved allocation needs a pool"));
            }
            (Class::Reserved, Some(_)) | (_, None) => {}
            (class, Some(_)) => {
                return Err(format!("instance {id}: a {class} allocation has no pool"));
            }
        }
        let mut picks = Vec::with_capacity(a.gpus.len());
        for (i, (node_id, indexes)) in a.gpus.iter().enumerate() {
            if i > 0 && a.gpus[i - 1].0 == *node_id {
                return Err(format!("instance {id}: node {node_id} is listed twice"));
            }
            let slot = self
                .slot(*node_id)
                .map_err(|e| format!("instance {id}: {e}"))?;
            let node = &self.nodes[slot];
            if node.site != a.site || node.model != model {
                return Err(format!(
                    "instance {id}: node {node_id} is not a {} node of site {}",
                    a.gpu_model, a.site
                ));
            }
            if indexes.is_empty()
                || indexes.windows(2).any(|w| w[0] == w[1])
                || indexes.iter().any(|&g| g >= node.gpus)
            {
                return Err(format!(
                    "instance {id}: GPU indexes {indexes:?} do not fit node {node_id} ({} GPUs)",
                    node.gpus
                ));
            }
            let mask = mask_of(indexes);
            if let Some(taken) = indexes.iter().find(|&&g| node.used & (1u64 << g) != 0) {
                let holder = node
                    .allocs
                    .iter()
                    .find(|(other, _)| {
                        self.allocations.get(other).is_some_and(|o| {
                            o.gpus
                                .iter()
                                .any(|(n, g)| n == node_id && g.contains(taken))
                        })
                    })
                    .map_or("another instance".to_string(), |(o, _)| o.to_string());
                return Err(format!(
                    "instance {id}: GPU {taken} of node {node_id} is already held by {holder}"
                ));
            }
            let pool_ok = match a.class {
                Class::Spot => true,
                _ => node.pool == a.pool,
            };
            if !pool_ok {
                return Err(format!(
                    "instance {id}: node {node_id} is {}, which a {} allocation cannot use",
                    node.pool
                        .map_or("in no pool".to_string(), |p| format!("in the pool of {p}")),
                    a.class
                ));
            }
            if !node.shareable && node.allocs.iter().any(|&(_, t)| t != a.tenant) {
                return Err(format!(
                    "instance {id}: node {node_id} is not shareable and holds another tenant's work"
                ));
            }
            picks.push((slot, mask));
        }
        match a.shape {
            Shape::Gpus { gpus } => {
                let ok = SHAPES.contains(&gpus)
                    && picks.len() == 1
                    && is_aligned_group(picks[0].1, self.nodes[picks[0].0].gpus, gpus);
                if !ok {
                    return Err(format!(
                        "instance {id}: {gpus} GPUs must be one aligned group in one node"
                    ));
                }
            }
            Shape::Nodes { count, .. } => {
                let whole = picks
                    .iter()
                    .all(|&(slot, mask)| mask == self.nodes[slot].full());
                if picks.len() != usize_of(count) || !whole {
                    return Err(format!(
                        "instance {id}: a gang of {count} nodes holds every GPU of {count} nodes"
                    ));
                }
                // Topology is not re-checked: a node moved between blocks keeps its work.
            }
        }
        Ok((a, picks))
    }

    /// The allocation of an instance.
    pub fn allocation(&self, id: InstanceId) -> Option<&Allocation> {
        self.allocations.get(&id)
    }

    /// Every allocation, by instance id.
    pub fn allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.allocations.values()
    }

    /// Healthy, schedulable, unallocated GPUs of a model, in one site or all of them.
    pub fn free_gpus(&self, site: Option<SiteId>, model: &str) -> u64 {
        let Some(&m) = self.model_ids.get(model) else {
            return 0;
        };
        self.all_buckets(m, site).map(|(_, b)| b.free_gpus).sum()
    }

    /// Every bucket of a model, every pool included.
    fn all_buckets(
        &self,
        model: u32,
        site: Option<SiteId>,
    ) -> impl Iterator<Item = (ScopeKey, &Bucket)> {
        let mut pools = vec![None];
        pools.extend(self.scopes.pools_of(model));
        pools
            .into_iter()
            .flat_map(move |p| self.scopes.buckets(model, p, site))
    }

    /// How fragmented the free GPUs of a model in a site are.
    pub fn fragmentation(&self, site: SiteId, model: &str) -> Fragmentation {
        let mut free = 0u64;
        let mut in_whole = 0u64;
        let mut largest = [0u32; 4];
        if let Some(&m) = self.model_ids.get(model) {
            for (key, b) in self.all_buckets(m, Some(site)) {
                free += b.free_gpus;
                in_whole += u64::from(b.whole_free_nodes()) * u64::from(key.gpus);
                for (l, slot) in largest.iter_mut().enumerate() {
                    *slot = (*slot).max(b.levels[l].largest());
                }
            }
        }
        let stranded = free.saturating_sub(in_whole);
        Fragmentation {
            free_gpus: free,
            free_gpus_not_in_full_free_node: stranded,
            stranded_share: if free == 0 {
                0.0
            } else {
                stranded as f64 / free as f64
            },
            largest_gang_by_level: GangLevel::ALL
                .iter()
                .map(|&l| (l, largest[level_index(l)]))
                .collect(),
        }
    }

    /// A site's power: IT and facility watts drawn, and its limit. Zero for unknown sites.
    pub fn site_power(&self, site: SiteId) -> PowerUse {
        self.sites
            .get(&site)
            .map_or_else(PowerUse::default, |s| PowerUse {
                it_watts: s.it_watts,
                allocated_watts: facility_watts(s.it_watts, s.spec.pue_milli),
                limit_watts: s.spec.power_limit_watts,
            })
    }

    /// Checks a request and says which scopes it may use.
    pub(crate) fn scope_of(&self, req: &Request) -> Result<Scope, Refusal> {
        if self.allocations.contains_key(&req.id) {
            return Err(Refusal::Duplicate { id: req.id });
        }
        let model = self
            .model_ids
            .get(&req.gpu_model)
            .copied()
            .filter(|m| self.model_sizes.contains_key(m))
            .ok_or_else(|| Refusal::UnknownModel {
                model: req.gpu_model.clone(),
            })?;
        let bad = |reason: String| Err(Refusal::BadShape { reason });
        match req.shape {
            Shape::Gpus { gpus } => {
                if !SHAPES.contains(&gpus) {
                    return bad(format!(
                        "a shape inside one node takes 1, 2, 4 or 8 GPUs, not {gpus}"
                    ));
                }
                let largest = self
                    .model_sizes
                    .get(&model)
                    .and_then(|s| s.last_key_value())
                    .map_or(0, |(&g, _)| g);
                if gpus > largest {
                    return bad(format!(
                        "{} nodes have at most {largest} GPUs; {gpus} GPUs do not fit one node",
                        req.gpu_model
                    ));
                }
            }
            Shape::Nodes { count, .. } => {
                if count == 0 {
                    return bad("a gang needs at least one node".to_string());
                }
            }
        }
        let tiers = match (req.class, req.pool) {
            (Class::Reserved, None) => {
                return bad(
                    "a reserved request runs in its contract's pool; name the contract".to_string(),
                );
            }
            (Class::Reserved, Some(pool)) => {
                if !self.pools.contains_key(&pool) {
                    return Err(Refusal::UnknownPool { pool });
                }
                vec![vec![Some(pool)]]
            }
            (class, Some(_)) => {
                return bad(format!(
                    "only reserved requests run in a contract's pool, not {class} ones"
                ));
            }
            (Class::Spot, None) => vec![vec![None], self.scopes.pools_of(model)],
            (_, None) => vec![vec![None]],
        };
        if let Some(site) = req.site
            && !self.sites.contains_key(&site)
        {
            return Err(Refusal::UnknownSite { site });
        }
        Ok(Scope { model, tiers })
    }

    /// Every bucket a request may use, tiers flattened.
    pub(crate) fn scope_buckets<'a>(
        &'a self,
        req: &'a Request,
        scope: &'a Scope,
    ) -> impl Iterator<Item = (ScopeKey, &'a Bucket)> + 'a {
        scope
            .tiers
            .iter()
            .flatten()
            .flat_map(move |&p| self.scopes.buckets(scope.model, p, req.site))
    }

    fn decide(&self, req: &Request) -> Result<Decision, Refusal> {
        let scope = self.scope_of(req)?;
        match req.shape {
            Shape::Gpus { gpus } => self.decide_gpus(req, &scope, gpus),
            Shape::Nodes { count, level } => self.decide_nodes(req, &scope, count, level),
        }
    }

    /// Whether `delta_it` more IT watts fit under the site's limit; the refusal if not.
    pub(crate) fn power_check(&self, site: SiteId, delta_it: i64) -> Result<(), Refusal> {
        let Some(s) = self.sites.get(&site) else {
            return Ok(());
        };
        let now = facility_watts(s.it_watts, s.spec.pue_milli);
        let after = facility_watts(s.it_watts + delta_it, s.spec.pue_milli);
        if after <= s.spec.power_limit_watts {
            Ok(())
        } else {
            Err(Refusal::PowerLimit {
                site,
                needed_watts: after - now,
                limit_watts: s.spec.power_limit_watts,
                allocated_watts: now,
            })
        }
    }

    fn decide_gpus(&self, req: &Request, scope: &Scope, k: u32) -> Result<Decision, Refusal> {
        let ki = SHAPES.iter().position(|&s| s == k).unwrap_or(0);
        let worst = self.placement == PlacementPolicy::WorstFit;
        let mut power_refusal = None;
        for tier in &scope.tiers {
            let mut candidates: Vec<(Rank, NodeId)> = Vec::new();
            for &pool in tier {
                for (key, b) in self.scopes.buckets(scope.model, pool, req.site) {
                    if key.gpus < k {
                        continue;
                    }
                    let sets = [Some(&b.open[ki]), b.owned.get(&req.tenant).map(|s| &s[ki])];
                    let partial = sets
                        .iter()
                        .flatten()
                        .filter_map(|s| if worst { s.last() } else { s.first() })
                        .copied();
                    let partial = if worst { partial.max() } else { partial.min() };
                    if let Some((free, score, id)) = partial {
                        let rank = match self.placement {
                            PlacementPolicy::BestFit => {
                                (0, u32::from(free), u32::from(score), None, id)
                            }
                            PlacementPolicy::WorstFit => (
                                1,
                                u32::MAX - u32::from(free),
                                u32::MAX - u32::from(score),
                                None,
                                id,
                            ),
                            PlacementPolicy::FirstFit => (0, 0, 0, None, id),
                        };
                        candidates.push((rank, id));
                    }
                    if self.placement == PlacementPolicy::FirstFit {
                        // First-fit keeps whole nodes in the shape sets too.
                        continue;
                    }
                    let level = &b.levels[LEVEL_INNERMOST];
                    let block = if worst {
                        level.by_count.last()
                    } else {
                        level.by_count.first()
                    };
                    if let Some(&(count, block)) = block
                        && let Some(&id) = level.blocks.get(&block).and_then(|s| s.first())
                    {
                        let rank = if worst {
                            (0, u32::MAX - count, 0, block, id)
                        } else {
                            (1, count, 0, block, id)
                        };
                        candidates.push((rank, id));
                    }
                }
            }
            candidates.sort_unstable();
            for (_, id) in candidates {
                let Some(&slot) = self.slots.get(&id) else {
                    continue;
                };
                let node = &self.nodes[slot];
                let Some((offset, _)) = choose_group(node.free(), node.gpus, k, self.placement)
                else {
                    continue;
                };
                let mask = group_mask(offset, k);
                let used = node.used.count_ones();
                let delta = draw_watts(node.idle_watts, node.peak_watts, node.gpus, used + k)
                    - node.draw_watts();
                match self.power_check(node.site, delta) {
                    Ok(()) => {
                        return Ok(Decision {
                            site: node.site,
                            picks: vec![(slot, mask)],
                        });
                    }
                    Err(r) => {
                        power_refusal.get_or_insert(r);
                    }
                }
            }
        }
        if let Some(r) = power_refusal {
            return Err(r);
        }
        let free_gpus = self
            .scope_buckets(req, scope)
            .map(|(_, b)| b.free_gpus)
            .sum();
        let site_words = req.site.map_or(String::new(), |s| format!(" in site {s}"));
        let who = if self
            .scope_buckets(req, scope)
            .any(|(_, b)| !b.owned.is_empty())
        {
            " that this tenant may use (nodes that are not shareable hold other tenants' work)"
        } else {
            ""
        };
        Err(Refusal::NoCapacity {
            free_gpus,
            reason: format!(
                "no {} node{site_words} has {}{who}",
                req.gpu_model,
                group_words(k)
            ),
        })
    }

    fn decide_nodes(
        &self,
        req: &Request,
        scope: &Scope,
        count: u32,
        level: GangLevel,
    ) -> Result<Decision, Refusal> {
        let li = level_index(level);
        let mut power_refusal = None;
        let mut largest = 0u32;
        for tier in &scope.tiers {
            let mut candidates: Vec<((u32, BlockKey), ScopeKey)> = Vec::new();
            for &pool in tier {
                for (key, b) in self.scopes.buckets(scope.model, pool, req.site) {
                    let idx = &b.levels[li];
                    largest = largest.max(idx.largest());
                    let found = match self.placement {
                        PlacementPolicy::BestFit => idx
                            .by_count
                            .range((count, None)..)
                            .next()
                            .map(|&(c, blk)| (c, blk)),
                        PlacementPolicy::WorstFit => idx
                            .by_count
                            .last()
                            .filter(|(c, _)| *c >= count)
                            .map(|&(c, blk)| (u32::MAX - c, blk)),
                        PlacementPolicy::FirstFit => idx
                            .blocks
                            .iter()
                            .find(|(_, s)| s.len() >= usize_of(count))
                            .map(|(&blk, _)| (0, blk)),
                    };
                    if let Some(rank) = found {
                        candidates.push((rank, key));
                    }
                }
            }
            candidates.sort_unstable();
            for ((_, block), key) in candidates {
                let Some(set) = self
                    .scopes
                    .get(&key)
                    .and_then(|b| b.levels[li].blocks.get(&block))
                else {
                    continue;
                };
                let mut picks = Vec::with_capacity(usize_of(count));
                let mut delta = 0i64;
                for id in set.iter().take(usize_of(count)) {
                    if let Some(&slot) = self.slots.get(id) {
                        let n = &self.nodes[slot];
                        delta += i64::from(n.peak_watts) - n.draw_watts();
                        picks.push((slot, full_mask(n.gpus)));
                    }
                }
                match self.power_check(key.site, delta) {
                    Ok(()) => {
                        return Ok(Decision {
                            site: key.site,
                            picks,
                        });
                    }
                    Err(r) => {
                        power_refusal.get_or_insert(r);
                    }
                }
            }
        }
        if let Some(r) = power_refusal {
            return Err(r);
        }
        let free_gpus = self
            .scope_buckets(req, scope)
            .map(|(_, b)| b.free_gpus)
            .sum();
        let reason = match (level, req.site) {
            (GangLevel::Site, Some(site)) => format!(
                "site {site} has {largest} free whole nodes of {}; the gang needs {count}",
                req.gpu_model
            ),
            (GangLevel::Site, None) => format!(
                "no site has {count} free whole nodes of {}; the largest has {largest}",
                req.gpu_model
            ),
            (level, _) => format!(
                "no single {level} has {count} free whole nodes of {}; the largest has {largest}",
                req.gpu_model
            ),
        };
        Err(Refusal::NoCapacity { free_gpus, reason })
    }
}
