//! Webhooks: URLs that tenants and the operator subscribe to events, and the log of what was
//! delivered to them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{Event, EventId, TenantId, Timestamp, WebhookDeliveryId, WebhookId, string_enum};

string_enum!(
    /// Where the delivery of one event to one webhook stands.
    WebhookDeliveryState {
        /// Not delivered yet: waiting for its turn (events go out in order) or for its next
        /// attempt.
        Pending = "pending",
        /// The receiver answered 2xx.
        Delivered = "delivered",
        /// Given up after 24 hours of failed attempts.
        Failed = "failed",
    }
);

/// A subscription: events that match `events` are POSTed to `url`, signed with the
/// webhook's secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Webhook {
    /// Webhook id.
    pub id: WebhookId,
    /// The tenant whose events it receives; none for an operator webhook, which receives
    /// every event of the control plane.
    pub tenant_id: Option<TenantId>,
    /// Where events are POSTed (http or https).
    pub url: String,
    /// Which events: actions (`instance.failed`), a kind's every action (`instance.*`), or
    /// everything (`*`).
    pub events: Vec<String>,
    /// When it was created.
    pub created_at: Timestamp,
    /// Deliveries not made yet (a receiver that is down or slow shows them piling up).
    pub pending_deliveries: u64,
}

/// The delivery of one event to one webhook, with its attempts so far.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WebhookDelivery {
    /// Delivery id (sent as the `Neocloud-Delivery-Id` header).
    pub id: WebhookDeliveryId,
    /// The webhook.
    pub webhook_id: WebhookId,
    /// The event delivered.
    pub event_id: EventId,
    /// The event's action, e.g. `instance.failed`.
    pub event_action: String,
    /// Where it stands.
    pub state: WebhookDeliveryState,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due, while pending (after the deliveries before it).
    pub next_attempt_at: Option<Timestamp>,
    /// When the last attempt was made.
    pub last_attempt_at: Option<Timestamp>,
    /// The HTTP status the receiver last answered, if it answered.
    pub last_status: Option<u16>,
    /// What went wrong with the last attempt (a status that is not 2xx, a timeout, a refused
    /// connection).
    pub last_error: Option<String>,
    /// When the event was queued for this webhook.
    pub created_at: Timestamp,
    /// When it was delivered or given up.
    pub finished_at: Option<Timestamp>,
}

/// The JSON body POSTed to a webhook's URL.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WebhookPayload {
    /// The webhook it was sent to.
    pub webhook_id: WebhookId,
    /// This delivery (the same on every attempt of it).
    pub delivery_id: WebhookDeliveryId,
    /// The event, as `GET /v1/events` shows it.
    pub event: Event,
}
