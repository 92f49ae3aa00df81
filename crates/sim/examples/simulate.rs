//! Runs one variant of a scenario and prints the summary and the wall time: the benchmark of
//! `docs/BENCHMARKS.md` ("Simulator"), measured with `/usr/bin/time -v` for peak memory.
//!
//! ```text
//! cargo run --release -p neocloud-sim --example simulate -- examples/memphis-1-bench.toml [VARIANT] [SEED]
//! ```

use std::path::Path;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
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
