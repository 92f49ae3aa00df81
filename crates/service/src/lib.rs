//! neocloud's business rules, below HTTP and above SQL.
//!
//! Every operation takes the caller's [`Principal`], checks the authorization table, confines
//! tenant callers to their own tenant (another tenant's resource reads as not found, never
//! forbidden: invariant 7 in docs/architecture.md), validates input, and runs each change and its audit event in
//! one transaction. Creates honour an Idempotency-Key: a retry returns the first result.

pub mod auth;
mod billing;
mod console;
mod contracts;
mod delivery;
pub mod error;
mod health;
mod instances;
mod maintenance;
mod metrics;
mod offers;
mod replica;
mod requests;
mod scheduler;
mod webhooks;
mod writer;

use neocloud_store::{IdempotencyRecord, NewEvent, Store, WriteTx};
use neocloud_types::{
    ApiKey, ApiKeyId, Block, BlockId, Event, GpuModel, ImportReport, Node, Role, Site, Tenant,
    TenantId, TenantKind, Timestamp,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use auth::{Action, Principal};
pub use console::{ContractWork, GpuStateCount, MapCell, PlacementBlock, ProblemNodes, SiteMap};
pub use contracts::{CapacityLine, ClassCount, Committed, GangRoom};
pub use delivery::{CreateSshKey, InstanceLogs, parse_public_key};
use error::OrNotFound;
pub use error::{Error, ErrorCode, FieldError, Result};
pub use health::{
    GpuHistory, HealthAction, Heard, NodeOperation, Passed, SetXidRule, XidRule, builtin_xid_rules,
    heartbeat_node,
};
pub use maintenance::{MAX_MAINTENANCE_NODES, ScheduleMaintenance};
pub use neocloud_allocator::PlacementPolicy;
pub use neocloud_allocator::Sharing;
pub use neocloud_types::Clock;
pub use offers::{PlacementAsk, SiteOffer};
pub use replica::{ReplicaConfig, ReplicaRole, RoleChange};
pub use requests::*;
pub use scheduler::SchedulerConfig;
pub use webhooks::{
    Attempt, CreateWebhook, WebhookCreated, backoff_secs, check_patterns, check_url,
    pattern_matches, public_address, signature, signature_header,
};

/// The filters and the page that the service's list operations take and return. The
/// service owns them as part of its interface: callers (the HTTP API, the console) name
/// them from here and never depend on the store themselves.
pub use neocloud_store::{DueDelivery, EventFilter, NodeFilter, Page, UsageFilter};

/// Most items a list returns in one page.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Items a list returns when no limit is given.
pub const DEFAULT_PAGE_SIZE: u32 = 100;

/// An Idempotency-Key presented with a create, and a hash of the request it came with.
#[derive(Clone, Debug)]
pub struct Idempotency {
    /// The client's key.
    pub key: String,
    /// Hash of method, path and body: the same key with another request is refused.
    pub fingerprint: String,
}

/// What [`Service::idem_start`] found.
pub(crate) enum IdemStart<T> {
    /// An earlier request with the key was answered: this is its answer.
    Replay(Created<T>),
    /// Decide now, holding the key (if any) until done.
    Decide(Option<scheduler::IdemClaim>),
}

/// An idempotency record to write in the transaction of the change it answers.
pub(crate) struct IdemPut {
    scope: String,
    key: String,
    rec: IdempotencyRecord,
}

impl IdemPut {
    /// Writes the record (a record already there for the key fails with `conflict`).
    pub(crate) async fn write(&self, tx: &mut WriteTx) -> Result<()> {
        Store::idempotency_put(tx, &self.scope, &self.key, &self.rec).await?;
        Ok(())
    }
}

/// The result of a create: the resource, and whether it is a replay of an earlier create.
#[derive(Clone, Debug)]
pub struct Created<T> {
    /// The resource as first created.
    pub value: T,
    /// True when the Idempotency-Key matched an earlier request and nothing new was made.
    pub replayed: bool,
}

/// The service: owns the store and the scheduler, and applies the rules.
#[derive(Clone)]
pub struct Service {
    store: Store,
    /// The scheduling state machine, behind a lock never held across I/O.
    sched: scheduler::SchedCell,
    /// Commits the scheduler's decisions in the order they were made.
    writer: writer::Writer,
    /// Idempotency-Keys of requests in progress (scope, key).
    idem_inflight: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<(String, String)>>>,
    /// When spot prices were last recomputed.
    spot_repriced_at: std::sync::Arc<std::sync::Mutex<Option<Timestamp>>>,
    /// The console's topology-map layout per site (node names and blocks), read on first
    /// use; cleared by fleet imports.
    map_cells: std::sync::Arc<
        std::sync::Mutex<
            std::collections::HashMap<
                neocloud_types::SiteId,
                std::sync::Arc<Vec<neocloud_store::NodeCell>>,
            >,
        >,
    >,
    /// Keys recently read, by prefix: heartbeats arrive thousands a second, and a key read
    /// from the database on each would cost more than the heartbeat. Entries live
    /// [`KEY_CACHE_SECS`] ([`NODE_KEY_CACHE_SECS`] for node-agent keys); revoking a key here drops its entry at once (another replica
    /// sees a revocation within that time).
    keys: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, CachedKey>>>,
    /// Agents, heartbeats and the health policy.
    health: std::sync::Arc<health::Monitor>,
    /// Keys used since the last batch of last-used writes.
    touched: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<ApiKeyId, Timestamp>>>,
    /// Leadership among replicas (off unless [`Service::enable_replication`] turned it on).
    replication: std::sync::Arc<replica::Replication>,
    /// Workloads' output, as agents report it.
    logs: std::sync::Arc<delivery::Logs>,
    /// Agents waiting for their node's desired workloads to change.
    waiters: std::sync::Arc<delivery::Waiters>,
    /// Where the time comes from.
    clock: Clock,
    /// Tenants recently read, by id and by name (see [`TenantCache`]).
    tenants: std::sync::Arc<TenantCache>,
    /// GPU model names known to the catalog (models are never removed).
    models_known: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// The operator's webhook settings.
    webhook_settings: std::sync::Arc<webhooks::Settings>,
}

/// Tenants recently read: every launch names its tenant, and reading the row each time
/// would cost more than the launch's decision. Entries live [`KEY_CACHE_SECS`]; a change
/// made here drops them at once (another replica sees a suspension within that time).
#[derive(Default)]
struct TenantCache {
    rows: std::sync::Mutex<std::collections::HashMap<String, (Tenant, std::time::Instant)>>,
    /// Bumped by every change: a read that began before a change never caches its result.
    generation: std::sync::atomic::AtomicU64,
}

/// How long an authenticated key is trusted without reading it again, seconds.
pub const KEY_CACHE_SECS: u64 = 10;

/// As [`KEY_CACHE_SECS`] for node-agent keys: an agent beats every 10 s, so with the
/// general time nearly every heartbeat read its key from the database. Revoking a key
/// drops it from the cache of the replica that revokes it (the leader, where forwarded
/// heartbeats are answered) at once.
pub const NODE_KEY_CACHE_SECS: u64 = 300;

/// What authenticating needs of a key, copied out of the cache.
struct KeyFacts {
    id: ApiKeyId,
    role: Role,
    tenant_id: Option<neocloud_types::TenantId>,
    node_id: Option<neocloud_types::NodeId>,
    revoked: bool,
    expires_at: Option<Timestamp>,
    last_used_at: Option<Timestamp>,
}

impl KeyFacts {
    fn of(k: &ApiKey) -> KeyFacts {
        KeyFacts {
            id: k.id,
            role: k.role,
            tenant_id: k.tenant_id,
            node_id: k.node_id,
            revoked: k.revoked_at.is_some(),
            expires_at: k.expires_at,
            last_used_at: k.last_used_at,
        }
    }
}

struct CachedKey {
    key: ApiKey,
    hash: String,
    read_at: std::time::Instant,
}

/// An available node whose GPUs are all held reads as `allocated` (derived, not stored: a
/// launch never writes the node row).
fn allocated_view(alloc: &neocloud_allocator::Allocator, n: &mut Node) {
    n.state = allocated_view_state(alloc, n.id, n.state);
}

fn allocated_view_state(
    alloc: &neocloud_allocator::Allocator,
    id: neocloud_types::NodeId,
    state: neocloud_types::NodeState,
) -> neocloud_types::NodeState {
    if state == neocloud_types::NodeState::Available && alloc.node_full(id) == Some(true) {
        neocloud_types::NodeState::Allocated
    } else {
        state
    }
}

pub(crate) fn page_limit(limit: Option<u32>) -> Result<u32> {
    match limit {
        None => Ok(DEFAULT_PAGE_SIZE),
        Some(0) => Err(Error::invalid("limit must be at least 1")),
        Some(n) if n > MAX_PAGE_SIZE => Err(Error::invalid(format!(
            "limit must be at most {MAX_PAGE_SIZE}"
        ))),
        Some(n) => Ok(n),
    }
}

impl Service {
    /// Opens the database at `url` with the default scheduler settings.
    pub async fn open(url: &str) -> Result<Service> {
        Self::open_with(url, SchedulerConfig::default()).await
    }

    /// Opens the database at `url`, applies migrations, seeds the built-in GPU catalog and
    /// rebuilds the allocator from the database.
    pub async fn open_with(url: &str, config: SchedulerConfig) -> Result<Service> {
        Self::open_with_clock(url, config, Clock::system()).await
    }

    /// As [`Service::open_with`], reading the time from `clock`: every decision, record and
    /// expiry is stamped with its time. Tests and differential runs pass a manual clock.
    pub async fn open_with_clock(
        url: &str,
        config: SchedulerConfig,
        clock: Clock,
    ) -> Result<Service> {
        let mut store = Store::open(url).await?;
        store.set_clock(clock.clone());
        store.gpu_model_seed_builtins().await?;
        Self::price_seed_defaults(&store).await?;
        // Read before the rebuild: a write committed after this read moves the generation,
        // so a replica never mistakes its copy for fresh.
        let generation = store
            .lease_get(neocloud_store::ALLOCATOR_LEASE)
            .await?
            .generation;
        // Both are reads of the same database: they run at once.
        let (health, sched) = tokio::try_join!(
            health::Monitor::load(&store, &config, clock.now()),
            scheduler::load(&store, config.clone()),
        )?;
        let sched = std::sync::Arc::new(std::sync::Mutex::new(sched));
        let writer = writer::spawn(store.clone(), sched.clone());
        Ok(Service {
            store,
            sched,
            writer,
            spot_repriced_at: Default::default(),
            idem_inflight: Default::default(),
            map_cells: Default::default(),
            keys: Default::default(),
            health: std::sync::Arc::new(health),
            touched: Default::default(),
            replication: std::sync::Arc::new(replica::Replication::new(generation)),
            logs: Default::default(),
            waiters: Default::default(),
            clock,
            tenants: Default::default(),
            models_known: Default::default(),
            webhook_settings: Default::default(),
        })
    }

    /// The service's time now.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The service's clock (a manual one can be moved by whoever holds it).
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// A fingerprint of the allocator's state (allocations and free GPUs), to compare the
    /// state before and after a restart.
    pub async fn allocator_fingerprint(&self) -> String {
        scheduler::lock(&self.sched).fingerprint()
    }

    /// Readiness: the database answers a ping. Fails with `Unavailable` when it does not.
    pub async fn ping(&self) -> Result<()> {
        self.store.ping().await.map_err(|e| {
            let mut err: Error = e.into();
            err.code = ErrorCode::Unavailable;
            err.message = "the database is unavailable".into();
            err
        })
    }

    /// The store underneath. Only with the `test-support` feature, which the integration
    /// tests enable to set up and inspect rows by hand; never part of a normal build.
    #[cfg(feature = "test-support")]
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// On first start, when no key exists at all, creates an operator-admin key and returns
    /// its secret (to be shown once). Returns `None` when keys exist.
    pub async fn bootstrap_operator_key(&self) -> Result<Option<String>> {
        if self.store.api_key_any().await? {
            return Ok(None);
        }
        let minted = auth::mint_key()?;
        let key = ApiKey {
            id: ApiKeyId::new(),
            name: "bootstrap operator key".into(),
            role: Role::OperatorAdmin,
            tenant_id: None,
            prefix: minted.prefix.clone(),
            created_at: self.now(),
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
            node_id: None,
        };
        let mut tx = self.store.begin_write().await?;
        Store::api_key_create(&mut tx, &key, &minted.hash).await?;
        Store::event_insert(
            &mut tx,
            NewEvent {
                actor: None,
                tenant_id: None,
                action: "api_key.created",
                resource_kind: "api_key",
                resource_id: key.id.to_string(),
                before: None,
                after: serde_json::to_value(&key).ok(),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(Some(minted.secret))
    }

    /// Turns a presented bearer key into a principal, or says why it is refused.
    pub async fn authenticate(&self, presented: Option<&str>) -> Result<Principal> {
        let Some(presented) = presented else {
            return Err(Error::unauthenticated(
                "missing API key: send the header 'Authorization: Bearer KEY'",
            ));
        };
        let invalid = || Error::unauthenticated("invalid API key");
        let prefix = auth::key_prefix(presented).ok_or_else(invalid)?;
        // What is needed of a cached key is copied out under the lock (the hash is checked
        // there too): a heartbeat clones no strings here.
        let fresh = |c: &CachedKey| {
            let ttl = if c.key.role == Role::NodeAgent {
                NODE_KEY_CACHE_SECS
            } else {
                KEY_CACHE_SECS
            };
            c.read_at.elapsed().as_secs() < ttl
        };
        let cached = self.keys.lock().ok().and_then(|m| {
            m.get(prefix)
                .filter(|c| fresh(c))
                .map(|c| (KeyFacts::of(&c.key), auth::key_matches(presented, &c.hash)))
        });
        let (key, matches) = match cached {
            Some(found) => found,
            None => {
                let (key, hash) = self
                    .store
                    .api_key_by_prefix(prefix)
                    .await?
                    .ok_or_else(invalid)?;
                let found = (KeyFacts::of(&key), auth::key_matches(presented, &hash));
                if let Ok(mut m) = self.keys.lock() {
                    // Bounded: a flood of made-up prefixes never gets here (they are not
                    // found), and real keys are few; clear rather than grow without end.
                    if m.len() > 500_000 {
                        m.clear();
                    }
                    m.insert(
                        prefix.to_string(),
                        CachedKey {
                            key,
                            hash,
                            read_at: std::time::Instant::now(),
                        },
                    );
                }
                found
            }
        };
        if !matches {
            return Err(invalid());
        }
        let now = self.now();
        if key.revoked {
            return Err(Error::unauthenticated("API key has been revoked"));
        }
        if auth::expired(key.expires_at, now) {
            return Err(Error::unauthenticated("API key has expired"));
        }
        // Last-used is a hint for operators; writing it on every request would turn every
        // read into a write, so it is refreshed at most once a minute — once an hour for
        // node-agent keys, whose nodes show their last heartbeat — and written in batches by
        // the periodic work ([`Service::flush_key_use`]), never in the request's path.
        let every = if key.role == Role::NodeAgent {
            3600
        } else {
            60
        };
        let stale = key.last_used_at.is_none_or(|t| t.plus_seconds(every) < now);
        if stale {
            if let Ok(mut t) = self.touched.lock() {
                t.insert(key.id, now);
            }
            if let Ok(mut m) = self.keys.lock()
                && let Some(c) = m.get_mut(prefix)
            {
                c.key.last_used_at = Some(now);
            }
        }
        Ok(Principal {
            key_id: key.id,
            role: key.role,
            tenant_id: key.tenant_id,
            node_id: key.node_id,
        })
    }

    /// Writes the last-used times of keys used since the last call, in one transaction per
    /// thousand keys.
    pub async fn flush_key_use(&self) -> Result<()> {
        let batch: Vec<(ApiKeyId, Timestamp)> = match self.touched.lock() {
            Ok(mut t) => t.drain().collect(),
            Err(_) => return Ok(()),
        };
        for chunk in batch.chunks(1000) {
            let mut tx = self.store.begin_write_unfenced().await?;
            for (id, at) in chunk {
                Store::api_key_touch_tx(&mut tx, *id, *at).await?;
            }
            tx.commit().await?;
        }
        Ok(())
    }

    /// Forgets cached keys (after a revocation).
    pub(crate) fn forget_keys(&self) {
        if let Ok(mut m) = self.keys.lock() {
            m.clear();
        }
    }

    /// Forgets the cached keys with these prefixes (after they were revoked).
    pub(crate) fn forget_prefixes(&self, prefixes: &[String]) {
        if let Ok(mut m) = self.keys.lock() {
            for p in prefixes {
                m.remove(p);
            }
        }
    }

    // ---- idempotency -------------------------------------------------------------------

    pub(crate) async fn idem_lookup<T: DeserializeOwned>(
        tx: &mut WriteTx,
        p: &Principal,
        idem: Option<&Idempotency>,
    ) -> Result<Option<Created<T>>> {
        let Some(idem) = idem else { return Ok(None) };
        let Some(rec) = Store::idempotency_get(tx, &p.key_id.to_string(), &idem.key).await? else {
            return Ok(None);
        };
        Self::replay(rec, idem).map(Some)
    }

    /// The stored first response of a create, when the same request is retried; the same
    /// key with another request is refused.
    pub(crate) fn replay<T: DeserializeOwned>(
        rec: IdempotencyRecord,
        idem: &Idempotency,
    ) -> Result<Created<T>> {
        if rec.fingerprint != idem.fingerprint {
            return Err(Error::new(
                ErrorCode::IdempotencyKeyReused,
                format!(
                    "Idempotency-Key '{}' was already used for a different request",
                    idem.key
                ),
            ));
        }
        let value = match serde_json::from_str(&rec.body) {
            Ok(v) => v,
            // Changes answered with a re-read record `null` in their transaction and the
            // answer just after commit; only a crash between the two leaves `null`. The
            // change was made once; its answer is lost, not made again.
            Err(_) if rec.body == "null" => {
                return Err(Error::new(
                    ErrorCode::Conflict,
                    format!(
                        "the request with Idempotency-Key '{}' was applied, but its answer \
                         was not recorded; read the resource to see its state",
                        idem.key
                    ),
                ));
            }
            Err(e) => return Err(Error::internal(format!("stored idempotent response: {e}"))),
        };
        Ok(Created {
            value,
            replayed: true,
        })
    }

    pub(crate) async fn idem_store<T: Serialize>(
        tx: &mut WriteTx,
        p: &Principal,
        idem: Option<&Idempotency>,
        value: &T,
    ) -> Result<()> {
        Self::idem_store_status(tx, p, idem, 201, value).await
    }

    /// Records the answer to a request made with an Idempotency-Key in the transaction of
    /// its change: the change and its record commit together or not at all, so a retry
    /// after a crash between commit and answer replays instead of changing twice. A
    /// concurrent request with the same key fails this insert (`conflict`, retry it).
    pub(crate) async fn idem_store_status<T: Serialize>(
        tx: &mut WriteTx,
        p: &Principal,
        idem: Option<&Idempotency>,
        status: u16,
        value: &T,
    ) -> Result<()> {
        let Some(idem) = idem else { return Ok(()) };
        Store::idempotency_put(
            tx,
            &p.key_id.to_string(),
            &idem.key,
            &Self::idem_record(idem, status, value)?,
        )
        .await?;
        Ok(())
    }

    fn idem_record<T: Serialize>(
        idem: &Idempotency,
        status: u16,
        value: &T,
    ) -> Result<IdempotencyRecord> {
        Ok(IdempotencyRecord {
            fingerprint: idem.fingerprint.clone(),
            status,
            body: serde_json::to_string(value).map_err(|e| Error::internal(e.to_string()))?,
        })
    }

    /// The stored answer for an Idempotency-Key, read before any work (outside the
    /// change's transaction): a retry is answered even when the request would no longer be
    /// valid now (capacity taken since, a time now in the past). The change's transaction
    /// looks again ([`Self::idem_lookup`]) so that a race still changes once.
    pub(crate) async fn idem_replay<T: DeserializeOwned>(
        &self,
        p: &Principal,
        idem: Option<&Idempotency>,
    ) -> Result<Option<Created<T>>> {
        let Some(idem) = idem else { return Ok(None) };
        match self
            .store
            .idempotency_find(&p.key_id.to_string(), &idem.key)
            .await?
        {
            Some(rec) => Self::replay(rec, idem).map(Some),
            None => Ok(None),
        }
    }

    /// After commit, replaces the answer recorded in the change's transaction with the one
    /// finally given (re-read after commit, or after follow-up work such as a contract's
    /// activation). Best effort: if this fails, a retry replays the answer recorded at
    /// commit, which describes the same single change.
    pub(crate) async fn idem_settle<T: Serialize>(
        &self,
        p: &Principal,
        idem: Option<&Idempotency>,
        status: u16,
        value: &T,
    ) {
        let Some(idem) = idem else { return };
        let rec = match Self::idem_record(idem, status, value) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e.message, "idempotency record not settled");
                return;
            }
        };
        let settled = async {
            let mut tx = self.store.begin_write().await?;
            Store::idempotency_settle(&mut tx, &p.key_id.to_string(), &idem.key, &rec).await?;
            tx.commit().await
        };
        if let Err(e) = settled.await {
            tracing::warn!(error = %e, "idempotency record not settled");
        }
    }

    /// Before a decision made with an Idempotency-Key: the recorded answer of an earlier
    /// request with the key, or a claim on the key held while this request decides and
    /// commits (a second request with the key meanwhile is refused with `conflict`).
    pub(crate) async fn idem_start<T: DeserializeOwned>(
        &self,
        p: &Principal,
        idem: Option<&Idempotency>,
    ) -> Result<IdemStart<T>> {
        let Some(i) = idem else {
            return Ok(IdemStart::Decide(None));
        };
        // Claimed first, looked up once: an answer committed before the claim is found, and
        // none can commit after it while the claim is held.
        let claim = self.idem_claim(&p.key_id.to_string(), &i.key)?;
        if let Some(c) = self.idem_replay(p, idem).await? {
            return Ok(IdemStart::Replay(c));
        }
        Ok(IdemStart::Decide(Some(claim)))
    }

    /// The record of a decision's answer, written in the decision's own transaction (see
    /// [`IdemPut::write`]); `None` without a key.
    pub(crate) fn idem_put<T: Serialize>(
        p: &Principal,
        idem: Option<&Idempotency>,
        status: u16,
        value: &T,
    ) -> Result<Option<IdemPut>> {
        let Some(i) = idem else { return Ok(None) };
        Ok(Some(IdemPut {
            scope: p.key_id.to_string(),
            key: i.key.clone(),
            rec: Self::idem_record(i, status, value)?,
        }))
    }

    /// Makes an operation that is naturally idempotent (terminating, cordoning, draining:
    /// doing it twice ends in the same state) honour an Idempotency-Key without touching
    /// its body: a recorded answer is replayed; otherwise the operation runs and its answer
    /// is recorded afterwards (`status` is the HTTP status it answers with). A crash between
    /// the operation and the record at worst runs it again on retry, which changes nothing
    /// more. Operations that create something record in their own transaction instead.
    pub async fn idempotent<T, F>(
        &self,
        p: &Principal,
        idem: Option<&Idempotency>,
        status: u16,
        op: F,
    ) -> Result<Created<T>>
    where
        T: Serialize + DeserializeOwned,
        F: std::future::Future<Output = Result<T>>,
    {
        self.idempotent_recording(p, idem, status, op, |v| {
            serde_json::to_value(v).map_err(|e| Error::internal(e.to_string()))
        })
        .await
    }

    /// [`Self::idempotent`], recording `record(answer)` rather than the answer itself (a
    /// secret in the answer is never stored: the replay leaves it out).
    pub async fn idempotent_recording<T, F, R>(
        &self,
        p: &Principal,
        idem: Option<&Idempotency>,
        status: u16,
        op: F,
        record: R,
    ) -> Result<Created<T>>
    where
        T: Serialize + DeserializeOwned,
        F: std::future::Future<Output = Result<T>>,
        R: FnOnce(&T) -> Result<serde_json::Value>,
    {
        if let Some(c) = self.idem_replay(p, idem).await? {
            return Ok(c);
        }
        let value = op.await?;
        let Some(i) = idem else {
            return Ok(Created {
                value,
                replayed: false,
            });
        };
        let rec = Self::idem_record(i, status, &record(&value)?)?;
        let mut tx = self.store.begin_write().await?;
        match Store::idempotency_put(&mut tx, &p.key_id.to_string(), &i.key, &rec).await {
            Ok(()) => tx.commit().await?,
            // A concurrent request with the same key recorded first: both did the same
            // thing, and the first answer stands (or, another body, the key is refused).
            Err(neocloud_store::StoreError::Conflict(_)) => {
                drop(tx);
                if let Some(c) = self.idem_replay(p, idem).await? {
                    return Ok(c);
                }
            }
            Err(e) => return Err(e.into()),
        }
        Ok(Created {
            value,
            replayed: false,
        })
    }

    // ---- catalog -----------------------------------------------------------------------

    /// Lists the GPU model catalog.
    pub async fn gpu_model_list(&self, p: &Principal) -> Result<Vec<GpuModel>> {
        auth::authorize(p, Action::ReadCatalog)?;
        Ok(self.store.gpu_model_list().await?)
    }

    /// Reads one GPU model.
    pub async fn gpu_model_get(&self, p: &Principal, name: &str) -> Result<GpuModel> {
        auth::authorize(p, Action::ReadCatalog)?;
        Ok(self.store.gpu_model_get(name).await?)
    }

    /// Adds a GPU model to the catalog.
    pub async fn gpu_model_create(
        &self,
        p: &Principal,
        req: CreateGpuModel,
        idem: Option<&Idempotency>,
    ) -> Result<Created<GpuModel>> {
        auth::authorize(p, Action::WriteCatalog)?;
        let model = req.validate()?;
        let mut tx = self.store.begin_write().await?;
        if let Some(c) = Self::idem_lookup(&mut tx, p, idem).await? {
            return Ok(c);
        }
        Store::gpu_model_create(&mut tx, &model).await?;
        Store::event_insert(
            &mut tx,
            NewEvent {
                actor: Some(p.key_id),
                tenant_id: None,
                action: "gpu_model.created",
                resource_kind: "gpu_model",
                resource_id: model.name.clone(),
                before: None,
                after: serde_json::to_value(&model).ok(),
            },
        )
        .await?;
        Self::idem_store(&mut tx, p, idem, &model).await?;
        tx.commit().await?;
        Self::price_seed_defaults(&self.store).await?;
        Ok(Created {
            value: model,
            replayed: false,
        })
    }

    // ---- fleet -------------------------------------------------------------------------

    /// Lists sites with their totals.
    pub async fn site_list(&self, p: &Principal) -> Result<Vec<Site>> {
        auth::authorize(p, Action::ReadSites)?;
        self.sites(None).await
    }

    /// Reads one site by id or name.
    pub async fn site_get(&self, p: &Principal, id_or_name: &str) -> Result<Site> {
        auth::authorize(p, Action::ReadSites)?;
        Ok(self.sites(Some(id_or_name)).await?.remove(0))
    }

    /// Every site (or the one named by id or name), from the scheduler's copy. Their
    /// totals change only with fleet imports (which rebuild the copy) and power caps (which
    /// update it), so no read aggregates the nodes table again: on the full demo that
    /// aggregate costs about 30 ms.
    pub(crate) async fn sites(&self, one: Option<&str>) -> Result<Vec<Site>> {
        let sched = scheduler::lock(&self.sched);
        match one {
            None => Ok(sched.sites().to_vec()),
            Some(key) => sched
                .sites()
                .iter()
                .find(|s| s.name == key || s.id.to_string() == key)
                .map(|s| vec![s.clone()])
                .ok_or_else(|| Error::not_found("site", key)),
        }
    }

    /// Caps a site's power below its budget (or removes the cap). New placements keep the
    /// site under the cap; running work is not stopped.
    pub async fn site_set_power_cap(
        &self,
        p: &Principal,
        site: &str,
        req: SetPowerCap,
        idem: Option<&Idempotency>,
    ) -> Result<Created<Site>> {
        auth::authorize(p, Action::WriteFleet)?;
        if let Some(c) = self.idem_replay(p, idem).await? {
            return Ok(c);
        }
        let before = self.store.site_get(site).await?;
        if let Some(w) = req.watts
            && !(0..=before.power_budget_watts).contains(&w)
        {
            return Err(Error::invalid(format!(
                "watts must be between 0 and the site's budget of {} W",
                before.power_budget_watts
            )));
        }
        let _claim = match self.idem_start(p, idem).await? {
            IdemStart::Replay(c) => return Ok(c),
            IdemStart::Decide(claim) => claim,
        };
        let site_id = before.id;
        let watts = req.watts;
        let actor = p.key_id;
        let before_json = serde_json::to_value(&before).ok();
        let put = Self::idem_put(p, idem, 200, &serde_json::Value::Null)?;
        self.decide(
            neocloud_scheduler::Command::SetPowerLimit {
                site: site_id,
                watts: watts.unwrap_or(before.power_budget_watts),
            },
            self.now(),
            Some(actor),
            move |_, _| {
                Ok(Some(writer::extra(move |_, tx| {
                    Box::pin(async move {
                        Store::site_set_power_cap(tx, site_id, watts).await?;
                        Store::event_insert(
                            tx,
                            NewEvent {
                                actor: Some(actor),
                                tenant_id: None,
                                action: "site.power_capped",
                                resource_kind: "site",
                                resource_id: site_id.to_string(),
                                before: before_json,
                                after: Some(serde_json::json!({"power_cap_watts": watts})),
                            },
                        )
                        .await?;
                        if let Some(put) = put {
                            put.write(tx).await?;
                        }
                        Ok(())
                    })
                })))
            },
        )
        .await?;
        let after = self.store.site_get(site).await?;
        scheduler::lock(&self.sched).set_site(after.clone());
        self.idem_settle(p, idem, 200, &after).await;
        Ok(Created {
            value: after,
            replayed: false,
        })
    }

    /// Lists blocks, optionally of one site.
    pub async fn block_list(&self, p: &Principal, site: Option<&str>) -> Result<Vec<Block>> {
        auth::authorize(p, Action::ReadFleet)?;
        let site = match site {
            Some(s) => Some(self.store.site_get(s).await?),
            None => None,
        };
        Ok(self.store.block_list(site.as_ref()).await?)
    }

    /// Reads one block.
    pub async fn block_get(&self, p: &Principal, id: &str) -> Result<Block> {
        auth::authorize(p, Action::ReadFleet)?;
        let id: BlockId = id.parse().map_err(|_| Error::not_found("block", id))?;
        Ok(self.store.block_get(id).await?)
    }

    /// Lists nodes matching a filter, a page at a time.
    pub async fn node_list(
        &self,
        p: &Principal,
        filter: &NodeFilter,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<Node>> {
        auth::authorize(p, Action::ReadFleet)?;
        let limit = page_limit(limit)?;
        let mut page = self.store.node_list(filter, cursor, limit).await?;
        let sched = scheduler::lock(&self.sched);
        for n in &mut page.items {
            allocated_view(sched.alloc(), n);
        }
        Ok(page)
    }

    /// Reads one node, with its GPUs.
    pub async fn node_get(&self, p: &Principal, id_or_name: &str) -> Result<Node> {
        auth::authorize(p, Action::ReadFleet)?;
        let mut node = self.store.node_get(id_or_name).await?;
        self.node_live(&mut node).await?;
        allocated_view(scheduler::lock(&self.sched).alloc(), &mut node);
        Ok(node)
    }

    /// Validates and applies a fleet file. With `dry_run`, reports what would change and
    /// writes nothing.
    pub async fn fleet_import(
        &self,
        p: Option<&Principal>,
        source: &str,
        dry_run: bool,
    ) -> Result<ImportReport> {
        if let Some(p) = p {
            auth::authorize(p, Action::WriteFleet)?;
        }
        let catalog = self.store.gpu_model_list().await?;
        let spec = neocloud_fleet::parse(source, &catalog).map_err(|errs| {
            let n = errs.0.len();
            let mut e = Error::new(
                ErrorCode::InvalidFleetFile,
                format!(
                    "the fleet file has {n} error{}: {}",
                    if n == 1 { "" } else { "s" },
                    errs.0.first().map(|f| f.to_string()).unwrap_or_default()
                ),
            );
            e.field_errors = errs
                .0
                .iter()
                .map(|f| FieldError {
                    line: Some(f.line),
                    column: Some(f.column),
                    field: f.field.clone(),
                    message: f.message.clone(),
                })
                .collect();
            e
        })?;
        if dry_run {
            let mut tx = self.store.begin_write().await?;
            let mut report = Store::fleet_import(&mut tx, &spec, p.map(|p| p.key_id)).await?;
            report.dry_run = true;
            drop(tx);
            return Ok(report);
        }
        // The import is written in order with the scheduler's decisions, and the scheduler
        // is rebuilt from the database right after it; no decision is made in between
        // (they are refused with 503 for that moment).
        let out = std::sync::Arc::new(std::sync::Mutex::new(None));
        let slot = out.clone();
        let actor = p.map(|p| p.key_id);
        let hash = auth::sha256_hex(source.as_bytes());
        let write = writer::extra(move |_, tx| {
            Box::pin(async move {
                let report = Store::fleet_import(tx, &spec, actor).await?;
                Store::meta_put(tx, "fleet_file_sha256", &hash).await?;
                *slot
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(report);
                Ok(())
            })
        });
        self.write_then_rebuild(write).await?;
        self.map_cells
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        if let Err(e) = self.store.analyze().await {
            tracing::warn!(error = %e, "could not refresh planner statistics");
        }
        Self::price_seed_defaults(&self.store).await?;
        let report = out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        report.ok_or_else(|| Error::internal("the fleet import wrote no report"))
    }

    /// Applies a fleet file at start-up unless the very same file was the last one applied
    /// (so restarting `serve --demo` on an existing data directory is quick).
    pub async fn fleet_import_at_start(&self, source: &str) -> Result<Option<ImportReport>> {
        let hash = auth::sha256_hex(source.as_bytes());
        if self.store.meta_get("fleet_file_sha256").await?.as_deref() == Some(hash.as_str()) {
            return Ok(None);
        }
        self.fleet_import(None, source, false).await.map(Some)
    }

    // ---- tenants -----------------------------------------------------------------------

    /// Creates a tenant.
    pub async fn tenant_create(
        &self,
        p: &Principal,
        req: CreateTenant,
        idem: Option<&Idempotency>,
    ) -> Result<Created<Tenant>> {
        auth::authorize(p, Action::WriteTenants)?;
        let req = req.validate()?;
        let mut tx = self.store.begin_write().await?;
        if let Some(c) = Self::idem_lookup(&mut tx, p, idem).await? {
            return Ok(c);
        }
        let display = req.display_name.clone().unwrap_or_else(|| req.name.clone());
        let t =
            Store::tenant_create(&mut tx, &req.name, &display, req.kind, req.credit_limit).await?;
        Store::event_insert(
            &mut tx,
            NewEvent {
                actor: Some(p.key_id),
                tenant_id: Some(t.id),
                action: "tenant.created",
                resource_kind: "tenant",
                resource_id: t.id.to_string(),
                before: None,
                after: serde_json::to_value(&t).ok(),
            },
        )
        .await?;
        Self::idem_store(&mut tx, p, idem, &t).await?;
        tx.commit().await?;
        Ok(Created {
            value: t,
            replayed: false,
        })
    }

    /// Creates a tenant for the operator itself (demo set-up); no-op if the name exists.
    pub async fn tenant_ensure(
        &self,
        name: &str,
        display: &str,
        kind: TenantKind,
    ) -> Result<Tenant> {
        match self.store.tenant_get(name).await {
            Ok(t) => Ok(t),
            Err(neocloud_store::StoreError::NotFound { .. }) => {
                let mut tx = self.store.begin_write().await?;
                let t = Store::tenant_create(&mut tx, name, display, kind, None).await?;
                Store::event_insert(
                    &mut tx,
                    NewEvent {
                        actor: None,
                        tenant_id: Some(t.id),
                        action: "tenant.created",
                        resource_kind: "tenant",
                        resource_id: t.id.to_string(),
                        before: None,
                        after: serde_json::to_value(&t).ok(),
                    },
                )
                .await?;
                tx.commit().await?;
                Ok(t)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A tenant by id or name, from the cache when read within [`KEY_CACHE_SECS`].
    pub(crate) async fn tenant_cached(
        &self,
        id_or_name: &str,
    ) -> std::result::Result<Tenant, neocloud_store::StoreError> {
        use std::sync::atomic::Ordering;
        let fresh = std::time::Duration::from_secs(KEY_CACHE_SECS);
        if let Some((t, at)) =
            crate::instances::lock_ignoring_poison(&self.tenants.rows).get(id_or_name)
            && at.elapsed() < fresh
        {
            return Ok(t.clone());
        }
        let generation = self.tenants.generation.load(Ordering::Acquire);
        let t = self.store.tenant_get(id_or_name).await?;
        let mut rows = crate::instances::lock_ignoring_poison(&self.tenants.rows);
        if self.tenants.generation.load(Ordering::Acquire) == generation {
            if rows.len() > 100_000 {
                rows.clear();
            }
            let now = std::time::Instant::now();
            rows.insert(t.id.to_string(), (t.clone(), now));
            rows.insert(t.name.clone(), (t.clone(), now));
        }
        Ok(t)
    }

    /// Drops every cached tenant: called after a tenant changes.
    fn tenants_changed(&self) {
        self.tenants
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        crate::instances::lock_ignoring_poison(&self.tenants.rows).clear();
    }

    /// Whether the catalog has a GPU model of this name (remembered once seen: models are
    /// never removed).
    pub(crate) async fn gpu_model_known(&self, name: &str) -> Result<bool> {
        if crate::instances::lock_ignoring_poison(&self.models_known).contains(name) {
            return Ok(true);
        }
        match self.store.gpu_model_get(name).await {
            Ok(_) => {
                let mut known = crate::instances::lock_ignoring_poison(&self.models_known);
                if known.len() < 100_000 {
                    known.insert(name.to_string());
                }
                Ok(true)
            }
            Err(neocloud_store::StoreError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Refuses a change on behalf of a suspended tenant with 403, as instance launches are.
    pub(crate) async fn refuse_suspended(&self, tenant: TenantId) -> Result<()> {
        let t = self.tenant_cached(&tenant.to_string()).await?;
        if t.status == neocloud_types::TenantStatus::Suspended {
            return Err(Error::forbidden(format!(
                "tenant '{}' is suspended",
                t.name
            )));
        }
        Ok(())
    }

    /// Resolves a tenant the caller may see, or reports it not found.
    pub(crate) async fn visible_tenant(&self, p: &Principal, id_or_name: &str) -> Result<Tenant> {
        let t = self
            .tenant_cached(id_or_name)
            .await
            .or_not_found(|| Error::not_found("tenant", id_or_name))?;
        match p.tenant_scope() {
            Some(own) if own != t.id => Err(Error::not_found("tenant", id_or_name)),
            _ => Ok(t),
        }
    }

    /// The tenant a list is confined to: the one named (if the caller may see it), else the
    /// caller's own tenant for tenant keys, else none (operators see all).
    pub(crate) async fn scoped_tenant(
        &self,
        p: &Principal,
        tenant: Option<&str>,
    ) -> Result<Option<TenantId>> {
        match tenant {
            Some(t) => Ok(Some(self.visible_tenant(p, t).await?.id)),
            None => Ok(p.tenant_scope()),
        }
    }

    /// Reads a tenant (a tenant key sees only its own).
    pub async fn tenant_get(&self, p: &Principal, id_or_name: &str) -> Result<Tenant> {
        auth::authorize(p, Action::ReadTenants)?;
        self.visible_tenant(p, id_or_name).await
    }

    /// Lists tenants (a tenant key sees only its own).
    pub async fn tenant_list(
        &self,
        p: &Principal,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<Tenant>> {
        auth::authorize(p, Action::ReadTenants)?;
        let limit = page_limit(limit)?;
        let only = if p.role.is_tenant_role() {
            Some(
                p.tenant_id
                    .ok_or_else(|| Error::internal("tenant key without tenant"))?,
            )
        } else {
            None
        };
        Ok(self.store.tenant_list(only, cursor, limit).await?)
    }

    /// Changes a tenant's display name, status or credit limit.
    pub async fn tenant_update(
        &self,
        p: &Principal,
        id_or_name: &str,
        req: UpdateTenant,
        idem: Option<&Idempotency>,
    ) -> Result<Created<Tenant>> {
        auth::authorize(p, Action::WriteTenants)?;
        if let Some(c) = self.idem_replay(p, idem).await? {
            return Ok(c);
        }
        let changes = req.validate()?;
        let t = self.visible_tenant(p, id_or_name).await?;
        let mut tx = self.store.begin_write().await?;
        if let Some(c) = Self::idem_lookup(&mut tx, p, idem).await? {
            return Ok(c);
        }
        let (before, after) = Store::tenant_update(&mut tx, t.id, &changes).await?;
        // Dropped before the commit too: a launch that reads the row from now on waits for
        // the write lock's holder or sees the old row and is refused caching it.
        self.tenants_changed();
        Store::event_insert(
            &mut tx,
            NewEvent {
                actor: Some(p.key_id),
                tenant_id: Some(t.id),
                action: "tenant.updated",
                resource_kind: "tenant",
                resource_id: t.id.to_string(),
                before: serde_json::to_value(&before).ok(),
                after: serde_json::to_value(&after).ok(),
            },
        )
        .await?;
        Self::idem_store_status(&mut tx, p, idem, 200, &after).await?;
        tx.commit().await?;
        self.tenants_changed();
        Ok(Created {
            value: after,
            replayed: false,
        })
    }

    // ---- API keys ----------------------------------------------------------------------

    /// Creates an API key; the response carries the secret, once.
    pub async fn api_key_create(
        &self,
        p: &Principal,
        req: CreateApiKey,
        idem: Option<&Idempotency>,
    ) -> Result<Created<ApiKeyCreated>> {
        auth::authorize(p, Action::WriteKeys)?;
        // Tenant admins mint keys for their own tenant only, and never operator keys.
        let tenant_id = if p.role.is_tenant_role() {
            if !req.role.is_tenant_role() {
                return Err(Error::forbidden(format!(
                    "a tenant admin can only create tenant-admin or tenant-member keys, not '{}'",
                    req.role.as_str()
                )));
            }
            match &req.tenant_id {
                None => p.tenant_id,
                Some(t) => Some(self.visible_tenant(p, t).await?.id),
            }
        } else if req.role.is_tenant_role() {
            let Some(t) = &req.tenant_id else {
                return Err(Error::invalid(format!(
                    "a '{}' key needs tenant_id",
                    req.role.as_str()
                )));
            };
            Some(self.visible_tenant(p, t).await?.id)
        } else {
            if req.tenant_id.is_some() {
                return Err(Error::invalid(format!(
                    "a '{}' key does not belong to a tenant; leave tenant_id out",
                    req.role.as_str()
                )));
            }
            None
        };
        // A suspended tenant gets no new keys, as it launches nothing (403, before the body's
        // own checks).
        if let Some(t) = tenant_id {
            self.refuse_suspended(t).await?;
        }
        let req = req.validate(self.now())?;
        let node_id = match (&req.node, req.role) {
            (None, _) => None,
            (Some(n), Role::NodeAgent) => Some(
                self.store
                    .node_get(n)
                    .await
                    .or_not_found(|| Error::not_found("node", n))?
                    .id,
            ),
            (Some(_), r) => {
                return Err(Error::invalid(format!(
                    "only node-agent keys are bound to a node, not '{}' keys; leave node out",
                    r.as_str()
                )));
            }
        };
        let mut tx = self.store.begin_write().await?;
        if let Some(c) = Self::idem_lookup(&mut tx, p, idem).await? {
            return Ok(c);
        }
        let minted = auth::mint_key()?;
        let key = ApiKey {
            id: ApiKeyId::new(),
            name: req.name.clone(),
            role: req.role,
            tenant_id,
            prefix: minted.prefix.clone(),
            created_at: self.now(),
            expires_at: req.expires_at,
            revoked_at: None,
            last_used_at: None,
            node_id,
        };
        Store::api_key_create(&mut tx, &key, &minted.hash).await?;
        Store::event_insert(
            &mut tx,
            NewEvent {
                actor: Some(p.key_id),
                tenant_id,
                action: "api_key.created",
                resource_kind: "api_key",
                resource_id: key.id.to_string(),
                before: None,
                after: serde_json::to_value(&key).ok(),
            },
        )
        .await?;
        // Secrets are never stored, not even for idempotent replays: a replay returns the
        // key without its secret.
        Self::idem_store(
            &mut tx,
            p,
            idem,
            &ApiKeyCreated {
                key: key.clone(),
                secret: None,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(Created {
            value: ApiKeyCreated {
                key,
                secret: Some(minted.secret),
            },
            replayed: false,
        })
    }

    async fn visible_key(&self, p: &Principal, id: &str) -> Result<ApiKey> {
        let not_found = || Error::not_found("API key", id);
        let key_id: ApiKeyId = id.parse().map_err(|_| not_found())?;
        let key = self
            .store
            .api_key_get(key_id)
            .await
            .or_not_found(not_found)?;
        match p.tenant_scope() {
            Some(own) if key.tenant_id != Some(own) => Err(not_found()),
            _ => Ok(key),
        }
    }

    /// Lists keys (a tenant admin sees its tenant's).
    pub async fn api_key_list(
        &self,
        p: &Principal,
        tenant: Option<&str>,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<ApiKey>> {
        auth::authorize(p, Action::ReadKeys)?;
        let limit = page_limit(limit)?;
        let tenant_id: Option<TenantId> = self.scoped_tenant(p, tenant).await?;
        Ok(self.store.api_key_list(tenant_id, cursor, limit).await?)
    }

    /// Reads a key.
    pub async fn api_key_get(&self, p: &Principal, id: &str) -> Result<ApiKey> {
        auth::authorize(p, Action::ReadKeys)?;
        self.visible_key(p, id).await
    }

    /// Revokes a key at once; it fails authentication from then on.
    pub async fn api_key_revoke(
        &self,
        p: &Principal,
        id: &str,
        idem: Option<&Idempotency>,
    ) -> Result<Created<ApiKey>> {
        auth::authorize(p, Action::WriteKeys)?;
        if let Some(c) = self.idem_replay(p, idem).await? {
            return Ok(c);
        }
        let key = self.visible_key(p, id).await?;
        let mut tx = self.store.begin_write().await?;
        if let Some(c) = Self::idem_lookup(&mut tx, p, idem).await? {
            return Ok(c);
        }
        let (before, after) = Store::api_key_revoke(&mut tx, key.id).await?;
        if before.revoked_at.is_none() {
            Store::event_insert(
                &mut tx,
                NewEvent {
                    actor: Some(p.key_id),
                    tenant_id: key.tenant_id,
                    action: "api_key.revoked",
                    resource_kind: "api_key",
                    resource_id: key.id.to_string(),
                    before: serde_json::to_value(&before).ok(),
                    after: serde_json::to_value(&after).ok(),
                },
            )
            .await?;
        }
        Self::idem_store_status(&mut tx, p, idem, 200, &after).await?;
        tx.commit().await?;
        self.forget_keys();
        Ok(Created {
            value: after,
            replayed: false,
        })
    }

    // ---- events ------------------------------------------------------------------------

    /// Lists audit events, newest first (a tenant key sees its tenant's).
    pub async fn event_list(
        &self,
        p: &Principal,
        mut filter: EventFilter,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<Event>> {
        auth::authorize(p, Action::ReadEvents)?;
        let limit = page_limit(limit)?;
        if let Some(own) = p.tenant_scope() {
            filter.tenant_id = Some(own);
        }
        Ok(self.store.event_list(&filter, cursor, limit).await?)
    }
}

/// A database URL with its password hidden, for messages.
pub fn redact_database_url(url: &str) -> String {
    neocloud_store::redact_url(url)
}
