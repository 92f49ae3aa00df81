//! Fleet import through the API: validation with line numbers, idempotent re-import,
//! updates, removals, and the refusal to remove a node that holds GPUs.

use serde_json::Value;

use crate::both_backends;
use crate::ctx::TestContext;

const SMALL: &str = r#"
[[sites]]
name = "lab-1"
region = "eu-west"
power_mw = 2
pue = 1.2

[[sites.node_groups]]
gpu_model = "H100-SXM-80GB"
gpus = 8
nodes_per_block = 4
layout = [
  { kind = "pod", count = 2, name = "p{n}" },
  { kind = "leaf_group", count = 2, name = "{parent}-l{n}" },
]
name = "{block}-n{n}"

[[sites.nodes]]
name = "odd-1"
gpu_model = "L40S"
gpus = 2
"#;

fn items(v: &Value) -> &Vec<Value> {
    v["items"].as_array().unwrap()
}

both_backends!(
    import_lists_and_filters_the_fleet,
    |ctx: TestContext| async move {
        let k = &ctx.operator_key;
        let r = ctx.import(SMALL).await.expect(200);
        assert_eq!(r["nodes_added"], 17);
        assert_eq!(r["gpus_added"], 16 * 8 + 2);
        assert_eq!(r["sites_added"], 1);
        assert_eq!(r["blocks_added"], 6);

        let site = ctx.get("/v1/sites/lab-1", k).await.expect(200);
        assert_eq!(site["node_count"], 17);
        assert_eq!(site["gpu_count"], 130);
        assert_eq!(site["power_budget_watts"], 2_000_000);
        assert_eq!(site["pue_milli"], 1200);
        let by_model: Vec<(String, i64)> = site["gpus_by_model"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["gpu_model"].as_str().unwrap().to_string(),
                    m["gpus"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            by_model,
            vec![("H100-SXM-80GB".into(), 128), ("L40S".into(), 2)]
        );

        // Blocks roll node totals up to their parents.
        let blocks = ctx.get("/v1/blocks?site=lab-1", k).await.expect(200);
        let p1 = items(&blocks).iter().find(|b| b["path"] == "p1").unwrap();
        assert_eq!(p1["kind"], "pod");
        assert_eq!(p1["node_count"], 8);
        let leaf = items(&blocks)
            .iter()
            .find(|b| b["path"] == "p1/p1-l2")
            .unwrap();
        assert_eq!(leaf["node_count"], 4);
        assert_eq!(leaf["parent_id"], p1["id"]);
        let one = ctx
            .get(&format!("/v1/blocks/{}", leaf["id"].as_str().unwrap()), k)
            .await
            .expect(200);
        assert_eq!(one["gpu_count"], 32);

        // Filters: by block (nested included), by model, by state.
        let in_p2 = ctx
            .get("/v1/nodes?site=lab-1&block=p2", k)
            .await
            .expect(200);
        assert_eq!(items(&in_p2).len(), 8);
        assert!(
            items(&in_p2)
                .iter()
                .all(|n| n["block_path"].as_str().unwrap().starts_with("p2/"))
        );
        let by_path = ctx
            .get("/v1/nodes?site=lab-1&block=p2/p2-l1", k)
            .await
            .expect(200);
        assert_eq!(items(&by_path).len(), 4);
        let l40 = ctx.get("/v1/nodes?gpu_model=L40S", k).await.expect(200);
        assert_eq!(items(&l40).len(), 1);
        assert_eq!(items(&l40)[0]["block_path"], "");
        let avail = ctx
            .get("/v1/nodes?state=available&limit=1000", k)
            .await
            .expect(200);
        assert_eq!(items(&avail).len(), 17);
        let failed = ctx.get("/v1/nodes?state=failed", k).await.expect(200);
        assert_eq!(items(&failed).len(), 0);

        // Pagination visits every node exactly once, in name order.
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/nodes?limit=5&cursor={c}"),
                None => "/v1/nodes?limit=5".to_string(),
            };
            let page = ctx.get(&path, k).await.expect(200);
            assert!(items(&page).len() <= 5);
            seen.extend(
                items(&page)
                    .iter()
                    .map(|n| n["name"].as_str().unwrap().to_string()),
            );
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(seen, sorted);
        assert_eq!(seen.len(), 17);

        // One node, by name and by id, with its GPUs.
        let node = ctx.get("/v1/nodes/p1-l1-n1", k).await.expect(200);
        assert_eq!(node["gpus"].as_array().unwrap().len(), 8);
        assert_eq!(node["gpus"][7]["index"], 7);
        assert_eq!(node["gpus"][0]["health"], "healthy");
        let by_id = ctx
            .get(&format!("/v1/nodes/{}", node["id"].as_str().unwrap()), k)
            .await
            .expect(200);
        assert_eq!(by_id, node);
        // Lists do not carry GPUs.
        assert!(items(&avail)[0].get("gpus").is_none());
    }
);

both_backends!(
    reimport_is_idempotent_and_applies_changes,
    |ctx: TestContext| async move {
        let k = &ctx.operator_key;
        ctx.import(SMALL).await.expect(200);
        let before = ctx.get("/v1/nodes/p1-l1-n1", k).await.expect(200);
        let again = ctx.import(SMALL).await.expect(200);
        for f in [
            "nodes_added",
            "nodes_updated",
            "nodes_removed",
            "blocks_added",
            "blocks_removed",
            "sites_added",
            "sites_updated",
            "gpus_added",
        ] {
            assert_eq!(again[f], 0, "{f} in {again}");
        }
        assert_eq!(again["nodes_unchanged"], 17);
        assert_eq!(
            ctx.get("/v1/nodes/p1-l1-n1", k).await.expect(200),
            before,
            "ids survive re-import"
        );

        // Fewer nodes per leaf group, a changed odd node and a new site budget.
        let changed = SMALL
            .replace("nodes_per_block = 4", "nodes_per_block = 3")
            .replace("gpus = 2", "gpus = 4")
            .replace("power_mw = 2", "power_mw = 3");
        let dry = ctx
            .send(
                reqwest::Method::POST,
                "/v1/fleet/import?dry_run=true",
                Some(k),
                Some(("application/toml", changed.as_bytes().to_vec())),
                &[],
            )
            .await
            .expect(200);
        assert_eq!(dry["dry_run"], true);
        assert_eq!(dry["nodes_removed"], 4);
        let still = ctx.get("/v1/sites/lab-1", k).await.expect(200);
        assert_eq!(still["node_count"], 17, "a dry run writes nothing");

        let r = ctx.import(&changed).await.expect(200);
        assert_eq!(r["nodes_removed"], 4);
        assert_eq!(r["nodes_updated"], 1);
        assert_eq!(r["sites_updated"], 1);
        assert_eq!(r["gpus_added"], 4);
        assert_eq!(r["gpus_removed"], 4 * 8 + 2);
        let odd = ctx.get("/v1/nodes/odd-1", k).await.expect(200);
        assert_eq!(odd["gpus"].as_array().unwrap().len(), 4);
        let site = ctx.get("/v1/sites/lab-1", k).await.expect(200);
        assert_eq!(site["node_count"], 13);
        assert_eq!(site["power_budget_watts"], 3_000_000);
        ctx.get("/v1/nodes/p1-l1-n4", k)
            .await
            .problem(404, "not_found");

        // The import is in the audit trail.
        let ev = ctx.get("/v1/events?action=fleet.", k).await.expect(200);
        assert_eq!(
            items(&ev).len(),
            3,
            "two imports and no event for the dry run"
        );
    }
);

both_backends!(
    import_refuses_to_remove_a_node_that_holds_gpus,
    |ctx: TestContext| async move {
        let k = &ctx.operator_key;
        ctx.import(SMALL).await.expect(200);
        let node = ctx.get("/v1/nodes/odd-1", k).await.expect(200);
        // Until instances exist, a held GPU is a row with a holder; the allocator will set it.
        sqlx::query("UPDATE gpus SET holder = 'inst_test' WHERE node_id = $1 AND idx = 0")
            .bind(node["id"].as_str().unwrap())
            .execute(ctx.svc.store().pool())
            .await
            .unwrap();
        let without_odd = SMALL.split("[[sites.nodes]]").next().unwrap().to_string();
        let b = ctx
            .import(&without_odd)
            .await
            .problem(422, "invalid_fleet_file");
        assert!(b["detail"].as_str().unwrap().contains("odd-1"), "{b}");
        let reshaped = SMALL.replace("gpus = 2", "gpus = 1");
        ctx.import(&reshaped)
            .await
            .problem(422, "invalid_fleet_file");
        // Nothing changed.
        let after = ctx.get("/v1/nodes/odd-1", k).await.expect(200);
        assert_eq!(after["gpu_count"], 2);
        assert_eq!(
            ctx.get("/v1/sites/lab-1", k).await.expect(200)["node_count"],
            17
        );
    }
);

both_backends!(
    fleet_file_errors_name_line_and_field,
    |ctx: TestContext| async move {
        let k = &ctx.operator_key;
        let bad = "[[sites]]\nname = \"s1\"\nregion = \"r\"\npower_mw = 1\n\n[[sites.nodes]]\nname = \"n1\"\ngpu_model = \"H900\"\ngpus = 8\n";
        let b = ctx.import(bad).await.problem(422, "invalid_fleet_file");
        let errs = b["errors"].as_array().unwrap();
        let e = errs
            .iter()
            .find(|e| e["message"].as_str().unwrap().contains("H900"))
            .unwrap();
        assert_eq!(e["line"], 8, "{b}");
        assert!(e["field"].as_str().unwrap().contains("gpu_model"), "{b}");

        let syntax = "[[sites]]\nname = \"s1\"\nregion = \n";
        let b = ctx.import(syntax).await.problem(422, "invalid_fleet_file");
        assert_eq!(b["errors"][0]["line"], 3, "{b}");

        let dup = "[[sites]]\nname = \"s1\"\nregion = \"r\"\npower_mw = 1\n[[sites.nodes]]\nname = \"n1\"\ngpu_model = \"L40S\"\ngpus = 1\n[[sites.nodes]]\nname = \"n1\"\ngpu_model = \"L40S\"\ngpus = 1\n";
        let b = ctx.import(dup).await.problem(422, "invalid_fleet_file");
        assert!(
            b["errors"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["line"] == 10),
            "{b}"
        );

        let zero = "[[sites]]\nname = \"s1\"\nregion = \"r\"\npower_mw = 1\n[[sites.nodes]]\nname = \"n1\"\ngpu_model = \"L40S\"\ngpus = -2\n";
        let b = ctx.import(zero).await.problem(422, "invalid_fleet_file");
        assert_eq!(b["errors"][0]["line"], 8, "{b}");

        let over = "[[sites]]\nname = \"s1\"\nregion = \"r\"\npower_mw = 0.01\n[[sites.node_groups]]\ncount = 100\ngpu_model = \"H100-SXM-80GB\"\ngpus = 8\n";
        let b = ctx.import(over).await.problem(422, "invalid_fleet_file");
        assert!(b["detail"].as_str().unwrap().contains("power"), "{b}");

        // Nothing from the failed imports exists.
        let sites = ctx.get("/v1/sites", k).await.expect(200);
        assert_eq!(items(&sites).len(), 0);
    }
);

both_backends!(
    custom_gpu_models_from_file_and_api,
    |ctx: TestContext| async move {
        let k = &ctx.operator_key;
        let file = "[[gpu_models]]\nname = \"T4\"\nvendor = \"NVIDIA\"\nmemory_gib = 16\ntdp_watts = 70\n\n[[sites]]\nname = \"edge\"\nregion = \"r\"\npower_mw = 1\n[[sites.nodes]]\nname = \"t4-1\"\ngpu_model = \"T4\"\ngpus = 4\n";
        let r = ctx.import(file).await.expect(200);
        assert_eq!(r["gpu_models_added"], 1);
        let m = ctx.get("/v1/gpu-models/T4", k).await.expect(200);
        assert_eq!(m["builtin"], false);
        assert_eq!(m["tdp_watts"], 70);
        let created = ctx
        .post("/v1/gpu-models", k, &serde_json::json!({"name": "MI325X", "vendor": "AMD", "memory_gib": 256, "tdp_watts": 1000}))
        .await
        .expect(201);
        assert_eq!(created["name"], "MI325X");
        // MI3xx is all-to-all by its name; a board may say otherwise, or nothing sensible.
        assert_eq!(created["topology"], "nvswitch");
        let pcie = ctx
            .post("/v1/gpu-models", k, &serde_json::json!({"name": "MI325X-OAM4", "memory_gib": 256, "tdp_watts": 1000, "topology": "groups:2,4"}))
            .await
            .expect(201);
        assert_eq!(pcie["topology"], "groups:2,4");
        let again = ctx.get("/v1/gpu-models/MI325X-OAM4", k).await.expect(200);
        assert_eq!(again["topology"], "groups:2,4");
        let bad = ctx
            .post("/v1/gpu-models", k, &serde_json::json!({"name": "X1", "memory_gib": 1, "tdp_watts": 1, "topology": "groups:3"}))
            .await
            .problem(400, "invalid_request");
        assert!(
            bad["detail"].as_str().unwrap().contains("topology"),
            "{bad}"
        );
        // A built-in cannot be redefined by a file.
        let redefine = "[[gpu_models]]\nname = \"H100-SXM-80GB\"\nvendor = \"NVIDIA\"\nmemory_gib = 81\ntdp_watts = 700\n";
        ctx.import(redefine)
            .await
            .problem(422, "invalid_fleet_file");
    }
);

/// The node list of the public Alibaba GPU trace (1,213 heterogeneous nodes, 6,212 GPUs of
/// seven models, 2 or 8 GPUs a node) imports through the API as a fleet file, and its nodes
/// take instances of their own models.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alibaba_trace_fleet_imports_and_places() {
    let ctx = TestContext::start(crate::ctx::Db::Sqlite).await;
    let k = &ctx.operator_key;
    let file = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/alibaba-gpu-v2023.fleet.toml"
    ))
    .unwrap();
    let r = ctx.import(&file).await.expect(200);
    assert_eq!(r["nodes_added"], 1213);
    assert_eq!(r["gpus_added"], 6212);
    let site = ctx.get("/v1/sites/alibaba-openb", k).await.expect(200);
    assert_eq!(site["gpu_count"], 6212);
    assert_eq!(site["gpus_by_model"].as_array().unwrap().len(), 7);
    let t = ctx.tenant("trace").await;
    let v100 = ctx
        .post(
            "/v1/instances",
            k,
            &serde_json::json!({"tenant_id": t["id"], "gpu_model": "V100M32", "gpus": 2}),
        )
        .await
        .expect(201);
    assert_eq!(v100["state"], "running");
    let node = v100["placement"][0]["node"].as_str().unwrap();
    assert_eq!(
        ctx.get(&format!("/v1/nodes/{node}"), k).await.expect(200)["gpu_model"],
        "V100M32"
    );
}

/// Responses are gzipped for clients that ask (browsers do) and plain for those that do not;
/// the gzipped body is the same document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_gzipped_for_clients_that_ask() {
    use std::io::Read;
    let ctx = TestContext::start(crate::ctx::Db::Sqlite).await;
    let url = ctx.url("/v1/openapi.json");
    let http = reqwest::Client::new();
    let plain = http.get(&url).send().await.unwrap();
    assert!(plain.headers().get("content-encoding").is_none());
    let plain = plain.bytes().await.unwrap();
    let gz = http
        .get(&url)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gz.headers()["content-encoding"], "gzip");
    let gz = gz.bytes().await.unwrap();
    assert!(
        gz.len() * 4 < plain.len(),
        "{} vs {}",
        gz.len(),
        plain.len()
    );
    let mut back = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut back)
        .unwrap();
    assert_eq!(back, plain);
}
