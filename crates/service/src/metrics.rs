//! Prometheus metrics: counters and histograms kept in memory, gauges read at scrape time,
//! rendered in the text exposition format (version 0.0.4).
//!
//! Names follow Prometheus conventions: a `neocloud_` prefix, base units in the name
//! (`_seconds`, `_watts`), `_total` on counters.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use neocloud_types::NodeState;

use crate::Service;
use crate::error::Result;

/// Upper bounds of latency buckets, seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Upper bounds of lock-hold buckets, seconds: a microsecond to a tenth of a second.
const HOLD_BUCKETS: [f64; 15] = [
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_075,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.002_5,
    0.01,
    0.025,
    0.1,
];

/// Upper bounds of queue-wait buckets, seconds: a second to a week.
const WAIT_BUCKETS: [f64; 10] = [
    1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14_400.0, 86_400.0, 604_800.0,
];

/// A histogram with fixed buckets (latency buckets unless made with [`Histogram::new`]).
/// One route template's requests.
#[derive(Clone, Default)]
struct RouteStats {
    /// By method and status.
    counts: BTreeMap<(&'static str, u16), u64>,
    /// Latency of every request.
    latency: std::sync::Arc<Histogram>,
}

pub(crate) struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new(&BUCKETS)
    }
}

impl Histogram {
    pub(crate) fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub(crate) fn observe(&self, secs: f64) {
        for (i, b) in self.bounds.iter().enumerate() {
            if secs <= *b {
                self.counts[i].fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = (secs * 1e6).max(0.0);
        // Saturating float→int conversion: `as` clamps, which is what a sum wants.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        self.sum_micros.fetch_add(micros as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, b) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// What the control plane counts as it runs.
pub(crate) struct Metrics {
    pub(crate) placed: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) decision: Histogram,
    /// How long each hold of the scheduler's lock lasted.
    pub(crate) lock_hold: Histogram,
    /// How long queued instances waited before they started.
    pub(crate) queue_wait: Histogram,
    pub(crate) preemptions: AtomicU64,
    pub(crate) heartbeats: AtomicU64,
    /// Heartbeats a replica that does not lead passed on to the leader (they had news).
    pub(crate) heartbeats_passed: AtomicU64,
    pub(crate) health_events: AtomicU64,
    /// Webhook delivery attempts that were delivered, failed (to be retried), or given up.
    pub(crate) webhooks_delivered: AtomicU64,
    pub(crate) webhooks_failed: AtomicU64,
    pub(crate) webhooks_given_up: AtomicU64,
    /// HTTP requests by (route, method, status), and latency by route.
    /// Requests by route template: counts by method and status, and latency.
    http: Mutex<BTreeMap<String, RouteStats>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            placed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            decision: Histogram::default(),
            lock_hold: Histogram::new(&HOLD_BUCKETS),
            queue_wait: Histogram::new(&WAIT_BUCKETS),
            preemptions: AtomicU64::new(0),
            heartbeats: AtomicU64::new(0),
            heartbeats_passed: AtomicU64::new(0),
            health_events: AtomicU64::new(0),
            webhooks_delivered: AtomicU64::new(0),
            webhooks_failed: AtomicU64::new(0),
            webhooks_given_up: AtomicU64::new(0),
            http: Mutex::default(),
        }
    }
}

/// The process's metrics. One control plane runs per process; tests that start several
/// share these counters (they assert increases, never exact totals).
pub(crate) static METRICS: std::sync::LazyLock<Metrics> =
    std::sync::LazyLock::new(Metrics::default);

/// Escapes a label value.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A family of plain samples: its HELP and TYPE, then one line per (labels, value).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, String)]) {
    head(out, name, kind, help);
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

impl Service {
    /// Records one HTTP request: `route` is the matched path template (never the raw path,
    /// so ids do not explode the series).
    pub fn record_http(&self, route: &str, method: &str, status: u16, secs: f64) {
        // Known methods by a static name: a request allocates nothing here once its route
        // has been seen.
        let method = match method {
            "GET" => "GET",
            "POST" => "POST",
            "PUT" => "PUT",
            "PATCH" => "PATCH",
            "DELETE" => "DELETE",
            "HEAD" => "HEAD",
            "OPTIONS" => "OPTIONS",
            _ => "other",
        };
        if let Ok(mut h) = METRICS.http.lock() {
            let r = match h.get_mut(route) {
                Some(r) => r,
                None => h.entry(route.to_string()).or_default(),
            };
            *r.counts.entry((method, status)).or_default() += 1;
            r.latency.observe(secs);
        }
    }

    /// Every metric, in the Prometheus text format.
    pub async fn metrics_text(&self) -> Result<String> {
        let mut out = String::with_capacity(16 * 1024);
        let m = &*METRICS;
        let leader = self.is_leader();
        let role = match (self.replicated(), leader) {
            (false, _) => "single",
            (true, true) => "leader",
            (true, false) => "follower",
        };
        family(
            &mut out,
            "neocloud_build_info",
            "gauge",
            "Always 1: the version of this replica and its role (single, leader or follower).",
            &[(
                &format!(
                    "version=\"{}\",role=\"{role}\"",
                    esc(env!("CARGO_PKG_VERSION"))
                ),
                "1".to_string(),
            )],
        );
        family(
            &mut out,
            "neocloud_leader",
            "gauge",
            "1 on the replica that decides (the leader, or a server without replicas), 0 on followers. Fleet gauges come from it only.",
            &[("", u8::from(leader).to_string())],
        );
        // The fleet's gauges describe one shared state: only the replica that decides
        // exports them, so `sum by` over every replica counts each GPU once.
        if leader {
            self.fleet_metrics(&mut out).await?;
        }
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed).to_string();
        family(
            &mut out,
            "neocloud_allocator_decisions_total",
            "counter",
            "Placement decisions by result.",
            &[
                ("result=\"placed\"", load(&m.placed)),
                ("result=\"refused\"", load(&m.refused)),
            ],
        );
        head(
            &mut out,
            "neocloud_allocator_decision_seconds",
            "histogram",
            "Time to decide a placement (in memory).",
        );
        m.decision
            .render(&mut out, "neocloud_allocator_decision_seconds", "");
        head(
            &mut out,
            "neocloud_scheduler_lock_hold_seconds",
            "histogram",
            "How long each hold of the scheduler's lock lasted (a command applied, or a read of its state); no I/O happens under it.",
        );
        m.lock_hold
            .render(&mut out, "neocloud_scheduler_lock_hold_seconds", "");
        head(
            &mut out,
            "neocloud_queue_wait_seconds",
            "histogram",
            "How long queued instances waited before they started.",
        );
        m.queue_wait
            .render(&mut out, "neocloud_queue_wait_seconds", "");
        family(
            &mut out,
            "neocloud_preemptions_total",
            "counter",
            "Instances preempted (their notice ran out).",
            &[("", load(&m.preemptions))],
        );
        family(
            &mut out,
            "neocloud_heartbeats_total",
            "counter",
            "Heartbeats accepted (on a follower: answered there, without news).",
            &[("", load(&m.heartbeats))],
        );
        family(
            &mut out,
            "neocloud_heartbeats_passed_total",
            "counter",
            "Heartbeats a follower passed on to the leader because they carried news.",
            &[("", load(&m.heartbeats_passed))],
        );
        family(
            &mut out,
            "neocloud_health_events_total",
            "counter",
            "Health facts stored (XIDs, flags, burn-in results, lost heartbeats).",
            &[("", load(&m.health_events))],
        );
        family(
            &mut out,
            "neocloud_webhook_attempts_total",
            "counter",
            "Webhook delivery attempts: delivered (2xx), failed (retried later), given up (failing 24 hours after the event).",
            &[
                ("result=\"delivered\"", load(&m.webhooks_delivered)),
                ("result=\"failed\"", load(&m.webhooks_failed)),
                ("result=\"given_up\"", load(&m.webhooks_given_up)),
            ],
        );
        head(
            &mut out,
            "neocloud_http_requests_total",
            "counter",
            "HTTP requests by route, method and status.",
        );
        let routes: Vec<(String, RouteStats)> = m
            .http
            .lock()
            .map(|h| h.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        for (route, r) in &routes {
            for ((method, status), n) in &r.counts {
                let _ = writeln!(
                    out,
                    "neocloud_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{status}\"}} {n}",
                    esc(route),
                    esc(method)
                );
            }
        }
        head(
            &mut out,
            "neocloud_http_request_duration_seconds",
            "histogram",
            "HTTP request latency by route.",
        );
        for (route, r) in &routes {
            r.latency.render(
                &mut out,
                "neocloud_http_request_duration_seconds",
                &format!("route=\"{}\"", esc(route)),
            );
        }
        Ok(out)
    }

    /// The fleet's gauges, read from the scheduler's memory, the health monitor and the
    /// store (leader only).
    async fn fleet_metrics(&self, out: &mut String) -> Result<()> {
        head(
            out,
            "neocloud_gpus",
            "gauge",
            "GPUs by site, model and node state.",
        );
        for crate::GpuStateCount {
            site,
            gpu_model: model,
            state,
            gpus,
        } in self.gpu_counts().await?
        {
            let _ = writeln!(
                out,
                "neocloud_gpus{{site=\"{}\",gpu_model=\"{}\",state=\"{}\"}} {gpus}",
                esc(&site),
                esc(&model),
                esc(&state)
            );
        }
        {
            let sched = crate::scheduler::lock(&self.sched);
            head(
                out,
                "neocloud_gpus_allocated",
                "gauge",
                "GPUs held by instances, by site, model and class.",
            );
            let mut by: BTreeMap<(String, String, String), u64> = BTreeMap::new();
            for a in sched.alloc().allocations() {
                let site = sched
                    .sites()
                    .iter()
                    .find(|s| s.id == a.site)
                    .map(|s| s.name.clone())
                    .unwrap_or_default();
                *by.entry((site, a.gpu_model.clone(), a.class.to_string()))
                    .or_default() += a.gpu_count();
            }
            for ((site, model, class), n) in by {
                let _ = writeln!(
                    out,
                    "neocloud_gpus_allocated{{site=\"{}\",gpu_model=\"{}\",class=\"{}\"}} {n}",
                    esc(&site),
                    esc(&model),
                    esc(&class)
                );
            }
            head(
                out,
                "neocloud_site_power_watts",
                "gauge",
                "Facility power of a site: allocated (placements, × PUE) and its budget.",
            );
            for s in sched.sites() {
                let p = sched.alloc().site_power(s.id);
                let _ = writeln!(
                    out,
                    "neocloud_site_power_watts{{site=\"{}\",kind=\"allocated\"}} {}",
                    esc(&s.name),
                    p.allocated_watts
                );
                let _ = writeln!(
                    out,
                    "neocloud_site_power_watts{{site=\"{}\",kind=\"budget\"}} {}",
                    esc(&s.name),
                    s.power_budget_watts
                );
            }
            family(
                out,
                "neocloud_queue_length",
                "gauge",
                "Instances waiting for capacity.",
                &[("", sched.queued().count().to_string())],
            );
            let now = self.now().micros();
            let oldest = sched
                .queued()
                .filter_map(|id| sched.instance(id))
                .map(|q| (now - q.created_at.micros()).max(0))
                .max()
                .unwrap_or(0);
            family(
                out,
                "neocloud_queue_oldest_wait_seconds",
                "gauge",
                "How long the longest-waiting queued instance has waited (0 when none waits).",
                &[("", format!("{}", oldest as f64 / 1e6))],
            );
        }
        let (agents, fresh, unreachable, lag) = self.agent_stats();
        family(
            out,
            "neocloud_agents",
            "gauge",
            "Node agents: registered, heard from within two intervals, and those whose node is unreachable (silent past the missed-heartbeat limit, within the grace period).",
            &[
                ("status=\"registered\"", agents.to_string()),
                ("status=\"fresh\"", fresh.to_string()),
                ("status=\"unreachable\"", unreachable.to_string()),
            ],
        );
        family(
            out,
            "neocloud_heartbeat_lag_seconds",
            "gauge",
            "Longest time since a node's agent was heard from, among nodes in service.",
            &[("", lag.to_string())],
        );
        family(
            out,
            "neocloud_webhook_deliveries_pending",
            "gauge",
            "Webhook deliveries not made yet, across webhooks.",
            &[("", self.store.webhook_pending().await?.to_string())],
        );
        let lines = self.capacity_lines(None, None, Some(1)).await?;
        head(
            out,
            "neocloud_gpus_sellable",
            "gauge",
            "GPUs contracts may promise, by site and model: all GPUs less the spare buffer.",
        );
        for l in &lines {
            let _ = writeln!(
                out,
                "neocloud_gpus_sellable{{site=\"{}\",gpu_model=\"{}\"}} {}",
                esc(&l.site),
                esc(&l.gpu_model),
                l.sellable_gpus
            );
        }
        head(
            out,
            "neocloud_gpus_committed",
            "gauge",
            "GPUs signed contracts promise now, by site and model.",
        );
        for l in &lines {
            let _ = writeln!(
                out,
                "neocloud_gpus_committed{{site=\"{}\",gpu_model=\"{}\"}} {}",
                esc(&l.site),
                esc(&l.gpu_model),
                l.committed_gpus_now
            );
        }
        head(
            out,
            "neocloud_spare_nodes",
            "gauge",
            "Whole nodes pinned as spares (held) and the spread's target (wanted), by site and model.",
        );
        for l in &lines {
            for (kind, n) in [("held", l.spare_nodes), ("wanted", l.spare_nodes_wanted)] {
                let _ = writeln!(
                    out,
                    "neocloud_spare_nodes{{site=\"{}\",gpu_model=\"{}\",kind=\"{kind}\"}} {n}",
                    esc(&l.site),
                    esc(&l.gpu_model)
                );
            }
        }
        let coverage = self.agent_coverage().await?;
        head(
            out,
            "neocloud_agent_coverage_ratio",
            "gauge",
            "Share of a site's nodes expected to heartbeat (not provisioning, failed or in maintenance) whose agent was heard from within two intervals; nodes without an agent count as not heard.",
        );
        for (site, expected, heard) in &coverage {
            #[allow(clippy::cast_precision_loss)]
            let ratio = if *expected == 0 {
                1.0
            } else {
                *heard as f64 / *expected as f64
            };
            let _ = writeln!(
                out,
                "neocloud_agent_coverage_ratio{{site=\"{}\"}} {ratio}",
                esc(site)
            );
        }
        head(
            out,
            "neocloud_nodes_expected_to_heartbeat",
            "gauge",
            "A site's nodes expected to heartbeat, and those of them heard from within two intervals.",
        );
        for (site, expected, heard) in &coverage {
            for (status, n) in [("expected", expected), ("heard", heard)] {
                let _ = writeln!(
                    out,
                    "neocloud_nodes_expected_to_heartbeat{{site=\"{}\",status=\"{status}\"}} {n}",
                    esc(site)
                );
            }
        }
        Ok(())
    }
}

/// Whether a node in this state is expected to heartbeat (an `unreachable` node is: its
/// silence is what the heartbeat lag measures).
pub(crate) fn in_service(s: NodeState) -> bool {
    !matches!(s, NodeState::Failed | NodeState::Maintenance)
}
