//! Forwarding writes from a follower replica to the leader.
//!
//! Only the holder of the allocator lease changes state (the store fences everyone else), so
//! a follower that receives a write — any method but GET and HEAD, on the API or a console
//! form — passes it to the leader unchanged and returns the leader's answer. Reads are
//! served where they arrive. A request that was already forwarded once is never forwarded
//! again: when leadership is changing it gets a 503 with `Retry-After`, which clients and
//! agents retry.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;

/// Marks a request a replica forwarded (its value is the forwarding replica's id).
pub const FORWARDED: &str = "x-neocloud-forwarded";

/// Largest body forwarded (fleet files are the largest requests).
const MAX_BODY: usize = 64 * 1024 * 1024;

fn unavailable(message: String) -> Response {
    let mut r = crate::ApiError(neocloud_service::Error::new(
        neocloud_service::ErrorCode::Unavailable,
        message,
    ))
    .into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// The middleware: writes on a follower go to the leader.
pub async fn forward_writes(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD) || st.svc.is_leader() {
        return next.run(req).await;
    }
    if req.headers().contains_key(FORWARDED) {
        return unavailable(
            "this replica was sent a forwarded write but does not lead (leadership is changing); retry"
                .into(),
        );
    }
    // A heartbeat is answered here when it has no news (the handler passes it on itself
    // when it has), and so is each heartbeat of a relay's batch.
    if req.method() == Method::POST
        && matches!(req.uri().path(), AGENT_HEARTBEAT | AGENT_HEARTBEATS)
    {
        return next.run(req).await;
    }
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return crate::ApiError(neocloud_service::Error::new(
                neocloud_service::ErrorCode::PayloadTooLarge,
                "the request body is too large",
            ))
            .into_response();
        }
    };
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    to_leader(&st, parts.method, &path, &parts.headers, peer, body).await
}

/// The path of agents' heartbeats, which a follower answers itself unless they carry news.
pub const AGENT_HEARTBEAT: &str = "/v1/agent/heartbeat";

/// The path of relays' batches of heartbeats: each heartbeat is answered here or passed on
/// alone, as if it had come alone.
pub const AGENT_HEARTBEATS: &str = "/v1/agent/heartbeats";

/// Passes a request to the leader unchanged and returns its answer (or the 502/503/504
/// that says why there is none).
pub async fn to_leader(
    st: &AppState,
    method: Method,
    path: &str,
    headers: &axum::http::HeaderMap,
    peer: Option<std::net::SocketAddr>,
    body: axum::body::Bytes,
) -> Response {
    let Some(leader) = st.svc.role().and_then(|r| r.leader_url) else {
        return unavailable(
            "no control-plane replica leads right now (failover in progress); retry".into(),
        );
    };
    let url = format!("{}{path}", leader.trim_end_matches('/'));
    let mut out = st.http.request(method, &url).body(body);
    for (name, value) in headers {
        if !neocloud_types::hop_by_hop_header(name.as_str()) {
            out = out.header(name, value);
        }
    }
    if let Some(peer) = peer {
        out = out.header("x-forwarded-for", peer.ip().to_string());
    }
    // The leader checks console forms' origin against the host the browser used.
    if !headers.contains_key("x-forwarded-host")
        && let Some(host) = headers.get(header::HOST)
    {
        out = out.header("x-forwarded-host", host);
    }
    out = out.header(FORWARDED, st.svc.replica_id().unwrap_or_default());
    let resp = match out.send().await {
        Ok(r) => r,
        // Not delivered: nothing happened, retrying is safe.
        Err(e) if e.is_connect() => {
            tracing::warn!(leader = %leader, error = %e, "could not reach the leader");
            return unavailable(format!(
                "the leader at {leader} cannot be reached (failover may be in progress); retry"
            ));
        }
        // Delivered, answer lost: the leader may have done it.
        Err(e) => {
            tracing::warn!(leader = %leader, error = %e, "the leader did not answer a forwarded write");
            return unanswered(&leader, e.is_timeout());
        }
    };
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut headers = axum::http::HeaderMap::new();
    for (name, value) in resp.headers() {
        if !neocloud_types::hop_by_hop_header(name.as_str()) {
            headers.append(name.clone(), value.clone());
        }
    }
    match resp.bytes().await {
        Ok(bytes) => {
            let mut r = Response::new(Body::from(bytes));
            *r.status_mut() = status;
            *r.headers_mut() = headers;
            r
        }
        Err(e) => {
            tracing::warn!(leader = %leader, error = %e, "the leader broke off its answer");
            unanswered(&leader, e.is_timeout())
        }
    }
}

/// A forwarded write whose answer was lost: it may or may not have been applied, so this is
/// not a plain "retry" — only a retry with the same Idempotency-Key is safe.
fn unanswered(leader: &str, timeout: bool) -> Response {
    crate::ApiError(neocloud_service::Error::new(
        neocloud_service::ErrorCode::Unavailable,
        format!(
            "the leader at {leader} took the request but its answer was lost; it may have been \
             applied: retry only with the same Idempotency-Key"
        ),
    ))
    .into_response_with_status(if timeout {
        StatusCode::GATEWAY_TIMEOUT
    } else {
        StatusCode::BAD_GATEWAY
    })
}
