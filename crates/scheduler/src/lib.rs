//! neocloud's scheduling policy as one pure, synchronous state machine.
//!
//! [`Scheduler::apply`] takes a [`Command`] and the time it happens at, changes the state in
//! memory (the allocator, the queue, quotas, what has been sold, contract pools and the
//! calendar) and returns the [`Effect`]s a durable store must record for the change to be
//! real. It reads no clock, performs no I/O and holds no lock: `serve` runs it under a short
//! lock and commits the effects afterwards, in the order they were decided; the simulator
//! drives the same code with simulated time. The allocator underneath is
//! [`neocloud_allocator`], and the selling rule is its [`neocloud_allocator::selling`].
//!
//! A command that is refused ([`Refused`]) changes nothing.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::BuildHasherDefault;

use neocloud_allocator::calendar::{Calendar, CapacityKey};
use neocloud_allocator::{
    Allocation, Allocator, IdMap, NodeSpec, PlacementPolicy, Refusal, Request, Sharing, SiteSpec,
};
use neocloud_types::{
    AllocatorNode, AllocatorSite, BoardTopology, Class, Contract, ContractId, ContractState,
    FleetPolicy, GangLevel, Instance, InstanceId, InstanceState, NodeFailurePolicy, NodeId,
    NodeName, NodeState, Quota, Shape, Site, SiteId, TenantId, Timestamp,
};

mod delivery;
mod effects;
mod maintenance;
mod queue;
mod repair;
pub use effects::{Effect, Event};

/// Scheduling settings of a control plane.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Who wins between the operator's lab and on-demand customers.
    pub fleet_policy: FleetPolicy,
    /// How placements are chosen.
    pub placement: PlacementPolicy,
    /// Notice a preempted instance gets before its GPUs are taken, seconds.
    pub preemption_grace_secs: i64,
    /// Share of each site's GPUs never sold by contracts, in thousandths (20 = 2%).
    pub spare_buffer_milli: u32,
    /// Whether different tenants may share a node (sub-node shapes). Off by default: an
    /// external tenant never shares a node unless the operator allows it.
    pub shared_nodes: bool,
    /// What nodes run besides whole GPUs: shares and MIG instances (on by default),
    /// slices of one GPU for different tenants (off; needs `shared_nodes`), CPU-only
    /// instances (off: GPU nodes keep their CPUs for their GPUs).
    pub sharing: Sharing,
    /// How often agents send heartbeats, seconds.
    pub heartbeat_interval_secs: u32,
    /// Heartbeats in a row a node may miss before it is `unreachable` (no new work; what
    /// runs there keeps running).
    pub missed_heartbeats: u32,
    /// Seconds since its last heartbeat after which a silent node is failed (its work then
    /// ends as for any fault); an agent that announced a restart is waited for at most this
    /// long. At most the missed-heartbeat limit fails a silent node at once.
    pub unreachable_grace_secs: i64,
    /// Idle nodes whose last burn-in is older than this many seconds run it again; 0 never.
    pub reverify_idle_secs: i64,
    /// A delivered instance still provisioning after this many seconds fails.
    pub provision_timeout_secs: i64,
    /// A delivered instance whose agents have not confirmed its stop after this many
    /// seconds ends anyway (its nodes are then failed or unreachable).
    pub stop_timeout_secs: i64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            fleet_policy: FleetPolicy::LabFirst,
            placement: PlacementPolicy::BestFit,
            preemption_grace_secs: 30,
            spare_buffer_milli: 20,
            shared_nodes: false,
            sharing: Sharing {
                slices: true,
                tenants_per_gpu: false,
                cpu_only: false,
            },
            heartbeat_interval_secs: 10,
            missed_heartbeats: 3,
            unreachable_grace_secs: 300,
            reverify_idle_secs: 7 * 86_400,
            provision_timeout_secs: 600,
            stop_timeout_secs: 600,
        }
    }
}

/// Why a command was refused, with a message for the caller. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The request can never be met as asked (bad shape, unknown model or site, a policy
    /// that forbids it).
    Invalid(String),
    /// No capacity now and the request did not ask to wait.
    Capacity(String),
    /// The tenant's quota would be exceeded.
    Quota(String),
    /// The request clashes with the current state (a duplicate id, a contract that is gone).
    Conflict(String),
    /// Something is not there.
    NotFound(String),
    /// The state is inconsistent; a bug.
    Internal(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Invalid(m)
            | Refused::Capacity(m)
            | Refused::Quota(m)
            | Refused::Conflict(m)
            | Refused::NotFound(m)
            | Refused::Internal(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Refused {}

/// A node's lifecycle change, as the health policy or an operator decided it.
#[derive(Clone, Debug)]
pub struct NodeChange {
    /// The node.
    pub node: NodeId,
    /// The state the change was decided from; if the node is in another state now, the
    /// change is refused ([`Refused::Conflict`], "node changed meanwhile…").
    pub from: Option<NodeState>,
    /// Its new state (may equal the current one when only GPU health changes).
    pub to: NodeState,
    /// When the fault or the decision happened (work on a failed node ends then).
    pub at: Timestamp,
    /// Why, in words.
    pub reason: String,
    /// Every GPU of the node counts as healthy again (a repair).
    pub heal: bool,
    /// GPUs whose health changed: (index, healthy).
    pub gpus: Vec<(u32, bool)>,
}

/// Everything the scheduler can be asked to do.
// A command lives for one `apply`: boxing the launched instance would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Command {
    /// Launch an instance (its row as the caller built it, state `pending`): it starts now,
    /// waits in the queue, or is refused.
    Launch(Instance),
    /// Terminate an instance; its GPUs are freed at once and the queue is served.
    Terminate {
        /// The instance.
        id: InstanceId,
    },
    /// Periodic work: notices that ran out, contracts that start or end, pools to refill,
    /// queued instances that now fit or whose deadline passed.
    Tick,
    /// A node changes state or GPU health.
    Node(NodeChange),
    /// Sign a contract whose terms were checked: its promise enters the calendar, and a
    /// contract that starts now gets its pool at once.
    Sign(Contract),
    /// Cancel a contract: its promise leaves the calendar, its pool is unpinned and its
    /// reserved instances are terminated.
    Cancel {
        /// The contract.
        id: ContractId,
    },
    /// Amend a signed or active contract: more GPUs and/or a later end, checked against
    /// the calendar like a new contract (its own promise counts once).
    Amend {
        /// The contract.
        id: ContractId,
        /// Its new GPU count (not fewer than now).
        gpu_count: u32,
        /// Its new end (not earlier than now).
        end_at: Timestamp,
    },
    /// Set (or, with `max_gpus` none, remove) one tenant's quota of a model and class.
    SetQuota {
        /// The tenant.
        tenant: TenantId,
        /// The GPU model.
        gpu_model: String,
        /// The class.
        class: Class,
        /// Most GPUs held or waited for at once.
        max_gpus: Option<u32>,
    },
    /// What a node's agent reports of the delivered workloads placed on it (each
    /// heartbeat): confirms them running, stopped or failed.
    Reports {
        /// The node whose agent reports.
        node: NodeId,
        /// Its reports.
        reports: Vec<neocloud_types::WorkloadReport>,
    },
    /// Planned maintenance announced over `nodes` (already out of new placements), to
    /// begin at `start_at`: gangs move off, other work gets its notice (see the
    /// `maintenance` module).
    Maintain {
        /// The window.
        window: neocloud_types::MaintenanceId,
        /// Its nodes.
        nodes: Vec<NodeId>,
        /// When it begins.
        start_at: Timestamp,
        /// Why, for the notices.
        reason: String,
    },
    /// A maintenance window was called off: the notices it gave are withdrawn.
    Unmaintain {
        /// The window.
        window: neocloud_types::MaintenanceId,
    },
    /// A site's power limit changed, watts.
    SetPowerLimit {
        /// The site.
        site: SiteId,
        /// The new limit.
        watts: i64,
    },
}

/// The durable state the scheduler is built from: what the database holds.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Sites, with their GPUs by model.
    pub sites: Vec<Site>,
    /// Sites as the allocator sees them (power limits).
    pub alloc_sites: Vec<AllocatorSite>,
    /// Every node.
    pub nodes: Vec<AllocatorNode>,
    /// Instances that have not ended (pending, running, preempting, terminating).
    pub live: Vec<Instance>,
    /// Signed and active contracts.
    pub contracts: Vec<Contract>,
    /// Every quota.
    pub quotas: Vec<Quota>,
    /// The board topology of each GPU model that has one of its own (the fleet file's
    /// `topology`); any other model takes the rule for its name.
    pub topologies: BTreeMap<String, BoardTopology>,
}

/// Counters of decisions, read by metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    /// Placements made.
    pub placed: u64,
    /// Placement attempts refused.
    pub refused: u64,
    /// Instances preempted (their notice ran out).
    pub preemptions: u64,
}

/// The scheduling state: allocator, queue, quotas, selling counters, pools and calendar.
pub struct Scheduler {
    alloc: Allocator,
    calendar: Calendar,
    config: SchedulerConfig,
    /// Pending instances by (priority descending, arrival), with what a pass over the queue
    /// reads of each, also by need and by deadline.
    queue: queue::Queue,
    /// Preemption deadlines: (when the notice runs out, instance). An entry whose instance
    /// is no longer preempting with that deadline is stale and skipped when it comes due.
    notices: BTreeSet<(Timestamp, InstanceId)>,
    /// Every instance that has not ended, as it stands.
    live: IdMap<InstanceId, Instance>,
    sites: Vec<Site>,
    /// GPUs per node of each model (the largest node of that model).
    node_size: BTreeMap<String, u32>,
    /// The most CPU (thousandths) and memory (MiB) one node of each model has.
    node_host: BTreeMap<String, (u64, u64)>,
    node_names: IdMap<NodeId, NodeName>,
    /// Each node's lifecycle state and GPU count.
    nodes: IdMap<NodeId, (NodeState, u32)>,
    /// Thousandths of GPUs held by on-demand and internal work outside pools, per (site,
    /// model): what the sellable check counts.
    sold: ByModel<SiteId>,
    quotas: Vec<Quota>,
    /// Thousandths of GPUs each tenant holds or waits for, per (model, class): what quotas
    /// count.
    used: ByModel<(TenantId, Class)>,
    /// Signed and active contracts.
    contracts: BTreeMap<ContractId, Contract>,
    /// Nodes pinned to each contract's pool.
    pools: HashMap<ContractId, BTreeSet<NodeId>>,
    /// Active contracts whose pool has all its nodes.
    pools_full: BTreeSet<ContractId>,
    counters: Counters,
    /// Delivered instances placed on each node.
    by_node: delivery::NodeIndex,
    /// What is known of each delivered instance that holds GPUs.
    tracked: IdMap<InstanceId, delivery::Tracked>,
    /// Gangs (policy `replace`) running short of nodes after a failure, waiting for a
    /// node of their block; those whose last look found none, and none of whose block's
    /// nodes changed since, are quiet: the next look would find none either, so it is
    /// skipped.
    repairs: repair::Repairs,
    /// Each node's site and blocks by depth (pod, leaf group, NVLink domain): which waiting
    /// repairs a change of the node may concern.
    node_blocks: IdMap<NodeId, repair::NodeBlocks>,
    /// What the build had to leave as it was (a model's topology that the work already
    /// placed does not fit), for the caller to log.
    warnings: Vec<String>,
}

/// The request the allocator sees for an instance.
pub fn request_of(i: &Instance) -> Request {
    Request {
        id: i.id,
        tenant: i.tenant_id,
        class: i.class,
        gpu_model: i.gpu_model.clone(),
        shape: i.shape,
        site: i.requested_site_id,
        pool: i.contract_id,
        cpu_milli: i.cpu_milli,
        memory_mib: i.memory_mib,
    }
}

/// An allocation's placement as an instance shows it.
pub fn placed_nodes(
    a: &Allocation,
    names: &IdMap<NodeId, NodeName>,
) -> neocloud_types::PlacedNodes {
    a.gpus
        .iter()
        .map(|(n, g)| neocloud_types::PlacedNode {
            node_id: *n,
            node: names.get(n).cloned().unwrap_or_default(),
            gpus: g.clone(),
            mig_start: a.mig_start,
            cpu_milli: (a.cpu_milli > 0).then_some(a.cpu_milli),
            memory_mib: (a.memory_mib > 0).then_some(a.memory_mib),
        })
        .collect()
}

/// A hash of part of what a pending instance asks the allocator for, its id aside: two
/// instances with the same need have the same hash. It only buckets needs, which
/// [`same_request`] then compares in full, so it reads the few fields that tell most needs
/// apart (it runs for every queued instance on every pass).
fn need_hash(i: &Instance) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = NeedHasher::default();
    i.tenant_id.hash(&mut h);
    i.class.hash(&mut h);
    i.shape.hash(&mut h);
    h.finish()
}

/// The hasher of [`need_hash`], of the queue's index by need and of the needs one pass of
/// the queue found no room for. A hash only groups needs (they are then compared in full
/// with [`same_request`]), so a multiply-fold is enough: it never reaches a decision.
#[derive(Clone, Copy, Debug, Default)]
struct NeedHasher(u64);

impl NeedHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl std::hash::Hasher for NeedHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Whether two requests ask the allocator for the same thing (ids aside).
fn same_request(a: &Request, b: &Request) -> bool {
    a.tenant == b.tenant
        && a.class == b.class
        && a.shape == b.shape
        && a.site == b.site
        && a.pool == b.pool
        && a.cpu_milli == b.cpu_milli
        && a.memory_mib == b.memory_mib
        && a.gpu_model == b.gpu_model
}

/// A place in the queue: priority descending, then id.
type Place = (Reverse<u8>, InstanceId);

/// A pending instance in the queue: its place, and what a pass over the queue reads of it,
/// none of which changes while it waits. Ordered and compared by its place alone.
#[derive(Clone, Debug)]
struct Queued {
    place: Place,
    /// Its deadline in the queue.
    wait_until: Option<Timestamp>,
    /// [`need_hash`] of the instance.
    need: u64,
    /// What it asks the allocator for ([`request_of`] the instance).
    req: Request,
    /// The GPU models it accepts, when it accepts several (its `gpu_models`).
    models: Vec<String>,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.place == other.place
    }
}

impl Eq for Queued {}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.place.cmp(&other.place)
    }
}

impl std::borrow::Borrow<(Reverse<u8>, InstanceId)> for Queued {
    fn borrow(&self) -> &(Reverse<u8>, InstanceId) {
        &self.place
    }
}

/// Whether a node in this state takes new work.
pub fn schedulable(state: NodeState) -> bool {
    matches!(state, NodeState::Available | NodeState::Allocated)
}

/// The sellable counter an allocation counts in, if any.
fn sold_key(a: &Allocation) -> Option<(SiteId, &str)> {
    (a.pool.is_none() && matches!(a.class, Class::OnDemand | Class::Internal))
        .then_some((a.site, a.gpu_model.as_str()))
}

/// Counters by a key and a GPU model, read and changed with the model's name borrowed: a
/// key that owns the name would be built (the name copied) on every placement and release.
#[derive(Debug)]
pub(crate) struct ByModel<K>(HashMap<K, HashMap<String, u64>>);

impl<K> Default for ByModel<K> {
    fn default() -> Self {
        Self(HashMap::new())
    }
}

impl<K: std::hash::Hash + Eq> ByModel<K> {
    /// The count of `(key, model)`; 0 when none was kept.
    pub(crate) fn get(&self, key: &K, model: &str) -> u64 {
        self.0
            .get(key)
            .and_then(|m| m.get(model))
            .copied()
            .unwrap_or(0)
    }

    /// Adds `n`.
    pub(crate) fn add(&mut self, key: K, model: &str, n: u64) {
        let m = self.0.entry(key).or_default();
        match m.get_mut(model) {
            Some(v) => *v += n,
            None => {
                m.insert(model.to_string(), n);
            }
        }
    }

    /// Takes `n` away, down to 0 at most.
    pub(crate) fn sub(&mut self, key: &K, model: &str, n: u64) {
        if let Some(v) = self.0.get_mut(key).and_then(|m| m.get_mut(model)) {
            *v = v.saturating_sub(n);
        }
    }
}

/// GPUs of a model in a site that may be sold (to contracts, on-demand and internal work):
/// all minus the spare buffer kept for failover.
pub fn sellable(config: &SchedulerConfig, site: &Site, model: &str) -> i64 {
    let total: i64 = site
        .gpus_by_model
        .iter()
        .filter(|m| m.gpu_model == model)
        .map(|m| m.gpus)
        .sum();
    i64::try_from(neocloud_allocator::selling::sellable_gpus(
        u64::try_from(total).unwrap_or(0),
        config.spare_buffer_milli,
    ))
    .unwrap_or(i64::MAX)
}

/// A refusal as the scheduler's answer.
pub fn refused_of(r: Refusal) -> Refused {
    match r {
        Refusal::UnknownModel { .. } | Refusal::BadShape { .. } | Refusal::UnknownSite { .. } => {
            Refused::Invalid(r.to_string())
        }
        Refusal::Duplicate { .. } => Refused::Conflict(r.to_string()),
        Refusal::UnknownPool { .. } | Refusal::NoCapacity { .. } | Refusal::PowerLimit { .. } => {
            Refused::Capacity(r.to_string())
        }
    }
}

/// Thousandths of GPUs in words: "3" for whole GPUs, "0.250" for parts.
fn gpus_text(milli: u64) -> String {
    if milli.is_multiple_of(1000) {
        (milli / 1000).to_string()
    } else {
        format!("{}.{:03}", milli / 1000, milli % 1000)
    }
}

impl Scheduler {
    /// Builds the scheduler from the durable state: the allocator (nodes, health, cordons,
    /// pools, running work), the queue, the calendar of contracts, quotas and counters.
    pub fn new(config: SchedulerConfig, snap: Snapshot) -> Result<Scheduler, String> {
        let mut alloc = Allocator::new(config.fleet_policy, config.placement);
        for s in &snap.alloc_sites {
            alloc.add_site(SiteSpec {
                id: s.id,
                power_limit_watts: s.power_budget_watts,
                pue_milli: s.pue_milli,
            });
        }
        // Tenants may share one GPU only where they may share the node.
        let sharing = Sharing {
            tenants_per_gpu: config.sharing.tenants_per_gpu && config.shared_nodes,
            ..config.sharing
        };
        // What already runs is restored whatever the policy says now: a node that holds
        // slices, CPU-only instances or several tenants' slices of one GPU keeps taking them.
        let mut keeps: HashMap<NodeId, Sharing> = HashMap::new();
        let mut slice_tenants: HashMap<(NodeId, u32), TenantId> = HashMap::new();
        for i in snap
            .live
            .iter()
            .filter(|i| i.state.holds_gpus() && i.shape.is_slice())
        {
            let Some(p) = i.placement.first() else {
                continue;
            };
            let k = keeps.entry(p.node_id).or_default();
            match p.gpus.first() {
                None => k.cpu_only = true,
                Some(&g) => {
                    k.slices = true;
                    let t = slice_tenants.entry((p.node_id, g)).or_insert(i.tenant_id);
                    if *t != i.tenant_id {
                        k.tenants_per_gpu = true;
                    }
                }
            }
        }
        // Work is restored under the most permissive topology (any GPUs together), and each
        // model's own (the fleet file's, else the rule for its name) set after it: work placed
        // by a topology an import has since changed keeps its GPUs, and its model keeps
        // taking any set until that work ends (the next build applies the new one).
        let mut topologies: BTreeMap<String, BoardTopology> = BTreeMap::new();
        for n in &snap.nodes {
            if !topologies.contains_key(&n.gpu_model) {
                let t = snap
                    .topologies
                    .get(&n.gpu_model)
                    .copied()
                    .unwrap_or_else(|| BoardTopology::of_model(&n.gpu_model));
                topologies.insert(n.gpu_model.clone(), t);
                alloc.set_model_topology(&n.gpu_model, BoardTopology::NVSWITCH)?;
            }
        }
        let mut node_size: BTreeMap<String, u32> = BTreeMap::new();
        let mut node_host: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let mut node_names = IdMap::with_capacity_and_hasher(snap.nodes.len(), Default::default());
        let mut nodes = IdMap::with_capacity_and_hasher(snap.nodes.len(), Default::default());
        let mut pools: HashMap<ContractId, BTreeSet<NodeId>> = HashMap::new();
        let mut node_blocks = IdMap::with_capacity_and_hasher(snap.nodes.len(), Default::default());
        for n in snap.nodes {
            let id = n.id;
            node_blocks.insert(id, repair::NodeBlocks::of(&n));
            // An unnamed node is left out: its placements show an empty name either way.
            if !n.name.is_empty() {
                node_names.insert(id, NodeName::from(n.name.as_str()));
            }
            nodes.insert(id, (n.state, n.gpus));
            let size = node_size.entry(n.gpu_model.clone()).or_default();
            *size = (*size).max(n.gpus);
            let cpu_milli = u64::from(n.cpu_cores) * 1000;
            let memory_mib = u64::from(n.ram_gib) * 1024;
            let host = node_host.entry(n.gpu_model.clone()).or_default();
            *host = (host.0.max(cpu_milli), host.1.max(memory_mib));
            let mig = neocloud_types::MigFamily::of_model(&n.gpu_model, n.gpu_memory_gib);
            let keep = keeps.get(&id).copied().unwrap_or_default();
            alloc.add_node(NodeSpec {
                id,
                site: n.site_id,
                gpu_model: n.gpu_model,
                gpus: n.gpus,
                blocks: n.blocks,
                idle_watts: n.idle_watts,
                peak_watts: n.peak_watts,
                shareable: config.shared_nodes || keep.tenants_per_gpu,
                cpu_milli,
                memory_mib,
                mig,
                sharing: Sharing {
                    slices: sharing.slices || keep.slices,
                    tenants_per_gpu: sharing.tenants_per_gpu || keep.tenants_per_gpu,
                    cpu_only: sharing.cpu_only || keep.cpu_only,
                },
            })?;
            if !schedulable(n.state) {
                alloc.set_schedulable(id, false);
            }
            for g in n.unhealthy_gpus {
                alloc.set_gpu_healthy(id, g, false);
            }
            if let Some(c) = n.pool {
                alloc.set_pool(id, Some(c))?;
                pools.entry(c).or_default().insert(id);
            }
        }
        let mut s = Scheduler {
            alloc,
            calendar: Calendar::new(),
            config,
            queue: queue::Queue::default(),
            notices: BTreeSet::new(),
            live: IdMap::with_capacity_and_hasher(snap.live.len(), Default::default()),
            sites: snap.sites,
            node_size,
            node_host,
            node_names,
            nodes,
            sold: ByModel::default(),
            quotas: snap.quotas,
            used: ByModel::default(),
            contracts: BTreeMap::new(),
            pools,
            pools_full: BTreeSet::new(),
            counters: Counters::default(),
            by_node: HashMap::new(),
            tracked: IdMap::default(),
            repairs: repair::Repairs::default(),
            node_blocks,
            warnings: Vec::new(),
        };
        for i in snap.live {
            if i.state.is_final() {
                continue;
            }
            if i.state.holds_gpus() {
                let first = i.placement.first();
                // Rows placed before CPU and memory were recorded: the proportional default.
                let (cpu_milli, memory_mib) = match first.map(|p| (p.cpu_milli, p.memory_mib)) {
                    Some((Some(c), Some(m))) => (c, m),
                    _ => first
                        .and_then(|p| s.alloc.host_need(p.node_id, &request_of(&i)))
                        .unwrap_or((0, 0)),
                };
                // A gang that lost a node holds fewer than it asked for.
                let shape = match i.shape {
                    Shape::Nodes { count, level } => {
                        let held = u32::try_from(i.placement.len()).unwrap_or(u32::MAX);
                        if held < count && i.on_node_failure == NodeFailurePolicy::Replace {
                            s.repairs.insert(i.id);
                        }
                        Shape::Nodes { count: held, level }
                    }
                    other => other,
                };
                let a = Allocation {
                    id: i.id,
                    tenant: i.tenant_id,
                    class: i.class,
                    gpu_model: i.gpu_model.clone(),
                    shape,
                    site: i.site_id.ok_or_else(|| format!("{} has no site", i.id))?,
                    pool: i.contract_id,
                    gpus: i
                        .placement
                        .iter()
                        .map(|p| (p.node_id, p.gpus.clone()))
                        .collect(),
                    cpu_milli,
                    memory_mib,
                    mig_start: first.and_then(|p| p.mig_start),
                };
                if let Some((site, model)) = sold_key(&a) {
                    s.sold.add(site, model, a.gpu_milli());
                }
                s.alloc
                    .restore(a)
                    .map_err(|e| format!("restoring {}: {e}", i.id))?;
            } else if i.state == InstanceState::Pending {
                s.queue.insert(s.queue_key(&i));
            }
            if i.state == InstanceState::Preempting
                && let Some(t) = i.preempt_at
            {
                s.notices.insert((t, i.id));
            }
            s.track(&i);
            s.index_delivered(&i, None);
            s.live.insert(i.id, i);
        }
        for (model, &topology) in &topologies {
            if let Err(e) = s.alloc.set_model_topology(model, topology) {
                s.warnings.push(format!(
                    "{e}; the model takes any GPUs together until that work ends"
                ));
            }
        }
        s.spread_spares();
        for c in snap.contracts {
            if matches!(c.state, ContractState::Signed | ContractState::Active) {
                s.calendar.commit(
                    &CapacityKey::new(c.site_id, &c.gpu_model),
                    c.id,
                    c.start_at.micros(),
                    c.end_at.micros(),
                    i64::from(c.gpu_count),
                )?;
                s.contracts.insert(c.id, c);
            }
        }
        Ok(s)
    }

    /// Spreads each site's spare buffer over its fabric: of the GPUs of a model that are not
    /// sellable, as many whole nodes as they fill are pinned as spares, a share in each
    /// pod ([`Allocator::spread_spares`]).
    fn spread_spares(&mut self) {
        let mut wanted = Vec::new();
        for site in &self.sites {
            for m in &site.gpus_by_model {
                let total = u64::try_from(m.gpus).unwrap_or(0);
                let buffer = total
                    - neocloud_allocator::selling::sellable_gpus(
                        total,
                        self.config.spare_buffer_milli,
                    );
                let size = u64::from(
                    self.node_size
                        .get(&m.gpu_model)
                        .copied()
                        .unwrap_or(8)
                        .max(1),
                );
                wanted.push((site.id, m.gpu_model.clone(), buffer / size));
            }
        }
        for (site, model, nodes) in wanted {
            self.alloc
                .spread_spares(site, &model, u32::try_from(nodes).unwrap_or(u32::MAX));
        }
    }

    /// Applies one command at `now`: the state changes and the effects to record are
    /// returned, or the command is refused and nothing changed.
    pub fn apply(&mut self, cmd: Command, now: Timestamp) -> Result<Vec<Effect>, Refused> {
        let mut fx = Vec::new();
        match cmd {
            Command::Launch(inst) => self.launch(inst, now, &mut fx)?,
            Command::Terminate { id } => self.terminate(id, now, &mut fx)?,
            Command::Tick => self.tick(now, &mut fx),
            Command::Node(c) => self.node_change(c, now, &mut fx)?,
            Command::Sign(c) => self.sign(c, now, &mut fx)?,
            Command::Cancel { id } => {
                let c = self
                    .contracts
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| Refused::NotFound(format!("contract {id} is not live")))?;
                self.close(&c, ContractState::Cancelled, now, &mut fx);
            }
            Command::Amend {
                id,
                gpu_count,
                end_at,
            } => self.amend(id, gpu_count, end_at, now, &mut fx)?,
            Command::SetQuota {
                tenant,
                gpu_model,
                class,
                max_gpus,
            } => {
                self.quotas.retain(|q| {
                    !(q.tenant_id == tenant && q.gpu_model == gpu_model && q.class == class)
                });
                if let Some(max_gpus) = max_gpus {
                    self.quotas.push(Quota {
                        tenant_id: tenant,
                        gpu_model,
                        class,
                        max_gpus,
                    });
                }
            }
            Command::SetPowerLimit { site, watts } => self.alloc.set_power_limit(site, watts),
            Command::Reports { node, reports } => self.reports(node, reports, now, &mut fx),
            Command::Maintain {
                window,
                nodes,
                start_at,
                reason,
            } => self.maintain(window, &nodes, start_at, &reason, now, &mut fx),
            Command::Unmaintain { window } => self.unmaintain(window, &mut fx),
        }
        Ok(fx)
    }

    // ----- reads -----

    /// The allocator underneath (read only).
    pub fn alloc(&self) -> &Allocator {
        &self.alloc
    }

    /// The calendar of contract promises.
    pub fn calendar(&self) -> &Calendar {
        &self.calendar
    }

    /// The settings.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Sites with their GPUs by model.
    pub fn sites(&self) -> &[Site] {
        &self.sites
    }

    /// Replaces a site's record (its name, power budget or cap changed).
    pub fn set_site(&mut self, site: Site) {
        if let Some(s) = self.sites.iter_mut().find(|s| s.id == site.id) {
            *s = site;
        }
    }

    /// Node names by id.
    pub fn node_names(&self) -> &IdMap<NodeId, NodeName> {
        &self.node_names
    }

    /// A node's lifecycle state as the scheduler knows it.
    pub fn node_state(&self, node: NodeId) -> Option<NodeState> {
        self.nodes.get(&node).map(|n| n.0)
    }

    /// GPUs per node of a model (the largest node of it).
    pub fn node_size(&self, model: &str) -> Option<u32> {
        self.node_size.get(model).copied()
    }

    /// An instance that has not ended.
    pub fn instance(&self, id: InstanceId) -> Option<&Instance> {
        self.live.get(&id)
    }

    /// Instances that have not ended.
    pub fn live(&self) -> impl Iterator<Item = &Instance> {
        self.live.values()
    }

    /// Pending instances, in the order the queue serves them.
    pub fn queued(&self) -> impl Iterator<Item = InstanceId> + '_ {
        self.queue.iter().map(|q| q.place.1)
    }

    /// Signed and active contracts.
    pub fn contracts(&self) -> impl Iterator<Item = &Contract> {
        self.contracts.values()
    }

    /// The block a node is counted in when a large instance's nodes are summarised (see
    /// [`Allocator::node_block`]).
    pub fn node_block(&self, node: NodeId) -> Option<neocloud_types::BlockId> {
        self.alloc.node_block(node)
    }

    /// Nodes pinned to a contract's pool.
    pub fn pool_nodes(&self, c: ContractId) -> Vec<NodeId> {
        self.pools
            .get(&c)
            .map(|p| p.iter().copied().collect())
            .unwrap_or_default()
    }

    /// How many instances wait in the queue.
    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    /// Whether an active contract's pool lacks nodes: the next [`Command::Tick`] tries to
    /// refill it (from free nodes, or by giving lower-class work notice).
    pub fn pools_short(&self) -> bool {
        self.contracts
            .values()
            .any(|c| c.state == ContractState::Active && !self.pools_full.contains(&c.id))
    }

    /// What the build left as it was, for the caller to log: a model whose topology the
    /// work already placed does not fit.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Decision counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// A fingerprint of the allocator's state, to compare two schedulers.
    pub fn fingerprint(&self) -> String {
        self.alloc.fingerprint()
    }

    /// Thousandths of GPUs of a model and class a tenant holds or waits for.
    pub fn quota_used(&self, tenant: TenantId, model: &str, class: Class) -> u64 {
        self.used.get(&(tenant, class), model)
    }

    /// Whether `req` would be placed now, deciding nothing: the allocator finds room for
    /// it and, for on-demand and internal work, its site's sellable capacity takes it.
    /// A request that names no site is asked of the allocator's first choice only. Work
    /// that would have to wait for a preemption reads as not placeable.
    pub fn would_place(&self, req: &Request, now: Timestamp) -> bool {
        self.alloc
            .try_place_quiet(req)
            .is_ok_and(|a| self.sellable_verdict(&a, false, now).is_ok())
    }

    /// Whether the policy allows the request's shape, and whether some node of the model
    /// could ever host its CPU and memory.
    pub fn check_shape(&self, inst: &Instance) -> Result<(), Refused> {
        let sharing = self.config.sharing;
        match inst.shape {
            Shape::Share { .. } | Shape::Mig { .. } if !sharing.slices => {
                return Err(Refused::Invalid(format!(
                    "this cloud does not sell parts of a GPU ({} asked); ask for whole GPUs",
                    inst.shape.describe()
                )));
            }
            Shape::Cpu if !sharing.cpu_only => {
                return Err(Refused::Invalid(
                    "this cloud's GPU nodes do not run CPU-only instances; ask for a GPU shape"
                        .into(),
                ));
            }
            _ => {}
        }
        // One that accepts several models needs a model some node of which can host it.
        let mut first = None;
        for model in std::iter::once(&inst.gpu_model).chain(inst.gpu_models.iter()) {
            match self.check_host(inst, model) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Whether some node of `model` could ever host the CPU and memory `inst` asks for.
    fn check_host(&self, inst: &Instance, model: &str) -> Result<(), Refused> {
        if let Some(&(cpu, mem)) = self.node_host.get(model) {
            if let Some(c) = inst.cpu_milli
                && cpu > 0
                && c > cpu
            {
                return Err(Refused::Invalid(format!(
                    "cpu_milli {c} is more than any {} node has ({cpu} thousandths of a core)",
                    model
                )));
            }
            if let Some(m) = inst.memory_mib
                && mem > 0
                && m > mem
            {
                return Err(Refused::Invalid(format!(
                    "memory_mib {m} is more than any {} node has ({mem} MiB)",
                    model
                )));
            }
        }
        Ok(())
    }

    // ----- bookkeeping -----

    fn queue_place(&self, i: &Instance) -> Place {
        (Reverse(i.class.priority(self.config.fleet_policy)), i.id)
    }

    /// The queue's entry for a pending instance.
    fn queue_key(&self, i: &Instance) -> Queued {
        Queued {
            place: self.queue_place(i),
            wait_until: i.wait_until,
            need: need_hash(i),
            req: request_of(i),
            models: i.gpu_models.clone(),
        }
    }

    fn quota_key(i: &Instance) -> (TenantId, Class) {
        (i.tenant_id, i.class)
    }

    /// Whether an instance counts in its quota: always, but while one that accepts several
    /// models waits (it counts as the model it is placed on, once it is).
    fn counted(i: &Instance) -> bool {
        i.gpu_models.is_empty() || i.state != InstanceState::Pending
    }

    fn track(&mut self, i: &Instance) {
        let m = i.shape.gpu_milli(i.gpu_count);
        if m > 0 && Self::counted(i) {
            self.used.add(Self::quota_key(i), &i.gpu_model, m);
        }
    }

    fn untrack(&mut self, i: &Instance) {
        let m = i.shape.gpu_milli(i.gpu_count);
        if m > 0 && Self::counted(i) {
            self.used.sub(&Self::quota_key(i), &i.gpu_model, m);
        }
    }

    /// Places through the allocator and keeps the sellable counters in step.
    fn place(&mut self, req: &Request) -> Result<Allocation, Refusal> {
        let r = self.alloc.place(req);
        if let Ok(a) = &r {
            self.counters.placed += 1;
            if let Some((site, model)) = sold_key(a) {
                self.sold.add(site, model, a.gpu_milli());
            }
        } else {
            self.counters.refused += 1;
        }
        r
    }

    /// Releases through the allocator and keeps the sellable counters in step.
    fn release(&mut self, id: InstanceId) -> Option<Allocation> {
        let a = self.alloc.release(id);
        if let Some(a) = &a {
            if let Some((site, model)) = sold_key(a) {
                self.sold.sub(&site, model, a.gpu_milli());
            }
            self.released_touched();
        }
        a
    }

    /// Places on-demand and internal work only within what contracts leave of a site's
    /// sellable capacity.
    fn place_checked(
        &mut self,
        req: &Request,
        now: Timestamp,
    ) -> Result<Allocation, (Refusal, bool)> {
        // Near the cap of work sold in one site, the allocator decides first without
        // placing: a placement the sellable check refuses is then never made and undone.
        // The answer is the one the placement and check would give.
        if self.sold_in_one_site(req)
            && let Some(site) = req.site.or_else(|| {
                self.sites
                    .iter()
                    .find(|s| s.gpus_by_model.iter().any(|m| m.gpu_model == req.gpu_model))
                    .map(|s| s.id)
            })
            && self.near_sellable_cap(req, site, now)
        {
            let a = self.alloc.try_place(req).map_err(|e| (e, true))?;
            self.sellable_verdict(&a, false, now)
                .map_err(|r| (r, false))?;
        }
        neocloud_allocator::selling::place_within_sellable(&mut Selling { s: self, now }, req)
    }

    /// Places a request that accepts any of `models` in one decision across them
    /// ([`Allocator::place_among`]). On-demand and internal work is then held to the
    /// sellable capacity of the model it landed on; when that refuses, the decision is
    /// made again without that model. The flag of an error says whether the allocator
    /// refused (`true`) or the sellable capacity did (`false`).
    fn place_among_checked(
        &mut self,
        req: &Request,
        models: &[String],
        now: Timestamp,
    ) -> Result<Allocation, (Refusal, bool)> {
        let mut left = models.to_vec();
        let mut last: Option<(Refusal, bool)> = None;
        while !left.is_empty() {
            let a = match self.alloc.place_among(req, &left) {
                Ok(a) => a,
                Err(e) => {
                    self.counters.refused += 1;
                    return Err(last.unwrap_or((e, true)));
                }
            };
            self.counters.placed += 1;
            if let Some((site, model)) = sold_key(&a) {
                self.sold.add(site, model, a.gpu_milli());
            }
            if !matches!(req.class, Class::OnDemand | Class::Internal) {
                return Ok(a);
            }
            match self.sellable_verdict(&a, true, now) {
                Ok(()) => return Ok(a),
                Err(refusal) => {
                    self.release(a.id);
                    left.retain(|m| *m != a.gpu_model);
                    last = Some((refusal, false));
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            (
                Refusal::UnknownModel {
                    model: models.join("|"),
                },
                true,
            )
        }))
    }

    /// At an allocation's site and model, now: the site, the thousandths of GPUs on-demand
    /// and internal work outside pools holds, the GPUs contracts promise, and the GPUs that
    /// may be sold. None for a site the scheduler does not know (nothing is checked there).
    fn selling_state(&self, a: &Allocation, now: Timestamp) -> Option<(&Site, u64, u64, u64)> {
        let site = self.sites.iter().find(|x| x.id == a.site)?;
        let sellable = u64::try_from(sellable(&self.config, site, &a.gpu_model)).unwrap_or(0);
        let key = CapacityKey::new(site.id, &a.gpu_model);
        let at = now.micros();
        let committed = u64::try_from(self.calendar.committed_peak(&key, at, at + 1)).unwrap_or(0);
        let held_milli = self.sold.get(&site.id, &a.gpu_model);
        Some((site, held_milli, committed, sellable))
    }

    /// The sellable check of an allocation, `placed` or only decided (then it counts as if
    /// it were held).
    fn sellable_verdict(
        &self,
        a: &Allocation,
        placed: bool,
        now: Timestamp,
    ) -> Result<(), Refusal> {
        let Some((site, held, committed, sellable)) = self.selling_state(a, now) else {
            return Ok(());
        };
        // Thousandths of a GPU, this placement included.
        let held_milli = if placed || sold_key(a).is_none() {
            held
        } else {
            held + a.gpu_milli()
        };
        if neocloud_allocator::selling::within_sellable(held_milli, committed, sellable) {
            return Ok(());
        }
        // GPUs in use by others, a part of a GPU counting as a whole one.
        let in_use = held_milli.saturating_sub(a.gpu_milli()).div_ceil(1000);
        if a.gpu_milli() > sellable.saturating_mul(1000) {
            // More than the site ever sells: waiting would not help.
            return Err(Refusal::NoCapacity {
                free_gpus: sellable.saturating_sub(committed).saturating_sub(in_use),
                reason: format!(
                    "{} sells at most {sellable} {} GPUs (the rest is kept spare to replace failed nodes); this request needs {}",
                    site.name,
                    a.gpu_model,
                    a.gpu_milli().div_ceil(1000)
                ),
            });
        }
        Err(Refusal::NoCapacity {
            // What is left to sell on demand, not the pool GPUs that sit idle.
            free_gpus: sellable.saturating_sub(committed).saturating_sub(in_use),
            // A tenant reads this: it says what it can get, never what others hold.
            reason: format!(
                "{} has no {} capacity left to sell on demand now; ask for a quote to see when capacity frees up, or launch with wait_seconds to queue",
                site.name, a.gpu_model
            ),
        })
    }

    /// Whether `req` is on-demand or internal work that may be placed in one site only
    /// (the one it names, or the only one with its model): the sellable rule then has one
    /// answer, that of the allocator's first decision.
    fn sold_in_one_site(&self, req: &Request) -> bool {
        matches!(req.class, Class::OnDemand | Class::Internal)
            && (req.site.is_some()
                || self
                    .sites
                    .iter()
                    .filter(|s| s.gpus_by_model.iter().any(|m| m.gpu_model == req.gpu_model))
                    .nth(1)
                    .is_none())
    }

    /// Whether [`Scheduler::place_checked`] may succeed for `req`, given `a`, what the
    /// allocator would place first. False only where it cannot: on-demand or internal work
    /// sold in one site only, whose placement would go over the sellable capacity.
    fn may_sell(&self, req: &Request, a: &Allocation, now: Timestamp) -> bool {
        !self.sold_in_one_site(req) || self.sellable_verdict(a, false, now).is_ok()
    }

    /// Whether placing `req` at `site` might go over the sellable capacity: the most it could
    /// hold (whole nodes of the model's largest size for a gang) does not fit in what is
    /// left to sell there now.
    fn near_sellable_cap(&self, req: &Request, site: SiteId, now: Timestamp) -> bool {
        let node = u64::from(self.node_size(&req.gpu_model).unwrap_or(8));
        let most = match req.shape {
            Shape::Gpus { gpus } => u64::from(gpus),
            Shape::Nodes { count, .. } => u64::from(count) * node,
            Shape::Share { .. } | Shape::Mig { .. } => 1,
            Shape::Cpu => 0,
        } * 1000;
        let probe = Allocation {
            id: req.id,
            tenant: req.tenant,
            class: req.class,
            gpu_model: req.gpu_model.clone(),
            shape: req.shape,
            site,
            pool: req.pool,
            gpus: Vec::new(),
            cpu_milli: 0,
            memory_mib: 0,
            mig_start: None,
        };
        let Some((_, held, committed, sellable)) = self.selling_state(&probe, now) else {
            return false;
        };
        !neocloud_allocator::selling::within_sellable(held + most, committed, sellable)
    }

    /// Ends an instance that has not ended: its state, its GPUs, the queue and its quota.
    fn end(
        &mut self,
        id: InstanceId,
        to: InstanceState,
        at: Timestamp,
        reason: Option<String>,
        action: &'static str,
        fx: &mut Vec<Effect>,
    ) {
        let Some(before) = self.live.remove(&id) else {
            return;
        };
        let held = before.state.holds_gpus();
        if held {
            self.release(id);
        } else {
            self.queue.remove(&self.queue_place(&before));
        }
        self.untrack(&before);
        self.unindex_delivered(&before);
        let mut after = before.clone();
        after.state = to;
        // A stopping instance's metering ended already when it was preempted or failed.
        let ended = before.ended_at.unwrap_or(at);
        after.ended_at = Some(ended);
        after.ends_as = None;
        if reason.is_some() {
            after.reason = reason;
        }
        fx.push(Effect::Update {
            before,
            after,
            action,
            meter_until: held.then_some(ended),
            release: true,
        });
    }

    // ----- commands -----

    fn launch(
        &mut self,
        mut inst: Instance,
        now: Timestamp,
        fx: &mut Vec<Effect>,
    ) -> Result<(), Refused> {
        if self.live.contains_key(&inst.id) {
            return Err(Refused::Conflict(format!("instance {} exists", inst.id)));
        }
        self.check_shape(&inst)?;
        let request = request_of(&inst);
        // A request that accepts several models is placed on those its quotas leave room on.
        let multi = !inst.gpu_models.is_empty();
        let models = if multi {
            let models = self.models_within_quota(&inst);
            if models.is_empty() {
                return Err(self.quota_refusal(&inst));
            }
            models
        } else {
            Vec::new()
        };
        let placed = if multi {
            self.place_among_checked(&request, &models, now)
        } else {
            self.place_checked(&request, now)
        };
        // A malformed request is refused, never queued: waiting cannot fix it.
        if let Err((
            r @ (Refusal::BadShape { .. }
            | Refusal::UnknownModel { .. }
            | Refusal::UnknownSite { .. }),
            _,
        )) = &placed
        {
            return Err(refused_of(r.clone()));
        }
        // Nor a gang larger than every block of its level: no release makes room for it.
        if placed.is_err()
            && !multi
            && !request.gpu_model.is_empty()
            && let Shape::Nodes { count, level } = request.shape
        {
            let most = self
                .alloc
                .largest_block(&request.gpu_model, request.site, level);
            if most < count {
                let site = match request.site {
                    Some(id) => format!(
                        " in site {}",
                        self.sites
                            .iter()
                            .find(|s| s.id == id)
                            .map_or(id.to_string(), |s| s.name.clone())
                    ),
                    None => String::new(),
                };
                return Err(Refused::Capacity(format!(
                    "a gang of {count} nodes at level {level} can never run: the largest {level} \
                     of {}{site} has {most} nodes",
                    request.gpu_model
                )));
            }
        }
        // GPUs this instance will hold: known from the placement, or from the shape and the
        // node size of the model.
        inst.gpu_count = match &placed {
            Ok(a) => u32::try_from(a.gpu_count()).unwrap_or(u32::MAX),
            Err(_) => self.shape_gpus(&inst),
        };
        if let Ok(a) = &placed {
            inst.gpu_model.clone_from(&a.gpu_model);
        }
        // One that accepts several models and waits counts in no quota yet (it had room on
        // one of them above).
        let quota = if multi && placed.is_err() {
            Ok(())
        } else {
            self.check_quota(&inst)
        };
        if let Err(e) = quota {
            if let Ok(a) = &placed {
                self.release(a.id);
            }
            return Err(e);
        }
        match placed {
            Ok(a) => {
                inst.reason = None;
                inst.site_id = Some(a.site);
                inst.wait_until = None;
                inst.placement = placed_nodes(&a, &self.node_names);
                self.placed_state(&mut inst, now);
                self.track(&inst);
                self.live.insert(inst.id, inst.clone());
                fx.push(Effect::Insert {
                    inst,
                    alloc: Some(a),
                });
            }
            Err((refusal, preemption_may_help)) => {
                let victims = if inst.class != Class::Spot && preemption_may_help {
                    if multi {
                        // The first accepted model where preempting makes room.
                        models.iter().find_map(|m| {
                            let r = Request {
                                gpu_model: m.clone(),
                                ..request.clone()
                            };
                            self.alloc.preemption_plan(&r).filter(|v| !v.is_empty())
                        })
                    } else {
                        self.alloc
                            .preemption_plan(&request)
                            .filter(|v| !v.is_empty())
                    }
                } else {
                    None
                };
                if victims.is_none() && inst.wait_until.is_none() {
                    return Err(refused_of(refusal));
                }
                inst.reason = Some(match &victims {
                    Some(v) => format!(
                        "waiting for {} lower-priority instance(s) to be preempted (notice {} s)",
                        v.len(),
                        self.config.preemption_grace_secs
                    ),
                    None => format!("queued: {refusal}"),
                });
                let mut notices = Vec::new();
                if let Some(v) = &victims {
                    let deadline = self.notify_victims(v, inst.id, now, &mut notices);
                    // It waits at least until the victims are gone.
                    let need = deadline.plus_seconds(60);
                    inst.wait_until = Some(inst.wait_until.map_or(need, |w| w.max(need)));
                }
                inst.state = InstanceState::Pending;
                self.queue.insert(self.queue_key(&inst));
                self.track(&inst);
                self.live.insert(inst.id, inst.clone());
                fx.push(Effect::Insert { inst, alloc: None });
                fx.extend(notices);
            }
        }
        Ok(())
    }

    fn shape_gpus(&self, inst: &Instance) -> u32 {
        match inst.shape {
            Shape::Gpus { gpus } => gpus,
            Shape::Share { .. } | Shape::Mig { .. } => 1,
            Shape::Cpu => 0,
            Shape::Nodes { count, .. } => {
                count.saturating_mul(self.node_size.get(&inst.gpu_model).copied().unwrap_or(8))
            }
        }
    }

    fn check_quota(&self, inst: &Instance) -> Result<(), Refused> {
        self.check_quota_on(inst, &inst.gpu_model)
    }

    /// The accepted models of an instance that accepts several on which its tenant's quotas
    /// leave it room, in its order.
    fn models_within_quota(&self, inst: &Instance) -> Vec<String> {
        inst.gpu_models
            .iter()
            .filter(|m| self.check_quota_on(inst, m).is_ok())
            .cloned()
            .collect()
    }

    /// The refusal of an instance that accepts several models, none of which its quotas
    /// leave room on: every model's reason.
    fn quota_refusal(&self, inst: &Instance) -> Refused {
        let reasons: Vec<String> = inst
            .gpu_models
            .iter()
            .filter_map(|m| match self.check_quota_on(inst, m) {
                Err(Refused::Quota(r)) => Some(r),
                _ => None,
            })
            .collect();
        Refused::Quota(reasons.join("; "))
    }

    /// The quota check of `inst` as if it ran on `model`.
    fn check_quota_on(&self, inst: &Instance, model: &str) -> Result<(), Refused> {
        let Some(q) = self.quotas.iter().find(|q| {
            q.tenant_id == inst.tenant_id && q.gpu_model == model && q.class == inst.class
        }) else {
            return Ok(());
        };
        // Thousandths of a GPU: a share counts its share, a MIG instance its compute slices
        // out of 7, CPU-only nothing; the sum, rounded up to whole GPUs, is held to the quota.
        let used = self.quota_used(inst.tenant_id, model, inst.class);
        // Before it is placed or queued, what its shape will hold.
        let count = match inst.gpu_count {
            0 => self.shape_gpus(inst),
            n => n,
        };
        let asks = inst.shape.gpu_milli(count);
        if asks > 0 && (used + asks).div_ceil(1000) > u64::from(q.max_gpus) {
            return Err(Refused::Quota(format!(
                "quota for {} {} GPUs is {}; {} are in use and this asks for {}",
                inst.class,
                model,
                q.max_gpus,
                gpus_text(used),
                gpus_text(asks)
            )));
        }
        Ok(())
    }

    /// Puts victims into `preempting` with a notice; their GPUs are taken when it runs out.
    /// Returns when the last of them stops.
    fn notify_victims(
        &mut self,
        victims: &[InstanceId],
        by: InstanceId,
        now: Timestamp,
        fx: &mut Vec<Effect>,
    ) -> Timestamp {
        let deadline = now.plus_seconds(self.config.preemption_grace_secs);
        let mut latest = now;
        for v in victims {
            let Some(i) = self.live.get_mut(v) else {
                continue;
            };
            if i.state == InstanceState::Preempting {
                latest = latest.max(i.preempt_at.unwrap_or(now));
                continue;
            }
            let before = i.clone();
            i.state = InstanceState::Preempting;
            i.preempt_at = Some(deadline);
            i.reason = Some(format!("preempted for {by}; stops at {deadline}"));
            self.notices.insert((deadline, *v));
            fx.push(Effect::Update {
                before,
                after: i.clone(),
                action: "instance.preempting",
                meter_until: None,
                release: false,
            });
            latest = latest.max(deadline);
        }
        latest
    }

    fn terminate(
        &mut self,
        id: InstanceId,
        now: Timestamp,
        fx: &mut Vec<Effect>,
    ) -> Result<(), Refused> {
        let Some(i) = self.live.get(&id) else {
            return Err(Refused::NotFound(format!("instance {id} has ended")));
        };
        if i.delivery.is_some() && i.state.holds_gpus() {
            // Its agents stop, remove and scrub it; it ends when they confirm.
            if i.state != InstanceState::Stopping {
                self.stop(
                    id,
                    InstanceState::Terminated,
                    "terminated by its tenant".into(),
                    None,
                    now,
                    fx,
                );
            }
            return Ok(());
        }
        let reason = (!i.state.holds_gpus()).then(|| "terminated before it was placed".to_string());
        self.end(
            id,
            InstanceState::Terminated,
            now,
            reason,
            "instance.terminated",
            fx,
        );
        self.serve_queue(now, fx);
        Ok(())
    }

    fn tick(&mut self, now: Timestamp, fx: &mut Vec<Effect>) {
        // Preemptions whose notice is over, by deadline then id.
        let ran_out: Vec<(Timestamp, InstanceId)> = self
            .notices
            .iter()
            .take_while(|(t, _)| *t <= now)
            .copied()
            .collect();
        for n in &ran_out {
            self.notices.remove(n);
        }
        let due: Vec<(Timestamp, InstanceId)> = ran_out
            .into_iter()
            .filter(|&(t, id)| {
                self.live.get(&id).is_some_and(|i| {
                    i.state == InstanceState::Preempting && i.preempt_at == Some(t)
                })
            })
            .collect();
        for (deadline, id) in due {
            let reason = self
                .live
                .get(&id)
                .and_then(|i| i.reason.clone())
                .unwrap_or_else(|| "preempted by higher-priority work".into());
            if self.live.get(&id).is_some_and(|i| i.delivery.is_some()) {
                // Its workload gets SIGTERM now; metering stops at the deadline.
                self.stop(
                    id,
                    InstanceState::Preempted,
                    reason,
                    Some(deadline),
                    now,
                    fx,
                );
                self.counters.preemptions += 1;
                continue;
            }
            self.end(
                id,
                InstanceState::Preempted,
                now,
                Some(reason),
                "instance.preempted",
                fx,
            );
            self.counters.preemptions += 1;
        }
        self.delivery_timeouts(now, fx);
        // Blocks whose spare was taken get one back from their own free nodes.
        self.alloc.top_up_spares();
        self.advance_contracts(now, fx);
        self.serve_queue(now, fx);
    }

    /// Starts queued instances that now fit, highest priority first, and fails those whose
    /// deadline passed.
    ///
    /// A pass only places, it never frees, so a request that found no room finds none later
    /// in the same pass: the ones behind it that ask for the same thing are not tried again
    /// (they are still failed if their deadline passed). So the pass looks, in queue order,
    /// only at the first request of each need, at the next one of a need whose request it
    /// placed, and at those whose deadline passed (see the `queue` module).
    fn serve_queue(&mut self, now: Timestamp, fx: &mut Vec<Effect>) {
        if !self.repairs.is_empty() {
            self.serve_repairs(now, fx);
        }
        // The pass reads the queue as it was at its start; nothing it calls reads the queue,
        // and the entries it places or fails leave it at the end. An entry holds what the
        // pass reads.
        let queue = std::mem::take(&mut self.queue);
        // Needs that found no room in this pass.
        let mut blocked: HashSet<queue::NeedId, BuildHasherDefault<NeedHasher>> =
            HashSet::default();
        let mut todo: BTreeSet<Place> = queue.first_of_each_need().collect();
        todo.extend(queue.due(now));
        let mut gone: Vec<Place> = Vec::new();
        while let Some(key) = todo.pop_first() {
            let Some(q) = queue.get(&key) else {
                continue;
            };
            let Some(need_id) = queue.need_of(q) else {
                continue;
            };
            let wait_until = q.wait_until;
            let expired = wait_until.is_some_and(|t| t <= now);
            let seen = blocked.contains(&need_id);
            if seen && !expired {
                continue;
            }
            if !self.live.contains_key(&key.1) {
                gone.push(key);
                if !seen {
                    todo.extend(queue.next_of_need(need_id, &key));
                }
                continue;
            }
            let req = q.req.clone();
            // In-memory checks first: most ticks start nothing. What the allocator would
            // place first is also checked against the sellable capacity, so that a request
            // that cannot be sold is not placed and released again.
            // One that accepts several models is placed on those its quotas leave room on
            // now, in one decision.
            let placed = if q.models.is_empty() {
                let fits = !seen
                    && self
                        .alloc
                        .try_place_quiet(&req)
                        .is_ok_and(|a| self.may_sell(&req, &a, now));
                if fits {
                    self.place_checked(&req, now).ok()
                } else {
                    None
                }
            } else {
                let models = match self.live.get(&key.1) {
                    Some(i) if !seen => self.models_within_quota(i),
                    _ => Vec::new(),
                };
                if models.is_empty() {
                    None
                } else {
                    self.place_among_checked(&req, &models, now).ok()
                }
            };
            if let Some(a) = placed {
                gone.push(key);
                todo.extend(queue.next_of_need(need_id, &key));
                let Some(mut i) = self.live.remove(&key.1) else {
                    continue;
                };
                let before = i.clone();
                let counted = Self::counted(&i);
                i.gpu_model.clone_from(&a.gpu_model);
                i.reason = None;
                i.site_id = Some(a.site);
                i.wait_until = None;
                i.placement = placed_nodes(&a, &self.node_names);
                self.placed_state(&mut i, now);
                if !counted {
                    self.track(&i);
                }
                self.live.insert(i.id, i.clone());
                fx.push(Effect::Start {
                    before,
                    after: i,
                    alloc: a,
                });
                continue;
            }
            if !seen {
                blocked.insert(need_id);
            }
            if expired {
                let reason = format!(
                    "no capacity before its deadline {}",
                    wait_until.map(|t| t.to_string()).unwrap_or_default()
                );
                // A pending instance: `end` takes it out of the queue, which is `gone` here.
                gone.push(key);
                self.end(
                    key.1,
                    InstanceState::Failed,
                    now,
                    Some(reason),
                    "instance.failed",
                    fx,
                );
            }
        }
        self.queue = queue;
        for key in &gone {
            self.queue.remove(key);
        }
    }

    fn node_change(
        &mut self,
        c: NodeChange,
        now: Timestamp,
        fx: &mut Vec<Effect>,
    ) -> Result<(), Refused> {
        let Some(&(current, gpu_count)) = self.nodes.get(&c.node) else {
            return Err(Refused::NotFound(format!(
                "node {} is not in the fleet",
                c.node
            )));
        };
        if let Some(from) = c.from
            && from != current
        {
            return Err(Refused::Conflict(format!(
                "node changed meanwhile: it is {current} now, not {from}; retry"
            )));
        }
        let name = self.node_names.get(&c.node).cloned().unwrap_or_default();
        // Who ran there (before anything moves).
        let holders = if matches!(c.to, NodeState::Failed | NodeState::Maintenance) {
            self.alloc.node_holders(c.node)
        } else {
            Vec::new()
        };
        if c.heal {
            for g in 0..gpu_count {
                self.alloc.set_gpu_healthy(c.node, g, true);
            }
        }
        for &(g, healthy) in &c.gpus {
            self.alloc.set_gpu_healthy(c.node, g, healthy);
        }
        self.alloc.set_schedulable(c.node, schedulable(c.to));
        self.node_touched(c.node);
        if let Some(n) = self.nodes.get_mut(&c.node) {
            n.0 = c.to;
        }
        // A pool node out of service leaves the pool; a spare takes its place, pinned
        // first so that a reserved gang of the pool can take it at once.
        let out = matches!(c.to, NodeState::Failed | NodeState::Maintenance);
        let pool = if out {
            self.alloc.node_pool(c.node)
        } else {
            None
        };
        let spare = pool.and_then(|contract| {
            let spare = self.alloc.spare_near(c.node)?;
            self.set_pool(spare, Some(contract), fx);
            Some(spare)
        });
        // Work on a failed node: gangs follow their policy (a node of their block takes
        // the failed one's place, or they shrink); everything else ends at the fault. Work
        // still on a node going into maintenance is handled alike, but stopped (preempted)
        // rather than failed.
        for id in holders {
            let Some(i) = self.live.get(&id) else {
                continue;
            };
            if !i.state.holds_gpus() {
                continue;
            }
            if self.node_lost(id, c.node, &c, now, fx) {
                continue;
            }
            if c.to == NodeState::Maintenance {
                self.stop_for_maintenance(id, &name, &c, now, fx);
                continue;
            }
            let Some(i) = self.live.get(&id) else {
                continue;
            };
            let end = c.at.max(i.started_at.unwrap_or(c.at)).min(now);
            self.end(
                id,
                InstanceState::Failed,
                end,
                Some(format!("node {name} failed: {}", c.reason)),
                "instance.failed",
                fx,
            );
        }
        if let Some(contract) = pool {
            self.set_pool(c.node, None, fx);
            fx.push(Effect::OutageOpen {
                contract,
                node: c.node,
                gpus: gpu_count,
                at: c.at,
                note: format!("node {name} {}: {}", c.to, c.reason),
            });
            match spare {
                Some(spare) => {
                    let spare_name = self.node_names.get(&spare).cloned().unwrap_or_default();
                    fx.push(Effect::OutageClose {
                        contract,
                        at: now,
                        note: format!("replaced by spare {spare_name}"),
                        event: Some(Event {
                            action: "contract.pool_node_replaced",
                            resource_kind: "contract",
                            resource_id: contract.to_string(),
                            tenant_id: None,
                            before: Some(serde_json::json!({"node": name})),
                            after: Some(serde_json::json!({"node": spare_name})),
                        }),
                    });
                }
                None => {
                    // No spare now: the contract's pool refills when capacity frees up.
                    self.pools_full.remove(&contract);
                    fx.push(Effect::Event(Event {
                        action: "contract.pool_node_lost",
                        resource_kind: "contract",
                        resource_id: contract.to_string(),
                        tenant_id: None,
                        before: Some(serde_json::json!({"node": name})),
                        after: Some(serde_json::json!({"spare": null})),
                    }));
                }
            }
        }
        if !c.gpus.is_empty() || c.heal || schedulable(c.to) {
            // Capacity may have come back.
            self.serve_queue(now, fx);
        }
        Ok(())
    }

    fn set_pool(&mut self, node: NodeId, pool: Option<ContractId>, fx: &mut Vec<Effect>) {
        let old = self.alloc.node_pool(node);
        self.node_touched(node);
        if let Err(e) = self.alloc.set_pool(node, pool) {
            fx.push(Effect::Warning(format!(
                "could not move node {node} between pools: {e}"
            )));
            return;
        }
        if let Some(o) = old
            && let Some(p) = self.pools.get_mut(&o)
        {
            p.remove(&node);
        }
        if let Some(c) = pool {
            self.pools.entry(c).or_default().insert(node);
        }
        fx.push(Effect::Pool {
            node,
            contract: pool,
        });
    }

    fn sign(&mut self, c: Contract, now: Timestamp, fx: &mut Vec<Effect>) -> Result<(), Refused> {
        if self.contracts.contains_key(&c.id) {
            return Err(Refused::Conflict(format!("contract {} exists", c.id)));
        }
        let key = CapacityKey::new(c.site_id, &c.gpu_model);
        // Checked again here: two signs racing for the last capacity cannot both win.
        let site = self
            .sites
            .iter()
            .find(|s| s.id == c.site_id)
            .ok_or_else(|| Refused::Invalid(format!("site {} is unknown", c.site_id)))?;
        let sellable = sellable(&self.config, site, &c.gpu_model);
        if !self.calendar.fits(
            &key,
            c.start_at.micros(),
            c.end_at.micros(),
            i64::from(c.gpu_count),
            sellable,
        ) {
            return Err(Refused::Capacity(format!(
                "{} {} GPUs at {} from {} to {} do not fit: the capacity is promised to other contracts in that window",
                c.gpu_count, c.gpu_model, site.name, c.start_at, c.end_at
            )));
        }
        self.calendar
            .commit(
                &key,
                c.id,
                c.start_at.micros(),
                c.end_at.micros(),
                i64::from(c.gpu_count),
            )
            .map_err(Refused::Internal)?;
        self.contracts.insert(c.id, c.clone());
        fx.push(Effect::ContractInsert(c.clone()));
        // A contract that starts now gets its pool at once.
        if c.start_at <= now {
            self.fill_pool(c.id, now, fx);
        }
        Ok(())
    }

    fn amend(
        &mut self,
        id: ContractId,
        count: u32,
        end: Timestamp,
        now: Timestamp,
        fx: &mut Vec<Effect>,
    ) -> Result<(), Refused> {
        let c = self
            .contracts
            .get(&id)
            .cloned()
            .ok_or_else(|| Refused::Conflict(format!("contract {id} has ended")))?;
        if count < c.gpu_count || end < c.end_at {
            return Err(Refused::Invalid(
                "a contract can only grow: more GPUs or a later end".into(),
            ));
        }
        let node_size = self
            .node_size
            .get(&c.gpu_model)
            .copied()
            .unwrap_or(8)
            .max(1);
        if !count.is_multiple_of(node_size) {
            return Err(Refused::Invalid(format!(
                "gpu_count must be a multiple of {node_size} (reserved pools are whole nodes)"
            )));
        }
        let site = self
            .sites
            .iter()
            .find(|s| s.id == c.site_id)
            .ok_or_else(|| Refused::Internal("contract site missing".into()))?;
        let cap = sellable(&self.config, site, &c.gpu_model);
        let key = CapacityKey::new(c.site_id, &c.gpu_model);
        let old = self.calendar.remove(c.id);
        let fits = self.calendar.fits(
            &key,
            c.start_at.micros(),
            end.micros(),
            i64::from(count),
            cap,
        );
        let restore = |cal: &mut Calendar| {
            if let Some(o) = &old {
                cal.commit(&o.key, c.id, o.start, o.end, o.gpus)
                    .map_err(Refused::Internal)
            } else {
                Ok(())
            }
        };
        if !fits {
            let max = self
                .calendar
                .max_count(&key, c.start_at.micros(), end.micros(), cap);
            restore(&mut self.calendar)?;
            return Err(Refused::Capacity(format!(
                "{count} {} GPUs until {end} do not fit: at most {} (this contract's included) are free on the calendar for that window",
                c.gpu_model,
                max - max % i64::from(node_size)
            )));
        }
        if let Err(e) = self.calendar.commit(
            &key,
            c.id,
            c.start_at.micros(),
            end.micros(),
            i64::from(count),
        ) {
            restore(&mut self.calendar)?;
            return Err(Refused::Internal(e));
        }
        if let Some(live) = self.contracts.get_mut(&id) {
            live.gpu_count = count;
            live.end_at = end;
        }
        // A bigger active pool fills now, or on a later pass.
        self.pools_full.remove(&id);
        if c.start_at <= now {
            self.fill_pool(id, now, fx);
        }
        Ok(())
    }

    /// Ends a contract (cancelled, or past its end): its instances end, its pool is
    /// unpinned, its promise leaves the calendar.
    fn close(&mut self, c: &Contract, state: ContractState, now: Timestamp, fx: &mut Vec<Effect>) {
        let mut ids: Vec<InstanceId> = self
            .live
            .values()
            .filter(|i| i.contract_id == Some(c.id))
            .map(|i| i.id)
            .collect();
        ids.sort();
        for id in ids {
            let reason = format!("contract {} {state}", c.id);
            let delivered = self
                .live
                .get(&id)
                .is_some_and(|i| i.delivery.is_some() && i.state.holds_gpus());
            if delivered {
                // Its agents stop, remove and scrub it first: its GPUs are sold again only
                // then. Metering ends with the contract.
                self.stop(id, InstanceState::Terminated, reason, Some(now), now, fx);
            } else {
                self.end(
                    id,
                    InstanceState::Terminated,
                    now,
                    Some(reason),
                    "instance.terminated",
                    fx,
                );
            }
        }
        for n in self.pool_nodes(c.id) {
            self.set_pool(n, None, fx);
        }
        self.pools.remove(&c.id);
        self.pools_full.remove(&c.id);
        self.calendar.remove(c.id);
        self.contracts.remove(&c.id);
        fx.push(Effect::ContractState {
            before: c.clone(),
            state,
            action: if state == ContractState::Cancelled {
                "contract.cancelled"
            } else {
                "contract.ended"
            },
            detail: None,
        });
        self.serve_queue(now, fx);
    }

    /// Starts contracts whose start has come (pins their pools) and ends those past their end.
    fn advance_contracts(&mut self, now: Timestamp, fx: &mut Vec<Effect>) {
        let live: Vec<Contract> = self.contracts.values().cloned().collect();
        for c in live {
            if c.end_at <= now {
                self.close(&c, ContractState::Ended, now, fx);
                continue;
            }
            if c.start_at > now {
                continue;
            }
            self.fill_pool(c.id, now, fx);
        }
    }

    /// Pins whole free nodes to an active contract's pool until it has its GPUs; if too few
    /// are free, notifies lower-class instances on other nodes of the site for preemption.
    fn fill_pool(&mut self, id: ContractId, now: Timestamp, fx: &mut Vec<Effect>) {
        let Some(c) = self.contracts.get(&id).cloned() else {
            return;
        };
        if c.state == ContractState::Active && self.pools_full.contains(&c.id) {
            return;
        }
        let node_size = self
            .node_size
            .get(&c.gpu_model)
            .copied()
            .unwrap_or(8)
            .max(1);
        let pinned = self.pools.get(&c.id).map_or(0, BTreeSet::len);
        let want = usize::try_from(c.gpu_count / node_size).unwrap_or(usize::MAX);
        if pinned >= want {
            self.pools_full.insert(c.id);
        }
        if c.state != ContractState::Signed && pinned >= want {
            return;
        }
        let mut need = want.saturating_sub(pinned);
        let level = c.single_block.unwrap_or(GangLevel::Site);
        let mut picked = Vec::new();
        // Ask the allocator for free whole nodes, the largest gang it can find first.
        while need > 0 {
            let frag = self.alloc.fragmentation(c.site_id, &c.gpu_model);
            let avail = frag
                .largest_gang_by_level
                .iter()
                .find(|(l, _)| *l == level)
                .map(|(_, n)| usize::try_from(*n).unwrap_or(usize::MAX))
                .unwrap_or(0);
            let take = need.min(avail);
            if take == 0 {
                break;
            }
            let probe = Request {
                id: InstanceId::new(),
                tenant: c.tenant_id,
                class: Class::Internal,
                gpu_model: c.gpu_model.clone(),
                shape: Shape::Nodes {
                    count: u32::try_from(take).unwrap_or(u32::MAX),
                    level,
                },
                site: Some(c.site_id),
                pool: None,
                cpu_milli: None,
                memory_mib: None,
            };
            let Ok(a) = self.alloc.try_place_quiet(&probe) else {
                break;
            };
            for (node, _) in &a.gpus {
                self.set_pool(*node, Some(c.id), fx);
                picked.push(*node);
            }
            need -= a.gpus.len();
        }
        for n in &picked {
            // A node that refills a pool after a failure ends one of its outages.
            let name = self.node_names.get(n).cloned().unwrap_or_default();
            fx.push(Effect::OutageClose {
                contract: c.id,
                at: now,
                note: format!("refilled with node {name}"),
                event: None,
            });
        }
        if pinned + picked.len() >= want {
            self.pools_full.insert(c.id);
        }
        if c.state == ContractState::Signed {
            if let Some(live) = self.contracts.get_mut(&c.id) {
                live.state = ContractState::Active;
            }
            fx.push(Effect::ContractState {
                before: c.clone(),
                state: ContractState::Active,
                action: "contract.activated",
                detail: Some(serde_json::json!({
                    "pinned_nodes": pinned + picked.len(),
                    "wanted_nodes": want
                })),
            });
        }
        if need > 0 {
            // Take nodes from lower-class work. The probe asks as the higher of internal
            // and on-demand under the fleet policy, so it may preempt spot and the lower
            // of the two; work of the peer class is waited out.
            let class = if self.config.fleet_policy == FleetPolicy::LabFirst {
                Class::Internal
            } else {
                Class::OnDemand
            };
            let probe = Request {
                id: InstanceId::new(),
                tenant: c.tenant_id,
                class,
                gpu_model: c.gpu_model.clone(),
                shape: Shape::Nodes {
                    count: u32::try_from(need).unwrap_or(u32::MAX),
                    level,
                },
                site: Some(c.site_id),
                pool: None,
                cpu_milli: None,
                memory_mib: None,
            };
            if let Some(victims) = self.alloc.preemption_plan(&probe) {
                self.notify_victims(&victims, probe.id, now, fx);
            }
        }
    }
}

/// The scheduler as [`neocloud_allocator::selling`] sees it, at one moment.
struct Selling<'a> {
    s: &'a mut Scheduler,
    now: Timestamp,
}

impl neocloud_allocator::selling::Seller for Selling<'_> {
    fn place(&mut self, req: &Request) -> Result<Allocation, Refusal> {
        self.s.place(req)
    }

    fn release(&mut self, id: InstanceId) {
        self.s.release(id);
    }

    fn sites_with(&self, model: &str) -> Vec<SiteId> {
        self.s
            .sites
            .iter()
            .filter(|s| s.gpus_by_model.iter().any(|m| m.gpu_model == model))
            .map(|s| s.id)
            .collect()
    }

    fn check_sellable(&self, a: &Allocation) -> Result<(), Refusal> {
        self.s.sellable_verdict(a, true, self.now)
    }
}
