//! Latency percentiles and throughput of the allocator at fleet scale.
//!
//! divan (`cargo bench`) reports means and medians; the targets are about tails, so this
//! measures every decision on its own and prints p50/p99/p99.9, for best-fit and first-fit:
//!
//! ```text
//! cargo run --release -p neocloud-allocator --example scale [-- million] [unshared]
//! ```

use std::time::{Duration, Instant};

/// The allocator `neocloud serve` runs with: decisions allocate (placements, index entries),
/// so their speed depends on it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use neocloud_allocator::synthetic::{Grid, Rng, allocator, instance_id, tenant_id};
use neocloud_allocator::{Allocator, FleetPolicy, GangLevel, PlacementPolicy, Request, Shape};
use neocloud_types::{Class, InstanceId};

fn sub_node(id: u64, rng: &mut Rng) -> Request {
    let k = [1, 1, 2, 4, 8][usize::try_from(rng.below(5)).unwrap_or(0)];
    Request {
        id: instance_id(id),
        tenant: tenant_id(rng.below(50)),
        class: Class::OnDemand,
        gpu_model: "H100-SXM-80GB".to_string(),
        shape: Shape::Gpus { gpus: k },
        site: None,
        pool: None,
        cpu_milli: None,
        memory_mib: None,
    }
}

/// Places random sub-node shapes (releasing random ones now and then) until `share` of
/// the GPUs are held. Returns the live instance ids and the next id.
fn warm(a: &mut Allocator, share: f64, rng: &mut Rng) -> (Vec<InstanceId>, u64) {
    let total = a.free_gpus(None, "H100-SXM-80GB") as f64;
    let mut live = Vec::new();
    let mut next = 1u64;
    while (a.free_gpus(None, "H100-SXM-80GB") as f64) > total * (1.0 - share) {
        if a.place(&sub_node(next, rng)).is_ok() {
            live.push(instance_id(next));
        }
        next += 1;
        if rng.chance(0.2) && !live.is_empty() {
            let i = usize::try_from(rng.below(live.len() as u64)).unwrap_or(0);
            a.release(live.swap_remove(i));
        }
    }
    (live, next)
}

fn percentiles(name: &str, mut d: Vec<Duration>) {
    d.sort_unstable();
    let at = |per_mille: usize| d[(d.len() - 1) * per_mille / 1000];
    println!(
        "  {name:<28} n={:<7} p50 {:>7.2?}  p99 {:>7.2?}  p99.9 {:>7.2?}  max {:>7.2?}",
        d.len(),
        at(500),
        at(990),
        at(999),
        d[d.len() - 1]
    );
}

fn run(grid: &Grid, placement: PlacementPolicy) {
    println!(
        "{placement:?}, {} GPUs",
        grid.node_count() * u64::from(grid.gpus)
    );
    let t = Instant::now();
    let mut a = allocator(std::slice::from_ref(grid), FleetPolicy::LabFirst, placement);
    println!("  build                        {:.2?}", t.elapsed());
    let mut rng = Rng::new(42);
    let t = Instant::now();
    let (mut live, mut next) = warm(&mut a, 0.5, &mut rng);
    println!(
        "  warm to 50%                  {:.2?} ({} allocations)",
        t.elapsed(),
        live.len()
    );

    // Steady state: each step launches one random shape and terminates one random instance.
    // Requests are made up front: formatting ids is not the allocator's time.
    let steps = 200_000;
    let requests: Vec<Request> = (0..steps as u64)
        .map(|i| sub_node(next + i, &mut rng))
        .collect();
    next += steps as u64;
    let mut place = Vec::with_capacity(steps);
    let mut release = Vec::with_capacity(steps);
    let mut refused = 0u32;
    let started = Instant::now();
    for r in &requests {
        let t = Instant::now();
        let ok = a.place(r).is_ok();
        place.push(t.elapsed());
        if ok {
            live.push(r.id);
        } else {
            refused += 1;
        }
        let i = usize::try_from(rng.below(live.len() as u64)).unwrap_or(0);
        let id = live.swap_remove(i);
        let t = Instant::now();
        a.release(id);
        release.push(t.elapsed());
    }
    let wall = started.elapsed();
    // The same stream again without per-call timers: the throughput figure.
    let stream: Vec<Request> = (0..steps as u64)
        .map(|i| sub_node(next + i, &mut rng))
        .collect();
    next += steps as u64;
    let started = Instant::now();
    for r in &stream {
        if a.place(r).is_ok() {
            live.push(r.id);
        }
        let i = usize::try_from(rng.below(live.len() as u64)).unwrap_or(0);
        a.release(live.swap_remove(i));
    }
    let untimed = started.elapsed();
    percentiles("place (decide + record)", place);
    percentiles("release", release);
    println!(
        "  launch+terminate stream      {:.0} decisions/s untimed, {:.0} with timers ({} refused)",
        (2 * steps) as f64 / untimed.as_secs_f64(),
        (2 * steps) as f64 / wall.as_secs_f64(),
        refused
    );
    let mut decide = Vec::with_capacity(steps);
    for _ in 0..steps {
        let r = sub_node(next, &mut rng);
        let t = Instant::now();
        let _ = a.try_place(&r);
        decide.push(t.elapsed());
    }
    percentiles("try_place (decide only)", decide);

    for (count, level) in [(64, GangLevel::Pod), (1024, GangLevel::Pod)] {
        let mut times = Vec::new();
        for _ in 0..20 {
            let r = Request {
                id: instance_id(next),
                shape: Shape::Nodes { count, level },
                ..sub_node(next, &mut rng)
            };
            next += 1;
            let t = Instant::now();
            let got = a.place(&r);
            times.push(t.elapsed());
            match got {
                Ok(_) => {
                    a.release(r.id);
                }
                Err(e) => {
                    println!("  gang {count}@{level}: {e}");
                    break;
                }
            }
        }
        percentiles(&format!("gang {count} nodes @{level}"), times);
    }

    // Preemption: fill what is left with spot work, then ask for on-demand capacity.
    let mut full = a.clone();
    let mut misses = 0;
    while misses < 1000 {
        let r = Request {
            class: Class::Spot,
            ..sub_node(next, &mut rng)
        };
        next += 1;
        if full.place(&r).is_ok() {
            misses = 0;
        } else {
            misses += 1;
        }
    }
    for shape in [
        Shape::Gpus { gpus: 1 },
        Shape::Gpus { gpus: 8 },
        Shape::Nodes {
            count: 64,
            level: GangLevel::Pod,
        },
    ] {
        let r = Request {
            shape,
            ..sub_node(next, &mut rng)
        };
        next += 1;
        let t = Instant::now();
        let plan = full.preemption_plan(&r);
        let took = t.elapsed();
        let gpus: u64 = plan
            .iter()
            .flatten()
            .filter_map(|v| full.allocation(*v))
            .map(|a| a.gpu_count())
            .sum();
        println!(
            "  preemption plan {:<12} {took:>9.2?} ({} victims, {gpus} GPUs; {} spot allocations, {} free GPUs)",
            match shape {
                Shape::Gpus { gpus } => format!("{gpus} GPU"),
                Shape::Nodes { count, .. } => format!("{count} nodes"),
                other => format!("{other:?}"),
            },
            plan.as_ref().map_or(0, Vec::len),
            full.allocations()
                .filter(|a| a.class == Class::Spot)
                .count(),
            full.free_gpus(None, "H100-SXM-80GB"),
        );
    }

    let snap = a.snapshot();
    let t = Instant::now();
    let b = Allocator::from_snapshot(&snap).expect("rebuild");
    println!(
        "  rebuild from snapshot        {:.2?} ({} nodes, {} allocations)",
        t.elapsed(),
        snap.nodes.len(),
        snap.allocations.len()
    );
    assert_eq!(b.fingerprint(), a.fingerprint());
    let f = a.fragmentation(grid_site(), "H100-SXM-80GB");
    println!(
        "  fragmentation: {} free, {:.1}% stranded, largest pod gang {}",
        f.free_gpus,
        100.0 * f.stranded_share,
        f.largest_gang_by_level[2].1
    );
}

fn grid_site() -> neocloud_types::SiteId {
    neocloud_allocator::synthetic::site_id(1)
}

fn main() {
    let million = std::env::args().any(|a| a == "million");
    let mut grid = if million {
        Grid::million()
    } else {
        Grid::memphis_1()
    };
    // `unshared`: one tenant per node (serve's default), 50 tenants.
    grid.shareable = !std::env::args().any(|a| a == "unshared");
    for placement in [PlacementPolicy::BestFit, PlacementPolicy::FirstFit] {
        run(&grid, placement);
    }
}
