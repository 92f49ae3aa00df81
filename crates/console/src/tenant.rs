//! Pages a tenant works in (operators see every tenant's): instances with the launch form
//! and terminate, usage, invoices and their CSV.

use std::collections::BTreeSet;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use neocloud_service::UsageFilter;
use neocloud_service::{Idempotency, LaunchInstance, auth};
use neocloud_types::{Class, ContractId, GangLevel, InstanceId, InstanceState, Shape};

use crate::layout::{Page, alert, gpu_hours, money, money_exact, num, ts, ts_opt};
use crate::sales::tenant_names;
use crate::{Console, PageError, Session, url_encode};

/// What the launch form posts; every field arrives as text and is checked here or by the
/// service, which validates exactly as it does for the API.
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct LaunchForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    idem: String,
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    class: String,
    #[serde(default)]
    gpu_model: String,
    #[serde(default)]
    gpus: String,
    #[serde(default)]
    nodes: String,
    #[serde(default)]
    gang_level: String,
    #[serde(default)]
    site: String,
    #[serde(default)]
    contract: String,
    #[serde(default)]
    wait_seconds: String,
    /// Thousandths of one GPU, for a share.
    #[serde(default)]
    share: String,
    /// A MIG profile name.
    #[serde(default)]
    mig: String,
    /// An OCI image to run in a container (a delivered instance).
    #[serde(default)]
    image: String,
    /// Names of the tenant's SSH keys, separated by commas or spaces.
    #[serde(default)]
    ssh_keys: String,
}

fn opt(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

fn count(field: &str, s: &str) -> Result<Option<u32>, PageError> {
    match opt(s) {
        None => Ok(None),
        Some(v) => v
            .parse::<u32>()
            .map(Some)
            .map_err(|_| PageError::Invalid(format!("{field} must be a whole number (got '{v}')"))),
    }
}

impl LaunchForm {
    fn request(&self) -> Result<LaunchInstance, PageError> {
        let class = match opt(&self.class) {
            None => Class::OnDemand,
            Some(c) => c.parse().map_err(PageError::Invalid)?,
        };
        let gang_level = match opt(&self.gang_level) {
            None => None,
            Some(g) => Some(g.parse::<GangLevel>().map_err(PageError::Invalid)?),
        };
        let contract_id = match opt(&self.contract) {
            None => None,
            Some(c) => Some(
                c.parse::<ContractId>()
                    .map_err(|e| PageError::Invalid(format!("contract: {e}")))?,
            ),
        };
        let nodes = count("nodes", &self.nodes)?;
        let shape = match (count("share", &self.share)?, opt(&self.mig)) {
            (Some(_), Some(_)) => {
                return Err(PageError::Invalid(
                    "give a share or a MIG profile, not both".into(),
                ));
            }
            (Some(milli), None) => Some(Shape::Share { milli }),
            (None, Some(m)) => Some(Shape::Mig {
                profile: m
                    .parse()
                    .map_err(|e| PageError::Invalid(format!("MIG profile: {e}")))?,
            }),
            (None, None) => None,
        };
        // With a share or MIG profile, the GPU count is the form's leftover.
        let gpus = match shape {
            Some(_) => None,
            None => count("gpus", &self.gpus)?,
        };
        Ok(LaunchInstance {
            tenant_id: opt(&self.tenant),
            name: opt(&self.name),
            class,
            gpu_model: Some(self.gpu_model.trim().to_string()),
            gpu_models: None,
            gpus,
            nodes,
            // A gang level chosen with a GPU shape is the form's leftover, not a request.
            gang_level: if nodes.is_some() { gang_level } else { None },
            site: opt(&self.site),
            contract_id,
            wait_seconds: count("wait_seconds", &self.wait_seconds)?,
            shape,
            cpu_milli: None,
            memory_mib: None,
            delivery: opt(&self.image).map(|image| neocloud_types::Delivery::Container {
                image,
                command: Vec::new(),
                env: Default::default(),
            }),
            ssh_key_names: self
                .ssh_keys
                .split([',', ' '])
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_string)
                .collect(),
            on_node_failure: None,
        })
    }
}

#[derive(serde::Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    cursor: Option<String>,
}

pub(crate) fn shape_text(s: &Shape) -> String {
    match s {
        Shape::Gpus { gpus } => format!("{gpus} GPU{}", if *gpus == 1 { "" } else { "s" }),
        Shape::Nodes { count, level } => format!("{count} nodes in one {level}"),
        Shape::Share { milli } => format!("{}.{:03} of a GPU", milli / 1000, milli % 1000),
        Shape::Mig { profile } => format!("MIG {profile}"),
        Shape::Cpu => "CPU only".to_string(),
    }
}

fn live(state: InstanceState) -> bool {
    matches!(
        state,
        InstanceState::Pending
            | InstanceState::Provisioning
            | InstanceState::Running
            | InstanceState::Preempting
            | InstanceState::Terminating
    )
}

/// The instances page: the list and the launch form.
pub async fn instances(
    State(st): State<Console>,
    session: Session,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PageError> {
    let Query(q) = query.map_err(|e| PageError::Invalid(e.body_text()))?;
    instances_page(
        &st,
        &session,
        &q,
        None,
        StatusCode::OK,
        &LaunchForm::default(),
    )
    .await
}

async fn instances_page(
    st: &Console,
    session: &Session,
    q: &ListQuery,
    error: Option<&str>,
    status: StatusCode,
    form: &LaunchForm,
) -> Result<Response, PageError> {
    let p = &session.principal;
    let state = match q.state.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(s.parse::<InstanceState>().map_err(PageError::Invalid)?),
    };
    let list = st
        .svc
        .instance_list(p, None, state, q.cursor.as_deref(), Some(100))
        .await?;
    let names = tenant_names(st, session).await?;
    let sites = st.svc.site_list(p).await?;
    let models: BTreeSet<String> = sites
        .iter()
        .flat_map(|s| s.gpus_by_model.iter().map(|m| m.gpu_model.clone()))
        .collect();
    let contracts = st.svc.contract_list(p, None, None, Some(200)).await?;
    let can_launch = auth::allowed(p.role, neocloud_service::Action::WriteInstances);
    let body = html! {
        (alert(error))
        @if can_launch {
            (launch_form(session, form, &models, &sites, &contracts.items))
        }
        h2 { "Instances" }
        form.filters method="get" action="/instances" {
            label { "state "
                select name="state" {
                    option value="" { "any" }
                    @for s in ["pending", "provisioning", "running", "preempting", "terminating", "stopping", "terminated", "preempted", "failed"] {
                        option value=(s) selected[q.state.as_deref() == Some(s)] { (s) }
                    }
                }
            }
            button type="submit" { "Show" }
        }
        @if list.items.is_empty() {
            p.muted #no-instances { "No instances yet." }
        } @else {
            table.grid #instances {
                thead { tr {
                    th { "id" } th { "name" }
                    @if session.is_operator() { th { "tenant" } }
                    th { "class" } th { "shape" } th { "model" } th { "state" } th { "placement" } th { "started" } th { "ended" }
                } }
                tbody {
                    @for i in &list.items {
                        tr data-instance=(i.id) {
                            td { a href={ "/instances/" (i.id) } { code { (i.id) } } }
                            td { (i.name.as_deref().unwrap_or("")) }
                            @if session.is_operator() { td { (names.get(&i.tenant_id).cloned().unwrap_or_default()) } }
                            td { (i.class) }
                            td { (shape_text(&i.shape)) }
                            td { (i.gpu_model) }
                            td.state { span class={ "dot inst-" (i.state) } {} (i.state) }
                            td { (placement_text(&i.placement)) }
                            td { (ts_opt(i.started_at)) }
                            td { (ts_opt(i.ended_at)) }
                        }
                    }
                }
            }
            @if let Some(c) = &list.next_cursor {
                p { a href={ "/instances?cursor=" (url_encode(c)) @if let Some(s) = &q.state { "&state=" (url_encode(s)) } } { "More →" } }
            }
        }
    };
    Ok(Page::new(session, "instances", "Instances").render_status(status, body))
}

/// MIG profile names offered by the launch form (which ones a model takes depends on its
/// memory; the service refuses the others with the list).
const MIG_PROFILES: [&str; 12] = [
    "1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb", "1g.18gb", "1g.35gb",
    "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb",
];

fn placement_text(p: &[neocloud_types::PlacedNode]) -> String {
    match p {
        [] => "—".to_string(),
        [one] if one.gpus.is_empty() => format!("{} (CPU only)", one.node),
        [one] => format!(
            "{} GPU {}{}",
            one.node,
            one.gpus
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
            one.mig_start
                .map(|s| format!(" MIG slot {s}"))
                .unwrap_or_default()
        ),
        [first, rest @ ..] => format!("{} and {} more nodes", first.node, rest.len()),
    }
}

fn launch_form(
    session: &Session,
    f: &LaunchForm,
    models: &BTreeSet<String>,
    sites: &[neocloud_types::Site],
    contracts: &[neocloud_types::Contract],
) -> Markup {
    let idem = format!("console-{}", InstanceId::new());
    html! {
        details.launch open {
            summary { "Launch an instance" }
            form #launch method="post" action="/instances" {
                input type="hidden" name="csrf" value=(session.csrf);
                input type="hidden" name="idem" value=(idem);
                @if session.is_operator() {
                    label { "Tenant " input #f-tenant type="text" name="tenant" required value=(f.tenant) placeholder="name or id"; }
                }
                label { "Name " input #f-name type="text" name="name" maxlength="200" value=(f.name) placeholder="optional label"; }
                label { "Class "
                    select #f-class name="class" {
                        @for c in ["on-demand", "spot", "internal", "reserved"] {
                            option value=(c) selected[f.class == c] { (c) }
                        }
                    }
                }
                label { "GPU model "
                    select #f-model name="gpu_model" required {
                        @for m in models { option value=(m) selected[&f.gpu_model == m] { (m) } }
                    }
                }
                fieldset {
                    legend { "Shape: GPUs in one node, or a gang of whole nodes" }
                    label { "GPUs "
                        select #f-gpus name="gpus" {
                            option value="" { "—" }
                            @for g in ["1", "2", "4", "8"] { option value=(g) selected[f.gpus == g || (f.gpus.is_empty() && f.nodes.is_empty() && g == "1")] { (g) } }
                        }
                    }
                    label { "or nodes " input #f-nodes type="number" name="nodes" min="1" max="200000" value=(f.nodes); }
                    label { "in one "
                        select #f-gang name="gang_level" {
                            @for (v, l) in [("", "site"), ("pod", "pod"), ("leaf_group", "leaf group"), ("nvlink_domain", "NVLink domain")] {
                                option value=(v) selected[f.gang_level == v] { (l) }
                            }
                        }
                    }
                    label { "or a share of one GPU (thousandths) " input #f-share type="number" name="share" min="1" max="1000" value=(f.share) placeholder="250 = a quarter"; }
                    label { "or a MIG profile " input #f-mig type="text" name="mig" list="mig-profiles" maxlength="16" value=(f.mig) placeholder="e.g. 1g.10gb"; }
                    datalist #mig-profiles {
                        @for p in MIG_PROFILES { option value=(p) {} }
                    }
                }
                label { "Site "
                    select #f-site name="site" {
                        option value="" { "any" }
                        @for s in sites { option value=(s.name) selected[f.site == s.name] { (s.name) } }
                    }
                }
                label { "Contract (reserved) "
                    select #f-contract name="contract" {
                        option value="" { "—" }
                        @for c in contracts {
                            option value=(c.id) selected[f.contract == c.id.to_string()] { (c.id) " · " (c.gpu_count) "×" (c.gpu_model) }
                        }
                    }
                }
                label { "Wait up to (s) " input #f-wait type="number" name="wait_seconds" min="0" max="604800" value=(f.wait_seconds) placeholder="0"; }
                label { "Run image (container) " input #f-image type="text" name="image" maxlength="512" value=(f.image) placeholder="e.g. localhost/trainer:1"; }
                label { "SSH keys " input #f-ssh-keys type="text" name="ssh_keys" maxlength="2000" value=(f.ssh_keys) placeholder="key names, e.g. laptop"; }
                button #launch-submit type="submit" { "Launch" }
            }
        }
    }
}

/// Launches from the form; on refusal the page comes back with the reason and the values.
pub async fn launch(
    State(st): State<Console>,
    session: Session,
    headers: HeaderMap,
    form: Result<axum::Form<LaunchForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, PageError> {
    let axum::Form(f) = form.map_err(|e| PageError::Invalid(e.body_text()))?;
    session.check_form(&headers, &f.csrf)?;
    let q = ListQuery {
        state: None,
        cursor: None,
    };
    let req = match f.request() {
        Ok(r) => r,
        Err(PageError::Invalid(m)) => {
            return instances_page(&st, &session, &q, Some(&m), StatusCode::BAD_REQUEST, &f).await;
        }
        Err(e) => return Err(e),
    };
    // The form's one-time token makes a double submit (or a reload) replay the first
    // launch instead of launching twice.
    let idem = opt(&f.idem)
        .filter(|k| k.len() <= 255)
        .map(|key| Idempotency {
            fingerprint: neocloud_service::auth::sha256_hex(
                format!(
                    "console launch\n{}\n{:?}\n{:?}\n{}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
                    session.principal.key_id,
                    req.tenant_id,
                    req.name,
                    req.class,
                    req.gpu_model,
                    req.gpus,
                    req.nodes,
                    req.gang_level,
                    req.site,
                    req.contract_id,
                    req.shape
                )
                .as_bytes(),
            ),
            key,
        });
    match st
        .svc
        .instance_launch(&session.principal, req, idem.as_ref())
        .await
    {
        Ok(created) => {
            Ok(Redirect::to(&format!("/instances/{}", created.value.id)).into_response())
        }
        Err(e)
            if e.code != neocloud_service::ErrorCode::Internal
                && e.code != neocloud_service::ErrorCode::Unauthenticated =>
        {
            let status =
                StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
            instances_page(&st, &session, &q, Some(&e.message), status, &f).await
        }
        Err(e) => Err(e.into()),
    }
}

/// One instance, its usage so far, and the terminate button.
pub async fn instance(
    State(st): State<Console>,
    session: Session,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let p = &session.principal;
    let i = st.svc.instance_get(p, &id).await?;
    let usage = st
        .svc
        .usage_list(
            p,
            None,
            UsageFilter {
                instance_id: Some(i.id),
                ..Default::default()
            },
            None,
            Some(100),
        )
        .await?;
    // What it has run up since it was last metered, rated as the ledger will rate it.
    let open = st.svc.usage_unmetered(p, &id).await?;
    // Every record here is this instance's.
    let names: std::collections::HashMap<_, _> = i.name.iter().map(|n| (i.id, n.clone())).collect();
    let can_change = auth::allowed(p.role, neocloud_service::Action::WriteInstances);
    // The last 16 KiB of a delivered instance's output.
    let output = match &i.delivery {
        Some(_) => {
            let all = st.svc.instance_logs(p, &id, None, None).await?;
            let from = all.next_offset.saturating_sub(16 * 1024);
            Some(st.svc.instance_logs(p, &id, Some(from), None).await?)
        }
        None => None,
    };
    // A gang of many nodes: its blocks first (nodes out of service named), the node list
    // folded away.
    let big = i.placement.len() > 8;
    // An operator sees whose it is.
    let owner = if session.is_operator() {
        let t = st.svc.tenant_get(p, &i.tenant_id.to_string()).await?;
        Some(t.name)
    } else {
        None
    };
    let blocks = if big {
        st.svc.placement_blocks(p, &i).await?
    } else {
        Vec::new()
    };
    let body = html! {
        @if can_change && live(i.state) {
            form.top-action method="post" action={ "/instances/" (i.id) "/terminate" } data-confirm="Terminate this instance?" {
                input type="hidden" name="csrf" value=(session.csrf);
                button.danger #terminate type="submit" { "Terminate" }
            }
        }
        table.kv {
            tr { th { "State" } td { span class={ "dot inst-" (i.state) } {} b #instance-state { (i.state) } @if let Some(r) = &i.reason { " — " (r) } } }
            @if let Some(name) = &owner {
                tr { th { "Tenant" } td { a href={ "/tenants/" (url_encode(name)) } { (name) } } }
            }
            tr { th { "Class" } td { (i.class) } }
            tr { th { "Shape" } td { (shape_text(&i.shape)) " · " (i.gpu_count) " × " (i.gpu_model) } }
            @if big {
                tr { th { "Placement" } td #placement-summary {
                    (i.placement.len()) " nodes in " (blocks.len()) " block" @if blocks.len() != 1 { "s" }
                    table.grid #placement-blocks {
                        thead { tr { th { "block" } th.num { "nodes" } th { "out of service" } } }
                        tbody {
                            @for b in &blocks {
                                tr {
                                    td { (if b.block_path.is_empty() { "—" } else { b.block_path.as_str() }) }
                                    td.num { (b.nodes) }
                                    td {
                                        @for (name, state) in &b.out_of_service {
                                            @if session.is_operator() { a href={ "/nodes/" (url_encode(name)) } { (name) } } @else { (name) }
                                            " (" (state) ") "
                                        }
                                    }
                                }
                            }
                        }
                    }
                } }
            }
            tr { th { @if big { "Nodes" } @else { "Placement" } } td {
                @if big { details #placement-nodes { summary { "All " (i.placement.len()) " nodes" } (node_list(&session, &i)) } }
                @else { (node_list(&session, &i)) }
            } }            @if let Some(last) = open.last() {
                tr { th { "Rate now" } td #instance-rate {
                    "$" (last.rate) " per GPU-hour"
                    @if let Some(m) = last.gpu_milli { " × " (part(Some(m))) } @else { " × " (last.gpus) " GPUs" }
                } }
            }
            tr { th { "Cost so far" } td #instance-cost {
                (money(neocloud_types::Money::from_micros(amount_of(&usage.items).micros() + amount_of(&open).micros())))
                @if !open.is_empty() { span.muted { " (" (money(amount_of(&open))) " of it since the last metering, recorded when it stops or at the month's invoice)" } }
            } }
            tr { th { "Created" } td { (ts(i.created_at)) } }
            tr { th { "Started" } td { (ts_opt(i.started_at)) } }
            tr { th { "Ended" } td { (ts_opt(i.ended_at)) } }
            @if let Some(t) = i.preempt_at { tr { th { "Preempted at" } td { (ts(t)) } } }
            @if let Some(e) = i.ends_as { tr { th { "Ends as" } td { (e) " (its agents are stopping it)" } } }
            @if let Some(d) = &i.delivery {
                tr { th { "Delivery" } td #instance-delivery {
                    (d.mode())
                    @if let neocloud_types::Delivery::Container { image, command, .. } = d {
                        " · " code { (image) }
                        @if !command.is_empty() { " · " code { (command.join(" ")) } }
                    }
                    @if !i.ssh_key_names.is_empty() { " · keys " (i.ssh_key_names.join(", ")) }
                } }
            }
            @if let Some(a) = &i.access {
                tr { th { "SSH" } td #instance-access {
                    code { "neocloud ssh " (i.id) } " or " code { "ssh -p " (a.port) " " (a.user) "@" (a.host) }
                } }
            }
        }
        @if let Some(out) = &output {
            h2 { "Output" }
            @if out.data.is_empty() { p.muted { "No output yet." } }
            @else { pre #instance-output { (out.data) } }
        }
        h2 { "Usage" }
        @if !open.is_empty() {
            h3 { "Running, not yet metered" }
            (usage_table(&open, &names))
            h3 { "Metered" }
        }
        (usage_table(&usage.items, &names))
    };
    Ok(Page::new(
        &session,
        "instances",
        format!(
            "Instance {}",
            i.name.as_deref().unwrap_or(&i.id.to_string())
        ),
    )
    .render(body))
}

/// An instance's nodes, one per line, with the GPUs and slots it holds on each.
fn node_list(session: &Session, i: &neocloud_types::Instance) -> Markup {
    html! {
        @for n in i.placement.iter() {
            @if session.is_operator() { a href={ "/nodes/" (url_encode(&n.node)) } { (n.node) } } @else { (n.node) }
            @if n.gpus.is_empty() { " (CPU only)" } @else {
                " GPUs " (n.gpus.iter().map(u32::to_string).collect::<Vec<_>>().join(","))
            }
            @if let Some(s) = n.mig_start { " · MIG slot " (s) }
            @if let Some(c) = n.cpu_milli { " · " (c as f64 / 1000.0) " cores" }
            @if let Some(m) = n.memory_mib { " · " (m / 1024) " GiB" }
            br;
        }
    }
}

/// The part of a GPU a usage record rates: a share or MIG instance's thousandths, or whole
/// GPUs.
fn part(milli: Option<u64>) -> String {
    match milli {
        Some(m) => format!("{}.{:03} GPU", m / 1000, m % 1000),
        None => "whole".to_string(),
    }
}

/// The sum of records' amounts.
fn amount_of(records: &[neocloud_types::UsageRecord]) -> neocloud_types::Money {
    neocloud_types::Money::from_micros(records.iter().map(|r| r.amount.micros()).sum())
}

/// Names of the named instances among `records` that `known` does not name (at most 50
/// looked up).
async fn instance_names(
    st: &Console,
    session: &Session,
    records: &[&[neocloud_types::UsageRecord]],
    known: &std::collections::HashMap<neocloud_types::InstanceId, String>,
) -> std::collections::HashMap<neocloud_types::InstanceId, String> {
    let mut ids: Vec<neocloud_types::InstanceId> = records
        .iter()
        .flat_map(|r| r.iter().map(|u| u.instance_id))
        .filter(|id| !known.contains_key(id))
        .collect();
    ids.sort();
    ids.dedup();
    let mut names = std::collections::HashMap::new();
    for id in ids.into_iter().take(50) {
        if let Ok(i) = st
            .svc
            .instance_get(&session.principal, &id.to_string())
            .await
            && let Some(n) = i.name
        {
            names.insert(id, n);
        }
    }
    names
}

fn usage_table(
    records: &[neocloud_types::UsageRecord],
    names: &std::collections::HashMap<neocloud_types::InstanceId, String>,
) -> Markup {
    html! {
        @if records.is_empty() {
            p.muted #no-usage { "Nothing metered yet: usage is recorded when an instance stops, and when a month is invoiced for the instances still running." }
        } @else {
            table.grid #usage {
                thead { tr { th { "instance" } th { "class" } th { "model" } th.num { "GPUs" } th { "part" } th { "from" } th { "to" } th.num { "GPU-hours" } th.num { "$/GPU-h" } th.num { "amount" } } }
                tbody {
                    @for r in records {
                        tr {
                            td { a href={ "/instances/" (r.instance_id) } { @if let Some(n) = names.get(&r.instance_id) { (n) " " } code { (r.instance_id) } } }
                            td { (r.class) }
                            td { (r.gpu_model) }
                            td.num { (r.gpus) }
                            td { (part(r.gpu_milli)) }
                            td { (ts(r.start_at)) }
                            td { (ts(r.end_at)) }
                            td.num.gpu-seconds data-gpu-seconds=(r.gpu_seconds) { (gpu_hours(r.gpu_seconds)) }
                            td.num { (r.rate) }
                            td.num { (money_exact(r.amount)) }
                        }
                    }
                }
            }
        }
    }
}

#[derive(serde::Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// Terminates an instance from its page.
pub async fn terminate(
    State(st): State<Console>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<axum::Form<CsrfForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, PageError> {
    let token = form.map(|f| f.0.csrf).unwrap_or_default();
    session.check_form(&headers, &token)?;
    let i = st.svc.instance_terminate(&session.principal, &id).await?;
    Ok(Redirect::to(&format!("/instances/{}", i.id)).into_response())
}

#[derive(serde::Deserialize)]
pub struct UsageQuery {
    #[serde(default)]
    month: Option<String>,
    #[serde(default)]
    cursor: Option<String>,
}

/// The usage ledger, by month.
pub async fn usage(
    State(st): State<Console>,
    session: Session,
    query: Result<Query<UsageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PageError> {
    let Query(q) = query.map_err(|e| PageError::Invalid(e.body_text()))?;
    let month = q.month.filter(|m| !m.trim().is_empty());
    if let Some(m) = &month
        && m.parse::<neocloud_billing::Month>().is_err()
    {
        return Err(PageError::Invalid(format!(
            "month must be YYYY-MM (got '{m}')"
        )));
    }
    let page = st
        .svc
        .usage_list(
            &session.principal,
            None,
            UsageFilter {
                month: month.clone(),
                ..Default::default()
            },
            q.cursor.as_deref(),
            Some(200),
        )
        .await?;
    let total: i64 = page.items.iter().map(|r| r.amount.micros()).sum();
    let gpu_seconds: i64 = page.items.iter().map(|r| r.gpu_seconds).sum();
    // Running instances' usage not metered yet (the first page only).
    let mut open = Vec::new();
    let mut known = std::collections::HashMap::new();
    if q.cursor.is_none() {
        let running = st
            .svc
            .instance_list(
                &session.principal,
                None,
                Some(neocloud_types::InstanceState::Running),
                None,
                Some(100),
            )
            .await?;
        for i in &running.items {
            if let Some(n) = &i.name {
                known.insert(i.id, n.clone());
            }
            open.extend(
                st.svc
                    .usage_unmetered(&session.principal, &i.id.to_string())
                    .await?,
            );
        }
        if let Some(m) = &month {
            open.retain(|r| &r.month == m);
        }
    }
    let mut names = instance_names(&st, &session, &[&page.items], &known).await;
    names.extend(known);
    let body = html! {
        form.filters method="get" action="/usage" {
            label { "month " input type="month" name="month" value=[month.as_deref()]; }
            button type="submit" { "Show" }
        }
        @if !open.is_empty() {
            h2 { "Running now, not yet metered" }
            p.muted { "Rated as the ledger will record it when each instance stops, or at the month's invoice: " (money(amount_of(&open))) " so far." }
            div #usage-running { (usage_table(&open, &names)) }
            h2 { "Metered" }
        }
        p { (num(page.items.len() as i64)) " records on this page · " (gpu_hours(gpu_seconds)) " GPU-hours · " (money(neocloud_types::Money::from_micros(total))) }
        (usage_table(&page.items, &names))
        @if let Some(c) = &page.next_cursor {
            p { a href={ "/usage?cursor=" (url_encode(c)) @if let Some(m) = &month { "&month=" (url_encode(m)) } } { "More →" } }
        }
    };
    Ok(Page::new(&session, "usage", "Usage").render(body))
}

/// Invoices.
pub async fn invoices(State(st): State<Console>, session: Session) -> Result<Response, PageError> {
    let list = st.svc.invoice_list(&session.principal, None).await?;
    let names = tenant_names(&st, &session).await?;
    let can_bill = session.is_operator()
        && auth::allowed(
            session.principal.role,
            neocloud_service::Action::WriteInvoices,
        );
    let this_month = neocloud_types::Timestamp::now().to_string()[..7].to_string();
    let body = html! {
        @if can_bill {
            form.filters #generate method="post" action="/invoices" {
                input type="hidden" name="csrf" value=(session.csrf);
                input type="hidden" name="idem" value={ "console-" (neocloud_types::InstanceId::new()) };
                label { "Invoice " select name="tenant" required {
                    option value="" { "tenant…" }
                    @for (id, name) in &names { option value=(id) { (name) } }
                } }
                label { " for " input type="month" name="month" value=(this_month) required; }
                button type="submit" #generate-submit { "Generate" }
                span.muted { " A draft is generated again with what was metered since; a finalized invoice never changes." }
            }
        }
        @if list.is_empty() {
            p.muted #no-invoices { "No invoices yet: they are generated monthly." }
        } @else {
            table.grid #invoices {
                thead { tr { th { "invoice" } th { "tenant" } th { "month" } th { "state" } th.num { "total" } th { "" } } }
                tbody {
                    @for inv in &list {
                        tr {
                            td { a href={ "/invoices/" (url_encode(&inv.id)) } { code { (inv.id) } } }
                            td { (names.get(&inv.tenant_id).cloned().unwrap_or_default()) }
                            td { (inv.month) }
                            td { (inv.state) }
                            td.num { (money(inv.total)) }
                            td { a href={ "/invoices/" (url_encode(&inv.id)) "/csv" } { "CSV" } }
                        }
                    }
                }
            }
        }
    };
    Ok(Page::new(&session, "invoices", "Invoices").render(body))
}

/// One invoice with its lines.
pub async fn invoice(
    State(st): State<Console>,
    session: Session,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let inv = st.svc.invoice_get(&session.principal, &id).await?;
    let can_bill = session.is_operator()
        && auth::allowed(
            session.principal.role,
            neocloud_service::Action::WriteInvoices,
        );
    let draft = inv.state == "draft";
    // A month can be finalized once it is over.
    let over = inv
        .month
        .parse::<neocloud_billing::Month>()
        .is_ok_and(|m| m.next().start() <= st.svc.now());
    let body = html! {
        p { "Month " (inv.month) " · " b #invoice-state { (inv.state) } " · created " (ts(inv.created_at)) " · " a href={ "/invoices/" (url_encode(&inv.id)) "/csv" } #csv { "Download CSV" } }
        @if can_bill && draft && !over {
            p.muted #finalize-later { "A draft: it can be finalized once " (inv.month) " is over." }
        }
        @if can_bill && draft && over {
            form.top-action method="post" action={ "/invoices/" (url_encode(&inv.id)) "/finalize" } data-confirm="Finalize this invoice? It will never change again." {
                input type="hidden" name="csrf" value=(session.csrf);
                button type="submit" #finalize { "Finalize" }
                span.muted { " A draft changes when it is generated again; a finalized invoice never does." }
            }
        }
        table.grid #lines {
            thead { tr { th { "line" } th { "description" } th { "model" } th.num { "GPU-hours" } th.num { "amount" } } }
            tbody {
                @for l in &inv.lines {
                    tr {
                        td { (l.kind) }
                        td { (l.description) }
                        td { (l.gpu_model.as_deref().unwrap_or("")) }
                        td.num { (gpu_hours(l.quantity_gpu_seconds)) }
                        td.num { (money(l.amount)) @if !l.billed { " " span.muted { "(not billed)" } } }
                    }
                }
            }
            tfoot { tr { th colspan="4" { "Total" } th.num #invoice-total { (money(inv.total)) } } }
        }
    };
    Ok(Page::new(&session, "invoices", format!("Invoice {}", inv.id)).render(body))
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// An invoice as CSV: one row per line, amounts exact as on the invoice.
pub async fn invoice_csv(
    State(st): State<Console>,
    session: Session,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let inv = st.svc.invoice_get(&session.principal, &id).await?;
    // Names beside the ids, for people reading the file; ids for programs.
    let tenant = st
        .svc
        .tenant_get(&session.principal, &inv.tenant_id.to_string())
        .await
        .map(|t| t.name)
        .unwrap_or_default();
    let sites: std::collections::HashMap<neocloud_types::SiteId, String> = st
        .svc
        .site_list(&session.principal)
        .await
        .map(|l| l.into_iter().map(|s| (s.id, s.name)).collect())
        .unwrap_or_default();
    let mut out = String::from(
        "invoice,tenant_id,tenant,month,kind,description,contract_id,class,gpu_model,site_id,site,gpu_seconds,amount_usd,billed\n",
    );
    for l in &inv.lines {
        let row = [
            inv.id.clone(),
            inv.tenant_id.to_string(),
            tenant.clone(),
            inv.month.clone(),
            l.kind.clone(),
            l.description.clone(),
            l.contract_id.map(|c| c.to_string()).unwrap_or_default(),
            l.class.map(|c| c.to_string()).unwrap_or_default(),
            l.gpu_model.clone().unwrap_or_default(),
            l.site_id.map(|s| s.to_string()).unwrap_or_default(),
            l.site_id
                .and_then(|s| sites.get(&s).cloned())
                .unwrap_or_default(),
            l.quantity_gpu_seconds.to_string(),
            l.amount.to_string(),
            l.billed.to_string(),
        ];
        out.push_str(
            &row.iter()
                .map(|f| csv_field(f))
                .collect::<Vec<_>>()
                .join(","),
        );
        out.push('\n');
    }
    let disposition = format!(
        "attachment; filename=\"{}.csv\"",
        inv.id.replace(
            |c: char| !c.is_ascii_alphanumeric() && c != '_' && c != '-',
            "_"
        )
    );
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        out,
    )
        .into_response())
}
