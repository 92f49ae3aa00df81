//! Property tests: random operation sequences on a small mixed fleet.
//!
//! After every step the allocator's own self-check must pass, and the docs/architecture.md
//! invariants are checked again here from the list of allocations alone, without the
//! allocator's indexes: 1 (no GPU twice), 3 (preemption only of strictly lower classes, and
//! a plan really makes room), 4 (one tenant per unshared node), 5 (no placement takes a site
//! over its limit). A rebuild from a snapshot, allocations restored in reverse order, must
//! give the same fingerprint.

use std::collections::{BTreeMap, BTreeSet};

use neocloud_types::{
    BlockKind, BoardTopology, Class, FleetPolicy, GangLevel, NodeId, Shape, SiteId,
};
use proptest::prelude::*;

use super::{GB200, H100};
use crate::node::facility_watts;
use crate::synthetic::{block_id, contract_id, instance_id, node_id, site_id, tenant_id};
use crate::{Allocation, Allocator, NodeSpec, PlacementPolicy, Refusal, Request, SiteSpec};

#[derive(Clone, Debug)]
struct Req {
    tenant: u8,
    class: u8,
    shape: u8,
    model: u8,
    site: u8,
    pool: u8,
}

#[derive(Clone, Debug)]
enum Op {
    Place(Req),
    Release(usize),
    PreemptAndPlace(Req),
    Schedulable(usize, bool),
    Healthy(usize, u32, bool),
    Pool(usize, u8),
    PowerLimit(usize, u8),
    /// A gang loses one of its nodes (`lose`), gains another (`gain`), or both.
    SwapNode(usize, usize, bool, bool),
    RemoveAndAdd(usize),
}

/// A request; `classes` are indexes into [`CLASSES`] and `shapes` shape numbers (see
/// [`World::request`]), repeated to weigh them.
fn req(classes: &'static [u8], shapes: &'static [u8]) -> impl Strategy<Value = Req> {
    let class = proptest::sample::select(classes);
    let shape = proptest::sample::select(shapes);
    (0u8..3, class, shape, 0u8..4, 0u8..3, 0u8..8).prop_map(
        |(tenant, class, shape, model, site, pool)| Req {
            tenant,
            class,
            shape,
            model,
            site,
            pool,
        },
    )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        // Plenty of spot work, so that preemption has victims to choose from.
        8 => req(&[0, 1, 2, 3, 3, 3], &[0, 1, 2, 3, 4, 5, 6, 7]).prop_map(Op::Place),
        2 => any::<usize>().prop_map(Op::Release),
        4 => req(&[0, 0, 1, 2, 2, 3], &[1, 2, 3, 3, 4, 5, 6, 7]).prop_map(Op::PreemptAndPlace),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(n, y)| Op::Schedulable(n, y)),
        1 => (any::<usize>(), 0u32..8, any::<bool>()).prop_map(|(n, g, y)| Op::Healthy(n, g, y)),
        1 => (any::<usize>(), 0u8..3).prop_map(|(n, p)| Op::Pool(n, p)),
        1 => (0usize..2, 40u8..110).prop_map(|(s, p)| Op::PowerLimit(s, p)),
        1 => any::<usize>().prop_map(Op::RemoveAndAdd),
        2 => (any::<usize>(), any::<usize>(), any::<bool>(), any::<bool>())
            .prop_map(|(g, n, lose, gain)| Op::SwapNode(g, n, lose, gain)),
    ]
}

struct World {
    a: Allocator,
    sites: Vec<SiteSpec>,
    specs: BTreeMap<NodeId, NodeSpec>,
    order: Vec<NodeId>,
    next_id: u64,
}

fn node(
    n: u64,
    site: SiteId,
    model: &str,
    gpus: u32,
    blocks: Vec<(BlockKind, u64)>,
    watts: (u32, u32),
    shareable: bool,
) -> NodeSpec {
    NodeSpec {
        id: node_id(n),
        site,
        gpu_model: model.to_string(),
        gpus,
        blocks: blocks.into_iter().map(|(k, b)| (k, block_id(b))).collect(),
        idle_watts: watts.0,
        peak_watts: watts.1,
        shareable,
        cpu_milli: 0,
        memory_mib: 0,
        mig: None,
        sharing: Default::default(),
    }
}

/// Two sites; site 1: two pods of H100 nodes (8 GPUs) and two NVLink domains of GB200 trays
/// (4 GPUs); site 2: one leaf group of H100 nodes with another power profile. Odd nodes are
/// shareable.
fn world(policy: FleetPolicy, placement: PlacementPolicy, topology: BoardTopology) -> World {
    let (s1, s2) = (site_id(1), site_id(2));
    let mut specs = Vec::new();
    for n in 1..=9u64 {
        let (pod, leaf) = match n {
            1..=3 => (10, 11),
            4..=6 => (10, 12),
            _ => (20, 21),
        };
        let path = vec![(BlockKind::Pod, pod), (BlockKind::LeafGroup, leaf)];
        specs.push(node(n, s1, H100, 8, path, (1000, 9000), n % 2 == 1));
    }
    for n in 10..=15u64 {
        let domain = if n <= 12 { 30 } else { 31 };
        let path = vec![(BlockKind::NvlinkDomain, domain)];
        specs.push(node(n, s1, GB200, 4, path, (800, 5000), true));
    }
    for n in 16..=19u64 {
        let path = vec![(BlockKind::Pod, 40), (BlockKind::LeafGroup, 41)];
        specs.push(node(n, s2, H100, 8, path, (1500, 8000), n % 2 == 1));
    }
    let peak = |site| -> i64 {
        specs
            .iter()
            .filter(|n| n.site == site)
            .map(|n| i64::from(n.peak_watts))
            .sum()
    };
    let sites = vec![
        SiteSpec {
            id: s1,
            power_limit_watts: facility_watts(peak(s1), 1100),
            pue_milli: 1100,
        },
        SiteSpec {
            id: s2,
            power_limit_watts: facility_watts(peak(s2), 1000),
            pue_milli: 1000,
        },
    ];
    let mut a = Allocator::new(policy, placement);
    for s in &sites {
        a.add_site(s.clone());
    }
    a.set_model_topology(H100, topology).unwrap();
    for n in &specs {
        a.add_node(n.clone()).unwrap();
    }
    // Reserved pools from the start: pod 20 and NVLink domain 31 for contract 1, a node of
    // leaf 12 and two of site 2 for contract 2.
    for (n, c) in [
        (7, 1),
        (8, 1),
        (9, 1),
        (13, 1),
        (14, 1),
        (15, 1),
        (6, 2),
        (17, 2),
        (19, 2),
    ] {
        a.set_pool(node_id(n), Some(contract_id(c))).unwrap();
    }
    World {
        a,
        sites,
        order: specs.iter().map(|n| n.id).collect(),
        specs: specs.into_iter().map(|n| (n.id, n)).collect(),
        next_id: 0,
    }
}

const CLASSES: [Class; 4] = [
    Class::Reserved,
    Class::Internal,
    Class::OnDemand,
    Class::Spot,
];

impl World {
    fn request(&mut self, r: &Req) -> Request {
        self.next_id += 1;
        let class = CLASSES[usize::from(r.class)];
        let shape = match r.shape {
            k @ 0..=3 => Shape::Gpus { gpus: 1 << k },
            4 => Shape::Nodes {
                count: 2,
                level: GangLevel::LeafGroup,
            },
            5 => Shape::Nodes {
                count: 3,
                level: GangLevel::Pod,
            },
            6 => Shape::Nodes {
                count: 1,
                level: GangLevel::Site,
            },
            _ => Shape::Nodes {
                count: 2,
                level: GangLevel::NvlinkDomain,
            },
        };
        // Mostly well-formed pools; now and then a reserved request without one or another
        // class with one, which must be refused.
        let pool = match (class, r.pool) {
            (Class::Reserved, 0) => None,
            (Class::Reserved, p) => Some(contract_id(u64::from(p % 2) + 1)),
            (_, 7) => Some(contract_id(1)),
            _ => None,
        };
        Request {
            id: instance_id(self.next_id),
            tenant: tenant_id(u64::from(r.tenant)),
            class,
            gpu_model: if r.model == 3 { GB200 } else { H100 }.to_string(),
            shape,
            site: match r.site {
                0 => None,
                s => Some(site_id(u64::from(s))),
            },
            pool,
            cpu_milli: None,
            memory_mib: None,
        }
    }

    fn nth(&self, i: usize) -> NodeId {
        self.order[i % self.order.len()]
    }

    /// Checks one new allocation against the request and the node states before it.
    fn check_new(&self, before: &crate::Snapshot, req: &Request, got: &Allocation) {
        let nodes: BTreeMap<NodeId, &crate::NodeSnapshot> =
            before.nodes.iter().map(|n| (n.id, n)).collect();
        assert_eq!(got.id, req.id);
        assert_eq!(got.class, req.class);
        assert_eq!(got.shape, req.shape);
        if let Some(site) = req.site {
            assert_eq!(got.site, site);
        }
        let mut blocks = BTreeSet::new();
        for (id, gpus) in &got.gpus {
            let n = nodes[id];
            assert_eq!(n.gpu_model, req.gpu_model);
            assert_eq!(n.site, got.site);
            assert!(n.schedulable, "placed on a cordoned node");
            assert!(
                gpus.iter().all(|g| !n.unhealthy_gpus.contains(g)),
                "placed on an unhealthy GPU"
            );
            match req.class {
                Class::Reserved => assert_eq!(n.pool, req.pool),
                Class::Spot => {}
                _ => assert_eq!(n.pool, None, "non-spot work on a pinned node"),
            }
            if let Shape::Nodes { level, .. } = req.shape {
                let kind = match level {
                    GangLevel::NvlinkDomain => Some(BlockKind::NvlinkDomain),
                    GangLevel::LeafGroup => Some(BlockKind::LeafGroup),
                    GangLevel::Pod => Some(BlockKind::Pod),
                    GangLevel::Site => None,
                };
                let block = kind.map(|k| {
                    n.blocks
                        .iter()
                        .find(|(bk, _)| *bk == k)
                        .map(|(_, b)| *b)
                        .expect("gang node has a block of its level")
                });
                blocks.insert(block);
                assert_eq!(gpus.len(), n.gpus as usize, "a gang takes whole nodes");
            } else {
                let topology = self.a.model_topology(&n.gpu_model);
                assert!(
                    connected(topology, gpus, n.gpus),
                    "GPUs {gpus:?} are not one group of {topology}"
                );
            }
        }
        assert!(blocks.len() <= 1, "gang spans blocks: {blocks:?}");
        // Invariant 5, recomputed from the allocations.
        let site = self.sites.iter().find(|s| s.id == got.site).unwrap();
        let limit = self.a.site_power(site.id).limit_watts;
        assert!(
            self.facility(site.id) <= limit,
            "site over its limit after a placement"
        );
    }

    /// A site's facility draw from the allocations and the fleet spec alone: idle watts,
    /// plus per GPU count Σ (peak − idle) × allocated GPUs / GPUs rounded up, × PUE.
    fn facility(&self, site: SiteId) -> i64 {
        let mut used: BTreeMap<NodeId, i64> = BTreeMap::new();
        for a in self.a.allocations() {
            for (n, g) in &a.gpus {
                *used.entry(*n).or_default() += i64::try_from(g.len()).unwrap();
            }
        }
        let present: BTreeSet<NodeId> = self.a.snapshot().nodes.iter().map(|n| n.id).collect();
        let mut idle = 0i64;
        let mut busy: BTreeMap<u32, i64> = BTreeMap::new();
        for n in self.specs.values() {
            if n.site == site && present.contains(&n.id) {
                idle += i64::from(n.idle_watts);
                *busy.entry(n.gpus).or_default() +=
                    i64::from(n.peak_watts - n.idle_watts) * used.get(&n.id).copied().unwrap_or(0);
            }
        }
        let it = idle
            + busy
                .iter()
                .map(|(&g, &b)| (b + i64::from(g) - 1) / i64::from(g))
                .sum::<i64>();
        let pue = self.sites.iter().find(|s| s.id == site).unwrap().pue_milli;
        let f = (it * i64::from(pue) + 999) / 1000;
        assert_eq!(f, self.a.site_power(site).allocated_watts);
        f
    }

    /// Invariants 1 and 4 from the allocation list, free counts from the snapshot.
    fn check_all(&self) {
        self.a.check_invariants().unwrap();
        let mut held = BTreeSet::new();
        let mut tenants: BTreeMap<NodeId, BTreeSet<_>> = BTreeMap::new();
        for a in self.a.allocations() {
            for (n, gpus) in &a.gpus {
                for g in gpus {
                    assert!(held.insert((*n, *g)), "GPU {g} of {n} held twice");
                }
                tenants.entry(*n).or_default().insert(a.tenant);
            }
        }
        for (n, t) in &tenants {
            if !self.specs[n].shareable {
                assert!(t.len() <= 1, "unshared node {n} holds tenants {t:?}");
            }
        }
        let snap = self.a.snapshot();
        let mut all = 0;
        for model in [H100, GB200] {
            let free: u64 = snap
                .nodes
                .iter()
                .filter(|n| n.gpu_model == model && n.schedulable)
                .map(|n| {
                    (0..n.gpus)
                        .filter(|g| !n.unhealthy_gpus.contains(g) && !held.contains(&(n.id, *g)))
                        .count() as u64
                })
                .sum();
            assert_eq!(self.a.free_gpus(None, model), free);
            all += free;
        }
        assert_eq!(self.a.free_gpus_all(), all);
        for s in &self.sites {
            self.facility(s.id);
        }
        // A restart: the same rows, allocations in another order, give the same allocator.
        let mut snap = snap;
        snap.allocations.reverse();
        let rebuilt = Allocator::from_snapshot(&snap).unwrap();
        assert_eq!(rebuilt.fingerprint(), self.a.fingerprint());
        rebuilt.check_invariants().unwrap();
    }

    /// "No plan" must mean that even releasing every eligible victim in the request's
    /// scope (its model, its site, the nodes its pool rules let it use) does not make room.
    fn check_no_plan(&self, req: &Request) {
        let snap = self.a.snapshot();
        let usable: BTreeSet<NodeId> = snap
            .nodes
            .iter()
            .filter(|n| {
                n.gpu_model == req.gpu_model
                    && req.site.is_none_or(|s| s == n.site)
                    && match req.class {
                        Class::Reserved => n.pool == req.pool,
                        Class::Spot => true,
                        _ => n.pool.is_none(),
                    }
            })
            .map(|n| n.id)
            .collect();
        let mut all = self.a.clone();
        for a in self.a.allocations() {
            if req.class.can_preempt(a.class, self.a.policy())
                && a.gpus.iter().any(|(n, _)| usable.contains(n))
            {
                all.release(a.id);
            }
        }
        if let Ok(got) = all.try_place(req) {
            panic!("no plan for {req:?}, but releasing every victim places it: {got:?}");
        }
    }

    fn step(&mut self, op: &Op) {
        match op {
            Op::Place(r) => {
                let req = self.request(r);
                let before = self.a.snapshot();
                let tried = self.a.try_place(&req);
                let quiet = self.a.try_place_quiet(&req);
                match self.a.place(&req) {
                    Ok(got) => {
                        assert_eq!(tried.as_ref(), Ok(&got));
                        assert_eq!(quiet.as_ref(), Ok(&got));
                        self.check_new(&before, &req, &got);
                    }
                    Err(e) => {
                        assert_eq!(tried, Err(e.clone()));
                        // The quiet decision refuses the same way, only without the words.
                        match (&e, quiet) {
                            (
                                Refusal::NoCapacity { .. },
                                Err(Refusal::NoCapacity { reason, .. }),
                            ) => {
                                assert!(reason.is_empty());
                            }
                            (_, quiet) => assert_eq!(quiet, Err(e.clone())),
                        }
                        assert_eq!(self.a.snapshot(), before, "a refusal changed state");
                        if let Refusal::PowerLimit {
                            allocated_watts,
                            limit_watts,
                            needed_watts,
                            ..
                        } = e
                        {
                            assert!(allocated_watts + needed_watts > limit_watts);
                        }
                    }
                }
            }
            Op::Release(i) => {
                let ids: Vec<_> = self.a.allocations().map(|a| a.id).collect();
                if !ids.is_empty() {
                    let id = ids[i % ids.len()];
                    assert_eq!(self.a.release(id).map(|a| a.id), Some(id));
                    assert!(self.a.release(id).is_none());
                }
            }
            Op::PreemptAndPlace(r) => {
                let req = self.request(r);
                let Some(victims) = self.a.preemption_plan(&req) else {
                    self.check_no_plan(&req);
                    return;
                };
                for v in &victims {
                    let a = self.a.allocation(*v).expect("victims exist").clone();
                    assert!(
                        req.class.can_preempt(a.class, self.a.policy()),
                        "{} preempts {} (invariant 3)",
                        req.class,
                        a.class
                    );
                    self.a.release(*v);
                    self.check_all();
                }
                let before = self.a.snapshot();
                let got = self
                    .a
                    .place(&req)
                    .unwrap_or_else(|e| panic!("plan {victims:?} did not make room: {e}"));
                self.check_new(&before, &req, &got);
            }
            Op::Schedulable(n, yes) => self.a.set_schedulable(self.nth(*n), *yes),
            Op::Healthy(n, g, yes) => self.a.set_gpu_healthy(self.nth(*n), *g, *yes),
            Op::Pool(n, p) => {
                let pool = match p {
                    0 => None,
                    p => Some(contract_id(u64::from(*p))),
                };
                let _ = self.a.set_pool(self.nth(*n), pool);
            }
            Op::PowerLimit(s, percent) => {
                let site = self.sites[*s].clone();
                let peak: i64 = self
                    .specs
                    .values()
                    .filter(|n| n.site == site.id)
                    .map(|n| i64::from(n.peak_watts))
                    .sum();
                let watts = facility_watts(peak, site.pue_milli) * i64::from(*percent) / 100;
                self.a.set_power_limit(site.id, watts);
            }
            Op::SwapNode(g, n, lose, gain) => {
                let gangs: Vec<Allocation> = self
                    .a
                    .allocations()
                    .filter(|a| matches!(a.shape, Shape::Nodes { .. }))
                    .cloned()
                    .collect();
                if gangs.is_empty() || !(*lose || *gain) {
                    return;
                }
                let gang = &gangs[g % gangs.len()];
                let lost = lose.then(|| gang.gpus[n % gang.gpus.len()].0);
                let gained = gain.then(|| self.nth(*n)).filter(|node| {
                    // Only an entirely free node: the scheduler swaps in what
                    // `replacement_where` found.
                    self.a
                        .allocations()
                        .all(|a| a.gpus.iter().all(|(x, _)| x != node))
                });
                if *gain && gained.is_none() {
                    return;
                }
                // The long way on a copy: give the whole gang back, take it again.
                let mut long = self.a.clone();
                let got = self.a.swap_node(gang.id, lost, gained);
                let mut want = gang.clone();
                want.gpus.retain(|(x, _)| Some(*x) != lost);
                if let Some(g) = gained {
                    let size = self.specs[&g].gpus;
                    want.gpus.push((g, (0..size).collect()));
                    want.gpus.sort();
                }
                match got {
                    Ok((before, after)) => {
                        assert_eq!(&before, gang);
                        assert_eq!(after.gpus, want.gpus);
                        if let Some(g) = gained
                            && gang.class != Class::Spot
                            && long.is_spare(g)
                        {
                            long.set_pool(g, gang.pool).unwrap();
                        }
                        long.release(gang.id).unwrap();
                        long.restore(after.clone()).unwrap();
                        long.check_invariants().unwrap();
                        assert_eq!(self.a.fingerprint(), long.fingerprint());
                        assert_eq!(self.a.free_gpus(None, H100), long.free_gpus(None, H100),);
                    }
                    Err(_) => {
                        assert!(want.gpus.is_empty() || self.a.allocation(gang.id) == Some(gang))
                    }
                }
            }
            Op::RemoveAndAdd(n) => {
                let id = self.nth(*n);
                if self.a.remove_node(id).is_ok() {
                    self.a.check_invariants().unwrap();
                    self.a.add_node(self.specs[&id].clone()).unwrap();
                }
            }
        }
        self.check_all();
    }
}

/// Whether `gpus` (ascending) of a node of `node_gpus` GPUs are one group that `topology`
/// gives one instance, worked out from the rule's words: all inside one block of the
/// smallest group size that holds them (the whole board when none does).
fn connected(topology: BoardTopology, gpus: &[u32], node_gpus: u32) -> bool {
    let k = u32::try_from(gpus.len()).unwrap();
    let size = topology.group_sizes().find(|&s| s >= k).unwrap_or(64);
    k > 0
        && gpus.windows(2).all(|w| w[0] < w[1])
        && gpus
            .iter()
            .all(|&g| g < node_gpus && g / size == gpus[0] / size)
}

fn topology() -> impl Strategy<Value = BoardTopology> {
    prop_oneof![
        Just(BoardTopology::NVSWITCH),
        Just(BoardTopology::ALIGNED),
        Just(BoardTopology::groups(&[4]).unwrap()),
        Just(BoardTopology::groups(&[2, 4]).unwrap()),
    ]
}

fn placement() -> impl Strategy<Value = PlacementPolicy> {
    prop_oneof![
        2 => Just(PlacementPolicy::BestFit),
        1 => Just(PlacementPolicy::FirstFit),
        1 => Just(PlacementPolicy::WorstFit),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn invariants_hold_under_random_operations(
        cloud_first in any::<bool>(),
        placement in placement(),
        topology in topology(),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let policy = if cloud_first { FleetPolicy::CloudFirst } else { FleetPolicy::LabFirst };
        let mut w = world(policy, placement, topology);
        for op in &ops {
            w.step(op);
        }
    }

    /// A fleet filled with lower-class work first, then higher-class requests that need
    /// preemption: every plan must name only strictly lower classes and make room.
    #[test]
    fn preemption_plans_are_sound_on_a_full_fleet(
        cloud_first in any::<bool>(),
        placement in placement(),
        topology in topology(),
        fill in proptest::collection::vec(req(&[1, 2, 3, 3, 3], &[0, 1, 2, 3, 3, 4, 6, 7]), 40..80),
        claims in proptest::collection::vec(req(&[0, 0, 1, 2], &[0, 1, 2, 3, 4, 5, 6, 7]), 1..20),
    ) {
        let policy = if cloud_first { FleetPolicy::CloudFirst } else { FleetPolicy::LabFirst };
        let mut w = world(policy, placement, topology);
        for r in &fill {
            let req = w.request(r);
            let _ = w.a.place(&req);
        }
        w.check_all();
        for r in &claims {
            w.step(&Op::PreemptAndPlace(r.clone()));
        }
    }

    /// The rule of a board's topology, from outside: every placement of k whole GPUs is one
    /// group the topology gives together, and a refusal means that no node has a group
    /// with k free GPUs (on NVSwitch: no node has k free GPUs at all), for every policy.
    #[test]
    fn whole_gpus_are_refused_only_when_no_group_of_the_board_has_room(
        placement in prop_oneof![
            Just(PlacementPolicy::BestFit),
            Just(PlacementPolicy::FirstFit),
            Just(PlacementPolicy::WorstFit),
            Just(PlacementPolicy::Fragmentation),
        ],
        topology in topology(),
        ops in proptest::collection::vec((0u32..4, 0u8..3, any::<usize>()), 1..150),
    ) {
        let mut a = Allocator::new(FleetPolicy::LabFirst, placement);
        let s = super::site(&mut a, 1);
        a.set_model_topology(H100, topology).unwrap();
        for n in 1..=3 {
            super::h100(&mut a, s, n, 100, 101, true);
        }
        let mut next = 0;
        for (shape, what, pick) in ops {
            if what == 0 {
                let ids: Vec<_> = a.allocations().map(|x| x.id).collect();
                if !ids.is_empty() {
                    a.release(ids[pick % ids.len()]);
                }
                continue;
            }
            next += 1;
            let k = 1u32 << shape;
            match a.place(&super::gpus(next, 1, Class::OnDemand, k)) {
                Ok(got) => {
                    let (node, gpus) = &got.gpus[0];
                    prop_assert!(connected(topology, gpus, 8), "{node}: {gpus:?}");
                }
                Err(e) => {
                    let size = topology.group_sizes().find(|&s| s >= k).unwrap_or(64);
                    for n in 1..=3 {
                        let used: BTreeSet<u32> = a
                            .allocations()
                            .flat_map(|x| x.gpus.iter())
                            .filter(|(id, _)| *id == node_id(n))
                            .flat_map(|(_, g)| g.iter().copied())
                            .collect();
                        for block in (0..8).step_by(usize::try_from(size.min(8)).unwrap()) {
                            let free = (block..(block + size).min(8))
                                .filter(|g| !used.contains(g))
                                .count();
                            prop_assert!(
                                free < usize::try_from(k).unwrap(),
                                "{k} GPUs refused ({e}) with {free} free in one group of node {n}"
                            );
                        }
                    }
                }
            }
            a.check_invariants().unwrap();
        }
    }
}
