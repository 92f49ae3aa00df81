//! Delivered instances: what their agents are told to run, and how their reports move them
//! through `provisioning` → `running` → `stopping` → an end.
//!
//! An instance launched with a [`neocloud_types::Delivery`] is placed like any other, but it
//! starts in `provisioning` (holding its GPUs, not metered) and is `running` only once the
//! agent of every node it holds reports it live. Terminate, preemption and failure put it in
//! `stopping` with the state it will end in ([`Instance::ends_as`]); its GPUs are freed only
//! when every agent reports it stopped and scrubbed (or after
//! [`SchedulerConfig::stop_timeout_secs`] without an answer), so nothing of one tenant is
//! left on a GPU sold to the next. What the agents report is kept in memory only: they
//! report every workload in every heartbeat, so a rebuilt scheduler learns it again within
//! one heartbeat.

use std::collections::{BTreeMap, BTreeSet};

use neocloud_types::{
    Access, DesiredWorkloads, Instance, InstanceId, InstanceState, NodeId, Shape, Timestamp,
    Workload, WorkloadPhase, WorkloadReport,
};

use crate::{Effect, Scheduler};

/// What the scheduler keeps of one delivered instance besides its row.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tracked {
    /// When it entered its current state (provisioning or stopping), for the timeouts;
    /// for instances restored from the database, the first tick after the rebuild.
    pub(crate) since: Option<Timestamp>,
    /// The phase each of its nodes' agents reported last, with the access it gave.
    pub(crate) nodes: BTreeMap<NodeId, (WorkloadPhase, Option<Access>)>,
}

impl Scheduler {
    /// Whether `i` runs something its agents deliver.
    fn delivered(i: &Instance) -> bool {
        i.delivery.is_some()
    }

    /// The state an instance enters when placed: `provisioning` when its agents must first
    /// deliver it (unmetered until they confirm), `running` otherwise.
    pub(crate) fn placed_state(&mut self, i: &mut Instance, now: Timestamp) {
        if Self::delivered(i) {
            i.state = InstanceState::Provisioning;
            i.started_at = None;
            self.index_delivered(i, Some(now));
        } else {
            i.state = InstanceState::Running;
            i.started_at = Some(now);
        }
    }

    /// Adds a placed delivered instance to the per-node index.
    pub(crate) fn index_delivered(&mut self, i: &Instance, since: Option<Timestamp>) {
        if !Self::delivered(i) || !i.state.holds_gpus() {
            return;
        }
        for p in i.placement.iter() {
            self.by_node.entry(p.node_id).or_default().insert(i.id);
        }
        self.tracked.insert(
            i.id,
            Tracked {
                since,
                nodes: BTreeMap::new(),
            },
        );
    }

    /// Removes an ended instance from the per-node index.
    pub(crate) fn unindex_delivered(&mut self, i: &Instance) {
        if self.tracked.remove(&i.id).is_none() {
            return;
        }
        for p in i.placement.iter() {
            if let Some(set) = self.by_node.get_mut(&p.node_id) {
                set.remove(&i.id);
                if set.is_empty() {
                    self.by_node.remove(&p.node_id);
                }
            }
        }
    }

    /// What should run on `node`: every delivered instance placed there, those being
    /// stopped marked `stop`. `generation` changes whenever the list does.
    pub fn desired(&self, node: NodeId, stop_grace_secs: u32) -> DesiredWorkloads {
        let mut workloads = Vec::new();
        if let Some(ids) = self.by_node.get(&node) {
            for id in ids {
                let Some(i) = self.live.get(id) else {
                    continue;
                };
                let (Some(delivery), Some(p)) = (
                    i.delivery.clone(),
                    i.placement.iter().find(|p| p.node_id == node),
                ) else {
                    continue;
                };
                let (mig_profile, share_milli) = match i.shape {
                    Shape::Mig { profile } => (Some(profile.as_str().to_string()), None),
                    Shape::Share { milli } => (None, Some(milli)),
                    _ => (None, None),
                };
                workloads.push(Workload {
                    instance_id: i.id,
                    tenant_id: i.tenant_id,
                    delivery,
                    gpus: p.gpus.to_vec(),
                    mig_start: p.mig_start,
                    mig_profile,
                    share_milli,
                    cpu_milli: p.cpu_milli,
                    memory_mib: p.memory_mib,
                    authorized_keys: i.authorized_keys.clone(),
                    preempt_at: i.preempt_at,
                    stop: i.state == InstanceState::Stopping,
                });
            }
        }
        let generation = generation_of(&workloads, stop_grace_secs);
        DesiredWorkloads {
            generation,
            workloads,
            stop_grace_secs,
        }
    }

    /// Takes what the agent of `node` reports of its workloads.
    pub(crate) fn reports(
        &mut self,
        node: NodeId,
        reports: Vec<WorkloadReport>,
        now: Timestamp,
        fx: &mut Vec<Effect>,
    ) {
        for r in reports {
            let Some(i) = self.live.get(&r.instance_id) else {
                continue;
            };
            // An agent speaks only for workloads placed on its own node.
            if !Self::delivered(i) || !i.placement.iter().any(|p| p.node_id == node) {
                continue;
            }
            let id = i.id;
            let state = i.state;
            if let Some(t) = self.tracked.get_mut(&id) {
                t.nodes.insert(node, (r.phase, r.access.clone()));
            }
            match (state, r.phase) {
                (InstanceState::Provisioning, WorkloadPhase::Running)
                    if self.all_nodes(id, |p| p == WorkloadPhase::Running) =>
                {
                    self.confirm_running(id, now, fx);
                }
                (InstanceState::Running | InstanceState::Preempting, WorkloadPhase::Running) => {
                    // An SSH server restarted elsewhere: the new address.
                    let access = self.first_access(id);
                    if let Some(i) = self.live.get_mut(&id)
                        && access.is_some()
                        && i.access != access
                    {
                        let before = i.clone();
                        i.access = access;
                        fx.push(Effect::Update {
                            before,
                            after: i.clone(),
                            action: "instance.access_changed",
                            meter_until: None,
                            release: false,
                        });
                    }
                }
                (
                    InstanceState::Provisioning
                    | InstanceState::Running
                    | InstanceState::Preempting,
                    WorkloadPhase::Failed | WorkloadPhase::Stopped,
                ) => {
                    let name = self.node_names.get(&node).cloned().unwrap_or_default();
                    let (ends_as, reason) = if r.phase == WorkloadPhase::Failed {
                        (
                            InstanceState::Failed,
                            format!(
                                "failed on {name}: {}",
                                r.reason.as_deref().unwrap_or("the agent gave no reason")
                            ),
                        )
                    } else {
                        (
                            InstanceState::Terminated,
                            r.reason
                                .clone()
                                .unwrap_or_else(|| format!("the workload ended on {name}")),
                        )
                    };
                    self.stop(id, ends_as, reason, Some(now), now, fx);
                    self.finish_if_stopped(id, now, fx);
                }
                (InstanceState::Stopping, WorkloadPhase::Stopped | WorkloadPhase::Failed) => {
                    self.finish_if_stopped(id, now, fx);
                }
                _ => {}
            }
        }
    }

    /// Whether every node of `id` last reported a phase `ok` accepts.
    fn all_nodes(&self, id: InstanceId, ok: impl Fn(WorkloadPhase) -> bool) -> bool {
        let (Some(i), Some(t)) = (self.live.get(&id), self.tracked.get(&id)) else {
            return false;
        };
        i.placement
            .iter()
            .all(|p| t.nodes.get(&p.node_id).is_some_and(|(ph, _)| ok(*ph)))
    }

    /// The access the first node of `id` reported.
    fn first_access(&self, id: InstanceId) -> Option<Access> {
        let i = self.live.get(&id)?;
        let first = i.placement.first()?;
        self.tracked
            .get(&id)?
            .nodes
            .get(&first.node_id)
            .and_then(|(_, a)| a.clone())
    }

    fn confirm_running(&mut self, id: InstanceId, now: Timestamp, fx: &mut Vec<Effect>) {
        let access = self.first_access(id);
        let Some(i) = self.live.get_mut(&id) else {
            return;
        };
        let before = i.clone();
        i.state = InstanceState::Running;
        i.started_at = Some(now);
        i.access = access;
        i.reason = None;
        fx.push(Effect::Update {
            before,
            after: i.clone(),
            action: "instance.running",
            meter_until: None,
            release: false,
        });
    }

    /// Puts a delivered instance in `stopping`: its agents are told to stop it, and it ends
    /// as `ends_as` once they confirm. With `ended_at`, metering stops there (preemption at
    /// its deadline, a failure when reported); without, it goes on until the confirmation
    /// (a terminate).
    pub(crate) fn stop(
        &mut self,
        id: InstanceId,
        ends_as: InstanceState,
        reason: String,
        ended_at: Option<Timestamp>,
        now: Timestamp,
        fx: &mut Vec<Effect>,
    ) {
        let Some(i) = self.live.get_mut(&id) else {
            return;
        };
        if i.state == InstanceState::Stopping {
            return;
        }
        let before = i.clone();
        i.state = InstanceState::Stopping;
        i.ends_as = Some(ends_as);
        i.reason = Some(reason);
        // Metering never runs past the end, and never before the start.
        i.ended_at = ended_at.map(|e| i.started_at.map_or(e, |s| e.max(s)));
        let meter_until = i.ended_at.filter(|_| i.started_at.is_some());
        let action = match ends_as {
            InstanceState::Preempted => "instance.preempted",
            InstanceState::Failed => "instance.failing",
            _ => "instance.stopping",
        };
        fx.push(Effect::Update {
            before,
            after: i.clone(),
            action,
            meter_until,
            release: false,
        });
        if let Some(t) = self.tracked.get_mut(&id) {
            t.since = Some(now);
            // Only what is reported from now on counts as stopped.
            t.nodes
                .retain(|_, (ph, _)| matches!(ph, WorkloadPhase::Stopped | WorkloadPhase::Failed));
        }
    }

    /// Ends a stopping instance once every node reported it stopped (or failed, which also
    /// means nothing of it is left).
    fn finish_if_stopped(&mut self, id: InstanceId, now: Timestamp, fx: &mut Vec<Effect>) {
        if !self.all_nodes(id, |p| {
            matches!(p, WorkloadPhase::Stopped | WorkloadPhase::Failed)
        }) {
            return;
        }
        self.finish(id, None, now, fx);
    }

    /// Ends a stopping instance as it was meant to end, freeing its GPUs.
    fn finish(&mut self, id: InstanceId, note: Option<&str>, now: Timestamp, fx: &mut Vec<Effect>) {
        let Some(i) = self.live.get(&id) else {
            return;
        };
        let to = i.ends_as.unwrap_or(InstanceState::Terminated);
        let reason = match (note, &i.reason) {
            (Some(n), Some(r)) => Some(format!("{r} ({n})")),
            (Some(n), None) => Some(n.to_string()),
            (None, r) => r.clone(),
        };
        let action = match to {
            InstanceState::Preempted => "instance.stopped",
            InstanceState::Failed => "instance.failed",
            _ => "instance.terminated",
        };
        self.end(id, to, now, reason, action, fx);
        self.serve_queue(now, fx);
    }

    /// Timeouts of delivered instances: provisioning that took too long fails, and a stop
    /// no agent confirmed ends anyway.
    pub(crate) fn delivery_timeouts(&mut self, now: Timestamp, fx: &mut Vec<Effect>) {
        for t in self.tracked.values_mut() {
            t.since.get_or_insert(now);
        }
        let provision = self.config.provision_timeout_secs;
        let stop = self.config.stop_timeout_secs;
        let due: Vec<(InstanceId, InstanceState)> = self
            .tracked
            .iter()
            .filter_map(|(id, t)| {
                let i = self.live.get(id)?;
                let since = t.since?;
                let limit = match i.state {
                    InstanceState::Provisioning => provision,
                    InstanceState::Stopping => stop,
                    _ => return None,
                };
                (since.plus_seconds(limit) <= now).then_some((*id, i.state))
            })
            .collect();
        for (id, state) in due {
            if state == InstanceState::Provisioning {
                self.stop(
                    id,
                    InstanceState::Failed,
                    format!("provisioning timed out after {provision} s"),
                    Some(now),
                    now,
                    fx,
                );
            } else {
                let note = format!("its agents did not confirm the stop within {stop} s");
                self.finish(id, Some(&note), now, fx);
            }
        }
    }
}

/// A generation number for a desired list: FNV-1a over its JSON form, so equal lists give
/// equal numbers across restarts and replicas.
fn generation_of(w: &[Workload], grace: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = serde_json::to_vec(&(w, grace)).unwrap_or_default();
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Instances a node's index lists, for tests and metrics.
pub(crate) type NodeIndex = std::collections::HashMap<NodeId, BTreeSet<InstanceId>>;
