//! Planned maintenance windows.

use neocloud_types::{MaintenanceId, MaintenanceState, MaintenanceWindow, NodeId, Timestamp};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Result, Store, StoreError, WriteTx, enum_col, id_col, u32_col};

const COLS: &str = "id, reason, block, nodes, start_at, end_at, state, notified_instances, \
                    created_at, updated_at";

/// A maintenance window as stored: its view and the ids of its nodes.
#[derive(Clone, Debug)]
pub struct MaintenanceRow {
    /// What the API shows.
    pub window: MaintenanceWindow,
    /// Its nodes' ids, in the order of `window.nodes`.
    pub node_ids: Vec<NodeId>,
}

fn from_row(r: &AnyRow) -> Result<MaintenanceRow> {
    let nodes: String = r.try_get("nodes")?;
    let pairs: Vec<(String, String)> = serde_json::from_str(&nodes)
        .map_err(|e| StoreError::Corrupt(format!("maintenance nodes: {e}")))?;
    let mut node_ids = Vec::with_capacity(pairs.len());
    let mut names = Vec::with_capacity(pairs.len());
    for (id, name) in pairs {
        node_ids.push(
            id.parse()
                .map_err(|e: neocloud_types::IdParseError| StoreError::Corrupt(e.to_string()))?,
        );
        names.push(name);
    }
    Ok(MaintenanceRow {
        window: MaintenanceWindow {
            id: id_col(r, "id")?,
            reason: r.try_get("reason")?,
            block: r.try_get("block")?,
            nodes: names,
            start_at: Timestamp::from_micros(r.try_get("start_at")?),
            end_at: Timestamp::from_micros(r.try_get("end_at")?),
            state: enum_col(r, "state")?,
            notified_instances: u32_col(r, "notified_instances")?,
            created_at: Timestamp::from_micros(r.try_get("created_at")?),
            updated_at: Timestamp::from_micros(r.try_get("updated_at")?),
        },
        node_ids,
    })
}

impl Store {
    /// Records a new window.
    pub async fn maintenance_insert(tx: &mut WriteTx, m: &MaintenanceRow) -> Result<()> {
        let w = &m.window;
        let pairs: Vec<(String, &str)> = m
            .node_ids
            .iter()
            .zip(&w.nodes)
            .map(|(id, name)| (id.to_string(), name.as_str()))
            .collect();
        let nodes = serde_json::to_string(&pairs)
            .map_err(|e| StoreError::Corrupt(format!("maintenance nodes: {e}")))?;
        sqlx::query(&format!(
            "INSERT INTO maintenance_windows ({COLS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(w.id.to_string())
        .bind(&w.reason)
        .bind(w.block.clone())
        .bind(nodes)
        .bind(w.start_at.micros())
        .bind(w.end_at.micros())
        .bind(w.state.as_str())
        .bind(i64::from(w.notified_instances))
        .bind(w.created_at.micros())
        .bind(w.updated_at.micros())
        .execute(tx.conn())
        .await?;
        Ok(())
    }

    /// Moves a window to `to` if it is still in `from`; returns whether it moved.
    pub async fn maintenance_set_state(
        tx: &mut WriteTx,
        id: MaintenanceId,
        from: MaintenanceState,
        to: MaintenanceState,
        now: Timestamp,
    ) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE maintenance_windows SET state = $1, updated_at = $2 \
             WHERE id = $3 AND state = $4",
        )
        .bind(to.as_str())
        .bind(now.micros())
        .bind(id.to_string())
        .bind(from.as_str())
        .execute(tx.conn())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// One window.
    pub async fn maintenance_get(&self, id: &str) -> Result<MaintenanceRow> {
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM maintenance_windows WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => from_row(&r),
            None => Err(StoreError::NotFound {
                kind: "maintenance window",
                id: id.to_string(),
            }),
        }
    }

    /// Windows, newest start first; only those in `state` when given.
    pub async fn maintenance_list(
        &self,
        state: Option<MaintenanceState>,
    ) -> Result<Vec<MaintenanceRow>> {
        let rows = match state {
            Some(s) => {
                sqlx::query(&format!(
                    "SELECT {COLS} FROM maintenance_windows WHERE state = $1 \
                     ORDER BY start_at DESC, id"
                ))
                .bind(s.as_str())
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {COLS} FROM maintenance_windows ORDER BY start_at DESC, id"
                ))
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(from_row).collect()
    }
}
