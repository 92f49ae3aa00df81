//! Planned maintenance: an operator takes nodes out of service for a window, with notice.
//!
//! The nodes take no new work from the moment the window is announced (the service cordons
//! them before it asks for [`Command::Maintain`](crate::Command::Maintain)). Then, for the
//! work that runs there:
//!
//! - a gang whose policy is `replace` moves off now, onto a healthy free node of its block
//!   (its level, its pool); where none is free now it moves when the window begins (a pool
//!   node that goes into maintenance brings the pool a spare first);
//! - a gang whose policy is `shrink` drops the node when the window begins;
//! - everything else (single-node work, `fail` gangs) gets a notice now and is stopped when
//!   the window begins, like a preemption whose notice runs out then.
//!
//! Each instance concerned gets a `maintenance.scheduled` event in its tenant's log, naming
//! what will happen to it. A window called off withdraws the notices it gave.

use std::collections::BTreeMap;

use neocloud_types::{
    InstanceId, InstanceState, MaintenanceId, NodeFailurePolicy, NodeId, NodeState, Shape,
    Timestamp,
};

use crate::{Effect, Event, NodeChange, Scheduler};

/// The tag a maintenance notice's reason starts with.
fn tag(window: MaintenanceId) -> String {
    format!("maintenance {window}")
}

impl Scheduler {
    /// Gives notice of the window `window` over `nodes`, which begins at `start_at`.
    pub(crate) fn maintain(
        &mut self,
        window: MaintenanceId,
        nodes: &[NodeId],
        start_at: Timestamp,
        reason: &str,
        now: Timestamp,
        fx: &mut Vec<Effect>,
    ) {
        let tag = tag(window);
        let deadline = start_at.max(now);
        // The instances on the window's nodes, with the nodes each holds there.
        let mut on: BTreeMap<InstanceId, Vec<NodeId>> = BTreeMap::new();
        for &n in nodes {
            for id in self.alloc.node_holders(n) {
                on.entry(id).or_default().push(n);
            }
        }
        for (id, held) in on {
            let Some(i) = self.live.get(&id) else {
                continue;
            };
            if !i.state.holds_gpus() || i.state == InstanceState::Stopping {
                continue;
            }
            let tenant = i.tenant_id;
            let names: Vec<String> = held
                .iter()
                .map(|n| {
                    self.node_names
                        .get(n)
                        .map(|s| s.to_string())
                        .unwrap_or_default()
                })
                .collect();
            let outcome = match (i.shape, i.on_node_failure) {
                (Shape::Nodes { level, .. }, NodeFailurePolicy::Replace)
                    if matches!(
                        i.state,
                        InstanceState::Running | InstanceState::Provisioning
                    ) =>
                {
                    let mut moved = 0;
                    for &n in &held {
                        let Some(gained) =
                            self.alloc.replacement_where(id, n, level, |v| v.whole_free)
                        else {
                            continue;
                        };
                        let change = NodeChange {
                            node: n,
                            from: None,
                            to: NodeState::Cordoned,
                            at: now,
                            reason: format!("{tag}: {reason}"),
                            heal: false,
                            gpus: Vec::new(),
                        };
                        if self.reshape(id, Some(n), Some(gained), Some(now), now, &change, fx) {
                            moved += 1;
                        }
                    }
                    if moved == held.len() {
                        "moved"
                    } else {
                        "moved_at_start"
                    }
                }
                (Shape::Nodes { .. }, NodeFailurePolicy::Shrink) => "shrunk_at_start",
                _ => {
                    self.give_notice(id, deadline, &tag, &names, reason, fx);
                    "stopped_at_start"
                }
            };
            fx.push(Effect::Event(Event {
                action: "maintenance.scheduled",
                resource_kind: "instance",
                resource_id: id.to_string(),
                tenant_id: Some(tenant),
                before: None,
                after: Some(serde_json::json!({
                    "maintenance_id": window,
                    "nodes": names,
                    "start_at": start_at,
                    "reason": reason,
                    "outcome": outcome,
                })),
            }));
        }
    }

    /// Puts `id` into `preempting` with a notice that runs out at `deadline` (an earlier
    /// notice it has stands).
    fn give_notice(
        &mut self,
        id: InstanceId,
        deadline: Timestamp,
        tag: &str,
        names: &[String],
        reason: &str,
        fx: &mut Vec<Effect>,
    ) {
        let Some(i) = self.live.get_mut(&id) else {
            return;
        };
        if i.state == InstanceState::Preempting && i.preempt_at.is_some_and(|t| t <= deadline) {
            return;
        }
        let before = i.clone();
        if let Some(old) = i.preempt_at {
            self.notices.remove(&(old, id));
        }
        i.state = InstanceState::Preempting;
        i.preempt_at = Some(deadline);
        i.reason = Some(format!(
            "{tag}: node {} goes into maintenance at {deadline} ({reason}); stops then",
            names.join(", ")
        ));
        self.notices.insert((deadline, id));
        fx.push(Effect::Update {
            before,
            after: i.clone(),
            action: "instance.preempting",
            meter_until: None,
            release: false,
        });
    }

    /// The window `window` was called off: the notices it gave are withdrawn and the
    /// instances run on.
    pub(crate) fn unmaintain(&mut self, window: MaintenanceId, fx: &mut Vec<Effect>) {
        let tag = tag(window);
        let noticed: Vec<InstanceId> = self
            .live
            .values()
            .filter(|i| {
                i.state == InstanceState::Preempting
                    && i.reason.as_deref().is_some_and(|r| r.starts_with(&tag))
            })
            .map(|i| i.id)
            .collect();
        for id in noticed {
            let Some(i) = self.live.get_mut(&id) else {
                continue;
            };
            let before = i.clone();
            if let Some(t) = i.preempt_at.take() {
                self.notices.remove(&(t, id));
            }
            i.state = if i.started_at.is_some() {
                InstanceState::Running
            } else {
                InstanceState::Provisioning
            };
            i.reason = None;
            fx.push(Effect::Update {
                before,
                after: i.clone(),
                action: "instance.notice_withdrawn",
                meter_until: None,
                release: false,
            });
        }
    }

    /// Work still on a node when its maintenance begins is stopped (gangs were handled by
    /// their policy before this is called).
    pub(crate) fn stop_for_maintenance(
        &mut self,
        id: InstanceId,
        node: &str,
        c: &NodeChange,
        now: Timestamp,
        fx: &mut Vec<Effect>,
    ) {
        let Some(i) = self.live.get(&id) else {
            return;
        };
        let reason = format!("node {node} went into maintenance: {}", c.reason);
        if i.delivery.is_some() {
            self.stop(id, InstanceState::Preempted, reason, Some(now), now, fx);
        } else {
            self.end(
                id,
                InstanceState::Preempted,
                now,
                Some(reason),
                "instance.preempted",
                fx,
            );
        }
    }
}
