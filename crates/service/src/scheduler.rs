//! Placing instances: the allocator behind a lock, the queue, preemption with notice, and
//! the durable record of every decision.
//!
//! One [`Sched`] per control plane holds the in-memory allocator. Every allocation change
//! is decided under its lock and committed to the database (instance state, GPU holders,
//! audit event) in one transaction *before* it is acknowledged; if the commit fails, the
//! in-memory decision is undone. At start the allocator is rebuilt from the database
//! ([`Sched::rebuild`]), so a crash loses no committed allocation and cannot double-assign
//! a GPU (the `holder` column refuses a second holder on its own).

use std::collections::BTreeMap;

use neocloud_allocator::{
    Allocation, Allocator, NodeSpec, PlacementPolicy, Request, Sharing, SiteSpec,
};
use neocloud_store::{NewEvent, Store, WriteTx};
use neocloud_types::{
    ApiKeyId, Class, FleetPolicy, Instance, InstanceId, InstanceState, NodeState, Timestamp,
};

use crate::error::{Error, ErrorCode, Result};

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
    /// Whether different tenants may share a node (sub-node shapes). Off by default:
    /// DESIGN.md §3.4.
    pub shared_nodes: bool,
    /// What nodes run besides whole GPUs: shares and MIG instances (on by default),
    /// slices of one GPU for different tenants (off; needs `shared_nodes`), CPU-only
    /// instances (off: GPU nodes keep their CPUs for their GPUs).
    pub sharing: Sharing,
    /// How often agents send heartbeats, seconds.
    pub heartbeat_interval_secs: u32,
    /// Heartbeats in a row a node may miss before it is failed.
    pub missed_heartbeats: u32,
    /// Idle nodes whose last burn-in is older than this many seconds run it again; 0 never.
    pub reverify_idle_secs: i64,
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
            reverify_idle_secs: 7 * 86_400,
        }
    }
}

/// A pending instance waiting in the queue.
#[derive(Clone, Debug)]
pub(crate) struct Queued {
    pub(crate) request: Request,
    pub(crate) wait_until: Option<Timestamp>,
    /// When it was accepted (its wait began).
    pub(crate) since: Timestamp,
}

/// The allocator, the queue, and the settings. Guarded by one lock in the service.
pub(crate) struct Sched {
    pub(crate) alloc: Allocator,
    /// GPUs promised by signed and active contracts, over time.
    pub(crate) calendar: neocloud_allocator::calendar::Calendar,
    pub(crate) config: SchedulerConfig,
    /// Pending instances by (priority descending, arrival): served in that order.
    pub(crate) queue: BTreeMap<(std::cmp::Reverse<u8>, InstanceId), Queued>,
    /// Sites with their GPU totals; they change only with fleet imports, which rebuild this.
    pub(crate) sites: Vec<neocloud_types::Site>,
    /// GPUs per node of each model (the largest node of that model).
    pub(crate) node_size: BTreeMap<String, u32>,
    /// Thousandths of GPUs held by on-demand and internal work outside pools, per (site,
    /// model; a share or MIG instance counts its part of one GPU): what the
    /// sellable check counts. Kept in step by [`Sched::place`] and [`Sched::release`].
    pub(crate) sold: std::collections::HashMap<(neocloud_types::SiteId, String), u64>,
    /// The most CPU (thousandths of a core) and memory (MiB) one node of each model has, to
    /// refuse requests no node could ever host.
    pub(crate) node_host: BTreeMap<String, (u64, u64)>,
    /// Node names by id, to show placements without a query.
    pub(crate) node_names: std::collections::HashMap<neocloud_types::NodeId, String>,
    /// Every quota; refreshed when one is set.
    pub(crate) quotas: Vec<neocloud_types::Quota>,
    /// When spot prices were last recomputed.
    pub(crate) spot_repriced_at: Option<Timestamp>,
    /// Active contracts whose pool has all its nodes: nothing to do for them until the end.
    pub(crate) pools_full: std::collections::BTreeSet<neocloud_types::ContractId>,
    /// The console's topology-map layout per site (node names and blocks), read on first use;
    /// it changes only with fleet imports, which rebuild this whole struct.
    pub(crate) map_cells: std::collections::HashMap<
        neocloud_types::SiteId,
        std::sync::Arc<Vec<neocloud_store::NodeCell>>,
    >,
}

pub(crate) fn request_of(i: &Instance) -> Request {
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

/// What an allocation holds besides GPUs, as the store records it.
pub(crate) fn held_of(a: &Allocation) -> neocloud_store::Held {
    neocloud_store::Held {
        cpu_milli: a.cpu_milli,
        memory_mib: a.memory_mib,
        mig_start: a.mig_start,
    }
}

/// An allocation's placement as an instance shows it.
pub(crate) fn placed_nodes(
    a: &Allocation,
    names: &std::collections::HashMap<neocloud_types::NodeId, String>,
) -> Vec<neocloud_types::PlacedNode> {
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

fn node_schedulable(state: NodeState) -> bool {
    matches!(state, NodeState::Available | NodeState::Allocated)
}

impl Sched {
    /// Rebuilds the allocator and the queue from the database.
    pub(crate) async fn rebuild(store: &Store, config: SchedulerConfig) -> Result<Sched> {
        let mut alloc = Allocator::new(config.fleet_policy, config.placement);
        let (sites, nodes) = store.allocator_fleet().await?;
        for s in sites {
            alloc.add_site(SiteSpec {
                id: s.id,
                power_limit_watts: s.power_budget_watts,
                pue_milli: s.pue_milli,
            });
        }
        let mut node_size: BTreeMap<String, u32> = BTreeMap::new();
        let mut node_host: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let mut node_names = std::collections::HashMap::with_capacity(nodes.len());
        // Tenants may share one GPU only where they may share the node.
        let sharing = Sharing {
            tenants_per_gpu: config.sharing.tenants_per_gpu && config.shared_nodes,
            ..config.sharing
        };
        let live = store.instance_list_live().await?;
        // What already runs is restored whatever the policy says now: a node that holds
        // slices, CPU-only instances or several tenants' slices of one GPU keeps taking them
        // (a policy turned off applies to the other nodes, and to these after a restart
        // once they are empty).
        let mut keeps: std::collections::HashMap<neocloud_types::NodeId, Sharing> =
            Default::default();
        let mut slice_tenants: std::collections::HashMap<
            (neocloud_types::NodeId, u32),
            neocloud_types::TenantId,
        > = Default::default();
        for i in live
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
        for n in nodes {
            let id = n.id;
            node_names.insert(id, n.name.clone());
            let size = node_size.entry(n.gpu_model.clone()).or_default();
            *size = (*size).max(n.gpus);
            let cpu_milli = u64::from(n.cpu_cores) * 1000;
            let memory_mib = u64::from(n.ram_gib) * 1024;
            let host = node_host.entry(n.gpu_model.clone()).or_default();
            *host = (host.0.max(cpu_milli), host.1.max(memory_mib));
            let mig = neocloud_types::MigFamily::of_model(&n.gpu_model, n.gpu_memory_gib);
            let keep = keeps.get(&id).copied().unwrap_or_default();
            alloc
                .add_node(NodeSpec {
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
                })
                .map_err(Error::internal)?;
            if !node_schedulable(n.state) {
                alloc.set_schedulable(id, false);
            }
            for g in n.unhealthy_gpus {
                alloc.set_gpu_healthy(id, g, false);
            }
            if n.pool.is_some() {
                alloc.set_pool(id, n.pool).map_err(Error::internal)?;
            }
        }
        let mut queue = BTreeMap::new();
        for i in live {
            if i.state.holds_gpus() {
                let first = i.placement.first();
                // Rows placed before CPU and memory were recorded: the proportional default.
                let (cpu_milli, memory_mib) = match first.map(|p| (p.cpu_milli, p.memory_mib)) {
                    Some((Some(c), Some(m))) => (c, m),
                    _ => first
                        .and_then(|p| alloc.host_need(p.node_id, &request_of(&i)))
                        .unwrap_or((0, 0)),
                };
                let a = Allocation {
                    id: i.id,
                    tenant: i.tenant_id,
                    class: i.class,
                    gpu_model: i.gpu_model.clone(),
                    shape: i.shape,
                    site: i
                        .site_id
                        .ok_or_else(|| Error::internal(format!("{} has no site", i.id)))?,
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
                alloc
                    .restore(a)
                    .map_err(|e| Error::internal(format!("restoring {}: {e}", i.id)))?;
            } else if i.state == InstanceState::Pending {
                let prio = i.class.priority(config.fleet_policy);
                queue.insert(
                    (std::cmp::Reverse(prio), i.id),
                    Queued {
                        request: request_of(&i),
                        wait_until: i.wait_until,
                        since: i.created_at,
                    },
                );
            }
        }
        let mut calendar = neocloud_allocator::calendar::Calendar::new();
        for c in store.contract_list_live().await? {
            let key = neocloud_allocator::calendar::CapacityKey::new(c.site_id, &c.gpu_model);
            calendar
                .commit(
                    &key,
                    c.id,
                    c.start_at.micros(),
                    c.end_at.micros(),
                    i64::from(c.gpu_count),
                )
                .map_err(Error::internal)?;
        }
        let sites = store.site_list().await?;
        let mut sched = Sched {
            alloc,
            calendar,
            config,
            queue,
            sites,
            node_size,
            node_host,
            node_names,
            sold: Default::default(),
            quotas: store.quota_list(None).await?,
            pools_full: Default::default(),
            map_cells: Default::default(),
            spot_repriced_at: None,
        };
        let allocations: Vec<Allocation> = sched.alloc.allocations().cloned().collect();
        for a in &allocations {
            if let Some(k) = sold_key(a) {
                *sched.sold.entry(k).or_default() += a.gpu_milli();
            }
        }
        Ok(sched)
    }

    /// Places through the allocator and keeps the sellable counters in step.
    pub(crate) fn place(
        &mut self,
        req: &Request,
    ) -> Result<Allocation, neocloud_allocator::Refusal> {
        let started = std::time::Instant::now();
        let r = self.alloc.place(req);
        let m = &crate::metrics::METRICS;
        m.decision.observe(started.elapsed().as_secs_f64());
        let counter = if r.is_ok() { &m.placed } else { &m.refused };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(a) = &r
            && let Some(k) = sold_key(a)
        {
            *self.sold.entry(k).or_default() += a.gpu_milli();
        }
        r
    }

    /// Releases through the allocator and keeps the sellable counters in step.
    pub(crate) fn release(&mut self, id: InstanceId) -> Option<Allocation> {
        let a = self.alloc.release(id);
        if let Some(a) = &a
            && let Some(k) = sold_key(a)
        {
            let e = self.sold.entry(k).or_default();
            *e = e.saturating_sub(a.gpu_milli());
        }
        a
    }

    /// Places a pending instance now if it fits; on success commits it as running.
    /// Returns whether it was placed.
    pub(crate) async fn try_start(
        &mut self,
        store: &Store,
        mut inst: Instance,
        actor: Option<ApiKeyId>,
        now: Timestamp,
    ) -> Result<Option<Instance>> {
        let req = request_of(&inst);
        let Ok(a) = place_checked(self, &req, now).await? else {
            return Ok(None);
        };
        let before = serde_json::to_value(&inst).ok();
        inst.state = InstanceState::Running;
        inst.reason = None;
        inst.site_id = Some(a.site);
        inst.started_at = Some(now);
        inst.wait_until = None;
        let result = async {
            let mut tx = store.begin_write().await?;
            Store::instance_update(&mut tx, &inst).await?;
            Store::instance_hold(&mut tx, &inst, &a.gpus, held_of(&a)).await?;
            event(&mut tx, actor, &inst, "instance.running", before, None).await?;
            tx.commit().await?;
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = result {
            self.release(inst.id);
            return Err(e);
        }
        Ok(Some(inst))
    }

    /// Moves instances whose preemption notice ran out to `preempted`, frees their GPUs,
    /// expires queued instances past their deadline, and starts queued instances that now
    /// fit, highest priority first. Returns how many instances changed.
    pub(crate) async fn tick(
        &mut self,
        store: &Store,
        book: &neocloud_billing::prices::PriceBook,
        now: Timestamp,
    ) -> Result<usize> {
        let mut changed = 0;
        // Preemptions whose grace period is over.
        for mut i in store.instance_list_preemptions_due(now).await? {
            let before = serde_json::to_value(&i).ok();
            i.state = InstanceState::Preempted;
            i.ended_at = Some(now);
            i.reason = Some(
                i.reason
                    .clone()
                    .unwrap_or_else(|| "preempted by higher-priority work".into()),
            );
            let metered = store.instance_metered_until(i.id).await?;
            let mut tx = store.begin_write().await?;
            Store::instance_update(&mut tx, &i).await?;
            crate::billing::meter(store, &mut tx, book, &i, metered, now).await?;
            Store::instance_release_gpus(&mut tx, i.id).await?;
            event(&mut tx, None, &i, "instance.preempted", before, None).await?;
            tx.commit().await?;
            self.release(i.id);
            crate::metrics::METRICS
                .preemptions
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            changed += 1;
        }
        // The queue, in priority order.
        let keys: Vec<_> = self.queue.keys().cloned().collect();
        for key in keys {
            let Some(q) = self.queue.get(&key).cloned() else {
                continue;
            };
            // In-memory checks first: most ticks touch the database for nothing.
            let fits = self.alloc.try_place(&q.request).is_ok();
            let expired = q.wait_until.is_some_and(|t| t <= now);
            if !fits && !expired {
                continue;
            }
            let inst = store.instance_get(q.request.id).await?;
            if inst.state != InstanceState::Pending {
                self.queue.remove(&key);
                continue;
            }
            if fits
                && self
                    .try_start(store, inst.clone(), None, now)
                    .await?
                    .is_some()
            {
                self.queue.remove(&key);
                let waited = (now.micros() - q.since.micros()).max(0) as f64 / 1e6;
                crate::metrics::METRICS.queue_wait.observe(waited);
                changed += 1;
                continue;
            }
            if expired {
                let mut i = inst;
                let before = serde_json::to_value(&i).ok();
                i.state = InstanceState::Failed;
                i.ended_at = Some(now);
                i.reason = Some(format!(
                    "no capacity before its deadline {}",
                    q.wait_until.map(|t| t.to_string()).unwrap_or_default()
                ));
                let mut tx = store.begin_write().await?;
                Store::instance_update(&mut tx, &i).await?;
                event(&mut tx, None, &i, "instance.failed", before, None).await?;
                tx.commit().await?;
                self.queue.remove(&key);
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Puts victims into `preempting` with a notice; their GPUs are taken when it runs out.
    pub(crate) async fn notify_victims(
        &mut self,
        store: &Store,
        victims: &[InstanceId],
        by: InstanceId,
        now: Timestamp,
    ) -> Result<Timestamp> {
        let deadline = now.plus_seconds(self.config.preemption_grace_secs);
        let mut latest = now;
        let mut tx = store.begin_write().await?;
        for v in victims {
            let mut i = store.instance_get(*v).await?;
            if i.state == InstanceState::Preempting {
                latest = latest.max(i.preempt_at.unwrap_or(now));
                continue;
            }
            let before = serde_json::to_value(&i).ok();
            i.state = InstanceState::Preempting;
            i.preempt_at = Some(deadline);
            i.reason = Some(format!("preempted for {by}; stops at {deadline}"));
            Store::instance_update(&mut tx, &i).await?;
            event(&mut tx, None, &i, "instance.preempting", before, None).await?;
            latest = latest.max(deadline);
        }
        tx.commit().await?;
        Ok(latest)
    }
}

/// Places on-demand and internal work only within what contracts leave of a site's
/// sellable capacity (all GPUs minus the spare buffer kept for failover), so the same
/// GPU-hour is never sold twice; spot may use anything idle, reserved runs in its pool.
/// Without a site in the request, each site with the model is tried in turn. The rule is
/// the allocator crate's ([`neocloud_allocator::selling`]), which the simulator places by
/// too.
pub(crate) async fn place_checked(
    sched: &mut Sched,
    req: &neocloud_allocator::Request,
    now: Timestamp,
) -> Result<std::result::Result<Allocation, (neocloud_allocator::Refusal, bool)>> {
    Ok(neocloud_allocator::selling::place_within_sellable(
        &mut SchedSeller { sched, now },
        req,
    ))
}

/// The scheduler as [`neocloud_allocator::selling`] sees it: its allocator and what it has
/// sold, at one moment.
struct SchedSeller<'a> {
    sched: &'a mut Sched,
    now: Timestamp,
}

impl neocloud_allocator::selling::Seller for SchedSeller<'_> {
    fn place(
        &mut self,
        req: &neocloud_allocator::Request,
    ) -> std::result::Result<Allocation, neocloud_allocator::Refusal> {
        self.sched.place(req)
    }

    fn release(&mut self, id: InstanceId) {
        self.sched.release(id);
    }

    fn sites_with(&self, model: &str) -> Vec<neocloud_types::SiteId> {
        self.sched
            .sites
            .iter()
            .filter(|s| s.gpus_by_model.iter().any(|m| m.gpu_model == model))
            .map(|s| s.id)
            .collect()
    }

    fn check_sellable(
        &self,
        a: &Allocation,
    ) -> std::result::Result<(), neocloud_allocator::Refusal> {
        let sched = &self.sched;
        let Some(site) = sched.sites.iter().find(|s| s.id == a.site) else {
            return Ok(());
        };
        let sellable = u64::try_from(sellable(&sched.config, site, &a.gpu_model)).unwrap_or(0);
        let key = neocloud_allocator::calendar::CapacityKey::new(site.id, &a.gpu_model);
        let now = self.now.micros();
        let committed =
            u64::try_from(sched.calendar.committed_peak(&key, now, now + 1)).unwrap_or(0);
        // Thousandths of a GPU, this placement included: a share or MIG instance sells its
        // part of one GPU.
        let held_milli = sched
            .sold
            .get(&(site.id, a.gpu_model.clone()))
            .copied()
            .unwrap_or(0);
        if neocloud_allocator::selling::within_sellable(held_milli, committed, sellable) {
            return Ok(());
        }
        // GPUs in use by others, a part of a GPU counting as a whole one.
        let in_use = held_milli.saturating_sub(a.gpu_milli()).div_ceil(1000);
        Err(neocloud_allocator::Refusal::NoCapacity {
            // What is left to sell on demand, not the pool GPUs that sit idle.
            free_gpus: sellable.saturating_sub(committed).saturating_sub(in_use),
            reason: format!(
                "{}'s sellable {} capacity is taken: {} of {} sellable GPUs are reserved by contracts and {} are in use by on-demand and internal work (the spare buffer is kept for failover)",
                site.name, a.gpu_model, committed, sellable, in_use
            ),
        })
    }
}

/// The sellable counter an allocation counts in, if any.
fn sold_key(a: &Allocation) -> Option<(neocloud_types::SiteId, String)> {
    (a.pool.is_none() && matches!(a.class, Class::OnDemand | Class::Internal))
        .then(|| (a.site, a.gpu_model.clone()))
}

/// GPUs of a model in a site that may be sold (to contracts, on-demand and internal work):
/// all minus the spare buffer kept for failover.
pub(crate) fn sellable(config: &SchedulerConfig, site: &neocloud_types::Site, model: &str) -> i64 {
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

/// Writes an instance's audit event.
pub(crate) async fn event(
    tx: &mut WriteTx,
    actor: Option<ApiKeyId>,
    i: &Instance,
    action: &str,
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
) -> Result<()> {
    Store::event_insert(
        tx,
        NewEvent {
            actor,
            tenant_id: Some(i.tenant_id),
            action,
            resource_kind: "instance",
            resource_id: i.id.to_string(),
            before,
            after: after.or_else(|| serde_json::to_value(i).ok()),
        },
    )
    .await?;
    Ok(())
}

/// A refusal as the service's error.
pub(crate) fn refusal_error(r: neocloud_allocator::Refusal) -> Error {
    use neocloud_allocator::Refusal::*;
    match r {
        UnknownModel { .. } | BadShape { .. } | UnknownSite { .. } => Error::invalid(r.to_string()),
        UnknownPool { .. } => Error::new(ErrorCode::InsufficientCapacity, r.to_string()),
        Duplicate { .. } => Error::new(ErrorCode::Conflict, r.to_string()),
        NoCapacity { .. } | PowerLimit { .. } => {
            Error::new(ErrorCode::InsufficientCapacity, r.to_string())
        }
    }
}
