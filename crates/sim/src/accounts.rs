//! The business case of a run: capital expenditure per site, and per month revenue, energy,
//! fixed operating cost, EBITDA, depreciation, interest and net income, per site and for the
//! whole fleet; then the equity cash flows and their value (NPV, IRR, payback).
//!
//! The hardware is bought at the start of the horizon; the debt share of it is borrowed then
//! and repaid in equal principal instalments. Every month the horizon touches counts as a
//! whole month of depreciation, interest and fixed cost. The equity cash flow of month 0 is
//! the capital expenditure not borrowed (negative); of month k, EBITDA − interest −
//! principal; the last month adds the residual value of the hardware and repays the debt
//! still outstanding.

#![allow(
    clippy::cast_precision_loss,
    reason = "utilization shares and percentages are for people"
)]

use neocloud_billing::Invoice;
use neocloud_types::Money;
use serde::Serialize;

use crate::costs::{Costs, Residual};
use crate::engine::MonthMark;
use crate::finance::{self, add, sub, sum};
use crate::fleet::Fleet;
use crate::scenario::Scenario;

/// One month of the accounts.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FinanceMonth {
    /// `YYYY-MM`.
    pub month: String,
    /// Billed revenue.
    pub revenue: Money,
    /// Energy cost.
    pub energy: Money,
    /// Fixed operating cost (per MW of the sites' power budgets).
    pub fixed_opex: Money,
    /// Revenue − energy − fixed operating cost.
    pub ebitda: Money,
    /// Depreciation of the capital expenditure.
    pub depreciation: Money,
    /// Interest on the debt.
    pub interest: Money,
    /// EBITDA − depreciation − interest (before tax).
    pub net_income: Money,
    /// Debt repaid.
    pub principal: Money,
    /// Equity cash flow: EBITDA − interest − principal (the last month also the residual
    /// value less the debt outstanding).
    pub cash_flow: Money,
    /// Allocated GPU-time over the GPUs' time, percent.
    pub utilization_percent: f64,
    /// GPU-time on failed or unpowered nodes, percent.
    pub down_percent: f64,
}

/// What one site costs and earns.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SiteFinance {
    /// Site name.
    pub site: String,
    /// Whether it is in orbit.
    pub orbital: bool,
    /// GPUs.
    pub gpus: u64,
    /// Capital expenditure on GPUs.
    pub capex_gpus: Money,
    /// On nodes besides their GPUs.
    pub capex_nodes: Money,
    /// On the facility (per MW).
    pub capex_facility: Money,
    /// On launching the nodes (orbital sites).
    pub capex_launch: Money,
    /// The site's accounts and value.
    #[serde(flatten)]
    pub accounts: Finance,
}

/// Accounts and value of the whole fleet (or one site).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Finance {
    /// Capital expenditure at the start.
    pub capex: Money,
    /// Of which borrowed.
    pub debt: Money,
    /// Of which paid by the owners (month 0 of the cash flows).
    pub equity: Money,
    /// Revenue over the horizon.
    pub revenue: Money,
    /// Energy cost.
    pub energy: Money,
    /// Fixed operating cost.
    pub fixed_opex: Money,
    /// EBITDA.
    pub ebitda: Money,
    /// Depreciation.
    pub depreciation: Money,
    /// Interest.
    pub interest: Money,
    /// Net income before tax: EBITDA − depreciation − interest.
    pub net_income: Money,
    /// Net income over revenue, percent (0 without revenue).
    pub net_margin_percent: f64,
    /// What the hardware is worth at the end (`costs.residual`).
    pub residual_value: Money,
    /// Debt still owed at the end, repaid from the last month's cash.
    pub debt_outstanding: Money,
    /// Yearly discount rate, percent.
    pub discount_percent: f64,
    /// Net present value of the equity cash flows at the discount rate.
    pub npv: Money,
    /// Internal rate of return of the equity cash flows, percent a year (none when the flows
    /// never change sign).
    pub irr_percent: Option<f64>,
    /// The month (1 = the first) at whose end the cumulative equity cash flow turns
    /// non-negative; 0 with nothing invested; none within the horizon.
    pub payback_month: Option<u32>,
    /// Month by month.
    pub months: Vec<FinanceMonth>,
    /// Per site (empty inside a site's own accounts).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<SiteFinance>,
}

/// GPUs bought of one model: (price per GPU, count, yearly decline ppm).
type GpuPart = (Money, u64, i64);

/// The inputs of one set of accounts.
struct Ledger<'a> {
    capex: Money,
    gpu_parts: Vec<GpuPart>,
    opex_yearly: Money,
    revenue: Vec<Money>,
    energy: Vec<Money>,
    /// (allocated, down, total) GPU-seconds per month.
    gpu_secs: Vec<(i128, i128, i128)>,
    months: &'a [String],
}

fn pct(part: i128, whole: i128) -> f64 {
    if whole <= 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn accounts(c: &Costs, l: &Ledger<'_>) -> Finance {
    let n = l.months.len();
    let n32 = u32::try_from(n).unwrap_or(u32::MAX);
    let debt = finance::scale_cents(l.capex, i128::from(c.debt_ppm), finance::PPM);
    let equity = sub(l.capex, debt);
    let dep = c.depreciation.monthly(l.capex, n);
    let service = finance::debt_service(debt, c.interest_ppm, c.term_months, n);
    let opex = finance::monthly_of_yearly(l.opex_yearly, n);
    let residual = match c.residual {
        Residual::None => Money::ZERO,
        Residual::Book => c.depreciation.book_value(l.capex, n32),
        Residual::Market => {
            let bought: Money = sum(l.gpu_parts.iter().map(|&(p, k, _)| finance::times(p, k)));
            let now: Money = sum(l
                .gpu_parts
                .iter()
                .map(|&(p, k, d)| finance::times(finance::declined(p, d, n32), k)));
            let (num, den) = c.depreciation.cumulative_share(n32);
            let gpus_left = finance::scale_cents(now, den - num, den);
            add(
                gpus_left,
                c.depreciation.book_value(sub(l.capex, bought), n32),
            )
        }
    };
    let outstanding = service.last().map_or(debt, |s| s.balance);
    let mut months = Vec::with_capacity(n);
    let mut flows = vec![sub(Money::ZERO, equity)];
    for k in 0..n {
        let revenue = l.revenue.get(k).copied().unwrap_or_default();
        let energy = l.energy.get(k).copied().unwrap_or_default();
        let ebitda = sub(sub(revenue, energy), opex[k]);
        let net = sub(sub(ebitda, dep[k]), service[k].interest);
        let mut cash = sub(sub(ebitda, service[k].interest), service[k].principal);
        if k + 1 == n {
            cash = sub(add(cash, residual), outstanding);
        }
        flows.push(cash);
        let (a, d, t) = l.gpu_secs.get(k).copied().unwrap_or_default();
        months.push(FinanceMonth {
            month: l.months[k].clone(),
            revenue,
            energy,
            fixed_opex: opex[k],
            ebitda,
            depreciation: dep[k],
            interest: service[k].interest,
            net_income: net,
            principal: service[k].principal,
            cash_flow: cash,
            utilization_percent: pct(a, t),
            down_percent: pct(d, t),
        });
    }
    let total = |f: fn(&FinanceMonth) -> Money| sum(months.iter().map(f));
    let revenue = total(|m| m.revenue);
    let net_income = total(|m| m.net_income);
    Finance {
        capex: l.capex,
        debt,
        equity,
        revenue,
        energy: total(|m| m.energy),
        fixed_opex: total(|m| m.fixed_opex),
        ebitda: total(|m| m.ebitda),
        depreciation: total(|m| m.depreciation),
        interest: total(|m| m.interest),
        net_income,
        net_margin_percent: pct(
            i128::from(net_income.micros()),
            i128::from(revenue.micros()),
        ),
        residual_value: residual,
        debt_outstanding: outstanding,
        discount_percent: c.discount_rate * 100.0,
        npv: finance::npv(&flows, c.discount_rate),
        irr_percent: finance::irr(&flows).map(|r| r * 100.0),
        payback_month: finance::payback_month(&flows),
        months,
        sites: Vec::new(),
    }
}

/// The accounts of a run, from the engine's invoices and month marks.
pub(crate) fn build(
    sc: &Scenario,
    fleet: &Fleet,
    invoices: &[Invoice],
    marks: &[MonthMark],
) -> Finance {
    let months: Vec<String> = marks.iter().map(|m| m.month.to_string()).collect();
    let n = marks.len();
    let n_sites = fleet.sites.len();
    let index = |month: &neocloud_billing::Month| marks.iter().position(|m| &m.month == month);

    // Revenue per month, in all and per site (billed lines carry their site).
    let mut revenue = vec![0i128; n];
    let mut site_revenue = vec![vec![0i128; n]; n_sites];
    for inv in invoices {
        let Some(k) = index(&inv.month) else { continue };
        revenue[k] += i128::from(inv.total.micros());
        for l in inv.lines.iter().filter(|l| l.billed) {
            if let Some(s) = l
                .site
                .and_then(|id| fleet.sites.iter().position(|x| x.id == id))
            {
                site_revenue[s][k] += i128::from(l.amount.micros());
            }
        }
    }
    let to_money = |v: &[i128]| -> Vec<Money> {
        v.iter()
            .map(|&x| Money::from_micros(i64::try_from(x).unwrap_or(i64::MAX)))
            .collect()
    };

    // Energy per month and site: the cumulative cost at each close, less the one before, so
    // the months add up to the run's total.
    let mut site_energy = vec![Vec::with_capacity(n); n_sites];
    for (s, site) in fleet.sites.iter().enumerate() {
        let mut before = Money::ZERO;
        for m in marks {
            let cum = crate::report::energy_cost(m.site_watt_secs[s], site.energy_usd_per_mwh);
            site_energy[s].push(sub(cum, before));
            before = cum;
        }
    }

    // GPUs per site, and capital expenditure.
    let mut site_gpus = vec![0u64; n_sites];
    let mut site_parts: Vec<Vec<GpuPart>> = vec![Vec::new(); n_sites];
    let mut capex_gpus = vec![Money::ZERO; n_sites];
    let mut capex_nodes = vec![Money::ZERO; n_sites];
    let mut node_count = vec![0u64; n_sites];
    for (&(s, model), slots) in &fleet.pools {
        let gpus: u64 = slots.iter().map(|&i| u64::from(fleet.nodes[i].gpus)).sum();
        site_gpus[s] += gpus;
        node_count[s] += slots.len() as u64;
        if let Some(g) = sc
            .costs
            .gpus
            .iter()
            .find(|g| g.gpu_model == fleet.models[model])
        {
            site_parts[s].push((g.per_gpu, gpus, g.decline_ppm));
            capex_gpus[s] = add(capex_gpus[s], finance::times(g.per_gpu, gpus));
            capex_nodes[s] = add(
                capex_nodes[s],
                finance::times(g.per_node, slots.len() as u64),
            );
        }
    }

    let gpu_secs_of = |s: usize| -> Vec<(i128, i128, i128)> {
        let mut out = Vec::with_capacity(n);
        let (mut a0, mut d0, mut t0) = (0i128, 0i128, 0i64);
        for m in marks {
            let dt = i128::from(m.at - t0);
            out.push((
                m.site_alloc_secs[s] - a0,
                m.site_down_secs[s] - d0,
                i128::from(site_gpus[s]) * dt,
            ));
            (a0, d0, t0) = (m.site_alloc_secs[s], m.site_down_secs[s], m.at);
        }
        out
    };

    let mut sites = Vec::new();
    for (s, plan) in sc.sites.iter().enumerate().take(n_sites) {
        let watts = i128::from(fleet.sites[s].power_budget_watts);
        let facility = finance::scale_cents(plan.facility_capex_per_mw, watts, 1_000_000);
        let launch = finance::scale_cents(
            plan.launch_per_kg,
            i128::from(plan.grams_per_node) * i128::from(node_count[s]),
            1000,
        );
        let capex = sum([capex_gpus[s], capex_nodes[s], facility, launch]);
        let ledger = Ledger {
            capex,
            gpu_parts: site_parts[s].clone(),
            opex_yearly: finance::scale_cents(plan.fixed_opex_per_mw_year, watts, 1_000_000),
            revenue: to_money(&site_revenue[s]),
            energy: site_energy[s].clone(),
            gpu_secs: gpu_secs_of(s),
            months: &months,
        };
        sites.push((
            ledger.capex,
            ledger.opex_yearly,
            SiteFinance {
                site: plan.name.clone(),
                orbital: plan.orbital,
                gpus: site_gpus[s],
                capex_gpus: capex_gpus[s],
                capex_nodes: capex_nodes[s],
                capex_facility: facility,
                capex_launch: launch,
                accounts: accounts(&sc.costs, &ledger),
            },
        ));
    }

    let per_site: Vec<Vec<(i128, i128, i128)>> = (0..n_sites).map(gpu_secs_of).collect();
    let all_secs: Vec<(i128, i128, i128)> = (0..n)
        .map(|k| {
            per_site
                .iter()
                .map(|v| v[k])
                .fold((0, 0, 0), |x, y| (x.0 + y.0, x.1 + y.1, x.2 + y.2))
        })
        .collect();
    let energy: Vec<Money> = (0..n)
        .map(|k| sum(site_energy.iter().map(|e| e[k])))
        .collect();
    let ledger = Ledger {
        capex: sum(sites.iter().map(|x| x.0)),
        gpu_parts: site_parts.concat(),
        opex_yearly: sum(sites.iter().map(|x| x.1)),
        revenue: to_money(&revenue),
        energy,
        gpu_secs: all_secs,
        months: &months,
    };
    let mut f = accounts(&sc.costs, &ledger);
    f.sites = sites.into_iter().map(|x| x.2).collect();
    f
}
