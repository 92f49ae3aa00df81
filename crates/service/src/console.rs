//! Reads shaped for the web console: the whole-site topology map and per-site GPU counts by
//! node state. Everything else the console shows comes from the same methods the API uses.

use std::collections::HashMap;

use neocloud_types::{NodeId, NodeState, Site, TenantId};

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
    /// Every node of a site with its state and the tenant it works for (operators only).
    pub async fn site_map(&self, p: &Principal, site: &str) -> Result<SiteMap> {
        auth::authorize(p, Action::ReadFleet)?;
        let site = self.store.site_get(site).await?;
        let rows = self.store.node_cells(site.id).await?;
        let sched = self.sched.lock().await;
        let mut held: HashMap<NodeId, (u32, TenantId)> = HashMap::new();
        for a in sched.alloc.allocations() {
            if a.site != site.id {
                continue;
            }
            for (node, gpus) in &a.gpus {
                let e = held.entry(*node).or_insert((0, a.tenant));
                e.0 += u32::try_from(gpus.len()).unwrap_or(u32::MAX);
            }
        }
        let cells = rows
            .into_iter()
            .map(|r| {
                let (held_gpus, holder) =
                    held.get(&r.id).map_or((0, None), |(g, t)| (*g, Some(*t)));
                MapCell {
                    state: allocated_view_state(&sched.alloc, r.id, r.state),
                    id: r.id,
                    name: r.name,
                    block_path: r.block_path,
                    gpus: r.gpu_count,
                    held_gpus,
                    tenant: holder.or(r.pool_tenant),
                }
            })
            .collect();
        Ok(SiteMap { site, cells })
    }

    /// GPUs by site, model and stored node state.
    pub async fn gpu_state_counts(&self, p: &Principal) -> Result<Vec<GpuStateCount>> {
        auth::authorize(p, Action::ReadCapacity)?;
        Ok(self
            .store
            .gpu_counts_by_state()
            .await?
            .into_iter()
            .map(|(site, gpu_model, state, gpus)| GpuStateCount {
                site,
                gpu_model,
                state,
                gpus,
            })
            .collect())
    }
}
