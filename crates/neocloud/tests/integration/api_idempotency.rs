//! Idempotency-Key on every state-changing operation, on both databases: the same key and
//! request twice change once and answer the same; the same key with another request is
//! refused; keys belong to the API key that sent them; signing a contract and recording
//! downtime twice with one key sign once and credit once. The list of operations is checked
//! against the OpenAPI document, so an operation added without the header fails here.

use std::collections::BTreeSet;

use neocloud_types::Timestamp;
use reqwest::Method;
use serde_json::{Value, json};

use crate::api_health::{FLEET, beat, inventory};
use crate::both_backends;
use crate::ctx::{Resp, TestContext};

/// Sends `body` (JSON unless `toml`) with an Idempotency-Key.
async fn send(
    ctx: &TestContext,
    method: &Method,
    path: &str,
    key: &str,
    body: &Option<Value>,
    idem: &str,
) -> Resp {
    let body = body.as_ref().map(|b| match b {
        Value::String(toml) => ("application/toml", toml.as_bytes().to_vec()),
        other => ("application/json", serde_json::to_vec(other).unwrap()),
    });
    ctx.send(
        method.clone(),
        path,
        Some(key),
        body,
        &[("idempotency-key", idem)],
    )
    .await
}

/// How many audit events start with `action`.
async fn events(ctx: &TestContext, action: &str) -> usize {
    ctx.get(
        &format!("/v1/events?action={action}&limit=1000"),
        &ctx.operator_key,
    )
    .await
    .expect(200)["items"]
        .as_array()
        .unwrap()
        .len()
}

/// One state-changing operation: the request, another request to reuse its key with, the
/// status it answers, and the audit action it records once (if any).
struct Case {
    method: Method,
    template: &'static str,
    path: String,
    key: String,
    body: Option<Value>,
    other: Option<(String, Option<Value>)>,
    status: u16,
    action: Option<&'static str>,
    /// Fields shown only on the first answer (secrets).
    once: &'static [&'static str],
}

fn case(
    method: Method,
    template: &'static str,
    path: impl Into<String>,
    key: &str,
    body: Option<Value>,
    status: u16,
    action: Option<&'static str>,
) -> Case {
    Case {
        method,
        template,
        path: path.into(),
        key: key.to_string(),
        body,
        other: None,
        status,
        action,
        once: &[],
    }
}

impl Case {
    fn or(mut self, path: impl Into<String>, body: Option<Value>) -> Case {
        self.other = Some((path.into(), body));
        self
    }
    fn other_body(self, body: Value) -> Case {
        let path = self.path.clone();
        self.or(path, Some(body))
    }
}

fn without(mut v: Value, fields: &[&str]) -> Value {
    if let Some(o) = v.as_object_mut() {
        for f in fields {
            o.remove(*f);
        }
    }
    v
}

/// Runs a case: first, a retry with the same key (replayed, identical, no second effect),
/// then the key with another request (refused).
async fn check(ctx: &TestContext, n: usize, c: Case) -> Value {
    let idem = format!("case-{n}-{}", c.template);
    let before = match c.action {
        Some(a) => events(ctx, a).await,
        None => 0,
    };
    let first = send(ctx, &c.method, &c.path, &c.key, &c.body, &idem).await;
    assert!(
        first.headers.get("idempotent-replayed").is_none(),
        "{} {}",
        c.method,
        c.path
    );
    let first_status = first.status.as_u16();
    let first = first.body;
    assert_eq!(first_status, c.status, "{} {}: {first}", c.method, c.path);
    let after = match c.action {
        Some(a) => events(ctx, a).await,
        None => 0,
    };
    if c.action.is_some() {
        assert_eq!(after, before + 1, "{} {}: one effect", c.method, c.path);
    }
    let again = send(ctx, &c.method, &c.path, &c.key, &c.body, &idem).await;
    assert_eq!(again.status.as_u16(), c.status, "{} {}", c.method, c.path);
    assert_eq!(
        again
            .headers
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap().to_string()),
        Some("true".to_string()),
        "{} {}: a retry is a replay",
        c.method,
        c.path
    );
    assert_eq!(
        without(again.body, c.once),
        without(first.clone(), c.once),
        "{} {}: a retry answers what the first did",
        c.method,
        c.path
    );
    if let Some(a) = c.action {
        assert_eq!(
            events(ctx, a).await,
            after,
            "{} {}: a retry changes nothing",
            c.method,
            c.path
        );
    }
    if let Some((path, body)) = &c.other {
        send(ctx, &c.method, path, &c.key, body, &idem)
            .await
            .problem(422, "idempotency_key_reused");
    }
    first
}

/// Numbers the cases and remembers which operations they covered.
#[derive(Default)]
struct Runner {
    n: usize,
    done: BTreeSet<String>,
}

impl Runner {
    async fn run(&mut self, ctx: &TestContext, c: Case) -> Value {
        self.n += 1;
        self.done.insert(format!("{} {}", c.method, c.template));
        check(ctx, self.n, c).await
    }
}

/// Every POST, PUT, PATCH and DELETE of the OpenAPI document, as `METHOD template`, and
/// whether it declares the Idempotency-Key header.
fn documented_writes() -> Vec<(String, bool)> {
    let doc: Value = serde_json::from_str(&neocloud_api::openapi_json()).unwrap();
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if !["post", "put", "patch", "delete"].contains(&method.as_str()) {
                continue;
            }
            let declared = op["parameters"].as_array().is_some_and(|ps| {
                ps.iter()
                    .any(|p| p["in"] == "header" && p["name"] == "Idempotency-Key")
            });
            out.push((format!("{} {path}", method.to_uppercase()), declared));
        }
    }
    out
}

#[test]
fn every_state_changing_operation_documents_the_header() {
    let missing: Vec<String> = documented_writes()
        .into_iter()
        .filter(|(_, declared)| !declared)
        .map(|(op, _)| op)
        .collect();
    assert!(
        missing.is_empty(),
        "operations without the Idempotency-Key header (take the Idem extractor and add \
         params(IdempotencyKey)): {missing:?}"
    );
}

both_backends!(
    every_state_changing_operation_honours_the_key,
    |ctx: TestContext| async move {
        let k = ctx.operator_key.clone();
        ctx.import(FLEET).await.expect(200);
        let acme = ctx.tenant("acme").await;
        let acme_id = acme["id"].as_str().unwrap().to_string();
        let (ka, _) = ctx.key("tenant-admin", Some(&acme_id)).await;
        let (enroll, _) = ctx.key("node-agent", None).await;
        let now = Timestamp::now();
        let month = now.to_string()[..7].to_string();
        let terms = |gpus: u32| {
            json!({"tenant_id": "acme", "gpu_model": "H100-SXM-80GB", "gpu_count": gpus,
                   "start_at": now.to_string(),
                   "end_at": now.plus_seconds(40 * 86400).to_string(),
                   "site": "east", "sla_percent": "99.9"})
        };
        let mut r = Runner::default();
        macro_rules! run {
            ($c:expr) => {
                r.run(&ctx, $c)
            };
        }
        use Method as M;

        run!(
            case(
                M::POST,
                "/v1/gpu-models",
                "/v1/gpu-models",
                &k,
                Some(json!({"name": "T-1", "memory_gib": 80, "tdp_watts": 700})),
                201,
                Some("gpu_model.created")
            )
            .other_body(json!({"name": "T-2", "memory_gib": 80, "tdp_watts": 700}))
        )
        .await;
        run!(
            case(
                M::POST,
                "/v1/tenants",
                "/v1/tenants",
                &k,
                Some(json!({"name": "idem-t"})),
                201,
                Some("tenant.created")
            )
            .other_body(json!({"name": "idem-u"}))
        )
        .await;
        run!(
            case(
                M::PATCH,
                "/v1/tenants/{tenant}",
                "/v1/tenants/idem-t",
                &k,
                Some(json!({"display_name": "Idem T"})),
                200,
                Some("tenant.updated")
            )
            .other_body(json!({"display_name": "Other"}))
        )
        .await;
        let mut c = case(
            M::POST,
            "/v1/api-keys",
            "/v1/api-keys",
            &k,
            Some(json!({"name": "viewer", "role": "operator-viewer"})),
            201,
            Some("api_key.created"),
        )
        .other_body(json!({"name": "viewer2", "role": "operator-viewer"}));
        c.once = &["secret"];
        let viewer = run!(c).await;
        let viewer_id = viewer["id"].as_str().unwrap().to_string();
        run!(
            case(
                M::DELETE,
                "/v1/api-keys/{id}",
                format!("/v1/api-keys/{viewer_id}"),
                &k,
                None,
                200,
                Some("api_key.revoked")
            )
            .or(
                format!("/v1/api-keys/{}", "key_00000000000000000000000000"),
                None
            )
        )
        .await;
        run!(
            case(
                M::PUT,
                "/v1/sites/{site}/power-cap",
                "/v1/sites/east/power-cap",
                &k,
                Some(json!({"watts": 1_500_000})),
                200,
                Some("site.power_capped")
            )
            .other_body(json!({"watts": 1_400_000}))
        )
        .await;
        run!(
            case(
                M::PUT,
                "/v1/health/rules/{code}",
                "/v1/health/rules/79",
                &k,
                Some(json!({"action": "record"})),
                200,
                Some("health_rule.set")
            )
            .other_body(json!({"action": "ignore"}))
        )
        .await;
        run!(
            case(
                M::DELETE,
                "/v1/health/rules/{code}",
                "/v1/health/rules/79",
                &k,
                None,
                200,
                Some("health_rule.reset")
            )
            .or("/v1/health/rules/80", None)
        )
        .await;
        run!(
            case(
                M::PUT,
                "/v1/quotas",
                "/v1/quotas",
                &k,
                Some(json!({"tenant_id": "acme", "gpu_model": "H100-SXM-80GB",
                        "class": "on-demand", "max_gpus": 64})),
                200,
                Some("quota.set")
            )
            .other_body(json!({"tenant_id": "acme", "gpu_model": "H100-SXM-80GB",
                        "class": "on-demand", "max_gpus": 32}))
        )
        .await;
        let later = now.plus_seconds(86400).to_string();
        run!(
            case(
                M::POST,
                "/v1/prices",
                "/v1/prices",
                &k,
                Some(json!({"gpu_model": "H100-SXM-80GB", "kind": "on-demand",
                        "price_per_gpu_hour": "3.5", "effective_from": later})),
                201,
                Some("price.set")
            )
            .other_body(json!({"gpu_model": "H100-SXM-80GB", "kind": "on-demand",
                        "price_per_gpu_hour": "3.6", "effective_from": later}))
        )
        .await;
        run!(
            case(
                M::POST,
                "/v1/quotes",
                "/v1/quotes",
                &k,
                Some(terms(8)),
                200,
                None
            )
            .other_body(terms(16))
        )
        .await;
        let contract = run!(
            case(
                M::POST,
                "/v1/contracts",
                "/v1/contracts",
                &k,
                Some(terms(8)),
                201,
                Some("contract.signed")
            )
            .other_body(terms(16))
        )
        .await;
        let cid = contract["id"].as_str().unwrap().to_string();
        run!(
            case(
                M::POST,
                "/v1/contracts/{id}/amend",
                format!("/v1/contracts/{cid}/amend"),
                &k,
                Some(json!({"gpu_count": 16})),
                200,
                Some("contract.amended")
            )
            .other_body(json!({"gpu_count": 24}))
        )
        .await;
        let start: Timestamp = contract["start_at"].as_str().unwrap().parse().unwrap();
        let dt = |secs: i64| {
            json!({"start_at": start.to_string(),
            "end_at": start.plus_seconds(secs).to_string(), "gpus": 8})
        };
        run!(
            case(
                M::POST,
                "/v1/contracts/{id}/downtime",
                format!("/v1/contracts/{cid}/downtime"),
                &k,
                Some(dt(3600)),
                204,
                Some("contract.downtime_recorded")
            )
            .other_body(dt(7200))
        )
        .await;
        let inv = run!(
            case(
                M::POST,
                "/v1/invoices",
                "/v1/invoices",
                &k,
                Some(json!({"tenant_id": "acme", "month": month})),
                200,
                Some("invoice.generated")
            )
            .other_body(json!({"tenant_id": "idem-t", "month": month}))
        )
        .await;
        // This month is not over: finalizing is refused, each time (an error is not kept).
        let inv_id = inv["id"].as_str().unwrap().to_string();
        let fin = format!("/v1/invoices/{inv_id}/finalize");
        for _ in 0..2 {
            send(&ctx, &M::POST, &fin, &k, &None, "finalize-1")
                .await
                .problem(400, "invalid_request");
        }
        r.done.insert("POST /v1/invoices/{id}/finalize".to_string());
        let inst = run!(
            case(
                M::POST,
                "/v1/instances",
                "/v1/instances",
                &ka,
                Some(json!({"gpu_model": "H100-SXM-80GB", "gpus": 8})),
                201,
                Some("instance.running")
            )
            .other_body(json!({"gpu_model": "H100-SXM-80GB", "gpus": 4}))
        )
        .await;
        let iid = inst["id"].as_str().unwrap().to_string();
        let ed =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAII2X/bUI99dqvdvtyPNXdL1arQrCRlcT63YEUGYfnH8q a";
        let ed2 =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK1xmwGOPr81N6hSrwwsAaGviJFMafqzt7fKpKTa+eZ9 b";
        run!(
            case(
                M::POST,
                "/v1/ssh-keys",
                "/v1/ssh-keys",
                &ka,
                Some(json!({"name": "laptop", "public_key": ed})),
                201,
                Some("ssh_key.created")
            )
            .other_body(json!({"name": "desktop", "public_key": ed2}))
        )
        .await;
        run!(
            case(
                M::DELETE,
                "/v1/ssh-keys/{key}",
                "/v1/ssh-keys/laptop",
                &ka,
                None,
                200,
                Some("ssh_key.deleted")
            )
            .or("/v1/ssh-keys/desktop", None)
        )
        .await;
        let mut c = case(
            M::POST,
            "/v1/webhooks",
            "/v1/webhooks",
            &ka,
            Some(json!({"url": "https://hooks.example.com/acme", "events": ["instance.*"]})),
            201,
            Some("webhook.created"),
        )
        .other_body(json!({"url": "https://hooks.example.com/other"}));
        c.once = &["secret"];
        let hook = run!(c).await;
        let hid = hook["id"].as_str().unwrap().to_string();
        let other = ctx
            .post(
                "/v1/webhooks",
                &ka,
                &json!({"url": "https://hooks.example.com/second"}),
            )
            .await
            .expect(201);
        let other_id = other["id"].as_str().unwrap().to_string();
        run!(
            case(
                M::POST,
                "/v1/webhooks/{id}/test",
                format!("/v1/webhooks/{hid}/test"),
                &ka,
                None,
                202,
                Some("webhook.test")
            )
            .or(format!("/v1/webhooks/{other_id}/test"), None)
        )
        .await;
        run!(
            case(
                M::DELETE,
                "/v1/webhooks/{id}",
                format!("/v1/webhooks/{hid}"),
                &ka,
                None,
                200,
                Some("webhook.deleted")
            )
            .or(format!("/v1/webhooks/{other_id}"), None)
        )
        .await;
        run!(
            case(
                M::POST,
                "/v1/instances/{id}/terminate",
                format!("/v1/instances/{iid}/terminate"),
                &ka,
                None,
                200,
                Some("instance.terminated")
            )
            .or("/v1/instances/inst_0/terminate", None)
        )
        .await;
        run!(
            case(
                M::POST,
                "/v1/contracts/{id}/cancel",
                format!("/v1/contracts/{cid}/cancel"),
                &k,
                None,
                200,
                Some("contract.cancelled")
            )
            .or("/v1/contracts/x/cancel", None)
        )
        .await;
        let host = "e-p1-l2-n1";
        let node_op = |op: &'static str, template: &'static str| {
            case(
                M::POST,
                template,
                format!("/v1/nodes/{host}/{op}"),
                &k,
                Some(json!({"reason": "test"})),
                200,
                Some("node.state_changed"),
            )
            .other_body(json!({"reason": "other"}))
        };
        run!(node_op("cordon", "/v1/nodes/{node}/cordon")).await;
        run!(node_op("uncordon", "/v1/nodes/{node}/uncordon")).await;
        run!(node_op("drain", "/v1/nodes/{node}/drain")).await;
        // Nothing runs there: the health pass moves it to maintenance.
        ctx.svc.health_tick(Timestamp::now()).await.unwrap();
        run!(node_op(
            "repair-complete",
            "/v1/nodes/{node}/repair-complete"
        ))
        .await;
        run!(
            case(
                M::POST,
                "/v1/fleet/import",
                "/v1/fleet/import",
                &k,
                Some(Value::String(FLEET.to_string())),
                200,
                Some("fleet.imported")
            )
            .other_body(Value::String(format!("{FLEET}\n# changed\n")))
        )
        .await;
        let mut c = case(
            M::POST,
            "/v1/agent/register",
            "/v1/agent/register",
            &enroll,
            Some(inventory("e-p1-l1-n1")),
            200,
            Some("node.agent_registered"),
        )
        .other_body(inventory("e-p1-l1-n2"));
        c.once = &["node_key"];
        let reg = run!(c).await;
        let node_key = reg["node_key"].as_str().unwrap().to_string();
        run!(
            case(
                M::POST,
                "/v1/agent/heartbeat",
                "/v1/agent/heartbeat",
                &node_key,
                Some(beat("e-p1-l1-n1", vec![])),
                200,
                None
            )
            .other_body(beat("e-p1-l1-n1", vec![]))
        )
        .await;
        let batch = |b: Value| json!({"heartbeats": [{"key": node_key, "heartbeat": b}]});
        run!(
            case(
                M::POST,
                "/v1/agent/heartbeats",
                "/v1/agent/heartbeats",
                &node_key,
                Some(batch(beat("e-p1-l1-n1", vec![]))),
                200,
                None
            )
            .other_body(batch(beat("e-p1-l1-n1", vec![])))
        )
        .await;

        let start = Timestamp::now().plus_seconds(3600);
        let window = |reason: &str| {
            json!({"nodes": ["e-p1-l1-n4"], "start_at": start.to_string(),
                   "end_at": start.plus_seconds(3600).to_string(), "reason": reason})
        };
        let w = run!(
            case(
                M::POST,
                "/v1/maintenance",
                "/v1/maintenance",
                &k,
                Some(window("PSU swap")),
                201,
                Some("maintenance.scheduled")
            )
            .other_body(window("BMC update"))
        )
        .await;
        let wid = w["id"].as_str().unwrap().to_string();
        run!(
            case(
                M::POST,
                "/v1/maintenance/{id}/cancel",
                format!("/v1/maintenance/{wid}/cancel"),
                &k,
                None,
                200,
                Some("maintenance.cancelled")
            )
            .or(
                "/v1/maintenance/mnt_00000000000000000000000000/cancel",
                None
            )
        )
        .await;

        // Every state-changing operation of the API was checked.
        let documented: BTreeSet<String> =
            documented_writes().into_iter().map(|(op, _)| op).collect();
        let untested: Vec<&String> = documented.difference(&r.done).collect();
        assert!(untested.is_empty(), "not checked here: {untested:?}");
    }
);

both_backends!(
    keys_belong_to_the_api_key_that_sent_them,
    |ctx: TestContext| async move {
        let (other, _) = ctx.key("operator-admin", None).await;
        let a = Some(json!({"name": "from-a"}));
        let b = Some(json!({"name": "from-b"}));
        let first = send(
            &ctx,
            &Method::POST,
            "/v1/tenants",
            &ctx.operator_key,
            &a,
            "shared",
        )
        .await
        .expect(201);
        // Another API key with the same Idempotency-Key: its own request, not a replay,
        // not a conflict.
        let r = send(&ctx, &Method::POST, "/v1/tenants", &other, &b, "shared").await;
        assert!(r.headers.get("idempotent-replayed").is_none());
        let second = r.expect(201);
        assert_ne!(first["id"], second["id"]);
        // Nor does it see the first key's answer with the first body.
        send(&ctx, &Method::POST, "/v1/tenants", &other, &a, "shared")
            .await
            .problem(422, "idempotency_key_reused");
        let again = send(
            &ctx,
            &Method::POST,
            "/v1/tenants",
            &ctx.operator_key,
            &a,
            "shared",
        )
        .await
        .expect(201);
        assert_eq!(again, first);
    }
);

both_backends!(bad_keys_are_refused, |ctx: TestContext| async move {
    let k = ctx.operator_key.clone();
    let body = Some(json!({"name": "x"}));
    let long = "k".repeat(256);
    for bad in ["", long.as_str(), "tab\there"] {
        send(&ctx, &Method::POST, "/v1/tenants", &k, &body, bad)
            .await
            .problem(400, "invalid_request");
    }
    let r = reqwest::Client::new()
        .post(ctx.url("/v1/tenants"))
        .bearer_auth(&k)
        .header(
            "idempotency-key",
            reqwest::header::HeaderValue::from_bytes("clé".as_bytes()).unwrap(),
        )
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // 255 characters is the most, and fine.
    send(
        &ctx,
        &Method::POST,
        "/v1/tenants",
        &k,
        &body,
        &"k".repeat(255),
    )
    .await
    .expect(201);
    // Nothing was created by the refused requests.
    assert_eq!(events(&ctx, "tenant.created").await, 1);
});

/// The SLA credit line of acme's invoice for `month`, regenerated now.
async fn sla_credit(ctx: &TestContext, month: &str) -> String {
    let inv = ctx
        .post(
            "/v1/invoices",
            &ctx.operator_key,
            &json!({"tenant_id": "acme", "month": month}),
        )
        .await
        .expect(200);
    inv["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["kind"] == "sla-credit")
        .map(|l| l["amount"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

both_backends!(
    a_contract_is_signed_and_credited_once_per_key,
    |ctx: TestContext| async move {
        let k = ctx.operator_key.clone();
        ctx.import(FLEET).await.expect(200);
        ctx.tenant("acme").await;
        let now = Timestamp::now();
        let terms = Some(json!({"tenant_id": "acme", "gpu_model": "H100-SXM-80GB",
            "gpu_count": 16, "start_at": now.to_string(),
            "end_at": now.plus_seconds(400 * 86400).to_string(), "site": "east",
            "sla_percent": "99.9"}));
        // Signed twice with one key (a retry after a lost answer): one contract.
        let c1 = send(&ctx, &Method::POST, "/v1/contracts", &k, &terms, "sign-1")
            .await
            .expect(201);
        let c2 = send(&ctx, &Method::POST, "/v1/contracts", &k, &terms, "sign-1")
            .await
            .expect(201);
        assert_eq!(c1, c2);
        // Concurrent retries too.
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let url = ctx.url("/v1/contracts");
            let k = k.clone();
            let terms = terms.clone();
            tasks.push(tokio::spawn(async move {
                reqwest::Client::new()
                    .post(url)
                    .bearer_auth(k)
                    .header("idempotency-key", "sign-2")
                    .json(&terms)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }));
        }
        for t in tasks {
            let s = t.await.unwrap();
            assert!(s == 201 || s == 409, "{s}");
        }
        let list = ctx.get("/v1/contracts", &k).await.expect(200);
        assert_eq!(list["items"].as_array().unwrap().len(), 2, "{list}");
        assert_eq!(events(&ctx, "contract.signed").await, 2);
        // Downtime twice with one key: credited once.
        let cid = c1["id"].as_str().unwrap();
        let start: Timestamp = c1["start_at"].as_str().unwrap().parse().unwrap();
        let month = start.to_string()[..7].to_string();
        let month_end = month
            .parse::<neocloud_billing::period::Month>()
            .unwrap()
            .end();
        let dt = Some(json!({"start_at": start.to_string(),
            "end_at": start.plus_seconds(86400).min(month_end).to_string(), "gpus": 16}));
        let path = format!("/v1/contracts/{cid}/downtime");
        send(&ctx, &Method::POST, &path, &k, &dt, "down-1")
            .await
            .expect(204);
        let once = sla_credit(&ctx, &month).await;
        assert!(once.starts_with('-'), "a credit: {once}");
        let r = send(&ctx, &Method::POST, &path, &k, &dt, "down-1").await;
        assert_eq!(r.headers.get("idempotent-replayed").unwrap(), "true");
        r.expect(204);
        assert_eq!(sla_credit(&ctx, &month).await, once, "credited once");
        assert_eq!(events(&ctx, "contract.downtime_recorded").await, 1);
        // The same downtime under a new key is a second record (what the key protects
        // against): the credit grows.
        send(&ctx, &Method::POST, &path, &k, &dt, "down-2")
            .await
            .expect(204);
        assert_ne!(sla_credit(&ctx, &month).await, once);
    }
);
