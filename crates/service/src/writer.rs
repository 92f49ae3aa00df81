//! The ordered writer: every decision of the scheduler is committed here, in the order it
//! was decided.
//!
//! A caller takes the scheduler's lock, applies a command (microseconds), hands the effects
//! to this writer *while still holding the lock* (an unbounded channel: sending never
//! waits), releases the lock, and waits for the commit before it answers. So the database
//! sees the decisions in the order they were made, and no lock is ever held across I/O.
//!
//! The writer takes every job waiting at that moment and commits them in one transaction
//! (group commit). If a job cannot be written, the transaction rolls back: the decisions
//! made with it were made on a state the database will never have, so the writer fails them
//! too, marks the scheduler stale (new decisions are refused with 503 until it is fresh),
//! rebuilds it from the database, and swaps it in. Jobs decided on the old state carry its
//! epoch and are refused, never written.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use neocloud_billing::prices::PriceBook;
use neocloud_scheduler::Effect;
use neocloud_store::{NewEvent, Store, WriteTx};
use neocloud_types::{ApiKeyId, Instance};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, ErrorCode, Result};
use crate::scheduler::{self, SchedCell};

/// Most jobs committed together.
const MAX_BATCH: usize = 256;

/// A future borrowing the transaction.
pub(crate) type TxFuture<'a> = Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>;

/// Writes besides the effects, in the same transaction (before the effects): the rows the
/// service owns (a node's state, an idempotency record, a contract's terms).
pub(crate) struct Extra {
    write: ExtraFn,
    /// It writes only rows the batch holds back until its commit (idempotency records,
    /// audit events), so the instance rows held back need not be written before it.
    deferred_only: bool,
    /// It changes nothing a follower's copy of the allocator holds (health events alone):
    /// a batch of only such writes leaves the lease's write counter as it is, so followers
    /// do not rebuild for it.
    quiet: bool,
}

/// The closure inside an [`Extra`].
type ExtraFn = Box<dyn for<'a> FnOnce(&'a Store, &'a mut WriteTx) -> TxFuture<'a> + Send>;

/// Wraps a closure as [`Extra`] (helps the compiler see the lifetimes).
pub(crate) fn extra<F>(f: F) -> Extra
where
    F: for<'a> FnOnce(&'a Store, &'a mut WriteTx) -> TxFuture<'a> + Send + 'static,
{
    Extra {
        write: Box::new(f),
        deferred_only: false,
        quiet: false,
    }
}

impl Extra {
    /// Marks it as changing nothing a follower's copy of the allocator holds.
    pub(crate) fn quiet(mut self) -> Extra {
        self.quiet = true;
        self
    }

    /// Runs it.
    pub(crate) fn run<'a>(self, store: &'a Store, tx: &'a mut WriteTx) -> TxFuture<'a> {
        (self.write)(store, tx)
    }
}

/// As [`extra`], for a closure that writes only idempotency records and audit events.
pub(crate) fn extra_deferred<F>(f: F) -> Extra
where
    F: for<'a> FnOnce(&'a Store, &'a mut WriteTx) -> TxFuture<'a> + Send + 'static,
{
    Extra {
        write: Box::new(f),
        deferred_only: true,
        quiet: false,
    }
}

/// What the writer is asked to do.
pub(crate) enum Job {
    /// Commit a decision.
    Write {
        /// The scheduler's epoch when it was decided.
        epoch: u64,
        /// What to record (shared with the caller, which reads it once it is committed).
        effects: Arc<Vec<Effect>>,
        /// Rows the service writes with it.
        extra: Option<Extra>,
        /// Who asked (for audit events).
        actor: Option<ApiKeyId>,
        done: oneshot::Sender<Result<()>>,
    },
    /// Rebuild the scheduler from the database once everything before is committed (after a
    /// fleet import, on taking leadership).
    Rebuild { done: oneshot::Sender<Result<()>> },
}

/// The writer's handle.
#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::UnboundedSender<Job>,
    /// Bumped by every rebuild; a job of an older epoch is refused.
    pub(crate) epoch: Arc<AtomicU64>,
    /// Set when a write failed and the scheduler must be rebuilt before deciding again.
    pub(crate) stale: Arc<AtomicBool>,
    /// Wakes those waiting for a rebuild to end.
    rebuilt: Arc<tokio::sync::Notify>,
}

impl Writer {
    /// Queues a job; never waits.
    pub(crate) fn send(&self, job: Job) -> Result<()> {
        self.tx
            .send(job)
            .map_err(|_| Error::internal("the writer has stopped"))
    }

    /// Waits (a few seconds at most) until the scheduler is not being rebuilt after a
    /// failed write, so that a decision is never made on memory ahead of the database;
    /// `unavailable` if the rebuild takes longer (the database is not answering).
    pub(crate) async fn fresh(&self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let woken = self.rebuilt.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if !self.stale.load(Ordering::SeqCst) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                return Err(stale_error());
            }
        }
    }
}

/// Starts the writer; it stops when every handle is gone.
pub(crate) fn spawn(store: Store, sched: SchedCell) -> Writer {
    let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
    let w = Writer {
        tx,
        epoch: Arc::new(AtomicU64::new(0)),
        stale: Arc::new(AtomicBool::new(false)),
        rebuilt: Arc::new(tokio::sync::Notify::new()),
    };
    let epoch = w.epoch.clone();
    let stale = w.stale.clone();
    let rebuilt = w.rebuilt.clone();
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let mut rebuilds = Vec::new();
            let mut writes = Vec::new();
            for job in batch {
                match job {
                    Job::Rebuild { done } => rebuilds.push(done),
                    Job::Write {
                        epoch: e,
                        effects,
                        extra,
                        actor,
                        done,
                    } => {
                        if e != epoch.load(Ordering::SeqCst) {
                            let _ = done.send(Err(stale_error()));
                        } else {
                            writes.push(Write {
                                effects,
                                extra,
                                actor,
                                done,
                            });
                        }
                    }
                }
            }
            let mut failed = false;
            if !writes.is_empty() {
                failed = write_batch(&store, &sched, &stale, writes).await;
            }
            // A failed batch has marked the scheduler stale already.
            if failed || !rebuilds.is_empty() {
                let r = rebuild(&store, &sched, &epoch, &stale, &mut rx, &mut rebuilds).await;
                rebuilt.notify_waiters();
                for done in rebuilds {
                    let _ = done.send(r.as_ref().map(|_| ()).map_err(clone_error));
                }
            }
        }
    });
    w
}

pub(crate) fn stale_error() -> Error {
    Error::new(
        ErrorCode::Unavailable,
        "the scheduler is reloading after a failed write; retry the request",
    )
}

fn clone_error(e: &Error) -> Error {
    let mut err = Error::new(e.code, e.message.clone());
    err.internal.clone_from(&e.internal);
    err
}

/// Rebuilds the scheduler from the database until it succeeds (each failed try waits a
/// moment), then swaps it in under the lock and moves to a new epoch. While it fails, the
/// writes queued meanwhile are refused at once (they were decided on the memory being
/// replaced), and after [`REBUILD_PATIENCE`] those waiting for the rebuild (`waiting`, and
/// any that ask meanwhile) are told it has not succeeded (503) instead of waiting without
/// end; it goes on trying.
async fn rebuild(
    store: &Store,
    sched: &SchedCell,
    epoch: &AtomicU64,
    stale: &AtomicBool,
    rx: &mut mpsc::UnboundedReceiver<Job>,
    waiting: &mut Vec<oneshot::Sender<Result<()>>>,
) -> Result<()> {
    let config = scheduler::lock(sched).config().clone();
    let started = tokio::time::Instant::now();
    let mut tries = 0;
    loop {
        match scheduler::load(store, config.clone()).await {
            Ok(fresh) => {
                let mut s = scheduler::lock(sched);
                *s = fresh;
                epoch.fetch_add(1, Ordering::SeqCst);
                stale.store(false, Ordering::SeqCst);
                return Ok(());
            }
            Err(e) => {
                tries += 1;
                let detail = e.internal.as_deref().unwrap_or(&e.message).to_string();
                tracing::error!(error = %detail, tries, "rebuilding the scheduler failed; retrying");
                while let Ok(job) = rx.try_recv() {
                    match job {
                        Job::Write { done, .. } => {
                            let _ = done.send(Err(stale_error()));
                        }
                        Job::Rebuild { done } => waiting.push(done),
                    }
                }
                if started.elapsed() >= REBUILD_PATIENCE {
                    for done in waiting.drain(..) {
                        let mut err = Error::new(
                            ErrorCode::Unavailable,
                            "the scheduler cannot be rebuilt from the database (the server log \
                             says why); it keeps trying, and nothing is decided until it succeeds",
                        );
                        err.internal = Some(detail.clone());
                        let _ = done.send(Err(err));
                    }
                }
                // The database is the truth and nothing may be decided without it: try
                // until it answers (decisions wait meanwhile, then are refused with 503).
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    }
}

/// How long those waiting for a rebuild wait before they are told it fails.
const REBUILD_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// One decision's writes, waiting in a batch.
struct Write {
    effects: Arc<Vec<Effect>>,
    extra: Option<Extra>,
    actor: Option<ApiKeyId>,
    done: oneshot::Sender<Result<()>>,
}

/// Writes a batch in one transaction. Returns whether it failed. Jobs carry no savepoints
/// (two statements fewer for every write): if one job cannot be written, the transaction
/// rolls back and no job of the batch is written — that job gets its error, the others are
/// told to retry (they were decided together, on a state the database will not have, and
/// the scheduler is rebuilt from the database before anything else is decided).
async fn write_batch(
    store: &Store,
    sched: &SchedCell,
    stale: &AtomicBool,
    writes: Vec<Write>,
) -> bool {
    let quiet = writes
        .iter()
        .all(|w| w.effects.is_empty() && w.extra.as_ref().is_some_and(|x| x.quiet));
    let mut tx = match store.begin_write().await {
        Ok(mut tx) => {
            // Audit events and idempotency records: one statement each for the batch.
            tx.defer_inserts();
            if quiet {
                tx.keep_generation();
            }
            tx
        }
        Err(e) => {
            let e = Error::from(e);
            stale.store(true, Ordering::SeqCst);
            for w in writes {
                let _ = w.done.send(Err(clone_error(&e)));
            }
            return true;
        }
    };
    let mut book: Option<PriceBook> = None;
    let mut dones: Vec<oneshot::Sender<Result<()>>> = Vec::with_capacity(writes.len());
    // The job that could not be written, and why.
    let mut failed: Option<(usize, Error)> = None;
    for Write {
        effects,
        extra,
        actor,
        done,
    } in writes
    {
        dones.push(done);
        if failed.is_some() {
            continue;
        }
        let r = async {
            if let Some(x) = extra {
                if !x.deferred_only {
                    tx.flush_deferred_rows().await?;
                }
                x.run(store, &mut tx).await?;
            }
            write_effects(store, sched, &mut tx, &mut book, &effects, actor).await
        }
        .await;
        if let Err(e) = r {
            failed = Some((dones.len() - 1, e));
        }
    }
    let committed = match failed {
        Some((at, e)) => {
            // Its error is the answer; a failed rollback only adds to the log.
            if let Err(e) = tx.rollback().await {
                tracing::warn!(error = %e, "rolling back a failed write");
            }
            Err((Some(at), e))
        }
        None => tx.commit().await.map_err(|e| (None, Error::from(e))),
    };
    let Err((at, e)) = committed else {
        for done in dones {
            let _ = done.send(Ok(()));
        }
        return false;
    };
    // Memory is ahead of the database until the rebuild: nothing may be decided on it
    // from the moment a client can learn of the failure and retry.
    stale.store(true, Ordering::SeqCst);
    for (i, done) in dones.into_iter().enumerate() {
        let r = if Some(i) == at {
            clone_error(&e)
        } else if at.is_some() {
            // Decided together with a write that failed: nothing of it was written.
            let mut err = Error::new(
                ErrorCode::Unavailable,
                "a decision committed together with this one could not be written; retry the request",
            );
            err.internal = Some(format!(
                "with: {}",
                e.internal.as_deref().unwrap_or(&e.message)
            ));
            err
        } else {
            // Every job of the batch fails the way the commit did (a fenced ex-leader's
            // writes are "unavailable", not internal errors).
            let mut err = Error::new(e.code, e.message.clone());
            err.internal = Some(format!(
                "committing: {}",
                e.internal.as_deref().unwrap_or(&e.message)
            ));
            err
        };
        let _ = done.send(Err(r));
    }
    true
}

/// Records one decision's effects in `tx`.
pub(crate) async fn write_effects(
    store: &Store,
    sched: &SchedCell,
    tx: &mut WriteTx,
    book: &mut Option<PriceBook>,
    effects: &[Effect],
    actor: Option<ApiKeyId>,
) -> Result<()> {
    for fx in effects {
        // New rows wait for the batch's end; anything else may read or change them.
        if !matches!(fx, Effect::Insert { .. }) {
            tx.flush_deferred_rows().await?;
        }
        match fx {
            Effect::Insert { inst, alloc } => {
                let action = match alloc {
                    Some(a) => {
                        let held = scheduler::held_of(a);
                        Store::instance_insert_held(tx, inst, Some(&held)).await?;
                        Store::instance_hold_placed(tx, inst, &a.gpus, &held).await?;
                        "instance.running"
                    }
                    None => {
                        Store::instance_insert(tx, inst).await?;
                        "instance.pending"
                    }
                };
                scheduler::event(tx, sched, actor, inst, action, None, None).await?;
            }
            Effect::Start {
                before,
                after,
                alloc,
            } => {
                Store::instance_update(tx, after).await?;
                Store::instance_hold(tx, after, &alloc.gpus, scheduler::held_of(alloc)).await?;
                scheduler::event(
                    tx,
                    sched,
                    None,
                    after,
                    "instance.running",
                    scheduler::shown_json(sched, before),
                    None,
                )
                .await?;
            }
            Effect::Update {
                before,
                after,
                action,
                meter_until,
                release,
            } => {
                let metered = match meter_until {
                    Some(_) => Store::instance_metered_until_tx(tx, after.id).await?,
                    None => None,
                };
                Store::instance_update(tx, after).await?;
                if let Some(until) = meter_until {
                    if book.is_none() {
                        *book = Some(crate::billing::book_from(&store.price_list().await?)?);
                    }
                    if let Some(b) = book.as_ref() {
                        crate::billing::meter(store, tx, b, after, metered, *until).await?;
                    }
                }
                if *release {
                    Store::instance_release_gpus(tx, after.id).await?;
                }
                let who = if action.ends_with("terminated") {
                    actor
                } else {
                    None
                };
                scheduler::event(
                    tx,
                    sched,
                    who,
                    after,
                    action,
                    scheduler::shown_json(sched, before),
                    None,
                )
                .await?;
            }
            Effect::Reshape {
                before,
                after,
                meter,
                release,
                hold,
                action,
                detail,
            } => {
                for &(gpus, until) in meter {
                    let metered = Store::instance_metered_until_tx(tx, after.id).await?;
                    if book.is_none() {
                        *book = Some(crate::billing::book_from(&store.price_list().await?)?);
                    }
                    if let Some(b) = book.as_ref() {
                        let piece = Instance {
                            gpu_count: gpus,
                            ..before.clone()
                        };
                        crate::billing::meter(store, tx, b, &piece, metered, until).await?;
                    }
                }
                Store::instance_update(tx, after).await?;
                Store::instance_set_size(tx, after).await?;
                if let Some(node) = release {
                    Store::instance_release_node(tx, after.id, *node).await?;
                }
                if let Some(g) = hold {
                    Store::instance_hold_gpus(tx, after.id, std::slice::from_ref(g)).await?;
                }
                let mut shown = scheduler::shown_json(sched, after).unwrap_or_default();
                if let Some(o) = shown.as_object_mut() {
                    o.insert("change".into(), detail.clone());
                }
                scheduler::event(
                    tx,
                    sched,
                    None,
                    after,
                    action,
                    scheduler::shown_json(sched, before),
                    Some(shown),
                )
                .await?;
            }
            Effect::Pool { node, contract } => {
                Store::node_set_pool(tx, *node, *contract).await?;
            }
            // The service writes a new contract's row itself (with its SLA terms).
            Effect::ContractInsert(_) => {}
            Effect::ContractState {
                before,
                state,
                action,
                detail,
            } => {
                Store::contract_set_state(tx, before.id, *state).await?;
                let (b, a) = match detail {
                    Some(d) => (None, Some(d.clone())),
                    None => (serde_json::to_value(before).ok(), None),
                };
                Store::event_insert(
                    tx,
                    NewEvent {
                        actor: if *state == neocloud_types::ContractState::Cancelled {
                            actor
                        } else {
                            None
                        },
                        tenant_id: Some(before.tenant_id),
                        action,
                        resource_kind: "contract",
                        resource_id: before.id.to_string(),
                        before: b,
                        after: a,
                    },
                )
                .await?;
            }
            Effect::OutageOpen {
                contract,
                node,
                gpus,
                at,
                note,
            } => {
                Store::outage_open(tx, *contract, *node, *gpus, *at, note).await?;
            }
            Effect::OutageClose {
                contract,
                at,
                note,
                event,
            } => {
                let closed = Store::outage_close_one(tx, *contract, *at, note).await?;
                if let Some(ev) = event {
                    let mut after = ev.after.clone().unwrap_or_else(|| serde_json::json!({}));
                    if let Some(o) = after.as_object_mut() {
                        o.insert(
                            "outage".into(),
                            serde_json::to_value(&closed).unwrap_or_default(),
                        );
                    }
                    write_event(tx, actor, ev, Some(after)).await?;
                }
            }
            Effect::Event(ev) => write_event(tx, actor, ev, ev.after.clone()).await?,
            Effect::Warning(w) => tracing::error!("{w}"),
        }
    }
    Ok(())
}

async fn write_event(
    tx: &mut WriteTx,
    actor: Option<ApiKeyId>,
    ev: &neocloud_scheduler::Event,
    after: Option<serde_json::Value>,
) -> Result<()> {
    Store::event_insert(
        tx,
        NewEvent {
            actor,
            tenant_id: ev.tenant_id,
            action: ev.action,
            resource_kind: ev.resource_kind,
            resource_id: ev.resource_id.clone(),
            before: ev.before.clone(),
            after,
        },
    )
    .await?;
    Ok(())
}
