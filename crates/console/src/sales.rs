//! Pages about what is sold: contracts and the capacity calendar, revenue and backlog, and
//! the audit trail.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use maud::html;
use neocloud_service::EventFilter;
use neocloud_service::{Action, auth};
use neocloud_types::{ApiKeyId, Class, Money, TenantId, Timestamp};

use crate::layout::{Page, money, money_m, num, pct, ts, ts_opt};
use crate::svg::{Series, stacked_bars, step_lines};
use crate::{Console, PageError, Session, url_encode};

/// Names of every tenant the session may see, by id.
pub async fn tenant_names(
    st: &Console,
    session: &Session,
) -> Result<BTreeMap<TenantId, String>, PageError> {
    let mut names = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = st
            .svc
            .tenant_list(&session.principal, cursor.as_deref(), Some(1000))
            .await?;
        for t in page.items {
            names.insert(t.id, t.name);
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    Ok(names)
}

fn name_of(names: &BTreeMap<TenantId, String>, t: TenantId) -> String {
    names.get(&t).cloned().unwrap_or_else(|| t.to_string())
}

/// `(year, month)` of a time, UTC.
fn year_month(t: Timestamp) -> (i32, u32) {
    let s = t.to_string();
    let y = s.get(0..4).and_then(|v| v.parse().ok()).unwrap_or(1970);
    let m = s.get(5..7).and_then(|v| v.parse().ok()).unwrap_or(1);
    (y, m)
}

/// `Dec 2026` for a time.
fn month_label(t: Timestamp) -> String {
    const NAMES: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, m) = year_month(t);
    let name = NAMES
        .get(usize::try_from(m).unwrap_or(1).saturating_sub(1))
        .copied()
        .unwrap_or("?");
    format!("{name} {y}")
}

/// Labels of a three-year time axis starting now: the month now and the same month of the
/// next three years.
fn year_labels(now: Timestamp) -> Vec<(f64, String)> {
    (0..=3)
        .map(|y| {
            let at = now.plus_months(12 * y).unwrap_or(now);
            ((at.micros() - now.micros()) as f64 / 1e6, month_label(at))
        })
        .collect()
}

/// The twelve months ending with the current one, `YYYY-MM`.
fn last_months(n: u32) -> Vec<String> {
    let (mut y, mut m) = year_month(Timestamp::now());
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(format!("{y:04}-{m:02}"));
        if m == 1 {
            m = 12;
            y -= 1;
        } else {
            m -= 1;
        }
    }
    out.reverse();
    out
}

/// Contracts (a tenant's own, or all), and for operators the capacity calendar.
pub async fn contracts(State(st): State<Console>, session: Session) -> Result<Response, PageError> {
    let p = &session.principal;
    let list = st.svc.contract_list(p, None, None, Some(200)).await?;
    let names = tenant_names(&st, &session).await?;
    let calendar = if auth::allowed(p.role, Action::ReadCapacity) {
        Some(st.svc.capacity(p, None, None, Some(3 * 365)).await?)
    } else {
        None
    };
    let body = html! {
        @if let Some(lines) = &calendar {
            h2 { "Capacity calendar" }
            p.muted { "GPUs promised by signed and active contracts over the next three years, against what contracts may sell (all GPUs minus the spare buffer)." }
            div.charts {
                @for l in lines {
                    @let now = Timestamp::now().micros();
                    @let span = 3.0 * 365.0 * 86_400.0;
                    @let xs: Vec<f64> = l.committed.iter().map(|c| (c.at.micros() - now) as f64 / 1e6).collect();
                    @let committed = Series { name: "committed".into(), class: "committed".into(), values: l.committed.iter().map(|c| c.gpus as f64).collect() };
                    @let sellable = Series { name: "sellable".into(), class: "sellable".into(), values: vec![l.sellable_gpus as f64] };
                    @let total = Series { name: "all GPUs".into(), class: "total".into(), values: vec![l.total_gpus as f64] };
                    @let labels = year_labels(Timestamp::from_micros(now));
                    figure {
                        figcaption { (l.site) " · " (l.gpu_model) ": " (num(l.committed_gpus_now)) " of " (num(l.sellable_gpus)) " sellable GPUs committed now" }
                        (step_lines(&format!("{} {} capacity calendar", l.site, l.gpu_model), span, &[(total, vec![0.0]), (sellable, vec![0.0]), (committed, xs)], &labels, ""))
                    }
                }
            }
        }
        h2 { "Contracts" }
        @if list.items.is_empty() {
            p.muted #no-contracts { "No contracts." }
        } @else {
            table.grid #contracts {
                thead { tr { th { "id" } th { "tenant" } th { "GPUs" } th { "model" } th { "from" } th { "to" } th.num { "$/GPU-h" } th { "SLA" } th { "state" } th.num { "value" } } }
                tbody {
                    @for c in &list.items {
                        tr {
                            td { a href={ "/contracts/" (c.id) } { code { (c.id) } } }
                            td { (name_of(&names, c.tenant_id)) }
                            td.num { (num(i64::from(c.gpu_count))) }
                            td { (c.gpu_model) }
                            td { (ts(c.start_at)) }
                            td { (ts(c.end_at)) }
                            td.num { (c.price_per_gpu_hour) }
                            td { (c.sla_percent) "%" }
                            td { (c.state) }
                            td.num { (money(c.total_value)) }
                        }
                    }
                }
            }
        }
    };
    Ok(Page::new(&session, "contracts", "Contracts").render(body))
}

/// One contract: its terms, its pool and the work under it, its outages and what they
/// cost in availability, and its audit trail.
pub async fn contract(
    State(st): State<Console>,
    session: Session,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let p = &session.principal;
    let cw = st.svc.contract_work(p, &id).await?;
    let (c, work) = (&cw.contract, &cw.instances);
    let outages = st.svc.contract_outages(p, &id).await?;
    let names = tenant_names(&st, &session).await?;
    let now = st.svc.now();
    // SLA credits its invoices granted, by month.
    let credits: Vec<(String, String, Money)> = st
        .svc
        .invoice_list(p, Some(&c.tenant_id.to_string()))
        .await?
        .into_iter()
        .flat_map(|inv| {
            let (month, state) = (inv.month.clone(), inv.state.clone());
            inv.lines
                .into_iter()
                .filter(|l| l.kind == "sla-credit" && l.contract_id == Some(c.id))
                .map(move |l| (month.clone(), state.clone(), l.amount))
        })
        .collect();
    let held: u32 = work.iter().map(|i| i.gpu_count).sum();
    // The calendar over the next three years: this contract's promise, and for operators
    // the site's committed GPUs (every contract) against what it may sell.
    let span = 3.0 * 365.0 * 86_400.0;
    let at = |t: Timestamp| (t.micros() - now.micros()) as f64 / 1e6;
    let mine = Series {
        name: "this contract".into(),
        class: "committed".into(),
        values: vec![
            if c.start_at <= now {
                f64::from(c.gpu_count)
            } else {
                0.0
            },
            f64::from(c.gpu_count),
            0.0,
        ],
    };
    let mut lines = vec![(
        mine,
        vec![0.0, at(c.start_at).max(0.0), at(c.end_at).max(0.0)],
    )];
    if auth::allowed(p.role, Action::ReadCapacity) {
        let site_id = c.site_id.to_string();
        if let Some(l) = st
            .svc
            .capacity(p, Some(&site_id), Some(&c.gpu_model), Some(3 * 365))
            .await?
            .into_iter()
            .next()
        {
            lines.push((
                Series {
                    name: "all contracts".into(),
                    class: "total".into(),
                    values: l.committed.iter().map(|x| x.gpus as f64).collect(),
                },
                l.committed.iter().map(|x| at(x.at)).collect(),
            ));
            lines.push((
                Series {
                    name: "sellable".into(),
                    class: "sellable".into(),
                    values: vec![l.sellable_gpus as f64],
                },
                vec![0.0],
            ));
        }
    }
    let labels = year_labels(now);
    // Downtime so far, GPU-seconds, open outages up to now.
    let down: i64 = outages
        .iter()
        .map(|o| {
            let end = o.end_at.unwrap_or(now).min(now);
            i64::from(o.gpus) * ((end.micros() - o.start_at.micros()).max(0) / 1_000_000)
        })
        .sum();
    let elapsed = (now.min(c.end_at).micros() - c.start_at.micros()).max(0) / 1_000_000;
    let promised = i64::from(c.gpu_count) * elapsed;
    let body = html! {
        table.kv #contract {
            tr { th { "Tenant" } td { (name_of(&names, c.tenant_id)) } }
            tr { th { "State" } td { (c.state) } }
            tr { th { "GPUs" } td { (num(i64::from(c.gpu_count))) " × " (c.gpu_model) } }
            tr { th { "Term" } td { (ts(c.start_at)) " → " (ts(c.end_at)) } }
            tr { th { "Price" } td { "$" (c.price_per_gpu_hour) " per GPU-hour · value " (money(c.total_value)) } }
            tr { th { "SLA" } td { (c.sla_percent) "% availability" } }
            @if let Some(b) = c.single_block { tr { th { "Single block" } td { (b) } } }
        }
        h2 { "Calendar" }
        div.charts #contract-calendar {
            figure {
                figcaption { (num(i64::from(c.gpu_count))) " GPUs promised from " (ts(c.start_at)) " to " (ts(c.end_at)) }
                (step_lines(&format!("contract {} calendar", c.id), span, &lines, &labels, "GPUs"))
            }
        }
        h2 { "Pool" }
        p #pool {
            (num(cw.pool_nodes as i64)) " nodes pinned, " (num(cw.pool_gpus as i64)) " of the " (num(i64::from(c.gpu_count))) " GPUs promised"
            @if cw.pool_gpus < u64::from(c.gpu_count) && c.state == neocloud_types::ContractState::Active { " — " b { (num(i64::from(c.gpu_count) - cw.pool_gpus as i64)) " GPUs short" } ", refilled as capacity frees up" }
            " · " (num(i64::from(held))) " GPUs running under it in " (work.len()) " instance" @if work.len() != 1 { "s" }
        }
        @if !work.is_empty() {
            table.grid #contract-work {
                thead { tr { th { "instance" } th { "shape" } th.num { "GPUs" } th { "state" } th { "started" } } }
                tbody {
                    @for i in work.iter().take(200) {
                        tr {
                            td { a href={ "/instances/" (i.id) } { (i.name.as_deref().unwrap_or("")) @if i.name.is_some() { " " } code { (i.id) } } }
                            td { (crate::tenant::shape_text(&i.shape)) }
                            td.num { (num(i64::from(i.gpu_count))) }
                            td { (i.state) }
                            td { (ts_opt(i.started_at)) }
                        }
                    }
                }
            }
        }
        h2 { "Outages" }
        p #availability {
            @if now < c.start_at {
                "The term has not begun."
            } @else {
                @let share = if promised > 0 { 1.0 - down as f64 / promised as f64 } else { 1.0 };
                "Availability so far: " b { (format!("{:.4}%", 100.0 * share)) }
                " (" (num(down / 3600)) " GPU-hours down of " (num(promised / 3600)) " promised) against the SLA's " (c.sla_percent) "%."
            }
        }
        @if outages.is_empty() {
            p.muted #no-outages { "No outages." }
        } @else {
            table.grid #outages {
                thead { tr { th { "from" } th { "to" } th.num { "GPUs" } th { "reason" } } }
                tbody {
                    @for o in &outages {
                        tr {
                            td { (ts(o.start_at)) }
                            td { @if let Some(e) = o.end_at { (ts(e)) } @else { b { "open" } } }
                            td.num { (o.gpus) }
                            td { (o.reason) }
                        }
                    }
                }
            }
        }
        h2 { "SLA credits" }
        @if credits.is_empty() {
            p.muted #no-credits { "No credit on its invoices so far: credits are granted on the monthly invoice when a month's availability falls below the SLA." }
        } @else {
            table.grid #credits {
                thead { tr { th { "month" } th { "invoice" } th.num { "credit" } } }
                tbody { @for (m, st, a) in &credits { tr { td { (m) } td { (st) } td.num { (money(*a)) } } } }
            }
        }
        p { a href={ "/events?resource=" (c.id) } { "Its events →" } }
    };
    Ok(Page::new(&session, "contracts", format!("Contract {}", c.id)).render(body))
}

/// Revenue by month and class, the contracted backlog by year, and power now.
pub async fn reports(State(st): State<Console>, session: Session) -> Result<Response, PageError> {
    let p = &session.principal;
    let months = last_months(12);
    let (from, to) = (
        months.first().cloned().unwrap_or_default(),
        months.last().cloned().unwrap_or_default(),
    );
    let revenue = st.svc.report_revenue(p, &from, &to).await?;
    let backlog = st.svc.report_backlog(p).await?;
    let power = st.svc.report_power(p).await?;
    let names = tenant_names(&st, &session).await?;
    let classes = [
        (Class::Reserved, "reserved"),
        (Class::OnDemand, "on-demand"),
        (Class::Spot, "spot"),
    ];
    let mut by_month: BTreeMap<(&str, Class), i64> = BTreeMap::new();
    let mut by_tenant: BTreeMap<TenantId, i64> = BTreeMap::new();
    let mut total = 0i64;
    for r in &revenue {
        *by_month.entry((r.month.as_str(), r.class)).or_default() += r.amount.micros();
        *by_tenant.entry(r.tenant_id).or_default() += r.amount.micros();
        total += r.amount.micros();
    }
    let series: Vec<Series> = classes
        .iter()
        .map(|(c, name)| Series {
            name: (*name).to_string(),
            class: format!("cls-{name}"),
            values: months
                .iter()
                .map(|m| by_month.get(&(m.as_str(), *c)).copied().unwrap_or(0) as f64 / 1e6)
                .collect(),
        })
        .collect();
    let years: Vec<String> = backlog.by_year.iter().map(|y| y.year.to_string()).collect();
    let backlog_series = [Series {
        name: "committed value".into(),
        class: "committed".into(),
        values: backlog
            .by_year
            .iter()
            .map(|y| y.value.micros() as f64 / 1e6)
            .collect(),
    }];
    let mut tenants: Vec<(TenantId, i64)> = by_tenant.into_iter().collect();
    tenants.sort_by_key(|t| std::cmp::Reverse(t.1));
    let body = html! {
        div.figures {
            div { span.label { "Revenue, last 12 months" } span.big #revenue-total { (money_m(Money::from_micros(total))) } }
            div { span.label { "Contracted backlog" } span.big #backlog-total { (money_m(backlog.total)) } }
        }
        h2 { "Revenue by month" }
        (stacked_bars("Revenue by month and class", &months, &series, "$"))
        h2 { "Backlog by year of delivery" }
        (stacked_bars("Contracted backlog by year", &years, &backlog_series, "$"))
        h2 { "Revenue by tenant, last 12 months" }
        table.grid {
            thead { tr { th { "tenant" } th.num { "revenue" } th.num { "share" } } }
            tbody {
                @for (t, v) in &tenants {
                    tr { td { (name_of(&names, *t)) } td.num { (money(Money::from_micros(*v))) } td.num { (pct(*v as f64, total as f64)) } }
                }
            }
        }
        h2 { "Power now" }
        table.grid {
            thead { tr { th { "site" } th.num { "allocated MW" } th.num { "budget MW" } th.num { "share" } th.num { "energy $/h" } } }
            tbody {
                @for r in &power {
                    tr {
                        td { a href={ "/sites/" (url_encode(&r.site)) } { (r.site) } }
                        td.num { (format!("{:.2}", r.allocated_watts as f64 / 1e6)) }
                        td.num { (format!("{:.1}", r.budget_watts as f64 / 1e6)) }
                        td.num { (pct(r.allocated_watts as f64, r.budget_watts as f64)) }
                        td.num { (money(r.energy_cost_per_hour)) }
                    }
                }
            }
        }
    };
    Ok(Page::new(&session, "reports", "Revenue and backlog").render(body))
}

#[derive(serde::Deserialize)]
pub struct EventQuery {
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    resource: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    cursor: Option<String>,
}

/// JSON as people read it: indented.
fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// Names of the API keys the session may list, by id (none when it may not list keys).
async fn key_names(st: &Console, session: &Session) -> BTreeMap<ApiKeyId, String> {
    let mut names = BTreeMap::new();
    if !auth::allowed(session.principal.role, Action::ReadKeys) {
        return names;
    }
    let mut cursor: Option<String> = None;
    for _ in 0..20 {
        let Ok(page) = st
            .svc
            .api_key_list(&session.principal, None, cursor.as_deref(), Some(1000))
            .await
        else {
            break;
        };
        for k in page.items {
            names.insert(k.id, k.name);
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    names
}

/// A resource id linked to its page where the console has one.
fn resource_link(session: &Session, kind: &str, id: &str) -> maud::Markup {
    let href = match kind {
        "instance" => Some(format!("/instances/{}", url_encode(id))),
        "contract" => Some(format!("/contracts/{}", url_encode(id))),
        "invoice" => Some(format!("/invoices/{}", url_encode(id))),
        "node" if session.is_operator() => Some(format!("/nodes/{}", url_encode(id))),
        _ => None,
    };
    html! {
        @match href {
            Some(h) => { a href=(h) { code { (id) } } }
            None => { code { (id) } }
        }
    }
}

fn nonempty(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// The audit trail, newest first, with filters.
pub async fn events(
    State(st): State<Console>,
    session: Session,
    query: Result<Query<EventQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PageError> {
    let Query(q) = query.map_err(|e| PageError::Invalid(e.body_text()))?;
    let p = &session.principal;
    let tenant_id = match nonempty(&q.tenant) {
        Some(t) => Some(st.svc.tenant_get(p, t).await?.id),
        None => None,
    };
    let filter = EventFilter {
        tenant_id,
        resource_id: nonempty(&q.resource).map(str::to_string),
        action_prefix: nonempty(&q.action).map(str::to_string),
    };
    let page = st
        .svc
        .event_list(p, filter, nonempty(&q.cursor), Some(50))
        .await?;
    let names = tenant_names(&st, &session).await?;
    let keys = key_names(&st, &session).await;
    let next = page.next_cursor.as_ref().map(|c| {
        let mut url = format!("/events?cursor={}", url_encode(c));
        for (k, v) in [
            ("action", &q.action),
            ("resource", &q.resource),
            ("tenant", &q.tenant),
        ] {
            if let Some(v) = nonempty(v) {
                url.push_str(&format!("&{k}={}", url_encode(v)));
            }
        }
        url
    });
    let body = html! {
        form.filters method="get" action="/events" {
            label { "action starts with " input type="text" name="action" value=[nonempty(&q.action)] placeholder="instance."; }
            label { "resource id " input type="text" name="resource" value=[nonempty(&q.resource)]; }
            @if session.is_operator() {
                label { "tenant " input type="text" name="tenant" value=[nonempty(&q.tenant)] placeholder="name or id"; }
            }
            button type="submit" { "Filter" }
        }
        @if page.items.is_empty() {
            p.muted #no-events { "No events match." }
        } @else {
            table.grid #events {
                thead { tr { th { "when" } th { "action" } th { "resource" } th { "tenant" } th { "by key" } th { "change" } } }
                tbody {
                    @for e in &page.items {
                        tr {
                            td { (ts(e.at)) }
                            td { code { (e.action) } }
                            td { (e.resource_kind) " " (resource_link(&session, &e.resource_kind, &e.resource_id)) }
                            td { @if let Some(t) = e.tenant_id { (name_of(&names, t)) } }
                            td { @if let Some(k) = e.actor_key_id { @if let Some(n) = keys.get(&k) { (n) } @else { code { (k) } } } @else { span.muted { "system" } } }
                            td {
                                @if e.before.is_some() || e.after.is_some() {
                                    details {
                                        summary { "before / after" }
                                        @if let Some(b) = &e.before { h4 { "before" } pre { (pretty(b)) } }
                                        @if let Some(a) = &e.after { h4 { "after" } pre { (pretty(a)) } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(n) = next { p { a href=(n) #next { "Older events →" } } }
    };
    Ok(Page::new(&session, "events", "Events").render(body))
}
