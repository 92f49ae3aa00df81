//! neocloud's HTTP API.
//!
//! Handlers are thin: parse, authenticate, call the service, map the error. Each handler is
//! bound to its path through `utoipa-axum`, so the served OpenAPI document
//! (`/v1/openapi.json`) and the router cannot disagree; the committed copy in `openapi/`
//! is checked against the code by a test.

mod doc;
mod error;
mod extract;
pub mod forward;
pub mod lambda;
mod maintenance;
mod routes;
pub mod webhooks;

use std::future::Future;

use axum::Router;
use neocloud_service::Service;
use tokio::net::TcpListener;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;

pub use error::{ApiError, Problem};
pub use lambda::LambdaConfig;
pub use webhooks::DispatcherConfig;

/// What every handler can reach. Cloned for every request (each extractor and middleware
/// takes its own copy), so it is one reference count, not a copy of the service's handles.
#[derive(Clone)]
pub struct AppState(std::sync::Arc<Shared>);

/// The parts of [`AppState`].
pub struct Shared {
    /// The service.
    pub svc: Service,
    /// The client a follower forwards writes to the leader with.
    pub http: reqwest::Client,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    fn new(svc: Service) -> Self {
        AppState(std::sync::Arc::new(Shared {
            svc,
            http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(2))
                .timeout(std::time::Duration::from_secs(60))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
        }))
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "neocloud",
        description = "Control plane of a GPU cloud: fleet, tenants, keys and the audit trail. \
            Authenticate with `Authorization: Bearer KEY`. Errors are `application/problem+json` \
            with a stable `code`. Every POST, PUT, PATCH and DELETE accepts an `Idempotency-Key` \
            header (1-255 printable ASCII characters, scoped to the API key): a retry with the \
            same key and request changes nothing again and returns the first answer (with \
            `Idempotent-Replayed: true`); the same key with another request is a 422 \
            `idempotency_key_reused`.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    // What a webhook receives: no operation returns it, receivers' generators want it.
    components(schemas(neocloud_types::WebhookPayload)),
    tags(
        (name = "system", description = "Health and the API description."),
        (name = "fleet", description = "GPU models, sites, blocks, nodes and fleet-file import."),
        (name = "tenancy", description = "Tenants, API keys and the audit trail."),
        (name = "instances", description = "Instances, quotas and the queue."),
        (name = "contracts", description = "Quotes, contracts and the capacity calendar."),
        (name = "billing", description = "The price book and the usage ledger."),
        (name = "health",
            description = "Node lifecycle, planned maintenance, health history and the XID policy."),
        (name = "agent", description = "What node agents call: register and heartbeat."),
        (name = "webhooks", description = "URLs subscribed to events: signed deliveries, retried in order, and their log.")
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

fn api() -> OpenApiRouter<AppState> {
    maintenance::register(routes::register(OpenApiRouter::with_openapi(
        ApiDoc::openapi(),
    )))
}

/// The OpenAPI document, generated from the handlers and finished for generators: list
/// items and union variants are named schemas, errors are problem+json with every status
/// an operation can answer.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, doc) = api().split_for_parts();
    doc::finish(doc)
}

/// The OpenAPI document as pretty JSON (what `/v1/openapi.json` serves and what is
/// committed in `openapi/neocloud.json`).
pub fn openapi_json() -> String {
    openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// The whole HTTP application, with the Lambda-compatible API's default settings.
pub fn app(svc: Service) -> Router {
    app_with(svc, LambdaConfig::default())
}

/// The whole HTTP application: `/v1`, `/metrics`, the web console, and the
/// Lambda-Cloud-compatible API under `/lambda/api/v1` (launching as `lambda` says).
pub fn app_with(svc: Service, lambda: LambdaConfig) -> Router {
    let (router, doc) = api().split_for_parts();
    // Shared, not copied, by each request for it.
    let doc_json = axum::body::Bytes::from(doc::finish(doc).to_pretty_json().unwrap_or_default());
    router
        .route(
            "/v1/openapi.json",
            axum::routing::get(move || {
                let body = doc_json.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        body,
                    )
                }
            }),
        )
        .fallback(|| async {
            ApiError(neocloud_service::Error::new(
                neocloud_service::ErrorCode::NotFound,
                "no such endpoint; see /v1/openapi.json",
            ))
        })
        .method_not_allowed_fallback(|| async {
            ApiError(neocloud_service::Error::new(
                neocloud_service::ErrorCode::MethodNotAllowed,
                "this endpoint does not support that method; see /v1/openapi.json",
            ))
        })
        .route("/metrics", axum::routing::get(metrics))
        .with_state(AppState::new(svc.clone()))
        // The Lambda-Cloud-compatible API: its own shapes and errors, the same service.
        .nest(
            lambda::PREFIX,
            lambda::router(AppState::new(svc.clone()), lambda),
        )
        // The web console: HTML pages at `/`, outside `/v1`, calling the same service.
        .merge(neocloud_console::router(svc.clone()))
        .layer(axum::middleware::from_fn_with_state(
            AppState::new(svc.clone()),
            forward::forward_writes,
        ))
        .layer(axum::middleware::from_fn_with_state(
            AppState::new(svc),
            record_request,
        ))
        // Gzip for clients that ask (browsers do): console pages, the map and big lists
        // shrink several times. The fastest level: the 491 KB memphis-1 map costs about 10 ms
        // instead of 70 at the default, for a slightly larger result. A forwarded answer
        // already encoded by the leader is passed on as it is.
        .layer(
            tower_http::compression::CompressionLayer::new()
                .quality(tower_http::compression::CompressionLevel::Fastest),
        )
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

/// Prometheus metrics (no key: scrape it from inside the operator's network).
async fn metrics(
    axum::extract::State(st): axum::extract::State<AppState>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let body = st.svc.metrics_text().await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response())
}

/// Counts every request by its route template, method and status, and times it.
async fn record_request(
    axum::extract::State(st): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    // Both are reference counted or inline: nothing is copied per request.
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .cloned();
    let method = req.method().clone();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    st.svc.record_http(
        route.as_ref().map_or("unmatched", |m| m.as_str()),
        method.as_str(),
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}

/// Serves the API on `listener` until `shutdown` completes, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    svc: Service,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, svc, LambdaConfig::default(), shutdown).await
}

/// [`serve`], launching through the Lambda-compatible API as `lambda` says.
pub async fn serve_with(
    listener: TcpListener,
    svc: Service,
    lambda: LambdaConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Every route is made a finished service once, here (`with_state`), and each
    // connection shares the router by reference count (`into_make_service`). Serving the
    // `Router` itself would copy its whole route table into every new connection: about
    // 640 KB each (the OpenAPI document among it), 27 GB for 42,000 agents' connections.
    let app = app_with(svc, lambda).with_state(());
    axum::serve(listener, app.into_make_service())
        .with_graceful_shutdown(shutdown)
        .await
}
