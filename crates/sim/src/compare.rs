//! Comparing variants: every variant under every seed, and the spread of what matters, so
//! the risk of a choice shows next to its average.

use std::fmt::Write as _;

use serde::Serialize;

use crate::error::SimError;
use crate::report::RunResult;
use crate::scenario::Scenario;

/// Mean and spread of one figure over seeds.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Spread {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (0 with one seed).
    pub stdev: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// 5th percentile (nearest rank): the worst 5% of outcomes lie at or below it.
    pub p5: f64,
    /// Median (nearest rank).
    pub p50: f64,
    /// 95th percentile (nearest rank).
    pub p95: f64,
}

/// The nearest-rank percentile `p` (0–100) of sorted values: the value at rank
/// ⌈p/100 × n⌉ (1-based), the first for p = 0.
fn nearest_rank(sorted: &[f64], p: u32) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let n = sorted.len();
    let rank = (n * p as usize).div_ceil(100).max(1);
    sorted[rank.min(n) - 1]
}

impl Spread {
    fn of(xs: &[f64]) -> Spread {
        if xs.is_empty() {
            // Nothing to summarise (no seed had an IRR, or none paid back): null in JSON,
            // a dash in the table.
            return Spread {
                mean: f64::NAN,
                stdev: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
                p5: f64::NAN,
                p50: f64::NAN,
                p95: f64::NAN,
            };
        }
        let mut sorted = xs.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = xs.len().max(1) as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let var = if xs.len() > 1 {
            xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0)
        } else {
            0.0
        };
        Spread {
            mean,
            stdev: var.sqrt(),
            min: xs.iter().copied().fold(f64::INFINITY, f64::min),
            max: xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            p5: nearest_rank(&sorted, 5),
            p50: nearest_rank(&sorted, 50),
            p95: nearest_rank(&sorted, 95),
        }
    }
}

/// One variant over every seed.
#[derive(Clone, Debug, Serialize)]
pub struct VariantSummary {
    /// Variant name.
    pub variant: String,
    /// What it stands for.
    pub description: String,
    /// Seeds run.
    pub seeds: Vec<u64>,
    /// Billed revenue, dollars.
    pub revenue_usd: Spread,
    /// Revenue − energy cost, dollars.
    pub gross_margin_usd: Spread,
    /// The operator's own lab's compute at the shadow price, dollars.
    pub internal_value_usd: Spread,
    /// Allocated over fleet GPU-hours, percent.
    pub utilization_percent: Spread,
    /// GPU-hours of demand refused or given up, every class.
    pub refused_gpu_hours: Spread,
    /// GPU-hours of the lab's own (internal) demand refused or given up.
    pub internal_refused_gpu_hours: Spread,
    /// Energy cost, dollars.
    pub energy_cost_usd: Spread,
    /// EBITDA (revenue − energy − fixed costs), dollars.
    pub ebitda_usd: Spread,
    /// Net income (EBITDA − depreciation − interest), dollars.
    pub net_income_usd: Spread,
    /// Net present value of the equity cash flows, dollars.
    pub npv_usd: Spread,
    /// Internal rate of return, percent a year, over the seeds that have one.
    pub irr_percent: Spread,
    /// Seeds whose cash flows have no IRR.
    pub irr_missing: usize,
    /// Payback month, over the seeds paid back within the horizon.
    pub payback_month: Spread,
    /// Seeds not paid back within the horizon.
    pub not_paid_back: usize,
}

/// How often one variant is worth more than another, seed by seed (the same demand path).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Win {
    /// The variant.
    pub variant: String,
    /// The one it is compared with.
    pub over: String,
    /// Seeds where its NPV is higher.
    pub seeds_won: usize,
    /// Seeds compared.
    pub seeds: usize,
    /// `seeds_won / seeds`.
    pub probability: f64,
    /// Mean of its NPV less the other's, dollars.
    pub mean_npv_difference_usd: f64,
    /// 5th percentile of that difference: in the worst 5% of demand paths it is this or less.
    pub p5_npv_difference_usd: f64,
}

/// Every variant of a scenario over its seeds.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    /// Scenario name.
    pub scenario: String,
    /// Simulated days per run.
    pub horizon_days: f64,
    /// Per variant.
    pub variants: Vec<VariantSummary>,
    /// Every ordered pair of variants: how often the first has the higher NPV.
    pub wins: Vec<Win>,
    /// Every run, variant by variant, seed by seed (not in the JSON: written per run).
    #[serde(skip)]
    pub runs: Vec<RunResult>,
}

/// Parses seeds as the command line gives them: numbers and inclusive ranges, separated by
/// commas (`1..200`, `1,2,3`, `1..5,9`). A seed given twice is an error.
pub fn parse_seeds(s: &str) -> Result<Vec<u64>, String> {
    let mut out: Vec<u64> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |x: &str| {
            x.trim()
                .parse::<u64>()
                .map_err(|_| format!("seed '{}' is not a whole number", x.trim()))
        };
        let (a, b) = match part.split_once("..") {
            Some((a, b)) => (num(a)?, num(b.strip_prefix('=').unwrap_or(b))?),
            None => {
                let a = num(part)?;
                (a, a)
            }
        };
        if b < a {
            return Err(format!("seed range '{part}' ends before it starts"));
        }
        if b - a >= 1_000_000 {
            return Err(format!("seed range '{part}' has more than a million seeds"));
        }
        for seed in a..=b {
            if !seen.insert(seed) {
                return Err(format!("seed {seed} is given twice"));
            }
            out.push(seed);
        }
    }
    if out.is_empty() {
        return Err("no seed given".to_string());
    }
    Ok(out)
}

fn dollars(m: neocloud_types::Money) -> f64 {
    m.micros() as f64 / 1e6
}

/// Runs every variant of `sc` under each of `seeds`, on up to `threads` threads. Results do
/// not depend on the number of threads. `progress` gets the share of runs done.
pub fn compare(
    sc: &Scenario,
    seeds: &[u64],
    threads: usize,
    progress: &mut (dyn FnMut(f64) + Send),
) -> Result<Comparison, SimError> {
    let jobs: Vec<(usize, u64)> = (0..sc.variants.len())
        .flat_map(|v| seeds.iter().map(move |&s| (v, s)))
        .collect();
    let total = jobs.len().max(1);
    let threads = threads.clamp(1, total);
    let results: std::sync::Mutex<Vec<Option<Result<RunResult, SimError>>>> =
        std::sync::Mutex::new((0..jobs.len()).map(|_| None).collect());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::Mutex::new((0usize, progress));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(&(v, seed)) = jobs.get(i) else {
                        break;
                    };
                    let r = crate::run(sc, &sc.variants[v], seed, &mut |_| {});
                    if let Ok(mut all) = results.lock() {
                        all[i] = Some(r);
                    }
                    if let Ok(mut d) = done.lock() {
                        d.0 += 1;
                        let share = d.0 as f64 / total as f64;
                        (d.1)(share);
                    }
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_default();
    let mut runs = Vec::new();
    for r in results.into_iter().flatten() {
        runs.push(r?);
    }
    let mut variants = Vec::new();
    for (vi, v) in sc.variants.iter().enumerate() {
        let mine: Vec<&RunResult> = runs
            .iter()
            .skip(vi * seeds.len())
            .take(seeds.len())
            .collect();
        let f = |g: &dyn Fn(&RunResult) -> f64| {
            Spread::of(&mine.iter().map(|r| g(r)).collect::<Vec<_>>())
        };
        let refused = |r: &RunResult, only: Option<&str>| {
            r.totals
                .requests
                .iter()
                .filter(|(k, _)| only.is_none_or(|o| o == k.as_str()))
                .map(|(_, s)| s.refused_gpu_hours)
                .sum::<f64>()
        };
        variants.push(VariantSummary {
            variant: v.name.clone(),
            description: v.description.clone(),
            seeds: seeds.to_vec(),
            revenue_usd: f(&|r| dollars(r.totals.revenue)),
            gross_margin_usd: f(&|r| dollars(r.totals.gross_margin)),
            internal_value_usd: f(&|r| dollars(r.totals.internal_shadow_value)),
            utilization_percent: f(&|r| {
                r.totals.utilization.get("total").copied().unwrap_or(0.0) * 100.0
            }),
            refused_gpu_hours: f(&|r| refused(r, None)),
            internal_refused_gpu_hours: f(&|r| refused(r, Some("internal"))),
            energy_cost_usd: f(&|r| dollars(r.totals.energy_cost)),
            ebitda_usd: f(&|r| dollars(r.finance.ebitda)),
            net_income_usd: f(&|r| dollars(r.finance.net_income)),
            npv_usd: f(&|r| dollars(r.finance.npv)),
            irr_percent: Spread::of(
                &mine
                    .iter()
                    .filter_map(|r| r.finance.irr_percent)
                    .collect::<Vec<_>>(),
            ),
            irr_missing: mine
                .iter()
                .filter(|r| r.finance.irr_percent.is_none())
                .count(),
            payback_month: Spread::of(
                &mine
                    .iter()
                    .filter_map(|r| r.finance.payback_month.map(f64::from))
                    .collect::<Vec<_>>(),
            ),
            not_paid_back: mine
                .iter()
                .filter(|r| r.finance.payback_month.is_none())
                .count(),
        });
    }
    let n = seeds.len();
    let mut wins = Vec::new();
    for a in 0..sc.variants.len() {
        for b in 0..sc.variants.len() {
            if a == b {
                continue;
            }
            let diffs: Vec<i128> = (0..n)
                .map(|k| {
                    i128::from(runs[a * n + k].finance.npv.micros())
                        - i128::from(runs[b * n + k].finance.npv.micros())
                })
                .collect();
            let won = diffs.iter().filter(|&&d| d > 0).count();
            let usd: Vec<f64> = diffs.iter().map(|&d| d as f64 / 1e6).collect();
            let sp = Spread::of(&usd);
            wins.push(Win {
                variant: sc.variants[a].name.clone(),
                over: sc.variants[b].name.clone(),
                seeds_won: won,
                seeds: n,
                probability: won as f64 / n.max(1) as f64,
                mean_npv_difference_usd: sp.mean,
                p5_npv_difference_usd: sp.p5,
            });
        }
    }
    Ok(Comparison {
        scenario: sc.name.clone(),
        horizon_days: sc.horizon_secs as f64 / 86_400.0,
        variants,
        wins,
        runs,
    })
}

fn millions(x: f64) -> String {
    format!("{:.1}M", x / 1e6)
}

impl Comparison {
    /// JSON of the summaries.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// CSV of the summaries: one row per variant and figure.
    pub fn to_csv(&self) -> String {
        let mut s = String::from("variant,figure,mean,stdev,min,max,p5,p50,p95\n");
        for v in &self.variants {
            for (name, sp) in v.figures() {
                let _ = writeln!(
                    s,
                    "{},{name},{},{},{},{},{},{},{}",
                    v.variant, sp.mean, sp.stdev, sp.min, sp.max, sp.p5, sp.p50, sp.p95
                );
            }
        }
        s
    }

    /// The side-by-side table for a terminal: mean ± standard deviation [min … max].
    pub fn table(&self) -> String {
        let mut s = String::new();
        let seeds = self.variants.first().map_or(0, |v| v.seeds.len());
        let _ = writeln!(
            s,
            "{}: {} variants × {} seeds, {:.0} days each (mean ± stdev [P5 / P50 / P95])",
            self.scenario,
            self.variants.len(),
            seeds,
            self.horizon_days
        );
        let rows: Vec<(&str, bool)> = vec![
            ("revenue $", true),
            ("gross margin $", true),
            ("internal value $", true),
            ("energy cost $", true),
            ("utilization %", false),
            ("refused GPU-h", true),
            ("internal refused GPU-h", true),
            ("EBITDA $", true),
            ("net income $", true),
            ("NPV $", true),
            ("IRR %", false),
            ("payback month", false),
        ];
        let cells: Vec<Vec<String>> = rows
            .iter()
            .enumerate()
            .map(|(i, (_, big))| {
                self.variants
                    .iter()
                    .map(|v| {
                        let sp = v.figures()[i].1;
                        if sp.mean.is_nan() {
                            "—".to_string()
                        } else if *big {
                            format!(
                                "{} ± {} [{} / {} / {}]",
                                millions(sp.mean),
                                millions(sp.stdev),
                                millions(sp.p5),
                                millions(sp.p50),
                                millions(sp.p95)
                            )
                        } else {
                            format!(
                                "{:.1} ± {:.1} [{:.1} / {:.1} / {:.1}]",
                                sp.mean, sp.stdev, sp.p5, sp.p50, sp.p95
                            )
                        }
                    })
                    .collect()
            })
            .collect();
        let width = cells
            .iter()
            .flatten()
            .map(|c| c.chars().count())
            .chain(self.variants.iter().map(|v| v.variant.chars().count()))
            .max()
            .unwrap_or(10)
            + 3;
        let pad =
            |t: &str, w: usize| format!("{t}{}", " ".repeat(w.saturating_sub(t.chars().count())));
        let _ = write!(s, "{}", pad("", 24));
        for v in &self.variants {
            let _ = write!(s, "{}", pad(&v.variant, width));
        }
        let end = s.trim_end_matches(' ').len();
        s.truncate(end);
        s.push('\n');
        for (i, (label, _)) in rows.iter().enumerate() {
            let _ = write!(s, "{}", pad(label, 24));
            for c in &cells[i] {
                let _ = write!(s, "{}", pad(c, width));
            }
            let end = s.trim_end_matches(' ').len();
            s.truncate(end);
            s.push('\n');
        }
        for v in &self.variants {
            if v.irr_missing > 0 || v.not_paid_back > 0 {
                let _ = writeln!(
                    s,
                    "{}: {} seeds without an IRR, {} not paid back within the horizon",
                    v.variant, v.irr_missing, v.not_paid_back
                );
            }
        }
        if !self.wins.is_empty() {
            let _ = writeln!(
                s,
                "NPV, seed by seed (the same demand path for every variant):"
            );
        }
        for w in &self.wins {
            let _ = writeln!(
                s,
                "  {} beats {} in {} of {} seeds (p = {:.3}); by {} on average, {} in the worst 5%",
                w.variant,
                w.over,
                w.seeds_won,
                w.seeds,
                w.probability,
                millions(w.mean_npv_difference_usd),
                millions(w.p5_npv_difference_usd)
            );
        }
        s
    }
}

impl VariantSummary {
    /// The figures in table order, with their CSV names.
    pub fn figures(&self) -> Vec<(&'static str, &Spread)> {
        vec![
            ("revenue_usd", &self.revenue_usd),
            ("gross_margin_usd", &self.gross_margin_usd),
            ("internal_value_usd", &self.internal_value_usd),
            ("energy_cost_usd", &self.energy_cost_usd),
            ("utilization_percent", &self.utilization_percent),
            ("refused_gpu_hours", &self.refused_gpu_hours),
            (
                "internal_refused_gpu_hours",
                &self.internal_refused_gpu_hours,
            ),
            ("ebitda_usd", &self.ebitda_usd),
            ("net_income_usd", &self.net_income_usd),
            ("npv_usd", &self.npv_usd),
            ("irr_percent", &self.irr_percent),
            ("payback_month", &self.payback_month),
        ]
    }
}
