//! What a tenant can launch where, and whether it would be placed now: the reads behind
//! catalogues of instance types (the Lambda-Cloud-compatible API's `/instance-types`).

use neocloud_store::NodeFilter;
use neocloud_types::{Class, InstanceId, Shape, SiteId};

use crate::auth::{self, Action, Principal};
use crate::error::Result;
use crate::{Service, scheduler};

/// One GPU model in one site, with the make of its nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteOffer {
    /// The site.
    pub site_id: SiteId,
    /// Its name.
    pub site: String,
    /// Its region label.
    pub region: String,
    /// The GPU model.
    pub gpu_model: String,
    /// GPUs of that model in the site.
    pub gpus: i64,
    /// GPUs in one node of that model there (the first node by name: a fleet file gives
    /// every node of a group the same make).
    pub node_gpus: u32,
    /// CPU cores of that node.
    pub node_cpu_cores: u32,
    /// Memory of that node, GiB.
    pub node_ram_gib: u32,
}

/// A launch asked about: this shape of this GPU model in this site, as on-demand work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacementAsk {
    /// The site.
    pub site_id: SiteId,
    /// The GPU model.
    pub gpu_model: String,
    /// The shape.
    pub shape: Shape,
}

impl Service {
    /// Every (site, GPU model) of the fleet with the make of its nodes, by site then model.
    pub async fn site_offers(&self, p: &Principal) -> Result<Vec<SiteOffer>> {
        auth::authorize(p, Action::ReadSites)?;
        let sites = self.sites(None).await?;
        let mut out = Vec::new();
        for s in &sites {
            for m in &s.gpus_by_model {
                if m.gpus <= 0 {
                    continue;
                }
                let filter = NodeFilter {
                    site: Some(s.id.to_string()),
                    gpu_model: Some(m.gpu_model.clone()),
                    ..Default::default()
                };
                let Some(node) = self.store.node_list(&filter, None, 1).await?.items.pop() else {
                    continue;
                };
                out.push(SiteOffer {
                    site_id: s.id,
                    site: s.name.clone(),
                    region: s.region.clone(),
                    gpu_model: m.gpu_model.clone(),
                    gpus: m.gpus,
                    node_gpus: node.gpu_count,
                    node_cpu_cores: node.cpu_cores,
                    node_ram_gib: node.ram_gib,
                });
            }
        }
        out.sort_by(|a, b| (&a.site, &a.gpu_model).cmp(&(&b.site, &b.gpu_model)));
        Ok(out)
    }

    /// For each ask, whether an on-demand launch of it by the caller's tenant would be
    /// placed now (see [`neocloud_scheduler::Scheduler::would_place`]); decides nothing.
    /// Quotas are not looked at: this is capacity, not permission. For an operator's key
    /// the answer is the one a tenant that holds nothing would get.
    pub async fn placeable_now(&self, p: &Principal, asks: &[PlacementAsk]) -> Result<Vec<bool>> {
        auth::authorize(p, Action::ReadSites)?;
        // An operator asks as a tenant of its own that holds nothing (a fresh id).
        let tenant = p.tenant_scope().unwrap_or_default();
        let now = self.now();
        let sched = scheduler::lock(&self.sched);
        Ok(asks
            .iter()
            .map(|a| {
                let req = neocloud_allocator::Request {
                    id: InstanceId::new(),
                    tenant,
                    class: Class::OnDemand,
                    gpu_model: a.gpu_model.clone(),
                    shape: a.shape,
                    site: Some(a.site_id),
                    pool: None,
                    cpu_milli: None,
                    memory_mib: None,
                };
                sched.would_place(&req, now)
            })
            .collect())
    }
}
