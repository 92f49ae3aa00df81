//! The allocator lease: which control-plane replica may change the fleet's allocations, and
//! the fence that rejects the writes of a replica that lost it.
//!
//! One row in `leases` names the holder, its URL, an `epoch` that grows with every change of
//! holder, and when the lease expires unless renewed. A replica becomes the holder only when
//! the lease has expired (or was never held), with a new epoch.
//!
//! **Fencing.** In replica mode every write transaction ends by touching the lease row with
//! the epoch it believes it holds (`UPDATE … WHERE holder = me AND epoch = mine`), then
//! commits. That statement fails when another replica took the lease meanwhile, and the
//! transaction rolls back: nothing it did is kept. It row-locks the lease from there to the
//! commit, so a takeover cannot slip in between: a write commits only while its writer holds
//! the lease. Checking at the end rather than the start keeps the row free during long
//! writes (a fleet import), so the holder can renew meanwhile. The same statement counts the
//! transaction in `generation`, which tells the other replicas their copy is stale.

use std::sync::Arc;

use sqlx::{Executor, Row};

use crate::{Result, Store, StoreError, WriteTx};

/// The lease that guards the allocator.
pub const ALLOCATOR_LEASE: &str = "allocator";

/// When a replica may take the lease from its holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Only once it has expired (or was never held): every tick after the first.
    IfExpired,
    /// Also when it names this replica's own address. Only right after binding that
    /// address: the process that took the lease there is gone.
    OwnAddress,
    /// Always: this process holds the database exclusively (SQLite's lock file).
    Exclusive,
}

/// The lease row as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Replica holding it (empty when never held).
    pub holder: String,
    /// The URL other replicas forward writes to.
    pub holder_url: String,
    /// Grows with every change of holder.
    pub epoch: i64,
    /// When it runs out unless renewed, microseconds since the epoch.
    pub expires_at: i64,
    /// Write transactions the holders committed, in total.
    pub generation: i64,
}

/// Which writes the store lets through.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum FenceMode {
    /// Single process without leadership (tests, tools): every write goes through.
    #[default]
    Off,
    /// A replica that does not hold the lease: writes are refused.
    Follower,
    /// The lease holder: writes go through while the lease row still names it with this
    /// epoch.
    Leader {
        /// This replica's id.
        holder: String,
        /// The epoch it took the lease with.
        epoch: i64,
    },
}

pub(crate) type FenceCell = Arc<std::sync::RwLock<FenceMode>>;

/// Checks the fence as the last statement of a write transaction, just before it commits.
pub(crate) async fn fence_check(tx: &mut WriteTx, mode: &FenceMode) -> Result<()> {
    match mode {
        FenceMode::Off => Ok(()),
        FenceMode::Follower => Err(StoreError::NotLeader),
        FenceMode::Leader { holder, epoch } => {
            let step = i64::from(tx.moves_generation);
            let r = sqlx::query(
                "UPDATE leases SET generation = generation + $4
                 WHERE name = $1 AND holder = $2 AND epoch = $3",
            )
            .bind(ALLOCATOR_LEASE)
            .bind(holder)
            .bind(epoch)
            .bind(step)
            .execute(tx.conn())
            .await?;
            if r.rows_affected() == 1 {
                Ok(())
            } else {
                Err(StoreError::NotLeader)
            }
        }
    }
}

impl Store {
    /// Sets which writes this store lets through (see [`FenceMode`]).
    pub fn set_fence(&self, mode: FenceMode) {
        if let Ok(mut f) = self.fence.write() {
            *f = mode;
        }
    }

    /// The current fence mode.
    pub fn fence(&self) -> FenceMode {
        self.fence.read().map(|f| f.clone()).unwrap_or_default()
    }

    /// Reads a lease.
    pub async fn lease_get(&self, name: &str) -> Result<Lease> {
        let row = sqlx::query(
            "SELECT holder, holder_url, epoch, expires_at, generation FROM leases WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            kind: "lease",
            id: name.to_string(),
        })?;
        Ok(Lease {
            holder: row.try_get("holder")?,
            holder_url: row.try_get("holder_url")?,
            epoch: row.try_get("epoch")?,
            expires_at: row.try_get("expires_at")?,
            generation: row.try_get("generation")?,
        })
    }

    /// Renews the lease when `holder` holds it with `epoch`, or takes it with a new epoch
    /// when `claim` allows (see [`Claim`]). Returns the lease as it stands afterwards (held
    /// by someone else when neither happened). Not fenced: any replica may ask.
    #[allow(clippy::too_many_arguments)]
    pub async fn lease_acquire(
        &self,
        name: &str,
        holder: &str,
        url: &str,
        held_epoch: Option<i64>,
        claim: Claim,
        now_micros: i64,
        ttl_micros: i64,
    ) -> Result<Lease> {
        let mut tx = self.begin_lease_tx().await?;
        // Lock the row first (waiting for an in-flight write of the holder), and only then
        // read the clock: a wait behind a long write must not make the lease look expired.
        if self.backend == crate::Backend::Postgres {
            tx.conn().execute("SET LOCAL lock_timeout = '3s'").await?;
        }
        sqlx::query("UPDATE leases SET epoch = epoch WHERE name = $1")
            .bind(name)
            .execute(tx.conn())
            .await?;
        let now_micros = now_micros.max(neocloud_types::Timestamp::now().micros());
        let until = now_micros.saturating_add(ttl_micros);
        let renewed = match held_epoch {
            Some(epoch) => {
                sqlx::query(
                    "UPDATE leases SET expires_at = $1, holder_url = $2
                     WHERE name = $3 AND holder = $4 AND epoch = $5",
                )
                .bind(until)
                .bind(url)
                .bind(name)
                .bind(holder)
                .bind(epoch)
                .execute(tx.conn())
                .await?
                .rows_affected()
                    == 1
            }
            None => false,
        };
        if !renewed {
            let condition = match claim {
                Claim::IfExpired => "(expires_at < $5 OR holder = '')",
                Claim::OwnAddress => "(expires_at < $5 OR holder = '' OR holder_url = $2)",
                Claim::Exclusive => "(1 = 1)",
            };
            sqlx::query(&format!(
                "UPDATE leases SET holder = $1, holder_url = $2, epoch = epoch + 1,
                        expires_at = $3
                 WHERE name = $4 AND {condition}"
            ))
            .bind(holder)
            .bind(url)
            .bind(until)
            .bind(name)
            .bind(now_micros)
            .execute(tx.conn())
            .await?;
        }
        tx.commit().await?;
        self.lease_get(name).await
    }

    /// Gives the lease up at once (a clean shutdown), so another replica need not wait for
    /// it to expire.
    pub async fn lease_release(&self, name: &str, holder: &str, epoch: i64) -> Result<()> {
        let mut tx = self.begin_lease_tx().await?;
        tx.conn()
            .execute(
                sqlx::query(
                    "UPDATE leases SET expires_at = 0, holder = '', holder_url = ''
                     WHERE name = $1 AND holder = $2 AND epoch = $3",
                )
                .bind(name)
                .bind(holder)
                .bind(epoch),
            )
            .await?;
        tx.commit().await
    }
}
