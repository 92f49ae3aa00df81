//! Gangs survive a failed node, through HTTP on both databases with a manual clock: an XID 79
//! on one node of a running 64-node gang swaps in a node of the same block, and usage bills
//! exactly what the tenant had; `shrink` drops the node; `fail` ends the gang; a gang whose
//! block has no free node runs short, gives spot work its notice and is completed when the
//! notice runs out; a restart keeps a gang that runs short.

use neocloud_service::{Clock, SchedulerConfig};
use neocloud_types::Timestamp;
use serde_json::{Value, json};

use crate::ctx::{Db, TestContext};

/// One site, two pods of three leaf groups of 24 nodes of 8 H100: 144 nodes.
pub(crate) const FLEET: &str = r#"
[[sites]]
name = "west"
region = "us-west"
power_mw = 20
pue = 1.1
[[sites.node_groups]]
gpu_model = "H100-SXM-80GB"
gpus = 8
peak_watts = 10000
idle_watts = 2000
nodes_per_block = 24
layout = [
  { kind = "pod", count = 2, name = "w-p{n}" },
  { kind = "leaf_group", count = 3, name = "{parent}-l{n}" },
]
name = "{block}-n{n}"
"#;

const T0: &str = "2027-03-01T00:00:00Z";

pub(crate) struct Gang {
    pub(crate) ctx: TestContext,
    pub(crate) clock: Clock,
    pub(crate) key: String,
    pub(crate) enroll: String,
}

pub(crate) fn at(secs: i64) -> Timestamp {
    T0.parse::<Timestamp>().unwrap().plus_seconds(secs)
}

/// The pod of a node named `w-pP-lL-nN`.
pub(crate) fn pod(node: &str) -> &str {
    &node[..4]
}

pub(crate) fn nodes(inst: &Value) -> Vec<String> {
    inst["placement"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["node"].as_str().unwrap().to_string())
        .collect()
}

impl Gang {
    pub(crate) async fn start(db: Db) -> Option<Gang> {
        Self::start_with(db, SchedulerConfig::default()).await
    }

    pub(crate) async fn start_with(db: Db, config: SchedulerConfig) -> Option<Gang> {
        Self::start_fleet(db, config, FLEET).await
    }

    pub(crate) async fn start_fleet(db: Db, config: SchedulerConfig, fleet: &str) -> Option<Gang> {
        let clock = Clock::manual(at(0));
        let ctx = TestContext::start_clocked(db, config, clock.clone()).await?;
        ctx.import(fleet).await.expect(200);
        let t = ctx.tenant("frontier").await;
        let (key, _) = ctx.key("tenant-admin", t["id"].as_str()).await;
        let (enroll, _) = ctx.key("node-agent", None).await;
        Some(Gang {
            ctx,
            clock,
            key,
            enroll,
        })
    }

    pub(crate) async fn launch(&self, body: Value) -> Value {
        self.ctx
            .post("/v1/instances", &self.key, &body)
            .await
            .expect(201)
    }

    pub(crate) async fn instance(&self, id: &str) -> Value {
        self.ctx
            .get(&format!("/v1/instances/{id}"), &self.key)
            .await
            .expect(200)
    }

    /// The node's agent registers and reports XID 79 on GPU 0 that happened at `fault`
    /// (seconds after T0), heard at the clock's time.
    pub(crate) async fn xid79(&self, host: &str, fault: i64) -> Value {
        let event = json!({"seq": 1, "at": at(fault).to_string(),
                           "gpu_uuid": format!("GPU-{host}-0"), "kind": {"type": "xid", "code": 79}});
        self.agent_beat(host, vec![event]).await
    }

    /// The node's agent registers and sends one heartbeat with `events`, at the clock's time.
    pub(crate) async fn agent_beat(&self, host: &str, events: Vec<Value>) -> Value {
        let gpus = |f: &dyn Fn(u32) -> Value| (0..8).map(f).collect::<Vec<_>>();
        let inv = json!({
            "hostname": host, "agent_version": "test", "backend": "sim",
            "cpu_cores": 224, "ram_gib": 2048,
            "gpus": gpus(&|i| json!({
                "index": i, "uuid": format!("GPU-{host}-{i}"), "name": "NVIDIA H100 80GB HBM3",
                "memory_mib": 81559, "pci_bus_id": format!("00000000:{:02X}:00.0", 0x18 + i),
            })),
        });
        let r = self
            .ctx
            .post("/v1/agent/register", &self.enroll, &inv)
            .await
            .expect(200);
        let key = r["node_key"].as_str().unwrap().to_string();
        let beat = json!({
            "sent_at": self.clock.now().to_string(),
            "gpus": gpus(&|i| json!({
                "uuid": format!("GPU-{host}-{i}"), "temperature_c": 41, "power_watts": 350,
                "utilization_pct": 60, "memory_used_mib": 1000,
                "ecc_corrected": 0, "ecc_uncorrected": 0,
            })),
            "events": events,
        });
        self.ctx
            .post("/v1/agent/heartbeat", &key, &beat)
            .await
            .expect(200)
    }

    pub(crate) async fn node_state(&self, host: &str) -> Value {
        self.ctx
            .get(&format!("/v1/nodes/{host}"), &self.ctx.operator_key)
            .await
            .expect(200)["state"]
            .clone()
    }

    pub(crate) async fn terminate(&self, id: &str) {
        self.ctx
            .post(
                &format!("/v1/instances/{id}/terminate"),
                &self.key,
                &json!({}),
            )
            .await
            .expect(200);
    }

    /// GPU-seconds billed to instance `id`.
    pub(crate) async fn gpu_seconds(&self, id: &str) -> i64 {
        let u = self
            .ctx
            .get("/v1/usage?limit=1000", &self.key)
            .await
            .expect(200);
        u["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["instance_id"] == id)
            .map(|r| r["gpu_seconds"].as_i64().unwrap())
            .sum()
    }

    pub(crate) async fn events(&self, action: &str) -> Vec<Value> {
        self.ctx
            .get(&format!("/v1/events?action={action}"), &self.key)
            .await
            .expect(200)["items"]
            .as_array()
            .unwrap()
            .clone()
    }
}

/// The issue's case: XID 79 on one node of a running 64-node gang.
async fn a_failed_node_is_replaced_from_the_same_block(db: Db) {
    let Some(g) = Gang::start(db).await else {
        return;
    };
    let inst = g
        .launch(json!({"gpu_model": "H100-SXM-80GB", "nodes": 64, "gang_level": "pod"}))
        .await;
    assert_eq!(inst["state"], "running");
    assert_eq!(inst["on_node_failure"], "replace");
    let id = inst["id"].as_str().unwrap().to_string();
    let before = nodes(&inst);
    assert_eq!(before.len(), 64);
    let block = pod(&before[0]).to_string();
    assert!(before.iter().all(|n| pod(n) == block), "{before:?}");
    // An hour in, GPU 0 of one node falls off the bus; its agent says so 5 s later.
    // The gang fills two leaf groups and part of a third; the node that fails is in the
    // third, where free nodes are left.
    let bad = before.last().unwrap().clone();
    assert!(before.iter().filter(|n| n[..7] == bad[..7]).count() < 24);
    g.clock.set(at(3600));
    let ack = g.xid79(&bad, 3595).await;
    assert_eq!(ack["state"], "failed");
    assert_eq!(g.node_state(&bad).await, "failed");
    let after = g.instance(&id).await;
    assert_eq!(after["state"], "running", "{after}");
    assert_eq!(after["gpu_count"], 512);
    let now = nodes(&after);
    assert_eq!(now.len(), 64);
    assert!(!now.contains(&bad), "{now:?}");
    let new: Vec<&String> = now.iter().filter(|n| !before.contains(n)).collect();
    assert_eq!(new.len(), 1, "{now:?}");
    assert_eq!(pod(new[0]), block, "the replacement is in the gang's pod");
    // In fact in the failed node's own leaf group: the nearest free node.
    assert_eq!(new[0][..7], bad[..7], "{} for {bad}", new[0]);
    // The tenant's event log has the swap.
    let ev = g.events("instance.node_replaced").await;
    assert_eq!(ev.len(), 1, "{ev:?}");
    let change = &ev[0]["after"]["change"];
    assert_eq!(change["failed_node"], bad.as_str());
    assert_eq!(change["replacement"], new[0].as_str());
    assert_eq!(ev[0]["resource_id"], id.as_str());
    // Billing: 64 nodes until the fault, 63 while the fault went unheard, 64 after.
    g.clock.set(at(7200));
    g.terminate(&id).await;
    assert_eq!(g.gpu_seconds(&id).await, 512 * 3595 + 504 * 5 + 512 * 3600);
}

/// `shrink` drops the node and bills fewer GPUs from the fault on; `fail` ends the gang.
async fn shrink_and_fail_policies(db: Db) {
    let Some(g) = Gang::start(db).await else {
        return;
    };
    let shrink = g
        .launch(
            json!({"gpu_model": "H100-SXM-80GB", "nodes": 4, "gang_level": "leaf_group",
                       "on_node_failure": "shrink"}),
        )
        .await;
    let fail = g
        .launch(
            json!({"gpu_model": "H100-SXM-80GB", "nodes": 4, "gang_level": "leaf_group",
                       "on_node_failure": "fail"}),
        )
        .await;
    let (sid, fid) = (
        shrink["id"].as_str().unwrap().to_string(),
        fail["id"].as_str().unwrap().to_string(),
    );
    g.clock.set(at(100));
    let bad = nodes(&shrink)[1].clone();
    g.xid79(&bad, 100).await;
    let s = g.instance(&sid).await;
    assert_eq!(s["state"], "running", "{s}");
    assert_eq!(s["shape"]["count"], 3);
    assert_eq!(s["gpu_count"], 24);
    assert!(!nodes(&s).contains(&bad));
    assert_eq!(g.events("instance.shrunk").await.len(), 1);
    g.clock.set(at(200));
    let bad = nodes(&fail)[0].clone();
    g.xid79(&bad, 200).await;
    let f = g.instance(&fid).await;
    assert_eq!(f["state"], "failed", "{f}");
    assert!(f["reason"].as_str().unwrap().contains("XID 79"), "{f}");
    assert_eq!(g.gpu_seconds(&fid).await, 32 * 200);
    g.clock.set(at(300));
    g.terminate(&sid).await;
    assert_eq!(g.gpu_seconds(&sid).await, 32 * 100 + 24 * 200);
    // Replace and shrink are for gangs only; unknown policies are refused.
    for (body, msg) in [
        (
            json!({"gpu_model": "H100-SXM-80GB", "gpus": 8, "on_node_failure": "replace"}),
            "gangs",
        ),
        (
            json!({"gpu_model": "H100-SXM-80GB", "nodes": 2, "on_node_failure": "heal"}),
            "on_node_failure",
        ),
    ] {
        let p = g
            .ctx
            .post("/v1/instances", &g.key, &body)
            .await
            .problem(400, "invalid_request");
        assert!(p["detail"].as_str().unwrap().contains(msg), "{p}");
    }
}

/// A gang whose block has no free node runs one node short, gives spot work on a node of
/// its block notice, and gets that node when the notice runs out; a restart in between
/// keeps it short and still repairs it.
async fn a_gang_without_a_free_node_waits_for_spot_to_leave(db: Db) {
    // No spare buffer: the gang's pod has no free node once spot work fills it.
    let config = SchedulerConfig {
        spare_buffer_milli: 0,
        ..SchedulerConfig::default()
    };
    let Some(g) = Gang::start_with(db, config.clone()).await else {
        return;
    };
    // Fill pod 1 entirely: a 64-node gang on leaf groups... and spot on the rest.
    let gang = g
        .launch(json!({"gpu_model": "H100-SXM-80GB", "nodes": 64, "gang_level": "pod"}))
        .await;
    let id = gang["id"].as_str().unwrap().to_string();
    let block = pod(&nodes(&gang)[0]).to_string();
    let spot = g
        .launch(
            json!({"class": "spot", "gpu_model": "H100-SXM-80GB", "nodes": 8,
                       "gang_level": "pod", "site": "west"}),
        )
        .await;
    let spot_id = spot["id"].as_str().unwrap().to_string();
    // Both pods hold 72 nodes: best fit put the spot gang in the gang's pod only if it
    // fits there; make sure the rest of that pod is taken by spot work.
    let spot_nodes = nodes(&spot);
    assert!(
        spot_nodes.iter().all(|n| pod(n) == block),
        "spot landed elsewhere: {spot_nodes:?}"
    );
    g.clock.set(at(1000));
    let bad = nodes(&gang)[0].clone();
    g.xid79(&bad, 1000).await;
    let short = g.instance(&id).await;
    assert_eq!(short["state"], "running", "{short}");
    assert_eq!(nodes(&short).len(), 63);
    assert_eq!(short["gpu_count"], 504);
    assert!(
        short["reason"].as_str().unwrap().contains("short"),
        "{short}"
    );
    let s = g.instance(&spot_id).await;
    assert_eq!(s["state"], "preempting", "{s}");
    // A control plane rebuilt from the database now sees the same short gang.
    let again =
        neocloud_service::Service::open_with_clock(&g.ctx.database_url(), config, g.clock.clone())
            .await
            .unwrap();
    assert_eq!(
        again.allocator_fingerprint().await,
        g.ctx.svc.allocator_fingerprint().await
    );
    drop(again);
    // The notice runs out: the spot gang is preempted and the gang takes one of its nodes.
    g.clock.set(at(1100));
    g.ctx.svc.tick(at(1100)).await.unwrap();
    let whole = g.instance(&id).await;
    assert_eq!(whole["state"], "running", "{whole}");
    assert_eq!(whole["gpu_count"], 512);
    let now = nodes(&whole);
    assert_eq!(now.len(), 64);
    assert!(now.iter().all(|n| pod(n) == block), "{now:?}");
    assert!(now.iter().any(|n| spot_nodes.contains(n)), "{now:?}");
    assert!(whole["reason"].is_null(), "{whole}");
    assert_eq!(g.instance(&spot_id).await["state"], "preempted");
    let ev = g.events("instance.node_lost").await;
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(g.events("instance.node_replaced").await.len(), 1);
    // Billed: 64 nodes to the fault, 63 until the node came, 64 after.
    g.clock.set(at(2000));
    g.terminate(&id).await;
    assert_eq!(g.gpu_seconds(&id).await, 512 * 1000 + 504 * 100 + 512 * 900);
}

/// An agent killed outright: its node is `unreachable` past the missed-heartbeat limit (the
/// gang runs on, whole), `failed` past the grace period, and the gang is then repaired by
/// the same rule as for a fault, billed one node short from the last heartbeat.
async fn a_silent_node_past_the_grace_period_is_replaced(db: Db) {
    let Some(g) = Gang::start(db).await else {
        return;
    };
    let inst = g
        .launch(json!({"gpu_model": "H100-SXM-80GB", "nodes": 8, "gang_level": "leaf_group"}))
        .await;
    let id = inst["id"].as_str().unwrap().to_string();
    let before = nodes(&inst);
    let silent = before[3].clone();
    g.clock.set(at(100));
    let ack = g.agent_beat(&silent, vec![]).await;
    assert_eq!(ack["state"], "available", "{ack}");
    // Nothing more from it. Past 3 missed heartbeats: unreachable, the gang untouched.
    g.clock.set(at(140));
    g.ctx.svc.health_tick(at(140)).await.unwrap();
    assert_eq!(g.node_state(&silent).await, "unreachable");
    let i = g.instance(&id).await;
    assert_eq!(i["state"], "running");
    assert_eq!(nodes(&i), before);
    // Past the grace period (300 s from the last heartbeat): failed, and replaced.
    g.clock.set(at(401));
    g.ctx.svc.health_tick(at(401)).await.unwrap();
    assert_eq!(g.node_state(&silent).await, "failed");
    let i = g.instance(&id).await;
    assert_eq!(i["state"], "running", "{i}");
    let now = nodes(&i);
    assert_eq!(now.len(), 8);
    assert!(!now.contains(&silent), "{now:?}");
    let new: Vec<&String> = now.iter().filter(|n| !before.contains(n)).collect();
    assert_eq!(new.len(), 1);
    assert_eq!(new[0][..7], silent[..7], "the same leaf group");
    let ev = g.events("instance.node_replaced").await;
    assert_eq!(ev.len(), 1, "{ev:?}");
    // Billed: 8 nodes to the last heartbeat, 7 from then until the swap, 8 after.
    g.clock.set(at(1000));
    g.terminate(&id).await;
    assert_eq!(g.gpu_seconds(&id).await, 64 * 100 + 56 * 301 + 64 * 599);
}

async fn capacity(ctx: &TestContext) -> Value {
    ctx.get(
        "/v1/capacity?site=memphis-1&gpu_model=H100-SXM-80GB",
        &ctx.operator_key,
    )
    .await
    .expect(200)["items"][0]
        .clone()
}

/// The spare buffer is spread over the fabric: with every other node of memphis-1 pinned to
/// a contract's pool, a failed pool node in each of 5 random pods of the demo is replaced
/// from its own pod, and the capacity report counts the spares. The spares sit at the end of
/// each pod, so every other leaf group can be sold whole: a gang of a whole leaf group runs.
async fn spares_replace_failures_in_their_own_pod(db: Db) {
    let demo = neocloud_fleet::demo_fleet_toml(1.0).unwrap();
    let Some(g) = Gang::start_fleet(db, SchedulerConfig::default(), &demo).await else {
        return;
    };
    let (ctx, clock, key) = (&g.ctx, &g.clock, &g.key);
    let c = capacity(ctx).await;
    // 2% of 220,000 GPUs is 4,400: 550 nodes, 22 in each of the 25 pods (the last 22 nodes
    // of its last leaf group), so 19 of each pod's 20 leaf groups are whole.
    assert_eq!(c["spare_buffer_gpus"], 4400, "{c}");
    assert_eq!(c["spare_nodes"], 550, "{c}");
    assert_eq!(c["spare_nodes_wanted"], 550, "{c}");
    let largest = c["largest_gang"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["level"] == "leaf_group")
        .unwrap()["nodes"]
        .clone();
    assert_eq!(largest, 55, "a whole leaf group is free: {c}");
    let whole = ctx
        .post(
            "/v1/instances",
            key,
            &json!({"gpu_model": "H100-SXM-80GB", "nodes": 55, "gang_level": "leaf_group"}),
        )
        .await
        .expect(201);
    assert_eq!(whole["state"], "running", "{whole}");
    ctx.post(
        &format!("/v1/instances/{}/terminate", whole["id"].as_str().unwrap()),
        key,
        &json!({}),
    )
    .await
    .expect(200);
    // A lab takes everything the site sells: every node but the spares is in its pool.
    let contract = ctx
        .post(
            "/v1/contracts",
            key,
            &json!({"gpu_model": "H100-SXM-80GB", "gpu_count": 215_600, "site": "memphis-1",
                    "start_at": at(0).to_string(), "end_at": at(7 * 86_400).to_string()}),
        )
        .await
        .expect(201);
    assert_eq!(contract["state"], "active", "{contract}");
    // Five random pods, a random pool node in each.
    let mut seed = [0u8; 8];
    getrandom::fill(&mut seed).unwrap();
    let mut x = u64::from_le_bytes(seed) | 1;
    let mut next = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut pods: Vec<u64> = Vec::new();
    while pods.len() < 5 {
        let p = next(25) + 1;
        if !pods.contains(&p) {
            pods.push(p);
        }
    }
    for (i, p) in pods.iter().enumerate() {
        // Leaf groups 1–19 are the pool's whole; the pod's spares end leaf group 20.
        let host = format!("m1-pod{p:02}-leaf{:02}-n{:02}", next(19) + 1, next(55) + 1);
        clock.set(at(60 * (i as i64 + 1)));
        let ack = g.xid79(&host, 60 * (i as i64 + 1)).await;
        assert_eq!(ack["state"], "failed", "{host}");
        let ev = ctx
            .get(
                "/v1/events?action=contract.pool_node_replaced&limit=1",
                &ctx.operator_key,
            )
            .await
            .expect(200);
        let e = &ev["items"][0];
        assert_eq!(e["before"]["node"], host.as_str(), "{e}");
        let spare = e["after"]["node"].as_str().unwrap();
        assert_eq!(
            spare[..8],
            host[..8],
            "pods {pods:?}: {host} was replaced by {spare}, outside its pod"
        );
    }
    let c = capacity(ctx).await;
    assert_eq!(c["spare_nodes"], 545, "{c}");
    assert_eq!(c["spare_nodes_wanted"], 550, "{c}");
}

crate::on_both!(
    a_failed_node_is_replaced_from_the_same_block,
    shrink_and_fail_policies,
    a_gang_without_a_free_node_waits_for_spot_to_leave,
    spares_replace_failures_in_their_own_pod,
    a_silent_node_past_the_grace_period_is_replaced,
);
