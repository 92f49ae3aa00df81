//! Load generator: simulates thousands of node agents in one process, over real HTTP.
//!
//! ```text
//! cargo run --release -p neocloud-agent --example heartbeat_load -- \
//!     --server http://127.0.0.1:8080 --key ENROLLMENT_KEY --operator-key OPERATOR_KEY \
//!     --site memphis-1 --interval-secs 10 --duration-secs 60
//! ```
//!
//! Phase 1 lists the site's nodes (operator key) and registers one simulated agent per node
//! with the enrollment key (`--register-concurrency` at a time); each agent then uses the
//! node key it got back. As a real agent does, each one beats as soon as it is registered
//! and every interval after, until phase 2 begins: registering 125,000 agents takes
//! minutes, longer than the missed-heartbeat limit, and agents left silent meanwhile would
//! be marked unreachable and come back during phase 2, which is then no steady state
//! (`--silent-while-registering` measures that case: a site back from an outage). Phase 2 has every agent send a heartbeat each interval, start times
//! spread evenly over the interval, each with one simulated sample per GPU and, now and then,
//! an event (XID 13, an application fault the policy ignores; burn-in requests are answered
//! with a pass). It prints the target and achieved rates, errors by status, latency
//! percentiles, and the same figures as one JSON line starting with `RESULT `.
//!
//! With `--batch N` the generator plays the relays' part itself: each group of N agents
//! (neighbours in start time) is sent as one `POST /v1/agent/heartbeats` per interval,
//! keyed with the enrollment key as a relay would be, and each agent reads its own answer.
//! That measures the control plane alone at rates where relays would need machines of their
//! own; latencies are then per batch.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use neocloud_agent::backend::GpuBackend;
use neocloud_agent::buffer::EventBuffer;
use neocloud_agent::client::{CallError, ControlPlane, problem_detail};
use neocloud_agent::sim::SimBackend;
use neocloud_types::{AgentEventKind, AgentRegister, BurnInRequest, Heartbeat, Timestamp};
use serde::Deserialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Simulates many node agents against a control plane and measures heartbeat throughput and
/// latency.
#[derive(Parser)]
struct Args {
    /// URL of the control plane, or several replicas' URLs separated by commas: each agent
    /// then beats to one chosen by its node's name (spread evenly) and fails over to the
    /// next, as `neocloud agent` does. Nodes are listed at the first.
    #[arg(long, env = "NEOCLOUD_SERVER", value_name = "URL[,URL...]")]
    server: String,
    /// Enrollment key (a node-agent key bound to no node) used to register every agent.
    #[arg(long, value_name = "KEY")]
    key: String,
    /// Operator key, to list the site's nodes.
    #[arg(long, value_name = "KEY")]
    operator_key: String,
    /// Site whose nodes get simulated agents.
    #[arg(long, value_name = "NAME", default_value = "memphis-1")]
    site: String,
    /// Number of agents [default: one per node of the site].
    #[arg(long, value_name = "N")]
    agents: Option<usize>,
    /// Seconds between two heartbeats of one agent.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    interval_secs: u64,
    /// Length of the heartbeat phase, seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    duration_secs: u64,
    /// Registrations in flight at once.
    #[arg(long, value_name = "N", default_value_t = 64)]
    register_concurrency: usize,
    /// GPUs per agent [default: each node's gpu_count from the node list; the control plane
    /// refuses a count that differs from the fleet].
    #[arg(long, value_name = "N")]
    gpus_per_node: Option<u32>,
    /// Heartbeats per thousand that carry a new event.
    #[arg(long, value_name = "N", default_value_t = 1)]
    event_permille: u64,
    /// Send GPU telemetry in the full form (`gpus`, one object per GPU with its UUID)
    /// instead of the compact rows `neocloud agent` sends (`gpu_rows`).
    #[arg(long)]
    full_telemetry: bool,
    /// Print only the `RESULT {json}` line.
    #[arg(long)]
    json_only: bool,
    /// After the heartbeat phase, a third phase as long with the same agents beating to
    /// these servers instead (comma-separated): e.g. the leader alone, then the followers,
    /// in one run with the same registrations.
    #[arg(long, value_name = "URL[,URL...]")]
    then_server: Option<String>,
    /// Send the heartbeats of N agents at a time in one batch (1 to 1,000), as relays pass
    /// them on, instead of each agent alone.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1000))]
    batch: Option<u16>,
    /// Agents stay silent from their registration until phase 2, as after an outage of the
    /// whole site: those registered longer than the missed-heartbeat limit before phase 2
    /// are marked unreachable meanwhile and come back during it.
    #[arg(long)]
    silent_while_registering: bool,
}

#[derive(Deserialize)]
struct NodeItem {
    name: String,
    gpu_count: u32,
    gpu_model: String,
    #[serde(default)]
    cpu_cores: u32,
    #[serde(default)]
    ram_gib: u32,
}

#[derive(Deserialize)]
struct NodePage {
    items: Vec<NodeItem>,
    #[serde(default)]
    next_cursor: Option<String>,
}

/// One registered, simulated agent.
struct Agent {
    /// The node's name (which replica it beats to).
    name: String,
    key: String,
    /// Where it beats alone: the servers of the phase, starting at the one its name picks.
    cp: ControlPlane,
    sim: SimBackend,
    /// The GPUs as registered (the compact rows name them by index).
    inventory: Vec<neocloud_types::GpuInventory>,
    events: EventBuffer,
    burn_ins: HashSet<String>,
}

impl Agent {
    fn burn_in(&mut self, req: Option<BurnInRequest>) {
        if let Some(BurnInRequest { id }) = req
            && self.burn_ins.insert(id.clone())
        {
            let kind = AgentEventKind::BurnIn {
                id,
                passed: true,
                output: "load test".into(),
            };
            self.events.push(None, kind, Timestamp::now());
        }
    }
}

/// What one agent measured in phase 2.
#[derive(Default)]
struct Stats {
    /// Heartbeats sent (in batches or alone).
    sent: u64,
    /// One per request: per heartbeat, or per batch with `--batch`.
    latencies_us: Vec<u64>,
    start_lag_us: Vec<u64>,
    errors: BTreeMap<String, u64>,
    late: u64,
    max_late: Duration,
}

impl Stats {
    /// Waits until `slot`, counting a late start (the previous request was still in flight
    /// when this one was due) or how late the timer woke.
    async fn wait_for(&mut self, slot: Instant) {
        let now = Instant::now();
        if now > slot {
            self.late += 1;
            self.max_late = self.max_late.max(now - slot);
        } else {
            tokio::time::sleep_until(slot).await;
            let lag = Instant::now().saturating_duration_since(slot);
            self.start_lag_us
                .push(u64::try_from(lag.as_micros()).unwrap_or(u64::MAX));
        }
    }

    fn merge(&mut self, other: Stats) {
        self.sent += other.sent;
        self.latencies_us.extend(other.latencies_us);
        self.start_lag_us.extend(other.start_lag_us);
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.late += other.late;
        self.max_late = self.max_late.max(other.max_late);
    }
}

fn error_key(e: &CallError) -> String {
    e.status()
        .map_or_else(|| "transport".to_string(), |s| s.to_string())
}

/// The value at quantile `per_mille`/1000 of sorted microseconds `v`, in ms.
fn quantile_ms(v: &[u64], per_mille: usize) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let rank = (v.len() * per_mille).div_ceil(1000);
    v[rank.clamp(1, v.len()) - 1] as f64 / 1000.0
}

async fn list_nodes(http: &reqwest::Client, args: &Args) -> Result<Vec<NodeItem>> {
    let mut nodes = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut query = vec![("site", args.site.clone()), ("limit", "1000".to_string())];
        if let Some(c) = cursor.take() {
            query.push(("cursor", c));
        }
        let first = args.server.split(',').next().unwrap_or_default().trim();
        let url = format!("{}/v1/nodes", first.trim_end_matches('/'));
        let resp = http
            .get(&url)
            .bearer_auth(&args.operator_key)
            .query(&query)
            .send()
            .await
            .with_context(|| format!("listing nodes at {url}"))?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            anyhow::bail!("listing nodes: HTTP {status}: {}", problem_detail(&text));
        }
        let page: NodePage = serde_json::from_str(&text).context("reading the node list")?;
        nodes.extend(page.items);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(nodes),
        }
    }
}

async fn register_all(
    cp: &ControlPlane,
    http: &reqwest::Client,
    args: &Args,
    nodes: Vec<NodeItem>,
) -> (Vec<Agent>, BTreeMap<String, u64>) {
    let permits = Arc::new(Semaphore::new(args.register_concurrency.max(1)));
    let key: Arc<str> = args.key.as_str().into();
    let mut tasks = JoinSet::new();
    for node in nodes {
        let (cp, permits, key) = (cp.clone(), permits.clone(), key.clone());
        let gpus = args.gpus_per_node.unwrap_or(node.gpu_count).clamp(1, 64);
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.ok();
            let mut sim = SimBackend::new(&node.name, gpus, &node.gpu_model, true);
            let body = AgentRegister {
                hostname: node.name.clone(),
                agent_version: concat!("load-", env!("CARGO_PKG_VERSION")).to_string(),
                backend: "sim".into(),
                driver_version: None,
                cpu_cores: if node.cpu_cores > 0 {
                    node.cpu_cores
                } else {
                    224
                },
                ram_gib: if node.ram_gib > 0 { node.ram_gib } else { 2048 },
                gpus: sim.inventory().unwrap_or_default(),
            };
            let reg = cp.register(&key, &body).await;
            (node.name, reg, sim)
        });
    }
    let mut errors = BTreeMap::new();
    // Registered agents, kept alive in groups until phase 2 begins.
    let chunk = args.batch.map_or(500, usize::from);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut alive = JoinSet::new();
    let mut pending: Vec<Agent> = Vec::new();
    let first = args.server.split(',').next().unwrap_or_default().trim();
    let url = format!("{}/v1/agent/heartbeats", first.trim_end_matches('/'));
    let keep = |group: Vec<Agent>, alive: &mut JoinSet<_>| {
        alive.spawn(keep_alive(
            Group::new(http, &url, args, group),
            Duration::from_secs(args.interval_secs.max(1)),
            stopped.clone(),
        ));
    };
    while let Some(joined) = tasks.join_next().await {
        if pending.len() >= chunk && !args.silent_while_registering {
            keep(std::mem::take(&mut pending), &mut alive);
        }
        let Ok((name, reg, mut sim)) = joined else {
            continue;
        };
        match reg {
            Ok(reg) => {
                let mut agent = Agent {
                    cp: cp.clone().starting_at(&name),
                    name,
                    key: reg.node_key.unwrap_or_else(|| args.key.clone()),
                    inventory: sim.inventory().unwrap_or_default(),
                    sim,
                    events: EventBuffer::new(1000),
                    burn_ins: HashSet::new(),
                };
                agent.events.on_register(reg.last_seq);
                agent.burn_in(reg.burn_in);
                pending.push(agent);
            }
            Err(e) => {
                if !args.json_only && errors.is_empty() {
                    eprintln!("registering {name} failed: {e}");
                }
                *errors.entry(error_key(&e)).or_default() += 1;
            }
        }
    }
    let _ = stop.send(true);
    let mut agents = pending;
    let (mut beats, mut failed) = (0u64, 0u64);
    while let Some(joined) = alive.join_next().await {
        if let Ok((group, stats)) = joined {
            agents.extend(group);
            beats += stats.sent;
            failed += stats.errors.values().sum::<u64>();
        }
    }
    if !args.json_only && !args.silent_while_registering {
        println!("  kept registered agents alive meanwhile: {beats} heartbeats, {failed} failed");
    }
    (agents, errors)
}

/// Beats for a group of registered agents at once and every interval after, until `stop`
/// turns true; returns the agents.
async fn keep_alive(
    mut g: Group,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> (Vec<Agent>, Stats) {
    let mut stats = Stats::default();
    let mut next = Instant::now();
    loop {
        if *stop.borrow() {
            break;
        }
        next += interval;
        send_round(&mut g, &mut stats, 0, false).await;
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = stop.changed() => break,
        }
    }
    (g.agents, stats)
}

/// One heartbeat of one agent, alone; its latency and answer go into `stats`.
async fn send_alone(
    agent: &mut Agent,
    stats: &mut Stats,
    event_permille: u64,
    full_telemetry: bool,
) {
    let body = next_heartbeat(agent, event_permille, full_telemetry);
    stats.sent += 1;
    let started = Instant::now();
    let result = agent.cp.heartbeat(&agent.key, &body).await;
    stats
        .latencies_us
        .push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
    match result {
        Ok(ack) => {
            agent.events.ack(ack.acked_seq);
            agent.burn_in(ack.burn_in);
        }
        Err(e) => *stats.errors.entry(error_key(&e)).or_default() += 1,
    }
}

/// One agent's next heartbeat: an event now and then, a sample per GPU.
fn next_heartbeat(agent: &mut Agent, event_permille: u64, full_telemetry: bool) -> Heartbeat {
    if event_permille > 0 && getrandom::u64().unwrap_or(u64::MAX) % 1000 < event_permille {
        let kind = AgentEventKind::Xid {
            code: 13,
            detail: Some("load test".into()),
        };
        let uuid = agent
            .sim
            .inventory()
            .ok()
            .and_then(|g| g.first().map(|g| g.uuid.clone()));
        agent.events.push(uuid, kind, Timestamp::now());
    }
    let mut body = Heartbeat {
        generation: None,
        workloads: Vec::new(),
        sent_at: Timestamp::now(),
        gpus: agent.sim.sample().unwrap_or_default(),
        gpu_rows: Vec::new(),
        events: agent.events.batch(1000),
        leaving: None,
    };
    if !full_telemetry {
        body.compact(&agent.inventory);
    }
    body
}

/// Agents that beat together each interval: as one batch (see `--batch`), or each alone.
struct Group {
    http: reqwest::Client,
    /// `…/v1/agent/heartbeats` of the first server.
    url: String,
    /// The key the batch itself is sent with (the enrollment key, as a relay's).
    key: String,
    /// One batch for the whole group; otherwise each agent beats alone, in turn.
    batched: bool,
    agents: Vec<Agent>,
}

impl Group {
    /// A group of `agents` sending to `url` the way `args` asks (batched or alone).
    fn new(http: &reqwest::Client, url: &str, args: &Args, agents: Vec<Agent>) -> Group {
        Group {
            http: http.clone(),
            url: url.to_string(),
            key: args.key.clone(),
            batched: args.batch.is_some(),
            agents,
        }
    }
}

/// One interval's heartbeats of a group. Latency is recorded per request: per batch, or
/// per heartbeat sent alone.
async fn send_round(g: &mut Group, stats: &mut Stats, event_permille: u64, full_telemetry: bool) {
    if !g.batched {
        for agent in &mut g.agents {
            send_alone(agent, stats, event_permille, full_telemetry).await;
        }
    } else if let Err(e) = send_batch(g, stats, event_permille, full_telemetry).await {
        *stats.errors.entry(e).or_default() += g.agents.len() as u64;
    }
}

/// One batch: every agent's heartbeat, and each answer read by its agent. Errors are
/// counted per heartbeat; one latency per batch.
async fn send_batch(
    g: &mut Group,
    stats: &mut Stats,
    event_permille: u64,
    full_telemetry: bool,
) -> Result<(), String> {
    let mut heartbeats = Vec::with_capacity(g.agents.len());
    for agent in &mut g.agents {
        let body = next_heartbeat(agent, event_permille, full_telemetry);
        let raw = serde_json::value::to_raw_value(&body).map_err(|e| e.to_string())?;
        heartbeats.push(neocloud_types::RelayedHeartbeat {
            key: agent.key.clone(),
            heartbeat: raw,
        });
    }
    let batch = neocloud_types::HeartbeatBatch { heartbeats };
    stats.sent += g.agents.len() as u64;
    let started = Instant::now();
    let resp = g
        .http
        .post(&g.url)
        .bearer_auth(&g.key)
        .json(&batch)
        .send()
        .await
        .map_err(|_| "transport".to_string())?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|_| "transport".to_string())?;
    stats
        .latencies_us
        .push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
    if !status.is_success() {
        return Err(status.as_u16().to_string());
    }
    let answer: neocloud_types::HeartbeatBatchAnswer =
        serde_json::from_slice(&bytes).map_err(|_| "unreadable answer".to_string())?;
    if answer.answers.len() != g.agents.len() {
        return Err("answers miscounted".to_string());
    }
    for (agent, a) in g.agents.iter_mut().zip(answer.answers) {
        if a.status != 200 {
            *stats.errors.entry(a.status.to_string()).or_default() += 1;
            continue;
        }
        match serde_json::from_str::<neocloud_types::HeartbeatAck>(a.body.get()) {
            Ok(ack) => {
                agent.events.ack(ack.acked_seq);
                agent.burn_in(ack.burn_in);
            }
            Err(_) => {
                *stats
                    .errors
                    .entry("unreadable ack".to_string())
                    .or_default() += 1
            }
        }
    }
    Ok(())
}

/// A group's heartbeats each interval from `first` until `end`; returns what it measured
/// and the agents.
async fn run_group(
    mut g: Group,
    first: Instant,
    end: Instant,
    interval: Duration,
    event_permille: u64,
    full_telemetry: bool,
) -> (Stats, Vec<Agent>) {
    let mut stats = Stats::default();
    let mut slot = first;
    while slot < end {
        stats.wait_for(slot).await;
        send_round(&mut g, &mut stats, event_permille, full_telemetry).await;
        slot += interval;
    }
    (stats, g.agents)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let say = |line: String| {
        if !args.json_only {
            println!("{line}");
        }
    };
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.agents.unwrap_or(20_000).max(64))
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .build()?;
    let cp = ControlPlane::with_client(http.clone(), &args.server);

    let mut nodes = list_nodes(&http, &args).await?;
    if let Some(n) = args.agents {
        if n > nodes.len() {
            anyhow::bail!(
                "--agents {n}: site '{}' has only {} nodes",
                args.site,
                nodes.len()
            );
        }
        nodes.truncate(n);
    }
    anyhow::ensure!(!nodes.is_empty(), "site '{}' has no nodes", args.site);
    say(format!(
        "phase 1: registering {} agents of site {}",
        nodes.len(),
        args.site
    ));

    let t0 = Instant::now();
    let asked = nodes.len();
    let (agents, reg_errors) = register_all(&cp, &http, &args, nodes).await;
    let reg_secs = t0.elapsed().as_secs_f64();
    let reg_rate = agents.len() as f64 / reg_secs.max(1e-9);
    say(format!(
        "  {} registered, {} failed in {reg_secs:.1} s: {reg_rate:.0} registrations/s {reg_errors:?}",
        agents.len(),
        asked - agents.len()
    ));
    anyhow::ensure!(!agents.is_empty(), "no agent registered");

    let n = agents.len();
    let interval = Duration::from_secs(args.interval_secs.max(1));
    let target_rate = n as f64 / interval.as_secs_f64();
    let mut agents = agents;
    let phases = std::iter::once((2, args.server.as_str()))
        .chain(args.then_server.as_deref().map(|s| (3, s)));
    for (phase, servers) in phases {
        say(format!(
            "phase {phase}: {n} agents, a heartbeat every {} s each ({target_rate:.0}/s) for {} s to {servers}",
            interval.as_secs(),
            args.duration_secs
        ));
        let cp = ControlPlane::with_client(http.clone(), servers);
        let start = Instant::now() + Duration::from_millis(500);
        let end = start + Duration::from_secs(args.duration_secs);
        let mut stats = Stats::default();
        // Groups of neighbours in start time: a batch each, or one agent each.
        let size = args.batch.map_or(1, usize::from);
        let first = servers.split(',').next().unwrap_or_default().trim();
        let url = format!("{}/v1/agent/heartbeats", first.trim_end_matches('/'));
        let mut tasks = JoinSet::new();
        let mut all = std::mem::take(&mut agents).into_iter();
        let mut i = 0;
        loop {
            let mut group: Vec<Agent> = all.by_ref().take(size).collect();
            if group.is_empty() {
                break;
            }
            for agent in &mut group {
                agent.cp = cp.clone().starting_at(&agent.name);
            }
            let offset = interval.mul_f64(i as f64 / n as f64);
            i += group.len();
            tasks.spawn(run_group(
                Group::new(&http, &url, &args, group),
                start + offset,
                end,
                interval,
                args.event_permille,
                args.full_telemetry,
            ));
        }
        while let Some(joined) = tasks.join_next().await {
            if let Ok((s, group)) = joined {
                stats.merge(s);
                agents.extend(group);
            }
        }
        let elapsed = Instant::now()
            .saturating_duration_since(start)
            .as_secs_f64();
        let window = (args.duration_secs as f64).min(elapsed).max(1e-9);
        stats.latencies_us.sort_unstable();
        stats.start_lag_us.sort_unstable();
        let sent = stats.sent;
        let failed: u64 = stats.errors.values().sum();
        let achieved = sent as f64 / window;
        let lat = |q| quantile_ms(&stats.latencies_us, q);
        let max_ms = stats.latencies_us.last().copied().unwrap_or(0) as f64 / 1000.0;
        say(format!(
            "  target {target_rate:.0} heartbeats/s, achieved {achieved:.0}/s ({sent} sent, {failed} failed)"
        ));
        say(format!("  errors by status: {:?}", stats.errors));
        say(format!(
            "  {}latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {max_ms:.2}",
            if args.batch.is_some() { "batch " } else { "" },
            lat(500),
            lat(900),
            lat(990),
            lat(999)
        ));
        say(format!(
            "  late starts (previous still in flight): {} (max {:.0} ms); scheduler lag p99 {:.2} ms",
            stats.late,
            stats.max_late.as_secs_f64() * 1000.0,
            quantile_ms(&stats.start_lag_us, 990)
        ));
        let result = serde_json::json!({
            "phase": phase,
            "servers": servers,
            "site": args.site,
            "agents": n,
            "interval_secs": interval.as_secs(),
            "duration_secs": args.duration_secs,
            "registrations": {"ok": n, "failed": asked - n, "per_sec": reg_rate, "errors": reg_errors},
            "target_rate": target_rate,
            "achieved_rate": achieved,
            "heartbeats": sent,
            "batch": args.batch,
            "failed": failed,
            "errors": stats.errors,
            "latency_ms": {"p50": lat(500), "p90": lat(900), "p99": lat(990),
                           "p999": lat(999), "max": max_ms},
            "late": stats.late,
            "max_late_ms": stats.max_late.as_secs_f64() * 1000.0,
            "scheduler_lag_p99_ms": quantile_ms(&stats.start_lag_us, 990),
        });
        println!("RESULT {result}");
    }
    Ok(())
}
