//! The discrete-event engine.
//!
//! Time is an integer count of simulated seconds; no wall clock is read. Events sit in a heap
//! ordered by (time, kind, sequence), and the requests to replay in a vector sorted by
//! arrival, so the order in which things happen is fully determined by the scenario and the
//! seed. Every placement, release, preemption plan, pool pin and spare pick is a call into
//! the production [`neocloud_allocator::Allocator`]; every usage interval is rated by
//! [`neocloud_billing::rate_interval`] and every month is billed by
//! [`neocloud_billing::build_invoice`].
//!
//! What the engine itself does is the service's job in `serve`: the queue (served by class
//! then arrival; identical requests behind a blocked one are not retried in the same pass),
//! preemption notice, the sellable cap on on-demand and internal work (contracts and the
//! spare buffer are never sold twice), contract pools, and remediation of node failures
//! (fail the node's work, refill a pool from the nearest spare, downtime for SLA credits).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use neocloud_allocator::calendar::{Calendar, CapacityKey};
use neocloud_allocator::synthetic::{self, Rng};
use neocloud_allocator::{Allocation, Refusal, Request};
use neocloud_billing::{
    ContractTerms, Downtime, Invoice, LineKind, Month, PriceKind, SlaPolicy, UsageInterval,
    UsageRecord, build_invoice, rate_interval, spot_price,
};
use neocloud_types::{Class, ContractId, InstanceId, Money, Shape, Timestamp};

use crate::demand::{self, Job};
use crate::error::{SimError, invalid};
use crate::fleet::Fleet;
use crate::report::{self, RunResult};
use crate::scenario::{Scenario, Variant};

const HOUR: i64 = 3600;
const YEAR_S: f64 = 365.0 * 86_400.0;

/// Event kinds, in the order they are handled at one instant: releases before placements,
/// so that capacity freed at `t` is usable at `t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    ContractEnd = 0,
    Finish = 1,
    PreemptDone = 2,
    Expire = 3,
    Repair = 4,
    Failure = 5,
    ContractStart = 6,
    MonthEnd = 7,
    Tick = 8,
    Arrival = 9,
}

/// Lifecycle of a request in the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    New,
    Queued,
    WaitingForPreemption,
    Running,
    Preempting,
    Done,
    Refused,
    Expired,
    Preempted,
    Failed,
}

#[derive(Clone, Copy, Debug)]
struct JobState {
    state: State,
    start: i64,
    metered_from: i64,
    gpus: u32,
    site: u32,
    pool: Option<u32>,
}

impl JobState {
    /// A job that has not arrived yet.
    const NEW: JobState = JobState {
        state: State::New,
        start: 0,
        metered_from: 0,
        gpus: 0,
        site: 0,
        pool: None,
    };
}

struct ContractRun {
    id: ContractId,
    active: bool,
    nodes: Vec<usize>,
}

struct Outage {
    contract: usize,
    node: usize,
    start: i64,
    gpus: u32,
}

/// Per-class counters of requests.
#[derive(Clone, Debug, Default)]
pub(crate) struct ClassStats {
    pub arrived: u64,
    pub placed: u64,
    pub placed_after_wait: u64,
    pub refused: u64,
    pub expired: u64,
    pub refused_gpu_seconds: i128,
    pub waits: Vec<i64>,
    pub preempted: u64,
    pub preempted_gpus: u64,
    pub interrupted_by_failure: u64,
    pub relaunched: u64,
}

/// Integrals and counters gathered during a run; [`report`] turns them into results.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tally {
    pub alloc_secs: [i128; 4],
    pub free_secs: i128,
    pub down_secs: i128,
    pub ledger_gpu_secs: [i128; 4],
    pub site_watt_secs: Vec<i128>,
    pub site_peak_watts: Vec<i64>,
    pub classes: [ClassStats; 4],
    pub node_failures: u64,
    pub outages: u64,
    pub downtime_gpu_secs: i128,
    pub stranded_sum: BTreeMap<(usize, usize), f64>,
    pub samples_taken: u64,
}

/// One sample of the time series.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sample {
    /// Hours after the start.
    pub hour: f64,
    /// GPUs allocated, by class (reserved, internal, on-demand, spot).
    pub allocated: [u64; 4],
    /// Free, healthy, schedulable GPUs.
    pub free: u64,
    /// GPUs on failed nodes.
    pub down: u64,
    /// Requests waiting in the queue.
    pub queued: u64,
    /// Facility megawatts drawn, per site.
    pub power_mw: Vec<f64>,
    /// Spot price per GPU-hour, per (site, model) pool with a spot band.
    pub spot_price: Vec<Money>,
    /// Share of free GPUs stranded on partly used nodes, per (site, model) pool.
    pub stranded: Vec<f64>,
}

pub(crate) fn class_index(c: Class) -> usize {
    match c {
        Class::Reserved => 0,
        Class::Internal => 1,
        Class::OnDemand => 2,
        Class::Spot => 3,
    }
}

/// The classes in [`class_index`] order.
pub(crate) const CLASSES: [Class; 4] = [
    Class::Reserved,
    Class::Internal,
    Class::OnDemand,
    Class::Spot,
];

type QKey = (
    Reverse<u8>,
    u32,
    Option<u32>,
    Option<u32>,
    (u8, u32, u8),
    u32,
);

fn shape_key(s: &Shape) -> (u8, u32, u8) {
    match *s {
        Shape::Gpus { gpus } => (0, gpus, 0),
        Shape::Nodes { count, level } => (1, count, level as u8),
        Shape::Share { milli } => (2, milli, 0),
        Shape::Mig { profile } => (3, profile.compute_slices(), profile as u8),
        Shape::Cpu => (4, 0, 0),
    }
}

/// A random delay in whole seconds, rounded up (saturating: `as` never wraps).
#[allow(
    clippy::cast_possible_truncation,
    reason = "a finite or infinite f64 saturates to i64; delays are far below i64::MAX"
)]
fn whole_seconds(x: f64) -> i64 {
    x.ceil() as i64
}

fn number_of(id: &str) -> Option<usize> {
    let hex = id.rsplit('_').next()?;
    let n = u64::from_str_radix(hex, 16).ok()?;
    usize::try_from(n.checked_sub(1)?).ok()
}

fn inst(j: usize) -> InstanceId {
    synthetic::instance_id(j as u64 + 1)
}

fn job_of(id: InstanceId) -> usize {
    number_of(&id.to_string()).unwrap_or(usize::MAX)
}

pub(crate) struct Engine<'a> {
    pub sc: &'a Scenario,
    pub v: &'a Variant,
    pub seed: u64,
    pub fleet: Fleet,
    pub jobs: Vec<Job>,
    st: Vec<JobState>,
    heap: BinaryHeap<Reverse<(i64, Kind, u64, u64)>>,
    seq: u64,
    next_arrival: usize,
    /// Requests of the demand (later ones are relaunches).
    pub original_jobs: usize,
    pub now: i64,
    rng: Rng,
    queue: BTreeMap<QKey, VecDeque<u32>>,
    queued: u64,
    preempt_waits: BTreeMap<u32, Vec<u32>>,
    alloc_by_class: [u64; 4],
    alloc_by_pool: BTreeMap<(usize, usize), u64>,
    sold: BTreeMap<(usize, usize), u64>,
    sellable: BTreeMap<(usize, usize), u64>,
    min_node_gpus: Vec<u32>,
    calendar: Calendar,
    contracts: Vec<ContractRun>,
    node_pool: Vec<Option<u32>>,
    node_down: Vec<bool>,
    down_gpus: u64,
    outages: Vec<Outage>,
    pub downtime: Vec<Downtime>,
    pub spot_pools: Vec<(usize, usize)>,
    spot_series: Vec<Vec<(Timestamp, Money)>>,
    month_records: Vec<UsageRecord>,
    pub ledger: Vec<UsageRecord>,
    pub invoices: Vec<Invoice>,
    pub tally: Tally,
    pub series: Vec<Sample>,
    free_cache: Option<u64>,
    freed: bool,
    pub terms: Vec<ContractTerms>,
    pub tenant_ids: Vec<neocloud_types::TenantId>,
}

impl<'a> Engine<'a> {
    pub(crate) fn new(sc: &'a Scenario, v: &'a Variant, seed: u64) -> Result<Self, SimError> {
        let fleet = neocloud_fleet_build(sc, v)?;
        let jobs = demand::jobs(sc, v, &fleet.models, seed);
        let st = vec![JobState::NEW; jobs.len()];
        let mut sellable = BTreeMap::new();
        for &(site, model) in fleet.pools.keys() {
            let total = fleet.gpus_of(site, model);
            sellable.insert(
                (site, model),
                neocloud_allocator::selling::sellable_gpus(total, sc.spare_buffer_milli),
            );
        }
        let mut min_node_gpus = vec![u32::MAX; fleet.models.len()];
        for n in &fleet.nodes {
            min_node_gpus[n.model] = min_node_gpus[n.model].min(n.gpus);
        }
        let spot_pools: Vec<(usize, usize)> = fleet
            .pools
            .keys()
            .copied()
            .filter(|&(s, m)| {
                let sid = fleet.sites[s].id;
                let model = &fleet.models[m];
                sc.prices
                    .price_at(model, sid, PriceKind::SpotFloor, sc.start)
                    .is_some()
                    && sc
                        .prices
                        .price_at(model, sid, PriceKind::SpotCeiling, sc.start)
                        .is_some()
            })
            .collect();
        let tenant_ids = (0..sc.tenants.len())
            .map(|i| synthetic::tenant_id(i as u64 + 1))
            .collect();
        let horizon_end = sc.start.plus_seconds(sc.horizon_secs);
        let terms = v
            .contracts
            .iter()
            .enumerate()
            .map(|(i, c)| ContractTerms {
                id: synthetic::contract_id(i as u64 + 1),
                tenant: synthetic::tenant_id(c.tenant as u64 + 1),
                gpu_model: c.gpu_model.clone(),
                site: fleet.sites[c.site].id,
                gpus: c.gpus,
                // Billed inside the simulated window only.
                start: sc.start.plus_seconds(c.start.max(0)),
                end: sc
                    .start
                    .plus_seconds(c.end.min(sc.horizon_secs))
                    .min(horizon_end),
                rate: c.rate,
                sla_milli: c.sla_milli,
            })
            .collect();
        let n_nodes = fleet.nodes.len();
        let n_sites = fleet.sites.len();
        let mut e = Engine {
            sc,
            v,
            seed,
            jobs,
            st,
            heap: BinaryHeap::new(),
            seq: 0,
            next_arrival: 0,
            original_jobs: 0,
            now: 0,
            rng: demand::stream(seed, 0),
            queue: BTreeMap::new(),
            queued: 0,
            preempt_waits: BTreeMap::new(),
            alloc_by_class: [0; 4],
            alloc_by_pool: BTreeMap::new(),
            sold: BTreeMap::new(),
            sellable,
            min_node_gpus,
            calendar: Calendar::new(),
            contracts: (0..v.contracts.len())
                .map(|i| ContractRun {
                    id: synthetic::contract_id(i as u64 + 1),
                    active: false,
                    nodes: Vec::new(),
                })
                .collect(),
            node_pool: vec![None; n_nodes],
            node_down: vec![false; n_nodes],
            down_gpus: 0,
            outages: Vec::new(),
            downtime: Vec::new(),
            spot_series: vec![Vec::new(); spot_pools.len()],
            spot_pools,
            month_records: Vec::new(),
            ledger: Vec::new(),
            invoices: Vec::new(),
            tally: Tally {
                site_watt_secs: vec![0; n_sites],
                site_peak_watts: vec![0; n_sites],
                ..Tally::default()
            },
            series: Vec::new(),
            free_cache: None,
            freed: false,
            terms,
            tenant_ids,
            fleet,
        };
        e.original_jobs = e.jobs.len();
        e.schedule_static()?;
        Ok(e)
    }

    fn push(&mut self, t: i64, kind: Kind, payload: u64) {
        self.seq += 1;
        self.heap.push(Reverse((t, kind, self.seq, payload)));
    }

    fn schedule_static(&mut self) -> Result<(), SimError> {
        let h = self.sc.horizon_secs;
        for (i, c) in self.v.contracts.iter().enumerate() {
            let key = self.cap_key(c.site, &c.gpu_model);
            let model = self.model_index(&c.gpu_model);
            let sellable = self.sellable.get(&(c.site, model)).copied().unwrap_or(0);
            let (s, e) = (c.start * 1_000_000, c.end * 1_000_000);
            let cap = i64::try_from(sellable).unwrap_or(i64::MAX);
            if !self.calendar.fits(&key, s, e, i64::from(c.gpus), cap) {
                return Err(invalid(
                    format!("variant '{}': contracts[{i}]", self.v.name),
                    format!(
                        "{} GPUs do not fit the calendar: {} has {} sellable {} GPUs, and other contracts already promise {}",
                        c.gpus,
                        self.fleet.sites[c.site].name,
                        sellable,
                        c.gpu_model,
                        self.calendar.committed_peak(&key, s, e)
                    ),
                ));
            }
            self.calendar
                .commit(&key, self.contracts[i].id, s, e, i64::from(c.gpus))
                .map_err(|m| invalid(format!("contracts[{i}]"), m))?;
            if c.end > 0 && c.start < h {
                self.push(c.start.max(0), Kind::ContractStart, i as u64);
                if c.end < h {
                    self.push(c.end, Kind::ContractEnd, i as u64);
                }
            }
        }
        // Month ends inside the horizon.
        let mut m = Month::containing(self.sc.start);
        loop {
            let end = self.secs_of(m.end());
            if end >= h {
                break;
            }
            self.push(end, Kind::MonthEnd, 0);
            m = m.next();
        }
        let mut t = 0;
        while t < h {
            self.push(t, Kind::Tick, 0);
            t += HOUR;
        }
        self.schedule_failure();
        Ok(())
    }

    fn secs_of(&self, t: Timestamp) -> i64 {
        (t.micros() - self.sc.start.micros()).div_euclid(1_000_000)
    }

    fn ts(&self, t: i64) -> Timestamp {
        self.sc.start.plus_seconds(t)
    }

    fn model_index(&self, m: &str) -> usize {
        self.fleet
            .models
            .binary_search_by(|x| x.as_str().cmp(m))
            .unwrap_or(0)
    }

    fn cap_key(&self, site: usize, model: &str) -> CapacityKey {
        CapacityKey::new(self.fleet.sites[site].id, model)
    }

    fn site_index(&self, id: neocloud_types::SiteId) -> usize {
        self.fleet
            .sites
            .iter()
            .position(|s| s.id == id)
            .unwrap_or(0)
    }

    fn schedule_failure(&mut self) {
        let f = self.v.failures;
        if f.node_afr <= 0.0 || self.fleet.nodes.is_empty() {
            return;
        }
        let rate = self.fleet.nodes.len() as f64 * f.node_afr / YEAR_S;
        let gap = whole_seconds(self.rng.exp(1.0 / rate));
        let t = self.now.saturating_add(gap.max(1));
        if t < self.sc.horizon_secs {
            self.push(t, Kind::Failure, 0);
        }
    }

    /// Runs to the horizon. `progress` gets the share of simulated time done.
    pub(crate) fn run(mut self, progress: &mut dyn FnMut(f64)) -> Result<RunResult, SimError> {
        let h = self.sc.horizon_secs;
        loop {
            let heap_next = self.heap.peek().map(|Reverse(k)| (k.0, k.1));
            // Relaunches are appended to `jobs` and arrive through the heap.
            let arr_next = self.jobs[..self.original_jobs]
                .get(self.next_arrival)
                .map(|j| (j.arrival, Kind::Arrival));
            let next = match (heap_next, arr_next) {
                (None, None) => break,
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (Some(a), Some(b)) => a.min(b),
            };
            if next.0 >= h {
                break;
            }
            if next.0 > self.now {
                self.end_of_step();
                self.advance(next.0);
            }
            if next.1 == Kind::Arrival && arr_next == Some(next) {
                let j = self.next_arrival;
                self.next_arrival += 1;
                self.arrival(j)?;
            } else if let Some(Reverse((_, kind, _, payload))) = self.heap.pop() {
                self.handle(kind, payload, progress)?;
            }
        }
        self.end_of_step();
        self.advance(h);
        self.close(h)?;
        progress(1.0);
        Ok(report::build(self))
    }

    fn end_of_step(&mut self) {
        if self.freed {
            self.freed = false;
            if self.queued > 0 {
                self.queue_pass();
            }
        }
    }

    fn free_total(&mut self) -> u64 {
        if let Some(f) = self.free_cache {
            return f;
        }
        let f = self
            .fleet
            .models
            .iter()
            .map(|m| self.fleet.allocator.free_gpus(None, m))
            .sum();
        self.free_cache = Some(f);
        f
    }

    /// Integrates the state over `[now, t)` and moves the clock.
    fn advance(&mut self, t: i64) {
        let dt = i128::from(t - self.now);
        if dt > 0 {
            for c in 0..4 {
                self.tally.alloc_secs[c] += i128::from(self.alloc_by_class[c]) * dt;
            }
            let free = self.free_total();
            self.tally.free_secs += i128::from(free) * dt;
            self.tally.down_secs += i128::from(self.down_gpus) * dt;
            for s in 0..self.fleet.sites.len() {
                let w = self
                    .fleet
                    .allocator
                    .site_power(self.fleet.sites[s].id)
                    .allocated_watts;
                self.tally.site_watt_secs[s] += i128::from(w) * dt;
                self.tally.site_peak_watts[s] = self.tally.site_peak_watts[s].max(w);
            }
        }
        self.now = t;
    }

    fn handle(
        &mut self,
        kind: Kind,
        payload: u64,
        progress: &mut dyn FnMut(f64),
    ) -> Result<(), SimError> {
        let p = usize::try_from(payload).unwrap_or(usize::MAX);
        match kind {
            Kind::ContractEnd => self.contract_end(p)?,
            Kind::Finish => {
                if matches!(self.st[p].state, State::Running | State::Preempting) {
                    self.end_job(p, State::Done)?;
                }
            }
            Kind::PreemptDone => self.preempt_done(p)?,
            Kind::Expire => {
                if self.st[p].state == State::Queued {
                    self.st[p].state = State::Expired;
                    self.queued -= 1;
                    self.count_refused(p, true);
                }
            }
            Kind::Repair => self.repair(p),
            Kind::Failure => {
                let n = self.rng.below(self.fleet.nodes.len() as u64);
                let slot = usize::try_from(n).unwrap_or(0);
                if !self.node_down[slot] {
                    self.fail_node(slot)?;
                }
                self.schedule_failure();
            }
            Kind::ContractStart => self.contract_start(p)?,
            Kind::MonthEnd => {
                let m = Month::containing(self.ts(self.now - 1));
                self.close_month(m, self.now)?;
            }
            Kind::Tick => {
                self.tick();
                progress(self.now as f64 / self.sc.horizon_secs as f64);
            }
            Kind::Arrival => self.arrival(p)?,
        }
        Ok(())
    }

    // --- placement ------------------------------------------------------------------

    fn request(&self, j: usize, pool: Option<u32>) -> Request {
        let job = &self.jobs[j];
        Request {
            id: inst(j),
            tenant: self.tenant_ids[job.tenant as usize],
            class: job.class,
            gpu_model: self.fleet.models[job.model as usize].clone(),
            shape: job.shape,
            site: job.site.map(|s| self.fleet.sites[s as usize].id),
            pool: pool.map(|c| self.contracts[c as usize].id),
            cpu_milli: None,
            memory_mib: None,
        }
    }

    /// Places like the service does: the allocator decides; on-demand and internal work must
    /// also stay within what contracts leave of the sellable GPUs (the spare buffer is never
    /// sold), trying each site in turn when the request names none.
    fn place(&mut self, req: &Request) -> Result<Allocation, (Refusal, bool)> {
        if !matches!(req.class, Class::OnDemand | Class::Internal) {
            return self.fleet.allocator.place(req).map_err(|e| (e, true));
        }
        let model = self.model_index(&req.gpu_model);
        // A shortcut with the same outcome: when no candidate site could pass the sellable
        // check even with the smallest nodes, the allocator is not asked at all.
        let need = match req.shape {
            Shape::Gpus { gpus } => u64::from(gpus),
            Shape::Nodes { count, .. } => {
                u64::from(count) * u64::from(self.min_node_gpus[model].min(64))
            }
            Shape::Share { .. } | Shape::Mig { .. } => 1,
            Shape::Cpu => 0,
        };
        let at = self.now * 1_000_000;
        let room = |e: &Self, site: usize| {
            let sellable = e.sellable.get(&(site, model)).copied().unwrap_or(0);
            let key = e.cap_key(site, &req.gpu_model);
            let committed = u64::try_from(e.calendar.committed_peak(&key, at, at + 1)).unwrap_or(0);
            let in_use = e.sold.get(&(site, model)).copied().unwrap_or(0);
            in_use + need + committed <= sellable
        };
        let any_room = match req.site {
            Some(s) => room(self, self.site_index(s)),
            None => (0..self.fleet.sites.len())
                .filter(|s| self.fleet.pools.contains_key(&(*s, model)))
                .any(|s| room(self, s)),
        };
        if !any_room {
            return Err((
                Refusal::NoCapacity {
                    free_gpus: 0,
                    reason:
                        "the sellable capacity is taken by contracts and on-demand/internal work"
                            .to_string(),
                },
                false,
            ));
        }
        neocloud_allocator::selling::place_within_sellable(self, req)
    }

    fn start_job(&mut self, j: usize, a: &Allocation) {
        let site = self.site_index(a.site);
        let model = self.jobs[j].model as usize;
        let gpus = u32::try_from(a.gpu_count()).unwrap_or(u32::MAX);
        let c = class_index(self.jobs[j].class);
        self.alloc_by_class[c] += u64::from(gpus);
        *self.alloc_by_pool.entry((site, model)).or_default() += u64::from(gpus);
        if a.pool.is_none() && matches!(self.jobs[j].class, Class::OnDemand | Class::Internal) {
            *self.sold.entry((site, model)).or_default() += u64::from(gpus);
        }
        let s = &mut self.st[j];
        s.state = State::Running;
        s.start = self.now;
        s.metered_from = self.now;
        s.gpus = gpus;
        s.site = u32::try_from(site).unwrap_or(0);
        let waited = self.now - self.jobs[j].arrival;
        let stats = &mut self.tally.classes[c];
        stats.placed += 1;
        if waited > 0 {
            stats.placed_after_wait += 1;
        }
        stats.waits.push(waited);
        self.free_cache = None;
        let end = self.now.saturating_add(self.jobs[j].duration);
        self.push(end, Kind::Finish, j as u64);
    }

    fn pool_for(&self, j: usize) -> Option<u32> {
        let job = &self.jobs[j];
        let model = &self.fleet.models[job.model as usize];
        self.v
            .contracts
            .iter()
            .enumerate()
            .find(|(i, c)| {
                self.contracts[*i].active
                    && c.tenant == job.tenant as usize
                    && &c.gpu_model == model
                    && job.site.is_none_or(|s| s as usize == c.site)
            })
            .and_then(|(i, _)| u32::try_from(i).ok())
    }

    fn count_refused(&mut self, j: usize, expired: bool) {
        let job = &self.jobs[j];
        let gpus = match job.shape {
            Shape::Gpus { gpus } => u64::from(gpus),
            Shape::Nodes { count, .. } => {
                u64::from(count) * u64::from(self.min_node_gpus[job.model as usize].min(64))
            }
            Shape::Share { .. } | Shape::Mig { .. } => 1,
            Shape::Cpu => 0,
        };
        let s = &mut self.tally.classes[class_index(job.class)];
        if expired {
            s.expired += 1;
        } else {
            s.refused += 1;
        }
        s.refused_gpu_seconds += i128::from(gpus) * i128::from(job.duration);
    }

    fn arrival(&mut self, j: usize) -> Result<(), SimError> {
        let class = self.jobs[j].class;
        if j < self.original_jobs {
            self.tally.classes[class_index(class)].arrived += 1;
        }
        let pool = if class == Class::Reserved {
            match self.pool_for(j) {
                Some(p) => Some(p),
                None => {
                    self.st[j].state = State::Refused;
                    self.count_refused(j, false);
                    return Ok(());
                }
            }
        } else {
            None
        };
        self.st[j].pool = pool;
        let req = self.request(j, pool);
        match self.place(&req) {
            Ok(a) => {
                self.start_job(j, &a);
                return Ok(());
            }
            Err((Refusal::NoCapacity { .. } | Refusal::PowerLimit { .. }, true))
                if class != Class::Spot =>
            {
                if let Some(victims) = self.fleet.allocator.preemption_plan(&req)
                    && !victims.is_empty()
                {
                    let vs: Vec<u32> = victims
                        .iter()
                        .map(|&id| job_of(id))
                        .filter(|&v| v < self.st.len() && self.st[v].state == State::Running)
                        .filter_map(|v| u32::try_from(v).ok())
                        .collect();
                    if !vs.is_empty() {
                        for &v in &vs {
                            self.st[v as usize].state = State::Preempting;
                        }
                        self.st[j].state = State::WaitingForPreemption;
                        let at = self.now + self.sc.preemption_grace_secs;
                        self.preempt_waits.insert(u32::try_from(j).unwrap_or(0), vs);
                        self.push(at, Kind::PreemptDone, j as u64);
                        return Ok(());
                    }
                }
            }
            Err(_) => {}
        }
        self.enqueue_or_refuse(j);
        Ok(())
    }

    fn enqueue_or_refuse(&mut self, j: usize) {
        let job = &self.jobs[j];
        let deadline = job.arrival.saturating_add(job.max_wait);
        if deadline > self.now {
            let key: QKey = (
                Reverse(job.class.priority(self.v.fleet_policy)),
                job.model,
                job.site,
                self.st[j].pool,
                shape_key(&job.shape),
                job.tenant,
            );
            self.queue
                .entry(key)
                .or_default()
                .push_back(u32::try_from(j).unwrap_or(0));
            self.st[j].state = State::Queued;
            self.queued += 1;
            self.push(deadline, Kind::Expire, j as u64);
        } else {
            let expired = job.max_wait > 0;
            self.st[j].state = if expired {
                State::Expired
            } else {
                State::Refused
            };
            self.count_refused(j, expired);
        }
    }

    fn preempt_done(&mut self, j: usize) -> Result<(), SimError> {
        let victims = self
            .preempt_waits
            .remove(&u32::try_from(j).unwrap_or(0))
            .unwrap_or_default();
        for v in victims {
            let v = v as usize;
            if self.st[v].state == State::Preempting {
                let c = class_index(self.jobs[v].class);
                self.tally.classes[c].preempted += 1;
                self.tally.classes[c].preempted_gpus += u64::from(self.st[v].gpus);
                self.end_job(v, State::Preempted)?;
            }
        }
        if self.st[j].state != State::WaitingForPreemption {
            return Ok(());
        }
        let req = self.request(j, self.st[j].pool);
        match self.place(&req) {
            Ok(a) => self.start_job(j, &a),
            Err(_) => self.enqueue_or_refuse(j),
        }
        Ok(())
    }

    /// Serves the queue: groups by priority, each group in arrival order; a group stops at
    /// its first request that does not fit (the ones behind it are the same request).
    fn queue_pass(&mut self) {
        let mut queue = std::mem::take(&mut self.queue);
        for (key, dq) in queue.iter_mut() {
            let (model, site) = (key.1 as usize, key.2);
            let need = match key.4 {
                (0, g, _) => u64::from(g),
                (_, n, _) => u64::from(n) * u64::from(self.min_node_gpus[model].min(64)),
            };
            while let Some(&j) = dq.front() {
                let j = j as usize;
                if self.st[j].state != State::Queued {
                    dq.pop_front();
                    continue;
                }
                let site_id = site.map(|s| self.fleet.sites[s as usize].id);
                if self
                    .fleet
                    .allocator
                    .free_gpus(site_id, &self.fleet.models[model])
                    < need
                {
                    break;
                }
                let req = self.request(j, self.st[j].pool);
                match self.place(&req) {
                    Ok(a) => {
                        dq.pop_front();
                        self.queued -= 1;
                        self.start_job(j, &a);
                    }
                    Err(_) => break,
                }
            }
        }
        queue.retain(|_, dq| !dq.is_empty());
        // Requests queued during the pass (none today) would be in self.queue.
        for (k, mut dq) in std::mem::take(&mut self.queue) {
            queue.entry(k).or_default().append(&mut dq);
        }
        self.queue = queue;
    }

    // --- metering -------------------------------------------------------------------

    fn spot_slice(&self, site: usize, model: usize, from: i64, to: i64) -> &[(Timestamp, Money)] {
        let Some(p) = self.spot_pools.iter().position(|&x| x == (site, model)) else {
            return &[];
        };
        let s = &self.spot_series[p];
        let (a, b) = (self.ts(from), self.ts(to));
        let lo = s.partition_point(|x| x.0 <= a).saturating_sub(1);
        let hi = s.partition_point(|x| x.0 < b).max(lo);
        &s[lo..hi]
    }

    /// Rates `[metered_from, until)` of a running request with the production billing code.
    fn meter(&mut self, j: usize, until: i64) -> Result<(), SimError> {
        let s = self.st[j];
        if until <= s.metered_from || s.gpus == 0 {
            return Ok(());
        }
        let job = &self.jobs[j];
        let iv = UsageInterval {
            instance: inst(j),
            tenant: self.tenant_ids[job.tenant as usize],
            class: job.class,
            gpu_model: self.fleet.models[job.model as usize].clone(),
            site: self.fleet.sites[s.site as usize].id,
            contract: s.pool.map(|c| self.contracts[c as usize].id),
            gpus: s.gpus,
            start: self.ts(s.metered_from),
            end: self.ts(until),
        };
        let spot = if job.class == Class::Spot {
            self.spot_slice(s.site as usize, job.model as usize, s.metered_from, until)
        } else {
            &[]
        };
        let records = rate_interval(&iv, &self.sc.prices, spot)?;
        let c = class_index(job.class);
        for r in &records {
            self.tally.ledger_gpu_secs[c] += i128::from(r.gpu_seconds);
        }
        self.month_records.extend(records);
        self.st[j].metered_from = until;
        Ok(())
    }

    fn end_job(&mut self, j: usize, how: State) -> Result<(), SimError> {
        self.meter(j, self.now)?;
        let s = self.st[j];
        self.fleet.allocator.release(inst(j));
        let c = class_index(self.jobs[j].class);
        let model = self.jobs[j].model as usize;
        let site = s.site as usize;
        self.alloc_by_class[c] -= u64::from(s.gpus);
        if let Some(x) = self.alloc_by_pool.get_mut(&(site, model)) {
            *x -= u64::from(s.gpus);
        }
        if s.pool.is_none()
            && matches!(self.jobs[j].class, Class::OnDemand | Class::Internal)
            && let Some(x) = self.sold.get_mut(&(site, model))
        {
            *x -= u64::from(s.gpus);
        }
        self.st[j].state = how;
        self.free_cache = None;
        self.freed = true;
        Ok(())
    }

    fn tick(&mut self) {
        // Spot prices, once an hour per pool, from the pool's utilization.
        for p in 0..self.spot_pools.len() {
            let (site, model) = self.spot_pools[p];
            let total = self.fleet.gpus_of(site, model).max(1);
            let used = self.alloc_by_pool.get(&(site, model)).copied().unwrap_or(0);
            let u = u32::try_from(used * 1000 / total).unwrap_or(1000);
            let sid = self.fleet.sites[site].id;
            let m = &self.fleet.models[model];
            let t = self.ts(self.now);
            let (Some(floor), Some(ceil)) = (
                self.sc.prices.price_at(m, sid, PriceKind::SpotFloor, t),
                self.sc.prices.price_at(m, sid, PriceKind::SpotCeiling, t),
            ) else {
                continue;
            };
            let price = spot_price(floor, ceil, u);
            if self.spot_series[p].last().is_none_or(|x| x.1 != price) {
                self.spot_series[p].push((t, price));
            }
        }
        if !self.outages.is_empty() {
            self.refill_pools();
        }
        if self.now % self.sc.sample_secs.max(HOUR) == 0 {
            self.sample();
        }
    }

    fn sample(&mut self) {
        let free = self.free_total();
        let power_mw = self
            .fleet
            .sites
            .iter()
            .map(|s| self.fleet.allocator.site_power(s.id).allocated_watts as f64 / 1e6)
            .collect();
        let spot_price = self
            .spot_series
            .iter()
            .map(|s| s.last().map_or(Money::ZERO, |x| x.1))
            .collect();
        let mut stranded = Vec::new();
        for &(site, model) in self.fleet.pools.keys() {
            let f = self
                .fleet
                .allocator
                .fragmentation(self.fleet.sites[site].id, &self.fleet.models[model]);
            *self.tally.stranded_sum.entry((site, model)).or_default() += f.stranded_share;
            stranded.push(f.stranded_share);
        }
        self.tally.samples_taken += 1;
        self.series.push(Sample {
            hour: self.now as f64 / 3600.0,
            allocated: self.alloc_by_class,
            free,
            down: self.down_gpus,
            queued: self.queued,
            power_mw,
            spot_price,
            stranded,
        });
    }

    // --- contracts and pools --------------------------------------------------------

    fn contract_start(&mut self, c: usize) -> Result<(), SimError> {
        let spec = self.v.contracts[c].clone();
        let model = self.model_index(&spec.gpu_model);
        let per = self.fleet.nodes[self.fleet.pools[&(spec.site, model)][0]]
            .gpus
            .max(1);
        let mut need = spec.gpus / per;
        let candidates = self.fleet.pools[&(spec.site, model)].clone();
        let cid = self.contracts[c].id;
        // Free whole nodes first, then nodes whose work may be moved off (lower classes).
        for pass in 0..2 {
            for &slot in &candidates {
                if need == 0 {
                    break;
                }
                if self.node_down[slot] || self.node_pool[slot].is_some() {
                    continue;
                }
                let id = self.fleet.nodes[slot].id;
                let holders = self.fleet.allocator.node_holders(id);
                if !holders.is_empty() {
                    if pass == 0 {
                        continue;
                    }
                    if holders.iter().any(|&h| {
                        let j = job_of(h);
                        j >= self.jobs.len() || self.jobs[j].class == Class::Reserved
                    }) {
                        continue;
                    }
                    for h in holders {
                        let j = job_of(h);
                        let ci = class_index(self.jobs[j].class);
                        self.tally.classes[ci].preempted += 1;
                        self.tally.classes[ci].preempted_gpus += u64::from(self.st[j].gpus);
                        self.end_job(j, State::Preempted)?;
                    }
                }
                if self.fleet.allocator.set_pool(id, Some(cid)).is_ok() {
                    self.node_pool[slot] = Some(u32::try_from(c).unwrap_or(0));
                    self.contracts[c].nodes.push(slot);
                    need -= 1;
                }
            }
        }
        self.contracts[c].active = true;
        // What could not be pinned is an outage until capacity frees up.
        for _ in 0..need {
            self.tally.outages += 1;
            self.outages.push(Outage {
                contract: c,
                node: candidates[0],
                start: self.now,
                gpus: per,
            });
        }
        self.free_cache = None;
        Ok(())
    }

    fn contract_end(&mut self, c: usize) -> Result<(), SimError> {
        let nodes = std::mem::take(&mut self.contracts[c].nodes);
        for &slot in &nodes {
            for h in self.fleet.allocator.node_holders(self.fleet.nodes[slot].id) {
                let j = job_of(h);
                if j < self.jobs.len() && self.st[j].pool == Some(u32::try_from(c).unwrap_or(0)) {
                    self.end_job(j, State::Done)?;
                }
            }
        }
        for &slot in &nodes {
            // Spot borrowing the pool stays where it is; the node leaves the pool.
            let _ = self
                .fleet
                .allocator
                .set_pool(self.fleet.nodes[slot].id, None);
            self.node_pool[slot] = None;
        }
        self.contracts[c].active = false;
        let mut kept = Vec::new();
        for o in std::mem::take(&mut self.outages) {
            if o.contract == c {
                self.close_outage(&o);
            } else {
                kept.push(o);
            }
        }
        self.outages = kept;
        self.calendar.remove(self.contracts[c].id);
        self.freed = true;
        self.free_cache = None;
        Ok(())
    }

    fn close_outage(&mut self, o: &Outage) {
        if self.now > o.start {
            self.tally.downtime_gpu_secs += i128::from(o.gpus) * i128::from(self.now - o.start);
            self.downtime.push(Downtime {
                contract: self.contracts[o.contract].id,
                start: self.ts(o.start),
                end: self.ts(self.now),
                gpus: o.gpus,
            });
        }
    }

    /// Pins a spare to the pool of each open outage, nearest first (the allocator's
    /// `spare_near`, as the health remediation does).
    fn refill_pools(&mut self) {
        let mut kept = Vec::new();
        for o in std::mem::take(&mut self.outages) {
            let near = self.fleet.nodes[o.node].id;
            let cid = self.contracts[o.contract].id;
            match self.fleet.allocator.spare_near(near) {
                Some(spare) if self.fleet.allocator.set_pool(spare, Some(cid)).is_ok() => {
                    if let Some(slot) = self.fleet.slot_of(spare) {
                        self.node_pool[slot] = Some(u32::try_from(o.contract).unwrap_or(0));
                        self.contracts[o.contract].nodes.push(slot);
                    }
                    self.close_outage(&o);
                    self.free_cache = None;
                }
                _ => kept.push(o),
            }
        }
        self.outages = kept;
    }

    // --- failures -------------------------------------------------------------------

    fn fail_node(&mut self, slot: usize) -> Result<(), SimError> {
        self.tally.node_failures += 1;
        let id = self.fleet.nodes[slot].id;
        for h in self.fleet.allocator.node_holders(id) {
            let j = job_of(h);
            if j < self.jobs.len() && matches!(self.st[j].state, State::Running | State::Preempting)
            {
                self.tally.classes[class_index(self.jobs[j].class)].interrupted_by_failure += 1;
                self.end_job(j, State::Failed)?;
                self.relaunch(j);
            }
        }
        self.fleet.allocator.set_schedulable(id, false);
        self.node_down[slot] = true;
        let gpus = self.fleet.nodes[slot].gpus;
        self.down_gpus += u64::from(gpus);
        self.free_cache = None;
        if let Some(c) = self.node_pool[slot].take() {
            let _ = self.fleet.allocator.set_pool(id, None);
            let c = c as usize;
            self.contracts[c].nodes.retain(|&s| s != slot);
            self.tally.outages += 1;
            self.outages.push(Outage {
                contract: c,
                node: slot,
                start: self.now,
                gpus,
            });
            self.refill_pools();
        }
        let hours = self.v.failures.repair_hours;
        let repair = whole_seconds(self.rng.exp(hours * 3600.0)).max(1);
        self.push(self.now.saturating_add(repair), Kind::Repair, slot as u64);
        Ok(())
    }

    /// The rest of a failed request, launched again at once as a new request.
    fn relaunch(&mut self, j: usize) {
        if !self.v.failures.relaunch {
            return;
        }
        let rest = self.st[j].start + self.jobs[j].duration - self.now;
        if rest < 60 {
            return;
        }
        let mut again = self.jobs[j].clone();
        again.arrival = self.now;
        again.duration = rest;
        let n = self.jobs.len();
        self.jobs.push(again);
        self.st.push(JobState::NEW);
        self.tally.classes[class_index(self.jobs[j].class)].relaunched += 1;
        self.push(self.now, Kind::Arrival, n as u64);
    }

    fn repair(&mut self, slot: usize) {
        if !self.node_down[slot] {
            return;
        }
        let id = self.fleet.nodes[slot].id;
        self.fleet.allocator.set_schedulable(id, true);
        self.node_down[slot] = false;
        self.down_gpus -= u64::from(self.fleet.nodes[slot].gpus);
        self.free_cache = None;
        self.freed = true;
        if !self.outages.is_empty() {
            self.refill_pools();
        }
    }

    // --- months ---------------------------------------------------------------------

    fn meter_running(&mut self, until: i64) -> Result<(), SimError> {
        for j in 0..self.st.len() {
            if matches!(self.st[j].state, State::Running | State::Preempting) {
                self.meter(j, until)?;
            }
        }
        Ok(())
    }

    /// Closes a month at `at`: meters running work up to it, cuts open outages there, and
    /// bills every tenant with the production invoice builder.
    fn close_month(&mut self, month: Month, at: i64) -> Result<(), SimError> {
        self.meter_running(at)?;
        let open: Vec<usize> = (0..self.outages.len()).collect();
        for i in open {
            let o = Outage {
                contract: self.outages[i].contract,
                node: self.outages[i].node,
                start: self.outages[i].start,
                gpus: self.outages[i].gpus,
            };
            self.close_outage(&o);
            self.outages[i].start = at;
        }
        let records = std::mem::take(&mut self.month_records);
        for (t, spec) in self.sc.tenants.iter().enumerate() {
            let inv = build_invoice(
                self.tenant_ids[t],
                spec.internal,
                month,
                &self.terms,
                &records,
                &self.downtime,
                &SlaPolicy::default(),
            );
            if !inv.lines.is_empty() {
                self.invoices.push(inv);
            }
        }
        if self.sc.keep_ledger {
            self.ledger.extend(records);
        }
        Ok(())
    }

    fn close(&mut self, h: i64) -> Result<(), SimError> {
        let m = Month::containing(self.ts(h - 1));
        self.close_month(m, h)
    }

    /// Revenue of an invoice line kind, for reports.
    pub(crate) fn line_class(kind: LineKind) -> &'static str {
        match kind {
            LineKind::Commitment => "reserved",
            LineKind::OnDemand => "on-demand",
            LineKind::Spot => "spot",
            LineKind::SlaCredit => "sla-credit",
            LineKind::InternalChargeback => "internal-chargeback",
        }
    }
}

fn neocloud_fleet_build(sc: &Scenario, v: &Variant) -> Result<Fleet, SimError> {
    Fleet::build(&sc.fleet, v.fleet_policy, sc.placement, sc.shared_nodes)
        .map_err(|m| invalid("fleet", m))
}

/// The simulator sells by the service's rule ([`neocloud_allocator::selling`]): its
/// allocator, and its count of GPUs held by on-demand and internal work (which a placement
/// joins only when its job starts).
impl neocloud_allocator::selling::Seller for Engine<'_> {
    fn place(&mut self, req: &Request) -> Result<Allocation, Refusal> {
        self.fleet.allocator.place(req)
    }

    fn release(&mut self, id: InstanceId) {
        self.fleet.allocator.release(id);
    }

    fn sites_with(&self, model: &str) -> Vec<neocloud_types::SiteId> {
        let m = self.model_index(model);
        (0..self.fleet.sites.len())
            .filter(|s| self.fleet.pools.contains_key(&(*s, m)))
            .map(|s| self.fleet.sites[s].id)
            .collect()
    }

    fn check_sellable(&self, a: &Allocation) -> Result<(), Refusal> {
        let site = self.site_index(a.site);
        let model = self.model_index(&a.gpu_model);
        let sellable = self.sellable.get(&(site, model)).copied().unwrap_or(0);
        let key = self.cap_key(site, &a.gpu_model);
        let at = self.now * 1_000_000;
        let committed = u64::try_from(self.calendar.committed_peak(&key, at, at + 1)).unwrap_or(0);
        let held = self.sold.get(&(site, model)).copied().unwrap_or(0) + a.gpu_count();
        if neocloud_allocator::selling::within_sellable(held * 1000, committed, sellable) {
            Ok(())
        } else {
            Err(Refusal::NoCapacity {
                free_gpus: 0,
                reason: "the sellable capacity is taken by contracts and on-demand/internal work"
                    .to_string(),
            })
        }
    }
}
