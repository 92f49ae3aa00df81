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
}

impl Spread {
    fn of(xs: &[f64]) -> Spread {
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
    /// Every run, variant by variant, seed by seed (not in the JSON: written per run).
    #[serde(skip)]
    pub runs: Vec<RunResult>,
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
        });
    }
    Ok(Comparison {
        scenario: sc.name.clone(),
        horizon_days: sc.horizon_secs as f64 / 86_400.0,
        variants,
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
        let mut s = String::from("variant,figure,mean,stdev,min,max\n");
        for v in &self.variants {
            for (name, sp) in v.figures() {
                let _ = writeln!(
                    s,
                    "{},{name},{},{},{},{}",
                    v.variant, sp.mean, sp.stdev, sp.min, sp.max
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
            "{}: {} variants × {} seeds, {:.0} days each (mean ± stdev [min … max])",
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
        ];
        let cells: Vec<Vec<String>> = rows
            .iter()
            .enumerate()
            .map(|(i, (_, big))| {
                self.variants
                    .iter()
                    .map(|v| {
                        let sp = v.figures()[i].1;
                        if *big {
                            format!(
                                "{} ± {} [{} … {}]",
                                millions(sp.mean),
                                millions(sp.stdev),
                                millions(sp.min),
                                millions(sp.max)
                            )
                        } else {
                            format!(
                                "{:.1} ± {:.1} [{:.1} … {:.1}]",
                                sp.mean, sp.stdev, sp.min, sp.max
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
        ]
    }
}
