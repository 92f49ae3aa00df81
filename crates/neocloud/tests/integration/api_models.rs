//! GPU models through the real server on both databases: each model's board topology (the
//! fleet file's `topology`) decides which GPUs of a node an instance takes together.

use serde_json::{Value, json};

use crate::both_backends;
use crate::ctx::TestContext;

/// Two nodes of 8 GPUs of `model` (defined with `topology`) in one site.
fn fleet(model: &str, topology: &str) -> String {
    format!(
        r#"
[[gpu_models]]
name = "{model}"
vendor = "ACME"
memory_gib = 80
tdp_watts = 700
topology = "{topology}"

[[sites]]
name = "west"
region = "us-west"
power_mw = 1
[[sites.node_groups]]
name = "w-{{i}}"
count = 2
gpu_model = "{model}"
gpus = 8
"#
    )
}

/// A tenant-admin key of a new tenant.
async fn tenant_key(ctx: &TestContext, name: &str) -> String {
    let t = ctx.tenant(name).await;
    ctx.key("tenant-admin", t["id"].as_str()).await.0
}

async fn launch(ctx: &TestContext, key: &str, body: Value) -> Value {
    ctx.post("/v1/instances", key, &body).await.expect(201)
}

/// The node and GPUs an instance holds.
fn held(i: &Value) -> (String, Vec<u64>) {
    let p = &i["placement"][0];
    let gpus = p["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_u64().unwrap())
        .collect();
    (p["node"].as_str().unwrap().to_string(), gpus)
}

/// Fills one node with eight 1-GPU instances, frees its GPUs 1 and 2, and launches 2 GPUs:
/// the node and GPUs they get.
async fn two_after_freeing_one_and_two(
    ctx: &TestContext,
    model: &str,
) -> (String, String, Vec<u64>) {
    let key = tenant_key(ctx, "acme").await;
    let mut singles = Vec::new();
    for _ in 0..8 {
        singles.push(launch(ctx, &key, json!({"gpu_model": model, "gpus": 1})).await);
    }
    let (node, _) = held(&singles[0]);
    assert!(singles.iter().all(|i| held(i).0 == node), "{singles:?}");
    for i in &singles {
        if matches!(held(i).1.as_slice(), [1] | [2]) {
            let id = i["id"].as_str().unwrap();
            ctx.post(&format!("/v1/instances/{id}/terminate"), &key, &json!({}))
                .await
                .expect(200);
        }
    }
    let two = launch(ctx, &key, json!({"gpu_model": model, "gpus": 2})).await;
    let (on, gpus) = held(&two);
    (node, on, gpus)
}

both_backends!(
    an_nvswitch_board_gives_any_free_gpus_together,
    |ctx: TestContext| async move {
        // The name alone would give an unknown board aligned pairs only.
        ctx.import(&fleet("ACME-NV8", "nvswitch")).await.expect(200);
        let m = ctx
            .get("/v1/gpu-models/ACME-NV8", &ctx.operator_key)
            .await
            .expect(200);
        assert_eq!(m["topology"], "nvswitch", "{m}");
        let (node, on, gpus) = two_after_freeing_one_and_two(&ctx, "ACME-NV8").await;
        assert_eq!((on, gpus), (node, vec![1, 2]));
    }
);

both_backends!(
    a_pcie_board_keeps_pairs_behind_one_switch,
    |ctx: TestContext| async move {
        // The name alone would say SXM, NVSwitch: the file says PCIe pairs and quads.
        ctx.import(&fleet("ACME-SXM8", "groups:2,4"))
            .await
            .expect(200);
        let m = ctx
            .get("/v1/gpu-models/ACME-SXM8", &ctx.operator_key)
            .await
            .expect(200);
        assert_eq!(m["topology"], "groups:2,4", "{m}");
        let (node, on, gpus) = two_after_freeing_one_and_two(&ctx, "ACME-SXM8").await;
        // GPUs 1 and 2 sit behind two PCIe switches: the pair goes to the other node.
        assert_ne!(on, node);
        assert_eq!(gpus, vec![0, 1]);
    }
);

both_backends!(
    a_changed_topology_waits_for_the_work_placed_by_the_old_one,
    |ctx: TestContext| async move {
        ctx.import(&fleet("ACME-NV8", "nvswitch")).await.expect(200);
        let (node, on, gpus) = two_after_freeing_one_and_two(&ctx, "ACME-NV8").await;
        assert_eq!((&on, &gpus), (&node, &vec![1, 2]));
        // The board is PCIe after all: the import applies (the scheduler is rebuilt), and
        // the pair on GPUs 1 and 2 keeps running.
        ctx.import(&fleet("ACME-NV8", "groups:2,4"))
            .await
            .expect(200);
        let m = ctx
            .get("/v1/gpu-models/ACME-NV8", &ctx.operator_key)
            .await
            .expect(200);
        assert_eq!(m["topology"], "groups:2,4", "{m}");
        let key = ctx.key("tenant-admin", Some("acme")).await.0;
        let l = ctx.get("/v1/instances", &key).await.expect(200);
        let running: Vec<&Value> = l["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["state"] == "running")
            .collect();
        assert_eq!(running.len(), 7, "{l}");
        assert!(running.iter().any(|i| held(i).1 == [1, 2]), "{l}");
        // Once it ends, the next rebuild gives the board's pairs only: GPUs 1 and 2, free
        // again, are no pair.
        let pair = running.iter().find(|i| held(i).1 == [1, 2]).unwrap();
        let id = pair["id"].as_str().unwrap();
        ctx.post(&format!("/v1/instances/{id}/terminate"), &key, &json!({}))
            .await
            .expect(200);
        ctx.import(&fleet("ACME-NV8", "groups:2,4"))
            .await
            .expect(200);
        let two = launch(&ctx, &key, json!({"gpu_model": "ACME-NV8", "gpus": 2})).await;
        assert_ne!(held(&two).0, node, "{two}");
    }
);

// ----- requests that accept several models -----

const H100: &str = "H100-SXM-80GB";
const H200: &str = "H200-SXM-141GB";

/// One site, `east`, with one node of 8 H100 and one of 8 H200.
const TWO_MODELS: &str = r#"
[[sites]]
name = "east"
region = "us-east"
power_mw = 1
[[sites.nodes]]
name = "h100-1"
gpu_model = "H100-SXM-80GB"
gpus = 8
[[sites.nodes]]
name = "h200-1"
gpu_model = "H200-SXM-141GB"
gpus = 8
"#;

/// Runs `async fn name(ctx)` on SQLite and PostgreSQL with no spare buffer, so that every
/// GPU of the small fleet is sold.
macro_rules! no_spares {
    ($($name:ident),+ $(,)?) => {
        $(mod $name {
            fn config() -> neocloud_service::SchedulerConfig {
                neocloud_service::SchedulerConfig {
                    spare_buffer_milli: 0,
                    ..neocloud_service::SchedulerConfig::default()
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let ctx = crate::ctx::TestContext::start_configured(crate::ctx::Db::Sqlite, config())
                    .await
                    .unwrap();
                super::$name(ctx).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(ctx) =
                    crate::ctx::TestContext::start_configured(crate::ctx::Db::Postgres, config()).await
                {
                    super::$name(ctx).await;
                }
            }
        })+
    };
}

no_spares!(
    several_models_place_on_the_one_with_room_and_bill_it,
    quotas_count_the_model_placed_on,
    a_queued_request_takes_the_first_model_that_frees,
    the_cli_launches_on_several_models,
    a_request_of_several_models_preempts_spot_on_one_of_them,
);

fn models_of(i: &Value) -> Vec<&str> {
    i["gpu_models"]
        .as_array()
        .map(|a| a.iter().map(|m| m.as_str().unwrap()).collect())
        .unwrap_or_default()
}

async fn several_models_place_on_the_one_with_room_and_bill_it(ctx: TestContext) {
    ctx.import(TWO_MODELS).await.expect(200);
    // The price book's on-demand rate of each model, for all sites.
    let mut rate = std::collections::HashMap::new();
    for model in [H100, H200] {
        let book = ctx
            .get(&format!("/v1/prices?gpu_model={model}"), &ctx.operator_key)
            .await
            .expect(200);
        let p = book["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["kind"] == "on-demand" && p["site_id"].is_null())
            .unwrap()["price_per_gpu_hour"]
            .clone();
        rate.insert(model, p);
    }
    assert_ne!(rate[H100], rate[H200]);
    let key = tenant_key(&ctx, "acme").await;
    // The H100 node is full: a request that accepts either model lands on the H200 node.
    let full = launch(&ctx, &key, json!({"gpu_model": H100, "gpus": 8})).await;
    assert!(full.get("gpu_models").is_none(), "{full}");
    let i = launch(&ctx, &key, json!({"gpu_models": [H100, H200], "gpus": 4})).await;
    assert_eq!(i["state"], "running", "{i}");
    assert_eq!(i["gpu_model"], H200, "{i}");
    assert_eq!(models_of(&i), [H100, H200]);
    assert_eq!(held(&i).0, "h200-1");
    let id = i["id"].as_str().unwrap().to_string();
    // Read back as launched, listed too.
    let again = ctx
        .get(&format!("/v1/instances/{id}"), &key)
        .await
        .expect(200);
    assert_eq!(
        (again["gpu_model"].clone(), models_of(&again)),
        (json!(H200), vec![H100, H200])
    );
    // The other order lands there too (the only room), and then nothing is left.
    let j = launch(&ctx, &key, json!({"gpu_models": [H200, H100], "gpus": 4})).await;
    assert_eq!(j["gpu_model"], H200, "{j}");
    ctx.post(
        "/v1/instances",
        &key,
        &json!({"gpu_models": [H100, H200], "gpus": 1}),
    )
    .await
    .problem(409, "insufficient_capacity");
    // Billed as the H200 it ran on, at the H200 rate.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    ctx.post(&format!("/v1/instances/{id}/terminate"), &key, &json!({}))
        .await
        .expect(200);
    let u = ctx
        .get(&format!("/v1/usage?instance={id}"), &key)
        .await
        .expect(200);
    let recs = u["items"].as_array().unwrap();
    assert_eq!(recs.len(), 1, "{u}");
    assert_eq!(recs[0]["gpu_model"], H200, "{u}");
    assert_eq!(recs[0]["rate"], rate[H200], "{u}");
    assert!(recs[0]["gpu_seconds"].as_i64().unwrap() >= 4, "{u}");
    // The database holds the placed model and the accepted list (what a restart reads).
    let back = ctx
        .svc
        .store()
        .instance_get(id.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(back.gpu_model, H200);
    assert_eq!(back.gpu_models, [H100, H200]);
    let live = ctx.svc.store().instance_list_live().await.unwrap();
    let j_back = live.iter().find(|x| x.id.to_string() == j["id"]).unwrap();
    assert_eq!(
        (j_back.gpu_model.as_str(), &j_back.gpu_models[..]),
        (H200, &[H200.to_string(), H100.to_string()][..])
    );
}

async fn set_quota(ctx: &TestContext, tenant: &str, model: &str, max: u32) {
    ctx.send(
        reqwest::Method::PUT,
        "/v1/quotas",
        Some(&ctx.operator_key),
        Some((
            "application/json",
            serde_json::to_vec(
                &json!({"tenant_id": tenant, "gpu_model": model, "class": "on-demand", "max_gpus": max}),
            )
            .unwrap(),
        )),
        &[],
    )
    .await
    .expect(200);
}

async fn quotas_count_the_model_placed_on(ctx: TestContext) {
    ctx.import(TWO_MODELS).await.expect(200);
    let t = ctx.tenant("acme").await;
    let tid = t["id"].as_str().unwrap().to_string();
    let key = ctx.key("tenant-admin", Some(&tid)).await.0;
    // No H100 for acme: requests that accept either model run on H200, both nodes empty.
    set_quota(&ctx, &tid, H100, 0).await;
    set_quota(&ctx, &tid, H200, 6).await;
    let a = launch(&ctx, &key, json!({"gpu_models": [H100, H200], "gpus": 4})).await;
    assert_eq!(a["gpu_model"], H200, "{a}");
    // 4 of 6 H200 used: 2 more fit, 4 do not, on either model.
    let p = ctx
        .post(
            "/v1/instances",
            &key,
            &json!({"gpu_models": [H100, H200], "gpus": 4}),
        )
        .await
        .problem(409, "quota_exceeded");
    let detail = p["detail"].as_str().unwrap();
    assert!(detail.contains(H100) && detail.contains(H200), "{detail}");
    let b = launch(&ctx, &key, json!({"gpu_models": [H100, H200], "gpus": 2})).await;
    assert_eq!(b["gpu_model"], H200, "{b}");
    // A quota on H200 only limits H200: with room on H100, a request goes there.
    set_quota(&ctx, &tid, H100, 8).await;
    let c = launch(&ctx, &key, json!({"gpu_models": [H200, H100], "gpus": 4})).await;
    assert_eq!(c["gpu_model"], H100, "{c}");
    // Each model's quota counts what was placed on it: 6 H200 and 4 H100 are held, so a
    // single-model launch of 1 H200 is over its quota and of 4 H100 is not.
    ctx.post(
        "/v1/instances",
        &key,
        &json!({"gpu_model": H200, "gpus": 1}),
    )
    .await
    .problem(409, "quota_exceeded");
    let id = a["id"].as_str().unwrap();
    ctx.post(&format!("/v1/instances/{id}/terminate"), &key, &json!({}))
        .await
        .expect(200);
    // With a's 4 H200 given back, H100 and H200 both have room for 4 (free GPUs and quota).
    let d = launch(&ctx, &key, json!({"gpu_models": [H100, H200], "gpus": 4})).await;
    assert!(d["gpu_model"] == H100 || d["gpu_model"] == H200, "{d}");
    // 8 more are over both models' quotas, whatever the nodes have free.
    ctx.post(
        "/v1/instances",
        &key,
        &json!({"gpu_models": [H100, H200], "gpus": 8}),
    )
    .await
    .problem(409, "quota_exceeded");
}

async fn a_queued_request_takes_the_first_model_that_frees(ctx: TestContext) {
    ctx.import(TWO_MODELS).await.expect(200);
    let key = tenant_key(&ctx, "acme").await;
    let h100 = launch(&ctx, &key, json!({"gpu_model": H100, "gpus": 8})).await;
    let h200 = launch(&ctx, &key, json!({"gpu_model": H200, "gpus": 8})).await;
    let q = launch(
        &ctx,
        &key,
        json!({"gpu_models": [H100, H200], "gpus": 8, "wait_seconds": 600}),
    )
    .await;
    assert_eq!(q["state"], "pending", "{q}");
    assert_eq!(models_of(&q), [H100, H200]);
    // An import rebuilds the scheduler from the database: the queued request keeps its
    // models.
    ctx.import(TWO_MODELS).await.expect(200);
    // The H200 frees: the queued request starts there.
    let id = h200["id"].as_str().unwrap();
    ctx.post(&format!("/v1/instances/{id}/terminate"), &key, &json!({}))
        .await
        .expect(200);
    let qid = q["id"].as_str().unwrap();
    let mut now = Value::Null;
    for _ in 0..50 {
        now = ctx
            .get(&format!("/v1/instances/{qid}"), &key)
            .await
            .expect(200);
        if now["state"] != "pending" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(now["state"], "running", "{now}");
    assert_eq!(now["gpu_model"], H200, "{now}");
    assert_eq!(held(&now).0, "h200-1");
    assert_eq!(held(&h100).0, "h100-1");
    let back = ctx
        .svc
        .store()
        .instance_get(qid.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(back.gpu_model, H200);
    assert_eq!(back.gpu_models, [H100, H200]);
}

both_backends!(
    several_models_refuse_bad_input,
    |ctx: TestContext| async move {
        ctx.import(TWO_MODELS).await.expect(200);
        let key = tenant_key(&ctx, "acme").await;
        for (body, says) in [
            (json!({"gpus": 1}), "gpu_model is required"),
            (
                json!({"gpu_model": H100, "gpu_models": [H200], "gpus": 1}),
                "not both",
            ),
            (json!({"gpu_models": [], "gpus": 1}), "names no GPU model"),
            (
                json!({"gpu_models": [H100, H100], "gpus": 1}),
                "'H100-SXM-80GB' twice",
            ),
            (
                json!({"gpu_models": [H100, "H900"], "gpus": 1}),
                "unknown GPU model 'H900'",
            ),
            (json!({"gpu_models": [H100, 7], "gpus": 1}), "gpu_models"),
            (json!({"gpu_models": H100, "gpus": 1}), "gpu_models"),
            (
                json!({"gpu_models": [H100, H200], "nodes": 1}),
                "a gang runs on one GPU model",
            ),
            (
                json!({"gpu_models": [H100, H200], "shape": {"kind": "mig", "profile": "1g.10gb"}}),
                "MIG",
            ),
        ] {
            let p = ctx
                .post("/v1/instances", &key, &body)
                .await
                .problem(400, "invalid_request");
            let detail = p["detail"].as_str().unwrap();
            assert!(detail.contains(says), "{body}: {detail}");
        }
        // Nothing was launched.
        let l = ctx.get("/v1/instances", &key).await.expect(200);
        assert_eq!(l["items"].as_array().unwrap().len(), 0, "{l}");
    }
);

async fn the_cli_launches_on_several_models(ctx: TestContext) {
    ctx.import(TWO_MODELS).await.expect(200);
    let key = tenant_key(&ctx, "acme").await;
    launch(&ctx, &key, json!({"gpu_model": H100, "gpus": 8})).await;
    // A comma list and repeated flags are the same request.
    for args in [
        vec!["--gpu-model", "H100-SXM-80GB,H200-SXM-141GB"],
        vec!["--gpu-model", H100, "--gpu-model", H200],
    ] {
        let mut all = vec!["-o", "json", "instances", "launch", "--gpus", "2"];
        all.extend(args);
        let out = crate::cli::neocloud(&ctx, &key, &all).await;
        assert!(out.status.success(), "{out:?}");
        let i: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(i["gpu_model"], H200, "{i}");
        assert_eq!(models_of(&i), [H100, H200]);
    }
    // The server's refusal, with the CLI's exit code for bad input... from the server.
    let out = crate::cli::neocloud(
        &ctx,
        &key,
        &[
            "instances",
            "launch",
            "--gpus",
            "1",
            "--gpu-model",
            "H100-SXM-80GB,H100-SXM-80GB",
        ],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("twice"),
        "{out:?}"
    );
    // `show` says what it accepted.
    let l = ctx.get("/v1/instances", &key).await.expect(200);
    let several = l["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["gpu_models"].is_array())
        .unwrap();
    let out = crate::cli::neocloud(
        &ctx,
        &key,
        &["instances", "show", several["id"].as_str().unwrap()],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("gpu_models") && l.ends_with("H100-SXM-80GB,H200-SXM-141GB")),
        "{text}"
    );
    // The list shows the model each runs on.
    let out = crate::cli::neocloud(&ctx, &key, &["instances", "list"]).await;
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches(H200).count(), 2, "{text}");
}

async fn a_request_of_several_models_preempts_spot_on_one_of_them(ctx: TestContext) {
    ctx.import(TWO_MODELS).await.expect(200);
    let key = tenant_key(&ctx, "acme").await;
    let spot_key = tenant_key(&ctx, "bravo").await;
    let s100 = launch(
        &ctx,
        &spot_key,
        json!({"gpu_model": H100, "gpus": 8, "class": "spot"}),
    )
    .await;
    let s200 = launch(
        &ctx,
        &spot_key,
        json!({"gpu_model": H200, "gpus": 8, "class": "spot"}),
    )
    .await;
    // On-demand outranks spot: one spot instance, on one of the accepted models, gets a
    // notice; the request waits for it.
    let od = launch(&ctx, &key, json!({"gpu_models": [H200, H100], "gpus": 8})).await;
    assert_eq!(od["state"], "pending", "{od}");
    assert!(od["reason"].as_str().unwrap().contains("preempted"), "{od}");
    let state = |i: Value| i["state"].as_str().unwrap().to_string();
    let get = |id: &Value, k: &str| {
        let path = format!("/v1/instances/{}", id.as_str().unwrap());
        let k = k.to_string();
        let ctx = &ctx;
        async move { ctx.get(&path, &k).await.expect(200) }
    };
    let (a, b) = (
        get(&s100["id"], &spot_key).await,
        get(&s200["id"], &spot_key).await,
    );
    let victim = match (state(a.clone()).as_str(), state(b.clone()).as_str()) {
        ("running", "preempting") => b,
        ("preempting", "running") => a,
        other => panic!("one spot instance is preempted: {other:?}"),
    };
    let deadline: neocloud_types::Timestamp =
        victim["preempt_at"].as_str().unwrap().parse().unwrap();
    ctx.svc.tick(deadline).await.unwrap();
    let od = get(&od["id"], &key).await;
    assert_eq!(od["state"], "running", "{od}");
    assert_eq!(od["gpu_model"], victim["gpu_model"], "{od}");
    assert_eq!(models_of(&od), [H200, H100]);
}
