//! Planned maintenance windows (operator).

use axum::Json;
use axum::extract::{Path, State};
use axum::response::Response;
use neocloud_service::{Action, ScheduleMaintenance};
use neocloud_types::{MaintenanceState, MaintenanceWindow};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::Problem;
use crate::extract::{Auth, Idem, Q, allow};
use crate::routes::{ApiResult, IdempotencyKey, List, created, ok};

pub(crate) fn register(r: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    r.routes(routes!(maintenance_list, maintenance_schedule))
        .routes(routes!(maintenance_get))
        .routes(routes!(maintenance_cancel))
}

/// Announce a maintenance window over nodes or a block (operator-admin). The nodes are
/// cordoned at once; gangs that can move off do; other work there gets a notice
/// (`preempting`) that runs out when the window begins; each tenant concerned gets a
/// `maintenance.scheduled` event. At `start_at` the nodes go to `maintenance`, at `end_at`
/// to burn-in (nodes with an agent) or back to service.
#[utoipa::path(post, path = "/v1/maintenance", tag = "health", security(("bearer" = [])),
    request_body = ScheduleMaintenance, params(IdempotencyKey),
    responses((status = 201, body = MaintenanceWindow), (status = 400, body = Problem),
        (status = 409, body = Problem)))]
async fn maintenance_schedule(
    State(st): State<AppState>,
    Auth(p): Auth,
    idem: Idem,
) -> ApiResult<Response> {
    allow(&p, Action::WriteFleet)?;
    let req: ScheduleMaintenance = idem.json()?;
    Ok(created(
        st.svc.maintenance_schedule(&p, idem.key()?, req).await?,
    ))
}

/// Filters for maintenance windows.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceParams {
    /// Only windows in this state.
    state: Option<MaintenanceState>,
}

/// List maintenance windows, latest start first (operator).
#[utoipa::path(get, path = "/v1/maintenance", tag = "health", security(("bearer" = [])),
    params(MaintenanceParams), responses((status = 200, body = List<MaintenanceWindow>)))]
async fn maintenance_list(
    State(st): State<AppState>,
    Auth(p): Auth,
    q: Q<MaintenanceParams>,
) -> ApiResult<Json<List<MaintenanceWindow>>> {
    allow(&p, Action::ReadFleet)?;
    let q = q.get()?;
    Ok(Json(List {
        items: st.svc.maintenance_list(&p, q.state).await?,
    }))
}

/// One maintenance window (operator).
#[utoipa::path(get, path = "/v1/maintenance/{id}", tag = "health", security(("bearer" = [])),
    params(("id" = String, Path, description = "Maintenance window id")),
    responses((status = 200, body = MaintenanceWindow), (status = 404, body = Problem)))]
async fn maintenance_get(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<MaintenanceWindow>> {
    allow(&p, Action::ReadFleet)?;
    Ok(Json(st.svc.maintenance_get(&p, &id).await?))
}

/// Call off a window that has not begun (its nodes are uncordoned, its notices withdrawn),
/// or end one in progress early (its nodes go to burn-in or back to service now).
#[utoipa::path(post, path = "/v1/maintenance/{id}/cancel", tag = "health",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Maintenance window id"), IdempotencyKey),
    responses((status = 200, body = MaintenanceWindow), (status = 404, body = Problem),
        (status = 409, body = Problem)))]
async fn maintenance_cancel(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    idem: Idem,
) -> ApiResult<Response> {
    allow(&p, Action::WriteFleet)?;
    let svc = &st.svc;
    Ok(ok(svc
        .idempotent(&p, idem.key()?, 200, svc.maintenance_cancel(&p, &id))
        .await?))
}
