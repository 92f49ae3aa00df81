//! Tests of the placement rules and property tests of the invariants.

mod props;
mod rules;
mod slices;

use neocloud_types::{BlockKind, Class, ContractId, NodeId, SiteId, TenantId};

use crate::synthetic::{block_id, instance_id, node_id, site_id, tenant_id};
use crate::{
    Allocator, FleetPolicy, GangLevel, NodeSpec, PlacementPolicy, Request, Shape, SiteSpec,
};

pub(crate) const H100: &str = "H100-SXM-80GB";
pub(crate) const GB200: &str = "GB200";

/// Adds a site with a limit no placement reaches.
pub(crate) fn site(a: &mut Allocator, n: u64) -> SiteId {
    let id = site_id(n);
    a.add_site(SiteSpec {
        id,
        power_limit_watts: i64::MAX / 4,
        pue_milli: 1000,
    });
    id
}

/// Adds an 8-GPU H100 node (idle 1000 W, peak 9000 W) in the given pod and leaf group.
pub(crate) fn h100(
    a: &mut Allocator,
    site: SiteId,
    n: u64,
    pod: u64,
    leaf: u64,
    share: bool,
) -> NodeId {
    let id = node_id(n);
    a.add_node(NodeSpec {
        id,
        site,
        gpu_model: H100.to_string(),
        gpus: 8,
        blocks: vec![
            (BlockKind::Pod, block_id(pod)),
            (BlockKind::LeafGroup, block_id(leaf)),
        ],
        idle_watts: 1000,
        peak_watts: 9000,
        shareable: share,
        cpu_milli: 0,
        memory_mib: 0,
        mig: None,
        sharing: Default::default(),
    })
    .unwrap();
    id
}

/// Adds a 4-GPU GB200 tray (idle 1000 W, peak 5000 W) in an NVLink domain.
pub(crate) fn gb200(a: &mut Allocator, site: SiteId, n: u64, domain: u64) -> NodeId {
    let id = node_id(n);
    a.add_node(NodeSpec {
        id,
        site,
        gpu_model: GB200.to_string(),
        gpus: 4,
        blocks: vec![(BlockKind::NvlinkDomain, block_id(domain))],
        idle_watts: 1000,
        peak_watts: 5000,
        shareable: true,
        cpu_milli: 0,
        memory_mib: 0,
        mig: None,
        sharing: Default::default(),
    })
    .unwrap();
    id
}

/// One site, one pod (block 100) of two leaf groups (101, 102), `per_leaf` shareable H100
/// nodes in each: nodes 1.. in leaf 101, 101.. in leaf 102.
pub(crate) fn two_leaves(placement: PlacementPolicy, per_leaf: u64) -> (Allocator, SiteId) {
    let mut a = Allocator::new(FleetPolicy::LabFirst, placement);
    let s = site(&mut a, 1);
    for i in 1..=per_leaf {
        h100(&mut a, s, i, 100, 101, true);
    }
    for i in 1..=per_leaf {
        h100(&mut a, s, 100 + i, 100, 102, true);
    }
    (a, s)
}

pub(crate) fn gpus(id: u64, tenant: u64, class: Class, k: u32) -> Request {
    Request {
        id: instance_id(id),
        tenant: tenant_id(tenant),
        class,
        gpu_model: H100.to_string(),
        shape: Shape::Gpus { gpus: k },
        site: None,
        pool: None,
        cpu_milli: None,
        memory_mib: None,
    }
}

pub(crate) fn gang(id: u64, tenant: u64, class: Class, count: u32, level: GangLevel) -> Request {
    Request {
        shape: Shape::Nodes { count, level },
        ..gpus(id, tenant, class, 1)
    }
}

pub(crate) fn reserved(id: u64, tenant: u64, pool: ContractId, k: u32) -> Request {
    Request {
        pool: Some(pool),
        ..gpus(id, tenant, Class::Reserved, k)
    }
}

pub(crate) fn tenant(n: u64) -> TenantId {
    tenant_id(n)
}
