//! Decision latency with slices at fleet scale: `memphis-1` (220,000 H100 GPUs in 27,500
//! nodes, 224 cores and 2 TiB each, MIG-capable, taking shares, MIG and CPU-only work),
//! warmed with a mixed inference and training stream (shares of a GPU, MIG instances, 1 to
//! 8 whole GPUs, CPU-only instances; 50 tenants; random releases), then timed one decision
//! at a time for each placement policy. Prints p50, p99 and the slowest decision, and how
//! many distinct free states (groups) the fleet has.
//!
//! ```text
//! cargo run --release -p neocloud-allocator --example slices_scale [-- FILL_PERCENT]
//! ```

use std::time::Instant;

use neocloud_allocator::synthetic::{Grid, Rng, instance_id, tenant_id};
use neocloud_allocator::{
    Allocator, FleetPolicy, MigProfile, PlacementPolicy, Request, Shape, Sharing,
};
use neocloud_types::{Class, InstanceId, MigFamily};

const MODEL: &str = "H100-SXM-80GB";

fn fleet(placement: PlacementPolicy) -> Allocator {
    let (site, nodes) = Grid::memphis_1().build();
    let mut a = Allocator::new(FleetPolicy::LabFirst, placement);
    a.add_site(site);
    for mut n in nodes {
        n.cpu_milli = 224_000;
        n.memory_mib = 2 << 20;
        n.mig = Some(MigFamily::Gpu80gb);
        n.sharing = Sharing {
            slices: true,
            tenants_per_gpu: false,
            cpu_only: true,
        };
        a.add_node(n).expect("the synthetic fleet is valid");
    }
    a
}

fn request(id: InstanceId, rng: &mut Rng) -> Request {
    let shape = match rng.below(20) {
        0..=3 => Shape::Share {
            milli: [250, 500, 125, 750][usize::try_from(rng.below(4)).unwrap_or(0)],
        },
        4..=6 => Shape::Mig {
            profile: [
                MigProfile::P1g10gb,
                MigProfile::P2g20gb,
                MigProfile::P3g40gb,
            ][usize::try_from(rng.below(3)).unwrap_or(0)],
        },
        7 => Shape::Cpu,
        n => Shape::Gpus {
            gpus: [1, 1, 2, 4, 8, 8][usize::try_from(n % 6).unwrap_or(0)],
        },
    };
    Request {
        id,
        tenant: tenant_id(rng.below(50)),
        class: Class::OnDemand,
        gpu_model: MODEL.to_string(),
        shape,
        site: None,
        pool: None,
        cpu_milli: (shape == Shape::Cpu).then_some(8_000),
        memory_mib: (shape == Shape::Cpu).then_some(32 << 10),
    }
}

fn main() {
    let fill: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(70);
    println!("memphis-1, 220,000 GPUs, warmed to {fill} % of its GPUs with mixed slices");
    println!(
        "{:<14} {:>8} {:>10} {:>10} {:>10} {:>12}",
        "policy", "groups", "p50", "p99", "max", "place+release p99"
    );
    for placement in [
        PlacementPolicy::FirstFit,
        PlacementPolicy::BestFit,
        PlacementPolicy::Fragmentation,
    ] {
        if std::env::var("ONLY").is_ok_and(|o| !format!("{placement:?}").eq_ignore_ascii_case(&o)) {
            continue;
        }
        let mut a = fleet(placement);
        let total = a.free_gpus(None, MODEL);
        let mut rng = Rng::new(42);
        let mut live = Vec::new();
        let mut next = 1;
        let mut misses = 0;
        while a.free_gpus(None, MODEL) * 100 > total * (100 - fill) && misses < 10_000 {
            let id = instance_id(next);
            next += 1;
            match a.place(&request(id, &mut rng)) {
                Ok(_) => live.push(id),
                Err(_) => misses += 1,
            }
            if rng.chance(0.2) && !live.is_empty() {
                let i = usize::try_from(rng.below(live.len() as u64)).unwrap_or(0);
                a.release(live.swap_remove(i));
            }
        }
        let groups = a.group_count();
        let mut probe = Rng::new(7);
        let probes: u64 = std::env::var("PROBES")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(2000);
        let requests: Vec<Request> = (0..probes)
            .map(|i| request(instance_id(u64::MAX - i), &mut probe))
            .collect();
        let mut decide: Vec<f64> = Vec::with_capacity(requests.len());
        let mut slowest: Vec<(f64, String)> = Vec::new();
        for r in &requests {
            let t = Instant::now();
            let got = std::hint::black_box(a.try_place(r));
            let us = t.elapsed().as_secs_f64() * 1e6;
            decide.push(us);
            slowest.push((us, format!("{:?} ok={}", r.shape, got.is_ok())));
        }
        if std::env::var("SLOWEST").is_ok() {
            slowest.sort_by(|a, b| b.0.total_cmp(&a.0));
            for (us, what) in slowest.iter().take(12) {
                eprintln!("  {us:>8.1}µs {what}");
            }
        }
        let mut cycle: Vec<f64> = Vec::with_capacity(requests.len());
        for r in &requests {
            let t = Instant::now();
            if let Ok(got) = a.place(r) {
                a.release(got.id);
            }
            cycle.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let pct = |v: &mut Vec<f64>, p: usize| {
            v.sort_by(f64::total_cmp);
            // The rank of the p-quantile: (len − 1) × p, in integer per-mille.
            let i = (v.len() - 1) * p / 1000;
            v[i.min(v.len() - 1)]
        };
        let name = match placement {
            PlacementPolicy::FirstFit => "first-fit",
            PlacementPolicy::BestFit => "best-fit",
            PlacementPolicy::WorstFit => "worst-fit",
            PlacementPolicy::Fragmentation => "fragmentation",
        };
        println!(
            "{name:<14} {groups:>8} {:>8.1}µs {:>8.1}µs {:>8.1}µs {:>10.1}µs",
            pct(&mut decide, 500),
            pct(&mut decide, 990),
            pct(&mut decide, 1000),
            pct(&mut cycle, 990),
        );
        a.check_invariants().expect("the allocator's self-check");
    }
}
