//! A Lambda-Cloud-compatible API under `/lambda/api/v1`, for the tools tenants already rent
//! GPUs with (SkyPilot, dstack, scripts written against Lambda's public API).
//!
//! It speaks Lambda's shapes — answers in `{"data": …}`, errors as
//! `{"error": {"code", "message", "suggestion"}}`, instance types with
//! `regions_with_capacity_available` — and maps every operation onto the service's own
//! methods, so quotas, billing, idempotency and tenant isolation are exactly those of
//! `/v1`:
//!
//! | Lambda | neocloud |
//! |---|---|
//! | region | site: `name` is the site's name, `description` its region label |
//! | instance type `gpu_{N}x_{model}` | N GPUs of one model inside one node (see [`model_slug`]) |
//! | instance | an on-demand instance with a `container` delivery (or `bare-metal` for whole-node types when the operator says so); its `access` host is `ip` and `hostname` |
//! | SSH key | `/v1/ssh-keys` of the key's tenant |
//!
//! Only tenant keys (tenant-admin, tenant-member) are accepted: a Lambda client has no way
//! to say which tenant it acts for, so an operator key is refused with a Lambda-shaped 403.
//! Keys are sent as Lambda clients send them: `Authorization: Bearer KEY`, or HTTP basic
//! with the key as user name.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use neocloud_service::{
    CreateSshKey, Error, ErrorCode, Idempotency, LaunchInstance, PlacementAsk, Principal, SiteOffer,
};
use neocloud_types::{Delivery, GangLevel, Instance, InstanceState, Shape, SiteId, Timestamp};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::Idem;

/// Where the Lambda-compatible API is served.
pub const PREFIX: &str = "/lambda/api/v1";

/// Image of the containers that instances launched through the Lambda-compatible API run,
/// unless the operator names another (`serve --lambda-image`).
pub const DEFAULT_IMAGE: &str = "docker.io/library/ubuntu:24.04";

/// Command of those containers unless the operator names another (`serve
/// --lambda-command`): a Lambda instance lives until it is terminated, so the container's
/// main process must too (SSH lands beside it).
pub const DEFAULT_COMMAND: &[&str] = &["sleep", "infinity"];

/// Most instances one launch may ask for.
pub const MAX_QUANTITY: u32 = 64;

/// Most instance ids one terminate or restart may name.
pub const MAX_IDS: usize = 1000;

/// How instances launched through the Lambda-compatible API are delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LambdaConfig {
    /// Container image they run.
    pub image: String,
    /// The container's command and arguments (empty: the image's own command).
    pub command: Vec<String>,
    /// Whether whole-node types (`gpu_8x_…` on 8-GPU nodes) launch as bare-metal accounts
    /// on their node rather than containers.
    pub bare_metal_whole_nodes: bool,
}

impl Default for LambdaConfig {
    fn default() -> Self {
        LambdaConfig {
            image: DEFAULT_IMAGE.to_string(),
            command: DEFAULT_COMMAND.iter().map(|s| (*s).to_string()).collect(),
            bare_metal_whole_nodes: false,
        }
    }
}

#[derive(Clone)]
struct LState {
    app: AppState,
    config: Arc<LambdaConfig>,
}

/// The Lambda-compatible routes, to be nested at [`PREFIX`].
pub(crate) fn router(app: AppState, config: LambdaConfig) -> Router {
    Router::new()
        .route("/instance-types", get(instance_types))
        .route("/instances", get(instance_list))
        .route("/instances/{id}", get(instance_get))
        .route("/instance-operations/launch", post(launch))
        .route("/instance-operations/terminate", post(terminate))
        .route("/instance-operations/restart", post(restart))
        .route("/ssh-keys", get(ssh_key_list).post(ssh_key_add))
        .route("/ssh-keys/{id}", delete(ssh_key_delete))
        .route("/file-systems", get(file_systems))
        .route("/images", get(images))
        .fallback(|| async {
            LambdaError::new(
                StatusCode::NOT_FOUND,
                NOT_FOUND,
                "no such endpoint of the Lambda-compatible API",
            )
        })
        .method_not_allowed_fallback(|| async {
            LambdaError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                INVALID,
                "this endpoint does not support that method",
            )
        })
        .with_state(LState {
            app,
            config: Arc::new(config),
        })
}

// ---- errors -------------------------------------------------------------------------------

const INVALID: &str = "global/invalid-parameters";
const BAD_KEY: &str = "global/invalid-api-key";
const NOT_FOUND: &str = "global/object-does-not-exist";
const NO_CAPACITY: &str = "instance-operations/launch/insufficient-capacity";
const QUOTA: &str = "global/quota-exceeded";
const INACTIVE: &str = "global/account-inactive";
const UNKNOWN: &str = "global/unknown";

/// An error in Lambda's shape: `{"error": {"code", "message", "suggestion"}}`.
#[derive(Debug)]
struct LambdaError {
    status: StatusCode,
    code: &'static str,
    message: String,
    suggestion: Option<String>,
}

impl LambdaError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        LambdaError {
            status,
            code,
            message: message.into(),
            suggestion: None,
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, INVALID, message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, NOT_FOUND, message)
    }

    fn suggest(mut self, suggestion: impl Into<String>) -> Self {
        self.suggestion = Some(suggestion.into());
        self
    }
}

/// The service's codes in Lambda's words. Statuses are Lambda's (400 for refusals a
/// request could avoid, capacity and quota included) except where a client must treat the
/// answer differently (413, 5xx with `Retry-After`).
impl From<Error> for LambdaError {
    fn from(e: Error) -> Self {
        if let Some(internal) = &e.internal {
            tracing::error!(code = e.code.as_str(), detail = %internal, "lambda request failed");
        }
        let (status, code) = match e.code {
            ErrorCode::InvalidRequest
            | ErrorCode::Conflict
            | ErrorCode::IdempotencyKeyReused
            | ErrorCode::InvalidFleetFile => (StatusCode::BAD_REQUEST, INVALID),
            ErrorCode::Unauthenticated => (StatusCode::UNAUTHORIZED, BAD_KEY),
            ErrorCode::Forbidden if e.message.contains("suspended") => {
                (StatusCode::FORBIDDEN, INACTIVE)
            }
            ErrorCode::Forbidden => (StatusCode::FORBIDDEN, BAD_KEY),
            ErrorCode::NotFound => (StatusCode::NOT_FOUND, NOT_FOUND),
            ErrorCode::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, INVALID),
            ErrorCode::InsufficientCapacity => (StatusCode::BAD_REQUEST, NO_CAPACITY),
            ErrorCode::QuotaExceeded => (StatusCode::BAD_REQUEST, QUOTA),
            ErrorCode::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, INVALID),
            ErrorCode::Internal => (StatusCode::INTERNAL_SERVER_ERROR, UNKNOWN),
            ErrorCode::Unavailable | ErrorCode::StorageReadOnly => {
                (StatusCode::SERVICE_UNAVAILABLE, UNKNOWN)
            }
            ErrorCode::StorageFull => (StatusCode::INSUFFICIENT_STORAGE, UNKNOWN),
        };
        let suggestion = match e.code {
            ErrorCode::InsufficientCapacity => {
                Some("GET /instance-types lists the regions with capacity now".to_string())
            }
            ErrorCode::QuotaExceeded => Some("ask the operator to raise the quota".to_string()),
            ErrorCode::Unavailable | ErrorCode::StorageReadOnly | ErrorCode::StorageFull => {
                Some("retry the request".to_string())
            }
            _ => None,
        };
        LambdaError {
            status,
            code,
            message: e.message,
            suggestion,
        }
    }
}

impl From<ApiError> for LambdaError {
    fn from(e: ApiError) -> Self {
        e.0.into()
    }
}

impl IntoResponse for LambdaError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "code": self.code,
            "message": self.message,
            "suggestion": self.suggestion,
        }});
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

type LResult<T> = Result<T, LambdaError>;

/// `{"data": value}` with 200, marked `Idempotent-Replayed: true` when it is a replay.
fn data(value: Value, replayed: bool) -> Response {
    let mut resp = (StatusCode::OK, axum::Json(json!({ "data": value }))).into_response();
    if replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    resp
}

// ---- extractors ---------------------------------------------------------------------------

/// The caller: a tenant key, sent as a bearer token or as the user name of HTTP basic.
struct Tenant(Principal);

impl FromRequestParts<LState> for Tenant {
    type Rejection = LambdaError;

    async fn from_request_parts(parts: &mut Parts, st: &LState) -> LResult<Self> {
        let Some(v) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(LambdaError::new(
                StatusCode::UNAUTHORIZED,
                BAD_KEY,
                "no API key: send 'Authorization: Bearer KEY'",
            ));
        };
        let key = presented_key(v.as_bytes()).ok_or_else(|| {
            LambdaError::new(
                StatusCode::UNAUTHORIZED,
                BAD_KEY,
                "the Authorization header must be 'Bearer KEY' or HTTP basic with the key as user name",
            )
        })?;
        let p = st.app.svc.authenticate(Some(&key)).await?;
        if p.tenant_scope().is_none() {
            return Err(LambdaError::new(
                StatusCode::FORBIDDEN,
                BAD_KEY,
                format!(
                    "the Lambda-compatible API acts for one tenant; a key with role '{}' belongs to none",
                    p.role.as_str()
                ),
            )
            .suggest("use an API key of the tenant (role tenant-admin or tenant-member)"));
        }
        Ok(Tenant(p))
    }
}

/// The key in an Authorization header: `Bearer KEY`, or `Basic base64(KEY:)` (the user
/// name; the password when the user name is empty).
fn presented_key(header: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(header).ok()?.trim();
    let (scheme, rest) = text.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return (!rest.is_empty()).then(|| rest.to_string());
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(base64_decode(rest)?).ok()?;
    let (user, password) = decoded.split_once(':').unwrap_or((decoded.as_str(), ""));
    let key = if user.is_empty() { password } else { user };
    (!key.is_empty()).then(|| key.to_string())
}

/// Standard base64 with optional padding; `None` for anything else.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let s = s.trim_end_matches('=').as_bytes();
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

/// A state-changing request: its Idempotency-Key (as `/v1` takes it) and its body.
struct Body(Idem);

impl FromRequest<LState> for Body {
    type Rejection = LambdaError;

    async fn from_request(req: axum::extract::Request, st: &LState) -> LResult<Self> {
        Ok(Body(Idem::from_request(req, &st.app).await?))
    }
}

impl Body {
    fn key(&self) -> LResult<Option<&Idempotency>> {
        Ok(self.0.key()?)
    }

    /// The body as JSON (whatever its content type: scripts often send none), naming the
    /// field that is wrong.
    fn json<T: DeserializeOwned>(&self) -> LResult<T> {
        self.key()?;
        let mut de = serde_json::Deserializer::from_slice(&self.0.body);
        let parsed: Result<T, (String, serde_json::Error)> =
            serde_path_to_error::deserialize(&mut de)
                .map_err(|e| (e.path().to_string(), e.into_inner()))
                .and_then(|v| de.end().map(|()| v).map_err(|e| (String::new(), e)));
        parsed.map_err(|(path, e)| {
            let what = match e.classify() {
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                    "malformed JSON".to_string()
                }
                _ if path != "." && !path.is_empty() => format!("invalid request body: {path}"),
                _ => "invalid request body".to_string(),
            };
            LambdaError::invalid(format!("{what}: {e}"))
        })
    }
}

// ---- instance types -----------------------------------------------------------------------

/// How a GPU model is spelled in Lambda's shapes: Lambda's own spelling for the models
/// Lambda also sells (type-name part, GPU name, form factor), else `None`. The one table of
/// the mapping; see [`model_slug`] and [`gpu_description`].
fn lambda_spelling(gpu_model: &str) -> Option<(&'static str, &'static str, Option<&'static str>)> {
    match gpu_model {
        "H100-SXM-80GB" => Some(("h100_sxm5", "H100", Some("SXM5"))),
        "H200-SXM-141GB" => Some(("h200_sxm5", "H200", Some("SXM5"))),
        "A100-SXM-80GB" => Some(("a100_80gb_sxm4", "A100", Some("SXM4"))),
        "B200" => Some(("b200_sxm6", "B200", Some("SXM6"))),
        "GB200" => Some(("gb200", "GB200", None)),
        "L40S" => Some(("l40s", "L40S", None)),
        "MI300X" => Some(("mi300x", "MI300X", None)),
        _ => None,
    }
}

/// The name a GPU model takes in instance type names: Lambda's spelling for the models in
/// [`lambda_spelling`], else the catalog name in lower case with every run of other
/// characters turned into `_`.
pub fn model_slug(gpu_model: &str) -> String {
    if let Some((slug, _, _)) = lambda_spelling(gpu_model) {
        return slug.to_string();
    }
    let mut out = String::new();
    for c in gpu_model.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_matches('_').to_string()
}

/// One GPU described as Lambda describes it, `H100 (80 GB SXM5)`: the GPU's name, its
/// memory (from the catalog) and form factor. Tools parse this (`Nx NAME (MEM GB …)`).
pub fn gpu_description(gpu_model: &str, memory_gib: Option<u32>) -> String {
    let (name, form) = match lambda_spelling(gpu_model) {
        Some((_, name, form)) => (name, form),
        None => (gpu_model, None),
    };
    match (memory_gib, form) {
        (Some(m), Some(f)) => format!("{name} ({m} GB {f})"),
        (Some(m), None) => format!("{name} ({m} GB)"),
        (None, _) => name.to_string(),
    }
}

/// The instance type name of `gpus` GPUs of `gpu_model` in one node: `gpu_8x_h100_sxm5`.
pub fn type_name(gpus: u32, gpu_model: &str) -> String {
    format!("gpu_{gpus}x_{}", model_slug(gpu_model))
}

/// GPU counts one node is sold in, as `/v1` launches take them.
const GPU_COUNTS: [u32; 4] = [1, 2, 4, 8];

/// One site where an instance type can run.
#[derive(Clone, Debug)]
struct TypeSite {
    site_id: SiteId,
    site: String,
    region: String,
    /// Launched as this shape there: N GPUs, or the whole node.
    shape: Shape,
    /// Delivered as a bare-metal account (whole nodes, when the operator says so).
    bare_metal: bool,
}

/// One instance type: N GPUs of one model in one node.
#[derive(Clone, Debug)]
struct InstanceType {
    name: String,
    gpu_model: String,
    gpus: u32,
    gpu_memory_gib: Option<u32>,
    price_cents_per_hour: i64,
    vcpus: u32,
    memory_gib: u32,
    sites: Vec<TypeSite>,
}

impl InstanceType {
    fn gpu_description(&self) -> String {
        gpu_description(&self.gpu_model, self.gpu_memory_gib)
    }

    fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "description": format!("{}x {}", self.gpus, self.gpu_description()),
            "gpu_description": self.gpu_description(),
            "price_cents_per_hour": self.price_cents_per_hour,
            "specs": {
                "vcpus": self.vcpus,
                "memory_gib": self.memory_gib,
                // The fleet file records no local disk: nothing is promised.
                "storage_gib": 0,
                "gpus": self.gpus,
            },
        })
    }
}

/// Every instance type of the fleet, by name; and every site's region label, by site.
struct Catalog {
    types: BTreeMap<String, InstanceType>,
    sites: HashMap<SiteId, (String, String)>,
}

/// On-demand price per GPU-hour of each model now, in micro-dollars: the price book's
/// entry for every site (a site's own price is what is billed there; Lambda's shape has one
/// price per type).
fn on_demand_prices(prices: &[neocloud_types::Price], now: Timestamp) -> HashMap<String, i64> {
    let mut best: HashMap<String, (Timestamp, i64)> = HashMap::new();
    for p in prices {
        if p.kind != "on-demand" || p.site_id.is_some() || p.effective_from > now {
            continue;
        }
        let e = best
            .entry(p.gpu_model.clone())
            .or_insert((p.effective_from, p.price_per_gpu_hour.micros()));
        if p.effective_from >= e.0 {
            *e = (p.effective_from, p.price_per_gpu_hour.micros());
        }
    }
    best.into_iter().map(|(m, (_, v))| (m, v)).collect()
}

/// Cents per hour of `gpus` GPUs at `micros` per GPU-hour, rounded to the nearest cent.
fn cents_per_hour(micros: i64, gpus: u32) -> i64 {
    let total = i128::from(micros) * i128::from(gpus);
    i64::try_from((total + 5_000) / 10_000).unwrap_or(i64::MAX)
}

fn build_catalog(
    offers: &[SiteOffer],
    prices: &HashMap<String, i64>,
    memory: &HashMap<String, u32>,
    config: &LambdaConfig,
    sites: HashMap<SiteId, (String, String)>,
) -> Catalog {
    let mut types: BTreeMap<String, InstanceType> = BTreeMap::new();
    for o in offers {
        for &n in GPU_COUNTS.iter().filter(|&&n| n <= o.node_gpus) {
            let name = type_name(n, &o.gpu_model);
            let whole = n == o.node_gpus;
            let bare_metal = whole && config.bare_metal_whole_nodes;
            let shape = if bare_metal {
                Shape::Nodes {
                    count: 1,
                    level: GangLevel::Site,
                }
            } else {
                Shape::Gpus { gpus: n }
            };
            let vcpus = o.node_cpu_cores.saturating_mul(n) / o.node_gpus.max(1);
            let memory_gib = o.node_ram_gib.saturating_mul(n) / o.node_gpus.max(1);
            let t = types.entry(name.clone()).or_insert_with(|| InstanceType {
                name,
                gpu_model: o.gpu_model.clone(),
                gpus: n,
                gpu_memory_gib: memory.get(&o.gpu_model).copied(),
                price_cents_per_hour: cents_per_hour(
                    prices.get(&o.gpu_model).copied().unwrap_or(0),
                    n,
                ),
                vcpus,
                memory_gib,
                sites: Vec::new(),
            });
            // Two models that spell alike: the first keeps the name.
            if t.gpu_model != o.gpu_model {
                continue;
            }
            // Nodes that differ between sites: promise what every one of them has.
            t.vcpus = t.vcpus.min(vcpus);
            t.memory_gib = t.memory_gib.min(memory_gib);
            t.sites.push(TypeSite {
                site_id: o.site_id,
                site: o.site.clone(),
                region: o.region.clone(),
                shape,
                bare_metal,
            });
        }
    }
    Catalog { types, sites }
}

async fn catalog(st: &LState, p: &Principal) -> LResult<Catalog> {
    let svc = &st.app.svc;
    let offers = svc.site_offers(p).await?;
    let prices = on_demand_prices(&svc.price_list(p, None).await?, svc.now());
    let memory = svc
        .gpu_model_list(p)
        .await?
        .into_iter()
        .map(|m| (m.name, m.memory_gib))
        .collect();
    let sites = svc
        .site_list(p)
        .await?
        .into_iter()
        .map(|s| (s.id, (s.name, s.region)))
        .collect();
    Ok(build_catalog(&offers, &prices, &memory, &st.config, sites))
}

fn region_json(name: &str, description: &str) -> Value {
    json!({"name": name, "description": description})
}

/// `GET /instance-types`: every type, with the regions where an on-demand launch of it by
/// the caller would be placed now.
async fn instance_types(State(st): State<LState>, Tenant(p): Tenant) -> LResult<Response> {
    let cat = catalog(&st, &p).await?;
    let asks: Vec<PlacementAsk> = cat
        .types
        .values()
        .flat_map(|t| {
            t.sites.iter().map(|s| PlacementAsk {
                site_id: s.site_id,
                gpu_model: t.gpu_model.clone(),
                shape: s.shape,
            })
        })
        .collect();
    let mut placeable = st.app.svc.placeable_now(&p, &asks).await?.into_iter();
    let mut out = serde_json::Map::new();
    for t in cat.types.values() {
        let mut regions = Vec::new();
        for s in &t.sites {
            if placeable.next().unwrap_or(false) {
                regions.push(region_json(&s.site, &s.region));
            }
        }
        out.insert(
            t.name.clone(),
            json!({"instance_type": t.to_json(), "regions_with_capacity_available": regions}),
        );
    }
    Ok(data(Value::Object(out), false))
}

// ---- instances ----------------------------------------------------------------------------

/// Whether `/v1` instance `i` is one the Lambda-compatible API shows: delivered (a container
/// or a bare-metal account) within one node.
fn lambda_visible(i: &Instance) -> bool {
    i.delivery.is_some() && matches!(i.shape, Shape::Gpus { .. } | Shape::Nodes { count: 1, .. })
}

/// Lambda's status of an instance. Old clients know `booting`, `active`, `terminating`,
/// `terminated` and `unhealthy`; preemption and failure read as `terminated`.
fn status(s: InstanceState) -> &'static str {
    match s {
        InstanceState::Pending | InstanceState::Provisioning => "booting",
        InstanceState::Running | InstanceState::Preempting => "active",
        InstanceState::Stopping | InstanceState::Terminating => "terminating",
        InstanceState::Terminated | InstanceState::Preempted | InstanceState::Failed => {
            "terminated"
        }
    }
}

/// An instance in Lambda's shape. Besides Lambda's fields it says how to log in where
/// that is not Lambda's `ubuntu@ip:22`: `ssh_port` and `ssh_user`.
fn instance_json(i: &Instance, cat: &Catalog) -> Value {
    let gpus = match i.shape {
        Shape::Gpus { gpus } => gpus,
        _ => i.gpu_count,
    };
    let name = type_name(gpus, &i.gpu_model);
    let itype = match cat.types.get(&name) {
        Some(t) => t.to_json(),
        None => json!({
            "name": name,
            "description": format!("{gpus}x {}", i.gpu_model),
            "gpu_description": i.gpu_model,
            "price_cents_per_hour": 0,
            "specs": {"vcpus": 0, "memory_gib": 0, "storage_gib": 0, "gpus": gpus},
        }),
    };
    let region = i
        .site_id
        .or(i.requested_site_id)
        .and_then(|s| cat.sites.get(&s))
        .map_or(Value::Null, |(n, r)| region_json(n, r));
    let host = i.access.as_ref().map(|a| a.host.clone());
    let mut v = json!({
        "id": i.id.to_string(),
        "name": i.name,
        "ip": host,
        "private_ip": Value::Null,
        "hostname": host,
        "status": status(i.state),
        "ssh_key_names": i.ssh_key_names,
        "file_system_names": [],
        "instance_type": itype,
        "is_reserved": false,
    });
    if !region.is_null() {
        v["region"] = region;
    }
    if let Some(a) = &i.access {
        v["ssh_port"] = json!(a.port);
        v["ssh_user"] = json!(a.user);
    }
    v
}

/// The caller's instance `id` as the Lambda-compatible API shows it; another tenant's, an
/// unknown one and one it does not show read as not found.
async fn visible(st: &LState, p: &Principal, id: &str) -> LResult<Instance> {
    match st.app.svc.instance_get(p, id).await {
        Ok(i) if lambda_visible(&i) => Ok(i),
        Ok(_) => Err(LambdaError::not_found(format!(
            "instance {id} is not one the Lambda-compatible API shows (a bare allocation, a gang or a part of a GPU): read it under /v1"
        ))),
        Err(e) if e.code == ErrorCode::NotFound => Err(LambdaError::not_found(format!(
            "instance {id} does not exist"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// `GET /instances`: the caller's instances that have not ended, newest first.
async fn instance_list(State(st): State<LState>, Tenant(p): Tenant) -> LResult<Response> {
    let svc = &st.app.svc;
    let mut all: Vec<Instance> = Vec::new();
    for state in [
        InstanceState::Pending,
        InstanceState::Provisioning,
        InstanceState::Running,
        InstanceState::Preempting,
        InstanceState::Stopping,
        InstanceState::Terminating,
    ] {
        let mut cursor: Option<String> = None;
        loop {
            let page = svc
                .instance_list(&p, None, Some(state), cursor.as_deref(), Some(1000))
                .await?;
            all.extend(page.items.into_iter().filter(lambda_visible));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
    }
    all.sort_by_key(|i| std::cmp::Reverse((i.created_at, i.id)));
    let cat = catalog(&st, &p).await?;
    Ok(data(
        Value::Array(all.iter().map(|i| instance_json(i, &cat)).collect()),
        false,
    ))
}

/// `GET /instances/{id}`.
async fn instance_get(
    State(st): State<LState>,
    Tenant(p): Tenant,
    Path(id): Path<String>,
) -> LResult<Response> {
    let i = visible(&st, &p, &id).await?;
    let cat = catalog(&st, &p).await?;
    Ok(data(instance_json(&i, &cat), false))
}

/// Body of `POST /instance-operations/launch`.
#[derive(Deserialize)]
struct Launch {
    region_name: String,
    instance_type_name: String,
    #[serde(default)]
    ssh_key_names: Option<Vec<String>>,
    #[serde(default)]
    file_system_names: Option<Vec<String>>,
    #[serde(default)]
    quantity: Option<u32>,
    #[serde(default)]
    name: Option<String>,
    /// For bare-metal types: a script run once when the node is handed over.
    #[serde(default)]
    user_data: Option<String>,
}

/// The Idempotency-Key of the `n`th instance of a launch: each is launched (and replayed)
/// on its own through the service's idempotency.
fn nth_key(idem: Option<&Idempotency>, n: u32) -> Option<Idempotency> {
    idem.map(|i| Idempotency {
        key: format!("lambda-launch/{n}/{}", i.key),
        fingerprint: i.fingerprint.clone(),
    })
}

/// `POST /instance-operations/launch`: `quantity` on-demand instances of a type in a
/// region. Answers the ids of those launched: when one after the first is refused, those
/// before it stay (as Lambda's API says, fewer than asked may be launched).
async fn launch(State(st): State<LState>, Tenant(p): Tenant, body: Body) -> LResult<Response> {
    let req: Launch = body.json()?;
    let quantity = req.quantity.unwrap_or(1);
    if quantity == 0 || quantity > MAX_QUANTITY {
        return Err(LambdaError::invalid(format!(
            "quantity must be 1-{MAX_QUANTITY} (got {quantity})"
        )));
    }
    if req
        .file_system_names
        .as_ref()
        .is_some_and(|f| !f.is_empty())
    {
        return Err(LambdaError::invalid("file systems are not offered here")
            .suggest("launch without file_system_names"));
    }
    let keys = req.ssh_key_names.unwrap_or_default();
    if keys.is_empty() {
        return Err(
            LambdaError::invalid("ssh_key_names must name at least one SSH key")
                .suggest("add one with POST /ssh-keys"),
        );
    }
    let cat = catalog(&st, &p).await?;
    let Some(t) = cat.types.get(&req.instance_type_name) else {
        return Err(LambdaError::invalid(format!(
            "unknown instance type '{}'",
            req.instance_type_name
        ))
        .suggest("GET /instance-types lists them"));
    };
    let Some(site) = t.sites.iter().find(|s| s.site == req.region_name) else {
        let message = if cat.sites.values().any(|(n, _)| *n == req.region_name) {
            format!(
                "instance type '{}' is not offered in region '{}'",
                t.name, req.region_name
            )
        } else {
            format!("unknown region '{}'", req.region_name)
        };
        return Err(LambdaError::invalid(message)
            .suggest("GET /instance-types lists the regions of each type"));
    };
    let delivery = if site.bare_metal {
        Delivery::BareMetal {
            user_data: req.user_data,
        }
    } else {
        if req.user_data.is_some() {
            return Err(LambdaError::invalid(
                "user_data is only for whole-node types delivered as bare metal",
            ));
        }
        Delivery::Container {
            image: st.config.image.clone(),
            command: st.config.command.clone(),
            env: BTreeMap::new(),
        }
    };
    let mut launch = json!({
        "name": req.name,
        "class": "on-demand",
        "gpu_model": t.gpu_model,
        "site": site.site_id.to_string(),
        "delivery": delivery,
        "ssh_key_names": keys,
    });
    match site.shape {
        Shape::Gpus { gpus } => launch["gpus"] = json!(gpus),
        _ => launch["nodes"] = json!(1),
    }
    let launch: LaunchInstance = serde_json::from_value(launch)
        .map_err(|e| Error::internal(format!("building a launch: {e}")))?;
    let idem = body.key()?;
    let mut ids = Vec::new();
    let mut replayed = true;
    for n in 0..quantity {
        match st
            .app
            .svc
            .instance_launch(&p, launch.clone(), nth_key(idem, n).as_ref())
            .await
        {
            Ok(c) => {
                replayed &= c.replayed;
                ids.push(c.value.id.to_string());
            }
            Err(e) if ids.is_empty() => return Err(e.into()),
            Err(e) => {
                tracing::info!(launched = ids.len(), quantity, reason = %e.message,
                    "lambda launch stopped short");
                break;
            }
        }
    }
    Ok(data(json!({ "instance_ids": ids }), replayed))
}

/// Body of terminate and restart.
#[derive(Deserialize)]
struct InstanceIds {
    instance_ids: Vec<String>,
}

/// The ids of a terminate or restart, once each, every one the caller's (else 404 and
/// nothing is done).
async fn resolve_ids(st: &LState, p: &Principal, body: &Body) -> LResult<Vec<Instance>> {
    let req: InstanceIds = body.json()?;
    if req.instance_ids.is_empty() || req.instance_ids.len() > MAX_IDS {
        return Err(LambdaError::invalid(format!(
            "instance_ids must name 1-{MAX_IDS} instances"
        )));
    }
    let mut out: Vec<Instance> = Vec::new();
    for id in &req.instance_ids {
        let i = visible(st, p, id).await?;
        if !out.iter().any(|x| x.id == i.id) {
            out.push(i);
        }
    }
    Ok(out)
}

/// `POST /instance-operations/terminate`: terminates every instance named (all or, if one
/// is not the caller's, none).
async fn terminate(State(st): State<LState>, Tenant(p): Tenant, body: Body) -> LResult<Response> {
    let insts = resolve_ids(&st, &p, &body).await?;
    let svc = &st.app.svc;
    let done = svc
        .idempotent(&p, body.key()?, 200, async {
            let mut ended = Vec::with_capacity(insts.len());
            for i in &insts {
                ended.push(svc.instance_terminate(&p, &i.id.to_string()).await?);
            }
            Ok(ended)
        })
        .await?;
    let cat = catalog(&st, &p).await?;
    Ok(data(
        json!({"terminated_instances": done.value.iter().map(|i| instance_json(i, &cat)).collect::<Vec<_>>()}),
        done.replayed,
    ))
}

/// `POST /instance-operations/restart`: refused. Nothing here reboots an instance in
/// place; the ids are checked first so that a wrong one still reads as not found.
async fn restart(State(st): State<LState>, Tenant(p): Tenant, body: Body) -> LResult<Response> {
    resolve_ids(&st, &p, &body).await?;
    Err(
        LambdaError::invalid("instances here cannot be restarted in place")
            .suggest("terminate the instance and launch another"),
    )
}

// ---- SSH keys -----------------------------------------------------------------------------

fn ssh_key_json(k: &neocloud_types::SshKey) -> Value {
    json!({"id": k.id.to_string(), "name": k.name, "public_key": k.public_key})
}

/// `GET /ssh-keys`.
async fn ssh_key_list(State(st): State<LState>, Tenant(p): Tenant) -> LResult<Response> {
    let keys = st.app.svc.ssh_key_list(&p, None).await?;
    Ok(data(keys.iter().map(ssh_key_json).collect(), false))
}

/// Body of `POST /ssh-keys`.
#[derive(Deserialize)]
struct AddKey {
    name: String,
    #[serde(default)]
    public_key: Option<String>,
}

/// `POST /ssh-keys`: adds a public key. Generating a key pair (no `public_key`) is not
/// offered: a private key is never made or seen here.
async fn ssh_key_add(State(st): State<LState>, Tenant(p): Tenant, body: Body) -> LResult<Response> {
    let req: AddKey = body.json()?;
    let Some(public_key) = req.public_key else {
        return Err(LambdaError::invalid(
            "public_key is required: key pairs are not generated here",
        )
        .suggest("send the public key line of a key pair you made, e.g. with ssh-keygen"));
    };
    let c = st
        .app
        .svc
        .ssh_key_create(
            &p,
            CreateSshKey {
                tenant_id: None,
                name: req.name,
                public_key,
            },
            body.key()?,
        )
        .await?;
    Ok(data(ssh_key_json(&c.value), c.replayed))
}

/// `DELETE /ssh-keys/{id}`.
async fn ssh_key_delete(
    State(st): State<LState>,
    Tenant(p): Tenant,
    Path(id): Path<String>,
    body: Body,
) -> LResult<Response> {
    let c = st
        .app
        .svc
        .ssh_key_delete(&p, &id, None, body.key()?)
        .await?;
    Ok(data(json!({}), c.replayed))
}

/// `GET /images`: the one image instances are launched with, in every region (tools
/// such as dstack learn the regions from this list).
async fn images(State(st): State<LState>, Tenant(p): Tenant) -> LResult<Response> {
    let mut sites: Vec<(String, String)> = st
        .app
        .svc
        .site_list(&p)
        .await?
        .into_iter()
        .map(|s| (s.name, s.region))
        .collect();
    sites.sort();
    let image = &st.config.image;
    let list: Vec<Value> = sites
        .iter()
        .map(|(name, region)| {
            json!({
                "id": format!("{name}/{image}"),
                "name": image,
                "description": format!("the container image instances run ({image})"),
                "family": "neocloud",
                "version": "1",
                "region": region_json(name, region),
            })
        })
        .collect();
    Ok(data(Value::Array(list), false))
}

/// `GET /file-systems`: none are offered.
async fn file_systems(Tenant(_): Tenant) -> LResult<Response> {
    Ok(data(json!([]), false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_follow_lambda_for_known_models_and_slug_the_rest() {
        assert_eq!(type_name(8, "H100-SXM-80GB"), "gpu_8x_h100_sxm5");
        assert_eq!(type_name(1, "A100-SXM-80GB"), "gpu_1x_a100_80gb_sxm4");
        assert_eq!(type_name(4, "GB200"), "gpu_4x_gb200");
        assert_eq!(model_slug("RTX 6000 Ada--48GB"), "rtx_6000_ada_48gb");
        assert_eq!(
            gpu_description("H100-SXM-80GB", Some(80)),
            "H100 (80 GB SXM5)"
        );
        assert_eq!(gpu_description("GB200", Some(186)), "GB200 (186 GB)");
        assert_eq!(gpu_description("X1", None), "X1");
    }

    #[test]
    fn keys_come_as_bearer_or_basic() {
        assert_eq!(presented_key(b"Bearer abc").as_deref(), Some("abc"));
        assert_eq!(presented_key(b"bearer  abc ").as_deref(), Some("abc"));
        // "abc:" and ":abc"
        assert_eq!(presented_key(b"Basic YWJjOg==").as_deref(), Some("abc"));
        assert_eq!(presented_key(b"Basic OmFiYw==").as_deref(), Some("abc"));
        assert_eq!(presented_key(b"Basic YWJj").as_deref(), Some("abc"));
        assert_eq!(presented_key(b"Basic !!!!"), None);
        assert_eq!(presented_key(b"Basic Og=="), None);
        assert_eq!(presented_key(b"Token abc"), None);
        assert_eq!(presented_key(b"Bearer"), None);
        assert_eq!(presented_key(&[0xff, 0xfe]), None);
    }

    #[test]
    fn base64_decodes_standard_text() {
        assert_eq!(base64_decode("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(base64_decode("aGVsbG8").as_deref(), Some(&b"hello"[..]));
        assert_eq!(base64_decode("").as_deref(), Some(&b""[..]));
        assert_eq!(base64_decode("a"), None);
    }

    #[test]
    fn prices_round_to_cents() {
        assert_eq!(cents_per_hour(3_000_000, 8), 2400);
        assert_eq!(cents_per_hour(1_234_567, 1), 123);
        assert_eq!(cents_per_hour(1_235_000, 1), 124);
    }
}
