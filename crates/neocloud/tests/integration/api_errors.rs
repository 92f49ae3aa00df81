//! Bad input gets a clear problem+json error and changes nothing.

use reqwest::Method;
use serde_json::json;

use crate::both_backends;
use crate::ctx::TestContext;

both_backends!(
    malformed_and_mistyped_bodies_are_400_and_change_nothing,
    |ctx: TestContext| async move {
        let k = ctx.operator_key.clone();
        let send_raw = |body: &'static str, ct: &'static str| {
            let ctx = &ctx;
            let k = k.clone();
            async move {
                ctx.send(
                    Method::POST,
                    "/v1/tenants",
                    Some(&k),
                    Some((ct, body.as_bytes().to_vec())),
                    &[],
                )
                .await
            }
        };
        let b = send_raw("{\"name\": ", "application/json")
            .await
            .problem(400, "invalid_request");
        assert!(
            b["detail"].as_str().unwrap().contains("malformed JSON"),
            "{b}"
        );
        send_raw("not json at all", "application/json")
            .await
            .problem(400, "invalid_request");
        // A mistyped field is named, not only located by line and column.
        let b = send_raw("{\"name\": 42}", "application/json")
            .await
            .problem(400, "invalid_request");
        assert!(
            b["detail"]
                .as_str()
                .unwrap()
                .starts_with("invalid request body: name: invalid type"),
            "{b}"
        );
        send_raw("{\"name\": \"ok\"} trailing", "application/json")
            .await
            .problem(400, "invalid_request");
        send_raw(
            "{\"name\": \"ok\", \"kind\": \"martian\"}",
            "application/json",
        )
        .await
        .problem(400, "invalid_request");
        let b = send_raw(
            "{\"name\": \"ok\", \"colour\": \"red\"}",
            "application/json",
        )
        .await
        .problem(400, "invalid_request");
        assert!(b["detail"].as_str().unwrap().contains("colour"), "{b}");
        send_raw("{\"name\": \"ok\"}", "text/plain")
            .await
            .problem(400, "invalid_request");
        send_raw("[]", "application/json")
            .await
            .problem(400, "invalid_request");
        // Names and money are validated.
        for bad in [
            json!({"name": ""}),
            json!({"name": "UPPER"}),
            json!({"name": "-x"}),
            json!({"name": "a".repeat(64)}),
            json!({"name": "ok", "credit_limit": "-5"}),
            json!({"name": "ok", "credit_limit": 12.5}),
            json!({"name": "ok", "credit_limit": "1e9"}),
        ] {
            ctx.post("/v1/tenants", &k, &bad)
                .await
                .problem(400, "invalid_request");
        }
        // Huge and negative numbers for GPU models.
        for bad in [
            json!({"name": "X1", "memory_gib": -1, "tdp_watts": 100}),
            json!({"name": "X1", "memory_gib": 1_u64 << 40, "tdp_watts": 100}),
            json!({"name": "X1", "memory_gib": 0, "tdp_watts": 100}),
            json!({"name": "X1", "memory_gib": 80, "tdp_watts": "700"}),
            json!({"name": "bad name!", "memory_gib": 80, "tdp_watts": 700}),
        ] {
            ctx.post("/v1/gpu-models", &k, &bad)
                .await
                .problem(400, "invalid_request");
        }
        // Nothing was created by any of these.
        let tenants = ctx.get("/v1/tenants", &k).await.expect(200);
        assert_eq!(tenants["items"].as_array().unwrap().len(), 0);
        let models = ctx.get("/v1/gpu-models", &k).await.expect(200);
        assert!(
            models["items"]
                .as_array()
                .unwrap()
                .iter()
                .all(|m| m["builtin"] == true)
        );
        let events = ctx.get("/v1/events?action=tenant.", &k).await.expect(200);
        assert_eq!(events["items"].as_array().unwrap().len(), 0);
    }
);

both_backends!(
    bad_query_strings_unknown_ids_and_routes,
    |ctx: TestContext| async move {
        let k = &ctx.operator_key;
        ctx.get("/v1/nodes?limit=abc", k)
            .await
            .problem(400, "invalid_request");
        ctx.get("/v1/nodes?limit=-1", k)
            .await
            .problem(400, "invalid_request");
        ctx.get("/v1/nodes?limit=0", k)
            .await
            .problem(400, "invalid_request");
        ctx.get("/v1/nodes?limit=1001", k)
            .await
            .problem(400, "invalid_request");
        ctx.get("/v1/nodes?state=melted", k)
            .await
            .problem(400, "invalid_request");
        ctx.get("/v1/nodes?sight=memphis-1", k)
            .await
            .problem(400, "invalid_request");
        ctx.get("/v1/nodes?site=nowhere", k)
            .await
            .problem(404, "not_found");
        ctx.get("/v1/nodes/nope", k).await.problem(404, "not_found");
        ctx.get("/v1/sites/nope", k).await.problem(404, "not_found");
        ctx.get("/v1/blocks/blk_123", k)
            .await
            .problem(404, "not_found");
        ctx.get("/v1/tenants/ten_00000000000000000000000000000000", k)
            .await
            .problem(404, "not_found");
        ctx.get("/v1/api-keys/not-a-key-id", k)
            .await
            .problem(404, "not_found");
        ctx.get("/v1/gpu-models/H900", k)
            .await
            .problem(404, "not_found");
        ctx.get("/v1/no-such-thing", k)
            .await
            .problem(404, "not_found");
        ctx.patch("/v1/tenants/nope", k, &json!({"status": "suspended"}))
            .await
            .problem(404, "not_found");
        let t = ctx.tenant("acme").await;
        ctx.patch("/v1/tenants/acme", k, &json!({}))
            .await
            .problem(400, "invalid_request");
        ctx.patch("/v1/tenants/acme", k, &json!({"status": "asleep"}))
            .await
            .problem(400, "invalid_request");
        let upd = ctx
            .patch(
                "/v1/tenants/acme",
                k,
                &json!({"status": "suspended", "credit_limit": "1000.50"}),
            )
            .await
            .expect(200);
        assert_eq!(upd["status"], "suspended");
        assert_eq!(upd["credit_limit"], "1000.5");
        assert_eq!(upd["id"], t["id"]);
        let upd = ctx
            .patch("/v1/tenants/acme", k, &json!({"credit_limit": null}))
            .await
            .expect(200);
        assert!(upd["credit_limit"].is_null());
        // Duplicate names conflict.
        ctx.post("/v1/tenants", k, &json!({"name": "acme"}))
            .await
            .problem(409, "conflict");
        ctx.post(
            "/v1/gpu-models",
            k,
            &json!({"name": "H100-SXM-80GB", "memory_gib": 80, "tdp_watts": 700}),
        )
        .await
        .problem(409, "conflict");
    }
);

both_backends!(
    idempotent_creates_never_create_twice,
    |ctx: TestContext| async move {
        let k = ctx.operator_key.clone();
        let create = |body: serde_json::Value, idem: &'static str| {
            let ctx = &ctx;
            let k = k.clone();
            async move {
                ctx.send(
                    Method::POST,
                    "/v1/tenants",
                    Some(&k),
                    Some(("application/json", serde_json::to_vec(&body).unwrap())),
                    &[("idempotency-key", idem)],
                )
                .await
            }
        };
        let first = create(json!({"name": "retry-me"}), "req-1").await;
        assert!(first.headers.get("idempotent-replayed").is_none());
        let first = first.expect(201);
        let again = create(json!({"name": "retry-me"}), "req-1").await;
        assert_eq!(again.headers.get("idempotent-replayed").unwrap(), "true");
        let again = again.expect(201);
        assert_eq!(first, again, "a retry returns the first result");
        // Ten concurrent retries still make one tenant.
        let mut handles = Vec::new();
        for _ in 0..10 {
            let url = ctx.url("/v1/tenants");
            let k = k.clone();
            handles.push(tokio::spawn(async move {
                reqwest::Client::new()
                    .post(url)
                    .bearer_auth(k)
                    .header("idempotency-key", "req-2")
                    .json(&json!({"name": "racer"}))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }));
        }
        let mut statuses = Vec::new();
        for h in handles {
            statuses.push(h.await.unwrap());
        }
        assert!(
            statuses.iter().all(|s| *s == 201 || *s == 409),
            "{statuses:?}"
        );
        assert!(statuses.contains(&201));
        let list = ctx.get("/v1/tenants", &k).await.expect(200);
        let names: Vec<&str> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["racer", "retry-me"]);
        // The same key with another body is refused.
        create(json!({"name": "someone-else"}), "req-1")
            .await
            .problem(422, "idempotency_key_reused");
        // A key create replayed does not reveal the secret again.
        let body = json!({"name": "k", "role": "operator-viewer"});
        let send_key = || {
            ctx.send(
                Method::POST,
                "/v1/api-keys",
                Some(&k),
                Some(("application/json", serde_json::to_vec(&body).unwrap())),
                &[("idempotency-key", "key-1")],
            )
        };
        let k1 = send_key().await.expect(201);
        let k2 = send_key().await.expect(201);
        assert!(k1["secret"].is_string());
        assert!(k2["secret"].is_null());
        assert_eq!(k1["id"], k2["id"]);
        // Each key's events: one tenant.created per tenant.
        let events = ctx
            .get("/v1/events?action=tenant.created", &k)
            .await
            .expect(200);
        assert_eq!(events["items"].as_array().unwrap().len(), 2);
    }
);

both_backends!(
    oversized_bodies_are_413_problems,
    |ctx: TestContext| async move {
        let big = format!("{{\"name\": \"{}\"}}", "a".repeat(3 << 20));
        ctx.send(
            Method::POST,
            "/v1/tenants",
            Some(&ctx.operator_key),
            Some(("application/json", big.into_bytes())),
            &[],
        )
        .await
        .problem(413, "payload_too_large");
        // A 3 MiB fleet file is fine (it is mostly a comment here).
        let file = format!("# {}\n", "x".repeat(3 << 20));
        ctx.import(&file).await.expect(200);
    }
);
