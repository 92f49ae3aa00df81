//! `neocloud sim` through the real binary: run, compare, convert, and bad input. The scenario
//! is the simulator's small test scenario (two sites, 224 GPUs, 30 days), so this is quick.

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::ctx::temp_dir;

const BIN: &str = env!("CARGO_BIN_EXE_neocloud");

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../sim/tests/data")
        .join(name)
}

fn sim(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("sim")
        .args(args)
        .env("NEOCLOUD_CONFIG", "/nonexistent/neocloud.toml")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

#[test]
fn sim_run_writes_identical_outputs_for_the_same_seed() {
    let scenario = data("small.toml");
    let scenario = scenario.to_str().unwrap();
    let (a, b) = (temp_dir(), temp_dir());
    for dir in [&a, &b] {
        let o = sim(&[
            "run",
            scenario,
            "--variant",
            "lease",
            "--seed",
            "4",
            "--out",
            dir.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let out = text(&o.stdout);
        assert!(out.contains("small / lease (seed 4)"), "{out}");
        assert!(out.contains("revenue"), "{out}");
    }
    for f in [
        "result.json",
        "series.csv",
        "months.csv",
        "utilization.svg",
        "revenue.svg",
        "ledger.jsonl",
    ] {
        let x = std::fs::read(a.join(f)).unwrap();
        let y = std::fs::read(b.join(f)).unwrap();
        assert!(!x.is_empty(), "{f}");
        assert_eq!(x, y, "{f} differs between two runs of the same seed");
    }
    let svg = std::fs::read_to_string(a.join("utilization.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));

    // -o json prints the result.
    let o = sim(&["run", scenario, "--variant", "keep", "-o", "json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["variant"], "keep");
    assert_eq!(v["fleet_gpus"], 224);
    let g = &v["totals"]["gpu_seconds"];
    let sum = g["allocated"].as_i64().unwrap()
        + g["idle"].as_i64().unwrap()
        + g["down"].as_i64().unwrap();
    assert_eq!(sum, g["fleet"].as_i64().unwrap());
}

#[test]
fn sim_compare_prints_the_table_and_writes_each_run() {
    let dir = temp_dir();
    let o = sim(&[
        "compare",
        data("small.toml").to_str().unwrap(),
        "--seeds",
        "1..2",
        "--threads",
        "2",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let table = text(&o.stdout);
    assert!(table.contains("2 variants × 2 seeds"), "{table}");
    // Standard error is not a terminal here: progress comes as lines, never as a redrawn
    // bar; a run this short only says when it ended and how long it took.
    let err = text(&o.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("% done")).collect();
    assert!(!lines.is_empty(), "{err}");
    let last = lines[lines.len() - 1];
    assert!(
        last.starts_with("small: 4 runs: 100% done, ") && last.ends_with(" elapsed"),
        "{err}"
    );
    assert!(!err.contains('\r'), "{err}");
    for row in [
        "revenue $",
        "gross margin $",
        "utilization %",
        "refused GPU-h",
        "NPV $",
        "IRR %",
        "lease beats keep in",
    ] {
        assert!(table.contains(row), "{row}: {table}");
    }
    assert!(table.contains("lease") && table.contains("keep"));
    for f in [
        "compare.json",
        "compare.csv",
        "compare.svg",
        "lease-seed1/result.json",
        "lease-seed1/finance.csv",
        "keep-seed2/series.csv",
    ] {
        assert!(dir.join(f).exists(), "{f}");
    }
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("compare.json")).unwrap()).unwrap();
    assert_eq!(c["variants"].as_array().unwrap().len(), 2);
    assert_eq!(c["wins"].as_array().unwrap().len(), 2);

    // Seeds that cannot be read are refused with the reason.
    for (seeds, why) in [
        ("5..2", "ends before it starts"),
        ("1,x", "seed 'x' is not a whole number"),
        ("1..3,2", "seed 2 is given twice"),
    ] {
        let o = sim(&[
            "compare",
            data("small.toml").to_str().unwrap(),
            "--seeds",
            seeds,
        ]);
        assert!(!o.status.success(), "{seeds}");
        assert!(
            text(&o.stderr).contains(why),
            "{seeds}: {}",
            text(&o.stderr)
        );
    }
}

#[test]
fn sim_convert_turns_the_alibaba_sample_into_a_trace() {
    let out = temp_dir().join("trace.csv");
    let o = sim(&[
        "convert",
        "alibaba-v2020",
        "--tasks",
        data("pai_task_table.sample.csv").to_str().unwrap(),
        "--jobs",
        data("pai_job_table.sample.csv").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("7 task rows: 5 requests"),
        "{}",
        text(&o.stderr)
    );
    let csv = std::fs::read_to_string(&out).unwrap();
    assert!(csv.starts_with("arrival_s,tenant,class,gpu_model,shape,duration_s,max_wait_s,site\n"));
    assert_eq!(csv.lines().count(), 6);
    assert!(
        csv.contains("1500,user_alice,on-demand,H100-SXM-80GB,nodes:2:site,500,3600,"),
        "{csv}"
    );
}

#[test]
fn sim_reports_bad_input_clearly() {
    let o = sim(&["run", "no/such/scenario.toml"]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("cannot read scenario no/such/scenario.toml"),
        "{}",
        text(&o.stderr)
    );

    let dir = temp_dir();
    std::fs::copy(data("small.fleet.toml"), dir.join("small.fleet.toml")).unwrap();
    let scenario = std::fs::read_to_string(data("small.toml"))
        .unwrap()
        .replace(
            "[[demand.generators]]\nname = \"home training\"",
            "[demand]\ntrace = \"t.csv\"\n\n[[demand.generators]]\nname = \"home training\"",
        );
    std::fs::write(dir.join("s.toml"), &scenario).unwrap();
    std::fs::write(
        dir.join("t.csv"),
        "arrival_s,tenant,class,gpu_model,shape,duration_s,max_wait_s\n0,a,spot,H100-SXM-80GB,gpus:1,60,0\n9,a,gold,H100-SXM-80GB,gpus:1,60,0\n",
    )
    .unwrap();
    let o = sim(&["run", dir.join("s.toml").to_str().unwrap()]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("t.csv, row 3") && err.contains("'gold'"),
        "{err}"
    );

    std::fs::write(
        dir.join("t.csv"),
        "arrival_s,tenant,class,gpu_model,shape,duration_s,max_wait_s\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("s.toml"),
        scenario.replace("repair_hours = 24", "repair_hours = -24"),
    )
    .unwrap();
    let o = sim(&["run", dir.join("s.toml").to_str().unwrap()]);
    let err = text(&o.stderr);
    assert!(
        !o.status.success() && err.contains("failures.repair_hours") && err.contains("≥ 0"),
        "{err}"
    );

    let o = sim(&[
        "run",
        data("small.toml").to_str().unwrap(),
        "--variant",
        "nope",
    ]);
    assert!(
        text(&o.stderr).contains("no variant 'nope' (it has: lease, keep)"),
        "{}",
        text(&o.stderr)
    );
}
