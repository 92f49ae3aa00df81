//! Slices of GPUs, CPU and memory, and the fragmentation-aware policy.
//!
//! A GPU is either free, held whole, time-shared by shares (thousandths that sum to at most
//! 1000) or partitioned into MIG instances (memory slices that never overlap, each at a
//! start slice its profile allows, see [`MigFamily::geometry`]). Shares and MIG instances
//! never mix on one GPU. Every instance also takes CPU and memory of its node: in proportion
//! to its part of the node's GPUs unless it asks for other amounts.
//!
//! Requests that fit inside one node can be placed from *groups*: the nodes of a scope whose
//! free state is identical (free CPU, free memory, the multiset of GPU states, who may use
//! them). A decision scores one node per group instead of every node, which is what keeps
//! the fragmentation-aware policy fast on a large, mostly uniform fleet.
//!
//! # Fragmentation
//!
//! The measure follows the idea of FGD (Weng et al., USENIX ATC '23): the free GPU capacity
//! of a node is a *fragment* for a task type when that type could not use it, either
//! because the type cannot run on the node at all (CPU, memory, GPU count or model short:
//! every free GPU counts), or because a GPU's free part is smaller than what the type asks
//! of one GPU. A node's fragmentation is the sum over the workload's recent task types,
//! weighted by how often each was asked for. [`PlacementPolicy::Fragmentation`] places a
//! request where that sum grows least; ties go to the tighter fit, then the lower node id.
//! Unlike the paper, CPU-only task types only count free GPUs of nodes whose CPU they cannot
//! fit (a CPU task never uses a GPU, so a node that can host it wastes nothing for it), and
//! memory bounds fit as CPU does.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use neocloud_types::{MigProfile, NodeId, Shape, TenantId};

use crate::PlacementPolicy;
use crate::allocator::{Allocator, Decision, Scope};
use crate::node::{GpuSlices, Node, choose_group, full_mask, group_mask};
use crate::{Allocation, Refusal, Request};

/// What a request takes of one node's GPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Need {
    /// An aligned group of whole GPUs.
    Whole(u32),
    /// Thousandths of one GPU.
    Share(u16),
    /// A MIG instance.
    Mig(MigProfile),
    /// No GPU.
    Cpu,
}

impl Need {
    /// The need of a shape that fits in one node.
    pub fn of(shape: Shape) -> Option<Need> {
        match shape {
            Shape::Gpus { gpus } => Some(Need::Whole(gpus)),
            Shape::Share { milli } => u16::try_from(milli).ok().map(Need::Share),
            Shape::Mig { profile } => Some(Need::Mig(profile)),
            Shape::Cpu => Some(Need::Cpu),
            Shape::Nodes { .. } => None,
        }
    }

    /// Thousandths of a GPU-slot (of the node's GPUs) the need stands for, for proportional
    /// CPU and memory.
    fn gpu_milli(self) -> u64 {
        match self {
            Need::Whole(k) => u64::from(k) * 1000,
            Need::Share(m) => u64::from(m),
            Need::Mig(p) => u64::from(p.compute_slices()) * 1000 / 7,
            Need::Cpu => 0,
        }
    }
}

/// The CPU thousandths and memory MiB a request takes on `node`: what it asks for, or its
/// part of the node's GPUs times the node's CPU and memory.
pub(crate) fn host_need(node: &Node, req: &Request) -> (u64, u64) {
    let Some(need) = Need::of(req.shape) else {
        return (node.cpu_milli, node.mem_mib);
    };
    let part = |total: u64| -> u64 {
        let den = u128::from(node.gpus.max(1)) * 1000;
        u64::try_from(u128::from(total) * u128::from(need.gpu_milli()) / den).unwrap_or(u64::MAX)
    };
    (
        req.cpu_milli.unwrap_or_else(|| part(node.cpu_milli)),
        req.memory_mib.unwrap_or_else(|| part(node.mem_mib)),
    )
}

/// The memory-slice mask of a MIG instance of `slices` slices at `start`.
pub(crate) fn mig_mask(start: u32, slices: u32) -> u8 {
    u8::try_from(full_mask(slices) << start & 0xff).unwrap_or(0)
}

/// Whether the group index keeps `node`: nodes that take slices or CPU-only work, and every
/// node under the fragmentation policy.
pub(crate) fn grouped(node: &Node, placement: PlacementPolicy) -> bool {
    node.sharing.slices || node.sharing.cpu_only || placement == PlacementPolicy::Fragmentation
}

/// One GPU's state in a group key: (free thousandths, MIG slices in use, the tenant that
/// alone may add slices). A free GPU is (1000, 0, None).
pub(crate) type GpuKey = (u16, u8, Option<TenantId>);

/// The free state of a node: nodes with equal keys in one scope are interchangeable for
/// any request that fits in one node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct GroupKey {
    /// The only tenant that may place here (a node that is not shareable and holds work).
    pub owner: Option<TenantId>,
    pub sharing: crate::Sharing,
    pub cpu_free: u64,
    pub mem_free: u64,
    /// Healthy GPUs' states, largest free first.
    pub gpus: Vec<GpuKey>,
}

impl Node {
    /// Whether a tenant other than the slices' own may add slices to a GPU of this node.
    fn open_gpus(&self) -> bool {
        self.shareable && self.sharing.tenants_per_gpu
    }

    /// The state of GPU `g` as a group key sees it.
    fn gpu_key(&self, g: u32) -> GpuKey {
        if self.used & (1u64 << g) == 0 {
            return (1000, 0, None);
        }
        let s = self.slices_of(g);
        if s.is_empty() {
            return (0, 0xff, None); // held whole
        }
        let tenant = if self.open_gpus() { None } else { s.tenant };
        if s.mig != 0 {
            (0, s.mig, tenant)
        } else {
            (1000u16.saturating_sub(s.milli), 0, tenant)
        }
    }

    /// The node's group key.
    pub(crate) fn group_key(&self) -> GroupKey {
        let mut gpus: Vec<GpuKey> = (0..self.gpus)
            .filter(|g| self.unhealthy & (1u64 << g) == 0)
            .map(|g| self.gpu_key(g))
            .collect();
        gpus.sort_unstable_by(|a, b| b.cmp(a));
        GroupKey {
            owner: self.owner(),
            sharing: self.sharing,
            cpu_free: self.cpu_free(),
            mem_free: self.mem_free(),
            gpus,
        }
    }

    /// Records `a`, which takes `mask` here (the GPUs of a whole shape, the one GPU of a
    /// slice, nothing for CPU-only work).
    /// What `a` holds of this node's CPU and memory: a gang holds all of both.
    pub(crate) fn host_of(&self, a: &Allocation) -> (u64, u64) {
        match a.shape {
            Shape::Nodes { .. } => (self.cpu_milli, self.mem_mib),
            _ => (a.cpu_milli, a.memory_mib),
        }
    }

    pub(crate) fn take(&mut self, a: &Allocation, mask: u64) {
        let (cpu, mem) = self.host_of(a);
        self.cpu_used = self.cpu_used.saturating_add(cpu);
        self.mem_used = self.mem_used.saturating_add(mem);
        if let Some((g, milli, mig)) = self.slice_of(a, mask) {
            if self.slices.is_empty() {
                self.slices = vec![GpuSlices::default(); usize::try_from(self.gpus).unwrap_or(0)];
            }
            if let Some(s) = usize::try_from(g).ok().and_then(|g| self.slices.get_mut(g)) {
                s.milli = s.milli.saturating_add(milli);
                s.mig |= mig;
                s.holders += 1;
                if s.tenant.is_none() {
                    s.tenant = Some(a.tenant);
                }
            }
        }
        self.used |= mask;
        let at = self.allocs.partition_point(|&(i, _)| i < a.id);
        self.allocs.insert(at, (a.id, a.tenant));
    }

    /// Undoes [`Node::take`].
    pub(crate) fn give_back(&mut self, a: &Allocation, mask: u64) {
        let (cpu, mem) = self.host_of(a);
        self.cpu_used = self.cpu_used.saturating_sub(cpu);
        self.mem_used = self.mem_used.saturating_sub(mem);
        if let Some((g, milli, mig)) = self.slice_of(a, mask) {
            let idx = usize::try_from(g).unwrap_or(usize::MAX);
            if let Some(s) = self.slices.get_mut(idx) {
                s.milli = s.milli.saturating_sub(milli);
                s.mig &= !mig;
                s.holders = s.holders.saturating_sub(1);
                if s.holders == 0 {
                    *s = GpuSlices::default();
                    self.used &= !mask;
                }
                // Otherwise the tenant stays: without `tenants_per_gpu` every holder is that
                // tenant, and with it the tenant is not looked at.
            }
            if self.slices.iter().all(GpuSlices::is_empty) {
                self.slices.clear();
            }
        } else {
            self.used &= !mask;
        }
        self.allocs.retain(|&(i, _)| i != a.id);
    }

    /// (GPU, thousandths, MIG mask) of a slice allocation on this node.
    fn slice_of(&self, a: &Allocation, mask: u64) -> Option<(u32, u16, u8)> {
        match a.shape {
            Shape::Share { milli } => Some((
                mask.trailing_zeros(),
                u16::try_from(milli).unwrap_or(1000),
                0,
            )),
            Shape::Mig { profile } => {
                let geo = self.mig.and_then(|f| f.geometry(profile))?;
                let start = a.mig_start?;
                Some((mask.trailing_zeros(), 0, mig_mask(start, geo.slices)))
            }
            _ => None,
        }
    }
}

/// A place for a request inside one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pick {
    /// GPUs taken (a whole group, or the slice's GPU).
    pub mask: u64,
    pub mig_start: Option<u32>,
    /// Free thousandths of the node's GPUs after the placement.
    gpu_free_after: u64,
}

/// A node's free state reduced to what the fragmentation measure reads.
#[derive(Clone, Debug, PartialEq, Eq)]
struct View {
    cpu_free: u64,
    mem_free: u64,
    /// Per healthy GPU: (free thousandths usable by shares, free MIG slices mask or None
    /// when the GPU takes no MIG instance).
    gpus: Vec<(u16, Option<u8>)>,
}

/// A task type of the workload, as the fragmentation measure weighs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct TaskType {
    pub model: u32,
    pub need: Need,
    pub cpu_milli: u64,
    pub mem_mib: u64,
}

/// The recent requests' task types, and the distribution the policy scores against.
#[derive(Clone, Debug, Default)]
pub(crate) struct Workload {
    recent: VecDeque<TaskType>,
    counts: BTreeMap<TaskType, u64>,
    /// The types the measure uses, with weights; refreshed every [`REFRESH`] requests.
    pub types: Vec<(TaskType, u64)>,
    since: u32,
}

/// Requests remembered.
const WINDOW: usize = 4096;
/// Requests between refreshes of the distribution.
const REFRESH: u32 = 64;
/// Most task types the measure weighs: the most frequent, up to 95% of the requests.
const MAX_TYPES: usize = 48;

impl Workload {
    /// Remembers one request.
    pub fn record(&mut self, t: TaskType) {
        self.recent.push_back(t);
        *self.counts.entry(t).or_default() += 1;
        if self.recent.len() > WINDOW
            && let Some(old) = self.recent.pop_front()
            && let Some(c) = self.counts.get_mut(&old)
        {
            *c -= 1;
            if *c == 0 {
                self.counts.remove(&old);
            }
        }
        self.since += 1;
        if self.since >= REFRESH || self.types.is_empty() {
            self.since = 0;
            self.refresh();
        }
    }

    fn refresh(&mut self) {
        let mut all: Vec<(TaskType, u64)> = self.counts.iter().map(|(t, c)| (*t, *c)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let total: u64 = all.iter().map(|(_, c)| c).sum();
        let mut kept = 0u64;
        self.types.clear();
        for (t, c) in all {
            if self.types.len() >= MAX_TYPES || (kept * 100 >= total * 95 && kept > 0) {
                break;
            }
            kept += c;
            self.types.push((t, c));
        }
    }
}

impl Allocator {
    /// The task type of a request, for the workload.
    pub(crate) fn task_type(&self, req: &Request) -> Option<TaskType> {
        let need = Need::of(req.shape)?;
        let model = if req.gpu_model.is_empty() {
            u32::MAX
        } else {
            *self.model_ids.get(&req.gpu_model)?
        };
        Some(TaskType {
            model,
            need,
            cpu_milli: req.cpu_milli.unwrap_or(0),
            mem_mib: req.memory_mib.unwrap_or(0),
        })
    }

    /// Places a request that fits in one node from the group index.
    pub(crate) fn decide_grouped(
        &self,
        req: &Request,
        scope: &Scope,
        need: Need,
    ) -> Result<Decision, Refusal> {
        let mut power_refusal = None;
        let mut any_group = false;
        for &tier in scope.tiers.iter().flatten() {
            let mut candidates: Vec<((u64, u64, u64, NodeId), usize, Pick)> = Vec::new();
            for &model in &scope.models {
                for (_, b) in self.scopes.buckets(model, tier, req.site) {
                    for (key, nodes) in &b.groups {
                        any_group = true;
                        if key.owner.is_some_and(|t| t != req.tenant) {
                            continue;
                        }
                        let Some(id) = nodes.first() else { continue };
                        let Some(&slot) = self.slots.get(id) else {
                            continue;
                        };
                        let node = &self.nodes[slot];
                        if let Some((rank, pick)) = self.score_node(req, node, need) {
                            candidates.push((rank, slot, pick));
                        }
                    }
                }
            }
            if candidates.is_empty() {
                continue;
            }
            // The best first; the rest only if the best breaks the power limit.
            let best = candidates
                .iter()
                .enumerate()
                .min_by_key(|(_, c)| c.0)
                .map_or(0, |(i, _)| i);
            candidates.swap(0, best);
            candidates[1..].sort_unstable_by_key(|c| c.0);
            for (_, slot, pick) in candidates {
                let node = &self.nodes[slot];
                let fresh = pick.mask & !node.used;
                let busy = node.span_watts() * i64::from(fresh.count_ones());
                match self.power_check(node.site, node.gpus, busy) {
                    Ok(()) => {
                        let (cpu, mem) = host_need(node, req);
                        return Ok(Decision {
                            site: node.site,
                            picks: vec![(slot, pick.mask)],
                            host: (cpu, mem),
                            mig_start: pick.mig_start,
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
        let what = match need {
            Need::Whole(k) => format!("{k} free GPU(s) with the CPU and memory asked for"),
            Need::Share(m) => format!(
                "a GPU with {m}/1000 free that this tenant may share, and the CPU and memory asked for"
            ),
            Need::Mig(p) => format!("room for a MIG {p} instance and the CPU and memory asked for"),
            Need::Cpu => {
                "the free CPU and memory asked for on a node that takes CPU-only work".to_string()
            }
        };
        let model = if req.gpu_model.is_empty() {
            "GPU".to_string()
        } else {
            req.gpu_model.clone()
        };
        let site = req.site.map_or(String::new(), |s| format!(" in site {s}"));
        let reason = if any_group {
            format!("no {model} node{site} has {what}")
        } else {
            match need {
                Need::Cpu => format!("no {model} node{site} takes CPU-only instances"),
                _ => format!("no {model} node{site} takes fractional or MIG instances"),
            }
        };
        let free_gpus = scope
            .models
            .iter()
            .flat_map(|&m| {
                scope
                    .tiers
                    .iter()
                    .flatten()
                    .flat_map(move |&t| self.scopes.buckets(m, t, req.site))
            })
            .map(|(_, b)| b.free_gpus)
            .sum();
        Err(Refusal::NoCapacity { free_gpus, reason })
    }

    /// Where `need` goes inside `node` under the placement policy, with the node's rank
    /// (smaller is better); `None` when it does not fit.
    fn score_node(
        &self,
        req: &Request,
        node: &Node,
        need: Need,
    ) -> Option<((u64, u64, u64, NodeId), Pick)> {
        if !node.schedulable {
            return None;
        }
        match need {
            Need::Cpu if !node.sharing.cpu_only => return None,
            Need::Share(_) | Need::Mig(_) if !node.sharing.slices => return None,
            _ => {}
        }
        let (cpu, mem) = host_need(node, req);
        if !node.host_fits(cpu, mem) {
            return None;
        }
        let policy = self.placement;
        let picks = self.picks_in(req, node, need);
        if picks.is_empty() {
            return None;
        }
        let cpu_after = node.cpu_free().saturating_sub(cpu);
        let fit = |p: &Pick| (p.gpu_free_after, cpu_after);
        let (best, frag) = match policy {
            PlacementPolicy::FirstFit => (picks[0], 0),
            PlacementPolicy::BestFit => (*picks.iter().min_by_key(|p| fit(p))?, 0),
            PlacementPolicy::WorstFit => (*picks.iter().max_by_key(|p| fit(p))?, 0),
            PlacementPolicy::Fragmentation => {
                let before = self.node_frag(&self.view(node, None, 0, 0), node);
                let mut best: Option<(u64, (u64, u64), Pick)> = None;
                for p in &picks {
                    let after = self.node_frag(&self.view(node, Some((need, p)), cpu, mem), node);
                    let key = (after.saturating_sub(before), fit(p));
                    if best.as_ref().is_none_or(|(d, f, _)| key < (*d, *f)) {
                        best = Some((key.0, key.1, *p));
                    }
                }
                let (d, _, p) = best?;
                (p, d)
            }
        };
        let rank = match policy {
            PlacementPolicy::FirstFit => (0, 0, 0, node.id),
            PlacementPolicy::WorstFit => (
                0,
                u64::MAX - best.gpu_free_after,
                u64::MAX - cpu_after,
                node.id,
            ),
            _ => (frag, best.gpu_free_after, cpu_after, node.id),
        };
        Some((rank, best))
    }

    /// Every distinct place for `need` inside `node`, in GPU index order.
    fn picks_in(&self, req: &Request, node: &Node, need: Need) -> Vec<Pick> {
        let free = node.free();
        let total_free = |taken: u64| -> u64 {
            (0..node.gpus)
                .filter(|g| node.unhealthy & (1u64 << g) == 0)
                .map(|g| u64::from(node.gpu_key(g).0))
                .sum::<u64>()
                .saturating_sub(taken)
        };
        let tenant_ok =
            |s: &GpuSlices| node.open_gpus() || s.tenant.is_none_or(|t| t == req.tenant);
        let mut out = Vec::new();
        match need {
            Need::Whole(k) => {
                let policy = match self.placement {
                    PlacementPolicy::FirstFit => PlacementPolicy::FirstFit,
                    _ => PlacementPolicy::BestFit,
                };
                if let Some((offset, _)) = choose_group(free, node.gpus, k, policy) {
                    out.push(Pick {
                        mask: group_mask(offset, k),
                        mig_start: None,
                        gpu_free_after: total_free(u64::from(k) * 1000),
                    });
                }
            }
            Need::Cpu => out.push(Pick {
                mask: 0,
                mig_start: None,
                gpu_free_after: total_free(0),
            }),
            Need::Share(m) => {
                let mut seen: BTreeSet<u16> = BTreeSet::new();
                for g in 0..node.gpus {
                    let bit = 1u64 << g;
                    if node.unhealthy & bit != 0 {
                        continue;
                    }
                    let s = node.slices_of(g);
                    let room = if node.used & bit == 0 {
                        1000
                    } else if !s.is_empty() && s.mig == 0 && tenant_ok(&s) {
                        1000u16.saturating_sub(s.milli)
                    } else {
                        continue;
                    };
                    if room >= m && seen.insert(room) {
                        out.push(Pick {
                            mask: bit,
                            mig_start: None,
                            gpu_free_after: total_free(u64::from(m)),
                        });
                    }
                }
            }
            Need::Mig(profile) => {
                let Some(geo) = node.mig.and_then(|f| f.geometry(profile)) else {
                    return out;
                };
                let mut seen: BTreeSet<u8> = BTreeSet::new();
                for g in 0..node.gpus {
                    let bit = 1u64 << g;
                    if node.unhealthy & bit != 0 {
                        continue;
                    }
                    let s = node.slices_of(g);
                    let used_slices = if node.used & bit == 0 {
                        0
                    } else if !s.is_empty() && s.milli == 0 && tenant_ok(&s) {
                        s.mig
                    } else {
                        continue;
                    };
                    if !seen.insert(used_slices) {
                        continue;
                    }
                    if let Some(&start) = geo
                        .starts
                        .iter()
                        .find(|&&st| used_slices & mig_mask(st, geo.slices) == 0)
                    {
                        let left = 8 - (used_slices | mig_mask(start, geo.slices)).count_ones();
                        let freed = if node.used & bit == 0 { 1000 } else { 0 };
                        out.push(Pick {
                            mask: bit,
                            mig_start: Some(start),
                            gpu_free_after: total_free(freed) + u64::from(left) * 125,
                        });
                    }
                }
            }
        }
        out
    }

    /// The node's state as the measure reads it, optionally after `need` took `pick`.
    fn view(&self, node: &Node, after: Option<(Need, &Pick)>, cpu: u64, mem: u64) -> View {
        let mut gpus = Vec::with_capacity(usize::try_from(node.gpus).unwrap_or(0));
        for g in 0..node.gpus {
            let bit = 1u64 << g;
            if node.unhealthy & bit != 0 {
                continue;
            }
            let s = node.slices_of(g);
            let (mut milli, mut mig) = if node.used & bit == 0 {
                (1000u16, node.mig.map(|_| 0u8))
            } else if !s.is_empty() && s.mig == 0 {
                (1000u16.saturating_sub(s.milli), None)
            } else if !s.is_empty() {
                (0, Some(s.mig))
            } else {
                (0, None)
            };
            if let Some((need, p)) = after
                && p.mask & bit != 0
            {
                match need {
                    Need::Whole(_) => (milli, mig) = (0, None),
                    Need::Share(m) => (milli, mig) = (milli.saturating_sub(m), None),
                    Need::Mig(profile) => {
                        let slices = node
                            .mig
                            .and_then(|f| f.geometry(profile))
                            .map_or(8, |geo| geo.slices);
                        let m = mig_mask(p.mig_start.unwrap_or(0), slices);
                        (milli, mig) = (0, Some(mig.unwrap_or(0) | m));
                    }
                    Need::Cpu => {}
                }
            }
            gpus.push((milli, mig));
        }
        View {
            cpu_free: node.cpu_free().saturating_sub(cpu),
            mem_free: node.mem_free().saturating_sub(mem),
            gpus,
        }
    }

    /// Σ over the workload's types of weight × the type's fragment of the node.
    fn node_frag(&self, v: &View, node: &Node) -> u64 {
        let model = node.model;
        let free_total: u64 = v
            .gpus
            .iter()
            .map(|&(m, mig)| match mig {
                Some(mask) if m == 0 => u64::from(8 - mask.count_ones()) * 125,
                _ => u64::from(m),
            })
            .sum();
        if free_total == 0 {
            return 0;
        }
        let mut total = 0u64;
        for &(t, w) in &self.workload.types {
            let frag = if (t.model != u32::MAX && t.model != model)
                || v.cpu_free < t.cpu_milli
                || v.mem_free < t.mem_mib
            {
                free_total
            } else {
                match t.need {
                    Need::Cpu => 0,
                    Need::Whole(k) => {
                        let whole = v.gpus.iter().filter(|g| g.0 == 1000).count();
                        if whole < usize::try_from(k).unwrap_or(usize::MAX) {
                            free_total
                        } else {
                            v.gpus
                                .iter()
                                .filter(|g| g.0 < 1000)
                                .map(|&(m, mig)| match mig {
                                    Some(mask) if m == 0 => u64::from(8 - mask.count_ones()) * 125,
                                    _ => u64::from(m),
                                })
                                .sum()
                        }
                    }
                    Need::Share(want) => v
                        .gpus
                        .iter()
                        .map(|&(m, mig)| match mig {
                            Some(mask) if m == 0 => u64::from(8 - mask.count_ones()) * 125,
                            _ if m < want => u64::from(m),
                            _ => 0,
                        })
                        .sum(),
                    Need::Mig(profile) => v
                        .gpus
                        .iter()
                        .map(|&(m, mig)| {
                            let fits = mig.is_some_and(|mask| {
                                node.mig
                                    .and_then(|f| f.geometry(profile))
                                    .is_some_and(|geo| {
                                        geo.starts
                                            .iter()
                                            .any(|&s| mask & mig_mask(s, geo.slices) == 0)
                                    })
                            });
                            match mig {
                                _ if fits => 0,
                                Some(mask) if m == 0 => u64::from(8 - mask.count_ones()) * 125,
                                _ => u64::from(m),
                            }
                        })
                        .sum(),
                }
            };
            total += w * frag;
        }
        total
    }
}

impl Allocator {
    /// Whether a slice read back from the database fits its node: the node takes slices
    /// (or CPU-only work), the GPU is free or holds slices of the same kind with room, a
    /// MIG instance sits at a start its profile allows, and the tenant may share the GPU.
    pub(crate) fn check_slice_restore(&self, a: &Allocation, node: &Node) -> Result<(), String> {
        let id = a.id;
        let Some((_, indexes)) = a.gpus.first() else {
            return Err(format!("instance {id}: the allocation names no node"));
        };
        if a.shape == Shape::Cpu {
            if !node.sharing.cpu_only {
                return Err(format!(
                    "instance {id}: node {} takes no CPU-only instance",
                    node.id
                ));
            }
            return Ok(());
        }
        if !node.sharing.slices {
            return Err(format!(
                "instance {id}: node {} takes no fractional or MIG instance",
                node.id
            ));
        }
        let [g] = indexes[..] else {
            return Err(format!("instance {id}: a slice sits on exactly one GPU"));
        };
        let bit = 1u64 << g;
        let s = node.slices_of(g);
        if node.used & bit != 0 && s.is_empty() {
            return Err(format!(
                "instance {id}: GPU {g} of node {} is held whole",
                node.id
            ));
        }
        if !s.is_empty() && !node.open_gpus() && s.tenant.is_some_and(|t| t != a.tenant) {
            return Err(format!(
                "instance {id}: GPU {g} of node {} holds another tenant's slices",
                node.id
            ));
        }
        match a.shape {
            Shape::Share { milli } => {
                if !(1..=1000).contains(&milli) {
                    return Err(format!("instance {id}: a share is 1 to 1000 thousandths"));
                }
                if s.mig != 0 || u32::from(s.milli) + milli > 1000 {
                    return Err(format!(
                        "instance {id}: GPU {g} of node {} has {} thousandths free for shares, \
                         not {milli}",
                        node.id,
                        if s.mig != 0 {
                            0
                        } else {
                            1000 - u32::from(s.milli)
                        }
                    ));
                }
            }
            Shape::Mig { profile } => {
                let geo = node.mig.and_then(|f| f.geometry(profile)).ok_or_else(|| {
                    format!(
                        "instance {id}: node {} has no MIG profile {profile}",
                        node.id
                    )
                })?;
                let start = a
                    .mig_start
                    .filter(|st| geo.starts.contains(st))
                    .ok_or_else(|| {
                        format!(
                            "instance {id}: MIG {profile} may start at slices {:?}, not {:?}",
                            geo.starts, a.mig_start
                        )
                    })?;
                if s.milli != 0 || s.mig & mig_mask(start, geo.slices) != 0 {
                    return Err(format!(
                        "instance {id}: MIG slices of GPU {g} of node {} overlap",
                        node.id
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }
}
