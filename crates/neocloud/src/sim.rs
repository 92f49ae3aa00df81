//! `neocloud sim`: the capacity planner on the command line. Runs offline: no server, no
//! database; the allocator and billing code are the ones `serve` uses.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use neocloud_sim::{Scenario, convert};
use neocloud_types::Class;

/// `neocloud sim …`.
#[derive(Subcommand, Debug)]
pub enum SimCmd {
    /// Replay one variant of a scenario under one seed: terminal summary, and with --out
    /// result.json, series.csv, months.csv, utilization.svg, revenue.svg (and ledger.jsonl
    /// when the scenario sets keep_ledger).
    Run {
        /// The scenario file (TOML; see docs/planning.md and examples/memphis.toml).
        scenario: PathBuf,
        /// The variant to run (default: the first one listed).
        #[arg(long)]
        variant: Option<String>,
        /// The seed (default: the first of the scenario's seeds).
        #[arg(long)]
        seed: Option<u64>,
        /// Folder for the outputs (created if missing).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Run every variant over several seeds and print a side-by-side table of the mean,
    /// standard deviation and P5/P50/P95 of revenue, margin, NPV, IRR, utilization and refused
    /// demand, and how often each variant's NPV beats each other's. With --out: compare.json,
    /// compare.csv, compare.svg, and each run's outputs in <DIR>/<variant>-seed<N>/.
    Compare {
        /// The scenario file (TOML).
        scenario: PathBuf,
        /// Seeds: numbers and inclusive ranges, comma-separated (`1..200`, `1,2,3`, `1..5,9`;
        /// default: the scenario's seeds). Each seed is one demand path, run for every
        /// variant; the statistics do not depend on --threads.
        #[arg(long)]
        seeds: Option<String>,
        /// Runs at once (default: the number of CPUs).
        #[arg(long)]
        threads: Option<usize>,
        /// Folder for the outputs (created if missing).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Convert a public GPU cluster trace into the simulator's trace format (CSV on stdout,
    /// or --out FILE). Supported: Alibaba cluster-trace-gpu-v2020 (pai_task_table.csv, with
    /// pai_job_table.csv for users and submission times).
    Convert {
        /// The trace's format.
        #[arg(value_parser = ["alibaba-v2020"])]
        format: String,
        /// The task table (pai_task_table.csv).
        #[arg(long)]
        tasks: PathBuf,
        /// The job table (pai_job_table.csv).
        #[arg(long)]
        jobs: Option<PathBuf>,
        /// GPU model every request asks for.
        #[arg(long, default_value = "H100-SXM-80GB")]
        gpu_model: String,
        /// Class of every request: reserved, internal, on-demand, spot.
        #[arg(long, default_value = "on-demand")]
        class: String,
        /// Seconds a request may wait in the queue.
        #[arg(long, default_value_t = 3600)]
        max_wait: i64,
        /// One tenant for every request instead of the job table's users.
        #[arg(long)]
        tenant: Option<String>,
        /// Write the trace here instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

/// Progress on standard error, with the time taken and an estimate of the time left. On a
/// terminal, a bar redrawn at each percent; otherwise (a log file, a CI job, `nohup`), one
/// line at each tenth, so that a run of hours shows how far it is without flooding the log.
struct Bar {
    label: String,
    on: bool,
    last: i64,
    started: std::time::Instant,
}

impl Bar {
    fn new(label: &str) -> Bar {
        Bar {
            label: label.to_string(),
            on: std::io::stderr().is_terminal(),
            last: -1,
            started: std::time::Instant::now(),
        }
    }

    #[allow(
        clippy::cast_possible_truncation,
        reason = "a share clamped to 0..=1, times 100"
    )]
    fn set(&mut self, share: f64) {
        let share = share.clamp(0.0, 1.0);
        let pct = (share * 100.0).floor() as i64;
        let elapsed = self.started.elapsed().as_secs_f64();
        let Some(step) = due(self.on, self.last, pct, elapsed) else {
            return;
        };
        self.last = step;
        let times = if share > 0.0 && share < 1.0 {
            format!(
                "{} elapsed, about {} left",
                clock(elapsed),
                clock(elapsed * (1.0 - share) / share)
            )
        } else {
            format!("{} elapsed", clock(elapsed))
        };
        let mut err = std::io::stderr();
        if self.on {
            let filled = usize::try_from(pct * 40 / 100).unwrap_or(0);
            let _ = write!(
                err,
                "\r{} [{}{}] {pct:>3}%  {times}\x1b[K",
                self.label,
                "#".repeat(filled),
                " ".repeat(40 - filled)
            );
        } else {
            let _ = writeln!(err, "{}: {pct}% done, {times}", self.label);
        }
        let _ = err.flush();
    }

    fn done(&mut self) {
        if self.on {
            let _ = writeln!(std::io::stderr());
        }
    }
}

/// Seconds a job runs before progress lines start where standard error is not a terminal:
/// a short run stays quiet but for its last line.
const QUIET_SECS: f64 = 2.0;

/// Whether progress at `pct` percent, `elapsed` seconds in, is drawn, and the step it
/// counts as (`last` is the step drawn before): on a terminal every new percent; otherwise
/// every new tenth once [`QUIET_SECS`] have passed, and the end.
fn due(terminal: bool, last: i64, pct: i64, elapsed: f64) -> Option<i64> {
    let step = if terminal { pct } else { pct / 10 * 10 };
    let show = step != last && (terminal || pct >= 100 || (step > 0 && elapsed >= QUIET_SECS));
    show.then_some(step)
}

/// Seconds as `1h02m`, `3m05s` or `42s`.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "a non-negative duration in seconds, rounded"
)]
fn clock(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

fn load(path: &Path) -> Result<Scenario> {
    Scenario::load(path).map_err(|e| anyhow!("{e}"))
}

/// Runs a `sim` subcommand; `json` prints JSON instead of the terminal summary.
pub fn run(cmd: SimCmd, json: bool) -> Result<()> {
    match cmd {
        SimCmd::Run {
            scenario,
            variant,
            seed,
            out,
        } => {
            let sc = load(&scenario)?;
            let v = match &variant {
                Some(name) => sc.variant(name).ok_or_else(|| {
                    let names: Vec<&str> = sc.variants.iter().map(|v| v.name.as_str()).collect();
                    anyhow!(
                        "scenario {} has no variant '{name}' (it has: {})",
                        sc.name,
                        names.join(", ")
                    )
                })?,
                None => &sc.variants[0],
            };
            let seed = seed.unwrap_or(sc.seeds[0]);
            let mut bar = Bar::new(&format!("{} / {} seed {seed}", sc.name, v.name));
            let r = neocloud_sim::run(&sc, v, seed, &mut |p| bar.set(p));
            bar.done();
            let r = r.map_err(|e| anyhow!("{e}"))?;
            if let Some(dir) = &out {
                let files = neocloud_sim::write_run(dir, &r).map_err(|e| anyhow!("{e}"))?;
                if !json {
                    for f in files {
                        eprintln!("wrote {}", f.display());
                    }
                }
            }
            if json {
                crate::cli::write_stdout(format!("{}\n", r.to_json()).as_bytes())
            } else {
                crate::cli::write_stdout(r.summary().as_bytes())
            }
        }
        SimCmd::Compare {
            scenario,
            seeds,
            threads,
            out,
        } => {
            let sc = load(&scenario)?;
            let seeds = match &seeds {
                None => sc.seeds.clone(),
                Some(s) => neocloud_sim::parse_seeds(s).map_err(|e| anyhow!("--seeds: {e}"))?,
            };
            let threads = threads.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
            });
            if threads == 0 {
                bail!("--threads must be at least 1");
            }
            let runs = sc.variants.len() * seeds.len();
            let bar = std::sync::Mutex::new(Bar::new(&format!("{}: {runs} runs", sc.name)));
            let c = neocloud_sim::compare(&sc, &seeds, threads, &mut |p| {
                if let Ok(mut b) = bar.lock() {
                    b.set(p);
                }
            });
            if let Ok(mut b) = bar.lock() {
                b.done();
            }
            let c = c.map_err(|e| anyhow!("{e}"))?;
            if let Some(dir) = &out {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                for (name, text) in [
                    ("compare.json", c.to_json()),
                    ("compare.csv", c.to_csv()),
                    ("compare.svg", neocloud_sim::compare_svg(&c)),
                    ("compare.txt", c.table()),
                ] {
                    let p = dir.join(name);
                    std::fs::write(&p, text)
                        .with_context(|| format!("cannot write {}", p.display()))?;
                }
                for r in &c.runs {
                    let sub = dir.join(format!("{}-seed{}", r.variant, r.seed));
                    neocloud_sim::write_run(&sub, r).map_err(|e| anyhow!("{e}"))?;
                }
                if !json {
                    eprintln!("wrote {}", dir.display());
                }
            }
            if json {
                crate::cli::write_stdout(format!("{}\n", c.to_json()).as_bytes())
            } else {
                crate::cli::write_stdout(c.table().as_bytes())
            }
        }
        SimCmd::Convert {
            format: _,
            tasks,
            jobs,
            gpu_model,
            class,
            max_wait,
            tenant,
            out,
        } => {
            let class: Class = class.parse().map_err(|e: String| anyhow!("--class: {e}"))?;
            if max_wait < 0 {
                bail!("--max-wait must be at least 0 seconds, got {max_wait}");
            }
            let tasks_text = std::fs::read_to_string(&tasks)
                .with_context(|| format!("cannot read task table {}", tasks.display()))?;
            let jobs_text = match &jobs {
                Some(p) => Some(
                    std::fs::read_to_string(p)
                        .with_context(|| format!("cannot read job table {}", p.display()))?,
                ),
                None => None,
            };
            let opts = convert::AlibabaOptions {
                gpu_model,
                class,
                max_wait_s: max_wait,
                tenant,
            };
            let (rows, stats) = convert::alibaba_v2020(&tasks_text, jobs_text.as_deref(), &opts)
                .map_err(|e| anyhow!("{}: {e}", tasks.display()))?;
            let csv = neocloud_sim::trace::write_csv(&rows);
            match &out {
                Some(p) => std::fs::write(p, csv)
                    .with_context(|| format!("cannot write {}", p.display()))?,
                None => crate::cli::write_stdout(csv.as_bytes())?,
            }
            eprintln!(
                "{} task rows: {} requests, {} without GPUs, {} without start and end",
                stats.rows, stats.converted, stats.skipped_no_gpu, stats.skipped_unfinished
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn progress_lines_come_at_each_tenth_after_a_quiet_start() {
        use super::due;
        // A terminal: every new percent, from the start.
        assert_eq!(due(true, -1, 0, 0.0), Some(0));
        assert_eq!(due(true, 0, 1, 0.1), Some(1));
        assert_eq!(due(true, 1, 1, 0.2), None);
        // Not a terminal: nothing in the first seconds but the end.
        assert_eq!(due(false, -1, 37, 1.0), None);
        assert_eq!(due(false, -1, 100, 1.0), Some(100));
        // Then one line per tenth, at the first percent of each.
        assert_eq!(due(false, -1, 37, 3.0), Some(30));
        assert_eq!(due(false, 30, 39, 4.0), None);
        assert_eq!(due(false, 30, 41, 5.0), Some(40));
        assert_eq!(due(false, 40, 0, 9.0), None);
        assert_eq!(due(false, 90, 100, 9.0), Some(100));
        assert_eq!(due(false, 100, 100, 9.0), None);
    }

    #[test]
    fn clock_reads_like_a_duration() {
        assert_eq!(super::clock(0.0), "0s");
        assert_eq!(super::clock(-3.0), "0s");
        assert_eq!(super::clock(42.4), "42s");
        assert_eq!(super::clock(185.0), "3m05s");
        assert_eq!(super::clock(3600.0), "1h00m");
        assert_eq!(super::clock(7_950.0), "2h12m");
    }
}
