//! Planned maintenance windows: an operator announces that nodes (a list, or a whole block)
//! go out of service from `start_at` to `end_at`.
//!
//! - **Announced**: the nodes are cordoned at once (no new work lands there), gangs that can
//!   move off do, and everything else running there gets a notice that it stops when the
//!   window begins; every tenant concerned gets a `maintenance.scheduled` event.
//! - **Begins** (`start_at`): the nodes go to `maintenance`; work still there is handled
//!   (gangs by their `on_node_failure` policy, the rest preempted); contract pools get spares.
//! - **Ends** (`end_at`): each node goes to `burn_in` when it has an agent to run the check
//!   (and returns to service when it passes), straight to `available` otherwise.
//! - **Called off** before it begins: its nodes are uncordoned and its notices withdrawn.
//!
//! The periodic health work moves windows along ([`Service::maintenance_tick`]).

use std::collections::BTreeSet;

use neocloud_store::{MaintenanceRow, NodeFilter, Store};
use neocloud_types::{
    MaintenanceId, MaintenanceState, MaintenanceWindow, NodeId, NodeState, Timestamp,
};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::auth::{self, Action, Principal};
use crate::error::{Error, ErrorCode, Result};
use crate::health::{check_text, field, new_burn_in_id};
use crate::writer::extra;
use crate::{Created, Idempotency, Service};

/// Most nodes one window may cover.
pub const MAX_MAINTENANCE_NODES: usize = 10_000;
/// Longest window, seconds (30 days).
const MAX_WINDOW_SECS: i64 = 30 * 86_400;
/// Furthest ahead a window may be announced, seconds (a year).
const MAX_LEAD_SECS: i64 = 366 * 86_400;
/// How far in the past `start_at` may be (clock skew); such a window begins at once.
const SKEW_SECS: i64 = 300;

/// Body of `POST /v1/maintenance`: give `nodes`, or `block` (with `site` unless the block is
/// given by id).
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleMaintenance {
    /// Nodes by id or name, 1-10,000.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// A block (id, name or path, e.g. `pod-03/leaf-07`): every node inside it.
    #[serde(default)]
    pub block: Option<String>,
    /// The block's site (id or name); needed with a block name or path.
    #[serde(default)]
    pub site: Option<String>,
    /// When it begins (RFC 3339). Now or later; work that must stop stops then.
    pub start_at: Timestamp,
    /// When it ends: after `start_at`, at most 30 days later.
    pub end_at: Timestamp,
    /// Why, shown to tenants in their notices (1-500 characters).
    pub reason: String,
}

fn tag(id: MaintenanceId) -> String {
    format!("maintenance {id}")
}

impl Service {
    /// Announces a maintenance window (operator): see the module documentation.
    pub async fn maintenance_schedule(
        &self,
        p: &Principal,
        idem: Option<&Idempotency>,
        req: ScheduleMaintenance,
    ) -> Result<Created<MaintenanceWindow>> {
        auth::authorize(p, Action::WriteFleet)?;
        if let Some(c) = self.idem_replay(p, idem).await? {
            return Ok(c);
        }
        let now = self.now();
        let reason = req.reason.trim().to_string();
        if reason.is_empty() {
            return Err(field("reason", "must not be empty"));
        }
        check_text("reason", &reason, 500)?;
        if req.start_at.micros() < now.plus_seconds(-SKEW_SECS).micros() {
            return Err(field(
                "start_at",
                format!("is in the past (now is {now}); a window starts now or later"),
            ));
        }
        if req.start_at.micros() > now.plus_seconds(MAX_LEAD_SECS).micros() {
            return Err(field("start_at", "is more than a year ahead"));
        }
        if req.end_at.micros() <= req.start_at.micros() {
            return Err(field("end_at", "must be after start_at"));
        }
        if req.end_at.micros() > req.start_at.plus_seconds(MAX_WINDOW_SECS).micros() {
            return Err(field("end_at", "a window lasts at most 30 days"));
        }
        let nodes = self.maintenance_nodes(&req).await?;
        // A node is in one announced or running window at a time.
        let mine: BTreeSet<NodeId> = nodes.iter().map(|(id, _)| *id).collect();
        for state in [MaintenanceState::Scheduled, MaintenanceState::InProgress] {
            for w in self.store.maintenance_list(Some(state)).await? {
                if let Some((i, _)) = w
                    .node_ids
                    .iter()
                    .enumerate()
                    .find(|(_, n)| mine.contains(n))
                {
                    return Err(Error::new(
                        ErrorCode::Conflict,
                        format!(
                            "node '{}' is already in maintenance window {} ({})",
                            w.window.nodes.get(i).cloned().unwrap_or_default(),
                            w.window.id,
                            w.window.state
                        ),
                    ));
                }
            }
        }
        let id = MaintenanceId::new();
        let tag = tag(id);
        // No new work from now on.
        let cordon = format!("{tag} from {} to {}: {reason}", req.start_at, req.end_at);
        for (node, _) in &nodes {
            self.move_node(
                *node,
                |s, _| {
                    matches!(
                        s,
                        NodeState::Available | NodeState::Allocated | NodeState::BurnIn
                    )
                },
                NodeState::Cordoned,
                cordon.clone(),
                Some(None),
            )
            .await?;
        }
        let mut window = MaintenanceWindow {
            id,
            reason: reason.clone(),
            block: req.block.clone(),
            nodes: nodes.iter().map(|(_, n)| n.clone()).collect(),
            start_at: req.start_at,
            end_at: req.end_at,
            state: MaintenanceState::Scheduled,
            notified_instances: 0,
            created_at: now,
            updated_at: now,
        };
        let cmd = neocloud_scheduler::Command::Maintain {
            window: id,
            nodes: nodes.iter().map(|(n, _)| *n).collect(),
            start_at: req.start_at,
            reason: reason.clone(),
        };
        let row = window.clone();
        let node_ids: Vec<NodeId> = nodes.iter().map(|(n, _)| *n).collect();
        let actor = p.key_id;
        let idem = idem.cloned();
        let p2 = p.clone();
        let effects = self
            .decide(cmd, now, Some(actor), move |_, fx| {
                let notified = fx
                    .iter()
                    .filter(|e| {
                        matches!(e, neocloud_scheduler::Effect::Event(ev)
                            if ev.action == "maintenance.scheduled")
                    })
                    .count();
                let mut row = row;
                row.notified_instances = u32::try_from(notified).unwrap_or(u32::MAX);
                Ok(Some(extra(move |_, tx| {
                    Box::pin(async move {
                        Store::maintenance_insert(
                            tx,
                            &MaintenanceRow {
                                window: row.clone(),
                                node_ids,
                            },
                        )
                        .await?;
                        Store::event_insert(
                            tx,
                            neocloud_store::NewEvent {
                                actor: Some(actor),
                                tenant_id: None,
                                action: "maintenance.scheduled",
                                resource_kind: "maintenance",
                                resource_id: row.id.to_string(),
                                before: None,
                                after: serde_json::to_value(&row).ok(),
                            },
                        )
                        .await?;
                        Service::idem_store(tx, &p2, idem.as_ref(), &row).await?;
                        Ok(())
                    })
                })))
            })
            .await?;
        window.notified_instances = u32::try_from(
            effects
                .iter()
                .filter(|e| {
                    matches!(e, neocloud_scheduler::Effect::Event(ev)
                        if ev.action == "maintenance.scheduled")
                })
                .count(),
        )
        .unwrap_or(u32::MAX);
        Ok(Created {
            value: window,
            replayed: false,
        })
    }

    /// The nodes a request names, by id and name, each once.
    async fn maintenance_nodes(&self, req: &ScheduleMaintenance) -> Result<Vec<(NodeId, String)>> {
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        match (&req.block, req.nodes.is_empty()) {
            (Some(_), false) => {
                return Err(field("nodes", "give nodes or a block, not both"));
            }
            (None, true) => return Err(field("nodes", "give nodes or a block")),
            (None, false) => {
                if req.nodes.len() > MAX_MAINTENANCE_NODES {
                    return Err(field(
                        "nodes",
                        format!("at most {MAX_MAINTENANCE_NODES} nodes per window"),
                    ));
                }
                for (i, name) in req.nodes.iter().enumerate() {
                    check_text(&format!("nodes[{i}]"), name, 200)?;
                    let n = match self.store.node_get(name).await {
                        Ok(n) => n,
                        Err(neocloud_store::StoreError::NotFound { .. }) => {
                            return Err(field(&format!("nodes[{i}]"), format!("no node '{name}'")));
                        }
                        Err(e) => return Err(e.into()),
                    };
                    if seen.insert(n.id) {
                        out.push((n.id, n.name));
                    }
                }
            }
            (Some(block), true) => {
                check_text("block", block, 500)?;
                let filter = NodeFilter {
                    site: req.site.clone(),
                    block: Some(block.clone()),
                    ..NodeFilter::default()
                };
                let mut cursor: Option<String> = None;
                loop {
                    let page = match self.store.node_list(&filter, cursor.as_deref(), 1000).await {
                        Ok(p) => p,
                        Err(neocloud_store::StoreError::NotFound { kind, id }) => {
                            return Err(field("block", format!("no {kind} '{id}'")));
                        }
                        Err(e) => return Err(e.into()),
                    };
                    for n in page.items {
                        if seen.insert(n.id) {
                            out.push((n.id, n.name));
                        }
                    }
                    if out.len() > MAX_MAINTENANCE_NODES {
                        return Err(field(
                            "block",
                            format!("holds more than {MAX_MAINTENANCE_NODES} nodes"),
                        ));
                    }
                    match page.next_cursor {
                        Some(c) => cursor = Some(c),
                        None => break,
                    }
                }
                if out.is_empty() {
                    return Err(field("block", "holds no nodes"));
                }
            }
        }
        Ok(out)
    }

    /// Windows, newest start first (operator).
    pub async fn maintenance_list(
        &self,
        p: &Principal,
        state: Option<MaintenanceState>,
    ) -> Result<Vec<MaintenanceWindow>> {
        auth::authorize(p, Action::ReadFleet)?;
        Ok(self
            .store
            .maintenance_list(state)
            .await?
            .into_iter()
            .map(|r| r.window)
            .collect())
    }

    /// One window (operator).
    pub async fn maintenance_get(&self, p: &Principal, id: &str) -> Result<MaintenanceWindow> {
        auth::authorize(p, Action::ReadFleet)?;
        Ok(self.store.maintenance_get(id).await?.window)
    }

    /// Calls off a window that has not begun (operator): its nodes are uncordoned and the
    /// notices it gave withdrawn. One that began is ended early instead: its nodes go to
    /// burn-in (or service) now.
    pub async fn maintenance_cancel(&self, p: &Principal, id: &str) -> Result<MaintenanceWindow> {
        auth::authorize(p, Action::WriteFleet)?;
        let row = self.store.maintenance_get(id).await?;
        match row.window.state {
            MaintenanceState::Scheduled => {
                self.maintenance_call_off(&row, Some(p.key_id)).await?;
            }
            MaintenanceState::InProgress => {
                self.maintenance_finish(&row, "ended early by an operator")
                    .await?;
            }
            s => {
                return Err(Error::new(
                    ErrorCode::Conflict,
                    format!(
                        "maintenance window {id} is {s}; only a scheduled or in-progress one can be cancelled"
                    ),
                ));
            }
        }
        Ok(self.store.maintenance_get(id).await?.window)
    }

    async fn maintenance_call_off(
        &self,
        row: &MaintenanceRow,
        actor: Option<neocloud_types::ApiKeyId>,
    ) -> Result<()> {
        let id = row.window.id;
        let tag = tag(id);
        let now = self.now();
        let mut tx = self.store.begin_write().await?;
        let moved = Store::maintenance_set_state(
            &mut tx,
            id,
            MaintenanceState::Scheduled,
            MaintenanceState::Cancelled,
            now,
        )
        .await?;
        if !moved {
            return Err(Error::new(
                ErrorCode::Conflict,
                format!("maintenance window {id} changed meanwhile; retry"),
            ));
        }
        Store::event_insert(
            &mut tx,
            neocloud_store::NewEvent {
                actor,
                tenant_id: None,
                action: "maintenance.cancelled",
                resource_kind: "maintenance",
                resource_id: id.to_string(),
                before: None,
                after: None,
            },
        )
        .await?;
        tx.commit().await?;
        self.decide(
            neocloud_scheduler::Command::Unmaintain { window: id },
            now,
            actor,
            |_, _| Ok(None),
        )
        .await?;
        for node in &row.node_ids {
            self.move_node(
                *node,
                |s, r| s == NodeState::Cordoned && r.is_some_and(|r| r.starts_with(&tag)),
                NodeState::Available,
                format!("{tag} called off"),
                None,
            )
            .await?;
        }
        Ok(())
    }

    /// Begins a window: its nodes go to `maintenance`.
    async fn maintenance_begin(&self, row: &MaintenanceRow) -> Result<()> {
        let id = row.window.id;
        let tag = tag(id);
        let reason = format!("{tag} until {}: {}", row.window.end_at, row.window.reason);
        for node in &row.node_ids {
            self.move_node(
                *node,
                |s, _| {
                    !matches!(
                        s,
                        NodeState::Failed | NodeState::Maintenance | NodeState::Unreachable
                    )
                },
                NodeState::Maintenance,
                reason.clone(),
                Some(None),
            )
            .await?;
        }
        let mut tx = self.store.begin_write().await?;
        Store::maintenance_set_state(
            &mut tx,
            id,
            MaintenanceState::Scheduled,
            MaintenanceState::InProgress,
            self.now(),
        )
        .await?;
        Store::event_insert(
            &mut tx,
            neocloud_store::NewEvent {
                actor: None,
                tenant_id: None,
                action: "maintenance.started",
                resource_kind: "maintenance",
                resource_id: id.to_string(),
                before: None,
                after: None,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Ends a window: its nodes go to burn-in (with an agent) or back to service.
    async fn maintenance_finish(&self, row: &MaintenanceRow, how: &str) -> Result<()> {
        let id = row.window.id;
        let tag = tag(id);
        for node in &row.node_ids {
            let ours = |s: NodeState, r: Option<&str>| {
                s == NodeState::Maintenance && r.is_some_and(|r| r.starts_with(&tag))
            };
            if self.health.has_agent(*node) {
                self.move_node(
                    *node,
                    ours,
                    NodeState::BurnIn,
                    format!("{tag} {how}; burn-in check requested"),
                    Some(Some(new_burn_in_id())),
                )
                .await?;
            } else {
                self.move_node(
                    *node,
                    ours,
                    NodeState::Available,
                    format!("{tag} {how}"),
                    None,
                )
                .await?;
            }
        }
        let mut tx = self.store.begin_write().await?;
        Store::maintenance_set_state(
            &mut tx,
            id,
            MaintenanceState::InProgress,
            MaintenanceState::Completed,
            self.now(),
        )
        .await?;
        Store::event_insert(
            &mut tx,
            neocloud_store::NewEvent {
                actor: None,
                tenant_id: None,
                action: "maintenance.completed",
                resource_kind: "maintenance",
                resource_id: id.to_string(),
                before: None,
                after: Some(serde_json::json!({"how": how})),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Moves windows along at `now`: those due begin, those over end. Part of the periodic
    /// health work (leader only).
    pub async fn maintenance_tick(&self, now: Timestamp) -> Result<()> {
        for row in self
            .store
            .maintenance_list(Some(MaintenanceState::Scheduled))
            .await?
        {
            if row.window.start_at.micros() <= now.micros() {
                self.maintenance_begin(&row).await?;
            }
        }
        for row in self
            .store
            .maintenance_list(Some(MaintenanceState::InProgress))
            .await?
        {
            if row.window.end_at.micros() <= now.micros() {
                self.maintenance_finish(&row, "completed").await?;
            }
        }
        Ok(())
    }
}
