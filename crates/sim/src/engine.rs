//! The discrete-event engine.
//!
//! Time is an integer count of simulated seconds; no wall clock is read. Events sit in a heap
//! ordered by (time, kind, sequence), and the requests to replay in a vector sorted by
//! arrival, so the order in which things happen is fully determined by the scenario and the
//! seed.
//!
//! Every scheduling decision is taken by the scheduler `serve` runs,
//! [`neocloud_scheduler::Scheduler`], driven with simulated time: an arrival is a
//! [`Command::Launch`], the end of a request's work a [`Command::Terminate`], a node failure
//! and its repair [`Command::Node`] changes, a contract of the variant a [`Command::Sign`] at
//! the start, and the scheduler's periodic work a [`Command::Tick`] whenever something is due
//! (a preemption notice runs out, a queued request's deadline passes, a contract starts or
//! ends) or a contract's pool lacks nodes. So the queue, preemption with notice, the sellable
//! cap, contract pools and their refill, and the remediation of failed pool nodes are
//! `serve`'s own. What the engine keeps is what `serve`'s database and billing would record
//! from the scheduler's effects: each request's state, its metered usage (every interval
//! rated by [`neocloud_billing::rate_interval`], every month billed by
//! [`neocloud_billing::build_invoice`]), pool outages for SLA credits, and the integrals and
//! counters of the report.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use neocloud_allocator::synthetic::{self, Rng};
use neocloud_allocator::{Allocation, Sharing};
use neocloud_billing::{
    ContractTerms, Downtime, Invoice, LineKind, Month, PriceKind, SlaPolicy, UsageInterval,
    UsageRecord, build_invoice, rate_interval, rate_interval_milli, spot_price,
};
use neocloud_scheduler::{Command, Effect, NodeChange, Refused, Scheduler, SchedulerConfig};
use neocloud_types::{
    Class, Contract, ContractId, ContractState, Instance, InstanceId, InstanceState, Money,
    NodeState, Shape, Timestamp,
};

use crate::demand::{self, Job};
use crate::error::{SimError, invalid};
use crate::fleet::Fleet;
use crate::report::{self, RunResult};
use crate::scenario::{ContractSpec, Scenario, Variant};

const HOUR: i64 = 3600;
const YEAR_S: f64 = 365.0 * 86_400.0;

/// Event kinds, in the order they are handled at one instant: releases first, so that
/// capacity freed at `t` is usable at `t`, then the scheduler's due work, node changes, the
/// month's close and the hourly sample, and arrivals last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Finish = 0,
    Due = 1,
    Repair = 2,
    Failure = 3,
    MonthEnd = 4,
    Hourly = 5,
    Arrival = 6,
}

/// Lifecycle of a request in the engine, as the scheduler's effects move it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    New,
    Queued,
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

/// A contract the scheduler was given.
struct ContractRun {
    id: ContractId,
    tenant: usize,
    site: usize,
    gpu_model: String,
    active: bool,
}

/// A pool outage the scheduler opened and has not closed yet.
struct Outage {
    contract: usize,
    start: i64,
    gpus: u32,
}

/// A Poisson process of node failures over some nodes.
struct FailGroup {
    /// Failures per node per year.
    afr: f64,
    /// The node slots it covers; `None`: every node of the fleet.
    slots: Option<Vec<usize>>,
    /// Its own random stream (`None`: the engine's, for the fleet-wide process).
    rng: Option<Rng>,
}

/// Repair events with a payload from here on are servicing missions to site `payload − SERVICE`.
const SERVICE: u64 = 1 << 40;

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
    /// Gangs that changed nodes after a failure (replaced, shrunk or left short).
    pub gang_repairs: u64,
    pub outages: u64,
    pub downtime_gpu_secs: i128,
    pub stranded_sum: BTreeMap<(usize, usize), f64>,
    pub samples_taken: u64,
    /// Allocated GPU-seconds per site.
    pub site_alloc_secs: Vec<i128>,
    /// GPU-seconds on failed or unpowered nodes per site.
    pub site_down_secs: Vec<i128>,
    /// The cumulative integrals at the close of every month, in order.
    pub marks: Vec<MonthMark>,
}

/// The cumulative integrals of a run at the close of a month.
#[derive(Clone, Debug)]
pub(crate) struct MonthMark {
    pub month: Month,
    /// Seconds after the start at which the month closed.
    pub at: i64,
    pub site_watt_secs: Vec<i128>,
    pub site_alloc_secs: Vec<i128>,
    pub site_down_secs: Vec<i128>,
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

/// A random delay in whole seconds, rounded up (saturating: `as` never wraps).
#[allow(
    clippy::cast_possible_truncation,
    reason = "a finite or infinite f64 saturates to i64; delays are far below i64::MAX"
)]
fn whole_seconds(x: f64) -> i64 {
    x.ceil() as i64
}

fn inst(j: usize) -> InstanceId {
    synthetic::instance_id(j as u64 + 1)
}

/// The scheduler's settings for a variant of a scenario. The scenario format asks for whole
/// GPUs and gangs only: parts of GPUs and CPU-only instances are not sold.
pub(crate) fn scheduler_config(sc: &Scenario, v: &Variant) -> SchedulerConfig {
    SchedulerConfig {
        fleet_policy: v.fleet_policy,
        placement: sc.placement,
        preemption_grace_secs: sc.preemption_grace_secs,
        spare_buffer_milli: sc.spare_buffer_milli,
        shared_nodes: sc.shared_nodes,
        sharing: Sharing {
            slices: false,
            tenants_per_gpu: false,
            cpu_only: false,
        },
        ..SchedulerConfig::default()
    }
}

pub(crate) struct Engine<'a> {
    pub sc: &'a Scenario,
    pub v: &'a Variant,
    pub seed: u64,
    pub fleet: Fleet,
    /// The scheduler `serve` runs, driven with simulated time.
    pub sched: Scheduler,
    pub jobs: Vec<Job>,
    st: Vec<JobState>,
    /// Requests the scheduler knows and that have not ended, by instance id.
    live: HashMap<InstanceId, u32>,
    /// The instance ids of those requests (building an id from a number is not free).
    ids: HashMap<u32, InstanceId>,
    heap: BinaryHeap<Reverse<(i64, Kind, u64, u64)>>,
    seq: u64,
    next_arrival: usize,
    /// Requests of the demand (later ones are relaunches).
    pub original_jobs: usize,
    pub now: i64,
    rng: Rng,
    /// A command changed the scheduler since its last tick.
    dirty: bool,
    last_tick: Option<i64>,
    alloc_by_class: [u64; 4],
    alloc_by_pool: BTreeMap<(usize, usize), u64>,
    min_node_gpus: Vec<u32>,
    contracts: Vec<ContractRun>,
    node_down: Vec<bool>,
    down_gpus: u64,
    /// GPUs on failed or unpowered nodes, per site.
    site_down_gpus: Vec<u64>,
    /// Nodes without power (an orbital site's array cannot carry them): never used.
    dark: Vec<bool>,
    /// Node failure processes: the fleet's, then one per site with a rate of its own.
    fail_groups: Vec<FailGroup>,
    outages: Vec<Outage>,
    pub downtime: Vec<Downtime>,
    pub spot_pools: Vec<(usize, usize)>,
    /// GPUs of each spot pool's site and model (the fleet does not change during a run).
    spot_pool_gpus: Vec<u64>,
    spot_series: Vec<Vec<(Timestamp, Money)>>,
    month_records: Vec<UsageRecord>,
    pub ledger: Vec<UsageRecord>,
    pub invoices: Vec<Invoice>,
    pub tally: Tally,
    pub series: Vec<Sample>,
    free_cache: Option<u64>,
    pub terms: Vec<ContractTerms>,
    pub tenant_ids: Vec<neocloud_types::TenantId>,
}

impl<'a> Engine<'a> {
    /// An engine for one run: the variant's demand under the seed, its contracts signed at
    /// the start, its failures drawn as it goes.
    pub(crate) fn new(sc: &'a Scenario, v: &'a Variant, seed: u64) -> Result<Self, SimError> {
        let jobs = demand::jobs(sc, v, &models_of(sc), seed);
        let mut e = Engine::with(sc, v, seed, scheduler_config(sc, v), jobs)?;
        e.schedule_static()?;
        Ok(e)
    }

    /// An engine with the given demand and scheduler settings, before anything happened: no
    /// contract signed, no event scheduled.
    pub(crate) fn with(
        sc: &'a Scenario,
        v: &'a Variant,
        seed: u64,
        config: SchedulerConfig,
        jobs: Vec<Job>,
    ) -> Result<Self, SimError> {
        let (fleet, snap) = Fleet::build(&sc.fleet, sc.start);
        let sched = Scheduler::new(config, snap).map_err(SimError::Scheduler)?;
        // As much room as the list of requests has, for the relaunches appended to both.
        let mut st = Vec::with_capacity(jobs.capacity());
        st.resize(jobs.len(), JobState::NEW);
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
        let n_nodes = fleet.nodes.len();
        let n_sites = fleet.sites.len();
        let mut e = Engine {
            sc,
            v,
            seed,
            jobs,
            st,
            live: HashMap::new(),
            ids: HashMap::new(),
            heap: BinaryHeap::new(),
            seq: 0,
            next_arrival: 0,
            original_jobs: 0,
            now: 0,
            rng: demand::stream(seed, 0),
            dirty: false,
            last_tick: None,
            alloc_by_class: [0; 4],
            alloc_by_pool: BTreeMap::new(),
            min_node_gpus,
            contracts: Vec::new(),
            node_down: vec![false; n_nodes],
            down_gpus: 0,
            site_down_gpus: vec![0; n_sites],
            dark: vec![false; n_nodes],
            fail_groups: Vec::new(),
            outages: Vec::new(),
            downtime: Vec::new(),
            spot_series: vec![Vec::new(); spot_pools.len()],
            spot_pool_gpus: spot_pools
                .iter()
                .map(|&(s, m)| fleet.gpus_of(s, m))
                .collect(),
            spot_pools,
            month_records: Vec::new(),
            ledger: Vec::new(),
            invoices: Vec::new(),
            tally: Tally {
                site_watt_secs: vec![0; n_sites],
                site_peak_watts: vec![0; n_sites],
                site_alloc_secs: vec![0; n_sites],
                site_down_secs: vec![0; n_sites],
                ..Tally::default()
            },
            series: Vec::new(),
            free_cache: None,
            terms: Vec::new(),
            tenant_ids,
            fleet,
            sched,
        };
        e.original_jobs = e.jobs.len();
        Ok(e)
    }

    fn push(&mut self, t: i64, kind: Kind, payload: u64) {
        self.seq += 1;
        self.heap.push(Reverse((t, kind, self.seq, payload)));
    }

    /// Signs the variant's contracts and schedules what is known in advance: contract starts
    /// and ends, month ends, the hourly sample, the first failure.
    fn schedule_static(&mut self) -> Result<(), SimError> {
        let h = self.sc.horizon_secs;
        for (i, c) in self.v.contracts.iter().enumerate() {
            self.sign(c)
                .map_err(|m| invalid(format!("variant '{}': contracts[{i}]", self.v.name), m))?;
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
            self.push(t, Kind::Hourly, 0);
            t += HOUR;
        }
        self.power_down_dark_nodes()?;
        self.build_fail_groups();
        for g in 0..self.fail_groups.len() {
            self.schedule_failure(g);
        }
        for (s, plan) in self.sc.sites.iter().enumerate() {
            for &at in &plan.servicing_secs {
                self.push(at, Kind::Repair, SERVICE + s as u64);
            }
        }
        Ok(())
    }

    /// Cordons, from the start, the nodes a solar-powered site cannot power: its last nodes
    /// in file order beyond what the sustained power carries at their peak draw.
    fn power_down_dark_nodes(&mut self) -> Result<(), SimError> {
        for (s, plan) in self.sc.sites.iter().enumerate() {
            let Some(watts) = plan.powered_watts else {
                continue;
            };
            let pue = i128::from(self.sc.fleet.sites[s].pue_milli);
            let mut used = 0i128;
            let slots: Vec<usize> = (0..self.fleet.nodes.len())
                .filter(|&i| self.fleet.nodes[i].site == s)
                .collect();
            let peaks: Vec<i128> = self.sc.fleet.sites[s]
                .nodes
                .iter()
                .map(|n| i128::from(n.peak_watts) * pue / 1000)
                .collect();
            for (k, slot) in slots.into_iter().enumerate() {
                used += peaks.get(k).copied().unwrap_or(0);
                if used <= i128::from(watts) {
                    continue;
                }
                let id = self.fleet.nodes[slot].id;
                self.apply_ok(Command::Node(NodeChange {
                    node: id,
                    from: None,
                    to: NodeState::Cordoned,
                    at: self.ts(self.now),
                    reason: "no power".to_string(),
                    heal: false,
                    gpus: Vec::new(),
                }))?;
                self.dark[slot] = true;
                let g = u64::from(self.fleet.nodes[slot].gpus);
                self.down_gpus += g;
                self.site_down_gpus[s] += g;
            }
        }
        self.free_cache = None;
        Ok(())
    }

    /// The fleet-wide failure process covers the sites without a rate of their own (with
    /// none, every node, from the engine's stream as it always did); each site with its own
    /// rate gets its own process and stream.
    fn build_fail_groups(&mut self) {
        let own: Vec<usize> = (0..self.sc.sites.len())
            .filter(|&s| self.sc.sites[s].node_afr.is_some())
            .collect();
        let slots = if own.is_empty() {
            None
        } else {
            Some(
                (0..self.fleet.nodes.len())
                    .filter(|&i| !own.contains(&self.fleet.nodes[i].site))
                    .collect(),
            )
        };
        self.fail_groups.push(FailGroup {
            afr: self.v.failures.node_afr,
            slots,
            rng: None,
        });
        for s in own {
            self.fail_groups.push(FailGroup {
                afr: self.sc.sites[s].node_afr.unwrap_or(0.0),
                slots: Some(
                    (0..self.fleet.nodes.len())
                        .filter(|&i| self.fleet.nodes[i].site == s)
                        .collect(),
                ),
                rng: Some(demand::stream(self.seed, 0x0b17_0000 + s as u64)),
            });
        }
    }

    fn group_draw(&mut self, g: usize, f: impl FnOnce(&mut Rng) -> u64) -> u64 {
        match &mut self.fail_groups[g].rng {
            Some(r) => f(r),
            None => f(&mut self.rng),
        }
    }

    fn secs_of(&self, t: Timestamp) -> i64 {
        (t.micros() - self.sc.start.micros()).div_euclid(1_000_000)
    }

    fn ts(&self, t: i64) -> Timestamp {
        self.sc.start.plus_seconds(t)
    }

    fn site_index(&self, id: neocloud_types::SiteId) -> usize {
        self.fleet
            .sites
            .iter()
            .position(|s| s.id == id)
            .unwrap_or(0)
    }

    fn schedule_failure(&mut self, g: usize) {
        let grp = &self.fail_groups[g];
        let n = grp.slots.as_ref().map_or(self.fleet.nodes.len(), Vec::len);
        if grp.afr <= 0.0 || n == 0 {
            return;
        }
        let rate = n as f64 * grp.afr / YEAR_S;
        let gap = self.group_draw(g, |r| {
            whole_seconds(r.exp(1.0 / rate)).max(1).unsigned_abs()
        });
        let t = self
            .now
            .saturating_add(i64::try_from(gap).unwrap_or(i64::MAX));
        if t < self.sc.horizon_secs {
            self.push(t, Kind::Failure, g as u64);
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
                (None, None) => None,
                (Some(a), None) => Some(a),
                (None, Some(b)) => Some(b),
                (Some(a), Some(b)) => Some(a.min(b)),
            };
            let at = next.map_or(h, |n| n.0.min(h));
            if at > self.now {
                // The instant is over: a pool that lacks nodes is refilled now, as `serve`'s
                // next tick would; what that schedules is looked at again.
                if self.end_of_step()? {
                    continue;
                }
                if at >= h {
                    break;
                }
                self.advance(at);
            }
            let Some(next) = next else {
                break;
            };
            if next.0 >= h {
                break;
            }
            if next.1 == Kind::Arrival && arr_next == Some(next) {
                let j = self.next_arrival;
                self.next_arrival += 1;
                self.arrival(j)?;
            } else if let Some(Reverse((_, kind, _, payload))) = self.heap.pop() {
                self.handle(kind, payload, progress)?;
            }
        }
        self.advance(h);
        self.close(h)?;
        progress(1.0);
        Ok(report::build(self))
    }

    /// Ticks the scheduler at the end of an instant when a contract's pool lacks nodes and
    /// something changed since its last tick. Returns whether it ticked.
    fn end_of_step(&mut self) -> Result<bool, SimError> {
        if self.dirty && self.sched.pools_short() {
            self.tick()?;
            return Ok(true);
        }
        Ok(false)
    }

    fn free_total(&mut self) -> u64 {
        if let Some(f) = self.free_cache {
            return f;
        }
        let f = self.sched.alloc().free_gpus_all();
        self.free_cache = Some(f);
        f
    }

    /// Integrates the state over `[now, t)` and moves the clock.
    pub(crate) fn advance(&mut self, t: i64) {
        let dt = i128::from(t - self.now);
        if dt > 0 {
            for c in 0..4 {
                self.tally.alloc_secs[c] += i128::from(self.alloc_by_class[c]) * dt;
            }
            let free = self.free_total();
            self.tally.free_secs += i128::from(free) * dt;
            self.tally.down_secs += i128::from(self.down_gpus) * dt;
            for (&(site, _), &g) in &self.alloc_by_pool {
                self.tally.site_alloc_secs[site] += i128::from(g) * dt;
            }
            for (s, &g) in self.site_down_gpus.iter().enumerate() {
                self.tally.site_down_secs[s] += i128::from(g) * dt;
            }
            for s in 0..self.fleet.sites.len() {
                let w = self
                    .sched
                    .alloc()
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
            Kind::Finish => self.finish(p)?,
            Kind::Due => {
                if self.dirty || self.last_tick != Some(self.now) {
                    self.tick()?;
                }
            }
            Kind::Repair if payload >= SERVICE => {
                let site = usize::try_from(payload - SERVICE).unwrap_or(usize::MAX);
                for slot in 0..self.fleet.nodes.len() {
                    if self.fleet.nodes[slot].site == site && self.node_down[slot] {
                        self.repair(slot)?;
                    }
                }
            }
            Kind::Repair => self.repair(p)?,
            Kind::Failure => {
                let g = p.min(self.fail_groups.len().saturating_sub(1));
                let n = match &self.fail_groups[g].slots {
                    Some(s) => s.len(),
                    None => self.fleet.nodes.len(),
                } as u64;
                let k = usize::try_from(self.group_draw(g, |r| r.below(n))).unwrap_or(0);
                let slot = match &self.fail_groups[g].slots {
                    Some(s) => s[k],
                    None => k,
                };
                if !self.node_down[slot] && !self.dark[slot] {
                    self.fail_node(slot)?;
                    if self.sc.sites[self.fleet.nodes[slot].site].repair {
                        let hours = self.v.failures.repair_hours;
                        let repair = self.group_draw(g, |r| {
                            whole_seconds(r.exp(hours * 3600.0)).max(1).unsigned_abs()
                        });
                        let repair = i64::try_from(repair).unwrap_or(i64::MAX);
                        self.push(self.now.saturating_add(repair), Kind::Repair, slot as u64);
                    }
                }
                self.schedule_failure(g);
            }
            Kind::MonthEnd => {
                let m = Month::containing(self.ts(self.now - 1));
                self.close_month(m, self.now)?;
            }
            Kind::Hourly => {
                self.hourly();
                progress(self.now as f64 / self.sc.horizon_secs as f64);
            }
            Kind::Arrival => self.arrival(p)?,
        }
        Ok(())
    }

    // --- commands -------------------------------------------------------------------

    /// Applies a command to the scheduler now and records its effects. A refusal changed
    /// nothing and is returned.
    fn apply(&mut self, cmd: Command) -> Result<Result<(), Refused>, SimError> {
        let tick = matches!(cmd, Command::Tick);
        let fx = match self.sched.apply(cmd, self.ts(self.now)) {
            Ok(fx) => fx,
            Err(r) => return Ok(Err(r)),
        };
        if tick {
            self.dirty = false;
            self.last_tick = Some(self.now);
        } else {
            self.dirty = true;
        }
        self.absorb(fx)?;
        Ok(Ok(()))
    }

    /// Applies a command the scheduler must accept.
    fn apply_ok(&mut self, cmd: Command) -> Result<(), SimError> {
        self.apply(cmd)?
            .map_err(|r| SimError::Scheduler(r.to_string()))
    }

    /// The scheduler's periodic work, now.
    pub(crate) fn tick(&mut self) -> Result<(), SimError> {
        self.apply_ok(Command::Tick)
    }

    /// Signs a contract now (its promise enters the calendar; one that has started gets its
    /// pool). Returns its index, or why it does not fit.
    pub(crate) fn sign(&mut self, c: &ContractSpec) -> Result<usize, String> {
        let i = self.contracts.len();
        let id = synthetic::contract_id(i as u64 + 1);
        let tenant = self.tenant_ids[c.tenant];
        let site = self.fleet.sites[c.site].id;
        let start = self.sc.start.plus_seconds(c.start);
        let end = self.sc.start.plus_seconds(c.end);
        let horizon_end = self.sc.start.plus_seconds(self.sc.horizon_secs);
        let contract = Contract {
            id,
            tenant_id: tenant,
            gpu_model: c.gpu_model.clone(),
            gpu_count: c.gpus,
            site_id: site,
            single_block: None,
            start_at: start,
            end_at: end,
            price_per_gpu_hour: c.rate,
            sla_percent: format!("{}.{:03}", c.sla_milli / 1000, c.sla_milli % 1000),
            state: ContractState::Signed,
            total_value: Money::ZERO,
            created_at: self.ts(self.now),
            updated_at: self.ts(self.now),
        };
        self.contracts.push(ContractRun {
            id,
            tenant: c.tenant,
            site: c.site,
            gpu_model: c.gpu_model.clone(),
            active: false,
        });
        match self.apply(Command::Sign(contract)) {
            Ok(Ok(())) => {}
            Ok(Err(r)) => {
                self.contracts.pop();
                return Err(r.to_string());
            }
            Err(e) => return Err(e.to_string()),
        }
        self.terms.push(ContractTerms {
            id,
            tenant,
            gpu_model: c.gpu_model.clone(),
            site,
            gpus: c.gpus,
            // Billed inside the simulated window only.
            start: self.sc.start.plus_seconds(c.start.max(0)),
            end: end.min(horizon_end),
            rate: c.rate,
            sla_milli: c.sla_milli,
        });
        // The scheduler starts and ends contracts on its ticks.
        let h = self.sc.horizon_secs;
        if c.start > self.now && c.start < h {
            self.push(c.start, Kind::Due, 0);
        }
        if c.end < h {
            self.push(c.end.max(self.now), Kind::Due, 0);
        }
        Ok(i)
    }

    /// The contract a reserved request runs in: an active one of its tenant, model and
    /// (when it names one) site.
    fn pool_for(&self, j: usize) -> Option<u32> {
        let job = &self.jobs[j];
        let model = &self.fleet.models[job.model as usize];
        self.contracts
            .iter()
            .position(|c| {
                c.active
                    && c.tenant == job.tenant as usize
                    && &c.gpu_model == model
                    && job.site.is_none_or(|s| s as usize == c.site)
            })
            .and_then(|i| u32::try_from(i).ok())
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

    /// A request arrives: it is launched the way the API launches it.
    pub(crate) fn arrival(&mut self, j: usize) -> Result<(), SimError> {
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
        let job = &self.jobs[j];
        let deadline = job.arrival.saturating_add(job.max_wait);
        let now = self.ts(self.now);
        let inst = Instance {
            id: inst(j),
            tenant_id: self.tenant_ids[job.tenant as usize],
            name: None,
            class,
            gpu_model: self.fleet.models[job.model as usize].clone(),
            gpu_models: Vec::new(),
            shape: job.shape,
            gpu_count: 0,
            cpu_milli: None,
            memory_mib: None,
            requested_site_id: job.site.map(|s| self.fleet.sites[s as usize].id),
            site_id: None,
            contract_id: pool.map(|c| self.contracts[c as usize].id),
            state: InstanceState::Pending,
            reason: None,
            placement: Default::default(),
            placement_summary: None,
            created_at: now,
            started_at: None,
            ended_at: None,
            preempt_at: None,
            wait_until: (deadline > self.now).then(|| self.ts(deadline)),
            delivery: None,
            ssh_key_names: Vec::new(),
            authorized_keys: Vec::new(),
            access: None,
            ends_as: None,
            on_node_failure: neocloud_types::NodeFailurePolicy::default_for(&job.shape),
        };
        let id = inst.id;
        let n = u32::try_from(j).unwrap_or(u32::MAX);
        self.live.insert(id, n);
        self.ids.insert(n, id);
        if self.apply(Command::Launch(inst))?.is_err() {
            self.live.remove(&id);
            self.ids.remove(&n);
            self.st[j].state = State::Refused;
            self.count_refused(j, false);
        }
        Ok(())
    }

    /// A request's work is done: it is terminated, if it still runs.
    pub(crate) fn finish(&mut self, j: usize) -> Result<(), SimError> {
        if matches!(self.st[j].state, State::Running | State::Preempting)
            && let Some(&id) = u32::try_from(j).ok().and_then(|n| self.ids.get(&n))
        {
            self.apply_ok(Command::Terminate { id })?;
        }
        Ok(())
    }

    /// Appends a request (a relaunch, or one a test builds) and returns its index.
    pub(crate) fn add_job(&mut self, job: Job) -> usize {
        self.jobs.push(job);
        self.st.push(JobState::NEW);
        self.jobs.len() - 1
    }

    // --- effects --------------------------------------------------------------------

    fn job_of(&self, id: InstanceId) -> Option<usize> {
        self.live.get(&id).map(|&j| j as usize)
    }

    /// Records what the scheduler decided, as `serve`'s writer and billing would.
    fn absorb(&mut self, fx: Vec<Effect>) -> Result<(), SimError> {
        for e in fx {
            match e {
                Effect::Insert {
                    inst,
                    alloc: Some(a),
                } => self.started(&inst, &a),
                Effect::Insert { inst, alloc: None } => {
                    if let Some(j) = self.job_of(inst.id) {
                        self.st[j].state = State::Queued;
                    }
                    if let Some(w) = inst.wait_until {
                        let t = self.secs_of(w);
                        self.push(t, Kind::Due, 0);
                    }
                }
                Effect::Start { after, alloc, .. } => self.started(&after, &alloc),
                Effect::Update {
                    before,
                    after,
                    meter_until,
                    ..
                } => self.updated(&before, &after, meter_until)?,
                Effect::ContractState { before, state, .. } => {
                    let Some(c) = self.contracts.iter().position(|x| x.id == before.id) else {
                        continue;
                    };
                    self.contracts[c].active = state == ContractState::Active;
                    if matches!(state, ContractState::Ended | ContractState::Cancelled) {
                        let (mine, rest) = std::mem::take(&mut self.outages)
                            .into_iter()
                            .partition(|o| o.contract == c);
                        self.outages = rest;
                        let now = self.now;
                        for o in mine {
                            self.close_outage(&o, now);
                        }
                    }
                }
                Effect::OutageOpen {
                    contract, gpus, at, ..
                } => {
                    if let Some(c) = self.contracts.iter().position(|x| x.id == contract) {
                        self.tally.outages += 1;
                        let start = self.secs_of(at);
                        self.outages.push(Outage {
                            contract: c,
                            start,
                            gpus,
                        });
                    }
                }
                Effect::OutageClose { contract, at, .. } => {
                    // The oldest open outage of the contract closes.
                    let c = self.contracts.iter().position(|x| x.id == contract);
                    if let Some(i) = self.outages.iter().position(|o| Some(o.contract) == c) {
                        let o = self.outages.remove(i);
                        let end = self.secs_of(at);
                        self.close_outage(&o, end);
                    }
                }
                Effect::Reshape { after, meter, .. } => self.reshaped(&after, &meter)?,
                Effect::Pool { .. }
                | Effect::ContractInsert(_)
                | Effect::Event(_)
                | Effect::Warning(_) => {}
            }
        }
        self.free_cache = None;
        Ok(())
    }

    /// A request starts running on `a`.
    fn started(&mut self, i: &Instance, a: &Allocation) {
        let Some(j) = self.job_of(i.id) else {
            return;
        };
        let site = self.site_index(a.site);
        let model = self.jobs[j].model as usize;
        let gpus = i.gpu_count;
        let c = class_index(self.jobs[j].class);
        self.alloc_by_class[c] += u64::from(gpus);
        *self.alloc_by_pool.entry((site, model)).or_default() += u64::from(gpus);
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
        let end = self.now.saturating_add(self.jobs[j].duration);
        self.push(end, Kind::Finish, j as u64);
    }

    /// A running gang changed nodes after a failure: what it ran is metered piece by piece
    /// and it holds its new GPU count from now on.
    fn reshaped(&mut self, after: &Instance, meter: &[(u32, Timestamp)]) -> Result<(), SimError> {
        let Some(j) = self.job_of(after.id) else {
            return Ok(());
        };
        self.release(j);
        for &(gpus, until) in meter {
            self.st[j].gpus = gpus;
            let t = self.secs_of(until);
            self.meter(j, after.id, t)?;
        }
        let gpus = after.gpu_count;
        self.st[j].gpus = gpus;
        let c = class_index(self.jobs[j].class);
        let model = self.jobs[j].model as usize;
        let site = self.st[j].site as usize;
        self.alloc_by_class[c] += u64::from(gpus);
        *self.alloc_by_pool.entry((site, model)).or_default() += u64::from(gpus);
        self.tally.gang_repairs += 1;
        Ok(())
    }

    /// A request changed state other than by starting: a notice, or its end.
    fn updated(
        &mut self,
        before: &Instance,
        after: &Instance,
        meter_until: Option<Timestamp>,
    ) -> Result<(), SimError> {
        let Some(j) = self.job_of(after.id) else {
            return Ok(());
        };
        if after.state == InstanceState::Preempting {
            self.st[j].state = State::Preempting;
            if let Some(t) = after.preempt_at {
                let t = self.secs_of(t);
                self.push(t, Kind::Due, 0);
            }
            return Ok(());
        }
        if !after.state.is_final() {
            return Ok(());
        }
        if let Some(n) = self.live.remove(&after.id) {
            self.ids.remove(&n);
        }
        let held = before.state.holds_gpus();
        if held {
            let until = meter_until.map_or(self.now, |t| self.secs_of(t));
            self.meter(j, after.id, until)?;
            self.release(j);
        }
        let c = class_index(self.jobs[j].class);
        self.st[j].state = match (after.state, held) {
            (InstanceState::Preempted, _) => {
                self.tally.classes[c].preempted += 1;
                self.tally.classes[c].preempted_gpus += u64::from(self.st[j].gpus);
                State::Preempted
            }
            (InstanceState::Failed, true) => {
                self.tally.classes[c].interrupted_by_failure += 1;
                self.relaunch(j);
                State::Failed
            }
            (_, true) => State::Done,
            // Waited and never ran: its deadline passed, or its contract ended.
            (_, false) => {
                self.count_refused(j, true);
                State::Expired
            }
        };
        Ok(())
    }

    fn release(&mut self, j: usize) {
        let s = self.st[j];
        let c = class_index(self.jobs[j].class);
        let model = self.jobs[j].model as usize;
        self.alloc_by_class[c] -= u64::from(s.gpus);
        if let Some(x) = self.alloc_by_pool.get_mut(&(s.site as usize, model)) {
            *x -= u64::from(s.gpus);
        }
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

    /// Rates `[metered_from, until)` of a running request with the production billing code
    /// (a part of a GPU at its part of a GPU-hour, as `serve` meters it).
    fn meter(&mut self, j: usize, id: InstanceId, until: i64) -> Result<(), SimError> {
        let s = self.st[j];
        if until <= s.metered_from || s.gpus == 0 {
            return Ok(());
        }
        let job = &self.jobs[j];
        let iv = UsageInterval {
            instance: id,
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
        let records = if job.shape.is_slice() {
            rate_interval_milli(&iv, job.shape.gpu_milli(s.gpus), &self.sc.prices, spot)?
        } else {
            rate_interval(&iv, &self.sc.prices, spot)?
        };
        let c = class_index(job.class);
        for r in &records {
            self.tally.ledger_gpu_secs[c] += i128::from(r.gpu_seconds);
        }
        self.month_records.extend(records);
        self.st[j].metered_from = until;
        Ok(())
    }

    pub(crate) fn hourly(&mut self) {
        // Spot prices, once an hour per pool, from the pool's utilization.
        for p in 0..self.spot_pools.len() {
            let (site, model) = self.spot_pools[p];
            let total = self.spot_pool_gpus[p].max(1);
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
            .map(|s| self.sched.alloc().site_power(s.id).allocated_watts as f64 / 1e6)
            .collect();
        let spot_price = self
            .spot_series
            .iter()
            .map(|s| s.last().map_or(Money::ZERO, |x| x.1))
            .collect();
        let mut stranded = Vec::new();
        for &(site, model) in self.fleet.pools.keys() {
            let f = self
                .sched
                .alloc()
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
            queued: self.sched.queue_len() as u64,
            power_mw,
            spot_price,
            stranded,
        });
    }

    // --- outages --------------------------------------------------------------------

    fn close_outage(&mut self, o: &Outage, end: i64) {
        if end > o.start {
            self.tally.downtime_gpu_secs += i128::from(o.gpus) * i128::from(end - o.start);
            self.downtime.push(Downtime {
                contract: self.contracts[o.contract].id,
                start: self.ts(o.start),
                end: self.ts(end),
                gpus: o.gpus,
            });
        }
    }

    // --- failures -------------------------------------------------------------------

    /// A node fails now: the scheduler ends its work and remediates its pool.
    pub(crate) fn fail_node(&mut self, slot: usize) -> Result<(), SimError> {
        self.tally.node_failures += 1;
        let id = self.fleet.nodes[slot].id;
        self.apply_ok(Command::Node(NodeChange {
            node: id,
            from: None,
            to: NodeState::Failed,
            at: self.ts(self.now),
            reason: "simulated failure".to_string(),
            heal: false,
            gpus: Vec::new(),
        }))?;
        self.node_down[slot] = true;
        self.down_gpus += u64::from(self.fleet.nodes[slot].gpus);
        self.site_down_gpus[self.fleet.nodes[slot].site] += u64::from(self.fleet.nodes[slot].gpus);
        self.free_cache = None;
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
        let n = self.add_job(again);
        self.tally.classes[class_index(self.jobs[j].class)].relaunched += 1;
        self.push(self.now, Kind::Arrival, n as u64);
    }

    /// A failed node is repaired now: back in service, every GPU healthy.
    pub(crate) fn repair(&mut self, slot: usize) -> Result<(), SimError> {
        if !self.node_down[slot] {
            return Ok(());
        }
        let id = self.fleet.nodes[slot].id;
        self.apply_ok(Command::Node(NodeChange {
            node: id,
            from: Some(NodeState::Failed),
            to: NodeState::Available,
            at: self.ts(self.now),
            reason: "simulated repair".to_string(),
            heal: true,
            gpus: Vec::new(),
        }))?;
        self.node_down[slot] = false;
        self.down_gpus -= u64::from(self.fleet.nodes[slot].gpus);
        self.site_down_gpus[self.fleet.nodes[slot].site] -= u64::from(self.fleet.nodes[slot].gpus);
        self.free_cache = None;
        Ok(())
    }

    // --- months ---------------------------------------------------------------------

    /// Meters every running request up to `until`, in request order.
    pub(crate) fn meter_running(&mut self, until: i64) -> Result<(), SimError> {
        let mut running: Vec<(usize, InstanceId)> = self
            .live
            .iter()
            .map(|(&id, &j)| (j as usize, id))
            .filter(|&(j, _)| matches!(self.st[j].state, State::Running | State::Preempting))
            .collect();
        running.sort_unstable();
        for (j, id) in running {
            self.meter(j, id, until)?;
        }
        Ok(())
    }

    /// Closes a month at `at`: meters running work up to it, cuts open outages there, and
    /// bills every tenant with the production invoice builder.
    fn close_month(&mut self, month: Month, at: i64) -> Result<(), SimError> {
        self.meter_running(at)?;
        for i in 0..self.outages.len() {
            let o = Outage {
                contract: self.outages[i].contract,
                start: self.outages[i].start,
                gpus: self.outages[i].gpus,
            };
            self.close_outage(&o, at);
            self.outages[i].start = at;
        }
        for (t, spec) in self.sc.tenants.iter().enumerate() {
            let inv = build_invoice(
                self.tenant_ids[t],
                spec.internal,
                month,
                &self.terms,
                &self.month_records,
                &self.downtime,
                &SlaPolicy::default(),
            );
            if !inv.lines.is_empty() {
                self.invoices.push(inv);
            }
        }
        // The month's buffer keeps its memory for the next month: growing it again from
        // nothing every month had the kernel hand out (and zero) fresh pages each time.
        if self.sc.keep_ledger {
            self.ledger.append(&mut self.month_records);
        } else {
            self.month_records.clear();
        }
        self.tally.marks.push(MonthMark {
            month,
            at,
            site_watt_secs: self.tally.site_watt_secs.clone(),
            site_alloc_secs: self.tally.site_alloc_secs.clone(),
            site_down_secs: self.tally.site_down_secs.clone(),
        });
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

/// What the differential tests and [`crate::Stepper`] read and do besides a whole run.
impl Engine<'_> {
    /// Cancels a signed contract now: its reserved work ends and its pool is unpinned.
    pub(crate) fn cancel(&mut self, c: usize) -> Result<Result<(), Refused>, SimError> {
        let id = self.contracts[c].id;
        self.apply(Command::Cancel { id })
    }

    /// Where request `j` stands.
    pub(crate) fn job_state(&self, j: usize) -> State {
        self.st[j].state
    }

    /// Usage metered since the last month's close.
    pub(crate) fn usage(&self) -> &[UsageRecord] {
        &self.month_records
    }
}

/// The GPU models of a scenario's fleet, sorted (the fleet's model indexes).
fn models_of(sc: &Scenario) -> Vec<String> {
    let mut models: Vec<String> = sc
        .fleet
        .sites
        .iter()
        .flat_map(|s| s.nodes.iter().map(|n| n.gpu_model.clone()))
        .collect();
    models.sort();
    models.dedup();
    models
}
