//! Contracts: honest quotes from the capacity calendar, atomic signing, reserved pools of
//! whole nodes pinned at the start, release at the end or on cancellation.

use neocloud_allocator::PlacementPolicy;
use neocloud_allocator::calendar::CapacityKey;
use neocloud_store::{NewEvent, Page, Store, contract_value};
use neocloud_types::{
    Class, Contract, ContractId, ContractState, GangLevel, Money, Site, TenantId, Timestamp,
};

use crate::auth::{self, Action, Principal};
use crate::error::OrNotFound;
use crate::error::{Error, ErrorCode, Result};
use crate::scheduler;
use crate::{
    ContractTerms, Created, IdemStart, Idempotency, MAX_CONTRACT_VALUE, MAX_CONTRACT_YEARS,
    MAX_GPUS, Quote, START_SKEW_SECONDS, Service, page_limit,
};
use neocloud_scheduler::{Command, Scheduler};

const HOUR_US: i64 = 3_600_000_000;

/// A contract's or quote's window: ends after its start and in the future, starts no earlier
/// than clock skew allows, and runs at most [`MAX_CONTRACT_YEARS`] calendar years.
fn check_window(start: Timestamp, end: Timestamp, now: Timestamp) -> Result<()> {
    if end <= start {
        return Err(Error::invalid(format!(
            "end_at ({end}) must be after start_at ({start}), counted in whole seconds"
        )));
    }
    if end <= now {
        return Err(Error::invalid(format!(
            "end_at ({end}) is not in the future: a contract or quote window must end after now ({now})"
        )));
    }
    if start < now.plus_seconds(-START_SKEW_SECONDS) {
        return Err(Error::invalid(format!(
            "start_at ({start}) is in the past: a contract or quote starts now or later (up to {} minutes early is accepted as clock skew)",
            START_SKEW_SECONDS / 60
        )));
    }
    check_term_length(start, end)
}

fn check_term_length(start: Timestamp, end: Timestamp) -> Result<()> {
    let latest = start
        .plus_months(12 * MAX_CONTRACT_YEARS)
        .ok_or_else(|| Error::invalid(format!("start_at ({start}) is too far in the future")))?;
    if end > latest {
        return Err(Error::invalid(format!(
            "a contract runs at most {MAX_CONTRACT_YEARS} years: end_at must be at most {latest}"
        )));
    }
    Ok(())
}

/// A contract's value may not exceed [`MAX_CONTRACT_VALUE`].
fn check_value(v: Money) -> Result<()> {
    if v > MAX_CONTRACT_VALUE {
        return Err(Error::invalid(format!(
            "total_value must be at most {MAX_CONTRACT_VALUE} US dollars for one contract (these terms are worth more); ask for fewer GPUs or a shorter term"
        )));
    }
    Ok(())
}

fn parse_sla(s: Option<&str>) -> Result<i64> {
    let s = s.unwrap_or("99.5");
    let m: Money = s
        .parse()
        .map_err(|_| Error::invalid(format!("sla_percent '{s}' is not a number")))?;
    // Percent with up to three decimals, as thousandths.
    let milli = m.micros() / 1000;
    if m.micros() % 1000 != 0 || !(90_000..=100_000).contains(&milli) {
        return Err(Error::invalid(
            "sla_percent must be between 90 and 100 with at most 3 decimals",
        ));
    }
    Ok(milli)
}

struct Checked {
    tenant: Option<TenantId>,
    sites: Vec<Site>,
    node_size: u32,
    start: Timestamp,
    end: Timestamp,
}

impl Service {
    async fn check_terms(
        &self,
        p: &Principal,
        t: &ContractTerms,
        now: Timestamp,
    ) -> Result<Checked> {
        let tenant = match (&t.tenant_id, p.tenant_scope()) {
            (Some(id), _) => Some(self.visible_tenant(p, id).await?.id),
            (None, own) => own,
        };
        self.store
            .gpu_model_get(&t.gpu_model)
            .await
            .or_not_found(|| Error::invalid(format!("unknown GPU model '{}'", t.gpu_model)))?;
        let Some(node_size) = self.store.gpu_model_node_size(&t.gpu_model).await? else {
            return Err(Error::invalid(format!(
                "no node has GPU model '{}'",
                t.gpu_model
            )));
        };
        if t.gpu_count > MAX_GPUS {
            return Err(Error::invalid(format!(
                "gpu_count must be at most {MAX_GPUS} (got {})",
                t.gpu_count
            )));
        }
        if t.gpu_count == 0 || !t.gpu_count.is_multiple_of(node_size) {
            return Err(Error::invalid(format!(
                "gpu_count must be a positive multiple of {node_size} ({} nodes have {node_size} GPUs; reserved pools are whole nodes)",
                t.gpu_model
            )));
        }
        // Windows are whole seconds, kept as asked: a term of N years ends on its date.
        let start = t.start_at.floor_to_second();
        let end = t.end_at.floor_to_second();
        check_window(start, end, now)?;
        let sites = match &t.site {
            Some(s) => vec![self.store.site_get(s).await?],
            None => self.store.site_list().await?,
        };
        let sites: Vec<Site> = sites
            .into_iter()
            .filter(|s| s.gpus_by_model.iter().any(|m| m.gpu_model == t.gpu_model))
            .collect();
        if sites.is_empty() {
            return Err(Error::invalid(format!(
                "no site{} has GPU model '{}'",
                t.site
                    .as_ref()
                    .map(|s| format!(" named '{s}'"))
                    .unwrap_or_default(),
                t.gpu_model
            )));
        }
        Ok(Checked {
            tenant,
            sites,
            node_size,
            start,
            end,
        })
    }

    fn sellable(sched: &Scheduler, site: &Site, model: &str) -> i64 {
        scheduler::sellable(sched.config(), site, model)
    }

    fn quote_in(
        sched: &Scheduler,
        book: &neocloud_billing::prices::PriceBook,
        t: &ContractTerms,
        c: &Checked,
    ) -> Result<Quote> {
        let duration = c.end.micros() - c.start.micros();
        let gpus = i64::from(t.gpu_count);
        let mut best: Option<Quote> = None;
        let mut rate = Money::ZERO;
        for site in &c.sites {
            // The term is what was asked for, even when "now" moved the start by a moment;
            // the price is the book's for that term, in force at the start.
            rate = book
                .reserved_price(&t.gpu_model, site.id, t.start_at, t.end_at)
                .ok_or_else(|| {
                    let kind = neocloud_billing::prices::PriceBook::reserved_kind(
                        t.end_at.micros() - t.start_at.micros(),
                    );
                    Error::invalid(format!(
                        "the price book has no {} price for {} at {}; add one with POST /v1/prices",
                        kind.as_str(),
                        t.gpu_model,
                        site.name
                    ))
                })?;
            let key = CapacityKey::new(site.id, &t.gpu_model);
            let cap = Self::sellable(sched, site, &t.gpu_model);
            let fits = sched
                .calendar()
                .fits(&key, c.start.micros(), c.end.micros(), gpus, cap);
            let max = sched
                .calendar()
                .max_count(&key, c.start.micros(), c.end.micros(), cap)
                .max(0);
            let max = max - max % i64::from(c.node_size);
            let earliest = sched
                .calendar()
                .earliest_start(&key, c.start.micros(), duration, gpus, cap)
                .map(Timestamp::from_micros);
            let q = Quote {
                fits,
                site_id: Some(site.id),
                site: Some(site.name.clone()),
                gpu_model: t.gpu_model.clone(),
                gpu_count: t.gpu_count,
                start_at: c.start,
                end_at: c.end,
                earliest_start: earliest,
                max_gpus_in_window: u32::try_from(max).unwrap_or(u32::MAX),
                sellable_gpus: u32::try_from(cap.max(0)).unwrap_or(u32::MAX),
                price_per_gpu_hour: rate,
                total_value: contract_value(t.gpu_count, c.start, c.end, rate),
                reason: (!fits).then(|| {
                    format!(
                        "{} has {cap} sellable {} GPUs; at most {max} are free on the calendar for the whole window{}",
                        site.name,
                        t.gpu_model,
                        earliest.map(|e| format!("; the earliest start for {} GPUs is {e}", t.gpu_count)).unwrap_or_else(|| "; they never fit".into())
                    )
                }),
            };
            if q.fits {
                return Ok(q);
            }
            let better = match &best {
                None => true,
                Some(b) => match (q.earliest_start, b.earliest_start) {
                    (Some(a), Some(b)) => a < b,
                    (Some(_), None) => true,
                    _ => false,
                },
            };
            if better {
                best = Some(q);
            }
        }
        Ok(best.unwrap_or_else(|| Quote {
            fits: false,
            site_id: None,
            site: None,
            gpu_model: t.gpu_model.clone(),
            gpu_count: t.gpu_count,
            start_at: c.start,
            end_at: c.end,
            earliest_start: None,
            max_gpus_in_window: 0,
            sellable_gpus: 0,
            price_per_gpu_hour: rate,
            total_value: Money::ZERO,
            reason: Some("no site has this model".into()),
        }))
    }

    /// Answers whether reserved capacity fits, the earliest start at which it would, the
    /// largest count that fits in the window, and the price.
    pub async fn quote(&self, p: &Principal, t: ContractTerms) -> Result<Quote> {
        auth::authorize(p, Action::ReadContracts)?;
        let c = self.check_terms(p, &t, self.now()).await?;
        let book = self.price_book().await?;
        let sched = scheduler::lock(&self.sched);
        let q = Self::quote_in(&sched, &book, &t, &c)?;
        check_value(q.total_value)?;
        Ok(q)
    }

    /// Signs a contract: re-checks the calendar under the scheduler's lock and commits the
    /// promise atomically, so two signs racing for the last capacity cannot both win.
    /// With an Idempotency-Key, the contract and the key's record commit together: a retry
    /// (even after a crash between commit and answer) replays, never signs twice.
    pub async fn contract_sign(
        &self,
        p: &Principal,
        t: ContractTerms,
        idem: Option<&Idempotency>,
    ) -> Result<Created<Contract>> {
        auth::authorize(p, Action::WriteContracts)?;
        if let Some(c) = self.idem_replay(p, idem).await? {
            return Ok(c);
        }
        // A suspended tenant signs nothing (403, before the terms are looked at).
        match (&t.tenant_id, p.tenant_scope()) {
            (Some(id), _) => {
                self.refuse_suspended(self.visible_tenant(p, id).await?.id)
                    .await?
            }
            (None, Some(own)) => self.refuse_suspended(own).await?,
            (None, None) => {}
        }
        let now = self.now();
        let sla = parse_sla(t.sla_percent.as_deref())?;
        let c = self.check_terms(p, &t, now).await?;
        let Some(tenant) = c.tenant else {
            return Err(Error::invalid("tenant_id is required to sign a contract"));
        };
        if let Some(level) = t.single_block {
            self.check_single_block(&c, &t, level).await?;
        }
        let book = self.price_book().await?;
        let q = Self::quote_in(&scheduler::lock(&self.sched), &book, &t, &c)?;
        check_value(q.total_value)?;
        let (true, Some(site_id)) = (q.fits, q.site_id) else {
            return Err(Error::new(
                ErrorCode::InsufficientCapacity,
                q.reason.unwrap_or_else(|| "does not fit".into()),
            ));
        };
        let contract = Contract {
            id: ContractId::new(),
            tenant_id: tenant,
            gpu_model: t.gpu_model.clone(),
            gpu_count: t.gpu_count,
            site_id,
            single_block: t.single_block,
            start_at: c.start,
            end_at: c.end,
            price_per_gpu_hour: q.price_per_gpu_hour,
            sla_percent: t.sla_percent.clone().unwrap_or_else(|| "99.5".into()),
            state: ContractState::Signed,
            total_value: q.total_value,
            created_at: now,
            updated_at: now,
        };
        // The scheduler checks the calendar again as it commits the promise, so two signs
        // racing for the last capacity cannot both win; the contract's row is written with
        // the decision (and before any pool pin of it).
        let _claim = match self.idem_start(p, idem).await? {
            IdemStart::Replay(c) => return Ok(c),
            IdemStart::Decide(claim) => claim,
        };
        let row = contract.clone();
        let actor = p.key_id;
        let put = Self::idem_put(p, idem, 201, &contract)?;
        self.decide(
            Command::Sign(contract.clone()),
            now,
            Some(actor),
            move |_, _| {
                Ok(Some(crate::writer::extra(move |_, tx| {
                    Box::pin(async move {
                        Store::contract_insert(tx, &row, sla).await?;
                        Store::event_insert(
                            tx,
                            NewEvent {
                                actor: Some(actor),
                                tenant_id: Some(row.tenant_id),
                                action: "contract.signed",
                                resource_kind: "contract",
                                resource_id: row.id.to_string(),
                                before: None,
                                after: serde_json::to_value(&row).ok(),
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
        let signed = self.store.contract_get(contract.id).await?;
        self.idem_settle(p, idem, 201, &signed).await;
        Ok(Created {
            value: signed,
            replayed: false,
        })
    }

    /// Amends a signed or active contract: more GPUs and/or a later end, checked against the
    /// calendar the same way a new contract is (its own promise counts once). The rate
    /// stays; the value grows with the GPU-hours.
    pub async fn contract_amend(
        &self,
        p: &Principal,
        id: &str,
        req: crate::AmendContract,
    ) -> Result<Contract> {
        auth::authorize(p, Action::WriteContracts)?;
        let c = self.visible_contract(p, id).await?;
        if !matches!(c.state, ContractState::Signed | ContractState::Active) {
            return Err(Error::new(
                ErrorCode::Conflict,
                format!("contract {} is {}", c.id, c.state),
            ));
        }
        let count = req.gpu_count.unwrap_or(c.gpu_count);
        let end = req.end_at.map_or(c.end_at, Timestamp::floor_to_second);
        if count > MAX_GPUS {
            return Err(Error::invalid(format!(
                "gpu_count must be at most {MAX_GPUS} (got {count})"
            )));
        }
        if req.gpu_count.is_none() && req.end_at.is_none() {
            return Err(Error::invalid(
                "nothing to amend: give gpu_count, end_at or both",
            ));
        }
        if count < c.gpu_count {
            return Err(Error::invalid(format!(
                "gpu_count can only grow (the contract has {}); cancel and sign anew to shrink",
                c.gpu_count
            )));
        }
        if end < c.end_at {
            return Err(Error::invalid(format!(
                "end_at can only move later (the contract ends {})",
                c.end_at
            )));
        }
        check_term_length(c.start_at, end)?;
        check_value(contract_value(count, c.start_at, end, c.price_per_gpu_hour))?;
        let actor = p.key_id;
        let before = c.clone();
        self.decide(
            Command::Amend {
                id: c.id,
                gpu_count: count,
                end_at: end,
            },
            self.now(),
            Some(actor),
            move |_, _| {
                Ok(Some(crate::writer::extra(move |_, tx| {
                    Box::pin(async move {
                        Store::contract_update_terms(tx, before.id, count, end).await?;
                        Store::event_insert(
                            tx,
                            NewEvent {
                                actor: Some(actor),
                                tenant_id: Some(before.tenant_id),
                                action: "contract.amended",
                                resource_kind: "contract",
                                resource_id: before.id.to_string(),
                                before: serde_json::to_value(&before).ok(),
                                after: Some(serde_json::json!({"gpu_count": count, "end_at": end})),
                            },
                        )
                        .await?;
                        Ok(())
                    })
                })))
            },
        )
        .await?;
        Ok(self.store.contract_get(c.id).await?)
    }

    async fn check_single_block(
        &self,
        c: &Checked,
        t: &ContractTerms,
        level: GangLevel,
    ) -> Result<()> {
        if level == GangLevel::Site {
            return Ok(());
        }
        let nodes_needed = t.gpu_count / c.node_size;
        let mut largest = 0;
        for site in &c.sites {
            for b in self.store.block_list(Some(site)).await? {
                if b.kind.as_str() == level.as_str() {
                    largest = largest.max(b.node_count);
                }
            }
        }
        if i64::from(nodes_needed) > largest {
            return Err(Error::new(
                ErrorCode::InsufficientCapacity,
                format!(
                    "no single {level} holds {nodes_needed} nodes; the largest holds {largest}"
                ),
            ));
        }
        Ok(())
    }

    async fn visible_contract(&self, p: &Principal, id: &str) -> Result<Contract> {
        let not_found = || Error::not_found("contract", id);
        let cid: ContractId = id.parse().map_err(|_| not_found())?;
        let c = self.store.contract_get(cid).await.or_not_found(not_found)?;
        match p.tenant_scope() {
            Some(own) if own != c.tenant_id => Err(not_found()),
            _ => Ok(c),
        }
    }

    /// Reads a contract.
    pub async fn contract_get(&self, p: &Principal, id: &str) -> Result<Contract> {
        auth::authorize(p, Action::ReadContracts)?;
        self.visible_contract(p, id).await
    }

    /// Lists contracts, newest first.
    pub async fn contract_list(
        &self,
        p: &Principal,
        tenant: Option<&str>,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<Contract>> {
        auth::authorize(p, Action::ReadContracts)?;
        let limit = page_limit(limit)?;
        let t = self.scoped_tenant(p, tenant).await?;
        Ok(self.store.contract_list(t, cursor, limit).await?)
    }

    /// Cancels a contract: its promise leaves the calendar, its pool is unpinned and its
    /// reserved instances are terminated.
    pub async fn contract_cancel(&self, p: &Principal, id: &str) -> Result<Contract> {
        auth::authorize(p, Action::WriteContracts)?;
        let c = self.visible_contract(p, id).await?;
        if matches!(c.state, ContractState::Ended | ContractState::Cancelled) {
            return Ok(c);
        }
        match self
            .decide(
                Command::Cancel { id: c.id },
                self.now(),
                Some(p.key_id),
                |_, _| Ok(None),
            )
            .await
        {
            Ok(_) => {}
            // Ended meanwhile: it reads as it ended.
            Err(e) if e.code == ErrorCode::Conflict => {}
            Err(e) => return Err(e),
        }
        Ok(self.store.contract_get(c.id).await?)
    }
}

/// The placement policy in use (for the capacity report).
pub(crate) fn policy_name(p: PlacementPolicy) -> &'static str {
    match p {
        PlacementPolicy::BestFit => "best-fit",
        PlacementPolicy::FirstFit => "first-fit",
        PlacementPolicy::WorstFit => "worst-fit",
        PlacementPolicy::Fragmentation => "fragmentation",
    }
}

/// GPUs of one class.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ClassCount {
    /// Class.
    pub class: Class,
    /// GPUs allocated to running, terminating or preempting instances of it.
    pub gpus: u64,
}

/// Largest gang that fits now at a level.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct GangRoom {
    /// Level.
    pub level: GangLevel,
    /// Most free whole nodes inside one block of that level.
    pub nodes: u32,
}

/// Committed GPUs from a time on.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Committed {
    /// From this time.
    pub at: Timestamp,
    /// GPUs promised by signed and active contracts.
    pub gpus: i64,
}

/// Capacity of one GPU model in one site: now, and committed over time.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct CapacityLine {
    /// Site id.
    pub site_id: neocloud_types::SiteId,
    /// Site name.
    pub site: String,
    /// GPU model.
    pub gpu_model: String,
    /// GPUs of the model in the site.
    pub total_gpus: i64,
    /// GPUs never sold by contracts (the spare buffer).
    pub spare_buffer_gpus: i64,
    /// Whole nodes of the buffer pinned as spares now, a share in each leaf group (pod,
    /// where there are no leaf groups), so that a failed node is replaced near it. Spot
    /// work may borrow them; nothing else is placed on them.
    pub spare_nodes: u32,
    /// Spare nodes the spread keeps when none is taken: as many whole nodes as the buffer
    /// fills. A block whose spare replaced a failed node gets one back as its nodes free up.
    pub spare_nodes_wanted: u32,
    /// GPUs contracts may promise: total minus the spare buffer.
    pub sellable_gpus: i64,
    /// GPUs promised by contracts now.
    pub committed_gpus_now: i64,
    /// Committed GPUs over the horizon asked for (a step function).
    pub committed: Vec<Committed>,
    /// GPUs allocated now, by class.
    pub allocated: Vec<ClassCount>,
    /// Healthy, schedulable, unallocated GPUs now.
    pub free_gpus: u64,
    /// Free GPUs on partly used nodes (they cannot host a whole-node shape).
    pub stranded_free_gpus: u64,
    /// stranded_free_gpus / free_gpus.
    pub stranded_share: f64,
    /// Largest gang placeable now, per level.
    pub largest_gang: Vec<GangRoom>,
    /// Facility power allocated in the site now, watts (all models).
    pub site_power_watts: i64,
    /// The site's power limit, watts.
    pub site_power_limit_watts: i64,
    /// Placement policy in use.
    pub placement_policy: String,
}

impl Service {
    /// Capacity per site and GPU model: sellable vs committed over time, allocation by class,
    /// fragmentation and power.
    pub async fn capacity(
        &self,
        p: &Principal,
        site: Option<&str>,
        model: Option<&str>,
        horizon_days: Option<u32>,
    ) -> Result<Vec<CapacityLine>> {
        auth::authorize(p, Action::ReadCapacity)?;
        self.capacity_lines(site, model, horizon_days).await
    }

    /// [`Service::capacity`] without the caller's check (`/metrics`).
    pub(crate) async fn capacity_lines(
        &self,
        site: Option<&str>,
        model: Option<&str>,
        horizon_days: Option<u32>,
    ) -> Result<Vec<CapacityLine>> {
        let horizon = i64::from(horizon_days.unwrap_or(3 * 365).min(20 * 365));
        let sites = self.sites(site).await?;
        let now = self.now();
        let sched = scheduler::lock(&self.sched);
        let mut out = Vec::new();
        for s in &sites {
            for m in &s.gpus_by_model {
                if model.is_some_and(|x| x != m.gpu_model) {
                    continue;
                }
                let key = CapacityKey::new(s.id, &m.gpu_model);
                let sellable = Self::sellable(&sched, s, &m.gpu_model);
                let to = now.micros().saturating_add(horizon * 24 * HOUR_US);
                let series = sched.calendar().series(&key, now.micros(), to);
                let frag = sched.alloc().fragmentation(s.id, &m.gpu_model);
                let mut by_class: std::collections::BTreeMap<Class, u64> = Default::default();
                for a in sched.alloc().allocations() {
                    if a.site == s.id && a.gpu_model == m.gpu_model {
                        *by_class.entry(a.class).or_default() += a.gpu_count();
                    }
                }
                let power = sched.alloc().site_power(s.id);
                let (spare_nodes, spare_nodes_wanted) =
                    sched.alloc().spare_count(s.id, &m.gpu_model);
                out.push(CapacityLine {
                    site_id: s.id,
                    site: s.name.clone(),
                    gpu_model: m.gpu_model.clone(),
                    total_gpus: m.gpus,
                    spare_buffer_gpus: m.gpus - sellable,
                    spare_nodes,
                    spare_nodes_wanted,
                    sellable_gpus: sellable,
                    committed_gpus_now: series.first().map(|x| x.1).unwrap_or(0),
                    committed: series
                        .iter()
                        .map(|(t, g)| Committed {
                            at: Timestamp::from_micros(*t),
                            gpus: *g,
                        })
                        .collect(),
                    allocated: by_class
                        .into_iter()
                        .map(|(class, gpus)| ClassCount { class, gpus })
                        .collect(),
                    free_gpus: frag.free_gpus,
                    stranded_free_gpus: frag.free_gpus_not_in_full_free_node,
                    stranded_share: frag.stranded_share,
                    largest_gang: frag
                        .largest_gang_by_level
                        .iter()
                        .map(|(level, nodes)| GangRoom {
                            level: *level,
                            nodes: *nodes,
                        })
                        .collect(),
                    site_power_watts: power.allocated_watts,
                    site_power_limit_watts: power.limit_watts,
                    placement_policy: policy_name(sched.config().placement).to_string(),
                });
            }
        }
        Ok(out)
    }
}
