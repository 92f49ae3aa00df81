//! Node agents, the node lifecycle, the health history of GPUs, the XID policy overrides,
//! and outages of contracted capacity.

use neocloud_types::{
    ContractId, GpuHealth, GpuInventory, HealthEvent, HealthRuleRow, NodeId, NodeState, Outage,
    SiteId, Timestamp,
};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{
    Backend, DowntimeRow, Result, Store, StoreError, WriteTx, enum_col, id_col, opt_id_col, u32_col,
};

/// What the control plane remembers of a node that has an agent, loaded at start.
#[derive(Clone, Debug)]
pub struct AgentNode {
    /// Node id.
    pub id: NodeId,
    /// Node name.
    pub name: String,
    /// Site.
    pub site_id: SiteId,
    /// Lifecycle state.
    pub state: NodeState,
    /// Highest event sequence number stored.
    pub seq: u64,
    /// Last heartbeat as last flushed.
    pub last_heartbeat_at: Option<Timestamp>,
    /// The state an `unreachable` node returns to when its agent is heard from again.
    pub unreachable_from: Option<NodeState>,
    /// The reason the node had in that state.
    pub unreachable_from_reason: Option<String>,
    /// The burn-in the node waits for.
    pub burn_in_id: Option<String>,
    /// When the node last passed burn-in.
    pub burn_in_passed_at: Option<Timestamp>,
    /// The contract whose pool holds the node.
    pub pool: Option<ContractId>,
    /// GPU UUIDs by index (none where unknown).
    pub gpus: Vec<(u32, Option<String>, GpuHealth)>,
}

fn ts(r: &AnyRow, c: &str) -> Result<Option<Timestamp>> {
    Ok(r.try_get::<Option<i64>, _>(c)?.map(Timestamp::from_micros))
}

fn opt_u32(r: &AnyRow, c: &str) -> Result<Option<u32>> {
    r.try_get::<Option<i64>, _>(c)?
        .map(|v| u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{c}: {v}"))))
        .transpose()
}

fn health_event_from_row(r: &AnyRow) -> Result<HealthEvent> {
    Ok(HealthEvent {
        id: r.try_get("id")?,
        at: Timestamp::from_micros(r.try_get("at")?),
        node_id: id_col(r, "node_id")?,
        node: r
            .try_get::<Option<String>, _>("node_name")?
            .unwrap_or_default(),
        gpu_uuid: r.try_get("gpu_uuid")?,
        gpu_index: opt_u32(r, "gpu_index")?,
        kind: r.try_get("kind")?,
        code: opt_u32(r, "code")?,
        action: r.try_get("action")?,
        detail: r.try_get("detail")?,
    })
}

fn outage_from_row(r: &AnyRow) -> Result<Outage> {
    Ok(Outage {
        id: r.try_get("id")?,
        contract_id: id_col(r, "contract_id")?,
        node_id: id_col(r, "node_id")?,
        gpus: u32_col(r, "gpus")?,
        start_at: Timestamp::from_micros(r.try_get("start_at")?),
        end_at: ts(r, "end_at")?,
        reason: r.try_get("reason")?,
    })
}

/// A new id that sorts by time, with a prefix.
fn new_id(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        neocloud_types::EventId::new().uuid().simple()
    )
}

impl Store {
    /// Records an agent's registration: its description, and the inventory of each GPU. A
    /// UUID seen before in another slot (a GPU moved after repair) leaves that slot.
    pub async fn node_agent_register(
        tx: &mut WriteTx,
        node: NodeId,
        agent_json: &str,
        gpus: &[GpuInventory],
        now: Timestamp,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE nodes SET agent_json = $1, agent_registered_at = $2, last_heartbeat_at = $2,
                    updated_at = $2 WHERE id = $3",
        )
        .bind(agent_json)
        .bind(now.micros())
        .bind(node.to_string())
        .execute(tx.conn())
        .await?;
        for g in gpus {
            sqlx::query(
                "UPDATE gpus SET uuid = NULL WHERE uuid = $1 AND NOT (node_id = $2 AND idx = $3)",
            )
            .bind(&g.uuid)
            .bind(node.to_string())
            .bind(i64::from(g.index))
            .execute(tx.conn())
            .await?;
            sqlx::query(
                "UPDATE gpus SET uuid = $1, serial = $2, pci_bus_id = $3, product = $4
                 WHERE node_id = $5 AND idx = $6",
            )
            .bind(&g.uuid)
            .bind(g.serial.as_deref())
            .bind(&g.pci_bus_id)
            .bind(&g.name)
            .bind(node.to_string())
            .bind(i64::from(g.index))
            .execute(tx.conn())
            .await?;
        }
        Ok(())
    }

    /// Nodes that have an agent, with what the health monitor needs.
    pub async fn agent_nodes(&self) -> Result<Vec<AgentNode>> {
        self.agent_nodes_of(None).await
    }

    /// The agent records of these nodes (those that have an agent), as
    /// [`Store::agent_nodes`] gives them for every node. One query each for nodes and GPUs
    /// per 500 nodes.
    pub async fn agent_nodes_in(&self, nodes: &[NodeId]) -> Result<Vec<AgentNode>> {
        let mut out = Vec::new();
        for chunk in nodes.chunks(500) {
            out.extend(self.agent_nodes_of(Some(chunk)).await?);
        }
        Ok(out)
    }

    async fn agent_nodes_of(&self, only: Option<&[NodeId]>) -> Result<Vec<AgentNode>> {
        let numbered = self.backend == Backend::Postgres;
        let (of_node, of_gpu) = match only {
            Some(ids) => {
                let marks = crate::tenancy::placeholders(1, ids.len(), numbered);
                (
                    format!(" AND id IN {marks}"),
                    format!(" AND n.id IN {marks}"),
                )
            }
            None => (String::new(), String::new()),
        };
        let only: Vec<String> = only
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect();
        let sql = format!(
            "SELECT id, name, site_id, state, agent_seq, last_heartbeat_at, burn_in_id,
                    burn_in_passed_at, pool_contract_id, unreachable_from,
                    unreachable_from_reason
             FROM nodes WHERE agent_registered_at IS NOT NULL{of_node} ORDER BY id"
        );
        let mut q = sqlx::query(&sql);
        for id in &only {
            q = q.bind(id.clone());
        }
        let rows = q.fetch_all(&self.pool).await?;
        let sql = format!(
            "SELECT g.node_id, g.idx, g.uuid, g.health FROM gpus g
             JOIN nodes n ON n.id = g.node_id
             WHERE n.agent_registered_at IS NOT NULL{of_gpu} ORDER BY g.node_id, g.idx"
        );
        let mut q = sqlx::query(&sql);
        for id in only {
            q = q.bind(id);
        }
        let mut gpus: std::collections::HashMap<String, Vec<(u32, Option<String>, GpuHealth)>> =
            Default::default();
        for r in q.fetch_all(&self.pool).await? {
            gpus.entry(r.try_get("node_id")?).or_default().push((
                u32_col(&r, "idx")?,
                r.try_get("uuid")?,
                enum_col(&r, "health")?,
            ));
        }
        rows.iter()
            .map(|r| {
                let id: String = r.try_get("id")?;
                Ok(AgentNode {
                    id: id_col(r, "id")?,
                    name: r.try_get("name")?,
                    site_id: id_col(r, "site_id")?,
                    state: enum_col(r, "state")?,
                    seq: u64::try_from(r.try_get::<i64, _>("agent_seq")?).unwrap_or(0),
                    last_heartbeat_at: ts(r, "last_heartbeat_at")?,
                    unreachable_from: r
                        .try_get::<Option<String>, _>("unreachable_from")?
                        .map(|s| s.parse().map_err(StoreError::Corrupt))
                        .transpose()?,
                    unreachable_from_reason: r.try_get("unreachable_from_reason")?,
                    burn_in_id: r.try_get("burn_in_id")?,
                    burn_in_passed_at: ts(r, "burn_in_passed_at")?,
                    pool: opt_id_col(r, "pool_contract_id")?,
                    gpus: gpus.remove(&id).unwrap_or_default(),
                })
            })
            .collect()
    }

    /// Moves the stored event sequence of a node from `from` to `to`. Returns false (and
    /// changes nothing) when another request already moved it: the caller's events are
    /// duplicates.
    pub async fn node_advance_seq(
        tx: &mut WriteTx,
        node: NodeId,
        from: u64,
        to: u64,
    ) -> Result<bool> {
        let n = sqlx::query("UPDATE nodes SET agent_seq = $1 WHERE id = $2 AND agent_seq = $3")
            .bind(i64::try_from(to).unwrap_or(i64::MAX))
            .bind(node.to_string())
            .bind(i64::try_from(from).unwrap_or(i64::MAX))
            .execute(tx.conn())
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    /// Sets a node's lifecycle state and why.
    pub async fn node_set_state(
        tx: &mut WriteTx,
        node: NodeId,
        state: NodeState,
        reason: Option<&str>,
        now: Timestamp,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE nodes SET state = $1, state_reason = $2, state_since = $3, updated_at = $3
             WHERE id = $4",
        )
        .bind(state.as_str())
        .bind(reason)
        .bind(now.micros())
        .bind(node.to_string())
        .execute(tx.conn())
        .await?;
        Ok(())
    }

    /// Sets the state an `unreachable` node returns to when heard from again, and the
    /// reason it had in it (none to clear them).
    pub async fn node_set_unreachable_from(
        tx: &mut WriteTx,
        node: NodeId,
        from: Option<(NodeState, Option<&str>)>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE nodes SET unreachable_from = $1, unreachable_from_reason = $2 WHERE id = $3",
        )
        .bind(from.map(|(s, _)| s.as_str()))
        .bind(from.and_then(|(_, r)| r))
        .bind(node.to_string())
        .execute(tx.conn())
        .await?;
        Ok(())
    }

    /// Sets the burn-in a node waits for (none to clear), and when it last passed.
    pub async fn node_set_burn_in(
        tx: &mut WriteTx,
        node: NodeId,
        waiting_for: Option<&str>,
        passed_at: Option<Timestamp>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE nodes SET burn_in_id = $1,
                    burn_in_passed_at = COALESCE($2, burn_in_passed_at) WHERE id = $3",
        )
        .bind(waiting_for)
        .bind(passed_at.map(|t| t.micros()))
        .bind(node.to_string())
        .execute(tx.conn())
        .await?;
        Ok(())
    }

    /// Sets the health of GPUs of a node (all of them when `index` is none).
    pub async fn gpu_set_health(
        tx: &mut WriteTx,
        node: NodeId,
        index: Option<u32>,
        health: GpuHealth,
    ) -> Result<()> {
        sqlx::query("UPDATE gpus SET health = $1 WHERE node_id = $2 AND ($3 < 0 OR idx = $3)")
            .bind(health.as_str())
            .bind(node.to_string())
            .bind(index.map_or(-1, i64::from))
            .execute(tx.conn())
            .await?;
        Ok(())
    }

    /// Appends facts to the health history.
    pub async fn health_event_insert(tx: &mut WriteTx, events: &[HealthEvent]) -> Result<()> {
        for e in events {
            sqlx::query(
                "INSERT INTO health_events
                   (id, at, node_id, gpu_uuid, gpu_index, kind, code, action, detail)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(if e.id.is_empty() {
                new_id("he")
            } else {
                e.id.clone()
            })
            .bind(e.at.micros())
            .bind(e.node_id.to_string())
            .bind(e.gpu_uuid.as_deref())
            .bind(e.gpu_index.map(i64::from))
            .bind(&e.kind)
            .bind(e.code.map(i64::from))
            .bind(&e.action)
            .bind(&e.detail)
            .execute(tx.conn())
            .await?;
        }
        Ok(())
    }

    /// The health history of a node (newest first), or of one GPU by UUID across every node
    /// it has been in.
    pub async fn health_event_list(
        &self,
        node: Option<NodeId>,
        gpu_uuid: Option<&str>,
        limit: u32,
    ) -> Result<Vec<HealthEvent>> {
        let rows = sqlx::query(
            "SELECT h.id, h.at, h.node_id, n.name AS node_name, h.gpu_uuid, h.gpu_index, h.kind,
                    h.code, h.action, h.detail
             FROM health_events h LEFT JOIN nodes n ON n.id = h.node_id
             WHERE ($1 = '' OR h.node_id = $1) AND ($2 = '' OR h.gpu_uuid = $2)
             ORDER BY h.id DESC LIMIT $3",
        )
        .bind(node.map(|n| n.to_string()).unwrap_or_default())
        .bind(gpu_uuid.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(health_event_from_row).collect()
    }

    /// Writes the latest telemetry and heartbeat time of nodes: one statement per 64 nodes
    /// (an `UPDATE … FROM (VALUES …)`, which both databases take).
    pub async fn node_telemetry_flush(
        tx: &mut WriteTx,
        rows: &[(NodeId, Timestamp, String)],
    ) -> Result<()> {
        let numbered = tx.numbered;
        for chunk in rows.chunks(crate::tenancy::ROWS_PER_STATEMENT) {
            let sql = format!(
                "UPDATE nodes SET last_heartbeat_at = v.column2, telemetry_json = v.column3
                 FROM (VALUES {}) AS v WHERE nodes.id = v.column1",
                crate::tenancy::placeholders(chunk.len(), 3, numbered)
            );
            let mut q = sqlx::query(&sql);
            for (node, at, json) in chunk {
                q = q.bind(node.to_string()).bind(at.micros()).bind(json);
            }
            q.execute(tx.conn()).await?;
        }
        Ok(())
    }

    /// Records when replicas that do not lead last heard from these nodes' agents (a later
    /// time only ever replaces an earlier one). One statement per 500 nodes.
    pub async fn agent_seen_put(tx: &mut WriteTx, rows: &[(NodeId, Timestamp)]) -> Result<()> {
        let numbered = tx.numbered;
        for chunk in rows.chunks(500) {
            let sql = format!(
                "INSERT INTO agent_seen (node_id, seen_at) VALUES {}
                 ON CONFLICT (node_id) DO UPDATE SET seen_at = excluded.seen_at
                 WHERE excluded.seen_at > agent_seen.seen_at",
                crate::tenancy::placeholders(chunk.len(), 2, numbered)
            );
            let mut q = sqlx::query(&sql);
            for (node, at) in chunk {
                q = q.bind(node.to_string()).bind(at.micros());
            }
            q.execute(tx.conn()).await?;
        }
        Ok(())
    }

    /// When replicas that do not lead last heard from these nodes' agents, for those heard
    /// from at all. One query per 500 nodes.
    pub async fn agent_seen_get(&self, nodes: &[NodeId]) -> Result<Vec<(NodeId, Timestamp)>> {
        let numbered = self.backend == Backend::Postgres;
        let mut out = Vec::new();
        for chunk in nodes.chunks(500) {
            let sql = format!(
                "SELECT node_id, seen_at FROM agent_seen WHERE node_id IN {}",
                crate::tenancy::placeholders(1, chunk.len(), numbered)
            );
            let mut q = sqlx::query(&sql);
            for node in chunk {
                q = q.bind(node.to_string());
            }
            for r in q.fetch_all(&self.pool).await? {
                out.push((
                    id_col(&r, "node_id")?,
                    Timestamp::from_micros(r.try_get::<i64, _>("seen_at")?),
                ));
            }
        }
        Ok(out)
    }

    /// The telemetry last flushed for a node (JSON array of samples).
    pub async fn node_telemetry(&self, node: NodeId) -> Result<Option<String>> {
        let row = sqlx::query("SELECT telemetry_json FROM nodes WHERE id = $1")
            .bind(node.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => r.try_get("telemetry_json")?,
            None => None,
        })
    }

    /// Operator overrides of the XID policy.
    pub async fn health_rule_list(&self) -> Result<Vec<HealthRuleRow>> {
        let rows =
            sqlx::query("SELECT code, action, note, updated_at FROM health_rules ORDER BY code")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(HealthRuleRow {
                    code: u32_col(r, "code")?,
                    action: r.try_get("action")?,
                    note: r.try_get("note")?,
                    updated_at: Timestamp::from_micros(r.try_get("updated_at")?),
                })
            })
            .collect()
    }

    /// Sets (or, with `action` none, removes) the override for one XID code.
    pub async fn health_rule_put(
        tx: &mut WriteTx,
        code: u32,
        action: Option<&str>,
        note: &str,
        now: Timestamp,
    ) -> Result<()> {
        match action {
            Some(a) => {
                sqlx::query(
                    "INSERT INTO health_rules (code, action, note, updated_at) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (code) DO UPDATE SET action = excluded.action,
                         note = excluded.note, updated_at = excluded.updated_at",
                )
                .bind(i64::from(code))
                .bind(a)
                .bind(note)
                .bind(now.micros())
                .execute(tx.conn())
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM health_rules WHERE code = $1")
                    .bind(i64::from(code))
                    .execute(tx.conn())
                    .await?;
            }
        }
        Ok(())
    }

    /// Opens an outage of a contract's capacity.
    pub async fn outage_open(
        tx: &mut WriteTx,
        contract: ContractId,
        node: NodeId,
        gpus: u32,
        start_at: Timestamp,
        reason: &str,
    ) -> Result<String> {
        let id = new_id("out");
        sqlx::query(
            "INSERT INTO outages (id, contract_id, node_id, gpus, start_at, end_at, reason)
             VALUES ($1, $2, $3, $4, $5, NULL, $6)",
        )
        .bind(&id)
        .bind(contract.to_string())
        .bind(node.to_string())
        .bind(i64::from(gpus))
        .bind(start_at.micros())
        .bind(reason)
        .execute(tx.conn())
        .await?;
        Ok(id)
    }

    /// Closes the contract's oldest open outage at `end_at` and records it as downtime (the
    /// input of SLA credits). Returns the closed outage, if one was open.
    pub async fn outage_close_one(
        tx: &mut WriteTx,
        contract: ContractId,
        end_at: Timestamp,
        how: &str,
    ) -> Result<Option<Outage>> {
        let row = sqlx::query(
            "SELECT id, contract_id, node_id, gpus, start_at, end_at, reason FROM outages
             WHERE contract_id = $1 AND end_at IS NULL ORDER BY start_at, id LIMIT 1",
        )
        .bind(contract.to_string())
        .fetch_optional(tx.conn())
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut o = outage_from_row(&row)?;
        let end = end_at.max(o.start_at);
        o.end_at = Some(end);
        sqlx::query("UPDATE outages SET end_at = $1 WHERE id = $2")
            .bind(end.micros())
            .bind(&o.id)
            .execute(tx.conn())
            .await?;
        if end > o.start_at {
            Store::downtime_insert(
                tx,
                &DowntimeRow {
                    contract_id: contract,
                    start_at: o.start_at,
                    end_at: end,
                    gpus: o.gpus,
                },
                &format!("{}; {how}", o.reason),
            )
            .await?;
        }
        Ok(Some(o))
    }

    /// Outages of a contract, newest first.
    pub async fn outage_list(&self, contract: ContractId) -> Result<Vec<Outage>> {
        let rows = sqlx::query(
            "SELECT id, contract_id, node_id, gpus, start_at, end_at, reason FROM outages
             WHERE contract_id = $1 ORDER BY start_at DESC, id DESC",
        )
        .bind(contract.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(outage_from_row).collect()
    }

    /// Contracts with open outages.
    pub async fn outage_open_contracts(&self) -> Result<Vec<ContractId>> {
        let rows = sqlx::query("SELECT DISTINCT contract_id FROM outages WHERE end_at IS NULL")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| id_col(r, "contract_id")).collect()
    }

    /// Instances that hold GPUs on a node.
    pub async fn instances_on_node(&self, node: NodeId) -> Result<Vec<neocloud_types::InstanceId>> {
        let rows = sqlx::query(
            "SELECT DISTINCT holder FROM gpus WHERE node_id = $1 AND holder IS NOT NULL
             UNION SELECT instance_id AS holder FROM instance_slices WHERE node_id = $2
             UNION SELECT holder FROM node_holds WHERE node_id = $3",
        )
        .bind(node.to_string())
        .bind(node.to_string())
        .bind(node.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| id_col(r, "holder")).collect()
    }

    /// Revokes every live key bound to a node (a re-enrolled agent gets a new one); returns
    /// the revoked keys' prefixes.
    pub async fn api_key_revoke_for_node(
        tx: &mut WriteTx,
        node: NodeId,
        at: Timestamp,
    ) -> Result<Vec<String>> {
        let rows =
            sqlx::query("SELECT prefix FROM api_keys WHERE node_id = $1 AND revoked_at IS NULL")
                .bind(node.to_string())
                .fetch_all(tx.conn())
                .await?;
        let prefixes = rows
            .iter()
            .map(|r| r.try_get::<String, _>("prefix"))
            .collect::<Result<Vec<_>, _>>()?;
        if !prefixes.is_empty() {
            sqlx::query(
                "UPDATE api_keys SET revoked_at = $1 WHERE node_id = $2 AND revoked_at IS NULL",
            )
            .bind(at.micros())
            .bind(node.to_string())
            .execute(tx.conn())
            .await?;
        }
        Ok(prefixes)
    }

    /// The contract whose pool holds a node, if any.
    pub async fn node_pool(&self, node: NodeId) -> Result<Option<ContractId>> {
        let row = sqlx::query("SELECT pool_contract_id FROM nodes WHERE id = $1")
            .bind(node.to_string())
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => opt_id_col(&r, "pool_contract_id"),
            None => Ok(None),
        }
    }

    /// Nodes in a state, by id.
    pub async fn nodes_in_state(&self, state: NodeState) -> Result<Vec<NodeId>> {
        let rows = sqlx::query("SELECT id FROM nodes WHERE state = $1 ORDER BY id")
            .bind(state.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| id_col(r, "id")).collect()
    }

    /// The highest event sequence number stored for a node.
    pub async fn agent_nodes_seq(&self, node: NodeId) -> Result<u64> {
        let row = sqlx::query("SELECT agent_seq FROM nodes WHERE id = $1")
            .bind(node.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => u64::try_from(r.try_get::<i64, _>("agent_seq")?).unwrap_or(0),
            None => 0,
        })
    }

    /// The burn-in a node waits for, if any.
    pub async fn node_burn_in(&self, node: NodeId) -> Result<Option<String>> {
        let row = sqlx::query("SELECT burn_in_id FROM nodes WHERE id = $1")
            .bind(node.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => r.try_get("burn_in_id")?,
            None => None,
        })
    }

    /// Where a GPU is now, by UUID: node name, index, health.
    pub async fn gpu_by_uuid(&self, uuid: &str) -> Result<Option<(String, u32, GpuHealth)>> {
        let row = sqlx::query(
            "SELECT n.name, g.idx, g.health FROM gpus g JOIN nodes n ON n.id = g.node_id
             WHERE g.uuid = $1",
        )
        .bind(uuid)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => Ok(Some((
                r.try_get("name")?,
                u32_col(&r, "idx")?,
                enum_col(&r, "health")?,
            ))),
            None => Ok(None),
        }
    }
}
