//! Slices: shares, MIG instances, CPU-only work, CPU and memory bounds; rules, then property
//! tests that extend invariants 1 and 4 to slices.

use std::collections::{BTreeMap, BTreeSet};

use neocloud_types::{Class, GangLevel, MigFamily, MigProfile, NodeId, Shape, TenantId};
use proptest::prelude::*;

use super::{H100, site};
use crate::synthetic::{instance_id, node_id, tenant_id};
use crate::{
    Allocation, Allocator, FleetPolicy, NodeSpec, PlacementPolicy, Refusal, Request, Sharing,
};

/// An 8-GPU H100 node with MIG, 96 cores and 1 TiB, taking slices and CPU-only work.
fn node(a: &mut Allocator, n: u64, shareable: bool, tenants_per_gpu: bool) -> NodeId {
    let id = node_id(n);
    let s = site(a, 1);
    a.add_node(NodeSpec {
        id,
        site: s,
        gpu_model: H100.to_string(),
        gpus: 8,
        blocks: Vec::new(),
        idle_watts: 1000,
        peak_watts: 9000,
        shareable,
        cpu_milli: 96_000,
        memory_mib: 1 << 20,
        mig: Some(MigFamily::Gpu80gb),
        sharing: Sharing {
            slices: true,
            tenants_per_gpu,
            cpu_only: true,
        },
    })
    .unwrap();
    id
}

fn req(id: u64, tenant: u64, shape: Shape) -> Request {
    Request {
        id: instance_id(id),
        tenant: tenant_id(tenant),
        class: Class::OnDemand,
        gpu_model: H100.to_string(),
        shape,
        site: None,
        pool: None,
        cpu_milli: None,
        memory_mib: None,
    }
}

fn share(milli: u32) -> Shape {
    Shape::Share { milli }
}

fn mig(p: MigProfile) -> Shape {
    Shape::Mig { profile: p }
}

fn bad(r: Result<Allocation, Refusal>) -> String {
    match r {
        Err(Refusal::BadShape { reason }) => reason,
        other => panic!("expected a bad-shape refusal, got {other:?}"),
    }
}

#[test]
fn bad_slices_are_refused_and_change_nothing() {
    for placement in [PlacementPolicy::BestFit, PlacementPolicy::Fragmentation] {
        let mut a = Allocator::new(FleetPolicy::LabFirst, placement);
        node(&mut a, 1, false, false);
        let before = a.fingerprint();
        assert!(bad(a.place(&req(1, 1, share(0)))).contains("1 to 1000"));
        assert!(bad(a.place(&req(2, 1, share(1001)))).contains("1001"));
        // A profile of another family (A100 40GB's), and one of none.
        let r = bad(a.place(&req(3, 1, mig(MigProfile::P1g5gb))));
        assert!(r.contains("1g.5gb") && r.contains("1g.10gb"), "{r}");
        let r = bad(a.place(&req(4, 1, Shape::Cpu)));
        assert!(r.contains("cpu_milli"), "{r}");
        assert_eq!(a.fingerprint(), before);
        a.check_invariants().unwrap();
    }
}

#[test]
fn mig_on_a_model_without_mig_and_cpu_only_on_a_gpu_only_node_are_refused() {
    let mut a = Allocator::new(FleetPolicy::LabFirst, PlacementPolicy::BestFit);
    let s = site(&mut a, 1);
    super::h100(&mut a, s, 1, 1, 1, true);
    let r = bad(a.place(&req(1, 1, mig(MigProfile::P1g10gb))));
    assert!(r.contains("does not support MIG"), "{r}");
    let cpu = Request {
        cpu_milli: Some(4000),
        ..req(2, 1, Shape::Cpu)
    };
    match a.place(&cpu) {
        Err(Refusal::NoCapacity { reason, .. }) => {
            assert!(reason.contains("CPU-only"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let s = a.place(&req(3, 1, share(500)));
    assert!(
        matches!(&s, Err(Refusal::NoCapacity { reason, .. }) if reason.contains("fractional")),
        "{s:?}"
    );
    assert_eq!(a.allocation_count(), 0);
}

#[test]
fn mig_follows_the_placement_rules() {
    let mut a = Allocator::new(FleetPolicy::LabFirst, PlacementPolicy::BestFit);
    node(&mut a, 1, false, false);
    // Seven 1g.10gb fill GPU 0 at slices 0..6; the eighth opens another GPU.
    let mut gpus = Vec::new();
    for i in 0..8 {
        let got = a.place(&req(i, 1, mig(MigProfile::P1g10gb))).unwrap();
        gpus.push((got.gpus[0].1[0], got.mig_start.unwrap()));
    }
    let first: Vec<_> = gpus.iter().filter(|(g, _)| *g == gpus[0].0).collect();
    assert_eq!(first.len(), 7);
    assert_eq!(
        first.iter().map(|(_, s)| *s).collect::<BTreeSet<_>>(),
        (0..7).collect()
    );
    // A 4g.40gb only starts at 0; after a 3g.40gb at 0 the GPU takes a 3g at 4, not a 4g.
    let mut b = Allocator::new(FleetPolicy::LabFirst, PlacementPolicy::BestFit);
    node(&mut b, 1, false, false);
    let g3 = b.place(&req(1, 1, mig(MigProfile::P3g40gb))).unwrap();
    assert_eq!(g3.mig_start, Some(0));
    let g4 = b.place(&req(2, 1, mig(MigProfile::P4g40gb))).unwrap();
    assert_ne!(g4.gpus[0].1, g3.gpus[0].1, "a 4g cannot start at 4");
    let g3b = b.place(&req(3, 1, mig(MigProfile::P3g40gb))).unwrap();
    assert_eq!(
        (g3b.gpus[0].1.clone(), g3b.mig_start),
        (g3.gpus[0].1.clone(), Some(4))
    );
    // A whole-GPU shape never lands on a GPU that holds MIG instances or shares.
    let whole = b.place(&req(4, 1, Shape::Gpus { gpus: 1 })).unwrap();
    assert!(![&g3, &g4].iter().any(|x| x.gpus[0].1 == whole.gpus[0].1));
    b.check_invariants().unwrap();
    // Releasing the 3g at 0 frees slices 0-3 for a 4g.
    b.release(instance_id(1)).unwrap();
    let g4b = b.place(&req(5, 1, mig(MigProfile::P4g40gb))).unwrap();
    assert_eq!(
        (g4b.gpus[0].1.clone(), g4b.mig_start),
        (g3.gpus[0].1.clone(), Some(0))
    );
    b.check_invariants().unwrap();
}

#[test]
fn shares_pack_one_gpu_and_tenants_do_not_mix_by_default() {
    let mut a = Allocator::new(FleetPolicy::LabFirst, PlacementPolicy::BestFit);
    node(&mut a, 1, true, false);
    let x = a.place(&req(1, 1, share(600))).unwrap();
    let y = a.place(&req(2, 1, share(400))).unwrap();
    assert_eq!(x.gpus, y.gpus, "the same tenant's shares fill one GPU");
    let z = a.place(&req(3, 1, share(1))).unwrap();
    assert_ne!(z.gpus, x.gpus, "a full GPU takes no more share");
    let other = a.place(&req(4, 2, share(100))).unwrap();
    assert_ne!(other.gpus, z.gpus, "another tenant gets its own GPU");
    assert_eq!(x.gpu_milli(), 600);
    a.check_invariants().unwrap();
    // Where the operator allows it, two tenants share one GPU.
    let mut b = Allocator::new(FleetPolicy::LabFirst, PlacementPolicy::BestFit);
    node(&mut b, 1, true, true);
    let p = b.place(&req(1, 1, share(500))).unwrap();
    let q = b.place(&req(2, 2, share(500))).unwrap();
    assert_eq!(p.gpus, q.gpus);
    b.check_invariants().unwrap();
}

#[test]
fn cpu_and_memory_bound_what_fits() {
    let mut a = Allocator::new(FleetPolicy::LabFirst, PlacementPolicy::BestFit);
    node(&mut a, 1, true, false);
    // 1 GPU takes 12 cores by default; 90 cores asked leave 6 for the rest.
    let big = Request {
        cpu_milli: Some(90_000),
        ..req(1, 1, Shape::Gpus { gpus: 1 })
    };
    assert_eq!(a.place(&big).unwrap().cpu_milli, 90_000);
    let one = a.place(&req(2, 1, Shape::Gpus { gpus: 1 }));
    assert!(matches!(one, Err(Refusal::NoCapacity { .. })), "{one:?}");
    let small = Request {
        cpu_milli: Some(6_000),
        ..req(3, 1, Shape::Gpus { gpus: 1 })
    };
    a.place(&small).unwrap();
    let cpu = Request {
        cpu_milli: Some(1),
        ..req(4, 1, Shape::Cpu)
    };
    assert!(a.place(&cpu).is_err(), "no CPU left");
    // A gang takes the whole node, CPU included: not a node with CPU-only work on it.
    a.release(instance_id(1)).unwrap();
    a.release(instance_id(3)).unwrap();
    let c = Request {
        cpu_milli: Some(1000),
        memory_mib: Some(10),
        ..req(5, 1, Shape::Cpu)
    };
    let placed = a.place(&c).unwrap();
    assert!(placed.gpus[0].1.is_empty());
    let g = Request {
        shape: Shape::Nodes {
            count: 1,
            level: GangLevel::Site,
        },
        ..req(6, 1, Shape::Cpu)
    };
    assert!(a.place(&g).is_err());
    a.release(instance_id(5)).unwrap();
    a.place(&g).unwrap();
    a.check_invariants().unwrap();
}

#[test]
fn slices_survive_a_rebuild() {
    let mut a = Allocator::new(FleetPolicy::LabFirst, PlacementPolicy::Fragmentation);
    node(&mut a, 1, true, false);
    node(&mut a, 2, true, true);
    a.place(&req(1, 1, share(250))).unwrap();
    a.place(&req(2, 1, mig(MigProfile::P2g20gb))).unwrap();
    a.place(&req(3, 2, mig(MigProfile::P1g10gb))).unwrap();
    a.place(&Request {
        cpu_milli: Some(3000),
        ..req(4, 3, Shape::Cpu)
    })
    .unwrap();
    let b = Allocator::from_snapshot(&a.snapshot()).unwrap();
    b.check_invariants().unwrap();
    assert_eq!(a.fingerprint(), b.fingerprint());
    // Restoring a MIG instance over another one's slices is refused.
    let mut c = b.clone();
    let mut clash = a.allocation(instance_id(2)).unwrap().clone();
    clash.id = instance_id(99);
    let e = c.restore(clash).unwrap_err();
    assert!(e.contains("overlap"), "{e}");
    let mut over = a.allocation(instance_id(1)).unwrap().clone();
    over.id = instance_id(98);
    over.shape = share(800);
    let e = c.restore(over).unwrap_err();
    assert!(e.contains("free for shares"), "{e}");
}

const PROFILES: [MigProfile; 6] = [
    MigProfile::P1g10gb,
    MigProfile::P1g20gb,
    MigProfile::P2g20gb,
    MigProfile::P3g40gb,
    MigProfile::P4g40gb,
    MigProfile::P7g80gb,
];

#[derive(Clone, Debug)]
enum Op {
    Place {
        tenant: u8,
        shape: u8,
        arg: u16,
        cpu: Option<u32>,
    },
    Release(usize),
    Healthy(u8, u8, bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u8..3, 0u8..6, 0u16..1100, proptest::option::of(0u32..40_000)).prop_map(
            |(tenant, shape, arg, cpu)| Op::Place { tenant, shape, arg, cpu }
        ),
        3 => any::<usize>().prop_map(Op::Release),
        1 => (0u8..4, 0u8..8, any::<bool>()).prop_map(|(n, g, y)| Op::Healthy(n, g, y)),
    ]
}

/// Invariants 1 and 4 for slices, from the allocations alone: a GPU's shares sum to at
/// most 1000, MIG instances of one GPU never overlap and sit where their profile may
/// start, shares and MIG and whole use never share a GPU, tenants share a GPU only where
/// the node allows it, and no node gives more CPU or memory than it has.
/// What one GPU holds: share thousandths, MIG slices, whether held whole, tenants.
type GpuUse = (u32, u8, bool, BTreeSet<TenantId>);

fn check_from_allocations(a: &Allocator, open: &BTreeMap<NodeId, bool>) {
    let mut per_gpu: BTreeMap<(NodeId, u32), GpuUse> = BTreeMap::new();
    let mut cpu: BTreeMap<NodeId, u64> = BTreeMap::new();
    for al in a.allocations() {
        for (n, idx) in &al.gpus {
            *cpu.entry(*n).or_default() += al.cpu_milli;
            for &g in idx {
                let e = per_gpu.entry((*n, g)).or_default();
                match al.shape {
                    Shape::Share { milli } => e.0 += milli,
                    Shape::Mig { profile } => {
                        let geo = MigFamily::Gpu80gb.geometry(profile).unwrap();
                        let start = al.mig_start.unwrap();
                        assert!(geo.starts.contains(&start));
                        let m = crate::slices::mig_mask(start, geo.slices);
                        assert_eq!(e.1 & m, 0, "MIG slices overlap on {n} GPU {g}");
                        e.1 |= m;
                    }
                    _ => {
                        assert!(!e.2 && e.0 == 0 && e.1 == 0, "GPU {g} of {n} held twice");
                        e.2 = true;
                    }
                }
                e.3.insert(al.tenant);
            }
        }
    }
    for ((n, g), (milli, mig, whole, tenants)) in per_gpu {
        assert!(milli <= 1000, "{n} GPU {g}: shares sum to {milli}");
        assert!(
            [milli > 0, mig != 0, whole].iter().filter(|x| **x).count() <= 1,
            "{n} GPU {g} mixes shares, MIG and whole use"
        );
        assert!(
            tenants.len() <= 1 || open[&n],
            "{n} GPU {g} is shared by tenants {tenants:?} against policy"
        );
    }
    for (n, c) in cpu {
        assert!(c <= 96_000, "{n}: {c} CPU thousandths given of 96000");
    }
}

fn run(placement: PlacementPolicy, ops: &[Op]) {
    let mut a = Allocator::new(FleetPolicy::LabFirst, placement);
    let mut open = BTreeMap::new();
    for n in 0..4u64 {
        let (shareable, per_gpu) = (n != 0, n == 3);
        open.insert(node(&mut a, n + 1, shareable, per_gpu), per_gpu);
    }
    let mut live: Vec<u64> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match *op {
            Op::Place {
                tenant,
                shape,
                arg,
                cpu,
            } => {
                let id = i as u64 + 1;
                let shape = match shape {
                    0 => share(u32::from(arg)),
                    1 => mig(PROFILES[usize::from(arg) % PROFILES.len()]),
                    2 => Shape::Cpu,
                    3 => Shape::Gpus {
                        gpus: [1, 2, 4][usize::from(arg) % 3],
                    },
                    4 => Shape::Nodes {
                        count: 1,
                        level: GangLevel::Site,
                    },
                    _ => share(1 + u32::from(arg) % 1000),
                };
                let r = Request {
                    cpu_milli: cpu.map(u64::from),
                    ..req(id, u64::from(tenant), shape)
                };
                let before = a.fingerprint();
                match a.place(&r) {
                    Ok(got) => {
                        assert_eq!(got.shape, shape);
                        live.push(id);
                    }
                    Err(_) => assert_eq!(a.fingerprint(), before, "a refusal changed state"),
                }
            }
            Op::Release(k) if !live.is_empty() => {
                let id = live.swap_remove(k % live.len());
                a.release(instance_id(id)).unwrap();
            }
            Op::Release(_) => {}
            Op::Healthy(n, g, y) => a.set_gpu_healthy(node_id(u64::from(n) + 1), u32::from(g), y),
        }
        a.check_invariants().unwrap();
        check_from_allocations(&a, &open);
    }
    let b = Allocator::from_snapshot(&a.snapshot()).unwrap();
    assert_eq!(a.fingerprint(), b.fingerprint());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn slices_keep_invariants_1_and_4(
        placement in proptest::sample::select(vec![
            PlacementPolicy::BestFit,
            PlacementPolicy::FirstFit,
            PlacementPolicy::WorstFit,
            PlacementPolicy::Fragmentation,
        ]),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        run(placement, &ops);
    }
}

#[test]
fn whole_gpu_shapes_find_an_aligned_group_among_nodes_with_as_many_free_gpus() {
    // Free GPUs 1-2 on the first node hold no aligned pair; 0-1 on the second do. Both
    // have two free GPUs: the policy must not take them for the same.
    for placement in [
        PlacementPolicy::Fragmentation,
        PlacementPolicy::BestFit,
        PlacementPolicy::FirstFit,
    ] {
        let mut a = Allocator::new(FleetPolicy::LabFirst, placement);
        let n1 = node(&mut a, 1, true, false);
        let n2 = node(&mut a, 2, true, false);
        a.set_model_topology(H100, neocloud_types::BoardTopology::ALIGNED)
            .unwrap();
        let mut id = 100;
        for (n, taken) in [(n1, [0, 3, 4, 5, 6, 7]), (n2, [2, 3, 4, 5, 6, 7])] {
            for g in taken {
                id += 1;
                let mut al = a
                    .try_place(&req(id, 1, Shape::Gpus { gpus: 1 }))
                    .expect("room for one GPU");
                al.gpus = vec![(n, vec![g].into())];
                a.restore(al).unwrap();
            }
        }
        let got = a.place(&req(1, 2, Shape::Gpus { gpus: 2 })).unwrap();
        assert_eq!(got.gpus, vec![(n2, vec![0, 1].into())], "{placement:?}");
        a.check_invariants().unwrap();
    }
}

#[test]
fn running_work_survives_a_node_that_lost_cpu_and_memory() {
    let mut a = Allocator::new(FleetPolicy::LabFirst, PlacementPolicy::Fragmentation);
    node(&mut a, 1, true, false);
    a.place(&req(1, 1, mig(MigProfile::P7g80gb))).unwrap();
    a.place(&Request {
        cpu_milli: Some(40_000),
        ..req(2, 1, Shape::Gpus { gpus: 2 })
    })
    .unwrap();
    let mut snap = a.snapshot();
    // A fleet edit: the node now has 8 cores and 64 GiB, less than what runs there.
    snap.nodes[0].cpu_milli = 8_000;
    snap.nodes[0].memory_mib = 64 << 10;
    let mut b = Allocator::from_snapshot(&snap).expect("running work is restored");
    b.check_invariants().unwrap();
    assert_eq!(b.allocation_count(), 2);
    // New work that needs CPU is refused until the over-commit is gone.
    let r = b.place(&req(3, 1, Shape::Gpus { gpus: 1 }));
    assert!(
        matches!(&r, Err(Refusal::NoCapacity { reason, .. }) if reason.contains("CPU")),
        "{r:?}"
    );
}

#[test]
fn a_preemption_plan_frees_the_cpu_its_request_needs_or_there_is_none() {
    let mut a = Allocator::new(FleetPolicy::LabFirst, PlacementPolicy::BestFit);
    node(&mut a, 1, true, false);
    let spot = |id, shape, cpu| Request {
        class: Class::Spot,
        cpu_milli: Some(cpu),
        ..req(id, 9, shape)
    };
    for i in 0..8 {
        a.place(&spot(i + 1, Shape::Gpus { gpus: 1 }, 1000))
            .unwrap();
    }
    a.place(&spot(20, Shape::Cpu, 80_000)).unwrap();
    // An on-demand GPU needs 12 cores; one spot GPU's release would free only 1.
    let want = req(30, 1, Shape::Gpus { gpus: 1 });
    match a.preemption_plan(&want) {
        None => {}
        Some(victims) => {
            let mut b = a.clone();
            for v in victims {
                b.release(v);
            }
            b.place(&want).expect("a plan makes room, CPU included");
        }
    }
}

#[test]
fn on_unshared_nodes_a_tenant_fills_its_node_before_opening_another() {
    // Without the rule, ours put the second share on a fresh node (it fragments no GPU),
    // which handed both nodes to one tenant and refused the other one.
    for placement in [PlacementPolicy::BestFit, PlacementPolicy::Fragmentation] {
        let mut a = Allocator::new(FleetPolicy::LabFirst, placement);
        let n1 = node(&mut a, 1, false, false);
        let n2 = node(&mut a, 2, false, false);
        let x = a.place(&req(1, 1, share(500))).unwrap();
        let y = a.place(&req(2, 1, share(250))).unwrap();
        assert_eq!((x.gpus[0].0, y.gpus[0].0), (n1, n1), "{placement:?}");
        let z = a.place(&req(3, 2, share(250))).unwrap();
        assert_eq!(z.gpus[0].0, n2, "{placement:?}");
        a.check_invariants().unwrap();
    }
}

#[test]
fn a_request_among_models_is_one_decision_and_one_request_learnt() {
    // Node 1 is an H100 node with one GPU left; node 2 an empty node of another model.
    let mut a = Allocator::new(FleetPolicy::LabFirst, PlacementPolicy::Fragmentation);
    let n1 = node(&mut a, 1, true, false);
    let s = site(&mut a, 1);
    a.add_node(NodeSpec {
        id: node_id(2),
        site: s,
        gpu_model: "L40S".into(),
        gpus: 8,
        blocks: Vec::new(),
        idle_watts: 1000,
        peak_watts: 9000,
        shareable: true,
        cpu_milli: 96_000,
        memory_mib: 1 << 20,
        mig: None,
        sharing: Sharing {
            slices: true,
            tenants_per_gpu: false,
            cpu_only: true,
        },
    })
    .unwrap();
    for g in 0..7 {
        let mut al = a
            .try_place(&req(100 + g, 1, Shape::Gpus { gpus: 1 }))
            .unwrap();
        al.gpus = vec![(n1, vec![u32::try_from(g).unwrap()].into())];
        a.restore(al).unwrap();
    }
    let models = vec!["L40S".to_string(), H100.to_string(), "nope".to_string()];
    assert!(a.workload.types.is_empty());
    let got = a
        .place_among(&req(1, 2, Shape::Gpus { gpus: 1 }), &models)
        .unwrap();
    // Compared across both models: the last GPU of the H100 node, not a fresh L40S node.
    assert_eq!(got.gpus, vec![(n1, vec![7].into())]);
    assert_eq!(got.gpu_model, H100);
    // One request learnt; it accepts every model the fleet has: any model.
    assert_eq!(a.workload.types.len(), 1);
    assert_eq!(a.workload.types[0].1, 1);
    assert_eq!(a.workload.types[0].0.models, u64::MAX);
    // None of the models known: refused, nothing learnt.
    let err = a
        .place_among(&req(2, 2, Shape::Gpus { gpus: 1 }), &["nope".to_string()])
        .unwrap_err();
    assert!(matches!(err, Refusal::UnknownModel { .. }), "{err}");
    a.check_invariants().unwrap();
}
