//! Light reads for drawing the fleet: one row per node with only what a map needs, the
//! nodes out of the ordinary state, and who holds each contract.

use neocloud_types::{ContractId, NodeId, NodeState, SiteId, TenantId};
use sqlx::Row;

use crate::{Result, Store, enum_col, id_col, u32_col};

/// One node as a topology map draws it: the parts that change only with fleet imports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeCell {
    /// Node id.
    pub id: NodeId,
    /// Host name.
    pub name: String,
    /// Block names from the site down, `/`-separated (empty outside any block).
    pub block_path: String,
    /// GPU model.
    pub gpu_model: String,
    /// GPUs in the node.
    pub gpu_count: u32,
}

impl Store {
    /// Every node of a site in topology order (block path, then name): five short columns
    /// per node.
    pub async fn node_cells(&self, site: SiteId) -> Result<Vec<NodeCell>> {
        let rows = sqlx::query(
            "SELECT id, name, block_path, gpu_model, gpu_count FROM nodes
             WHERE site_id = $1 ORDER BY block_path, name",
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
                    gpu_model: r.try_get("gpu_model")?,
                    gpu_count: u32_col(r, "gpu_count")?,
                })
            })
            .collect()
    }

    /// The stored state of every node of a site that is not `available`: in a healthy
    /// fleet a short list, so a map need not read every node's state.
    pub async fn node_states_unusual(&self, site: SiteId) -> Result<Vec<(NodeId, NodeState)>> {
        let rows = sqlx::query("SELECT id, state FROM nodes WHERE site_id = $1 AND state <> $2")
            .bind(site.to_string())
            .bind(NodeState::Available.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((id_col(r, "id")?, enum_col(r, "state")?)))
            .collect()
    }

    /// The tenant of every contract.
    pub async fn contract_tenants(&self) -> Result<Vec<(ContractId, TenantId)>> {
        let rows = sqlx::query("SELECT id, tenant_id FROM contracts")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((id_col(r, "id")?, id_col(r, "tenant_id")?)))
            .collect()
    }
}
