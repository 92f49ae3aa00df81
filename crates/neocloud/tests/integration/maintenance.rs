//! Planned maintenance of a leaf group, through HTTP on both databases with a manual clock:
//! the window's nodes take no new work from the moment it is announced, a gang moves off
//! them at once (to a free node of its pod), single-node work gets a notice and is stopped
//! when the window begins, each tenant concerned gets a `maintenance.scheduled` event, and
//! the nodes return to service when it ends. A window called off withdraws its notices.

use reqwest::Method;
use serde_json::{Value, json};

use crate::ctx::Db;
use crate::gang_repair::{Gang, at, nodes, pod};

/// The leaf group of a node named `w-pP-lL-nN`.
fn leaf(node: &str) -> &str {
    &node[..7]
}

/// The leaf groups of `nodes`, each with how many of them it holds.
fn leaves_by_count(nodes: &[String]) -> Vec<(String, usize)> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for n in nodes {
        match out.iter_mut().find(|l| l.0 == leaf(n)) {
            Some(l) => l.1 += 1,
            None => out.push((leaf(n).to_string(), 1)),
        }
    }
    out
}

async fn schedule(g: &Gang, body: &Value, idem: &str) -> crate::ctx::Resp {
    g.ctx
        .send(
            Method::POST,
            "/v1/maintenance",
            Some(&g.ctx.operator_key),
            Some(("application/json", serde_json::to_vec(body).unwrap())),
            &[("Idempotency-Key", idem)],
        )
        .await
}

async fn window(g: &Gang, id: &str) -> Value {
    g.ctx
        .get(&format!("/v1/maintenance/{id}"), &g.ctx.operator_key)
        .await
        .expect(200)
}

/// The case: maintenance of a leaf group with an hour's notice.
async fn a_leaf_group_goes_into_maintenance_with_notice(db: Db) {
    let Some(g) = Gang::start(db).await else {
        return;
    };
    // A 30-node gang over a pod: one leaf group whole, part of another.
    let gang = g
        .launch(json!({"gpu_model": "H100-SXM-80GB", "nodes": 30, "gang_level": "pod"}))
        .await;
    let gang_id = gang["id"].as_str().unwrap().to_string();
    let before = nodes(&gang);
    let the_pod = pod(&before[0]).to_string();
    // The leaf group the gang only partly fills is the one to maintain.
    let target = leaves_by_count(&before)
        .into_iter()
        .min_by_key(|l| l.1)
        .unwrap()
        .0;
    let on_target = before.iter().filter(|n| leaf(n) == target).count();
    assert!(on_target > 0 && on_target < 24, "{before:?}");
    // Single-node work lands beside it (best fit fills the part-used leaf group first).
    let single = g
        .launch(json!({"gpu_model": "H100-SXM-80GB", "gpus": 8}))
        .await;
    let single_id = single["id"].as_str().unwrap().to_string();
    let single_node = nodes(&single)[0].clone();
    assert_eq!(leaf(&single_node), target, "{single}");

    // An hour's notice, two hours of work.
    g.clock.set(at(1000));
    let body = json!({"site": "west", "block": target, "start_at": at(4600).to_string(),
                      "end_at": at(11_800).to_string(), "reason": "replace leaf switch firmware"});
    let w = schedule(&g, &body, "mnt-1").await.expect(201);
    let wid = w["id"].as_str().unwrap().to_string();
    assert!(wid.starts_with("mnt_"), "{w}");
    assert_eq!(w["state"], "scheduled");
    assert_eq!(w["nodes"].as_array().unwrap().len(), 24);
    assert_eq!(w["notified_instances"], 2, "{w}");
    // The same request again with its key: the same window, nothing new.
    let again = schedule(&g, &body, "mnt-1").await;
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.body["id"], wid.as_str());
    // Another window over the same nodes is refused.
    let p = schedule(&g, &body, "mnt-2").await.problem(409, "conflict");
    assert!(p["detail"].as_str().unwrap().contains(&wid), "{p}");

    // The nodes are cordoned now.
    for n in w["nodes"].as_array().unwrap() {
        let st = g.node_state(n.as_str().unwrap()).await;
        assert_eq!(st, "cordoned", "{n}");
    }
    // The gang moved off at once, onto nodes of its pod outside the leaf group.
    let moved = g.instance(&gang_id).await;
    assert_eq!(moved["state"], "running", "{moved}");
    let now = nodes(&moved);
    assert_eq!(now.len(), 30);
    assert!(now.iter().all(|n| leaf(n) != target), "{now:?}");
    assert!(now.iter().all(|n| pod(n) == the_pod), "{now:?}");
    assert_eq!(
        g.events("instance.node_replaced").await.len(),
        on_target,
        "one swap per node it had there"
    );
    // The single-node instance has its notice: it stops when the window begins.
    let s = g.instance(&single_id).await;
    assert_eq!(s["state"], "preempting", "{s}");
    assert_eq!(s["preempt_at"], at(4600).to_string(), "{s}");
    assert!(s["reason"].as_str().unwrap().contains(&wid), "{s}");
    // The tenant's log names the window and what happens to each instance.
    let ev = g.events("maintenance.scheduled").await;
    assert_eq!(ev.len(), 2, "{ev:?}");
    let outcome = |id: &str| {
        ev.iter()
            .find(|e| e["resource_id"] == id)
            .map(|e| e["after"]["outcome"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(outcome(&gang_id), "moved");
    assert_eq!(outcome(&single_id), "stopped_at_start");
    assert!(
        ev.iter()
            .all(|e| e["after"]["maintenance_id"] == wid.as_str())
    );

    // Nothing new is placed inside the window: eight more single nodes go elsewhere,
    // though best fit would otherwise fill the part-used leaf group first.
    for _ in 0..8 {
        let i = g
            .launch(json!({"gpu_model": "H100-SXM-80GB", "gpus": 8}))
            .await;
        assert_eq!(i["state"], "running", "{i}");
        assert_ne!(leaf(&nodes(&i)[0]), target, "{i}");
    }

    // The window begins: the single-node instance is stopped, the nodes are in maintenance.
    g.clock.set(at(4600));
    g.ctx.svc.tick(at(4600)).await.unwrap();
    g.ctx.svc.health_tick(at(4600)).await.unwrap();
    let s = g.instance(&single_id).await;
    assert_eq!(s["state"], "preempted", "{s}");
    assert_eq!(g.gpu_seconds(&single_id).await, 8 * 4600);
    assert_eq!(window(&g, &wid).await["state"], "in_progress");
    assert_eq!(g.node_state(&single_node).await, "maintenance");
    // The gang ran on through it, whole.
    let gang_now = g.instance(&gang_id).await;
    assert_eq!(gang_now["state"], "running");
    assert_eq!(gang_now["gpu_count"], 240);

    // It ends: nodes without an agent return to service at once.
    g.clock.set(at(11_800));
    g.ctx.svc.health_tick(at(11_800)).await.unwrap();
    let done = window(&g, &wid).await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(g.node_state(&single_node).await, "available");
    let list = g
        .ctx
        .get("/v1/maintenance?state=completed", &g.ctx.operator_key)
        .await
        .expect(200);
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    // Billing of the gang did not lose a second to the moves.
    g.clock.set(at(12_000));
    g.terminate(&gang_id).await;
    assert_eq!(g.gpu_seconds(&gang_id).await, 240 * 12_000);
}

/// A gang with no free node to move to is repaired when the window begins, as for a
/// failure: it runs short through the window, billed for what it holds, and is whole again
/// when the window ends and its nodes come back.
async fn a_gang_that_cannot_move_yet_runs_short_through_the_window(db: Db) {
    let Some(g) = Gang::start(db).await else {
        return;
    };
    // 70 of a pod's 72 nodes: two are free.
    let gang = g
        .launch(json!({"gpu_model": "H100-SXM-80GB", "nodes": 70, "gang_level": "pod"}))
        .await;
    let id = gang["id"].as_str().unwrap().to_string();
    let before = nodes(&gang);
    let the_pod = pod(&before[0]).to_string();
    // A leaf group the gang fills whole.
    let target = leaves_by_count(&before)
        .into_iter()
        .find(|l| l.1 == 24)
        .unwrap()
        .0;
    g.clock.set(at(1000));
    let w = schedule(
        &g,
        &json!({"site": "west", "block": target, "start_at": at(4600).to_string(),
                "end_at": at(11_800).to_string(), "reason": "leaf switch swap"}),
        "mnt-short",
    )
    .await
    .expect(201);
    let wid = w["id"].as_str().unwrap().to_string();
    // Two nodes moved now, onto the pod's two free nodes; the rest wait for the start.
    assert_eq!(g.events("instance.node_replaced").await.len(), 2);
    let ev = g.events("maintenance.scheduled").await;
    assert_eq!(ev[0]["after"]["outcome"], "moved_at_start", "{ev:?}");
    let i = g.instance(&id).await;
    assert_eq!(i["state"], "running");
    assert_eq!(i["gpu_count"], 560);
    assert_eq!(nodes(&i).iter().filter(|n| leaf(n) == target).count(), 22);
    // The window begins: the 22 nodes go into maintenance, the gang runs on 48 nodes.
    g.clock.set(at(4600));
    g.ctx.svc.tick(at(4600)).await.unwrap();
    g.ctx.svc.health_tick(at(4600)).await.unwrap();
    assert_eq!(window(&g, &wid).await["state"], "in_progress");
    let i = g.instance(&id).await;
    assert_eq!(i["state"], "running", "{i}");
    assert_eq!(i["gpu_count"], 384, "{i}");
    assert!(nodes(&i).iter().all(|n| leaf(n) != target));
    // It ends: the nodes come back (no agent: straight to service) and the gang is whole
    // again, inside its pod.
    g.clock.set(at(11_800));
    g.ctx.svc.health_tick(at(11_800)).await.unwrap();
    g.ctx.svc.tick(at(11_800)).await.unwrap();
    assert_eq!(window(&g, &wid).await["state"], "completed");
    let i = g.instance(&id).await;
    assert_eq!(i["gpu_count"], 560, "{i}");
    assert!(nodes(&i).iter().all(|n| pod(n) == the_pod));
    g.clock.set(at(12_000));
    g.terminate(&id).await;
    assert_eq!(
        g.gpu_seconds(&id).await,
        560 * 4600 + 384 * 7200 + 560 * 200
    );
}

/// A window called off before it begins withdraws its notices and uncordons its nodes;
/// bad requests are refused and change nothing.
async fn a_window_called_off_and_bad_requests(db: Db) {
    let Some(g) = Gang::start(db).await else {
        return;
    };
    let single = g
        .launch(json!({"gpu_model": "H100-SXM-80GB", "gpus": 8}))
        .await;
    let id = single["id"].as_str().unwrap().to_string();
    let node = nodes(&single)[0].clone();
    g.clock.set(at(100));
    let op = g.ctx.operator_key.clone();
    let start = at(3700).to_string();
    let end = at(7300).to_string();
    // Bad input, each refused with the field named.
    let bad = [
        (
            json!({"nodes": [node], "start_at": start, "end_at": end}),
            "reason",
        ),
        (
            json!({"nodes": [node], "block": "w-p1-l1", "site": "west", "start_at": start,
                   "end_at": end, "reason": "x"}),
            "nodes",
        ),
        (
            json!({"start_at": start, "end_at": end, "reason": "x"}),
            "nodes",
        ),
        (
            json!({"nodes": ["no-such-node"], "start_at": start, "end_at": end, "reason": "x"}),
            "nodes[0]",
        ),
        (
            json!({"block": "w-p9", "site": "west", "start_at": start, "end_at": end,
                   "reason": "x"}),
            "block",
        ),
        (
            json!({"nodes": [node], "start_at": end, "end_at": start, "reason": "x"}),
            "end_at",
        ),
        (
            json!({"nodes": [node], "start_at": at(-86_400).to_string(), "end_at": end,
                   "reason": "x"}),
            "start_at",
        ),
        (
            json!({"nodes": [node], "start_at": start, "end_at": at(90 * 86_400).to_string(),
                   "reason": "x"}),
            "end_at",
        ),
        (
            json!({"nodes": [node], "start_at": start, "end_at": end, "reason": "   "}),
            "reason",
        ),
    ];
    for (body, field) in bad {
        let r = g.ctx.post("/v1/maintenance", &op, &body).await;
        let status = r.status.as_u16();
        let p = r.body;
        assert!(status == 400 || status == 422, "{status} {p}");
        assert_eq!(p["status"], status);
        assert!(
            p.to_string().contains(field),
            "{body}: expected the field {field} named in {p}"
        );
    }
    // Wrong types, unknown fields, a tenant's key.
    g.ctx
        .post(
            "/v1/maintenance",
            &op,
            &json!({"nodes": node, "start_at": start, "end_at": end, "reason": "x"}),
        )
        .await
        .expect(400);
    g.ctx
        .post(
            "/v1/maintenance",
            &op,
            &json!({"nodes": [node], "start_at": start, "end_at": end, "reason": "x",
                    "force": true}),
        )
        .await
        .expect(400);
    g.ctx
        .post(
            "/v1/maintenance",
            &g.key,
            &json!({"nodes": [node], "start_at": start, "end_at": end, "reason": "x"}),
        )
        .await
        .problem(403, "forbidden");
    g.ctx
        .get("/v1/maintenance/mnt_00000000000000000000000000", &op)
        .await
        .expect(404);
    assert_eq!(g.node_state(&node).await, "allocated");
    assert_eq!(g.instance(&id).await["state"], "running");

    // Scheduled, then called off: the instance runs on, the node takes work again.
    let w = g
        .ctx
        .post(
            "/v1/maintenance",
            &op,
            &json!({"nodes": [node], "start_at": start, "end_at": end, "reason": "BMC update"}),
        )
        .await
        .expect(201);
    let wid = w["id"].as_str().unwrap().to_string();
    assert_eq!(g.instance(&id).await["state"], "preempting");
    assert_eq!(g.node_state(&node).await, "cordoned");
    g.clock.set(at(200));
    let c = g
        .ctx
        .post(&format!("/v1/maintenance/{wid}/cancel"), &op, &json!({}))
        .await
        .expect(200);
    assert_eq!(c["state"], "cancelled", "{c}");
    let i = g.instance(&id).await;
    assert_eq!(i["state"], "running", "{i}");
    assert!(i["preempt_at"].is_null(), "{i}");
    assert_eq!(g.node_state(&node).await, "allocated");
    // Past its start nothing happens: it was called off.
    g.clock.set(at(3700));
    g.ctx.svc.tick(at(3700)).await.unwrap();
    g.ctx.svc.health_tick(at(3700)).await.unwrap();
    assert_eq!(g.instance(&id).await["state"], "running");
    // A cancelled window cannot be cancelled again.
    g.ctx
        .post(&format!("/v1/maintenance/{wid}/cancel"), &op, &json!({}))
        .await
        .problem(409, "conflict");
    g.terminate(&id).await;
    assert_eq!(g.gpu_seconds(&id).await, 8 * 3700);
}

crate::on_both!(
    a_leaf_group_goes_into_maintenance_with_notice,
    a_gang_that_cannot_move_yet_runs_short_through_the_window,
    a_window_called_off_and_bad_requests,
);

/// The CLI: schedule a leaf group's window with a relative start and a length, list, show,
/// call it off; usage errors exit 2, an unknown window 3, and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_schedules_and_cancels_maintenance() {
    use crate::cli::{neocloud, stderr, stdout};
    let Some(g) = Gang::start(Db::Sqlite).await else {
        return;
    };
    // The server runs on a manual clock, so times are given in full (`+1h` counts from
    // the real clock; its parsing has unit tests).
    let start = at(3600).to_string();
    let single = g
        .launch(json!({"gpu_model": "H100-SXM-80GB", "gpus": 8}))
        .await;
    let node = nodes(&single)[0].clone();
    let op = g.ctx.operator_key.clone();
    let run = async |args: &[&str]| neocloud(&g.ctx, &op, args).await;

    // Usage errors, each with a non-zero exit and a message naming what is wrong.
    for (args, want) in [
        (
            vec![
                "maintenance",
                "schedule",
                "--start",
                &start,
                "--for",
                "2h",
                "--reason",
                "x",
            ],
            "--node",
        ),
        (
            vec![
                "maintenance",
                "schedule",
                "--node",
                &node,
                "--start",
                &start,
                "--for",
                "2w",
                "--reason",
                "x",
            ],
            "--for",
        ),
        (
            vec![
                "maintenance",
                "schedule",
                "--node",
                &node,
                "--start",
                "tomorrow",
                "--for",
                "2h",
                "--reason",
                "x",
            ],
            "--start",
        ),
        (
            vec![
                "maintenance",
                "schedule",
                "--node",
                &node,
                "--start",
                &start,
                "--reason",
                "x",
            ],
            "--end or --for",
        ),
        (
            vec![
                "maintenance",
                "schedule",
                "--node",
                &node,
                "--start",
                &start,
                "--for",
                "60d",
                "--reason",
                "x",
            ],
            "end_at",
        ),
    ] {
        let o = run(&args).await;
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
    }
    let o = run(&["maintenance", "get", "mnt_00000000000000000000000000"]).await;
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(g.node_state(&node).await, "allocated");

    // The node's leaf group, by path, an hour from now for two hours.
    let block = leaf(&node).to_string();
    let o = run(&[
        "-o",
        "json",
        "maintenance",
        "schedule",
        "--site",
        "west",
        "--block",
        &block,
        "--start",
        &start,
        "--for",
        "2h",
        "--reason",
        "leaf switch firmware",
        "--idempotency-key",
        "cli-1",
    ])
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let w: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let wid = w["id"].as_str().unwrap().to_string();
    assert_eq!(w["state"], "scheduled");
    assert_eq!(w["nodes"].as_array().unwrap().len(), 24);
    let start: neocloud_types::Timestamp = w["start_at"].as_str().unwrap().parse().unwrap();
    let end: neocloud_types::Timestamp = w["end_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(end, start.plus_seconds(7200));
    assert_eq!(g.node_state(&node).await, "cordoned");
    let i = g.instance(single["id"].as_str().unwrap()).await;
    assert_eq!(i["state"], "preempting", "{i}");
    assert_eq!(i["preempt_at"], w["start_at"]);

    // The table names it; -q prints the id only; get shows it.
    let o = run(&["maintenance", "list", "--state", "scheduled"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    assert!(
        table.contains("NOTIFIED") && table.contains(&wid),
        "{table}"
    );
    assert!(table.contains("leaf switch firmware"), "{table}");
    let o = run(&["-q", "maintenance", "list"]).await;
    assert_eq!(stdout(&o).trim(), wid);
    let o = run(&["maintenance", "list", "--state", "sideways"]).await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = run(&["maintenance", "get", &wid]).await;
    let shown = stdout(&o);
    assert!(
        shown.contains("24: ") && shown.contains("-o json"),
        "{shown}"
    );
    let o = run(&["-o", "json", "maintenance", "get", &wid]).await;
    assert!(stdout(&o).contains(&node), "{}", stdout(&o));

    // Called off: the node takes work again, the notice is withdrawn.
    let o = run(&["-o", "json", "maintenance", "cancel", &wid]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let c: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(c["state"], "cancelled");
    assert_eq!(g.node_state(&node).await, "allocated");
    assert_eq!(
        g.instance(single["id"].as_str().unwrap()).await["state"],
        "running"
    );
    let o = run(&["maintenance", "cancel", &wid]).await;
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
}
