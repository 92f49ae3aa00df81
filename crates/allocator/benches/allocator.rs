//! Allocator and calendar benchmarks (divan), ours (best-fit) against first-fit.
//!
//! Fleets: `memphis-1` of the demo (25 pods × 20 leaf groups × 55 nodes × 8 GPUs, 220,000
//! GPUs) and a million GPUs (50 × 50 × 50 nodes × 8), warmed to half their GPUs with random
//! 1/2/4/8-GPU work before anything is timed.
//!
//! ```text
//! cargo bench -p neocloud-allocator --bench allocator
//! ```
//!
//! Tail latencies (p99) are printed by `examples/scale.rs`; divan reports means and
//! medians.

use std::fmt;

use divan::Bencher;
use divan::counter::ItemsCount;
use neocloud_allocator::calendar::{Calendar, CapacityKey};
use neocloud_allocator::synthetic::{
    Grid, Rng, allocator, contract_id, instance_id, site_id, tenant_id,
};
use neocloud_allocator::{Allocator, FleetPolicy, GangLevel, PlacementPolicy, Request, Shape};
use neocloud_types::{Class, InstanceId};

fn main() {
    divan::main();
}

const MODEL: &str = "H100-SXM-80GB";

#[derive(Clone, Copy, Debug)]
enum Size {
    Memphis,
    Million,
}

#[derive(Clone, Copy, Debug)]
struct Case(Size, PlacementPolicy);

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let size = match self.0 {
            Size::Memphis => "220k GPUs",
            Size::Million => "1M GPUs",
        };
        let policy = match self.1 {
            PlacementPolicy::BestFit => "best-fit",
            PlacementPolicy::FirstFit => "first-fit",
            PlacementPolicy::WorstFit => "worst-fit",
            PlacementPolicy::Fragmentation => "fragmentation",
        };
        write!(f, "{size}, {policy}")
    }
}

const CASES: [Case; 4] = [
    Case(Size::Memphis, PlacementPolicy::BestFit),
    Case(Size::Memphis, PlacementPolicy::FirstFit),
    Case(Size::Million, PlacementPolicy::BestFit),
    Case(Size::Million, PlacementPolicy::FirstFit),
];

fn grid(size: Size) -> Grid {
    match size {
        Size::Memphis => Grid::memphis_1(),
        Size::Million => Grid::million(),
    }
}

fn sub_node(id: InstanceId, rng: &mut Rng) -> Request {
    let k = [1, 1, 2, 4, 8][usize::try_from(rng.below(5)).unwrap_or(0)];
    Request {
        id,
        tenant: tenant_id(rng.below(50)),
        class: Class::OnDemand,
        gpu_model: MODEL.to_string(),
        shape: Shape::Gpus { gpus: k },
        site: None,
        pool: None,
        cpu_milli: None,
        memory_mib: None,
    }
}

/// A fleet with half its GPUs held by random sub-node work, and the live instances.
fn warmed(case: Case) -> (Allocator, Vec<InstanceId>) {
    let mut a = allocator(&[grid(case.0)], FleetPolicy::LabFirst, case.1);
    let mut rng = Rng::new(42);
    let total = a.free_gpus(None, MODEL);
    let mut live = Vec::new();
    let mut next = 1;
    while a.free_gpus(None, MODEL) * 2 > total {
        let id = instance_id(next);
        next += 1;
        if a.place(&sub_node(id, &mut rng)).is_ok() {
            live.push(id);
        }
        if rng.chance(0.2) && !live.is_empty() {
            let i = usize::try_from(rng.below(live.len() as u64)).unwrap_or(0);
            a.release(live.swap_remove(i));
        }
    }
    (a, live)
}

/// One placement decision on the warmed fleet, nothing recorded.
#[divan::bench(args = CASES, max_time = 2)]
fn decide_sub_node(bencher: Bencher, case: Case) {
    let (a, _) = warmed(case);
    let mut rng = Rng::new(7);
    let requests: Vec<Request> = (0..4096)
        .map(|i| sub_node(instance_id(u64::MAX - i), &mut rng))
        .collect();
    let mut i = 0;
    bencher.bench_local(|| {
        i = (i + 1) % requests.len();
        a.try_place(&requests[i])
    });
}

/// One placement recorded, then released again so that the fleet stays at half.
#[divan::bench(args = CASES, max_time = 2)]
fn place_and_release_sub_node(bencher: Bencher, case: Case) {
    let (mut a, _) = warmed(case);
    let mut rng = Rng::new(7);
    let requests: Vec<Request> = (0..4096)
        .map(|i| sub_node(instance_id(u64::MAX - i), &mut rng))
        .collect();
    let mut i = 0;
    bencher.bench_local(|| {
        i = (i + 1) % requests.len();
        if let Ok(got) = a.place(&requests[i]) {
            a.release(got.id);
        }
    });
}

/// A stream of launches and terminations: each item terminates a random instance and
/// launches a random shape in its place (two decisions).
#[divan::bench(args = CASES, max_time = 2)]
fn launch_terminate_stream(bencher: Bencher, case: Case) {
    let (mut a, mut live) = warmed(case);
    let mut rng = Rng::new(9);
    const BATCH: usize = 1000;
    bencher.counter(ItemsCount::new(2 * BATCH)).bench_local(|| {
        for _ in 0..BATCH {
            let i = usize::try_from(rng.below(live.len() as u64)).unwrap_or(0);
            let id = live.swap_remove(i);
            a.release(id);
            // The freed id is reused: formatting fresh ids is not the allocator's time.
            if a.place(&sub_node(id, &mut rng)).is_ok() {
                live.push(id);
            }
        }
    });
}

fn gang(bencher: Bencher, case: Case, count: u32) {
    let (mut a, _) = warmed(case);
    let r = Request {
        shape: Shape::Nodes {
            count,
            level: GangLevel::Pod,
        },
        ..sub_node(instance_id(u64::MAX), &mut Rng::new(1))
    };
    assert!(a.try_place(&r).is_ok(), "the warmed fleet has a free pod");
    bencher.bench_local(|| {
        if let Ok(got) = a.place(&r) {
            a.release(got.id);
        }
    });
}

/// A 64-node gang in one pod, placed and released.
#[divan::bench(args = CASES, max_time = 2)]
fn gang_64_nodes(bencher: Bencher, case: Case) {
    gang(bencher, case, 64);
}

/// A 1,024-node gang in one pod, placed and released.
#[divan::bench(args = CASES, max_time = 2)]
fn gang_1024_nodes(bencher: Bencher, case: Case) {
    gang(bencher, case, 1024);
}

/// A restart: every node and allocation of the warmed fleet into a new allocator.
#[divan::bench(args = CASES, sample_count = 3, sample_size = 1)]
fn rebuild(bencher: Bencher, case: Case) {
    let (a, _) = warmed(case);
    let snap = a.snapshot();
    bencher.bench_local(|| Allocator::from_snapshot(&snap));
}

const YEAR: i64 = 365 * 24 * 3600 * 1_000_000;

/// A calendar of 10,000 contracts with arbitrary start and end times over three years
/// (about 20,000 breakpoints: the worst case; month-aligned contracts share breakpoints).
fn calendar_10k() -> (Calendar, CapacityKey) {
    let key = CapacityKey::new(site_id(1), MODEL);
    let mut c = Calendar::new();
    let mut rng = Rng::new(5);
    let span = u64::try_from(3 * YEAR).unwrap_or(0);
    for i in 0..10_000u64 {
        let start = i64::try_from(rng.below(span)).unwrap_or(0);
        let len = 1 + i64::try_from(rng.below(span / 2)).unwrap_or(0);
        let gpus = 8 * (1 + i64::try_from(rng.below(64)).unwrap_or(0));
        let _ = c.commit(&key, contract_id(i), start, start + len, gpus);
    }
    (c, key)
}

/// A quote over a three-year window: does it fit, how many would, and from when.
#[divan::bench(max_time = 2)]
fn calendar_quote_3_years_10k_contracts(bencher: Bencher) {
    let (c, key) = calendar_10k();
    let peak = c.committed_peak(&key, 0, 3 * YEAR);
    let capacity = peak + 4096;
    bencher.bench_local(|| {
        let fits = c.fits(&key, 0, 3 * YEAR, 4096, capacity);
        let most = c.max_count(&key, 0, 3 * YEAR, capacity);
        // Half the peak for a year: the search walks breakpoints until a year fits.
        let from = c.earliest_start(&key, 0, YEAR, peak / 2, capacity);
        (fits, most, from)
    });
}

/// Signing one more contract into the same calendar (and taking it out again).
#[divan::bench(max_time = 2)]
fn calendar_commit_into_10k_contracts(bencher: Bencher) {
    let (mut c, key) = calendar_10k();
    bencher.bench_local(|| {
        let _ = c.commit(&key, contract_id(u64::MAX), YEAR / 2, 2 * YEAR, 512);
        c.remove(contract_id(u64::MAX))
    });
}
