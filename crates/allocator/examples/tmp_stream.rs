//! Temporary profiling harness.
use neocloud_allocator::synthetic::{Grid, Rng, allocator, instance_id, tenant_id};
use neocloud_allocator::{FleetPolicy, PlacementPolicy, Request, Shape};
use neocloud_types::Class;
fn main() {
    let shared = std::env::args().any(|a| a == "shared");
    let grid = Grid {
        shareable: shared,
        ..Grid::memphis_1()
    };
    let mut a = allocator(&[grid], FleetPolicy::LabFirst, PlacementPolicy::BestFit);
    let mut rng = Rng::new(1);
    let reqs: Vec<Request> = (0..100_000u64)
        .map(|i| Request {
            id: instance_id(i),
            tenant: tenant_id(rng.below(50)),
            class: Class::OnDemand,
            gpu_model: "H100-SXM-80GB".into(),
            shape: Shape::Gpus {
                gpus: [1, 1, 2, 4, 8][usize::try_from(rng.below(5)).unwrap()],
            },
            site: None,
            pool: None,
        })
        .collect();
    let mut live = Vec::new();
    for r in reqs.iter().take(40_000) {
        if a.place(r).is_ok() {
            live.push(r.id);
        }
    }
    let t = std::time::Instant::now();
    let mut n = 0u64;
    for round in 0..20 {
        for r in &reqs {
            let i = usize::try_from(rng.below(live.len() as u64)).unwrap();
            let id = live.swap_remove(i);
            a.release(id);
            let mut r = r.clone();
            r.id = id;
            let _ = round;
            if a.place(&r).is_ok() {
                live.push(id);
            }
            n += 2;
        }
    }
    println!(
        "{:.0} decisions/s, free {}",
        n as f64 / t.elapsed().as_secs_f64(),
        a.free_gpus(None, "H100-SXM-80GB")
    );
}
