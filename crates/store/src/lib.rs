//! neocloud's datastore.
//!
//! The database is the source of truth (docs/architecture.md). One schema and one set of migrations
//! serve both backends: embedded SQLite (a file in the data directory, zero set-up) and
//! PostgreSQL (production, several replicas). Queries are written once in the SQL both
//! understand and run through sqlx's `Any` driver; ids are text, times and money are 64-bit
//! integers, so nothing depends on a backend's type system.
//!
//! Methods are noun-first (`tenant_create`, `node_list`). Reads take `&self`; every change
//! runs inside a [`WriteTx`] that the caller commits, so a change and its audit event land
//! together or not at all.

pub mod backup;
mod billing;
mod contracts;
mod fleet;
mod health;
mod instances;
mod lease;
mod maintenance;
mod map;
mod ssh_keys;
mod storage;
mod tenancy;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyConnection, AnyPool, Connection, Executor, Row};
use tokio::sync::{Mutex, OwnedMutexGuard};

pub use billing::*;
pub use contracts::*;
pub use fleet::*;
pub use health::*;
pub use instances::*;
pub use lease::*;
pub use maintenance::MaintenanceRow;
pub use map::*;
pub use storage::FAILPOINT_SQLITE_MAX_PAGES;
pub use tenancy::*;
pub use webhooks::*;

/// The database driver's error, for callers that classify failures.
pub use sqlx::Error as sqlx_error;

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row asked for does not exist.
    #[error("{kind} '{id}' not found")]
    NotFound {
        /// Kind of resource, e.g. "tenant".
        kind: &'static str,
        /// The id or name looked up.
        id: String,
    },
    /// A uniqueness rule or a state rule refused the change.
    #[error("{0}")]
    Conflict(String),
    /// The change is invalid against what the database holds (e.g. a fleet import that would
    /// remove a node that holds GPUs).
    #[error("{0}")]
    Invalid(String),
    /// A stored value could not be read back (corruption or a newer schema).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The database failed or could not be reached.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// The disk (or the database's size limit) is full; the write was rolled back.
    #[error("storage full: {0}")]
    StorageFull(sqlx::Error),
    /// The database cannot be written: a read-only file, directory or mount.
    #[error("database is read-only: {0}")]
    ReadOnly(sqlx::Error),
    /// This replica does not hold the allocator lease (or lost it): the write was refused
    /// before it changed anything.
    #[error("this control-plane replica is not the leader")]
    NotLeader,
}

/// Result of a store operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which database is behind the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// The datastore: a connection pool plus what is needed to use it safely.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Writers are serialised in-process: SQLite allows one writer at a time (a queue
    /// instead of `SQLITE_BUSY`), and PostgreSQL writes serialise on the lease row.
    write_lock: Option<Arc<Mutex<()>>>,
    /// Which writes go through (replica mode fences a deposed leader's writes).
    fence: lease::FenceCell,
    /// The time rows are stamped with.
    clock: neocloud_types::Clock,
    /// Set on the copy [`Store::read_view`] returns: what keeps its reads on one state.
    view: Option<Arc<View>>,
}

/// What keeps the reads of a [`Store::read_view`] on one state of the database, while
/// each runs on a connection of its own.
struct View {
    /// PostgreSQL: the snapshot every read imports (`SET TRANSACTION SNAPSHOT`).
    snapshot: Option<String>,
    /// What holds that state while the view lives: on PostgreSQL the transaction that
    /// exported the snapshot; on SQLite a write transaction (this process's write lock and
    /// the database's), so that nothing commits between the view's reads.
    hold: std::sync::Mutex<Option<ViewHold>>,
}

enum ViewHold {
    Writer(WriteTx),
    Exporter(sqlx::Transaction<'static, Any>),
}

/// An open write transaction. Dropping it without [`WriteTx::commit`] rolls it back.
pub struct WriteTx {
    tx: sqlx::Transaction<'static, Any>,
    _guard: Option<OwnedMutexGuard<()>>,
    /// The fence checked at commit (none for unfenced transactions).
    fence: Option<lease::FenceCell>,
    /// The store's clock.
    clock: neocloud_types::Clock,
    /// Rows held back until the commit, when [`WriteTx::defer_inserts`] asked for it.
    pub(crate) deferred: Option<tenancy::Deferred>,
    /// Parameters are written `$1, $2, …` (PostgreSQL) rather than `?` (SQLite, which finds
    /// a numbered parameter by a linear search when binding: the square of a long
    /// statement's parameters).
    pub(crate) numbered: bool,
    /// The number of the last event written in this transaction, once one was.
    pub(crate) event_seq: Option<i64>,
    /// Whether committing moves the lease's write counter (which makes followers rebuild).
    pub(crate) moves_generation: bool,
}

impl WriteTx {
    /// Writes the instance rows and GPU holds held back so far (audit events and
    /// idempotency records stay held until the commit): statements that read or change
    /// those rows must come after this.
    pub async fn flush_deferred_rows(&mut self) -> Result<()> {
        let Some(d) = self.deferred.as_mut() else {
            return Ok(());
        };
        if d.instances.is_empty() && d.holds.is_empty() {
            return Ok(());
        }
        let instances = std::mem::take(&mut d.instances);
        let holds = std::mem::take(&mut d.holds);
        let gangs = std::mem::take(&mut d.gangs);
        Store::instance_insert_rows(self, &instances).await?;
        Store::instance_hold_ranges(self, &holds, &gangs).await
    }

    /// Holds new instance rows, whole-GPU holds, audit events and idempotency records written
    /// from now on in this transaction back, and writes each kind in one multi-row statement
    /// at the commit (instances and holds also at [`WriteTx::flush_deferred_rows`]): a batch
    /// of many launches costs a few statements instead of four per launch. Nothing may read
    /// or change those rows before they are flushed.
    pub fn defer_inserts(&mut self) {
        if self.deferred.is_none() {
            self.deferred = Some(Default::default());
        }
    }

    /// The time now, by the store's clock: what rows written in this transaction are
    /// stamped with.
    pub fn now(&self) -> neocloud_types::Timestamp {
        self.clock.now()
    }

    /// Commits without moving the lease's write counter: for writes that change nothing a
    /// follower's copy of the allocator holds (health events alone), so that followers do
    /// not rebuild for them. The fence is checked all the same.
    pub fn keep_generation(&mut self) {
        self.moves_generation = false;
    }

    /// Commits every change made in this transaction — in replica mode only while this
    /// replica still holds the allocator lease, checked as the last statement before the
    /// commit (see [`FenceMode`]); otherwise it rolls back with [`StoreError::NotLeader`].
    pub async fn commit(mut self) -> Result<()> {
        if let Some(d) = self.deferred.take() {
            d.flush(&mut self).await?;
        }
        if let Some(cell) = self.fence.take() {
            let mode = cell.read().map(|f| f.clone()).unwrap_or_default();
            lease::fence_check(&mut self, &mode).await?;
        }
        self.tx.commit().await?;
        Ok(())
    }

    /// Rolls back every change made in this transaction, before the write lock is let go.
    pub async fn rollback(self) -> Result<()> {
        self.tx.rollback().await?;
        Ok(())
    }

    /// The connection the transaction runs on.
    pub fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }
}

/// The migrations, in order. Each runs once, in its own transaction; the version applied is
/// recorded in `schema_migrations`.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "fleet_tenancy",
        include_str!("../migrations/0001_fleet_tenancy.sql"),
    ),
    (
        2,
        "instances",
        include_str!("../migrations/0002_instances.sql"),
    ),
    (3, "billing", include_str!("../migrations/0003_billing.sql")),
    (4, "health", include_str!("../migrations/0004_health.sql")),
    (5, "leases", include_str!("../migrations/0005_leases.sql")),
    (6, "slices", include_str!("../migrations/0006_slices.sql")),
    (
        7,
        "delivery",
        include_str!("../migrations/0007_delivery.sql"),
    ),
    (
        9,
        "gang_repair",
        include_str!("../migrations/0009_gang_repair.sql"),
    ),
    (
        10,
        "node_unreachable",
        include_str!("../migrations/0010_node_unreachable.sql"),
    ),
    (
        11,
        "maintenance",
        include_str!("../migrations/0011_maintenance.sql"),
    ),
    (
        12,
        "webhooks",
        include_str!("../migrations/0012_webhooks.sql"),
    ),
    (
        13,
        "node_holds",
        include_str!("../migrations/0013_node_holds.sql"),
    ),
    (
        14,
        "gpu_models",
        include_str!("../migrations/0014_gpu_models.sql"),
    ),
    (
        15,
        "agent_seen",
        include_str!("../migrations/0015_agent_seen.sql"),
    ),
];

impl Store {
    /// Opens the database at `url` (`sqlite://PATH` or `postgres://…`) and applies pending
    /// migrations.
    pub async fn open(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::Invalid(format!(
                "unsupported database URL '{}': use sqlite://PATH or postgres://…",
                redact_url(url)
            )));
        };
        let options: AnyConnectOptions = url.parse()?;
        let max_pages = (backend == Backend::Sqlite)
            .then(storage::sqlite_max_pages_failpoint)
            .flatten();
        let pool = AnyPoolOptions::new()
            .max_connections(match backend {
                Backend::Sqlite => 8,
                Backend::Postgres => 16,
            })
            .acquire_timeout(Duration::from_secs(30))
            // A SQLite connection is a file handle in this process: it cannot be cut off,
            // so it is not pinged before each use (a round trip to its worker thread that
            // cost a read as much as the read itself). A PostgreSQL connection can be.
            .test_before_acquire(backend == Backend::Postgres)
            // A connection back from a transaction that could not end cleanly (SQLite rolls
            // a transaction back by itself on a full disk, and the driver's ROLLBACK after
            // it fails) still counts as inside one: close it rather than hand it out again.
            // The ping waits for a rollback queued by a dropped transaction to run first;
            // a connection that was never in a transaction is handed back as it is.
            .after_release(|conn, _meta| {
                Box::pin(async move {
                    if !conn.is_in_transaction() {
                        return Ok(true);
                    }
                    conn.ping().await?;
                    Ok(!conn.is_in_transaction())
                })
            })
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers run beside the writer; NORMAL sync is durable
                        // across process crashes (the WAL is fsynced at checkpoints).
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                             PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                        )
                        .await?;
                    }
                    if backend == Backend::Postgres {
                        // A control plane that stalls inside a transaction (paused, cut off)
                        // must not hold the allocator lease's row lock for hours: the server
                        // ends such a session after 10 s, and a takeover proceeds.
                        conn.execute("SET idle_in_transaction_session_timeout = '10s'")
                            .await?;
                    }
                    if let Some(n) = max_pages {
                        conn.execute(format!("PRAGMA max_page_count = {n}").as_str())
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        let store = Store {
            pool,
            backend,
            // One writer at a time in the process on both backends: SQLite allows one
            // anyway, and on PostgreSQL fenced writes serialise on the lease row — without
            // this they would sit on pool connections the lease holder needs.
            write_lock: Some(Arc::new(Mutex::new(()))),
            fence: Default::default(),
            clock: neocloud_types::Clock::system(),
            view: None,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Stamps rows written from now on with `clock`'s time instead of the system clock's.
    pub fn set_clock(&mut self, clock: neocloud_types::Clock) {
        self.clock = clock;
    }

    /// The time now, by the store's clock.
    pub fn now(&self) -> neocloud_types::Timestamp {
        self.clock.now()
    }

    /// Which database this store runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The connection pool, for tests and tools that need raw SQL.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Starts a write transaction. In replica mode it is fenced: refused unless this
    /// replica holds the allocator lease, checked inside the transaction just before it
    /// commits (see [`FenceMode`]).
    pub async fn begin_write(&self) -> Result<WriteTx> {
        // A follower is refused at once; a leader is checked again at commit.
        if self.fence() == FenceMode::Follower {
            return Err(StoreError::NotLeader);
        }
        let mut tx = self.begin_write_unfenced().await?;
        tx.fence = Some(self.fence.clone());
        Ok(tx)
    }

    /// Starts a write transaction that any replica may run: the lease itself, and
    /// bookkeeping that does not touch allocations (keys' last-used times).
    pub async fn begin_write_unfenced(&self) -> Result<WriteTx> {
        let guard = match &self.write_lock {
            Some(lock) => Some(lock.clone().lock_owned().await),
            None => None,
        };
        // SQLite: take the database's write lock at BEGIN (waiting up to the busy
        // timeout), not at the first write. A deferred transaction that read first is
        // refused at once ("database is locked") if another connection committed since its
        // read, which a cancelled request's commit still finishing can do.
        let tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(WriteTx {
            tx,
            _guard: guard,
            fence: None,
            clock: self.clock.clone(),
            deferred: None,
            numbered: self.backend == Backend::Postgres,
            event_seq: None,
            moves_generation: true,
        })
    }

    /// A transaction on the lease itself. On PostgreSQL it does not queue behind this
    /// process's other writers (a long fleet import must not stop the lease from being
    /// renewed); SQLite has one writer at a time anyway.
    pub(crate) async fn begin_lease_tx(&self) -> Result<WriteTx> {
        if self.backend == Backend::Sqlite {
            return self.begin_write_unfenced().await;
        }
        let tx = self.pool.begin().await?;
        Ok(WriteTx {
            tx,
            _guard: None,
            fence: None,
            clock: self.clock.clone(),
            deferred: None,
            numbered: self.backend == Backend::Postgres,
            event_seq: None,
            moves_generation: true,
        })
    }

    /// A copy of the store whose snapshot reads (the ones a scheduler is built from:
    /// [`Store::allocator_fleet`], [`Store::instance_list_live`], [`Store::site_list`],
    /// [`Store::contract_list_live`], [`Store::quota_list`]) all see one state of the
    /// database, though each runs on a connection of its own, at once. On PostgreSQL the
    /// state is a snapshot exported by a transaction held open for the view (writers go on
    /// meanwhile); on SQLite the view holds the write lock, so writers wait until
    /// [`Store::read_view_end`]. Dropping the copy ends the view too, less promptly.
    pub async fn read_view(&self) -> Result<Store> {
        let (snapshot, hold) = match self.backend {
            Backend::Sqlite => (None, ViewHold::Writer(self.begin_write_unfenced().await?)),
            Backend::Postgres => {
                let mut tx = self
                    .pool
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .await?;
                let id: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
                    .fetch_one(&mut *tx)
                    .await?;
                // Interpolated into SET TRANSACTION SNAPSHOT below: keep it to what
                // PostgreSQL writes (hex digits and dashes).
                if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                    return Err(StoreError::Corrupt(format!("snapshot id '{id}'")));
                }
                (Some(id), ViewHold::Exporter(tx))
            }
        };
        let mut view = self.clone();
        view.view = Some(Arc::new(View {
            snapshot,
            hold: std::sync::Mutex::new(Some(hold)),
        }));
        Ok(view)
    }

    /// Ends a view from [`Store::read_view`] (its transaction rolled back, the write lock
    /// released); a store that is no view is left as it is.
    pub async fn read_view_end(&self) -> Result<()> {
        let hold = self.view.as_ref().and_then(|v| {
            v.hold
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
        });
        match hold {
            Some(ViewHold::Writer(tx)) => tx.rollback().await,
            Some(ViewHold::Exporter(tx)) => Ok(tx.rollback().await?),
            None => Ok(()),
        }
    }

    /// A read-only transaction whose reads all see one moment of the database: SQLite's
    /// read transaction is a snapshot (WAL), PostgreSQL's needs REPEATABLE READ (each
    /// statement of a READ COMMITTED one sees the latest commits). In a view it is the
    /// view's moment.
    pub(crate) async fn begin_snapshot(&self) -> Result<sqlx::Transaction<'static, Any>> {
        let begin = match self.backend {
            Backend::Sqlite => "BEGIN",
            Backend::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        };
        let mut tx = self.pool.begin_with(begin).await?;
        if let Some(id) = self.view.as_ref().and_then(|v| v.snapshot.as_deref()) {
            tx.execute(format!("SET TRANSACTION SNAPSHOT '{id}'").as_str())
                .await?;
        }
        Ok(tx)
    }

    /// Rows of `q`: in a view, read in a transaction on the view's state; otherwise
    /// straight from the pool.
    pub(crate) async fn fetch_all_viewed<'q>(
        &self,
        q: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    ) -> Result<Vec<sqlx::any::AnyRow>> {
        if self.view.is_none() {
            return Ok(q.fetch_all(&self.pool).await?);
        }
        let mut tx = self.begin_snapshot().await?;
        let rows = q.fetch_all(&mut *tx).await?;
        tx.commit().await?;
        Ok(rows)
    }

    /// Checks that the database answers (for `/readyz`).
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        conn.ping().await?;
        Ok(())
    }

    /// The migration versions applied, in order.
    pub async fn migrations_applied(&self) -> Result<Vec<i64>> {
        let rows = sqlx::query("SELECT version FROM schema_migrations ORDER BY version")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.try_get::<i64, _>(0).map_err(StoreError::from))
            .collect()
    }

    /// On PostgreSQL, serialises schema changes of replicas that start at the same moment:
    /// a transaction-scoped advisory lock, released at commit.
    async fn migration_lock(&self, tx: &mut WriteTx) -> Result<()> {
        if self.backend == Backend::Postgres {
            tx.conn()
                .execute("SELECT pg_advisory_xact_lock(7420001)")
                .await?;
        }
        Ok(())
    }

    async fn migrate(&self) -> Result<()> {
        let mut tx = self.begin_write().await?;
        self.migration_lock(&mut tx).await?;
        tx.conn()
            .execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                    version BIGINT PRIMARY KEY, description TEXT NOT NULL, applied_at BIGINT NOT NULL)",
            )
            .await?;
        tx.commit().await?;
        let applied = self.migrations_applied().await?;
        for (version, description, sql) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            let mut tx = self.begin_write().await?;
            self.migration_lock(&mut tx).await?;
            // Another replica may have applied it while this one waited for the lock.
            let done = sqlx::query("SELECT version FROM schema_migrations WHERE version = $1")
                .bind(*version)
                .fetch_optional(tx.conn())
                .await?
                .is_some();
            if done {
                tx.commit().await?;
                continue;
            }
            // Both backends accept several statements in one simple query.
            tx.conn().execute(*sql).await?;
            sqlx::query(
                "INSERT INTO schema_migrations (version, description, applied_at) VALUES ($1, $2, $3)",
            )
            .bind(*version)
            .bind(*description)
            .bind(neocloud_types::Timestamp::now().micros())
            .execute(tx.conn())
            .await?;
            tx.commit().await?;
            tracing::info!(version, description, "applied migration");
        }
        Ok(())
    }

    /// Refreshes the query planner's statistics; run after bulk changes (a fleet import) so
    /// that filtered node lists use the right index.
    pub async fn analyze(&self) -> Result<()> {
        // Only the fleet's tables: statistics of small tables taken now (a handful of keys)
        // would later steer the planner into scanning them once they have grown.
        let sql = match self.backend {
            Backend::Sqlite => "ANALYZE nodes; ANALYZE gpus; ANALYZE blocks; ANALYZE sites",
            Backend::Postgres => "ANALYZE nodes, gpus, blocks, sites",
        };
        (&self.pool).execute(sql).await?;
        Ok(())
    }

    /// Lets the database refresh statistics that went stale as tables grew (SQLite's
    /// `PRAGMA optimize`, cheap when nothing changed; PostgreSQL's autovacuum does it itself).
    pub async fn optimize(&self) -> Result<()> {
        if self.backend == Backend::Sqlite {
            sqlx::query("PRAGMA optimize").execute(&self.pool).await?;
        }
        Ok(())
    }

    /// Runs one statement without parameters inside a transaction (savepoints).
    pub async fn raw_execute(tx: &mut WriteTx, sql: &str) -> Result<()> {
        tx.conn().execute(sql).await?;
        Ok(())
    }

    /// Reads a value from the `meta` table.
    pub async fn meta_get(&self, key: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT value FROM meta WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get::<String, _>(0)?),
            None => None,
        })
    }

    /// Writes a value to the `meta` table.
    pub async fn meta_put(tx: &mut WriteTx, key: &str, value: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(tx.conn())
        .await?;
        Ok(())
    }
}

/// A database URL without its password, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..s + 3], user, &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Whether an error is a violated uniqueness constraint.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            db.is_unique_violation()
                || db.message().contains("UNIQUE constraint failed")
                || db.code().as_deref() == Some("23505")
        }
        _ => false,
    }
}

/// Decodes a column that holds one of the domain's string enums.
pub(crate) fn enum_col<T: std::str::FromStr<Err = String>>(
    row: &sqlx::any::AnyRow,
    col: &str,
) -> Result<T> {
    let s: String = row.try_get(col)?;
    s.parse()
        .map_err(|e: String| StoreError::Corrupt(format!("{col}: {e}")))
}

/// Decodes a column that holds one of the typed ids.
pub(crate) fn id_col<T: std::str::FromStr<Err = neocloud_types::IdParseError>>(
    row: &sqlx::any::AnyRow,
    col: &str,
) -> Result<T> {
    let s: String = row.try_get(col)?;
    s.parse()
        .map_err(|e: neocloud_types::IdParseError| StoreError::Corrupt(e.to_string()))
}

/// Decodes a nullable id column.
pub(crate) fn opt_id_col<T: std::str::FromStr<Err = neocloud_types::IdParseError>>(
    row: &sqlx::any::AnyRow,
    col: &str,
) -> Result<Option<T>> {
    let s: Option<String> = row.try_get(col)?;
    s.map(|s| {
        s.parse()
            .map_err(|e: neocloud_types::IdParseError| StoreError::Corrupt(e.to_string()))
    })
    .transpose()
}

/// Decodes an unsigned 32-bit count stored as BIGINT.
pub(crate) fn u32_col(row: &sqlx::any::AnyRow, col: &str) -> Result<u32> {
    let v: i64 = row.try_get(col)?;
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{col}: {v} out of range")))
}

/// A page of results and the cursor for the next one.
#[derive(Clone, Debug)]
pub struct Page<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// Pass this as `cursor` to get the next page; none when this is the last page.
    pub next_cursor: Option<String>,
}
