//! The scheduler under concurrency, through HTTP on both databases: node operations at once
//! never deadlock, quotas hold under parallel launches, a terminate racing a preemption
//! meters the run once, a failed commit leaves memory as the database is, and a mixed load
//! of node operations, launches, terminates, signs and reads never waits on another
//! request's I/O.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::both_backends;
use crate::ctx::TestContext;

/// One site, `east`: 2 leaf groups × 4 nodes of 8 H100 (64 GPUs).
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
layout = [ { kind = "leaf_group", count = 2, name = "e-l{n}" } ]
name = "{block}-n{n}"
"#;

async fn setup(ctx: &TestContext) -> (String, String) {
    ctx.import(FLEET).await.expect(200);
    let a = ctx.tenant("acme").await;
    let (ka, _) = ctx.key("tenant-admin", a["id"].as_str()).await;
    (ka, a["id"].as_str().unwrap().to_string())
}

async fn post(ctx: &TestContext, path: &str, key: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(ctx.url(path))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json::<Value>().await.unwrap_or(Value::Null))
}

both_backends!(
    cordon_drain_and_uncordon_of_one_node_at_once_never_deadlock,
    |ctx: TestContext| async move {
        let (ka, _) = setup(&ctx).await;
        let k = ctx.operator_key.clone();
        let node = "e-l1-n1";
        let work = async {
            for _ in 0..15 {
                let [a, b, c] = ["cordon", "drain", "uncordon"].map(|op| {
                    let ctx = &ctx;
                    let k = k.clone();
                    async move {
                        post(ctx, &format!("/v1/nodes/{node}/{op}"), &k, &json!({})).await
                    }
                });
                let one = json!({"gpu_model": "H100-SXM-80GB", "gpus": 1});
                let launch = post(&ctx, "/v1/instances", &ka, &one);
                let (a, b, c, l) = tokio::join!(a, b, c, launch);
                for (status, body) in [a, b, c] {
                    // Applied, or refused for the state the node had reached: never hung.
                    assert!(status == 200 || status == 409, "{status} {body}");
                }
                assert_eq!(l.0, 201, "{}", l.1);
                let id = l.1["id"].as_str().unwrap().to_string();
                let (st, body) = post(
                    &ctx,
                    &format!("/v1/instances/{id}/terminate"),
                    &ka,
                    &json!({}),
                )
                .await;
                assert_eq!(st, 200, "{body}");
            }
        };
        tokio::time::timeout(Duration::from_secs(60), work)
            .await
            .expect("node operations, launches and terminates must all answer");
        // The node is in one consistent state, and serves again once uncordoned.
        let n = ctx.get(&format!("/v1/nodes/{node}"), &k).await.expect(200);
        let st = n["state"].as_str().unwrap().to_string();
        assert!(
            [
                "available",
                "allocated",
                "cordoned",
                "draining",
                "maintenance"
            ]
            .contains(&st.as_str()),
            "{n}"
        );
    }
);

both_backends!(
    a_quota_holds_under_parallel_launches,
    |ctx: TestContext| async move {
        let (ka, acme) = setup(&ctx).await;
        ctx.send(
            reqwest::Method::PUT,
            "/v1/quotas",
            Some(&ctx.operator_key),
            Some((
                "application/json",
                serde_json::to_vec(&json!({"tenant_id": acme, "gpu_model": "H100-SXM-80GB", "class": "on-demand", "max_gpus": 8})).unwrap(),
            )),
            &[],
        )
        .await
        .expect(200);
        let mut handles = Vec::new();
        for _ in 0..8 {
            let url = ctx.url("/v1/instances");
            let k = ka.clone();
            handles.push(tokio::spawn(async move {
                let r = reqwest::Client::new()
                    .post(url)
                    .bearer_auth(k)
                    .json(&json!({"gpu_model": "H100-SXM-80GB", "gpus": 8}))
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap())
            }));
        }
        let mut ok = 0;
        for h in handles {
            let (status, body) = h.await.unwrap();
            match status {
                201 => ok += 1,
                _ => assert_eq!(body["code"], "quota_exceeded", "{status} {body}"),
            }
        }
        assert_eq!(ok, 1, "a quota of 8 GPUs admits one 8-GPU launch");
        let list = ctx
            .get("/v1/instances?state=running", &ka)
            .await
            .expect(200);
        let gpus: u64 = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["gpu_count"].as_u64().unwrap())
            .sum();
        assert_eq!(gpus, 8, "{list}");
    }
);

both_backends!(
    a_terminate_racing_the_end_of_a_preemption_notice_meters_the_run_once,
    |ctx: TestContext| async move {
        let (ka, _) = setup(&ctx).await;
        let k = ctx.operator_key.clone();
        let home = ctx
            .post(
                "/v1/tenants",
                &k,
                &json!({"name": "home-lab", "kind": "internal"}),
            )
            .await
            .expect(201);
        // Spot fills the site; an internal launch preempts it with notice.
        let spot = ctx
            .post(
                "/v1/instances",
                &ka,
                &json!({"class": "spot", "gpu_model": "H100-SXM-80GB", "nodes": 8}),
            )
            .await
            .expect(201);
        let sid = spot["id"].as_str().unwrap().to_string();
        let lab = ctx
            .post(
                "/v1/instances",
                &k,
                &json!({"tenant_id": home["id"], "class": "internal", "gpu_model": "H100-SXM-80GB", "gpus": 8}),
            )
            .await
            .expect(201);
        assert_eq!(lab["state"], "pending", "{lab}");
        let s = ctx
            .get(&format!("/v1/instances/{sid}"), &ka)
            .await
            .expect(200);
        assert_eq!(s["state"], "preempting", "{s}");
        // The notice's end (a tick) and the tenant's terminate at the same moment.
        let later = neocloud_types::Timestamp::now().plus_seconds(3600);
        let svc = ctx.svc.clone();
        let tick = tokio::spawn(async move { svc.tick(later).await.map(|_| ()) });
        let (st, body) = post(
            &ctx,
            &format!("/v1/instances/{sid}/terminate"),
            &ka,
            &json!({}),
        )
        .await;
        tick.await.unwrap().unwrap();
        assert_eq!(st, 200, "{body}");
        let s = ctx
            .get(&format!("/v1/instances/{sid}"), &ka)
            .await
            .expect(200);
        let state = s["state"].as_str().unwrap();
        assert!(state == "terminated" || state == "preempted", "{s}");
        // Metered once: the usage records of the run do not overlap.
        let u = ctx
            .get(&format!("/v1/usage?instance={sid}"), &ka)
            .await
            .expect(200);
        let mut spans: Vec<(String, String)> = u["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["instance_id"] == sid.as_str())
            .map(|r| {
                (
                    r["start_at"].as_str().unwrap().to_string(),
                    r["end_at"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "usage overlaps: {u}");
        }
        // The internal launch got the GPUs, and nothing holds a GPU twice.
        ctx.svc.tick(later.plus_seconds(1)).await.unwrap();
        let l = ctx
            .get(
                &format!("/v1/instances/{}", lab["id"].as_str().unwrap()),
                &k,
            )
            .await
            .expect(200);
        assert_eq!(l["state"], "running", "{l}");
    }
);

/// Makes every write of a contract's pool fail in the database, or lets them through again.
async fn fail_pool_writes(ctx: &TestContext, on: bool) {
    let url = ctx.database_url();
    let pool = ctx.svc.store().pool();
    let stmts: &[&str] = match (url.starts_with("postgres"), on) {
        (true, true) => &[
            "CREATE OR REPLACE FUNCTION fail_pool() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END; $$ LANGUAGE plpgsql",
            "CREATE TRIGGER fail_pool BEFORE UPDATE OF pool_contract_id ON nodes FOR EACH ROW EXECUTE FUNCTION fail_pool()",
        ],
        (true, false) => &["DROP TRIGGER fail_pool ON nodes"],
        (false, true) => &[
            "CREATE TRIGGER fail_pool BEFORE UPDATE OF pool_contract_id ON nodes BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
        ],
        (false, false) => &["DROP TRIGGER fail_pool"],
    };
    for s in stmts {
        sqlx::query(s).execute(pool).await.unwrap();
    }
}

both_backends!(
    a_contract_whose_commit_fails_leaves_memory_as_the_database_is,
    |ctx: TestContext| async move {
        let (_, acme) = setup(&ctx).await;
        let k = ctx.operator_key.clone();
        let before = ctx.svc.allocator_fingerprint().await;
        let cap0 = ctx.get("/v1/capacity", &k).await.expect(200);
        fail_pool_writes(&ctx, true).await;
        let now = neocloud_types::Timestamp::now();
        let terms = json!({
            "tenant_id": acme, "gpu_model": "H100-SXM-80GB", "gpu_count": 16,
            "start_at": now.to_string(), "end_at": now.plus_seconds(30 * 86_400).to_string(),
        });
        let (st, body) = post(&ctx, "/v1/contracts", &k, &terms).await;
        assert!(st >= 500, "{st} {body}");
        fail_pool_writes(&ctx, false).await;
        // Nothing of the failed contract is left, in memory or in the database.
        let mut same = false;
        for _ in 0..50 {
            if ctx.svc.allocator_fingerprint().await == before {
                same = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            same,
            "the allocator's pools changed although the commit failed"
        );
        let list = ctx.get("/v1/contracts", &k).await.expect(200);
        assert_eq!(list["items"].as_array().unwrap().len(), 0, "{list}");
        let cap = ctx.get("/v1/capacity", &k).await.expect(200);
        assert_eq!(
            cap[0]["committed_gpus_now"], cap0[0]["committed_gpus_now"],
            "{cap}"
        );
        // And the same contract signs once the database accepts it.
        let mut ok = false;
        for _ in 0..50 {
            let (st, body) = post(&ctx, "/v1/contracts", &k, &terms).await;
            if st == 201 {
                assert_eq!(body["state"], "active", "{body}");
                ok = true;
                break;
            }
            assert_eq!(st, 503, "{body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ok);
    }
);

both_backends!(
    a_mixed_load_never_waits_on_another_requests_io,
    |ctx: TestContext| async move {
        let (ka, acme) = setup(&ctx).await;
        let k = ctx.operator_key.clone();
        let secs: u64 = std::env::var("NEOCLOUD_TEST_LOAD_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(30);
        let until = Instant::now() + Duration::from_secs(secs);
        let worst = std::sync::Arc::new(std::sync::Mutex::new((Duration::ZERO, String::new())));
        let mut tasks = Vec::new();
        for w in 0..6u32 {
            let ctx_url = ctx.url("");
            let ka = ka.clone();
            let k = k.clone();
            let acme = acme.clone();
            let worst = worst.clone();
            tasks.push(tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut n = 0u32;
                while Instant::now() < until {
                    n += 1;
                    let node = format!("e-l{}-n{}", 1 + (n % 2), 1 + (w % 4));
                    let (what, req) = match (w, n % 3) {
                        (0, 0) => ("cordon", http.post(format!("{ctx_url}/v1/nodes/{node}/cordon")).bearer_auth(&k).json(&json!({}))),
                        (0, 1) => ("drain", http.post(format!("{ctx_url}/v1/nodes/{node}/drain")).bearer_auth(&k).json(&json!({}))),
                        (0, _) => ("uncordon", http.post(format!("{ctx_url}/v1/nodes/{node}/uncordon")).bearer_auth(&k).json(&json!({}))),
                        (1 | 2, _) => ("launch", http.post(format!("{ctx_url}/v1/instances")).bearer_auth(&ka).json(&json!({"gpu_model": "H100-SXM-80GB", "gpus": 1 + (n % 2)}))),
                        (3, _) => ("sign", http.post(format!("{ctx_url}/v1/contracts")).bearer_auth(&k).json(&json!({
                            "tenant_id": acme, "gpu_model": "H100-SXM-80GB", "gpu_count": 8,
                            "start_at": neocloud_types::Timestamp::now().plus_seconds(86_400).to_string(),
                            "end_at": neocloud_types::Timestamp::now().plus_seconds(2 * 86_400).to_string(),
                        }))),
                        (4, _) => ("list", http.get(format!("{ctx_url}/v1/instances?state=running")).bearer_auth(&ka)),
                        _ => ("nodes", http.get(format!("{ctx_url}/v1/nodes")).bearer_auth(&k)),
                    };
                    let t = Instant::now();
                    let r = req.send().await.unwrap();
                    let status = r.status().as_u16();
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    let took = t.elapsed();
                    assert!(status < 500, "{what}: {status} {body}");
                    {
                        let mut wst = worst.lock().unwrap();
                        if took > wst.0 {
                            *wst = (took, what.to_string());
                        }
                    }
                    // Launched work ends again, so launches keep finding room.
                    if what == "launch" && status == 201 {
                        let id = body["id"].as_str().unwrap();
                        let r = http
                            .post(format!("{ctx_url}/v1/instances/{id}/terminate"))
                            .bearer_auth(&ka)
                            .json(&json!({}))
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(r.status().as_u16(), 200);
                    }
                }
                n
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        let (w, what) = worst.lock().unwrap().clone();
        eprintln!("{total} requests in {secs} s; the slowest took {w:?} ({what})");
        assert!(
            w < Duration::from_secs(1),
            "a request waited {w:?} ({what}): no request may wait a second on another's I/O"
        );
    }
);
