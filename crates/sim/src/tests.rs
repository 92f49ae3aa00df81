//! Tests of the simulator on a small two-site fleet (tests/data): determinism,
//! conservation of GPU-hours, revenue equal to the billing code's invoices over the exported
//! ledger, the Alibaba converter on a hand-written sample, and bad input.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use neocloud_billing::{Month, SlaPolicy, UsageRecord, build_invoice};
use neocloud_types::{Class, GangLevel, Money, Shape};

use crate::convert::{AlibabaOptions, alibaba_v2020};
use crate::{RunResult, Scenario, SimError, compare, run};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn small() -> Scenario {
    Scenario::load(&data("small.toml")).unwrap()
}

fn run_variant(sc: &Scenario, name: &str, seed: u64) -> RunResult {
    run(sc, sc.variant(name).unwrap(), seed, &mut |_| {}).unwrap()
}

/// A scratch folder holding a copy of the test data, with `small.toml` edited by `edit`.
fn scratch(tag: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("neocloud-sim-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(data("small.fleet.toml"), dir.join("small.fleet.toml")).unwrap();
    let text = std::fs::read_to_string(data("small.toml")).unwrap();
    std::fs::write(dir.join("small.toml"), edit(text)).unwrap();
    dir
}

#[test]
fn same_seed_gives_byte_identical_outputs() {
    let sc = small();
    for v in ["lease", "keep"] {
        let a = run_variant(&sc, v, 7);
        let b = run_variant(&sc, v, 7);
        assert_eq!(a.to_json(), b.to_json(), "{v}");
        assert_eq!(a.series_csv(), b.series_csv(), "{v}");
        assert_eq!(a.months_csv(), b.months_csv(), "{v}");
        assert_eq!(a.ledger_jsonl(), b.ledger_jsonl(), "{v}");
        assert_eq!(crate::utilization_svg(&a), crate::utilization_svg(&b));
        let c = run_variant(&sc, v, 8);
        assert_ne!(a.to_json(), c.to_json(), "{v}: another seed, another run");
    }
    // The comparison does not depend on the number of threads.
    let one = compare(&sc, &[1, 2], 1, &mut |_| {}).unwrap();
    let two = compare(&sc, &[1, 2], 2, &mut |_| {}).unwrap();
    assert_eq!(one.to_json(), two.to_json());
    assert_eq!(one.table(), two.table());
}

#[test]
fn gpu_hours_are_conserved() {
    let sc = small();
    for v in ["lease", "keep"] {
        for seed in [1, 2, 3] {
            let r = run_variant(&sc, v, seed);
            let g = &r.totals.gpu_seconds;
            assert_eq!(g.fleet, 224 * 30 * 86_400);
            assert_eq!(
                g.allocated + g.idle + g.down,
                g.fleet,
                "{v}/{seed}: allocated {} + idle {} + down {} ≠ fleet {}",
                g.allocated,
                g.idle,
                g.down,
                g.fleet
            );
            // What the billing code metered is what the engine held, class by class.
            let by_class: i128 = g.allocated_by_class.values().sum();
            assert_eq!(by_class, g.allocated, "{v}/{seed}");
            let ledger: i128 = r.ledger.iter().map(|u| i128::from(u.gpu_seconds)).sum();
            assert_eq!(ledger, g.allocated, "{v}/{seed}");
            assert!(g.allocated > 0 && g.idle > 0, "{v}/{seed}: {g:?}");
            assert!(
                r.totals.node_failures > 0,
                "{v}/{seed}: AFR 2 draws failures"
            );
            assert!(g.down > 0, "{v}/{seed}");
        }
    }
}

#[test]
fn revenue_equals_the_billing_codes_invoices_for_the_exported_ledger() {
    let sc = small();
    for v in ["lease", "keep"] {
        let r = run_variant(&sc, v, 3);
        // Read the ledger back from what the simulator writes.
        let ledger: Vec<UsageRecord> = r
            .ledger_jsonl()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(ledger.len(), r.ledger.len());
        let mut months: Vec<Month> = ledger.iter().map(|u| u.month).collect();
        months.push(Month::new(2027, 1).unwrap());
        months.push(Month::new(2027, 2).unwrap());
        months.sort();
        months.dedup();
        let mut total = 0i64;
        for &m in &months {
            for (id, _, internal) in &r.tenants {
                let inv = build_invoice(
                    *id,
                    *internal,
                    m,
                    &r.contracts,
                    &ledger,
                    &r.downtime,
                    &SlaPolicy::default(),
                );
                total += inv.total.micros();
            }
        }
        assert_eq!(Money::from_micros(total), r.totals.revenue, "{v}");
        let by_class: i64 = r.totals.revenue_by_class.values().map(|m| m.micros()).sum();
        assert_eq!(by_class, r.totals.revenue.micros(), "{v}");
        assert!(r.totals.revenue > Money::ZERO, "{v}");
    }
    // The lease's commitment, by hand: 152 GPUs × 30 days × 24 h × $1.95.
    let r = run_variant(&sc, "lease", 3);
    assert_eq!(
        r.totals.revenue_by_class["reserved"],
        Money::from_micros(152 * 30 * 24 * 1_950_000)
    );
    assert_eq!(
        r.totals.revenue_by_class.get("on-demand"),
        None,
        "no H100 left to sell on demand"
    );
}

#[test]
fn the_lease_refuses_on_demand_h100_and_keep_sells_it() {
    let sc = small();
    let lease = run_variant(&sc, "lease", 1);
    let keep = run_variant(&sc, "keep", 1);
    let od = |r: &RunResult| r.totals.requests["on-demand"].clone();
    assert_eq!(od(&lease).placed, 0);
    assert!(od(&lease).refused + od(&lease).expired > 0);
    assert!(od(&keep).placed > 0);
    assert!(lease.totals.requests["reserved"].placed > 0);
    assert!(keep.totals.utilization["internal"] > lease.totals.utilization["internal"]);
    assert!(keep.totals.revenue_by_class.contains_key("on-demand"));
    // Spot borrows the lease's idle pool nodes.
    assert!(lease.totals.requests["spot"].placed > 0);
}

#[test]
fn failures_are_remediated_from_spares() {
    let dir = scratch("failures", |t| {
        t.replace("node_afr = 2.0", "node_afr = 20.0")
    });
    let sc = Scenario::load(&dir.join("small.toml")).unwrap();
    let r = run_variant(&sc, "lease", 5);
    assert!(r.totals.node_failures > 20, "{}", r.totals.node_failures);
    assert!(r.totals.pool_outages > 0);
    let interrupted: u64 = r
        .totals
        .requests
        .values()
        .map(|s| s.interrupted_by_failure)
        .sum();
    assert!(interrupted > 0);
    let g = &r.totals.gpu_seconds;
    assert_eq!(g.allocated + g.idle + g.down, g.fleet);
    let relaunched: u64 = r.totals.requests.values().map(|s| s.relaunched).sum();
    assert_eq!(relaunched, 0, "relaunch is off by default");

    // With relaunch, the rest of each failed request runs again; demand stays the same.
    let dir = scratch("relaunch", |t| {
        t.replace("node_afr = 2.0", "node_afr = 20.0\nrelaunch = true")
    });
    let sc2 = Scenario::load(&dir.join("small.toml")).unwrap();
    let again = run_variant(&sc2, "lease", 5);
    let relaunched: u64 = again.totals.requests.values().map(|s| s.relaunched).sum();
    assert!(relaunched > 0);
    assert_eq!(again.requests, r.requests);
    let arrived = |x: &RunResult| x.totals.requests.values().map(|s| s.arrived).sum::<u64>();
    assert_eq!(arrived(&again), arrived(&r));
    let g = &again.totals.gpu_seconds;
    let by_class: i128 = g.allocated_by_class.values().sum();
    assert_eq!(by_class, g.allocated, "{g:?}");
    assert_eq!(g.allocated + g.idle + g.down, g.fleet);
    assert_eq!(again.to_json(), run_variant(&sc2, "lease", 5).to_json());
}

#[test]
fn trace_files_replay_in_csv_and_jsonl() {
    let dir = scratch("trace", |t| {
        t.replace(
            "[[demand.generators]]\nname = \"home training\"",
            "[demand]\ntrace = \"trace.csv\"\n\n[[demand.generators]]\nname = \"home training\"",
        )
    });
    let csv = "arrival_s,tenant,class,gpu_model,shape,duration_s,max_wait_s,site\n\
               0,acme,on-demand,H100-SXM-80GB,gpus:8,3600,0,\n\
               60,acme,on-demand,H100-SXM-80GB,nodes:2:leaf_group,7200,600,m1\n\
               120,home,internal,GB200,nodes:4:nvlink_domain,3600,0,\n";
    std::fs::write(dir.join("trace.csv"), csv).unwrap();
    let sc = Scenario::load(&dir.join("small.toml")).unwrap();
    assert_eq!(sc.trace.len(), 3);
    assert!(sc.tenants.iter().any(|t| t.name == "acme" && !t.internal));
    let r = run_variant(&sc, "keep", 1);
    assert!(r.totals.revenue_by_tenant.contains_key("acme"));

    let jsonl = "{\"arrival_s\":0,\"tenant\":\"acme\",\"class\":\"spot\",\"gpu_model\":\"H100-SXM-80GB\",\"shape\":\"gpus:1\",\"duration_s\":60,\"max_wait_s\":0}\n";
    std::fs::write(dir.join("trace.jsonl"), jsonl).unwrap();
    let rows = crate::trace::read_trace(&dir.join("trace.jsonl")).unwrap();
    assert_eq!(rows[0].class, Class::Spot);
    assert_eq!(rows[0].shape, Shape::Gpus { gpus: 1 });
    // Written and read back, a trace is the same.
    let again = crate::trace::parse_csv(&crate::trace::write_csv(&sc.trace)).unwrap();
    assert_eq!(again.len(), 3);
    assert_eq!(again[1].shape, sc.trace[1].shape);
}

#[test]
fn alibaba_v2020_sample_converts() {
    let tasks = std::fs::read_to_string(data("pai_task_table.sample.csv")).unwrap();
    let jobs = std::fs::read_to_string(data("pai_job_table.sample.csv")).unwrap();
    let opts = AlibabaOptions {
        gpu_model: "H100-SXM-80GB".to_string(),
        class: Class::OnDemand,
        max_wait_s: 3600,
        tenant: None,
    };
    let (rows, stats) = alibaba_v2020(&tasks, Some(&jobs), &opts).unwrap();
    assert_eq!(stats.rows, 7);
    assert_eq!(stats.converted, 5);
    assert_eq!(stats.skipped_no_gpu, 1);
    assert_eq!(stats.skipped_unfinished, 1);
    let got: Vec<(i64, &str, Shape, i64)> = rows
        .iter()
        .map(|r| (r.arrival_s, r.tenant.as_str(), r.shape, r.duration_s))
        .collect();
    let site = GangLevel::Site;
    assert_eq!(
        got,
        vec![
            (0, "user_bob", Shape::Gpus { gpus: 4 }, 79_300),
            (0, "user_bob", Shape::Gpus { gpus: 8 }, 69_400),
            (500, "user_alice", Shape::Gpus { gpus: 2 }, 7_900),
            (1000, "user_bob", Shape::Gpus { gpus: 1 }, 2_400),
            (
                1500,
                "user_alice",
                Shape::Nodes {
                    count: 2,
                    level: site
                },
                500
            ),
        ]
    );
    // The converted trace is a valid trace.
    let back = crate::trace::parse_csv(&crate::trace::write_csv(&rows)).unwrap();
    assert_eq!(back.len(), 5);
    assert_eq!(back[4].max_wait_s, 3600);

    // Without the job table: task start times, one tenant.
    let (rows, _) = alibaba_v2020(&tasks, None, &opts).unwrap();
    assert!(rows.iter().all(|r| r.tenant == "alibaba"));
    // A malformed row is named.
    let bad = format!("{tasks}job_x,worker,1,Terminated,1,2,600,29.3,lots,V100\n");
    let err = alibaba_v2020(&bad, None, &opts).unwrap_err();
    assert!(
        err.contains("line 8") && err.contains("plan_gpu 'lots'"),
        "{err}"
    );
}

fn load_err(dir: &Path) -> String {
    match Scenario::load(&dir.join("small.toml")) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_input_gives_clear_errors() {
    // A missing scenario, a missing fleet file.
    let err = Scenario::load(Path::new("no/such/scenario.toml")).unwrap_err();
    assert!(
        matches!(
            err,
            SimError::Read {
                what: "scenario",
                ..
            }
        ),
        "{err}"
    );
    let dir = scratch("nofleet", |t| {
        t.replace(
            "fleet = \"small.fleet.toml\"",
            "fleet = \"missing.fleet.toml\"",
        )
    });
    let err = load_err(&dir);
    assert!(
        err.contains("cannot read fleet file") && err.contains("missing.fleet.toml"),
        "{err}"
    );
    // A missing trace.
    let dir = scratch("notrace", |t| {
        t.replace(
            "[[demand.generators]]\nname = \"home training\"",
            "[demand]\ntrace = \"gone.csv\"\n\n[[demand.generators]]\nname = \"home training\"",
        )
    });
    let err = load_err(&dir);
    assert!(
        err.contains("cannot read trace") && err.contains("gone.csv"),
        "{err}"
    );
    // A malformed trace row names the row.
    let dir = scratch("badrow", |t| {
        t.replace(
            "[[demand.generators]]\nname = \"home training\"",
            "[demand]\ntrace = \"t.csv\"\n\n[[demand.generators]]\nname = \"home training\"",
        )
    });
    std::fs::write(
        dir.join("t.csv"),
        "arrival_s,tenant,class,gpu_model,shape,duration_s,max_wait_s\n0,a,spot,H100-SXM-80GB,gpus:1,60,0\n5,a,spot,H100-SXM-80GB,gpus:3,60,0\n",
    )
    .unwrap();
    let err = load_err(&dir);
    assert!(
        err.contains("t.csv, row 3") && err.contains("1, 2, 4 or 8"),
        "{err}"
    );
    std::fs::write(
        dir.join("t.csv"),
        "arrival_s,tenant,class,gpu_model,shape,duration_s,max_wait_s\n-5,a,spot,H100-SXM-80GB,gpus:1,60,0\n",
    )
    .unwrap();
    let err = load_err(&dir);
    assert!(err.contains("row 2") && err.contains("arrival_s"), "{err}");
    std::fs::write(
        dir.join("t.csv"),
        "arrival_s,tenant,class,gpu_model,shape,duration_s,max_wait_s,site\n0,a,spot,H100-SXM-80GB,gpus:1,60,0,m7\n",
    )
    .unwrap();
    let err = load_err(&dir);
    assert!(
        err.contains("t.csv, row 2: site 'm7' is not in the fleet file"),
        "{err}"
    );
    std::fs::write(dir.join("t.csv"), "arrival_s,tenant\n0,a\n").unwrap();
    assert!(load_err(&dir).contains("lacks column 'class'"));
    // Negative rates.
    let dir = scratch("negafr", |t| t.replace("node_afr = 2.0", "node_afr = -1"));
    let err = load_err(&dir);
    assert!(
        err.contains("failures.node_afr") && err.contains("≥ 0"),
        "{err}"
    );
    let dir = scratch("negarr", |t| {
        t.replace("arrivals_per_day = 30", "arrivals_per_day = -3")
    });
    let err = load_err(&dir);
    assert!(
        err.contains("arrivals_per_day") && err.contains("≥ 0"),
        "{err}"
    );
    let dir = scratch("negprice", |t| {
        t.replace("on_demand = \"3.00\"", "on_demand = \"-3.00\"")
    });
    let err = load_err(&dir);
    assert!(
        err.contains("prices[0].on_demand") && err.contains("negative"),
        "{err}"
    );
    // Unknown names.
    let dir = scratch("badsite", |t| {
        t.replace(
            "site = \"m1\"\narrivals_per_day = 3",
            "site = \"m9\"\narrivals_per_day = 3",
        )
    });
    let err = load_err(&dir);
    assert!(err.contains("site 'm9' is not in the fleet file"), "{err}");
    let dir = scratch("badfield", |t| {
        t.replace("horizon_days = 30", "horizon_days = 30\nhorizon_years = 1")
    });
    let err = load_err(&dir);
    assert!(err.contains("horizon_years"), "{err}");
    // A lease larger than what may be sold.
    let dir = scratch("oversold", |t| t.replace("gpus = \"all\"", "gpus = 160"));
    let err = load_err(&dir);
    assert!(err.contains("exceed the 152 sellable"), "{err}");
}

#[test]
fn the_shipped_scenarios_load() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let sc = Scenario::load(&examples.join("memphis.toml")).unwrap();
    let names: Vec<&str> = sc.variants.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["lease", "keep", "keep-weak-demand"]);
    assert_eq!(sc.fleet.gpu_count(), 292_000);
    let lease = &sc.variant("lease").unwrap().contracts[0];
    assert_eq!(lease.gpus, 215_600, "every sellable H100 of memphis-1");
    assert_eq!(lease.rate, Money::from_micros(1_950_000));
    assert!(sc.variant("keep").unwrap().contracts.is_empty());
    let three = Scenario::load(&examples.join("memphis-3y.toml")).unwrap();
    assert_eq!(three.horizon_secs, 1095 * 86_400);
    assert_eq!(three.variants.len(), 3);
    let bench = Scenario::load(&examples.join("memphis-1-bench.toml")).unwrap();
    assert_eq!(bench.fleet.gpu_count(), 220_000);
    assert_eq!(bench.variants.len(), 2);
    let orbital = Scenario::load(&examples.join("orbital.toml")).unwrap();
    let (earth, orbit) = (&orbital.sites[0], &orbital.sites[1]);
    assert!(!earth.orbital && earth.repair && earth.node_afr.is_none());
    assert!(orbit.orbital && !orbit.repair);
    assert_eq!(orbit.node_afr, Some(0.15));
    assert_eq!(orbit.powered_watts, Some(6_000_000));
    assert_eq!(orbit.grams_per_node, 500_000);
}

/// The orbital example, shortened: `edit` changes its text.
fn orbital(tag: &str, edit: impl Fn(String) -> String) -> Scenario {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let dir = std::env::temp_dir().join(format!("neocloud-sim-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        examples.join("orbital.fleet.toml"),
        dir.join("orbital.fleet.toml"),
    )
    .unwrap();
    let text = std::fs::read_to_string(examples.join("orbital.toml"))
        .unwrap()
        .replace("horizon_days = 1095", "horizon_days = 120")
        .replace("arrivals_per_day = 150", "arrivals_per_day = 40")
        .replace("node_afr = 0.15 ", "node_afr = 3 ");
    std::fs::write(dir.join("orbital.toml"), edit(text)).unwrap();
    Scenario::load(&dir.join("orbital.toml")).unwrap()
}

#[test]
fn in_orbit_failed_nodes_stay_failed_until_a_servicing_mission() {
    let sc = orbital("orbit", |t| t);
    let r = run(&sc, &sc.variants[0], 1, &mut |_| {}).unwrap();
    let orbit = &r.finance.sites[1].accounts.months;
    let earth = &r.finance.sites[0].accounts.months;
    // No repair: the share of GPUs down only grows, month after month.
    for w in orbit.windows(2) {
        assert!(w[1].down_percent >= w[0].down_percent, "{orbit:?}");
    }
    // 300% a year over 500 nodes, none repaired: most are down by the fourth month; the
    // ground's are repaired in two days.
    assert!(orbit[3].down_percent > 30.0, "{:?}", orbit[3]);
    assert!(earth[3].down_percent < 2.0, "{:?}", earth[3]);
    let g = &r.totals.gpu_seconds;
    assert_eq!(g.allocated + g.idle + g.down, g.fleet);
    // Launch: 500 nodes × 500 kg × $1,000.
    assert_eq!(
        r.finance.sites[1].capex_launch,
        Money::from_micros(250_000_000 * 1_000_000)
    );

    // A servicing mission on day 62 repairs every failed node: March ends below February.
    let sc = orbital("serviced", |t| {
        t.replace("repair = false ", "servicing_days = [62]\nrepair = false ")
    });
    let r = run(&sc, &sc.variants[0], 1, &mut |_| {}).unwrap();
    let orbit = &r.finance.sites[1].accounts.months;
    assert!(orbit[2].down_percent < orbit[1].down_percent, "{orbit:?}");

    // Half the array: the nodes it cannot power are dark from the start.
    let sc = orbital("dark", |t| t.replace("solar_mw = 6 ", "solar_mw = 3 "));
    let r = run(&sc, &sc.variants[0], 1, &mut |_| {}).unwrap();
    // 3 MW / (10.2 kW × 1.05) = 280 nodes powered, 220 of 500 dark: 44%.
    let first = &r.finance.sites[1].accounts.months[0];
    assert!(first.down_percent >= 44.0, "{first:?}");
    let g = &r.totals.gpu_seconds;
    assert_eq!(g.allocated + g.idle + g.down, g.fleet);
}

const COSTS: &str = r#"
[costs]
discount_percent = 12
depreciation_years = 3
facility_capex_per_mw = "10000000"
fixed_opex_per_mw_year = "1200000"
residual = "book"

[costs.financing]
debt_percent = 50
interest_percent = 6
term_years = 1

[[costs.gpus]]
gpu_model = "H100-SXM-80GB"
per_gpu = "25000"
per_node = "50000"

[[costs.gpus]]
gpu_model = "GB200"
per_gpu = "40000"
"#;

#[test]
fn the_accounts_of_a_run_are_priced_by_hand_and_add_up() {
    let dir = scratch("costs", |t| format!("{t}\n{COSTS}"));
    let sc = Scenario::load(&dir.join("small.toml")).unwrap();
    let r = run_variant(&sc, "keep", 3);
    let f = &r.finance;
    let m = |s: &str| s.parse::<Money>().unwrap();
    // m1: 160 H100 × $25,000 + 20 nodes × $50,000 + 0.3 MW × $10M = $8,000,000;
    // m2: 64 GB200 × $40,000 + 0.2 MW × $10M = $4,560,000.
    assert_eq!(f.sites[0].accounts.capex, m("8000000"));
    assert_eq!(f.sites[0].capex_facility, m("3000000"));
    assert_eq!(f.sites[1].accounts.capex, m("4560000"));
    assert_eq!(f.capex, m("12560000"));
    assert_eq!(f.debt, m("6280000"));
    assert_eq!(f.equity, m("6280000"));
    // January 20 to February 19: two months of the accounts.
    assert_eq!(f.months.len(), 2);
    let jan = &f.months[0];
    assert_eq!(jan.month, "2027-01");
    // 12,560,000 / 36 = 348,888.888… → 348,888.89; then 697,777.78 − 348,888.89.
    assert_eq!(jan.depreciation, m("348888.89"));
    assert_eq!(f.months[1].depreciation, m("348888.89"));
    // 6,280,000 × 6% / 12 = 31,400; then (6,280,000 − 523,333.33) × 0.5% = 28,783.33.
    assert_eq!(jan.interest, m("31400"));
    assert_eq!(jan.principal, m("523333.33"));
    assert_eq!(f.months[1].interest, m("28783.33"));
    // 0.5 MW × $1.2M a year = $50,000 a month.
    assert_eq!(jan.fixed_opex, m("50000"));
    assert_eq!(f.residual_value, m("11862222.22"));
    assert_eq!(f.debt_outstanding, m("5233333.33"));
    // The months add up to the run's totals, and each line is what it says.
    assert_eq!(f.revenue, r.totals.revenue);
    assert_eq!(f.energy, r.totals.energy_cost);
    let mut flows = vec![Money::from_micros(-f.equity.micros())];
    for (k, x) in f.months.iter().enumerate() {
        let ebitda = x.revenue.micros() - x.energy.micros() - x.fixed_opex.micros();
        assert_eq!(x.ebitda.micros(), ebitda);
        assert_eq!(
            x.net_income.micros(),
            ebitda - x.depreciation.micros() - x.interest.micros()
        );
        let mut cash = ebitda - x.interest.micros() - x.principal.micros();
        if k + 1 == f.months.len() {
            cash += f.residual_value.micros() - f.debt_outstanding.micros();
        }
        assert_eq!(x.cash_flow.micros(), cash);
        flows.push(x.cash_flow);
    }
    assert_eq!(f.npv, crate::finance::npv(&flows, 0.12));
    // The sites' revenue adds up to the fleet's.
    let sites: i64 = f.sites.iter().map(|s| s.accounts.revenue.micros()).sum();
    assert_eq!(sites, f.revenue.micros());
    assert!(r.summary().contains("NPV"));
    assert!(r.finance_csv().starts_with("site,month,revenue"));
}

#[test]
fn a_parallel_comparison_equals_a_sequential_one_and_counts_wins() {
    let dir = scratch("wins", |t| format!("{t}\n{COSTS}"));
    let sc = Scenario::load(&dir.join("small.toml")).unwrap();
    let seeds = crate::parse_seeds("1..4").unwrap();
    assert_eq!(seeds, vec![1, 2, 3, 4]);
    let one = compare(&sc, &seeds, 1, &mut |_| {}).unwrap();
    let three = compare(&sc, &seeds, 3, &mut |_| {}).unwrap();
    assert_eq!(one.to_json(), three.to_json());
    assert_eq!(one.to_csv(), three.to_csv());
    assert_eq!(one.table(), three.table());
    // And each run equals the same run made on its own.
    for r in &three.runs {
        assert_eq!(r.to_json(), run_variant(&sc, &r.variant, r.seed).to_json());
    }
    // Wins are counted seed by seed from the runs' NPVs.
    let npv = |v: &str, s: u64| {
        three
            .runs
            .iter()
            .find(|r| r.variant == v && r.seed == s)
            .unwrap()
            .finance
            .npv
    };
    let w = three
        .wins
        .iter()
        .find(|w| w.variant == "keep" && w.over == "lease")
        .unwrap();
    let won = seeds
        .iter()
        .filter(|&&s| npv("keep", s) > npv("lease", s))
        .count();
    assert_eq!(w.seeds_won, won);
    assert_eq!(w.seeds, 4);
    assert!((w.probability - won as f64 / 4.0).abs() < 1e-12);
    // Nearest-rank percentiles of four values: P5 the smallest, P50 the second, P95 the largest.
    let keep = three.variants.iter().find(|v| v.variant == "keep").unwrap();
    let mut xs: Vec<f64> = seeds
        .iter()
        .map(|&s| npv("keep", s).micros() as f64 / 1e6)
        .collect();
    xs.sort_by(f64::total_cmp);
    assert_eq!(keep.npv_usd.p5, xs[0]);
    assert_eq!(keep.npv_usd.p50, xs[1]);
    assert_eq!(keep.npv_usd.p95, xs[3]);
}

#[test]
fn seeds_parse_as_lists_and_ranges() {
    assert_eq!(crate::parse_seeds("1..3,7").unwrap(), vec![1, 2, 3, 7]);
    assert_eq!(crate::parse_seeds("5").unwrap(), vec![5]);
    assert_eq!(crate::parse_seeds("1..=2").unwrap(), vec![1, 2]);
    assert_eq!(crate::parse_seeds("1..200").unwrap().len(), 200);
    assert!(crate::parse_seeds("").is_err());
    assert!(crate::parse_seeds("3..1").is_err());
    assert!(crate::parse_seeds("1,1").is_err());
}

#[test]
fn prices_follow_their_curves_through_the_billing_code() {
    // On-demand H100 falls 50% a year from the scenario's month: February is one month in,
    // $3.00 + (1.50 − 3.00) × 1/12 = $2.875.
    let dir = scratch("decline", |t| {
        t.replacen(
            "on_demand = \"3.00\"",
            "on_demand = \"3.00\"\ndecline_percent_per_year = 50",
            1,
        )
    });
    let sc = Scenario::load(&dir.join("small.toml")).unwrap();
    let feb: neocloud_types::Timestamp = "2027-02-01T00:00:00Z".parse().unwrap();
    let jan: neocloud_types::Timestamp = "2027-01-31T23:00:00Z".parse().unwrap();
    let site = crate::fleet::site_id(0);
    let kind = neocloud_billing::PriceKind::OnDemand;
    let at = |t| sc.prices.price_at("H100-SXM-80GB", site, kind, t).unwrap();
    assert_eq!(at(jan), "3".parse().unwrap());
    assert_eq!(at(feb), "2.875".parse().unwrap());
    let r = run_variant(&sc, "keep", 1);
    let rates: std::collections::BTreeSet<(String, i64)> = r
        .ledger
        .iter()
        .filter(|x| x.class == Class::OnDemand && x.gpu_model == "H100-SXM-80GB")
        .map(|x| (x.month.to_string(), x.rate.micros()))
        .collect();
    assert!(
        rates.contains(&("2027-01".to_string(), 3_000_000)),
        "{rates:?}"
    );
    assert!(
        rates.contains(&("2027-02".to_string(), 2_875_000)),
        "{rates:?}"
    );
    assert!(
        !rates.contains(&("2027-02".to_string(), 3_000_000)),
        "{rates:?}"
    );

    // A table of changes by date.
    let dir = scratch("changes", |t| {
        t.replacen(
            "internal_shadow = \"1.80\"",
            "internal_shadow = \"1.80\"\nchanges = [{ from = \"2027-02-01T00:00:00Z\", on_demand = \"2.50\" }]",
            1,
        )
    });
    let sc = Scenario::load(&dir.join("small.toml")).unwrap();
    let at = |t| sc.prices.price_at("H100-SXM-80GB", site, kind, t).unwrap();
    assert_eq!(at(jan), "3".parse().unwrap());
    assert_eq!(at(feb), "2.5".parse().unwrap());
}

#[test]
fn bad_costs_name_their_field() {
    for (add, field, why) in [
        (
            "[costs]\ndepreciation_schedule = [50, 40]\n",
            "costs.depreciation_schedule",
            "add up to 100",
        ),
        (
            "[costs]\ndepreciation_years = 5\ndepreciation_schedule = [100]\n",
            "costs.depreciation_schedule",
            "not both",
        ),
        (
            "[costs]\nresidual = \"scrap\"\n",
            "costs.residual",
            "not one of: book, market, none",
        ),
        (
            "[costs.financing]\ndebt_percent = 120\n",
            "costs.financing.debt_percent",
            "at most 100",
        ),
        (
            "[[costs.gpus]]\ngpu_model = \"A100\"\nper_gpu = \"1\"\n",
            "costs.gpus[0].gpu_model",
            "no node of the fleet",
        ),
        (
            "[[costs.gpus]]\ngpu_model = \"GB200\"\nper_gpu = \"-5\"\n",
            "costs.gpus[0].per_gpu",
            "must not be negative",
        ),
        (
            "[[sites]]\nsite = \"m1\"\nsolar_mw = 3\n",
            "sites[0].solar_mw",
            "only for orbital sites",
        ),
        (
            "[[sites]]\nsite = \"m9\"\n",
            "sites[0].site",
            "not in the fleet file",
        ),
        (
            "[[sites]]\nsite = \"m1\"\nservicing_days = [400]\n",
            "sites[0].servicing_days[0]",
            "not inside the horizon",
        ),
    ] {
        let dir = scratch("badcosts", |t| format!("{t}\n{add}"));
        let err = load_err(&dir);
        assert!(err.contains(field) && err.contains(why), "{add}: {err}");
    }
    let dir = scratch("badcurve", |t| {
        t.replacen(
            "on_demand = \"3.00\"",
            "on_demand = \"3.00\"\ndecline_percent_per_year = 10\nchanges = [{ from = \"2027-02-01T00:00:00Z\", on_demand = \"2.50\" }]",
            1,
        )
    });
    let err = load_err(&dir);
    assert!(
        err.contains("prices[0].changes") && err.contains("not both"),
        "{err}"
    );
}

#[test]
fn the_fleet_files_board_topologies_reach_the_allocator() {
    // Names whose rule differs from the file: the file wins; a model the file leaves
    // alone keeps its name's rule.
    let file = r#"
[[gpu_models]]
name = "ACME-NV8"
memory_gib = 80
tdp_watts = 700
topology = "nvswitch"
[[gpu_models]]
name = "ACME-SXM8"
memory_gib = 80
tdp_watts = 700
topology = "groups:2,4"
[[sites]]
name = "s"
region = "r"
power_mw = 1
[[sites.nodes]]
name = "a"
gpu_model = "ACME-NV8"
gpus = 8
[[sites.nodes]]
name = "b"
gpu_model = "ACME-SXM8"
gpus = 8
[[sites.nodes]]
name = "c"
gpu_model = "L40S"
gpus = 8
"#;
    let spec = neocloud_fleet::parse(file, &neocloud_types::builtin_gpu_models()).unwrap();
    let (_, snap) = crate::fleet::Fleet::build(&spec, "2026-01-01T00:00:00Z".parse().unwrap());
    let sched =
        neocloud_scheduler::Scheduler::new(neocloud_scheduler::SchedulerConfig::default(), snap)
            .unwrap();
    let t = |m: &str| sched.alloc().model_topology(m).to_string();
    assert_eq!(t("ACME-NV8"), "nvswitch");
    assert_eq!(t("ACME-SXM8"), "groups:2,4");
    assert_eq!(t("L40S"), "groups:2,4");
}
