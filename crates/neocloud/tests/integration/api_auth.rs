//! Authentication (401s) and authorization (roles, tenant isolation).

use reqwest::Method;
use serde_json::json;

use crate::both_backends;
use crate::ctx::TestContext;

both_backends!(
    missing_bad_revoked_and_expired_keys_get_401,
    |ctx: TestContext| async move {
        // No key, a malformed header, a well-formed but unknown key.
        ctx.send(Method::GET, "/v1/sites", None, None, &[])
            .await
            .problem(401, "unauthenticated");
        ctx.send(
            Method::GET,
            "/v1/sites",
            None,
            None,
            &[("authorization", "Basic Zm9vOmJhcg==")],
        )
        .await
        .problem(401, "unauthenticated");
        let forged = format!("nck_{}_{}", "0".repeat(12), "0".repeat(48));
        ctx.get("/v1/sites", &forged)
            .await
            .problem(401, "unauthenticated");
        // The right prefix with a wrong secret.
        let (good, id) = ctx.key("operator-viewer", None).await;
        let wrong = format!(
            "{}{}",
            &good[..good.len() - 1],
            if good.ends_with('0') { "1" } else { "0" }
        );
        ctx.get("/v1/sites", &wrong)
            .await
            .problem(401, "unauthenticated");
        ctx.get("/v1/sites", &good).await.expect(200);

        // Revoked: works before, 401 right after.
        let revoked = ctx
            .delete(&format!("/v1/api-keys/{id}"), &ctx.operator_key)
            .await
            .expect(200);
        assert!(revoked["revoked_at"].is_string());
        let body = ctx
            .get("/v1/sites", &good)
            .await
            .problem(401, "unauthenticated");
        assert!(body["detail"].as_str().unwrap().contains("revoked"));

        // Expired: a key that expires in one second.
        let soon = neocloud_types::Timestamp::now().plus_seconds(1).to_string();
        let v = ctx
            .post(
                "/v1/api-keys",
                &ctx.operator_key,
                &json!({"name": "short-lived", "role": "operator-viewer", "expires_at": soon}),
            )
            .await
            .expect(201);
        let short = v["secret"].as_str().unwrap().to_string();
        ctx.get("/v1/sites", &short).await.expect(200);
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let body = ctx
            .get("/v1/sites", &short)
            .await
            .problem(401, "unauthenticated");
        assert!(body["detail"].as_str().unwrap().contains("expired"));

        // An expiry in the past is refused at creation.
        ctx.post(
            "/v1/api-keys",
            &ctx.operator_key,
            &json!({"name": "x", "role": "operator-viewer", "expires_at": "2001-01-01T00:00:00Z"}),
        )
        .await
        .problem(400, "invalid_request");
    }
);

both_backends!(
    keys_are_stored_hashed_and_shown_once,
    |ctx: TestContext| async move {
        let (secret, id) = ctx.key("operator-viewer", None).await;
        let listed = ctx.get("/v1/api-keys", &ctx.operator_key).await.expect(200);
        let text = listed.to_string();
        assert!(
            !text.contains(&secret),
            "a listing must never contain a secret"
        );
        assert!(text.contains(&id));
        let shown = ctx
            .get(&format!("/v1/api-keys/{id}"), &ctx.operator_key)
            .await
            .expect(200);
        assert!(shown.get("secret").is_none());
        assert!(secret.starts_with(shown["prefix"].as_str().unwrap()));
        // What the database holds is a hash, not the secret.
        let rows: Vec<(String,)> = sqlx::query_as("SELECT secret_hash FROM api_keys")
            .fetch_all(ctx.svc.store().pool())
            .await
            .unwrap();
        assert!(
            rows.iter()
                .all(|(h,)| h.len() == 64 && !h.contains(&secret))
        );
        // Using a key records its last use (written in batches by the periodic work).
        ctx.get("/v1/sites", &secret).await.expect(200);
        ctx.svc.flush_key_use().await.unwrap();
        let shown = ctx
            .get(&format!("/v1/api-keys/{id}"), &ctx.operator_key)
            .await
            .expect(200);
        assert!(shown["last_used_at"].is_string(), "{shown}");
    }
);

both_backends!(
    roles_follow_the_authorization_table,
    |ctx: TestContext| async move {
        let t = ctx.tenant("acme").await;
        let tid = t["id"].as_str().unwrap();
        let (viewer, _) = ctx.key("operator-viewer", None).await;
        let (tadmin, _) = ctx.key("tenant-admin", Some(tid)).await;
        let (member, _) = ctx.key("tenant-member", Some(tid)).await;
        let (agent, _) = ctx.key("node-agent", None).await;

        // Operator-viewer reads everything, changes nothing.
        for p in [
            "/v1/sites",
            "/v1/nodes",
            "/v1/blocks",
            "/v1/tenants",
            "/v1/api-keys",
            "/v1/events",
            "/v1/gpu-models",
        ] {
            ctx.get(p, &viewer).await.expect(200);
        }
        ctx.post("/v1/tenants", &viewer, &json!({"name": "nope"}))
            .await
            .problem(403, "forbidden");
        ctx.post(
            "/v1/api-keys",
            &viewer,
            &json!({"name": "n", "role": "operator-admin"}),
        )
        .await
        .problem(403, "forbidden");

        // Tenant roles cannot see the operator's inventory or change tenants.
        for key in [&tadmin, &member] {
            ctx.get("/v1/nodes", key).await.problem(403, "forbidden");
            ctx.get("/v1/blocks", key).await.problem(403, "forbidden");
            ctx.get("/v1/sites", key).await.expect(200);
            ctx.get("/v1/gpu-models", key).await.expect(200);
            ctx.post("/v1/tenants", key, &json!({"name": "nope"}))
                .await
                .problem(403, "forbidden");
            ctx.patch(
                &format!("/v1/tenants/{tid}"),
                key,
                &json!({"status": "suspended"}),
            )
            .await
            .problem(403, "forbidden");
        }
        // A tenant admin manages its own tenant's keys, never operator keys.
        let v = ctx
            .post(
                "/v1/api-keys",
                &tadmin,
                &json!({"name": "ci", "role": "tenant-member"}),
            )
            .await
            .expect(201);
        assert_eq!(v["tenant_id"], tid);
        ctx.post(
            "/v1/api-keys",
            &tadmin,
            &json!({"name": "x", "role": "operator-admin"}),
        )
        .await
        .problem(403, "forbidden");
        ctx.post(
            "/v1/api-keys",
            &member,
            &json!({"name": "x", "role": "tenant-member"}),
        )
        .await
        .problem(403, "forbidden");
        // Node agents have no business with the management API.
        ctx.get("/v1/tenants", &agent)
            .await
            .problem(403, "forbidden");
        ctx.get("/v1/sites", &agent).await.problem(403, "forbidden");
        // Fleet import is for operator admins only.
        ctx.send(
            Method::POST,
            "/v1/fleet/import",
            Some(&viewer),
            Some(("application/toml", b"".to_vec())),
            &[],
        )
        .await
        .problem(403, "forbidden");
    }
);

both_backends!(
    another_tenants_resources_read_as_not_found,
    |ctx: TestContext| async move {
        let a = ctx.tenant("tenant-a").await;
        let b = ctx.tenant("tenant-b").await;
        let (a_admin, _) = ctx.key("tenant-admin", a["id"].as_str()).await;
        let (b_admin, b_key_id) = ctx.key("tenant-admin", b["id"].as_str()).await;
        let b_id = b["id"].as_str().unwrap();

        // Reads of B's tenant, by id and by name.
        ctx.get(&format!("/v1/tenants/{b_id}"), &a_admin)
            .await
            .problem(404, "not_found");
        ctx.get("/v1/tenants/tenant-b", &a_admin)
            .await
            .problem(404, "not_found");
        // B's key: read, revoke.
        ctx.get(&format!("/v1/api-keys/{b_key_id}"), &a_admin)
            .await
            .problem(404, "not_found");
        ctx.delete(&format!("/v1/api-keys/{b_key_id}"), &a_admin)
            .await
            .problem(404, "not_found");
        ctx.get("/v1/sites", &b_admin).await.expect(200); // still works: nothing was revoked
        // Listing B's keys or events by naming B.
        ctx.get(&format!("/v1/api-keys?tenant={b_id}"), &a_admin)
            .await
            .problem(404, "not_found");
        ctx.get(&format!("/v1/events?tenant={b_id}"), &a_admin)
            .await
            .problem(404, "not_found");
        // Minting a key into B.
        ctx.post(
            "/v1/api-keys",
            &a_admin,
            &json!({"name": "x", "role": "tenant-member", "tenant_id": b_id}),
        )
        .await
        .problem(404, "not_found");

        // Lists show only A's own things.
        let tenants = ctx.get("/v1/tenants", &a_admin).await.expect(200);
        let names: Vec<&str> = tenants["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["tenant-a"]);
        let keys = ctx.get("/v1/api-keys", &a_admin).await.expect(200);
        assert!(
            keys["items"]
                .as_array()
                .unwrap()
                .iter()
                .all(|k| k["tenant_id"] == a["id"])
        );
        let events = ctx.get("/v1/events", &a_admin).await.expect(200);
        let evs = events["items"].as_array().unwrap();
        assert!(!evs.is_empty());
        assert!(evs.iter().all(|e| e["tenant_id"] == a["id"]), "{events}");
        // The operator sees both.
        let all = ctx.get("/v1/tenants", &ctx.operator_key).await.expect(200);
        assert_eq!(all["items"].as_array().unwrap().len(), 2);
    }
);

/// Every operation in the OpenAPI document except the health checks refuses a request
/// without a key: a new endpoint that forgets authentication fails here.
#[tokio::test]
async fn every_api_operation_requires_a_key() {
    let ctx = TestContext::start(crate::ctx::Db::Sqlite).await;
    let doc: serde_json::Value = serde_json::from_str(&neocloud_api::openapi_json()).unwrap();
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let public = path == "/healthz" || path == "/readyz";
            assert_eq!(
                op.get("security").is_none(),
                public,
                "{method} {path}: security must be declared"
            );
            if public {
                continue;
            }
            let concrete = path
                .replace("{name}", "H100-SXM-80GB")
                .replace("{site}", "x")
                .replace("{id}", "x")
                .replace("{node}", "x")
                .replace("{tenant}", "x");
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            ctx.send(
                m,
                &concrete,
                None,
                Some(("application/json", b"{}".to_vec())),
                &[],
            )
            .await
            .problem(401, "unauthenticated");
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} operations found");
}
