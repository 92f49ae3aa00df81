//! The Lambda-Cloud-compatible API (`/lambda/api/v1`) through HTTP on both databases:
//! instance types from the fleet, the price book and the scheduler; launch, list, get and
//! terminate onto `/v1` instances; SSH keys; Lambda's error shape; authentication as Lambda
//! clients send keys; isolation, quotas and idempotency as in `/v1`. And a public Lambda
//! client library from PyPI, unchanged but for its base URL, against `serve --demo`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use neocloud_types::Timestamp;
use reqwest::Method;
use serde_json::{Value, json};

use crate::api_health::{beat, inventory};
use crate::both_backends;
use crate::ctx::{Resp, TestContext, temp_dir};

const L: &str = "/lambda/api/v1";

/// A real ed25519 public key (`ssh-keygen -t ed25519`).
const KEY_A: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAII2X/bUI99dqvdvtyPNXdL1arQrCRlcT63YEUGYfnH8q test@host";
const KEY_B: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK1xmwGOPr81N6hSrwwsAaGviJFMafqzt7fKpKTa+eZ9 other@host";

/// `east`: 2 nodes of 8 H100 (16 GPUs, 15 sellable beside the 2% spare buffer); `west`: 2
/// trays of 4 GB200 (8 GPUs, 7 sellable).
const FLEET: &str = r#"
[[sites]]
name = "east"
region = "us-east"
power_mw = 1
pue = 1.2
[[sites.node_groups]]
gpu_model = "H100-SXM-80GB"
gpus = 8
cpu_cores = 112
ram_gib = 2048
peak_watts = 10000
idle_watts = 2000
nodes_per_block = 2
layout = [ { kind = "pod", count = 1, name = "e-p{n}" } ]
name = "{block}-n{n}"

[[sites]]
name = "west"
region = "us-west"
power_mw = 1
pue = 1.1
[[sites.node_groups]]
gpu_model = "GB200"
gpus = 4
cpu_cores = 72
ram_gib = 960
peak_watts = 7000
idle_watts = 1800
nodes_per_block = 2
layout = [ { kind = "nvlink_domain", count = 1, name = "w-rack{n}" } ]
name = "{block}-n{n}"
"#;

async fn lget(ctx: &TestContext, path: &str, key: &str) -> Resp {
    ctx.get(&format!("{L}{path}"), key).await
}

async fn lpost(ctx: &TestContext, path: &str, key: &str, body: &Value) -> Resp {
    ctx.post(&format!("{L}{path}"), key, body).await
}

/// Asserts Lambda's error shape with this status and code; returns the error object.
#[track_caller]
fn lambda_error(r: Resp, status: u16, code: &str) -> Value {
    let body = r.expect(status);
    let e = &body["error"];
    assert_eq!(e["code"], code, "{body}");
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(e.get("suggestion").is_some(), "{body}");
    e.clone()
}

/// Imports the fleet, creates tenant `name` with a tenant-admin key and the SSH key
/// `laptop`; returns (key, tenant id).
async fn tenant_with_key(ctx: &TestContext, name: &str) -> (String, String) {
    let t = ctx.tenant(name).await;
    let id = t["id"].as_str().unwrap().to_string();
    let (key, _) = ctx.key("tenant-admin", Some(&id)).await;
    lpost(
        ctx,
        "/ssh-keys",
        &key,
        &json!({"name": "laptop", "public_key": KEY_A}),
    )
    .await
    .expect(200);
    (key, id)
}

fn launch_body(region: &str, itype: &str, quantity: u32) -> Value {
    json!({"region_name": region, "instance_type_name": itype,
           "ssh_key_names": ["laptop"], "quantity": quantity, "name": "trainer"})
}

async fn launch(ctx: &TestContext, key: &str, region: &str, itype: &str, n: u32) -> Vec<String> {
    let r = lpost(
        ctx,
        "/instance-operations/launch",
        key,
        &launch_body(region, itype, n),
    )
    .await
    .expect(200);
    r["data"]["instance_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn regions(types: &Value, name: &str) -> Vec<String> {
    types["data"][name]["regions_with_capacity_available"]
        .as_array()
        .unwrap_or_else(|| panic!("{name} missing: {types}"))
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect()
}

both_backends!(
    instance_types_follow_the_fleet_the_price_book_and_what_fits_now,
    |ctx: TestContext| async move {
        ctx.import(FLEET).await.expect(200);
        let (acme, _) = tenant_with_key(&ctx, "acme").await;
        let t = lget(&ctx, "/instance-types", &acme).await.expect(200);
        let names: Vec<&String> = t["data"].as_object().unwrap().keys().collect();
        assert_eq!(
            names,
            [
                "gpu_1x_gb200",
                "gpu_1x_h100_sxm5",
                "gpu_2x_gb200",
                "gpu_2x_h100_sxm5",
                "gpu_4x_gb200",
                "gpu_4x_h100_sxm5",
                "gpu_8x_h100_sxm5"
            ]
        );
        // Lambda's shape: price from the book's on-demand list price ($3.00 and $6.00 per
        // GPU-hour), specs of the node pro rata.
        let h8 = &t["data"]["gpu_8x_h100_sxm5"];
        assert_eq!(
            h8["instance_type"],
            json!({"name": "gpu_8x_h100_sxm5", "description": "8x H100 (80 GB SXM5)",
                   "gpu_description": "H100 (80 GB SXM5)", "price_cents_per_hour": 2400,
                   "specs": {"vcpus": 112, "memory_gib": 2048, "storage_gib": 0, "gpus": 8}})
        );
        assert_eq!(
            h8["regions_with_capacity_available"],
            json!([{"name": "east", "description": "us-east"}])
        );
        let h1 = &t["data"]["gpu_1x_h100_sxm5"]["instance_type"];
        assert_eq!(h1["price_cents_per_hour"], 300);
        assert_eq!(
            h1["specs"],
            json!({"vcpus": 14, "memory_gib": 256, "storage_gib": 0, "gpus": 1})
        );
        let g4 = &t["data"]["gpu_4x_gb200"];
        assert_eq!(g4["instance_type"]["price_cents_per_hour"], 2400);
        assert_eq!(regions(&t, "gpu_4x_gb200"), ["west"]);

        // One whole node taken: 7 of the 15 sellable H100 are left, so 8 no longer fit
        // while 4 do.
        launch(&ctx, &acme, "east", "gpu_8x_h100_sxm5", 1).await;
        let t = lget(&ctx, "/instance-types", &acme).await.expect(200);
        assert!(regions(&t, "gpu_8x_h100_sxm5").is_empty(), "{t}");
        assert_eq!(regions(&t, "gpu_4x_h100_sxm5"), ["east"]);
        assert_eq!(regions(&t, "gpu_4x_gb200"), ["west"]);

        // A new price in the book is the type's price.
        ctx.post(
            "/v1/prices",
            &ctx.operator_key,
            &json!({"gpu_model": "GB200", "kind": "on-demand", "price_per_gpu_hour": "5.255"}),
        )
        .await
        .expect(201);
        let t = lget(&ctx, "/instance-types", &acme).await.expect(200);
        assert_eq!(
            t["data"]["gpu_1x_gb200"]["instance_type"]["price_cents_per_hour"],
            526
        );
        assert_eq!(
            t["data"]["gpu_2x_gb200"]["instance_type"]["price_cents_per_hour"],
            1051
        );
    }
);

both_backends!(
    launch_list_get_and_terminate_map_onto_instances,
    |ctx: TestContext| async move {
        ctx.import(FLEET).await.expect(200);
        let (acme, acme_id) = tenant_with_key(&ctx, "acme").await;
        let ids = launch(&ctx, &acme, "east", "gpu_2x_h100_sxm5", 3).await;
        assert_eq!(ids.len(), 3);
        // Each is a /v1 instance of the tenant: on-demand, in the site, a container of the
        // default image that lives until terminated, with the key named.
        for id in &ids {
            let i = ctx
                .get(&format!("/v1/instances/{id}"), &acme)
                .await
                .expect(200);
            assert_eq!(i["tenant_id"], acme_id.as_str());
            assert_eq!(i["class"], "on-demand");
            assert_eq!(i["gpu_model"], "H100-SXM-80GB");
            assert_eq!(i["gpu_count"], 2);
            assert_eq!(i["name"], "trainer");
            assert_eq!(i["state"], "provisioning", "{i}");
            assert_eq!(
                i["delivery"],
                json!({"mode": "container", "image": "docker.io/library/ubuntu:24.04",
                       "command": ["sleep", "infinity"], "env": {}})
            );
            assert_eq!(i["ssh_key_names"], json!(["laptop"]));
            assert_eq!(i["authorized_keys"], json!([KEY_A]));
        }
        // A bare allocation launched under /v1 is not a Lambda instance.
        let bare = ctx
            .post(
                "/v1/instances",
                &acme,
                &json!({"gpu_model": "GB200", "gpus": 1}),
            )
            .await
            .expect(201);
        let bare_id = bare["id"].as_str().unwrap();

        let one = lget(&ctx, &format!("/instances/{}", ids[0]), &acme)
            .await
            .expect(200);
        let d = &one["data"];
        assert_eq!(d["id"], ids[0].as_str());
        assert_eq!(d["name"], "trainer");
        assert_eq!(d["status"], "booting");
        assert_eq!(d["ip"], Value::Null);
        assert_eq!(d["ssh_key_names"], json!(["laptop"]));
        assert_eq!(d["file_system_names"], json!([]));
        assert_eq!(
            d["region"],
            json!({"name": "east", "description": "us-east"})
        );
        assert_eq!(d["instance_type"]["name"], "gpu_2x_h100_sxm5");
        assert_eq!(d["instance_type"]["price_cents_per_hour"], 600);

        let list = lget(&ctx, "/instances", &acme).await.expect(200);
        let listed: Vec<&str> = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap())
            .collect();
        let mut newest_first = ids.clone();
        newest_first.reverse();
        assert_eq!(listed, newest_first);
        lambda_error(
            lget(&ctx, &format!("/instances/{bare_id}"), &acme).await,
            404,
            "global/object-does-not-exist",
        );

        // Terminate: the container is being stopped (its agents confirm), its GPUs wait for
        // that; the others keep running.
        let r = lpost(
            &ctx,
            "/instance-operations/terminate",
            &acme,
            &json!({"instance_ids": [ids[0], ids[1], ids[0]]}),
        )
        .await
        .expect(200);
        let ended = r["data"]["terminated_instances"].as_array().unwrap();
        assert_eq!(ended.len(), 2, "each once: {r}");
        assert_eq!(ended[0]["status"], "terminating");
        let i = ctx
            .get(&format!("/v1/instances/{}", ids[0]), &acme)
            .await
            .expect(200);
        assert_eq!(i["state"], "stopping");
        assert_eq!(i["ends_as"], "terminated");
        let i = ctx
            .get(&format!("/v1/instances/{}", ids[2]), &acme)
            .await
            .expect(200);
        assert_eq!(i["state"], "provisioning");
        // A container launched under /v1 is one too; one that never got placed ends at
        // once. (The first takes the free node, the second waits.)
        let wait8 = json!({"gpu_model": "H100-SXM-80GB", "gpus": 8, "wait_seconds": 600,
                           "delivery": {"mode": "container", "image": "localhost/x:1"},
                           "ssh_key_names": ["laptop"]});
        let placed = ctx.post("/v1/instances", &acme, &wait8).await.expect(201);
        assert_eq!(placed["state"], "provisioning", "{placed}");
        let pending = ctx.post("/v1/instances", &acme, &wait8).await.expect(201);
        assert_eq!(pending["state"], "pending", "{pending}");
        let pid = pending["id"].as_str().unwrap();
        let g = lget(&ctx, &format!("/instances/{pid}"), &acme)
            .await
            .expect(200);
        assert_eq!(g["data"]["status"], "booting");
        assert_eq!(g["data"]["instance_type"]["name"], "gpu_8x_h100_sxm5");
        let r = lpost(
            &ctx,
            "/instance-operations/terminate",
            &acme,
            &json!({"instance_ids": [pid]}),
        )
        .await
        .expect(200);
        assert_eq!(r["data"]["terminated_instances"][0]["status"], "terminated");
        let list = lget(&ctx, "/instances", &acme).await.expect(200);
        assert_eq!(list["data"].as_array().unwrap().len(), 4, "{list}");
        assert_eq!(
            lget(&ctx, "/file-systems", &acme).await.expect(200),
            json!({"data": []})
        );
        let images = lget(&ctx, "/images", &acme).await.expect(200);
        let regions: Vec<&str> = images["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["region"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(regions, ["east", "west"]);
        assert_eq!(images["data"][0]["name"], "docker.io/library/ubuntu:24.04");
    }
);

both_backends!(errors_are_lambda_shaped, |ctx: TestContext| async move {
    ctx.import(FLEET).await.expect(200);
    let (acme, acme_id) = tenant_with_key(&ctx, "acme").await;
    // Keys.
    let r = ctx
        .send(Method::GET, &format!("{L}/instances"), None, None, &[])
        .await;
    assert_eq!(
        r.headers.get("www-authenticate").unwrap().to_str().unwrap(),
        "Bearer"
    );
    lambda_error(r, 401, "global/invalid-api-key");
    lambda_error(
        lget(&ctx, "/instances", "nck_000000000000_nope").await,
        401,
        "global/invalid-api-key",
    );
    let r = ctx
        .send(
            Method::GET,
            &format!("{L}/instances"),
            None,
            None,
            &[("authorization", "Token abc")],
        )
        .await;
    lambda_error(r, 401, "global/invalid-api-key");
    let e = lambda_error(
        lget(&ctx, "/instance-types", &ctx.operator_key).await,
        403,
        "global/invalid-api-key",
    );
    assert!(e["suggestion"].as_str().unwrap().contains("tenant"), "{e}");
    // A member may launch; HTTP basic with the key as user name works like a bearer token.
    let (member, _) = ctx.key("tenant-member", Some(&acme_id)).await;
    let http = reqwest::Client::new();
    let r = http
        .get(ctx.url(&format!("{L}/ssh-keys")))
        .basic_auth(&member, Some(""))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let keys: Value = r.json().await.unwrap();
    assert_eq!(keys["data"][0]["name"], "laptop");

    let bad = |v: Value| {
        let ctx = &ctx;
        let acme = acme.clone();
        async move { lpost(ctx, "/instance-operations/launch", &acme, &v).await }
    };
    let e = lambda_error(
        bad(launch_body("east", "gpu_3x_h100_sxm5", 1)).await,
        400,
        "global/invalid-parameters",
    );
    assert!(e["message"].as_str().unwrap().contains("gpu_3x_h100_sxm5"));
    let e = lambda_error(
        bad(launch_body("mars", "gpu_1x_h100_sxm5", 1)).await,
        400,
        "global/invalid-parameters",
    );
    assert!(e["message"].as_str().unwrap().contains("unknown region"));
    let e = lambda_error(
        bad(launch_body("west", "gpu_1x_h100_sxm5", 1)).await,
        400,
        "global/invalid-parameters",
    );
    assert!(e["message"].as_str().unwrap().contains("not offered"));
    for q in [0, 65] {
        lambda_error(
            bad(launch_body("east", "gpu_1x_h100_sxm5", q)).await,
            400,
            "global/invalid-parameters",
        );
    }
    let mut b = launch_body("east", "gpu_1x_h100_sxm5", 1);
    b["ssh_key_names"] = json!([]);
    lambda_error(bad(b).await, 400, "global/invalid-parameters");
    let mut b = launch_body("east", "gpu_1x_h100_sxm5", 1);
    b["ssh_key_names"] = json!(["nobody"]);
    lambda_error(bad(b).await, 400, "global/invalid-parameters");
    let mut b = launch_body("east", "gpu_1x_h100_sxm5", 1);
    b["file_system_names"] = json!(["shared"]);
    lambda_error(bad(b).await, 400, "global/invalid-parameters");
    let mut b = launch_body("east", "gpu_1x_h100_sxm5", 1);
    b["user_data"] = json!("#!/bin/sh\n");
    lambda_error(bad(b).await, 400, "global/invalid-parameters");
    let e = lambda_error(
        bad(json!({"region_name": "east"})).await,
        400,
        "global/invalid-parameters",
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("instance_type_name")
    );
    for body in [
        &b"{"[..],
        &b"[]"[..],
        &b""[..],
        &br#"{"region_name": 1}"#[..],
    ] {
        let r = ctx
            .send(
                Method::POST,
                &format!("{L}/instance-operations/launch"),
                Some(&acme),
                Some(("application/json", body.to_vec())),
                &[],
            )
            .await;
        lambda_error(r, 400, "global/invalid-parameters");
    }
    // No capacity: 15 of 16 H100 are sellable.
    launch(&ctx, &acme, "east", "gpu_8x_h100_sxm5", 1).await;
    let e = lambda_error(
        bad(launch_body("east", "gpu_8x_h100_sxm5", 1)).await,
        400,
        "instance-operations/launch/insufficient-capacity",
    );
    assert!(e["suggestion"].as_str().unwrap().contains("instance-types"));
    // Unknown instances, endpoints and methods.
    lambda_error(
        lget(&ctx, "/instances/nope", &acme).await,
        404,
        "global/object-does-not-exist",
    );
    lambda_error(
        lpost(
            &ctx,
            "/instance-operations/terminate",
            &acme,
            &json!({"instance_ids": ["nope"]}),
        )
        .await,
        404,
        "global/object-does-not-exist",
    );
    lambda_error(
        lpost(
            &ctx,
            "/instance-operations/terminate",
            &acme,
            &json!({"instance_ids": []}),
        )
        .await,
        400,
        "global/invalid-parameters",
    );
    lambda_error(
        lget(&ctx, "/no-such-thing", &acme).await,
        404,
        "global/object-does-not-exist",
    );
    lambda_error(
        ctx.send(
            Method::DELETE,
            &format!("{L}/instances"),
            Some(&acme),
            None,
            &[],
        )
        .await,
        405,
        "global/invalid-parameters",
    );
    // Restart is refused (nothing reboots in place); a wrong id still reads as not found.
    let id = launch(&ctx, &acme, "east", "gpu_1x_h100_sxm5", 1)
        .await
        .remove(0);
    let e = lambda_error(
        lpost(
            &ctx,
            "/instance-operations/restart",
            &acme,
            &json!({"instance_ids": [id]}),
        )
        .await,
        400,
        "global/invalid-parameters",
    );
    assert!(e["suggestion"].as_str().unwrap().contains("terminate"));
    lambda_error(
        lpost(
            &ctx,
            "/instance-operations/restart",
            &acme,
            &json!({"instance_ids": ["nope"]}),
        )
        .await,
        404,
        "global/object-does-not-exist",
    );
    // A suspended tenant's account is inactive.
    ctx.patch(
        &format!("/v1/tenants/{acme_id}"),
        &ctx.operator_key,
        &json!({"status": "suspended"}),
    )
    .await
    .expect(200);
    lambda_error(
        bad(launch_body("east", "gpu_1x_h100_sxm5", 1)).await,
        403,
        "global/account-inactive",
    );
});

both_backends!(tenants_see_only_their_own, |ctx: TestContext| async move {
    ctx.import(FLEET).await.expect(200);
    let (acme, _) = tenant_with_key(&ctx, "acme").await;
    let (globex, _) = tenant_with_key(&ctx, "globex").await;
    let a = launch(&ctx, &acme, "east", "gpu_1x_h100_sxm5", 1)
        .await
        .remove(0);
    let g = launch(&ctx, &globex, "west", "gpu_1x_gb200", 1)
        .await
        .remove(0);
    let list = lget(&ctx, "/instances", &globex).await.expect(200);
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [g.as_str()]);
    lambda_error(
        lget(&ctx, &format!("/instances/{a}"), &globex).await,
        404,
        "global/object-does-not-exist",
    );
    // Naming another tenant's instance terminates nothing, not even one's own.
    lambda_error(
        lpost(
            &ctx,
            "/instance-operations/terminate",
            &globex,
            &json!({"instance_ids": [g, a]}),
        )
        .await,
        404,
        "global/object-does-not-exist",
    );
    for (key, id) in [(&acme, &a), (&globex, &g)] {
        let i = lget(&ctx, &format!("/instances/{id}"), key)
            .await
            .expect(200);
        assert_eq!(i["data"]["status"], "booting");
    }
    // SSH keys are the tenant's own: the same name in two tenants, deleting across refused.
    let gk = lget(&ctx, "/ssh-keys", &globex).await.expect(200);
    let gk_id = gk["data"][0]["id"].as_str().unwrap().to_string();
    lambda_error(
        ctx.delete(&format!("{L}/ssh-keys/{gk_id}"), &acme).await,
        404,
        "global/object-does-not-exist",
    );
    assert_eq!(
        lget(&ctx, "/ssh-keys", &globex).await.expect(200)["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
});

both_backends!(
    idempotency_keys_replay_launches_and_terminates,
    |ctx: TestContext| async move {
        ctx.import(FLEET).await.expect(200);
        let (acme, _) = tenant_with_key(&ctx, "acme").await;
        let body = serde_json::to_vec(&launch_body("east", "gpu_1x_h100_sxm5", 2)).unwrap();
        let send = |body: Vec<u8>, key: &'static str, path: &'static str| {
            let ctx = &ctx;
            let acme = acme.clone();
            async move {
                ctx.send(
                    Method::POST,
                    &format!("{L}{path}"),
                    Some(&acme),
                    Some(("application/json", body)),
                    &[("idempotency-key", key)],
                )
                .await
            }
        };
        let first = send(body.clone(), "launch-1", "/instance-operations/launch").await;
        assert!(first.headers.get("idempotent-replayed").is_none());
        let first = first.expect(200);
        let again = send(body.clone(), "launch-1", "/instance-operations/launch").await;
        assert_eq!(again.headers.get("idempotent-replayed").unwrap(), "true");
        assert_eq!(again.expect(200), first);
        let all = ctx.get("/v1/instances", &acme).await.expect(200);
        assert_eq!(all["items"].as_array().unwrap().len(), 2, "{all}");
        // The same key with another request is refused, and launches nothing.
        let other = serde_json::to_vec(&launch_body("east", "gpu_1x_h100_sxm5", 3)).unwrap();
        lambda_error(
            send(other, "launch-1", "/instance-operations/launch").await,
            400,
            "global/invalid-parameters",
        );
        let all = ctx.get("/v1/instances", &acme).await.expect(200);
        assert_eq!(all["items"].as_array().unwrap().len(), 2);
        let too_long = "k".repeat(256);
        lambda_error(
            ctx.send(
                Method::POST,
                &format!("{L}/instance-operations/launch"),
                Some(&acme),
                Some(("application/json", body.clone())),
                &[("idempotency-key", &too_long)],
            )
            .await,
            400,
            "global/invalid-parameters",
        );
        // A terminate replays its first answer.
        let ids = &first["data"]["instance_ids"];
        let t = serde_json::to_vec(&json!({ "instance_ids": ids })).unwrap();
        let one = send(t.clone(), "term-1", "/instance-operations/terminate")
            .await
            .expect(200);
        let two = send(t, "term-1", "/instance-operations/terminate").await;
        assert_eq!(two.headers.get("idempotent-replayed").unwrap(), "true");
        assert_eq!(two.expect(200), one);
        // An SSH key added twice with one key is added once.
        let k = serde_json::to_vec(&json!({"name": "ci", "public_key": KEY_B})).unwrap();
        let a = send(k.clone(), "key-1", "/ssh-keys").await.expect(200);
        let b = send(k, "key-1", "/ssh-keys").await;
        assert_eq!(b.headers.get("idempotent-replayed").unwrap(), "true");
        assert_eq!(b.expect(200), a);
    }
);

both_backends!(
    ssh_keys_through_the_lambda_api,
    |ctx: TestContext| async move {
        let (acme, _) = tenant_with_key(&ctx, "acme").await;
        let added = lpost(
            &ctx,
            "/ssh-keys",
            &acme,
            &json!({"name": "ci", "public_key": KEY_B}),
        )
        .await
        .expect(200);
        assert_eq!(added["data"]["name"], "ci");
        assert_eq!(added["data"]["public_key"], KEY_B);
        let id = added["data"]["id"].as_str().unwrap().to_string();
        // The same keys under /v1.
        let native = ctx.get("/v1/ssh-keys", &acme).await.expect(200);
        assert_eq!(native.as_array().unwrap().len(), 2);
        let list = lget(&ctx, "/ssh-keys", &acme).await.expect(200);
        let names: Vec<&str> = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["ci", "laptop"]);
        for k in list["data"].as_array().unwrap() {
            let keys: Vec<&str> = k.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(keys, ["id", "name", "public_key"]);
        }
        // No key pair is generated; a name is taken once; a bad key is refused.
        let e = lambda_error(
            lpost(&ctx, "/ssh-keys", &acme, &json!({"name": "gen"})).await,
            400,
            "global/invalid-parameters",
        );
        assert!(e["message"].as_str().unwrap().contains("public_key"));
        lambda_error(
            lpost(
                &ctx,
                "/ssh-keys",
                &acme,
                &json!({"name": "ci", "public_key": KEY_A}),
            )
            .await,
            400,
            "global/invalid-parameters",
        );
        lambda_error(
            lpost(
                &ctx,
                "/ssh-keys",
                &acme,
                &json!({"name": "x", "public_key": "ssh-ed25519 AAAA!!!"}),
            )
            .await,
            400,
            "global/invalid-parameters",
        );
        assert_eq!(
            ctx.delete(&format!("{L}/ssh-keys/{id}"), &acme)
                .await
                .expect(200),
            json!({"data": {}})
        );
        lambda_error(
            ctx.delete(&format!("{L}/ssh-keys/{id}"), &acme).await,
            404,
            "global/object-does-not-exist",
        );
        let list = lget(&ctx, "/ssh-keys", &acme).await.expect(200);
        assert_eq!(list["data"].as_array().unwrap().len(), 1);
    }
);

both_backends!(
    quotas_apply_and_a_short_launch_keeps_what_it_got,
    |ctx: TestContext| async move {
        ctx.import(FLEET).await.expect(200);
        let (acme, acme_id) = tenant_with_key(&ctx, "acme").await;
        ctx.send(
            Method::PUT,
            "/v1/quotas",
            Some(&ctx.operator_key),
            Some((
                "application/json",
                serde_json::to_vec(&json!({"tenant_id": acme_id, "gpu_model": "H100-SXM-80GB",
                                           "class": "on-demand", "max_gpus": 3}))
                .unwrap(),
            )),
            &[],
        )
        .await
        .expect(200);
        lambda_error(
            lpost(
                &ctx,
                "/instance-operations/launch",
                &acme,
                &launch_body("east", "gpu_4x_h100_sxm5", 1),
            )
            .await,
            400,
            "global/quota-exceeded",
        );
        // Three of five fit the quota: those three are launched and answered.
        let ids = launch(&ctx, &acme, "east", "gpu_1x_h100_sxm5", 5).await;
        assert_eq!(ids.len(), 3);
        let list = lget(&ctx, "/instances", &acme).await.expect(200);
        assert_eq!(list["data"].as_array().unwrap().len(), 3);
    }
);

// The instance's node's agent reports it running: Lambda shows it `active` at the address
// the agent gave, and the stop it confirms ends it `terminated`.
both_backends!(
    an_agent_makes_an_instance_active_at_its_address,
    |ctx: TestContext| async move {
        ctx.import(crate::api_health::FLEET).await.expect(200);
        let enroll = ctx.key("node-agent", None).await.0;
        let mut node_keys = std::collections::HashMap::new();
        for h in (1..=2).flat_map(|l| (1..=4).map(move |n| format!("e-p1-l{l}-n{n}"))) {
            let r = ctx
                .post("/v1/agent/register", &enroll, &inventory(&h))
                .await
                .expect(200);
            node_keys.insert(h, r["node_key"].as_str().unwrap().to_string());
        }
        let (acme, _) = tenant_with_key(&ctx, "acme").await;
        let id = launch(&ctx, &acme, "east", "gpu_8x_h100_sxm5", 1)
            .await
            .remove(0);
        let i = ctx
            .get(&format!("/v1/instances/{id}"), &acme)
            .await
            .expect(200);
        let host = i["placement"][0]["node"].as_str().unwrap().to_string();
        let key = node_keys
            .get(&host)
            .unwrap_or_else(|| panic!("placed on {host}, which has no agent here"))
            .clone();
        let report = |phase: Value| {
            let ctx = &ctx;
            let (key, host) = (key.clone(), host.clone());
            async move {
                let mut b = beat(&host, vec![]);
                b["workloads"] = json!([phase]);
                ctx.post("/v1/agent/heartbeat", &key, &b).await.expect(200);
            }
        };
        report(json!({"instance_id": id, "phase": "running",
                      "since": Timestamp::now().to_string(),
                      "access": {"host": "10.1.2.3", "port": 2201, "user": "root"}}))
        .await;
        let d = lget(&ctx, &format!("/instances/{id}"), &acme)
            .await
            .expect(200)["data"]
            .clone();
        assert_eq!(d["status"], "active", "{d}");
        assert_eq!(d["ip"], "10.1.2.3");
        assert_eq!(d["hostname"], "10.1.2.3");
        assert_eq!(d["ssh_port"], 2201);
        assert_eq!(d["ssh_user"], "root");
        let t = lpost(
            &ctx,
            "/instance-operations/terminate",
            &acme,
            &json!({"instance_ids": [id]}),
        )
        .await
        .expect(200);
        assert_eq!(
            t["data"]["terminated_instances"][0]["status"],
            "terminating"
        );
        report(json!({"instance_id": id, "phase": "stopped",
                      "since": Timestamp::now().to_string()}))
        .await;
        let d = lget(&ctx, &format!("/instances/{id}"), &acme)
            .await
            .expect(200);
        assert_eq!(d["data"]["status"], "terminated", "{d}");
        let list = lget(&ctx, "/instances", &acme).await.expect(200);
        assert_eq!(list["data"], json!([]));
    }
);

/// With `bare_metal_whole_nodes` (serve --lambda-bare-metal) a whole-node type launches a
/// bare-metal account on one node, with the user data given; smaller types stay
/// containers, of the operator's image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_node_types_launch_bare_metal_when_the_operator_says_so() {
    let ctx = TestContext::start(crate::ctx::Db::Sqlite).await;
    ctx.import(FLEET).await.expect(200);
    let (acme, _) = tenant_with_key(&ctx, "acme").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}{L}", listener.local_addr().unwrap());
    let config = neocloud_api::LambdaConfig {
        image: "localhost/lambda-stack:1".into(),
        command: vec!["/usr/sbin/init".into()],
        bare_metal_whole_nodes: true,
    };
    let svc = ctx.svc.clone();
    tokio::spawn(async move {
        neocloud_api::serve_with(listener, svc, config, std::future::pending())
            .await
            .unwrap();
    });
    let http = reqwest::Client::new();
    let post = |body: Value| {
        let (http, base, acme) = (&http, &base, &acme);
        async move {
            let r = http
                .post(format!("{base}/instance-operations/launch"))
                .bearer_auth(acme)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let mut b = launch_body("east", "gpu_8x_h100_sxm5", 1);
    b["user_data"] = json!("#!/bin/sh\necho ready\n");
    let (s, r) = post(b).await;
    assert_eq!(s, 200, "{r}");
    let id = r["data"]["instance_ids"][0].as_str().unwrap();
    let i = ctx
        .get(&format!("/v1/instances/{id}"), &acme)
        .await
        .expect(200);
    assert_eq!(i["shape"]["kind"], "nodes", "{i}");
    assert_eq!(i["shape"]["count"], 1);
    assert_eq!(
        i["delivery"],
        json!({"mode": "bare-metal", "user_data": "#!/bin/sh\necho ready\n"})
    );
    let l = http
        .get(format!("{base}/instances/{id}"))
        .bearer_auth(&acme)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(
        l["data"]["instance_type"]["name"], "gpu_8x_h100_sxm5",
        "{l}"
    );
    let (s, r) = post(launch_body("west", "gpu_2x_gb200", 1)).await;
    assert_eq!(s, 200, "{r}");
    let id = r["data"]["instance_ids"][0].as_str().unwrap();
    let i = ctx
        .get(&format!("/v1/instances/{id}"), &acme)
        .await
        .expect(200);
    assert_eq!(
        i["delivery"],
        json!({"mode": "container", "image": "localhost/lambda-stack:1",
               "command": ["/usr/sbin/init"], "env": {}})
    );
}

// ---- a public Lambda client library ---------------------------------------------------------

/// The Lambda client library from PyPI (`lambda-cloud-api-client`, generated from Lambda's
/// published API description) in the virtualenv named by `NEOCLOUD_TEST_PYTOOLS` (by
/// default `target/pytools`, where `scripts/test.sh` installs it). Without it the test says
/// so and passes, unless `NEOCLOUD_TEST_REQUIRE_PYTOOLS=1` (set by `scripts/test.sh`) makes
/// that a failure.
fn lambda_client_python() -> Option<PathBuf> {
    let dir = std::env::var_os("NEOCLOUD_TEST_PYTOOLS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/pytools"),
        PathBuf::from,
    );
    let python = dir.join("bin/python");
    let ok = python.exists()
        && Command::new(&python)
            .args(["-c", "import lambda_cloud_api_client"])
            .output()
            .is_ok_and(|o| o.status.success());
    if ok {
        return Some(python);
    }
    let why = format!("lambda-cloud-api-client not installed in {}", dir.display());
    assert!(
        std::env::var("NEOCLOUD_TEST_REQUIRE_PYTOOLS").is_err(),
        "the Python tools are required here: {why}"
    );
    eprintln!("skipping: {why} (scripts/test.sh installs it)");
    None
}

/// Stops the `serve` it holds when the test ends, however it ends.
struct Serve(std::process::Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The client library launches, lists, reads and terminates instances of the demo fleet
/// against the real binary (`neocloud serve --demo`) on a real port, and every answer
/// parses into its models (see `tests/python/lambda_client.py`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lambda_client_library_works_against_serve_demo() {
    let Some(python) = lambda_client_python() else {
        return;
    };
    let dir = temp_dir();
    let mut child = Command::new(env!("CARGO_BIN_EXE_neocloud"))
        .args(["serve", "--demo", "--demo-scale", "0.002"])
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _serve = Serve(child);
    let addr = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        loop {
            let line = lines.next().expect("serve exited early").unwrap();
            if let Some(rest) = line.strip_prefix("neocloud is serving on http://") {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        }
    })
    .await
    .unwrap();
    let base = format!("http://{addr}");
    let operator = std::fs::read_to_string(dir.join("data/operator.key"))
        .unwrap()
        .trim()
        .to_string();
    // The operator gives the demo's tenant a key, as it would for a customer.
    let http = reqwest::Client::new();
    let key: Value = http
        .post(format!("{base}/v1/api-keys"))
        .bearer_auth(&operator)
        .json(&json!({"name": "lambda", "role": "tenant-admin", "tenant_id": "frontier-lab"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tenant_key = key["secret"].as_str().unwrap().to_string();
    let driver = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/lambda_client.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(driver)
            .env("LAMBDA_BASE_URL", format!("{base}{L}"))
            .env("LAMBDA_API_KEY", &tenant_key)
            .env("LAMBDA_OPERATOR_KEY", &operator)
            .env("LAMBDA_PUBLIC_KEY", KEY_A)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the Lambda client failed:\n{text}");
    assert!(text.contains("lambda client: ok"), "{text}");
    eprintln!("{text}");
}
