//! Runs one variant of a scenario and prints the summary and the wall time: the benchmark of
//! `docs/BENCHMARKS.md` ("Simulator"), measured with `/usr/bin/time -v` for peak memory.
//!
//! ```text
//! cargo run --release -p neocloud-sim --example simulate -- examples/memphis-1-bench.toml [VARIANT] [SEED]
//! cargo run --release -p neocloud-sim --example simulate -- --compare OUT_DIR SCENARIO.toml [SEEDS]
//! ```
//!
//! `SEEDS` as `sim compare --seeds` takes them (`1..200`, `1,2,3`; default: the scenario's).
//!
//! `--compare` does what `neocloud sim compare SCENARIO.toml --out OUT_DIR` does, through the
//! same library calls, without building the whole binary.

use std::path::Path;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--compare") {
        let (Some(out), Some(path)) = (args.get(1), args.get(2)) else {
            return Err("usage: simulate --compare OUT_DIR SCENARIO.toml [SEEDS]".into());
        };
        let sc = neocloud_sim::Scenario::load(Path::new(path))?;
        let seeds = match args.get(3) {
            Some(s) => neocloud_sim::parse_seeds(s)?,
            None => sc.seeds.clone(),
        };
        let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let t = Instant::now();
        let total = sc.variants.len() * seeds.len();
        let mut last = 0;
        let c = neocloud_sim::compare(&sc, &seeds, threads, &mut |share| {
            // Progress on standard error, one line per run done.
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss,
                reason = "a share of a small count of runs"
            )]
            let done = (share * total as f64).round() as usize;
            if done > last {
                last = done;
                eprintln!("{done}/{total} runs, {:.0} s", t.elapsed().as_secs_f64());
            }
        })?;
        let out = Path::new(out);
        std::fs::create_dir_all(out)?;
        std::fs::write(out.join("compare.json"), c.to_json())?;
        std::fs::write(out.join("compare.csv"), c.to_csv())?;
        std::fs::write(out.join("compare.svg"), neocloud_sim::compare_svg(&c))?;
        std::fs::write(out.join("compare.txt"), c.table())?;
        for r in &c.runs {
            neocloud_sim::write_run(&out.join(format!("{}-seed{}", r.variant, r.seed)), r)?;
        }
        print!("{}", c.table());
        println!(
            "{} runs in {:.1} s",
            c.runs.len(),
            t.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    let Some(path) = args.first() else {
        return Err("usage: simulate SCENARIO.toml [VARIANT] [SEED]".into());
    };
    let t0 = Instant::now();
    let sc = neocloud_sim::Scenario::load(Path::new(path))?;
    let loaded = t0.elapsed();
    let variant = match args.get(1) {
        Some(name) => sc.variant(name).ok_or("no such variant")?,
        None => &sc.variants[0],
    };
    let seed = match args.get(2) {
        Some(s) => s.parse()?,
        None => sc.seeds[0],
    };
    let t1 = Instant::now();
    let r = neocloud_sim::run(&sc, variant, seed, &mut |_| {})?;
    let ran = t1.elapsed();
    print!("{}", r.summary());
    println!(
        "loaded in {:.2} s, simulated {} requests over {:.0} days in {:.2} s",
        loaded.as_secs_f64(),
        r.requests,
        r.horizon_days,
        ran.as_secs_f64()
    );
    Ok(())
}
