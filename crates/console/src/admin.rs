//! Operator pages about customers: tenants with their quotas, keys and invoices, and the
//! invoice actions (generate a month's invoice, finalize a draft).

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use neocloud_service::{Action, CreateApiKey, Idempotency, SetQuota, auth};
use neocloud_types::{Class, Role};

use crate::layout::{Page, alert, money, ts, ts_opt};
use crate::{Console, PageError, Session, url_encode};

/// Every tenant with its kind, status, credit limit and quotas.
pub async fn tenants(State(st): State<Console>, session: Session) -> Result<Response, PageError> {
    let p = &session.principal;
    let list = st.svc.tenant_list(p, None, Some(1000)).await?;
    let quotas = st.svc.quota_list(p, None).await?;
    let body = html! {
        @if list.items.is_empty() {
            p.muted #no-tenants { "No tenants yet: " code { "neocloud tenants create NAME" } "." }
        } @else {
            table.grid #tenants {
                thead { tr { th { "tenant" } th { "display name" } th { "kind" } th { "status" } th.num { "credit limit" } th { "quotas" } th { "since" } } }
                tbody {
                    @for t in &list.items {
                        tr {
                            td { a href={ "/tenants/" (url_encode(&t.name)) } { (t.name) } }
                            td { (t.display_name) }
                            td { (t.kind) }
                            td { (t.status) }
                            td.num { @if let Some(c) = t.credit_limit { (money(c)) } @else { span.muted { "none" } } }
                            td {
                                @for q in quotas.iter().filter(|q| q.tenant_id == t.id) {
                                    (q.max_gpus) " × " (q.gpu_model) " " (q.class) br;
                                }
                            }
                            td { (ts(t.created_at)) }
                        }
                    }
                }
            }
            @if list.next_cursor.is_some() { p.muted { "The first 1,000 tenants; " code { "neocloud tenants list --all" } " lists every one." } }
        }
    };
    Ok(Page::new(&session, "tenants", "Tenants").render(body))
}

/// One tenant: its facts, quotas, API keys (never their secrets) and invoices, with links
/// to its events and instances.
pub async fn tenant(
    State(st): State<Console>,
    session: Session,
    Path(name): Path<String>,
) -> Result<Response, PageError> {
    tenant_page(&st, &session, &name, None, None).await
}

/// The tenant page, with the outcome of a form above it: an error, or a new key's secret
/// (shown this once).
async fn tenant_page(
    st: &Console,
    session: &Session,
    name: &str,
    error: Option<&str>,
    secret: Option<(&str, &str)>,
) -> Result<Response, PageError> {
    let p = &session.principal;
    let t = st.svc.tenant_get(p, name).await?;
    let id = t.id.to_string();
    let quotas = st.svc.quota_list(p, Some(&id)).await?;
    let keys = if auth::allowed(p.role, Action::ReadKeys) {
        Some(st.svc.api_key_list(p, Some(&id), None, Some(200)).await?)
    } else {
        None
    };
    let invoices = st.svc.invoice_list(p, Some(&id)).await?;
    let can_quota = auth::allowed(p.role, Action::WriteQuotas);
    let can_keys = auth::allowed(p.role, Action::WriteKeys);
    let base = format!("/tenants/{}", url_encode(&t.name));
    let models = st.svc.gpu_model_list(p).await.unwrap_or_default();
    let body = html! {
        (alert(error))
        @if let Some((key_name, secret)) = secret {
            div.notice #new-secret {
                p { "The secret of key " b { (key_name) } ", shown this once (only its hash is kept):" }
                pre { (secret) }
            }
        }
        table.kv #tenant {
            tr { th { "Name" } td { (t.name) " · " (t.display_name) } }
            tr { th { "Kind" } td { (t.kind) } }
            tr { th { "Status" } td { (t.status) } }
            tr { th { "Credit limit" } td { @if let Some(c) = t.credit_limit { (money(c)) } @else { "none" } } }
            tr { th { "Since" } td { (ts(t.created_at)) } }
        }
        p { a href={ "/events?tenant=" (url_encode(&t.name)) } { "Its events →" } }
        h2 { "Quotas" }
        @if quotas.is_empty() {
            p.muted #no-quotas { "No quota: limited by capacity only." }
        } @else {
            table.grid #quotas {
                thead { tr { th { "GPU model" } th { "class" } th.num { "at most GPUs" } } }
                tbody { @for q in &quotas { tr { td { (q.gpu_model) } td { (q.class) } td.num { (q.max_gpus) } } } }
            }
        }
        @if can_quota {
            form.filters #set-quota method="post" action={ (base) "/quota" } {
                input type="hidden" name="csrf" value=(session.csrf);
                label { "Quota: " select name="gpu_model" required { @for m in &models { option value=(m.name) { (m.name) } } } }
                label { " class " select name="class" aria-label="class" { @for c in ["on-demand", "spot", "reserved", "internal"] { option value=(c) { (c) } } } }
                label { " at most " input type="number" name="max_gpus" min="0" max="1000000" placeholder="GPUs (empty: no quota)"; }
                button type="submit" #set-quota-submit { "Set" }
            }
        }
        @if let Some(keys) = &keys {
            h2 { "API keys" }
            @if keys.items.is_empty() {
                p.muted #no-keys { "No keys." }
            } @else {
                table.grid #keys {
                    thead { tr { th { "name" } th { "role" } th { "prefix" } th { "created" } th { "last used" } th { "expires" } th { "revoked" } } }
                    tbody {
                        @for k in &keys.items {
                            tr {
                                td { (k.name) }
                                td { (k.role) }
                                td { code { (k.prefix) "…" } }
                                td { (ts(k.created_at)) }
                                td { (ts_opt(k.last_used_at)) }
                                td { (ts_opt(k.expires_at)) }
                                td {
                                    (ts_opt(k.revoked_at))
                                    @if can_keys && k.revoked_at.is_none() {
                                        form method="post" action={ (base) "/keys/" (k.id) "/revoke" } data-confirm={ "Revoke key " (k.name) "? It stops working at once." } {
                                            input type="hidden" name="csrf" value=(session.csrf);
                                            button.danger type="submit" id={ "revoke-" (k.name) } { "Revoke" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if can_keys {
            form.filters #create-key method="post" action={ (base) "/keys" } {
                input type="hidden" name="csrf" value=(session.csrf);
                input type="hidden" name="idem" value={ "console-" (neocloud_types::InstanceId::new()) };
                label { "New key: name " input type="text" name="name" required maxlength="100" placeholder="ci-deploy"; }
                label { " role " select name="role" { @for r in ["tenant-admin", "tenant-member"] { option value=(r) { (r) } } } }
                button type="submit" #create-key-submit { "Create" }
            }
        }
        h2 { "Invoices" }
        @if invoices.is_empty() {
            p.muted #no-invoices { "No invoices yet." }
        } @else {
            table.grid #tenant-invoices {
                thead { tr { th { "invoice" } th { "month" } th { "state" } th.num { "total" } } }
                tbody {
                    @for inv in &invoices {
                        tr {
                            td { a href={ "/invoices/" (url_encode(&inv.id)) } { code { (inv.id) } } }
                            td { (inv.month) }
                            td { (inv.state) }
                            td.num { (money(inv.total)) }
                        }
                    }
                }
            }
        }
    };
    let status = if error.is_some() {
        axum::http::StatusCode::BAD_REQUEST
    } else {
        axum::http::StatusCode::OK
    };
    Ok(Page::new(session, "tenants", format!("Tenant {}", t.name)).render_status(status, body))
}

#[derive(serde::Deserialize)]
pub struct GenerateForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    month: String,
    #[serde(default)]
    idem: String,
}

/// The form's one-time key, so that a double submit replays the first answer.
fn form_idem(session: &Session, what: &str, idem: &str) -> Option<Idempotency> {
    let key = idem.trim();
    (!key.is_empty() && key.len() <= 255).then(|| Idempotency {
        key: key.to_string(),
        fingerprint: auth::sha256_hex(
            format!("console {what}\n{}", session.principal.key_id).as_bytes(),
        ),
    })
}

/// Generates (or regenerates, while a draft) a tenant's invoice for a month.
pub async fn generate_invoice(
    State(st): State<Console>,
    session: Session,
    headers: HeaderMap,
    form: Result<axum::Form<GenerateForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, PageError> {
    let axum::Form(f) = form.map_err(|e| PageError::Invalid(e.body_text()))?;
    session.check_form(&headers, &f.csrf)?;
    let (tenant, month) = (f.tenant.trim(), f.month.trim());
    if tenant.is_empty() || month.is_empty() {
        return Err(PageError::Invalid(
            "choose a tenant and a month (YYYY-MM)".into(),
        ));
    }
    let idem = form_idem(&session, &format!("invoice {tenant} {month}"), &f.idem);
    let inv = st
        .svc
        .invoice_generate(&session.principal, tenant, month, idem.as_ref())
        .await?;
    Ok(Redirect::to(&format!("/invoices/{}", url_encode(&inv.value.id))).into_response())
}

#[derive(serde::Deserialize)]
pub struct FinalizeForm {
    #[serde(default)]
    csrf: String,
}

/// Finalizes a draft invoice: from then on it never changes.
pub async fn finalize_invoice(
    State(st): State<Console>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<axum::Form<FinalizeForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, PageError> {
    let axum::Form(f) = form.map_err(|e| PageError::Invalid(e.body_text()))?;
    session.check_form(&headers, &f.csrf)?;
    let inv = st
        .svc
        .invoice_finalize(&session.principal, &id, None)
        .await?;
    Ok(Redirect::to(&format!("/invoices/{}", url_encode(&inv.value.id))).into_response())
}

#[derive(serde::Deserialize)]
pub struct QuotaForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    gpu_model: String,
    #[serde(default)]
    class: String,
    #[serde(default)]
    max_gpus: String,
}

/// Sets (or, with no number, removes) one of a tenant's quotas.
pub async fn set_quota(
    State(st): State<Console>,
    session: Session,
    headers: HeaderMap,
    Path(name): Path<String>,
    form: Result<axum::Form<QuotaForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, PageError> {
    let axum::Form(f) = form.map_err(|e| PageError::Invalid(e.body_text()))?;
    session.check_form(&headers, &f.csrf)?;
    let class: Class = match f.class.parse() {
        Ok(c) => c,
        Err(_) => {
            return tenant_page(
                &st,
                &session,
                &name,
                Some("class: choose one of the list"),
                None,
            )
            .await;
        }
    };
    let max = f.max_gpus.trim();
    let max_gpus = if max.is_empty() {
        None
    } else {
        match max.parse::<u32>() {
            Ok(n) => Some(n),
            Err(_) => {
                let msg = format!("max_gpus: '{max}' is not a whole number of GPUs (0 to 1000000)");
                return tenant_page(&st, &session, &name, Some(&msg), None).await;
            }
        }
    };
    let req = SetQuota {
        tenant_id: name.clone(),
        gpu_model: f.gpu_model.trim().to_string(),
        class,
        max_gpus,
    };
    match st.svc.quota_set(&session.principal, req, None).await {
        Ok(_) => Ok(Redirect::to(&format!("/tenants/{}", url_encode(&name))).into_response()),
        Err(e) if e.code.http_status() == 400 => {
            tenant_page(&st, &session, &name, Some(&e.message), None).await
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(serde::Deserialize)]
pub struct KeyForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    idem: String,
}

/// Creates an API key for a tenant; the page shows its secret this once.
pub async fn create_key(
    State(st): State<Console>,
    session: Session,
    headers: HeaderMap,
    Path(name): Path<String>,
    form: Result<axum::Form<KeyForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, PageError> {
    let axum::Form(f) = form.map_err(|e| PageError::Invalid(e.body_text()))?;
    session.check_form(&headers, &f.csrf)?;
    let role: Role = match f.role.parse() {
        Ok(r) => r,
        Err(_) => {
            return tenant_page(
                &st,
                &session,
                &name,
                Some("role: choose one of the list"),
                None,
            )
            .await;
        }
    };
    let key_name = f.name.trim().to_string();
    let idem = form_idem(&session, &format!("key {name} {key_name} {role}"), &f.idem);
    let req = CreateApiKey {
        name: key_name.clone(),
        role,
        tenant_id: Some(name.clone()),
        expires_at: None,
        node: None,
    };
    match st
        .svc
        .api_key_create(&session.principal, req, idem.as_ref())
        .await
    {
        Ok(created) => match created.value.secret {
            Some(secret) => {
                tenant_page(&st, &session, &name, None, Some((&key_name, &secret))).await
            }
            // A replay: the secret was shown the first time and is not kept.
            None => Ok(Redirect::to(&format!("/tenants/{}", url_encode(&name))).into_response()),
        },
        Err(e) if e.code.http_status() == 400 || e.code.http_status() == 409 => {
            tenant_page(&st, &session, &name, Some(&e.message), None).await
        }
        Err(e) => Err(e.into()),
    }
}

/// Revokes a tenant's key at once.
pub async fn revoke_key(
    State(st): State<Console>,
    session: Session,
    headers: HeaderMap,
    Path((name, id)): Path<(String, String)>,
    form: Result<axum::Form<FinalizeForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, PageError> {
    let axum::Form(f) = form.map_err(|e| PageError::Invalid(e.body_text()))?;
    session.check_form(&headers, &f.csrf)?;
    st.svc.api_key_revoke(&session.principal, &id, None).await?;
    Ok(Redirect::to(&format!("/tenants/{}", url_encode(&name))).into_response())
}
