//! Several control-plane replicas on one database, in one process with real HTTP servers,
//! driven tick by tick with chosen clocks so every race is a test, not a hope: one leader,
//! followers that forward writes, takeover after the lease expires, the fence that refuses a
//! deposed leader's late writes, and a restarted replica taking its own lease back.

use std::time::Duration;

use neocloud_service::{ReplicaConfig, RoleChange, Service};
use neocloud_types::Timestamp;
use serde_json::json;

use crate::api_health::FLEET;
use crate::both_backends;
use crate::ctx::TestContext;

/// Another replica on the context's database, serving HTTP on its own port.
async fn replica(ctx: &TestContext) -> (Service, String) {
    let svc = Service::open(&ctx.database_url()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let s = svc.clone();
    tokio::spawn(async move {
        neocloud_api::serve(listener, s, std::future::pending())
            .await
            .unwrap();
    });
    (svc, url)
}

/// Imports the test fleet and creates tenant acme; returns the operator's key.
async fn fleet_with_acme(ctx: &TestContext) -> String {
    ctx.import(FLEET).await.expect(200);
    ctx.tenant("acme").await;
    ctx.operator_key.clone()
}

/// The context's service as the leader ("rep-a") and another replica as its follower
/// ("rep-b"): (leader, its URL, follower, its URL).
async fn leader_and_follower(ctx: &TestContext) -> (Service, String, Service, String) {
    let a_url = ctx.url("");
    let a = ctx.svc.clone();
    assert_eq!(
        a.enable_replication(config("rep-a", &a_url), false)
            .await
            .unwrap(),
        RoleChange::BecameLeader
    );
    let (b, b_url) = replica(ctx).await;
    assert_eq!(
        b.enable_replication(config("rep-b", &b_url), false)
            .await
            .unwrap(),
        RoleChange::Same
    );
    (a, a_url, b, b_url)
}

fn config(id: &str, url: &str) -> ReplicaConfig {
    ReplicaConfig {
        id: id.to_string(),
        url: url.to_string(),
        lease_ttl: Duration::from_secs(2),
        refresh: Duration::ZERO,
    }
}

async fn post(
    url: &str,
    key: &str,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(json!(text)))
}

/// Launches 8 H100s for acme through one replica: (status, body).
async fn launch8(url: &str, key: &str) -> (u16, serde_json::Value) {
    post(
        url,
        key,
        "/v1/instances",
        json!({"tenant_id": "acme", "gpu_model": "H100-SXM-80GB", "gpus": 8}),
    )
    .await
}

async fn get(url: &str, key: &str, path: &str) -> serde_json::Value {
    reqwest::Client::new()
        .get(format!("{url}{path}"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn readyz(url: &str) -> String {
    reqwest::get(format!("{url}/readyz"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// GPUs allocated now in site `east`, as a replica's copy of the allocator sees them.
async fn allocated(url: &str, key: &str) -> u64 {
    let c = get(url, key, "/v1/capacity?site=east").await;
    c["items"][0]["allocated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["gpus"].as_u64().unwrap())
        .sum()
}

both_backends!(
    one_leader_forwards_fails_over_and_fences,
    |ctx: TestContext| async move {
        let k = ctx.operator_key.clone();
        ctx.import(FLEET).await.expect(200);
        let t0 = Timestamp::now();
        let (a, a_url, b, b_url) = leader_and_follower(&ctx).await;
        assert!(a.is_leader() && !b.is_leader());
        assert!(readyz(&a_url).await.starts_with("ready (leader, epoch "));
        assert_eq!(readyz(&b_url).await, format!("ready (follower of {a_url})"));

        // A write sent to the follower is forwarded to the leader and answered from there.
        let (s, i1) = launch8(&b_url, &k).await;
        assert_eq!(s, 404, "unknown tenant, answered by the leader: {i1}");
        ctx.tenant("acme").await;
        let (s, i1) = launch8(&b_url, &k).await;
        assert_eq!(s, 201, "{i1}");
        assert_eq!(i1["state"], "running");
        assert_eq!(allocated(&a_url, &k).await, 8);
        // The follower's copy catches up on its next tick (the database moved).
        assert_eq!(allocated(&b_url, &k).await, 0, "not refreshed yet");
        b.leadership_tick(Timestamp::now()).await.unwrap();
        assert_eq!(allocated(&b_url, &k).await, 8);
        // Agents may talk to any replica: registration and heartbeats through the follower
        // reach the leader.
        let (enroll, _) = ctx.key("node-agent", None).await;
        let (s, reg) = post(
            &b_url,
            &enroll,
            "/v1/agent/register",
            crate::api_health::inventory("e-p1-l1-n3"),
        )
        .await;
        assert_eq!(s, 200, "{reg}");
        let node_key = reg["node_key"].as_str().unwrap().to_string();
        let (s, ack) = post(
            &b_url,
            &node_key,
            "/v1/agent/heartbeat",
            crate::api_health::beat("e-p1-l1-n3", vec![]),
        )
        .await;
        assert_eq!(s, 200, "{ack}");
        // /metrics: the fleet's gauges come from the leader only, so a `sum by` over every
        // replica counts each GPU once; each replica says its role.
        let metrics = |url: String| async move {
            reqwest::get(format!("{url}/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        };
        let (ma, mb) = (metrics(a_url.clone()).await, metrics(b_url.clone()).await);
        assert!(ma.contains("\nneocloud_leader 1\n"), "{ma}");
        assert!(mb.contains("\nneocloud_leader 0\n"), "{mb}");
        assert!(ma.contains("role=\"leader\"} 1"), "{ma}");
        assert!(mb.contains("role=\"follower\"} 1"), "{mb}");
        for fleet in [
            "neocloud_gpus{",
            "neocloud_gpus_allocated{",
            "neocloud_gpus_sellable{",
        ] {
            assert!(ma.contains(fleet), "{fleet} missing on the leader");
            assert!(!mb.contains(fleet), "{fleet} on a follower:\n{mb}");
        }
        assert!(mb.contains("neocloud_http_requests_total{"), "{mb}");
        // The console too: sign in and post a form through the follower.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let r = http
            .post(format!("{b_url}/sign-in"))
            .header("origin", &b_url)
            .form(&[("key", k.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 303);
        let cookie = r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let page = http
            .get(format!("{b_url}/nodes/e-p1-l1-n1"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let at = page.find(r#"name="csrf" value=""#).unwrap() + r#"name="csrf" value=""#.len();
        let csrf = &page[at..at + page[at..].find('"').unwrap()];
        let r = http
            .post(format!("{b_url}/nodes/e-p1-l1-n1/cordon"))
            .header("cookie", &cookie)
            .header("origin", &b_url)
            .form(&[("csrf", csrf), ("reason", "via the follower")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 303, "{}", r.text().await.unwrap());
        assert_eq!(
            get(&a_url, &k, "/v1/nodes/e-p1-l1-n1").await["state"],
            "cordoned"
        );

        // The follower itself refuses to write: only forwarding gets a write through.
        let p = b.authenticate(Some(&k)).await.unwrap();
        let e = b
            .tenant_create(
                &p,
                serde_json::from_value(json!({"name": "sneaky"})).unwrap(),
                None,
            )
            .await
            .unwrap_err();
        assert_eq!(e.code, neocloud_service::ErrorCode::Unavailable);

        // The leader stops renewing (a pause, a partition). Once the lease has expired the
        // follower takes over with a new epoch and reloads the allocator.
        let later = t0.plus_seconds(5);
        assert_eq!(
            b.leadership_tick(later).await.unwrap(),
            RoleChange::BecameLeader
        );
        assert!(b.is_leader());
        assert!(a.is_leader(), "the old leader has not noticed yet");
        // Its late writes are fenced: refused, nothing changed.
        let (s, e) = launch8(&a_url, &k).await;
        assert_eq!(s, 503, "{e}");
        assert_eq!(e["code"], "unavailable");
        let (s, e) = post(&a_url, &k, "/v1/tenants", json!({"name": "late"})).await;
        assert_eq!(s, 503, "{e}");
        let list = get(&b_url, &k, "/v1/instances").await;
        assert_eq!(list["items"].as_array().unwrap().len(), 1);
        assert_eq!(
            get(&b_url, &k, "/v1/tenants/late").await["code"],
            "not_found"
        );
        // The new leader knows the running instance: terminating it frees its GPUs.
        assert_eq!(allocated(&b_url, &k).await, 8);
        // On its next tick the old leader steps down, and forwards from then on.
        assert_eq!(
            a.leadership_tick(later).await.unwrap(),
            RoleChange::SteppedDown
        );
        assert!(!a.is_leader());
        let id = i1["id"].as_str().unwrap();
        let (s, t) = post(
            &a_url,
            &k,
            &format!("/v1/instances/{id}/terminate"),
            json!({}),
        )
        .await;
        assert_eq!(s, 200, "{t}");
        assert_eq!(allocated(&b_url, &k).await, 0);
        // Exactly one leader at every step, and the epoch moved once.
        let (ra, rb) = (a.role().unwrap(), b.role().unwrap());
        assert!(!ra.leader && rb.leader);
        assert_eq!(rb.epoch, ra.epoch);
        assert!(rb.epoch >= 2);
        // A retried create through either replica is still created once.
        let body = json!({"tenant_id": "acme", "gpu_model": "H100-SXM-80GB", "gpus": 8});
        let mut ids = Vec::new();
        for url in [&a_url, &b_url, &a_url] {
            let r = reqwest::Client::new()
                .post(format!("{url}/v1/instances"))
                .bearer_auth(&k)
                .header("Idempotency-Key", "retry-1")
                .json(&body)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.status());
            let v: serde_json::Value = r.json().await.unwrap();
            ids.push(v["id"].as_str().unwrap().to_string());
        }
        assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    }
);

both_backends!(
    a_restarted_replica_takes_its_own_lease_back,
    |ctx: TestContext| async move {
        ctx.import(FLEET).await.expect(200);
        let url = "http://127.0.0.1:1".to_string();
        let (first, _) = replica(&ctx).await;
        assert_eq!(
            first
                .enable_replication(config("rep-1", &url), false)
                .await
                .unwrap(),
            RoleChange::BecameLeader
        );
        let epoch = first.role().unwrap().epoch;
        // kill -9: no resign. A new process on the same address takes the lease at once,
        // without waiting for it to expire (it holds that address, so the old one is gone).
        drop(first);
        let (second, _) = replica(&ctx).await;
        assert_eq!(
            second
                .enable_replication(config("rep-2", &url), false)
                .await
                .unwrap(),
            RoleChange::BecameLeader
        );
        assert_eq!(second.role().unwrap().epoch, epoch + 1);
        // Another address waits for the lease to expire, or for a clean hand-over.
        let (third, third_url) = replica(&ctx).await;
        assert_eq!(
            third
                .enable_replication(config("rep-3", &third_url), false)
                .await
                .unwrap(),
            RoleChange::Same
        );
        second.resign().await.unwrap();
        assert!(!second.is_leader());
        assert_eq!(
            third.leadership_tick(Timestamp::now()).await.unwrap(),
            RoleChange::BecameLeader
        );
        assert_eq!(third.role().unwrap().epoch, epoch + 2);
    }
);

both_backends!(
    replicas_load_one_state_while_the_leader_writes,
    |ctx: TestContext| async move {
        // A replica that starts, or a follower that refreshes, while the leader writes
        // reads the fleet, the live instances and the contracts on several connections at
        // once; they must all see one state. The leader here pins a node to a new contract,
        // launches a reserved instance on it, launches and terminates an on-demand one and
        // cancels the contract (unpinning the node), as fast as it can: a read of the nodes'
        // pools from one moment and of the instances from another would restore a reserved
        // instance on a node of no pool, and the load would fail.
        let k = fleet_with_acme(&ctx).await;
        let (a, a_url, b, b_url) = leader_and_follower(&ctx).await;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (url, k, stop) = (a_url.clone(), k.clone(), stop.clone());
            tokio::spawn(async move {
                let mut rounds = 0u32;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let now = Timestamp::now();
                    let (s, c) = post(
                        &url,
                        &k,
                        "/v1/contracts",
                        json!({"tenant_id": "acme", "gpu_model": "H100-SXM-80GB",
                               "gpu_count": 8, "site": "east", "start_at": now.to_string(),
                               "end_at": now.plus_seconds(86_400).to_string()}),
                    )
                    .await;
                    assert_eq!(s, 201, "{c}");
                    let cid = c["id"].as_str().unwrap().to_string();
                    let (s, r) = post(
                        &url,
                        &k,
                        "/v1/instances",
                        json!({"tenant_id": "acme", "class": "reserved", "contract_id": cid,
                               "gpu_model": "H100-SXM-80GB", "gpus": 8}),
                    )
                    .await;
                    assert_eq!(s, 201, "{r}");
                    let (s, od) = launch8(&url, &k).await;
                    assert_eq!(s, 201, "{od}");
                    let id = od["id"].as_str().unwrap();
                    let (s, t) = post(
                        &url,
                        &k,
                        &format!("/v1/instances/{id}/terminate"),
                        json!({}),
                    )
                    .await;
                    assert_eq!(s, 200, "{t}");
                    let (s, t) =
                        post(&url, &k, &format!("/v1/contracts/{cid}/cancel"), json!({})).await;
                    assert_eq!(s, 200, "{t}");
                    rounds += 1;
                }
                rounds
            })
        };
        let mut loads = 0;
        for round in 0..16 {
            // A replica starting: it loads before anything else.
            let started = Service::open(&ctx.database_url()).await;
            if let Err(e) = &started {
                panic!("replica start {round}: {e} ({:?})", e.internal);
            }
            drop(started);
            // The follower refreshing its copy (its refresh period is zero).
            for _ in 0..3 {
                a.leadership_tick(Timestamp::now()).await.unwrap();
                let r = b.leadership_tick(Timestamp::now()).await;
                assert!(r.is_ok(), "follower refresh in round {round}: {r:?}");
                loads += 1;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let rounds = writer.await.unwrap();
        assert!(
            rounds >= 3,
            "the leader wrote while replicas loaded ({rounds} rounds)"
        );
        // Once the writes stop, the follower's copy is the leader's.
        b.leadership_tick(Timestamp::now()).await.unwrap();
        assert_eq!(allocated(&b_url, &k).await, allocated(&a_url, &k).await);
        assert!(loads >= 48);
    }
);

/// The text of a replica's /metrics.
pub(crate) async fn scrape(url: &str) -> String {
    reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

both_backends!(
    three_replicas_feed_the_dashboard_without_double_counting,
    |ctx: TestContext| async move {
        // Three replicas scraped as Prometheus would (each series labelled with its
        // `instance`). Every dashboard query evaluates over the three scrapes, and the
        // fleet's totals are the fleet's, not three times it: only the leader exports them.
        let k = fleet_with_acme(&ctx).await;
        let (_a, a_url, b, b_url) = leader_and_follower(&ctx).await;
        let (c, c_url) = replica(&ctx).await;
        assert_eq!(
            c.enable_replication(config("rep-c", &c_url), false)
                .await
                .unwrap(),
            RoleChange::Same
        );
        let urls = [a_url, b_url, c_url];
        let (s, i) = launch8(&urls[1], &k).await;
        assert_eq!(s, 201, "{i}");
        for svc in [&b, &c] {
            svc.leadership_tick(Timestamp::now()).await.unwrap();
        }
        // The truth, from the API.
        let site = get(&urls[0], &k, "/v1/sites/east").await;
        let total = site["gpu_count"].as_u64().unwrap();
        assert_eq!(total, 64, "{site}");

        // The scrapes as promtool's test input: each series at a constant value for 10
        // minutes, labelled with its replica.
        let mut series = String::new();
        for (n, url) in urls.iter().enumerate() {
            let text = scrape(url).await;
            crate::ctx::promtool(&["check", "metrics"], &text);
            for line in text
                .lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
            {
                let (name_labels, value) = line.rsplit_once(' ').unwrap();
                let inst = format!("instance=\"r{n}\"");
                let labelled = match name_labels.split_once('{') {
                    Some((name, rest)) if rest.starts_with('}') => format!("{name}{{{inst}}}"),
                    Some((name, rest)) => format!("{name}{{{inst},{rest}"),
                    None => format!("{name_labels}{{{inst}}}"),
                };
                let v = if value.contains("Inf") || value.contains("NaN") {
                    "0"
                } else {
                    value
                };
                series.push_str(&format!(
                    "      - series: '{}'\n        values: '{v}x10'\n",
                    labelled.replace('\'', "''")
                ));
            }
        }
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../../../docs/grafana/neocloud.json")).unwrap();
        let mut tests = String::new();
        let mut exprs = 0;
        for panel in dashboard["panels"].as_array().unwrap() {
            for t in panel["targets"].as_array().into_iter().flatten() {
                let Some(expr) = t["expr"].as_str() else {
                    continue;
                };
                let expr = expr.replace("$site", ".*");
                // Each query parses and evaluates over the three scrapes.
                tests.push_str(&format!(
                    "      - expr: 'count({}) * 0 + 1 or vector(1)'\n        eval_time: 5m\n        exp_samples:\n          - labels: '{{}}'\n            value: 1\n",
                    expr.replace('\'', "''")
                ));
                exprs += 1;
            }
        }
        assert!(exprs >= 15, "{exprs} dashboard queries");
        // And the fleet's totals, as the dashboard sums them over every replica, are the
        // fleet's: 64 GPUs, 8 allocated, one leader.
        for (expr, want) in [
            (
                "sum(sum by (site, state) (neocloud_gpus{site=~\".*\"}))".to_string(),
                total,
            ),
            (
                "sum(sum by (site, class) (neocloud_gpus_allocated{site=~\".*\"}))".into(),
                8,
            ),
            ("sum(sum by (instance) (neocloud_leader))".into(), 1),
            ("count(neocloud_leader)".into(), 3),
        ] {
            tests.push_str(&format!(
                "      - expr: '{}'\n        eval_time: 5m\n        exp_samples:\n          - labels: '{{}}'\n            value: {want}\n",
                expr.replace('\'', "''")
            ));
        }
        let file = format!(
            "rule_files: []\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n{series}    promql_expr_test:\n{tests}"
        );
        let dir = crate::ctx::temp_dir();
        let path = dir.join("dashboard-test.yml");
        std::fs::write(&path, &file).unwrap();
        crate::ctx::promtool(&["test", "rules", path.to_str().unwrap()], "");
    }
);

both_backends!(
    a_forwarded_write_whose_answer_is_lost_says_so_with_the_status_sent,
    |ctx: TestContext| async move {
        // The leader takes a forwarded write and its connection breaks before it answers:
        // the follower answers 502 (the write may have been applied: retry only with the
        // same Idempotency-Key), and the problem body says 502 too, not the 503 that
        // `unavailable` otherwise goes with.
        let k = fleet_with_acme(&ctx).await;
        let (_a, _a_url, b, b_url) = leader_and_follower(&ctx).await;
        // A "leader" that reads the request and hangs up without a word.
        let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone_url = format!("http://{}", gone.local_addr().unwrap());
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            loop {
                let Ok((mut sock, _)) = gone.accept().await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                drop(sock);
            }
        });
        sqlx::query("UPDATE leases SET holder_url = $1 WHERE name = 'allocator'")
            .bind(&gone_url)
            .execute(ctx.svc.store().pool())
            .await
            .unwrap();
        assert_eq!(
            b.leadership_tick(Timestamp::now()).await.unwrap(),
            RoleChange::Same
        );
        let r = reqwest::Client::new()
            .post(format!("{b_url}/v1/instances"))
            .bearer_auth(&k)
            .header("Idempotency-Key", "lost-1")
            .json(&json!({"tenant_id": "acme", "gpu_model": "H100-SXM-80GB", "gpus": 8}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 502);
        assert_eq!(
            r.headers()["content-type"].to_str().unwrap(),
            "application/problem+json"
        );
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["status"], 502, "{body}");
        assert_eq!(body["code"], "unavailable", "{body}");
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("same Idempotency-Key"),
            "{body}"
        );
    }
);

/// A counter's value in a replica's /metrics.
async fn counter(url: &str, name: &str) -> u64 {
    let text = scrape(url).await;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

both_backends!(
    a_follower_answers_heartbeats_without_news_and_the_leader_hears_of_them,
    |ctx: TestContext| async move {
        use crate::api_health::{beat, inventory, xid};
        let k = ctx.operator_key.clone();
        ctx.import(FLEET).await.expect(200);
        let (a, a_url, b, b_url) = leader_and_follower(&ctx).await;
        let host = "e-p1-l1-n3";
        let (enroll, _) = ctx.key("node-agent", None).await;
        let (s, reg) = post(&b_url, &enroll, "/v1/agent/register", inventory(host)).await;
        assert_eq!(s, 200, "{reg}");
        let node_key = reg["node_key"].as_str().unwrap().to_string();
        // (Both replicas run in this process and share its counters: every heartbeat the
        // follower passes on is counted once as passed and once as accepted by the leader.)
        let passed = || counter(&b_url, "neocloud_heartbeats_passed_total");
        let beats = || counter(&a_url, "neocloud_heartbeats_total");
        let hb = |events: Vec<serde_json::Value>| {
            let (b_url, node_key) = (b_url.clone(), node_key.clone());
            async move { post(&b_url, &node_key, "/v1/agent/heartbeat", beat(host, events)).await }
        };

        // The follower did not know this agent (it registered through the leader): its
        // first heartbeat goes to the leader, and the follower reads the agent at its next
        // tick (with every other it was told of meanwhile, in one batch).
        let (s, ack) = hb(vec![]).await;
        assert_eq!(s, 200, "{ack}");
        assert_eq!(ack["state"], "available");
        assert_eq!((passed().await, beats().await), (1, 1));
        let (s, _) = hb(vec![]).await;
        assert_eq!(s, 200);
        assert_eq!((passed().await, beats().await), (2, 2), "not learned yet");
        b.follower_agent_flush(Timestamp::now()).await.unwrap();
        // Heartbeats without news are answered by the follower alone, with the same
        // answer (state, interval, what should run).
        for _ in 0..3 {
            let (s, here) = hb(vec![]).await;
            assert_eq!(s, 200, "{here}");
            assert_eq!(here["state"], ack["state"]);
            assert_eq!(here["heartbeat_interval_secs"], 10);
            assert_eq!(here["desired"]["workloads"], json!([]), "{here}");
        }
        assert_eq!((passed().await, beats().await), (2, 5), "3 answered here");

        // An event is news: the leader stores it and acknowledges it; sent again (the
        // agent did not get the answer), the follower knows it was acknowledged. Storing
        // events alone does not move the lease's write counter: followers do not rebuild
        // their copy of the allocator for them.
        let generation = || async {
            sqlx::any::install_default_drivers();
            let pool = sqlx::any::AnyPoolOptions::new()
                .max_connections(1)
                .connect(&ctx.database_url())
                .await
                .unwrap();
            let g: i64 = sqlx::Row::get(
                &sqlx::query("SELECT generation FROM leases")
                    .fetch_one(&pool)
                    .await
                    .unwrap(),
                "generation",
            );
            pool.close().await;
            g
        };
        let g0 = generation().await;
        let (s, ack) = hb(vec![xid(1, host, 2, 13)]).await;
        assert_eq!(s, 200, "{ack}");
        assert_eq!(ack["acked_seq"], 1);
        assert_eq!(passed().await, 3);
        assert_eq!(generation().await, g0, "events alone are quiet");
        let (s, again) = hb(vec![xid(1, host, 2, 13)]).await;
        assert_eq!((s, &again["acked_seq"]), (200, &json!(1)), "{again}");
        assert_eq!(passed().await, 3, "an acknowledged event is not news");
        let events = get(&a_url, &k, &format!("/v1/nodes/{host}/health?limit=1000")).await;
        let xids = events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["code"] == 13)
            .count();
        assert_eq!(xids, 1, "{events}");
        // A GPU flag that turns on is news once; the same flag again is not.
        let mut hot = beat(host, vec![]);
        hot["gpus"][5]["thermal_slowdown"] = json!(true);
        for _ in 0..2 {
            let (s, r) = post(&b_url, &node_key, "/v1/agent/heartbeat", hot.clone()).await;
            assert_eq!(s, 200, "{r}");
        }
        assert_eq!(passed().await, 4);
        // Bad input is refused where it arrives, and changes nothing.
        let mut bad = beat(host, vec![]);
        bad["gpus"][0]["uuid"] = json!("GPU-not-mine");
        let (s, r) = post(&b_url, &node_key, "/v1/agent/heartbeat", bad).await;
        assert_eq!(s, 400, "{r}");
        let (s, r) = post(
            &b_url,
            &node_key,
            "/v1/agent/heartbeat",
            json!({"sent_at": "yesterday"}),
        )
        .await;
        assert_eq!(s, 400, "{r}");

        // The leader hears of them through the database: before it counts the node silent,
        // it reads when the follower last heard it.
        let heard = Timestamp::now();
        let (s, _) = hb(vec![]).await;
        assert_eq!(s, 200);
        b.follower_agent_flush(heard.plus_seconds(3)).await.unwrap();
        a.health_tick(heard.plus_seconds(25)).await.unwrap();
        let node = get(&a_url, &k, &format!("/v1/nodes/{host}")).await;
        assert_eq!(node["state"], "available", "{node}");
        let last: Timestamp = node["last_heartbeat_at"].as_str().unwrap().parse().unwrap();
        assert!(
            last >= heard,
            "the leader knows the follower's time: {node}"
        );
        // Its telemetry is what the follower wrote, not what the leader saw last.
        assert_eq!(
            node["gpus"][5]["telemetry"]["thermal_slowdown"], true,
            "{node}"
        );
        // Silent everywhere past the missed-heartbeat limit: unreachable.
        a.health_tick(heard.plus_seconds(45)).await.unwrap();
        assert_eq!(
            get(&a_url, &k, &format!("/v1/nodes/{host}")).await["state"],
            "unreachable"
        );
        // Heard again by the follower (which has not caught up and still answers): the
        // leader returns the node to service from the database, no heartbeat of its own.
        // (Heartbeats carry the real time, which has hardly moved while the ticks were
        // given times a minute ahead: the same tick then finds the node silent again, so
        // the return is read from the node's history.)
        let (s, r) = hb(vec![]).await;
        assert_eq!(s, 200, "{r}");
        b.follower_agent_flush(heard.plus_seconds(6)).await.unwrap();
        a.health_tick(heard.plus_seconds(51)).await.unwrap();
        let history = get(&a_url, &k, &format!("/v1/nodes/{host}/health?limit=1000")).await;
        let returned = history.as_array().unwrap().iter().any(|e| {
            e["kind"] == "state"
                && e["action"] == "available"
                && e["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("agent heard from again"))
        });
        assert!(returned, "{history}");
        // A state change moves the counter.
        assert!(generation().await > g0);
        // Once the follower has caught up with a state that is not steady, it passes the
        // node's heartbeats on: the leader decides.
        a.health_tick(heard.plus_seconds(90)).await.unwrap();
        b.leadership_tick(Timestamp::now()).await.unwrap();
        let before = passed().await;
        let (s, r) = hb(vec![]).await;
        assert_eq!((s, &r["state"]), (200, &json!("available")), "{r}");
        assert_eq!(passed().await, before + 1);
        assert_eq!(
            get(&a_url, &k, &format!("/v1/nodes/{host}")).await["state"],
            "available"
        );
    }
);

both_backends!(
    workload_reports_through_a_follower_reach_the_leader_only_when_they_change_something,
    |ctx: TestContext| async move {
        use crate::api_health::{beat, inventory};
        ctx.import(FLEET).await.expect(200);
        ctx.tenant("acme").await;
        let (_a, a_url, b, b_url) = leader_and_follower(&ctx).await;
        let (acme, _) = ctx.key("tenant-admin", Some("acme")).await;
        let (s, inst) = post(
            &b_url,
            &acme,
            "/v1/instances",
            json!({"gpu_model": "H100-SXM-80GB", "gpus": 8,
                   "delivery": {"mode": "container", "image": "localhost/trainer:1",
                                "command": ["sleep", "1d"]}}),
        )
        .await;
        assert_eq!(s, 201, "{inst}");
        assert_eq!(inst["state"], "provisioning");
        let id = inst["id"].as_str().unwrap().to_string();
        let host = inst["placement"][0]["node"].as_str().unwrap().to_string();
        let (enroll, _) = ctx.key("node-agent", None).await;
        let (s, reg) = post(&b_url, &enroll, "/v1/agent/register", inventory(&host)).await;
        assert_eq!(s, 200, "{reg}");
        let node_key = reg["node_key"].as_str().unwrap().to_string();
        b.leadership_tick(Timestamp::now()).await.unwrap();
        let passed = || counter(&b_url, "neocloud_heartbeats_passed_total");
        let report = |log: &str, offset: u64| {
            let mut hb = beat(&host, vec![]);
            hb["workloads"] = json!([{
                "instance_id": id, "phase": "running", "since": Timestamp::now().to_string(),
                "access": {"host": "10.0.0.5", "port": 2201, "user": "root"},
                "log_offset": offset, "log": log,
            }]);
            let (b_url, node_key) = (b_url.clone(), node_key.clone());
            async move { post(&b_url, &node_key, "/v1/agent/heartbeat", hb).await }
        };
        // The follower learns the agent from its first heartbeat (passed on), which also
        // tells the leader the workload runs: the instance is running.
        let (s, ack) = report("hello\n", 0).await;
        assert_eq!(s, 200, "{ack}");
        assert_eq!(passed().await, 1);
        b.follower_agent_flush(Timestamp::now()).await.unwrap();
        let i = get(&a_url, &acme, &format!("/v1/instances/{id}")).await;
        assert_eq!(i["state"], "running", "{i}");
        // Still running as recorded, no output: answered by the follower once it has
        // caught up; what should run comes from its copy.
        let (s, ack) = report("", 6).await;
        assert_eq!(s, 200, "{ack}");
        assert_eq!(passed().await, 2, "the follower had not caught up yet");
        b.leadership_tick(Timestamp::now()).await.unwrap();
        for _ in 0..3 {
            let (s, ack) = report("", 6).await;
            assert_eq!(s, 200, "{ack}");
            assert_eq!(
                ack["desired"]["workloads"][0]["instance_id"],
                json!(id),
                "{ack}"
            );
        }
        assert_eq!(passed().await, 2);
        // Output is news: the leader keeps it, and reading it through the follower reads
        // the leader's.
        let (s, _) = report("world\n", 6).await;
        assert_eq!(s, 200);
        assert_eq!(passed().await, 3);
        let logs = get(&b_url, &acme, &format!("/v1/instances/{id}/logs")).await;
        assert_eq!(logs["data"], "hello\nworld\n", "{logs}");
        // The workload stopped: news.
        let mut hb = beat(&host, vec![]);
        hb["workloads"] = json!([{"instance_id": id, "phase": "failed",
            "since": Timestamp::now().to_string(), "reason": "exit 1", "exit_code": 1}]);
        let (s, ack) = post(&b_url, &node_key, "/v1/agent/heartbeat", hb).await;
        assert_eq!(s, 200, "{ack}");
        assert_eq!(passed().await, 4);
        let i = get(&a_url, &acme, &format!("/v1/instances/{id}")).await;
        assert_ne!(i["state"], "running", "{i}");
    }
);
