//! Silence is not failure: a node whose agent stops heartbeating is `unreachable` (its work
//! keeps running and billing, it takes nothing new, a contract pool keeps it) and returns to
//! its state when heard from again; only silence past the grace period fails it. An agent
//! that stops on purpose says when it will be back, and its node is not even unreachable.
//! Both databases, with the service's manual clock; the real `neocloud agent` binary too.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use neocloud_service::{Clock, SchedulerConfig};
use neocloud_types::Timestamp;
use serde_json::{Value, json};

use crate::api_health::{FLEET, beat, inventory};
use crate::ctx::{Db, TestContext, temp_dir};

/// Runs a test body on both databases with a manual clock and these settings.
macro_rules! clocked {
    ($name:ident, $config:expr, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            async fn run(db: Db) {
                let clock = Clock::manual(Timestamp::now());
                let Some(ctx) = TestContext::start_clocked(db, $config, clock.clone()).await else {
                    return;
                };
                ($body)(ctx, clock).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                run(Db::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                run(Db::Postgres).await;
            }
        }
    };
}

async fn register(ctx: &TestContext, enroll: &str, host: &str) -> String {
    let r = ctx
        .post("/v1/agent/register", enroll, &inventory(host))
        .await
        .expect(200);
    r["node_key"].as_str().unwrap().to_string()
}

async fn state(ctx: &TestContext, host: &str) -> String {
    ctx.get(&format!("/v1/nodes/{host}"), &ctx.operator_key)
        .await
        .expect(200)["state"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn instance(ctx: &TestContext, key: &str, id: &str) -> Value {
    ctx.get(&format!("/v1/instances/{id}"), key)
        .await
        .expect(200)
}

/// Advances the service's clock and runs the health monitor's periodic work then.
async fn pass(ctx: &TestContext, clock: &Clock, secs: i64) {
    clock.advance(secs);
    ctx.svc.health_tick(ctx.svc.now()).await.unwrap();
}

fn secs(v: &Value) -> i64 {
    v.as_str().unwrap().parse::<Timestamp>().unwrap().micros() / 1_000_000
}

/// The node's state changes in its audit trail: (before, after) in order.
async fn transitions(ctx: &TestContext, host: &str) -> Vec<(String, String)> {
    let id = ctx
        .get(&format!("/v1/nodes/{host}"), &ctx.operator_key)
        .await
        .expect(200)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ev = ctx
        .get(
            "/v1/events?action=node.state_changed&limit=500",
            &ctx.operator_key,
        )
        .await
        .expect(200);
    let mut v: Vec<(String, String)> = ev["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["resource_id"] == id.as_str())
        .map(|e| {
            (
                e["before"]["state"].as_str().unwrap_or("").to_string(),
                e["after"]["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    v.reverse();
    v
}

clocked!(
    silent_nodes_are_unreachable_keep_their_work_and_come_back,
    SchedulerConfig::default(),
    |ctx: TestContext, clock: Clock| async move {
        ctx.import(FLEET).await.expect(200);
        let enroll = ctx.key("node-agent", None).await.0;
        let t = ctx.tenant("acme").await;
        let (ka, _) = ctx.key("tenant-admin", t["id"].as_str()).await;
        // Work on one node (allocated), one idle node (available), one cordoned node.
        let inst = ctx
            .post(
                "/v1/instances",
                &ka,
                &json!({"gpu_model": "H100-SXM-80GB", "gpus": 8}),
            )
            .await
            .expect(201);
        let id = inst["id"].as_str().unwrap().to_string();
        let busy = inst["placement"][0]["node"].as_str().unwrap().to_string();
        let idle = if busy == "e-p1-l1-n1" {
            "e-p1-l1-n2"
        } else {
            "e-p1-l1-n1"
        };
        let fenced = if busy == "e-p1-l2-n1" {
            "e-p1-l2-n2"
        } else {
            "e-p1-l2-n1"
        };
        let mut keys = Vec::new();
        for h in [busy.as_str(), idle, fenced] {
            let k = register(&ctx, &enroll, h).await;
            ctx.post("/v1/agent/heartbeat", &k, &beat(h, vec![]))
                .await
                .expect(200);
            keys.push(k);
        }
        ctx.post(
            &format!("/v1/nodes/{fenced}/cordon"),
            &ctx.operator_key,
            &json!({"reason": "rack work"}),
        )
        .await
        .expect(200);
        let start = secs(&instance(&ctx, &ka, &id).await["started_at"]);

        // Within the missed-heartbeat limit (3 × 10 s) nothing changes.
        pass(&ctx, &clock, 30).await;
        assert_eq!(state(&ctx, &busy).await, "allocated");
        // Past it: unreachable, all three; the work keeps running.
        pass(&ctx, &clock, 1).await;
        for h in [busy.as_str(), idle, fenced] {
            assert_eq!(state(&ctx, h).await, "unreachable", "{h}");
        }
        let n = ctx
            .get(&format!("/v1/nodes/{busy}"), &ctx.operator_key)
            .await
            .expect(200);
        assert!(
            n["state_reason"]
                .as_str()
                .unwrap()
                .contains("missed 3 heartbeats"),
            "{n}"
        );
        assert_eq!(instance(&ctx, &ka, &id).await["state"], "running");
        assert_eq!(
            transitions(&ctx, idle).await,
            [("available".to_string(), "unreachable".to_string())]
        );
        // The state to return to is kept with the node (a restart does not lose it).
        let stored = ctx.svc.store().agent_nodes().await.unwrap();
        let kept = |h: &str| {
            stored
                .iter()
                .find(|n| n.name == h)
                .unwrap()
                .unreachable_from
                .map(|s| s.to_string())
        };
        assert_eq!(kept(fenced).as_deref(), Some("cordoned"));
        assert_eq!(kept(idle).as_deref(), Some("available"));
        // No new placement lands on them: five nodes are left for five whole-node launches.
        let mut placed = Vec::new();
        for _ in 0..8 {
            let r = ctx
                .post(
                    "/v1/instances",
                    &ka,
                    &json!({"gpu_model": "H100-SXM-80GB", "gpus": 8}),
                )
                .await;
            if r.status.as_u16() != 201 {
                break;
            }
            placed.push(r.body["placement"][0]["node"].as_str().unwrap().to_string());
        }
        assert_eq!(placed.len(), 5, "{placed:?}");
        for h in [busy.as_str(), idle, fenced] {
            assert!(!placed.iter().any(|p| p == h), "{h} took work: {placed:?}");
        }

        // Four more minutes of silence, still within the grace period: nothing fails.
        pass(&ctx, &clock, 240).await;
        assert_eq!(state(&ctx, &busy).await, "unreachable");
        assert_eq!(instance(&ctx, &ka, &id).await["state"], "running");
        // Heard from again: each returns to the state it had.
        // (The agent is told the stored state: `available` for a full node too.)
        for (h, k, told, want) in [
            (busy.as_str(), &keys[0], "available", "allocated"),
            (idle, &keys[1], "available", "available"),
            (fenced, &keys[2], "cordoned", "cordoned"),
        ] {
            let ack = ctx
                .post("/v1/agent/heartbeat", k, &beat(h, vec![]))
                .await
                .expect(200);
            assert_eq!(ack["state"], told, "{h}");
            assert_eq!(state(&ctx, h).await, want, "{h}");
        }
        assert_eq!(
            transitions(&ctx, idle).await,
            [
                ("available".to_string(), "unreachable".to_string()),
                ("unreachable".to_string(), "available".to_string())
            ]
        );
        let stored = ctx.svc.store().agent_nodes().await.unwrap();
        assert!(
            stored
                .iter()
                .all(|n| n.unreachable_from.is_none() && n.state.to_string() != "unreachable")
        );
        // The work ran all along and is billed for the whole time.
        pass(&ctx, &clock, 100).await;
        let done = ctx
            .post(&format!("/v1/instances/{id}/terminate"), &ka, &json!({}))
            .await
            .expect(200);
        let end = secs(&done["ended_at"]);
        assert!(end - start >= 371, "{done}");
        let u = ctx.get("/v1/usage", &ka).await.expect(200);
        let r = u["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["instance_id"] == id.as_str())
            .unwrap()
            .clone();
        assert_eq!(r["gpu_seconds"], 8 * (end - start), "{r}");
    }
);

clocked!(
    silence_past_the_grace_period_fails_the_node,
    SchedulerConfig::default(),
    |ctx: TestContext, clock: Clock| async move {
        ctx.import(FLEET).await.expect(200);
        let enroll = ctx.key("node-agent", None).await.0;
        let t = ctx.tenant("acme").await;
        let (ka, _) = ctx.key("tenant-admin", t["id"].as_str()).await;
        let now = ctx.svc.now();
        let c = ctx
            .post(
                "/v1/contracts",
                &ka,
                &json!({"gpu_model": "H100-SXM-80GB", "gpu_count": 16, "start_at": now.to_string(),
                        "end_at": now.plus_seconds(30 * 86400).to_string(), "site": "east"}),
            )
            .await
            .expect(201);
        let cid = c["id"].as_str().unwrap().to_string();
        let inst = ctx
            .post(
                "/v1/instances",
                &ka,
                &json!({"class": "reserved", "contract_id": cid, "gpu_model": "H100-SXM-80GB", "gpus": 8}),
            )
            .await
            .expect(201);
        let id = inst["id"].as_str().unwrap().to_string();
        let host = inst["placement"][0]["node"].as_str().unwrap().to_string();
        let key = register(&ctx, &enroll, &host).await;
        ctx.post("/v1/agent/heartbeat", &key, &beat(&host, vec![]))
            .await
            .expect(200);
        let last = ctx.svc.now();

        // Unreachable: the contract's pool keeps the node, no outage.
        pass(&ctx, &clock, 31).await;
        assert_eq!(state(&ctx, &host).await, "unreachable");
        let outages = ctx
            .get(&format!("/v1/contracts/{cid}/outages"), &ka)
            .await
            .expect(200);
        assert_eq!(outages.as_array().unwrap().len(), 0, "{outages}");
        // Still silent at the end of the grace period (300 s from the last heartbeat).
        pass(&ctx, &clock, 269).await;
        assert_eq!(state(&ctx, &host).await, "unreachable");
        pass(&ctx, &clock, 1).await;
        let n = ctx
            .get(&format!("/v1/nodes/{host}"), &ctx.operator_key)
            .await
            .expect(200);
        assert_eq!(n["state"], "failed");
        assert!(
            n["state_reason"].as_str().unwrap().contains("grace period"),
            "{n}"
        );
        // Its work failed as for any fault, at the last heartbeat; a spare fills the pool.
        let i = instance(&ctx, &ka, &id).await;
        assert_eq!(i["state"], "failed");
        assert_eq!(secs(&i["ended_at"]), last.micros() / 1_000_000, "{i}");
        let ev = ctx
            .get(
                "/v1/events?action=contract.pool_node_replaced",
                &ctx.operator_key,
            )
            .await
            .expect(200);
        let spare = ev["items"][0]["after"]["node"].as_str().unwrap();
        assert_ne!(spare, host);
        let outages = ctx
            .get(&format!("/v1/contracts/{cid}/outages"), &ka)
            .await
            .expect(200);
        assert_eq!(outages[0]["gpus"], 8, "{outages}");
        assert_eq!(
            transitions(&ctx, &host).await,
            // The stored state of a full node is `available` (`allocated` is how it reads).
            [
                ("available".to_string(), "unreachable".to_string()),
                ("unreachable".to_string(), "failed".to_string())
            ]
        );
        let h = ctx
            .get(&format!("/v1/nodes/{host}/health"), &ctx.operator_key)
            .await
            .expect(200);
        assert!(
            h.as_array()
                .unwrap()
                .iter()
                .any(|e| e["kind"] == "heartbeat_lost" && e["action"] == "fail"),
            "{h}"
        );
        // A heartbeat after that does not bring a failed node back.
        let ack = ctx
            .post("/v1/agent/heartbeat", &key, &beat(&host, vec![]))
            .await
            .expect(200);
        assert_eq!(ack["state"], "failed");

        // Other evidence fails an unreachable node at once: an XID 79 that arrives with
        // the heartbeat that ends its silence.
        let other = spare.to_string();
        let k2 = register(&ctx, &enroll, &other).await;
        ctx.post("/v1/agent/heartbeat", &k2, &beat(&other, vec![]))
            .await
            .expect(200);
        pass(&ctx, &clock, 31).await;
        assert_eq!(state(&ctx, &other).await, "unreachable");
        let xid = json!({"seq": 1, "at": ctx.svc.now().to_string(),
                         "gpu_uuid": format!("GPU-{other}-2"), "kind": {"type": "xid", "code": 79}});
        let ack = ctx
            .post("/v1/agent/heartbeat", &k2, &beat(&other, vec![xid]))
            .await
            .expect(200);
        assert_eq!(ack["state"], "failed");
        let tr = transitions(&ctx, &other).await;
        assert_eq!(
            tr.last().unwrap(),
            &("unreachable".to_string(), "failed".to_string()),
            "{tr:?}"
        );
    }
);

clocked!(
    a_leaving_agent_is_waited_for_and_bad_leaving_is_refused,
    SchedulerConfig::default(),
    |ctx: TestContext, clock: Clock| async move {
        ctx.import(FLEET).await.expect(200);
        let enroll = ctx.key("node-agent", None).await.0;
        let host = "e-p1-l1-n3";
        let key = register(&ctx, &enroll, host).await;
        ctx.post("/v1/agent/heartbeat", &key, &beat(host, vec![]))
            .await
            .expect(200);
        pass(&ctx, &clock, 31).await;
        assert_eq!(state(&ctx, host).await, "unreachable");
        let before = ctx
            .get(&format!("/v1/nodes/{host}"), &ctx.operator_key)
            .await
            .expect(200);
        let history = ctx
            .get(&format!("/v1/nodes/{host}/health"), &ctx.operator_key)
            .await
            .expect(200);
        // Bad input: refused whole, and nothing changes (the node stays unreachable, its
        // last heartbeat where it was, no health event).
        let leaving = |v: Value| {
            let mut b = beat(host, vec![]);
            b["leaving"] = v;
            b
        };
        for bad in [
            json!({"reason": "restart", "back_within_secs": -5}),
            json!({"reason": "restart", "back_within_secs": 0}),
            json!({"reason": "restart", "back_within_secs": 86_401}),
            json!({"reason": "restart", "back_within_secs": 1_000_000_000_000_i64}),
            json!({"reason": "restart", "back_within_secs": "soon"}),
            json!({"reason": "restart", "back_within_secs": 60, "extra": 1}),
            json!({"reason": "vacation", "back_within_secs": 60}),
            json!({"back_within_secs": 60}),
            json!("restart"),
        ] {
            let p = ctx
                .post("/v1/agent/heartbeat", &key, &leaving(bad.clone()))
                .await
                .problem(400, "invalid_request");
            assert!(
                p["detail"].as_str().unwrap().contains("leaving"),
                "{bad}: {p}"
            );
        }
        let mut b = beat(host, vec![]);
        b["leaving_soon"] = json!(true);
        ctx.post("/v1/agent/heartbeat", &key, &b)
            .await
            .problem(400, "invalid_request");
        let after = ctx
            .get(&format!("/v1/nodes/{host}"), &ctx.operator_key)
            .await
            .expect(200);
        assert_eq!(after["state"], "unreachable");
        assert_eq!(after["last_heartbeat_at"], before["last_heartbeat_at"]);
        assert_eq!(
            ctx.get(&format!("/v1/nodes/{host}/health"), &ctx.operator_key)
                .await
                .expect(200),
            history
        );

        // A good one: the node is back, and not unreachable while the agent is away (up to
        // the 120 s it announced), then unreachable, then failed at the grace period's end.
        let ack = ctx
            .post(
                "/v1/agent/heartbeat",
                &key,
                &leaving(json!({"reason": "restart", "back_within_secs": 120})),
            )
            .await
            .expect(200);
        assert_eq!(ack["state"], "available");
        let h = ctx
            .get(&format!("/v1/nodes/{host}/health"), &ctx.operator_key)
            .await
            .expect(200);
        assert_eq!(h[0]["kind"], "agent_leaving", "{h}");
        pass(&ctx, &clock, 60).await;
        assert_eq!(state(&ctx, host).await, "available");
        pass(&ctx, &clock, 60).await;
        assert_eq!(state(&ctx, host).await, "available");
        pass(&ctx, &clock, 1).await;
        assert_eq!(state(&ctx, host).await, "unreachable");
        pass(&ctx, &clock, 180).await;
        assert_eq!(state(&ctx, host).await, "failed");

        // An announced absence longer than the grace period is cut to it.
        let host = "e-p1-l1-n4";
        let key = register(&ctx, &enroll, host).await;
        let ack = ctx
            .post("/v1/agent/heartbeat", &key, &{
                let mut b = beat(host, vec![]);
                b["leaving"] = json!({"reason": "shutdown", "back_within_secs": 86_400});
                b
            })
            .await
            .expect(200);
        assert_eq!(ack["state"], "available");
        pass(&ctx, &clock, 300).await;
        assert_eq!(state(&ctx, host).await, "available");
        pass(&ctx, &clock, 1).await;
        assert_eq!(state(&ctx, host).await, "failed");
    }
);

const BIN: &str = env!("CARGO_BIN_EXE_neocloud");

/// A `neocloud agent --backend sim` process for `host` against `ctx`.
fn agent(ctx: &TestContext, key: &str, host: &str, state_dir: &std::path::Path) -> Child {
    Command::new(BIN)
        .args(["agent", "--server", &ctx.url(""), "--key", key])
        .args(["--backend", "sim", "--sim-gpus", "8"])
        .args(["--sim-model", "H100-SXM-80GB", "--hostname", host])
        .args(["--runtime", "none", "--state-dir"])
        .arg(state_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Polls `f` every 100 ms until it returns true, or panics after `secs`.
async fn wait_until<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The node's last heartbeat as the control plane saw it.
async fn last_heartbeat(ctx: &TestContext, host: &str) -> Option<Timestamp> {
    ctx.get(&format!("/v1/nodes/{host}"), &ctx.operator_key)
        .await
        .expect(200)["last_heartbeat_at"]
        .as_str()
        .map(|s| s.parse().unwrap())
}

async fn sigterm(child: &Child) {
    let pid = child.id().to_string();
    tokio::task::spawn_blocking(move || {
        assert!(Command::new("kill").arg(&pid).status().unwrap().success());
    })
    .await
    .unwrap();
}

async fn exit_status(mut child: Child) -> std::process::ExitStatus {
    tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap()
}

clocked!(
    the_real_agent_restarts_without_its_node_leaving_service,
    SchedulerConfig {
        heartbeat_interval_secs: 1,
        ..SchedulerConfig::default()
    },
    |ctx: TestContext, clock: Clock| async move {
        ctx.import(FLEET).await.expect(200);
        let enroll = ctx.key("node-agent", None).await.0;
        let t = ctx.tenant("acme").await;
        let (ka, _) = ctx.key("tenant-admin", t["id"].as_str()).await;
        let inst = ctx
            .post(
                "/v1/instances",
                &ka,
                &json!({"gpu_model": "H100-SXM-80GB", "gpus": 8}),
            )
            .await
            .expect(201);
        let id = inst["id"].as_str().unwrap().to_string();
        let host = inst["placement"][0]["node"].as_str().unwrap().to_string();
        let start = secs(&instance(&ctx, &ka, &id).await["started_at"]);
        let dir = temp_dir();

        // The agent runs and heartbeats (once a second, as the control plane says).
        let a = agent(&ctx, &enroll, &host, &dir.join("agent"));
        wait_until(30, "the agent's heartbeats", || async {
            last_heartbeat(&ctx, &host).await.is_some()
        })
        .await;
        assert_eq!(state(&ctx, &host).await, "allocated");
        // SIGTERM, as a rolling upgrade does: its last heartbeat says it is restarting.
        sigterm(&a).await;
        assert!(exit_status(a).await.success());
        let h = ctx
            .get(&format!("/v1/nodes/{host}/health"), &ctx.operator_key)
            .await
            .expect(200);
        assert!(
            h.as_array()
                .unwrap()
                .iter()
                .any(|e| e["kind"] == "agent_leaving"),
            "{h}"
        );
        // A minute later (past the missed-heartbeat limit) it is still allocated...
        for _ in 0..6 {
            pass(&ctx, &clock, 10).await;
            assert_eq!(state(&ctx, &host).await, "allocated");
        }
        // ...and the agent, started again, finds its node as it left it.
        let restarted_at = ctx.svc.now();
        let a = agent(&ctx, &enroll, &host, &dir.join("agent"));
        wait_until(30, "the restarted agent's heartbeats", || async {
            last_heartbeat(&ctx, &host).await == Some(restarted_at)
        })
        .await;
        for _ in 0..3 {
            pass(&ctx, &clock, 1).await;
            let now = ctx.svc.now();
            wait_until(10, "a heartbeat", || async {
                last_heartbeat(&ctx, &host).await == Some(now)
            })
            .await;
        }
        pass(&ctx, &clock, 0).await;
        assert_eq!(state(&ctx, &host).await, "allocated");
        assert_eq!(transitions(&ctx, &host).await, []);
        assert_eq!(instance(&ctx, &ka, &id).await["state"], "running");

        // SIGKILL says nothing: unreachable past the limit, failed past the grace period.
        let mut a = a;
        a.kill().unwrap();
        let _ = exit_status(a).await;
        let last = last_heartbeat(&ctx, &host).await.unwrap();
        assert_eq!(last, ctx.svc.now());
        pass(&ctx, &clock, 4).await;
        assert_eq!(state(&ctx, &host).await, "unreachable");
        assert_eq!(instance(&ctx, &ka, &id).await["state"], "running");
        pass(&ctx, &clock, 296).await;
        assert_eq!(state(&ctx, &host).await, "unreachable");
        pass(&ctx, &clock, 1).await;
        assert_eq!(state(&ctx, &host).await, "failed");
        let i = instance(&ctx, &ka, &id).await;
        assert_eq!(i["state"], "failed");
        // Billed up to its node's last heartbeat, through the agent's restart.
        let end = secs(&i["ended_at"]);
        assert_eq!(end, last.micros() / 1_000_000);
        assert!(end - start >= 63, "{i}");
        let u = ctx.get("/v1/usage", &ka).await.expect(200);
        assert_eq!(u["items"][0]["gpu_seconds"], 8 * (end - start), "{u}");
    }
);

clocked!(
    a_site_gone_silent_is_marked_in_one_round_and_comes_back_in_one_batch,
    SchedulerConfig::default(),
    |ctx: TestContext, clock: Clock| async move {
        // 100 nodes (25 leaf groups of 4): more than one round's group of node changes.
        let fleet = FLEET.replace(
            "{ kind = \"leaf_group\", count = 2",
            "{ kind = \"leaf_group\", count = 25",
        );
        ctx.import(&fleet).await.expect(200);
        let enroll = ctx.key("node-agent", None).await.0;
        let hosts: Vec<String> = (1..=25)
            .flat_map(|l| (1..=4).map(move |n| format!("e-p1-l{l}-n{n}")))
            .collect();
        let mut keys = Vec::new();
        for h in &hosts {
            let k = register(&ctx, &enroll, h).await;
            ctx.post("/v1/agent/heartbeat", &k, &beat(h, vec![]))
                .await
                .expect(200);
            keys.push(k);
        }
        // A site's network goes: one round marks every node unreachable.
        pass(&ctx, &clock, 31).await;
        for h in &hosts {
            assert_eq!(state(&ctx, h).await, "unreachable", "{h}");
        }
        // It comes back through a relay: one batch with every node, the first node twice
        // (its agent beat again, with a new event, before the relay passed the batch on),
        // both within the first heartbeats the server takes together, neither last.
        let item = |k: &str, hb: Value| json!({"key": k, "heartbeat": hb});
        let first = &hosts[0];
        let xid = |seq: u64| {
            json!({"seq": seq, "at": Timestamp::now().to_string(),
                   "gpu_uuid": format!("GPU-{first}-2"), "kind": {"type": "xid", "code": 13}})
        };
        let mut items = vec![item(&keys[0], beat(first, vec![xid(1)]))];
        for (h, k) in hosts.iter().zip(&keys).skip(1) {
            items.push(item(k, beat(h, vec![])));
        }
        items.insert(5, item(&keys[0], beat(first, vec![xid(1), xid(2)])));
        let r = ctx
            .post(
                "/v1/agent/heartbeats",
                &enroll,
                &json!({"heartbeats": items}),
            )
            .await
            .expect(200);
        let answers = r["answers"].as_array().unwrap();
        assert_eq!(answers.len(), 101, "{r}");
        for (i, a) in answers.iter().enumerate() {
            assert_eq!(a["status"], 200, "answer {i}: {a}");
            assert_eq!(a["body"]["state"], "available", "answer {i}: {a}");
        }
        // In the batch's order: the first node's two answers acknowledge its two events.
        assert_eq!(answers[0]["body"]["acked_seq"], 1, "{}", answers[0]);
        assert_eq!(answers[5]["body"]["acked_seq"], 2, "{}", answers[5]);
        for i in [4, 6, 100] {
            assert_eq!(
                answers[i]["body"]["acked_seq"], 0,
                "answer {i}: {}",
                answers[i]
            );
        }
        for h in &hosts {
            assert_eq!(state(&ctx, h).await, "available", "{h}");
            assert_eq!(
                transitions(&ctx, h).await,
                [
                    ("available".to_string(), "unreachable".to_string()),
                    ("unreachable".to_string(), "available".to_string())
                ],
                "{h}"
            );
        }
        // Each event stored once.
        let events = ctx
            .get(
                &format!("/v1/nodes/{first}/health?limit=100"),
                &ctx.operator_key,
            )
            .await
            .expect(200);
        let xids = events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "xid")
            .count();
        assert_eq!(xids, 2, "{events}");
    }
);
