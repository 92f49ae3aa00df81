//! The fault suite: three real `neocloud serve` replicas on one PostgreSQL database (and, for
//! SQLite mode, one process killed and restarted on its data directory), a load
//! generator launching and terminating instances, signing contracts and recording contract
//! downtime through random replicas (every write with an Idempotency-Key, retried with it
//! across failovers), and a harness that `kill -9`s the leader at random moments, restarts it, and
//! (where `NEOCLOUD_TEST_FAULTS_PAUSE_PG=1`, set by `scripts/test.sh` for its throwaway
//! cluster) freezes PostgreSQL for a moment. Afterwards it checks the invariants in docs/architecture.md
//! 1, 2, 6 and 8 against the database and against every acknowledged response, and that no
//! retried contract or downtime was recorded twice.
//!
//! Meanwhile a simulated agent on every node beats every second, spread over the replicas as
//! `neocloud agent --server A,B,C` spreads them (followers answer heartbeats without news
//! themselves), failing over when its replica dies, and sends an event now and then. No node
//! may be failed for silence, and every event an agent had acknowledged must be stored
//! exactly once.
//!
//! Bounded: `NEOCLOUD_TEST_FAULTS_SECS` seconds of load (20 by default; the soak run in
//! `docs/deployment.md` uses more). It prints a report: operations acknowledged, kills
//! survived, failovers and how long each took, invariant violations (must be 0).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Row;

use crate::ctx::{Db, fresh_database_url, temp_dir, unique};

const BIN: &str = env!("CARGO_BIN_EXE_neocloud");

const FLEET: &str = r#"
[[sites]]
name = "east"
region = "us-east"
power_mw = 5
pue = 1.1
[[sites.node_groups]]
gpu_model = "H100-SXM-80GB"
gpus = 8
peak_watts = 10000
idle_watts = 2000
nodes_per_block = 8
layout = [
  { kind = "pod", count = 1, name = "f-p{n}" },
  { kind = "leaf_group", count = 4, name = "{parent}-l{n}" },
]
name = "{block}-n{n}"
"#;

struct Replica {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Replica {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn start(&mut self, db: &str, fleet: Option<&Path>) {
        // NEOCLOUD_TEST_SERVE_BIN runs another build (the release one, for the failover
        // benchmark).
        let bin = std::env::var("NEOCLOUD_TEST_SERVE_BIN").unwrap_or_else(|_| BIN.to_string());
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--database-url", db, "--lease-ttl", "2"])
            // Agents beat every second: unreachable after 4 s of silence, failed after 12.
            .args(["--heartbeat-interval", "1", "--missed-heartbeats", "4"])
            .args(["--unreachable-grace", "12"])
            .args(["--follower-refresh", "1", "--listen"])
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(&self.dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped());
        // Kept (appended over restarts) so that a serve that fails to start says why.
        let _ = std::fs::create_dir_all(&self.dir);
        let log = self.dir.join("serve.stderr");
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
        {
            Ok(f) => cmd.stderr(f),
            Err(_) => cmd.stderr(Stdio::null()),
        };
        if let Some(f) = fleet {
            cmd.arg("--fleet").arg(f);
        }
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        loop {
            let Some(Ok(line)) = lines.next() else {
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = said.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!(
                    "serve on port {} exited early; its stderr ends:\n{}",
                    self.port,
                    tail.join("\n")
                );
            };
            if line.starts_with("neocloud is serving on http://") {
                break;
            }
        }
        // Keep draining stdout so the process never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        self.child = Some(child);
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap()
}

async fn is_leader(client: &reqwest::Client, url: &str) -> bool {
    match client.get(format!("{url}/readyz")).send().await {
        Ok(r) => r.text().await.is_ok_and(|t| t.starts_with("ready (leader")),
        Err(_) => false,
    }
}

/// One acknowledged operation.
#[derive(Clone, Debug)]
enum Ack {
    Launch { key: String, id: String },
    Terminate { id: String },
    Contract { key: String, id: String },
    Downtime { key: String },
}

#[derive(Default)]
struct Log {
    acks: Vec<Ack>,
    /// When each acknowledgement arrived.
    at: Vec<Instant>,
    refused: usize,
    gave_up: usize,
    /// 500 answers (an internal error is a bug, whatever the chaos).
    internal: usize,
    running: Vec<String>,
    /// Contracts acknowledged (id, start), for downtime to be recorded against.
    contracts: Vec<(String, String)>,
}

/// Sends a write through a random replica, retrying (same Idempotency-Key) across
/// failovers. `Some` is the acknowledged body; `None` a refusal (4xx) or giving up.
async fn write(
    client: &reqwest::Client,
    urls: &[String],
    key: &str,
    path: &str,
    idem: &str,
    body: &Value,
    seed: &mut u64,
) -> Result<Value, bool> {
    write_counting(client, urls, key, path, idem, body, seed, &mut 0).await
}

#[allow(clippy::too_many_arguments)]
async fn write_counting(
    client: &reqwest::Client,
    urls: &[String],
    key: &str,
    path: &str,
    idem: &str,
    body: &Value,
    seed: &mut u64,
    internal: &mut usize,
) -> Result<Value, bool> {
    for _ in 0..60 {
        let url = &urls[pick(seed, urls.len())];
        let r = client
            .post(format!("{url}{path}"))
            .bearer_auth(key)
            .header("Idempotency-Key", idem)
            .json(body)
            .send()
            .await;
        match r {
            // Recorded, with no body (downtime).
            Ok(r) if r.status() == reqwest::StatusCode::NO_CONTENT => return Ok(Value::Null),
            Ok(r) if r.status().is_success() => {
                if let Ok(v) = r.json::<Value>().await {
                    return Ok(v);
                }
            }
            Ok(r) if r.status().is_client_error() => return Err(true),
            Ok(r) if r.status() == reqwest::StatusCode::INTERNAL_SERVER_ERROR => {
                *internal += 1;
                // What went wrong, for whoever reads the failed test.
                let text = r.text().await.unwrap_or_default();
                eprintln!("500 on POST {path}: {text}");
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    Err(false)
}

/// A random index below `n`.
fn pick(seed: &mut u64, n: usize) -> usize {
    usize::try_from(next(seed) % n.max(1) as u64).unwrap_or(0)
}

fn next(seed: &mut u64) -> u64 {
    // splitmix64: a reproducible stream per worker.
    *seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One write the load generator sends.
enum Op {
    Terminate(String),
    Contract(String),
    Launch(String),
    Downtime(String),
}

async fn worker(
    client: reqwest::Client,
    urls: Vec<String>,
    key: String,
    until: Instant,
    mut seed: u64,
    log: Arc<Mutex<Log>>,
) {
    let mut n = 0u64;
    // Makes each contract's terms unique to this operation, so a retry that signed twice
    // shows as two contracts with the same terms.
    let worker_tag = (seed % 1000) * 100_000;
    while Instant::now() < until {
        n += 1;
        let roll = next(&mut seed) % 10;
        let (running, contracts) = {
            let l = log.lock().unwrap();
            (l.running.clone(), l.contracts.clone())
        };
        let now = neocloud_types::Timestamp::now();
        let (op, path, idem, body) = if roll < 3 && !running.is_empty() {
            let id = running[pick(&mut seed, running.len())].clone();
            let path = format!("/v1/instances/{id}/terminate");
            (
                Op::Terminate(id.clone()),
                path,
                format!("t-{id}"),
                json!({}),
            )
        } else if roll < 4 {
            let idem = format!("c-{seed:x}-{n}");
            let end = now.plus_seconds(30 * 86_400 + i64::try_from(worker_tag + n).unwrap_or(0));
            let body = json!({"tenant_id": "load", "gpu_model": "H100-SXM-80GB", "gpu_count": 8,
                "start_at": now.to_string(), "end_at": end.to_string(), "site": "east"});
            (
                Op::Contract(idem.clone()),
                "/v1/contracts".to_string(),
                idem,
                body,
            )
        } else if roll < 5 && !contracts.is_empty() {
            // Downtime credits the contract's tenant: a retry that recorded twice would
            // credit twice. The note names the request.
            let (id, start) = contracts[pick(&mut seed, contracts.len())].clone();
            let idem = format!("d-{seed:x}-{n}");
            let gpus = 1 + pick(&mut seed, 8);
            // An hour inside the contract's term, from its start.
            let start: neocloud_types::Timestamp = start.parse().unwrap();
            let body = json!({"start_at": start.to_string(),
                "end_at": start.plus_seconds(3600).to_string(), "gpus": gpus, "note": idem});
            (
                Op::Downtime(idem.clone()),
                format!("/v1/contracts/{id}/downtime"),
                idem,
                body,
            )
        } else {
            let idem = format!("l-{seed:x}-{n}");
            let gpus = [1, 2, 4, 8][pick(&mut seed, 4)];
            let body = json!({"tenant_id": "load", "gpu_model": "H100-SXM-80GB", "gpus": gpus, "name": idem});
            (
                Op::Launch(idem.clone()),
                "/v1/instances".to_string(),
                idem,
                body,
            )
        };
        let mut internal = 0;
        let r = write_counting(
            &client,
            &urls,
            &key,
            &path,
            &idem,
            &body,
            &mut seed,
            &mut internal,
        )
        .await;
        let mut l = log.lock().unwrap();
        l.internal += internal;
        let v = match r {
            Ok(v) => v,
            Err(true) => {
                l.refused += 1;
                continue;
            }
            Err(false) => {
                l.gave_up += 1;
                continue;
            }
        };
        let id = v["id"].as_str().unwrap_or_default().to_string();
        match op {
            Op::Terminate(id) => {
                l.running.retain(|r| *r != id);
                l.acks.push(Ack::Terminate { id });
            }
            Op::Contract(key) => {
                let start = v["start_at"].as_str().unwrap_or_default().to_string();
                l.contracts.push((id.clone(), start));
                l.acks.push(Ack::Contract { key, id });
            }
            Op::Downtime(key) => l.acks.push(Ack::Downtime { key }),
            Op::Launch(key) => {
                if v["state"] == "running" {
                    l.running.push(id.clone());
                }
                l.acks.push(Ack::Launch { key, id });
            }
        }
        l.at.push(Instant::now());
    }
}

/// Freezes every PostgreSQL process of the throwaway cluster for `d`.
fn pause_postgres(d: Duration) -> bool {
    let Ok(out) = Command::new("pgrep")
        .args(["-u", "postgres", "-x", "postgres"])
        .output()
    else {
        return false;
    };
    let pids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if pids.is_empty() {
        return false;
    }
    let stopped = Command::new("kill")
        .arg("-STOP")
        .args(&pids)
        .status()
        .is_ok_and(|s| s.success());
    std::thread::sleep(d);
    let _ = Command::new("kill").arg("-CONT").args(&pids).status();
    stopped
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_survive_kill_9_and_lose_nothing() {
    run(Db::Postgres, 3).await;
}

/// SQLite mode: one process, killed and restarted under the same load and checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_single_sqlite_process_survives_kill_9_and_loses_nothing() {
    run(Db::Sqlite, 1).await;
}

/// What one simulated agent did.
struct AgentRun {
    host: String,
    /// Events it made.
    sent: u64,
    /// Events still unacknowledged when it stopped.
    waiting: usize,
    beats: u64,
    failed_calls: u64,
}

/// A node's agent until `until` (then until its events are acknowledged, 30 s at most): a
/// heartbeat every second to the replica it is on, an XID 13 with each tenth.
async fn agent(urls: Vec<String>, enroll: String, host: String, until: Instant) -> AgentRun {
    use neocloud_agent::backend::GpuBackend;
    use neocloud_agent::buffer::EventBuffer;
    use neocloud_agent::client::ControlPlane;
    use neocloud_agent::sim::SimBackend;
    use neocloud_types::{AgentEventKind, AgentRegister, Heartbeat, Timestamp};
    // As the real agent does: a call gives up well within the missed-heartbeat limit.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let cp = ControlPlane::with_client(client, &urls.join(",")).starting_at(&host);
    let mut sim = SimBackend::new(&host, 8, "H100-SXM-80GB", true);
    let inventory = sim.inventory().unwrap();
    let body = AgentRegister {
        hostname: host.clone(),
        agent_version: "fault-suite".into(),
        backend: "sim".into(),
        driver_version: None,
        cpu_cores: 112,
        ram_gib: 2048,
        gpus: inventory.clone(),
    };
    let mut run = AgentRun {
        host: host.clone(),
        sent: 0,
        waiting: 0,
        beats: 0,
        failed_calls: 0,
    };
    let mut events = EventBuffer::new(100_000);
    let mut pushed = 0;
    let mut key = None;
    let mut seed = host
        .bytes()
        .fold(17u64, |h, b| h.wrapping_mul(31) ^ u64::from(b));
    let compact = seed % 2 == 0;
    let give_up = until + Duration::from_secs(30);
    loop {
        let now = Instant::now();
        if (now >= until && events.is_empty() && key.is_some()) || now >= give_up {
            break;
        }
        let Some(k) = key.clone() else {
            match cp.register(&enroll, &body).await {
                Ok(r) => {
                    events.on_register(r.last_seq);
                    key = Some(r.node_key.unwrap_or_else(|| enroll.clone()));
                }
                Err(_) => {
                    run.failed_calls += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            continue;
        };
        if now < until && next(&mut seed).is_multiple_of(10) {
            let kind = AgentEventKind::Xid {
                code: 13,
                detail: Some("fault suite".into()),
            };
            events.push(Some(inventory[0].uuid.clone()), kind, Timestamp::now());
            pushed += 1;
        }
        let mut beat = Heartbeat {
            generation: None,
            workloads: Vec::new(),
            sent_at: Timestamp::now(),
            gpus: sim.sample().unwrap_or_default(),
            gpu_rows: Vec::new(),
            events: events.batch(100),
            leaving: None,
        };
        // Half the agents send the compact telemetry `neocloud agent` sends, half the full
        // form: both through followers and leaders.
        if compact {
            beat.compact(&inventory);
        }
        match cp.heartbeat(&k, &beat).await {
            Ok(ack) => {
                events.ack(ack.acked_seq);
                run.beats += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                run.failed_calls += 1;
                if matches!(e.status(), Some(401 | 404 | 409)) {
                    key = None;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    run.waiting = events.len();
    run.sent = pushed;
    run
}

async fn run(backend: Db, n: usize) {
    let Some(db) = fresh_database_url(backend).await else {
        return;
    };
    let secs: u64 = std::env::var("NEOCLOUD_TEST_FAULTS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let dir = temp_dir();
    let fleet = dir.join("fleet.toml");
    std::fs::write(&fleet, FLEET).unwrap();
    let mut replicas: Vec<Replica> = (0..n)
        .map(|i| Replica {
            port: free_port(),
            dir: dir.join(format!("r{i}")),
            child: None,
        })
        .collect();
    replicas[0].start(&db, Some(&fleet));
    for r in replicas.iter_mut().skip(1) {
        r.start(&db, None);
    }
    let key = std::fs::read_to_string(replicas[0].dir.join("operator.key"))
        .unwrap()
        .trim()
        .to_string();
    let urls: Vec<String> = replicas.iter().map(Replica::url).collect();
    let client = http();
    let mut seed = 7;
    write(
        &client,
        &urls,
        &key,
        "/v1/tenants",
        &format!("tenant-{}", unique()),
        &json!({"name": "load"}),
        &mut seed,
    )
    .await
    .expect("tenant");

    // Load for `secs` seconds, four workers.
    let log = Arc::new(Mutex::new(Log::default()));
    let until = Instant::now() + Duration::from_secs(secs);
    // An agent on every node (4 leaf groups of 8), enrolled with one node-agent key.
    // (A replayed creation does not show the secret again: then another key.)
    let enroll = loop {
        let created = write(
            &client,
            &urls,
            &key,
            "/v1/api-keys",
            &format!("enroll-{}", unique()),
            &json!({"name": "fault-suite agents", "role": "node-agent"}),
            &mut seed,
        )
        .await
        .expect("enrollment key");
        if let Some(secret) = created["secret"].as_str() {
            break secret.to_string();
        }
    };
    let agents: Vec<_> = (1..=4)
        .flat_map(|l| (1..=8).map(move |n| format!("f-p1-l{l}-n{n}")))
        // They beat 6 s past the chaos and the load: the last leader then hears of them
        // only through the followers for longer than the missed-heartbeat limit.
        .map(|host| {
            let end = until + Duration::from_secs(6);
            tokio::spawn(agent(urls.clone(), enroll.clone(), host, end))
        })
        .collect();
    let workers: Vec<_> = (0..4)
        .map(|w| {
            tokio::spawn(worker(
                client.clone(),
                urls.clone(),
                key.clone(),
                until,
                1000 + w,
                log.clone(),
            ))
        })
        .collect();

    // Chaos: kill the leader every few seconds, measure the failover, restart it.
    let pause_pg = backend == Db::Postgres
        && std::env::var("NEOCLOUD_TEST_FAULTS_PAUSE_PG").is_ok_and(|v| v == "1");
    let mut kills = 0;
    let mut freezes = 0;
    let mut pauses = 0;
    let mut failovers: Vec<Duration> = Vec::new();
    let mut windows: Vec<(Instant, Instant)> = Vec::new();
    let load_start = Instant::now();
    let mut rng = 99u64;
    while Instant::now() + Duration::from_secs(4) < until {
        tokio::time::sleep(Duration::from_millis(1500 + next(&mut rng) % 2500)).await;
        if pause_pg && pauses == 0 && kills >= 1 {
            pauses += usize::from(pause_postgres(Duration::from_millis(3000)));
            continue;
        }
        let mut leader = None;
        for (i, u) in urls.iter().enumerate() {
            if is_leader(&client, u).await {
                leader = Some(i);
            }
        }
        let Some(i) = leader else { continue };
        let alone = replicas.len() == 1;
        // Every other fault with replicas freezes the leader instead (SIGSTOP for longer
        // than the lease): a live leader that is deposed without knowing it. When it wakes
        // it still believes it leads until its next tick; the fence must refuse its writes.
        let freeze = !alone && (kills + freezes) % 2 == 1;
        let pid = replicas[i].child.as_ref().map(Child::id);
        if freeze {
            if let Some(pid) = pid {
                let ok = Command::new("kill")
                    .args(["-STOP", &pid.to_string()])
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(ok, "could not freeze the leader");
            }
            freezes += 1;
        } else {
            replicas[i].kill9();
            kills += 1;
        }
        let killed_at = Instant::now();
        if alone {
            // The only process: it comes back at once, on the same address and database.
            replicas[i].start(&db, None);
        }
        let deadline = killed_at + Duration::from_secs(30);
        'wait: while Instant::now() < deadline {
            for (j, u) in urls.iter().enumerate() {
                if (alone || j != i) && is_leader(&client, u).await {
                    failovers.push(killed_at.elapsed());
                    windows.push((killed_at, Instant::now()));
                    break 'wait;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if freeze {
            if let Some(pid) = pid {
                let _ = Command::new("kill")
                    .args(["-CONT", &pid.to_string()])
                    .status();
            }
        } else if !alone {
            tokio::time::sleep(Duration::from_millis(500)).await;
            replicas[i].start(&db, None);
        }
    }
    for w in workers {
        w.await.unwrap();
    }
    let mut agent_runs = Vec::new();
    for a in agents {
        agent_runs.push(a.await.unwrap());
    }

    // Settle: one leader, everything committed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut leaders = 0;
        for u in &urls {
            leaders += usize::from(is_leader(&client, u).await);
        }
        if leaders == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no single leader after the run ({leaders})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::mem::take(&mut *log.lock().unwrap());
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(2)
        .connect(&db)
        .await
        .unwrap();
    let mut violations: Vec<String> = Vec::new();

    // 1. A GPU belongs to at most one running instance, and a live instance holds exactly
    //    its GPUs: those it holds one by one (`gpus.holder`) and those of the nodes it holds
    //    whole (`node_holds`).
    let held = sqlx::query(
        "SELECT i.id, i.state, i.gpu_count, CAST(
             (SELECT COUNT(*) FROM gpus g WHERE g.holder = i.id)
             + COALESCE((SELECT SUM(n.gpu_count) FROM node_holds w JOIN nodes n ON n.id = w.node_id
                         WHERE w.holder = i.id), 0) AS BIGINT) AS held
         FROM instances i",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for r in &held {
        let (id, state): (String, String) = (r.get("id"), r.get("state"));
        let (want, got): (i64, i64) = (r.get("gpu_count"), r.get("held"));
        let live = matches!(state.as_str(), "running" | "preempting" | "terminating");
        if live && want != got || !live && got != 0 {
            violations.push(format!(
                "instance {id} ({state}) holds {got} GPUs, should hold {}",
                if live { want } else { 0 }
            ));
        }
    }
    let total_held: i64 = held.iter().map(|r| r.get::<i64, _>("held")).sum();
    let distinct: i64 = sqlx::query(
        "SELECT CAST((SELECT COUNT(*) FROM gpus WHERE holder IS NOT NULL)
             + COALESCE((SELECT SUM(n.gpu_count) FROM node_holds w
                         JOIN nodes n ON n.id = w.node_id), 0) AS BIGINT) AS n",
    )
    .fetch_one(&pool)
    .await
    .unwrap()
    .get("n");
    let both: i64 = sqlx::query(
        "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM node_holds w
         WHERE EXISTS (SELECT 1 FROM gpus g WHERE g.node_id = w.node_id AND g.holder IS NOT NULL)
            OR EXISTS (SELECT 1 FROM instance_slices s WHERE s.node_id = w.node_id)",
    )
    .fetch_one(&pool)
    .await
    .unwrap()
    .get("n");
    if both != 0 {
        violations.push(format!(
            "{both} nodes held whole also hold GPUs one by one or slices"
        ));
    }
    if total_held != distinct {
        violations.push(format!("{total_held} holds on {distinct} GPUs"));
    }

    // 2. Contracts never promise more than the sellable GPUs, at any time.
    let contracts = sqlx::query(
        "SELECT id, gpu_count, start_at, end_at FROM contracts WHERE state IN ('signed', 'active')",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let cap: Value = client
        .get(format!("{}/v1/capacity?site=east", urls[0]))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sellable = cap["items"][0]["sellable_gpus"]
        .as_i64()
        .expect("sellable GPUs");
    let mut edges: BTreeMap<i64, i64> = BTreeMap::new();
    for c in &contracts {
        *edges.entry(c.get("start_at")).or_default() += c.get::<i64, _>("gpu_count");
        *edges.entry(c.get("end_at")).or_default() -= c.get::<i64, _>("gpu_count");
    }
    let mut promised = 0;
    for (_, d) in edges {
        promised += d;
        if promised > sellable {
            violations.push(format!("{promised} GPUs promised, {sellable} sellable"));
        }
    }

    // 6. The ledger matches the lifetimes of ended instances: metered to the second, the
    //    records tile [start, end] (both truncated to the whole second) without gap or
    //    overlap, each worth its GPUs × its seconds.
    let ended = sqlx::query(
        "SELECT id, gpu_count, started_at, ended_at FROM instances
         WHERE started_at IS NOT NULL AND ended_at IS NOT NULL",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for i in &ended {
        let id: String = i.get("id");
        let recs = sqlx::query(
            "SELECT start_at, end_at, gpu_seconds, gpus FROM usage_records WHERE instance_id = $1 ORDER BY start_at",
        )
        .bind(&id)
        .fetch_all(&pool)
        .await
        .unwrap();
        let second = |t: i64| t - t.rem_euclid(1_000_000);
        let mut at: i64 = second(i.get("started_at"));
        for r in &recs {
            let (s, e): (i64, i64) = (r.get("start_at"), r.get("end_at"));
            let g: i64 = r.get("gpu_seconds");
            if s != at || g != r.get::<i64, _>("gpus") * ((e - s) / 1_000_000) {
                violations.push(format!(
                    "instance {id}: ledger record {s}..{e} ({g} GPU-s) does not follow {at}"
                ));
            }
            at = e;
        }
        let end: i64 = second(i.get("ended_at"));
        if at != end {
            violations.push(format!(
                "instance {id}: ledger ends at {at}, the instance at {end}"
            ));
        }
    }

    // 8. Every acknowledged create exists exactly once; acknowledged terminates stuck.
    let names = sqlx::query(
        "SELECT name, CAST(COUNT(*) AS BIGINT) AS n FROM instances WHERE name IS NOT NULL GROUP BY name",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let by_name: BTreeMap<String, i64> =
        names.iter().map(|r| (r.get("name"), r.get("n"))).collect();
    let ids: BTreeSet<String> = held.iter().map(|r| r.get("id")).collect();
    let contract_ids: BTreeSet<String> = sqlx::query("SELECT id FROM contracts")
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get("id"))
        .collect();
    for (name, n) in &by_name {
        if *n > 1 {
            violations.push(format!("launch {name} created {n} instances"));
        }
    }
    // Each contract's end is unique to the request that signed it (its start is the
    // server's clock): two contracts with the same end are one request signed twice.
    let twice = sqlx::query(
        "SELECT end_at, CAST(COUNT(*) AS BIGINT) AS n FROM contracts
         GROUP BY end_at HAVING COUNT(*) > 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let duplicated_contracts = twice.len();
    for r in &twice {
        violations.push(format!(
            "the contract ending at {} was signed {} times",
            r.get::<i64, _>("end_at"),
            r.get::<i64, _>("n")
        ));
    }
    let downtime: BTreeMap<String, i64> =
        sqlx::query("SELECT note, CAST(COUNT(*) AS BIGINT) AS n FROM downtime GROUP BY note")
            .fetch_all(&pool)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get("note"), r.get("n")))
            .collect();
    let mut duplicated_downtime = 0;
    for (note, n) in &downtime {
        if *n > 1 {
            duplicated_downtime += 1;
            violations.push(format!("downtime {note} recorded {n} times"));
        }
    }
    let (mut launches, mut terminates, mut signed, mut downs) = (0, 0, 0, 0);
    for a in &log.acks {
        match a {
            Ack::Launch { key, id } => {
                launches += 1;
                if !ids.contains(id) || by_name.get(key) != Some(&1) {
                    violations.push(format!("acknowledged launch {key} ({id}) is missing"));
                }
            }
            Ack::Terminate { id } => {
                terminates += 1;
                let state: Option<String> =
                    sqlx::query("SELECT state FROM instances WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&pool)
                        .await
                        .unwrap()
                        .map(|r| r.get("state"));
                if state
                    .as_deref()
                    .is_none_or(|s| matches!(s, "running" | "pending"))
                {
                    violations.push(format!("acknowledged terminate of {id} left it {state:?}"));
                }
            }
            Ack::Contract { key, id } => {
                signed += 1;
                if !contract_ids.contains(id) {
                    violations.push(format!("acknowledged contract {key} ({id}) is missing"));
                }
            }
            Ack::Downtime { key } => {
                downs += 1;
                if downtime.get(key) != Some(&1) {
                    violations.push(format!("acknowledged downtime {key} is missing"));
                }
            }
        }
    }
    // 9. Agents spread over the replicas: no node failed for silence, and every event an
    //    agent made was acknowledged and stored exactly once.
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
                .get::<i64, _>("n")
        }
    };
    let lost = count(
        "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM health_events WHERE kind = 'heartbeat_lost'",
    )
    .await;
    if lost > 0 {
        violations.push(format!("{lost} nodes failed for silence"));
    }
    let unreachable = count(
        "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM health_events
         WHERE kind = 'state' AND action = 'unreachable'",
    )
    .await;
    // A follower that answered an agent tells the leader through the database within 2 s:
    // without that, a run marks a dozen nodes or more unreachable. A heartbeat slower than
    // the agents' 2 s limit on an overloaded machine may mark one. (A single process has no
    // followers: there, marks only say the machine was overloaded, and are reported.)
    if n > 1 && unreachable > 2 {
        violations.push(format!(
            "{unreachable} times a node was marked unreachable while its agent beat"
        ));
    }
    let (mut beats, mut events, mut agent_failures) = (0, 0, 0);
    for a in &agent_runs {
        beats += a.beats;
        events += a.sent;
        agent_failures += a.failed_calls;
        let stored: i64 = sqlx::query(
            "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM health_events h
             JOIN nodes n ON n.id = h.node_id
             WHERE n.name = $1 AND h.kind = 'xid' AND h.code = 13",
        )
        .bind(&a.host)
        .fetch_one(&pool)
        .await
        .unwrap()
        .get("n");
        if a.waiting > 0 || a.beats == 0 {
            violations.push(format!(
                "agent {} stopped with {} events unacknowledged after {} heartbeats",
                a.host, a.waiting, a.beats
            ));
        }
        if u64::try_from(stored).ok() != Some(a.sent) {
            violations.push(format!(
                "agent {} made {} events, {stored} stored",
                a.host, a.sent
            ));
        }
    }
    let mut answered_by_followers = 0;
    for u in &urls {
        let m = crate::replicas::scrape(u).await;
        if m.contains("\nneocloud_leader 0\n") {
            answered_by_followers += m
                .lines()
                .find_map(|l| l.strip_prefix("neocloud_heartbeats_total "))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    println!(
        "fault suite agents: {} agents, {beats} heartbeats acknowledged ({answered_by_followers} \
         answered by the followers that are up now, since their start), {events} events made, \
         {agent_failures} calls failed and were retried; nodes failed for silence {lost}, \
         marked unreachable {unreachable}",
        agent_runs.len()
    );

    // Throughput: acknowledged writes per second overall, and inside the failover windows
    // (from the kill until a new leader answers).
    let run = until
        .saturating_duration_since(load_start)
        .as_secs_f64()
        .max(1e-3);
    let in_windows = log
        .at
        .iter()
        .filter(|t| windows.iter().any(|(a, b)| *t >= a && *t <= b))
        .count();
    let window_secs: f64 = windows.iter().map(|(a, b)| (*b - *a).as_secs_f64()).sum();
    let outside = (log.at.len() - in_windows) as f64 / (run - window_secs).max(1e-3);
    let during = in_windows as f64 / window_secs.max(1e-3);
    println!(
        "fault suite throughput: {:.1} acknowledged writes/s outside failovers, {during:.1}/s during them ({window_secs:.1} s in all)",
        outside
    );
    let mean =
        failovers.iter().map(Duration::as_secs_f64).sum::<f64>() / failovers.len().max(1) as f64;
    let worst = failovers
        .iter()
        .map(Duration::as_secs_f64)
        .fold(0.0, f64::max);
    println!(
        "fault suite ({backend:?}): {secs} s of load through {n} replica(s); acknowledged {} ({launches} launches, {terminates} terminates, {signed} contracts, {downs} downtimes), refused {}, gave up {}; \
         kills survived {kills}, leader freezes {freezes}, PostgreSQL pauses {pauses}, internal errors {}, failovers {} (mean {mean:.2} s, worst {worst:.2} s); duplicated contracts {duplicated_contracts}, duplicated downtime {duplicated_downtime}; invariant violations {}",
        log.acks.len(),
        log.refused,
        log.gave_up,
        log.internal,
        failovers.len(),
        violations.len()
    );
    assert!(
        violations.is_empty(),
        "invariant violations:\n{}",
        violations.join("\n")
    );
    assert!(
        kills >= 1 && failovers.len() == kills + freezes,
        "every kill and freeze must end in a failover"
    );
    if log.internal > 0 {
        // The servers logged the cause of each 500: show it.
        let said: Vec<String> = replicas
            .iter()
            .flat_map(|r| {
                std::fs::read_to_string(r.dir.join("serve.stderr"))
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains("ERROR"))
                    .take(10)
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect();
        panic!(
            "{} writes failed with an internal error; the servers said:\n{}",
            log.internal,
            said.join("\n")
        );
    }
    assert!(
        launches > 0 && terminates > 0 && signed > 0 && downs > 0,
        "the load must have done work"
    );
    assert_eq!(
        log.gave_up, 0,
        "every write must get an answer across failovers"
    );
}
