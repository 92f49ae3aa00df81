//! The capacity planner behind `neocloud sim` (issue "Plan it").
//!
//! A [`Scenario`] names a fleet file, tenants, a price book, contracts, node failure rates,
//! a horizon, seeds and demand (a trace and/or generators), and the variants to compare.
//! [`run`] replays one variant under one seed in a discrete-event simulation that drives the
//! scheduler `serve` runs ([`neocloud_scheduler::Scheduler`], and the production allocator
//! under it) with simulated time for every decision, and calls the production billing code
//! ([`neocloud_billing`]) for every usage interval and every monthly invoice. [`compare`]
//! runs every variant over every seed and summarises the spread.
//!
//! The engine reads no clock and no hash-map order reaches an output: the same scenario and
//! seed give byte-identical results.

mod accounts;
mod chart;
mod compare;
pub mod convert;
mod costs;
mod demand;
mod engine;
mod error;
pub mod finance;
mod fleet;
mod report;
mod scenario;
mod stepper;
pub mod trace;

pub use accounts::{Finance, FinanceMonth, SiteFinance};
pub use chart::{compare_svg, revenue_svg, utilization_svg};
pub use compare::{Comparison, Spread, VariantSummary, Win, compare, parse_seeds};
pub use costs::{Costs, GpuCost, Residual, SitePlan};
pub use demand::Job;
pub use error::SimError;
pub use report::{GpuSeconds, MonthRow, RequestStats, RunResult, SitePower, Totals, usd};
pub use scenario::{
    ContractSpec, Failures, GeneratorSpec, Scenario, TenantSpec, Variant, parse_shape, shape_str,
};
pub use stepper::{CLASSES, JobState, LEVELS, NodePart, Stepper, random_shape};

/// Runs one variant of a scenario under one seed. `progress` is called with the share of
/// simulated time done (0 to 1), about once per simulated hour.
pub fn run(
    scenario: &Scenario,
    variant: &Variant,
    seed: u64,
    progress: &mut dyn FnMut(f64),
) -> Result<RunResult, SimError> {
    engine::Engine::new(scenario, variant, seed)?.run(progress)
}

/// Writes a run's outputs into `dir` (created if missing): `result.json`, `series.csv`,
/// `months.csv`, `finance.csv`, `utilization.svg`, `revenue.svg`, and `ledger.jsonl` when the scenario
/// keeps the ledger. Returns the paths written.
pub fn write_run(
    dir: &std::path::Path,
    r: &RunResult,
) -> Result<Vec<std::path::PathBuf>, SimError> {
    let mut files = vec![
        ("result.json", r.to_json()),
        ("series.csv", r.series_csv()),
        ("months.csv", r.months_csv()),
        ("finance.csv", r.finance_csv()),
        ("utilization.svg", utilization_svg(r)),
        ("revenue.svg", revenue_svg(r)),
    ];
    if !r.ledger.is_empty() {
        files.push(("ledger.jsonl", r.ledger_jsonl()));
    }
    write_files(dir, files)
}

pub(crate) fn write_files(
    dir: &std::path::Path,
    files: Vec<(&str, String)>,
) -> Result<Vec<std::path::PathBuf>, SimError> {
    std::fs::create_dir_all(dir).map_err(|source| SimError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|source| SimError::Write {
            path: path.clone(),
            source,
        })?;
        out.push(path);
    }
    Ok(out)
}

#[cfg(test)]
mod differential;
#[cfg(test)]
mod tests;
