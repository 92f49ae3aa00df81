//! What the fleet costs and how it is paid for (`[costs]` of a scenario), and what each site
//! is (`[[sites]]`: its facility costs, and for an orbital site its power, failures,
//! servicing and launch). Read and checked with the rest of the scenario; the arithmetic is
//! in [`crate::finance`], the monthly statements in [`crate::accounts`].

#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "percentages, years and masses are checked finite and in range before they become integers"
)]

use neocloud_fleet::FleetSpec;
use neocloud_types::{Money, SiteKind};
use serde::Deserialize;

use crate::error::{SimError, invalid};
use crate::finance::Depreciation;
use crate::scenario::{Num, money, non_negative};

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCosts {
    #[serde(default)]
    discount_percent: Option<Num>,
    #[serde(default)]
    depreciation_years: Option<Num>,
    #[serde(default)]
    depreciation_schedule: Option<Vec<Num>>,
    #[serde(default)]
    facility_capex_per_mw: Option<String>,
    #[serde(default)]
    fixed_opex_per_mw_year: Option<String>,
    #[serde(default)]
    residual: Option<String>,
    #[serde(default)]
    financing: Option<RawFinancing>,
    #[serde(default)]
    gpus: Vec<RawGpuCost>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFinancing {
    #[serde(default)]
    debt_percent: Option<Num>,
    #[serde(default)]
    interest_percent: Option<Num>,
    #[serde(default)]
    term_years: Option<Num>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGpuCost {
    gpu_model: String,
    #[serde(default)]
    per_gpu: Option<String>,
    #[serde(default)]
    per_node: Option<String>,
    #[serde(default)]
    price_decline_percent_per_year: Option<Num>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSite {
    site: String,
    #[serde(default)]
    facility_capex_per_mw: Option<String>,
    #[serde(default)]
    fixed_opex_per_mw_year: Option<String>,
    #[serde(default)]
    node_afr: Option<Num>,
    #[serde(default)]
    repair: Option<bool>,
    #[serde(default)]
    servicing_days: Vec<Num>,
    #[serde(default)]
    solar_mw: Option<Num>,
    #[serde(default)]
    eclipse_percent: Option<Num>,
    #[serde(default)]
    launch_per_kg: Option<String>,
    #[serde(default)]
    kg_per_node: Option<Num>,
}

/// What is left of the fleet at the end of the horizon, counted in the last month's cash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Residual {
    /// Nothing: the hardware is worth nothing at the end.
    None,
    /// Its net book value (cost less depreciation).
    Book,
    /// GPUs at their market price then (the purchase price after its yearly decline) times
    /// the share of their life left; the rest at book value.
    Market,
}

/// The purchase price of a GPU model.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuCost {
    /// Model name.
    pub gpu_model: String,
    /// $ per GPU.
    pub per_gpu: Money,
    /// $ per node besides its GPUs (chassis, CPUs, memory, network cards, its share of the
    /// fabric).
    pub per_node: Money,
    /// Yearly decline of the GPU's purchase price, ppm.
    pub decline_ppm: i64,
}

/// Capital costs, depreciation and financing of the scenario.
#[derive(Clone, Debug, PartialEq)]
pub struct Costs {
    /// Yearly discount rate of the valuation (0.1 = 10%).
    pub discount_rate: f64,
    /// How capital expenditure is written off.
    pub depreciation: Depreciation,
    /// Share of capital expenditure borrowed, ppm.
    pub debt_ppm: i64,
    /// Yearly interest rate of the debt, ppm.
    pub interest_ppm: i64,
    /// Months over which the debt is repaid (equal principal instalments).
    pub term_months: u32,
    /// What the hardware is worth at the end of the horizon.
    pub residual: Residual,
    /// Purchase prices by GPU model.
    pub gpus: Vec<GpuCost>,
}

impl Default for Costs {
    fn default() -> Self {
        Costs {
            discount_rate: 0.1,
            depreciation: Depreciation::StraightLine { months: 60 },
            debt_ppm: 0,
            interest_ppm: 0,
            term_months: 60,
            residual: Residual::Book,
            gpus: Vec::new(),
        }
    }
}

/// One site of the fleet as the business case sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct SitePlan {
    /// Site name (from the fleet file).
    pub name: String,
    /// Orbital (from the fleet file's `kind`).
    pub orbital: bool,
    /// $ per MW of the site's power budget, spent at the start.
    pub facility_capex_per_mw: Money,
    /// $ per MW of the site's power budget per year.
    pub fixed_opex_per_mw_year: Money,
    /// Failures per node per year of this site, when it has its own rate.
    pub node_afr: Option<f64>,
    /// Whether failed nodes are repaired (default: yes on the ground, no in orbit).
    pub repair: bool,
    /// Seconds after the start at which a servicing mission repairs every failed node.
    pub servicing_secs: Vec<i64>,
    /// Facility watts the site can sustain, when its power is solar: the array's output less
    /// the share of time in eclipse (batteries carry the load through eclipses).
    pub powered_watts: Option<i64>,
    /// $ per kg launched.
    pub launch_per_kg: Money,
    /// Grams launched per node (the node and its share of power, cooling and structure).
    pub grams_per_node: u64,
}

fn ppm(field: &str, v: Option<Num>, default: f64, max: f64) -> Result<i64, SimError> {
    let x = non_negative(field, v, default, Some(max))?;
    Ok((x * 10_000.0).round() as i64)
}

fn opt_money(field: &str, v: Option<&String>) -> Result<Money, SimError> {
    v.map_or(Ok(Money::ZERO), |s| money(field, s))
}

pub(crate) fn costs(raw: Option<&RawCosts>, fleet: &FleetSpec) -> Result<Costs, SimError> {
    let Some(r) = raw else {
        return Ok(Costs::default());
    };
    let discount = non_negative(
        "costs.discount_percent",
        r.discount_percent,
        10.0,
        Some(1000.0),
    )?;
    let depreciation = match (&r.depreciation_schedule, r.depreciation_years) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "costs.depreciation_schedule",
                "give depreciation_years or depreciation_schedule, not both",
            ));
        }
        (Some(s), None) => {
            let mut yearly = Vec::new();
            for (i, x) in s.iter().enumerate() {
                yearly.push(ppm(
                    &format!("costs.depreciation_schedule[{i}]"),
                    Some(*x),
                    0.0,
                    100.0,
                )?);
            }
            let total: i64 = yearly.iter().sum();
            if total != 1_000_000 {
                return Err(invalid(
                    "costs.depreciation_schedule",
                    format!(
                        "the yearly percentages must add up to 100, they add up to {}",
                        total as f64 / 10_000.0
                    ),
                ));
            }
            Depreciation::Schedule { yearly_ppm: yearly }
        }
        (None, y) => {
            let years = non_negative("costs.depreciation_years", y, 5.0, Some(100.0))?;
            let months = (years * 12.0).round() as u32;
            if months == 0 {
                return Err(invalid(
                    "costs.depreciation_years",
                    "must be at least one month (1/12)",
                ));
            }
            Depreciation::StraightLine { months }
        }
    };
    let (debt_ppm, interest_ppm, term_months) = match &r.financing {
        None => (0, 0, 60),
        Some(f) => {
            let term = non_negative("costs.financing.term_years", f.term_years, 5.0, Some(100.0))?;
            let term_months = (term * 12.0).round() as u32;
            if term_months == 0 {
                return Err(invalid(
                    "costs.financing.term_years",
                    "must be at least one month (1/12)",
                ));
            }
            (
                ppm("costs.financing.debt_percent", f.debt_percent, 0.0, 100.0)?,
                ppm(
                    "costs.financing.interest_percent",
                    f.interest_percent,
                    0.0,
                    1000.0,
                )?,
                term_months,
            )
        }
    };
    let residual = match r.residual.as_deref() {
        None | Some("book") => Residual::Book,
        Some("market") => Residual::Market,
        Some("none") => Residual::None,
        Some(other) => {
            return Err(invalid(
                "costs.residual",
                format!("'{other}' is not one of: book, market, none"),
            ));
        }
    };
    let mut gpus: Vec<GpuCost> = Vec::new();
    for (i, g) in r.gpus.iter().enumerate() {
        let f = format!("costs.gpus[{i}]");
        if !fleet
            .sites
            .iter()
            .any(|s| s.nodes.iter().any(|n| n.gpu_model == g.gpu_model))
        {
            return Err(invalid(
                format!("{f}.gpu_model"),
                format!("no node of the fleet has GPU model '{}'", g.gpu_model),
            ));
        }
        if gpus.iter().any(|x| x.gpu_model == g.gpu_model) {
            return Err(invalid(
                format!("{f}.gpu_model"),
                format!("'{}' is listed twice", g.gpu_model),
            ));
        }
        gpus.push(GpuCost {
            gpu_model: g.gpu_model.clone(),
            per_gpu: opt_money(&format!("{f}.per_gpu"), g.per_gpu.as_ref())?,
            per_node: opt_money(&format!("{f}.per_node"), g.per_node.as_ref())?,
            decline_ppm: ppm(
                &format!("{f}.price_decline_percent_per_year"),
                g.price_decline_percent_per_year,
                0.0,
                100.0,
            )?,
        });
    }
    Ok(Costs {
        discount_rate: discount / 100.0,
        depreciation,
        debt_ppm,
        interest_ppm,
        term_months,
        residual,
        gpus,
    })
}

/// Every site of the fleet, in fleet order, with the scenario's `[[sites]]` applied.
pub(crate) fn sites(
    raw: &[RawSite],
    costs: Option<&RawCosts>,
    fleet: &FleetSpec,
    horizon_secs: i64,
) -> Result<Vec<SitePlan>, SimError> {
    let facility = opt_money(
        "costs.facility_capex_per_mw",
        costs.and_then(|c| c.facility_capex_per_mw.as_ref()),
    )?;
    let opex = opt_money(
        "costs.fixed_opex_per_mw_year",
        costs.and_then(|c| c.fixed_opex_per_mw_year.as_ref()),
    )?;
    let mut out: Vec<SitePlan> = fleet
        .sites
        .iter()
        .map(|s| {
            let orbital = s.kind == SiteKind::Orbital;
            SitePlan {
                name: s.name.clone(),
                orbital,
                facility_capex_per_mw: facility,
                fixed_opex_per_mw_year: opex,
                node_afr: None,
                repair: !orbital,
                servicing_secs: Vec::new(),
                powered_watts: None,
                launch_per_kg: Money::ZERO,
                grams_per_node: 0,
            }
        })
        .collect();
    let mut seen = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let f = format!("sites[{i}]");
        let Some(si) = fleet.sites.iter().position(|s| s.name == r.site) else {
            return Err(invalid(
                format!("{f}.site"),
                format!("site '{}' is not in the fleet file", r.site),
            ));
        };
        if seen.contains(&si) {
            return Err(invalid(
                format!("{f}.site"),
                format!("site '{}' is listed twice", r.site),
            ));
        }
        seen.push(si);
        let p = &mut out[si];
        if let Some(v) = &r.facility_capex_per_mw {
            p.facility_capex_per_mw = money(&format!("{f}.facility_capex_per_mw"), v)?;
        }
        if let Some(v) = &r.fixed_opex_per_mw_year {
            p.fixed_opex_per_mw_year = money(&format!("{f}.fixed_opex_per_mw_year"), v)?;
        }
        if r.node_afr.is_some() {
            p.node_afr = Some(non_negative(
                &format!("{f}.node_afr"),
                r.node_afr,
                0.0,
                Some(365.0),
            )?);
        }
        if let Some(rep) = r.repair {
            p.repair = rep;
        }
        for (j, d) in r.servicing_days.iter().enumerate() {
            let days = non_negative(&format!("{f}.servicing_days[{j}]"), Some(*d), 0.0, None)?;
            let secs = (days * 86_400.0).round() as i64;
            if secs >= horizon_secs {
                return Err(invalid(
                    format!("{f}.servicing_days[{j}]"),
                    format!("day {days} is not inside the horizon"),
                ));
            }
            p.servicing_secs.push(secs);
        }
        p.servicing_secs.sort_unstable();
        let orbital_only = [
            ("solar_mw", r.solar_mw.is_some()),
            ("eclipse_percent", r.eclipse_percent.is_some()),
            ("launch_per_kg", r.launch_per_kg.is_some()),
            ("kg_per_node", r.kg_per_node.is_some()),
        ];
        if !p.orbital
            && let Some((name, _)) = orbital_only.iter().find(|x| x.1)
        {
            return Err(invalid(
                format!("{f}.{name}"),
                format!(
                    "only for orbital sites, and the fleet file gives '{}' kind terrestrial",
                    r.site
                ),
            ));
        }
        if r.solar_mw.is_some() || r.eclipse_percent.is_some() {
            let budget = fleet.sites[si].power_budget_watts as f64 / 1e6;
            let solar = non_negative(&format!("{f}.solar_mw"), r.solar_mw, budget, Some(1e6))?;
            let eclipse = non_negative(
                &format!("{f}.eclipse_percent"),
                r.eclipse_percent,
                0.0,
                Some(100.0),
            )?;
            p.powered_watts = Some((solar * (1.0 - eclipse / 100.0) * 1e6).floor() as i64);
        }
        if let Some(v) = &r.launch_per_kg {
            p.launch_per_kg = money(&format!("{f}.launch_per_kg"), v)?;
        }
        let kg = non_negative(&format!("{f}.kg_per_node"), r.kg_per_node, 0.0, Some(1e6))?;
        p.grams_per_node = (kg * 1000.0).round() as u64;
    }
    Ok(out)
}
