//! A differential test of the simulator against `serve`'s use of the scheduler.
//!
//! A seeded random stream of commands (launches of every class and shape, whole GPUs, gangs,
//! shares and MIG instances among them; terminates; contract signs and cancels; node
//! failures and repairs; time passing with the scheduler's ticks) is fed to the simulator's
//! engine and, the way `serve` feeds it, straight to a fresh [`Scheduler`] whose effects are
//! recorded as `serve`'s writer and billing record them: instance rows, and usage metered
//! when an instance stops holding GPUs. Both sides must agree all along on placements,
//! instance states and the queue, and at the end on the metered usage.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use neocloud_allocator::synthetic::{self, Rng};
use neocloud_billing::{
    PriceBook, PriceKind, UsageInterval, UsageRecord, rate_interval, rate_interval_milli,
};
use neocloud_scheduler::{Command, Effect, NodeChange, Refused, Scheduler};
use neocloud_types::{
    Class, Contract, ContractState, Instance, InstanceId, InstanceState, Money, NodeState, Shape,
    Timestamp,
};

use crate::demand::Job;
use crate::engine::{Engine, State, scheduler_config};
use crate::fleet::{Fleet, site_id};
use crate::scenario::{ContractSpec, Scenario};

/// `serve`'s side: the scheduler, and what its database and billing would hold.
struct Serve {
    sched: Scheduler,
    /// Instance rows as the writer records them.
    rows: BTreeMap<InstanceId, Instance>,
    /// How far each instance is metered.
    metered: HashMap<InstanceId, Timestamp>,
    ledger: Vec<UsageRecord>,
    /// Contracts in the order they were signed, and whether each is active now.
    contracts: Vec<(Contract, bool)>,
    book: PriceBook,
    start: Timestamp,
}

impl Serve {
    /// Applies a command at `now` and records its effects.
    fn apply(&mut self, cmd: Command, now: Timestamp) -> Result<(), Refused> {
        for fx in self.sched.apply(cmd, now)? {
            match fx {
                Effect::Insert { inst, .. } => {
                    self.rows.insert(inst.id, inst);
                }
                Effect::Start { after, .. } => {
                    self.rows.insert(after.id, after);
                }
                Effect::Update {
                    after, meter_until, ..
                } => {
                    if let Some(until) = meter_until {
                        self.meter(&after, until);
                    }
                    self.rows.insert(after.id, after);
                }
                Effect::Reshape {
                    before,
                    after,
                    meter,
                    ..
                } => {
                    for (gpus, until) in meter {
                        let piece = Instance {
                            gpu_count: gpus,
                            ..before.clone()
                        };
                        self.meter(&piece, until);
                    }
                    self.rows.insert(after.id, after);
                }
                Effect::ContractState { before, state, .. } => {
                    for (c, active) in &mut self.contracts {
                        if c.id == before.id {
                            *active = state == ContractState::Active;
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Meters an instance up to `until`, as `serve`'s billing does: from where it was
    /// metered last (or its start), never past its end; spot at the floor of the book.
    fn meter(&mut self, inst: &Instance, until: Timestamp) {
        let metered = self.metered.get(&inst.id).copied();
        let Some(iv) = UsageInterval::of_instance(inst, metered, until) else {
            return;
        };
        let spot: Vec<(Timestamp, Money)> = if inst.class == Class::Spot {
            let floor = self
                .book
                .price_at(&inst.gpu_model, iv.site, PriceKind::SpotFloor, self.start)
                .unwrap();
            vec![(self.start, floor)]
        } else {
            Vec::new()
        };
        let records = if inst.shape.is_slice() {
            let milli = inst.shape.gpu_milli(inst.gpu_count);
            rate_interval_milli(&iv, milli, &self.book, &spot).unwrap()
        } else {
            rate_interval(&iv, &self.book, &spot).unwrap()
        };
        self.ledger.extend(records);
        self.metered.insert(inst.id, iv.end);
    }

    /// The contract a reserved launch names: the first active one of its tenant, model and
    /// (when the request names one) site.
    fn contract_for(
        &self,
        tenant: neocloud_types::TenantId,
        model: &str,
        site: Option<neocloud_types::SiteId>,
    ) -> Option<neocloud_types::ContractId> {
        self.contracts
            .iter()
            .find(|(c, active)| {
                *active
                    && c.tenant_id == tenant
                    && c.gpu_model == model
                    && site.is_none_or(|s| s == c.site_id)
            })
            .map(|(c, _)| c.id)
    }
}

/// The state a request should have in the engine, given its row in `serve`.
fn expected_state(row: &Instance) -> State {
    let ran = row.started_at.is_some();
    match row.state {
        InstanceState::Pending => State::Queued,
        InstanceState::Running => State::Running,
        InstanceState::Preempting => State::Preempting,
        InstanceState::Preempted => State::Preempted,
        InstanceState::Terminated if ran => State::Done,
        InstanceState::Failed if ran => State::Failed,
        InstanceState::Terminated | InstanceState::Failed => State::Expired,
        other => panic!("{}: {other} is not a state the simulator reaches", row.id),
    }
}

/// An instance as both sides must show it. A contract's pool takes nodes from other work
/// in the name of a probe with a fresh id, which the notice's reason names: that id is left
/// out.
fn comparable(i: &Instance) -> Instance {
    let mut i = i.clone();
    if let Some(r) = &i.reason
        && r.starts_with("preempted for ")
        && let Some((_, rest)) = r.split_once("; ")
    {
        i.reason = Some(format!("preempted; {rest}"));
    }
    i
}

/// Both sides agree on allocations, live instances, the queue and every request's state.
fn check(e: &Engine<'_>, serve: &Serve, jobs: &[(usize, InstanceId)], ctx: &str) {
    assert_eq!(
        e.sched.fingerprint(),
        serve.sched.fingerprint(),
        "{ctx}: allocations"
    );
    let mut sim: Vec<Instance> = e.sched.live().map(comparable).collect();
    let mut srv: Vec<Instance> = serve.sched.live().map(comparable).collect();
    sim.sort_by_key(|i| i.id);
    srv.sort_by_key(|i| i.id);
    assert_eq!(sim, srv, "{ctx}: live instances");
    for i in serve.sched.live() {
        assert_eq!(Some(i), serve.rows.get(&i.id), "{ctx}: the row of {}", i.id);
    }
    assert_eq!(
        e.sched.queued().collect::<Vec<_>>(),
        serve.sched.queued().collect::<Vec<_>>(),
        "{ctx}: queue"
    );
    for &(j, id) in jobs {
        let want = serve.rows.get(&id).map_or(State::Refused, expected_state);
        assert_eq!(e.job_state(j), want, "{ctx}: request {j} ({id})");
    }
}

/// One seed's stream: `steps` commands, checked every few steps and at the end.
fn differential(seed: u64, steps: usize) -> Coverage {
    let sc = Scenario::load(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join("small.toml"),
    )
    .unwrap();
    let v = sc.variant("keep").unwrap();
    // Parts of GPUs on, so that shares are placed (and MIG instances asked for).
    let mut config = scheduler_config(&sc, v);
    config.sharing.slices = true;
    let mut e = Engine::with(&sc, v, seed, config.clone(), Vec::new()).unwrap();
    let (fleet, snap) = Fleet::build(&sc.fleet, sc.start);
    let mut serve = Serve {
        sched: Scheduler::new(config, snap).unwrap(),
        rows: BTreeMap::new(),
        metered: HashMap::new(),
        ledger: Vec::new(),
        contracts: Vec::new(),
        book: sc.prices.clone(),
        start: sc.start,
    };
    // The spot price the engine meters by: the floor, at the start.
    e.hourly();
    let mut rng = Rng::new(seed);
    let pick = |rng: &mut Rng, n: usize| usize::try_from(rng.below(n as u64)).unwrap();
    let mut now = 0i64;
    let mut jobs: Vec<(usize, InstanceId)> = Vec::new();
    let mut down = vec![false; fleet.nodes.len()];
    let mut signed = 0usize;
    for step in 0..steps {
        let ts = sc.start.plus_seconds(now);
        let ctx = format!("seed {seed}, step {step}, t={now}");
        match rng.below(100) {
            // Launch.
            0..=39 => {
                let tenant = pick(&mut rng, sc.tenants.len());
                let class = crate::CLASSES[pick(&mut rng, 4)];
                let model = pick(&mut rng, fleet.models.len());
                let site = match rng.below(3) {
                    0 => None,
                    s => Some(usize::try_from(s).unwrap() - 1),
                };
                let max_wait = [0, 0, 600, 7200][pick(&mut rng, 4)];
                let shape = crate::random_shape(&mut |n| rng.below(n));
                let j = e.add_job(Job {
                    arrival: now,
                    tenant: u32::try_from(tenant).unwrap(),
                    class,
                    model: u32::try_from(model).unwrap(),
                    site: site.map(|s| u32::try_from(s).unwrap()),
                    shape,
                    duration: 30 * 86_400,
                    max_wait,
                });
                let id = synthetic::instance_id(j as u64 + 1);
                jobs.push((j, id));
                e.arrival(j).unwrap();
                let tenant_id = synthetic::tenant_id(tenant as u64 + 1);
                let gpu_model = fleet.models[model].clone();
                let requested_site_id = site.map(site_id);
                let contract_id = if class == Class::Reserved {
                    serve.contract_for(tenant_id, &gpu_model, requested_site_id)
                } else {
                    None
                };
                // A reserved request without a contract is refused before the scheduler.
                if class != Class::Reserved || contract_id.is_some() {
                    let inst = Instance {
                        id,
                        tenant_id,
                        name: None,
                        class,
                        gpu_model,
                        gpu_models: Vec::new(),
                        shape,
                        gpu_count: 0,
                        cpu_milli: None,
                        memory_mib: None,
                        requested_site_id,
                        site_id: None,
                        contract_id,
                        state: InstanceState::Pending,
                        reason: None,
                        placement: Default::default(),
                        placement_summary: None,
                        created_at: ts,
                        started_at: None,
                        ended_at: None,
                        preempt_at: None,
                        wait_until: (max_wait > 0).then(|| ts.plus_seconds(max_wait)),
                        delivery: None,
                        ssh_key_names: Vec::new(),
                        authorized_keys: Vec::new(),
                        access: None,
                        ends_as: None,
                        on_node_failure: neocloud_types::NodeFailurePolicy::default_for(&shape),
                    };
                    let _refused = serve.apply(Command::Launch(inst), ts);
                }
            }
            // Terminate something that runs.
            40..=54 => {
                let running: Vec<(usize, InstanceId)> = jobs
                    .iter()
                    .copied()
                    .filter(|(_, id)| {
                        serve.rows.get(id).is_some_and(|r| {
                            matches!(r.state, InstanceState::Running | InstanceState::Preempting)
                        })
                    })
                    .collect();
                if !running.is_empty() {
                    let (j, id) = running[pick(&mut rng, running.len())];
                    e.finish(j).unwrap();
                    serve.apply(Command::Terminate { id }, ts).unwrap();
                }
            }
            // Sign a contract, starting now or later.
            55..=59 => {
                let tenant = pick(&mut rng, sc.tenants.len());
                let site = pick(&mut rng, fleet.sites.len());
                let (&(_, m), slots) = fleet.pools.iter().find(|((s, _), _)| *s == site).unwrap();
                let per = fleet.nodes[slots[0]].gpus;
                let gpus = per * (1 + u32::try_from(rng.below(4)).unwrap());
                let start = now + [0, 0, 1800][pick(&mut rng, 3)];
                let end = start + 3600 * (2 + i64::try_from(rng.below(48)).unwrap());
                let spec = ContractSpec {
                    tenant,
                    site,
                    gpu_model: fleet.models[m].clone(),
                    gpus,
                    start,
                    end,
                    rate: Money::from_micros(2_000_000),
                    sla_milli: 99_500,
                };
                let contract = Contract {
                    id: synthetic::contract_id(signed as u64 + 1),
                    tenant_id: synthetic::tenant_id(tenant as u64 + 1),
                    gpu_model: spec.gpu_model.clone(),
                    gpu_count: gpus,
                    site_id: site_id(site),
                    single_block: None,
                    start_at: sc.start.plus_seconds(start),
                    end_at: sc.start.plus_seconds(end),
                    price_per_gpu_hour: spec.rate,
                    sla_percent: "99.500".to_string(),
                    state: ContractState::Signed,
                    total_value: Money::ZERO,
                    created_at: ts,
                    updated_at: ts,
                };
                let sim = e.sign(&spec);
                serve.contracts.push((contract.clone(), false));
                let srv = serve.apply(Command::Sign(contract), ts);
                assert_eq!(sim.is_ok(), srv.is_ok(), "{ctx}: sign {sim:?} {srv:?}");
                if srv.is_ok() {
                    signed += 1;
                } else {
                    serve.contracts.pop();
                }
            }
            // Cancel a contract (one that has ended already is refused on both sides).
            60..=62 => {
                if signed > 0 {
                    let c = pick(&mut rng, signed);
                    let sim = e.cancel(c).unwrap();
                    let id = serve.contracts[c].0.id;
                    let srv = serve.apply(Command::Cancel { id }, ts);
                    assert_eq!(sim.is_ok(), srv.is_ok(), "{ctx}: cancel {sim:?} {srv:?}");
                }
            }
            // A node fails.
            63..=67 => {
                let slot = pick(&mut rng, down.len());
                if !down[slot] {
                    down[slot] = true;
                    e.fail_node(slot).unwrap();
                    let node = fleet.nodes[slot].id;
                    let change = NodeChange {
                        node,
                        from: serve.sched.node_state(node),
                        to: NodeState::Failed,
                        at: ts,
                        reason: "simulated failure".to_string(),
                        heal: false,
                        gpus: Vec::new(),
                    };
                    serve.apply(Command::Node(change), ts).unwrap();
                }
            }
            // A failed node is repaired.
            68..=72 => {
                let failed: Vec<usize> = (0..down.len()).filter(|&s| down[s]).collect();
                if !failed.is_empty() {
                    let slot = failed[pick(&mut rng, failed.len())];
                    down[slot] = false;
                    e.repair(slot).unwrap();
                    let change = NodeChange {
                        node: fleet.nodes[slot].id,
                        from: Some(NodeState::Failed),
                        to: NodeState::Available,
                        at: ts,
                        reason: "simulated repair".to_string(),
                        heal: true,
                        gpus: Vec::new(),
                    };
                    serve.apply(Command::Node(change), ts).unwrap();
                }
            }
            // Time passes (a preemption notice's length, a minute, or up to four hours),
            // then the scheduler ticks.
            73..=89 => {
                now += match rng.below(3) {
                    0 => sc.preemption_grace_secs,
                    1 => 60,
                    _ => 1 + i64::try_from(rng.below(4 * 3600)).unwrap(),
                };
                e.advance(now);
                e.tick().unwrap();
                serve
                    .apply(Command::Tick, sc.start.plus_seconds(now))
                    .unwrap();
            }
            // A tick with no time passing.
            _ => {
                e.tick().unwrap();
                serve.apply(Command::Tick, ts).unwrap();
            }
        }
        if step % 10 == 0 {
            check(&e, &serve, &jobs, &ctx);
        }
    }
    let ctx = format!("seed {seed}, the end");
    check(&e, &serve, &jobs, &ctx);
    // What still holds GPUs is metered up to now on both sides, as a month's close does.
    e.meter_running(now).unwrap();
    let end = sc.start.plus_seconds(now);
    let holding: Vec<Instance> = serve
        .rows
        .values()
        .filter(|r| r.state.holds_gpus())
        .cloned()
        .collect();
    for r in &holding {
        serve.meter(r, end);
    }
    let key = |u: &UsageRecord| (u.instance, u.start);
    let mut sim = e.usage().to_vec();
    sim.sort_by_key(key);
    serve.ledger.sort_by_key(key);
    assert_eq!(sim.len(), serve.ledger.len(), "{ctx}: usage records");
    for (a, b) in sim.iter().zip(&serve.ledger) {
        assert_eq!(a, b, "{ctx}: usage");
    }
    assert!(!sim.is_empty(), "{ctx}: nothing metered");
    let mut seen = Coverage::default();
    for r in serve.rows.values() {
        let ran = r.started_at.is_some();
        seen.placed += u32::from(ran);
        seen.shares += u32::from(ran && matches!(r.shape, Shape::Share { .. }));
        seen.gangs += u32::from(ran && matches!(r.shape, Shape::Nodes { .. }));
        seen.reserved += u32::from(ran && r.class == Class::Reserved);
        seen.waited += u32::from(ran && r.started_at != Some(r.created_at));
        seen.preempted += u32::from(r.state == InstanceState::Preempted);
        seen.failed += u32::from(ran && r.state == InstanceState::Failed);
        seen.expired += u32::from(!ran && r.state == InstanceState::Failed);
    }
    seen.contracts = u32::try_from(signed).unwrap();
    seen
}

/// What a stream made happen, so that the seeds together are known to cover every path.
#[derive(Debug, Default)]
struct Coverage {
    placed: u32,
    shares: u32,
    gangs: u32,
    reserved: u32,
    waited: u32,
    preempted: u32,
    failed: u32,
    expired: u32,
    contracts: u32,
}

#[test]
fn the_engine_and_serves_scheduler_agree_on_random_streams() {
    let mut all = Vec::new();
    for seed in 1..=12 {
        all.push(differential(seed, 400));
    }
    let total = |f: fn(&Coverage) -> u32| all.iter().map(f).sum::<u32>();
    for (what, n) in [
        ("placed", total(|c| c.placed)),
        ("shares", total(|c| c.shares)),
        ("gangs", total(|c| c.gangs)),
        ("reserved", total(|c| c.reserved)),
        ("placed after waiting", total(|c| c.waited)),
        ("preempted", total(|c| c.preempted)),
        ("ended by a node failure", total(|c| c.failed)),
        ("expired in the queue", total(|c| c.expired)),
        ("contracts", total(|c| c.contracts)),
    ] {
        assert!(n > 0, "no stream covered {what}: {all:?}");
    }
}
