//! The scheduler as the service runs it: the pure [`neocloud_scheduler::Scheduler`] behind a
//! short lock, loaded from the database, and its decisions committed by the ordered writer.
//!
//! Every change is decided under the lock (microseconds, no I/O) and handed to the writer
//! before the lock is released, so decisions reach the database in the order they were made;
//! the caller then waits for the commit before it answers. If a commit fails, the writer
//! rebuilds the scheduler from the database before anything else is decided, so a crash or a
//! failed write loses no committed allocation and cannot double-assign a GPU (the `holder`
//! column refuses a second holder on its own).

use std::sync::{Arc, Mutex, MutexGuard};

use neocloud_allocator::Allocation;
use neocloud_scheduler::{Command, Effect, Refused, Scheduler, Snapshot};
use neocloud_store::{NewEvent, Store, WriteTx};
use neocloud_types::{ApiKeyId, Instance, Timestamp};

use crate::error::{Error, ErrorCode, Result};
use crate::writer::{Extra, Job};

pub use neocloud_scheduler::SchedulerConfig;
pub(crate) use neocloud_scheduler::sellable;

/// The scheduler behind its lock.
pub(crate) type SchedCell = Arc<Mutex<Scheduler>>;

/// A held scheduler lock; its hold time is recorded when it is dropped.
pub(crate) struct Held<'a> {
    guard: MutexGuard<'a, Scheduler>,
    since: std::time::Instant,
}

impl std::ops::Deref for Held<'_> {
    type Target = Scheduler;
    fn deref(&self) -> &Scheduler {
        &self.guard
    }
}

impl std::ops::DerefMut for Held<'_> {
    fn deref_mut(&mut self) -> &mut Scheduler {
        &mut self.guard
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        crate::metrics::METRICS
            .lock_hold
            .observe(self.since.elapsed().as_secs_f64());
    }
}

/// Takes the scheduler's lock. Never hold it across an `.await`: the guard is not `Send`, so
/// the compiler refuses a handler that tries.
pub(crate) fn lock(cell: &SchedCell) -> Held<'_> {
    // A panic while deciding leaves a state nobody can trust; the next decision still
    // proceeds (the writer rebuilds after any failed write).
    let guard = cell
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Held {
        guard,
        since: std::time::Instant::now(),
    }
}

/// Reads the durable state and builds a scheduler from it.
/// `RUST_LOG=neocloud_service=debug` prints the time of the reads and of the build.
pub(crate) async fn load(store: &Store, config: SchedulerConfig) -> Result<Scheduler> {
    let started = std::time::Instant::now();
    // The reads run at once, each on its own connection: decoding rows is most of their
    // time, and this spreads it over the cores. They all read one state of the database (a
    // replica may load while the leader writes): an instance launched between two reads
    // would otherwise be live without its GPUs, or under a contract not read.
    let view = store.read_view().await?;
    let (fleet, live, sites, contracts, quotas, topologies) = tokio::join!(
        view.allocator_fleet(),
        view.instance_list_live(),
        view.site_list(),
        view.contract_list_live(),
        view.quota_list(None),
        view.gpu_model_topologies(),
    );
    view.read_view_end().await?;
    let (alloc_sites, nodes) = fleet?;
    let snap = Snapshot {
        sites: sites?,
        alloc_sites,
        nodes,
        live: live?,
        contracts: contracts?,
        quotas: quotas?,
        topologies: topologies?,
    };
    let (nodes, live) = (snap.nodes.len(), snap.live.len());
    let read = started.elapsed();
    let s = Scheduler::new(config, snap).map_err(Error::internal)?;
    for w in s.warnings() {
        tracing::warn!("scheduler load: {w}");
    }
    tracing::debug!(
        nodes,
        live,
        read_ms = read.as_millis(),
        build_ms = (started.elapsed() - read).as_millis(),
        "scheduler loaded"
    );
    Ok(s)
}

/// What an allocation holds besides GPUs, as the store records it.
pub(crate) fn held_of(a: &Allocation) -> neocloud_store::Held {
    neocloud_store::Held {
        cpu_milli: a.cpu_milli,
        memory_mib: a.memory_mib,
        mig_start: a.mig_start,
    }
}

/// A refusal of the scheduler as the service's error.
pub(crate) fn refused_error(r: Refused) -> Error {
    match r {
        Refused::Invalid(m) => Error::invalid(m),
        Refused::Capacity(m) => Error::new(ErrorCode::InsufficientCapacity, m),
        Refused::Quota(m) => Error::new(ErrorCode::QuotaExceeded, m),
        Refused::Conflict(m) => Error::new(ErrorCode::Conflict, m),
        Refused::NotFound(m) => Error::new(ErrorCode::Conflict, m),
        Refused::Internal(m) => Error::internal(m),
    }
}

impl crate::Service {
    /// Applies `cmd` at `now` under the scheduler's lock, hands its effects (and `extra`,
    /// written in the same transaction before them) to the writer, releases the lock, and
    /// waits for the commit. `prepare` runs under the lock after the command, to build
    /// `extra` from the effects (say, the idempotency record of the answer).
    pub(crate) async fn decide<P>(
        &self,
        cmd: Command,
        now: Timestamp,
        actor: Option<ApiKeyId>,
        prepare: P,
    ) -> Result<Vec<Effect>>
    where
        P: FnOnce(&Scheduler, &[Effect]) -> Result<Option<Extra>>,
    {
        self.writer.fresh().await?;
        let (done, effects) = {
            let mut s = lock(&self.sched);
            // Went stale again between the wait and the lock.
            if self.writer.stale.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(crate::writer::stale_error());
            }
            let started = std::time::Instant::now();
            let counted = s.counters();
            let applied = s.apply(cmd, now);
            let m = &crate::metrics::METRICS;
            m.decision.observe(started.elapsed().as_secs_f64());
            let c = s.counters();
            let relaxed = std::sync::atomic::Ordering::Relaxed;
            m.placed
                .fetch_add(c.placed.saturating_sub(counted.placed), relaxed);
            m.refused
                .fetch_add(c.refused.saturating_sub(counted.refused), relaxed);
            let effects = applied.map_err(refused_error)?;
            let extra = prepare(&s, &effects)?;
            if effects.is_empty() && extra.is_none() {
                return Ok(effects);
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            // Shared, not copied under the lock: the writer lets go of it before it answers.
            let effects = std::sync::Arc::new(effects);
            self.writer.send(Job::Write {
                epoch: self.writer.epoch.load(std::sync::atomic::Ordering::SeqCst),
                effects: effects.clone(),
                extra,
                actor,
                done: tx,
            })?;
            (rx, effects)
        };
        done.await
            .unwrap_or_else(|_| Err(Error::internal("the writer has stopped")))?;
        let effects = std::sync::Arc::unwrap_or_clone(effects);
        observe(&effects, now);
        self.waiters.wake(&effects);
        Ok(effects)
    }

    /// Rebuilds the scheduler from the database, after every decision made so far is
    /// committed: for an operator who edited rows by hand (the scheduler holds what runs
    /// in memory, and would not see the edit otherwise).
    pub async fn reload_scheduler(&self) -> Result<()> {
        self.rebuild_scheduler().await
    }

    /// Marks an Idempotency-Key as in use until the returned guard drops; a second request
    /// with the same key meanwhile is refused (it would decide twice).
    pub(crate) fn idem_claim(&self, scope: &str, key: &str) -> Result<IdemClaim> {
        let k = (scope.to_string(), key.to_string());
        let mut set = self
            .idem_inflight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !set.insert(k.clone()) {
            return Err(Error::new(
                ErrorCode::Conflict,
                "a request with this Idempotency-Key is still in progress; retry it in a moment",
            ));
        }
        Ok(IdemClaim {
            set: self.idem_inflight.clone(),
            key: k,
        })
    }

    /// Waits until every decision made so far is committed (or has failed).
    pub(crate) async fn writes_settled(&self) -> Result<()> {
        self.write_ordered(crate::writer::extra(|_, _| Box::pin(async { Ok(()) })))
            .await
    }

    /// Writes `extra` in order with the scheduler's decisions (for writes that must not
    /// interleave with them, such as closing a month's metering).
    pub(crate) async fn write_ordered(&self, extra: Extra) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let _s = lock(&self.sched);
            self.writer.send(Job::Write {
                epoch: self.writer.epoch.load(std::sync::atomic::Ordering::SeqCst),
                effects: Default::default(),
                extra: Some(extra),
                actor: None,
                done: tx,
            })?;
        }
        rx.await
            .unwrap_or_else(|_| Err(Error::internal("the writer has stopped")))
    }

    /// Rebuilds the scheduler from the database once every decision made so far is
    /// committed; nothing is decided until it is done.
    pub(crate) async fn rebuild_scheduler(&self) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let _s = lock(&self.sched);
            self.writer
                .stale
                .store(true, std::sync::atomic::Ordering::SeqCst);
            self.writer.send(Job::Rebuild { done: tx })?;
        }
        rx.await
            .unwrap_or_else(|_| Err(Error::internal("the writer has stopped")))
    }

    /// Writes `extra` after every decision made so far, then rebuilds the scheduler from
    /// the database; nothing is decided in between (a fleet import).
    pub(crate) async fn write_then_rebuild(&self, extra: Extra) -> Result<()> {
        let (wtx, wrx) = tokio::sync::oneshot::channel();
        let (rtx, rrx) = tokio::sync::oneshot::channel();
        {
            let _s = lock(&self.sched);
            self.writer
                .stale
                .store(true, std::sync::atomic::Ordering::SeqCst);
            self.writer.send(Job::Write {
                epoch: self.writer.epoch.load(std::sync::atomic::Ordering::SeqCst),
                effects: Default::default(),
                extra: Some(extra),
                actor: None,
                done: wtx,
            })?;
            self.writer.send(Job::Rebuild { done: rtx })?;
        }
        let written = wrx
            .await
            .unwrap_or_else(|_| Err(Error::internal("the writer has stopped")));
        let rebuilt = rrx
            .await
            .unwrap_or_else(|_| Err(Error::internal("the writer has stopped")));
        written.and(rebuilt)
    }
}

/// An Idempotency-Key in use by a request in progress.
pub(crate) struct IdemClaim {
    set: Arc<Mutex<std::collections::HashSet<(String, String)>>>,
    key: (String, String),
}

impl Drop for IdemClaim {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.key);
    }
}

/// Counts what committed decisions did.
fn observe(effects: &[Effect], now: Timestamp) {
    let m = &crate::metrics::METRICS;
    for fx in effects {
        match fx {
            Effect::Start { before, .. } => {
                let waited = (now.micros() - before.created_at.micros()).max(0) as f64 / 1e6;
                m.queue_wait.observe(waited);
            }
            Effect::Update { action, .. } if *action == "instance.preempted" => {
                m.preemptions
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// An instance as answers and audit events show it: one on more than
/// [`neocloud_types::LISTED_NODES`] nodes has its nodes counted by block
/// ([`Instance::summarised`]); the scheduler's lock is taken only for such an instance.
pub(crate) fn shown(sched: &SchedCell, i: Instance) -> Instance {
    if i.placement.len() <= neocloud_types::LISTED_NODES {
        return i;
    }
    let s = lock(sched);
    i.summarised(|n| s.node_block(n))
}

/// [`shown`], as JSON, of an instance the caller keeps.
pub(crate) fn shown_json(sched: &SchedCell, i: &Instance) -> Option<serde_json::Value> {
    if i.placement.len() <= neocloud_types::LISTED_NODES {
        return serde_json::to_value(i).ok();
    }
    serde_json::to_value(shown(sched, i.clone())).ok()
}

/// Writes an instance's audit event; `after` defaults to the instance as shown
/// ([`shown_json`]).
pub(crate) async fn event(
    tx: &mut WriteTx,
    sched: &SchedCell,
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
            after: after.or_else(|| shown_json(sched, i)),
        },
    )
    .await?;
    Ok(())
}
