//! Gangs that lose a node: what their [`NodeFailurePolicy`] says happens.
//!
//! - `replace` (the default for gangs): a healthy, empty node of the same block at the
//!   gang's level (NVLink domain, leaf group, pod; for a reserved gang, of its contract's
//!   pool) takes the failed node's place and the instance stays `running`. When none is free
//!   the gang runs one node short, billed for what it holds; lower-class work on a node of
//!   the block gets its preemption notice, and the first node of the block to come free
//!   completes the gang ([`Scheduler::serve_repairs`], before the queue is served).
//! - `shrink`: the failed node is dropped and the gang goes on with fewer nodes, billed for
//!   fewer GPUs from the fault on; the last node failing ends it.
//! - `fail`: the instance ends `failed` (the default for everything within one node).
//!
//! Metering follows what the tenant really had: the full gang up to the fault, the nodes it
//! kept from the fault until the change is decided, and the new shape from then on.

use std::collections::{BTreeSet, HashMap, HashSet};

use neocloud_types::{
    AllocatorNode, BlockId, Class, GangLevel, Instance, InstanceId, InstanceState,
    NodeFailurePolicy, NodeId, Shape, SiteId, Timestamp,
};

use crate::{Effect, NodeChange, Scheduler, placed_nodes, sold_key};

/// A node's site and its blocks by depth (pod, leaf group, NVLink domain).
#[derive(Clone, Copy, Debug)]
pub(crate) struct NodeBlocks {
    site: SiteId,
    blocks: [Option<BlockId>; 3],
}

impl NodeBlocks {
    pub(crate) fn of(n: &AllocatorNode) -> NodeBlocks {
        let mut blocks = [None; 3];
        for &(kind, id) in &n.blocks {
            if let Some(b) = blocks.get_mut(usize::from(kind.depth())) {
                *b = Some(id);
            }
        }
        NodeBlocks {
            site: n.site_id,
            blocks,
        }
    }
}

/// What a gang running short waits on: a change to a node of its block, or of its site
/// (a gang of level `site`, or one on nodes in no block of its level).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Watch {
    Block(BlockId),
    Site(SiteId),
}

/// Gangs (policy `replace`) running short of nodes after a failure, waiting for a node of
/// their block: each is either awake (looked at by [`Scheduler::serve_repairs`]) or quiet.
///
/// A quiet gang's last look for a node of its block found none. Only a change to one of the
/// block's nodes (work released there, its cordon, health or pool) can make one usable,
/// and each such change wakes the gangs that wait on the block; placements only take nodes.
/// A quiet gang is passed over by [`Scheduler::serve_repairs`] without being looked up: the
/// look would find nothing, exactly as before. Only awake gangs cost a pass anything.
#[derive(Debug, Default)]
pub(crate) struct Repairs {
    /// Gangs to look at, in id order (the order they are served in).
    awake: BTreeSet<InstanceId>,
    /// Gangs that wait on a watch.
    quiet: HashSet<InstanceId>,
    by_watch: HashMap<Watch, Vec<InstanceId>>,
}

impl Repairs {
    /// A gang starts (or goes on) waiting, and looks at the next pass.
    pub(crate) fn insert(&mut self, id: InstanceId) {
        self.quiet.remove(&id);
        self.awake.insert(id);
    }

    /// Whether no gang waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.awake.is_empty() && self.quiet.is_empty()
    }

    /// Whether a pass has a gang to look at.
    fn any_awake(&self) -> bool {
        !self.awake.is_empty()
    }

    /// The gang waits no more.
    fn done(&mut self, id: InstanceId) {
        self.awake.remove(&id);
        self.quiet.remove(&id);
    }

    /// The gang found nothing and waits on `w`.
    fn quiet(&mut self, id: InstanceId, w: Watch) {
        self.awake.remove(&id);
        self.quiet.insert(id);
        self.by_watch.entry(w).or_default().push(id);
    }

    /// The gang's own nodes changed: it looks again (if it waits).
    fn wake_one(&mut self, id: InstanceId) {
        if self.quiet.remove(&id) {
            self.awake.insert(id);
        }
    }

    fn wake(&mut self, w: Watch) {
        if let Some(ids) = self.by_watch.remove(&w) {
            for id in ids {
                self.wake_one(id);
            }
        }
    }

    fn wake_all(&mut self) {
        self.by_watch.clear();
        self.awake.extend(self.quiet.drain());
    }

    /// Wakes the gangs that wait on the site or a block of each node (`None`: a node the
    /// scheduler does not know, which wakes them all). Nodes of one block come one after
    /// another (a gang's, sorted), so each block is woken once for them.
    fn wake_nodes(&mut self, nodes: impl IntoIterator<Item = Option<NodeBlocks>>) {
        let mut last: Option<NodeBlocks> = None;
        for nb in nodes {
            if self.quiet.is_empty() {
                return;
            }
            let Some(nb) = nb else {
                self.wake_all();
                return;
            };
            if last.is_some_and(|l| l.site == nb.site && l.blocks == nb.blocks) {
                continue;
            }
            last = Some(nb);
            self.wake(Watch::Site(nb.site));
            for b in nb.blocks.into_iter().flatten() {
                self.wake(Watch::Block(b));
            }
        }
    }
}

/// The level and first node of a gang that still waits for a node of its block: one that
/// runs short of its count, holds GPUs and is not stopping; `None` for anything else.
fn waiting_gang(i: &Instance) -> Option<(GangLevel, NodeId)> {
    let (Shape::Nodes { count, level }, Some(anchor)) =
        (i.shape, i.placement.first().map(|p| p.node_id))
    else {
        return None;
    };
    let short = usize::try_from(count).unwrap_or(usize::MAX) > i.placement.len();
    (short && i.state.holds_gpus() && i.state != InstanceState::Stopping).then_some((level, anchor))
}

impl Scheduler {
    /// `node` failed under the running instance `id`. Returns whether the instance keeps
    /// running; `false` means the caller ends it `failed`.
    pub(crate) fn node_lost(
        &mut self,
        id: InstanceId,
        node: NodeId,
        c: &NodeChange,
        now: Timestamp,
        fx: &mut Vec<Effect>,
    ) -> bool {
        let Some(i) = self.live.get(&id) else {
            return false;
        };
        let Shape::Nodes { level, .. } = i.shape else {
            return false;
        };
        if !matches!(
            i.state,
            InstanceState::Running | InstanceState::Provisioning
        ) {
            return false;
        }
        let fault = c.at.max(i.started_at.unwrap_or(c.at)).min(now);
        match i.on_node_failure {
            NodeFailurePolicy::Fail => false,
            NodeFailurePolicy::Shrink => {
                i.placement.len() > 1 && self.reshape(id, Some(node), None, Some(fault), now, c, fx)
            }
            NodeFailurePolicy::Replace => {
                let gained = self
                    .alloc
                    .replacement_where(id, node, level, |v| v.whole_free);
                if !self.reshape(id, Some(node), gained, Some(fault), now, c, fx) {
                    return false;
                }
                if gained.is_none() {
                    self.repairs.insert(id);
                    self.vacate_for(id, now, fx);
                }
                true
            }
        }
    }

    /// A node changed in a way that may make it usable for a gang running short (work
    /// released there, its cordon, health or pool): the gangs that wait on its block look
    /// again.
    pub(crate) fn node_touched(&mut self, node: NodeId) {
        self.nodes_touched(std::iter::once(node));
    }

    /// [`Scheduler::node_touched`] for several nodes.
    pub(crate) fn nodes_touched(&mut self, nodes: impl IntoIterator<Item = NodeId>) {
        let known = &self.node_blocks;
        self.repairs
            .wake_nodes(nodes.into_iter().map(|n| known.get(&n).copied()));
    }

    /// [`Scheduler::nodes_touched`] for the nodes the allocator's last release gave GPUs
    /// back on, read from the allocator's nodes rather than looked up by id.
    pub(crate) fn released_touched(&mut self) {
        let nodes = self
            .alloc
            .released_blocks()
            .map(|(site, blocks)| Some(NodeBlocks { site, blocks }));
        self.repairs.wake_nodes(nodes);
    }

    /// What the short gang `i` of `level` waits on: the block of that level of the node
    /// [`neocloud_allocator::Allocator::replacement_where`] takes the block from (its second
    /// node, or its only one), else its site; `None` for a node the scheduler does not know.
    fn repair_watch(&self, i: &Instance, level: GangLevel) -> Option<Watch> {
        let node = i.placement.get(1).or(i.placement.first());
        let nb = node.and_then(|p| self.node_blocks.get(&p.node_id));
        let depth = match level {
            GangLevel::Pod => Some(0),
            GangLevel::LeafGroup => Some(1),
            GangLevel::NvlinkDomain => Some(2),
            GangLevel::Site => None,
        };
        let nb = nb?;
        Some(match depth.and_then(|d| nb.blocks[d]) {
            Some(b) => Watch::Block(b),
            None => Watch::Site(nb.site),
        })
    }

    fn repair_done(&mut self, id: InstanceId) {
        self.repairs.done(id);
    }

    /// Gives a node of its block to each gang running short, where one is free now. Runs
    /// before the queue is served: a gang that runs already comes first.
    pub(crate) fn serve_repairs(&mut self, now: Timestamp, fx: &mut Vec<Effect>) {
        if cfg!(debug_assertions) {
            self.check_quiet_repairs();
        }
        if !self.repairs.any_awake() {
            return;
        }
        let waiting: Vec<InstanceId> = self.repairs.awake.iter().copied().collect();
        for id in waiting {
            let Some(i) = self.live.get(&id) else {
                self.repair_done(id);
                continue;
            };
            let Some((level, anchor)) = waiting_gang(i) else {
                self.repair_done(id);
                continue;
            };
            let Some(gained) = self
                .alloc
                .replacement_where(id, anchor, level, |v| v.whole_free)
            else {
                if let Some(w) = self.repair_watch(i, level) {
                    self.repairs.quiet(id, w);
                }
                continue;
            };
            let change = NodeChange {
                node: gained,
                from: None,
                to: neocloud_types::NodeState::Available,
                at: now,
                reason: "a node of its block came free".into(),
                heal: false,
                gpus: Vec::new(),
            };
            self.reshape(id, None, Some(gained), None, now, &change, fx);
            let done = self.live.get(&id).is_none_or(|i| match i.shape {
                Shape::Nodes { count, .. } => {
                    usize::try_from(count).unwrap_or(usize::MAX) <= i.placement.len()
                }
                _ => true,
            });
            if done {
                self.repair_done(id);
            }
        }
    }

    /// Tests and debug builds check that the look a quiet gang skips would find nothing.
    fn check_quiet_repairs(&self) {
        for &id in &self.repairs.quiet {
            let Some((level, anchor)) = self.live.get(&id).and_then(waiting_gang) else {
                continue;
            };
            assert!(
                self.alloc
                    .replacement_where(id, anchor, level, |v| v.whole_free)
                    .is_none(),
                "the quiet gang {id} has a node of its block free"
            );
        }
    }

    /// Notifies lower-class work on one node of the block of the short gang `id`: the node
    /// comes free when the notice runs out.
    fn vacate_for(&mut self, id: InstanceId, now: Timestamp, fx: &mut Vec<Effect>) {
        let Some(i) = self.live.get(&id) else {
            return;
        };
        let (Shape::Nodes { level, .. }, Some(anchor)) =
            (i.shape, i.placement.first().map(|p| p.node_id))
        else {
            return;
        };
        let policy = self.config.fleet_policy;
        let mine = i.class.priority(policy);
        let live = &self.live;
        let lower = |h: &InstanceId| {
            live.get(h)
                .is_some_and(|v| v.class != Class::Reserved && v.class.priority(policy) < mine)
        };
        let target = self.alloc.replacement_where(id, anchor, level, |v| {
            !v.holders.is_empty() && v.holders.iter().all(|(h, _)| lower(h))
        });
        let Some(target) = target else {
            return;
        };
        let victims = self.alloc.node_holders(target);
        self.notify_victims(&victims, id, now, fx);
    }

    /// Moves the gang `id` off `lost` and/or onto `gained`, meters what it ran before the
    /// change, and records the change. Returns `false` (nothing changed) when the allocator
    /// refuses it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn reshape(
        &mut self,
        id: InstanceId,
        lost: Option<NodeId>,
        gained: Option<NodeId>,
        fault: Option<Timestamp>,
        now: Timestamp,
        c: &NodeChange,
        fx: &mut Vec<Effect>,
    ) -> bool {
        let Some(mut before) = self.live.get(&id).cloned() else {
            return false;
        };
        // The gang's own nodes change: it looks again.
        self.repairs.wake_one(id);
        if let Some(l) = lost {
            self.node_touched(l);
        }
        let (old, new) = match self.alloc.swap_node(id, lost, gained) {
            Ok(x) => x,
            Err(e) => {
                fx.push(Effect::Warning(format!(
                    "could not repair the gang {id}: {e}"
                )));
                return false;
            }
        };
        if let Some((site, model)) = sold_key(&old) {
            self.sold.sub(&site, model, old.gpu_milli());
        }
        if let Some((site, model)) = sold_key(&new) {
            self.sold.add(site, model, new.gpu_milli());
        }
        self.untrack(&before);
        // The instance after the change, its placement built anew rather than copied.
        let placement = std::mem::take(&mut before.placement);
        let mut after = before.clone();
        before.placement = placement;
        after.placement = placed_nodes(&new, &self.node_names);
        after.gpu_count = u32::try_from(new.gpu_count()).unwrap_or(u32::MAX);
        let Shape::Nodes { count, level } = before.shape else {
            return false;
        };
        let shrink = before.on_node_failure == NodeFailurePolicy::Shrink;
        if shrink {
            after.shape = new.shape;
        }
        let held = u32::try_from(new.gpus.len()).unwrap_or(u32::MAX);
        let name =
            |n: Option<NodeId>| n.map(|n| self.node_names.get(&n).cloned().unwrap_or_default());
        let (lost_name, gained_name) = (name(lost), name(gained));
        let short = if shrink {
            0
        } else {
            count.saturating_sub(held)
        };
        after.reason = match (&lost_name, short) {
            (_, 0) => None,
            (Some(l), n) => Some(format!(
                "node {l} failed ({}); running {n} node(s) short until a healthy node of its {level} is free",
                c.reason
            )),
            (None, n) => Some(format!(
                "running {n} node(s) short until a healthy node of its {level} is free"
            )),
        };
        self.track(&after);
        // Agents: the failed node's stops hearing of it, the new node's starts it.
        if self.tracked.contains_key(&id) {
            if let Some(l) = lost {
                if let Some(set) = self.by_node.get_mut(&l) {
                    set.remove(&id);
                    if set.is_empty() {
                        self.by_node.remove(&l);
                    }
                }
                if let Some(t) = self.tracked.get_mut(&id) {
                    t.nodes.remove(&l);
                }
            }
            if let Some(g) = gained {
                self.by_node.entry(g).or_default().insert(id);
            }
        }
        // What ran: the whole gang until the fault, what it kept until now.
        let mut meter = Vec::new();
        if before.state == InstanceState::Running && before.started_at.is_some() {
            let kept = old
                .gpus
                .iter()
                .filter(|(n, _)| Some(*n) != lost)
                .map(|(_, g)| g.len())
                .sum::<usize>();
            if let Some(f) = fault {
                meter.push((before.gpu_count, f));
            }
            meter.push((u32::try_from(kept).unwrap_or(u32::MAX), now));
        }
        let action = match (lost, gained) {
            (_, Some(_)) => "instance.node_replaced",
            (Some(_), None) if shrink => "instance.shrunk",
            _ => "instance.node_lost",
        };
        let detail = serde_json::json!({
            "failed_node": lost_name,
            "replacement": gained_name,
            "reason": c.reason,
            "fault_at": fault,
            "nodes": after.placement.len(),
            "nodes_short": short,
            "policy": before.on_node_failure,
        });
        self.live.insert(id, after.clone());
        fx.push(Effect::Reshape {
            before,
            after,
            meter,
            release: lost,
            hold: gained.and_then(|g| new.gpus.iter().find(|(n, _)| *n == g).cloned()),
            action,
            detail,
        });
        true
    }
}
