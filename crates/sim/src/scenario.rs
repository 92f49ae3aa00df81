//! The scenario file: a fleet, tenants, a price book, contracts, failure rates, demand and
//! the variants to compare. [`Scenario::load`] reads and checks it completely before
//! anything runs, so a typo fails in a second, not after an hour of simulation.
//!
//! The format is documented in `docs/planning.md`; `examples/memphis.toml` is a full one.

#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "floats here are workload figures (hours, rates, counts) checked finite and in range before they become integers, and `as` saturates; money never passes through a float"
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use neocloud_billing::{PriceBook, PriceEntry, PriceKind};
use neocloud_fleet::FleetSpec;
use neocloud_types::{Class, FleetPolicy, GangLevel, Money, Shape, Timestamp, builtin_gpu_models};
use serde::Deserialize;

use crate::costs::{Costs, RawCosts, RawSite, SitePlan};
use crate::error::{SimError, invalid};
use crate::trace::{self, TraceRow};

/// A number written as an integer or a float in TOML.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    fn get(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: String,
    #[serde(default)]
    description: String,
    fleet: String,
    start: String,
    horizon_days: Num,
    #[serde(default)]
    seeds: Vec<u64>,
    #[serde(default)]
    fleet_policy: Option<String>,
    #[serde(default)]
    placement: Option<String>,
    #[serde(default)]
    shared_nodes: bool,
    #[serde(default)]
    spare_buffer_percent: Option<Num>,
    #[serde(default)]
    sample_hours: Option<Num>,
    #[serde(default)]
    preemption_grace_seconds: Option<Num>,
    #[serde(default)]
    keep_ledger: bool,
    #[serde(default)]
    failures: Option<RawFailures>,
    #[serde(default)]
    tenants: Vec<RawTenant>,
    #[serde(default)]
    prices: Vec<RawPrice>,
    #[serde(default)]
    contracts: Vec<RawContract>,
    #[serde(default)]
    demand: RawDemand,
    #[serde(default)]
    variants: Vec<RawVariant>,
    #[serde(default)]
    costs: Option<RawCosts>,
    #[serde(default)]
    sites: Vec<RawSite>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFailures {
    #[serde(default)]
    node_afr: Option<Num>,
    #[serde(default)]
    repair_hours: Option<Num>,
    #[serde(default)]
    relaunch: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    name: String,
    kind: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrice {
    gpu_model: String,
    #[serde(default)]
    site: Option<String>,
    on_demand: Option<String>,
    reserved_lt_1y: Option<String>,
    reserved_1_3y: Option<String>,
    reserved_ge_3y: Option<String>,
    spot_floor: Option<String>,
    spot_ceiling: Option<String>,
    internal_shadow: Option<String>,
    #[serde(default)]
    decline_percent_per_year: Option<Num>,
    #[serde(default)]
    changes: Vec<RawPriceChange>,
}

/// Prices of a `[[prices]]` table from a later instant on.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPriceChange {
    from: String,
    on_demand: Option<String>,
    reserved_lt_1y: Option<String>,
    reserved_1_3y: Option<String>,
    reserved_ge_3y: Option<String>,
    spot_floor: Option<String>,
    spot_ceiling: Option<String>,
    internal_shadow: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContract {
    tenant: String,
    site: String,
    gpu_model: String,
    /// `"all"` (every sellable GPU) or a number.
    gpus: toml::Value,
    #[serde(default)]
    start: Option<String>,
    #[serde(default)]
    end: Option<String>,
    #[serde(default)]
    years: Option<Num>,
    #[serde(default)]
    rate: Option<String>,
    #[serde(default)]
    sla_percent: Option<Num>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDemand {
    #[serde(default)]
    trace: Option<String>,
    #[serde(default)]
    generators: Vec<RawGenerator>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGenerator {
    name: String,
    tenant: String,
    class: String,
    gpu_model: String,
    #[serde(default)]
    site: Option<String>,
    arrivals_per_day: Num,
    #[serde(default)]
    diurnal: Option<Num>,
    #[serde(default)]
    weekly: Option<Num>,
    #[serde(default)]
    growth_per_year: Option<Num>,
    #[serde(default)]
    volatility: Option<Num>,
    duration_median_hours: Num,
    #[serde(default)]
    duration_sigma: Option<Num>,
    #[serde(default)]
    max_duration_hours: Option<Num>,
    #[serde(default)]
    max_wait_hours: Option<Num>,
    shapes: Vec<RawShape>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShape {
    #[serde(default)]
    gpus: Option<u32>,
    #[serde(default)]
    nodes: Option<u32>,
    #[serde(default)]
    level: Option<String>,
    #[serde(default)]
    weight: Option<Num>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVariant {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    fleet_policy: Option<String>,
    #[serde(default)]
    contracts: Option<Vec<RawContract>>,
    #[serde(default)]
    disable: Vec<String>,
    #[serde(default)]
    generators: Vec<RawGenerator>,
    #[serde(default)]
    failures: Option<RawFailures>,
}

/// Who a tenant is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantSpec {
    /// Name, unique in the scenario.
    pub name: String,
    /// The operator's own lab (internal) or a customer.
    pub internal: bool,
}

/// Node failures: drawn per node from an annual failure rate, repaired after a while.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Failures {
    /// Failures per node per year (0.05 = 5% of the nodes fail once a year).
    pub node_afr: f64,
    /// Mean time to repair a failed node, hours (exponentially distributed).
    pub repair_hours: f64,
    /// Whether the tenant of work ended by a failure launches the rest of it again at once
    /// (training restarting from its last checkpoint), as a new request.
    pub relaunch: bool,
}

/// A reserved contract of the scenario.
#[derive(Clone, Debug, PartialEq)]
pub struct ContractSpec {
    /// Index into [`Scenario::tenants`].
    pub tenant: usize,
    /// Index into the fleet's sites.
    pub site: usize,
    /// GPU model reserved.
    pub gpu_model: String,
    /// GPUs reserved (a multiple of the model's GPUs per node).
    pub gpus: u32,
    /// Start, seconds after the scenario's start (may be negative: signed earlier).
    pub start: i64,
    /// End, seconds after the scenario's start.
    pub end: i64,
    /// $/GPU-hour.
    pub rate: Money,
    /// Promised availability, thousandths of a percent.
    pub sla_milli: u32,
}

/// One demand generator: Poisson arrivals with cycles, growth and volatility.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratorSpec {
    /// Name (variants disable generators by name).
    pub name: String,
    /// Index into [`Scenario::tenants`].
    pub tenant: usize,
    /// Class of every request.
    pub class: Class,
    /// GPU model asked for.
    pub gpu_model: String,
    /// Site asked for, if any (index into the fleet's sites).
    pub site: Option<usize>,
    /// Mean arrivals per day at the start, before cycles.
    pub arrivals_per_day: f64,
    /// Amplitude of the daily cycle, 0 to 1 (peak in the afternoon, UTC).
    pub diurnal: f64,
    /// Amplitude of the weekly cycle, 0 to 1 (weekdays busier than weekends).
    pub weekly: f64,
    /// Relative growth of the arrival rate over a year (0.5: +50% after 365 days, linear).
    pub growth_per_year: f64,
    /// Standard deviation of a monthly log-normal factor on the arrival rate.
    pub volatility: f64,
    /// Median duration, hours (log-normal).
    pub duration_median_hours: f64,
    /// Log-normal sigma of durations (heavier tail when larger).
    pub duration_sigma: f64,
    /// Durations are cut at this many hours.
    pub max_duration_hours: f64,
    /// How long a request waits in the queue before it gives up, hours (0: not at all).
    pub max_wait_hours: f64,
    /// Shapes and their weights.
    pub shapes: Vec<(Shape, f64)>,
}

/// One variant of the scenario, fully resolved: what differs between the choices compared.
#[derive(Clone, Debug)]
pub struct Variant {
    /// Name, as given.
    pub name: String,
    /// What it stands for.
    pub description: String,
    /// Who wins between internal and on-demand work.
    pub fleet_policy: FleetPolicy,
    /// Contracts in force.
    pub contracts: Vec<ContractSpec>,
    /// Demand generators.
    pub generators: Vec<GeneratorSpec>,
    /// Node failures.
    pub failures: Failures,
}

/// A loaded, checked scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Name.
    pub name: String,
    /// What it asks.
    pub description: String,
    /// The fleet, parsed by the production fleet-file parser.
    pub fleet: Arc<FleetSpec>,
    /// Start of the simulated time.
    pub start: Timestamp,
    /// Simulated seconds.
    pub horizon_secs: i64,
    /// Seeds for comparisons (the first is the default of a single run).
    pub seeds: Vec<u64>,
    /// Placement policy of the allocator.
    pub placement: neocloud_allocator::PlacementPolicy,
    /// Whether tenants may share nodes.
    pub shared_nodes: bool,
    /// Spare buffer in thousandths of each site's GPUs (20 = 2%).
    pub spare_buffer_milli: u32,
    /// Seconds between two samples of the time series.
    pub sample_secs: i64,
    /// Notice given to preempted work, seconds.
    pub preemption_grace_secs: i64,
    /// Whether the run keeps every usage record (for export and checks).
    pub keep_ledger: bool,
    /// Tenants.
    pub tenants: Vec<TenantSpec>,
    /// The price book.
    pub prices: PriceBook,
    /// Requests read from the trace file, if any (shared by every variant).
    pub trace: Arc<Vec<TraceRow>>,
    /// The variants; one named "base" when the file lists none.
    pub variants: Vec<Variant>,
    /// What the fleet costs and how it is paid for (`[costs]`; zero costs when absent).
    pub costs: Costs,
    /// Every site of the fleet, in fleet order, as the business case sees it (`[[sites]]`).
    pub sites: Vec<SitePlan>,
}

const DAY: f64 = 86_400.0;

/// The price kinds of a price table's seven columns, with their keys.
fn price_kinds(values: [&Option<String>; 7]) -> [(PriceKind, &Option<String>, &'static str); 7] {
    [
        (PriceKind::OnDemand, values[0], "on_demand"),
        (PriceKind::ReservedUnder1y, values[1], "reserved_lt_1y"),
        (PriceKind::Reserved1To3y, values[2], "reserved_1_3y"),
        (PriceKind::ReservedOver3y, values[3], "reserved_ge_3y"),
        (PriceKind::SpotFloor, values[4], "spot_floor"),
        (PriceKind::SpotCeiling, values[5], "spot_ceiling"),
        (PriceKind::InternalShadow, values[6], "internal_shadow"),
    ]
}

fn timestamp(field: &str, s: &str) -> Result<Timestamp, SimError> {
    s.parse::<Timestamp>()
        .map_err(|e| invalid(field, e.to_string()))
}

pub(crate) fn money(field: &str, s: &str) -> Result<Money, SimError> {
    let m: Money = s.parse().map_err(|e| invalid(field, format!("{e}")))?;
    if m < Money::ZERO {
        return Err(invalid(field, format!("must not be negative, got {s}")));
    }
    Ok(m)
}

/// A finite number at least 0 (and at most `max` when given).
pub(crate) fn non_negative(
    field: &str,
    v: Option<Num>,
    default: f64,
    max: Option<f64>,
) -> Result<f64, SimError> {
    let x = v.map_or(default, Num::get);
    if !x.is_finite() || x < 0.0 {
        return Err(invalid(field, format!("must be a number ≥ 0, got {x}")));
    }
    if let Some(m) = max
        && x > m
    {
        return Err(invalid(field, format!("must be at most {m}, got {x}")));
    }
    Ok(x)
}

fn parse_policy(
    field: &str,
    s: Option<&str>,
    default: FleetPolicy,
) -> Result<FleetPolicy, SimError> {
    match s {
        None => Ok(default),
        Some(s) => s.parse().map_err(|e: String| invalid(field, e)),
    }
}

/// Parses a shape as written in traces and shape tables: `gpus:N` or `nodes:N[:level]`.
pub fn parse_shape(s: &str) -> Result<Shape, String> {
    let mut parts = s.trim().split(':');
    let kind = parts.next().unwrap_or("");
    let n: u32 = parts
        .next()
        .ok_or_else(|| format!("shape '{s}': expected gpus:N or nodes:N[:level]"))?
        .parse()
        .map_err(|_| format!("shape '{s}': the count is not a whole number"))?;
    let shape = match kind {
        "gpus" => Shape::Gpus { gpus: n },
        "nodes" => {
            let level = match parts.next() {
                None => GangLevel::Site,
                Some(l) => l.parse().map_err(|e: String| format!("shape '{s}': {e}"))?,
            };
            Shape::Nodes { count: n, level }
        }
        _ => return Err(format!("shape '{s}': expected gpus:N or nodes:N[:level]")),
    };
    check_shape(&shape).map_err(|e| format!("shape '{s}': {e}"))?;
    if parts.next().is_some() {
        return Err(format!("shape '{s}': too many parts"));
    }
    Ok(shape)
}

fn check_shape(shape: &Shape) -> Result<(), String> {
    match *shape {
        Shape::Gpus { gpus } if ![1, 2, 4, 8].contains(&gpus) => {
            Err(format!("GPUs in one node are 1, 2, 4 or 8, not {gpus}"))
        }
        Shape::Nodes { count: 0, .. } => Err("a gang has at least one node".to_string()),
        _ => Ok(()),
    }
}

/// Writes a shape the way [`parse_shape`] reads it.
pub fn shape_str(shape: &Shape) -> String {
    match shape {
        Shape::Gpus { gpus } => format!("gpus:{gpus}"),
        Shape::Nodes { count, level } => format!("nodes:{count}:{level}"),
        Shape::Share { milli } => format!("share:{milli}"),
        Shape::Mig { profile } => format!("mig:{profile}"),
        Shape::Cpu => "cpu".to_string(),
    }
}

/// Resolving names against the fleet and the tenants.
struct Names<'a> {
    fleet: &'a FleetSpec,
    tenants: &'a [TenantSpec],
}

impl Names<'_> {
    fn tenant(&self, field: &str, name: &str) -> Result<usize, SimError> {
        self.tenants
            .iter()
            .position(|t| t.name == name)
            .ok_or_else(|| {
                invalid(
                    field,
                    format!("tenant '{name}' is not listed in [[tenants]]"),
                )
            })
    }

    fn site(&self, field: &str, name: &str) -> Result<usize, SimError> {
        self.fleet
            .sites
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| invalid(field, format!("site '{name}' is not in the fleet file")))
    }

    fn model(&self, field: &str, model: &str, site: Option<usize>) -> Result<(), SimError> {
        let found = self
            .fleet
            .sites
            .iter()
            .enumerate()
            .filter(|(i, _)| site.is_none_or(|s| s == *i))
            .any(|(_, s)| s.nodes.iter().any(|n| n.gpu_model == model));
        if found {
            Ok(())
        } else {
            Err(invalid(
                field,
                format!(
                    "no node of the fleet{} has GPU model '{model}'",
                    site.map_or(String::new(), |s| format!(
                        " in site {}",
                        self.fleet.sites[s].name
                    ))
                ),
            ))
        }
    }

    /// GPUs of a model in a site, and GPUs per node (the largest node size).
    fn model_gpus(&self, site: usize, model: &str) -> (u64, u32) {
        let nodes = self.fleet.sites[site]
            .nodes
            .iter()
            .filter(|n| n.gpu_model == model);
        nodes.fold((0, 0), |(sum, per), n| {
            (sum + u64::from(n.gpu_count), per.max(n.gpu_count))
        })
    }
}

impl Scenario {
    /// Reads and checks a scenario file and everything it names (fleet file, trace).
    /// Relative paths are taken from the scenario file's folder.
    pub fn load(path: &Path) -> Result<Scenario, SimError> {
        let text = std::fs::read_to_string(path).map_err(|source| SimError::Read {
            what: "scenario",
            path: path.to_path_buf(),
            source,
        })?;
        let dir = path.parent().map_or_else(PathBuf::new, Path::to_path_buf);
        Self::from_str_in(&text, path, &dir)
    }

    /// Checks a scenario given as text; `path` names it in errors, `dir` resolves the files it
    /// names.
    pub fn from_str_in(text: &str, path: &Path, dir: &Path) -> Result<Scenario, SimError> {
        let raw: RawScenario = toml::from_str(text).map_err(|e| SimError::Scenario {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;

        let fleet_path = dir.join(&raw.fleet);
        let fleet_text = std::fs::read_to_string(&fleet_path).map_err(|source| SimError::Read {
            what: "fleet file",
            path: fleet_path.clone(),
            source,
        })?;
        let fleet = neocloud_fleet::parse(&fleet_text, &builtin_gpu_models()).map_err(|e| {
            SimError::Fleet {
                path: fleet_path.clone(),
                message: e.to_string(),
            }
        })?;
        if fleet.node_count() == 0 {
            return Err(SimError::Fleet {
                path: fleet_path,
                message: "the fleet has no nodes".to_string(),
            });
        }

        let start = timestamp("start", &raw.start)?;
        let horizon_days =
            non_negative("horizon_days", Some(raw.horizon_days), 0.0, Some(36_600.0))?;
        if horizon_days <= 0.0 {
            return Err(invalid("horizon_days", "must be more than 0"));
        }
        let horizon_secs = (horizon_days * DAY).round() as i64;
        let seeds = if raw.seeds.is_empty() {
            vec![1]
        } else {
            raw.seeds.clone()
        };
        let placement = match raw.placement.as_deref() {
            None | Some("best-fit") => neocloud_allocator::PlacementPolicy::BestFit,
            Some("first-fit") => neocloud_allocator::PlacementPolicy::FirstFit,
            Some("worst-fit") => neocloud_allocator::PlacementPolicy::WorstFit,
            Some(other) => {
                return Err(invalid(
                    "placement",
                    format!("'{other}' is not one of: best-fit, first-fit, worst-fit"),
                ));
            }
        };
        let spare = non_negative(
            "spare_buffer_percent",
            raw.spare_buffer_percent,
            2.0,
            Some(100.0),
        )?;
        let sample_hours = non_negative("sample_hours", raw.sample_hours, 6.0, None)?;
        if sample_hours <= 0.0 {
            return Err(invalid("sample_hours", "must be more than 0"));
        }
        let grace = non_negative(
            "preemption_grace_seconds",
            raw.preemption_grace_seconds,
            30.0,
            None,
        )?;

        // Tenants.
        let mut tenants: Vec<TenantSpec> = Vec::new();
        for (i, t) in raw.tenants.iter().enumerate() {
            let field = format!("tenants[{i}]");
            let internal = match t.kind.as_str() {
                "internal" => true,
                "external" => false,
                other => {
                    return Err(invalid(
                        format!("{field}.kind"),
                        format!("'{other}' is not one of: internal, external"),
                    ));
                }
            };
            if tenants.iter().any(|x| x.name == t.name) {
                return Err(invalid(
                    field,
                    format!("tenant '{}' is listed twice", t.name),
                ));
            }
            tenants.push(TenantSpec {
                name: t.name.clone(),
                internal,
            });
        }

        // The trace may name tenants the file does not list: they are customers.
        let trace_rows = match &raw.demand.trace {
            None => Vec::new(),
            Some(p) => trace::read_trace(&dir.join(p))?,
        };
        for r in &trace_rows {
            if !tenants.iter().any(|t| t.name == r.tenant) {
                tenants.push(TenantSpec {
                    name: r.tenant.clone(),
                    internal: false,
                });
            }
        }

        // Prices.
        let mut entries = Vec::new();
        for (i, p) in raw.prices.iter().enumerate() {
            let names = Names {
                fleet: &fleet,
                tenants: &tenants,
            };
            let site = match &p.site {
                None => None,
                Some(s) => Some(names.site(&format!("prices[{i}].site"), s)?),
            };
            let kinds = price_kinds([
                &p.on_demand,
                &p.reserved_lt_1y,
                &p.reserved_1_3y,
                &p.reserved_ge_3y,
                &p.spot_floor,
                &p.spot_ceiling,
                &p.internal_shadow,
            ]);
            let site_id = site.map(crate::fleet::site_id);
            let decline = match p.decline_percent_per_year {
                None => None,
                Some(d) => {
                    if !p.changes.is_empty() {
                        return Err(invalid(
                            format!("prices[{i}].changes"),
                            "give decline_percent_per_year or changes, not both",
                        ));
                    }
                    let x = non_negative(
                        &format!("prices[{i}].decline_percent_per_year"),
                        Some(d),
                        0.0,
                        Some(100.0),
                    )?;
                    Some((x * 10_000.0).round() as i64)
                }
            };
            for (kind, value, key) in kinds {
                let Some(v) = value else { continue };
                let base = money(&format!("prices[{i}].{key}"), v)?;
                entries.push(PriceEntry {
                    gpu_model: p.gpu_model.clone(),
                    site: site_id,
                    kind,
                    price: base,
                    effective_from: Timestamp::from_micros(0),
                });
                // A yearly decline: a new price at the start of every month of the horizon
                // after the first.
                if let Some(d) = decline {
                    let mut month = neocloud_billing::Month::containing(start);
                    let mut m = 0u32;
                    loop {
                        month = month.next();
                        m += 1;
                        if month.start().micros() >= start.micros() + horizon_secs * 1_000_000 {
                            break;
                        }
                        entries.push(PriceEntry {
                            gpu_model: p.gpu_model.clone(),
                            site: site_id,
                            kind,
                            price: crate::finance::declined(base, d, m),
                            effective_from: month.start(),
                        });
                    }
                }
            }
            for (j, c) in p.changes.iter().enumerate() {
                let f = format!("prices[{i}].changes[{j}]");
                let from = timestamp(&format!("{f}.from"), &c.from)?;
                let kinds = price_kinds([
                    &c.on_demand,
                    &c.reserved_lt_1y,
                    &c.reserved_1_3y,
                    &c.reserved_ge_3y,
                    &c.spot_floor,
                    &c.spot_ceiling,
                    &c.internal_shadow,
                ]);
                for (kind, value, key) in kinds {
                    if let Some(v) = value {
                        entries.push(PriceEntry {
                            gpu_model: p.gpu_model.clone(),
                            site: site_id,
                            kind,
                            price: money(&format!("{f}.{key}"), v)?,
                            effective_from: from,
                        });
                    }
                }
            }
        }
        let prices = PriceBook::new(entries).map_err(|e| invalid("prices", e.to_string()))?;

        let names = Names {
            fleet: &fleet,
            tenants: &tenants,
        };
        let costs = crate::costs::costs(raw.costs.as_ref(), &fleet)?;
        let sites = crate::costs::sites(&raw.sites, raw.costs.as_ref(), &fleet, horizon_secs)?;
        let base_failures = failures("failures", raw.failures.as_ref(), None)?;
        let base_contracts = contracts("contracts", &raw.contracts, &names, &prices, start, spare)?;
        let base_generators = generators("demand.generators", &raw.demand.generators, &names)?;
        let base_policy = parse_policy(
            "fleet_policy",
            raw.fleet_policy.as_deref(),
            FleetPolicy::LabFirst,
        )?;

        let mut variants = Vec::new();
        if raw.variants.is_empty() {
            variants.push(Variant {
                name: "base".to_string(),
                description: String::new(),
                fleet_policy: base_policy,
                contracts: base_contracts.clone(),
                generators: base_generators.clone(),
                failures: base_failures,
            });
        }
        for (i, v) in raw.variants.iter().enumerate() {
            let field = format!("variants[{i}]");
            if raw.variants[..i].iter().any(|w| w.name == v.name) {
                return Err(invalid(
                    field,
                    format!("variant '{}' is listed twice", v.name),
                ));
            }
            for d in &v.disable {
                if !base_generators.iter().any(|g| &g.name == d) {
                    return Err(invalid(
                        format!("{field}.disable"),
                        format!("no generator is named '{d}'"),
                    ));
                }
            }
            let mut gens: Vec<GeneratorSpec> = base_generators
                .iter()
                .filter(|g| !v.disable.contains(&g.name))
                .cloned()
                .collect();
            gens.extend(generators(
                &format!("{field}.generators"),
                &v.generators,
                &names,
            )?);
            let contracts = match &v.contracts {
                None => base_contracts.clone(),
                Some(c) => contracts(
                    &format!("{field}.contracts"),
                    c,
                    &names,
                    &prices,
                    start,
                    spare,
                )?,
            };
            variants.push(Variant {
                name: v.name.clone(),
                description: v.description.clone(),
                fleet_policy: parse_policy(
                    &format!("{field}.fleet_policy"),
                    v.fleet_policy.as_deref(),
                    base_policy,
                )?,
                contracts,
                generators: gens,
                failures: failures(
                    &format!("{field}.failures"),
                    v.failures.as_ref(),
                    Some(base_failures),
                )?,
            });
        }

        // Trace rows must name what the fleet has.
        let trace_path = dir.join(raw.demand.trace.as_deref().unwrap_or_default());
        let row_err = |row: usize, e: SimError| SimError::TraceRow {
            path: trace_path.clone(),
            row,
            message: match e {
                SimError::Invalid { message, .. } => message,
                other => other.to_string(),
            },
        };
        for r in &trace_rows {
            let site = match &r.site {
                None => None,
                Some(s) => Some(names.site("site", s).map_err(|e| row_err(r.row, e))?),
            };
            names
                .model("gpu_model", &r.gpu_model, site)
                .map_err(|e| row_err(r.row, e))?;
            if r.class == Class::Internal
                && !tenants.iter().any(|t| t.name == r.tenant && t.internal)
            {
                let why = format!(
                    "class internal needs an internal tenant, and '{}' is not one",
                    r.tenant
                );
                return Err(row_err(r.row, invalid("class", why)));
            }
        }

        Ok(Scenario {
            name: raw.name,
            description: raw.description,
            fleet: Arc::new(fleet),
            start,
            horizon_secs,
            seeds,
            placement,
            shared_nodes: raw.shared_nodes,
            spare_buffer_milli: (spare * 10.0).round() as u32,
            sample_secs: ((sample_hours * 3600.0).round() as i64).max(1),
            preemption_grace_secs: grace.round() as i64,
            keep_ledger: raw.keep_ledger,
            tenants,
            prices,
            trace: Arc::new(trace_rows),
            variants,
            costs,
            sites,
        })
    }

    /// The variant of that name.
    pub fn variant(&self, name: &str) -> Option<&Variant> {
        self.variants.iter().find(|v| v.name == name)
    }
}

fn failures(
    field: &str,
    raw: Option<&RawFailures>,
    base: Option<Failures>,
) -> Result<Failures, SimError> {
    let base = base.unwrap_or(Failures {
        node_afr: 0.0,
        repair_hours: 48.0,
        relaunch: false,
    });
    let Some(r) = raw else {
        return Ok(base);
    };
    let afr = non_negative(
        &format!("{field}.node_afr"),
        r.node_afr,
        base.node_afr,
        Some(365.0),
    )?;
    let repair = non_negative(
        &format!("{field}.repair_hours"),
        r.repair_hours,
        base.repair_hours,
        None,
    )?;
    Ok(Failures {
        node_afr: afr,
        repair_hours: repair,
        relaunch: r.relaunch.unwrap_or(base.relaunch),
    })
}

fn contracts(
    field: &str,
    raw: &[RawContract],
    names: &Names<'_>,
    prices: &PriceBook,
    start: Timestamp,
    spare_percent: f64,
) -> Result<Vec<ContractSpec>, SimError> {
    let mut out = Vec::new();
    for (i, c) in raw.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let tenant = names.tenant(&format!("{f}.tenant"), &c.tenant)?;
        let site = names.site(&format!("{f}.site"), &c.site)?;
        names.model(&format!("{f}.gpu_model"), &c.gpu_model, Some(site))?;
        let (total, per_node) = names.model_gpus(site, &c.gpu_model);
        let spare_milli = (spare_percent * 10.0).round() as u64;
        let sellable = total - (total * spare_milli).div_ceil(1000);
        let gpus: u64 = match &c.gpus {
            toml::Value::String(s) if s == "all" => {
                sellable / u64::from(per_node) * u64::from(per_node)
            }
            toml::Value::Integer(n) if *n > 0 => u64::try_from(*n).unwrap_or(0),
            other => {
                return Err(invalid(
                    format!("{f}.gpus"),
                    format!("expected \"all\" or a positive number of GPUs, got {other:?}"),
                ));
            }
        };
        if !gpus.is_multiple_of(u64::from(per_node)) {
            return Err(invalid(
                format!("{f}.gpus"),
                format!("reserved pools are whole nodes: {gpus} is not a multiple of {per_node}"),
            ));
        }
        if gpus > sellable {
            return Err(invalid(
                format!("{f}.gpus"),
                format!(
                    "{gpus} GPUs exceed the {sellable} sellable {} GPUs of {}",
                    c.gpu_model, c.site
                ),
            ));
        }
        let from = match &c.start {
            None => start,
            Some(s) => timestamp(&format!("{f}.start"), s)?,
        };
        let to = match (&c.end, c.years) {
            (Some(e), None) => timestamp(&format!("{f}.end"), e)?,
            (None, Some(y)) => {
                let y = non_negative(&format!("{f}.years"), Some(y), 0.0, Some(100.0))?;
                Timestamp::from_micros(from.micros() + (y * 365.0 * DAY * 1e6).round() as i64)
            }
            _ => return Err(invalid(&f, "give exactly one of end and years")),
        };
        if to <= from {
            return Err(invalid(&f, "the contract must end after it starts"));
        }
        let rate = match &c.rate {
            Some(r) => money(&format!("{f}.rate"), r)?,
            None => prices
                .reserved_price(&c.gpu_model, crate::fleet::site_id(site), from, to)
                .ok_or_else(|| {
                    invalid(
                        format!("{f}.rate"),
                        format!(
                            "no rate given and the price book has no reserved price for {}",
                            c.gpu_model
                        ),
                    )
                })?,
        };
        let sla = non_negative(
            &format!("{f}.sla_percent"),
            c.sla_percent,
            99.0,
            Some(100.0),
        )?;
        out.push(ContractSpec {
            tenant,
            site,
            gpu_model: c.gpu_model.clone(),
            gpus: u32::try_from(gpus).unwrap_or(u32::MAX),
            start: (from.micros() - start.micros()) / 1_000_000,
            end: (to.micros() - start.micros()) / 1_000_000,
            rate,
            sla_milli: (sla * 1000.0).round() as u32,
        });
    }
    Ok(out)
}

fn generators(
    field: &str,
    raw: &[RawGenerator],
    names: &Names<'_>,
) -> Result<Vec<GeneratorSpec>, SimError> {
    let mut out = Vec::new();
    for (i, g) in raw.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let tenant = names.tenant(&format!("{f}.tenant"), &g.tenant)?;
        let class: Class = g
            .class
            .parse()
            .map_err(|e: String| invalid(format!("{f}.class"), e))?;
        if class == Class::Internal && !names.tenants[tenant].internal {
            return Err(invalid(
                format!("{f}.class"),
                format!(
                    "class internal needs an internal tenant, and '{}' is not one",
                    g.tenant
                ),
            ));
        }
        let site = match &g.site {
            None => None,
            Some(s) => Some(names.site(&format!("{f}.site"), s)?),
        };
        names.model(&format!("{f}.gpu_model"), &g.gpu_model, site)?;
        let mut shapes = Vec::new();
        for (j, s) in g.shapes.iter().enumerate() {
            let sf = format!("{f}.shapes[{j}]");
            let shape = match (s.gpus, s.nodes) {
                (Some(gpus), None) if s.level.is_none() => Shape::Gpus { gpus },
                (None, Some(count)) => Shape::Nodes {
                    count,
                    level: match &s.level {
                        None => GangLevel::Site,
                        Some(l) => l
                            .parse()
                            .map_err(|e: String| invalid(format!("{sf}.level"), e))?,
                    },
                },
                _ => {
                    return Err(invalid(
                        &sf,
                        "give gpus = N, or nodes = N with an optional level",
                    ));
                }
            };
            check_shape(&shape).map_err(|e| invalid(&sf, e))?;
            let w = non_negative(&format!("{sf}.weight"), s.weight, 1.0, None)?;
            shapes.push((shape, w));
        }
        if shapes.iter().map(|s| s.1).sum::<f64>() <= 0.0 {
            return Err(invalid(
                format!("{f}.shapes"),
                "at least one shape with a weight above 0",
            ));
        }
        let median = non_negative(
            &format!("{f}.duration_median_hours"),
            Some(g.duration_median_hours),
            0.0,
            None,
        )?;
        if median <= 0.0 {
            return Err(invalid(
                format!("{f}.duration_median_hours"),
                "must be more than 0",
            ));
        }
        out.push(GeneratorSpec {
            name: g.name.clone(),
            tenant,
            class,
            gpu_model: g.gpu_model.clone(),
            site,
            arrivals_per_day: non_negative(
                &format!("{f}.arrivals_per_day"),
                Some(g.arrivals_per_day),
                0.0,
                Some(1e8),
            )?,
            diurnal: non_negative(&format!("{f}.diurnal"), g.diurnal, 0.0, Some(1.0))?,
            weekly: non_negative(&format!("{f}.weekly"), g.weekly, 0.0, Some(1.0))?,
            growth_per_year: non_negative(
                &format!("{f}.growth_per_year"),
                g.growth_per_year,
                0.0,
                Some(100.0),
            )?,
            volatility: non_negative(&format!("{f}.volatility"), g.volatility, 0.0, Some(3.0))?,
            duration_median_hours: median,
            duration_sigma: non_negative(
                &format!("{f}.duration_sigma"),
                g.duration_sigma,
                1.0,
                Some(5.0),
            )?,
            max_duration_hours: non_negative(
                &format!("{f}.max_duration_hours"),
                g.max_duration_hours,
                24.0 * 90.0,
                None,
            )?,
            max_wait_hours: non_negative(
                &format!("{f}.max_wait_hours"),
                g.max_wait_hours,
                0.0,
                None,
            )?,
            shapes,
        });
    }
    Ok(out)
}
