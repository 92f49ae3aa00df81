//! Bad input that used to get through, and errors with the wrong code: past windows, money
//! and counts out of range, unknown fields in a shape, a suspended tenant, validation before
//! authorization, and windows and values that were not exact.

use neocloud_types::{Money, Timestamp};
use reqwest::Method;
use serde_json::{Value, json};

use crate::both_backends;
use crate::ctx::TestContext;

use crate::api_billing::FLEET;

fn detail(b: &Value) -> &str {
    b["detail"].as_str().unwrap()
}

fn terms(start: Timestamp, end: Timestamp) -> Value {
    json!({"tenant_id": "acme", "gpu_model": "H100-SXM-80GB", "gpu_count": 8,
           "start_at": start.to_string(), "end_at": end.to_string(), "site": "east"})
}

async fn put(ctx: &TestContext, path: &str, key: &str, body: &Value) -> crate::ctx::Resp {
    ctx.send(
        Method::PUT,
        path,
        Some(key),
        Some(("application/json", serde_json::to_vec(body).unwrap())),
        &[],
    )
    .await
}

async fn raw(ctx: &TestContext, path: &str, key: &str, body: &str) -> crate::ctx::Resp {
    ctx.send(
        Method::POST,
        path,
        Some(key),
        Some(("application/json", body.as_bytes().to_vec())),
        &[],
    )
    .await
}

both_backends!(
    windows_in_the_past_are_refused_by_quotes_and_contracts,
    |ctx: TestContext| async move {
        let k = ctx.operator_key.clone();
        ctx.import(FLEET).await.expect(200);
        ctx.tenant("acme").await;
        let now = Timestamp::now();
        // Wholly in the past, even inside the clock-skew tolerance of the start.
        for (s, e) in [(-30, -10), (-7200, -3600), (-86400 * 400, -86400)] {
            let body = terms(now.plus_seconds(s), now.plus_seconds(e));
            let b = ctx
                .post("/v1/quotes", &k, &body)
                .await
                .problem(400, "invalid_request");
            assert!(
                detail(&b).contains("end_at") || detail(&b).contains("start_at"),
                "{b}"
            );
            let b = ctx
                .post("/v1/contracts", &k, &body)
                .await
                .problem(400, "invalid_request");
            assert!(
                detail(&b).contains("end_at") || detail(&b).contains("start_at"),
                "{b}"
            );
        }
        // A start more than 5 minutes ago is refused even when the end is in the future.
        let b = ctx
            .post(
                "/v1/contracts",
                &k,
                &terms(now.plus_seconds(-600), now.plus_seconds(86400)),
            )
            .await
            .problem(400, "invalid_request");
        assert!(detail(&b).contains("start_at"), "{b}");
        assert!(detail(&b).contains("in the past"), "{b}");
        // End before start.
        ctx.post(
            "/v1/quotes",
            &k,
            &terms(now.plus_seconds(7200), now.plus_seconds(3600)),
        )
        .await
        .problem(400, "invalid_request");
        // Nothing was signed.
        let list = ctx.get("/v1/contracts", &k).await.expect(200);
        assert_eq!(list["items"].as_array().unwrap().len(), 0, "{list}");
        // A start a moment ago (clock skew) is accepted and kept as given, in whole seconds.
        let start = now.plus_seconds(-30);
        let c = ctx
            .post(
                "/v1/contracts",
                &k,
                &terms(start, start.plus_seconds(86400)),
            )
            .await
            .expect(201);
        assert_eq!(c["start_at"], start.floor_to_second().to_string());
    }
);

both_backends!(
    money_and_counts_have_limits,
    |ctx: TestContext| async move {
        let k = ctx.operator_key.clone();
        ctx.import(FLEET).await.expect(200);
        ctx.tenant("acme").await;
        let price = |p: &str| {
            json!({"gpu_model": "H100-SXM-80GB", "site": "east", "kind": "reserved-lt-1y",
                   "price_per_gpu_hour": p})
        };
        for bad in ["9223372036854.775807", "10000.000001", "1000000"] {
            let b = ctx
                .post("/v1/prices", &k, &price(bad))
                .await
                .problem(400, "invalid_request");
            assert!(detail(&b).contains("price_per_gpu_hour"), "{b}");
            assert!(detail(&b).contains("10000"), "{b}");
        }
        ctx.post("/v1/prices", &k, &price("-1"))
            .await
            .problem(400, "invalid_request");
        let prices = ctx
            .get("/v1/prices?gpu_model=H100-SXM-80GB", &k)
            .await
            .expect(200);
        assert!(
            prices["items"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["site_id"].is_null()),
            "a refused price was stored: {prices}"
        );
        // The backlog never goes negative: no contract, nothing.
        let b = ctx.get("/v1/reports/backlog", &k).await.expect(200);
        assert_eq!(b["total"], "0", "{b}");
        // The limit itself is a valid price.
        ctx.post("/v1/prices", &k, &price("10000"))
            .await
            .expect(201);

        // GPU counts of contracts and quotes.
        let now = Timestamp::now();
        let mut t = terms(now, now.plus_seconds(86400));
        t["gpu_count"] = json!(2_000_000);
        for path in ["/v1/quotes", "/v1/contracts"] {
            let b = ctx.post(path, &k, &t).await.problem(400, "invalid_request");
            assert!(detail(&b).contains("gpu_count"), "{b}");
            assert!(detail(&b).contains("1000000"), "{b}");
        }
        // Quotas.
        let b = put(
            &ctx,
            "/v1/quotas",
            &k,
            &json!({"tenant_id": "acme", "gpu_model": "H100-SXM-80GB", "class": "on-demand",
                    "max_gpus": 2_000_000}),
        )
        .await
        .problem(400, "invalid_request");
        assert!(detail(&b).contains("max_gpus"), "{b}");
        let q = ctx.get("/v1/quotas?tenant=acme", &k).await.expect(200);
        assert_eq!(q["items"].as_array().unwrap().len(), 0, "{q}");
        // Credit limits.
        let b = ctx
            .post(
                "/v1/tenants",
                &k,
                &json!({"name": "rich", "credit_limit": "1000000000000.01"}),
            )
            .await
            .problem(400, "invalid_request");
        assert!(detail(&b).contains("credit_limit"), "{b}");
        ctx.patch(
            "/v1/tenants/acme",
            &k,
            &json!({"credit_limit": "9000000000000"}),
        )
        .await
        .problem(400, "invalid_request");
        // Terms longer than 10 calendar years.
        let b = ctx
            .post(
                "/v1/quotes",
                &k,
                &terms(now, now.floor_to_second().plus_months(121).unwrap()),
            )
            .await
            .problem(400, "invalid_request");
        assert!(detail(&b).contains("10 years"), "{b}");
        // Downtime outside the contract's term.
        let c = ctx
            .post("/v1/contracts", &k, &terms(now, now.plus_seconds(86400)))
            .await
            .expect(201);
        let cid = c["id"].as_str().unwrap();
        let b = ctx
            .post(
                &format!("/v1/contracts/{cid}/downtime"),
                &k,
                &json!({"start_at": now.plus_seconds(-86400 * 365).to_string(),
                        "end_at": now.plus_seconds(60).to_string(), "gpus": 8}),
            )
            .await
            .problem(400, "invalid_request");
        assert!(detail(&b).contains("term"), "{b}");
    }
);

both_backends!(
    unknown_fields_in_a_shape_are_refused,
    |ctx: TestContext| async move {
        let k = ctx.operator_key.clone();
        ctx.import(FLEET).await.expect(200);
        ctx.tenant("acme").await;
        for shape in [
            json!({"kind": "gpus", "gpus": 1, "bogus": 1}),
            json!({"kind": "share", "milli": 250, "bogus": 1}),
            json!({"kind": "cpu", "bogus": 1}),
            json!({"kind": "nodes", "count": 1, "level": "pod", "bogus": 1}),
        ] {
            let b = ctx
                .post(
                    "/v1/instances",
                    &k,
                    &json!({"tenant_id": "acme", "gpu_model": "H100-SXM-80GB", "shape": shape}),
                )
                .await
                .problem(400, "invalid_request");
            assert!(detail(&b).contains("shape"), "{b}");
            assert!(detail(&b).contains("bogus"), "{b}");
        }
        let list = ctx.get("/v1/instances", &k).await.expect(200);
        assert_eq!(list["items"].as_array().unwrap().len(), 0, "{list}");
        // The same shape without the stray field launches.
        ctx.post(
            "/v1/instances",
            &k,
            &json!({"tenant_id": "acme", "gpu_model": "H100-SXM-80GB",
                    "shape": {"kind": "gpus", "gpus": 1}}),
        )
        .await
        .expect(201);
    }
);

both_backends!(
    a_suspended_tenant_signs_nothing_and_gets_no_keys,
    |ctx: TestContext| async move {
        let k = ctx.operator_key.clone();
        ctx.import(FLEET).await.expect(200);
        let t = ctx.tenant("acme").await;
        let (admin, _) = ctx.key("tenant-admin", t["id"].as_str()).await;
        // A launch before the suspension: the tenant is now read (and kept in memory).
        let launch = json!({"gpu_model": "H100-SXM-80GB", "gpus": 1});
        let i = ctx.post("/v1/instances", &admin, &launch).await.expect(201);
        let iid = i["id"].as_str().unwrap();
        ctx.post(
            &format!("/v1/instances/{iid}/terminate"),
            &admin,
            &json!({}),
        )
        .await
        .expect(200);
        ctx.patch("/v1/tenants/acme", &k, &json!({"status": "suspended"}))
            .await
            .expect(200);
        let now = Timestamp::now();
        let body = terms(now, now.plus_seconds(86400));
        for key in [&k, &admin] {
            let b = ctx
                .post("/v1/contracts", key, &body)
                .await
                .problem(403, "forbidden");
            assert!(detail(&b).contains("suspended"), "{b}");
        }
        // Without tenant_id, a tenant key signs for its own (suspended) tenant.
        let mut own = body.clone();
        own.as_object_mut().unwrap().remove("tenant_id");
        ctx.post("/v1/contracts", &admin, &own)
            .await
            .problem(403, "forbidden");
        let b = ctx
            .post(
                "/v1/api-keys",
                &k,
                &json!({"name": "ci", "role": "tenant-member", "tenant_id": "acme"}),
            )
            .await
            .problem(403, "forbidden");
        assert!(detail(&b).contains("suspended"), "{b}");
        ctx.post(
            "/v1/api-keys",
            &admin,
            &json!({"name": "ci", "role": "tenant-member"}),
        )
        .await
        .problem(403, "forbidden");
        // As instance launch is.
        ctx.post(
            "/v1/instances",
            &admin,
            &json!({"gpu_model": "H100-SXM-80GB", "gpus": 1}),
        )
        .await
        .problem(403, "forbidden");
        // Nothing was made.
        let list = ctx.get("/v1/contracts", &k).await.expect(200);
        assert_eq!(list["items"].as_array().unwrap().len(), 0, "{list}");
        let keys = ctx.get("/v1/api-keys?tenant=acme", &k).await.expect(200);
        assert_eq!(keys["items"].as_array().unwrap().len(), 1, "{keys}");
        // Active again, it signs and launches at once (no stale copy of the tenant).
        ctx.patch("/v1/tenants/acme", &k, &json!({"status": "active"}))
            .await
            .expect(200);
        ctx.post("/v1/contracts", &admin, &own).await.expect(201);
        ctx.post("/v1/instances", &admin, &launch).await.expect(201);
    }
);

both_backends!(
    authorization_comes_before_validation,
    |ctx: TestContext| async move {
        let k = ctx.operator_key.clone();
        ctx.import(FLEET).await.expect(200);
        let a = ctx.tenant("acme").await;
        ctx.tenant("bravo").await;
        let (admin, _) = ctx.key("tenant-admin", a["id"].as_str()).await;
        let (member, _) = ctx.key("tenant-member", a["id"].as_str()).await;
        let (enroll, _) = ctx.key("node-agent", None).await;
        let bound = ctx
            .post(
                "/v1/api-keys",
                &k,
                &json!({"name": "e1 agent", "role": "node-agent", "node": "e1"}),
            )
            .await
            .expect(201)["secret"]
            .as_str()
            .unwrap()
            .to_string();
        // Malformed or invalid bodies from callers whose role may not use the endpoint.
        let malformed = [r#"{"name": "#, "[]", r#"{"bogus": 1}"#];
        let cases: [(&str, &[&str]); 9] = [
            ("/v1/tenants", &[&enroll, &bound, &admin, &member]),
            ("/v1/gpu-models", &[&bound, &admin]),
            ("/v1/prices", &[&bound, &admin, &member]),
            ("/v1/invoices", &[&bound, &admin]),
            ("/v1/contracts", &[&bound, &member]),
            ("/v1/quotes", &[&bound]),
            ("/v1/instances", &[&bound]),
            ("/v1/api-keys", &[&bound, &member]),
            ("/v1/agent/heartbeat", &[&k, &admin]),
        ];
        for (path, keys) in cases {
            for key in keys {
                for body in malformed {
                    let b = raw(&ctx, path, key, body).await.problem(403, "forbidden");
                    assert!(detail(&b).contains("may not"), "{path}: {b}");
                }
            }
        }
        // A tenant key on an operator endpoint with a bad query, Idempotency-Key or path.
        ctx.get("/v1/nodes?limit=abc", &admin)
            .await
            .problem(403, "forbidden");
        ctx.get("/v1/tenants?limit=abc", &bound)
            .await
            .problem(403, "forbidden");
        ctx.send(
            Method::POST,
            "/v1/tenants",
            Some(&admin),
            Some(("application/json", b"{}".to_vec())),
            &[("idempotency-key", "")],
        )
        .await
        .problem(403, "forbidden");
        put(&ctx, "/v1/health/rules/abc", &admin, &json!({}))
            .await
            .problem(403, "forbidden");
        put(&ctx, "/v1/quotas", &member, &json!({"max_gpus": -1}))
            .await
            .problem(403, "forbidden");
        // An enrollment key sends no heartbeats, whatever it sends.
        raw(&ctx, "/v1/agent/heartbeat", &enroll, "{")
            .await
            .problem(403, "forbidden");
        // A key bound to e1 registering e2 is refused before its report is checked.
        let b = ctx
            .post(
                "/v1/agent/register",
                &bound,
                &json!({"hostname": "e2", "agent_version": "1", "backend": "sim",
                        "cpu_cores": 0, "ram_gib": 0, "gpus": []}),
            )
            .await
            .problem(403, "forbidden");
        assert!(detail(&b).contains("e1"), "{b}");
        // Another tenant's contract is not found, before its amendment is read.
        let now = Timestamp::now();
        let mut t = terms(now, now.plus_seconds(86400));
        t["tenant_id"] = json!("bravo");
        let c = ctx.post("/v1/contracts", &k, &t).await.expect(201);
        let cid = c["id"].as_str().unwrap();
        raw(&ctx, &format!("/v1/contracts/{cid}/amend"), &admin, "{")
            .await
            .problem(404, "not_found");
        // With the right role, the same bad bodies are 400.
        raw(&ctx, "/v1/tenants", &k, "[]")
            .await
            .problem(400, "invalid_request");
        raw(&ctx, "/v1/agent/heartbeat", &bound, "[]")
            .await
            .problem(400, "invalid_request");
        raw(&ctx, &format!("/v1/contracts/{cid}/amend"), &k, "{")
            .await
            .problem(400, "invalid_request");
        ctx.get("/v1/nodes?limit=abc", &k)
            .await
            .problem(400, "invalid_request");
    }
);

both_backends!(
    terms_are_exact_to_the_second_and_values_to_the_cent,
    |ctx: TestContext| async move {
        let k = ctx.operator_key.clone();
        ctx.import(FLEET).await.expect(200);
        ctx.tenant("acme").await;
        ctx.post(
            "/v1/prices",
            &k,
            &json!({"gpu_model": "H100-SXM-80GB", "site": "east", "kind": "reserved-ge-3y",
                    "price_per_gpu_hour": "2.345678"}),
        )
        .await
        .expect(201);
        // As the CLI's `--start now --years 3` sends it: now to the microsecond, three
        // calendar years later.
        let start = Timestamp::now();
        let end = start.plus_months(36).unwrap();
        let q = ctx
            .post("/v1/quotes", &k, &terms(start, end))
            .await
            .expect(200);
        let c = ctx
            .post("/v1/contracts", &k, &terms(start, end))
            .await
            .expect(201);
        let (s, e) = (start.floor_to_second(), end.floor_to_second());
        assert_eq!(c["start_at"], s.to_string());
        assert_eq!(c["end_at"], e.to_string());
        assert_eq!(e, s.plus_months(36).unwrap());
        assert_eq!(q["start_at"], c["start_at"]);
        assert_eq!(q["end_at"], c["end_at"]);
        assert_eq!(c["price_per_gpu_hour"], "2.345678");
        // 8 GPUs × whole hours × $2.345678, rounded half to even to the cent.
        let secs = i128::from((e.micros() - s.micros()) / 1_000_000);
        assert_eq!(secs % 3600, 0);
        let exact_micros = 8 * (secs / 3600) * 2_345_678;
        let (cents, rest) = (exact_micros / 10_000, exact_micros % 10_000);
        let cents = if rest * 2 > 10_000 || (rest * 2 == 10_000 && cents % 2 == 1) {
            cents + 1
        } else {
            cents
        };
        let want = Money::from_micros(i64::try_from(cents * 10_000).unwrap());
        assert_eq!(c["total_value"], want.to_string(), "{c}");
        assert_eq!(q["total_value"], want.to_string(), "{q}");
        // The backlog is exact to the cent too, and its years add up to its total. It starts
        // next month (this month's commitment is revenue): at most a month's value less.
        let b = ctx.get("/v1/reports/backlog", &k).await.expect(200);
        let m = |v: &Value| v.as_str().unwrap().parse::<Money>().unwrap().micros();
        let total = m(&b["total"]);
        assert_eq!(total % 10_000, 0, "{b}");
        let month_value = 8 * 31 * 24 * 2_345_678;
        assert!(
            total < want.micros() && want.micros() - total <= month_value + 1_000_000,
            "{b}"
        );
        let years: i64 = b["by_year"]
            .as_array()
            .unwrap()
            .iter()
            .map(|y| m(&y["value"]))
            .sum();
        assert_eq!(years, total, "{b}");
        for y in b["by_year"].as_array().unwrap() {
            assert_eq!(m(&y["value"]) % 10_000, 0, "{b}");
        }
    }
);
