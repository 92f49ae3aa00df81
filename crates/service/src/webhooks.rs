//! Webhooks: tenants and the operator subscribe URLs to events.
//!
//! Every change already writes its audit event in its own transaction, numbered in commit
//! order. The dispatcher (`neocloud_api::webhooks`, started by `serve` on the leader) asks
//! this module to fan new events out to the webhooks that match them
//! ([`Service::webhook_fanout`]: one pending delivery per event and webhook), for the
//! deliveries due now ([`Service::webhook_due`]: the oldest pending one of each webhook, so a
//! webhook's events go out one at a time and in order), and records how each attempt ended
//! ([`Service::webhook_record`]: delivered, retried with backoff, or given up after 24 hours).
//! The HTTP call itself happens outside any lock or transaction.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use hmac::{Hmac, Mac};
use neocloud_store::{DeliveryUpdate, DueDelivery, EventHead, NewWebhook, Store, WebhookTarget};
use neocloud_types::{
    Event, Webhook, WebhookDelivery, WebhookDeliveryState, WebhookId, WebhookPayload,
};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use utoipa::ToSchema;

use crate::error::OrNotFound;
use crate::{
    Action, Created, Error, Idempotency, Page, Principal, Result, Service, auth, page_limit,
};

/// Longest webhook URL accepted.
pub const MAX_URL_LEN: usize = 2048;
/// Most event patterns one webhook names.
pub const MAX_PATTERNS: usize = 32;
/// Most webhooks a tenant has (and the operator has of its own).
pub const MAX_WEBHOOKS: u64 = 25;
/// A delivery still failing this long after its event is given up.
pub const GIVE_UP_SECS: i64 = 24 * 3600;
/// The wait after the first failed attempt; it doubles after each one …
pub const BACKOFF_FIRST_SECS: i64 = 5;
/// … up to this.
pub const BACKOFF_MAX_SECS: i64 = 300;
/// How long the log keeps deliveries that ended (delivered or given up).
pub const KEEP_FINISHED_SECS: i64 = 7 * 24 * 3600;
/// The action of the event `POST /v1/webhooks/{id}/test` queues.
pub const TEST_ACTION: &str = "webhook.test";

/// Events a batch of the fan-out reads at most.
const FANOUT_BATCH: u32 = 500;
/// Where the fan-out keeps the number of the last event it read.
const CURSOR_KEY: &str = "webhooks.fanout_seq";

/// The kinds of resource events are about: the part of an action before the dot.
pub const EVENT_KINDS: &[&str] = &[
    "api_key",
    "contract",
    "fleet",
    "gpu_model",
    "health_rule",
    "instance",
    "invoice",
    "maintenance",
    "node",
    "price",
    "quota",
    "site",
    "ssh_key",
    "tenant",
    "webhook",
];

/// Body of `POST /v1/webhooks`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// Tenant id or name whose events it receives. Tenant keys subscribe their own tenant
    /// and may leave it out; an operator key that leaves it out creates an operator webhook,
    /// which receives every event of the control plane.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Where events are POSTed: an `http://` or `https://` URL of at most 2048 characters,
    /// without user name or password. Loopback and private addresses are refused unless
    /// the server runs with `--webhook-allow-private`.
    pub url: String,
    /// Which events (1-32 patterns, default `["*"]`): an action (`instance.failed`), every
    /// action of a kind (`instance.*`), or everything (`*`). Kinds: `api_key`, `contract`,
    /// `fleet`, `gpu_model`, `health_rule`, `instance`, `invoice`, `maintenance`, `node`,
    /// `price`, `quota`, `site`, `ssh_key`, `tenant`, `webhook`.
    #[serde(default)]
    pub events: Option<Vec<String>>,
}

/// Response of `POST /v1/webhooks`: the webhook and, this once, its signing secret.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookCreated {
    /// The webhook as it will be listed.
    #[serde(flatten)]
    pub webhook: Webhook,
    /// The key of the HMAC-SHA256 signature of every delivery (`Neocloud-Signature`).
    /// Shown only in the first response: an idempotent replay returns `null` here.
    pub secret: Option<String>,
}

/// How one attempt to deliver ended, as the dispatcher saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The receiver answered 2xx.
    Delivered {
        /// Its status.
        status: u16,
    },
    /// It did not: another status, a timeout, a refused connection.
    Failed {
        /// The status, when it answered.
        status: Option<u16>,
        /// What went wrong.
        error: String,
    },
}

/// What the dispatcher needs to know of the operator's settings.
#[derive(Debug, Default)]
pub(crate) struct Settings {
    /// Deliver to loopback and private addresses too.
    allow_private: AtomicBool,
}

/// Whether a webhook may be delivered to `ip` when private addresses are not allowed: not
/// loopback, private, link-local (cloud metadata services live there), shared (carrier
/// NAT), multicast, unspecified or reserved.
pub fn public_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return public_address(IpAddr::V4(v4));
            }
            let s = v6.segments();
            // NAT64 (64:ff9b::/96) reaches the IPv4 address in its last 32 bits.
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6].iter().all(|x| *x == 0) {
                let v4 = std::net::Ipv4Addr::from((u32::from(s[6]) << 16) | u32::from(s[7]));
                return public_address(IpAddr::V4(v4));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8))
        }
    }
}

/// Checks a webhook URL: its scheme, length, credentials, and (unless `allow_private`) that
/// its host is not a loopback or private address or `localhost`. Host names are resolved
/// when delivering, and refused then if they resolve to such an address.
pub fn check_url(raw: &str, allow_private: bool) -> Result<String> {
    if raw.is_empty() || raw.len() > MAX_URL_LEN {
        return Err(Error::invalid(format!(
            "url must be 1-{MAX_URL_LEN} characters"
        )));
    }
    let u = url::Url::parse(raw)
        .map_err(|e| Error::invalid(format!("url is not a valid URL ({e})")))?;
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err(Error::invalid(format!(
            "url must be http:// or https://, not {}://",
            u.scheme()
        )));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(Error::invalid(
            "url must not carry a user name or password: webhooks show their URL in lists \
             and the audit trail; verify deliveries by their signature instead",
        ));
    }
    let private = match u.host() {
        None => return Err(Error::invalid("url has no host")),
        Some(url::Host::Ipv4(ip)) => !public_address(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => !public_address(IpAddr::V6(ip)),
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
    };
    if private && !allow_private {
        return Err(Error::invalid(format!(
            "url points at a loopback or private address ({}); the operator allows those \
             only with serve --webhook-allow-private",
            u.host_str().unwrap_or_default()
        )));
    }
    Ok(u.to_string())
}

/// Checks event patterns; none given means every event.
pub fn check_patterns(events: Option<Vec<String>>) -> Result<Vec<String>> {
    let events = events.unwrap_or_else(|| vec!["*".to_string()]);
    if events.is_empty() || events.len() > MAX_PATTERNS {
        return Err(Error::invalid(format!(
            "events must name 1-{MAX_PATTERNS} patterns (or be left out for every event)"
        )));
    }
    let mut out: Vec<String> = Vec::with_capacity(events.len());
    for e in events {
        check_pattern(&e)?;
        if !out.contains(&e) {
            out.push(e);
        }
    }
    Ok(out)
}

fn check_pattern(p: &str) -> Result<()> {
    if p == "*" {
        return Ok(());
    }
    let shown: String = p.chars().take(80).collect();
    let Some((kind, action)) = p.split_once('.') else {
        return Err(Error::invalid(format!(
            "events: '{shown}' is not an event pattern: name an action (instance.failed), a \
             kind's every action (instance.*) or every event (*)"
        )));
    };
    if !EVENT_KINDS.contains(&kind) {
        return Err(Error::invalid(format!(
            "events: unknown event kind '{}' in '{shown}'; kinds: {}",
            kind.chars().take(40).collect::<String>(),
            EVENT_KINDS.join(", ")
        )));
    }
    let word = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    if action == "*" || word(action) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "events: '{shown}' is not an event pattern: after '{kind}.' comes an action of \
             lowercase letters, digits and '_', or '*'"
        )))
    }
}

/// Whether `pattern` names `action`.
pub fn pattern_matches(pattern: &str, action: &str) -> bool {
    match pattern.strip_suffix(".*") {
        _ if pattern == "*" => true,
        Some(kind) => action
            .strip_prefix(kind)
            .is_some_and(|rest| rest.starts_with('.')),
        None => pattern == action,
    }
}

/// Whether a webhook receives an event: one committed after the webhook was made, of its
/// tenant (an operator webhook receives every tenant's and the operator's own), matching
/// its patterns. A test event goes to the webhook it was made for, and only to it.
pub(crate) fn receives(w: &WebhookTarget, e: &EventHead) -> bool {
    if e.seq <= w.after_seq {
        return false;
    }
    if e.action == TEST_ACTION {
        return e.resource_id == w.id.to_string();
    }
    if w.tenant_id.is_some() && w.tenant_id != e.tenant_id {
        return false;
    }
    w.events.iter().any(|p| pattern_matches(p, &e.action))
}

/// The wait before the attempt after `attempts` failed ones: 5 s, doubling, at most 5 min.
pub fn backoff_secs(attempts: u32) -> i64 {
    let doublings = attempts.saturating_sub(1).min(16);
    (BACKOFF_FIRST_SECS << doublings).min(BACKOFF_MAX_SECS)
}

/// The `Neocloud-Signature` header of a delivery of `body` signed at unix time `t`:
/// `t=<t>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed with the secret>`.
pub fn signature_header(secret: &str, t: i64, body: &[u8]) -> String {
    format!("t={t},v1={}", signature(secret, t, body))
}

/// The hex HMAC-SHA256 of `"<t>.<body>"` keyed with `secret`.
pub fn signature(secret: &str, t: i64, body: &[u8]) -> String {
    // HMAC takes a key of any length; this never fails.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn mint_secret() -> Result<String> {
    let mut buf = [0u8; 24];
    getrandom::fill(&mut buf).map_err(|e| Error::internal(format!("no randomness: {e}")))?;
    Ok(format!(
        "whsec_{}",
        buf.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

impl Service {
    /// Lets webhooks point at loopback and private addresses (`serve
    /// --webhook-allow-private`: tests, demos, receivers inside the operator's network).
    pub fn set_webhook_allow_private(&self, allow: bool) {
        self.webhook_settings
            .allow_private
            .store(allow, Ordering::Relaxed);
    }

    /// Whether webhooks may point at loopback and private addresses.
    pub fn webhook_allow_private(&self) -> bool {
        self.webhook_settings.allow_private.load(Ordering::Relaxed)
    }

    /// Subscribes a URL to events.
    pub async fn webhook_create(
        &self,
        p: &Principal,
        req: CreateWebhook,
        idem: Option<&Idempotency>,
    ) -> Result<Created<WebhookCreated>> {
        auth::authorize(p, Action::WriteWebhooks)?;
        let tenant = match (&req.tenant_id, p.tenant_scope()) {
            (Some(t), _) => Some(self.visible_tenant(p, t).await?.id),
            (None, Some(own)) => Some(own),
            (None, None) => None,
        };
        if let Some(t) = tenant {
            self.refuse_suspended(t).await?;
        }
        let url = check_url(&req.url, self.webhook_allow_private())?;
        let events = check_patterns(req.events)?;
        if self.store.webhook_count(tenant).await? >= MAX_WEBHOOKS {
            return Err(Error::invalid(format!(
                "at most {MAX_WEBHOOKS} webhooks per tenant (and for the operator); delete one first"
            )));
        }
        let mut tx = self.store.begin_write().await?;
        if let Some(c) = Self::idem_lookup(&mut tx, p, idem).await? {
            return Ok(c);
        }
        let secret = mint_secret()?;
        let id = WebhookId::new();
        Store::event_insert(
            &mut tx,
            neocloud_store::NewEvent {
                actor: Some(p.key_id),
                tenant_id: tenant,
                action: "webhook.created",
                resource_kind: "webhook",
                resource_id: id.to_string(),
                before: None,
                after: Some(serde_json::json!({"id": id, "url": url, "events": events})),
            },
        )
        .await?;
        // Inserted after its own event: it receives what commits after it.
        let webhook = Store::webhook_insert(
            &mut tx,
            &NewWebhook {
                id,
                tenant_id: tenant,
                url,
                secret: secret.clone(),
                events,
            },
        )
        .await?;
        // The secret is never kept for a replay: a replay answers `null`.
        Self::idem_store(
            &mut tx,
            p,
            idem,
            &WebhookCreated {
                webhook: webhook.clone(),
                secret: None,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(Created {
            value: WebhookCreated {
                webhook,
                secret: Some(secret),
            },
            replayed: false,
        })
    }

    /// Lists webhooks: a tenant key its tenant's; an operator key every one, or one
    /// tenant's.
    pub async fn webhook_list(&self, p: &Principal, tenant: Option<&str>) -> Result<Vec<Webhook>> {
        auth::authorize(p, Action::ReadWebhooks)?;
        let tenant = self.scoped_tenant(p, tenant).await?;
        Ok(self.store.webhook_list(tenant).await?)
    }

    /// Reads a webhook (another tenant's reads as not found).
    pub async fn webhook_get(&self, p: &Principal, id: &str) -> Result<Webhook> {
        auth::authorize(p, Action::ReadWebhooks)?;
        self.visible_webhook(p, id).await
    }

    async fn visible_webhook(&self, p: &Principal, id: &str) -> Result<Webhook> {
        let not_found = || Error::not_found("webhook", id);
        let hook_id: WebhookId = id.parse().map_err(|_| not_found())?;
        let w = self
            .store
            .webhook_get(hook_id)
            .await
            .or_not_found(not_found)?;
        match p.tenant_scope() {
            Some(own) if w.tenant_id != Some(own) => Err(not_found()),
            _ => Ok(w),
        }
    }

    /// Deletes a webhook and its delivery log; nothing more is sent to it.
    pub async fn webhook_delete(
        &self,
        p: &Principal,
        id: &str,
        idem: Option<&Idempotency>,
    ) -> Result<Created<Webhook>> {
        auth::authorize(p, Action::WriteWebhooks)?;
        let mut tx = self.store.begin_write().await?;
        if let Some(c) = Self::idem_lookup(&mut tx, p, idem).await? {
            return Ok(c);
        }
        let w = self.visible_webhook(p, id).await?;
        Store::webhook_delete(&mut tx, w.id).await?;
        Store::event_insert(
            &mut tx,
            neocloud_store::NewEvent {
                actor: Some(p.key_id),
                tenant_id: w.tenant_id,
                action: "webhook.deleted",
                resource_kind: "webhook",
                resource_id: w.id.to_string(),
                before: Some(serde_json::json!({"id": w.id, "url": w.url, "events": w.events})),
                after: None,
            },
        )
        .await?;
        Self::idem_store_status(&mut tx, p, idem, 200, &w).await?;
        tx.commit().await?;
        Ok(Created {
            value: w,
            replayed: false,
        })
    }

    /// Queues a `webhook.test` event for one webhook (only it receives it), after whatever
    /// it has pending.
    pub async fn webhook_test(
        &self,
        p: &Principal,
        id: &str,
        idem: Option<&Idempotency>,
    ) -> Result<Created<Event>> {
        auth::authorize(p, Action::WriteWebhooks)?;
        let w = self.visible_webhook(p, id).await?;
        let mut tx = self.store.begin_write().await?;
        if let Some(c) = Self::idem_lookup(&mut tx, p, idem).await? {
            return Ok(c);
        }
        let after = serde_json::json!({
            "message": "a test event: this webhook receives events",
            "webhook_id": w.id,
        });
        let event_id = Store::event_insert(
            &mut tx,
            neocloud_store::NewEvent {
                actor: Some(p.key_id),
                tenant_id: w.tenant_id,
                action: TEST_ACTION,
                resource_kind: "webhook",
                resource_id: w.id.to_string(),
                before: None,
                after: Some(after.clone()),
            },
        )
        .await?;
        let event = Event {
            id: event_id,
            at: tx.now(),
            actor_key_id: Some(p.key_id),
            tenant_id: w.tenant_id,
            action: TEST_ACTION.to_string(),
            resource_kind: "webhook".to_string(),
            resource_id: w.id.to_string(),
            before: None,
            after: Some(after),
        };
        Self::idem_store_status(&mut tx, p, idem, 202, &event).await?;
        tx.commit().await?;
        Ok(Created {
            value: event,
            replayed: false,
        })
    }

    /// A webhook's delivery log, newest event first.
    pub async fn webhook_deliveries(
        &self,
        p: &Principal,
        id: &str,
        state: Option<WebhookDeliveryState>,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<WebhookDelivery>> {
        auth::authorize(p, Action::ReadWebhooks)?;
        let w = self.visible_webhook(p, id).await?;
        let limit = page_limit(limit)?;
        let cursor = cursor
            .map(|c| {
                c.parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| Error::invalid("cursor is not one this list gave"))
            })
            .transpose()?;
        Ok(self
            .store
            .webhook_delivery_list(w.id, state, cursor, limit)
            .await?)
    }

    // ---- the dispatcher's side -----------------------------------------------------------

    /// Queues a delivery of every event committed since the last call to every webhook that
    /// receives it; returns how many were queued. Only the leader may (a fenced write).
    pub async fn webhook_fanout(&self) -> Result<u64> {
        let mut queued = 0u64;
        loop {
            // Nobody listens: nothing to do (a webhook made later starts after its own
            // creation, wherever the cursor is).
            if !self.store.webhook_any().await? {
                return Ok(queued);
            }
            let last = self.store.event_seq_max().await?;
            let cursor = self.webhook_cursor().await?;
            if last <= cursor {
                return Ok(queued);
            }
            let mut tx = self.store.begin_write().await?;
            let targets = Store::webhook_targets(&mut tx).await?;
            // From where the oldest webhook starts, when that is later than the cursor
            // (read again here: one made since receives what commits after it).
            let start = match targets.iter().map(|t| t.after_seq).min() {
                None => last,
                Some(oldest) => cursor.max(oldest),
            };
            let heads = Store::event_heads_after(&mut tx, start, FANOUT_BATCH).await?;
            let rows: Vec<_> = heads
                .iter()
                .flat_map(|e| {
                    targets
                        .iter()
                        .filter(move |t| receives(t, e))
                        .map(move |t| (t.id, e))
                })
                .collect();
            Store::webhook_deliveries_queue(&mut tx, &rows).await?;
            let next = heads.last().map_or(start, |e| e.seq);
            Store::meta_put(&mut tx, CURSOR_KEY, &next.to_string()).await?;
            tx.commit().await?;
            queued += rows.len() as u64;
            if heads.len() < FANOUT_BATCH as usize {
                return Ok(queued);
            }
        }
    }

    async fn webhook_cursor(&self) -> Result<i64> {
        Ok(self
            .store
            .meta_get(CURSOR_KEY)
            .await?
            .and_then(|s| s.parse().ok())
            .unwrap_or(0))
    }

    /// Up to `limit` deliveries due now, one per webhook: its oldest pending one.
    pub async fn webhook_due(&self, limit: u32) -> Result<Vec<DueDelivery>> {
        Ok(self.store.webhook_due(self.now(), limit).await?)
    }

    /// The JSON body of a delivery.
    pub async fn webhook_body(&self, d: &DueDelivery) -> Result<Vec<u8>> {
        let event = self.store.event_get(d.event_id).await?;
        serde_json::to_vec(&WebhookPayload {
            webhook_id: d.webhook_id,
            delivery_id: d.id,
            event,
        })
        .map_err(|e| Error::internal(e.to_string()))
    }

    /// Records how an attempt ended: delivered (the webhook's next delivery is due at
    /// once), failed (retried after the backoff), or, 24 hours after its event, given up
    /// together with every delivery of the webhook that old (the next one is due at once).
    pub async fn webhook_record(&self, d: &DueDelivery, attempt: Attempt) -> Result<()> {
        let now = self.now();
        let m = &*crate::metrics::METRICS;
        let mut tx = self.store.begin_write().await?;
        let counter = match attempt {
            Attempt::Delivered { status } => {
                Store::webhook_delivery_update(
                    &mut tx,
                    d.id,
                    &DeliveryUpdate {
                        state: WebhookDeliveryState::Delivered,
                        next_attempt_at: None,
                        status: Some(status),
                        error: None,
                    },
                )
                .await?;
                Store::webhook_schedule(&mut tx, d.webhook_id, now).await?;
                &m.webhooks_delivered
            }
            Attempt::Failed { status, error } => {
                let error: String = error.chars().take(500).collect();
                let give_up_before = now.plus_seconds(-GIVE_UP_SECS);
                if d.created_at <= give_up_before {
                    Store::webhook_delivery_update(
                        &mut tx,
                        d.id,
                        &DeliveryUpdate {
                            state: WebhookDeliveryState::Failed,
                            next_attempt_at: None,
                            status,
                            error: Some(error),
                        },
                    )
                    .await?;
                    Store::webhook_deliveries_give_up(
                        &mut tx,
                        d.webhook_id,
                        give_up_before,
                        "given up: the endpoint failed for 24 hours",
                    )
                    .await?;
                    Store::webhook_schedule(&mut tx, d.webhook_id, now).await?;
                    &m.webhooks_given_up
                } else {
                    let next = now.plus_seconds(backoff_secs(d.attempts.saturating_add(1)));
                    Store::webhook_delivery_update(
                        &mut tx,
                        d.id,
                        &DeliveryUpdate {
                            state: WebhookDeliveryState::Pending,
                            next_attempt_at: Some(next),
                            status,
                            error: Some(error),
                        },
                    )
                    .await?;
                    Store::webhook_schedule(&mut tx, d.webhook_id, next).await?;
                    &m.webhooks_failed
                }
            }
        };
        tx.commit().await?;
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Forgets deliveries that ended more than 7 days ago; returns how many.
    pub async fn webhook_prune(&self) -> Result<u64> {
        let mut tx = self.store.begin_write().await?;
        let n =
            Store::webhook_deliveries_prune(&mut tx, self.now().plus_seconds(-KEEP_FINISHED_SECS))
                .await?;
        tx.commit().await?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_actions() {
        assert!(pattern_matches("*", "instance.failed"));
        assert!(pattern_matches("instance.*", "instance.failed"));
        assert!(!pattern_matches("instance.*", "instances.failed"));
        assert!(!pattern_matches("instance.*", "invoice.finalized"));
        assert!(pattern_matches("invoice.finalized", "invoice.finalized"));
        assert!(!pattern_matches("invoice.finalized", "invoice.generated"));
    }

    #[test]
    fn patterns_are_checked() {
        assert!(check_patterns(None).is_ok());
        for good in [
            "*",
            "instance.*",
            "maintenance.scheduled",
            "node.state_changed",
        ] {
            assert!(check_patterns(Some(vec![good.into()])).is_ok(), "{good}");
        }
        for bad in [
            "",
            "instance",
            "bogus.*",
            "instance.Failed",
            "inst*",
            "instance.a.b",
            "*.*",
        ] {
            assert!(check_patterns(Some(vec![bad.into()])).is_err(), "{bad}");
        }
        assert!(check_patterns(Some(vec![])).is_err());
        assert_eq!(
            check_patterns(Some(vec!["*".into(), "*".into()])).unwrap(),
            vec!["*".to_string()]
        );
    }

    #[test]
    fn urls_are_checked() {
        assert!(check_url("https://hooks.example.com/neocloud", false).is_ok());
        assert!(
            check_url("http://203.0.113.9:8080/x", false).is_err(),
            "documentation"
        );
        assert!(check_url("http://8.8.8.8/x", false).is_ok());
        for private in [
            "http://127.0.0.1:9000/",
            "http://10.1.2.3/",
            "http://169.254.169.254/latest",
            "http://[::1]/",
            "http://[fd00::1]/",
            "http://[::ffff:192.168.1.1]/",
            "http://localhost:8080/",
            "http://api.localhost/",
            "http://0.0.0.0/",
            "http://100.64.0.1/",
        ] {
            assert!(check_url(private, false).is_err(), "{private}");
            assert!(check_url(private, true).is_ok(), "{private}");
        }
        for bad in [
            "",
            "ftp://example.com/",
            "hooks.example.com/x",
            "https://user:pw@example.com/",
            "http://",
            "https://exa mple.com/",
        ] {
            assert!(check_url(bad, true).is_err(), "{bad}");
        }
        assert!(check_url(&format!("https://e.com/{}", "a".repeat(2048)), true).is_err());
    }

    #[test]
    fn backoff_doubles_to_five_minutes() {
        assert_eq!(backoff_secs(1), 5);
        assert_eq!(backoff_secs(2), 10);
        assert_eq!(backoff_secs(3), 20);
        assert_eq!(backoff_secs(7), 300);
        assert_eq!(backoff_secs(u32::MAX), 300);
    }

    #[test]
    fn signatures_are_hmac_sha256_of_time_and_body() {
        // Computed independently: HMAC-SHA256, key "whsec_test", message
        // "1700000000.{\"a\":1}".
        assert_eq!(
            signature("whsec_test", 1_700_000_000, br#"{"a":1}"#),
            "38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
        assert_eq!(
            signature_header("whsec_test", 1_700_000_000, br#"{"a":1}"#),
            "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
        assert_ne!(signature("s", 1, b"{}"), signature("s", 2, b"{}"));
        assert_ne!(signature("s", 1, b"{}"), signature("t", 1, b"{}"));
    }
}
