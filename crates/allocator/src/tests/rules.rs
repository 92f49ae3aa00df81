//! One test per placement rule.

use neocloud_types::{BlockKind, BoardTopology, Class, FleetPolicy, GangLevel, Shape};

use super::*;
use crate::synthetic::{Grid, allocator, contract_id, instance_id};
use crate::{Allocation, Refusal};

fn on(a: &Allocation) -> (NodeId, Vec<u32>) {
    assert_eq!(a.gpus.len(), 1, "{a:?}");
    (a.gpus[0].0, a.gpus[0].1.to_vec())
}

#[test]
fn sub_node_shapes_take_aligned_groups_and_fill_one_node_first() {
    let (mut a, _) = two_leaves(PlacementPolicy::BestFit, 2);
    a.set_model_topology(H100, BoardTopology::ALIGNED).unwrap();
    let one = a.place(&gpus(1, 1, Class::OnDemand, 1)).unwrap();
    let node = on(&one).0;
    assert_eq!(on(&one).1, vec![0]);
    // The pair skips GPU 1 (1-2 is not aligned) and stays on the partly used node.
    assert_eq!(
        on(&a.place(&gpus(2, 1, Class::OnDemand, 2)).unwrap()),
        (node, vec![2, 3])
    );
    assert_eq!(
        on(&a.place(&gpus(3, 1, Class::OnDemand, 4)).unwrap()),
        (node, vec![4, 5, 6, 7])
    );
    assert_eq!(
        on(&a.place(&gpus(4, 1, Class::OnDemand, 1)).unwrap()),
        (node, vec![1])
    );
    // Full now: the next single opens another node.
    assert_ne!(
        on(&a.place(&gpus(5, 1, Class::OnDemand, 1)).unwrap()).0,
        node
    );
    a.check_invariants().unwrap();
}

#[test]
fn a_freed_pair_is_reused_by_the_next_pair() {
    let (mut a, _) = two_leaves(PlacementPolicy::BestFit, 1);
    for i in 0..4 {
        a.place(&gpus(i, 1, Class::OnDemand, 2)).unwrap();
    }
    let freed = a.release(instance_id(1)).unwrap();
    let again = a.place(&gpus(9, 1, Class::OnDemand, 2)).unwrap();
    assert_eq!(on(&again), on(&freed));
}

#[test]
fn bad_shapes_are_refused() {
    let (mut a, _) = two_leaves(PlacementPolicy::BestFit, 1);
    for k in [0, 3, 5, 16] {
        assert!(matches!(
            a.place(&gpus(1, 1, Class::OnDemand, k)),
            Err(Refusal::BadShape { .. })
        ));
    }
    assert!(matches!(
        a.place(&gang(1, 1, Class::OnDemand, 0, GangLevel::Pod)),
        Err(Refusal::BadShape { .. })
    ));
    let mut r = gpus(1, 1, Class::OnDemand, 1);
    r.gpu_model = "TPU".into();
    assert_eq!(
        a.place(&r),
        Err(Refusal::UnknownModel {
            model: "TPU".into()
        })
    );
    r = gpus(1, 1, Class::OnDemand, 1);
    r.site = Some(crate::synthetic::site_id(77));
    assert!(matches!(a.place(&r), Err(Refusal::UnknownSite { .. })));
    a.place(&gpus(1, 1, Class::OnDemand, 1)).unwrap();
    assert_eq!(
        a.place(&gpus(1, 1, Class::OnDemand, 1)),
        Err(Refusal::Duplicate { id: instance_id(1) })
    );
}

#[test]
fn four_gpu_trays_take_one_two_or_four() {
    let mut a = Allocator::new(FleetPolicy::LabFirst, PlacementPolicy::BestFit);
    let s = site(&mut a, 1);
    gb200(&mut a, s, 1, 500);
    gb200(&mut a, s, 2, 500);
    let mut r = gpus(1, 1, Class::OnDemand, 4);
    r.gpu_model = GB200.into();
    assert_eq!(on(&a.place(&r).unwrap()).1, vec![0, 1, 2, 3]);
    r.id = instance_id(2);
    r.shape = Shape::Gpus { gpus: 2 };
    assert_eq!(on(&a.place(&r).unwrap()).1, vec![0, 1]);
    r.id = instance_id(3);
    r.shape = Shape::Gpus { gpus: 8 };
    let err = a.place(&r).unwrap_err();
    assert!(matches!(err, Refusal::BadShape { .. }), "{err}");
    assert!(err.to_string().contains("at most 4 GPUs"), "{err}");
}

/// Restores a sub-node allocation of tenant 1 on a node of site 1.
fn hold(a: &mut Allocator, id: u64, node: u64, gpus: Vec<u32>) {
    let k = u32::try_from(gpus.len()).unwrap();
    a.restore(Allocation {
        id: instance_id(id),
        tenant: tenant(1),
        class: Class::OnDemand,
        gpu_model: H100.into(),
        shape: Shape::Gpus { gpus: k },
        site: crate::synthetic::site_id(1),
        pool: None,
        gpus: vec![(node_id(node), gpus.into())],
        cpu_milli: 0,
        memory_mib: 0,
        mig_start: None,
    })
    .unwrap();
}

#[test]
fn best_fit_prefers_the_fullest_node_and_first_fit_the_lowest_id() {
    for placement in [PlacementPolicy::BestFit, PlacementPolicy::FirstFit] {
        let (mut a, _) = two_leaves(placement, 2);
        // Node 1: a pair used (6 free). Node 2: a pair and a quad used (2 free). Both have a
        // free pair at 2-3 in a broken quad.
        hold(&mut a, 10, 1, vec![0, 1]);
        hold(&mut a, 11, 2, vec![0, 1]);
        hold(&mut a, 12, 2, vec![4, 5, 6, 7]);
        let got = on(&a.place(&gpus(1, 1, Class::OnDemand, 2)).unwrap());
        match placement {
            PlacementPolicy::BestFit => assert_eq!(got, (node_id(2), vec![2, 3])),
            _ => assert_eq!(got, (node_id(1), vec![2, 3])),
        }
        a.check_invariants().unwrap();
    }
}

#[test]
fn best_fit_fills_holes_before_breaking_free_blocks() {
    let (mut a, _) = two_leaves(PlacementPolicy::BestFit, 2);
    a.set_model_topology(H100, BoardTopology::ALIGNED).unwrap();
    // Node 1: a quad used, its free GPUs are one whole quad. Node 2: one GPU used, so GPU 1
    // is a hole and 2-3 a lone pair.
    hold(&mut a, 10, 1, vec![0, 1, 2, 3]);
    hold(&mut a, 11, 2, vec![0]);
    // Node 2 has more free GPUs, but the single and the pair fill its holes and keep the
    // quad of node 1 whole for the next quad.
    let one = on(&a.place(&gpus(1, 1, Class::OnDemand, 1)).unwrap());
    assert_eq!(one, (node_id(2), vec![1]));
    let two = on(&a.place(&gpus(2, 1, Class::OnDemand, 2)).unwrap());
    assert_eq!(two, (node_id(2), vec![2, 3]));
    // Node 2 now has 4 free (one quad), node 1 too: the tie goes to the lower id.
    let four = on(&a.place(&gpus(3, 1, Class::OnDemand, 4)).unwrap());
    assert_eq!(four, (node_id(1), vec![4, 5, 6, 7]));
    let four = on(&a.place(&gpus(4, 1, Class::OnDemand, 4)).unwrap());
    assert_eq!(four, (node_id(2), vec![4, 5, 6, 7]));
    a.check_invariants().unwrap();
}

#[test]
fn a_new_node_is_taken_from_the_most_used_block() {
    let (mut a, _) = two_leaves(PlacementPolicy::BestFit, 3);
    // A whole node: the lowest id of the site, node 1 (leaf 101 keeps 2 free, leaf 102 3).
    a.place(&Request {
        site: None,
        ..gang(1, 1, Class::OnDemand, 1, GangLevel::Site)
    })
    .unwrap();
    let first = a.allocation(instance_id(1)).unwrap().gpus[0].0;
    assert_eq!(first, node_id(1), "a 1-node gang fits the smallest block");
    // A single opens a node in leaf 101, which has fewer free whole nodes.
    let one = a.place(&gpus(2, 1, Class::OnDemand, 1)).unwrap();
    assert!([node_id(2), node_id(3)].contains(&on(&one).0), "{one:?}");
}

#[test]
fn gangs_stay_in_one_block_of_their_level() {
    let (mut a, _) = two_leaves(PlacementPolicy::BestFit, 4);
    // One single in each leaf group: no leaf group has 4 free whole nodes any more.
    a.restore(Allocation {
        id: instance_id(50),
        tenant: tenant(9),
        class: Class::OnDemand,
        gpu_model: H100.into(),
        shape: Shape::Gpus { gpus: 1 },
        site: crate::synthetic::site_id(1),
        pool: None,
        gpus: vec![(node_id(1), vec![0].into())],
        cpu_milli: 0,
        memory_mib: 0,
        mig_start: None,
    })
    .unwrap();
    let g = a
        .place(&gang(1, 1, Class::OnDemand, 4, GangLevel::LeafGroup))
        .unwrap();
    let nodes: Vec<_> = g.gpus.iter().map(|(n, _)| *n).collect();
    assert_eq!(nodes, (101..=104).map(node_id).collect::<Vec<_>>());
    assert!(g.gpus.iter().all(|(_, i)| i.len() == 8));
    let err = a
        .place(&gang(2, 1, Class::OnDemand, 3, GangLevel::LeafGroup))
        .unwrap();
    // Leaf 101 has 3 free whole nodes: exactly enough.
    assert!(err.gpus.iter().all(|(n, _)| *n != node_id(1)));
    let err = a
        .place(&gang(3, 1, Class::OnDemand, 1, GangLevel::LeafGroup))
        .unwrap_err();
    match err {
        Refusal::NoCapacity { free_gpus, reason } => {
            assert_eq!(free_gpus, 7);
            assert_eq!(
                reason,
                "no single leaf_group has 1 free whole nodes of H100-SXM-80GB; the largest has 0"
            );
        }
        other => panic!("{other:?}"),
    }
    a.check_invariants().unwrap();
}

#[test]
fn gang_best_fit_takes_the_tightest_block() {
    let (mut a, _) = two_leaves(PlacementPolicy::BestFit, 4);
    a.place(&gang(1, 1, Class::OnDemand, 1, GangLevel::Site))
        .unwrap();
    // Leaf 101 has 3 free, leaf 102 has 4: a 3-node gang takes leaf 101 whole.
    let g = a
        .place(&gang(2, 1, Class::OnDemand, 3, GangLevel::LeafGroup))
        .unwrap();
    assert!(g.gpus.iter().all(|(n, _)| *n < node_id(100)), "{g:?}");
    // First-fit would have done the same here, but with leaf 101 emptier it keeps id order.
    let (mut f, _) = two_leaves(PlacementPolicy::FirstFit, 4);
    f.restore(Allocation {
        id: instance_id(50),
        tenant: tenant(9),
        class: Class::OnDemand,
        gpu_model: H100.into(),
        shape: Shape::Gpus { gpus: 1 },
        site: crate::synthetic::site_id(1),
        pool: None,
        gpus: vec![(node_id(101), vec![0].into())],
        cpu_milli: 0,
        memory_mib: 0,
        mig_start: None,
    })
    .unwrap();
    let g = f
        .place(&gang(2, 1, Class::OnDemand, 3, GangLevel::LeafGroup))
        .unwrap();
    assert!(g.gpus.iter().all(|(n, _)| *n < node_id(100)), "{g:?}");
    f.release(instance_id(2));
    // The same state under best-fit: the tighter leaf 102 (3 free) wins.
    let b = Allocator::from_snapshot(&crate::Snapshot {
        placement: PlacementPolicy::BestFit,
        ..f.snapshot()
    })
    .unwrap();
    let g = b
        .try_place(&gang(2, 1, Class::OnDemand, 3, GangLevel::LeafGroup))
        .unwrap();
    assert!(g.gpus.iter().all(|(n, _)| *n > node_id(100)), "{g:?}");
}

#[test]
fn nvlink_gangs_use_nvlink_domains() {
    let mut a = Allocator::new(FleetPolicy::LabFirst, PlacementPolicy::BestFit);
    let s = site(&mut a, 1);
    for i in 0..6 {
        gb200(&mut a, s, i, 500 + i / 3);
    }
    let mut r = gang(1, 1, Class::Internal, 3, GangLevel::NvlinkDomain);
    r.gpu_model = GB200.into();
    let g = a.place(&r).unwrap();
    assert_eq!(g.gpus.len(), 3);
    assert_eq!(g.gpus[0].1.as_slice(), [0, 1, 2, 3]);
    r.id = instance_id(2);
    r.shape = Shape::Nodes {
        count: 4,
        level: GangLevel::NvlinkDomain,
    };
    assert!(matches!(a.place(&r), Err(Refusal::NoCapacity { .. })));
}

#[test]
fn power_limit_refuses_and_other_sites_are_tried() {
    let mut a = Allocator::new(FleetPolicy::LabFirst, PlacementPolicy::BestFit);
    let s1 = site(&mut a, 1);
    h100(&mut a, s1, 1, 100, 101, true);
    // Idle 1000 W at PUE 1.0; one GPU adds 1000 W.
    a.set_power_limit(s1, 1500);
    let mut r = gpus(1, 1, Class::OnDemand, 1);
    r.site = Some(s1);
    let err = a.place(&r).unwrap_err();
    assert_eq!(
        err,
        Refusal::PowerLimit {
            site: s1,
            needed_watts: 1000,
            limit_watts: 1500,
            allocated_watts: 1000,
        }
    );
    assert!(err.to_string().contains("power limit"), "{err}");
    let s2 = site(&mut a, 2);
    let other = h100(&mut a, s2, 2, 200, 201, true);
    r.site = None;
    assert_eq!(on(&a.place(&r).unwrap()).0, other);
    a.set_power_limit(s1, 2000);
    let mut r = gpus(2, 1, Class::OnDemand, 1);
    r.site = Some(s1);
    a.place(&r).unwrap();
    assert_eq!(a.site_power(s1).allocated_watts, 2000);
    // PUE applies to the whole draw.
    a.add_site(SiteSpec {
        id: s1,
        power_limit_watts: 10_000,
        pue_milli: 1500,
    });
    assert_eq!(a.site_power(s1).allocated_watts, 3000);
    assert_eq!(a.site_power(s1).it_watts, 2000);
    a.check_invariants().unwrap();
}

#[test]
fn unshared_nodes_hold_one_tenant() {
    let mut a = Allocator::new(FleetPolicy::LabFirst, PlacementPolicy::BestFit);
    let s = site(&mut a, 1);
    let n1 = h100(&mut a, s, 1, 100, 101, false);
    let n2 = h100(&mut a, s, 2, 100, 101, false);
    assert_eq!(on(&a.place(&gpus(1, 1, Class::OnDemand, 1)).unwrap()).0, n1);
    // The same tenant fills its own node; another tenant goes elsewhere.
    assert_eq!(on(&a.place(&gpus(2, 1, Class::OnDemand, 1)).unwrap()).0, n1);
    assert_eq!(on(&a.place(&gpus(3, 2, Class::OnDemand, 1)).unwrap()).0, n2);
    let err = a.place(&gpus(4, 3, Class::OnDemand, 1)).unwrap_err();
    match err {
        Refusal::NoCapacity { free_gpus, reason } => {
            assert_eq!(free_gpus, 13);
            assert!(reason.contains("may use"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // Restoring another tenant's work onto an unshared node is refused too.
    let err = a
        .restore(Allocation {
            id: instance_id(5),
            tenant: tenant(3),
            class: Class::OnDemand,
            gpu_model: H100.into(),
            shape: Shape::Gpus { gpus: 1 },
            site: s,
            pool: None,
            gpus: vec![(n1, vec![7].into())],
            cpu_milli: 0,
            memory_mib: 0,
            mig_start: None,
        })
        .unwrap_err();
    assert!(err.contains("not shareable"), "{err}");
    a.check_invariants().unwrap();
}

#[test]
fn shareable_nodes_mix_tenants() {
    let (mut a, _) = two_leaves(PlacementPolicy::BestFit, 1);
    let x = on(&a.place(&gpus(1, 1, Class::OnDemand, 1)).unwrap()).0;
    let y = on(&a.place(&gpus(2, 2, Class::OnDemand, 1)).unwrap()).0;
    assert_eq!(x, y);
}

#[test]
fn pools_keep_reserved_capacity_and_spot_borrows_it() {
    let (mut a, _) = two_leaves(PlacementPolicy::BestFit, 1);
    let pool = contract_id(7);
    let pinned = node_id(101);
    a.set_pool(pinned, Some(pool)).unwrap();
    // On-demand never lands on the pinned node.
    a.place(&gang(1, 1, Class::OnDemand, 1, GangLevel::Site))
        .unwrap();
    assert!(matches!(
        a.place(&gpus(2, 1, Class::OnDemand, 1)),
        Err(Refusal::NoCapacity { .. })
    ));
    // Reserved needs its pool, an existing one, and only uses it.
    assert!(matches!(
        a.place(&gpus(3, 2, Class::Reserved, 1)),
        Err(Refusal::BadShape { .. })
    ));
    assert_eq!(
        a.place(&reserved(3, 2, contract_id(8), 1)),
        Err(Refusal::UnknownPool {
            pool: contract_id(8)
        })
    );
    let mut wrong = gpus(3, 2, Class::OnDemand, 1);
    wrong.pool = Some(pool);
    assert!(matches!(a.place(&wrong), Err(Refusal::BadShape { .. })));
    // Spot borrows the idle pool node.
    let spot = a.place(&gpus(4, 3, Class::Spot, 8)).unwrap();
    assert_eq!(on(&spot).0, pinned);
    // The pool's tenant needs it back: the plan preempts the borrower.
    let r = reserved(5, 2, pool, 4);
    assert!(matches!(a.place(&r), Err(Refusal::NoCapacity { .. })));
    assert_eq!(a.preemption_plan(&r), Some(vec![instance_id(4)]));
    a.release(instance_id(4));
    assert_eq!(on(&a.place(&r).unwrap()).0, pinned);
    // Unpinning a node that runs reserved work is refused; pinning one with on-demand too.
    assert!(a.set_pool(pinned, None).is_err());
    assert!(a.set_pool(node_id(1), Some(pool)).is_err());
    a.check_invariants().unwrap();
}

#[test]
fn preemption_takes_the_fewest_gpus_of_lower_classes_only() {
    let (mut a, _) = two_leaves(PlacementPolicy::BestFit, 1);
    // Node 1: a whole-node spot job. Node 101: seven spot singles and an internal single.
    a.place(&gang(1, 1, Class::Spot, 1, GangLevel::Site))
        .unwrap();
    for i in 0..7 {
        a.place(&gpus(10 + i, 2, Class::Spot, 1)).unwrap();
    }
    a.place(&gpus(20, 3, Class::Internal, 1)).unwrap();
    assert_eq!(a.free_gpus(None, H100), 0);
    // An on-demand single under lab-first: one spot single is enough.
    let r = gpus(30, 4, Class::OnDemand, 1);
    let plan = a.preemption_plan(&r).unwrap();
    assert_eq!(plan.len(), 1);
    assert!(
        a.allocation(plan[0]).unwrap().class == Class::Spot
            && a.allocation(plan[0]).unwrap().gpu_count() == 1
    );
    // A quad: the node of singles costs 4 spot GPUs (the quad without the internal single);
    // the whole-node job would cost 8.
    let plan = a.preemption_plan(&gpus(31, 4, Class::OnDemand, 4)).unwrap();
    assert_eq!(plan.len(), 4, "{plan:?}");
    // 8 GPUs: only the whole-node job can go (the other node holds internal work, which
    // on-demand does not outrank under lab-first).
    assert_eq!(
        a.preemption_plan(&gpus(32, 4, Class::OnDemand, 8)),
        Some(vec![instance_id(1)])
    );
    // Spot preempts nobody; internal under cloud-first does not outrank on-demand.
    assert_eq!(a.preemption_plan(&gpus(33, 4, Class::Spot, 1)), None);
    for id in a.preemption_plan(&gpus(32, 4, Class::OnDemand, 8)).unwrap() {
        a.release(id);
    }
    a.place(&gpus(32, 4, Class::OnDemand, 8)).unwrap();
    let mut c = Allocator::from_snapshot(&crate::Snapshot {
        policy: FleetPolicy::CloudFirst,
        ..a.snapshot()
    })
    .unwrap();
    for i in 0..7 {
        c.release(instance_id(10 + i));
    }
    c.place(&gpus(40, 5, Class::OnDemand, 4)).unwrap();
    c.place(&gpus(41, 5, Class::OnDemand, 2)).unwrap();
    c.place(&gpus(42, 5, Class::OnDemand, 1)).unwrap();
    assert_eq!(c.free_gpus(None, H100), 0);
    // Under cloud-first, internal work cannot take the on-demand GPUs...
    assert_eq!(c.preemption_plan(&gpus(43, 3, Class::Internal, 1)), None);
    // ...but on-demand takes the internal single, and never another on-demand instance:
    // no pair is free of on-demand work.
    assert_eq!(
        c.preemption_plan(&gpus(44, 6, Class::OnDemand, 1)),
        Some(vec![instance_id(20)])
    );
    assert_eq!(c.preemption_plan(&gpus(45, 6, Class::OnDemand, 2)), None);
    // Under lab-first it could.
    let l = Allocator::from_snapshot(&crate::Snapshot {
        policy: FleetPolicy::LabFirst,
        ..c.snapshot()
    })
    .unwrap();
    let plan = l.preemption_plan(&gpus(43, 3, Class::Internal, 1)).unwrap();
    assert_eq!(plan, vec![instance_id(42)]);
}

#[test]
fn gang_preemption_frees_whole_nodes_in_one_block() {
    let (mut a, s) = two_leaves(PlacementPolicy::BestFit, 2);
    // Leaf 101: a spot gang node and a spot single. Leaf 102: an internal single, one free.
    let held = |id, class, shape, node, gpus: Vec<u32>| Allocation {
        id: instance_id(id),
        tenant: tenant(id),
        class,
        gpu_model: H100.into(),
        shape,
        site: s,
        pool: None,
        gpus: vec![(node_id(node), gpus.into())],
        cpu_milli: 0,
        memory_mib: 0,
        mig_start: None,
    };
    let whole = Shape::Nodes {
        count: 1,
        level: GangLevel::Site,
    };
    let single = Shape::Gpus { gpus: 1 };
    a.restore(held(1, Class::Spot, whole, 1, (0..8).collect()))
        .unwrap();
    a.restore(held(2, Class::Spot, single, 2, vec![3])).unwrap();
    a.restore(held(3, Class::Internal, single, 101, vec![0]))
        .unwrap();
    let r = gang(4, 3, Class::OnDemand, 2, GangLevel::LeafGroup);
    assert!(a.place(&r).is_err());
    let plan = a.preemption_plan(&r).unwrap();
    assert_eq!(plan, vec![instance_id(1), instance_id(2)]);
    for v in &plan {
        a.release(*v);
    }
    a.place(&r).unwrap();
    a.check_invariants().unwrap();
}

#[test]
fn preemption_makes_room_under_the_power_limit() {
    let mut a = Allocator::new(FleetPolicy::LabFirst, PlacementPolicy::BestFit);
    let s = site(&mut a, 1);
    h100(&mut a, s, 1, 100, 101, true);
    h100(&mut a, s, 2, 100, 101, true);
    a.place(&gpus(1, 1, Class::Spot, 4)).unwrap();
    // Idle 2 × 1000 W + 4000 W of spot: 6000 W. Cap there.
    a.set_power_limit(s, 6000);
    let r = gpus(2, 2, Class::OnDemand, 1);
    assert!(matches!(a.place(&r), Err(Refusal::PowerLimit { .. })));
    assert_eq!(a.preemption_plan(&r), Some(vec![instance_id(1)]));
    a.release(instance_id(1));
    a.place(&r).unwrap();
}

#[test]
fn restore_rebuilds_exactly_and_refuses_double_assignment() {
    let (mut a, s) = two_leaves(PlacementPolicy::BestFit, 3);
    a.set_model_topology(H100, BoardTopology::groups(&[4]).unwrap())
        .unwrap();
    a.set_pool(node_id(103), Some(contract_id(1))).unwrap();
    a.set_gpu_healthy(node_id(3), 5, false);
    a.set_schedulable(node_id(2), false);
    a.place(&gpus(1, 1, Class::OnDemand, 2)).unwrap();
    a.place(&gang(2, 2, Class::Internal, 2, GangLevel::LeafGroup))
        .unwrap();
    a.place(&reserved(3, 3, contract_id(1), 4)).unwrap();
    a.place(&gpus(4, 4, Class::Spot, 8)).unwrap();
    let snap = a.snapshot();
    let b = Allocator::from_snapshot(&snap).unwrap();
    assert_eq!(b.snapshot(), snap);
    assert_eq!(b.fingerprint(), a.fingerprint());
    b.check_invariants().unwrap();
    // Same decisions afterwards.
    let next = gpus(5, 1, Class::OnDemand, 1);
    assert_eq!(a.clone().place(&next), b.clone().place(&next));

    let mut c = b.clone();
    let mut double = a.allocation(instance_id(1)).unwrap().clone();
    double.id = instance_id(99);
    let err = c.restore(double).unwrap_err();
    assert!(err.contains("already held by inst_"), "{err}");
    let mut misaligned = a.allocation(instance_id(1)).unwrap().clone();
    misaligned.id = instance_id(98);
    misaligned.gpus = vec![(node_id(3), vec![3, 7].into())];
    let err = c.restore(misaligned.clone()).unwrap_err();
    assert!(
        err.contains("one group of its board's topology (groups:4)"),
        "{err}"
    );
    // Inside one quad any pair is connected.
    misaligned.gpus = vec![(node_id(3), vec![1, 2].into())];
    c.clone().restore(misaligned).unwrap();
    let err = c
        .restore(Allocation {
            id: instance_id(97),
            tenant: tenant(1),
            class: Class::OnDemand,
            gpu_model: H100.into(),
            shape: Shape::Gpus { gpus: 1 },
            site: s,
            pool: None,
            gpus: vec![(node_id(103), vec![7].into())],
            cpu_milli: 0,
            memory_mib: 0,
            mig_start: None,
        })
        .unwrap_err();
    assert!(err.contains("pool"), "{err}");
    assert_eq!(c.fingerprint(), a.fingerprint());
}

#[test]
fn remove_node_refuses_while_occupied() {
    let (mut a, _) = two_leaves(PlacementPolicy::BestFit, 1);
    let n = on(&a.place(&gpus(1, 1, Class::OnDemand, 1)).unwrap()).0;
    assert!(a.remove_node(n).unwrap_err().contains("release"));
    a.release(instance_id(1)).unwrap();
    a.remove_node(n).unwrap();
    assert!(a.remove_node(n).is_err());
    assert_eq!(a.free_gpus(None, H100), 8);
    a.check_invariants().unwrap();
}

#[test]
fn unhealthy_gpus_and_cordoned_nodes_are_skipped() {
    let (mut a, _) = two_leaves(PlacementPolicy::BestFit, 1);
    let (n1, n2) = (node_id(1), node_id(101));
    let running = a.place(&gpus(1, 1, Class::OnDemand, 1)).unwrap();
    assert_eq!(on(&running).0, n1);
    a.set_schedulable(n1, false);
    assert_eq!(on(&a.place(&gpus(2, 1, Class::OnDemand, 1)).unwrap()).0, n2);
    assert!(a.allocation(instance_id(1)).is_some(), "running work stays");
    // GPU 1 of n2 fails: the next pair skips 0-1.
    a.set_gpu_healthy(n2, 1, false);
    assert_eq!(
        on(&a.place(&gpus(3, 1, Class::OnDemand, 2)).unwrap()),
        (n2, vec![2, 3])
    );
    assert_eq!(a.free_gpus(None, H100), 4);
    // A node with a failed GPU never joins a gang.
    a.set_schedulable(n1, true);
    a.release(instance_id(1));
    a.release(instance_id(2));
    a.release(instance_id(3));
    let g = a
        .place(&gang(4, 1, Class::OnDemand, 1, GangLevel::Site))
        .unwrap();
    assert_eq!(g.gpus[0].0, n1);
    assert!(
        a.place(&gang(5, 1, Class::OnDemand, 1, GangLevel::Site))
            .is_err()
    );
    a.set_gpu_healthy(n2, 1, true);
    a.place(&gang(5, 1, Class::OnDemand, 1, GangLevel::Site))
        .unwrap();
    a.check_invariants().unwrap();
}

#[test]
fn try_place_records_nothing() {
    let (mut a, _) = two_leaves(PlacementPolicy::BestFit, 1);
    let before = a.fingerprint();
    let would = a.try_place(&gpus(1, 1, Class::OnDemand, 4)).unwrap();
    assert_eq!(a.fingerprint(), before);
    assert_eq!(a.place(&gpus(1, 1, Class::OnDemand, 4)).unwrap(), would);
    assert_ne!(a.fingerprint(), before);
}

#[test]
fn fragmentation_reports_stranded_gpus_and_largest_gangs() {
    let (mut a, s) = two_leaves(PlacementPolicy::BestFit, 3);
    a.place(&gpus(1, 1, Class::OnDemand, 1)).unwrap();
    let f = a.fragmentation(s, H100);
    assert_eq!(f.free_gpus, 47);
    assert_eq!(f.free_gpus_not_in_full_free_node, 7);
    assert!((f.stranded_share - 7.0 / 47.0).abs() < 1e-9);
    assert_eq!(
        f.largest_gang_by_level,
        vec![
            (GangLevel::NvlinkDomain, 0),
            (GangLevel::LeafGroup, 3),
            (GangLevel::Pod, 5),
            (GangLevel::Site, 5),
        ]
    );
}

#[test]
fn the_same_calls_give_the_same_allocator() {
    let run = || {
        let mut a = allocator(
            &[Grid {
                pods: 2,
                leaves_per_pod: 2,
                nodes_per_leaf: 5,
                ..Grid::memphis_1()
            }],
            FleetPolicy::LabFirst,
            PlacementPolicy::BestFit,
        );
        let mut rng = crate::synthetic::Rng::new(7);
        for i in 0..200 {
            let k = [1, 2, 4, 8][usize::try_from(rng.below(4)).unwrap()];
            let _ = a.place(&gpus(i, rng.below(3), Class::OnDemand, k));
            if rng.chance(0.3) {
                a.release(instance_id(rng.below(i + 1)));
            }
        }
        a.check_invariants().unwrap();
        a.fingerprint()
    };
    assert_eq!(run(), run());
}

#[test]
fn add_node_checks_its_spec() {
    let (mut a, s) = two_leaves(PlacementPolicy::BestFit, 1);
    let spec = NodeSpec {
        id: node_id(500),
        site: s,
        gpu_model: H100.into(),
        gpus: 8,
        blocks: vec![
            (BlockKind::LeafGroup, crate::synthetic::block_id(1)),
            (BlockKind::Pod, crate::synthetic::block_id(2)),
        ],
        idle_watts: 1,
        peak_watts: 2,
        shareable: true,
        cpu_milli: 0,
        memory_mib: 0,
        mig: None,
        sharing: Default::default(),
    };
    assert!(a.add_node(spec.clone()).unwrap_err().contains("outermost"));
    let unknown_site = NodeSpec {
        site: crate::synthetic::site_id(9),
        blocks: vec![],
        ..spec.clone()
    };
    assert!(a.add_node(unknown_site).unwrap_err().contains("site"));
    assert!(
        a.add_node(NodeSpec {
            id: node_id(1),
            blocks: vec![],
            ..spec.clone()
        })
        .unwrap_err()
        .contains("already")
    );
    assert!(
        a.add_node(NodeSpec {
            gpus: 65,
            blocks: vec![],
            ..spec
        })
        .is_err()
    );
}

#[test]
fn a_spare_comes_from_the_same_leaf_then_the_pod_then_the_site() {
    let (mut a, s) = two_leaves(PlacementPolicy::BestFit, 3);
    // Another pod (200) with one node in leaf 201, and a GB200 tray that never qualifies.
    h100(&mut a, s, 301, 200, 201, true);
    gb200(&mut a, s, 401, 500);
    let failed = node_id(1);
    assert_eq!(a.spare_near(failed), Some(node_id(2)));
    // Taken, pooled, cordoned or unhealthy nodes are no spares.
    hold(&mut a, 1, 2, vec![0]);
    a.set_pool(node_id(3), Some(contract_id(9))).unwrap();
    assert_eq!(a.spare_near(failed), Some(node_id(101)), "same pod next");
    for n in [101, 102] {
        a.set_schedulable(node_id(n), false);
    }
    a.set_gpu_healthy(node_id(103), 7, false);
    assert_eq!(a.spare_near(failed), Some(node_id(301)), "then the site");
    a.set_schedulable(node_id(301), false);
    assert_eq!(a.spare_near(failed), None);
    assert_eq!(a.node_holders(node_id(2)), vec![instance_id(1)]);
    assert_eq!(a.node_full(node_id(2)), Some(false));
    assert_eq!(a.node_full(node_id(999)), None);
}

#[test]
fn a_block_short_of_its_spare_is_topped_up_when_a_node_of_it_comes_free() {
    let (mut a, s) = two_leaves(PlacementPolicy::BestFit, 2);
    a.spread_spares(s, H100, 1);
    assert_eq!(a.spare_count(s, H100), (1, 1));
    assert!(a.is_spare(node_id(102)), "the pod's last free node");
    for (inst, node) in [(1, 1), (2, 2), (3, 101)] {
        hold(&mut a, inst, node, vec![0]);
    }
    // The spare is taken, and work lands on it: the pod has no free node to pin.
    a.set_pool(node_id(102), None).unwrap();
    hold(&mut a, 4, 102, vec![0]);
    assert_eq!(a.top_up_spares(), 0);
    assert_eq!(a.spare_count(s, H100), (0, 1));
    a.check_invariants().unwrap();
    // More work on a busy node frees nothing; the pod is passed over.
    hold(&mut a, 5, 1, vec![1]);
    assert_eq!(a.top_up_spares(), 0);
    a.check_invariants().unwrap();
    // Node 101 comes free: the next top-up pins it.
    assert!(a.release(instance_id(3)).is_some());
    a.check_invariants().unwrap();
    assert_eq!(a.top_up_spares(), 1);
    assert!(a.is_spare(node_id(101)));
    assert_eq!(a.spare_count(s, H100), (1, 1));
    a.check_invariants().unwrap();
}
