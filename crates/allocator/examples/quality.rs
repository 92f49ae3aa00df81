//! Placement quality: how often a policy refuses work that the fleet had room for.
//!
//! A seeded stream of instances (1, 2, 4, 8 GPUs and small gangs; exponential lifetimes)
//! arrives at 90 % offered load on a mid-size fleet. Nothing queues: a request that does
//! not fit is refused. A refusal while the fleet had at least as many free GPUs as the
//! request asked for is a fragmentation refusal — the placement policy's fault, not the
//! fleet's size. Every policy sees the same stream.
//!
//! ```text
//! cargo run --release -p neocloud-allocator --example quality [-- SEED]
//! ```

use std::collections::BTreeMap;

use neocloud_allocator::synthetic::{Grid, Rng, allocator, instance_id, tenant_id};
use neocloud_allocator::{FleetPolicy, GangLevel, PlacementPolicy, Request, Shape};
use neocloud_types::{Class, InstanceId};

const MODEL: &str = "H100-SXM-80GB";

/// One arrival: when, what, for how long.
struct Job {
    at: f64,
    request: Request,
    gpus: u64,
    lifetime: f64,
}

/// The shape mix: (weight, shape).
fn shapes() -> Vec<(u32, Shape)> {
    let gang = |count, level| Shape::Nodes { count, level };
    vec![
        (30, Shape::Gpus { gpus: 1 }),
        (20, Shape::Gpus { gpus: 2 }),
        (15, Shape::Gpus { gpus: 4 }),
        (20, Shape::Gpus { gpus: 8 }),
        (8, gang(2, GangLevel::LeafGroup)),
        (4, gang(4, GangLevel::LeafGroup)),
        (2, gang(8, GangLevel::LeafGroup)),
        (1, gang(16, GangLevel::Pod)),
    ]
}

fn gpus_of(shape: Shape) -> u64 {
    match shape {
        Shape::Gpus { gpus } => u64::from(gpus),
        Shape::Nodes { count, .. } => u64::from(count) * 8,
        Shape::Share { .. } | Shape::Mig { .. } | Shape::Cpu => 0,
    }
}

fn workload(seed: u64, jobs: usize, capacity: u64, load: f64, tenants: u64) -> Vec<Job> {
    let mix = shapes();
    let total: u32 = mix.iter().map(|(w, _)| w).sum();
    let mean_gpus: f64 = mix
        .iter()
        .map(|(w, s)| f64::from(*w) * gpus_of(*s) as f64)
        .sum::<f64>()
        / f64::from(total);
    let lifetime = 1.0;
    // Offered load = arrival rate × mean GPUs × mean lifetime / capacity.
    let rate = load * capacity as f64 / (mean_gpus * lifetime);
    let mut rng = Rng::new(seed);
    let mut t = 0.0;
    (0..jobs)
        .map(|i| {
            t += rng.exp(1.0 / rate);
            let mut pick = u32::try_from(rng.below(u64::from(total))).unwrap_or(0);
            let shape = mix
                .iter()
                .find(|(w, _)| {
                    if pick < *w {
                        true
                    } else {
                        pick -= w;
                        false
                    }
                })
                .map_or(Shape::Gpus { gpus: 1 }, |(_, s)| *s);
            let id = i as u64 + 1;
            Job {
                at: t,
                request: Request {
                    id: instance_id(id),
                    tenant: tenant_id(rng.below(tenants)),
                    class: Class::OnDemand,
                    gpu_model: MODEL.to_string(),
                    shape,
                    site: None,
                    pool: None,
                    cpu_milli: None,
                    memory_mib: None,
                },
                gpus: gpus_of(shape),
                lifetime: rng.exp(lifetime),
            }
        })
        .collect()
}

#[derive(Default)]
struct Outcome {
    requests: u64,
    refused: u64,
    refused_with_room: u64,
    refused_gpus_with_room: u64,
    requested_gpus: u64,
    by_shape: BTreeMap<String, (u64, u64)>,
    gpu_hours: f64,
    horizon: f64,
}

fn shape_name(s: Shape) -> String {
    match s {
        Shape::Gpus { gpus } => format!("{gpus} GPU"),
        Shape::Nodes { count, level } => format!("{count} nodes@{level}"),
        other => format!("{other:?}"),
    }
}

/// Model time in integer nanoseconds, so that departures order exactly.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "model times are positive and far below 2^64 ns"
)]
fn nanos(t: f64) -> u64 {
    (t * 1e9) as u64
}

fn simulate(grid: &Grid, placement: PlacementPolicy, jobs: &[Job], warmup: usize) -> Outcome {
    let mut a = allocator(std::slice::from_ref(grid), FleetPolicy::LabFirst, placement);
    // Departures by (time as integer nanoseconds of the model clock, id): ordered, exact.
    let mut ends: BTreeMap<(u64, InstanceId), ()> = BTreeMap::new();
    let key = nanos;
    let mut out = Outcome::default();
    let mut held = 0u64;
    let mut last = 0.0;
    for (i, job) in jobs.iter().enumerate() {
        while let Some((&(end, id), ())) = ends.first_key_value() {
            if end > key(job.at) {
                break;
            }
            ends.pop_first();
            if let Some(gone) = a.release(id) {
                let t = end as f64 / 1e9;
                if i >= warmup {
                    out.gpu_hours += held as f64 * (t - last);
                }
                last = t;
                held -= gone.gpu_count();
            }
        }
        if i >= warmup {
            out.gpu_hours += held as f64 * (job.at - last);
        }
        last = job.at;
        let free = a.free_gpus(None, MODEL);
        let placed = a.place(&job.request);
        if let Ok(got) = &placed {
            held += got.gpu_count();
            ends.insert((key(job.at + job.lifetime), got.id), ());
        }
        if i < warmup {
            continue;
        }
        out.requests += 1;
        out.requested_gpus += job.gpus;
        let entry = out
            .by_shape
            .entry(shape_name(job.request.shape))
            .or_default();
        entry.0 += 1;
        if placed.is_err() {
            out.refused += 1;
            if free >= job.gpus {
                out.refused_with_room += 1;
                out.refused_gpus_with_room += job.gpus;
                entry.1 += 1;
            }
        }
    }
    out.horizon = jobs.last().map_or(0.0, |j| j.at) - jobs.get(warmup).map_or(0.0, |j| j.at);
    out
}

fn report(name: &str, grid: &Grid, jobs: &[Job], warmup: usize) {
    let capacity = grid.node_count() * u64::from(grid.gpus);
    println!(
        "\n{name}: {} nodes × {} GPUs ({} pods × {} leaf groups × {}), {} requests after {} warm-up",
        grid.node_count(),
        grid.gpus,
        grid.pods,
        grid.leaves_per_pod,
        grid.nodes_per_leaf,
        jobs.len() - warmup,
        warmup
    );
    let policies = [
        PlacementPolicy::BestFit,
        PlacementPolicy::FirstFit,
        PlacementPolicy::WorstFit,
    ];
    let outcomes: Vec<Outcome> = policies
        .iter()
        .map(|&p| simulate(grid, p, jobs, warmup))
        .collect();
    println!(
        "  {:<10} {:>9} {:>10} {:>22} {:>12}",
        "policy", "refused", "with room", "with room (GPU share)", "utilization"
    );
    for (p, o) in policies.iter().zip(&outcomes) {
        println!(
            "  {:<10} {:>8.2}% {:>9.2}% {:>21.2}% {:>11.1}%",
            format!("{p:?}"),
            100.0 * o.refused as f64 / o.requests as f64,
            100.0 * o.refused_with_room as f64 / o.requests as f64,
            100.0 * o.refused_gpus_with_room as f64 / o.requested_gpus as f64,
            100.0 * o.gpu_hours / (capacity as f64 * o.horizon),
        );
    }
    println!("  refused with room, by shape (share of that shape's requests):");
    let names: Vec<String> = outcomes[0].by_shape.keys().cloned().collect();
    for n in names {
        let cells: Vec<String> = outcomes
            .iter()
            .map(|o| {
                let (all, bad) = o.by_shape.get(&n).copied().unwrap_or((0, 0));
                format!("{:>7.2}%", 100.0 * bad as f64 / all.max(1) as f64)
            })
            .collect();
        println!("    {n:<18} {}", cells.join("  "));
    }
}

fn main() {
    let seed = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2026);
    let shared = Grid {
        pods: 4,
        leaves_per_pod: 8,
        nodes_per_leaf: 16,
        ..Grid::memphis_1()
    };
    let capacity = shared.node_count() * u64::from(shared.gpus);
    let jobs = workload(seed, 220_000, capacity, 0.9, 40);
    report("shared nodes", &shared, &jobs, 20_000);
    let unshared = Grid {
        shareable: false,
        ..shared
    };
    report(
        "unshared nodes (one tenant per node)",
        &unshared,
        &jobs,
        20_000,
    );
}
