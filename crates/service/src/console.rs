//! Reads shaped for the web console: the whole-site topology map and per-site GPU counts by
//! node state. Everything else the console shows comes from the same methods the API uses.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use neocloud_store::NodeCell;

use neocloud_types::{ContractId, Instance, Node, NodeId, NodeState, Site, SiteId, TenantId};

use crate::auth::{self, Action, Principal};
use crate::error::Result;
use crate::{Service, allocated_view_state};

/// One node of a site's topology map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapCell {
    /// Node id.
    pub id: NodeId,
    /// Host name.
    pub name: String,
    /// Block names from the site down, `/`-separated.
    pub block_path: String,
    /// Lifecycle state, `allocated` derived as in node reads.
    pub state: NodeState,
    /// GPUs in the node.
    pub gpus: u32,
    /// GPUs held by instances now.
    pub held_gpus: u32,
    /// Who the node works for: the tenant of the first instance on it, else the tenant of
    /// the contract pool it is pinned to.
    pub tenant: Option<TenantId>,
}

/// The nodes of an instance in one block: [`Service::placement_blocks`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacementBlock {
    /// The block's path from the site down (empty outside any block).
    pub block_path: String,
    /// The instance's nodes in it.
    pub nodes: u32,
    /// Those of them not in service, with their state.
    pub out_of_service: Vec<(String, NodeState)>,
}

/// A contract with its pool and work: [`Service::contract_work`].
#[derive(Clone, Debug)]
pub struct ContractWork {
    /// The contract.
    pub contract: neocloud_types::Contract,
    /// Nodes pinned to its pool now.
    pub pool_nodes: usize,
    /// Their GPUs.
    pub pool_gpus: u64,
    /// Live instances running under it.
    pub instances: Vec<Instance>,
}

/// Nodes needing attention: [`Service::problem_nodes`].
#[derive(Clone, Debug)]
pub struct ProblemNodes {
    /// Per site and state, how many nodes are in it.
    pub counts: Vec<(String, NodeState, u64)>,
    /// The nodes (at most the limit per site and state), by site, block and name.
    pub nodes: Vec<Node>,
}

/// A site's nodes in topology order, with what a map colours by.
#[derive(Clone, Debug)]
pub struct SiteMap {
    /// The site.
    pub site: Site,
    /// Every node, ordered by block path then name.
    pub cells: Vec<MapCell>,
}

/// GPUs of one site and model in one node state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuStateCount {
    /// Site name.
    pub site: String,
    /// GPU model.
    pub gpu_model: String,
    /// Stored node state.
    pub state: String,
    /// GPUs.
    pub gpus: i64,
}

impl Service {
    /// A site's nodes in topology order (cached with the scheduler) and the stored state of
    /// those not `available`.
    async fn site_cells(
        &self,
        site: SiteId,
    ) -> Result<(Arc<Vec<NodeCell>>, HashMap<NodeId, NodeState>)> {
        let cached = self
            .map_cells
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&site)
            .cloned();
        let layout = match cached {
            Some(c) => c,
            None => {
                let cells = Arc::new(self.store.node_cells(site).await?);
                self.map_cells
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(site, cells.clone());
                cells
            }
        };
        let unusual = self
            .store
            .node_states_unusual(site)
            .await?
            .into_iter()
            .collect();
        Ok((layout, unusual))
    }

    /// Every node of a site with its state and the tenant it works for (operators only).
    ///
    /// The layout part of the nodes (names, blocks) changes only with fleet imports, so it is
    /// read once per site and kept with the scheduler (a fleet import rebuilds the scheduler
    /// and drops it). Each map then reads only the nodes out of the `available` state and the
    /// contracts' tenants; holders and pools come from the allocator in memory.
    pub async fn site_map(&self, p: &Principal, site: &str) -> Result<SiteMap> {
        auth::authorize(p, Action::ReadFleet)?;
        let site = self.sites(Some(site)).await?.remove(0);
        let (layout, unusual) = self.site_cells(site.id).await?;
        let owners: HashMap<ContractId, TenantId> =
            self.store.contract_tenants().await?.into_iter().collect();
        let sched = crate::scheduler::lock(&self.sched);
        let mut held: HashMap<NodeId, (u32, TenantId)> = HashMap::new();
        for a in sched.alloc().allocations() {
            if a.site != site.id {
                continue;
            }
            for (node, gpus) in &a.gpus {
                let e = held.entry(*node).or_insert((0, a.tenant));
                e.0 += u32::try_from(gpus.len()).unwrap_or(u32::MAX);
            }
        }
        let cells = layout
            .iter()
            .map(|r| {
                let (held_gpus, holder) =
                    held.get(&r.id).map_or((0, None), |(g, t)| (*g, Some(*t)));
                let stored = unusual.get(&r.id).copied().unwrap_or(NodeState::Available);
                let pool_tenant = sched
                    .alloc()
                    .node_pool(r.id)
                    .and_then(|c| owners.get(&c).copied());
                MapCell {
                    state: allocated_view_state(sched.alloc(), r.id, stored),
                    id: r.id,
                    name: r.name.clone(),
                    block_path: r.block_path.clone(),
                    gpus: r.gpu_count,
                    held_gpus,
                    tenant: holder.or(pool_tenant),
                }
            })
            .collect();
        Ok(SiteMap { site, cells })
    }

    /// GPUs by site, model and stored node state, from the same cached layout as the map
    /// (a grouped scan of every node costs about 35 ms on the full demo; this, a few).
    pub async fn gpu_state_counts(&self, p: &Principal) -> Result<Vec<GpuStateCount>> {
        auth::authorize(p, Action::ReadCapacity)?;
        self.gpu_counts().await
    }

    /// The live instances holding part of a node, as the scheduler has them (operators).
    pub async fn node_instances(&self, p: &Principal, node: NodeId) -> Result<Vec<Instance>> {
        auth::authorize(p, Action::ReadFleet)?;
        auth::authorize(p, Action::ReadInstances)?;
        let sched = crate::scheduler::lock(&self.sched);
        let mut out: Vec<Instance> = sched
            .alloc()
            .node_holders(node)
            .into_iter()
            .filter_map(|id| sched.instance(id).cloned())
            .collect();
        out.sort_by_key(|i| i.id);
        Ok(out)
    }

    /// An instance's nodes grouped by the block they sit in (leaf group, else the deepest
    /// block), largest group first; each group's nodes that are out of service (failed,
    /// unreachable, in maintenance, …) are named. For pages of large gangs.
    pub async fn placement_blocks(
        &self,
        p: &Principal,
        inst: &Instance,
    ) -> Result<Vec<PlacementBlock>> {
        auth::authorize(p, Action::ReadInstances)?;
        let Some(site) = inst.site_id else {
            return Ok(Vec::new());
        };
        let (layout, unusual) = self.site_cells(site).await?;
        let mine: std::collections::HashSet<NodeId> =
            inst.placement.iter().map(|pl| pl.node_id).collect();
        let mut by: BTreeMap<String, PlacementBlock> = BTreeMap::new();
        for c in layout.iter().filter(|c| mine.contains(&c.id)) {
            let b = by
                .entry(c.block_path.clone())
                .or_insert_with(|| PlacementBlock {
                    block_path: c.block_path.clone(),
                    nodes: 0,
                    out_of_service: Vec::new(),
                });
            b.nodes += 1;
            if let Some(st) = unusual.get(&c.id)
                && *st != NodeState::Available
            {
                b.out_of_service.push((c.name.clone(), *st));
            }
        }
        let mut out: Vec<PlacementBlock> = by.into_values().collect();
        out.sort_by(|a, b| {
            (b.out_of_service.len(), b.nodes, &a.block_path).cmp(&(
                a.out_of_service.len(),
                a.nodes,
                &b.block_path,
            ))
        });
        Ok(out)
    }

    /// A contract (as [`Service::contract_get`] shows it to the caller) with its pool as the
    /// scheduler has it: the nodes pinned to it now, and the live instances running under
    /// it.
    pub async fn contract_work(&self, p: &Principal, id: &str) -> Result<ContractWork> {
        let contract = self.contract_get(p, id).await?;
        auth::authorize(p, Action::ReadInstances)?;
        let (pool, mut instances) = {
            let sched = crate::scheduler::lock(&self.sched);
            let pool: std::collections::HashSet<NodeId> =
                sched.pool_nodes(contract.id).into_iter().collect();
            let instances: Vec<Instance> = sched
                .live()
                .filter(|i| i.contract_id == Some(contract.id))
                .cloned()
                .collect();
            (pool, instances)
        };
        instances.sort_by_key(|i| i.id);
        let (layout, _) = self.site_cells(contract.site_id).await?;
        let pool_gpus = layout
            .iter()
            .filter(|c| pool.contains(&c.id))
            .map(|c| u64::from(c.gpu_count))
            .sum();
        Ok(ContractWork {
            contract,
            pool_nodes: pool.len(),
            pool_gpus,
            instances,
        })
    }

    /// Per site and stored state other than `available`: how many nodes are in it
    /// (operators; from the map's cached layout, a few milliseconds on the full demo).
    pub async fn problem_counts(&self, p: &Principal) -> Result<Vec<(String, NodeState, u64)>> {
        auth::authorize(p, Action::ReadFleet)?;
        let mut counts = Vec::new();
        for s in self.sites(None).await? {
            let (_, unusual) = self.site_cells(s.id).await?;
            let mut by: BTreeMap<NodeState, u64> = BTreeMap::new();
            for st in unusual.values() {
                *by.entry(*st).or_default() += 1;
            }
            counts.extend(by.into_iter().map(|(st, n)| (s.name.clone(), st, n)));
        }
        Ok(counts)
    }

    /// Every node out of service or needing attention (not `available`/`allocated`), by
    /// site then block and name, at most `limit` of each state; with the count of each
    /// state per site. Operators.
    pub async fn problem_nodes(
        &self,
        p: &Principal,
        site: Option<&str>,
        state: Option<NodeState>,
        limit: u32,
    ) -> Result<ProblemNodes> {
        auth::authorize(p, Action::ReadFleet)?;
        let mut counts = Vec::new();
        let mut nodes = Vec::new();
        for s in self.sites(site).await? {
            let (_, unusual) = self.site_cells(s.id).await?;
            let mut by: BTreeMap<NodeState, u64> = BTreeMap::new();
            for st in unusual.values() {
                *by.entry(*st).or_default() += 1;
            }
            for (st, n) in by {
                counts.push((s.name.clone(), st, n));
                if state.is_some_and(|x| x != st) {
                    continue;
                }
                let filter = neocloud_store::NodeFilter {
                    site: Some(s.id.to_string()),
                    state: Some(st),
                    ..Default::default()
                };
                let page = self
                    .store
                    .node_list(&filter, None, crate::page_limit(Some(limit))?)
                    .await?;
                nodes.extend(page.items);
            }
        }
        let sched = crate::scheduler::lock(&self.sched);
        for n in &mut nodes {
            crate::allocated_view(sched.alloc(), n);
        }
        drop(sched);
        nodes.sort_by(|a, b| {
            (&a.site, &a.block_path, &a.name).cmp(&(&b.site, &b.block_path, &b.name))
        });
        Ok(ProblemNodes { counts, nodes })
    }

    /// Per site: its nodes expected to heartbeat (not provisioning, failed or in
    /// maintenance) and how many of them have an agent heard from within two intervals.
    pub async fn agent_coverage_of(&self, p: &Principal) -> Result<Vec<(String, u64, u64)>> {
        auth::authorize(p, Action::ReadFleet)?;
        self.agent_coverage().await
    }

    /// [`Service::agent_coverage_of`] without the caller's check (`/metrics`).
    pub(crate) async fn agent_coverage(&self) -> Result<Vec<(String, u64, u64)>> {
        let fresh = self.fresh_agents();
        let mut out = Vec::new();
        for site in self.sites(None).await? {
            let (layout, unusual) = self.site_cells(site.id).await?;
            let (mut expected, mut heard) = (0u64, 0u64);
            for c in layout.iter() {
                let state = unusual.get(&c.id).copied().unwrap_or(NodeState::Available);
                if matches!(
                    state,
                    NodeState::Provisioning | NodeState::Failed | NodeState::Maintenance
                ) {
                    continue;
                }
                expected += 1;
                heard += u64::from(fresh.contains(&c.id));
            }
            out.push((site.name, expected, heard));
        }
        Ok(out)
    }

    /// GPUs by site, model and stored node state (for the console and `/metrics`).
    pub(crate) async fn gpu_counts(&self) -> Result<Vec<GpuStateCount>> {
        let mut counts: BTreeMap<(String, String, NodeState), i64> = BTreeMap::new();
        for site in self.sites(None).await? {
            let (layout, unusual) = self.site_cells(site.id).await?;
            for c in layout.iter() {
                let state = unusual.get(&c.id).copied().unwrap_or(NodeState::Available);
                *counts
                    .entry((site.name.clone(), c.gpu_model.clone(), state))
                    .or_default() += i64::from(c.gpu_count);
            }
        }
        Ok(counts
            .into_iter()
            .map(|((site, gpu_model, state), gpus)| GpuStateCount {
                site,
                gpu_model,
                state: state.to_string(),
                gpus,
            })
            .collect())
    }
}
