//! End to end: the agent (sim backend) against a tiny fake control plane on 127.0.0.1 that
//! goes away for a while and comes back on the same port.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use clap::Parser;
use neocloud_agent::AgentArgs;
use neocloud_types::{
    AgentEvent, AgentEventKind, AgentRegister, AgentRegistered, BurnInRequest, Heartbeat,
    HeartbeatAck, NodeId, NodeState,
};

const ENROLL: &str = "enroll-key";
const NODE_KEY: &str = "node-key-1";

/// What the fake control plane saw.
#[derive(Default)]
struct Plane {
    registrations: Vec<String>,
    beats: usize,
    /// Stored events, deduplicated by sequence number.
    events: BTreeMap<u64, AgentEvent>,
    /// Every event received, duplicates included.
    received: Vec<AgentEvent>,
    state: Option<NodeState>,
    /// The heartbeat interval the plane asks for (1 s when unset).
    interval_secs: Option<u32>,
    /// Refuses compact telemetry as a control plane older than it does (400).
    refuse_rows: bool,
    /// Heartbeats refused for their compact telemetry.
    refused_rows: usize,
    /// Heartbeats with the full telemetry form.
    full_beats: usize,
}

type Shared = Arc<Mutex<Plane>>;

fn problem(status: StatusCode, detail: &str) -> Response {
    let body = serde_json::json!({"type": "about:blank", "title": "error",
        "status": status.as_u16(), "detail": detail, "code": "unauthorized"});
    (status, Json(body)).into_response()
}

fn bearer(h: &HeaderMap) -> String {
    let value = h
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    value.strip_prefix("Bearer ").unwrap_or("").to_string()
}

async fn register(
    State(s): State<Shared>,
    h: HeaderMap,
    Json(req): Json<AgentRegister>,
) -> Response {
    let key = bearer(&h);
    if key != ENROLL && key != NODE_KEY {
        return problem(StatusCode::UNAUTHORIZED, "unknown key");
    }
    let mut p = s.lock().unwrap();
    p.registrations.push(key);
    let state = *p.state.get_or_insert(NodeState::BurnIn);
    Json(AgentRegistered {
        node_id: NodeId::new(),
        node: req.hostname,
        state,
        heartbeat_interval_secs: p.interval_secs.unwrap_or(1),
        last_seq: p.events.keys().last().copied().unwrap_or(0),
        node_key: Some(NODE_KEY.to_string()),
        burn_in: (state == NodeState::BurnIn).then(|| BurnInRequest { id: "bi-1".into() }),
    })
    .into_response()
}

async fn heartbeat(State(s): State<Shared>, h: HeaderMap, Json(hb): Json<Heartbeat>) -> Response {
    if bearer(&h) != NODE_KEY {
        return problem(StatusCode::UNAUTHORIZED, "heartbeats need the node key");
    }
    let mut p = s.lock().unwrap();
    if p.refuse_rows && !hb.gpu_rows.is_empty() {
        p.refused_rows += 1;
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid request body: gpu_rows: unknown field `gpu_rows`",
        );
    }
    p.beats += 1;
    // The agent sends its telemetry as compact rows, one per GPU by registered index,
    // unless the plane refused them.
    if hb.gpu_rows.is_empty() {
        assert_eq!(hb.gpus.len(), 2);
        p.full_beats += 1;
    } else {
        assert!(hb.gpus.is_empty());
        assert_eq!(hb.gpu_rows.len(), 2);
        assert!(hb.gpu_rows.iter().all(|r| r.len() == 8));
        assert_eq!(
            hb.gpu_rows.iter().map(|r| r[0]).collect::<Vec<_>>(),
            vec![0, 1]
        );
    }
    for e in hb.events {
        if matches!(e.kind, AgentEventKind::BurnIn { passed: true, .. }) {
            p.state = Some(NodeState::Available);
        }
        p.received.push(e.clone());
        p.events.entry(e.seq).or_insert(e);
    }
    let state = p.state.unwrap_or(NodeState::BurnIn);
    Json(HeartbeatAck {
        acked_seq: p.events.keys().last().copied().unwrap_or(0),
        state,
        heartbeat_interval_secs: p.interval_secs.unwrap_or(1),
        burn_in: (state == NodeState::BurnIn).then(|| BurnInRequest { id: "bi-1".into() }),
        desired: None,
    })
    .into_response()
}

/// The fake control plane, served from a runtime of its own so that stopping it closes
/// every connection, keep-alive ones included.
struct Server {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Server {
    fn start(plane: Shared, addr: SocketAddr) -> Server {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound_tx, bound) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut tries = 0;
                let listener = loop {
                    match tokio::net::TcpListener::bind(addr).await {
                        Ok(l) => break l,
                        Err(e) if tries < 50 => {
                            tries += 1;
                            eprintln!("bind {addr}: {e}; retrying");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => panic!("bind {addr}: {e}"),
                    }
                };
                bound_tx.send(listener.local_addr().unwrap()).unwrap();
                let app = axum::Router::new()
                    .route("/v1/agent/register", post(register))
                    .route("/v1/agent/heartbeat", post(heartbeat))
                    .with_state(plane);
                tokio::select! {
                    r = axum::serve(listener, app) => r.unwrap(),
                    _ = stopped => {}
                }
            });
        });
        Server {
            addr: bound.recv().unwrap(),
            stop,
            thread,
        }
    }

    fn stop(self) -> SocketAddr {
        let _ = self.stop.send(());
        self.thread.join().unwrap();
        self.addr
    }
}

async fn wait_for(plane: &Shared, what: &str, f: impl Fn(&Plane) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !f(&plane.lock().unwrap()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn xids(events: &[AgentEvent], code: u32) -> usize {
    events
        .iter()
        .filter(|e| matches!(e.kind, AgentEventKind::Xid { code: c, .. } if c == code))
        .count()
}

fn stored(p: &Plane) -> Vec<AgentEvent> {
    p.events.values().cloned().collect()
}

/// Writes a fault file the way the docs ask: elsewhere, then renamed into place.
fn inject(path: &Path, spec: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{spec}\n")).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    agent: AgentArgs,
}

/// A running agent of the test and the way to stop it.
struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Starts an agent with `args` (after the program name).
    fn start(args: &[&str]) -> Running {
        let cli = Cli::parse_from(std::iter::once("agent").chain(args.iter().copied()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(neocloud_agent::run_until(cli.agent, async {
            let _ = stopped.await;
        }));
        Running { stop, task }
    }

    /// Stops it as SIGTERM would and waits (10 s at most) for it to end cleanly.
    async fn stop(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_heartbeats_and_delivers_buffered_events_once() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let plane = Shared::default();
    let server = Server::start(plane.clone(), "127.0.0.1:0".parse().unwrap());
    let dir = std::env::temp_dir().join(format!("neocloud-agent-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fault_file = dir.join("faults");
    let url = format!("http://{}", server.addr);
    let cli = Cli::parse_from([
        "agent",
        "--server",
        &url,
        "--key",
        ENROLL,
        "--backend",
        "sim",
        "--hostname",
        "gpu-node-001",
        "--sim-gpus",
        "2",
        "--sim-fault",
        "xid:31:1",
        "--sim-fault-file",
        fault_file.to_str().unwrap(),
        "--sim-burn-in-secs",
        "0",
        "--cpu-cores",
        "64",
        "--ram-gib",
        "512",
    ]);
    assert_eq!(format!("{:?}", cli.agent.key), "SecretKey(***)");
    let (stop_agent, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(neocloud_agent::run_until(cli.agent, async {
        let _ = stopped.await;
    }));

    // Registers with the enrollment key, then runs the requested burn-in once.
    wait_for(&plane, "burn-in result and the --sim-fault XID", |p| {
        p.state == Some(NodeState::Available) && xids(&stored(p), 31) == 1
    })
    .await;
    wait_for(&plane, "heartbeats", |p| p.beats >= 3).await;

    // A fault injected through the file arrives.
    inject(&fault_file, "xid:79:0");
    wait_for(&plane, "XID 79", |p| xids(&stored(p), 79) == 1).await;

    // The control plane goes away; an event happens meanwhile.
    let addr = server.stop();
    let beats_before = plane.lock().unwrap().beats;
    inject(&fault_file, "dbe:1");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fault_file.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "fault file not consumed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(xids(&stored(&plane.lock().unwrap()), 48), 0);

    // It comes back on the same port: the buffered event arrives, once.
    let server = Server::start(plane.clone(), addr);
    wait_for(&plane, "buffered XID 48", |p| xids(&stored(p), 48) == 1).await;
    wait_for(&plane, "more heartbeats", |p| p.beats >= beats_before + 2).await;

    stop_agent.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    server.stop();
    std::fs::remove_dir_all(&dir).ok();

    let p = plane.lock().unwrap();
    assert_eq!(p.registrations.first().map(String::as_str), Some(ENROLL));
    let events = stored(&p);
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=u64::try_from(seqs.len()).unwrap()).collect::<Vec<_>>()
    );
    assert_eq!(
        xids(&p.received, 48),
        1,
        "the buffered event was sent more than once"
    );
    assert_eq!(
        (xids(&events, 31), xids(&events, 79), xids(&events, 48)),
        (1, 1, 1)
    );
    let burn_ins: Vec<_> = events
        .iter()
        .filter(|e| matches!(e.kind, AgentEventKind::BurnIn { .. }))
        .collect();
    assert_eq!(burn_ins.len(), 1, "burn-in ran more than once");
    assert!(
        matches!(&burn_ins[0].kind, AgentEventKind::BurnIn { id, passed: true, .. } if id == "bi-1")
    );
    let dbe = events
        .iter()
        .find(|e| matches!(e.kind, AgentEventKind::Xid { code: 48, .. }));
    assert!(
        dbe.unwrap()
            .gpu_uuid
            .as_deref()
            .unwrap()
            .starts_with("GPU-")
    );
}

/// Health evidence does not wait for the next heartbeat: with an interval of an hour, an
/// XID injected after the first heartbeats still reaches the control plane at once (in a
/// heartbeat of its own), and nothing else brings heartbeats forward.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_xid_goes_out_at_once_not_an_interval_later() {
    let plane = Shared::default();
    plane.lock().unwrap().interval_secs = Some(3600);
    plane.lock().unwrap().state = Some(NodeState::Available);
    let server = Server::start(plane.clone(), "127.0.0.1:0".parse().unwrap());
    let dir = std::env::temp_dir().join(format!("neocloud-agent-xid-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fault_file = dir.join("faults");
    let url = format!("http://{}", server.addr);
    let agent = Running::start(&[
        "--server",
        &url,
        "--key",
        ENROLL,
        "--backend",
        "sim",
        "--hostname",
        "gpu-node-002",
        "--sim-gpus",
        "2",
        "--sim-fault-file",
        fault_file.to_str().unwrap(),
        "--state-dir",
        dir.join("state").to_str().unwrap(),
    ]);
    wait_for(&plane, "the first heartbeat", |p| p.beats >= 1).await;
    // Quiet for a while: no event, so no heartbeat before the hour is up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let beats = plane.lock().unwrap().beats;
    assert_eq!(beats, 1, "heartbeats without anything to say");
    inject(&fault_file, "xid:79:1");
    wait_for(&plane, "XID 79 well before the hour's heartbeat", |p| {
        xids(&stored(p), 79) == 1
    })
    .await;
    assert_eq!(plane.lock().unwrap().beats, 2);
    agent.stop().await;
    server.stop();
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_control_plane_gets_the_full_telemetry_form() {
    let plane = Shared::default();
    plane.lock().unwrap().refuse_rows = true;
    plane.lock().unwrap().state = Some(NodeState::Available);
    let server = Server::start(plane.clone(), "127.0.0.1:0".parse().unwrap());
    let dir = std::env::temp_dir().join(format!("neocloud-agent-old-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("http://{}", server.addr);
    let agent = Running::start(&[
        "--server",
        &url,
        "--key",
        ENROLL,
        "--backend",
        "sim",
        "--hostname",
        "gpu-node-003",
        "--sim-gpus",
        "2",
        "--state-dir",
        dir.join("state").to_str().unwrap(),
    ]);
    wait_for(&plane, "two heartbeats in the full form", |p| {
        p.full_beats >= 2
    })
    .await;
    {
        let p = plane.lock().unwrap();
        // Refused once, then the full form every time (the first right away).
        assert_eq!(p.refused_rows, 1);
        assert_eq!(p.beats, p.full_beats);
    }
    agent.stop().await;
    server.stop();
    std::fs::remove_dir_all(&dir).ok();
}
