//! The handlers, one per operation, each bound to its path and documented for OpenAPI.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use neocloud_service::{
    Action, ApiKeyCreated, CapacityLine, ContractTerms, CreateApiKey, CreateGpuModel, CreateTenant,
    Created, GpuHistory, LaunchInstance, NodeOperation, Quote, SetPowerCap, SetPrice, SetQuota,
    SetXidRule, UpdateTenant, XidRule,
};
use neocloud_service::{
    CreateSshKey, CreateWebhook, EventFilter, InstanceLogs, NodeFilter, Principal, WebhookCreated,
};
use neocloud_types::{
    AgentRegister, AgentRegistered, ApiKey, Block, Class, Contract, DesiredWorkloads, Event,
    GpuModel, HealthEvent, Heartbeat, HeartbeatAck, HeartbeatBatch, HeartbeatBatchAnswer,
    ImportReport, Instance, InstanceId, InstanceState, Node, NodeState, Outage, PlacedNode, Price,
    Quota, Site, SshKey, Tenant, UsageRecord, Webhook, WebhookDelivery, WebhookDeliveryState,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::{ApiError, Problem};
use crate::extract::{Auth, Idem, Q, allow};

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// Largest fleet file accepted by `POST /v1/fleet/import`.
pub const FLEET_FILE_LIMIT: usize = 64 << 20;

pub(crate) fn register(r: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    r.routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(gpu_model_list, gpu_model_create))
        .routes(routes!(gpu_model_get))
        .routes(routes!(site_list))
        .routes(routes!(site_get))
        .routes(routes!(site_power_cap))
        .routes(routes!(block_list))
        .routes(routes!(block_get))
        .routes(routes!(node_list))
        .routes(routes!(node_get))
        .routes(routes!(node_cordon))
        .routes(routes!(node_uncordon))
        .routes(routes!(node_drain))
        .routes(routes!(node_repair_complete))
        .routes(routes!(node_health))
        .routes(routes!(gpu_history))
        .routes(routes!(health_rule_list))
        .routes(routes!(health_rule_set, health_rule_reset))
        .routes(routes!(contract_outages))
        .routes(routes!(agent_register))
        .routes(routes!(agent_heartbeat))
        .routes(routes!(agent_heartbeats))
        .routes(routes!(agent_workloads))
        // Fleet files of explicit node lists run to megabytes; other bodies keep the 2 MiB
        // default.
        .merge(
            OpenApiRouter::new()
                .routes(routes!(fleet_import))
                .layer(axum::extract::DefaultBodyLimit::max(FLEET_FILE_LIMIT)),
        )
        .routes(routes!(tenant_list, tenant_create))
        .routes(routes!(tenant_get, tenant_update))
        .routes(routes!(api_key_list, api_key_create))
        .routes(routes!(api_key_get, api_key_revoke))
        .routes(routes!(event_list))
        .routes(routes!(instance_list, instance_launch))
        .routes(routes!(instance_get))
        .routes(routes!(instance_terminate))
        .routes(routes!(instance_logs))
        .routes(routes!(instance_nodes))
        .routes(routes!(ssh_key_list, ssh_key_create))
        .routes(routes!(ssh_key_delete))
        .routes(routes!(webhook_list, webhook_create))
        .routes(routes!(webhook_get, webhook_delete))
        .routes(routes!(webhook_test))
        .routes(routes!(webhook_deliveries))
        .routes(routes!(quota_list, quota_set))
        .routes(routes!(quote_create))
        .routes(routes!(contract_list, contract_sign))
        .routes(routes!(contract_get))
        .routes(routes!(contract_cancel))
        .routes(routes!(contract_amend))
        .routes(routes!(capacity))
        .routes(routes!(price_list, price_set))
        .routes(routes!(usage_list))
        .routes(routes!(invoice_list, invoice_generate))
        .routes(routes!(invoice_get))
        .routes(routes!(invoice_finalize))
        .routes(routes!(downtime_add))
        .routes(routes!(report_backlog))
        .routes(routes!(spot_price_list))
        .routes(routes!(report_utilization))
        .routes(routes!(report_power))
        .routes(routes!(report_margin))
        .routes(routes!(report_revenue))
}

/// A list of items.
#[derive(Serialize, ToSchema)]
pub struct List<T> {
    /// The items.
    pub items: Vec<T>,
}

/// One page of a list; follow `next_cursor` for the next.
#[derive(Serialize, ToSchema)]
pub struct Paged<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

impl<T> From<neocloud_service::Page<T>> for Paged<T> {
    fn from(p: neocloud_service::Page<T>) -> Self {
        Paged {
            items: p.items,
            next_cursor: p.next_cursor,
        }
    }
}

/// Paging parameters.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    /// Cursor from a previous page's `next_cursor`.
    cursor: Option<String>,
    /// Items per page, 1-1000 (default 100).
    limit: Option<u32>,
}

/// The `Idempotency-Key` header that every state-changing operation accepts (documented
/// once, named by each operation's `params`).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IdempotencyKey {
    /// Makes a retry safe: 1-255 printable ASCII characters, unique per request. A retry
    /// with the same key and the same request (method, path, query, body) changes nothing
    /// again and replays the first answer, with `Idempotent-Replayed: true`; the same key
    /// with another request is refused (422 `idempotency_key_reused`). Keys are scoped to
    /// the API key that sent them.
    #[serde(rename = "Idempotency-Key")]
    #[allow(dead_code)]
    idempotency_key: Option<String>,
}

pub(crate) fn created<T: Serialize>(c: Created<T>) -> Response {
    answer(StatusCode::CREATED, c)
}

pub(crate) fn ok<T: Serialize>(c: Created<T>) -> Response {
    answer(StatusCode::OK, c)
}

/// An answer with `status`, marked `Idempotent-Replayed: true` when it is a replay.
fn answer<T: Serialize>(status: StatusCode, c: Created<T>) -> Response {
    let mut resp = (status, Json(c.value)).into_response();
    mark_replayed(&mut resp, c.replayed);
    resp
}

fn mark_replayed(resp: &mut Response, replayed: bool) {
    if replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "system",
    responses((status = 200, description = "The server is alive", body = String)))]
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the database answers.
#[utoipa::path(get, path = "/readyz", tag = "system",
    responses((status = 200, description = "Ready to serve", body = String),
              (status = 503, description = "The database is unreachable", body = Problem)))]
async fn readyz(State(st): State<AppState>) -> ApiResult<String> {
    st.svc.ping().await?;
    // With replicas, say which role this one has: load balancers may send writes to the
    // leader directly, and the fault tests find it here.
    Ok(match st.svc.role() {
        None => "ready".to_string(),
        Some(r) if r.leader => format!("ready (leader, epoch {})", r.epoch),
        Some(r) => match r.leader_url {
            Some(u) => format!("ready (follower of {u})"),
            None => "ready (follower; no leader right now)".to_string(),
        },
    })
}

// ---- GPU models -------------------------------------------------------------------------

/// List the GPU model catalog.
#[utoipa::path(get, path = "/v1/gpu-models", tag = "fleet", security(("bearer" = [])),
    responses((status = 200, body = List<GpuModel>), (status = 401, body = Problem)))]
async fn gpu_model_list(
    State(st): State<AppState>,
    Auth(p): Auth,
) -> ApiResult<Json<List<GpuModel>>> {
    Ok(Json(List {
        items: st.svc.gpu_model_list(&p).await?,
    }))
}

/// Add a GPU model to the catalog (operator-admin).
#[utoipa::path(post, path = "/v1/gpu-models", tag = "fleet", security(("bearer" = [])),
    request_body = CreateGpuModel, params(IdempotencyKey),
    responses((status = 201, body = GpuModel), (status = 400, body = Problem),
              (status = 409, body = Problem)))]
async fn gpu_model_create(
    State(st): State<AppState>,
    Auth(p): Auth,
    idem: Idem,
) -> ApiResult<Response> {
    allow(&p, Action::WriteCatalog)?;
    let req: CreateGpuModel = idem.json()?;
    Ok(created(
        st.svc.gpu_model_create(&p, req, idem.key()?).await?,
    ))
}

/// Read one GPU model.
#[utoipa::path(get, path = "/v1/gpu-models/{name}", tag = "fleet", security(("bearer" = [])),
    params(("name" = String, Path, description = "GPU model name")),
    responses((status = 200, body = GpuModel), (status = 404, body = Problem)))]
async fn gpu_model_get(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(name): Path<String>,
) -> ApiResult<Json<GpuModel>> {
    Ok(Json(st.svc.gpu_model_get(&p, &name).await?))
}

// ---- sites, blocks, nodes ---------------------------------------------------------------

/// List sites with node, GPU and power totals.
#[utoipa::path(get, path = "/v1/sites", tag = "fleet", security(("bearer" = [])),
    responses((status = 200, body = List<Site>)))]
async fn site_list(State(st): State<AppState>, Auth(p): Auth) -> ApiResult<Json<List<Site>>> {
    Ok(Json(List {
        items: st.svc.site_list(&p).await?,
    }))
}

/// Read one site by id or name.
#[utoipa::path(get, path = "/v1/sites/{site}", tag = "fleet", security(("bearer" = [])),
    params(("site" = String, Path, description = "Site id or name")),
    responses((status = 200, body = Site), (status = 404, body = Problem)))]
async fn site_get(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(site): Path<String>,
) -> ApiResult<Json<Site>> {
    Ok(Json(st.svc.site_get(&p, &site).await?))
}

/// Cap a site's power below its budget (operator-admin); `{"watts": null}` removes the cap.
/// New placements keep the site under it; running work is not stopped.
#[utoipa::path(put, path = "/v1/sites/{site}/power-cap", tag = "fleet", security(("bearer" = [])),
    params(("site" = String, Path, description = "Site id or name"), IdempotencyKey),
    request_body = SetPowerCap,
    responses((status = 200, body = Site), (status = 400, body = Problem)))]
async fn site_power_cap(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(site): Path<String>,
    idem: Idem,
) -> ApiResult<Response> {
    allow(&p, Action::WriteFleet)?;
    let req: SetPowerCap = idem.json()?;
    Ok(ok(st
        .svc
        .site_set_power_cap(&p, &site, req, idem.key()?)
        .await?))
}

/// Filters for listing blocks.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct BlockParams {
    /// Only blocks of this site (id or name).
    site: Option<String>,
}

/// List topology blocks (pods, leaf groups, NVLink domains) with totals.
#[utoipa::path(get, path = "/v1/blocks", tag = "fleet", security(("bearer" = [])),
    params(BlockParams), responses((status = 200, body = List<Block>)))]
async fn block_list(
    State(st): State<AppState>,
    Auth(p): Auth,
    q: Q<BlockParams>,
) -> ApiResult<Json<List<Block>>> {
    allow(&p, Action::ReadFleet)?;
    let q = q.get()?;
    Ok(Json(List {
        items: st.svc.block_list(&p, q.site.as_deref()).await?,
    }))
}

/// Read one block.
#[utoipa::path(get, path = "/v1/blocks/{id}", tag = "fleet", security(("bearer" = [])),
    params(("id" = String, Path, description = "Block id")),
    responses((status = 200, body = Block), (status = 404, body = Problem)))]
async fn block_get(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Block>> {
    Ok(Json(st.svc.block_get(&p, &id).await?))
}

/// Filters and paging for listing nodes.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct NodeParams {
    /// Only nodes of this site (id or name).
    site: Option<String>,
    /// Only nodes inside this block (id, or name/path within `site`), nested blocks included.
    block: Option<String>,
    /// Only nodes in this state.
    state: Option<NodeState>,
    /// Only nodes with this GPU model.
    gpu_model: Option<String>,
    /// Cursor from a previous page's `next_cursor`.
    cursor: Option<String>,
    /// Items per page, 1-1000 (default 100).
    limit: Option<u32>,
}

/// List nodes, filtered, a page at a time (ordered by name).
#[utoipa::path(get, path = "/v1/nodes", tag = "fleet", security(("bearer" = [])),
    params(NodeParams), responses((status = 200, body = Paged<Node>), (status = 400, body = Problem)))]
async fn node_list(
    State(st): State<AppState>,
    Auth(p): Auth,
    q: Q<NodeParams>,
) -> ApiResult<Json<Paged<Node>>> {
    allow(&p, Action::ReadFleet)?;
    let q = q.get()?;
    let filter = NodeFilter {
        site: q.site,
        block: q.block,
        state: q.state,
        gpu_model: q.gpu_model,
    };
    let page = st
        .svc
        .node_list(&p, &filter, q.cursor.as_deref(), q.limit)
        .await?;
    Ok(Json(page.into()))
}

/// Read one node by id or name, with its GPUs.
#[utoipa::path(get, path = "/v1/nodes/{node}", tag = "fleet", security(("bearer" = [])),
    params(("node" = String, Path, description = "Node id or name")),
    responses((status = 200, body = Node), (status = 404, body = Problem)))]
async fn node_get(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(node): Path<String>,
) -> ApiResult<Json<Node>> {
    Ok(Json(st.svc.node_get(&p, &node).await?))
}

/// Cordon a node (operator-admin): it takes no new work; what runs there stays.
#[utoipa::path(post, path = "/v1/nodes/{node}/cordon", tag = "health", security(("bearer" = [])),
    params(("node" = String, Path, description = "Node id or name"), IdempotencyKey),
    request_body(content = Option<NodeOperation>, description = "Optional reason"),
    responses((status = 200, body = Node), (status = 409, body = Problem)))]
async fn node_cordon(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(node): Path<String>,
    idem: Idem,
) -> ApiResult<Response> {
    allow(&p, Action::WriteFleet)?;
    let req: NodeOperation = idem.json_or_default()?;
    let svc = &st.svc;
    Ok(ok(svc
        .idempotent(&p, idem.key()?, 200, svc.node_cordon(&p, &node, req))
        .await?))
}

/// Return a cordoned or draining node to service (operator-admin).
#[utoipa::path(post, path = "/v1/nodes/{node}/uncordon", tag = "health", security(("bearer" = [])),
    params(("node" = String, Path, description = "Node id or name"), IdempotencyKey),
    request_body(content = Option<NodeOperation>, description = "Optional reason"),
    responses((status = 200, body = Node), (status = 409, body = Problem)))]
async fn node_uncordon(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(node): Path<String>,
    idem: Idem,
) -> ApiResult<Response> {
    allow(&p, Action::WriteFleet)?;
    let req: NodeOperation = idem.json_or_default()?;
    let svc = &st.svc;
    Ok(ok(svc
        .idempotent(&p, idem.key()?, 200, svc.node_uncordon(&p, &node, req))
        .await?))
}

/// Drain a node (operator-admin): no new work; once its running work has ended it moves to
/// `maintenance`, and a contract pool it belongs to gets a spare.
#[utoipa::path(post, path = "/v1/nodes/{node}/drain", tag = "health", security(("bearer" = [])),
    params(("node" = String, Path, description = "Node id or name"), IdempotencyKey),
    request_body(content = Option<NodeOperation>, description = "Optional reason"),
    responses((status = 200, body = Node), (status = 409, body = Problem)))]
async fn node_drain(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(node): Path<String>,
    idem: Idem,
) -> ApiResult<Response> {
    allow(&p, Action::WriteFleet)?;
    let req: NodeOperation = idem.json_or_default()?;
    let svc = &st.svc;
    Ok(ok(svc
        .idempotent(&p, idem.key()?, 200, svc.node_drain(&p, &node, req))
        .await?))
}

/// Mark a node's repair complete (operator-admin): its GPUs count as healthy again and it
/// enters `burn_in`; it returns to service when its agent reports the check passed.
#[utoipa::path(post, path = "/v1/nodes/{node}/repair-complete", tag = "health",
    security(("bearer" = [])),
    params(("node" = String, Path, description = "Node id or name"), IdempotencyKey),
    request_body(content = Option<NodeOperation>, description = "Optional reason"),
    responses((status = 200, body = Node), (status = 409, body = Problem)))]
async fn node_repair_complete(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(node): Path<String>,
    idem: Idem,
) -> ApiResult<Response> {
    allow(&p, Action::WriteFleet)?;
    let req: NodeOperation = idem.json_or_default()?;
    let svc = &st.svc;
    Ok(ok(svc
        .idempotent(
            &p,
            idem.key()?,
            200,
            svc.node_repair_complete(&p, &node, req),
        )
        .await?))
}

/// How many history entries to return.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LimitParams {
    /// Entries, newest first, 1-1000 (default 100).
    limit: Option<u32>,
}

/// A node's health history: faults its agent reported, what the policy did, lifecycle
/// changes; newest first.
#[utoipa::path(get, path = "/v1/nodes/{node}/health", tag = "health", security(("bearer" = [])),
    params(("node" = String, Path, description = "Node id or name"), LimitParams),
    responses((status = 200, body = Vec<HealthEvent>), (status = 404, body = Problem)))]
async fn node_health(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(node): Path<String>,
    q: Q<LimitParams>,
) -> ApiResult<Json<Vec<HealthEvent>>> {
    allow(&p, Action::ReadFleet)?;
    let q = q.get()?;
    Ok(Json(st.svc.node_health(&p, &node, q.limit).await?))
}

/// A GPU's history by UUID, across every node it has been in (through repair and RMA).
#[utoipa::path(get, path = "/v1/gpus/{uuid}/history", tag = "health", security(("bearer" = [])),
    params(("uuid" = String, Path, description = "GPU UUID"), LimitParams),
    responses((status = 200, body = GpuHistory), (status = 404, body = Problem)))]
async fn gpu_history(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(uuid): Path<String>,
    q: Q<LimitParams>,
) -> ApiResult<Json<GpuHistory>> {
    allow(&p, Action::ReadFleet)?;
    let q = q.get()?;
    Ok(Json(st.svc.gpu_history(&p, &uuid, q.limit).await?))
}

/// The XID policy: what each code does (built-in rules with operators' overrides).
#[utoipa::path(get, path = "/v1/health/rules", tag = "health", security(("bearer" = [])),
    responses((status = 200, body = Vec<XidRule>)))]
async fn health_rule_list(
    State(st): State<AppState>,
    Auth(p): Auth,
) -> ApiResult<Json<Vec<XidRule>>> {
    Ok(Json(st.svc.health_rules(&p).await?))
}

/// Override what one XID code does (operator-admin). Returns the whole policy.
#[utoipa::path(put, path = "/v1/health/rules/{code}", tag = "health", security(("bearer" = [])),
    params(("code" = u32, Path, description = "XID code"), IdempotencyKey),
    request_body = SetXidRule,
    responses((status = 200, body = Vec<XidRule>), (status = 400, body = Problem)))]
async fn health_rule_set(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(code): Path<String>,
    idem: Idem,
) -> ApiResult<Response> {
    allow(&p, Action::WriteFleet)?;
    let code = parse_code(&code)?;
    let req: SetXidRule = idem.json()?;
    Ok(ok(st
        .svc
        .health_rule_set(&p, code, req, idem.key()?)
        .await?))
}

/// Remove the override of one XID code (operator-admin): the built-in rule applies again.
#[utoipa::path(delete, path = "/v1/health/rules/{code}", tag = "health",
    security(("bearer" = [])),
    params(("code" = u32, Path, description = "XID code"), IdempotencyKey),
    responses((status = 200, body = Vec<XidRule>), (status = 400, body = Problem)))]
async fn health_rule_reset(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(code): Path<String>,
    idem: Idem,
) -> ApiResult<Response> {
    allow(&p, Action::WriteFleet)?;
    let code = parse_code(&code)?;
    Ok(ok(st.svc.health_rule_reset(&p, code, idem.key()?).await?))
}

fn parse_code(s: &str) -> Result<u32, ApiError> {
    s.parse::<u32>().map_err(|_| {
        ApiError::from(neocloud_service::Error::invalid(format!(
            "'{s}' is not an XID code (a whole number)"
        )))
    })
}

/// Outages of a contract's reserved capacity: when a pool node left service and when a spare
/// or the node itself brought it back. Closed outages are the downtime SLA credits use.
#[utoipa::path(get, path = "/v1/contracts/{id}/outages", tag = "contracts",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Contract id")),
    responses((status = 200, body = Vec<Outage>), (status = 404, body = Problem)))]
async fn contract_outages(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<Outage>>> {
    Ok(Json(st.svc.contract_outages(&p, &id).await?))
}

/// Register a node's agent (node-agent keys). With an enrollment key (bound to no node) the
/// answer carries a key for the node, shown once.
#[utoipa::path(post, path = "/v1/agent/register", tag = "agent", security(("bearer" = [])),
    request_body = AgentRegister, params(IdempotencyKey),
    responses((status = 200, body = AgentRegistered), (status = 400, body = Problem),
        (status = 409, body = Problem)))]
async fn agent_register(
    State(st): State<AppState>,
    Auth(p): Auth,
    idem: Idem,
) -> ApiResult<Response> {
    allow(&p, Action::AgentRegister)?;
    let req: AgentRegister = idem.json()?;
    let svc = &st.svc;
    // The minted node key is shown once: a replay answers without it.
    let c = svc
        .idempotent_recording(&p, idem.key()?, 200, svc.agent_register(&p, req), |r| {
            let mut r = r.clone();
            r.node_key = None;
            serde_json::to_value(r).map_err(|e| neocloud_service::Error::internal(e.to_string()))
        })
        .await?;
    let mut resp = ok(c);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// A node's heartbeat: telemetry of each GPU and health events not yet acknowledged
/// (node-agent key of that node).
#[utoipa::path(post, path = "/v1/agent/heartbeat", tag = "agent", security(("bearer" = [])),
    request_body = Heartbeat, params(IdempotencyKey),
    responses((status = 200, body = HeartbeatAck), (status = 400, body = Problem),
        (status = 404, body = Problem)))]
async fn agent_heartbeat(
    State(st): State<AppState>,
    Auth(p): Auth,
    idem: Idem,
) -> ApiResult<Response> {
    allow(&p, Action::AgentHeartbeat)?;
    heartbeat_one(&st, &p, &idem).await
}

/// One heartbeat of the node `p` speaks for, however it came (alone, or in a relay's
/// batch): answered here on a follower when it has no news, else taken by the leader.
async fn heartbeat_one(st: &AppState, p: &Principal, idem: &Idem) -> ApiResult<Response> {
    neocloud_service::heartbeat_node(p)?;
    let mut req: Heartbeat = idem.json()?;
    let svc = &st.svc;
    // A replica that does not lead answers a heartbeat without news itself and passes the
    // rest on to the leader (one with an Idempotency-Key too: the leader keeps the record).
    if !svc.is_leader() {
        let passed = match idem.key()? {
            None => match svc.agent_heartbeat_here(p, &mut req)? {
                neocloud_service::Heard::Here(ack) => return Ok(Json(ack).into_response()),
                neocloud_service::Heard::Leader(passed) => Some(passed),
            },
            Some(_) => None,
        };
        let resp = crate::forward::to_leader(
            st,
            axum::http::Method::POST,
            crate::forward::AGENT_HEARTBEAT,
            &idem.headers,
            None,
            idem.body.clone(),
        )
        .await;
        let Some(passed) = passed.filter(|_| resp.status() == StatusCode::OK) else {
            return Ok(resp);
        };
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, 16 * 1024 * 1024)
            .await
            .unwrap_or_default();
        if let Ok(ack) = serde_json::from_slice::<HeartbeatAck>(&bytes) {
            svc.agent_passed(passed, &ack);
        }
        return Ok(Response::from_parts(parts, axum::body::Body::from(bytes)));
    }
    // Without the header (agents send none: their events carry sequence numbers) this is
    // the plain heartbeat, with no extra read.
    Ok(ok(svc
        .idempotent(p, idem.key()?, 200, svc.agent_heartbeat(p, req))
        .await?))
}

/// Heartbeats of many nodes in one request, as `neocloud relay` sends them (node-agent key:
/// an enrollment key, or any node's). Each heartbeat carries its own node's key and is
/// taken exactly as if it had come alone; its answer (status and body) stands in the same
/// place of the answer. A heartbeat refused (bad key, bad body, unknown GPU) is refused
/// alone: the others are taken. With an Idempotency-Key the whole answer is kept and
/// replayed (agents' events carry sequence numbers, so a resent batch is safe without one).
#[utoipa::path(post, path = "/v1/agent/heartbeats", tag = "agent", security(("bearer" = [])),
    request_body = HeartbeatBatch, params(IdempotencyKey),
    responses((status = 200, body = HeartbeatBatchAnswer), (status = 400, body = Problem),
        (status = 403, body = Problem)))]
async fn agent_heartbeats(
    State(st): State<AppState>,
    Auth(p): Auth,
    idem: Idem,
) -> ApiResult<Response> {
    allow(&p, Action::AgentHeartbeat)?;
    // With an Idempotency-Key the leader keeps the record, as for a single heartbeat.
    if idem.key()?.is_some() && !st.svc.is_leader() {
        return Ok(crate::forward::to_leader(
            &st,
            axum::http::Method::POST,
            crate::forward::AGENT_HEARTBEATS,
            &idem.headers,
            None,
            idem.body.clone(),
        )
        .await);
    }
    // Read in place: each heartbeat is a slice of the request's body, parsed once, by the
    // handler of a single heartbeat.
    let batch: BatchIn<'_> = crate::extract::json_body(&idem.headers, &idem.body)?;
    if batch.heartbeats.len() > neocloud_types::HEARTBEAT_BATCH_MAX {
        return Err(ApiError::invalid(format!(
            "heartbeats: {} heartbeats in one batch; at most {} are taken",
            batch.heartbeats.len(),
            neocloud_types::HEARTBEAT_BATCH_MAX
        )));
    }
    if let Some(key) = idem.key()? {
        let svc = &st.svc;
        let answer = async {
            let bytes = batch_answer(&st, &batch, &idem.body).await;
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .map_err(|e| neocloud_service::Error::internal(e.to_string()))
        };
        return Ok(ok(svc.idempotent(&p, Some(key), 200, answer).await?));
    }
    let mut resp = Response::new(axum::body::Body::from(
        batch_answer(&st, &batch, &idem.body).await,
    ));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// Heartbeats of one batch taken at once.
const BATCH_SIDE_BY_SIDE: usize = 16;

/// The answers to a batch ([`HeartbeatBatchAnswer`]), in the batch's order; each body is
/// already JSON.
///
/// The heartbeats are taken side by side, [`BATCH_SIDE_BY_SIDE`] at a time, so that those
/// with news (each waiting for its commit) share the writer's transactions instead of
/// waiting for each other: 500 nodes back from `unreachable` in one batch are then a few
/// dozen commits, not 500 in a row. A node
/// whose heartbeat comes twice in one batch has the later one taken after the others.
async fn batch_answer(st: &AppState, batch: &BatchIn<'_>, body: &axum::body::Bytes) -> Vec<u8> {
    let items = &batch.heartbeats;
    let one = |i: usize| {
        let item = &items[i];
        relayed_one(
            st,
            &item.key,
            body.slice_ref(item.heartbeat.get().as_bytes()),
        )
    };
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    let (first, again): (Vec<usize>, Vec<usize>) =
        (0..items.len()).partition(|&i| seen.insert(items[i].key.trim()));
    // A few at a time: enough to group the commits of news, while a batch without news
    // costs about what it does one by one (all 500 at once cost 3 µs more a heartbeat).
    let mut answers: Vec<(usize, (u16, axum::body::Bytes))> = Vec::with_capacity(items.len());
    for group in first.chunks(BATCH_SIDE_BY_SIDE) {
        let taken = futures_util::future::join_all(group.iter().map(|&i| one(i))).await;
        answers.extend(group.iter().copied().zip(taken));
    }
    for i in again {
        answers.push((i, one(i).await));
    }
    answers.sort_unstable_by_key(|(i, _)| *i);
    let mut out = Vec::with_capacity(64 + items.len() * 256);
    out.extend_from_slice(b"{\"answers\":[");
    for (n, (_, (status, answer))) in answers.into_iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"status\":");
        out.extend_from_slice(status.to_string().as_bytes());
        out.extend_from_slice(b",\"body\":");
        if answer.first() == Some(&b'{') {
            out.extend_from_slice(&answer);
        } else {
            // Not an object (never from this server; a proxy's page): as a JSON string.
            let text = serde_json::to_vec(&String::from_utf8_lossy(&answer)).unwrap_or_default();
            out.extend_from_slice(&text);
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    out
}

/// A batch as read: borrowed from the request's body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchIn<'a> {
    #[serde(borrow)]
    heartbeats: Vec<ItemIn<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemIn<'a> {
    #[serde(borrow)]
    key: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    heartbeat: &'a serde_json::value::RawValue,
}

/// One heartbeat of a batch, answered (status and JSON body) as it would have been alone.
async fn relayed_one(
    st: &AppState,
    key: &str,
    body: axum::body::Bytes,
) -> (u16, axum::body::Bytes) {
    let key = key.trim();
    let resp = match st.svc.authenticate(Some(key)).await {
        Err(e) => ApiError(e).into_response(),
        Ok(p) => {
            let mut headers = axum::http::HeaderMap::new();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            let answered = match allow(&p, Action::AgentHeartbeat) {
                Ok(()) => {
                    // A heartbeat with news that a follower passes to the leader goes with
                    // its own node's key.
                    if !st.svc.is_leader()
                        && let Ok(v) = HeaderValue::try_from(format!("Bearer {key}"))
                    {
                        headers.insert(header::AUTHORIZATION, v);
                    }
                    heartbeat_one(st, &p, &Idem::without_key(headers, body)).await
                }
                Err(e) => Err(e),
            };
            answered.unwrap_or_else(IntoResponse::into_response)
        }
    };
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), 16 * 1024 * 1024)
        .await
        .unwrap_or_default();
    (status, bytes)
}

/// Which desired workloads the agent already has, and how long to wait for others.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WorkloadsParams {
    /// The generation the agent last received; the answer waits while it is still current.
    generation: Option<u64>,
    /// Seconds to wait for a change, 0-55 (default 0: answer at once).
    #[serde(default)]
    wait_secs: u32,
}

/// What should run on the caller's node (node-agent key of that node): the same list every
/// heartbeat answer carries, answered as soon as it differs from `generation` (a long poll),
/// or after `wait_secs` unchanged. Agents hold one open so that a launch or a terminate
/// reaches the node at once rather than at its next heartbeat.
#[utoipa::path(get, path = "/v1/agent/workloads", tag = "agent", security(("bearer" = [])),
    params(WorkloadsParams),
    responses((status = 200, body = DesiredWorkloads), (status = 400, body = Problem),
        (status = 403, body = Problem)))]
async fn agent_workloads(
    State(st): State<AppState>,
    Auth(p): Auth,
    q: Q<WorkloadsParams>,
) -> ApiResult<Json<DesiredWorkloads>> {
    allow(&p, Action::AgentHeartbeat)?;
    neocloud_service::heartbeat_node(&p)?;
    let q = q.get()?;
    Ok(Json(
        st.svc.agent_desired(&p, q.generation, q.wait_secs).await?,
    ))
}

/// Options of a fleet import.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ImportParams {
    /// Validate and report what would change, writing nothing.
    #[serde(default)]
    dry_run: bool,
}

/// A fleet file sent as a file's bytes (`application/octet-stream`): the same TOML.
pub struct FleetFileBytes;

impl utoipa::PartialSchema for FleetFileBytes {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::Binary,
            )))
            .content_media_type("application/toml")
            .into()
    }
}

impl ToSchema for FleetFileBytes {}

/// Import a fleet file (TOML, see docs/fleet-file.md): adds what is new, updates what
/// changed, removes nodes of the file's sites that it no longer lists (never one that holds
/// allocated GPUs). Errors name the line and field.
#[utoipa::path(post, path = "/v1/fleet/import", tag = "fleet", security(("bearer" = [])),
    params(ImportParams, IdempotencyKey),
    request_body(description = "A fleet file, as TOML text or as the bytes of the file",
        content((String = "application/toml"), (FleetFileBytes = "application/octet-stream"))),
    responses((status = 200, body = ImportReport), (status = 422, body = Problem)))]
async fn fleet_import(
    State(st): State<AppState>,
    Auth(p): Auth,
    q: Q<ImportParams>,
    idem: Idem,
) -> ApiResult<Response> {
    allow(&p, Action::WriteFleet)?;
    let q = q.get()?;
    let text = std::str::from_utf8(&idem.body)
        .map_err(|_| ApiError::invalid("the fleet file must be UTF-8 text"))?;
    // An import is declarative (the same file again changes nothing more).
    let svc = &st.svc;
    Ok(ok(svc
        .idempotent(
            &p,
            idem.key()?,
            200,
            svc.fleet_import(Some(&p), text, q.dry_run),
        )
        .await?))
}

// ---- tenants ----------------------------------------------------------------------------

/// List tenants (a tenant key sees only its own).
#[utoipa::path(get, path = "/v1/tenants", tag = "tenancy", security(("bearer" = [])),
    params(PageParams), responses((status = 200, body = Paged<Tenant>)))]
async fn tenant_list(
    State(st): State<AppState>,
    Auth(p): Auth,
    q: Q<PageParams>,
) -> ApiResult<Json<Paged<Tenant>>> {
    allow(&p, Action::ReadTenants)?;
    let q = q.get()?;
    Ok(Json(
        st.svc
            .tenant_list(&p, q.cursor.as_deref(), q.limit)
            .await?
            .into(),
    ))
}

/// Create a tenant (operator-admin).
#[utoipa::path(post, path = "/v1/tenants", tag = "tenancy", security(("bearer" = [])),
    request_body = CreateTenant, params(IdempotencyKey),
    responses((status = 201, body = Tenant), (status = 400, body = Problem),
              (status = 409, body = Problem)))]
async fn tenant_create(
    State(st): State<AppState>,
    Auth(p): Auth,
    idem: Idem,
) -> ApiResult<Response> {
    allow(&p, Action::WriteTenants)?;
    let req: CreateTenant = idem.json()?;
    Ok(created(st.svc.tenant_create(&p, req, idem.key()?).await?))
}

/// Read a tenant by id or name.
#[utoipa::path(get, path = "/v1/tenants/{tenant}", tag = "tenancy", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "Tenant id or name")),
    responses((status = 200, body = Tenant), (status = 404, body = Problem)))]
async fn tenant_get(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(tenant): Path<String>,
) -> ApiResult<Json<Tenant>> {
    Ok(Json(st.svc.tenant_get(&p, &tenant).await?))
}

/// Change a tenant's display name, status or credit limit (operator-admin).
#[utoipa::path(patch, path = "/v1/tenants/{tenant}", tag = "tenancy", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "Tenant id or name"), IdempotencyKey),
    request_body = UpdateTenant,
    responses((status = 200, body = Tenant), (status = 404, body = Problem)))]
async fn tenant_update(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(tenant): Path<String>,
    idem: Idem,
) -> ApiResult<Response> {
    allow(&p, Action::WriteTenants)?;
    let req: UpdateTenant = idem.json()?;
    Ok(ok(st
        .svc
        .tenant_update(&p, &tenant, req, idem.key()?)
        .await?))
}

// ---- API keys ---------------------------------------------------------------------------

/// Filters and paging for listing keys.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct KeyParams {
    /// Only keys of this tenant (id or name).
    tenant: Option<String>,
    /// Cursor from a previous page's `next_cursor`.
    cursor: Option<String>,
    /// Items per page, 1-1000 (default 100).
    limit: Option<u32>,
}

/// List API keys, newest first (never their secrets).
#[utoipa::path(get, path = "/v1/api-keys", tag = "tenancy", security(("bearer" = [])),
    params(KeyParams), responses((status = 200, body = Paged<ApiKey>)))]
async fn api_key_list(
    State(st): State<AppState>,
    Auth(p): Auth,
    q: Q<KeyParams>,
) -> ApiResult<Json<Paged<ApiKey>>> {
    allow(&p, Action::ReadKeys)?;
    let q = q.get()?;
    let page = st
        .svc
        .api_key_list(&p, q.tenant.as_deref(), q.cursor.as_deref(), q.limit)
        .await?;
    Ok(Json(page.into()))
}

/// Create an API key. The response's `secret` is shown this once.
#[utoipa::path(post, path = "/v1/api-keys", tag = "tenancy", security(("bearer" = [])),
    request_body = CreateApiKey, params(IdempotencyKey),
    responses((status = 201, body = ApiKeyCreated), (status = 400, body = Problem)))]
async fn api_key_create(
    State(st): State<AppState>,
    Auth(p): Auth,
    idem: Idem,
) -> ApiResult<Response> {
    allow(&p, Action::WriteKeys)?;
    let req: CreateApiKey = idem.json()?;
    let mut resp = created(st.svc.api_key_create(&p, req, idem.key()?).await?);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// Read an API key.
#[utoipa::path(get, path = "/v1/api-keys/{id}", tag = "tenancy", security(("bearer" = [])),
    params(("id" = String, Path, description = "Key id")),
    responses((status = 200, body = ApiKey), (status = 404, body = Problem)))]
async fn api_key_get(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<ApiKey>> {
    Ok(Json(st.svc.api_key_get(&p, &id).await?))
}

/// Revoke an API key; it stops working at once.
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "tenancy", security(("bearer" = [])),
    params(("id" = String, Path, description = "Key id"), IdempotencyKey),
    responses((status = 200, body = ApiKey), (status = 404, body = Problem)))]
async fn api_key_revoke(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    idem: Idem,
) -> ApiResult<Response> {
    allow(&p, Action::WriteKeys)?;
    Ok(ok(st.svc.api_key_revoke(&p, &id, idem.key()?).await?))
}

// ---- events -----------------------------------------------------------------------------

/// Filters and paging for the audit trail.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventParams {
    /// Only events of this tenant (id or name; operators only, tenants always see their own).
    tenant: Option<String>,
    /// Only events about this resource id or name.
    resource_id: Option<String>,
    /// Only events whose action starts with this, e.g. `tenant.`.
    action: Option<String>,
    /// Cursor from a previous page's `next_cursor`.
    cursor: Option<String>,
    /// Items per page, 1-1000 (default 100).
    limit: Option<u32>,
}

/// List audit events, newest first.
#[utoipa::path(get, path = "/v1/events", tag = "tenancy", security(("bearer" = [])),
    params(EventParams), responses((status = 200, body = Paged<Event>)))]
async fn event_list(
    State(st): State<AppState>,
    Auth(p): Auth,
    q: Q<EventParams>,
) -> ApiResult<Json<Paged<Event>>> {
    allow(&p, Action::ReadEvents)?;
    let q = q.get()?;
    let tenant_id = match &q.tenant {
        Some(t) => Some(st.svc.tenant_get(&p, t).await?.id),
        None => None,
    };
    let filter = EventFilter {
        tenant_id,
        resource_id: q.resource_id,
        action_prefix: q.action,
    };
    Ok(Json(
        st.svc
            .event_list(&p, filter, q.cursor.as_deref(), q.limit)
            .await?
            .into(),
    ))
}

// ---- instances --------------------------------------------------------------------------

/// Filters and paging for listing instances.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct InstanceParams {
    /// Only instances of this tenant (id or name; operators only, tenants always see their own).
    tenant: Option<String>,
    /// Only instances in this state.
    state: Option<InstanceState>,
    /// Cursor from a previous page's `next_cursor`.
    cursor: Option<String>,
    /// Items per page, 1-1000 (default 100).
    limit: Option<u32>,
}

/// List instances, newest first.
#[utoipa::path(get, path = "/v1/instances", tag = "instances", security(("bearer" = [])),
    params(InstanceParams), responses((status = 200, body = Paged<Instance>)))]
async fn instance_list(
    State(st): State<AppState>,
    Auth(p): Auth,
    q: Q<InstanceParams>,
) -> ApiResult<Json<Paged<Instance>>> {
    allow(&p, Action::ReadInstances)?;
    let q = q.get()?;
    let page = st
        .svc
        .instance_list(
            &p,
            q.tenant.as_deref(),
            q.state,
            q.cursor.as_deref(),
            q.limit,
        )
        .await?;
    let mut page: Paged<Instance> = page.into();
    page.items = page
        .items
        .into_iter()
        .map(|i| st.svc.instance_shown(i))
        .collect();
    Ok(Json(page))
}

/// Launch an instance. It is placed at once (`running`), queued (`pending`: it asked to
/// wait, or lower-priority work is being preempted for it), or refused with the reason
/// (`insufficient_capacity`, `quota_exceeded`). An instance on more than 128 nodes is
/// answered with `placement_summary` (its nodes counted by block) and an empty
/// `placement`; `GET /v1/instances/{id}/nodes` pages through its nodes.
#[utoipa::path(post, path = "/v1/instances", tag = "instances", security(("bearer" = [])),
    request_body = LaunchInstance, params(IdempotencyKey),
    responses((status = 201, body = Instance), (status = 400, body = Problem),
              (status = 409, body = Problem)))]
async fn instance_launch(
    State(st): State<AppState>,
    Auth(p): Auth,
    idem: Idem,
) -> ApiResult<Response> {
    allow(&p, Action::WriteInstances)?;
    let req: LaunchInstance = idem.json()?;
    Ok(created(st.svc.instance_launch(&p, req, idem.key()?).await?))
}

/// Read an instance.
#[utoipa::path(get, path = "/v1/instances/{id}", tag = "instances", security(("bearer" = [])),
    params(("id" = String, Path, description = "Instance id")),
    responses((status = 200, body = Instance), (status = 404, body = Problem)))]
async fn instance_get(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Instance>> {
    let inst = st.svc.instance_get(&p, &id).await?;
    Ok(Json(st.svc.instance_shown(inst)))
}

/// A page of an instance's nodes, by node id: the entries of its `placement`, for an
/// instance on more than 128 nodes, whose answer counts them by block instead
/// (`placement_summary`).
#[utoipa::path(get, path = "/v1/instances/{id}/nodes", tag = "instances",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Instance id"), PageParams),
    responses((status = 200, body = Paged<PlacedNode>), (status = 400, body = Problem),
              (status = 404, body = Problem)))]
async fn instance_nodes(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    q: Q<PageParams>,
) -> ApiResult<Json<Paged<PlacedNode>>> {
    allow(&p, Action::ReadInstances)?;
    let q = q.get()?;
    Ok(Json(
        st.svc
            .instance_nodes(&p, &id, q.cursor.as_deref(), q.limit)
            .await?
            .into(),
    ))
}

/// Terminate an instance; its GPUs are freed at once.
#[utoipa::path(post, path = "/v1/instances/{id}/terminate", tag = "instances",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Instance id"), IdempotencyKey),
    responses((status = 200, body = Instance), (status = 404, body = Problem)))]
async fn instance_terminate(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    idem: Idem,
) -> ApiResult<Response> {
    allow(&p, Action::WriteInstances)?;
    let svc = &st.svc;
    let shown = async { Ok(svc.instance_shown(svc.instance_terminate(&p, &id).await?)) };
    Ok(ok(svc.idempotent(&p, idem.key()?, 200, shown).await?))
}

/// Where to read an instance's output from.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogParams {
    /// Byte offset to read from (the `next_offset` of the previous read; default 0: all
    /// that is kept).
    offset: Option<u64>,
    /// Most bytes to return, 1-1048576 (default: all that is kept).
    limit: Option<u32>,
}

/// Read a delivered instance's output (its container's stdout and stderr, a bare-metal
/// hand-off's user-data run), as its agents reported it. The control plane keeps the last
/// MiB of each instance; poll with `offset` = the previous `next_offset` to follow it.
#[utoipa::path(get, path = "/v1/instances/{id}/logs", tag = "instances",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Instance id"), LogParams),
    responses((status = 200, body = InstanceLogs), (status = 400, body = Problem),
              (status = 404, body = Problem)))]
async fn instance_logs(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    uri: axum::extract::OriginalUri,
    q: Q<LogParams>,
) -> ApiResult<Response> {
    allow(&p, Action::ReadInstances)?;
    let q = q.get()?;
    // Output is kept by the replica that took the agents' reports: heartbeats that carry
    // output go to the leader, so a follower reads it there.
    if !st.svc.is_leader() {
        let path = uri.0.path_and_query().map_or("/", |p| p.as_str());
        return Ok(crate::forward::to_leader(
            &st,
            axum::http::Method::GET,
            path,
            &headers,
            None,
            axum::body::Bytes::new(),
        )
        .await);
    }
    Ok(Json(st.svc.instance_logs(&p, &id, q.offset, q.limit).await?).into_response())
}

// ---- SSH keys ---------------------------------------------------------------------------

/// Which tenant's SSH keys.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SshKeyParams {
    /// The tenant (id or name; operators only, tenants always see their own).
    tenant: Option<String>,
}

/// List SSH public keys, by name.
#[utoipa::path(get, path = "/v1/ssh-keys", tag = "instances", security(("bearer" = [])),
    params(SshKeyParams), responses((status = 200, body = Vec<SshKey>)))]
async fn ssh_key_list(
    State(st): State<AppState>,
    Auth(p): Auth,
    q: Q<SshKeyParams>,
) -> ApiResult<Json<Vec<SshKey>>> {
    allow(&p, Action::ReadInstances)?;
    let q = q.get()?;
    Ok(Json(st.svc.ssh_key_list(&p, q.tenant.as_deref()).await?))
}

/// Add an SSH public key; instances launched with its name in `ssh_key_names` accept it.
#[utoipa::path(post, path = "/v1/ssh-keys", tag = "instances", security(("bearer" = [])),
    request_body = CreateSshKey, params(IdempotencyKey),
    responses((status = 201, body = SshKey), (status = 400, body = Problem),
              (status = 409, body = Problem)))]
async fn ssh_key_create(
    State(st): State<AppState>,
    Auth(p): Auth,
    idem: Idem,
) -> ApiResult<Response> {
    allow(&p, Action::WriteInstances)?;
    let req: CreateSshKey = idem.json()?;
    Ok(created(st.svc.ssh_key_create(&p, req, idem.key()?).await?))
}

/// Delete an SSH key by id or name; instances already launched keep the keys they were
/// given.
#[utoipa::path(delete, path = "/v1/ssh-keys/{key}", tag = "instances",
    security(("bearer" = [])),
    params(("key" = String, Path, description = "Key id or name"), SshKeyParams,
           IdempotencyKey),
    responses((status = 200, body = SshKey), (status = 404, body = Problem)))]
async fn ssh_key_delete(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(key): Path<String>,
    q: Q<SshKeyParams>,
    idem: Idem,
) -> ApiResult<Response> {
    allow(&p, Action::WriteInstances)?;
    let q = q.get()?;
    Ok(ok(st
        .svc
        .ssh_key_delete(&p, &key, q.tenant.as_deref(), idem.key()?)
        .await?))
}

// ---- webhooks ---------------------------------------------------------------------------

/// Whose webhooks.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WebhookParams {
    /// Only this tenant's (id or name; operators only, tenants always see their own).
    tenant: Option<String>,
}

/// List webhooks: a tenant's own; for operator keys every one (operator webhooks have no
/// `tenant_id`). Secrets are never listed.
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", security(("bearer" = [])),
    params(WebhookParams), responses((status = 200, body = List<Webhook>)))]
async fn webhook_list(
    State(st): State<AppState>,
    Auth(p): Auth,
    q: Q<WebhookParams>,
) -> ApiResult<Json<List<Webhook>>> {
    allow(&p, Action::ReadWebhooks)?;
    let q = q.get()?;
    Ok(Json(List {
        items: st.svc.webhook_list(&p, q.tenant.as_deref()).await?,
    }))
}

/// Subscribe a URL to events. Deliveries are POSTed as JSON, signed with the secret in the
/// response (shown this once), retried with backoff for 24 hours, in order.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", security(("bearer" = [])),
    request_body = CreateWebhook, params(IdempotencyKey),
    responses((status = 201, body = WebhookCreated), (status = 400, body = Problem),
              (status = 404, body = Problem)))]
async fn webhook_create(
    State(st): State<AppState>,
    Auth(p): Auth,
    idem: Idem,
) -> ApiResult<Response> {
    allow(&p, Action::WriteWebhooks)?;
    let req: CreateWebhook = idem.json()?;
    let mut resp = created(st.svc.webhook_create(&p, req, idem.key()?).await?);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// Read a webhook.
#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "Webhook id")),
    responses((status = 200, body = Webhook), (status = 404, body = Problem)))]
async fn webhook_get(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Webhook>> {
    Ok(Json(st.svc.webhook_get(&p, &id).await?))
}

/// Delete a webhook and its delivery log; nothing more is sent to it.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "Webhook id"), IdempotencyKey),
    responses((status = 200, body = Webhook), (status = 404, body = Problem)))]
async fn webhook_delete(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    idem: Idem,
) -> ApiResult<Response> {
    allow(&p, Action::WriteWebhooks)?;
    Ok(ok(st.svc.webhook_delete(&p, &id, idem.key()?).await?))
}

/// Queue a `webhook.test` event for this webhook alone (after what it has pending); the
/// answer is the event. Its delivery shows in the webhook's delivery log.
#[utoipa::path(post, path = "/v1/webhooks/{id}/test", tag = "webhooks",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Webhook id"), IdempotencyKey),
    responses((status = 202, body = Event), (status = 404, body = Problem)))]
async fn webhook_test(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    idem: Idem,
) -> ApiResult<Response> {
    allow(&p, Action::WriteWebhooks)?;
    Ok(answer(
        StatusCode::ACCEPTED,
        st.svc.webhook_test(&p, &id, idem.key()?).await?,
    ))
}

/// Filters and paging for a delivery log.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeliveryParams {
    /// Only deliveries in this state.
    state: Option<WebhookDeliveryState>,
    /// Cursor from a previous page's `next_cursor`.
    cursor: Option<String>,
    /// Items per page, 1-1000 (default 100).
    limit: Option<u32>,
}

/// A webhook's delivery log, newest event first: each event's state, attempts, the last
/// status or error, and when it is retried. Ended deliveries are kept 7 days.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Webhook id"), DeliveryParams),
    responses((status = 200, body = Paged<WebhookDelivery>), (status = 404, body = Problem)))]
async fn webhook_deliveries(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    q: Q<DeliveryParams>,
) -> ApiResult<Json<Paged<WebhookDelivery>>> {
    allow(&p, Action::ReadWebhooks)?;
    let q = q.get()?;
    let page = st
        .svc
        .webhook_deliveries(&p, &id, q.state, q.cursor.as_deref(), q.limit)
        .await?;
    Ok(Json(page.into()))
}

/// Filters for quotas.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct QuotaParams {
    /// Only this tenant's quotas (operators; tenants see their own).
    tenant: Option<String>,
}

/// List quotas.
#[utoipa::path(get, path = "/v1/quotas", tag = "instances", security(("bearer" = [])),
    params(QuotaParams), responses((status = 200, body = List<Quota>)))]
async fn quota_list(
    State(st): State<AppState>,
    Auth(p): Auth,
    q: Q<QuotaParams>,
) -> ApiResult<Json<List<Quota>>> {
    allow(&p, Action::ReadQuotas)?;
    let q = q.get()?;
    Ok(Json(List {
        items: st.svc.quota_list(&p, q.tenant.as_deref()).await?,
    }))
}

/// Set (or with `max_gpus: null` remove) a tenant's quota for a GPU model and class
/// (operator-admin). Returns the tenant's quotas.
#[utoipa::path(put, path = "/v1/quotas", tag = "instances", security(("bearer" = [])),
    request_body = SetQuota, params(IdempotencyKey),
    responses((status = 200, body = List<Quota>)))]
async fn quota_set(State(st): State<AppState>, Auth(p): Auth, idem: Idem) -> ApiResult<Response> {
    allow(&p, Action::WriteQuotas)?;
    let req: SetQuota = idem.json()?;
    let c = st.svc.quota_set(&p, req, idem.key()?).await?;
    Ok(ok(Created {
        value: List { items: c.value },
        replayed: c.replayed,
    }))
}

// ---- contracts and capacity -------------------------------------------------------------

/// Ask whether reserved capacity fits: the answer says if it fits, the earliest start at
/// which it would, the most GPUs that fit in the window, and the price for the term.
#[utoipa::path(post, path = "/v1/quotes", tag = "contracts", security(("bearer" = [])),
    request_body = ContractTerms, params(IdempotencyKey),
    responses((status = 200, body = Quote), (status = 400, body = Problem)))]
async fn quote_create(
    State(st): State<AppState>,
    Auth(p): Auth,
    idem: Idem,
) -> ApiResult<Response> {
    allow(&p, Action::ReadContracts)?;
    let req: ContractTerms = idem.json()?;
    // A quote stores nothing; with a key, a retry gets the first quote back.
    let svc = &st.svc;
    Ok(ok(svc
        .idempotent(&p, idem.key()?, 200, svc.quote(&p, req))
        .await?))
}

/// Sign a contract: the terms are re-checked atomically against the capacity calendar, so
/// two signs racing for the last capacity cannot both win (`insufficient_capacity`).
#[utoipa::path(post, path = "/v1/contracts", tag = "contracts", security(("bearer" = [])),
    request_body = ContractTerms, params(IdempotencyKey),
    responses((status = 201, body = Contract), (status = 409, body = Problem)))]
async fn contract_sign(
    State(st): State<AppState>,
    Auth(p): Auth,
    idem: Idem,
) -> ApiResult<Response> {
    allow(&p, Action::WriteContracts)?;
    let req: ContractTerms = idem.json()?;
    Ok(created(st.svc.contract_sign(&p, req, idem.key()?).await?))
}

/// Paging for contracts.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ContractParams {
    /// Only this tenant's (operators; tenants see their own).
    tenant: Option<String>,
    /// Cursor from a previous page's `next_cursor`.
    cursor: Option<String>,
    /// Items per page, 1-1000 (default 100).
    limit: Option<u32>,
}

/// List contracts, newest first.
#[utoipa::path(get, path = "/v1/contracts", tag = "contracts", security(("bearer" = [])),
    params(ContractParams), responses((status = 200, body = Paged<Contract>)))]
async fn contract_list(
    State(st): State<AppState>,
    Auth(p): Auth,
    q: Q<ContractParams>,
) -> ApiResult<Json<Paged<Contract>>> {
    allow(&p, Action::ReadContracts)?;
    let q = q.get()?;
    let page = st
        .svc
        .contract_list(&p, q.tenant.as_deref(), q.cursor.as_deref(), q.limit)
        .await?;
    Ok(Json(page.into()))
}

/// Read a contract.
#[utoipa::path(get, path = "/v1/contracts/{id}", tag = "contracts", security(("bearer" = [])),
    params(("id" = String, Path, description = "Contract id")),
    responses((status = 200, body = Contract), (status = 404, body = Problem)))]
async fn contract_get(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Contract>> {
    Ok(Json(st.svc.contract_get(&p, &id).await?))
}

/// Cancel a contract: its promise leaves the calendar, its pool is released and its
/// reserved instances are terminated.
#[utoipa::path(post, path = "/v1/contracts/{id}/cancel", tag = "contracts",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Contract id"), IdempotencyKey),
    responses((status = 200, body = Contract), (status = 404, body = Problem)))]
async fn contract_cancel(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    idem: Idem,
) -> ApiResult<Response> {
    allow(&p, Action::WriteContracts)?;
    let svc = &st.svc;
    Ok(ok(svc
        .idempotent(&p, idem.key()?, 200, svc.contract_cancel(&p, &id))
        .await?))
}

/// Amend a contract: more GPUs and/or a later end (a renewal), re-checked against the
/// capacity calendar like a new contract. The rate stays.
#[utoipa::path(post, path = "/v1/contracts/{id}/amend", tag = "contracts",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Contract id"), IdempotencyKey),
    request_body = neocloud_service::AmendContract,
    responses((status = 200, body = Contract), (status = 409, body = Problem)))]
async fn contract_amend(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    idem: Idem,
) -> ApiResult<Response> {
    allow(&p, Action::WriteContracts)?;
    // Someone else's contract is not found, whatever the body says.
    st.svc.contract_get(&p, &id).await?;
    let req: neocloud_service::AmendContract = idem.json()?;
    // An amendment names the new totals, not increments: applied twice it is applied once.
    let svc = &st.svc;
    Ok(ok(svc
        .idempotent(&p, idem.key()?, 200, svc.contract_amend(&p, &id, req))
        .await?))
}

/// Filters for the capacity report.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CapacityParams {
    /// Only this site (id or name).
    site: Option<String>,
    /// Only this GPU model.
    gpu_model: Option<String>,
    /// Days of committed capacity to show (default 1095, at most 7300).
    horizon_days: Option<u32>,
}

/// Capacity per site and GPU model: sellable vs committed over time, allocation by class,
/// fragmentation (stranded free GPUs, largest gang per level) and power.
#[utoipa::path(get, path = "/v1/capacity", tag = "contracts", security(("bearer" = [])),
    params(CapacityParams), responses((status = 200, body = List<CapacityLine>)))]
async fn capacity(
    State(st): State<AppState>,
    Auth(p): Auth,
    q: Q<CapacityParams>,
) -> ApiResult<Json<List<CapacityLine>>> {
    allow(&p, Action::ReadCapacity)?;
    let q = q.get()?;
    let items = st
        .svc
        .capacity(
            &p,
            q.site.as_deref(),
            q.gpu_model.as_deref(),
            q.horizon_days,
        )
        .await?;
    Ok(Json(List { items }))
}

// ---- prices and usage -------------------------------------------------------------------

/// Filters for the price book.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PriceParams {
    /// Only this GPU model.
    gpu_model: Option<String>,
}

/// The price book: every entry with the time it takes effect (any key may read it).
#[utoipa::path(get, path = "/v1/prices", tag = "billing", security(("bearer" = [])),
    params(PriceParams), responses((status = 200, body = List<Price>)))]
async fn price_list(
    State(st): State<AppState>,
    Auth(p): Auth,
    q: Q<PriceParams>,
) -> ApiResult<Json<List<Price>>> {
    allow(&p, Action::ReadCatalog)?;
    let q = q.get()?;
    Ok(Json(List {
        items: st.svc.price_list(&p, q.gpu_model.as_deref()).await?,
    }))
}

/// Add a price (operator-admin), effective now or later — never in the past, so a change
/// never alters a past interval or a signed contract's rate.
#[utoipa::path(post, path = "/v1/prices", tag = "billing", security(("bearer" = [])),
    request_body = SetPrice, params(IdempotencyKey),
    responses((status = 201, body = Price), (status = 400, body = Problem),
              (status = 409, body = Problem)))]
async fn price_set(State(st): State<AppState>, Auth(p): Auth, idem: Idem) -> ApiResult<Response> {
    allow(&p, Action::WriteCatalog)?;
    let req: SetPrice = idem.json()?;
    Ok(created(st.svc.price_set(&p, req, idem.key()?).await?))
}

/// Filters, paging and format for the usage ledger.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UsageParams {
    /// Only this tenant's (operators; tenants see their own).
    tenant: Option<String>,
    /// Only this month, `YYYY-MM`.
    month: Option<String>,
    /// Only this instance's.
    instance: Option<InstanceId>,
    /// Only this class.
    class: Option<Class>,
    /// Cursor from a previous page's `next_cursor`.
    cursor: Option<String>,
    /// Items per page, 1-1000 (default 100).
    limit: Option<u32>,
    /// `json` (default) or `csv`.
    format: Option<String>,
}

/// The usage ledger: metered intervals, to the second, with rate and amount.
#[utoipa::path(get, path = "/v1/usage", tag = "billing", security(("bearer" = [])),
    params(UsageParams),
    responses((status = 200, body = Paged<UsageRecord>,
               description = "JSON, or CSV with `format=csv`")))]
async fn usage_list(
    State(st): State<AppState>,
    Auth(p): Auth,
    q: Q<UsageParams>,
) -> ApiResult<Response> {
    allow(&p, Action::ReadInstances)?;
    let q = q.get()?;
    if let Some(m) = &q.month {
        let ok = m.len() == 7
            && m.as_bytes()[4] == b'-'
            && m[..4].bytes().all(|b| b.is_ascii_digit())
            && matches!(m[5..].parse::<u8>(), Ok(1..=12));
        if !ok {
            return Err(ApiError::invalid(format!("month '{m}' is not YYYY-MM")));
        }
    }
    let filter = neocloud_service::UsageFilter {
        tenant_id: None,
        month: q.month.clone(),
        instance_id: q.instance,
        class: q.class,
    };
    let page = st
        .svc
        .usage_list(
            &p,
            q.tenant.as_deref(),
            filter,
            q.cursor.as_deref(),
            q.limit,
        )
        .await?;
    match q.format.as_deref() {
        None | Some("json") => Ok(Json(Paged::from(page)).into_response()),
        Some("csv") => {
            // Names beside the ids, for people reading the file.
            let tenants: std::collections::HashMap<_, String> = st
                .svc
                .tenant_list(&p, None, Some(1000))
                .await
                .map(|l| l.items.into_iter().map(|t| (t.id, t.name)).collect())
                .unwrap_or_default();
            let sites: std::collections::HashMap<_, String> = st
                .svc
                .site_list(&p)
                .await
                .map(|l| l.into_iter().map(|s| (s.id, s.name)).collect())
                .unwrap_or_default();
            let mut out = String::from(
                "instance_id,tenant_id,tenant,class,gpu_model,site_id,site,contract_id,gpus,gpu_milli,month,start_at,end_at,gpu_seconds,rate,amount\n",
            );
            for u in &page.items {
                out.push_str(&format!(
                    "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
                    u.instance_id,
                    u.tenant_id,
                    tenants.get(&u.tenant_id).map_or("", String::as_str),
                    u.class,
                    u.gpu_model,
                    u.site_id,
                    sites.get(&u.site_id).map_or("", String::as_str),
                    u.contract_id.map(|c| c.to_string()).unwrap_or_default(),
                    u.gpus,
                    // A share or MIG instance's thousandths of a GPU; empty for whole GPUs.
                    u.gpu_milli.map(|m| m.to_string()).unwrap_or_default(),
                    u.month,
                    u.start_at,
                    u.end_at,
                    u.gpu_seconds,
                    u.rate,
                    u.amount
                ));
            }
            let mut resp =
                ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], out).into_response();
            if let Some(c) = page.next_cursor
                && let Ok(v) = HeaderValue::from_str(&c)
            {
                resp.headers_mut().insert("x-next-cursor", v);
            }
            Ok(resp)
        }
        Some(other) => Err(ApiError::invalid(format!(
            "format '{other}' is not json or csv"
        ))),
    }
}

// ---- invoices -----------------------------------------------------------------------------

/// Filters for invoices.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct InvoiceParams {
    /// Only this tenant's (operators; tenants see their own).
    tenant: Option<String>,
}

/// List invoices, newest month first.
#[utoipa::path(get, path = "/v1/invoices", tag = "billing", security(("bearer" = [])),
    params(InvoiceParams), responses((status = 200, body = List<neocloud_types::Invoice>)))]
async fn invoice_list(
    State(st): State<AppState>,
    Auth(p): Auth,
    q: Q<InvoiceParams>,
) -> ApiResult<Json<List<neocloud_types::Invoice>>> {
    allow(&p, Action::ReadInvoices)?;
    let q = q.get()?;
    Ok(Json(List {
        items: st.svc.invoice_list(&p, q.tenant.as_deref()).await?,
    }))
}

/// Generate (or regenerate) a tenant's draft invoice for a month (operator-admin). A month
/// that is over is closed first: running instances are metered up to its end. A finalized
/// invoice is returned unchanged.
#[utoipa::path(post, path = "/v1/invoices", tag = "billing", security(("bearer" = [])),
    request_body = neocloud_service::GenerateInvoice, params(IdempotencyKey),
    responses((status = 200, body = neocloud_types::Invoice), (status = 400, body = Problem)))]
async fn invoice_generate(
    State(st): State<AppState>,
    Auth(p): Auth,
    idem: Idem,
) -> ApiResult<Response> {
    allow(&p, Action::WriteInvoices)?;
    let req: neocloud_service::GenerateInvoice = idem.json()?;
    Ok(ok(st
        .svc
        .invoice_generate(&p, &req.tenant_id, &req.month, idem.key()?)
        .await?))
}

/// Read an invoice.
#[utoipa::path(get, path = "/v1/invoices/{id}", tag = "billing", security(("bearer" = [])),
    params(("id" = String, Path, description = "Invoice id")),
    responses((status = 200, body = neocloud_types::Invoice), (status = 404, body = Problem)))]
async fn invoice_get(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<neocloud_types::Invoice>> {
    Ok(Json(st.svc.invoice_get(&p, &id).await?))
}

/// Finalize a draft invoice of a month that is over; it never changes again.
#[utoipa::path(post, path = "/v1/invoices/{id}/finalize", tag = "billing",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Invoice id"), IdempotencyKey),
    responses((status = 200, body = neocloud_types::Invoice), (status = 400, body = Problem)))]
async fn invoice_finalize(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    idem: Idem,
) -> ApiResult<Response> {
    allow(&p, Action::WriteInvoices)?;
    Ok(ok(st.svc.invoice_finalize(&p, &id, idem.key()?).await?))
}

/// Record downtime of a contract's GPUs (operator-admin); SLA credits come from it.
#[utoipa::path(post, path = "/v1/contracts/{id}/downtime", tag = "billing",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Contract id"), IdempotencyKey),
    request_body = neocloud_service::AddDowntime,
    responses((status = 204, description = "Recorded"), (status = 400, body = Problem)))]
async fn downtime_add(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    idem: Idem,
) -> ApiResult<Response> {
    allow(&p, Action::WriteInvoices)?;
    let req: neocloud_service::AddDowntime = idem.json()?;
    let c = st.svc.downtime_add(&p, &id, req, idem.key()?).await?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    mark_replayed(&mut resp, c.replayed);
    Ok(resp)
}

// ---- reports ------------------------------------------------------------------------------

/// The contracted backlog: remaining committed value of signed and active contracts, in
/// total and by calendar year.
#[utoipa::path(get, path = "/v1/reports/backlog", tag = "billing", security(("bearer" = [])),
    responses((status = 200, body = neocloud_service::BacklogReport)))]
async fn report_backlog(
    State(st): State<AppState>,
    Auth(p): Auth,
) -> ApiResult<Json<neocloud_service::BacklogReport>> {
    Ok(Json(st.svc.report_backlog(&p).await?))
}

/// Months for a report.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RevenueParams {
    /// First month, `YYYY-MM`.
    from: String,
    /// Last month, `YYYY-MM` (inclusive).
    to: String,
    /// `json` (default) or `csv`.
    format: Option<String>,
}

/// Revenue by month × tenant × class × site: commitments (take-or-pay) and metered
/// on-demand and spot usage.
#[utoipa::path(get, path = "/v1/reports/revenue", tag = "billing", security(("bearer" = [])),
    params(RevenueParams), responses((status = 200, body = List<neocloud_service::RevenueRow>,
        description = "JSON, or CSV with `format=csv`")))]
async fn report_revenue(
    State(st): State<AppState>,
    Auth(p): Auth,
    q: Q<RevenueParams>,
) -> ApiResult<Response> {
    allow(&p, Action::ReadCapacity)?;
    let q = q.get()?;
    report_response(
        st.svc.report_revenue(&p, &q.from, &q.to).await?,
        q.format.as_deref(),
    )
}

/// A spot price and the time it took effect.
#[derive(Serialize, ToSchema)]
pub struct SpotPrice {
    /// In force from this time until the next.
    pub effective_from: neocloud_types::Timestamp,
    /// US dollars per GPU-hour.
    pub price_per_gpu_hour: neocloud_types::Money,
}

/// The pool to read spot prices of.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SpotParams {
    /// Site id or name.
    site: String,
    /// GPU model.
    gpu_model: String,
}

/// The spot price series of a pool (site and GPU model), recomputed from its utilization
/// once a minute; any key may read it.
#[utoipa::path(get, path = "/v1/spot-prices", tag = "billing", security(("bearer" = [])),
    params(SpotParams), responses((status = 200, body = List<SpotPrice>)))]
async fn spot_price_list(
    State(st): State<AppState>,
    Auth(p): Auth,
    q: Q<SpotParams>,
) -> ApiResult<Json<List<SpotPrice>>> {
    allow(&p, Action::ReadCatalog)?;
    let q = q.get()?;
    let items = st
        .svc
        .spot_price_list(&p, &q.site, &q.gpu_model)
        .await?
        .into_iter()
        .map(|(effective_from, price_per_gpu_hour)| SpotPrice {
            effective_from,
            price_per_gpu_hour,
        })
        .collect();
    Ok(Json(List { items }))
}

/// A month for a report.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct MonthParams {
    /// Month, `YYYY-MM`.
    month: String,
    /// `json` (default) or `csv`.
    format: Option<String>,
}

/// Utilization by site, GPU model and class for a month: metered GPU-seconds over sellable
/// GPU-seconds.
#[utoipa::path(get, path = "/v1/reports/utilization", tag = "billing", security(("bearer" = [])),
    params(MonthParams), responses((status = 200, body = List<neocloud_service::UtilizationRow>,
        description = "JSON, or CSV with `format=csv`")))]
async fn report_utilization(
    State(st): State<AppState>,
    Auth(p): Auth,
    q: Q<MonthParams>,
) -> ApiResult<Response> {
    allow(&p, Action::ReadCapacity)?;
    let q = q.get()?;
    report_response(
        st.svc.report_utilization(&p, &q.month).await?,
        q.format.as_deref(),
    )
}

/// Power by site now: allocated facility watts vs budget and cap, energy cost per hour.
#[utoipa::path(get, path = "/v1/reports/power", tag = "billing", security(("bearer" = [])),
    responses((status = 200, body = List<neocloud_service::PowerRow>)))]
async fn report_power(
    State(st): State<AppState>,
    Auth(p): Auth,
) -> ApiResult<Json<List<neocloud_service::PowerRow>>> {
    Ok(Json(List {
        items: st.svc.report_power(&p).await?,
    }))
}

/// Gross margin per site for a month: revenue (as invoiced) − energy cost, with the energy
/// used and the internal share of compute.
#[utoipa::path(get, path = "/v1/reports/margin", tag = "billing", security(("bearer" = [])),
    params(MonthParams), responses((status = 200, body = List<neocloud_service::MarginRow>,
        description = "JSON, or CSV with `format=csv`")))]
async fn report_margin(
    State(st): State<AppState>,
    Auth(p): Auth,
    q: Q<MonthParams>,
) -> ApiResult<Response> {
    allow(&p, Action::ReadCapacity)?;
    let q = q.get()?;
    report_response(
        st.svc.report_margin(&p, &q.month).await?,
        q.format.as_deref(),
    )
}

/// A report as `{"items": […]}` JSON or as CSV (one column per field, header first).
fn report_response<T: Serialize>(items: Vec<T>, format: Option<&str>) -> ApiResult<Response> {
    match format {
        None | Some("json") => Ok(Json(List { items }).into_response()),
        Some("csv") => {
            let mut out = String::new();
            for (i, item) in items.iter().enumerate() {
                let v = serde_json::to_value(item)
                    .map_err(|e| ApiError(neocloud_service::Error::internal(e.to_string())))?;
                let Some(obj) = v.as_object() else { continue };
                if i == 0 {
                    out.push_str(&obj.keys().cloned().collect::<Vec<_>>().join(","));
                    out.push('\n');
                }
                let cells: Vec<String> = obj
                    .values()
                    .map(|v| match v {
                        serde_json::Value::String(s) => s.replace(',', ";"),
                        serde_json::Value::Null => String::new(),
                        other => other.to_string(),
                    })
                    .collect();
                out.push_str(&cells.join(","));
                out.push('\n');
            }
            Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], out).into_response())
        }
        Some(other) => Err(ApiError::invalid(format!(
            "format '{other}' is not json or csv"
        ))),
    }
}
