//! Delivered instances through HTTP on both databases, with agents played by the test: SSH
//! keys, launches with a container or bare-metal delivery, the desired workloads in each
//! heartbeat answer, the lifecycle the agents' reports drive (provisioning → running →
//! stopping → an end), metering from `running`, output, timeouts, and bad input.

use neocloud_types::Timestamp;
use serde_json::{Value, json};

use crate::api_health::{FLEET, beat, inventory};
use crate::both_backends;
use crate::ctx::TestContext;

/// A real ed25519 public key (`ssh-keygen -t ed25519`) and its fingerprint.
const KEY_A: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAII2X/bUI99dqvdvtyPNXdL1arQrCRlcT63YEUGYfnH8q test@host";
const FP_A: &str = "SHA256:WAoHRhdP0FWJ/ttsfLS51FhJ0KZ+GtoxAjbU5BKQ8ZI";
const KEY_B: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK1xmwGOPr81N6hSrwwsAaGviJFMafqzt7fKpKTa+eZ9 other@host";

const HOSTS: [&str; 8] = [
    "e-p1-l1-n1",
    "e-p1-l1-n2",
    "e-p1-l1-n3",
    "e-p1-l1-n4",
    "e-p1-l2-n1",
    "e-p1-l2-n2",
    "e-p1-l2-n3",
    "e-p1-l2-n4",
];

/// Imports the fleet, registers an agent on every node; returns (host, node key) pairs.
async fn fleet(ctx: &TestContext) -> Vec<(String, String)> {
    ctx.import(FLEET).await.expect(200);
    let enroll = ctx.key("node-agent", None).await.0;
    let mut keys = Vec::new();
    for h in HOSTS {
        let r = ctx
            .post("/v1/agent/register", &enroll, &inventory(h))
            .await
            .expect(200);
        keys.push((h.to_string(), r["node_key"].as_str().unwrap().to_string()));
    }
    keys
}

/// A heartbeat of `host` carrying workload reports; returns the answer.
async fn report(ctx: &TestContext, key: &str, host: &str, workloads: Vec<Value>) -> Value {
    let mut b = beat(host, vec![]);
    b["workloads"] = json!(workloads);
    ctx.post("/v1/agent/heartbeat", key, &b).await.expect(200)
}

fn running(id: &str, port: u16, log: &str, offset: u64) -> Value {
    json!({
        "instance_id": id, "phase": "running", "since": Timestamp::now().to_string(),
        "access": {"host": "127.0.0.1", "port": port, "user": "root"},
        "log_offset": offset, "log": log,
    })
}

fn phase(id: &str, phase: &str, reason: &str) -> Value {
    json!({"instance_id": id, "phase": phase, "since": Timestamp::now().to_string(),
           "reason": reason})
}

fn key_of<'a>(keys: &'a [(String, String)], host: &str) -> &'a str {
    &keys.iter().find(|(h, _)| h == host).unwrap().1
}

async fn get(ctx: &TestContext, key: &str, id: &str) -> Value {
    ctx.get(&format!("/v1/instances/{id}"), key)
        .await
        .expect(200)
}

fn container(image: &str) -> Value {
    json!({"mode": "container", "image": image, "command": ["sh", "-c", "echo hi; sleep 1d"],
           "env": {"MODEL": "llama"}})
}

both_backends!(
    ssh_keys_are_a_tenant_resource,
    |ctx: TestContext| async move {
        ctx.tenant("acme").await;
        ctx.tenant("umbrella").await;
        let (acme, _) = ctx.key("tenant-admin", Some("acme")).await;
        let (umb, _) = ctx.key("tenant-admin", Some("umbrella")).await;
        let k = ctx
            .post(
                "/v1/ssh-keys",
                &acme,
                &json!({"name": "laptop", "public_key": format!("  {KEY_A}\n")}),
            )
            .await
            .expect(201);
        assert_eq!(k["fingerprint"], FP_A);
        assert_eq!(k["public_key"], KEY_A);
        // Names are per tenant: another tenant may use the same one.
        ctx.post(
            "/v1/ssh-keys",
            &umb,
            &json!({"name": "laptop", "public_key": KEY_B}),
        )
        .await
        .expect(201);
        ctx.post(
            "/v1/ssh-keys",
            &acme,
            &json!({"name": "laptop", "public_key": KEY_B}),
        )
        .await
        .problem(409, "conflict");
        for (bad, why) in [
            ("ssh-ed25519", "one line"),
            ("ssh-dss AAAAB3NzaC1kc3M=", "not a supported key type"),
            ("ssh-ed25519 AAAA!!!", "base64"),
            (
                "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAII2X/bUI99dqvdvtyPNXdL1arQrCRlcT63YEUGYfnH8q",
                "not a ssh-rsa key",
            ),
        ] {
            let p = ctx
                .post(
                    "/v1/ssh-keys",
                    &acme,
                    &json!({"name": "bad", "public_key": bad}),
                )
                .await
                .problem(400, "invalid_request");
            let d = p["detail"].as_str().unwrap();
            assert!(d.contains(why) || d.contains("TYPE BASE64"), "{bad}: {d}");
        }
        ctx.post(
            "/v1/ssh-keys",
            &acme,
            &json!({"name": "no spaces please", "public_key": KEY_B}),
        )
        .await
        .problem(400, "invalid_request");
        // Each tenant sees its own.
        let list = ctx.get("/v1/ssh-keys", &acme).await.expect(200);
        assert_eq!(list.as_array().unwrap().len(), 1);
        let all = ctx.get("/v1/ssh-keys", &ctx.operator_key).await.expect(200);
        assert_eq!(all.as_array().unwrap().len(), 2);
        // Another tenant's key is not found, by name or by id.
        let umb_key = ctx.get("/v1/ssh-keys", &umb).await.expect(200)[0]["id"]
            .as_str()
            .unwrap()
            .to_string();
        ctx.delete(&format!("/v1/ssh-keys/{umb_key}"), &acme)
            .await
            .problem(404, "not_found");
        ctx.delete("/v1/ssh-keys/laptop", &acme).await.expect(200);
        ctx.delete("/v1/ssh-keys/laptop", &acme)
            .await
            .problem(404, "not_found");
        assert_eq!(
            ctx.get("/v1/ssh-keys", &umb).await.expect(200)[0]["name"],
            "laptop"
        );
    }
);

both_backends!(
    launches_with_a_delivery_are_checked,
    |ctx: TestContext| async move {
        fleet(&ctx).await;
        ctx.tenant("acme").await;
        ctx.tenant("umbrella").await;
        let (acme, _) = ctx.key("tenant-admin", Some("acme")).await;
        let (umb, _) = ctx.key("tenant-admin", Some("umbrella")).await;
        ctx.post(
            "/v1/ssh-keys",
            &umb,
            &json!({"name": "theirs", "public_key": KEY_B}),
        )
        .await
        .expect(201);
        ctx.post(
            "/v1/ssh-keys",
            &acme,
            &json!({"name": "mine", "public_key": KEY_A}),
        )
        .await
        .expect(201);
        let base = json!({"gpu_model": "H100-SXM-80GB", "gpus": 2});
        let with = |extra: Value| {
            let mut b = base.clone();
            for (k, v) in extra.as_object().unwrap() {
                b[k] = v.clone();
            }
            b
        };
        for (body, why) in [
            (
                with(json!({"delivery": container("busybox"), "ssh_key_names": ["theirs"]})),
                "no SSH key named 'theirs'",
            ),
            (
                with(json!({"delivery": container("busybox"), "ssh_key_names": ["mine", "mine"]})),
                "named twice",
            ),
            (
                with(json!({"delivery": {"mode": "container", "image": " "}})),
                "image is empty",
            ),
            (
                with(json!({"delivery": {"mode": "container", "image": "a b"}})),
                "image reference",
            ),
            (
                with(
                    json!({"delivery": {"mode": "container", "image": "x", "env": {"NVIDIA_VISIBLE_DEVICES": "all"}}}),
                ),
                "set by the platform",
            ),
            (
                with(json!({"delivery": {"mode": "container", "image": "x", "env": {"1A": "b"}}})),
                "not a variable name",
            ),
            (
                with(json!({"delivery": {"mode": "bare-metal"}, "ssh_key_names": ["mine"]})),
                "whole nodes",
            ),
            (
                json!({"gpu_model": "H100-SXM-80GB", "nodes": 1,
                       "delivery": {"mode": "bare-metal"}}),
                "needs ssh_key_names",
            ),
            (
                json!({"gpu_model": "H100-SXM-80GB", "nodes": 1, "delivery": container("x")}),
                "within one node",
            ),
            (with(json!({"ssh_key_names": ["mine"]})), "needs a delivery"),
        ] {
            let p = ctx
                .post("/v1/instances", &acme, &body)
                .await
                .problem(400, "invalid_request");
            let d = p["detail"].as_str().unwrap();
            assert!(d.contains(why), "{body}: {d}");
        }
        // A mode that does not exist, and a field no mode has, are refused by the parser.
        ctx.post(
            "/v1/instances",
            &acme,
            &with(json!({"delivery": {"mode": "vm", "image": "x"}})),
        )
        .await
        .problem(400, "invalid_request");
        ctx.post(
            "/v1/instances",
            &acme,
            &with(json!({"delivery": {"mode": "container", "image": "x", "bogus": 1}})),
        )
        .await
        .problem(400, "invalid_request");
        // Nothing was placed by any of them.
        let list = ctx.get("/v1/instances", &acme).await.expect(200);
        assert_eq!(list["items"].as_array().unwrap().len(), 0, "{list}");
    }
);

both_backends!(
    a_container_instance_runs_when_its_agent_says_so,
    |ctx: TestContext| async move {
        let keys = fleet(&ctx).await;
        ctx.tenant("acme").await;
        let (acme, _) = ctx.key("tenant-admin", Some("acme")).await;
        ctx.post(
            "/v1/ssh-keys",
            &acme,
            &json!({"name": "laptop", "public_key": KEY_A}),
        )
        .await
        .expect(201);
        let inst = ctx
            .post(
                "/v1/instances",
                &acme,
                &json!({"gpu_model": "H100-SXM-80GB", "gpus": 2,
                        "delivery": container("localhost/trainer:1"),
                        "ssh_key_names": ["laptop"]}),
            )
            .await
            .expect(201);
        let id = inst["id"].as_str().unwrap().to_string();
        assert_eq!(inst["state"], "provisioning", "{inst}");
        assert!(inst["started_at"].is_null());
        assert_eq!(inst["authorized_keys"][0], KEY_A);
        let host = inst["placement"][0]["node"].as_str().unwrap().to_string();
        let gpus = inst["placement"][0]["gpus"].clone();
        let node_key = key_of(&keys, &host).to_string();
        // The node's agent is told to run it, with its GPUs, limits and keys.
        let ack = report(&ctx, &node_key, &host, vec![]).await;
        let d = &ack["desired"];
        assert_eq!(d["workloads"].as_array().unwrap().len(), 1, "{ack}");
        let w = &d["workloads"][0];
        assert_eq!(w["instance_id"], id.as_str());
        assert_eq!(w["gpus"], gpus);
        assert_eq!(w["delivery"]["image"], "localhost/trainer:1");
        assert_eq!(w["authorized_keys"][0], KEY_A);
        assert_eq!(w["stop"], false);
        assert!(w["cpu_milli"].as_u64().unwrap() > 0);
        let generation = d["generation"].as_u64().unwrap();
        // Other nodes are told nothing of it.
        let other = HOSTS.iter().find(|h| **h != host).unwrap();
        let ack = report(&ctx, key_of(&keys, other), other, vec![]).await;
        assert_eq!(ack["desired"]["workloads"], json!([]));
        // Another node's agent cannot speak for it.
        report(
            &ctx,
            key_of(&keys, other),
            other,
            vec![phase(&id, "failed", "lies")],
        )
        .await;
        assert_eq!(get(&ctx, &acme, &id).await["state"], "provisioning");
        // Its own agent reports it live: running, metered from now, reachable.
        let before_running = Timestamp::now();
        let ack = report(
            &ctx,
            &node_key,
            &host,
            vec![running(&id, 2201, "hello\n", 0)],
        )
        .await;
        assert_eq!(ack["desired"]["generation"].as_u64().unwrap(), generation);
        let i = get(&ctx, &acme, &id).await;
        assert_eq!(i["state"], "running", "{i}");
        assert_eq!(
            i["access"],
            json!({"host": "127.0.0.1", "port": 2201, "user": "root"})
        );
        let started: Timestamp = i["started_at"].as_str().unwrap().parse().unwrap();
        assert!(started >= before_running);
        // Output arrives with the reports; a chunk sent twice is kept once.
        report(
            &ctx,
            &node_key,
            &host,
            vec![running(&id, 2201, "hello\nworld\n", 0)],
        )
        .await;
        let logs = ctx
            .get(&format!("/v1/instances/{id}/logs"), &acme)
            .await
            .expect(200);
        assert_eq!(logs["data"], "hello\nworld\n");
        assert_eq!(logs["next_offset"], 12);
        let tail = ctx
            .get(&format!("/v1/instances/{id}/logs?offset=6"), &acme)
            .await
            .expect(200);
        assert_eq!(tail["data"], "world\n");
        ctx.get(&format!("/v1/instances/{id}/logs?limit=0"), &acme)
            .await
            .problem(400, "invalid_request");
        // Terminate: stopping until the agent confirms; the agent is told to stop it.
        let t = ctx
            .post(&format!("/v1/instances/{id}/terminate"), &acme, &json!({}))
            .await
            .expect(200);
        assert_eq!(t["state"], "stopping", "{t}");
        assert_eq!(t["ends_as"], "terminated");
        let ack = report(&ctx, &node_key, &host, vec![running(&id, 2201, "", 12)]).await;
        assert_eq!(ack["desired"]["workloads"][0]["stop"], true);
        assert_ne!(ack["desired"]["generation"].as_u64().unwrap(), generation);
        assert_eq!(get(&ctx, &acme, &id).await["state"], "stopping");
        // Metering counts whole seconds.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let stopped_at = Timestamp::now();
        let ack = report(
            &ctx,
            &node_key,
            &host,
            vec![phase(&id, "stopped", "stopped on request")],
        )
        .await;
        assert_eq!(ack["desired"]["workloads"], json!([]));
        let i = get(&ctx, &acme, &id).await;
        assert_eq!(i["state"], "terminated", "{i}");
        assert!(i["ends_as"].is_null());
        let ended: Timestamp = i["ended_at"].as_str().unwrap().parse().unwrap();
        assert!(ended >= stopped_at);
        // Metered from running to the confirmed stop, not from the launch.
        let usage = ctx
            .get(&format!("/v1/usage?instance={id}"), &ctx.operator_key)
            .await
            .expect(200);
        let recs = usage["items"].as_array().unwrap();
        assert!(!recs.is_empty(), "{usage}");
        let first: Timestamp = recs
            .iter()
            .map(|r| {
                r["start_at"]
                    .as_str()
                    .unwrap()
                    .parse::<Timestamp>()
                    .unwrap()
            })
            .min()
            .unwrap();
        assert_eq!(first, started.floor_to_second());
        // The GPUs are free again.
        let again = ctx
            .post(
                "/v1/instances",
                &acme,
                &json!({"gpu_model": "H100-SXM-80GB", "gpus": 8, "site": "east"}),
            )
            .await;
        assert_eq!(again.status.as_u16(), 201);
    }
);

both_backends!(
    failures_and_timeouts_end_delivered_instances,
    |ctx: TestContext| async move {
        let keys = fleet(&ctx).await;
        ctx.tenant("acme").await;
        let (acme, _) = ctx.key("tenant-admin", Some("acme")).await;
        ctx.post(
            "/v1/ssh-keys",
            &acme,
            &json!({"name": "laptop", "public_key": KEY_A}),
        )
        .await
        .expect(201);
        let launch = |image: &str| json!({"gpu_model": "H100-SXM-80GB", "gpus": 1, "delivery": container(image)});
        // An image the node cannot get: failed with the agent's reason, GPUs freed at once
        // (a failed workload leaves nothing behind on its node).
        let i = ctx
            .post("/v1/instances", &acme, &launch("localhost/missing:1"))
            .await
            .expect(201);
        let id = i["id"].as_str().unwrap().to_string();
        let host = i["placement"][0]["node"].as_str().unwrap().to_string();
        report(
            &ctx,
            key_of(&keys, &host),
            &host,
            vec![phase(&id, "failed", "image not found: localhost/missing:1")],
        )
        .await;
        let i = get(&ctx, &acme, &id).await;
        assert_eq!(i["state"], "failed", "{i}");
        assert!(
            i["reason"]
                .as_str()
                .unwrap()
                .contains("image not found: localhost/missing:1"),
            "{i}"
        );
        let usage = ctx
            .get(&format!("/v1/usage?instance={id}"), &ctx.operator_key)
            .await
            .expect(200);
        assert_eq!(usage["items"], json!([]), "never ran, never billed");
        // A workload that exits by itself ends its instance.
        let i = ctx
            .post("/v1/instances", &acme, &launch("localhost/job:1"))
            .await
            .expect(201);
        let id = i["id"].as_str().unwrap().to_string();
        let host = i["placement"][0]["node"].as_str().unwrap().to_string();
        report(
            &ctx,
            key_of(&keys, &host),
            &host,
            vec![running(&id, 2202, "", 0)],
        )
        .await;
        report(
            &ctx,
            key_of(&keys, &host),
            &host,
            vec![phase(&id, "stopped", "the workload exited (code 0)")],
        )
        .await;
        let i = get(&ctx, &acme, &id).await;
        assert_eq!(i["state"], "terminated", "{i}");
        assert_eq!(i["reason"], "the workload exited (code 0)");
        // No agent ever answers: provisioning times out, then the stop does.
        let i = ctx
            .post("/v1/instances", &acme, &launch("localhost/slow:1"))
            .await
            .expect(201);
        let id = i["id"].as_str().unwrap().to_string();
        let now = Timestamp::now();
        ctx.svc.tick(now.plus_seconds(30)).await.unwrap();
        assert_eq!(get(&ctx, &acme, &id).await["state"], "provisioning");
        ctx.svc.tick(now.plus_seconds(601)).await.unwrap();
        let i = get(&ctx, &acme, &id).await;
        assert_eq!(i["state"], "stopping", "{i}");
        assert_eq!(i["ends_as"], "failed");
        assert!(
            i["reason"]
                .as_str()
                .unwrap()
                .contains("provisioning timed out")
        );
        ctx.svc.tick(now.plus_seconds(1300)).await.unwrap();
        let i = get(&ctx, &acme, &id).await;
        assert_eq!(i["state"], "failed", "{i}");
        assert!(
            i["reason"]
                .as_str()
                .unwrap()
                .contains("did not confirm the stop"),
            "{i}"
        );
        // A bare-metal gang: every node's agent must confirm before it runs.
        let g = ctx
            .post(
                "/v1/instances",
                &acme,
                &json!({"gpu_model": "H100-SXM-80GB", "nodes": 2, "gang_level": "leaf_group",
                        "delivery": {"mode": "bare-metal", "user_data": "echo hi"},
                        "ssh_key_names": ["laptop"]}),
            )
            .await
            .expect(201);
        let gid = g["id"].as_str().unwrap().to_string();
        let nodes: Vec<String> = g["placement"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["node"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(nodes.len(), 2);
        let ack = report(&ctx, key_of(&keys, &nodes[0]), &nodes[0], vec![]).await;
        assert_eq!(
            ack["desired"]["workloads"][0]["delivery"]["mode"],
            "bare-metal"
        );
        assert_eq!(
            ack["desired"]["workloads"][0]["gpus"],
            json!([0, 1, 2, 3, 4, 5, 6, 7])
        );
        report(
            &ctx,
            key_of(&keys, &nodes[0]),
            &nodes[0],
            vec![running(&gid, 2203, "", 0)],
        )
        .await;
        assert_eq!(get(&ctx, &acme, &gid).await["state"], "provisioning");
        report(
            &ctx,
            key_of(&keys, &nodes[1]),
            &nodes[1],
            vec![running(&gid, 2204, "", 0)],
        )
        .await;
        let g = get(&ctx, &acme, &gid).await;
        assert_eq!(g["state"], "running", "{g}");
        // One node's agent reports a failure: the whole gang stops, and ends failed once the
        // other node confirms.
        report(
            &ctx,
            key_of(&keys, &nodes[1]),
            &nodes[1],
            vec![phase(&gid, "failed", "user data exited with 3")],
        )
        .await;
        let g = get(&ctx, &acme, &gid).await;
        assert_eq!(g["state"], "stopping", "{g}");
        let ack = report(&ctx, key_of(&keys, &nodes[0]), &nodes[0], vec![]).await;
        assert_eq!(ack["desired"]["workloads"][0]["stop"], true);
        report(
            &ctx,
            key_of(&keys, &nodes[0]),
            &nodes[0],
            vec![phase(&gid, "stopped", "stopped on request")],
        )
        .await;
        let g = get(&ctx, &acme, &gid).await;
        assert_eq!(g["state"], "failed", "{g}");
        assert!(
            g["reason"]
                .as_str()
                .unwrap()
                .contains("user data exited with 3")
        );
        // Bad reports are refused and change nothing.
        let mut b = beat(&nodes[0], vec![]);
        b["workloads"] = json!([{"instance_id": gid, "phase": "exploded",
                                 "since": Timestamp::now().to_string()}]);
        let r = ctx
            .post("/v1/agent/heartbeat", key_of(&keys, &nodes[0]), &b)
            .await;
        assert_eq!(r.status.as_u16(), 400, "{}", r.body);
        let mut b = beat(&nodes[0], vec![]);
        b["workloads"] = json!([{"instance_id": gid, "phase": "running",
                                 "since": Timestamp::now().to_string(),
                                 "access": {"host": "a b", "port": 22, "user": "root"}}]);
        ctx.post("/v1/agent/heartbeat", key_of(&keys, &nodes[0]), &b)
            .await
            .problem(400, "invalid_request");
    }
);

both_backends!(
    a_preempted_workload_gets_its_notice_then_is_stopped,
    |ctx: TestContext| async move {
        let keys = fleet(&ctx).await;
        ctx.tenant("acme").await;
        ctx.tenant("lab").await;
        let (acme, _) = ctx.key("tenant-admin", Some("acme")).await;
        let (lab, _) = ctx.key("tenant-admin", Some("lab")).await;
        // Spot containers on every GPU of the site.
        let mut spot = Vec::new();
        for _ in 0..HOSTS.len() {
            let i = ctx
                .post(
                    "/v1/instances",
                    &acme,
                    &json!({"gpu_model": "H100-SXM-80GB", "gpus": 8, "class": "spot",
                            "delivery": container("localhost/batch:1")}),
                )
                .await
                .expect(201);
            let id = i["id"].as_str().unwrap().to_string();
            let host = i["placement"][0]["node"].as_str().unwrap().to_string();
            report(
                &ctx,
                key_of(&keys, &host),
                &host,
                vec![running(&id, 2300, "", 0)],
            )
            .await;
            assert_eq!(get(&ctx, &acme, &id).await["state"], "running");
            spot.push((id, host));
        }
        // On-demand work arrives: one spot instance gets notice.
        let od = ctx
            .post(
                "/v1/instances",
                &lab,
                &json!({"gpu_model": "H100-SXM-80GB", "gpus": 8}),
            )
            .await
            .expect(201);
        assert_eq!(od["state"], "pending", "{od}");
        let mut victim = None;
        for (id, host) in &spot {
            let i = get(&ctx, &acme, id).await;
            if i["state"] == "preempting" {
                victim = Some((id.clone(), host.clone(), i));
            }
        }
        let (vid, vhost, v) = victim.expect("a spot instance got notice");
        let deadline: Timestamp = v["preempt_at"].as_str().unwrap().parse().unwrap();
        // Its agent is told when it will be stopped, and keeps it running until then.
        let ack = report(&ctx, key_of(&keys, &vhost), &vhost, vec![]).await;
        let w = &ack["desired"]["workloads"][0];
        assert_eq!(w["preempt_at"], v["preempt_at"]);
        assert_eq!(w["stop"], false);
        // At the deadline: stopping, metering ends at the deadline, the agent stops it.
        ctx.svc.tick(deadline.plus_seconds(1)).await.unwrap();
        let i = get(&ctx, &acme, &vid).await;
        assert_eq!(i["state"], "stopping", "{i}");
        assert_eq!(i["ends_as"], "preempted");
        assert_eq!(i["ended_at"], v["preempt_at"]);
        let ack = report(&ctx, key_of(&keys, &vhost), &vhost, vec![]).await;
        assert_eq!(ack["desired"]["workloads"][0]["stop"], true);
        assert_eq!(ack["desired"]["stop_grace_secs"], 10);
        // The on-demand instance waits for the scrub.
        assert_eq!(
            get(&ctx, &lab, od["id"].as_str().unwrap()).await["state"],
            "pending"
        );
        report(
            &ctx,
            key_of(&keys, &vhost),
            &vhost,
            vec![phase(&vid, "stopped", "stopped on request")],
        )
        .await;
        let i = get(&ctx, &acme, &vid).await;
        assert_eq!(i["state"], "preempted", "{i}");
        assert_eq!(i["ended_at"], v["preempt_at"]);
        let usage = ctx
            .get(&format!("/v1/usage?instance={vid}"), &ctx.operator_key)
            .await
            .expect(200);
        let last: Timestamp = usage["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["end_at"].as_str().unwrap().parse::<Timestamp>().unwrap())
            .max()
            .unwrap();
        assert!(last <= deadline, "metered past the deadline: {usage}");
        // The GPUs went to the on-demand instance.
        let od = get(&ctx, &lab, od["id"].as_str().unwrap()).await;
        assert_eq!(od["state"], "running", "{od}");
        assert_eq!(od["placement"][0]["node"], vhost.as_str());
    }
);

both_backends!(
    an_agent_long_poll_learns_of_a_launch_and_a_terminate_at_once,
    |ctx: TestContext| async move {
        let keys = fleet(&ctx).await;
        ctx.tenant("acme").await;
        let (acme, _) = ctx.key("tenant-admin", Some("acme")).await;
        let host = HOSTS[0];
        let node_key = key_of(&keys, host).to_string();
        // Bad input and the wrong callers.
        ctx.get("/v1/agent/workloads?wait_secs=56", &node_key)
            .await
            .problem(400, "invalid_request");
        ctx.get("/v1/agent/workloads?wait_secs=-1", &node_key)
            .await
            .problem(400, "invalid_request");
        ctx.get("/v1/agent/workloads?bogus=1", &node_key)
            .await
            .problem(400, "invalid_request");
        ctx.get("/v1/agent/workloads", &acme)
            .await
            .problem(403, "forbidden");
        let enroll = ctx.key("node-agent", None).await.0;
        ctx.get("/v1/agent/workloads", &enroll)
            .await
            .problem(403, "forbidden");
        // Nothing placed: an answer at once, and an unchanged generation waits it out.
        let empty = ctx.get("/v1/agent/workloads", &node_key).await.expect(200);
        assert_eq!(empty["workloads"], json!([]));
        let g0 = empty["generation"].as_u64().unwrap();
        let waited = ctx
            .get(
                &format!("/v1/agent/workloads?generation={g0}&wait_secs=1"),
                &node_key,
            )
            .await
            .expect(200);
        assert_eq!(waited["generation"].as_u64().unwrap(), g0);
        // Every node's agent holds a poll open; a launch answers only its node's.
        let poll = |key: String, generation: u64| {
            let url = ctx.url(&format!(
                "/v1/agent/workloads?generation={generation}&wait_secs=30"
            ));
            tokio::spawn(async move {
                let r = reqwest::Client::new()
                    .get(url)
                    .bearer_auth(key)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                r.json::<Value>().await.unwrap()
            })
        };
        let mut polls = Vec::new();
        for (h, k) in &keys {
            polls.push((h.clone(), poll(k.clone(), g0)));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let inst = ctx
            .post(
                "/v1/instances",
                &acme,
                &json!({"gpu_model": "H100-SXM-80GB", "gpus": 8,
                        "delivery": container("localhost/trainer:1")}),
            )
            .await
            .expect(201);
        let id = inst["id"].as_str().unwrap().to_string();
        let placed_on = inst["placement"][0]["node"].as_str().unwrap().to_string();
        let mut answered = None;
        for (h, p) in polls {
            if h == placed_on {
                // Long before the 30 s the poll would otherwise wait.
                let d = tokio::time::timeout(std::time::Duration::from_secs(10), p)
                    .await
                    .expect("the poll of the launch's node was not answered")
                    .unwrap();
                assert_eq!(d["workloads"][0]["instance_id"], id.as_str(), "{d}");
                assert_eq!(d["workloads"][0]["stop"], false);
                answered = Some(d);
            } else {
                assert!(
                    !p.is_finished(),
                    "the poll of {h} was answered for another node"
                );
                p.abort();
            }
        }
        let d = answered.unwrap();
        let g1 = d["generation"].as_u64().unwrap();
        assert_ne!(g1, g0);
        // The terminate reaches the node's waiting poll as a stop.
        let node_key = key_of(&keys, &placed_on).to_string();
        let p = poll(node_key.clone(), g1);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        ctx.post(&format!("/v1/instances/{id}/terminate"), &acme, &json!({}))
            .await
            .expect(200);
        let d = tokio::time::timeout(std::time::Duration::from_secs(10), p)
            .await
            .expect("the terminate did not answer the poll")
            .unwrap();
        assert_eq!(d["workloads"][0]["stop"], true, "{d}");
        assert_eq!(get(&ctx, &acme, &id).await["state"], "stopping");
    }
);

both_backends!(
    a_contract_that_ends_stops_its_delivered_instances_before_selling_their_gpus,
    |ctx: TestContext| async move {
        let keys = fleet(&ctx).await;
        let t = ctx.tenant("acme").await;
        let (ka, _) = ctx.key("tenant-admin", t["id"].as_str()).await;
        let now = Timestamp::now();
        let c = ctx
            .post(
                "/v1/contracts",
                &ka,
                &json!({"gpu_model": "H100-SXM-80GB", "gpu_count": 8, "start_at": now.to_string(),
                        "end_at": now.plus_seconds(30 * 86400).to_string(), "site": "east"}),
            )
            .await
            .expect(201);
        let cid = c["id"].as_str().unwrap().to_string();
        let inst = ctx
            .post(
                "/v1/instances",
                &ka,
                &json!({"class": "reserved", "contract_id": cid, "gpu_model": "H100-SXM-80GB",
                        "gpus": 8, "delivery": container("localhost/trainer:1")}),
            )
            .await
            .expect(201);
        let id = inst["id"].as_str().unwrap().to_string();
        let host = inst["placement"][0]["node"].as_str().unwrap().to_string();
        let node_key = key_of(&keys, &host).to_string();
        report(&ctx, &node_key, &host, vec![running(&id, 2201, "", 0)]).await;
        assert_eq!(get(&ctx, &ka, &id).await["state"], "running");
        // The contract is cancelled: its instance is stopped by its agent, metered until now.
        ctx.post(
            &format!("/v1/contracts/{cid}/cancel"),
            &ctx.operator_key,
            &json!({}),
        )
        .await
        .expect(200);
        let i = get(&ctx, &ka, &id).await;
        assert_eq!(i["state"], "stopping", "{i}");
        assert_eq!(i["ends_as"], "terminated");
        assert!(!i["ended_at"].is_null(), "{i}");
        let ack = report(&ctx, &node_key, &host, vec![]).await;
        assert_eq!(ack["desired"]["workloads"][0]["stop"], true, "{ack}");
        // Its GPUs are not sold before the agent has scrubbed them.
        let node = ctx
            .get(&format!("/v1/nodes/{host}"), &ctx.operator_key)
            .await
            .expect(200);
        assert_ne!(node["state"], "available", "{node}");
        report(
            &ctx,
            &node_key,
            &host,
            vec![phase(&id, "stopped", "stopped on request")],
        )
        .await;
        let done = get(&ctx, &ka, &id).await;
        assert_eq!(done["state"], "terminated", "{done}");
        assert_eq!(done["ended_at"], i["ended_at"]);
    }
);
