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
