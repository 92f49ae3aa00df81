//! Tenancy: tenants, API keys, the audit trail.

use anyhow::Result;
use clap::Subcommand;
use neocloud_client::model::{CreateApiKey, CreateTenant, EventFilter, PageRequest, UpdateTenant};
use serde_json::Value;

use super::out::{Column, Cx, Ids, Names, Need, field, items, money_field, parse, record, table};

#[derive(Subcommand, Debug)]
pub(crate) enum TenantCmd {
    /// List tenants.
    List,
    /// Show one tenant (id or name).
    Show { tenant: String },
    /// Create a tenant (operator-admin).
    Create {
        /// Unique name: lowercase letters, digits and '-'.
        name: String,
        /// Display name.
        #[arg(long)]
        display_name: Option<String>,
        /// internal (the operator's lab) or external (a customer).
        #[arg(long, default_value = "external")]
        kind: String,
        /// Credit limit in US dollars, e.g. 250000.
        #[arg(long)]
        credit_limit: Option<String>,
        /// Makes a retry safe: the same key never creates twice.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Change a tenant.
    Update {
        /// Tenant id or name.
        tenant: String,
        /// New display name.
        #[arg(long)]
        display_name: Option<String>,
        /// active or suspended.
        #[arg(long)]
        status: Option<String>,
        /// New credit limit in US dollars; `none` removes it.
        #[arg(long)]
        credit_limit: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum KeyCmd {
    /// List keys (never their secrets).
    List {
        /// Only keys of this tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Show one key.
    Show { id: String },
    /// Create a key; its secret is printed once.
    Create {
        /// Label, e.g. ci-pipeline.
        #[arg(long)]
        name: String,
        /// operator-admin, operator-viewer, tenant-admin, tenant-member or node-agent.
        #[arg(long)]
        role: String,
        /// Tenant id or name (tenant roles).
        #[arg(long)]
        tenant: Option<String>,
        /// Node id or name a node-agent key speaks for. A node-agent key without --node is
        /// an enrollment key: agents register with it and each gets a key of its own node.
        #[arg(long)]
        node: Option<String>,
        /// Expiry, RFC 3339 (e.g. 2027-01-01T00:00:00Z).
        #[arg(long)]
        expires_at: Option<String>,
        /// Makes a retry safe: the same key never creates twice.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Revoke a key at once.
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
pub(crate) enum EventCmd {
    /// List audit events, newest first.
    List {
        /// Only events of this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Only events about this resource id.
        #[arg(long)]
        resource: Option<String>,
        /// Only actions starting with this, e.g. `tenant.`.
        #[arg(long)]
        action: Option<String>,
        /// Events to show (1-1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

/// `neocloud tenants …`.
pub(crate) async fn tenants(cx: &Cx<'_>, cmd: TenantCmd) -> Result<()> {
    let c = cx.client()?;
    let cols: &[Column] = &[
        ("NAME", &field("name")),
        ("KIND", &field("kind")),
        ("STATUS", &field("status")),
        ("CREDIT LIMIT $", &money_field("credit_limit")),
        ("ID", &field("id")),
    ];
    let ids = Ids::Field("id");
    match cmd {
        TenantCmd::List => {
            let list = neocloud_client::model::List {
                items: c.tenants_all().await?,
            };
            cx.show(&list, ids, |v, b| table(b, items(v), cols))
        }
        TenantCmd::Show { tenant } => cx.show(&c.tenant(&tenant).await?, ids, record),
        TenantCmd::Create {
            name,
            display_name,
            kind,
            credit_limit,
            idempotency_key,
        } => {
            let body = CreateTenant {
                name,
                display_name,
                kind: parse("--kind", &kind)?,
                credit_limit: credit_limit
                    .map(|l| parse("--credit-limit", &l))
                    .transpose()?,
            };
            let t = c.create_tenant(&body, idempotency_key.as_deref()).await?;
            cx.show(&t, ids, record)
        }
        TenantCmd::Update {
            tenant,
            display_name,
            status,
            credit_limit,
        } => {
            let body = UpdateTenant {
                display_name,
                status: status.map(|s| parse("--status", &s)).transpose()?,
                credit_limit: match credit_limit.as_deref() {
                    None => None,
                    Some("none") => Some(None),
                    Some(l) => Some(Some(parse("--credit-limit", l)?)),
                },
            };
            cx.show(&c.update_tenant(&tenant, &body).await?, ids, record)
        }
    }
}

/// `neocloud keys …`.
pub(crate) async fn keys(cx: &Cx<'_>, cmd: KeyCmd) -> Result<()> {
    let c = cx.client()?;
    let ids = Ids::Field("id");
    match cmd {
        KeyCmd::List { tenant } => {
            let list = neocloud_client::model::List {
                items: c.api_keys_all(tenant.as_deref()).await?,
            };
            let names = Names::load(
                cx,
                &c,
                Need {
                    tenants: true,
                    ..Need::default()
                },
            )
            .await;
            cx.show(&list, ids, |v, b| {
                table(
                    b,
                    items(v),
                    &[
                        ("ID", &field("id")),
                        ("NAME", &field("name")),
                        ("ROLE", &field("role")),
                        ("TENANT", &names.field("tenant_id")),
                        ("PREFIX", &field("prefix")),
                        ("EXPIRES", &field("expires_at")),
                        ("REVOKED", &field("revoked_at")),
                        ("LAST USED", &field("last_used_at")),
                    ],
                )
            })
        }
        KeyCmd::Show { id } => cx.show(&c.api_key(&id).await?, ids, record),
        KeyCmd::Create {
            name,
            role,
            tenant,
            node,
            expires_at,
            idempotency_key,
        } => {
            let body = CreateApiKey {
                name,
                role: parse("--role", &role)?,
                tenant_id: tenant,
                expires_at: expires_at.map(|e| parse("--expires-at", &e)).transpose()?,
                node,
            };
            let k = c.create_api_key(&body, idempotency_key.as_deref()).await?;
            // A script asking for ids of a new key wants what authenticates: the secret.
            cx.show(&k, Ids::Field("secret"), |v, b| {
                record(v, b);
            })?;
            if k.secret.is_some() {
                cx.hint("\nStore the secret now: it is not shown again.");
            }
            Ok(())
        }
        KeyCmd::Revoke { id } => cx.show(&c.revoke_api_key(&id).await?, ids, record),
    }
}

/// `neocloud events …`.
pub(crate) async fn events(cx: &Cx<'_>, cmd: EventCmd) -> Result<()> {
    let c = cx.client()?;
    let EventCmd::List {
        tenant,
        resource,
        action,
        limit,
    } = cmd;
    let filter = EventFilter {
        tenant,
        resource_id: resource,
        action,
    };
    let page = c.events(&filter, &PageRequest::first(limit)).await?;
    let names = Names::load(
        cx,
        &c,
        Need {
            tenants: true,
            keys: true,
            sites: false,
        },
    )
    .await;
    let resource = |v: &Value| {
        let id = field("resource_id")(v);
        let name = names.of(v, "resource_id");
        if name == id {
            id
        } else {
            format!("{name} ({id})")
        }
    };
    cx.show(&page, Ids::Field("id"), |v, b| {
        table(
            b,
            items(v),
            &[
                ("AT", &field("at")),
                ("ACTION", &field("action")),
                ("RESOURCE", &resource),
                ("TENANT", &names.field("tenant_id")),
                ("ACTOR KEY", &names.field("actor_key_id")),
            ],
        )
    })
}
