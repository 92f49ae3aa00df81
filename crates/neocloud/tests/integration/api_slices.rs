//! Shares of a GPU, MIG instances and CPU-only instances through HTTP, on both databases:
//! launch and show, one tenant per GPU, bad input, quotas, billing, and a restart.

use serde_json::{Value, json};

use crate::both_backends;
use crate::ctx::{Db, TestContext};

/// Two H100 nodes (MIG family 80 GB: 1g.10gb … 7g.80gb) and one GB200 node (no MIG).
const FLEET: &str = r#"
[[sites]]
name = "east"
region = "us-east"
power_mw = 1
[[sites.nodes]]
name = "e1"
gpu_model = "H100-SXM-80GB"
gpus = 8
cpu_cores = 112
ram_gib = 2048
[[sites.nodes]]
name = "e2"
gpu_model = "H100-SXM-80GB"
gpus = 8
cpu_cores = 112
ram_gib = 2048
[[sites.nodes]]
name = "g1"
gpu_model = "GB200"
gpus = 4
"#;

async fn setup(ctx: &TestContext) -> (String, String, String) {
    ctx.import(FLEET).await.expect(200);
    let a = ctx.tenant("acme").await;
    let b = ctx.tenant("bravo").await;
    let (ka, _) = ctx.key("tenant-admin", a["id"].as_str()).await;
    let (kb, _) = ctx.key("tenant-admin", b["id"].as_str()).await;
    (ka, kb, a["id"].as_str().unwrap().to_string())
}

/// (node, GPU index) of a slice instance.
fn gpu_of(v: &Value) -> (String, u64) {
    let p = &v["placement"];
    assert_eq!(p.as_array().unwrap().len(), 1, "{v}");
    let gpus = p[0]["gpus"].as_array().unwrap();
    assert_eq!(gpus.len(), 1, "{v}");
    (
        p[0]["node"].as_str().unwrap().to_string(),
        gpus[0].as_u64().unwrap(),
    )
}

fn secs(ts: &Value) -> i64 {
    let t: neocloud_types::Timestamp = ts.as_str().unwrap().parse().unwrap();
    t.micros().div_euclid(1_000_000)
}

async fn instance_count(ctx: &TestContext) -> usize {
    ctx.get("/v1/instances", &ctx.operator_key)
        .await
        .expect(200)["items"]
        .as_array()
        .unwrap()
        .len()
}

both_backends!(
    shares_and_mig_instances_launch_show_and_survive_a_restart,
    |ctx: TestContext| async move {
        let (ka, kb, _) = setup(&ctx).await;
        let launch = |k: String, shape: Value| {
            let ctx = &ctx;
            async move {
                ctx.post(
                    "/v1/instances",
                    &k,
                    &json!({"gpu_model": "H100-SXM-80GB", "shape": shape}),
                )
                .await
                .expect(201)
            }
        };
        let s1 = launch(ka.clone(), json!({"kind": "share", "milli": 250})).await;
        assert_eq!(s1["state"], "running", "{s1}");
        assert_eq!(s1["shape"], json!({"kind": "share", "milli": 250}));
        assert_eq!(s1["gpu_count"], 1);
        // CPU and memory in proportion: a quarter of one of 8 GPUs of 112 cores, 2 TiB.
        assert_eq!(s1["placement"][0]["cpu_milli"], 3500, "{s1}");
        assert_eq!(s1["placement"][0]["memory_mib"], 65536, "{s1}");
        // A second share of the same tenant fills the same GPU.
        let s2 = launch(ka.clone(), json!({"kind": "share", "milli": 500})).await;
        assert_eq!(gpu_of(&s2), gpu_of(&s1), "{s1} {s2}");
        // Another tenant's share never lands on that GPU by default.
        let s3 = launch(kb.clone(), json!({"kind": "share", "milli": 250})).await;
        assert_ne!(gpu_of(&s3), gpu_of(&s1), "{s1} {s3}");
        // MIG instances name their slot on the GPU.
        let m1 = launch(ka.clone(), json!({"kind": "mig", "profile": "1g.10gb"})).await;
        let m2 = launch(ka.clone(), json!({"kind": "mig", "profile": "3g.40gb"})).await;
        assert_eq!(m1["shape"], json!({"kind": "mig", "profile": "1g.10gb"}));
        for m in [&m1, &m2] {
            assert!(m["placement"][0]["mig_start"].is_u64(), "{m}");
            gpu_of(m);
        }
        if gpu_of(&m1) == gpu_of(&m2) {
            assert_ne!(
                m1["placement"][0]["mig_start"],
                m2["placement"][0]["mig_start"]
            );
        }
        // Explicit CPU and memory are held as asked.
        let c = ctx
            .post(
                "/v1/instances",
                &ka,
                &json!({"gpu_model": "H100-SXM-80GB", "shape": {"kind": "share", "milli": 100},
                        "cpu_milli": 8000, "memory_mib": 32768}),
            )
            .await
            .expect(201);
        assert_eq!(c["cpu_milli"], 8000);
        assert_eq!(c["placement"][0]["cpu_milli"], 8000);
        assert_eq!(c["placement"][0]["memory_mib"], 32768);
        // Shown the same way when read back, one by one and listed.
        for v in [&s1, &s2, &s3, &m1, &m2, &c] {
            let id = v["id"].as_str().unwrap();
            let got = ctx
                .get(&format!("/v1/instances/{id}"), &ctx.operator_key)
                .await
                .expect(200);
            assert_eq!(got["shape"], v["shape"]);
            assert_eq!(got["placement"], v["placement"], "{id}");
        }
        let list = ctx.get("/v1/instances", &ka).await.expect(200);
        assert_eq!(list["items"].as_array().unwrap().len(), 5);
        // A second control plane on the same database rebuilds the same allocator: shares,
        // MIG slots, CPU and memory included.
        let before = ctx.svc.allocator_fingerprint().await;
        let again = neocloud_service::Service::open(&ctx.database_url())
            .await
            .unwrap();
        assert_eq!(again.allocator_fingerprint().await, before);
        // So does one that sells whole GPUs only now: what runs is kept.
        let mut whole_only = neocloud_service::SchedulerConfig::default();
        whole_only.sharing.slices = false;
        neocloud_service::Service::open_with(&ctx.database_url(), whole_only)
            .await
            .unwrap();
        // Terminating frees the slice: the GPU takes a share again.
        let id = s2["id"].as_str().unwrap();
        ctx.post(&format!("/v1/instances/{id}/terminate"), &ka, &json!({}))
            .await
            .expect(200);
        let s4 = launch(ka.clone(), json!({"kind": "share", "milli": 600})).await;
        assert_eq!(gpu_of(&s4), gpu_of(&s1), "{s1} {s4}");
    }
);

both_backends!(
    bad_slice_requests_are_refused_and_create_nothing,
    |ctx: TestContext| async move {
        let (ka, _, _) = setup(&ctx).await;
        let h100 = "H100-SXM-80GB";
        for (body, says) in [
            (
                json!({"gpu_model": h100, "shape": {"kind": "share", "milli": 0}}),
                "1 to 1000",
            ),
            (
                json!({"gpu_model": h100, "shape": {"kind": "share", "milli": 1001}}),
                "1 to 1000",
            ),
            (
                json!({"gpu_model": "GB200", "shape": {"kind": "mig", "profile": "1g.10gb"}}),
                "does not support MIG",
            ),
            (
                json!({"gpu_model": "GB200", "shape": {"kind": "mig", "profile": "1g.10gb"}, "wait_seconds": 600}),
                "does not support MIG",
            ),
            (
                json!({"gpu_model": h100, "shape": {"kind": "mig", "profile": "1g.18gb"}}),
                "1g.10gb",
            ),
            (
                json!({"gpu_model": h100, "shape": {"kind": "mig", "profile": "9g.99gb"}}),
                "9g.99gb",
            ),
            (
                json!({"gpu_model": h100, "shape": {"kind": "cpu"}}),
                "cpu_milli",
            ),
            (
                json!({"gpu_model": h100, "shape": {"kind": "cpu"}, "cpu_milli": 4000}),
                "CPU-only",
            ),
            (
                json!({"gpu_model": h100, "gpus": 1, "cpu_milli": -1}),
                "cpu_milli: invalid value: integer `-1`",
            ),
            (
                json!({"gpu_model": h100, "gpus": 1, "cpu_milli": 1_000_000_000_000u64}),
                "cpu_milli",
            ),
            (
                json!({"gpu_model": h100, "gpus": 1, "cpu_milli": 200_000}),
                "more than any",
            ),
            (
                json!({"gpu_model": h100, "gpus": 1, "memory_mib": 0}),
                "memory_mib",
            ),
            (
                json!({"gpu_model": h100, "gpus": 1, "shape": {"kind": "share", "milli": 5}}),
                "not both",
            ),
            (
                json!({"gpu_model": h100, "nodes": 1, "cpu_milli": 1000}),
                "gang",
            ),
            (json!({"gpu_model": h100, "shape": {"kind": "pie"}}), "pie"),
        ] {
            let p = ctx
                .post("/v1/instances", &ka, &body)
                .await
                .problem(400, "invalid_request");
            let detail = p["detail"].as_str().unwrap();
            assert!(detail.contains(says), "{body}: {detail}");
        }
        assert_eq!(
            instance_count(&ctx).await,
            0,
            "a refused launch creates nothing"
        );
    }
);

both_backends!(
    a_share_is_billed_as_its_part_of_a_gpu_hour_and_counts_its_part_of_a_quota,
    |ctx: TestContext| async move {
        let (ka, _, acme) = setup(&ctx).await;
        let i = ctx
            .post(
                "/v1/instances",
                &ka,
                &json!({"gpu_model": "H100-SXM-80GB", "shape": {"kind": "share", "milli": 250}}),
            )
            .await
            .expect(201);
        let id = i["id"].as_str().unwrap().to_string();
        // It started an hour ago.
        sqlx::query("UPDATE instances SET started_at = started_at - 3600000000 WHERE id = $1")
            .bind(&id)
            .execute(ctx.svc.store().pool())
            .await
            .unwrap();
        // The scheduler holds running instances in memory: reload it after the hand edit.
        ctx.svc.reload_scheduler().await.unwrap();
        let t = ctx
            .post(&format!("/v1/instances/{id}/terminate"), &ka, &json!({}))
            .await
            .expect(200);
        let seconds = secs(&t["ended_at"]) - secs(&t["started_at"]);
        assert!((3600..3700).contains(&seconds), "{seconds}");
        let u = ctx.get("/v1/usage", &ka).await.expect(200);
        let recs = u["items"].as_array().unwrap();
        assert_eq!(recs.len(), 1, "{u}");
        let r = &recs[0];
        assert_eq!(r["gpu_milli"], 250);
        assert_eq!(r["rate"], "3");
        // 250/1000 × s seconds × $3/GPU-hour: a quarter of the GPU-hour, exact to the µ$.
        let num = 250 * seconds * 3_000_000;
        let den = 3_600 * 1000;
        let (q, rem) = (num / den, num % den);
        let q = if 2 * rem > den || (2 * rem == den && q % 2 == 1) {
            q + 1
        } else {
            q
        };
        assert_eq!(
            r["amount"],
            neocloud_types::Money::from_micros(q).to_string(),
            "{r}"
        );
        assert_eq!(r["gpu_seconds"], (250 * seconds + 500) / 1000);
        // One hour exactly is $0.75, a quarter of $3.
        assert_eq!(
            neocloud_billing::amount_micros_milli(
                250,
                3600,
                neocloud_types::Money::from_micros(3_000_000)
            ),
            neocloud_types::Money::from_micros(750_000)
        );

        // A quota of 1 GPU takes shares up to 1000 thousandths.
        ctx.send(
            reqwest::Method::PUT,
            "/v1/quotas",
            Some(&ctx.operator_key),
            Some((
                "application/json",
                serde_json::to_vec(&json!({"tenant_id": acme, "gpu_model": "H100-SXM-80GB", "class": "on-demand", "max_gpus": 1})).unwrap(),
            )),
            &[],
        )
        .await
        .expect(200);
        for milli in [500, 500] {
            ctx.post(
                "/v1/instances",
                &ka,
                &json!({"gpu_model": "H100-SXM-80GB", "shape": {"kind": "share", "milli": milli}}),
            )
            .await
            .expect(201);
        }
        let p = ctx
            .post(
                "/v1/instances",
                &ka,
                &json!({"gpu_model": "H100-SXM-80GB", "shape": {"kind": "share", "milli": 1}}),
            )
            .await
            .problem(409, "quota_exceeded");
        assert!(p["detail"].as_str().unwrap().contains("0.001"), "{p}");
    }
);

/// CPU-only instances when the operator allows them: placed on a node, no GPU, no GPU-hours.
async fn cpu_only_instances(ctx: TestContext) {
    let (ka, _, _) = setup(&ctx).await;
    let i = ctx
        .post(
            "/v1/instances",
            &ka,
            &json!({"gpu_model": "H100-SXM-80GB", "shape": {"kind": "cpu"}, "cpu_milli": 4000, "memory_mib": 8192}),
        )
        .await
        .expect(201);
    assert_eq!(i["gpu_count"], 0, "{i}");
    assert_eq!(i["placement"][0]["gpus"], json!([]), "{i}");
    assert_eq!(i["placement"][0]["cpu_milli"], 4000, "{i}");
    let id = i["id"].as_str().unwrap();
    let got = ctx
        .get(&format!("/v1/instances/{id}"), &ka)
        .await
        .expect(200);
    assert_eq!(got["placement"], i["placement"]);
    let before = ctx.svc.allocator_fingerprint().await;
    let again = neocloud_service::Service::open_with(&ctx.database_url(), config())
        .await
        .unwrap();
    assert_eq!(again.allocator_fingerprint().await, before);
    // A restart with CPU-only instances turned off keeps the one that runs.
    neocloud_service::Service::open(&ctx.database_url())
        .await
        .unwrap();
    ctx.post(&format!("/v1/instances/{id}/terminate"), &ka, &json!({}))
        .await
        .expect(200);
    let u = ctx.get("/v1/usage", &ka).await.expect(200);
    assert_eq!(u["items"].as_array().unwrap().len(), 0, "{u}");
}

fn config() -> neocloud_service::SchedulerConfig {
    let mut c = neocloud_service::SchedulerConfig::default();
    c.sharing.cpu_only = true;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_only_instances_sqlite() {
    cpu_only_instances(
        TestContext::start_configured(Db::Sqlite, config())
            .await
            .unwrap(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_only_instances_postgres() {
    if let Some(ctx) = TestContext::start_configured(Db::Postgres, config()).await {
        cpu_only_instances(ctx).await;
    }
}

/// `--placement fragmentation` through the service: slices and whole GPUs of two models run, a
/// tenant's shares pack onto one GPU, the capacity report names the policy, and a restart
/// rebuilds the same state.
async fn fragmentation_policy(ctx: TestContext) {
    let (ka, kb, _) = setup(&ctx).await;
    let launch = |k: &str, body: Value| {
        let k = k.to_string();
        let ctx = &ctx;
        async move { ctx.post("/v1/instances", &k, &body).await.expect(201) }
    };
    let h100 = "H100-SXM-80GB";
    let s1 = launch(
        &ka,
        json!({"gpu_model": h100, "shape": {"kind": "share", "milli": 500}}),
    )
    .await;
    let s2 = launch(
        &ka,
        json!({"gpu_model": h100, "shape": {"kind": "share", "milli": 250}}),
    )
    .await;
    let other = launch(
        &kb,
        json!({"gpu_model": h100, "shape": {"kind": "share", "milli": 250}}),
    )
    .await;
    let m = launch(
        &ka,
        json!({"gpu_model": h100, "shape": {"kind": "mig", "profile": "3g.40gb"}}),
    )
    .await;
    let w = launch(&ka, json!({"gpu_model": h100, "gpus": 2})).await;
    let g = launch(&kb, json!({"gpu_model": "GB200", "gpus": 2})).await;
    for i in [&s1, &s2, &other, &m, &w, &g] {
        assert_eq!(i["state"], "running", "{i}");
    }
    assert_eq!(gpu_of(&s1), gpu_of(&s2), "one tenant's shares fill one GPU");
    assert_ne!(
        gpu_of(&other),
        gpu_of(&s1),
        "another tenant gets another GPU"
    );
    let cap = ctx.get("/v1/capacity", &ctx.operator_key).await.expect(200);
    assert_eq!(
        cap["items"][0]["placement_policy"], "fragmentation",
        "{cap}"
    );
    let before = ctx.svc.allocator_fingerprint().await;
    let again = neocloud_service::Service::open_with(&ctx.database_url(), fragmentation())
        .await
        .unwrap();
    assert_eq!(again.allocator_fingerprint().await, before);
}

fn fragmentation() -> neocloud_service::SchedulerConfig {
    neocloud_service::SchedulerConfig {
        placement: neocloud_service::PlacementPolicy::Fragmentation,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmentation_policy_sqlite() {
    fragmentation_policy(
        TestContext::start_configured(Db::Sqlite, fragmentation())
            .await
            .unwrap(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmentation_policy_postgres() {
    if let Some(ctx) = TestContext::start_configured(Db::Postgres, fragmentation()).await {
        fragmentation_policy(ctx).await;
    }
}
