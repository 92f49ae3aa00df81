//! Webhooks, through HTTP on both databases, against receivers on real ports: every delivery
//! carries a signature the receiver verifies; a receiver down for 10 minutes (port closed,
//! then answering 503) gets every event afterwards, in order; a receiver that hangs slows
//! neither launches nor the other webhooks; a gang's replaced node reaches the tenant's
//! webhook; bad input is refused and changes nothing; the CLI manages webhooks.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use neocloud_service::{Clock, SchedulerConfig};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::api_health::FLEET;
use crate::both_backends;
use crate::cli::{neocloud, stderr, stdout};
use crate::ctx::{Db, TestContext};
use crate::gang_repair::{Gang, nodes};

const OK: u8 = 0;
const UNAVAILABLE: u8 = 1;
const HANG: u8 = 2;

/// One request a receiver accepted.
#[derive(Clone, Debug)]
struct Got {
    body: Vec<u8>,
    payload: Value,
    signature: String,
    event_header: String,
    delivery_header: String,
    verified: bool,
}

/// What a test receiver does and what it got.
#[derive(Default)]
struct Inbox {
    mode: AtomicU8,
    secret: Mutex<String>,
    got: Mutex<Vec<Got>>,
    /// Requests that arrived, whatever was answered.
    seen: AtomicUsize,
}

impl Inbox {
    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
    fn actions(&self) -> Vec<String> {
        self.got()
            .iter()
            .map(|g| {
                g.payload["event"]["action"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    }
}

/// A webhook receiver on a real port that checks each delivery's signature the way the
/// documentation tells receivers to.
struct Receiver {
    url: String,
    inbox: Arc<Inbox>,
}

impl Receiver {
    async fn start(mode: u8) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, mode)
    }

    fn serve(listener: tokio::net::TcpListener, mode: u8) -> Receiver {
        let addr = listener.local_addr().unwrap();
        let inbox = Arc::new(Inbox::default());
        inbox.mode.store(mode, Ordering::SeqCst);
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(inbox.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver {
            url: format!("http://{addr}/hook"),
            inbox,
        }
    }

    fn set_secret(&self, secret: &str) {
        *self.inbox.secret.lock().unwrap() = secret.to_string();
    }
}

async fn receive(State(inbox): State<Arc<Inbox>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    inbox.seen.fetch_add(1, Ordering::SeqCst);
    match inbox.mode.load(Ordering::SeqCst) {
        HANG => std::future::pending::<()>().await,
        UNAVAILABLE => return StatusCode::SERVICE_UNAVAILABLE,
        _ => {}
    }
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let secret = inbox.secret.lock().unwrap().clone();
    let signature = header("neocloud-signature");
    let got = Got {
        verified: verify(&secret, &signature, &body),
        payload: serde_json::from_slice(&body).unwrap_or(Value::Null),
        body: body.to_vec(),
        signature,
        event_header: header("neocloud-event-id"),
        delivery_header: header("neocloud-delivery-id"),
    };
    inbox.got.lock().unwrap().push(got);
    StatusCode::NO_CONTENT
}

/// A receiver's check: `t=<unix>,v1=<hex>`, the time within 5 minutes of now, and the hex
/// the HMAC-SHA256 of `<t>.<body>` keyed with the webhook's secret.
fn verify(secret: &str, header: &str, body: &[u8]) -> bool {
    let (mut t, mut v1) = (None, None);
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", x)) => t = x.parse::<i64>().ok(),
            Some(("v1", x)) => v1 = Some(x.to_string()),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    if (now - t).abs() > 300 {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    want == v1
}

/// Waits (a minute at most) until `f` holds.
async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if f().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates a webhook; returns its id and the receiver's secret set.
async fn subscribe(
    ctx: &TestContext,
    key: &str,
    receiver: &Receiver,
    body: Value,
) -> (String, String) {
    let mut body = body;
    body["url"] = json!(receiver.url);
    let v = ctx.post("/v1/webhooks", key, &body).await.expect(201);
    let secret = v["secret"].as_str().unwrap().to_string();
    receiver.set_secret(&secret);
    (v["id"].as_str().unwrap().to_string(), secret)
}

/// A webhook's delivery log, oldest event first.
async fn log(ctx: &TestContext, key: &str, hook: &str) -> Vec<Value> {
    let mut items = ctx
        .get(&format!("/v1/webhooks/{hook}/deliveries?limit=1000"), key)
        .await
        .expect(200)["items"]
        .as_array()
        .unwrap()
        .clone();
    items.reverse();
    items
}

/// The ids of the tenant's `instance.` events, oldest first.
async fn instance_events(ctx: &TestContext, key: &str) -> Vec<String> {
    let mut ids: Vec<String> = ctx
        .get("/v1/events?action=instance.&limit=1000", key)
        .await
        .expect(200)["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    ids.reverse();
    ids
}

fn event_ids(got: &[Got]) -> Vec<String> {
    got.iter()
        .map(|g| g.payload["event"]["id"].as_str().unwrap_or("").to_string())
        .collect()
}

async fn launch(ctx: &TestContext, key: &str) -> String {
    let v = ctx
        .post(
            "/v1/instances",
            key,
            &json!({"gpu_model": "H100-SXM-80GB", "gpus": 1}),
        )
        .await
        .expect(201);
    v["id"].as_str().unwrap().to_string()
}

async fn terminate(ctx: &TestContext, key: &str, id: &str) {
    ctx.post(&format!("/v1/instances/{id}/terminate"), key, &json!({}))
        .await
        .expect(200);
}

/// A receiver down for 10 minutes — its port closed for 5, then answering 503 for 5 — gets
/// every event afterwards, in order, each signed; nothing after the first is tried before
/// the first is delivered.
async fn a_receiver_down_for_ten_minutes_gets_every_event_in_order(db: Db) {
    let clock = Clock::manual("2027-03-01T00:00:00Z".parse().unwrap());
    let Some(ctx) = TestContext::start_clocked(db, SchedulerConfig::default(), clock.clone()).await
    else {
        return;
    };
    ctx.import(FLEET).await.expect(200);
    let acme = ctx.tenant("acme").await;
    let (key, _) = ctx.key("tenant-admin", acme["id"].as_str()).await;
    ctx.svc.set_webhook_allow_private(true);
    // Another webhook of the tenant, for every event, on a receiver that is up.
    let other = Receiver::start(OK).await;
    let (other_id, _) = subscribe(&ctx, &key, &other, json!({})).await;
    // The port of the receiver that is down: nothing listens there yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let v = ctx
        .post(
            "/v1/webhooks",
            &key,
            &json!({"url": url, "events": ["instance.*"]}),
        )
        .await
        .expect(201);
    let hook = v["id"].as_str().unwrap().to_string();
    let secret = v["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"), "{v}");
    assert_eq!(v["tenant_id"], acme["id"]);
    assert_eq!(v["events"], json!(["instance.*"]));
    ctx.start_webhooks(Duration::from_secs(10));

    // Work happens while the receiver is down.
    let a = launch(&ctx, &key).await;
    let b = launch(&ctx, &key).await;
    terminate(&ctx, &key, &a).await;
    let c = launch(&ctx, &key).await;
    terminate(&ctx, &key, &b).await;
    let expected = instance_events(&ctx, &key).await;
    assert!(expected.len() >= 5, "{expected:?}");

    let head_attempts = async || {
        log(&ctx, &key, &hook)
            .await
            .first()
            .and_then(|d| d["attempts"].as_u64())
            .unwrap_or(0)
    };
    until("the first delivery failed", async || {
        head_attempts().await >= 1
    })
    .await;
    let first = log(&ctx, &key, &hook).await;
    assert_eq!(first.len(), expected.len(), "{first:?}");
    assert!(first[0]["last_error"].is_string(), "{}", first[0]);
    assert!(first[0]["last_status"].is_null(), "{}", first[0]);
    // Port closed for 5 minutes: the first delivery is retried with backoff (5, 10, 20,
    // 40 s: due again within each minute for the first four).
    for minute in 1..=5u64 {
        clock.advance(60);
        if minute <= 4 {
            until("another attempt", async || head_attempts().await > minute).await;
        }
    }
    // Then it answers 503 for 5 minutes.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let down = Receiver::serve(listener, UNAVAILABLE);
    down.set_secret(&secret);
    for _ in 0..5 {
        clock.advance(60);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    until("a 503 is recorded", async || {
        log(&ctx, &key, &hook).await[0]["last_status"] == 503
    })
    .await;
    assert!(down.inbox.seen.load(Ordering::SeqCst) >= 1);
    assert!(down.inbox.got().is_empty());
    // Ten minutes down: the first event has been tried again and again, the others never
    // (one at a time, in order), and nothing is lost.
    let during = log(&ctx, &key, &hook).await;
    assert_eq!(during.len(), expected.len());
    assert!(
        during[0]["attempts"].as_u64().unwrap() >= 6,
        "{}",
        during[0]
    );
    assert_eq!(during[0]["state"], "pending");
    assert!(during[0]["next_attempt_at"].is_string());
    for d in &during[1..] {
        assert_eq!(d["attempts"], 0, "{d}");
        assert_eq!(d["state"], "pending");
    }
    let w = ctx
        .get(&format!("/v1/webhooks/{hook}"), &key)
        .await
        .expect(200);
    assert_eq!(w["pending_deliveries"], expected.len());

    // Back up: within the longest backoff (5 min) everything arrives, in order.
    down.inbox.mode.store(OK, Ordering::SeqCst);
    clock.advance(300);
    until("every event arrived", async || {
        down.inbox.got().len() >= expected.len()
    })
    .await;
    let got = down.inbox.got();
    assert_eq!(event_ids(&got), expected, "in commit order, each once");
    let resources: Vec<String> = got
        .iter()
        .map(|g| {
            g.payload["event"]["resource_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let mut launched_in_order = resources.clone();
    launched_in_order.dedup();
    assert_eq!(
        &launched_in_order[..3],
        &[a.clone(), b.clone(), a.clone()],
        "{resources:?}"
    );
    assert!(resources.contains(&c));
    let after = log(&ctx, &key, &hook).await;
    for (g, d) in got.iter().zip(&after) {
        assert!(g.verified, "the signature verifies: {}", g.signature);
        assert_eq!(g.payload["webhook_id"], hook.as_str());
        assert_eq!(g.payload["event"]["tenant_id"], acme["id"]);
        assert_eq!(g.event_header, g.payload["event"]["id"].as_str().unwrap());
        assert_eq!(
            g.delivery_header,
            g.payload["delivery_id"].as_str().unwrap()
        );
        assert_eq!(d["id"], g.delivery_header.as_str());
        assert_eq!(d["state"], "delivered", "{d}");
        assert_eq!(d["last_status"], 204);
        assert!(d["finished_at"].is_string());
    }
    // The signature binds the body and the secret: another secret, or a changed body,
    // does not verify.
    let g = &got[0];
    assert!(verify(&secret, &g.signature, &g.body));
    assert!(!verify("whsec_other", &g.signature, &g.body));
    let mut tampered = g.body.clone();
    tampered.push(b' ');
    assert!(!verify(&secret, &g.signature, &tampered));
    let w = ctx
        .get(&format!("/v1/webhooks/{hook}"), &key)
        .await
        .expect(200);
    assert_eq!(w["pending_deliveries"], 0);
    // The other webhook got all of it too, without waiting for this one.
    until("the other receiver has every instance event", async || {
        other
            .inbox
            .actions()
            .iter()
            .filter(|a| a.starts_with("instance."))
            .count()
            >= expected.len()
    })
    .await;
    assert!(other.inbox.got().iter().all(|g| g.verified));

    // A test event goes to the webhook it is sent to, and only there, after the rest.
    let t = ctx
        .post(&format!("/v1/webhooks/{hook}/test"), &key, &json!({}))
        .await
        .expect(202);
    assert_eq!(t["action"], "webhook.test");
    until("the test event arrived", async || {
        down.inbox.got().len() == expected.len() + 1
    })
    .await;
    let last = down.inbox.got().last().unwrap().clone();
    assert_eq!(last.payload["event"]["id"], t["id"]);
    assert!(last.verified);
    assert!(
        log(&ctx, &key, &other_id)
            .await
            .iter()
            .all(|d| d["event_action"] != "webhook.test")
    );
    // The metrics count the attempts (counters of this process: at least these).
    let metrics = ctx
        .send(reqwest::Method::GET, "/metrics", None, None, &[])
        .await;
    let text = metrics.body.as_str().unwrap().to_string();
    let sample = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    assert!(sample("neocloud_webhook_attempts_total{result=\"failed\"}") >= 6.0);
    assert!(
        sample("neocloud_webhook_attempts_total{result=\"delivered\"}")
            >= (expected.len() + 1) as f64
    );
    assert!(sample("neocloud_webhook_deliveries_pending") >= 0.0);
    // Filters: the instance webhook received only instance events.
    assert!(
        down.inbox.actions()[..expected.len()]
            .iter()
            .all(|a| a.starts_with("instance."))
    );
}

both_backends!(
    a_hanging_receiver_slows_neither_launches_nor_other_webhooks,
    |ctx: TestContext| async move {
        ctx.import(FLEET).await.expect(200);
        let acme = ctx.tenant("acme").await;
        let (key, _) = ctx.key("tenant-admin", acme["id"].as_str()).await;
        ctx.svc.set_webhook_allow_private(true);
        let hang = Receiver::start(HANG).await;
        let good = Receiver::start(OK).await;
        let (hung, _) = subscribe(&ctx, &key, &hang, json!({"events": ["instance.*"]})).await;
        // The operator's webhook sees every tenant's events.
        let (op_hook, _) = subscribe(
            &ctx,
            &ctx.operator_key,
            &good,
            json!({"events": ["instance.*"]}),
        )
        .await;
        let op_view = ctx
            .get(&format!("/v1/webhooks/{op_hook}"), &ctx.operator_key)
            .await
            .expect(200);
        assert!(op_view["tenant_id"].is_null(), "{op_view}");
        ctx.start_webhooks(Duration::from_secs(2));

        let first = launch(&ctx, &key).await;
        until("the hanging receiver holds a request", async || {
            hang.inbox.seen.load(Ordering::SeqCst) >= 1
        })
        .await;
        // While that request hangs: launches and terminations answer as usual …
        let mut ids = vec![first];
        for _ in 0..5 {
            ids.push(launch(&ctx, &key).await);
        }
        for id in &ids[..3] {
            terminate(&ctx, &key, id).await;
        }
        let expected = instance_events(&ctx, &key).await;
        assert!(expected.len() >= 9, "{expected:?}");
        // … and the other webhook gets every event, in order.
        until("the operator's receiver has every event", async || {
            good.inbox.got().len() >= expected.len()
        })
        .await;
        let got = good.inbox.got();
        assert_eq!(event_ids(&got), expected);
        assert!(got.iter().all(|g| g.verified));
        // The hanging one timed out, is retried later, and has delivered nothing.
        until("the hanging delivery timed out", async || {
            log(&ctx, &key, &hung).await[0]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("no answer within 2 s"))
        })
        .await;
        let stuck = log(&ctx, &key, &hung).await;
        assert_eq!(stuck.len(), expected.len());
        assert!(stuck.iter().all(|d| d["state"] == "pending"), "{stuck:?}");
        assert!(stuck[1..].iter().all(|d| d["attempts"] == 0));
        assert!(hang.inbox.got().is_empty());
        // Deleting it stops it, and takes its log with it.
        ctx.delete(&format!("/v1/webhooks/{hung}"), &key)
            .await
            .expect(200);
        ctx.get(&format!("/v1/webhooks/{hung}/deliveries"), &key)
            .await
            .problem(404, "not_found");
    }
);

both_backends!(
    bad_input_is_refused_and_tenants_see_only_their_own,
    |ctx: TestContext| async move {
        let acme = ctx.tenant("acme").await;
        let beta = ctx.tenant("beta").await;
        let (ka, _) = ctx.key("tenant-admin", acme["id"].as_str()).await;
        let (member, _) = ctx.key("tenant-member", acme["id"].as_str()).await;
        let (kb, _) = ctx.key("tenant-admin", beta["id"].as_str()).await;
        let (viewer, _) = ctx.key("operator-viewer", None).await;
        let op = ctx.operator_key.clone();
        let created = async || {
            ctx.get("/v1/events?action=webhook.created", &op)
                .await
                .expect(200)["items"]
                .as_array()
                .unwrap()
                .len()
        };

        // Private and loopback addresses, without serve --webhook-allow-private.
        for url in [
            "http://127.0.0.1:9000/hook",
            "http://localhost:8080/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://10.0.0.7/hook",
            "http://[::1]:9000/hook",
        ] {
            let body = ctx
                .post("/v1/webhooks", &ka, &json!({"url": url}))
                .await
                .problem(400, "invalid_request");
            assert!(
                body["detail"]
                    .as_str()
                    .unwrap()
                    .contains("--webhook-allow-private"),
                "{body}"
            );
        }
        let long = format!("https://hooks.example.com/{}", "a".repeat(2100));
        let bad: Vec<Value> = vec![
            json!({"url": "ftp://hooks.example.com/x"}),
            json!({"url": "not a url"}),
            json!({"url": ""}),
            json!({"url": long}),
            json!({"url": "https://user:pw@hooks.example.com/x"}),
            json!({"url": "https://hooks.example.com/x", "events": ["bogus.*"]}),
            json!({"url": "https://hooks.example.com/x", "events": []}),
            json!({"url": "https://hooks.example.com/x", "events": ["instance.Failed"]}),
            json!({"url": "https://hooks.example.com/x", "events": ["instance"]}),
            json!({"url": "https://hooks.example.com/x", "events": "instance.*"}),
            json!({"url": "https://hooks.example.com/x", "secret": "mine"}),
            json!({"events": ["*"]}),
        ];
        for b in &bad {
            ctx.post("/v1/webhooks", &ka, b)
                .await
                .problem(400, "invalid_request");
        }
        let body = ctx
            .post(
                "/v1/webhooks",
                &ka,
                &json!({"url": "https://hooks.example.com/x", "events": ["bogus.*"]}),
            )
            .await
            .problem(400, "invalid_request");
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("unknown event kind 'bogus'"),
            "{body}"
        );
        // Roles: members and viewers read, they do not subscribe.
        for k in [&member, &viewer] {
            ctx.post(
                "/v1/webhooks",
                k,
                &json!({"url": "https://hooks.example.com/x"}),
            )
            .await
            .problem(403, "forbidden");
        }
        assert_eq!(created().await, 0, "nothing refused was made");
        assert!(
            ctx.get("/v1/webhooks", &op).await.expect(200)["items"]
                .as_array()
                .unwrap()
                .is_empty()
        );

        // A good one, for events that do not exist yet (maintenance).
        let v = ctx
            .post(
                "/v1/webhooks",
                &ka,
                &json!({"url": "https://hooks.example.com/acme",
                        "events": ["instance.*", "maintenance.scheduled", "invoice.finalized"]}),
            )
            .await
            .expect(201);
        let hook = v["id"].as_str().unwrap().to_string();
        assert!(hook.starts_with("whk_"));
        assert_eq!(v["tenant_id"], acme["id"]);
        assert_eq!(v["pending_deliveries"], 0);
        assert!(v["secret"].as_str().unwrap().starts_with("whsec_"));
        let secret = v["secret"].as_str().unwrap().to_string();
        // The secret is shown once: never listed, never read back, not in the audit trail.
        let listed = ctx.get("/v1/webhooks", &ka).await.expect(200);
        assert_eq!(listed["items"].as_array().unwrap().len(), 1);
        assert!(!listed.to_string().contains(&secret));
        let shown = ctx
            .get(&format!("/v1/webhooks/{hook}"), &member)
            .await
            .expect(200);
        assert!(shown.get("secret").is_none());
        let events = ctx.get("/v1/events", &op).await.expect(200);
        assert!(!events.to_string().contains(&secret));
        // The operator's own webhook (no tenant) is not the tenant's to see.
        let opv = ctx
            .post(
                "/v1/webhooks",
                &op,
                &json!({"url": "https://ops.example.com/all"}),
            )
            .await
            .expect(201);
        assert!(opv["tenant_id"].is_null());
        assert_eq!(opv["events"], json!(["*"]));
        let op_hook = opv["id"].as_str().unwrap().to_string();
        let all = ctx.get("/v1/webhooks", &viewer).await.expect(200);
        assert_eq!(all["items"].as_array().unwrap().len(), 2);
        let only_acme = ctx.get("/v1/webhooks?tenant=acme", &op).await.expect(200);
        assert_eq!(only_acme["items"].as_array().unwrap().len(), 1);
        let acme_list = ctx.get("/v1/webhooks", &ka).await.expect(200);
        assert_eq!(acme_list["items"][0]["id"], hook.as_str());
        assert_eq!(acme_list["items"].as_array().unwrap().len(), 1);

        // Another tenant's webhook, the operator's, and made-up ids: not found, whatever
        // the operation.
        for (k, id) in [
            (&kb, hook.as_str()),
            (&ka, op_hook.as_str()),
            (&ka, "whk_0"),
            (&ka, "nope"),
        ] {
            ctx.get(&format!("/v1/webhooks/{id}"), k)
                .await
                .problem(404, "not_found");
            ctx.get(&format!("/v1/webhooks/{id}/deliveries"), k)
                .await
                .problem(404, "not_found");
            ctx.post(&format!("/v1/webhooks/{id}/test"), k, &json!({}))
                .await
                .problem(404, "not_found");
            ctx.delete(&format!("/v1/webhooks/{id}"), k)
                .await
                .problem(404, "not_found");
        }
        assert!(
            ctx.get("/v1/webhooks", &kb).await.expect(200)["items"]
                .as_array()
                .unwrap()
                .is_empty()
        );
        ctx.get("/v1/webhooks?tenant=acme", &kb)
            .await
            .problem(404, "not_found");
        ctx.post(
            "/v1/webhooks",
            &kb,
            &json!({"tenant_id": "acme", "url": "https://hooks.example.com/x"}),
        )
        .await
        .problem(404, "not_found");
        // Bad log queries.
        ctx.get(&format!("/v1/webhooks/{hook}/deliveries?cursor=abc"), &ka)
            .await
            .problem(400, "invalid_request");
        ctx.get(&format!("/v1/webhooks/{hook}/deliveries?state=lost"), &ka)
            .await
            .problem(400, "invalid_request");
        ctx.get(&format!("/v1/webhooks/{hook}/deliveries?limit=0"), &ka)
            .await
            .problem(400, "invalid_request");
        ctx.delete(&format!("/v1/webhooks/{hook}"), &member)
            .await
            .problem(403, "forbidden");
        assert_eq!(created().await, 2);

        // The operator lets private addresses in: a loopback receiver is accepted.
        ctx.svc.set_webhook_allow_private(true);
        ctx.post(
            "/v1/webhooks",
            &ka,
            &json!({"url": "http://127.0.0.1:9000/hook"}),
        )
        .await
        .expect(201);
        // The tenant deletes its own; the operator may delete any.
        ctx.delete(&format!("/v1/webhooks/{hook}"), &ka)
            .await
            .expect(200);
        ctx.get(&format!("/v1/webhooks/{hook}"), &ka)
            .await
            .problem(404, "not_found");
        ctx.delete(&format!("/v1/webhooks/{op_hook}"), &op)
            .await
            .expect(200);
        assert_eq!(
            ctx.get("/v1/webhooks", &op).await.expect(200)["items"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }
);

/// The case: a gang's node fails and is replaced; the tenant's webhook hears it.
async fn a_replaced_gang_node_reaches_the_tenants_webhook(db: Db) {
    let Some(g) = Gang::start(db).await else {
        return;
    };
    g.ctx.svc.set_webhook_allow_private(true);
    let r = Receiver::start(OK).await;
    let (hook, _) = subscribe(
        &g.ctx,
        &g.key,
        &r,
        json!({"events": ["instance.node_replaced", "instance.failed"]}),
    )
    .await;
    g.ctx.start_webhooks(Duration::from_secs(10));
    let inst = g
        .launch(json!({"gpu_model": "H100-SXM-80GB", "nodes": 4, "gang_level": "leaf_group"}))
        .await;
    let id = inst["id"].as_str().unwrap().to_string();
    let bad = nodes(&inst)[1].clone();
    g.clock.set(crate::gang_repair::at(600));
    g.xid79(&bad, 595).await;
    until("the replacement arrived", async || {
        !r.inbox.got().is_empty()
    })
    .await;
    let got = r.inbox.got();
    assert_eq!(
        got.len(),
        1,
        "only what the filter names: {:?}",
        r.inbox.actions()
    );
    let e = &got[0].payload["event"];
    assert_eq!(e["action"], "instance.node_replaced");
    assert_eq!(e["resource_id"], id.as_str());
    assert_eq!(e["after"]["change"]["failed_node"], bad.as_str());
    assert!(got[0].verified);
    assert_eq!(got[0].payload["webhook_id"], hook.as_str());
}

/// The case end to end: XID 79 on one node of a running 64-node reserved gang. The
/// gang stays `running` on a node of its pod, the failed node is `failed`, the tenant's
/// webhook receives the swap, usage bills what the tenant had and the contract's outage (its
/// SLA downtime) lasts from the fault until the pool got a spare.
async fn a_reserved_gang_repaired_end_to_end(db: Db) {
    let Some(g) = Gang::start(db).await else {
        return;
    };
    g.ctx.svc.set_webhook_allow_private(true);
    let r = Receiver::start(OK).await;
    subscribe(&g.ctx, &g.key, &r, json!({"events": ["instance.*"]})).await;
    g.ctx.start_webhooks(Duration::from_secs(10));
    // Everything the site sells (144 nodes less 3 spares) in one contract.
    let c = g
        .ctx
        .post(
            "/v1/contracts",
            &g.key,
            &json!({"gpu_model": "H100-SXM-80GB", "gpu_count": 1128, "site": "west",
                    "start_at": crate::gang_repair::at(0).to_string(),
                    "end_at": crate::gang_repair::at(7 * 86_400).to_string()}),
        )
        .await
        .expect(201);
    let cid = c["id"].as_str().unwrap().to_string();
    let inst = g
        .launch(
            json!({"class": "reserved", "contract_id": cid, "gpu_model": "H100-SXM-80GB",
                       "nodes": 64, "gang_level": "pod"}),
        )
        .await;
    assert_eq!(inst["state"], "running");
    let id = inst["id"].as_str().unwrap().to_string();
    let before = nodes(&inst);
    let the_pod = crate::gang_repair::pod(&before[0]).to_string();
    let bad = before.last().unwrap().clone();
    // GPU 0 falls off the bus an hour in; the agent's heartbeat says so 5 s later.
    g.clock.set(crate::gang_repair::at(3600));
    let ack = g.xid79(&bad, 3595).await;
    assert_eq!(ack["state"], "failed");
    assert_eq!(g.node_state(&bad).await, "failed");
    let after = g.instance(&id).await;
    assert_eq!(after["state"], "running", "{after}");
    let now = nodes(&after);
    assert_eq!(now.len(), 64);
    let new: Vec<&String> = now.iter().filter(|n| !before.contains(n)).collect();
    assert_eq!(new.len(), 1, "{now:?}");
    assert!(!now.contains(&bad));
    assert_eq!(crate::gang_repair::pod(new[0]), the_pod);
    // The webhook has the swap, signed.
    until("the swap reached the webhook", async || {
        r.inbox
            .actions()
            .contains(&"instance.node_replaced".to_string())
    })
    .await;
    let got = r.inbox.got();
    let swap = got
        .iter()
        .find(|d| d.payload["event"]["action"] == "instance.node_replaced")
        .unwrap();
    assert!(swap.verified);
    let change = &swap.payload["event"]["after"]["change"];
    assert_eq!(change["failed_node"], bad.as_str(), "{change}");
    assert_eq!(change["replacement"], new[0].as_str(), "{change}");
    // The pool's outage: 8 GPUs from the fault until the spare joined, 5 s.
    let outages = g
        .ctx
        .get(&format!("/v1/contracts/{cid}/outages"), &g.key)
        .await
        .expect(200);
    let o = outages.as_array().unwrap();
    assert_eq!(o.len(), 1, "{outages}");
    assert_eq!(o[0]["gpus"], 8);
    assert_eq!(o[0]["start_at"], crate::gang_repair::at(3595).to_string());
    assert_eq!(o[0]["end_at"], crate::gang_repair::at(3600).to_string());
    // Usage: 64 nodes to the fault, 63 while it went unheard, 64 again after.
    g.clock.set(crate::gang_repair::at(7200));
    g.terminate(&id).await;
    assert_eq!(g.gpu_seconds(&id).await, 512 * 3595 + 504 * 5 + 512 * 3600);
    // Nothing failed: no instance.failed reached the tenant.
    assert!(!r.inbox.actions().contains(&"instance.failed".to_string()));
}

/// A maintenance window's notice reaches the tenant's webhook when it is scheduled, and the
/// stop when the window begins; both signed, in that order.
async fn a_maintenance_notice_reaches_the_tenants_webhook(db: Db) {
    let Some(g) = Gang::start(db).await else {
        return;
    };
    g.ctx.svc.set_webhook_allow_private(true);
    let r = Receiver::start(OK).await;
    let (hook, _) = subscribe(
        &g.ctx,
        &g.key,
        &r,
        json!({"events": ["maintenance.*", "instance.preempted"]}),
    )
    .await;
    g.ctx.start_webhooks(Duration::from_secs(10));
    let inst = g
        .launch(json!({"gpu_model": "H100-SXM-80GB", "gpus": 8}))
        .await;
    let id = inst["id"].as_str().unwrap().to_string();
    let node = nodes(&inst)[0].clone();
    g.clock.set(crate::gang_repair::at(100));
    let start = crate::gang_repair::at(1900).to_string();
    let w = g
        .ctx
        .post(
            "/v1/maintenance",
            &g.ctx.operator_key,
            &json!({"nodes": [node], "start_at": start,
                    "end_at": crate::gang_repair::at(5500).to_string(),
                    "reason": "PSU swap"}),
        )
        .await
        .expect(201);
    let wid = w["id"].as_str().unwrap().to_string();
    until("the notice arrived", async || !r.inbox.got().is_empty()).await;
    let got = r.inbox.got();
    let e = &got[0].payload["event"];
    assert_eq!(e["action"], "maintenance.scheduled", "{e}");
    assert_eq!(e["resource_id"], id.as_str());
    assert_eq!(e["after"]["maintenance_id"], wid.as_str());
    assert_eq!(e["after"]["outcome"], "stopped_at_start");
    assert_eq!(e["after"]["start_at"], start.as_str(), "{e}");
    assert!(got[0].verified);
    assert_eq!(got[0].payload["webhook_id"], hook.as_str());
    // The window begins: the instance is stopped and the tenant hears of it.
    g.clock.set(crate::gang_repair::at(1900));
    g.ctx.svc.tick(crate::gang_repair::at(1900)).await.unwrap();
    g.ctx
        .svc
        .health_tick(crate::gang_repair::at(1900))
        .await
        .unwrap();
    until("the stop arrived", async || {
        r.inbox
            .actions()
            .contains(&"instance.preempted".to_string())
    })
    .await;
    let actions = r.inbox.actions();
    assert_eq!(
        actions.first().map(String::as_str),
        Some("maintenance.scheduled")
    );
    assert!(r.inbox.got().iter().all(|g| g.verified));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_manages_webhooks() {
    let ctx = TestContext::start(Db::Sqlite).await;
    let op = ctx.operator_key.clone();
    ctx.tenant("acme").await;
    // Without the operator's permission a loopback URL is refused, with the reason.
    let o = neocloud(
        &ctx,
        &op,
        &[
            "webhooks",
            "create",
            "http://127.0.0.1:9/hook",
            "--tenant",
            "acme",
        ],
    )
    .await;
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--webhook-allow-private"),
        "{}",
        stderr(&o)
    );
    let r = Receiver::start(OK).await;
    ctx.start_webhooks(Duration::from_secs(10));
    let o = neocloud(
        &ctx,
        &op,
        &[
            "-o",
            "json",
            "webhooks",
            "create",
            &r.url,
            "--tenant",
            "acme",
            "--event",
            "webhook.*",
            "--event",
            "instance.failed",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let id = v["id"].as_str().unwrap().to_string();
    r.set_secret(v["secret"].as_str().unwrap());
    assert_eq!(v["events"], json!(["webhook.*", "instance.failed"]));
    assert_eq!(v["url"], r.url.as_str());

    let o = neocloud(&ctx, &op, &["webhooks", "list"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains(&id) && out.contains("acme") && out.contains("PENDING"),
        "{out}"
    );
    assert!(!out.contains("whsec_"));

    let o = neocloud(&ctx, &op, &["webhooks", "test", &id]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("webhook.test"));
    until("the test event arrived", async || !r.inbox.got().is_empty()).await;
    assert!(r.inbox.got()[0].verified);
    until("the delivery is logged", async || {
        let o = neocloud(&ctx, &op, &["webhooks", "deliveries", &id]).await;
        stdout(&o).contains("delivered")
    })
    .await;
    let o = neocloud(
        &ctx,
        &op,
        &["webhooks", "deliveries", &id, "--state", "lost"],
    )
    .await;
    assert!(!o.status.success());
    let o = neocloud(&ctx, &op, &["-q", "webhooks", "delete", &id]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), id);
    let o = neocloud(&ctx, &op, &["webhooks", "get", &id]).await;
    assert_eq!(o.status.code(), Some(3), "not found: {}", stderr(&o));
}

/// `serve` runs the dispatcher: an operator webhook on a loopback receiver (allowed through
/// the environment) hears a tenant being created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_delivers_webhooks() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    const BIN: &str = env!("CARGO_BIN_EXE_neocloud");
    let dir = crate::ctx::temp_dir();
    let d = dir.clone();
    let (mut child, addr) = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&d)
            .env("RUST_LOG", "warn")
            .env("NEOCLOUD_WEBHOOK_ALLOW_PRIVATE", "true")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("serve exited early").unwrap();
            if let Some(rest) = line.strip_prefix("neocloud is serving on http://") {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        (child, addr)
    })
    .await
    .unwrap();
    let key = std::fs::read_to_string(dir.join("operator.key"))
        .unwrap()
        .trim()
        .to_string();
    let r = Receiver::start(OK).await;
    let cli = async |args: Vec<String>| {
        let (addr, key) = (addr.clone(), key.clone());
        tokio::task::spawn_blocking(move || {
            Command::new(BIN)
                .args(["--url", &format!("http://{addr}"), "--api-key", &key])
                .args(args)
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    let o = cli(vec![
        "-o".into(),
        "json".into(),
        "webhooks".into(),
        "create".into(),
        r.url.clone(),
        "--event".into(),
        "tenant.*".into(),
    ])
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    r.set_secret(v["secret"].as_str().unwrap());
    let o = cli(vec!["tenants".into(), "create".into(), "acme".into()]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    until("the tenant's creation arrived", async || {
        !r.inbox.got().is_empty()
    })
    .await;
    let g = &r.inbox.got()[0];
    assert!(g.verified);
    assert_eq!(g.payload["event"]["action"], "tenant.created");
    child.kill().unwrap();
    let _ = child.wait();
}

crate::on_both!(
    a_receiver_down_for_ten_minutes_gets_every_event_in_order,
    a_replaced_gang_node_reaches_the_tenants_webhook,
    a_maintenance_notice_reaches_the_tenants_webhook,
    a_reserved_gang_repaired_end_to_end,
);
