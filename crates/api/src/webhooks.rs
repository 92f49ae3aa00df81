//! The webhook dispatcher: POSTs events to the URLs subscribed to them.
//!
//! One task, started by `serve` (it works only while this replica leads). Every pass it asks
//! the service to queue deliveries of the events committed since the last pass, then for the
//! deliveries due now — the oldest pending one of each webhook, so a webhook's events go out
//! one at a time, in the order they committed — and sends each in a task of its own: at most
//! [`DispatcherConfig::concurrency`] at once across webhooks, each bounded by
//! [`DispatcherConfig::timeout`]. No lock and no database transaction is held during a
//! request, and API requests never wait for one: a receiver that hangs or is down delays only
//! its own webhook's deliveries.
//!
//! Each request carries `Neocloud-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
//! "<t>.<body>" keyed with the webhook's secret>`, `Neocloud-Event-Id` and
//! `Neocloud-Delivery-Id`. Host names are resolved here and refused when they resolve to a
//! loopback or private address, unless the operator allows those.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use neocloud_service::{Attempt, DueDelivery, Service};
use neocloud_types::{Timestamp, WebhookId};
use tokio::sync::{Notify, Semaphore};

/// How the dispatcher sends.
#[derive(Clone, Debug)]
pub struct DispatcherConfig {
    /// Longest one request may take, connecting included.
    pub timeout: Duration,
    /// Most requests in flight at once, across webhooks.
    pub concurrency: usize,
    /// How often it looks for new events and due deliveries when nothing wakes it.
    pub poll: Duration,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig {
            timeout: Duration::from_secs(10),
            concurrency: 32,
            poll: Duration::from_millis(500),
        }
    }
}

/// Starts the dispatcher on the current runtime.
pub fn spawn(svc: Service, config: DispatcherConfig) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(svc, config))
}

/// Resolves host names as the system does, keeping only the addresses webhooks may be sent
/// to.
struct GuardedResolver {
    svc: Service,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.svc.webhook_allow_private();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| allow_private || neocloud_service::public_address(a.ip()))
                .collect();
            if allowed.is_empty() {
                let why = if all.is_empty() {
                    format!("{host} has no address")
                } else {
                    format!(
                        "{host} resolves only to loopback or private addresses, which the \
                         operator does not allow webhooks to reach"
                    )
                };
                return Err(why.into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

fn client(svc: &Service, config: &DispatcherConfig) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(config.timeout)
        .connect_timeout(config.timeout.min(Duration::from_secs(5)))
        // A redirect is an answer that is not 2xx: following it could lead anywhere.
        .redirect(reqwest::redirect::Policy::none())
        // Deliveries go straight to the receiver, through the address guard.
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver { svc: svc.clone() }))
        .user_agent(concat!("neocloud-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
}

async fn run(svc: Service, config: DispatcherConfig) {
    let http = match client(&svc, &config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhooks: could not build the HTTP client; no deliveries");
            return;
        }
    };
    let inflight: Arc<Mutex<HashSet<WebhookId>>> = Default::default();
    let wake = Arc::new(Notify::new());
    let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let mut pruned_at: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(config.poll) => {}
        }
        if !svc.is_leader() {
            continue;
        }
        if let Err(e) = svc.webhook_fanout().await {
            tracing::warn!(error = %e.internal.unwrap_or(e.message), "webhooks: could not queue new events");
            continue;
        }
        let free = slots.available_permits();
        let busy = inflight.lock().map(|s| s.len()).unwrap_or(0);
        if free > 0 {
            let ask = u32::try_from(free + busy).unwrap_or(u32::MAX);
            let due = match svc.webhook_due(ask).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e.internal.unwrap_or(e.message), "webhooks: could not read due deliveries");
                    continue;
                }
            };
            for d in due {
                // One request at a time per webhook: its events stay in order.
                let fresh = inflight
                    .lock()
                    .map(|mut s| s.insert(d.webhook_id))
                    .unwrap_or(false);
                if !fresh {
                    continue;
                }
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    if let Ok(mut s) = inflight.lock() {
                        s.remove(&d.webhook_id);
                    }
                    break;
                };
                let svc = svc.clone();
                let http = http.clone();
                let inflight = inflight.clone();
                let wake = wake.clone();
                let timeout = config.timeout;
                tokio::spawn(async move {
                    let attempt = deliver(&svc, &http, &d, timeout).await;
                    if let Attempt::Failed { error, .. } = &attempt {
                        tracing::info!(webhook = %d.webhook_id, delivery = %d.id, error = %error, "webhook delivery failed");
                    }
                    if let Err(e) = svc.webhook_record(&d, attempt).await {
                        tracing::warn!(error = %e.internal.unwrap_or(e.message), delivery = %d.id, "webhooks: could not record a delivery");
                    }
                    if let Ok(mut s) = inflight.lock() {
                        s.remove(&d.webhook_id);
                    }
                    drop(permit);
                    wake.notify_one();
                });
            }
        }
        if pruned_at.is_none_or(|t| t.elapsed() > Duration::from_secs(3600)) {
            pruned_at = Some(std::time::Instant::now());
            if let Err(e) = svc.webhook_prune().await {
                tracing::warn!(error = %e.internal.unwrap_or(e.message), "webhooks: could not prune the delivery log");
            }
        }
    }
}

/// One attempt: sign the body, POST it, judge the answer.
async fn deliver(
    svc: &Service,
    http: &reqwest::Client,
    d: &DueDelivery,
    timeout: Duration,
) -> Attempt {
    // The operator may have stopped allowing private addresses since it was created.
    if let Err(e) = neocloud_service::check_url(&d.url, svc.webhook_allow_private()) {
        return Attempt::Failed {
            status: None,
            error: e.message,
        };
    }
    let body = match svc.webhook_body(d).await {
        Ok(b) => b,
        Err(e) => {
            return Attempt::Failed {
                status: None,
                error: format!("could not read the event: {}", e.message),
            };
        }
    };
    // The receiver checks the signature's time against its own clock: the wall clock.
    let t = Timestamp::now().micros().div_euclid(1_000_000);
    let signature = neocloud_service::signature_header(&d.secret, t, &body);
    let sent = http
        .post(&d.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("Neocloud-Signature", signature)
        .header("Neocloud-Event-Id", d.event_id.to_string())
        .header("Neocloud-Delivery-Id", d.id.to_string())
        .body(body)
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_success() => Attempt::Delivered {
            status: r.status().as_u16(),
        },
        Ok(r) => Attempt::Failed {
            status: Some(r.status().as_u16()),
            error: format!("the endpoint answered {}", r.status()),
        },
        Err(e) if e.is_timeout() => Attempt::Failed {
            status: None,
            error: format!("no answer within {} s", timeout.as_secs()),
        },
        Err(e) => Attempt::Failed {
            status: None,
            error: describe(&e),
        },
    }
}

/// An error and its causes, on one line.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
