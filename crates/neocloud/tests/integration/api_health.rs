//! Node agents and health through HTTP on both databases: registration and keys, heartbeats,
//! the XID policy, the node lifecycle, remediation of contract pools, bad input.

use neocloud_types::Timestamp;
use serde_json::{Value, json};

use crate::both_backends;
use crate::ctx::TestContext;

/// One site, one pod, two leaf groups of 4 nodes of 8 H100: 64 GPUs.
pub(crate) const FLEET: &str = r#"
[[sites]]
name = "east"
region = "us-east"
power_mw = 2
pue = 1.1
[[sites.node_groups]]
gpu_model = "H100-SXM-80GB"
gpus = 8
peak_watts = 10000
idle_watts = 2000
nodes_per_block = 4
layout = [
  { kind = "pod", count = 1, name = "e-p{n}" },
  { kind = "leaf_group", count = 2, name = "{parent}-l{n}" },
]
name = "{block}-n{n}"
"#;

fn uuid(host: &str, i: u32) -> String {
    format!("GPU-{host}-{i}")
}

pub(crate) fn inventory(host: &str) -> Value {
    json!({
        "hostname": host, "agent_version": "test", "backend": "sim",
        "cpu_cores": 224, "ram_gib": 2048,
        "gpus": (0..8).map(|i| json!({
            "index": i, "uuid": uuid(host, i), "name": "NVIDIA H100 80GB HBM3",
            "memory_mib": 81559, "pci_bus_id": format!("00000000:{:02X}:00.0", 0x18 + i),
        })).collect::<Vec<_>>(),
    })
}

pub(crate) fn beat(host: &str, events: Vec<Value>) -> Value {
    json!({
        "sent_at": Timestamp::now().to_string(),
        "gpus": (0..8).map(|i| json!({
            "uuid": uuid(host, i), "temperature_c": 41, "power_watts": 350,
            "utilization_pct": 60, "memory_used_mib": 40000,
            "ecc_corrected": 3, "ecc_uncorrected": 0,
        })).collect::<Vec<_>>(),
        "events": events,
    })
}

pub(crate) fn xid(seq: u64, host: &str, gpu: u32, code: u32) -> Value {
    json!({"seq": seq, "at": Timestamp::now().to_string(), "gpu_uuid": uuid(host, gpu),
           "kind": {"type": "xid", "code": code}})
}

/// Imports the fleet and returns an enrollment key (node-agent, bound to no node).
async fn setup(ctx: &TestContext) -> String {
    ctx.import(FLEET).await.expect(200);
    ctx.key("node-agent", None).await.0
}

/// Registers `host` with the enrollment key; returns its node key.
async fn register(ctx: &TestContext, enroll: &str, host: &str) -> String {
    let r = ctx
        .post("/v1/agent/register", enroll, &inventory(host))
        .await
        .expect(200);
    assert_eq!(r["node"], host);
    assert_eq!(r["heartbeat_interval_secs"], 10);
    r["node_key"].as_str().unwrap().to_string()
}

async fn node(ctx: &TestContext, host: &str) -> Value {
    ctx.get(&format!("/v1/nodes/{host}"), &ctx.operator_key)
        .await
        .expect(200)
}

async fn health_events(ctx: &TestContext, host: &str) -> Vec<Value> {
    ctx.get(
        &format!("/v1/nodes/{host}/health?limit=1000"),
        &ctx.operator_key,
    )
    .await
    .expect(200)
    .as_array()
    .unwrap()
    .clone()
}

both_backends!(
    agents_register_heartbeat_and_report_telemetry,
    |ctx: TestContext| async move {
        let enroll = setup(&ctx).await;
        let host = "e-p1-l1-n1";
        let key = register(&ctx, &enroll, host).await;
        // The node's GPUs now carry the UUIDs, product names and bus ids the agent found.
        let n = node(&ctx, host).await;
        assert_eq!(n["state"], "available");
        assert_eq!(n["gpus"][3]["uuid"], uuid(host, 3));
        assert_eq!(n["gpus"][3]["pci_bus_id"], "00000000:1B:00.0");
        let ack = ctx
            .post("/v1/agent/heartbeat", &key, &beat(host, vec![]))
            .await
            .expect(200);
        assert_eq!(ack["acked_seq"], 0);
        assert_eq!(ack["state"], "available");
        // Telemetry shows on the node from memory, without a write per heartbeat.
        let n = node(&ctx, host).await;
        assert_eq!(n["gpus"][0]["telemetry"]["temperature_c"], 41);
        assert!(n["last_heartbeat_at"].is_string());
        // An application XID is recorded as ignored; the node stays in service.
        let ack = ctx
            .post(
                "/v1/agent/heartbeat",
                &key,
                &beat(host, vec![xid(1, host, 2, 13)]),
            )
            .await
            .expect(200);
        assert_eq!(ack["acked_seq"], 1);
        assert_eq!(ack["state"], "available");
        let h = health_events(&ctx, host).await;
        assert_eq!(h.len(), 1);
        assert_eq!(h[0]["code"], 13);
        assert_eq!(h[0]["action"], "ignore");
        // Resending the same events (a retry after a lost answer) stores nothing new.
        let ack = ctx
            .post(
                "/v1/agent/heartbeat",
                &key,
                &beat(host, vec![xid(1, host, 2, 13)]),
            )
            .await
            .expect(200);
        assert_eq!(ack["acked_seq"], 1);
        assert_eq!(health_events(&ctx, host).await.len(), 1);
        // A restarted agent re-registers with its node key and learns where to continue.
        let r = ctx
            .post("/v1/agent/register", &key, &inventory(host))
            .await
            .expect(200);
        assert_eq!(r["last_seq"], 1);
        assert!(r.get("node_key").is_none(), "{r}");
        // Telemetry is written in batches, as compact rows of the GPUs by index.
        ctx.svc.health_flush(Timestamp::now(), true).await.unwrap();
        assert!(
            ctx.svc
                .store()
                .node_telemetry(n["id"].as_str().unwrap().parse().unwrap())
                .await
                .unwrap()
                .unwrap()
                .contains("[0,41,350,60,40000,3,0,0]")
        );
    }
);

both_backends!(
    keys_confine_agents_to_their_node,
    |ctx: TestContext| async move {
        let enroll = setup(&ctx).await;
        let key = register(&ctx, &enroll, "e-p1-l1-n1").await;
        register(&ctx, &enroll, "e-p1-l1-n2").await;
        // A node key cannot register (act for) another node.
        ctx.post("/v1/agent/register", &key, &inventory("e-p1-l1-n2"))
            .await
            .problem(403, "forbidden");
        // Its heartbeat always speaks for its own node: another node's GPUs are unknown.
        ctx.post("/v1/agent/heartbeat", &key, &beat("e-p1-l1-n2", vec![]))
            .await
            .problem(400, "invalid_request");
        // An enrollment key cannot send heartbeats; operator and tenant keys cannot use agent
        // endpoints at all; node keys can do nothing else.
        ctx.post("/v1/agent/heartbeat", &enroll, &beat("e-p1-l1-n1", vec![]))
            .await
            .problem(403, "forbidden");
        let t = ctx.tenant("acme").await;
        let (tk, _) = ctx.key("tenant-admin", t["id"].as_str()).await;
        for k in [&tk, &ctx.operator_key] {
            ctx.post("/v1/agent/heartbeat", k, &beat("e-p1-l1-n1", vec![]))
                .await
                .problem(403, "forbidden");
            ctx.post("/v1/agent/register", k, &inventory("e-p1-l1-n1"))
                .await
                .problem(403, "forbidden");
        }
        ctx.get("/v1/nodes", &key).await.problem(403, "forbidden");
        // Re-enrolling a node revokes its earlier key.
        let again = register(&ctx, &enroll, "e-p1-l1-n1").await;
        ctx.post("/v1/agent/heartbeat", &key, &beat("e-p1-l1-n1", vec![]))
            .await
            .problem(401, "unauthenticated");
        ctx.post("/v1/agent/heartbeat", &again, &beat("e-p1-l1-n1", vec![]))
            .await
            .expect(200);
        // Node keys are trusted from memory for minutes, but a revocation takes effect at
        // once: the key just used (and cached) is refused right after.
        let keys = ctx.get("/v1/api-keys", &ctx.operator_key).await.expect(200);
        let id = keys["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == "agent e-p1-l1-n1" && k["revoked_at"].is_null())
            .unwrap_or_else(|| panic!("the node's live key: {keys}"))["id"]
            .as_str()
            .unwrap()
            .to_string();
        ctx.delete(&format!("/v1/api-keys/{id}"), &ctx.operator_key)
            .await
            .expect(200);
        ctx.post("/v1/agent/heartbeat", &again, &beat("e-p1-l1-n1", vec![]))
            .await
            .problem(401, "unauthenticated");
        // Keys bound to a node can be minted by the operator too; only node-agent keys.
        let v = ctx
            .post(
                "/v1/api-keys",
                &ctx.operator_key,
                &json!({"name": "n3", "role": "node-agent", "node": "e-p1-l1-n3"}),
            )
            .await
            .expect(201);
        assert!(v["node_id"].is_string());
        ctx.post(
            "/v1/api-keys",
            &ctx.operator_key,
            &json!({"name": "x", "role": "operator-viewer", "node": "e-p1-l1-n3"}),
        )
        .await
        .problem(400, "invalid_request");
        ctx.post(
            "/v1/api-keys",
            &ctx.operator_key,
            &json!({"name": "x", "role": "node-agent", "node": "nope"}),
        )
        .await
        .problem(404, "not_found");
    }
);

both_backends!(
    bad_agent_input_is_refused_and_stores_nothing,
    |ctx: TestContext| async move {
        let enroll = setup(&ctx).await;
        let host = "e-p1-l1-n1";
        // Unknown host, wrong GPU count, wrong memory, malformed inventory.
        ctx.post("/v1/agent/register", &enroll, &inventory("nope"))
            .await
            .problem(404, "not_found");
        let mut inv = inventory(host);
        inv["gpus"].as_array_mut().unwrap().pop();
        ctx.post("/v1/agent/register", &enroll, &inv)
            .await
            .problem(409, "conflict");
        let mut inv = inventory(host);
        inv["gpus"][0]["memory_mib"] = json!(24000);
        ctx.post("/v1/agent/register", &enroll, &inv)
            .await
            .problem(409, "conflict");
        let mut inv = inventory(host);
        inv["gpus"][1]["uuid"] = inv["gpus"][0]["uuid"].clone();
        ctx.post("/v1/agent/register", &enroll, &inv)
            .await
            .problem(400, "invalid_request");
        let mut inv = inventory(host);
        inv["gpus"][0]["index"] = json!(-1);
        assert!(
            ctx.post("/v1/agent/register", &enroll, &inv)
                .await
                .status
                .is_client_error()
        );
        let key = register(&ctx, &enroll, host).await;
        let before = health_events(&ctx, host).await.len();
        // Absurd telemetry, unknown GPUs, broken events: each refused whole.
        let mut cases: Vec<(Value, u16)> = Vec::new();
        let mut b = beat(host, vec![xid(1, host, 0, 79)]);
        b["gpus"][0]["temperature_c"] = json!(-300);
        cases.push((b, 400));
        let mut b = beat(host, vec![xid(1, host, 0, 79)]);
        b["gpus"][0]["power_watts"] = json!(1_000_000_000_000u64);
        cases.push((b, 400));
        let mut b = beat(host, vec![xid(1, host, 0, 79)]);
        b["gpus"][0]["utilization_pct"] = json!(250);
        cases.push((b, 400));
        let mut b = beat(host, vec![]);
        b["gpus"][0]["uuid"] = json!("GPU-unknown");
        cases.push((b, 400));
        let mut e = xid(1, host, 0, 79);
        e["gpu_uuid"] = json!("GPU-unknown");
        cases.push((beat(host, vec![e]), 400));
        cases.push((
            beat(host, vec![xid(2, host, 0, 79), xid(1, host, 0, 79)]),
            400,
        ));
        cases.push((beat(host, vec![xid(0, host, 0, 79)]), 400));
        let mut b = beat(host, vec![]);
        b["gpus"][0]["temperature_c"] = json!("hot");
        cases.push((b, 400));
        let mut b = beat(host, vec![]);
        b["surprise"] = json!(1);
        cases.push((b, 400));
        for (body, status) in cases {
            let r = ctx.post("/v1/agent/heartbeat", &key, &body).await;
            assert_eq!(r.status.as_u16(), status, "{body}: {}", r.body);
            assert_eq!(
                r.headers["content-type"], "application/problem+json",
                "{}",
                r.body
            );
        }
        let r = ctx
            .send(
                reqwest::Method::POST,
                "/v1/agent/heartbeat",
                Some(&key),
                Some(("application/json", b"{not json".to_vec())),
                &[],
            )
            .await;
        assert_eq!(r.status.as_u16(), 400, "{}", r.body);
        assert_eq!(health_events(&ctx, host).await.len(), before);
        assert_eq!(node(&ctx, host).await["state"], "available");
        // The node's telemetry was not touched by refused beats.
        assert!(node(&ctx, host).await["gpus"][0].get("telemetry").is_none());
    }
);

both_backends!(
    fatal_xid_fails_the_node_and_a_spare_refills_the_pool,
    |ctx: TestContext| async move {
        let enroll = setup(&ctx).await;
        let t = ctx.tenant("acme").await;
        let (ka, _) = ctx.key("tenant-admin", t["id"].as_str()).await;
        let now = Timestamp::now();
        let c = ctx
            .post(
                "/v1/contracts",
                &ka,
                &json!({"gpu_model": "H100-SXM-80GB", "gpu_count": 16, "start_at": now.to_string(),
                        "end_at": now.plus_seconds(30 * 86400).to_string(), "site": "east"}),
            )
            .await
            .expect(201);
        let cid = c["id"].as_str().unwrap();
        let inst = ctx
            .post(
                "/v1/instances",
                &ka,
                &json!({"class": "reserved", "contract_id": cid, "gpu_model": "H100-SXM-80GB", "gpus": 8}),
            )
            .await
            .expect(201);
        let host = inst["placement"][0]["node"].as_str().unwrap().to_string();
        let key = register(&ctx, &enroll, &host).await;
        ctx.post("/v1/agent/heartbeat", &key, &beat(&host, vec![]))
            .await
            .expect(200);
        // GPU 3 falls off the bus.
        let ack = ctx
            .post(
                "/v1/agent/heartbeat",
                &key,
                &beat(&host, vec![xid(1, &host, 3, 79)]),
            )
            .await
            .expect(200);
        assert_eq!(ack["state"], "failed");
        let n = node(&ctx, &host).await;
        assert_eq!(n["state"], "failed");
        assert!(
            n["state_reason"].as_str().unwrap().contains("XID 79"),
            "{n}"
        );
        assert_eq!(n["gpus"][3]["health"], "failed");
        assert_eq!(n["gpus"][2]["health"], "healthy");
        // The instance on it failed at the fault and stopped being billed.
        let i = ctx
            .get(
                &format!("/v1/instances/{}", inst["id"].as_str().unwrap()),
                &ka,
            )
            .await
            .expect(200);
        assert_eq!(i["state"], "failed");
        assert!(i["ended_at"].is_string());
        // The pool got a spare from the same leaf group, and the outage is on record.
        let ev = ctx
            .get(
                "/v1/events?action=contract.pool_node_replaced",
                &ctx.operator_key,
            )
            .await
            .expect(200);
        let e = &ev["items"][0];
        let spare = e["after"]["node"].as_str().unwrap();
        let leaf = |n: &str| n.rsplit_once('-').unwrap().0.to_string();
        assert_eq!(leaf(spare), leaf(&host), "{e}");
        let outages = ctx
            .get(&format!("/v1/contracts/{cid}/outages"), &ka)
            .await
            .expect(200);
        assert_eq!(outages.as_array().unwrap().len(), 1);
        assert_eq!(outages[0]["gpus"], 8);
        assert!(outages[0]["end_at"].is_string(), "{outages}");
        // The tenant can run its reserved work again at once, on the spare.
        let again = ctx
            .post(
                "/v1/instances",
                &ka,
                &json!({"class": "reserved", "contract_id": cid, "gpu_model": "H100-SXM-80GB", "nodes": 2}),
            )
            .await
            .expect(201);
        let nodes: Vec<&str> = again["placement"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["node"].as_str().unwrap())
            .collect();
        assert!(
            nodes.contains(&spare) && !nodes.contains(&host.as_str()),
            "{again}"
        );
        // Another tenant cannot see the contract's outages.
        let o = ctx.tenant("bravo").await;
        let (kb, _) = ctx.key("tenant-admin", o["id"].as_str()).await;
        ctx.get(&format!("/v1/contracts/{cid}/outages"), &kb)
            .await
            .problem(404, "not_found");
    }
);

both_backends!(
    drain_repair_and_burn_in_bring_a_node_back,
    |ctx: TestContext| async move {
        let enroll = setup(&ctx).await;
        let host = "e-p1-l2-n1";
        let key = register(&ctx, &enroll, host).await;
        let op = |what: &'static str| {
            let ctx = &ctx;
            async move {
                ctx.post(
                    &format!("/v1/nodes/{host}/{what}"),
                    &ctx.operator_key,
                    &json!({"reason": format!("test {what}")}),
                )
                .await
            }
        };
        // Cordon keeps the node out of placements; uncordon brings it back.
        assert_eq!(op("cordon").await.expect(200)["state"], "cordoned");
        op("repair-complete").await.problem(409, "conflict");
        assert_eq!(op("uncordon").await.expect(200)["state"], "available");
        // A pending row remap drains the node; empty, it moves to maintenance.
        let mut b = beat(host, vec![]);
        b["gpus"][5]["remap_pending"] = json!(true);
        let ack = ctx.post("/v1/agent/heartbeat", &key, &b).await.expect(200);
        assert_eq!(ack["state"], "draining");
        ctx.svc.health_tick(Timestamp::now()).await.unwrap();
        assert_eq!(node(&ctx, host).await["state"], "maintenance");
        // Repair done: burn-in is requested, and the node stays out until it passes.
        let n = op("repair-complete").await.expect(200);
        assert_eq!(n["state"], "burn_in");
        let ack = ctx
            .post("/v1/agent/heartbeat", &key, &beat(host, vec![]))
            .await
            .expect(200);
        let bi = ack["burn_in"]["id"].as_str().unwrap().to_string();
        let result = |seq: u64, id: &str, passed: bool| {
            json!({"seq": seq, "at": Timestamp::now().to_string(),
                   "kind": {"type": "burn_in", "id": id, "passed": passed, "output": "dcgmi diag -r 3"}})
        };
        // A stale burn-in result is recorded but does not pass the gate.
        let ack = ctx
            .post(
                "/v1/agent/heartbeat",
                &key,
                &beat(host, vec![result(1, "bi_old", true)]),
            )
            .await
            .expect(200);
        assert_eq!(ack["state"], "burn_in");
        let ack = ctx
            .post(
                "/v1/agent/heartbeat",
                &key,
                &beat(host, vec![result(2, &bi, false)]),
            )
            .await
            .expect(200);
        assert_eq!(ack["state"], "maintenance");
        let n = op("repair-complete").await.expect(200);
        assert_eq!(n["state"], "burn_in");
        let ack = ctx
            .post("/v1/agent/heartbeat", &key, &beat(host, vec![]))
            .await
            .expect(200);
        let bi = ack["burn_in"]["id"].as_str().unwrap().to_string();
        let ack = ctx
            .post(
                "/v1/agent/heartbeat",
                &key,
                &beat(host, vec![result(3, &bi, true)]),
            )
            .await
            .expect(200);
        assert_eq!(ack["state"], "available");
        assert!(ack.get("burn_in").is_none());
        // Every step is in the node's history and the audit trail.
        let h = health_events(&ctx, host).await;
        let states: Vec<&str> = h
            .iter()
            .rev()
            .filter(|e| e["kind"] == "state")
            .map(|e| e["action"].as_str().unwrap())
            .collect();
        assert_eq!(
            states,
            [
                "cordoned",
                "available",
                "draining",
                "maintenance",
                "burn_in",
                "maintenance",
                "burn_in",
                "available"
            ]
        );
        let ev = ctx
            .get("/v1/events?action=node.state_changed", &ctx.operator_key)
            .await
            .expect(200);
        assert_eq!(ev["items"].as_array().unwrap().len(), 8);
    }
);

both_backends!(
    silence_fails_a_node_and_gpu_history_follows_the_uuid,
    |ctx: TestContext| async move {
        let enroll = setup(&ctx).await;
        let host = "e-p1-l1-n4";
        let key = register(&ctx, &enroll, host).await;
        ctx.post("/v1/agent/heartbeat", &key, &beat(host, vec![]))
            .await
            .expect(200);
        // Three intervals without a word: unreachable; past the grace period (300 s from
        // the last heartbeat): failed, as of the last heartbeat.
        ctx.svc.health_tick(Timestamp::now()).await.unwrap();
        assert_eq!(node(&ctx, host).await["state"], "available");
        ctx.svc
            .health_tick(Timestamp::now().plus_seconds(31))
            .await
            .unwrap();
        assert_eq!(node(&ctx, host).await["state"], "unreachable");
        ctx.svc
            .health_tick(Timestamp::now().plus_seconds(301))
            .await
            .unwrap();
        let n = node(&ctx, host).await;
        assert_eq!(n["state"], "failed");
        assert!(
            n["state_reason"]
                .as_str()
                .unwrap()
                .contains("unreachable grace period")
        );
        // Repaired, it passes burn-in; then the same GPU fails again: its history shows both.
        ctx.post(
            &format!("/v1/nodes/{host}/repair-complete"),
            &ctx.operator_key,
            &json!({}),
        )
        .await
        .expect(200);
        let ack = ctx
            .post(
                "/v1/agent/heartbeat",
                &key,
                &beat(host, vec![xid(1, host, 6, 48)]),
            )
            .await
            .expect(200);
        assert_eq!(ack["state"], "failed");
        ctx.post(
            &format!("/v1/nodes/{host}/repair-complete"),
            &ctx.operator_key,
            &json!({}),
        )
        .await
        .expect(200);
        let ack = ctx
            .post(
                "/v1/agent/heartbeat",
                &key,
                &beat(host, vec![xid(2, host, 6, 95)]),
            )
            .await
            .expect(200);
        assert_eq!(ack["state"], "failed");
        let g = ctx
            .get(
                &format!("/v1/gpus/{}/history", uuid(host, 6)),
                &ctx.operator_key,
            )
            .await
            .expect(200);
        assert_eq!(g["node"], host);
        assert_eq!(g["health"], "failed");
        assert_eq!(g["failures"], 2, "{g}");
        ctx.get("/v1/gpus/GPU-nothing/history", &ctx.operator_key)
            .await
            .problem(404, "not_found");
    }
);

both_backends!(
    operators_override_the_xid_policy,
    |ctx: TestContext| async move {
        let enroll = setup(&ctx).await;
        let host = "e-p1-l1-n2";
        let key = register(&ctx, &enroll, host).await;
        let rules = ctx
            .get("/v1/health/rules", &ctx.operator_key)
            .await
            .expect(200);
        let rule = |rules: &Value, code: u64| {
            rules
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["code"] == code)
                .cloned()
                .unwrap()
        };
        assert_eq!(rule(&rules, 79)["action"], "fail");
        assert_eq!(rule(&rules, 13)["action"], "ignore");
        let r = ctx
            .send(
                reqwest::Method::PUT,
                "/v1/health/rules/13",
                Some(&ctx.operator_key),
                Some((
                    "application/json",
                    br#"{"action":"drain","note":"our kernels never fault"}"#.to_vec(),
                )),
                &[],
            )
            .await
            .expect(200);
        assert_eq!(rule(&r, 13)["source"], "override");
        let bad = ctx
            .send(
                reqwest::Method::PUT,
                "/v1/health/rules/13",
                Some(&ctx.operator_key),
                Some(("application/json", br#"{"action":"explode"}"#.to_vec())),
                &[],
            )
            .await;
        assert_eq!(bad.status.as_u16(), 400);
        let ack = ctx
            .post(
                "/v1/agent/heartbeat",
                &key,
                &beat(host, vec![xid(1, host, 0, 13)]),
            )
            .await
            .expect(200);
        assert_eq!(ack["state"], "draining");
        let r = ctx
            .delete("/v1/health/rules/13", &ctx.operator_key)
            .await
            .expect(200);
        assert_eq!(rule(&r, 13)["action"], "ignore");
        // Tenants may not touch the policy.
        let t = ctx.tenant("acme").await;
        let (tk, _) = ctx.key("tenant-admin", t["id"].as_str()).await;
        ctx.delete("/v1/health/rules/13", &tk)
            .await
            .problem(403, "forbidden");
    }
);

both_backends!(
    new_nodes_enter_service_only_after_burn_in,
    |ctx: TestContext| async move {
        let fleet = FLEET.replace("nodes_per_block = 4", "nodes_per_block = 4\nburn_in = true");
        ctx.import(&fleet).await.expect(200);
        let enroll = ctx.key("node-agent", None).await.0;
        let host = "e-p1-l1-n1";
        assert_eq!(node(&ctx, host).await["state"], "provisioning");
        // Provisioning nodes take no work.
        let t = ctx.tenant("acme").await;
        let (ka, _) = ctx.key("tenant-admin", t["id"].as_str()).await;
        ctx.post(
            "/v1/instances",
            &ka,
            &json!({"gpu_model": "H100-SXM-80GB", "gpus": 8}),
        )
        .await
        .problem(409, "insufficient_capacity");
        let r = ctx
            .post("/v1/agent/register", &enroll, &inventory(host))
            .await
            .expect(200);
        assert_eq!(r["state"], "burn_in");
        let id = r["burn_in"]["id"].as_str().unwrap();
        let key = r["node_key"].as_str().unwrap();
        let ack = ctx
            .post(
                "/v1/agent/heartbeat",
                key,
                &beat(
                    host,
                    vec![json!({"seq": 1, "at": Timestamp::now().to_string(),
                    "kind": {"type": "burn_in", "id": id, "passed": true, "output": "ok"}})],
                ),
            )
            .await
            .expect(200);
        assert_eq!(ack["state"], "available");
        let i = ctx
            .post(
                "/v1/instances",
                &ka,
                &json!({"gpu_model": "H100-SXM-80GB", "gpus": 8}),
            )
            .await
            .expect(201);
        assert_eq!(i["placement"][0]["node"], host);
    }
);

both_backends!(
    metrics_follow_the_fleet_and_the_prometheus_format,
    |ctx: TestContext| async move {
        let enroll = setup(&ctx).await;
        let host = "e-p1-l2-n4";
        let key = register(&ctx, &enroll, host).await;
        ctx.post("/v1/agent/heartbeat", &key, &beat(host, vec![]))
            .await
            .expect(200);
        ctx.get(&format!("/v1/nodes/{host}"), &ctx.operator_key)
            .await
            .expect(200);
        ctx.post(
            &format!("/v1/nodes/{host}/cordon"),
            &ctx.operator_key,
            &json!({}),
        )
        .await
        .expect(200);
        // No key needed: Prometheus scrapes it from the operator's network.
        let r = ctx
            .send(reqwest::Method::GET, "/metrics", None, None, &[])
            .await;
        assert_eq!(r.status.as_u16(), 200);
        assert!(
            r.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain; version=0.0.4")
        );
        let text = r.body.as_str().unwrap().to_string();
        for want in [
            "neocloud_gpus{site=\"east\",gpu_model=\"H100-SXM-80GB\",state=\"available\"} 56",
            "neocloud_gpus{site=\"east\",gpu_model=\"H100-SXM-80GB\",state=\"cordoned\"} 8",
            "neocloud_site_power_watts{site=\"east\",kind=\"budget\"} 2000000",
            "neocloud_agents{status=\"registered\"} 1",
            "neocloud_queue_length 0",
            "neocloud_http_requests_total{route=\"/v1/nodes/{node}\",method=\"GET\",status=\"200\"}",
            "neocloud_http_request_duration_seconds_bucket{route=\"/v1/agent/heartbeat\",le=\"+Inf\"}",
            "neocloud_allocator_decision_seconds_count",
            "\nneocloud_leader 1\n",
            ",role=\"single\"} 1\n",
            "neocloud_gpus_sellable{site=\"east\",gpu_model=\"H100-SXM-80GB\"} ",
            "neocloud_gpus_committed{site=\"east\",gpu_model=\"H100-SXM-80GB\"} 0",
            "neocloud_spare_nodes{site=\"east\",gpu_model=\"H100-SXM-80GB\",kind=\"wanted\"} ",
            // One agent of the site's 8 nodes heard: the other 7 have none.
            "neocloud_agent_coverage_ratio{site=\"east\"} 0.125",
            "neocloud_nodes_expected_to_heartbeat{site=\"east\",status=\"expected\"} 8",
            "neocloud_nodes_expected_to_heartbeat{site=\"east\",status=\"heard\"} 1",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        // The exposition format: every sample belongs to a family announced with HELP and
        // TYPE, counters end in _total, and every value is a number.
        let mut families = std::collections::HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                families.insert(name.to_string(), kind.to_string());
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "{name}");
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            let name = series.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| families.get(*f).is_some_and(|k| k == "histogram"))
                })
                .unwrap_or(name);
            assert!(families.contains_key(family), "no TYPE for {line}");
        }
        // Checked by Prometheus's own linter (scripts/test.sh installs it and requires it).
        crate::ctx::promtool(&["check", "metrics"], &text);
    }
);

/// A heartbeat with its telemetry as compact rows (`gpu_rows`, what `neocloud agent` sends).
fn row_beat(rows: Vec<Value>) -> Value {
    json!({"sent_at": Timestamp::now().to_string(), "gpu_rows": rows, "events": []})
}

both_backends!(
    compact_telemetry_rows_mean_what_the_full_form_means,
    |ctx: TestContext| async move {
        let enroll = setup(&ctx).await;
        let host = "e-p1-l1-n2";
        let key = register(&ctx, &enroll, host).await;
        // Eight rows, out of order: each names its GPU by the index it registered at.
        let rows: Vec<Value> = (0..8u32)
            .rev()
            .map(|i| json!([i, 40 + i, 300 + i, 50 + i, 1000 * i, i, 0, 0]))
            .collect();
        let ack = ctx
            .post("/v1/agent/heartbeat", &key, &row_beat(rows.clone()))
            .await
            .expect(200);
        assert_eq!(ack["state"], "available");
        let n = node(&ctx, host).await;
        for i in 0..8u32 {
            let t = &n["gpus"][i as usize]["telemetry"];
            assert_eq!(n["gpus"][i as usize]["uuid"], uuid(host, i));
            assert_eq!(t["temperature_c"], 40 + i, "{t}");
            assert_eq!(t["power_watts"], 300 + i);
            assert_eq!(t["utilization_pct"], 50 + i);
            assert_eq!(t["memory_used_mib"], 1000 * i);
            assert_eq!(t["ecc_corrected"], i);
        }
        // Bad rows are refused whole, naming the row and column, and change nothing.
        let before = health_events(&ctx, host).await.len();
        let with = |row: usize, value: Value| {
            let mut r = rows.clone();
            r[row] = value;
            row_beat(r)
        };
        let mut both = row_beat(rows.clone());
        both["gpus"] = beat(host, vec![])["gpus"].clone();
        let cases: Vec<(Value, &str)> = vec![
            (both, "gpu_rows"),
            (
                with(0, json!([8, 40, 300, 50, 0, 0, 0, 0])),
                "gpu_rows[0][0]",
            ),
            (
                with(1, json!([7, 40, 300, 50, 0, 0, 0, 0])),
                "gpu_rows[1][0]",
            ),
            (
                with(2, json!([5, -300, 300, 50, 0, 0, 0, 0])),
                "gpu_rows[2][1]",
            ),
            (
                with(3, json!([4, 40, 300, 250, 0, 0, 0, 0])),
                "gpu_rows[3][3]",
            ),
            (
                with(3, json!([4, 40, 300, 50, -1, 0, 0, 0])),
                "gpu_rows[3][4]",
            ),
            (
                with(4, json!([3, 40, 300, 50, 0, 0, 0, 8])),
                "gpu_rows[4][7]",
            ),
            (with(4, json!([3, 40, 300, 50, 0, 0, 0])), "gpu_rows"),
            (with(4, json!([3, 40, 300, 50, 0, 0, 0, 0, 9])), "gpu_rows"),
            (with(4, json!([3, "hot", 300, 50, 0, 0, 0, 0])), "gpu_rows"),
            (with(4, json!([3, 40, 300, 50, 0, 0, 0, 1e30])), "gpu_rows"),
        ];
        for (body, names) in cases {
            let p = ctx
                .post("/v1/agent/heartbeat", &key, &body)
                .await
                .problem(400, "invalid_request");
            let said = p.to_string();
            assert!(said.contains(names), "{names}: {p}");
        }
        let n = node(&ctx, host).await;
        assert_eq!(n["gpus"][3]["telemetry"]["temperature_c"], 43);
        assert_eq!(health_events(&ctx, host).await.len(), before);
        // Flags: a pending row remap on GPU 5 (flag 1) drains the node as the full form does,
        // and the event names that GPU.
        let ack = ctx
            .post(
                "/v1/agent/heartbeat",
                &key,
                &with(2, json!([5, 45, 305, 55, 5000, 5, 0, 1])),
            )
            .await
            .expect(200);
        assert_eq!(ack["state"], "draining");
        let h = health_events(&ctx, host).await;
        let remap = h
            .iter()
            .find(|e| e["kind"] == "remap_pending")
            .unwrap_or_else(|| panic!("{h:?}"));
        assert_eq!(remap["gpu_uuid"], uuid(host, 5), "{remap}");
    }
);

fn xids_of(events: &[Value], code: u64) -> usize {
    events
        .iter()
        .filter(|e| e["kind"] == "xid" && e["code"] == code)
        .count()
}

both_backends!(
    a_batch_of_heartbeats_answers_each_as_if_it_had_come_alone,
    |ctx: TestContext| async move {
        let enroll = setup(&ctx).await;
        let (a, b) = ("e-p1-l1-n1", "e-p1-l1-n2");
        let ka = register(&ctx, &enroll, a).await;
        let kb = register(&ctx, &enroll, b).await;
        ctx.tenant("acme").await;
        let (tenant_key, _) = ctx.key("tenant-admin", Some("acme")).await;
        let item = |key: &str, hb: Value| json!({"key": key, "heartbeat": hb});
        let batch = json!({"heartbeats": [
            item(&ka, beat(a, vec![])),
            // News: XID 79 fails node b.
            item(&kb, beat(b, vec![xid(1, b, 3, 79)])),
            item("nck_not_a_key", beat(a, vec![])),
            item(&ka, json!({"sent_at": Timestamp::now().to_string(), "gpus": "none"})),
            item(&ka, beat(b, vec![])),
            item(&tenant_key, beat(a, vec![])),
            item(&enroll, beat(a, vec![])),
        ]});
        // The relay's own key: the enrollment key will do.
        let r = ctx
            .post("/v1/agent/heartbeats", &enroll, &batch)
            .await
            .expect(200);
        let answers = r["answers"].as_array().unwrap();
        assert_eq!(answers.len(), 7, "{r}");
        let status: Vec<u64> = answers
            .iter()
            .map(|x| x["status"].as_u64().unwrap())
            .collect();
        assert_eq!(status, [200, 200, 401, 400, 400, 403, 403], "{r}");
        assert_eq!(answers[0]["body"]["state"], "available");
        assert_eq!(answers[1]["body"]["state"], "failed");
        assert_eq!(answers[1]["body"]["acked_seq"], 1);
        // Each refusal is the problem the heartbeat alone would have got.
        assert_eq!(answers[2]["body"]["code"], "unauthenticated");
        assert_eq!(answers[2]["body"]["status"], 401);
        assert!(
            answers[3]["body"]["detail"]
                .as_str()
                .unwrap()
                .contains("gpus"),
            "{}",
            answers[3]
        );
        assert!(
            answers[4]["body"]["detail"]
                .as_str()
                .unwrap()
                .contains("is not a GPU of node"),
            "{}",
            answers[4]
        );
        assert_eq!(answers[5]["body"]["code"], "forbidden");
        // An enrollment key speaks for no node.
        assert!(
            answers[6]["body"]["detail"]
                .as_str()
                .unwrap()
                .contains("enrollment key"),
            "{}",
            answers[6]
        );
        let n = node(&ctx, b).await;
        assert_eq!(n["state"], "failed");
        assert!(
            n["state_reason"].as_str().unwrap().contains("XID 79"),
            "{n}"
        );
        assert_eq!(node(&ctx, a).await["state"], "available");
        // The same batch again (a relay retrying after a lost answer) stores nothing new.
        let events_b = health_events(&ctx, b).await;
        assert_eq!(xids_of(&events_b, 79), 1, "{events_b:?}");
        let again = ctx
            .post("/v1/agent/heartbeats", &enroll, &batch)
            .await
            .expect(200);
        assert_eq!(again["answers"][1]["body"]["acked_seq"], 1);
        assert_eq!(health_events(&ctx, b).await, events_b);

        // Bad batches are refused whole, and change nothing.
        let before_a = node(&ctx, a).await["last_heartbeat_at"].clone();
        let too_many: Vec<Value> = (0..1001).map(|_| item(&ka, beat(a, vec![]))).collect();
        let p = ctx
            .post(
                "/v1/agent/heartbeats",
                &enroll,
                &json!({"heartbeats": too_many}),
            )
            .await
            .problem(400, "invalid_request");
        assert!(
            p["detail"].as_str().unwrap().contains("at most 1000"),
            "{p}"
        );
        ctx.post("/v1/agent/heartbeats", &tenant_key, &batch)
            .await
            .problem(403, "forbidden");
        ctx.send(
            reqwest::Method::POST,
            "/v1/agent/heartbeats",
            None,
            Some(("application/json", serde_json::to_vec(&batch).unwrap())),
            &[],
        )
        .await
        .problem(401, "unauthenticated");
        for bad in [
            &b"{\"heartbeats\": ["[..],
            b"{\"heartbeats\": 3}",
            b"{\"heartbeats\": [], \"extra\": 1}",
            b"{\"heartbeats\": [{\"key\": 5, \"heartbeat\": {}}]}",
        ] {
            ctx.send(
                reqwest::Method::POST,
                "/v1/agent/heartbeats",
                Some(&enroll),
                Some(("application/json", bad.to_vec())),
                &[],
            )
            .await
            .problem(400, "invalid_request");
        }
        assert_eq!(node(&ctx, a).await["last_heartbeat_at"], before_a);
        // An empty batch is answered with no answers.
        let r = ctx
            .post("/v1/agent/heartbeats", &enroll, &json!({"heartbeats": []}))
            .await
            .expect(200);
        assert_eq!(r["answers"], json!([]));
    }
);
