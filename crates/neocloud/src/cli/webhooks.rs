//! Webhooks: URLs subscribed to events, and their delivery logs.

use anyhow::Result;
use clap::Subcommand;
use neocloud_client::model::{CreateWebhook, List, PageRequest};
use serde_json::Value;

use super::out::{Cx, Ids, Names, Need, field, items, parse, record, table};

#[derive(Subcommand, Debug)]
pub(crate) enum WebhookCmd {
    /// Subscribe a URL to events. The signing secret is printed once.
    ///
    /// Each event is POSTed as JSON ({"webhook_id", "delivery_id", "event"}) with the
    /// header `Neocloud-Signature: t=UNIX,v1=HEX`, HEX being the HMAC-SHA256 of
    /// "UNIX.BODY" keyed with the secret. Deliveries are retried with backoff (5 s doubling
    /// to 5 min) for 24 hours, one at a time and in order. With -q only the id is
    /// printed: use -o json to keep the secret too.
    ///
    /// Examples:
    ///   neocloud webhooks create https://hooks.example.com/neocloud --event 'instance.*'
    ///   neocloud webhooks create https://ops.example.com/hook --tenant acme-ai \
    ///       --event instance.preempting --event instance.node_replaced
    #[command(verbatim_doc_comment)]
    Create {
        /// Where events are POSTed: an http:// or https:// URL. Loopback and private
        /// addresses are refused unless the server runs with --webhook-allow-private.
        #[arg(value_name = "URL")]
        endpoint: String,
        /// An event pattern, repeatable: an action (instance.failed), every action of a
        /// kind (instance.*), or every event (*, the default). Kinds: api_key, contract,
        /// fleet, gpu_model, health_rule, instance, invoice, maintenance, node, price,
        /// quota, site, ssh_key, tenant, webhook.
        #[arg(long = "event", value_name = "PATTERN")]
        events: Vec<String>,
        /// Tenant id or name whose events it receives. Tenant keys subscribe their own
        /// tenant; an operator key without --tenant creates an operator webhook, which
        /// receives every event.
        #[arg(long)]
        tenant: Option<String>,
        /// Makes a retry safe: the same key never creates twice.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// List webhooks (never their secrets), with the deliveries each has pending.
    List {
        /// Only this tenant's (operator keys).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Show one webhook.
    #[command(visible_alias = "show")]
    Get {
        /// Webhook id (whk_…).
        id: String,
    },
    /// Delete a webhook and its delivery log; nothing more is sent to it.
    Delete {
        /// Webhook id (whk_…).
        id: String,
    },
    /// Send a webhook.test event to one webhook (after what it has pending), to check the
    /// receiver and its signature check; `deliveries` shows how it went.
    Test {
        /// Webhook id (whk_…).
        id: String,
    },
    /// A webhook's delivery log, newest event first: state, attempts, the last status or
    /// error, and the next attempt of what is pending.
    Deliveries {
        /// Webhook id (whk_…).
        id: String,
        /// Only deliveries in this state: pending, delivered or failed (given up).
        #[arg(long)]
        state: Option<String>,
        /// Deliveries to show (1-1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

/// `neocloud webhooks …`.
pub(crate) async fn webhooks(cx: &Cx<'_>, cmd: WebhookCmd) -> Result<()> {
    let c = cx.client()?;
    let ids = Ids::Field("id");
    match cmd {
        WebhookCmd::Create {
            endpoint,
            events,
            tenant,
            idempotency_key,
        } => {
            let body = CreateWebhook {
                tenant_id: tenant,
                url: endpoint,
                events: (!events.is_empty()).then_some(events),
            };
            let w = c.create_webhook(&body, idempotency_key.as_deref()).await?;
            cx.show(&w, ids, record)?;
            if w.secret.is_some() {
                cx.hint(
                    "\nStore the secret now: it is not shown again. Verify each delivery's \
                     Neocloud-Signature with it.",
                );
            }
            Ok(())
        }
        WebhookCmd::List { tenant } => {
            let list = List {
                items: c.webhooks(tenant.as_deref()).await?,
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
            let tenant = |v: &Value| {
                if v.get("tenant_id").is_none_or(Value::is_null) {
                    "(operator)".to_string()
                } else {
                    names.field("tenant_id")(v)
                }
            };
            cx.show(&list, ids, |v, b| {
                table(
                    b,
                    items(v),
                    &[
                        ("ID", &field("id")),
                        ("TENANT", &tenant),
                        ("URL", &field("url")),
                        ("EVENTS", &field("events")),
                        ("PENDING", &field("pending_deliveries")),
                        ("CREATED", &field("created_at")),
                    ],
                )
            })
        }
        WebhookCmd::Get { id } => cx.show(&c.webhook(&id).await?, ids, record),
        WebhookCmd::Delete { id } => cx.show(&c.delete_webhook(&id).await?, ids, record),
        WebhookCmd::Test { id } => {
            let e = c.test_webhook(&id).await?;
            cx.show(&e, ids, record)?;
            cx.hint(&format!(
                "\nQueued. See how it went: neocloud webhooks deliveries {id}"
            ));
            Ok(())
        }
        WebhookCmd::Deliveries { id, state, limit } => {
            let state = state.map(|s| parse("--state", &s)).transpose()?;
            let page = c
                .webhook_deliveries(&id, state, &PageRequest::first(limit))
                .await?;
            let outcome = |v: &Value| {
                let status = v.get("last_status").filter(|s| !s.is_null());
                let error = v.get("last_error").and_then(Value::as_str);
                match (status, error) {
                    (Some(s), None) => s.to_string(),
                    (_, Some(e)) => e.to_string(),
                    (None, None) => "-".to_string(),
                }
            };
            cx.show(&page, ids, |v, b| {
                table(
                    b,
                    items(v),
                    &[
                        ("ID", &field("id")),
                        ("EVENT", &field("event_action")),
                        ("STATE", &field("state")),
                        ("ATTEMPTS", &field("attempts")),
                        ("LAST", &outcome),
                        ("NEXT ATTEMPT", &field("next_attempt_at")),
                        ("QUEUED", &field("created_at")),
                    ],
                )
            })
        }
    }
}
