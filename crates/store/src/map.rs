//! Light reads for drawing the fleet: one row per node with only what a map colours by.

use neocloud_types::{ContractId, NodeId, NodeState, SiteId, TenantId};
use sqlx::Row;

use crate::{Result, Store, enum_col, id_col, opt_id_col, u32_col};

/// One node as a topology map draws it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeCell {
    /// Node id.
    pub id: NodeId,
    /// Host name.
    pub name: String,
    /// Block names from the site down, `/`-separated (empty outside any block).
    pub block_path: String,
    /// Stored lifecycle state (`allocated` is derived by the service).
    pub state: NodeState,
    /// GPUs in the node.
    pub gpu_count: u32,
    /// The contract pool the node is pinned to, if any.
    pub pool: Option<ContractId>,
    /// The tenant of that contract.
    pub pool_tenant: Option<TenantId>,
}

impl Store {
    /// Every node of a site in topology order (block path, then name): five short columns
    /// per node, so the 27,500 nodes of a large site read in one quick query.
    pub async fn node_cells(&self, site: SiteId) -> Result<Vec<NodeCell>> {
        let rows = sqlx::query(
            "SELECT n.id, n.name, n.block_path, n.state, n.gpu_count, n.pool_contract_id,
                    c.tenant_id AS pool_tenant
             FROM nodes n LEFT JOIN contracts c ON c.id = n.pool_contract_id
             WHERE n.site_id = $1 ORDER BY n.block_path, n.name",
        )
        .bind(site.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(NodeCell {
                    id: id_col(r, "id")?,
                    name: r.try_get("name")?,
                    block_path: r.try_get("block_path")?,
                    state: enum_col(r, "state")?,
                    gpu_count: u32_col(r, "gpu_count")?,
                    pool: opt_id_col(r, "pool_contract_id")?,
                    pool_tenant: opt_id_col(r, "pool_tenant")?,
                })
            })
            .collect()
    }
}
