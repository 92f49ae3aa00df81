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
//! fit (a CPU task never uses a GPU, so a node that can host it wastes nothing for it),
//! memory bounds fit as CPU does, and a whole-GPU type that can run on the node counts only
//! the entirely free GPUs it cannot use (what shares leave free on a partly used GPU is
//! counted by the share types, at their sizes, and not again by every whole-GPU type).
//! A type of k ≥ 2 whole GPUs weighs 1 / k² of its frequency (see [`type_weight`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::sync::Mutex;

use neocloud_types::{MigFamily, MigProfile, NodeId, Shape, TenantId};

use crate::PlacementPolicy;
use crate::allocator::{Allocator, Decision, IdHasher, Scope};
use crate::node::{GpuSlices, Node, choose_group, full_mask, set_count};
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

    /// Free GPU thousandths a node needs at least to host the need.
    fn gpu_floor(self) -> u64 {
        match self {
            Need::Whole(k) => u64::from(k) * 1000,
            Need::Share(m) => u64::from(m),
            Need::Mig(_) => 125,
            Need::Cpu => 0,
        }
    }
}

/// The CPU thousandths and memory MiB a request takes on `node`: what it asks for, or its
/// part of the node's GPUs times the node's CPU and memory.
pub(crate) fn host_need(node: &Node, req: &Request) -> (u64, u64) {
    if matches!(req.shape, Shape::Nodes { .. }) {
        return (node.cpu_milli, node.mem_mib);
    }
    // The shape's thousandths of one GPU (a whole-GPU shape: 1000 per GPU).
    let milli = req.shape.gpu_milli_of_one_node(node.gpus);
    let part = |total: u64| -> u64 {
        let den = u128::from(node.gpus.max(1)) * 1000;
        u64::try_from(u128::from(total) * u128::from(milli) / den).unwrap_or(u64::MAX)
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
    /// How many instances of 2, 4 and 8 whole GPUs the free GPUs could host at once under
    /// the board's topology: which GPUs are free matters to whole-GPU shapes, not only how
    /// many (on an aligned board free GPUs 1-2 hold no pair, 0-1 do; on NVSwitch both do).
    pub aligned: [u8; 3],
}

impl GroupKey {
    /// The smallest key: a range bound.
    fn least() -> GroupKey {
        GroupKey {
            owner: None,
            sharing: crate::Sharing::default(),
            cpu_free: 0,
            mem_free: 0,
            gpus: Vec::new(),
            aligned: [0; 3],
        }
    }

    /// The tenants whose slices could fill a partly used GPU of the group (`None`: a GPU any
    /// tenant may share), each once.
    pub fn partial_tenants(&self) -> Vec<Option<TenantId>> {
        let mut out: Vec<Option<TenantId>> = self
            .gpus
            .iter()
            .filter(|&&(free, mig, _)| match mig {
                0 => free > 0 && free < 1000,
                0xff => false,
                mask => mask.count_ones() < 8,
            })
            .map(|&(_, _, t)| t)
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Entirely free GPUs of the group's nodes.
    pub fn whole_gpus(&self) -> u32 {
        u32::try_from(self.gpus.iter().filter(|g| g.0 == 1000).count()).unwrap_or(u32::MAX)
    }

    /// Free GPU thousandths of the group's nodes.
    pub fn free_milli(&self) -> u64 {
        self.gpus
            .iter()
            .map(|&(m, mig, _)| match mig {
                0 => u64::from(m),
                0xff => 0,
                mask => u64::from(8 - mask.count_ones()) * 125,
            })
            .sum()
    }

    /// Whether `need` of `tenant` might fit the group's nodes, from the key alone (the
    /// exact check follows on a node). Never false for a group that fits.
    fn may_fit(&self, tenant: TenantId, need: Need, cpu: Option<u64>) -> bool {
        if self.owner.is_some_and(|t| t != tenant) || cpu.is_some_and(|c| c > self.cpu_free) {
            return false;
        }
        let mine = |t: Option<TenantId>| t.is_none_or(|t| t == tenant);
        match need {
            Need::Cpu => self.sharing.cpu_only,
            Need::Whole(1) => self.gpus.iter().any(|g| g.0 == 1000),
            Need::Whole(2) => self.aligned[0] > 0,
            Need::Whole(4) => self.aligned[1] > 0,
            Need::Whole(8) => self.aligned[2] > 0,
            Need::Whole(_) => false,
            Need::Share(m) => {
                self.sharing.slices
                    && self
                        .gpus
                        .iter()
                        .any(|&(free, mig, t)| mig == 0 && free >= m && (free == 1000 || mine(t)))
            }
            Need::Mig(_) => {
                self.sharing.slices
                    && self
                        .gpus
                        .iter()
                        .any(|&(free, mig, t)| free == 1000 || (mig != 0xff && mig != 0 && mine(t)))
            }
        }
    }
}

/// Groups a fragmentation-aware decision scores, at most, per scope: the tightest ones that
/// may fit. Measured on the Alibaba trace (`examples/packing.rs`) and at 220,000 GPUs
/// (`examples/slices_scale.rs`); see docs/BENCHMARKS.md.
const SCORED_GROUPS: usize = 16;

/// GPUs of one node a fragmentation-aware decision scores for a slice: the tightest.
const SCORED_PICKS: usize = 1;

/// Groups a fragmentation-aware decision looks at, at most, per scope once one fits: past
/// the tightest groups, those that do not fit are mostly other tenants' partly used GPUs.
const SCANNED_GROUPS: usize = 256;

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

    /// Free thousandths of GPU `g`: 1000 when free, what shares leave, 125 per free MIG
    /// memory slice, 0 when held whole or unhealthy.
    fn free_milli(&self, g: u32) -> u64 {
        let bit = 1u64 << g;
        if self.unhealthy & bit != 0 {
            return 0;
        }
        if self.used & bit == 0 {
            return 1000;
        }
        let s = self.slices_of(g);
        if s.is_empty() {
            0
        } else if s.mig != 0 {
            u64::from(8 - s.mig.count_ones()) * 125
        } else {
            u64::from(1000u16.saturating_sub(s.milli))
        }
    }

    /// The node's group key.
    pub(crate) fn group_key(&self) -> GroupKey {
        let mut gpus: Vec<GpuKey> = (0..self.gpus)
            .filter(|g| self.unhealthy & (1u64 << g) == 0)
            .map(|g| self.gpu_key(g))
            .collect();
        gpus.sort_unstable_by(|a, b| b.cmp(a));
        let free = self.free();
        let aligned = [2u32, 4, 8]
            .map(|k| u8::try_from(set_count(self.topology, free, self.gpus, k)).unwrap_or(u8::MAX));
        GroupKey {
            owner: self.owner(),
            sharing: self.sharing,
            cpu_free: self.cpu_free(),
            mem_free: self.mem_free(),
            gpus,
            aligned,
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
        self.classes[crate::node::class_index(a.class)] += 1;
        self.share += crate::node::plan_share(a);
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
        let before = self.allocs.len();
        self.allocs.retain(|&(i, _)| i != a.id);
        if self.allocs.len() < before {
            let n = &mut self.classes[crate::node::class_index(a.class)];
            *n = n.saturating_sub(1);
            self.share = self.share.saturating_sub(crate::node::plan_share(a));
        }
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

/// One ordered walk over a bucket's groups: ((free GPU thousandths, group), lowest node).
type Source<'a> = Box<dyn Iterator<Item = (&'a (u64, GroupKey), &'a NodeId)> + 'a>;

/// How a node ranks for a request (smaller is better): (whether it hands an empty unshared
/// node to one tenant, fragmentation growth, free GPU thousandths after, free CPU after,
/// node id).
type Rank = (bool, u64, u64, u64, NodeId);

/// A place for a request inside one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pick {
    /// GPUs taken (a whole group, or the slice's GPU).
    pub mask: u64,
    pub mig_start: Option<u32>,
    /// Free thousandths of the node's GPUs after the placement.
    gpu_free_after: u64,
    /// Free thousandths left on the slice's GPU: the tightest GPU of a node goes first.
    gpu_left: u64,
}

/// A node's free state reduced to what the fragmentation measure reads.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct View {
    cpu_free: u64,
    mem_free: u64,
    /// Per healthy GPU: (free thousandths usable by shares, free MIG slices mask or None
    /// when the GPU takes no MIG instance).
    gpus: Vec<(u16, Option<u8>)>,
    /// Instances of 1, 2, 4 and 8 whole GPUs the entirely free GPUs could host at once
    /// under the board's topology.
    sets: [u8; 4],
}

/// A task type of the workload, as the fragmentation measure weighs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct TaskType {
    /// The models it accepts: bit `m` for model `m`; every bit for any model (or when a
    /// model it accepts has an id above 63).
    pub models: u64,
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
    /// Bumped whenever `types` changes: measures remembered before are stale.
    version: u64,
}

/// Measures already computed for the current workload, by (model, MIG geometry, view):
/// nodes in equal states, and the states a placement would lead to, repeat across
/// decisions. A cache only: a clone starts empty.
#[derive(Default)]
pub(crate) struct FragMemo(Mutex<MemoMap>);

type MemoMap = (
    u64,
    HashMap<(u32, Option<MigFamily>, View), u64, BuildHasherDefault<IdHasher>>,
);

/// Entries kept before the memo starts over.
const MEMO_MAX: usize = 1 << 16;

impl Clone for FragMemo {
    fn clone(&self) -> Self {
        FragMemo::default()
    }
}

impl std::fmt::Debug for FragMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FragMemo")
    }
}

/// A task type's weight per request of it in the window: 64 / k² for a type of k whole
/// GPUs (k ≥ 2), 64 for every other type.
///
/// At its full frequency a multi-GPU type makes the measure keep free sets of k GPUs (whole
/// 8-GPU nodes above all) at a price the work it keeps them for does not repay: single GPUs
/// and shares crowd onto nodes whose CPU then runs out and are refused while whole nodes
/// wait. Measured on the Alibaba trace's `multi-gpu` mix (`examples/packing.rs`, 10 seeds,
/// see docs/BENCHMARKS.md): 96.87% of the GPUs allocated at full weight, 97.13% at 1 / k²
/// (1 / k lay between, 97.01% on 3 seeds); before the cluster filled, 1 / k² refused 233
/// multi-GPU tasks instead of 199, and 80 single GPUs and shares instead of 643.
fn type_weight(need: Need) -> u64 {
    match need {
        Need::Whole(k) if k >= 2 => (64 / (u64::from(k) * u64::from(k))).max(1),
        _ => 64,
    }
}

/// Requests remembered.
const WINDOW: usize = 4096;
/// Requests between refreshes of the distribution.
const REFRESH: u32 = 64;
/// Most task types the measure weighs: the most frequent, up to 95% of the requests.
const MAX_TYPES: usize = 200;

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
            self.version += 1;
        }
    }

    fn refresh(&mut self) {
        let mut all: Vec<(TaskType, u64)> = self.counts.iter().map(|(t, c)| (*t, *c)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let total: u64 = all.iter().map(|(_, c)| c).sum();
        let mut kept = 0u64;
        self.types.clear();
        for (t, c) in all {
            if self.types.len() >= MAX_TYPES || (kept * 100 >= total * 100 && kept > 0) {
                break;
            }
            kept += c;
            self.types.push((t, c));
        }
    }
}

impl Allocator {
    /// The task type of a request, for the workload: what it asked for (its scope, when
    /// it has a valid one, says which models it accepts).
    pub(crate) fn task_type(&self, req: &Request, scope: Option<&Scope>) -> Option<TaskType> {
        let need = Need::of(req.shape)?;
        let list: &[u32] = match scope {
            Some(s) if s.model == u32::MAX && s.models.len() < self.model_sizes.len() => &s.models,
            Some(s) if s.model != u32::MAX => std::slice::from_ref(&s.model),
            Some(_) => &[],
            None if req.gpu_model.is_empty() => &[],
            None => std::slice::from_ref(self.model_ids.get(&req.gpu_model)?),
        };
        let models = if list.is_empty() || list.iter().any(|&m| m > 63) {
            u64::MAX
        } else {
            list.iter().fold(0u64, |mask, &m| mask | 1 << m)
        };
        Some(TaskType {
            models,
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
        explain: bool,
    ) -> Result<Decision, Refusal> {
        let mut power_refusal = None;
        let mut any_group = false;
        // A poisoned memo only means a panic mid-insert elsewhere; its entries are exact.
        let mut guard = self
            .frag_memo
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let memo = &mut *guard;
        if memo.0 != self.workload.version || memo.1.len() > MEMO_MAX {
            memo.0 = self.workload.version;
            memo.1.clear();
        }
        for &tier in scope.tiers.iter().flatten() {
            let mut candidates: Vec<(Rank, usize, Pick)> = Vec::new();
            for &model in scope.model_list() {
                for (_, b) in self.scopes.buckets(model, tier, req.site) {
                    any_group |= !b.groups.is_empty();
                    // First-fit and worst-fit look at every group that may fit, by free
                    // GPU. Best-fit and ours look at the groups where a slice can fill a
                    // partly used GPU, then at those with at least a GPU's worth free (no
                    // other group can host anything that needs a GPU): best-fit at the
                    // tightest that fit, ours at the tightest few.
                    let least = GroupKey::least;
                    let sources: Vec<Source<'_>> = match (self.placement, need) {
                        (PlacementPolicy::FirstFit, _) => {
                            vec![Box::new(b.tight.range((need.gpu_floor(), least())..))]
                        }
                        (PlacementPolicy::WorstFit, _) => {
                            vec![Box::new(b.tight.range((need.gpu_floor(), least())..).rev())]
                        }
                        (_, Need::Share(_) | Need::Mig(_)) => {
                            let mut v: Vec<Source<'_>> = Vec::new();
                            for t in [Some(req.tenant), None] {
                                if let Some(p) = b.partial.get(&t) {
                                    v.push(Box::new(p.range((need.gpu_floor(), least())..)));
                                }
                            }
                            v.push(Box::new(b.fresh.iter()));
                            v
                        }
                        (_, Need::Whole(1)) => vec![Box::new(b.fresh.iter())],
                        // Ours looks at CPU-only work's candidates among the groups with the CPU
                        // it asks for, the tightest CPU first (the measure then prefers nodes
                        // whose GPUs need none of it).
                        (PlacementPolicy::Fragmentation, Need::Cpu) => vec![Box::new(
                            b.by_cpu.range((req.cpu_milli.unwrap_or(0), least())..),
                        )],
                        (_, Need::Whole(k)) => b
                            .whole
                            .range(k..)
                            .map(|(_, w)| Box::new(w.iter()) as Box<dyn Iterator<Item = _>>)
                            .collect(),
                        _ => vec![Box::new(b.tight.range((need.gpu_floor(), least())..))],
                    };
                    // Ours shares its budget of scored groups among the sources.
                    let budget = SCORED_GROUPS.div_ceil(sources.len().max(1)).max(2);
                    for keys in sources {
                        let mut scored = 0usize;
                        let mut tightest: Option<u64> = None;
                        for (seen, ((free, key), id)) in keys.enumerate() {
                            if self.placement == PlacementPolicy::Fragmentation
                                && seen >= SCANNED_GROUPS
                                && scored > 0
                            {
                                break;
                            }
                            match self.placement {
                                PlacementPolicy::BestFit if tightest.is_some_and(|t| *free > t) => {
                                    break;
                                }
                                PlacementPolicy::Fragmentation if scored >= budget => break,
                                _ => {}
                            }
                            if !key.may_fit(req.tenant, need, req.cpu_milli) {
                                continue;
                            }
                            let Some(&slot) = self.slots.get(id) else {
                                continue;
                            };
                            let node = &self.nodes[slot];
                            if let Some((rank, pick)) = self.score_node(req, node, need, memo) {
                                candidates.push((rank, slot, pick));
                                scored += 1;
                                tightest.get_or_insert(*free);
                            }
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
        if !explain {
            return Err(crate::allocator::quiet_refusal());
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
            .model_list()
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
        memo: &mut MemoMap,
    ) -> Option<(Rank, Pick)> {
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
        let fit = |p: &Pick| (p.gpu_free_after, cpu_after, p.gpu_left);
        let (best, frag) = match policy {
            PlacementPolicy::FirstFit => (picks[0], 0),
            PlacementPolicy::BestFit => (*picks.iter().min_by_key(|p| fit(p))?, 0),
            PlacementPolicy::WorstFit => (*picks.iter().max_by_key(|p| fit(p))?, 0),
            PlacementPolicy::Fragmentation => {
                let before = self.frag_cached(memo, self.view(node, None, 0, 0), node);
                let mut best: Option<(u64, (u64, u64, u64), Pick)> = None;
                // The tightest few GPUs of the node only (see `SCORED_PICKS`).
                let mut picks = picks;
                picks.sort_by_key(|p| (p.gpu_left, p.mask));
                picks.truncate(SCORED_PICKS);
                for p in &picks {
                    let after =
                        self.frag_cached(memo, self.view(node, Some((need, p)), cpu, mem), node);
                    // Signed growth, shifted to stay unsigned: a placement that fills a fragment
                    // shrinks the measure and must rank before one that leaves it alone.
                    let grow = i128::from(after) - i128::from(before) + (1i128 << 63);
                    let key = (u64::try_from(grow.max(0)).unwrap_or(u64::MAX), fit(p));
                    if best.as_ref().is_none_or(|(d, f, _)| key < (*d, *f)) {
                        best = Some((key.0, key.1, *p));
                    }
                }
                let (d, _, p) = best?;
                (p, d)
            }
        };
        // The measure does not see tenants: on a node no other tenant may share, the first
        // instance takes the whole node away from everyone else, so ours opens one only when
        // no used node fits (as best-fit does by tightness).
        let opens =
            policy == PlacementPolicy::Fragmentation && !node.shareable && node.allocs.is_empty();
        let rank = match policy {
            PlacementPolicy::FirstFit => (false, 0, 0, 0, node.id),
            PlacementPolicy::WorstFit => (
                false,
                0,
                u64::MAX - best.gpu_free_after,
                u64::MAX - cpu_after,
                node.id,
            ),
            _ => (opens, frag, best.gpu_free_after, cpu_after, node.id),
        };
        Some((rank, best))
    }

    /// Every distinct place for `need` inside `node`, in GPU index order.
    fn picks_in(&self, req: &Request, node: &Node, need: Need) -> Vec<Pick> {
        let free = node.free();
        let all_free: u64 = (0..node.gpus).map(|g| node.free_milli(g)).sum();
        let total_free = |taken: u64| all_free.saturating_sub(taken);
        let tenant_ok =
            |s: &GpuSlices| node.open_gpus() || s.tenant.is_none_or(|t| t == req.tenant);
        // The healthy GPUs a share (or, `mig`, a MIG instance) may go on: the free ones, with
        // `None`, and the partly used ones of that kind this tenant may add to.
        let slice_gpus = |mig: bool| {
            (0..node.gpus).filter_map(move |g| {
                let bit = 1u64 << g;
                if node.unhealthy & bit != 0 {
                    return None;
                }
                if node.used & bit == 0 {
                    return Some((bit, None));
                }
                let s = node.slices_of(g);
                let same_kind = if mig { s.milli == 0 } else { s.mig == 0 };
                (!s.is_empty() && same_kind && tenant_ok(&s)).then_some((bit, Some(s)))
            })
        };
        let mut out = Vec::new();
        match need {
            Need::Whole(k) => {
                let policy = match self.placement {
                    PlacementPolicy::FirstFit => PlacementPolicy::FirstFit,
                    _ => PlacementPolicy::BestFit,
                };
                if let Some((mask, _)) = choose_group(node.topology, free, node.gpus, k, policy) {
                    out.push(Pick {
                        mask,
                        mig_start: None,
                        gpu_free_after: total_free(u64::from(k) * 1000),
                        gpu_left: 0,
                    });
                }
            }
            Need::Cpu => out.push(Pick {
                mask: 0,
                mig_start: None,
                gpu_free_after: total_free(0),
                gpu_left: 0,
            }),
            Need::Share(m) => {
                let mut seen: Vec<u16> = Vec::new();
                for (bit, s) in slice_gpus(false) {
                    let room = s.map_or(1000, |s| 1000u16.saturating_sub(s.milli));
                    if room >= m && !seen.contains(&room) {
                        seen.push(room);
                        out.push(Pick {
                            mask: bit,
                            mig_start: None,
                            gpu_free_after: total_free(u64::from(m)),
                            gpu_left: u64::from(room - m),
                        });
                    }
                }
            }
            Need::Mig(profile) => {
                let Some(geo) = node.mig.and_then(|f| f.geometry(profile)) else {
                    return out;
                };
                let mut seen: Vec<u8> = Vec::new();
                for (bit, s) in slice_gpus(true) {
                    let used_slices = s.map_or(0, |s| s.mig);
                    if seen.contains(&used_slices) {
                        continue;
                    }
                    seen.push(used_slices);
                    if let Some(&start) = geo
                        .starts
                        .iter()
                        .find(|&&st| used_slices & mig_mask(st, geo.slices) == 0)
                    {
                        let left = 8 - (used_slices | mig_mask(start, geo.slices)).count_ones();
                        out.push(Pick {
                            mask: bit,
                            mig_start: Some(start),
                            gpu_free_after: total_free(u64::from(geo.slices) * 125),
                            gpu_left: u64::from(left) * 125,
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
        let taken = match after {
            Some((Need::Cpu, _)) | None => 0,
            Some((_, p)) => p.mask,
        };
        let free = node.free() & !taken;
        View {
            cpu_free: node.cpu_free().saturating_sub(cpu),
            mem_free: node.mem_free().saturating_sub(mem),
            gpus,
            sets: [1u32, 2, 4, 8].map(|k| {
                u8::try_from(set_count(node.topology, free, node.gpus, k)).unwrap_or(u8::MAX)
            }),
        }
    }

    /// [`Allocator::node_frag`] through the memo.
    fn frag_cached(&self, memo: &mut MemoMap, v: View, node: &Node) -> u64 {
        let key = (node.model, node.mig, v);
        if let Some(&f) = memo.1.get(&key) {
            return f;
        }
        let f = self.node_frag(&key.2, node);
        memo.1.insert(key, f);
        f
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
        let free_of = |&(m, mig): &(u16, Option<u8>)| match mig {
            Some(mask) if m == 0 => u64::from(8 - mask.count_ones()) * 125,
            _ => u64::from(m),
        };
        for &(t, count) in &self.workload.types {
            let w = count * type_weight(t.need);
            let accepts = t.models == u64::MAX || (model < 64 && t.models >> model & 1 == 1);
            if !accepts || v.cpu_free < t.cpu_milli || v.mem_free < t.mem_mib {
                total += w * free_total;
                continue;
            }
            // Copies of the type the node's CPU and memory could still host.
            let host_copies = [(v.cpu_free, t.cpu_milli), (v.mem_free, t.mem_mib)]
                .iter()
                .map(|&(free, per)| free.checked_div(per).unwrap_or(u64::MAX))
                .min()
                .unwrap_or(u64::MAX);
            // (GPU capacity the type could never use, copies its GPUs could host, GPU
            // thousandths per copy).
            let (base, gpu_copies, per_copy) = match t.need {
                Need::Cpu => (0, 0, 0),
                Need::Whole(k) => {
                    // Copies the board's topology lets the free whole GPUs host.
                    let copies = crate::node::SHAPES
                        .iter()
                        .position(|&s| s == k)
                        .map_or(0, |i| u64::from(v.sets[i]));
                    // Only entirely free GPUs: what shares leave free on a partly used GPU is
                    // the share types' fragment, counted at the sizes they ask for, not again
                    // for every whole-GPU type.
                    if copies == 0 {
                        (u64::from(v.sets[0]) * 1000, 0, 0)
                    } else {
                        (0, copies, u64::from(k) * 1000)
                    }
                }
                Need::Share(want) => {
                    let want = want.max(1);
                    let mut base = 0u64;
                    let mut copies = 0u64;
                    for g in &v.gpus {
                        match g.1 {
                            Some(_) if g.0 == 0 => base += free_of(g),
                            _ if g.0 < want => base += u64::from(g.0),
                            _ => copies += u64::from(g.0 / want),
                        }
                    }
                    (base, copies, u64::from(want))
                }
                Need::Mig(profile) => {
                    let geo = node.mig.and_then(|f| f.geometry(profile));
                    let mut base = 0u64;
                    let mut copies = 0u64;
                    for g in &v.gpus {
                        let fits = g.1.and_then(|mask| {
                            let geo = geo?;
                            let mut m = mask;
                            let mut n = 0u64;
                            while let Some(&st) = geo
                                .starts
                                .iter()
                                .find(|&&st| m & mig_mask(st, geo.slices) == 0)
                            {
                                m |= mig_mask(st, geo.slices);
                                n += 1;
                            }
                            (n > 0).then_some(n)
                        });
                        match fits {
                            Some(n) => copies += n,
                            None => base += free_of(g),
                        }
                    }
                    let per = geo.map_or(1000, |g| u64::from(g.slices) * 125);
                    (base, copies, per)
                }
            };
            // GPU capacity the type could use but for the node's CPU or memory.
            let starved = gpu_copies.saturating_sub(host_copies) * per_copy;
            let frag = (base + starved).min(free_total);
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
