//! Instances, preemption, quotas, the queue, contracts and the Memphis scenario, through
//! HTTP on both databases.

use serde_json::{Value, json};

use crate::both_backends;
use crate::ctx::TestContext;

/// Two sites: `east` with 4 leaf groups × 4 nodes of 8 H100 (128 GPUs, 2 pods), `west` with
/// 2 NVL racks × 4 nodes of 4 GB200.
const FLEET: &str = r#"
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
  { kind = "pod", count = 2, name = "e-p{n}" },
  { kind = "leaf_group", count = 2, name = "{parent}-l{n}" },
]
name = "{block}-n{n}"

[[sites]]
name = "west"
region = "us-west"
power_mw = 1
pue = 1.1
[[sites.node_groups]]
gpu_model = "GB200"
gpus = 4
peak_watts = 7000
idle_watts = 1800
nodes_per_block = 4
layout = [ { kind = "nvlink_domain", count = 2, name = "w-rack{n}" } ]
name = "{block}-n{n}"
"#;

async fn setup(ctx: &TestContext) -> (String, String, String) {
    ctx.import(FLEET).await.expect(200);
    let a = ctx.tenant("acme").await;
    let b = ctx.tenant("bravo").await;
    ctx.post(
        "/v1/tenants",
        &ctx.operator_key,
        &json!({"name": "home-lab", "kind": "internal"}),
    )
    .await
    .expect(201);
    let (ka, _) = ctx.key("tenant-admin", a["id"].as_str()).await;
    let (kb, _) = ctx.key("tenant-admin", b["id"].as_str()).await;
    (ka, kb, b["id"].as_str().unwrap().to_string())
}

fn gpus_of(v: &Value) -> Vec<(String, Vec<u64>)> {
    v["placement"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["node"].as_str().unwrap().to_string(),
                p["gpus"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|g| g.as_u64().unwrap())
                    .collect(),
            )
        })
        .collect()
}

both_backends!(
    launch_every_shape_and_terminate,
    |ctx: TestContext| async move {
        let (ka, kb, _) = setup(&ctx).await;
        let i1 = ctx
            .post(
                "/v1/instances",
                &ka,
                &json!({"gpu_model": "H100-SXM-80GB", "gpus": 2}),
            )
            .await
            .expect(201);
        assert_eq!(i1["state"], "running");
        assert_eq!(i1["class"], "on-demand");
        assert_eq!(i1["gpu_count"], 2);
        let p1 = gpus_of(&i1);
        assert_eq!(p1.len(), 1);
        assert!(p1[0].1 == vec![0, 1], "aligned pair: {p1:?}");
        // Best fit: the next pair lands on the same node, aligned.
        let i2 = ctx
            .post(
                "/v1/instances",
                &ka,
                &json!({"gpu_model": "H100-SXM-80GB", "gpus": 2}),
            )
            .await
            .expect(201);
        let p2 = gpus_of(&i2);
        assert_eq!(p2[0].0, p1[0].0);
        assert_eq!(p2[0].1, vec![2, 3]);
        // Another tenant never shares that node (sharing is off by default).
        let j = ctx
            .post(
                "/v1/instances",
                &kb,
                &json!({"gpu_model": "H100-SXM-80GB", "gpus": 4}),
            )
            .await
            .expect(201);
        assert_ne!(gpus_of(&j)[0].0, p1[0].0);
        // A gang of 4 whole nodes in one leaf group, and one of 4 GB200 trays in one NVL rack.
        let g = ctx
            .post(
                "/v1/instances",
                &ka,
                &json!({"gpu_model": "H100-SXM-80GB", "nodes": 4, "gang_level": "leaf_group"}),
            )
            .await
            .expect(201);
        let gp = gpus_of(&g);
        assert_eq!(gp.len(), 4);
        let leaf: Vec<String> = gp
            .iter()
            .map(|(n, _)| n.rsplit_once('-').unwrap().0.to_string())
            .collect();
        assert!(leaf.iter().all(|l| *l == leaf[0]), "one leaf group: {gp:?}");
        assert_eq!(g["gpu_count"], 32);
        let r = ctx
            .post(
                "/v1/instances",
                &ka,
                &json!({"gpu_model": "GB200", "nodes": 4, "gang_level": "nvlink_domain"}),
            )
            .await
            .expect(201);
        assert_eq!(gpus_of(&r).len(), 4);
        // A gang larger than any block is refused with the reason.
        let b = ctx
            .post(
                "/v1/instances",
                &ka,
                &json!({"gpu_model": "H100-SXM-80GB", "nodes": 5, "gang_level": "leaf_group"}),
            )
            .await
            .problem(409, "insufficient_capacity");
        assert!(b["detail"].as_str().unwrap().contains("leaf_group"), "{b}");

        // Show, list, terminate.
        let id = i1["id"].as_str().unwrap();
        let shown = ctx
            .get(&format!("/v1/instances/{id}"), &ka)
            .await
            .expect(200);
        assert_eq!(gpus_of(&shown), p1);
        let t = ctx
            .post(&format!("/v1/instances/{id}/terminate"), &ka, &json!({}))
            .await
            .expect(200);
        assert_eq!(t["state"], "terminated");
        assert!(t["placement"].as_array().unwrap().is_empty());
        // The freed pair is reused.
        let again = ctx
            .post(
                "/v1/instances",
                &ka,
                &json!({"gpu_model": "H100-SXM-80GB", "gpus": 2}),
            )
            .await
            .expect(201);
        assert_eq!(gpus_of(&again), p1);
        let list = ctx
            .get("/v1/instances?state=running", &ka)
            .await
            .expect(200);
        assert_eq!(list["items"].as_array().unwrap().len(), 4);
        let events = ctx
            .get(&format!("/v1/events?resource_id={id}"), &ka)
            .await
            .expect(200);
        let actions: Vec<&str> = events["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap())
            .collect();
        assert_eq!(actions, vec!["instance.terminated", "instance.running"]);
    }
);

both_backends!(
    bad_launches_are_refused_and_change_nothing,
    |ctx: TestContext| async move {
        let (ka, kb, _) = setup(&ctx).await;
        for bad in [
            json!({"gpu_model": "H100-SXM-80GB", "gpus": 3}),
            json!({"gpu_model": "H100-SXM-80GB", "gpus": 0}),
            json!({"gpu_model": "H100-SXM-80GB", "gpus": 16}),
            json!({"gpu_model": "H100-SXM-80GB", "nodes": 0}),
            json!({"gpu_model": "H100-SXM-80GB"}),
            json!({"gpu_model": "H100-SXM-80GB", "gpus": 2, "nodes": 1}),
            json!({"gpu_model": "H100-SXM-80GB", "gpus": -2}),
            json!({"gpu_model": "H900", "gpus": 1}),
            json!({"gpu_model": "H100-SXM-80GB", "gpus": 1, "class": "internal"}),
            json!({"gpu_model": "H100-SXM-80GB", "gpus": 1, "class": "reserved"}),
            json!({"gpu_model": "H100-SXM-80GB", "gpus": 1, "class": "gold"}),
            json!({"gpu_model": "H100-SXM-80GB", "gpus": 1, "wait_seconds": 99999999}),
        ] {
            ctx.post("/v1/instances", &ka, &bad)
                .await
                .problem(400, "invalid_request");
        }
        ctx.post(
            "/v1/instances",
            &ka,
            &json!({"gpu_model": "H100-SXM-80GB", "gpus": 1, "site": "nowhere"}),
        )
        .await
        .problem(404, "not_found");
        ctx.post(
            "/v1/instances",
            &ka,
            &json!({"gpu_model": "H100-SXM-80GB", "gpus": 1, "tenant_id": "bravo"}),
        )
        .await
        .problem(404, "not_found");
        // Nothing exists after all that; and B's instance is not A's to see or stop.
        assert_eq!(
            ctx.get("/v1/instances", &ka).await.expect(200)["items"]
                .as_array()
                .unwrap()
                .len(),
            0
        );
        let bi = ctx
            .post(
                "/v1/instances",
                &kb,
                &json!({"gpu_model": "H100-SXM-80GB", "gpus": 1}),
            )
            .await
            .expect(201);
        let bid = bi["id"].as_str().unwrap();
        ctx.get(&format!("/v1/instances/{bid}"), &ka)
            .await
            .problem(404, "not_found");
        ctx.post(&format!("/v1/instances/{bid}/terminate"), &ka, &json!({}))
            .await
            .problem(404, "not_found");
        assert_eq!(
            ctx.get(&format!("/v1/instances/{bid}"), &kb)
                .await
                .expect(200)["state"],
            "running"
        );
    }
);

both_backends!(
    spot_is_preempted_with_notice_then_the_queue_serves,
    |ctx: TestContext| async move {
        let (ka, kb, _) = setup(&ctx).await;
        // Spot fills every H100 node of east.
        let spot = ctx
            .post(
                "/v1/instances",
                &kb,
                &json!({"gpu_model": "H100-SXM-80GB", "nodes": 16, "class": "spot"}),
            )
            .await
            .expect(201);
        let sid = spot["id"].as_str().unwrap();
        // On-demand outranks spot: the spot instance gets a notice, the new one waits.
        let od = ctx
            .post(
                "/v1/instances",
                &ka,
                &json!({"gpu_model": "H100-SXM-80GB", "gpus": 8}),
            )
            .await
            .expect(201);
        assert_eq!(od["state"], "pending");
        assert!(od["reason"].as_str().unwrap().contains("preempted"), "{od}");
        let s = ctx
            .get(&format!("/v1/instances/{sid}"), &kb)
            .await
            .expect(200);
        assert_eq!(s["state"], "preempting");
        let deadline: neocloud_types::Timestamp =
            s["preempt_at"].as_str().unwrap().parse().unwrap();
        // Before the notice runs out nothing moves.
        ctx.svc.tick(deadline.plus_seconds(-1)).await.unwrap();
        assert_eq!(
            ctx.get(&format!("/v1/instances/{sid}"), &kb)
                .await
                .expect(200)["state"],
            "preempting"
        );
        // After it, spot is preempted and the on-demand instance runs on the freed GPUs.
        ctx.svc.tick(deadline).await.unwrap();
        let s = ctx
            .get(&format!("/v1/instances/{sid}"), &kb)
            .await
            .expect(200);
        assert_eq!(s["state"], "preempted");
        assert!(s["placement"].as_array().unwrap().is_empty());
        let od = ctx
            .get(
                &format!("/v1/instances/{}", od["id"].as_str().unwrap()),
                &ka,
            )
            .await
            .expect(200);
        assert_eq!(od["state"], "running");
        // Spot never preempts anyone: with no room it is refused at once.
        ctx.post(
            "/v1/instances",
            &kb,
            &json!({"gpu_model": "GB200", "nodes": 9, "class": "spot"}),
        )
        .await
        .problem(409, "insufficient_capacity");
    }
);

both_backends!(
    queue_waits_until_a_deadline_and_quotas_hold,
    |ctx: TestContext| async move {
        let (ka, kb, bravo) = setup(&ctx).await;
        // 7 of the 8 GB200 nodes: the eighth is held back by the spare buffer (2% of 32 GPUs).
        let all = ctx
            .post(
                "/v1/instances",
                &ka,
                &json!({"gpu_model": "GB200", "nodes": 7}),
            )
            .await
            .expect(201);
        // No room and no one to preempt (same class): refused at once by default...
        ctx.post(
            "/v1/instances",
            &kb,
            &json!({"gpu_model": "GB200", "gpus": 4}),
        )
        .await
        .problem(409, "insufficient_capacity");
        // ...or queued when it agrees to wait.
        let w = ctx
            .post(
                "/v1/instances",
                &kb,
                &json!({"gpu_model": "GB200", "gpus": 4, "wait_seconds": 60}),
            )
            .await
            .expect(201);
        assert_eq!(w["state"], "pending");
        let w2 = ctx
            .post(
                "/v1/instances",
                &kb,
                &json!({"gpu_model": "GB200", "gpus": 4, "wait_seconds": 1}),
            )
            .await
            .expect(201);
        let until: neocloud_types::Timestamp = w2["wait_until"].as_str().unwrap().parse().unwrap();
        ctx.svc.tick(until).await.unwrap();
        let w2 = ctx
            .get(
                &format!("/v1/instances/{}", w2["id"].as_str().unwrap()),
                &kb,
            )
            .await
            .expect(200);
        assert_eq!(w2["state"], "failed");
        assert!(w2["reason"].as_str().unwrap().contains("deadline"));
        // The queue's wait is visible in /metrics: the oldest waiter's age now, and once it
        // starts, one more observation of the wait histogram (the counters are process-wide,
        // so only the increase is asserted).
        let metric = |text: &str, name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
                .unwrap_or_else(|| panic!("{name} missing"))
                .parse()
                .unwrap()
        };
        let before = ctx.svc.metrics_text().await.unwrap();
        assert!(metric(&before, "neocloud_queue_oldest_wait_seconds") > 0.0);
        let waits_before = metric(&before, "neocloud_queue_wait_seconds_count");
        // Capacity frees: the waiting one starts.
        ctx.post(
            &format!("/v1/instances/{}/terminate", all["id"].as_str().unwrap()),
            &ka,
            &json!({}),
        )
        .await
        .expect(200);
        let w = ctx
            .get(&format!("/v1/instances/{}", w["id"].as_str().unwrap()), &kb)
            .await
            .expect(200);
        assert_eq!(w["state"], "running", "{w}");
        let after = ctx.svc.metrics_text().await.unwrap();
        assert!(metric(&after, "neocloud_queue_wait_seconds_count") >= waits_before + 1.0);
        assert_eq!(metric(&after, "neocloud_queue_oldest_wait_seconds"), 0.0);

        // Quotas: 8 on-demand H100 GPUs at most for bravo.
        ctx.send(reqwest::Method::PUT, "/v1/quotas", Some(&kb),
        Some(("application/json", serde_json::to_vec(&json!({"tenant_id": bravo, "gpu_model": "H100-SXM-80GB", "class": "on-demand", "max_gpus": 8})).unwrap())), &[])
        .await
        .problem(403, "forbidden");
        let q = ctx.send(reqwest::Method::PUT, "/v1/quotas", Some(&ctx.operator_key),
        Some(("application/json", serde_json::to_vec(&json!({"tenant_id": bravo, "gpu_model": "H100-SXM-80GB", "class": "on-demand", "max_gpus": 8})).unwrap())), &[])
        .await
        .expect(200);
        assert_eq!(q["items"][0]["max_gpus"], 8);
        ctx.post(
            "/v1/instances",
            &kb,
            &json!({"gpu_model": "H100-SXM-80GB", "gpus": 4}),
        )
        .await
        .expect(201);
        ctx.post(
            "/v1/instances",
            &kb,
            &json!({"gpu_model": "H100-SXM-80GB", "gpus": 4}),
        )
        .await
        .expect(201);
        let b = ctx
            .post(
                "/v1/instances",
                &kb,
                &json!({"gpu_model": "H100-SXM-80GB", "gpus": 1}),
            )
            .await
            .problem(409, "quota_exceeded");
        assert!(b["detail"].as_str().unwrap().contains("quota"));
        // Spot is another class: not bound by the on-demand quota.
        ctx.post(
            "/v1/instances",
            &kb,
            &json!({"gpu_model": "H100-SXM-80GB", "gpus": 1, "class": "spot"}),
        )
        .await
        .expect(201);
        let mine = ctx.get("/v1/quotas", &kb).await.expect(200);
        assert_eq!(mine["items"].as_array().unwrap().len(), 1);
    }
);

both_backends!(
    a_restart_rebuilds_the_same_allocator,
    |ctx: TestContext| async move {
        let (ka, kb, _) = setup(&ctx).await;
        for (k, body) in [
            (&ka, json!({"gpu_model": "H100-SXM-80GB", "gpus": 2})),
            (
                &ka,
                json!({"gpu_model": "H100-SXM-80GB", "nodes": 3, "gang_level": "pod"}),
            ),
            (
                &kb,
                json!({"gpu_model": "H100-SXM-80GB", "gpus": 8, "class": "spot"}),
            ),
            (&kb, json!({"gpu_model": "GB200", "gpus": 1})),
        ] {
            ctx.post("/v1/instances", k, &body).await.expect(201);
        }
        let before = ctx.svc.allocator_fingerprint().await;
        // A second control plane on the same database rebuilds from it.
        let url = ctx.database_url();
        let again = neocloud_service::Service::open(&url).await.unwrap();
        assert_eq!(again.allocator_fingerprint().await, before);
        // The database refuses a second holder for a held GPU on its own.
        let held: (String, i64) =
            sqlx::query_as("SELECT node_id, idx FROM gpus WHERE holder IS NOT NULL LIMIT 1")
                .fetch_one(ctx.svc.store().pool())
                .await
                .unwrap();
        let mut tx = ctx.svc.store().begin_write().await.unwrap();
        let r = neocloud_store::Store::instance_hold_gpus(
            &mut tx,
            neocloud_types::InstanceId::new(),
            &[(
                held.0.parse().unwrap(),
                vec![u32::try_from(held.1).unwrap()].into(),
            )],
        )
        .await;
        assert!(r.is_err(), "double assignment must fail");
        drop(tx);
        // So does a batch that holds its rows back until the commit (the writer's way): a
        // new instance holding that GPU, written at the commit, fails the commit whole.
        let holder: (String,) =
            sqlx::query_as("SELECT holder FROM gpus WHERE holder IS NOT NULL LIMIT 1")
                .fetch_one(ctx.svc.store().pool())
                .await
                .unwrap();
        let mut other = ctx
            .svc
            .store()
            .instance_get(holder.0.parse().unwrap())
            .await
            .unwrap();
        other.id = neocloud_types::InstanceId::new();
        let held_gpus = [(
            held.0.parse().unwrap(),
            vec![u32::try_from(held.1).unwrap()].into(),
        )];
        let h = neocloud_store::Held {
            cpu_milli: 1000,
            memory_mib: 1024,
            mig_start: None,
        };
        let mut tx = ctx.svc.store().begin_write().await.unwrap();
        tx.defer_inserts();
        neocloud_store::Store::instance_insert_held(&mut tx, &other, Some(&h))
            .await
            .unwrap();
        neocloud_store::Store::instance_hold_placed(&mut tx, &other, &held_gpus, &h)
            .await
            .unwrap();
        assert!(
            tx.commit().await.is_err(),
            "a held-back double assignment must fail"
        );
        let n: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM instances WHERE id = $1")
            .bind(other.id.to_string())
            .fetch_one(ctx.svc.store().pool())
            .await
            .unwrap();
        assert_eq!(n.0, 0, "nothing of the failed batch is written");

        // The 3-node gang's nodes are held whole, a row per node, not a holder per GPU.
        let gang: (String,) =
            sqlx::query_as("SELECT id FROM instances WHERE shape_count = 3 AND state = 'running'")
                .fetch_one(ctx.svc.store().pool())
                .await
                .unwrap();
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT node_id FROM node_holds WHERE holder = $1 ORDER BY node_id")
                .bind(&gang.0)
                .fetch_all(ctx.svc.store().pool())
                .await
                .unwrap();
        assert_eq!(rows.len(), 3);
        let per_gpu: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM gpus WHERE holder = $1")
            .bind(&gang.0)
            .fetch_one(ctx.svc.store().pool())
            .await
            .unwrap();
        assert_eq!(per_gpu.0, 0);
        let read = ctx
            .svc
            .store()
            .instance_get(gang.0.parse().unwrap())
            .await
            .unwrap();
        assert_eq!(read.placement.len(), 3);
        assert!(
            read.placement
                .iter()
                .all(|p| p.gpus.as_slice() == (0..8).collect::<Vec<u32>>())
        );
        // A GPU of such a node is refused to anyone else: one GPU, or the node whole in
        // another gang's batch (held back to the commit, the writer's way).
        let node: neocloud_types::NodeId = rows[0].0.parse().unwrap();
        let mut tx = ctx.svc.store().begin_write().await.unwrap();
        let r = neocloud_store::Store::instance_hold_gpus(
            &mut tx,
            neocloud_types::InstanceId::new(),
            &[(node, vec![5].into())],
        )
        .await;
        assert!(r.is_err(), "a GPU of a node held whole must be refused");
        drop(tx);
        let mut other = read.clone();
        other.id = neocloud_types::InstanceId::new();
        let free: Vec<(String,)> = sqlx::query_as(
            "SELECT n.id FROM nodes n WHERE n.gpu_count = 8
               AND NOT EXISTS (SELECT 1 FROM gpus g WHERE g.node_id = n.id AND g.holder IS NOT NULL)
               AND NOT EXISTS (SELECT 1 FROM node_holds w WHERE w.node_id = n.id)
               AND NOT EXISTS (SELECT 1 FROM instance_slices s WHERE s.node_id = n.id)
             ORDER BY n.id LIMIT 1",
        )
        .fetch_all(ctx.svc.store().pool())
        .await
        .unwrap();
        let all8: neocloud_types::GpuIndexes = (0..8).collect();
        let both = [
            (free[0].0.parse().unwrap(), all8.clone()),
            (node, all8.clone()),
        ];
        let mut tx = ctx.svc.store().begin_write().await.unwrap();
        tx.defer_inserts();
        neocloud_store::Store::instance_insert_held(&mut tx, &other, Some(&h))
            .await
            .unwrap();
        neocloud_store::Store::instance_hold_placed(&mut tx, &other, &both, &h)
            .await
            .unwrap();
        assert!(
            tx.commit().await.is_err(),
            "a node held whole twice must fail"
        );
        let n: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM node_holds WHERE node_id = $1")
            .bind(free[0].0.as_str())
            .fetch_one(ctx.svc.store().pool())
            .await
            .unwrap();
        assert_eq!(n.0, 0, "nothing of the failed batch is written");
        // Terminated, the gang leaves no row behind.
        let k = ctx.operator_key.clone();
        ctx.post(
            &format!("/v1/instances/{}/terminate", gang.0),
            &k,
            &json!({}),
        )
        .await
        .expect(200);
        let left: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM node_holds WHERE holder = $1")
            .bind(&gang.0)
            .fetch_one(ctx.svc.store().pool())
            .await
            .unwrap();
        assert_eq!(left.0, 0);
    }
);

both_backends!(
    contracts_quotes_and_the_racing_sign,
    |ctx: TestContext| async move {
        let (ka, kb, bravo) = setup(&ctx).await;
        let now = neocloud_types::Timestamp::now();
        let later = |days: i64| now.plus_seconds(days * 86400).to_string();
        // east sells 128 GPUs minus a 2% spare buffer (3 GPUs): 125, so 15 whole nodes (120).
        let q = ctx.post("/v1/quotes", &ka, &json!({"gpu_model": "H100-SXM-80GB", "gpu_count": 120, "start_at": later(1), "end_at": later(400), "site": "east"})).await.expect(200);
        assert_eq!(q["fits"], true, "{q}");
        assert_eq!(q["sellable_gpus"], 125);
        assert_eq!(q["max_gpus_in_window"], 120);
        assert_eq!(q["price_per_gpu_hour"], "2.25"); // 1-3 years: 25% off the $3.00 list price
        // Bad terms.
        for bad in [
            json!({"gpu_model": "H100-SXM-80GB", "gpu_count": 12, "start_at": later(1), "end_at": later(2)}),
            json!({"gpu_model": "H100-SXM-80GB", "gpu_count": 0, "start_at": later(1), "end_at": later(2)}),
            json!({"gpu_model": "H100-SXM-80GB", "gpu_count": 8, "start_at": later(2), "end_at": later(1)}),
            json!({"gpu_model": "H100-SXM-80GB", "gpu_count": 8, "start_at": later(-2), "end_at": later(1)}),
            json!({"gpu_model": "H900", "gpu_count": 8, "start_at": later(1), "end_at": later(2)}),
            json!({"gpu_model": "H100-SXM-80GB", "gpu_count": 8, "start_at": "tomorrow", "end_at": later(2)}),
        ] {
            ctx.post("/v1/quotes", &ka, &bad)
                .await
                .problem(400, "invalid_request");
        }
        // Two tenants race to sign 120 GPUs each: exactly one wins.
        let terms = |t: &str| json!({"tenant_id": t, "gpu_model": "H100-SXM-80GB", "gpu_count": 120, "start_at": later(1), "end_at": later(400), "site": "east"});
        let (ta, tb) = (terms("acme"), terms("bravo"));
        let (a, b) = tokio::join!(
            ctx.post("/v1/contracts", &ka, &ta),
            ctx.post("/v1/contracts", &kb, &tb)
        );
        let statuses = [a.status.as_u16(), b.status.as_u16()];
        assert!(
            statuses.contains(&201) && statuses.contains(&409),
            "{statuses:?}"
        );
        let (winner, key, loser_key) = if a.status.as_u16() == 201 {
            (a.body, &ka, &kb)
        } else {
            (b.body, &kb, &ka)
        };
        assert_eq!(winner["state"], "signed");
        let cid = winner["id"].as_str().unwrap();
        // The loser cannot see the winner's contract.
        ctx.get(&format!("/v1/contracts/{cid}"), loser_key)
            .await
            .problem(404, "not_found");
        ctx.post(
            &format!("/v1/contracts/{cid}/cancel"),
            loser_key,
            &json!({}),
        )
        .await
        .problem(404, "not_found");
        // A quote now says when it would fit: after the contract.
        let q = ctx.post("/v1/quotes", loser_key, &json!({"gpu_model": "H100-SXM-80GB", "gpu_count": 120, "start_at": later(1), "end_at": later(30), "site": "east"})).await.expect(200);
        assert_eq!(q["fits"], false);
        assert_eq!(q["max_gpus_in_window"], 0);
        assert_eq!(
            q["earliest_start"].as_str().unwrap(),
            winner["end_at"].as_str().unwrap()
        );
        // Capacity shows the commitment.
        let cap = ctx
            .get("/v1/capacity?site=east&horizon_days=500", &ctx.operator_key)
            .await
            .expect(200);
        let line = &cap["items"][0];
        assert_eq!(line["sellable_gpus"], 125);
        assert!(
            line["committed"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["gpus"] == 120),
            "{line}"
        );
        // Tenants cannot read fleet-wide capacity.
        ctx.get("/v1/capacity", key).await.problem(403, "forbidden");
        // Cancel releases it; the loser can then sign.
        let c = ctx
            .post(&format!("/v1/contracts/{cid}/cancel"), key, &json!({}))
            .await
            .expect(200);
        assert_eq!(c["state"], "cancelled");
        let t = if loser_key == &ka {
            "acme".to_string()
        } else {
            bravo.clone()
        };
        ctx.post("/v1/contracts", loser_key, &terms(&t))
            .await
            .expect(201);
    }
);

both_backends!(the_memphis_scenario, |ctx: TestContext| async move {
    let k = ctx.operator_key.clone();
    let demo = neocloud_fleet::demo_fleet_toml(0.01).unwrap();
    ctx.import(&demo).await.expect(200);
    for (name, kind) in [
        ("frontier-lab", "external"),
        ("home-lab", "internal"),
        ("acme", "external"),
    ] {
        ctx.post("/v1/tenants", &k, &json!({"name": name, "kind": kind}))
            .await
            .expect(201);
    }
    let now = neocloud_types::Timestamp::now();
    let three_years = now.plus_seconds(3 * 365 * 86400).to_string();
    // frontier-lab signs for every sellable GPU of memphis-1 for three years.
    let q = ctx.post("/v1/quotes", &k, &json!({"gpu_model": "H100-SXM-80GB", "gpu_count": 8, "start_at": now.to_string(), "end_at": three_years, "site": "memphis-1"})).await.expect(200);
    let all = q["max_gpus_in_window"].as_u64().unwrap();
    assert_eq!(all, 2152, "2,200 GPUs minus the 2% spare, in whole nodes");
    let c = ctx.post("/v1/contracts", &k, &json!({"tenant_id": "frontier-lab", "gpu_model": "H100-SXM-80GB", "gpu_count": all, "start_at": now.to_string(), "end_at": three_years, "site": "memphis-1", "sla_percent": "99.9"})).await.expect(201);
    assert_eq!(
        c["state"], "active",
        "a contract starting now is active at once: {c}"
    );
    assert_eq!(c["price_per_gpu_hour"], "1.95"); // three years: 35% off list
    let cid = c["id"].as_str().unwrap();
    // Its pool is pinned; frontier-lab runs a 64-node gang in it.
    let g = ctx.post("/v1/instances", &k, &json!({"tenant_id": "frontier-lab", "class": "reserved", "contract_id": cid, "gpu_model": "H100-SXM-80GB", "nodes": 64, "gang_level": "pod"})).await.expect(201);
    assert_eq!(g["state"], "running");
    // home-lab trains on memphis-2.
    let h = ctx.post("/v1/instances", &k, &json!({"tenant_id": "home-lab", "class": "internal", "gpu_model": "GB200", "nodes": 18, "gang_level": "nvlink_domain"})).await.expect(201);
    assert_eq!(h["state"], "running");
    // On-demand H100 in memphis-1 is refused, with the reason.
    let b = ctx.post("/v1/instances", &k, &json!({"tenant_id": "acme", "gpu_model": "H100-SXM-80GB", "gpus": 8, "site": "memphis-1"})).await.problem(409, "insufficient_capacity");
    // It says what the tenant can do, never what other customers hold (issue: a refusal
    // revealed "215600 of 215600 sellable GPUs are reserved by contracts").
    let detail = b["detail"].as_str().unwrap();
    assert!(
        detail.contains("no H100-SXM-80GB capacity left to sell"),
        "{b}"
    );
    assert!(
        !detail.contains("reserved by contracts") && !detail.contains("sellable GPUs"),
        "a refusal must not reveal other customers' business: {b}"
    );
    // A quote for memphis-1 answers with the earliest start: after the lease.
    let q = ctx.post("/v1/quotes", &k, &json!({"gpu_model": "H100-SXM-80GB", "gpu_count": 800, "start_at": now.plus_seconds(86400).to_string(), "end_at": now.plus_seconds(366 * 86400).to_string(), "site": "memphis-1"})).await.expect(200);
    assert_eq!(q["fits"], false);
    assert_eq!(
        q["earliest_start"].as_str().unwrap(),
        c["end_at"].as_str().unwrap()
    );
    // Capacity: committed, allocated by class.
    let cap = ctx.get("/v1/capacity?site=memphis-1", &k).await.expect(200);
    assert_eq!(cap["items"][0]["committed_gpus_now"], 2152);
    assert_eq!(cap["items"][0]["allocated"][0]["class"], "reserved");
    assert_eq!(cap["items"][0]["allocated"][0]["gpus"], 512);
});

both_backends!(
    a_power_cap_refuses_placements_over_it,
    |ctx: TestContext| async move {
        let (ka, _, _) = setup(&ctx).await;
        let k = ctx.operator_key.clone();
        // east idles at 16 nodes × 2,000 W × PUE 1.1 = 35,200 W; a full 8-GPU node adds 8,800 W.
        let put = |body: Value| {
            let ctx = &ctx;
            let k = k.clone();
            async move {
                ctx.send(
                    reqwest::Method::PUT,
                    "/v1/sites/east/power-cap",
                    Some(&k),
                    Some(("application/json", serde_json::to_vec(&body).unwrap())),
                    &[],
                )
                .await
            }
        };
        put(json!({"watts": 10_000_000}))
            .await
            .problem(400, "invalid_request");
        put(json!({"watts": -1}))
            .await
            .problem(400, "invalid_request");
        ctx.send(
            reqwest::Method::PUT,
            "/v1/sites/east/power-cap",
            Some(&ka),
            Some(("application/json", b"{\"watts\": 1}".to_vec())),
            &[],
        )
        .await
        .problem(403, "forbidden");
        let site = put(json!({"watts": 40_000})).await.expect(200);
        assert_eq!(site["power_cap_watts"], 40_000);
        let b = ctx
            .post(
                "/v1/instances",
                &ka,
                &json!({"gpu_model": "H100-SXM-80GB", "gpus": 8}),
            )
            .await
            .problem(409, "insufficient_capacity");
        assert!(b["detail"].as_str().unwrap().contains("power"), "{b}");
        // Half a node fits under the cap.
        ctx.post(
            "/v1/instances",
            &ka,
            &json!({"gpu_model": "H100-SXM-80GB", "gpus": 4}),
        )
        .await
        .expect(201);
        let cap = ctx.get("/v1/capacity?site=east", &k).await.expect(200);
        assert!(
            cap["items"][0]["site_power_watts"].as_i64().unwrap() <= 40_000,
            "{cap}"
        );
        // Lifting the cap lets it through; the change is audited.
        put(json!({"watts": null})).await.expect(200);
        ctx.post(
            "/v1/instances",
            &ka,
            &json!({"gpu_model": "H100-SXM-80GB", "gpus": 8}),
        )
        .await
        .expect(201);
        let ev = ctx.get("/v1/events?action=site.", &k).await.expect(200);
        assert_eq!(ev["items"].as_array().unwrap().len(), 2);
    }
);

both_backends!(
    contracts_are_amended_and_renewed_through_the_calendar,
    |ctx: TestContext| async move {
        let (ka, kb, _) = setup(&ctx).await;
        let now = neocloud_types::Timestamp::now();
        let at = |days: i64| now.plus_seconds(days * 86400).to_string();
        let c = ctx.post("/v1/contracts", &ka, &json!({"gpu_model": "H100-SXM-80GB", "gpu_count": 32, "start_at": now.to_string(), "end_at": at(30), "site": "east"})).await.expect(201);
        assert_eq!(c["state"], "active");
        let id = c["id"].as_str().unwrap();
        let amend = |body: Value| {
            let ctx = &ctx;
            let ka = ka.clone();
            async move {
                ctx.post(&format!("/v1/contracts/{id}/amend"), &ka, &body)
                    .await
            }
        };
        amend(json!({})).await.problem(400, "invalid_request");
        amend(json!({"gpu_count": 16}))
            .await
            .problem(400, "invalid_request");
        amend(json!({"gpu_count": 36}))
            .await
            .problem(400, "invalid_request");
        amend(json!({"end_at": at(10)}))
            .await
            .problem(400, "invalid_request");
        amend(json!({"gpu_count": 128}))
            .await
            .problem(409, "insufficient_capacity");
        ctx.post(
            &format!("/v1/contracts/{id}/amend"),
            &kb,
            &json!({"gpu_count": 64}),
        )
        .await
        .problem(404, "not_found");
        // More GPUs: the calendar and the pool grow; the rate stays.
        let a = amend(json!({"gpu_count": 64})).await.expect(200);
        assert_eq!(a["gpu_count"], 64);
        assert_eq!(a["price_per_gpu_hour"], c["price_per_gpu_hour"]);
        let r = ctx.post("/v1/instances", &ka, &json!({"class": "reserved", "contract_id": id, "gpu_model": "H100-SXM-80GB", "nodes": 8})).await.expect(201);
        assert_eq!(r["state"], "running");
        // Renewal: a later end; the commitment follows.
        let a = amend(json!({"end_at": at(90)})).await.expect(200);
        // Windows are whole seconds: the fraction of the asked end is dropped.
        let end: neocloud_types::Timestamp = at(90).parse().unwrap();
        assert_eq!(
            a["end_at"].as_str().unwrap(),
            end.floor_to_second().to_string()
        );
        let q = ctx.post("/v1/quotes", &kb, &json!({"gpu_model": "H100-SXM-80GB", "gpu_count": 64, "start_at": at(1), "end_at": at(60), "site": "east"})).await.expect(200);
        assert_eq!(
            q["max_gpus_in_window"], 56,
            "125 sellable − 64 committed, in whole nodes: {q}"
        );
        let ev = ctx
            .get(&format!("/v1/events?resource_id={id}"), &ka)
            .await
            .expect(200);
        let n = ev["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "contract.amended")
            .count();
        assert_eq!(n, 2);
    }
);

both_backends!(
    concurrent_retries_of_a_launch_make_one_instance,
    |ctx: TestContext| async move {
        let (ka, _, _) = setup(&ctx).await;
        let mut handles = Vec::new();
        for _ in 0..12 {
            let url = ctx.url("/v1/instances");
            let k = ka.clone();
            handles.push(tokio::spawn(async move {
                let r = reqwest::Client::new()
                    .post(url)
                    .bearer_auth(k)
                    .header("idempotency-key", "launch-1")
                    .json(&json!({"gpu_model": "H100-SXM-80GB", "gpus": 1}))
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                (status, r.json::<Value>().await.unwrap())
            }));
        }
        let mut ids = std::collections::BTreeSet::new();
        for h in handles {
            let (status, body) = h.await.unwrap();
            assert!(status == 201 || status == 409, "{status} {body}");
            if status == 201 {
                ids.insert(body["id"].as_str().unwrap().to_string());
            }
        }
        assert_eq!(
            ids.len(),
            1,
            "every success names the same instance: {ids:?}"
        );
        let list = ctx.get("/v1/instances", &ka).await.expect(200);
        assert_eq!(list["items"].as_array().unwrap().len(), 1);
        // GPUs held in memory and in the database agree: one GPU.
        let held: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM gpus WHERE holder IS NOT NULL")
            .fetch_one(ctx.svc.store().pool())
            .await
            .unwrap();
        assert_eq!(held.0, 1);
        let url = ctx.database_url();
        let again = neocloud_service::Service::open(&url).await.unwrap();
        assert_eq!(
            again.allocator_fingerprint().await,
            ctx.svc.allocator_fingerprint().await
        );
    }
);

both_backends!(
    spot_borrows_an_idle_pool_and_gives_it_back,
    |ctx: TestContext| async move {
        let (ka, kb, _) = setup(&ctx).await;
        let now = neocloud_types::Timestamp::now();
        let c = ctx
        .post("/v1/contracts", &ka, &json!({"gpu_model": "H100-SXM-80GB", "gpu_count": 32, "start_at": now.to_string(), "end_at": now.plus_seconds(30 * 86400).to_string(), "site": "east"}))
        .await
        .expect(201);
        let cid = c["id"].as_str().unwrap();
        // On-demand takes what contracts leave to sell: 125 − 32 = 93 GPUs, 11 whole nodes.
        for _ in 0..11 {
            ctx.post(
                "/v1/instances",
                &kb,
                &json!({"gpu_model": "H100-SXM-80GB", "gpus": 8}),
            )
            .await
            .expect(201);
        }
        ctx.post(
            "/v1/instances",
            &kb,
            &json!({"gpu_model": "H100-SXM-80GB", "gpus": 8}),
        )
        .await
        .problem(409, "insufficient_capacity");
        // Spot uses the last unpinned node, then borrows the idle pool.
        let mut spot = Vec::new();
        for _ in 0..5 {
            let s = ctx
                .post(
                    "/v1/instances",
                    &kb,
                    &json!({"gpu_model": "H100-SXM-80GB", "gpus": 8, "class": "spot"}),
                )
                .await
                .expect(201);
            assert_eq!(s["state"], "running");
            spot.push(s["id"].as_str().unwrap().to_string());
        }
        // The pool's tenant needs its nodes: the borrowers get a notice, the gang waits.
        let r = ctx
        .post("/v1/instances", &ka, &json!({"class": "reserved", "contract_id": cid, "gpu_model": "H100-SXM-80GB", "nodes": 4}))
        .await
        .expect(201);
        assert_eq!(r["state"], "pending", "{r}");
        let mut notified = 0;
        let mut deadline = None;
        for id in &spot {
            let s = ctx
                .get(&format!("/v1/instances/{id}"), &kb)
                .await
                .expect(200);
            if s["state"] == "preempting" {
                notified += 1;
                deadline = Some(
                    s["preempt_at"]
                        .as_str()
                        .unwrap()
                        .parse::<neocloud_types::Timestamp>()
                        .unwrap(),
                );
            }
        }
        assert_eq!(notified, 4, "only the four borrowers are preempted");
        ctx.svc.tick(deadline.unwrap()).await.unwrap();
        let r = ctx
            .get(&format!("/v1/instances/{}", r["id"].as_str().unwrap()), &ka)
            .await
            .expect(200);
        assert_eq!(r["state"], "running", "{r}");
        assert_eq!(r["gpu_count"], 32);
    }
);

both_backends!(
    a_request_larger_than_a_site_ever_sells_says_so,
    |ctx: TestContext| async move {
        // One node of 8 GPUs: 2% of the site, rounded up to one GPU, is kept spare.
        ctx.import(
            r#"[[sites]]
name = "lab"
region = "local"
power_mw = 1
pue = 1.2
[[sites.node_groups]]
gpu_model = "H100-SXM-80GB"
gpus = 8
peak_watts = 10200
idle_watts = 2000
nodes_per_block = 1
layout = [{ kind = "pod", count = 1, name = "pod{n}" }]
name = "gpu-node-{n}"
"#,
        )
        .await
        .expect(200);
        ctx.tenant("acme").await;
        let (k, _) = ctx.key("tenant-admin", Some("acme")).await;
        let p = ctx
            .post(
                "/v1/instances",
                &k,
                &json!({"gpu_model": "H100-SXM-80GB", "gpus": 8}),
            )
            .await
            .problem(409, "insufficient_capacity");
        let detail = p["detail"].as_str().unwrap();
        assert!(
            detail.contains("lab sells at most 7 H100-SXM-80GB GPUs") && detail.contains("needs 8"),
            "{p}"
        );
        // Within what it sells, a launch is placed.
        ctx.post(
            "/v1/instances",
            &k,
            &json!({"gpu_model": "H100-SXM-80GB", "gpus": 4}),
        )
        .await
        .expect(201);
    }
);

both_backends!(
    a_rebuild_that_keeps_failing_refuses_instead_of_hanging,
    |ctx: TestContext| async move {
        // After a failed write the scheduler is rebuilt from the database before anything is
        // decided again. When the database cannot be loaded (here: rows edited under the
        // server), requests are refused with 503 in bounded time instead of waiting without
        // end, and everything works again once the rows are right.
        use std::time::{Duration, Instant};
        let k = ctx.operator_key.clone();
        ctx.import(crate::api_health::FLEET).await.expect(200);
        ctx.tenant("acme").await;
        let one = json!({"tenant_id": "acme", "gpu_model": "H100-SXM-80GB", "gpus": 1});
        let x = ctx.post("/v1/instances", &k, &one).await.expect(201);
        let xid = x["id"].as_str().unwrap().to_string();
        let pool = ctx.svc.store().pool().clone();
        let (node, idx): (String, i64) =
            sqlx::query_as("SELECT node_id, idx FROM gpus WHERE holder = $1")
                .bind(&xid)
                .fetch_one(&pool)
                .await
                .unwrap();
        // Every GPU taken by a holder that is no instance (the next launch fails at its
        // commit), x's own included (a load fails: x runs without its GPU).
        sqlx::query("UPDATE gpus SET holder = 'broken' WHERE holder IS NULL OR holder = $1")
            .bind(&xid)
            .execute(&pool)
            .await
            .unwrap();
        let bounded = Duration::from_secs(30);
        let r = tokio::time::timeout(bounded, ctx.post("/v1/instances", &k, &one))
            .await
            .expect("the failing launch is answered");
        assert!(r.status.as_u16() >= 400, "{}", r.body);
        // Rebuilding now fails on every try. A launch waits a few seconds, then 503.
        let t = Instant::now();
        let r = tokio::time::timeout(bounded, ctx.post("/v1/instances", &k, &one))
            .await
            .expect("a launch during the rebuild is answered");
        r.problem(503, "unavailable");
        assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
        // A fleet import (a write, then a rebuild) is refused, not left waiting.
        let r = tokio::time::timeout(bounded, ctx.import(crate::api_health::FLEET))
            .await
            .expect("an import during the rebuild is answered");
        r.problem(503, "unavailable");
        // So is an operator's reload, after the rebuild has failed for a while.
        let e = tokio::time::timeout(bounded, ctx.svc.reload_scheduler())
            .await
            .expect("a reload during the rebuild is answered")
            .unwrap_err();
        assert_eq!(e.code, neocloud_service::ErrorCode::Unavailable, "{e:?}");
        // The rows put right, the next try succeeds and launches work again.
        sqlx::query("UPDATE gpus SET holder = NULL WHERE holder = 'broken'")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("UPDATE gpus SET holder = $1 WHERE node_id = $2 AND idx = $3")
            .bind(&xid)
            .bind(&node)
            .bind(idx)
            .execute(&pool)
            .await
            .unwrap();
        let t = Instant::now();
        loop {
            let r = ctx.post("/v1/instances", &k, &one).await;
            if r.status.as_u16() == 201 {
                break;
            }
            assert!(t.elapsed() < bounded, "still refused: {}", r.body);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let list = ctx.get("/v1/instances", &k).await.expect(200);
        assert_eq!(list["items"].as_array().unwrap().len(), 2, "{list}");
    }
);

both_backends!(
    a_gang_larger_than_every_block_is_refused_at_once,
    |ctx: TestContext| async move {
        // Leaf groups of 4 nodes, one pod of 8: a 5-node leaf-group gang (or a 9-node pod
        // gang) can never run, so it is refused at once, not queued to expire.
        let k = ctx.operator_key.clone();
        ctx.import(crate::api_health::FLEET).await.expect(200);
        ctx.tenant("acme").await;
        let launch = |nodes: u32, level: &str| {
            json!({"tenant_id": "acme", "gpu_model": "H100-SXM-80GB", "nodes": nodes,
                   "gang_level": level, "wait_seconds": 3600})
        };
        for (nodes, level, most) in [(5, "leaf_group", 4), (9, "pod", 8), (9, "site", 8)] {
            let e = ctx
                .post("/v1/instances", &k, &launch(nodes, level))
                .await
                .problem(409, "insufficient_capacity");
            let detail = e["detail"].as_str().unwrap();
            assert!(
                detail.contains("can never run") && detail.contains(&format!("has {most} nodes")),
                "{detail}"
            );
        }
        let list = ctx.get("/v1/instances", &k).await.expect(200);
        assert_eq!(
            list["items"].as_array().unwrap().len(),
            0,
            "nothing queued: {list}"
        );
        // A gang that fits a block but not now still waits for room.
        let first = ctx
            .post("/v1/instances", &k, &launch(4, "leaf_group"))
            .await
            .expect(201);
        assert_eq!(first["state"], "running", "{first}");
        // The other leaf group is not all for sale (the spare buffer): it waits.
        let second = ctx
            .post("/v1/instances", &k, &launch(4, "leaf_group"))
            .await
            .expect(201);
        assert_eq!(second["state"], "pending", "{second}");
    }
);

/// One pod of 5 leaf groups × 30 nodes of 8 H100 (150 nodes): room for gangs past the
/// 128 nodes an answer lists.
pub(crate) const BIG_POD: &str = r#"
[[sites]]
name = "big"
region = "us-east"
power_mw = 20
pue = 1.1
[[sites.node_groups]]
gpu_model = "H100-SXM-80GB"
gpus = 8
peak_watts = 10000
idle_watts = 2000
nodes_per_block = 30
layout = [
  { kind = "pod", count = 1, name = "b-p{n}" },
  { kind = "leaf_group", count = 5, name = "{parent}-l{n}" },
]
name = "{block}-n{n}"
"#;

/// Every node of an instance through `GET /v1/instances/{id}/nodes`, `limit` at a time.
async fn paged_nodes(ctx: &TestContext, key: &str, id: &str, limit: u32) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = ctx
            .get(
                &format!("/v1/instances/{id}/nodes?limit={limit}{cursor}"),
                key,
            )
            .await
            .expect(200);
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= limit as usize, "{page}");
        all.extend(items.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => return all,
        }
    }
}

both_backends!(
    large_gang_summarised_and_nodes_paged,
    |ctx: TestContext| async move {
        ctx.import(BIG_POD).await.expect(200);
        let a = ctx.tenant("acme").await;
        let (ka, _) = ctx.key("tenant-admin", a["id"].as_str()).await;
        let b = ctx.tenant("bravo").await;
        let (kb, _) = ctx.key("tenant-admin", b["id"].as_str()).await;
        let launch =
            |n: u32| json!({"gpu_model": "H100-SXM-80GB", "nodes": n, "gang_level": "pod"});

        // 128 nodes: listed in full, as any smaller instance.
        let g = ctx
            .post("/v1/instances", &ka, &launch(128))
            .await
            .expect(201);
        assert_eq!(g["placement"].as_array().unwrap().len(), 128);
        assert!(
            g.get("placement_summary").is_none(),
            "{}",
            g["placement_summary"]
        );
        let id = g["id"].as_str().unwrap().to_string();
        let paged = paged_nodes(&ctx, &ka, &id, 50).await;
        assert_eq!(paged.len(), 128);
        ctx.post(&format!("/v1/instances/{id}/terminate"), &ka, &json!({}))
            .await
            .expect(200);

        // 140 nodes: counted by leaf group, none listed.
        let g = ctx
            .post("/v1/instances", &ka, &launch(140))
            .await
            .expect(201);
        assert_eq!(g["state"], "running");
        assert_eq!(g["gpu_count"], 1120);
        assert_eq!(g["placement"], json!([]));
        let s = &g["placement_summary"];
        assert_eq!(s["nodes"], 140, "{s}");
        assert_eq!(s["gpus"], 1120, "{s}");
        let blocks = s["blocks"].as_array().unwrap();
        assert_eq!(blocks.len(), 5, "{s}");
        let counts: Vec<u64> = blocks
            .iter()
            .map(|b| b["nodes"].as_u64().unwrap())
            .collect();
        assert_eq!(counts.iter().sum::<u64>(), 140);
        assert!(
            counts.windows(2).all(|w| w[0] >= w[1]),
            "most nodes first: {s}"
        );
        assert!(blocks.iter().all(|b| b["block_id"].is_string()), "{s}");
        assert!(
            blocks
                .iter()
                .all(|b| b["gpus"].as_u64() == b["nodes"].as_u64().map(|n| n * 8)),
            "{s}"
        );
        let id = g["id"].as_str().unwrap().to_string();

        // Read, listed and replayed the same way.
        let read = ctx
            .get(&format!("/v1/instances/{id}"), &ka)
            .await
            .expect(200);
        assert_eq!(read["placement_summary"], *s);
        assert_eq!(read["placement"], json!([]));
        let list = ctx.get("/v1/instances", &ka).await.expect(200);
        let listed = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == id.as_str())
            .unwrap();
        assert_eq!(listed["placement_summary"], *s);
        // The audit event carries the summary too.
        let ev = ctx
            .get(
                &format!("/v1/events?resource_id={id}&action=instance.running"),
                &ctx.operator_key,
            )
            .await
            .expect(200);
        assert_eq!(ev["items"][0]["after"]["placement_summary"], *s, "{ev}");
        assert_eq!(ev["items"][0]["after"]["placement"], json!([]));

        // The nodes, paged by node id: every node once, 8 GPUs each.
        let nodes = paged_nodes(&ctx, &ka, &id, 33).await;
        assert_eq!(nodes.len(), 140);
        let ids: Vec<&str> = nodes
            .iter()
            .map(|n| n["node_id"].as_str().unwrap())
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "by node id, once each");
        assert!(
            nodes
                .iter()
                .all(|n| n["gpus"] == json!([0, 1, 2, 3, 4, 5, 6, 7]))
        );
        let all = paged_nodes(&ctx, &ka, &id, 1000).await;
        assert_eq!(all, nodes);
        // The default page is 100 nodes.
        let first = ctx
            .get(&format!("/v1/instances/{id}/nodes"), &ka)
            .await
            .expect(200);
        assert_eq!(first["items"].as_array().unwrap().len(), 100);
        assert_eq!(first["next_cursor"], ids[99]);
        // The last node as cursor: an empty last page.
        let last = ctx
            .get(
                &format!("/v1/instances/{id}/nodes?cursor={}", ids[139]),
                &ka,
            )
            .await
            .expect(200);
        assert_eq!(last["items"], json!([]));
        assert!(last.get("next_cursor").is_none());

        // Bad input.
        for q in [
            "limit=0",
            "limit=1001",
            "limit=x",
            "cursor=m1-n1",
            "cursor=",
            "page=2",
        ] {
            ctx.get(&format!("/v1/instances/{id}/nodes?{q}"), &ka)
                .await
                .problem(400, "invalid_request");
        }
        // Another tenant's instance, and an unknown one, are not found.
        ctx.get(&format!("/v1/instances/{id}/nodes"), &kb)
            .await
            .problem(404, "not_found");
        ctx.get("/v1/instances/nope/nodes", &ka)
            .await
            .problem(404, "not_found");
        // The operator reads any tenant's.
        let op = paged_nodes(&ctx, &ctx.operator_key, &id, 1000).await;
        assert_eq!(op, nodes);

        // A small instance pages as one page; the terminate answer is summarised too, and
        // an ended instance has no nodes.
        let small = ctx
            .post(
                "/v1/instances",
                &kb,
                &json!({"gpu_model": "H100-SXM-80GB", "gpus": 2}),
            )
            .await
            .expect(201);
        let sid = small["id"].as_str().unwrap();
        let sn = ctx
            .get(&format!("/v1/instances/{sid}/nodes"), &kb)
            .await
            .expect(200);
        assert_eq!(sn["items"], small["placement"]);
        let t = ctx
            .post(&format!("/v1/instances/{id}/terminate"), &ka, &json!({}))
            .await
            .expect(200);
        assert_eq!(t["state"], "terminated");
        let ended = ctx
            .get(&format!("/v1/instances/{id}/nodes"), &ka)
            .await
            .expect(200);
        assert_eq!(ended["items"], json!([]));
        // Its nodes are free again.
        let again = ctx
            .post("/v1/instances", &ka, &launch(140))
            .await
            .expect(201);
        assert_eq!(again["placement_summary"]["nodes"], 140);
    }
);
