//! Webhooks: subscriptions, the deliveries queued for them, and reading events in the order
//! they committed.

use neocloud_types::{
    Event, EventId, TenantId, Timestamp, Webhook, WebhookDelivery, WebhookDeliveryId,
    WebhookDeliveryState, WebhookId,
};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::tenancy::{ROWS_PER_STATEMENT, placeholders};
use crate::{Page, Result, Store, StoreError, WriteTx, enum_col, id_col, opt_id_col, u32_col};

/// A webhook to insert.
#[derive(Clone, Debug)]
pub struct NewWebhook {
    /// Its id.
    pub id: WebhookId,
    /// Its tenant; none for an operator webhook.
    pub tenant_id: Option<TenantId>,
    /// Where deliveries go.
    pub url: String,
    /// The signing secret.
    pub secret: String,
    /// Action patterns.
    pub events: Vec<String>,
}

/// A webhook as the dispatcher matches events against it.
#[derive(Clone, Debug)]
pub struct WebhookTarget {
    /// Its id.
    pub id: WebhookId,
    /// Its tenant; none for an operator webhook.
    pub tenant_id: Option<TenantId>,
    /// Action patterns.
    pub events: Vec<String>,
    /// It receives only events numbered after this.
    pub after_seq: i64,
}

/// What a webhook is matched on: an event's number, tenant and action.
#[derive(Clone, Debug)]
pub struct EventHead {
    /// The event.
    pub id: EventId,
    /// Its number (commit order).
    pub seq: i64,
    /// Its tenant.
    pub tenant_id: Option<TenantId>,
    /// What happened.
    pub action: String,
    /// The resource it is about.
    pub resource_id: String,
}

/// A delivery due now: the oldest pending one of its webhook.
#[derive(Clone, Debug)]
pub struct DueDelivery {
    /// The delivery.
    pub id: WebhookDeliveryId,
    /// Its webhook.
    pub webhook_id: WebhookId,
    /// Where it goes.
    pub url: String,
    /// What it is signed with.
    pub secret: String,
    /// The event it carries.
    pub event_id: EventId,
    /// Attempts made before this one.
    pub attempts: u32,
    /// When it was queued.
    pub created_at: Timestamp,
}

/// How one attempt ended, as written to its delivery.
#[derive(Clone, Debug)]
pub struct DeliveryUpdate {
    /// The state it is in now.
    pub state: WebhookDeliveryState,
    /// The next attempt, while pending.
    pub next_attempt_at: Option<Timestamp>,
    /// The status the receiver answered.
    pub status: Option<u16>,
    /// What went wrong.
    pub error: Option<String>,
}

const HOOK_COLS: &str = "w.id, w.tenant_id, w.url, w.events, w.created_at,
    (SELECT COUNT(*) FROM webhook_deliveries d
     WHERE d.webhook_id = w.id AND d.state = 'pending') AS pending";

fn events_col(r: &AnyRow) -> Result<Vec<String>> {
    let s: String = r.try_get("events")?;
    serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(format!("webhook events: {e}")))
}

fn hook_from_row(r: &AnyRow) -> Result<Webhook> {
    let pending: i64 = r.try_get("pending")?;
    Ok(Webhook {
        id: id_col(r, "id")?,
        tenant_id: opt_id_col(r, "tenant_id")?,
        url: r.try_get("url")?,
        events: events_col(r)?,
        created_at: Timestamp::from_micros(r.try_get("created_at")?),
        pending_deliveries: u64::try_from(pending).unwrap_or(0),
    })
}

const DELIVERY_COLS: &str = "id, webhook_id, event_id, event_seq, event_action, state, attempts,
    next_attempt_at, last_attempt_at, last_status, last_error, created_at, finished_at";

fn delivery_from_row(r: &AnyRow) -> Result<WebhookDelivery> {
    let ts = |c: &str| -> Result<Option<Timestamp>> {
        Ok(r.try_get::<Option<i64>, _>(c)?.map(Timestamp::from_micros))
    };
    let status = r
        .try_get::<Option<i64>, _>("last_status")?
        .map(|s| u16::try_from(s).map_err(|_| StoreError::Corrupt(format!("last_status: {s}"))))
        .transpose()?;
    Ok(WebhookDelivery {
        id: id_col(r, "id")?,
        webhook_id: id_col(r, "webhook_id")?,
        event_id: id_col(r, "event_id")?,
        event_action: r.try_get("event_action")?,
        state: enum_col(r, "state")?,
        attempts: u32_col(r, "attempts")?,
        next_attempt_at: ts("next_attempt_at")?,
        last_attempt_at: ts("last_attempt_at")?,
        last_status: status,
        last_error: r.try_get("last_error")?,
        created_at: Timestamp::from_micros(r.try_get("created_at")?),
        finished_at: ts("finished_at")?,
    })
}

impl Store {
    /// Inserts a webhook. It receives the events committed after this transaction's.
    pub async fn webhook_insert(tx: &mut WriteTx, w: &NewWebhook) -> Result<Webhook> {
        let after_seq = Self::event_seq_last(tx).await?;
        let now = tx.now();
        let events = serde_json::to_string(&w.events)
            .map_err(|e| StoreError::Invalid(format!("webhook events: {e}")))?;
        sqlx::query(
            "INSERT INTO webhooks (id, tenant_id, url, secret, events, after_seq, next_attempt_at,
             created_at) VALUES ($1, $2, $3, $4, $5, $6, NULL, $7)",
        )
        .bind(w.id.to_string())
        .bind(w.tenant_id.map(|t| t.to_string()))
        .bind(&w.url)
        .bind(&w.secret)
        .bind(events)
        .bind(after_seq)
        .bind(now.micros())
        .execute(tx.conn())
        .await?;
        Ok(Webhook {
            id: w.id,
            tenant_id: w.tenant_id,
            url: w.url.clone(),
            events: w.events.clone(),
            created_at: now,
            pending_deliveries: 0,
        })
    }

    /// Webhooks, oldest first: one tenant's (`Some`), or every one, operator webhooks
    /// included (`None`).
    pub async fn webhook_list(&self, tenant: Option<TenantId>) -> Result<Vec<Webhook>> {
        let rows = sqlx::query(&format!(
            "SELECT {HOOK_COLS} FROM webhooks w
             WHERE ($1 = '' OR w.tenant_id = $1) ORDER BY w.id"
        ))
        .bind(tenant.map(|t| t.to_string()).unwrap_or_default())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(hook_from_row).collect()
    }

    /// How many webhooks a tenant has (`Some`), or the operator (`None`).
    pub async fn webhook_count(&self, tenant: Option<TenantId>) -> Result<u64> {
        let row = match tenant {
            Some(t) => {
                sqlx::query("SELECT COUNT(*) FROM webhooks WHERE tenant_id = $1")
                    .bind(t.to_string())
                    .fetch_one(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("SELECT COUNT(*) FROM webhooks WHERE tenant_id IS NULL")
                    .fetch_one(&self.pool)
                    .await?
            }
        };
        let n: i64 = row.try_get(0)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// One webhook.
    pub async fn webhook_get(&self, id: WebhookId) -> Result<Webhook> {
        let row = sqlx::query(&format!(
            "SELECT {HOOK_COLS} FROM webhooks w WHERE w.id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => hook_from_row(&r),
            None => Err(StoreError::NotFound {
                kind: "webhook",
                id: id.to_string(),
            }),
        }
    }

    /// Deletes a webhook and its deliveries.
    pub async fn webhook_delete(tx: &mut WriteTx, id: WebhookId) -> Result<()> {
        sqlx::query("DELETE FROM webhook_deliveries WHERE webhook_id = $1")
            .bind(id.to_string())
            .execute(tx.conn())
            .await?;
        sqlx::query("DELETE FROM webhooks WHERE id = $1")
            .bind(id.to_string())
            .execute(tx.conn())
            .await?;
        Ok(())
    }

    /// Whether any webhook exists.
    pub async fn webhook_any(&self) -> Result<bool> {
        Ok(sqlx::query("SELECT id FROM webhooks LIMIT 1")
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }

    /// Every webhook, as events are matched against them.
    pub async fn webhook_targets(tx: &mut WriteTx) -> Result<Vec<WebhookTarget>> {
        let rows = sqlx::query("SELECT id, tenant_id, events, after_seq FROM webhooks ORDER BY id")
            .fetch_all(tx.conn())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(WebhookTarget {
                    id: id_col(r, "id")?,
                    tenant_id: opt_id_col(r, "tenant_id")?,
                    events: events_col(r)?,
                    after_seq: r.try_get("after_seq")?,
                })
            })
            .collect()
    }

    /// The number of the last event committed (0 when none has one).
    pub async fn event_seq_max(&self) -> Result<i64> {
        let row = sqlx::query("SELECT CAST(COALESCE(MAX(seq), 0) AS BIGINT) FROM events")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Up to `limit` events numbered after `seq`, in commit order.
    pub async fn event_heads_after(
        tx: &mut WriteTx,
        seq: i64,
        limit: u32,
    ) -> Result<Vec<EventHead>> {
        let rows = sqlx::query(
            "SELECT id, seq, tenant_id, action, resource_id FROM events
             WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(seq)
        .bind(i64::from(limit))
        .fetch_all(tx.conn())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(EventHead {
                    id: id_col(r, "id")?,
                    seq: r.try_get("seq")?,
                    tenant_id: opt_id_col(r, "tenant_id")?,
                    action: r.try_get("action")?,
                    resource_id: r.try_get("resource_id")?,
                })
            })
            .collect()
    }

    /// One event.
    pub async fn event_get(&self, id: EventId) -> Result<Event> {
        let row = sqlx::query(
            "SELECT id, at, actor_key_id, tenant_id, action, resource_kind, resource_id,
                    before_json, after_json
             FROM events WHERE id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else {
            return Err(StoreError::NotFound {
                kind: "event",
                id: id.to_string(),
            });
        };
        let json = |c: &str| -> Result<Option<serde_json::Value>> {
            let s: Option<String> = r.try_get(c)?;
            s.map(|s| serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(e.to_string())))
                .transpose()
        };
        Ok(Event {
            id: id_col(&r, "id")?,
            at: Timestamp::from_micros(r.try_get("at")?),
            actor_key_id: opt_id_col(&r, "actor_key_id")?,
            tenant_id: opt_id_col(&r, "tenant_id")?,
            action: r.try_get("action")?,
            resource_kind: r.try_get("resource_kind")?,
            resource_id: r.try_get("resource_id")?,
            before: json("before_json")?,
            after: json("after_json")?,
        })
    }

    /// Queues deliveries of events to webhooks, pending and due now; a webhook with
    /// nothing pending before is due now.
    pub async fn webhook_deliveries_queue(
        tx: &mut WriteTx,
        rows: &[(WebhookId, &EventHead)],
    ) -> Result<()> {
        let now = tx.now().micros();
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_seq,
                 event_action, state, attempts, next_attempt_at, created_at) VALUES {}",
                placeholders(chunk.len(), 9, tx.numbered)
            );
            let mut q = sqlx::query(&sql);
            for (hook, e) in chunk {
                q = q
                    .bind(WebhookDeliveryId::new().to_string())
                    .bind(hook.to_string())
                    .bind(e.id.to_string())
                    .bind(e.seq)
                    .bind(&e.action)
                    .bind(WebhookDeliveryState::Pending.as_str())
                    .bind(0_i64)
                    .bind(now)
                    .bind(now);
            }
            q.execute(tx.conn()).await?;
        }
        let mut hooks: Vec<WebhookId> = rows.iter().map(|(h, _)| *h).collect();
        hooks.sort();
        hooks.dedup();
        for h in hooks {
            sqlx::query(
                "UPDATE webhooks SET next_attempt_at = $1 WHERE id = $2 AND next_attempt_at IS NULL",
            )
            .bind(now)
            .bind(h.to_string())
            .execute(tx.conn())
            .await?;
        }
        Ok(())
    }

    /// Up to `limit` deliveries due at `now`: for each webhook whose turn it is, its oldest
    /// pending delivery (a webhook's events go out one at a time, in order).
    pub async fn webhook_due(&self, now: Timestamp, limit: u32) -> Result<Vec<DueDelivery>> {
        let rows = sqlx::query(
            "SELECT d.id, d.webhook_id, w.url, w.secret, d.event_id, d.attempts, d.created_at
             FROM webhooks w JOIN webhook_deliveries d ON d.webhook_id = w.id
             WHERE w.next_attempt_at IS NOT NULL AND w.next_attempt_at <= $1
               AND d.state = 'pending'
               AND d.event_seq = (SELECT MIN(x.event_seq) FROM webhook_deliveries x
                                  WHERE x.webhook_id = w.id AND x.state = 'pending')
             ORDER BY w.next_attempt_at, w.id LIMIT $2",
        )
        .bind(now.micros())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DueDelivery {
                    id: id_col(r, "id")?,
                    webhook_id: id_col(r, "webhook_id")?,
                    url: r.try_get("url")?,
                    secret: r.try_get("secret")?,
                    event_id: id_col(r, "event_id")?,
                    attempts: u32_col(r, "attempts")?,
                    created_at: Timestamp::from_micros(r.try_get("created_at")?),
                })
            })
            .collect()
    }

    /// Writes how an attempt of a pending delivery ended (nothing when it is no longer
    /// pending: its webhook was deleted meanwhile).
    pub async fn webhook_delivery_update(
        tx: &mut WriteTx,
        id: WebhookDeliveryId,
        u: &DeliveryUpdate,
    ) -> Result<()> {
        let now = tx.now().micros();
        let finished = (u.state != WebhookDeliveryState::Pending).then_some(now);
        sqlx::query(
            "UPDATE webhook_deliveries SET state = $1, attempts = attempts + 1,
                 next_attempt_at = $2, last_attempt_at = $3, last_status = $4, last_error = $5,
                 finished_at = $6
             WHERE id = $7 AND state = 'pending'",
        )
        .bind(u.state.as_str())
        .bind(u.next_attempt_at.map(|t| t.micros()))
        .bind(now)
        .bind(u.status.map(i64::from))
        .bind(u.error.clone())
        .bind(finished)
        .bind(id.to_string())
        .execute(tx.conn())
        .await?;
        Ok(())
    }

    /// Gives up every pending delivery of a webhook queued before `before`.
    pub async fn webhook_deliveries_give_up(
        tx: &mut WriteTx,
        webhook: WebhookId,
        before: Timestamp,
        why: &str,
    ) -> Result<u64> {
        let now = tx.now().micros();
        let r = sqlx::query(
            "UPDATE webhook_deliveries SET state = 'failed', next_attempt_at = NULL,
                 last_error = COALESCE(last_error, $1), finished_at = $2
             WHERE webhook_id = $3 AND state = 'pending' AND created_at < $4",
        )
        .bind(why)
        .bind(now)
        .bind(webhook.to_string())
        .bind(before.micros())
        .execute(tx.conn())
        .await?;
        Ok(r.rows_affected())
    }

    /// When a webhook's next delivery is due: `at`, or never while nothing is pending.
    pub async fn webhook_schedule(
        tx: &mut WriteTx,
        webhook: WebhookId,
        at: Timestamp,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE webhooks SET next_attempt_at = CASE WHEN EXISTS (
                 SELECT 1 FROM webhook_deliveries d
                 WHERE d.webhook_id = webhooks.id AND d.state = 'pending') THEN $1 ELSE NULL END
             WHERE id = $2",
        )
        .bind(at.micros())
        .bind(webhook.to_string())
        .execute(tx.conn())
        .await?;
        Ok(())
    }

    /// A webhook's deliveries, newest event first, optionally in one state.
    pub async fn webhook_delivery_list(
        &self,
        webhook: WebhookId,
        state: Option<WebhookDeliveryState>,
        cursor: Option<i64>,
        limit: u32,
    ) -> Result<Page<WebhookDelivery>> {
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLS} FROM webhook_deliveries
             WHERE webhook_id = $1 AND ($2 = '' OR state = $2) AND ($3 < 0 OR event_seq < $3)
             ORDER BY event_seq DESC LIMIT $4"
        ))
        .bind(webhook.to_string())
        .bind(state.map(|s| s.as_str()).unwrap_or(""))
        .bind(cursor.unwrap_or(-1))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let limit = limit as usize;
        let more = rows.len() > limit;
        let rows = &rows[..rows.len().min(limit)];
        let items = rows
            .iter()
            .map(delivery_from_row)
            .collect::<Result<Vec<_>>>()?;
        let next_cursor = match rows.last() {
            Some(r) if more => Some(r.try_get::<i64, _>("event_seq")?.to_string()),
            _ => None,
        };
        Ok(Page { items, next_cursor })
    }

    /// How many deliveries are pending, across webhooks.
    pub async fn webhook_pending(&self) -> Result<u64> {
        let row = sqlx::query("SELECT COUNT(*) FROM webhook_deliveries WHERE state = 'pending'")
            .fetch_one(&self.pool)
            .await?;
        let n: i64 = row.try_get(0)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Forgets deliveries that ended before `before`.
    pub async fn webhook_deliveries_prune(tx: &mut WriteTx, before: Timestamp) -> Result<u64> {
        let r = sqlx::query(
            "DELETE FROM webhook_deliveries WHERE finished_at IS NOT NULL AND finished_at < $1",
        )
        .bind(before.micros())
        .execute(tx.conn())
        .await?;
        Ok(r.rows_affected())
    }
}
