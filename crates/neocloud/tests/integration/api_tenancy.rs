//! Tenants and the audit trail, end to end.

use serde_json::json;

use crate::both_backends;
use crate::ctx::TestContext;

both_backends!(
    every_mutation_writes_an_audit_event,
    |ctx: TestContext| async move {
        let k = &ctx.operator_key;
        let t = ctx
        .post("/v1/tenants", k, &json!({"name": "frontier-lab", "display_name": "Frontier Lab", "credit_limit": "5000000"}))
        .await
        .expect(201);
        assert_eq!(t["kind"], "external");
        assert_eq!(t["status"], "active");
        assert_eq!(t["credit_limit"], "5000000");
        let tid = t["id"].as_str().unwrap();
        ctx.patch(
            &format!("/v1/tenants/{tid}"),
            k,
            &json!({"display_name": "Frontier"}),
        )
        .await
        .expect(200);
        let (_, key_id) = ctx.key("tenant-member", Some(tid)).await;
        ctx.delete(&format!("/v1/api-keys/{key_id}"), k)
            .await
            .expect(200);
        // Revoking twice is harmless and writes no second event.
        ctx.delete(&format!("/v1/api-keys/{key_id}"), k)
            .await
            .expect(200);
        ctx.post(
            "/v1/gpu-models",
            k,
            &json!({"name": "X-1", "memory_gib": 8, "tdp_watts": 75}),
        )
        .await
        .expect(201);

        let ev = ctx.get("/v1/events", k).await.expect(200);
        let actions: Vec<&str> = ev["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap())
            .collect();
        // Newest first; the bootstrap key's creation is the oldest.
        assert_eq!(
            actions,
            vec![
                "gpu_model.created",
                "api_key.revoked",
                "api_key.created",
                "tenant.updated",
                "tenant.created",
                "api_key.created"
            ]
        );
        let upd = &ev["items"][3];
        assert_eq!(upd["before"]["display_name"], "Frontier Lab");
        assert_eq!(upd["after"]["display_name"], "Frontier");
        assert_eq!(upd["tenant_id"], tid);
        // The actor is the operator key that did it.
        let me = ctx.get("/v1/api-keys", k).await.expect(200);
        let op_id = me["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["role"] == "operator-admin")
            .unwrap()["id"]
            .clone();
        assert_eq!(upd["actor_key_id"], op_id);
        // Filters.
        let by_res = ctx
            .get(&format!("/v1/events?resource_id={tid}"), k)
            .await
            .expect(200);
        assert_eq!(by_res["items"].as_array().unwrap().len(), 2);
        let by_tenant = ctx
            .get("/v1/events?tenant=frontier-lab", k)
            .await
            .expect(200);
        assert_eq!(by_tenant["items"].as_array().unwrap().len(), 4);
        // Paging through events.
        let p1 = ctx.get("/v1/events?limit=4", k).await.expect(200);
        let cursor = p1["next_cursor"].as_str().unwrap();
        let p2 = ctx
            .get(&format!("/v1/events?limit=4&cursor={cursor}"), k)
            .await
            .expect(200);
        assert_eq!(p2["items"].as_array().unwrap().len(), 2);
        assert!(p2.get("next_cursor").is_none());
    }
);

both_backends!(tenant_pagination_and_kinds, |ctx: TestContext| async move {
    let k = &ctx.operator_key;
    for i in 0..7 {
        ctx.post("/v1/tenants", k, &json!({"name": format!("t{i}"), "kind": if i % 2 == 0 { "internal" } else { "external" }}))
            .await
            .expect(201);
    }
    let p1 = ctx.get("/v1/tenants?limit=3", k).await.expect(200);
    let names = |v: &serde_json::Value| {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&p1), vec!["t0", "t1", "t2"]);
    assert_eq!(p1["items"][0]["kind"], "internal");
    let c = p1["next_cursor"].as_str().unwrap();
    let p2 = ctx
        .get(&format!("/v1/tenants?limit=3&cursor={c}"), k)
        .await
        .expect(200);
    assert_eq!(names(&p2), vec!["t3", "t4", "t5"]);
    let c = p2["next_cursor"].as_str().unwrap();
    let p3 = ctx
        .get(&format!("/v1/tenants?limit=3&cursor={c}"), k)
        .await
        .expect(200);
    assert_eq!(names(&p3), vec!["t6"]);
    assert!(p3.get("next_cursor").is_none());
});

both_backends!(health_and_readiness, |ctx: TestContext| async move {
    let h = ctx
        .send(reqwest::Method::GET, "/healthz", None, None, &[])
        .await
        .expect(200);
    assert_eq!(h, "ok");
    let r = ctx
        .send(reqwest::Method::GET, "/readyz", None, None, &[])
        .await
        .expect(200);
    assert_eq!(r, "ready");
    // Readiness reports a dead database as 503.
    ctx.svc.store().pool().close().await;
    ctx.send(reqwest::Method::GET, "/readyz", None, None, &[])
        .await
        .problem(503, "unavailable");
});
