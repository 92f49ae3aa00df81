//! One random command stream through `serve` over HTTP and through the simulator: both must
//! end with the same placements, states and ledger.
//!
//! The simulator's side is a [`Stepper`] (its engine, driven command by command). `serve`'s
//! side is the real control plane on a real port with a manual clock, set up from the same
//! scenario: the same fleet file imported, the same tenants, prices and scheduler settings.
//! Every command goes through the public API the way a tenant, an operator or a node's
//! agent sends it: launches and terminates with tenant keys, contracts signed and cancelled
//! by the operator, node failures as an agent's XID 79 report, repairs as the operator's
//! `repair-complete` and the agent's passed burn-in. Time passes by moving both clocks and
//! running the scheduler's periodic pass. Every few steps, and at the end, each request's
//! state and placement (node names, GPU indexes, MIG slices) must agree; at the end
//! everything still running is terminated on both sides and the usage ledgers must agree.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use neocloud_service::Clock;
use neocloud_sim::{
    CLASSES, ContractSpec, Job, JobState, NodePart, Scenario, Stepper, random_shape,
};
use neocloud_types::{Class, Money, Timestamp};
use serde_json::{Value, json};

use crate::ctx::{Db, TestContext, unique};

/// A small deterministic generator (SplitMix64): the stream depends on the seed only.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick(&mut self, n: usize) -> usize {
        usize::try_from(self.below(n as u64)).unwrap()
    }
}

/// `serve`, as its clients see it.
struct Serve {
    ctx: TestContext,
    clock: Clock,
    start: Timestamp,
    /// (name, id, tenant-admin key) per scenario tenant.
    tenants: Vec<(String, String, String)>,
    /// Enrollment key for agents.
    enroll: String,
    /// Registered agents: slot → (node key, last event sequence number).
    agents: HashMap<usize, (String, u64)>,
    /// Memory of each GPU model, MiB as a driver reports it.
    memory_mib: HashMap<String, u64>,
    /// Each request's instance id in `serve` (None: refused).
    ids: Vec<Option<String>>,
    /// Contracts signed in `serve`, in order: (id, tenant index, model, site index).
    contracts: Vec<(String, usize, String, usize)>,
}

impl Serve {
    fn at(&self, t: i64) -> Timestamp {
        self.start.plus_seconds(t)
    }

    /// The first active contract of the tenant for the model (and site, when named), as
    /// the simulator's engine picks it for a reserved request.
    async fn active_contract(
        &self,
        tenant: usize,
        model: &str,
        site: Option<usize>,
    ) -> Option<String> {
        for (id, t, m, s) in &self.contracts {
            if *t != tenant || m != model || site.is_some_and(|x| x != *s) {
                continue;
            }
            let c = self
                .ctx
                .get(&format!("/v1/contracts/{id}"), &self.ctx.operator_key)
                .await
                .expect(200);
            if c["state"] == "active" {
                return Some(id.clone());
            }
        }
        None
    }

    /// An agent heartbeat for the node in `slot` carrying `events`, at the clock's time.
    async fn beat(&mut self, slot: usize, host: &str, gpus: u32, events: Vec<Value>) -> Value {
        let now = self.clock.now().to_string();
        let (key, _) = self.agents[&slot].clone();
        let body = json!({
            "sent_at": now,
            "gpus": (0..gpus).map(|i| json!({
                "uuid": format!("GPU-{host}-{i}"), "temperature_c": 41, "power_watts": 350,
                "utilization_pct": 60, "memory_used_mib": 1000,
                "ecc_corrected": 0, "ecc_uncorrected": 0,
            })).collect::<Vec<_>>(),
            "events": events,
        });
        self.ctx
            .post("/v1/agent/heartbeat", &key, &body)
            .await
            .expect(200)
    }

    /// The next event sequence number of the agent in `slot`.
    fn seq(&mut self, slot: usize) -> u64 {
        let a = self.agents.get_mut(&slot).unwrap();
        a.1 += 1;
        a.1
    }

    /// Registers an agent on the node in `slot` (once).
    async fn agent(&mut self, slot: usize, host: &str, model: &str, gpus: u32) {
        if self.agents.contains_key(&slot) {
            return;
        }
        let mem = self.memory_mib[model];
        let inv = json!({
            "hostname": host, "agent_version": "test", "backend": "sim",
            "cpu_cores": 112, "ram_gib": 2048,
            "gpus": (0..gpus).map(|i| json!({
                "index": i, "uuid": format!("GPU-{host}-{i}"), "name": model,
                "memory_mib": mem, "pci_bus_id": format!("00000000:{:02X}:00.0", 0x18 + i),
            })).collect::<Vec<_>>(),
        });
        let r = self
            .ctx
            .post("/v1/agent/register", &self.enroll, &inv)
            .await
            .expect(200);
        let key = r["node_key"].as_str().unwrap().to_string();
        self.agents.insert(slot, (key, 0));
    }

    /// Every item of a paged list, all pages.
    async fn all(&self, path: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let url = match &cursor {
                Some(c) => format!("{path}?limit=1000&cursor={c}"),
                None => format!("{path}?limit=1000"),
            };
            let page = self.ctx.get(&url, &self.ctx.operator_key).await.expect(200);
            out.extend(page["items"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return out,
            }
        }
    }

    /// Every instance `serve` holds, by id.
    async fn instances(&self) -> HashMap<String, Value> {
        self.all("/v1/instances")
            .await
            .into_iter()
            .map(|i| (i["id"].as_str().unwrap().to_string(), i))
            .collect()
    }

    /// The whole usage ledger.
    async fn usage(&self) -> Vec<Value> {
        self.all("/v1/usage").await
    }
}

/// A request's state as `serve` shows it, in the simulator's terms.
fn state_of(i: &Value) -> JobState {
    let ran = !i["started_at"].is_null();
    match (i["state"].as_str().unwrap(), ran) {
        ("pending", _) => JobState::Queued,
        ("running", _) => JobState::Running,
        ("preempting", _) => JobState::Preempting,
        ("preempted", _) => JobState::Preempted,
        ("terminated", true) => JobState::Done,
        ("failed", true) => JobState::Failed,
        ("terminated" | "failed", false) => JobState::Expired,
        (other, _) => panic!("{other} is not a state the simulator reaches: {i}"),
    }
}

/// Where an instance runs, as the simulator reports it.
fn placement_of(i: &Value) -> Vec<NodePart> {
    let mut parts: Vec<NodePart> = i["placement"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| NodePart {
            node: p["node"].as_str().unwrap().to_string(),
            gpus: p["gpus"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| u32::try_from(g.as_u64().unwrap()).unwrap())
                .collect(),
            mig_start: p["mig_start"].as_u64().map(|m| u32::try_from(m).unwrap()),
        })
        .collect();
    parts.sort();
    parts
}

/// Both sides agree on every request's state and, while it holds GPUs, its placement.
async fn check(sim: &Stepper<'_>, srv: &Serve, ctx: &str) {
    let rows = srv.instances().await;
    for (j, id) in srv.ids.iter().enumerate() {
        let (state, placement) = match id {
            None => (JobState::Refused, Vec::new()),
            Some(id) => {
                let i = &rows[id];
                let s = state_of(i);
                let holds = matches!(s, JobState::Running | JobState::Preempting);
                (s, if holds { placement_of(i) } else { Vec::new() })
            }
        };
        assert_eq!(
            sim.state(j),
            state,
            "{ctx}: the state of request {j} ({id:?})"
        );
        assert_eq!(
            sim.placement(j),
            placement,
            "{ctx}: the placement of request {j} ({id:?})"
        );
    }
}

/// What the streams made happen, so that the seeds together are known to cover each path.
#[derive(Debug, Default)]
struct Coverage {
    placed: u32,
    shares: u32,
    migs: u32,
    gangs: u32,
    reserved: u32,
    waited: u32,
    preempted: u32,
    failed: u32,
    expired: u32,
    refused: u32,
    contracts: u32,
    cancels: u32,
    repairs: u32,
}

async fn differential(db: Db, seed: u64, steps: usize) -> Option<Coverage> {
    let sc = Scenario::load(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../sim/tests/data")
            .join("small.toml"),
    )
    .unwrap();
    let v = sc.variant("keep").unwrap();
    let mut sim = Stepper::new(&sc, v, seed, true).unwrap();
    let clock = Clock::manual(sc.start);
    let ctx = TestContext::start_clocked(db, Stepper::config(&sc, v, true), clock.clone()).await?;

    // The same fleet, tenants and prices.
    let fleet = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../sim/tests/data/small.fleet.toml"),
    )
    .unwrap();
    ctx.import(&fleet).await.expect(200);
    let mut tenants = Vec::new();
    for t in &sc.tenants {
        let name = format!("{}-{}", t.name, unique());
        let kind = if t.internal { "internal" } else { "external" };
        let body = json!({"name": name, "kind": kind});
        let row = ctx
            .post("/v1/tenants", &ctx.operator_key, &body)
            .await
            .expect(201);
        let id = row["id"].as_str().unwrap().to_string();
        let (key, _) = ctx.key("tenant-admin", Some(&id)).await;
        tenants.push((name, id, key));
    }
    for p in sc.prices.entries() {
        let body = json!({
            "gpu_model": p.gpu_model, "kind": p.kind.as_str(),
            "price_per_gpu_hour": p.price.to_string(), "effective_from": sc.start.to_string(),
        });
        ctx.post("/v1/prices", &ctx.operator_key, &body)
            .await
            .expect(201);
    }
    let site_names = sim.site_names();
    let mut memory_mib = HashMap::new();
    for m in sim.models() {
        let row = ctx
            .get(&format!("/v1/gpu-models/{m}"), &ctx.operator_key)
            .await
            .expect(200);
        memory_mib.insert(m.clone(), row["memory_gib"].as_u64().unwrap() * 1024);
    }
    let enroll = ctx.key("node-agent", None).await.0;
    let mut srv = Serve {
        ctx,
        clock,
        start: sc.start,
        tenants,
        enroll,
        agents: HashMap::new(),
        memory_mib,
        ids: Vec::new(),
        contracts: Vec::new(),
    };

    let pools = sim.pools();
    let nodes = sim.node_names().to_vec();
    let internal: Vec<usize> = (0..sc.tenants.len())
        .filter(|&t| sc.tenants[t].internal)
        .collect();
    let mut rng = Rng(seed);
    let mut now = 0i64;
    let mut down = vec![false; nodes.len()];
    let mut signed = 0usize;
    let mut cancelled = std::collections::HashSet::new();
    let mut seen = Coverage::default();
    for step in 0..steps {
        let ts = srv.at(now);
        let what = format!("{db:?}, seed {seed}, step {step}, t={now}");
        match rng.below(100) {
            // Launch.
            0..=39 => {
                let class = CLASSES[rng.pick(4)];
                let tenant = match class {
                    // Only internal tenants run internal work (the API refuses others).
                    Class::Internal => internal[rng.pick(internal.len())],
                    _ => rng.pick(sc.tenants.len()),
                };
                let model = rng.pick(sim.models().len());
                let site = match rng.below(3) {
                    0 => None,
                    s => Some(usize::try_from(s).unwrap() - 1),
                };
                let max_wait = [0, 0, 600, 7200][rng.pick(4)];
                let shape = random_shape(&mut |n| rng.below(n));
                let gpu_model = sim.models()[model].clone();
                let j = sim
                    .launch(Job {
                        arrival: now,
                        tenant: u32::try_from(tenant).unwrap(),
                        class,
                        model: u32::try_from(model).unwrap(),
                        site: site.map(|s| u32::try_from(s).unwrap()),
                        shape,
                        duration: 30 * 86_400,
                        max_wait,
                    })
                    .unwrap();
                let contract = if class == Class::Reserved {
                    srv.active_contract(tenant, &gpu_model, site).await
                } else {
                    None
                };
                let mut id = None;
                // A reserved request names its contract; without one there is nothing to
                // send (the simulator refuses it too).
                if class != Class::Reserved || contract.is_some() {
                    let mut body = json!({
                        "class": class.as_str(), "gpu_model": gpu_model,
                        "shape": serde_json::to_value(shape).unwrap(),
                    });
                    if let Some(s) = site {
                        body["site"] = json!(site_names[s]);
                    }
                    if max_wait > 0 {
                        body["wait_seconds"] = json!(max_wait);
                    }
                    if let Some(c) = &contract {
                        body["contract_id"] = json!(c);
                    }
                    let r = srv
                        .ctx
                        .send(
                            reqwest::Method::POST,
                            "/v1/instances",
                            Some(&srv.tenants[tenant].2),
                            Some(("application/json", serde_json::to_vec(&body).unwrap())),
                            &[("idempotency-key", &unique())],
                        )
                        .await;
                    assert!(
                        r.status.as_u16() < 500,
                        "{what}: launch {body} answered {}: {}",
                        r.status,
                        r.body
                    );
                    if r.status.as_u16() < 300 {
                        id = Some(r.body["id"].as_str().unwrap().to_string());
                    }
                }
                seen.refused += u32::from(id.is_none());
                srv.ids.push(id);
                assert_eq!(srv.ids.len(), j + 1);
            }
            // Terminate something that runs.
            40..=54 => {
                let running: Vec<usize> = (0..srv.ids.len())
                    .filter(|&j| matches!(sim.state(j), JobState::Running | JobState::Preempting))
                    .collect();
                if !running.is_empty() {
                    let j = running[rng.pick(running.len())];
                    terminate(&mut sim, &srv, j).await;
                }
            }
            // Sign a contract, starting now or later.
            55..=59 => {
                let tenant = rng.pick(sc.tenants.len());
                let site = rng.pick(site_names.len());
                let ((_, m), slots) = pools.iter().find(|((s, _), _)| *s == site).unwrap();
                let per = sim.node_gpus(slots[0]);
                let gpus = per * (1 + u32::try_from(rng.below(4)).unwrap());
                let start = now + [0, 0, 1800][rng.pick(3)];
                let end = start + 3600 * (2 + i64::try_from(rng.below(48)).unwrap());
                let model = sim.models()[*m].clone();
                let body = json!({
                    "tenant_id": srv.tenants[tenant].1, "gpu_model": model, "gpu_count": gpus,
                    "start_at": srv.at(start).to_string(), "end_at": srv.at(end).to_string(),
                    "site": site_names[site], "sla_percent": "99.5",
                });
                let r = srv
                    .ctx
                    .send(
                        reqwest::Method::POST,
                        "/v1/contracts",
                        Some(&srv.ctx.operator_key),
                        Some(("application/json", serde_json::to_vec(&body).unwrap())),
                        &[("idempotency-key", &unique())],
                    )
                    .await;
                assert!(
                    r.status.as_u16() < 500,
                    "{what}: sign {body}: {} {}",
                    r.status,
                    r.body
                );
                let rate = if r.status.as_u16() < 300 {
                    r.body["price_per_gpu_hour"]
                        .as_str()
                        .unwrap()
                        .parse::<Money>()
                        .unwrap()
                } else {
                    Money::from_micros(2_000_000)
                };
                let spec = ContractSpec {
                    tenant,
                    site,
                    gpu_model: model.clone(),
                    gpus,
                    start,
                    end,
                    rate,
                    sla_milli: 99_500,
                };
                let s = sim.sign(&spec);
                assert_eq!(
                    s.is_ok(),
                    r.status.as_u16() < 300,
                    "{what}: sign {body}: sim {s:?}, serve {} {}",
                    r.status,
                    r.body
                );
                if r.status.as_u16() < 300 {
                    let id = r.body["id"].as_str().unwrap().to_string();
                    srv.contracts.push((id, tenant, model, site));
                    signed += 1;
                }
            }
            // Cancel a contract (one that has ended already is refused on both sides).
            60..=62 => {
                if signed > 0 {
                    let c = rng.pick(signed);
                    let id = srv.contracts[c].0.clone();
                    if cancelled.contains(&c) {
                        // Cancelling again is a retry: the same answer, nothing changes.
                        let r = srv
                            .ctx
                            .post(
                                &format!("/v1/contracts/{id}/cancel"),
                                &srv.ctx.operator_key,
                                &json!({}),
                            )
                            .await
                            .expect(200);
                        assert_eq!(r["state"], "cancelled", "{what}: {r}");
                        continue;
                    }
                    let s = sim.cancel(c).unwrap();
                    let r = srv
                        .ctx
                        .post(
                            &format!("/v1/contracts/{id}/cancel"),
                            &srv.ctx.operator_key,
                            &json!({}),
                        )
                        .await;
                    // A contract that has ended is answered as it is: nothing to cancel.
                    let r = r.expect(200);
                    let now_cancelled = r["state"] == "cancelled";
                    assert!(now_cancelled || r["state"] == "ended", "{what}: {r}");
                    assert_eq!(
                        s.is_ok(),
                        now_cancelled,
                        "{what}: cancel {id}: sim {s:?}, serve {r}"
                    );
                    if now_cancelled {
                        cancelled.insert(c);
                        seen.cancels += 1;
                    }
                }
            }
            // A node fails: its agent reports XID 79 (the GPU fell off the bus).
            63..=67 => {
                let slot = rng.pick(nodes.len());
                if !down[slot] {
                    down[slot] = true;
                    sim.fail_node(slot).unwrap();
                    let (s, m) = pools
                        .iter()
                        .find(|(_, slots)| slots.contains(&slot))
                        .map(|((s, m), _)| (*s, *m))
                        .unwrap();
                    let _ = s;
                    let model = sim.models()[m].clone();
                    let gpus = sim.node_gpus(slot);
                    let host = nodes[slot].clone();
                    srv.agent(slot, &host, &model, gpus).await;
                    let seq = srv.seq(slot);
                    let ev = json!({"seq": seq, "at": ts.to_string(),
                        "gpu_uuid": format!("GPU-{host}-0"), "kind": {"type": "xid", "code": 79}});
                    let ack = srv.beat(slot, &host, gpus, vec![ev]).await;
                    assert_eq!(ack["state"], "failed", "{what}: {host} after XID 79: {ack}");
                }
            }
            // A failed node is repaired: the operator says so, the agent passes burn-in.
            68..=72 => {
                let failed: Vec<usize> = (0..down.len()).filter(|&s| down[s]).collect();
                if !failed.is_empty() {
                    let slot = failed[rng.pick(failed.len())];
                    down[slot] = false;
                    sim.repair(slot).unwrap();
                    let host = nodes[slot].clone();
                    let gpus = sim.node_gpus(slot);
                    let n = srv
                        .ctx
                        .post(
                            &format!("/v1/nodes/{host}/repair-complete"),
                            &srv.ctx.operator_key,
                            &json!({"reason": "GPU replaced"}),
                        )
                        .await
                        .expect(200);
                    assert_eq!(n["state"], "burn_in", "{what}: {n}");
                    let ack = srv.beat(slot, &host, gpus, vec![]).await;
                    let bi = ack["burn_in"]["id"].as_str().unwrap().to_string();
                    let seq = srv.seq(slot);
                    let ev = json!({"seq": seq, "at": ts.to_string(),
                        "kind": {"type": "burn_in", "id": bi, "passed": true, "output": "ok"}});
                    let ack = srv.beat(slot, &host, gpus, vec![ev]).await;
                    assert_eq!(ack["state"], "available", "{what}: {ack}");
                    seen.repairs += 1;
                }
            }
            // Time passes (a preemption notice's length, a minute, or up to four hours),
            // then the scheduler's periodic pass runs.
            73..=89 => {
                now += match rng.below(3) {
                    0 => sc.preemption_grace_secs,
                    1 => 60,
                    _ => 1 + i64::try_from(rng.below(4 * 3600)).unwrap(),
                };
                sim.advance(now);
                sim.tick().unwrap();
                srv.clock.set(srv.at(now));
                srv.ctx.svc.tick(srv.at(now)).await.unwrap();
            }
            // A periodic pass with no time passing.
            _ => {
                sim.tick().unwrap();
                srv.ctx.svc.tick(ts).await.unwrap();
            }
        }
        if step % 10 == 0 {
            check(&sim, &srv, &what).await;
        }
    }
    let what = format!("{db:?}, seed {seed}, the end");
    check(&sim, &srv, &what).await;

    // Coverage, read from serve's rows.
    let rows = srv.instances().await;
    for id in srv.ids.iter().flatten() {
        let i = &rows[id];
        let ran = !i["started_at"].is_null();
        let shape = i["shape"]["kind"].as_str().unwrap_or_default();
        seen.placed += u32::from(ran);
        seen.shares += u32::from(ran && shape == "share");
        seen.migs += u32::from(ran && shape == "mig");
        seen.gangs += u32::from(ran && shape == "nodes");
        seen.reserved += u32::from(ran && i["class"] == "reserved");
        seen.waited += u32::from(ran && i["started_at"] != i["created_at"]);
        seen.preempted += u32::from(i["state"] == "preempted");
        seen.failed += u32::from(ran && i["state"] == "failed");
        seen.expired += u32::from(!ran && i["state"] == "failed");
    }
    seen.contracts = u32::try_from(signed).unwrap();

    // Everything still holding GPUs ends now on both sides; then the ledgers must agree.
    for j in 0..srv.ids.len() {
        if matches!(sim.state(j), JobState::Running | JobState::Preempting) {
            terminate(&mut sim, &srv, j).await;
        }
    }
    compare_ledgers(&sim, &srv, &what).await;
    Some(seen)
}

/// Request `j` is terminated on both sides, in `serve` by its tenant's key.
async fn terminate(sim: &mut Stepper<'_>, srv: &Serve, j: usize) {
    sim.terminate(j).unwrap();
    let id = srv.ids[j].clone().unwrap();
    let tenant = sim_tenant(srv, &id).await;
    srv.ctx
        .post(
            &format!("/v1/instances/{id}/terminate"),
            &srv.tenants[tenant].2,
            &json!({}),
        )
        .await
        .expect(200);
}

/// The tenant (index) that owns instance `id` in `serve`.
async fn sim_tenant(srv: &Serve, id: &str) -> usize {
    let i = srv
        .ctx
        .get(&format!("/v1/instances/{id}"), &srv.ctx.operator_key)
        .await
        .expect(200);
    srv.tenants
        .iter()
        .position(|t| i["tenant_id"] == t.1)
        .unwrap()
}

/// One metered interval, comparable across the two sides: (request, class, start, end,
/// GPUs, GPU-seconds, rate, amount). Spot is priced by the market, which `serve` reprices
/// as its fleet fills and the simulator holds at the floor here: its intervals and
/// GPU-seconds are compared, its prices are not.
type Line = (usize, String, Timestamp, Timestamp, u32, i64, Money, Money);

async fn compare_ledgers(sim: &Stepper<'_>, srv: &Serve, what: &str) {
    let index: HashMap<&str, usize> = srv
        .ids
        .iter()
        .enumerate()
        .filter_map(|(j, id)| id.as_deref().map(|id| (id, j)))
        .collect();
    let mut theirs: Vec<Line> = Vec::new();
    for u in srv.usage().await {
        let j = index[u["instance_id"].as_str().unwrap()];
        let class = u["class"].as_str().unwrap().to_string();
        let spot = class == "spot";
        theirs.push((
            j,
            class,
            u["start_at"].as_str().unwrap().parse().unwrap(),
            u["end_at"].as_str().unwrap().parse().unwrap(),
            u32::try_from(u["gpus"].as_u64().unwrap()).unwrap(),
            u["gpu_seconds"].as_i64().unwrap(),
            if spot {
                Money::ZERO
            } else {
                u["rate"].as_str().unwrap().parse().unwrap()
            },
            if spot {
                Money::ZERO
            } else {
                u["amount"].as_str().unwrap().parse().unwrap()
            },
        ));
    }
    let mut ours: Vec<Line> = sim
        .usage()
        .iter()
        .map(|u| {
            let spot = u.class == Class::Spot;
            (
                sim.job_of(u.instance).unwrap(),
                u.class.as_str().to_string(),
                u.start,
                u.end,
                u.gpus,
                u.gpu_seconds,
                if spot { Money::ZERO } else { u.rate },
                if spot { Money::ZERO } else { u.amount },
            )
        })
        .collect();
    // Spot intervals may be cut where `serve` changed the price: compare them whole.
    let merge = |lines: &mut Vec<Line>| {
        lines.sort();
        let mut out: Vec<Line> = Vec::new();
        for l in lines.drain(..) {
            if let Some(last) = out.last_mut()
                && l.1 == "spot"
                && last.0 == l.0
                && last.1 == l.1
                && last.3 == l.2
            {
                last.3 = l.3;
                last.5 += l.5;
                continue;
            }
            out.push(l);
        }
        *lines = out;
    };
    merge(&mut theirs);
    merge(&mut ours);
    let totals = |lines: &[Line]| -> BTreeMap<usize, i64> {
        let mut t = BTreeMap::new();
        for l in lines {
            *t.entry(l.0).or_default() += l.5;
        }
        t
    };
    assert_eq!(
        totals(&ours),
        totals(&theirs),
        "{what}: GPU-seconds per request"
    );
    assert_eq!(ours, theirs, "{what}: usage ledger");
    assert!(!ours.is_empty(), "{what}: nothing metered");
}

async fn run(db: Db) {
    let mut all = Vec::new();
    for seed in 1..=6 {
        match differential(db, seed, 400).await {
            Some(c) => all.push(c),
            None => return,
        }
    }
    let total = |f: fn(&Coverage) -> u32| all.iter().map(f).sum::<u32>();
    for (what, n) in [
        ("placed", total(|c| c.placed)),
        ("shares", total(|c| c.shares)),
        ("MIG instances", total(|c| c.migs)),
        ("gangs", total(|c| c.gangs)),
        ("reserved", total(|c| c.reserved)),
        ("placed after waiting", total(|c| c.waited)),
        ("preempted", total(|c| c.preempted)),
        ("ended by a node failure", total(|c| c.failed)),
        ("expired in the queue", total(|c| c.expired)),
        ("refused", total(|c| c.refused)),
        ("contracts", total(|c| c.contracts)),
        ("cancelled contracts", total(|c| c.cancels)),
        ("repairs", total(|c| c.repairs)),
    ] {
        assert!(n > 0, "no stream covered {what}: {all:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_over_http_and_the_simulator_agree_on_random_streams_sqlite() {
    run(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_over_http_and_the_simulator_agree_on_random_streams_postgres() {
    run(Db::Postgres).await;
}
