//! Control-plane replicas: several `serve` processes on one database, exactly one of which
//! — the holder of the allocator lease — changes allocations.
//!
//! - **The leader** holds the lease (`neocloud_store::Lease`), renews it every tick, runs
//!   the scheduler and health work, and is the only one whose writes the store lets through
//!   (the fence). A leader that finds the lease taken steps down at once; its late writes
//!   are refused by the fence anyway.
//! - **A follower** serves reads from its own copy of the allocator, refreshed from the
//!   database when the lease's write generation moved, and forwards writes to the leader
//!   (the HTTP layer does that). When the lease expires it takes it, with a new epoch,
//!   reloads the allocator and the health monitor from the database, and leads.
//!
//! Failover therefore takes the lease's time to live plus one rebuild. A replica that
//! restarts on the address the lease names takes it back at once: it could bind that
//! address, so the previous holder there is gone.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use neocloud_store::{ALLOCATOR_LEASE, Claim, FenceMode, Lease};
use neocloud_types::Timestamp;

use crate::Service;
use crate::error::Result;

/// How a replica takes part in leadership.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// This process's id (unique per process start).
    pub id: String,
    /// The URL other replicas forward writes to when this one leads.
    pub url: String,
    /// How long the lease lasts unless renewed.
    pub lease_ttl: Duration,
    /// How often a follower may rebuild its copy of the allocator when the database moved.
    pub refresh: Duration,
}

/// What a replica is doing.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ReplicaRole {
    /// Whether this replica holds the allocator lease.
    pub leader: bool,
    /// The leader's URL, when known (this replica's own when it leads).
    pub leader_url: Option<String>,
    /// The lease's epoch as last seen.
    pub epoch: i64,
}

/// A change of role after a tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleChange {
    /// Nothing changed.
    Same,
    /// This replica took the lease and now leads.
    BecameLeader,
    /// This replica lost the lease and now follows.
    SteppedDown,
}

pub(crate) struct ReplicaState {
    config: ReplicaConfig,
    role: ReplicaRole,
    /// The epoch this replica holds the lease with, while it leads.
    held: Option<i64>,
    /// The lease generation the in-memory state was built at.
    built_at_generation: i64,
    last_refresh: Instant,
    /// When the lease was last renewed or taken: a leader that cannot renew (a hung
    /// database call) stops counting as leader before the lease can run out.
    renewed_at: Instant,
    /// How the next tick may claim the lease (the first may claim its own address, or the
    /// whole database when it holds it exclusively).
    claim: Claim,
    /// This process holds the database alone (SQLite's lock file): no other replica can
    /// take the lease, so a late renewal (behind a long write) is no reason to step down.
    exclusive: bool,
}

/// Where a service stands: no replication (tests, tools) or a replica's state.
#[derive(Default)]
pub(crate) struct Replication {
    state: Mutex<Option<ReplicaState>>,
    /// The lease generation seen when the service opened, before its first rebuild.
    pub(crate) opened_at_generation: Mutex<i64>,
}

impl Replication {
    pub(crate) fn new(opened_at_generation: i64) -> Self {
        Replication {
            state: Mutex::new(None),
            opened_at_generation: Mutex::new(opened_at_generation),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Option<ReplicaState>) -> T) -> T {
        let mut g = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut g)
    }
}

impl Service {
    /// Turns on leadership: until this replica holds the lease its writes are refused and
    /// it follows. Takes the lease at once when it is free.
    ///
    /// `exclusive` says this process holds the database alone (SQLite's lock file), so it
    /// may take the lease whatever it says.
    pub async fn enable_replication(
        &self,
        config: ReplicaConfig,
        exclusive: bool,
    ) -> Result<RoleChange> {
        let built = *self
            .replication
            .opened_at_generation
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.store.set_fence(FenceMode::Follower);
        self.replication.with(|s| {
            *s = Some(ReplicaState {
                config,
                role: ReplicaRole {
                    leader: false,
                    leader_url: None,
                    epoch: 0,
                },
                held: None,
                built_at_generation: built,
                last_refresh: Instant::now(),
                renewed_at: Instant::now(),
                claim: if exclusive {
                    Claim::Exclusive
                } else {
                    Claim::OwnAddress
                },
                exclusive,
            });
        });
        let r = self.leadership_tick(self.now()).await;
        self.replication.with(|s| {
            if let Some(s) = s {
                s.claim = Claim::IfExpired;
            }
        });
        r
    }

    /// Whether this replica may change allocations now: always without replication.
    pub fn is_leader(&self) -> bool {
        self.replication.with(|s| {
            s.as_ref().is_none_or(|s| {
                s.role.leader
                    && (s.exclusive || s.renewed_at.elapsed() < s.config.lease_ttl * 3 / 4)
            })
        })
    }

    /// Whether leadership is on.
    pub fn replicated(&self) -> bool {
        self.replication.with(|s| s.is_some())
    }

    /// This replica's role; `None` without replication.
    pub fn role(&self) -> Option<ReplicaRole> {
        self.replication
            .with(|s| s.as_ref().map(|s| s.role.clone()))
    }

    /// This replica's id; `None` without replication.
    pub fn replica_id(&self) -> Option<String> {
        self.replication
            .with(|s| s.as_ref().map(|s| s.config.id.clone()))
    }

    /// Renews or takes the lease, and follows the change: a new leader reloads the
    /// allocator and the health monitor from the database before it accepts writes; a
    /// deposed one stops writing at once; a follower refreshes its copy when the database
    /// moved. Call it about once a second.
    pub async fn leadership_tick(&self, now: Timestamp) -> Result<RoleChange> {
        let Some((config, held, claim, exclusive)) = self.replication.with(|s| {
            s.as_ref()
                .map(|s| (s.config.clone(), s.held, s.claim, s.exclusive))
        }) else {
            return Ok(RoleChange::Same);
        };
        let lease = match self.lease_call(&config, held, claim, now).await {
            Ok(l) => l,
            Err(e) => {
                // The database is unreachable or slow: a leader that cannot renew must
                // assume the lease will be lost and stop writing before it expires.
                if held.is_some() && !exclusive {
                    self.step_down("cannot renew the lease");
                }
                return Err(e);
            }
        };
        let mine = lease.holder == config.id;
        if mine && held == Some(lease.epoch) {
            self.replication.with(|s| {
                if let Some(s) = s {
                    s.role.leader_url = Some(config.url.clone());
                    s.renewed_at = Instant::now();
                }
            });
            return Ok(RoleChange::Same);
        }
        if mine {
            if let Err(e) = self.take_over(&lease, &config, now).await {
                // Do not sit on a lease this replica cannot use.
                self.step_down("could not take over");
                let _ = self
                    .store
                    .lease_release(ALLOCATOR_LEASE, &config.id, lease.epoch)
                    .await;
                return Err(e);
            }
            return Ok(RoleChange::BecameLeader);
        }
        let was_leader = held.is_some();
        if was_leader {
            self.step_down("another replica holds the lease");
        }
        let live = !lease.holder.is_empty() && lease.expires_at > now.micros();
        let refresh_due = self.replication.with(|s| {
            s.as_mut().is_some_and(|s| {
                s.role.leader_url = live.then(|| lease.holder_url.clone());
                s.role.epoch = lease.epoch;
                s.built_at_generation != lease.generation
                    && s.last_refresh.elapsed() >= s.config.refresh
            })
        });
        if refresh_due {
            self.rebuild_in_memory().await?;
            self.replication.with(|s| {
                if let Some(s) = s {
                    s.built_at_generation = lease.generation;
                    s.last_refresh = Instant::now();
                }
            });
        }
        Ok(if was_leader {
            RoleChange::SteppedDown
        } else {
            RoleChange::Same
        })
    }

    /// One lease call, bounded in time (half the lease's life).
    async fn lease_call(
        &self,
        config: &ReplicaConfig,
        held: Option<i64>,
        claim: Claim,
        now: Timestamp,
    ) -> Result<Lease> {
        let ttl = i64::try_from(config.lease_ttl.as_micros()).unwrap_or(i64::MAX);
        let call = self.store.lease_acquire(
            ALLOCATOR_LEASE,
            &config.id,
            &config.url,
            held,
            claim,
            now.micros(),
            ttl,
        );
        match tokio::time::timeout(config.lease_ttl / 2, call).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(crate::Error::new(
                crate::ErrorCode::Unavailable,
                "the database did not answer the lease renewal in time",
            )),
        }
    }

    /// Becomes the leader with the lease just taken.
    async fn take_over(&self, lease: &Lease, config: &ReplicaConfig, now: Timestamp) -> Result<()> {
        let (id, built) = self
            .replication
            .with(|s| {
                s.as_ref()
                    .map(|s| (s.config.id.clone(), s.built_at_generation))
            })
            .unwrap_or_default();
        // Nothing may be decided on a stale allocator: reload unless nothing was written
        // since it was built.
        if built != lease.generation {
            self.rebuild_in_memory().await?;
        }
        let fresh = {
            let config = crate::scheduler::lock(&self.sched).config().clone();
            crate::health::Monitor::load(&self.store, &config, self.now()).await?
        };
        // The reload may have taken a while: renew, and lead only if the lease is still
        // ours with the same epoch.
        let renewed = self
            .lease_call(config, Some(lease.epoch), Claim::IfExpired, now)
            .await?;
        if renewed.holder != id || renewed.epoch != lease.epoch {
            return Err(crate::Error::new(
                crate::ErrorCode::Unavailable,
                "the lease moved on while this replica reloaded",
            ));
        }
        self.health.replace_with(fresh);
        self.store.set_fence(FenceMode::Leader {
            holder: id,
            epoch: lease.epoch,
        });
        self.replication.with(|s| {
            if let Some(s) = s {
                s.held = Some(lease.epoch);
                s.renewed_at = Instant::now();
                s.built_at_generation = lease.generation;
                s.role = ReplicaRole {
                    leader: true,
                    leader_url: Some(s.config.url.clone()),
                    epoch: lease.epoch,
                };
            }
        });
        tracing::info!(epoch = lease.epoch, "this replica now leads the allocator");
        Ok(())
    }

    /// Stops writing at once.
    fn step_down(&self, why: &str) {
        self.store.set_fence(FenceMode::Follower);
        self.replication.with(|s| {
            if let Some(s) = s {
                s.held = None;
                s.role.leader = false;
                s.role.leader_url = None;
            }
        });
        tracing::warn!(reason = why, "this replica stepped down as leader");
    }

    /// Gives the lease up (clean shutdown), so a follower takes over without waiting.
    pub async fn resign(&self) -> Result<()> {
        let held = self.replication.with(|s| {
            s.as_ref()
                .and_then(|s| s.held.map(|e| (s.config.id.clone(), e)))
        });
        if let Some((id, epoch)) = held {
            self.step_down("shutting down");
            self.store
                .lease_release(ALLOCATOR_LEASE, &id, epoch)
                .await?;
        }
        Ok(())
    }

    /// Rebuilds the allocator, the queue and the calendar from the database.
    async fn rebuild_in_memory(&self) -> Result<()> {
        self.rebuild_scheduler().await
    }
}
