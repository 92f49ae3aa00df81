//! `neocloud relay`: a heartbeat relay between the agents of a rack (or a row) and the
//! control plane.
//!
//! Agents point `--server` at the relay instead of the control plane. Each heartbeat an
//! agent sends (`POST /v1/agent/heartbeat`) waits a few milliseconds at the relay, which
//! passes the heartbeats of many agents on in one request (`POST /v1/agent/heartbeats`) and
//! answers each agent with exactly what the control plane answered for its heartbeat. The
//! control plane pays for one HTTP request per batch instead of one per node; each
//! heartbeat still carries its own node's key and is judged as if it had come alone.
//!
//! Everything else an agent calls (registration, the workloads long poll, reports) and a
//! heartbeat with an `Idempotency-Key` is passed through unchanged, one request for one.
//!
//! The relay holds no state: a relay that stops loses only the heartbeats in flight, which
//! the agents send again at their next beat. Agents given `--server RELAY,CP1,CP2` fail
//! over to the control plane itself when their relay cannot be reached.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use neocloud_types::{HEARTBEAT_BATCH_MAX, HeartbeatBatch, HeartbeatBatchAnswer, RelayedHeartbeat};
use serde_json::value::RawValue;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::SecretKey;

/// Runs a heartbeat relay: agents send their heartbeats to it, and it passes them on to the
/// control plane in batches (one request for many nodes), answering each agent with what
/// the control plane answered for its heartbeat. Everything else is passed through.
#[derive(Clone, Debug, clap::Args)]
pub struct RelayArgs {
    /// Address agents reach the relay at.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,

    /// URL of the control plane, or the URLs of several replicas separated by commas: the
    /// relay moves to the next when one cannot be reached or answers 502, 503 or 504.
    #[arg(long, env = "NEOCLOUD_RELAY_SERVER", value_name = "URL[,URL...]")]
    pub server: String,

    /// Node-agent API key the relay's batches are sent with (an enrollment key will do:
    /// each heartbeat in a batch still carries its own node's key).
    #[arg(
        long,
        env = "NEOCLOUD_RELAY_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub key: SecretKey,

    /// Most heartbeats passed on in one request (1 to 1,000).
    #[arg(long, value_name = "N", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_batch: u32,

    /// Longest a heartbeat waits at the relay for others to join its batch, milliseconds
    /// (0 to 1,000). Agents beat every 10 s, so a tenth of a second is nothing to them;
    /// choose it so that a batch holds a few dozen heartbeats (the relay's heartbeats a
    /// second times this): 500 nodes beating every 10 s fill 5 in 100 ms, 5,000 fill 50.
    #[arg(long, value_name = "MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub max_wait_ms: u64,

    /// Most batches in flight to the control plane at once.
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub max_in_flight: u32,
}

/// A heartbeat waiting for its batch, and where its answer goes.
struct Waiting {
    key: String,
    heartbeat: Box<RawValue>,
    answer: oneshot::Sender<Answer>,
}

/// What an agent is answered: status and JSON body.
type Answer = (StatusCode, Bytes);

/// Counters the relay logs when it stops.
#[derive(Default)]
struct Counts {
    heartbeats: AtomicU64,
    batches: AtomicU64,
    passed_through: AtomicU64,
}

struct Relay {
    http: reqwest::Client,
    /// For calls that may wait long (the workloads long poll waits up to 55 s).
    http_long: reqwest::Client,
    servers: Vec<String>,
    /// The server calls go to now: the next one after one that could not be reached or
    /// answered 502, 503 or 504.
    at: AtomicUsize,
    key: SecretKey,
    queue: mpsc::Sender<Waiting>,
    counts: Counts,
}

/// Runs the relay until SIGTERM or SIGINT.
pub async fn run(args: RelayArgs) -> anyhow::Result<()> {
    run_until(args, crate::shutdown_signal()).await
}

/// Like [`run`], but stops when `shutdown` completes (for embedding and tests).
pub async fn run_until(
    args: RelayArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let servers: Vec<String> = args
        .server
        .split(',')
        .map(|s| s.trim().trim_end_matches('/').to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if servers.is_empty() {
        anyhow::bail!("--server: give the control plane's URL, e.g. http://neocloud.internal:8080");
    }
    for s in &servers {
        if !(s.starts_with("http://") || s.starts_with("https://")) {
            anyhow::bail!("--server: '{s}' is not an http:// or https:// URL");
        }
    }
    let agent = concat!("neocloud-relay/", env!("CARGO_PKG_VERSION"));
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .user_agent(agent)
        .build()?;
    let http_long = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(75))
        .user_agent(agent)
        .build()?;
    let (tx, rx) = mpsc::channel(16 * 1024);
    let relay = Arc::new(Relay {
        http,
        http_long,
        servers,
        at: AtomicUsize::new(0),
        key: args.key.clone(),
        queue: tx,
        counts: Counts::default(),
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    let batcher = tokio::spawn(batches(
        relay.clone(),
        rx,
        usize::try_from(args.max_batch).unwrap_or(HEARTBEAT_BATCH_MAX),
        Duration::from_millis(args.max_wait_ms),
        usize::try_from(args.max_in_flight).unwrap_or(4),
    ));
    let local = listener.local_addr()?;
    // On stdout, for scripts and tests that listen on port 0.
    println!("neocloud relay is listening on http://{local}");
    tracing::info!(
        listen = %local,
        servers = %relay.servers.join(","),
        max_batch = args.max_batch,
        max_wait_ms = args.max_wait_ms,
        "relay listening"
    );
    let app = axum::Router::new()
        .route("/v1/agent/heartbeat", axum::routing::post(heartbeat))
        .fallback(pass_through)
        .with_state(relay.clone());
    axum::serve(listener, app.into_make_service())
        .with_graceful_shutdown(shutdown)
        .await?;
    batcher.abort();
    tracing::info!(
        heartbeats = relay.counts.heartbeats.load(Ordering::Relaxed),
        batches = relay.counts.batches.load(Ordering::Relaxed),
        passed_through = relay.counts.passed_through.load(Ordering::Relaxed),
        "relay stopped"
    );
    Ok(())
}

/// A problem+json answer made by the relay itself.
fn problem(status: StatusCode, code: &str, detail: &str) -> Answer {
    let body = serde_json::json!({
        "type": format!("urn:neocloud:problem:{code}"),
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
        "code": code,
    });
    (status, Bytes::from(body.to_string()))
}

fn respond((status, body): Answer) -> Response {
    let ct = if status.is_success() {
        "application/json"
    } else {
        "application/problem+json"
    };
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

/// An agent's heartbeat: queued for the next batch, unless it is one the relay passes on
/// alone (an Idempotency-Key, no bearer key, a body that is not JSON: the control plane
/// then answers it itself, with its own errors).
async fn heartbeat(State(relay): State<Arc<Relay>>, req: Request) -> Response {
    let key = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|k| k.trim().to_string());
    let alone = key.is_none() || req.headers().contains_key("idempotency-key");
    let (parts, body) = req.into_parts();
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let parsed = std::str::from_utf8(&body)
        .ok()
        .and_then(|s| RawValue::from_string(s.to_string()).ok())
        .filter(|v| v.get().trim_start().starts_with('{'));
    let (Some(key), Some(heartbeat), false) = (key, parsed, alone) else {
        return forward(&relay, parts.method, &parts.uri, &parts.headers, body).await;
    };
    let (tx, rx) = oneshot::channel();
    let waiting = Waiting {
        key,
        heartbeat,
        answer: tx,
    };
    if relay.queue.send(waiting).await.is_err() {
        return respond(problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the relay is stopping; retry",
        ));
    }
    relay.counts.heartbeats.fetch_add(1, Ordering::Relaxed);
    match rx.await {
        Ok(answer) => respond(answer),
        Err(_) => respond(problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the relay dropped the heartbeat; retry",
        )),
    }
}

/// Collects waiting heartbeats into batches of at most `max` (or what came within `wait`
/// of the first) and sends each, at most `in_flight` at once.
async fn batches(
    relay: Arc<Relay>,
    mut rx: mpsc::Receiver<Waiting>,
    max: usize,
    wait: Duration,
    in_flight: usize,
) {
    let slots = Arc::new(Semaphore::new(in_flight));
    while let Some(first) = rx.recv().await {
        let mut batch = Vec::with_capacity(max);
        batch.push(first);
        let deadline = tokio::time::Instant::now() + wait;
        while batch.len() < max {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(w)) => batch.push(w),
                Ok(None) | Err(_) => break,
            }
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let relay = relay.clone();
        tokio::spawn(async move {
            send_batch(&relay, batch).await;
            drop(slot);
        });
    }
}

/// Sends one batch and hands each agent its answer; when no server takes the batch, every
/// agent in it is answered 503 and sends its heartbeat again (its events are kept until
/// acknowledged).
async fn send_batch(relay: &Relay, batch: Vec<Waiting>) {
    let mut senders = Vec::with_capacity(batch.len());
    let mut heartbeats = Vec::with_capacity(batch.len());
    for w in batch {
        senders.push(w.answer);
        heartbeats.push(RelayedHeartbeat {
            key: w.key,
            heartbeat: w.heartbeat,
        });
    }
    let body = match serde_json::to_vec(&HeartbeatBatch { heartbeats }) {
        Ok(b) => b,
        Err(e) => {
            let a = problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                &format!("the relay could not encode the batch: {e}"),
            );
            for s in senders {
                let _ = s.send(a.clone());
            }
            return;
        }
    };
    relay.counts.batches.fetch_add(1, Ordering::Relaxed);
    let failed = match post_batch(relay, body).await {
        Ok(answers) if answers.answers.len() == senders.len() => {
            for (s, a) in senders.into_iter().zip(answers.answers) {
                let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::BAD_GATEWAY);
                let _ = s.send((status, Bytes::from(String::from(Box::<str>::from(a.body)))));
            }
            return;
        }
        Ok(answers) => problem(
            StatusCode::BAD_GATEWAY,
            "unavailable",
            &format!(
                "the control plane answered {} heartbeats for the {} sent",
                answers.answers.len(),
                senders.len()
            ),
        ),
        Err(a) => a,
    };
    for s in senders {
        let _ = s.send(failed.clone());
    }
}

/// Posts a batch to the current server, moving on to the next one when it cannot be
/// reached or answers 502, 503 or 504; what to answer the batch's agents when none takes it.
async fn post_batch(relay: &Relay, body: Vec<u8>) -> Result<HeartbeatBatchAnswer, Answer> {
    let n = relay.servers.len();
    let mut last = problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "no control plane could be reached through the relay; retry",
    );
    for _ in 0..n {
        let at = relay.at.load(Ordering::Relaxed) % n;
        let server = &relay.servers[at];
        let sent = relay
            .http
            .post(format!("{server}/v1/agent/heartbeats"))
            .bearer_auth(relay.key.expose())
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(server = %server, error = %crate::client::error_chain(&e), "a batch of heartbeats was not taken");
                relay.at.store((at + 1) % n, Ordering::Relaxed);
                continue;
            }
        };
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap_or_default();
        if status == 200 {
            return serde_json::from_slice(&bytes).map_err(|e| {
                problem(
                    StatusCode::BAD_GATEWAY,
                    "unavailable",
                    &format!("the control plane's answer to a batch could not be read: {e}"),
                )
            });
        }
        if matches!(status, 502..=504) {
            relay.at.store((at + 1) % n, Ordering::Relaxed);
            last = (
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                bytes,
            );
            continue;
        }
        // The relay's own key or the batch was refused: the agents cannot fix that, so say
        // what the control plane said, as a 502 of the relay.
        tracing::error!(server = %server, status, body = %String::from_utf8_lossy(&bytes), "the control plane refused a batch of heartbeats");
        let detail = format!(
            "the relay's batch was refused by the control plane (HTTP {status}): {}",
            String::from_utf8_lossy(&bytes)
        );
        return Err(problem(StatusCode::BAD_GATEWAY, "unavailable", &detail));
    }
    Err(last)
}

/// A request's body, up to what the control plane itself takes (fleet files are the
/// largest); a larger one is answered 413 here.
async fn read_body(body: Body) -> Result<Bytes, Response> {
    axum::body::to_bytes(body, 64 * 1024 * 1024)
        .await
        .map_err(|_| {
            respond(problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is too large",
            ))
        })
}

/// Anything but a batched heartbeat: passed to the control plane unchanged.
async fn pass_through(State(relay): State<Arc<Relay>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    forward(&relay, parts.method, &parts.uri, &parts.headers, body).await
}

/// One request passed on as it came. Only a server that cannot be reached is skipped for
/// the next; every answer, errors included, goes back to the agent as it was.
async fn forward(
    relay: &Relay,
    method: Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    relay.counts.passed_through.fetch_add(1, Ordering::Relaxed);
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let n = relay.servers.len();
    for _ in 0..n {
        let at = relay.at.load(Ordering::Relaxed) % n;
        let server = &relay.servers[at];
        let mut out = relay
            .http_long
            .request(method.clone(), format!("{server}{target}"))
            .body(body.clone());
        for (name, value) in headers {
            if !neocloud_types::hop_by_hop_header(name.as_str()) {
                out = out.header(name, value);
            }
        }
        let resp = match out.send().await {
            Ok(r) => r,
            Err(e) if e.is_connect() => {
                tracing::warn!(server = %server, error = %crate::client::error_chain(&e), "control plane not reached");
                relay.at.store((at + 1) % n, Ordering::Relaxed);
                continue;
            }
            Err(e) => {
                return respond(problem(
                    StatusCode::BAD_GATEWAY,
                    "unavailable",
                    &format!(
                        "the control plane took the request but its answer was lost: {}",
                        crate::client::error_chain(&e)
                    ),
                ));
            }
        };
        let status =
            StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let mut out_headers = HeaderMap::new();
        for (name, value) in resp.headers() {
            if !neocloud_types::hop_by_hop_header(name.as_str()) {
                out_headers.append(name.clone(), value.clone());
            }
        }
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                return respond(problem(
                    StatusCode::BAD_GATEWAY,
                    "unavailable",
                    &format!(
                        "the control plane broke off its answer: {}",
                        crate::client::error_chain(&e)
                    ),
                ));
            }
        };
        let mut r = Response::new(Body::from(bytes));
        *r.status_mut() = status;
        *r.headers_mut() = out_headers;
        return r;
    }
    respond(problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "no control plane could be reached through the relay; retry",
    ))
}
