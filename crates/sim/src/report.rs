//! Results of a run: totals, months, the time series, and how they are written (JSON, CSV,
//! a terminal summary).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use neocloud_billing::{Invoice, LineKind, UsageRecord};
use neocloud_types::Money;
use serde::Serialize;

use crate::engine::{CLASSES, Engine, Sample};

/// Requests of one class.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RequestStats {
    /// Requests that arrived.
    pub arrived: u64,
    /// Requests placed (at once or after waiting).
    pub placed: u64,
    /// Of those, placed after waiting in the queue or for preempted work to leave.
    pub placed_after_wait: u64,
    /// Refused at once (no room, no wait allowed, or no contract).
    pub refused: u64,
    /// Waited and gave up at their deadline.
    pub expired: u64,
    /// GPU-hours of refused and expired requests: the demand turned away.
    pub refused_gpu_hours: f64,
    /// Mean wait of placed requests, seconds.
    pub wait_mean_s: f64,
    /// Median wait of placed requests, seconds.
    pub wait_p50_s: i64,
    /// 95th percentile wait of placed requests, seconds.
    pub wait_p95_s: i64,
    /// Longest wait of a placed request, seconds.
    pub wait_max_s: i64,
    /// Running instances preempted (by higher classes or contract pools).
    pub preempted: u64,
    /// GPUs those held.
    pub preempted_gpus: u64,
    /// Running instances ended by a node failure.
    pub interrupted_by_failure: u64,
    /// Of those, how many had the rest of their work launched again (`failures.relaunch`).
    pub relaunched: u64,
}

/// GPU-seconds of the whole run: the conservation check's terms.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct GpuSeconds {
    /// Fleet GPUs × simulated seconds.
    pub fleet: i128,
    /// Metered by the billing code (every class; reserved at rate 0).
    pub allocated: i128,
    /// Free, healthy, schedulable GPUs, integrated over time from the allocator.
    pub idle: i128,
    /// GPUs on failed nodes.
    pub down: i128,
    /// Allocated GPU-seconds by class, integrated from the engine's counters.
    pub allocated_by_class: BTreeMap<String, i128>,
}

/// One site's power and energy.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SitePower {
    /// Site name.
    pub site: String,
    /// Mean facility draw, MW.
    pub mean_mw: f64,
    /// Highest facility draw, MW.
    pub peak_mw: f64,
    /// Facility budget, MW.
    pub budget_mw: f64,
    /// Energy used, MWh.
    pub energy_mwh: f64,
    /// Its cost at the site's $/MWh.
    pub energy_cost: Money,
}

/// What a run adds up to.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Totals {
    /// Billed revenue: the sum of every invoice's total.
    pub revenue: Money,
    /// Revenue by invoice line kind (reserved commitments, on-demand, spot, SLA credits).
    pub revenue_by_class: BTreeMap<String, Money>,
    /// Revenue by tenant.
    pub revenue_by_tenant: BTreeMap<String, Money>,
    /// The operator's own lab's compute at the shadow price: shown, not billed.
    pub internal_shadow_value: Money,
    /// Energy cost of every site.
    pub energy_cost: Money,
    /// Revenue − energy cost.
    pub gross_margin: Money,
    /// Gross margin over revenue, percent (0 without revenue).
    pub gross_margin_percent: f64,
    /// Allocated GPU-seconds over fleet GPU-seconds, by class and in total.
    pub utilization: BTreeMap<String, f64>,
    /// Requests by class.
    pub requests: BTreeMap<String, RequestStats>,
    /// Node failures drawn.
    pub node_failures: u64,
    /// Pool outages opened (a pool node failed, or a pool could not be filled).
    pub pool_outages: u64,
    /// GPU-hours that contracts' pools were short.
    pub pool_downtime_gpu_hours: f64,
    /// Power per site.
    pub power: Vec<SitePower>,
    /// Mean share of free GPUs stranded on partly used nodes, per "site/model".
    pub stranded_share_mean: BTreeMap<String, f64>,
    /// The conservation check's terms.
    pub gpu_seconds: GpuSeconds,
}

/// One month of a run.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct MonthRow {
    /// `YYYY-MM`.
    pub month: String,
    /// Revenue by invoice line kind.
    pub revenue_by_class: BTreeMap<String, Money>,
    /// Billed revenue.
    pub revenue: Money,
}

/// The result of one run of one variant under one seed.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    /// Scenario name.
    pub scenario: String,
    /// Variant name.
    pub variant: String,
    /// Seed.
    pub seed: u64,
    /// Start of simulated time (RFC 3339).
    pub start: String,
    /// Simulated days.
    pub horizon_days: f64,
    /// GPUs in the fleet.
    pub fleet_gpus: u64,
    /// Requests replayed.
    pub requests: u64,
    /// Totals.
    pub totals: Totals,
    /// Per month.
    pub months: Vec<MonthRow>,
    /// The business case: capital expenditure, monthly accounts per site and in all, and
    /// the value of the equity cash flows.
    pub finance: crate::accounts::Finance,
    /// Column names of the series' per-site and per-pool values.
    pub series_columns: SeriesColumns,
    /// The time series.
    pub series: Vec<Sample>,
    /// Every invoice the billing code produced.
    #[serde(skip)]
    pub invoices: Vec<Invoice>,
    /// Every usage record, when the scenario keeps the ledger.
    #[serde(skip)]
    pub ledger: Vec<UsageRecord>,
    /// The contract terms billed (clipped to the simulated window).
    #[serde(skip)]
    pub contracts: Vec<neocloud_billing::ContractTerms>,
    /// Downtime rows fed to the invoices.
    #[serde(skip)]
    pub downtime: Vec<neocloud_billing::Downtime>,
    /// Tenant names and whether each is internal, by tenant id.
    #[serde(skip)]
    pub tenants: Vec<(neocloud_types::TenantId, String, bool)>,
}

/// Names of the series' vector columns.
#[derive(Clone, Debug, Serialize)]
pub struct SeriesColumns {
    /// Sites of `power_mw`.
    pub power_mw: Vec<String>,
    /// Pools ("site/model") of `spot_price`.
    pub spot_price: Vec<String>,
    /// Pools ("site/model") of `stranded`.
    pub stranded: Vec<String>,
}

#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "p is clamped to 0..=1 before it becomes a count of thousandths"
)]
fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    // Nearest rank, in integers: p is one of 0.5 and 0.95.
    let permille = (p * 1000.0).round().clamp(0.0, 1000.0) as usize;
    let i = ((sorted.len() - 1) * permille + 500) / 1000;
    sorted[i.min(sorted.len() - 1)]
}

/// Energy cost of `watt_secs` at `usd_per_mwh`, rounded half to even to the micro-dollar.
pub(crate) fn energy_cost(watt_secs: i128, usd_per_mwh: Money) -> Money {
    // 1 MWh = 3.6e9 watt-seconds.
    let num = watt_secs * i128::from(usd_per_mwh.micros());
    let den: i128 = 3_600_000_000;
    let (q, r) = (num.div_euclid(den), num.rem_euclid(den));
    let q = if 2 * r > den || (2 * r == den && q % 2 != 0) {
        q + 1
    } else {
        q
    };
    Money::from_micros(i64::try_from(q).unwrap_or(i64::MAX))
}

fn pool_name(e: &Engine<'_>, site: usize, model: usize) -> String {
    format!("{}/{}", e.fleet.sites[site].name, e.fleet.models[model])
}

pub(crate) fn build(e: Engine<'_>) -> RunResult {
    let sc = e.sc;
    let t = &e.tally;
    let fleet_gpus = e.fleet.gpu_count();
    let fleet_secs = i128::from(fleet_gpus) * i128::from(sc.horizon_secs);

    let mut by_class: BTreeMap<String, Money> = BTreeMap::new();
    let mut by_tenant: BTreeMap<String, Money> = BTreeMap::new();
    let mut months: BTreeMap<String, MonthRow> = BTreeMap::new();
    let mut revenue = 0i64;
    let mut shadow = 0i64;
    for inv in &e.invoices {
        let tenant_idx = e
            .tenant_ids
            .iter()
            .position(|&x| x == inv.tenant)
            .unwrap_or(0);
        let name = sc.tenants[tenant_idx].name.clone();
        let key = inv.month.to_string();
        let row = months.entry(key.clone()).or_insert_with(|| MonthRow {
            month: key,
            revenue_by_class: BTreeMap::new(),
            revenue: Money::ZERO,
        });
        for l in inv.lines.iter().filter(|l| l.billed) {
            let k = Engine::line_class(l.kind).to_string();
            let add = |m: &mut BTreeMap<String, Money>| {
                let v = m.entry(k.clone()).or_default();
                *v = Money::from_micros(v.micros() + l.amount.micros());
            };
            add(&mut by_class);
            add(&mut row.revenue_by_class);
        }
        row.revenue = Money::from_micros(row.revenue.micros() + inv.total.micros());
        let v = by_tenant.entry(name).or_default();
        *v = Money::from_micros(v.micros() + inv.total.micros());
        revenue += inv.total.micros();
        shadow += inv.shadow_total.micros();
        debug_assert!(
            inv.lines
                .iter()
                .all(|l| l.billed || l.kind == LineKind::InternalChargeback)
        );
    }

    let mut power = Vec::new();
    let mut energy = 0i64;
    for (s, site) in e.fleet.sites.iter().enumerate() {
        let ws = t.site_watt_secs[s];
        let cost = energy_cost(ws, site.energy_usd_per_mwh);
        energy += cost.micros();
        power.push(SitePower {
            site: site.name.clone(),
            mean_mw: ws as f64 / sc.horizon_secs as f64 / 1e6,
            peak_mw: t.site_peak_watts[s] as f64 / 1e6,
            budget_mw: site.power_budget_watts as f64 / 1e6,
            energy_mwh: ws as f64 / 3.6e9,
            energy_cost: cost,
        });
    }
    let margin = revenue - energy;

    let mut utilization = BTreeMap::new();
    let mut alloc_total = 0i128;
    let mut allocated_by_class = BTreeMap::new();
    for (i, c) in CLASSES.iter().enumerate() {
        utilization.insert(
            c.to_string(),
            t.alloc_secs[i] as f64 / fleet_secs.max(1) as f64,
        );
        allocated_by_class.insert(c.to_string(), t.alloc_secs[i]);
        alloc_total += t.alloc_secs[i];
    }
    utilization.insert(
        "total".to_string(),
        alloc_total as f64 / fleet_secs.max(1) as f64,
    );

    let mut requests = BTreeMap::new();
    for (i, c) in CLASSES.iter().enumerate() {
        let s = &t.classes[i];
        let mut waits = s.waits.clone();
        waits.sort_unstable();
        let mean = if waits.is_empty() {
            0.0
        } else {
            waits.iter().map(|&w| w as f64).sum::<f64>() / waits.len() as f64
        };
        requests.insert(
            c.to_string(),
            RequestStats {
                arrived: s.arrived,
                placed: s.placed,
                placed_after_wait: s.placed_after_wait,
                refused: s.refused,
                expired: s.expired,
                refused_gpu_hours: s.refused_gpu_seconds as f64 / 3600.0,
                wait_mean_s: mean,
                wait_p50_s: percentile(&waits, 0.5),
                wait_p95_s: percentile(&waits, 0.95),
                wait_max_s: waits.last().copied().unwrap_or(0),
                preempted: s.preempted,
                preempted_gpus: s.preempted_gpus,
                interrupted_by_failure: s.interrupted_by_failure,
                relaunched: s.relaunched,
            },
        );
    }

    let mut stranded_share_mean = BTreeMap::new();
    for (&(site, model), &sum) in &t.stranded_sum {
        stranded_share_mean.insert(
            pool_name(&e, site, model),
            sum / t.samples_taken.max(1) as f64,
        );
    }

    let totals = Totals {
        revenue: Money::from_micros(revenue),
        revenue_by_class: by_class,
        revenue_by_tenant: by_tenant,
        internal_shadow_value: Money::from_micros(shadow),
        energy_cost: Money::from_micros(energy),
        gross_margin: Money::from_micros(margin),
        gross_margin_percent: if revenue > 0 {
            margin as f64 * 100.0 / revenue as f64
        } else {
            0.0
        },
        utilization,
        requests,
        node_failures: t.node_failures,
        pool_outages: t.outages,
        pool_downtime_gpu_hours: t.downtime_gpu_secs as f64 / 3600.0,
        power,
        stranded_share_mean,
        gpu_seconds: GpuSeconds {
            fleet: fleet_secs,
            allocated: t.ledger_gpu_secs.iter().sum(),
            idle: t.free_secs,
            down: t.down_secs,
            allocated_by_class,
        },
    };
    let series_columns = SeriesColumns {
        power_mw: e.fleet.sites.iter().map(|s| s.name.clone()).collect(),
        spot_price: e
            .spot_pools
            .iter()
            .map(|&(s, m)| pool_name(&e, s, m))
            .collect(),
        stranded: e
            .fleet
            .pools
            .keys()
            .map(|&(s, m)| pool_name(&e, s, m))
            .collect(),
    };
    let tenants = sc
        .tenants
        .iter()
        .enumerate()
        .map(|(i, t)| (e.tenant_ids[i], t.name.clone(), t.internal))
        .collect();
    let finance = crate::accounts::build(sc, &e.fleet, &e.invoices, &t.marks);
    RunResult {
        finance,
        scenario: sc.name.clone(),
        variant: e.v.name.clone(),
        seed: e.seed,
        start: sc.start.to_string(),
        horizon_days: sc.horizon_secs as f64 / 86_400.0,
        fleet_gpus,
        requests: e.original_jobs as u64,
        totals,
        months: months.into_values().collect(),
        series_columns,
        series: e.series,
        invoices: e.invoices,
        ledger: e.ledger,
        contracts: e.terms,
        downtime: e.downtime,
        tenants,
    }
}

/// Dollars with thousands separators and cents, for people.
pub fn usd(m: Money) -> String {
    let micros = m.micros();
    let neg = micros < 0;
    let cents = (micros.unsigned_abs() + 5_000) / 10_000;
    let (whole, frac) = (cents / 100, cents % 100);
    let digits = whole.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    format!("{}${out}.{frac:02}", if neg { "-" } else { "" })
}

impl RunResult {
    /// The result as pretty JSON (deterministic: ordered maps, no wall-clock values).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The time series as CSV.
    pub fn series_csv(&self) -> String {
        let mut s = String::from("hour,reserved,internal,on_demand,spot,free,down,queued");
        for c in &self.series_columns.power_mw {
            let _ = write!(s, ",power_mw:{c}");
        }
        for c in &self.series_columns.spot_price {
            let _ = write!(s, ",spot_price:{c}");
        }
        for c in &self.series_columns.stranded {
            let _ = write!(s, ",stranded:{c}");
        }
        s.push('\n');
        for r in &self.series {
            let _ = write!(
                s,
                "{},{},{},{},{},{},{},{}",
                r.hour,
                r.allocated[0],
                r.allocated[1],
                r.allocated[2],
                r.allocated[3],
                r.free,
                r.down,
                r.queued
            );
            for p in &r.power_mw {
                let _ = write!(s, ",{p:.3}");
            }
            for p in &r.spot_price {
                let _ = write!(s, ",{p}");
            }
            for p in &r.stranded {
                let _ = write!(s, ",{p:.4}");
            }
            s.push('\n');
        }
        s
    }

    /// Revenue per month and line kind as CSV.
    pub fn months_csv(&self) -> String {
        let kinds = ["reserved", "on-demand", "spot", "sla-credit"];
        let mut s = String::from("month,reserved,on_demand,spot,sla_credit,revenue\n");
        for m in &self.months {
            let _ = write!(s, "{}", m.month);
            for k in kinds {
                let _ = write!(
                    s,
                    ",{}",
                    m.revenue_by_class.get(k).copied().unwrap_or_default()
                );
            }
            let _ = writeln!(s, ",{}", m.revenue);
        }
        s
    }

    /// The accounts month by month as CSV: the fleet (`site` = `all`), then each site.
    pub fn finance_csv(&self) -> String {
        let mut s = String::from(
            "site,month,revenue,energy,fixed_opex,ebitda,depreciation,interest,net_income,principal,cash_flow,utilization_percent,down_percent\n",
        );
        let f = &self.finance;
        let all = std::iter::once(("all", &f.months)).chain(
            f.sites
                .iter()
                .map(|x| (x.site.as_str(), &x.accounts.months)),
        );
        for (site, months) in all {
            for m in months {
                let _ = writeln!(
                    s,
                    "{site},{},{},{},{},{},{},{},{},{},{},{:.3},{:.3}",
                    m.month,
                    m.revenue,
                    m.energy,
                    m.fixed_opex,
                    m.ebitda,
                    m.depreciation,
                    m.interest,
                    m.net_income,
                    m.principal,
                    m.cash_flow,
                    m.utilization_percent,
                    m.down_percent
                );
            }
        }
        s
    }

    /// The usage ledger as JSON Lines (empty unless the scenario keeps it).
    pub fn ledger_jsonl(&self) -> String {
        let mut s = String::new();
        for r in &self.ledger {
            if let Ok(line) = serde_json::to_string(r) {
                s.push_str(&line);
                s.push('\n');
            }
        }
        s
    }

    /// A terminal summary.
    pub fn summary(&self) -> String {
        let t = &self.totals;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} / {} (seed {}): {:.0} days from {}, {} GPUs, {} requests",
            self.scenario,
            self.variant,
            self.seed,
            self.horizon_days,
            self.start,
            self.fleet_gpus,
            self.requests
        );
        let _ = writeln!(s, "  revenue        {:>22}", usd(t.revenue));
        for (k, v) in &t.revenue_by_class {
            let _ = writeln!(s, "    {k:<12} {:>22}", usd(*v));
        }
        for (k, v) in &t.revenue_by_tenant {
            let _ = writeln!(s, "    tenant {k:<12} {:>16}", usd(*v));
        }
        let _ = writeln!(
            s,
            "  internal value {:>22}  (shadow price, not billed)",
            usd(t.internal_shadow_value)
        );
        let _ = writeln!(s, "  energy cost    {:>22}", usd(t.energy_cost));
        let _ = writeln!(
            s,
            "  gross margin   {:>22}  ({:.1}%)",
            usd(t.gross_margin),
            t.gross_margin_percent
        );
        let u = |k: &str| t.utilization.get(k).copied().unwrap_or(0.0) * 100.0;
        let _ = writeln!(
            s,
            "  utilization    {:.1}% (reserved {:.1}%, internal {:.1}%, on-demand {:.1}%, spot {:.1}%)",
            u("total"),
            u("reserved"),
            u("internal"),
            u("on-demand"),
            u("spot")
        );
        let _ = writeln!(
            s,
            "  requests       arrived    placed  waited  refused  expired  refused GPU-h  p95 wait  preempted"
        );
        for (k, r) in &t.requests {
            if r.arrived == 0 {
                continue;
            }
            let _ = writeln!(
                s,
                "    {k:<10} {:>9} {:>9} {:>7} {:>8} {:>8} {:>14.0} {:>8}s {:>10}",
                r.arrived,
                r.placed,
                r.placed_after_wait,
                r.refused,
                r.expired,
                r.refused_gpu_hours,
                r.wait_p95_s,
                r.preempted
            );
        }
        for p in &t.power {
            let _ = writeln!(
                s,
                "  power {:<10} mean {:.1} MW, peak {:.1} of {:.1} MW, {:.0} MWh, {}",
                p.site,
                p.mean_mw,
                p.peak_mw,
                p.budget_mw,
                p.energy_mwh,
                usd(p.energy_cost)
            );
        }
        let _ = writeln!(
            s,
            "  failures       {} nodes, {} pool outages, {:.0} GPU-h short",
            t.node_failures, t.pool_outages, t.pool_downtime_gpu_hours
        );
        let f = &self.finance;
        if f.capex != Money::ZERO {
            let _ = writeln!(
                s,
                "  capex          {:>22}  (debt {}, equity {})",
                usd(f.capex),
                usd(f.debt),
                usd(f.equity)
            );
            let _ = writeln!(
                s,
                "  EBITDA         {:>22}  (after fixed costs {})",
                usd(f.ebitda),
                usd(f.fixed_opex)
            );
            let _ = writeln!(
                s,
                "  net income     {:>22}  ({:.1}%; depreciation {}, interest {})",
                usd(f.net_income),
                f.net_margin_percent,
                usd(f.depreciation),
                usd(f.interest)
            );
            let _ = writeln!(
                s,
                "  NPV            {:>22}  (at {:.1}%; IRR {}, payback {}; residual {})",
                usd(f.npv),
                f.discount_percent,
                f.irr_percent
                    .map_or_else(|| "none".to_string(), |r| format!("{r:.1}%")),
                f.payback_month.map_or_else(
                    || "not within the horizon".to_string(),
                    |m| format!("month {m}")
                ),
                usd(f.residual_value)
            );
            if f.sites.len() > 1 {
                for x in &f.sites {
                    let a = &x.accounts;
                    let first = a.months.first().map_or(0.0, |m| m.utilization_percent);
                    let last = a.months.last().map_or(0.0, |m| m.utilization_percent);
                    let _ = writeln!(
                        s,
                        "  site {:<10} capex {}, revenue {}, net {}, NPV {}, utilization {:.1}% → {:.1}% (first → last month)",
                        x.site,
                        usd(a.capex),
                        usd(a.revenue),
                        usd(a.net_income),
                        usd(a.npv),
                        first,
                        last
                    );
                }
            }
        }
        s
    }
}
