//! The web console served by `neocloud serve` at `/`.
//!
//! Server-rendered HTML (maud) with SVG charts drawn here; one small script of our own adds
//! clicks on the topology map and confirmations, and every page works without it. No CDN,
//! no front-end build: the stylesheet and the script are compiled into the binary.
//!
//! Pages are thin like the API's handlers: read the session, call the service — the same
//! methods, the same authorization table and the same tenant confinement as the API — and
//! render. A tenant's session therefore can never show another tenant's data: the service
//! answers *not found* for it, and the console shows a 404 page.
//!
//! - operators: fleet overview per site, a site's topology map, node and GPU health
//!   history, contracts and the capacity calendar, revenue and backlog, the event log;
//! - tenants: instances (launch, terminate), contracts, usage, invoices (with CSV).

mod admin;
mod fleet;
mod layout;
pub mod map;
mod sales;
pub mod session;
pub mod svg;
mod tenant;

use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use neocloud_service::{Error, ErrorCode, Principal, Service};
use neocloud_types::Role;

pub use layout::Page;

/// What every console page can reach.
#[derive(Clone)]
pub struct Console {
    /// The service (the same one the API calls).
    pub svc: Service,
}

/// The console's routes, ready to merge with the API's.
pub fn router(svc: Service) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/sign-in", get(sign_in_page).post(sign_in))
        .route("/sign-out", post(sign_out))
        .route("/sites/{site}", get(fleet::site))
        .route("/sites/{site}/at", get(fleet::site_at))
        .route("/problems", get(fleet::problems))
        .route("/nodes/{node}", get(fleet::node))
        .route("/nodes/{node}/{op}", post(fleet::node_op))
        .route("/gpus/{uuid}", get(fleet::gpu))
        .route("/contracts", get(sales::contracts))
        .route("/contracts/{id}", get(sales::contract))
        .route("/reports", get(sales::reports))
        .route("/events", get(sales::events))
        .route("/instances", get(tenant::instances).post(tenant::launch))
        .route("/instances/{id}", get(tenant::instance))
        .route("/instances/{id}/terminate", post(tenant::terminate))
        .route("/usage", get(tenant::usage))
        .route(
            "/invoices",
            get(tenant::invoices).post(admin::generate_invoice),
        )
        .route("/invoices/{id}", get(tenant::invoice))
        .route("/invoices/{id}/finalize", post(admin::finalize_invoice))
        .route("/tenants", get(admin::tenants))
        .route("/tenants/{name}", get(admin::tenant))
        .route("/tenants/{name}/quota", post(admin::set_quota))
        .route("/tenants/{name}/keys", post(admin::create_key))
        .route("/tenants/{name}/keys/{id}/revoke", post(admin::revoke_key))
        .route("/invoices/{id}/csv", get(tenant::invoice_csv))
        .route("/assets/console.css", get(css))
        .route("/assets/console.js", get(js))
        .layer(axum::middleware::from_fn_with_state(
            Console { svc: svc.clone() },
            with_nav,
        ))
        .with_state(Console { svc })
}

/// A signed-in browser: its key, who that key is, and its forms' CSRF token.
pub struct Session {
    /// The API key kept in the session cookie.
    key: String,
    /// Who the key is.
    pub principal: Principal,
    /// The token every form of this session carries.
    pub csrf: String,
    /// The tenant's display name, for tenant sessions.
    pub tenant_name: Option<String>,
}

impl Session {
    /// Whether the session belongs to an operator (admin or viewer).
    pub fn is_operator(&self) -> bool {
        self.principal.role.is_operator_role()
    }

    /// Refuses a form whose CSRF token is not this session's, or that comes from another
    /// site.
    pub fn check_form(&self, headers: &HeaderMap, token: &str) -> Result<(), PageError> {
        if let Some(why) = session::cross_site(headers) {
            return Err(PageError::Forbidden(why.to_string()));
        }
        if !session::csrf_ok(&self.key, token) {
            return Err(PageError::Forbidden(
                "the form's security token is missing or stale; reload the page and try again"
                    .to_string(),
            ));
        }
        Ok(())
    }
}

impl FromRequestParts<Console> for Session {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, st: &Console) -> Result<Self, PageError> {
        let next = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .filter(|_| parts.method == axum::http::Method::GET);
        let Some(key) = session::session_key(&parts.headers) else {
            return Err(PageError::SignIn { next, clear: false });
        };
        let principal = match st.svc.authenticate(Some(&key)).await {
            Ok(p) if p.role != Role::NodeAgent => p,
            Ok(_) => return Err(PageError::SignIn { next, clear: true }),
            Err(e) if e.code == ErrorCode::Unauthenticated => {
                return Err(PageError::SignIn { next, clear: true });
            }
            Err(e) => return Err(PageError::Service(e)),
        };
        let tenant_name = match principal.tenant_scope() {
            Some(t) => st
                .svc
                .tenant_get(&principal, &t.to_string())
                .await
                .ok()
                .map(|t| t.display_name),
            None => None,
        };
        Ok(Session {
            csrf: session::csrf_token(&key),
            key,
            principal,
            tenant_name,
        })
    }
}

/// Why a page could not be shown.
#[derive(Debug)]
pub enum PageError {
    /// No valid session: go to the sign-in page (and forget a stale cookie).
    SignIn {
        /// Where to return afterwards.
        next: Option<String>,
        /// Whether to clear the cookie.
        clear: bool,
    },
    /// A refused form (cross-site, bad token).
    Forbidden(String),
    /// Input the console itself rejects.
    Invalid(String),
    /// What the service said.
    Service(Error),
}

impl From<Error> for PageError {
    fn from(e: Error) -> Self {
        PageError::Service(e)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, title, message, hint) = match self {
            PageError::SignIn { next, clear } => {
                let to = match next {
                    Some(n) if n != "/" => format!("/sign-in?next={}", url_encode(&n)),
                    _ => "/sign-in".to_string(),
                };
                let mut r = Redirect::to(&to).into_response();
                if clear && let Ok(v) = session::clear_cookie().parse() {
                    r.headers_mut().insert(header::SET_COOKIE, v);
                }
                return r;
            }
            PageError::Forbidden(m) => (StatusCode::FORBIDDEN, "Refused", m, None),
            PageError::Invalid(m) => (StatusCode::BAD_REQUEST, "Invalid request", m, None),
            PageError::Service(e) => {
                if e.code == ErrorCode::Unauthenticated {
                    return PageError::SignIn {
                        next: None,
                        clear: true,
                    }
                    .into_response();
                }
                if e.code == ErrorCode::Internal {
                    tracing::error!(error = %e.internal.clone().unwrap_or_default(), "console page failed");
                }
                let status = StatusCode::from_u16(e.code.http_status())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let title = match (e.code, status.as_u16()) {
                    (ErrorCode::NotFound, _) => "Not found",
                    (ErrorCode::Forbidden, _) => "Not allowed",
                    (_, 400 | 422) => "Invalid request",
                    (_, 409) => "Not possible now",
                    _ => "Something went wrong",
                };
                let hint = e
                    .field_errors
                    .iter()
                    .map(|f| format!("{}: {}", f.field, f.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                (
                    status,
                    title,
                    e.message,
                    Some(hint).filter(|h| !h.is_empty()),
                )
            }
        };
        let mut r = layout::error_page(status, title, &message, hint.as_deref());
        r.extensions_mut().insert(ErrorView {
            status,
            title,
            message,
            hint,
        });
        r
    }
}

/// What an error page says, kept on its response so that [`with_nav`] can draw it again
/// inside the signed-in page shell.
#[derive(Clone)]
struct ErrorView {
    status: StatusCode,
    title: &'static str,
    message: String,
    hint: Option<String>,
}

/// Error pages of a signed-in browser keep the navigation: an error response is drawn
/// again in the page shell when the request carries a valid session (only errors pay for
/// the second look at the key).
async fn with_nav(
    State(st): State<Console>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = req.headers().clone();
    let resp = next.run(req).await;
    let Some(view) = resp.extensions().get::<ErrorView>().cloned() else {
        return resp;
    };
    let (mut parts, ()) = axum::http::Request::new(()).into_parts();
    parts.headers = headers;
    match Session::from_request_parts(&mut parts, &st).await {
        Ok(session) => Page::new(&session, "", view.title).render_status(
            view.status,
            maud::html! {
                p.error role="alert" { (view.message) }
                @if let Some(h) = &view.hint { p.muted { (h) } }
                p { a href="/" { "Back to the console" } }
            },
        ),
        Err(_) => resp,
    }
}

/// Percent-encodes a query value.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn home(State(st): State<Console>, session: Session) -> Result<Response, PageError> {
    if session.is_operator() {
        fleet::overview_response(&st, session).await
    } else {
        Ok(Redirect::to("/instances").into_response())
    }
}

#[derive(serde::Deserialize)]
struct SignInQuery {
    next: Option<String>,
}

async fn sign_in_page(axum::extract::Query(q): axum::extract::Query<SignInQuery>) -> Response {
    layout::sign_in(StatusCode::OK, &session::safe_next(q.next.as_deref()), None)
}

#[derive(serde::Deserialize)]
struct SignInForm {
    key: String,
    #[serde(default)]
    next: Option<String>,
}

async fn sign_in(
    State(st): State<Console>,
    headers: HeaderMap,
    form: Result<axum::Form<SignInForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    if let Some(why) = session::cross_site(&headers) {
        return PageError::Forbidden(why.to_string()).into_response();
    }
    let Ok(axum::Form(form)) = form else {
        return layout::sign_in(
            StatusCode::BAD_REQUEST,
            "/",
            Some("Paste an API key to sign in."),
        );
    };
    let next = session::safe_next(form.next.as_deref());
    let key = form.key.trim();
    let refused = |msg: &str| layout::sign_in(StatusCode::UNAUTHORIZED, &next, Some(msg));
    if key.is_empty() {
        return refused("Paste an API key to sign in.");
    }
    if key.len() > 200 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return refused("That is not an API key.");
    }
    match st.svc.authenticate(Some(key)).await {
        Ok(p) if p.role == Role::NodeAgent => {
            refused("Node-agent keys cannot sign in to the console.")
        }
        Ok(_) => {
            let mut r = Redirect::to(&next).into_response();
            if let Ok(v) = session::set_cookie(&headers, key).parse() {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Err(e) if e.code == ErrorCode::Unauthenticated => refused(&e.message),
        Err(e) => PageError::Service(e).into_response(),
    }
}

#[derive(serde::Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn sign_out(
    session: Session,
    headers: HeaderMap,
    form: Result<axum::Form<CsrfForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, PageError> {
    let token = form.map(|f| f.0.csrf).unwrap_or_default();
    session.check_form(&headers, &token)?;
    let mut r = Redirect::to("/sign-in").into_response();
    if let Ok(v) = session::clear_cookie().parse() {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(r)
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../assets/console.css"),
    )
        .into_response()
}

async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../assets/console.js"),
    )
        .into_response()
}
