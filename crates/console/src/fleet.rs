//! Operator pages about the fleet: the overview of every site, a site's topology map, a
//! node with its GPUs and health history, and a GPU's history across nodes.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, PreEscaped, html};
use neocloud_service::{Action, NodeOperation, Service, auth};
use neocloud_types::{Class, GpuHealth, Instance, NodeState, Shape};

use crate::layout::{Page, ago, num, pct, ts};
use crate::map::{ColorBy, Layout, STATE_KEYS, state_key, tenant_order};
use crate::svg::{Series, meter, stacked_bars};
use crate::{Console, PageError, Session, url_encode};

const CLASSES: [(Class, &str); 4] = [
    (Class::Reserved, "reserved"),
    (Class::Internal, "internal"),
    (Class::OnDemand, "on-demand"),
    (Class::Spot, "spot"),
];

/// The operator's home page: every site with its GPUs by state and class and its power.
pub async fn overview_response(st: &Console, session: Session) -> Result<Response, PageError> {
    let p = &session.principal;
    let sites = st.svc.site_list(p).await?;
    let lines = st.svc.capacity(p, None, None, Some(1)).await?;
    let states = st.svc.gpu_state_counts(p).await?;
    let mut by_state: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for s in &states {
        *by_state
            .entry((s.site.as_str(), s.state.as_str()))
            .or_default() += s.gpus;
    }
    // Per site: allocated GPUs by class, power.
    let mut alloc: BTreeMap<&str, BTreeMap<Class, u64>> = BTreeMap::new();
    let mut power: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    let mut free: BTreeMap<&str, u64> = BTreeMap::new();
    for l in &lines {
        let e = alloc.entry(l.site.as_str()).or_default();
        for c in &l.allocated {
            *e.entry(c.class).or_default() += c.gpus;
        }
        power.insert(
            l.site.as_str(),
            (l.site_power_watts, l.site_power_limit_watts),
        );
        *free.entry(l.site.as_str()).or_default() += l.free_gpus;
    }
    // Sold but idle: GPUs contracts promise now beyond what reserved work holds; the
    // rest of the free GPUs are unsold.
    let mut sold_idle: BTreeMap<&str, u64> = BTreeMap::new();
    for l in &lines {
        let reserved: u64 = l
            .allocated
            .iter()
            .filter(|c| c.class == Class::Reserved)
            .map(|c| c.gpus)
            .sum();
        *sold_idle.entry(l.site.as_str()).or_default() += u64::try_from(l.committed_gpus_now)
            .unwrap_or(0)
            .saturating_sub(reserved);
    }
    // Out of service or needing attention, per site and model: every state but these.
    let in_service = |st: &str| matches!(st, "available" | "allocated");
    let mut unhealthy: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for s in &states {
        if !in_service(&s.state) {
            *unhealthy
                .entry((s.site.as_str(), s.gpu_model.as_str()))
                .or_default() += s.gpus;
        }
    }
    let problems = st.svc.problem_counts(p).await?;
    let categories: Vec<String> = sites.iter().map(|s| s.name.clone()).collect();
    let mut series: Vec<Series> = CLASSES
        .iter()
        .map(|(c, name)| Series {
            name: (*name).to_string(),
            class: format!("cls-{name}"),
            values: sites
                .iter()
                .map(|s| {
                    alloc
                        .get(s.name.as_str())
                        .and_then(|m| m.get(c))
                        .copied()
                        .unwrap_or(0) as f64
                })
                .collect(),
        })
        .collect();
    let idle = |s: &str| sold_idle.get(s).copied().unwrap_or(0);
    series.push(Series {
        name: "sold, idle".into(),
        class: "cls-sold".into(),
        values: sites
            .iter()
            .map(|s| idle(&s.name).min(free.get(s.name.as_str()).copied().unwrap_or(0)) as f64)
            .collect(),
    });
    series.push(Series {
        name: "unsold, free".into(),
        class: "cls-free".into(),
        values: sites
            .iter()
            .map(|s| {
                free.get(s.name.as_str())
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(idle(&s.name)) as f64
            })
            .collect(),
    });
    let total_gpus: i64 = sites.iter().map(|s| s.gpu_count).sum();
    let body = html! {
        p.lede { (sites.len()) " sites, " (num(total_gpus)) " GPUs." }
        (stacked_bars("GPUs per site: allocated by class, sold but idle, unsold", &categories, &series, ""))
        h2 { "Sold, sellable and allocated" }
        table.grid #business {
            thead { tr {
                th { "site" } th { "GPU model" } th.num { "GPUs" }
                th.num title="All GPUs less the spare buffer: what contracts may promise" { "sellable" }
                th.num title="What signed contracts promise now" { "sold" } th.num { "sold % of sellable" }
                th.num { "allocated" } th.num { "allocated %" } th.num { "free" }
                th.num title="Whole nodes pinned as spares across the leaf groups / the target" { "spare nodes" }
                th.num title="GPUs on nodes not available or allocated: failed, unreachable, cordoned, draining, maintenance, burn-in, provisioning" { "out of service" }
            } }
            tbody {
                @for l in &lines {
                    @let held: u64 = l.allocated.iter().map(|c| c.gpus).sum();
                    @let out = unhealthy.get(&(l.site.as_str(), l.gpu_model.as_str())).copied().unwrap_or(0);
                    tr {
                        td { a href={ "/sites/" (url_encode(&l.site)) } { (l.site) } }
                        td { (l.gpu_model) }
                        td.num { (num(l.total_gpus)) }
                        td.num { (num(l.sellable_gpus)) }
                        td.num { (num(l.committed_gpus_now)) }
                        td.num { (pct(l.committed_gpus_now as f64, l.sellable_gpus as f64)) }
                        td.num { (num(held as i64)) }
                        td.num { (pct(held as f64, l.total_gpus as f64)) }
                        td.num { (num(l.free_gpus as i64)) }
                        td.num { (num(i64::from(l.spare_nodes))) " / " (num(i64::from(l.spare_nodes_wanted))) }
                        td.num { @if out > 0 { a href={ "/problems?site=" (url_encode(&l.site)) } { (num(out)) } } @else { "0" } }
                    }
                }
            }
        }
        h2 { "Problems" }
        @if problems.is_empty() {
            p.muted #fleet-healthy { "Every node is available or allocated." }
        } @else {
            ul.problems #fleet-problems {
                @for (site, state, n) in &problems {
                    li { a href={ "/problems?site=" (url_encode(site)) "&state=" (state) } {
                        span class={ "dot st-" (state) } {} (site) ": " (num(*n as i64)) " " (state) } }
                }
            }
        }
        div.cards {
            @for s in &sites {
                @let a = alloc.get(s.name.as_str());
                @let held: u64 = a.map(|m| m.values().sum()).unwrap_or(0);
                @let (pw, limit) = power.get(s.name.as_str()).copied().unwrap_or((0, s.power_budget_watts));
                section.card data-site=(s.name) {
                    h2 { a href={ "/sites/" (url_encode(&s.name)) } { (s.name) } }
                    p.muted { (s.region) " · " (s.kind) " · PUE " (format!("{:.2}", f64::from(s.pue_milli) / 1000.0)) " · $" (s.energy_usd_per_mwh) "/MWh" }
                    table.kv {
                        tr { th { "GPUs" } td.num { (num(s.gpu_count)) } }
                        @for m in &s.gpus_by_model {
                            tr { th { (m.gpu_model) } td.num { (num(m.gpus)) } }
                        }
                        tr { th { "Nodes" } td.num { (num(s.node_count)) } }
                        tr { th { "Allocated" } td.num { (num(held as i64)) " (" (pct(held as f64, s.gpu_count as f64)) ")" } }
                        tr { th { "Sold, idle" } td.num { (num(idle(&s.name) as i64)) } }
                    }
                    h3 { "GPUs by node state" }
                    table.kv {
                        @for ((site, state), gpus) in &by_state {
                            @if *site == s.name.as_str() {
                                tr { th { span class={ "dot st-" (state) } {} (state) } td.num { (num(*gpus)) } }
                            }
                        }
                    }
                    h3 { "GPUs by class" }
                    table.kv {
                        @for (c, name) in &CLASSES {
                            tr { th { span class={ "dot cls-" (name) } {} (name) } td.num { (num(a.and_then(|m| m.get(c)).copied().unwrap_or(0) as i64)) } }
                        }
                    }
                    h3 { "Power" }
                    p {
                        (meter("power", pw as f64, limit as f64))
                        br;
                        (format!("{:.1}", pw as f64 / 1e6)) " of " (format!("{:.1}", limit as f64 / 1e6)) " MW allocated (" (pct(pw as f64, limit as f64)) ")"
                    }
                    p { a href={ "/sites/" (url_encode(&s.name)) } { "Topology map →" } }
                }
            }
        }
    };
    Ok(Page::new(&session, "overview", "Fleet").render(body))
}

#[derive(serde::Deserialize)]
pub struct MapQuery {
    #[serde(default)]
    color: Option<String>,
    /// A node name, or part of one, to find.
    #[serde(default)]
    find: Option<String>,
}

fn color_of(q: Option<&str>) -> Result<ColorBy, PageError> {
    match q {
        None | Some("state") => Ok(ColorBy::State),
        Some("tenant") => Ok(ColorBy::Tenant),
        Some(other) => Err(PageError::Invalid(format!(
            "color must be 'state' or 'tenant' (got '{other}')"
        ))),
    }
}

/// A site: capacity per model and the topology map.
pub async fn site(
    State(st): State<Console>,
    session: Session,
    Path(site): Path<String>,
    query: Result<Query<MapQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PageError> {
    let Query(q) = query.map_err(|e| PageError::Invalid(e.body_text()))?;
    let by = color_of(q.color.as_deref())?;
    let p = &session.principal;
    let map = st.svc.site_map(p, &site).await?;
    // Find a node: an exact name, or the only name containing the text, opens the node;
    // several are listed (50 at most); none is said.
    let find = q.find.as_deref().map(str::trim).filter(|f| !f.is_empty());
    let mut found: Vec<&str> = Vec::new();
    if let Some(f) = find {
        if f.len() > 200 {
            return Err(PageError::Invalid("find: at most 200 characters".into()));
        }
        if let Some(c) = map.cells.iter().find(|c| c.name == f) {
            return Ok(Redirect::to(&format!("/nodes/{}", url_encode(&c.name))).into_response());
        }
        found = map
            .cells
            .iter()
            .filter(|c| c.name.contains(f) || c.block_path.contains(f))
            .map(|c| c.name.as_str())
            .take(51)
            .collect();
        if let [only] = found.as_slice() {
            return Ok(Redirect::to(&format!("/nodes/{}", url_encode(only))).into_response());
        }
    }
    let lines = st.svc.capacity(p, Some(&site), None, Some(1)).await?;
    let layout = Layout::of(&map.cells);
    let tenants = tenant_order(&map.cells);
    let names = if by == ColorBy::Tenant {
        crate::sales::tenant_names(&st, &session).await?
    } else {
        BTreeMap::new()
    };
    let svg = crate::map::render(&map.cells, &layout, by, &tenants);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &map.cells {
        *counts.entry(state_key(c)).or_default() += 1;
    }
    let s = &map.site;
    let base = format!("/sites/{}", url_encode(&s.name));
    let body = html! {
        p.muted { (s.region) " · " (num(s.node_count)) " nodes · " (num(s.gpu_count)) " GPUs" }
        table.grid {
            thead { tr { th { "GPU model" } th.num { "GPUs" } th.num { "sellable" } th.num { "committed now" } th.num { "free" } th.num { "stranded free" } th { "largest gang (nodes)" } } }
            tbody {
                @for l in &lines {
                    tr {
                        td { (l.gpu_model) }
                        td.num { (num(l.total_gpus)) }
                        td.num { (num(l.sellable_gpus)) }
                        td.num { (num(l.committed_gpus_now)) }
                        td.num { (num(l.free_gpus as i64)) }
                        td.num { (num(l.stranded_free_gpus as i64)) }
                        td { (l.largest_gang.iter().map(|g| format!("{} {}", g.level, g.nodes)).collect::<Vec<_>>().join(" · ")) }
                    }
                }
            }
        }
        h2 { "Topology" }
        form.filters #find method="get" action=(base) {
            label { "Find a node " input type="search" name="find" value=[find] placeholder="name or block, e.g. leaf07-n12" maxlength="200"; }
            @if by == ColorBy::Tenant { input type="hidden" name="color" value="tenant"; }
            button type="submit" { "Find" }
            " "
            a href="/problems" { "Nodes needing attention →" }
        }
        @if let Some(f) = find {
            @if found.is_empty() {
                p.error role="alert" #find-none { "No node of " (s.name) " matches “" (f) "”." }
            } @else {
                p #find-many { (if found.len() > 50 { "More than 50".to_string() } else { found.len().to_string() }) " nodes match “" (f) "”: "
                    @for n in found.iter().take(50) { a href={ "/nodes/" (url_encode(n)) } { (n) } " " }
                }
            }
        }
        p.toolbar {
            "Colour by: "
            a href={ (base) "?color=state" } class=[(by == ColorBy::State).then_some("active")] #color-state { "state" }
            " · "
            a href={ (base) "?color=tenant" } class=[(by == ColorBy::Tenant).then_some("active")] #color-tenant { "tenant" }
            span.muted { " — one square per node, a row per leaf group or NVLink domain, a panel per pod. Click a node to open it." }
        }
        ul.legend {
            @match by {
                ColorBy::State => {
                    @for (key, label) in STATE_KEYS {
                        @let n = counts.get(key).copied().unwrap_or(0);
                        @if n > 0 { li { span class={ "dot st-" (key) } {} (label) " " (num(n as i64)) } }
                    }
                }
                ColorBy::Tenant => {
                    @for (i, (t, n)) in tenants.iter().enumerate() {
                        li { span class={ "dot t" (i.min(10)) } {} (names.get(t).map_or_else(|| t.to_string(), Clone::clone)) " " (num(*n as i64)) }
                    }
                    li { span.dot.t-none {} "no tenant " (num((map.cells.len() - tenants.iter().map(|t| t.1).sum::<usize>()) as i64)) }
                }
            }
        }
        p.zoom hidden {
            "Zoom: "
            button type="button" #zoom-out { "−" }
            button type="button" #zoom-in { "+" }
            button type="button" #zoom-fit { "fit to width" }
        }
        div.mapwrap data-at={ (base) "/at" } data-color=(if by == ColorBy::Tenant { "tenant" } else { "state" }) {
            (PreEscaped(svg))
        }
    };
    Ok(Page::new(&session, "overview", format!("Site {}", s.name)).render(body))
}

#[derive(serde::Deserialize)]
pub struct AtQuery {
    x: u32,
    y: u32,
}

/// Turns a click on the map into the node drawn there.
pub async fn site_at(
    State(st): State<Console>,
    session: Session,
    Path(site): Path<String>,
    query: Result<Query<AtQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PageError> {
    let Query(q) = query.map_err(|_| {
        PageError::Invalid("x and y must be map coordinates (whole numbers)".into())
    })?;
    let map = st.svc.site_map(&session.principal, &site).await?;
    let layout = Layout::of(&map.cells);
    match layout.locate(q.x, q.y) {
        Some(i) => {
            Ok(Redirect::to(&format!("/nodes/{}", url_encode(&map.cells[i].name))).into_response())
        }
        None => Ok(Redirect::to(&format!("/sites/{}", url_encode(&map.site.name))).into_response()),
    }
}

/// One node: facts, GPUs with live telemetry, health history, and operator actions.
pub async fn node(
    State(st): State<Console>,
    session: Session,
    Path(node): Path<String>,
) -> Result<Response, PageError> {
    let p = &session.principal;
    let n = st.svc.node_get(p, &node).await?;
    let history = st.svc.node_health(p, &n.id.to_string(), Some(100)).await?;
    let work = st.svc.node_instances(p, n.id).await?;
    let names = if work.is_empty() {
        BTreeMap::new()
    } else {
        crate::sales::tenant_names(&st, &session).await?
    };
    let now = st.svc.now();
    let can_change = auth::allowed(p.role, Action::WriteFleet);
    let ops = Service::node_operations(n.state);
    // A GPU that is not healthy reports nothing worth reading (one that fell off the bus
    // last said 35% busy).
    let live = |h: GpuHealth| h == GpuHealth::Healthy;
    let body = html! {
        table.kv {
            tr { th { "State" } td { span class={ "dot st-" (n.state) } {} b #node-state { (n.state) } @if let Some(r) = &n.state_reason { " — " (r) } } }
            tr { th { "Last changed" } td { (ts(n.updated_at)) " (" (ago(now, n.updated_at)) ")" } }
            tr { th { "Site" } td { a href={ "/sites/" (url_encode(&n.site)) } { (n.site) } } }
            tr { th { "Blocks" } td { (n.block_path) } }
            tr { th { "GPUs" } td { (n.gpu_count) " × " (n.gpu_model) } }
            tr { th { "CPU / RAM" } td { (n.cpu_cores) " cores · " (n.ram_gib) " GiB" } }
            tr { th { "Power" } td { (n.idle_watts) " W idle · " (n.peak_watts) " W peak" } }
            tr { th { "Last heartbeat" } td #heartbeat {
                @match n.last_heartbeat_at {
                    Some(t) => { span title=(t.to_string()) { (ago(now, t)) } " (" (ts(t)) ")" }
                    None => { span.muted { "never: no agent has registered for this node" } }
                }
            } }
        }
        @if can_change {
            @if ops.is_empty() {
                p.muted #no-ops { "No operation applies to a " (n.state) " node: it returns with its agent, or fails when the grace period ends." }
            } @else {
                div.actions {
                    @for (op, label) in ops {
                        form method="post" action={ "/nodes/" (url_encode(&n.name)) "/" (op) } data-confirm={ (label) " " (n.name) "?" } {
                            input type="hidden" name="csrf" value=(session.csrf);
                            input type="text" name="reason" placeholder="reason" maxlength="200";
                            button type="submit" id={ "op-" (op) } { (label) }
                        }
                    }
                }
            }
        }
        h2 { "What runs here" }
        @if work.is_empty() {
            p.muted #no-work { "Nothing: no live instance holds part of this node." }
        } @else {
            table.grid #work {
                thead { tr { th { "instance" } th { "tenant" } th { "class" } th { "state" } th { "GPUs here" } th { "slot" } th { "shape" } } }
                tbody {
                    @for i in &work {
                        @let here = i.placement.iter().find(|pl| pl.node_id == n.id);
                        tr {
                            td { a href={ "/instances/" (i.id) } { (i.name.as_deref().unwrap_or("")) @if i.name.is_some() { " " } code { (i.id) } } }
                            td { (names.get(&i.tenant_id).map_or_else(|| i.tenant_id.to_string(), Clone::clone)) }
                            td { (i.class) }
                            td { (i.state) }
                            td { @if let Some(pl) = here { (pl.gpus.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")) } }
                            td { (slot(i, here)) }
                            td { (shape_text(i)) }
                        }
                    }
                }
            }
        }
        h2 { "GPUs" }
        table.grid {
            thead { tr { th { "#" } th { "UUID" } th { "health" } th { "held by" } th { "product" } th.num { "°C" } th.num { "W" } th.num { "util %" } th.num { "ECC corr." } th.num { "ECC uncorr." } th { "flags" } } }
            tbody {
                @for g in n.gpus.iter().flatten() {
                    tr {
                        td { (g.index) }
                        td { @if let Some(u) = &g.uuid { a href={ "/gpus/" (url_encode(u)) } { (u) } } @else { span.muted { "not reported" } } }
                        td { span class={ "dot gpu-" (g.health) } {} (g.health) }
                        td { (holders_of(&work, n.id, g.index)) }
                        td { (g.product.as_deref().unwrap_or("—")) }
                        @if let Some(t) = g.telemetry.as_ref().filter(|_| live(g.health)) {
                            td.num { (t.temperature_c) } td.num { (t.power_watts) } td.num { (t.utilization_pct) }
                            td.num { (t.ecc_corrected) } td.num { (t.ecc_uncorrected) }
                            td { @if t.remap_pending { "remap pending " } @if t.remap_failed { "remap failed " } @if t.thermal_slowdown { "thermal slowdown" } }
                        } @else {
                            td.num { "—" } td.num { "—" } td.num { "—" } td.num { "—" } td.num { "—" }
                            td { @if !live(g.health) { span.muted { "no telemetry while " (g.health) } } }
                        }
                    }
                }
            }
        }
        h2 { "Health history" }
        (health_table(&history))
    };
    Ok(Page::new(&session, "overview", format!("Node {}", n.name)).render(body))
}

/// Which part of a GPU an instance holds on a node: a MIG profile and its first slice, a
/// share of the GPU, or whole GPUs.
fn slot(i: &Instance, here: Option<&neocloud_types::PlacedNode>) -> String {
    match &i.shape {
        Shape::Mig { profile } => match here.and_then(|pl| pl.mig_start) {
            Some(start) => format!("MIG {profile} from slice {start}"),
            None => format!("MIG {profile}"),
        },
        Shape::Share { milli } => format!("{}.{:03} of the GPU", milli / 1000, milli % 1000),
        Shape::Cpu => "CPU only".to_string(),
        _ => "whole GPUs".to_string(),
    }
}

fn shape_text(i: &Instance) -> String {
    match &i.shape {
        Shape::Nodes { count, level } => format!("gang of {count} nodes ({level})"),
        Shape::Gpus { gpus } => format!("{gpus} GPUs"),
        Shape::Share { .. } => "GPU share".to_string(),
        Shape::Mig { .. } => "MIG instance".to_string(),
        Shape::Cpu => "CPU only".to_string(),
    }
}

/// The instances holding GPU `index` of `node`, by id.
fn holders_of(work: &[Instance], node: neocloud_types::NodeId, index: u32) -> Markup {
    html! {
        @for i in work.iter().filter(|i| i.placement.iter().any(|pl| pl.node_id == node && pl.gpus.contains(&index))) {
            a href={ "/instances/" (i.id) } { code { (i.id.to_string().get(..13).unwrap_or("")) "…" } } " "
        }
    }
}

/// Nodes that need an operator: every node not `available`/`allocated`, by site, state and
/// block, with how long each has been so.
pub async fn problems(
    State(st): State<Console>,
    session: Session,
    query: Result<Query<ProblemQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PageError> {
    let Query(q) = query.map_err(|e| PageError::Invalid(e.body_text()))?;
    let state = q
        .state
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<NodeState>()
                .map_err(|_| PageError::Invalid(format!("state: no node state '{s}'")))
        })
        .transpose()?;
    let site = q.site.as_deref().filter(|s| !s.is_empty());
    let p = &session.principal;
    let pr = st.svc.problem_nodes(p, site, state, 500).await?;
    let coverage = st.svc.agent_coverage_of(p).await?;
    let now = st.svc.now();
    let total: u64 = pr.counts.iter().map(|c| c.2).sum();
    let body = html! {
        table.grid #coverage {
            thead { tr { th { "site" } th.num { "nodes expected to heartbeat" } th.num { "heard within two intervals" } th.num { "not heard (silent or no agent)" } } }
            tbody {
                @for (s, expected, heard) in &coverage {
                    tr {
                        td { (s) }
                        td.num { (num(*expected as i64)) }
                        td.num { (num(*heard as i64)) " (" (pct(*heard as f64, *expected as f64)) ")" }
                        td.num { (num((expected - heard) as i64)) }
                    }
                }
            }
        }
        @if total == 0 {
            p.lede #no-problems { "Every node is available or allocated." }
        } @else {
            p.lede { (num(total as i64)) " nodes need attention or are out of service." }
            table.grid #problem-counts {
                thead { tr { th { "site" } th { "state" } th.num { "nodes" } } }
                tbody {
                    @for (s, stt, n) in &pr.counts {
                        tr {
                            td { a href={ "/problems?site=" (url_encode(s)) } { (s) } }
                            td { a href={ "/problems?site=" (url_encode(s)) "&state=" (stt) } { span class={ "dot st-" (stt) } {} (stt) } }
                            td.num { (num(*n as i64)) }
                        }
                    }
                }
            }
            h2 { "Nodes" @if let Some(s) = site { " in " (s) } @if let Some(x) = state { ", " (x) } }
            p.muted { "At most 500 of each site and state, sorted by site, block and name." }
            table.grid #problem-nodes {
                thead { tr { th { "node" } th { "site" } th { "block" } th { "state" } th { "since" } th { "reason" } } }
                tbody {
                    @for n in &pr.nodes {
                        tr {
                            td { a href={ "/nodes/" (url_encode(&n.name)) } { (n.name) } }
                            td { (n.site) }
                            td { (n.block_path) }
                            td { span class={ "dot st-" (n.state) } {} (n.state) }
                            td title=(n.updated_at.to_string()) { (ago(now, n.updated_at)) }
                            td { (n.state_reason.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
    };
    Ok(Page::new(&session, "problems", "Problems").render(body))
}

#[derive(serde::Deserialize)]
pub struct ProblemQuery {
    #[serde(default)]
    site: Option<String>,
    #[serde(default)]
    state: Option<String>,
}

fn health_table(events: &[neocloud_types::HealthEvent]) -> Markup {
    html! {
        @if events.is_empty() {
            p.muted #no-health { "No health events." }
        } @else {
            table.grid #health {
                thead { tr { th { "when" } th { "node" } th { "GPU" } th { "kind" } th { "code" } th { "action" } th { "detail" } } }
                tbody {
                    @for e in events {
                        tr {
                            td { (ts(e.at)) }
                            td { a href={ "/nodes/" (url_encode(&e.node)) } { (e.node) } }
                            td { @if let Some(i) = e.gpu_index { (i) } }
                            td { (e.kind) }
                            td { @if let Some(c) = e.code { (c) } }
                            td { (e.action) }
                            td { (e.detail) }
                        }
                    }
                }
            }
        }
    }
}

#[derive(serde::Deserialize)]
pub struct OpForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: Option<String>,
}

/// Cordon, uncordon, drain or repair-complete a node from its page.
pub async fn node_op(
    State(st): State<Console>,
    session: Session,
    headers: HeaderMap,
    Path((node, op)): Path<(String, String)>,
    form: Result<axum::Form<OpForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, PageError> {
    let axum::Form(f) = form.map_err(|e| PageError::Invalid(e.body_text()))?;
    session.check_form(&headers, &f.csrf)?;
    let p = &session.principal;
    let body = NodeOperation {
        reason: f.reason.filter(|r| !r.trim().is_empty()),
    };
    let n = match op.as_str() {
        "cordon" => st.svc.node_cordon(p, &node, body).await?,
        "uncordon" => st.svc.node_uncordon(p, &node, body).await?,
        "drain" => st.svc.node_drain(p, &node, body).await?,
        "repair-complete" => st.svc.node_repair_complete(p, &node, body).await?,
        other => {
            return Err(PageError::Service(neocloud_service::Error::not_found(
                "node operation",
                other,
            )));
        }
    };
    Ok(Redirect::to(&format!("/nodes/{}", url_encode(&n.name))).into_response())
}

/// A GPU's history by UUID, across the nodes it has been in.
pub async fn gpu(
    State(st): State<Console>,
    session: Session,
    Path(uuid): Path<String>,
) -> Result<Response, PageError> {
    let h = st
        .svc
        .gpu_history(&session.principal, &uuid, Some(200))
        .await?;
    let body = html! {
        table.kv {
            tr { th { "Now in" } td { @if let Some(n) = &h.node { a href={ "/nodes/" (url_encode(n)) } { (n) } @if let Some(i) = h.index { " · GPU " (i) } } @else { "—" } } }
            tr { th { "Health" } td { @if let Some(g) = h.health { (g) } @else { "—" } } }
            tr { th { "Failures" } td #failures { (h.failures) } }
        }
        h2 { "History" }
        (health_table(&h.events))
    };
    Ok(Page::new(&session, "overview", format!("GPU {}", h.uuid)).render(body))
}
