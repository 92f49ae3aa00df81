//! Keeping the fleet healthy: node agents, heartbeats, the XID policy, the node lifecycle
//! and remediation.
//!
//! Heartbeats are the hot path (one per node every 10 s: 12,500 a second at 125,000 nodes).
//! A heartbeat without news touches only memory: the node's latest telemetry and the time
//! it was heard from. Only facts change the database — a health event, a state change —
//! and telemetry is written in batches ([`Service::health_flush`]). Each event is stored
//! once: the node's event sequence number moves in the same transaction as the events, and
//! only from the value the request read, so a resent batch adds nothing.
//!
//! Lifecycle: `provisioning → burn_in → available`; `available → draining → maintenance →
//! burn_in → available` for repairs; `→ failed` on a fatal fault, and `failed → burn_in`
//! when the operator marks the repair complete. `cordoned` keeps what runs and takes
//! nothing new. Only `available` (and `allocated`) nodes take placements.
//!
//! Silence is not failure. A node whose agent misses the missed-heartbeat limit becomes
//! `unreachable`: it takes no new work, but what runs there keeps running (and billing) and
//! a contract pool keeps it. A heartbeat returns it to the state it had (kept in memory and
//! in the node's `unreachable_from` column, so a restart of the control plane does not lose
//! it). Only silence past the grace period (`unreachable_grace_secs`, counted from the last
//! heartbeat) fails the node, as a `heartbeat_lost` fact with action `fail`. An agent that
//! stops on purpose says so in its last heartbeat (`leaving`) with when it expects to be
//! back (at most the grace period is granted): until then its node is not even
//! unreachable. Other evidence (a fatal XID, a failed burn-in) acts at once, also on an
//! unreachable node. All of it is decided by the periodic [`Service::health_tick`] from
//! memory; a heartbeat writes only when the node's state changes.

use std::collections::HashMap;

use neocloud_store::{NewEvent, Store};
use neocloud_types::{
    AgentEvent, AgentEventKind, AgentRegister, AgentRegistered, ApiKey, ApiKeyId, BurnInRequest,
    GpuHealth, GpuRow, GpuSample, HealthEvent, Heartbeat, HeartbeatAck, Node, NodeId, NodeState,
    Outage, Role, Timestamp,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{self, Action, Principal};
use crate::error::OrNotFound;
use crate::error::{Error, ErrorCode, FieldError, Result};
use crate::scheduler::SchedulerConfig;
use crate::writer::{Extra, extra};
use crate::{Created, Idempotency, Service};

/// What the policy does about a fault.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum HealthAction {
    /// Nothing: the fault is the application's (e.g. XID 13, 31, 43).
    Ignore,
    /// Keep it in the GPU's history; the node stays in service.
    Record,
    /// Take no new work, let running work finish, then go to maintenance.
    Drain,
    /// Out of service now: running work on the node fails, a contract's pool gets a spare.
    Fail,
}

impl HealthAction {
    fn as_str(self) -> &'static str {
        match self {
            HealthAction::Ignore => "ignore",
            HealthAction::Record => "record",
            HealthAction::Drain => "drain",
            HealthAction::Fail => "fail",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "ignore" => Some(HealthAction::Ignore),
            "record" => Some(HealthAction::Record),
            "drain" => Some(HealthAction::Drain),
            "fail" => Some(HealthAction::Fail),
            _ => None,
        }
    }
}

/// One line of the XID policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct XidRule {
    /// The XID code.
    pub code: u32,
    /// What the control plane does when a GPU reports it.
    pub action: HealthAction,
    /// What the code means, or the operator's note for an override.
    pub meaning: String,
    /// `builtin`, or `override` when an operator set it.
    pub source: String,
}

/// Body of `PUT /v1/health/rules/{code}`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetXidRule {
    /// `ignore`, `record`, `drain` or `fail`.
    pub action: HealthAction,
    /// Why (shown in the policy listing).
    #[serde(default)]
    pub note: Option<String>,
}

/// Body of the node operations (`cordon`, `drain`, `uncordon`, `repair-complete`).
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeOperation {
    /// Why, for the event log and the node's `state_reason`.
    #[serde(default)]
    pub reason: Option<String>,
}

/// A GPU's health history, following its UUID across nodes.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct GpuHistory {
    /// The GPU's UUID.
    pub uuid: String,
    /// The node it is in now, if any.
    pub node: Option<String>,
    /// Its index there.
    pub index: Option<u32>,
    /// Its health there.
    pub health: Option<GpuHealth>,
    /// Times it failed (events whose action was `fail`): more than one means it failed again
    /// after a repair.
    pub failures: u32,
    /// Every fact, newest first.
    pub events: Vec<HealthEvent>,
}

/// The built-in XID policy. Sources: NVIDIA's "XID Errors" catalogue (docs.nvidia.com/deploy/
/// xid-errors) and its GPU memory error management guide (row remapping); the actions follow
/// the catalogue's "recommended action" column: application faults are ignored, faults that
/// need a GPU reset drain the node, faults that need a board or driver replacement fail it.
pub fn builtin_xid_rules() -> &'static [(u32, HealthAction, &'static str)] {
    use HealthAction::*;
    &[
        (13, Ignore, "graphics engine exception (application fault)"),
        (31, Ignore, "GPU memory page fault (application fault)"),
        (43, Ignore, "GPU stopped processing (application fault)"),
        (45, Ignore, "preemptive cleanup after an earlier error"),
        (48, Fail, "double-bit ECC error"),
        (61, Record, "internal micro-controller breakpoint/warning"),
        (62, Fail, "internal micro-controller halt"),
        (
            63,
            Drain,
            "row remapping / page retirement recorded: needs a GPU reset",
        ),
        (64, Fail, "row remapping / page retirement failure"),
        (68, Record, "video decoder exception"),
        (74, Drain, "NVLink error"),
        (79, Fail, "GPU has fallen off the bus"),
        (92, Drain, "high single-bit ECC error rate"),
        (
            94,
            Drain,
            "contained ECC error: the application was stopped, the GPU needs a reset",
        ),
        (95, Fail, "uncontained ECC error"),
        (119, Fail, "GSP RPC timeout"),
        (120, Fail, "GSP error"),
        (140, Fail, "unrecovered ECC error"),
    ]
}

/// What an unknown XID code does.
const UNKNOWN_XID: HealthAction = HealthAction::Record;

/// What the monitor knows of one node with an agent.
#[derive(Clone, Debug)]
pub(crate) struct Live {
    name: String,
    last_seen: Timestamp,
    acked_seq: u64,
    state: NodeState,
    burn_in: Option<String>,
    burn_in_passed_at: Option<Timestamp>,
    uuids: Vec<Option<String>>,
    samples: Vec<GpuSample>,
    /// When `samples` were reported here (another replica may have newer ones).
    samples_at: Timestamp,
    /// When the leader last read whether another replica heard the agent.
    asked: Timestamp,
    /// Per GPU: remap pending, remap failed, thermal slowdown, as last reported.
    flags: Vec<(bool, bool, bool)>,
    dirty: bool,
    /// While `unreachable`: the state (and its reason) to return to when heard from again.
    before: Option<(NodeState, Option<String>)>,
    /// The agent said it is leaving: not unreachable before this time. With why.
    away: Option<(Timestamp, String)>,
}

impl Live {
    fn new(name: String, now: Timestamp, acked_seq: u64, state: NodeState, gpus: usize) -> Live {
        Live {
            name,
            last_seen: now,
            acked_seq,
            state,
            burn_in: None,
            burn_in_passed_at: None,
            uuids: Vec::new(),
            samples: Vec::new(),
            samples_at: now,
            asked: now,
            flags: vec![(false, false, false); gpus],
            dirty: false,
            before: None,
            away: None,
        }
    }

    /// Sets the state; leaving `unreachable` forgets where it came from.
    fn set(&mut self, state: NodeState) {
        self.state = state;
        if state != NodeState::Unreachable {
            self.before = None;
        }
    }
}

/// The GPU flags a heartbeat reports (remap pending, remap failed, thermal slowdown, per
/// GPU index), and a fact for each that turned on since `before`.
fn flags_turned_on(
    before: &[(bool, bool, bool)],
    gpus: &[GpuSample],
    index_of: impl Fn(&str) -> Option<u32>,
    now: Timestamp,
) -> (Vec<(bool, bool, bool)>, Vec<Fact>) {
    let mut flags = before.to_vec();
    let mut facts = Vec::new();
    for s in gpus {
        let Some(i) = index_of(&s.uuid) else { continue };
        let Some(slot) = usize::try_from(i).ok().and_then(|i| flags.get_mut(i)) else {
            continue;
        };
        let gpu = Some((i, s.uuid.clone()));
        let fact = |kind: &'static str, action, detail: &str| Fact {
            at: now,
            gpu: gpu.clone(),
            kind,
            code: None,
            action,
            detail: detail.to_string(),
            burn_in: None,
        };
        if s.remap_pending && !slot.0 {
            facts.push(fact(
                "remap_pending",
                HealthAction::Drain,
                "rows wait to be remapped at the next GPU reset",
            ));
        }
        if s.remap_failed && !slot.1 {
            facts.push(fact(
                "remap_failed",
                HealthAction::Fail,
                "row remapping failed",
            ));
        }
        if s.thermal_slowdown && !slot.2 {
            facts.push(fact(
                "thermal_slowdown",
                HealthAction::Record,
                &format!("thermal slowdown at {} °C", s.temperature_c),
            ));
        }
        *slot = (s.remap_pending, s.remap_failed, s.thermal_slowdown);
    }
    (flags, facts)
}

/// What a replica that does not lead did with a heartbeat.
#[derive(Debug)]
pub enum Heard {
    /// Answered here: nothing in it needs the leader.
    Here(HeartbeatAck),
    /// It has news (or this replica cannot tell): the leader must take it, and
    /// [`Service::agent_passed`] then records the leader's answer here.
    Leader(Passed),
}

/// A heartbeat passed on to the leader, for [`Service::agent_passed`].
#[derive(Debug)]
pub struct Passed {
    node: NodeId,
    /// This replica does not know the node's agent as it now is: read it again.
    relearn: bool,
    /// The GPU flags to remember once the leader has seen them.
    flags: Option<Vec<(bool, bool, bool)>>,
}

/// Agents, their latest telemetry and the policy overrides. Guarded by plain locks held
/// only for memory work, never across a database call.
pub(crate) struct Monitor {
    live: std::sync::Mutex<HashMap<NodeId, Live>>,
    overrides: std::sync::RwLock<HashMap<u32, (HealthAction, String)>>,
    interval_secs: u32,
    missed: u32,
    /// Seconds of silence after which a node is failed (at least the missed limit).
    grace_secs: i64,
    reverify_secs: i64,
    flush_secs: i64,
    last_flush: std::sync::Mutex<Timestamp>,
    /// Nodes in `draining`, watched until their work has ended (kept here so that the
    /// periodic work never scans the nodes table).
    draining: std::sync::Mutex<std::collections::BTreeSet<NodeId>>,
    /// On a replica that does not lead: nodes whose heartbeats it answered since it last
    /// wrote them to the database, with when.
    seen: std::sync::Mutex<HashMap<NodeId, Timestamp>>,
    last_seen_flush: std::sync::Mutex<Timestamp>,
    /// On a replica that does not lead: agents to read from the database (registered
    /// through the leader, or with new GPUs), in one batch at its next tick.
    to_learn: std::sync::Mutex<std::collections::BTreeSet<NodeId>>,
    /// Until when silence is not judged (real time), after the periodic work stalled.
    blind_until: std::sync::Mutex<Option<std::time::Instant>>,
    /// Heartbeats with news written at once ([`SIDE_BY_SIDE`]): enough to fill the
    /// writer's group commits, few enough that a site back from an outage (tens of
    /// thousands of nodes in a few seconds) does not exhaust the database pools.
    news: tokio::sync::Semaphore,
}

/// How often a replica that does not lead writes which agents it heard from (seconds).
/// Well under the missed-heartbeat limit, so that the leader never counts a node silent
/// that another replica heard.
const SEEN_FLUSH_SECS: i64 = 2;

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Monitor {
    /// Loads the nodes that have agents and the policy overrides. Every node counts as heard
    /// from now: a control plane that was down must not fail the fleet for its own absence.
    pub(crate) async fn load(
        store: &Store,
        config: &SchedulerConfig,
        now: Timestamp,
    ) -> Result<Monitor> {
        let mut live = HashMap::new();
        for n in store.agent_nodes().await? {
            let id = n.id;
            live.insert(id, Self::live_of(n, now));
        }
        let mut overrides = HashMap::new();
        for r in store.health_rule_list().await? {
            if let Some(a) = HealthAction::parse(&r.action) {
                overrides.insert(r.code, (a, r.note));
            }
        }
        let interval_secs = config.heartbeat_interval_secs.max(1);
        let missed = config.missed_heartbeats.max(1);
        Ok(Monitor {
            live: std::sync::Mutex::new(live),
            overrides: std::sync::RwLock::new(overrides),
            interval_secs,
            missed,
            grace_secs: config
                .unreachable_grace_secs
                .max(i64::from(interval_secs) * i64::from(missed)),
            reverify_secs: config.reverify_idle_secs,
            flush_secs: 60,
            last_flush: std::sync::Mutex::new(now),
            draining: std::sync::Mutex::new(
                store
                    .nodes_in_state(NodeState::Draining)
                    .await?
                    .into_iter()
                    .collect(),
            ),
            seen: std::sync::Mutex::new(HashMap::new()),
            last_seen_flush: std::sync::Mutex::new(now),
            to_learn: std::sync::Mutex::new(std::collections::BTreeSet::new()),
            blind_until: std::sync::Mutex::new(None),
            news: tokio::sync::Semaphore::new(SIDE_BY_SIDE),
        })
    }

    fn live_of(n: neocloud_store::AgentNode, now: Timestamp) -> Live {
        let mut l = Live::new(n.name, now, n.seq, n.state, n.gpus.len());
        l.burn_in = n.burn_in_id;
        l.burn_in_passed_at = n.burn_in_passed_at;
        l.uuids = n.gpus.into_iter().map(|(_, u, _)| u).collect();
        if n.state == NodeState::Unreachable {
            l.before = n.unreachable_from.map(|s| (s, n.unreachable_from_reason));
        }
        l
    }

    /// Takes over the state of a freshly loaded monitor (a replica that becomes the leader
    /// reloads what the previous leader knew, every node counting as heard from now).
    pub(crate) fn replace_with(&self, other: Monitor) {
        *lock(&self.live) = other
            .live
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Ok(mut o) = self.overrides.write() {
            *o = other
                .overrides
                .into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        *lock(&self.last_flush) = other
            .last_flush
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *lock(&self.draining) = other
            .draining
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A replica that leads hears its agents directly.
        lock(&self.seen).clear();
        lock(&self.to_learn).clear();
    }

    fn xid_action(&self, code: u32) -> HealthAction {
        if let Some((a, _)) = self
            .overrides
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&code)
        {
            return *a;
        }
        builtin_xid_rules()
            .iter()
            .find(|(c, _, _)| *c == code)
            .map_or(UNKNOWN_XID, |(_, a, _)| *a)
    }

    /// Whether the node has an agent that was heard from.
    pub(crate) fn has_agent(&self, node: NodeId) -> bool {
        lock(&self.live).contains_key(&node)
    }

    fn set_state(&self, node: NodeId, state: NodeState, burn_in: Option<Option<String>>) {
        if let Some(l) = lock(&self.live).get_mut(&node) {
            l.set(state);
            if let Some(b) = burn_in {
                l.burn_in = b;
            }
        }
    }
}

pub(crate) fn field(field: &str, message: impl Into<String>) -> Error {
    let message = message.into();
    let mut e = Error::invalid(format!("{field}: {message}"));
    e.field_errors.push(FieldError {
        line: None,
        column: None,
        field: field.to_string(),
        message,
    });
    e
}

/// Limits of what an agent may report; beyond them the report is refused as a whole.
const MAX_GPUS: usize = 64;
const MAX_EVENTS: usize = 1000;
const MAX_TEXT: usize = 4096;
const MAX_OUTPUT: usize = 65536;

pub(crate) fn check_text(name: &str, s: &str, max: usize) -> Result<()> {
    if s.len() > max {
        return Err(field(name, format!("longer than {max} bytes")));
    }
    if s.chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
    {
        return Err(field(name, "contains control characters"));
    }
    Ok(())
}

fn check_uuid(name: &str, s: &str) -> Result<()> {
    if s.is_empty()
        || s.len() > 128
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(field(
            name,
            "must be 1-128 letters, digits, '-' or '_' (a GPU UUID such as GPU-…)",
        ));
    }
    Ok(())
}

/// The node a heartbeat is from: the one its key is bound to. An enrollment key (bound to no
/// node) sends no heartbeats (403).
pub fn heartbeat_node(p: &Principal) -> Result<NodeId> {
    p.node_id.ok_or_else(|| {
        Error::forbidden(
            "an enrollment key only registers agents; send heartbeats with the node key the \
             registration returned",
        )
    })
}

fn validate_register(r: &AgentRegister) -> Result<()> {
    crate::validate_name("hostname", &r.hostname)?;
    check_text("agent_version", &r.agent_version, 64)?;
    if !matches!(r.backend.as_str(), "nvml" | "sim") {
        return Err(field("backend", "must be 'nvml' or 'sim'"));
    }
    if let Some(d) = &r.driver_version {
        check_text("driver_version", d, 64)?;
    }
    if r.cpu_cores == 0 || r.cpu_cores > 100_000 {
        return Err(field("cpu_cores", "must be 1-100000"));
    }
    if r.ram_gib == 0 || r.ram_gib > 1_000_000 {
        return Err(field("ram_gib", "must be 1-1000000"));
    }
    if r.gpus.is_empty() || r.gpus.len() > MAX_GPUS {
        return Err(field("gpus", format!("must list 1-{MAX_GPUS} GPUs")));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, g) in r.gpus.iter().enumerate() {
        check_uuid(&format!("gpus[{i}].uuid"), &g.uuid)?;
        if !seen.insert(g.uuid.as_str()) {
            return Err(field(&format!("gpus[{i}].uuid"), "appears twice"));
        }
        if usize::try_from(g.index).map_or(true, |x| x >= r.gpus.len()) {
            return Err(field(
                &format!("gpus[{i}].index"),
                format!("must be 0-{} (one per GPU)", r.gpus.len() - 1),
            ));
        }
        check_text(&format!("gpus[{i}].name"), &g.name, 200)?;
        check_text(&format!("gpus[{i}].pci_bus_id"), &g.pci_bus_id, 64)?;
        if let Some(s) = &g.serial {
            check_text(&format!("gpus[{i}].serial"), s, 64)?;
        }
        if g.memory_mib == 0 || g.memory_mib > 16 * 1024 * 1024 {
            return Err(field(
                &format!("gpus[{i}].memory_mib"),
                "must be 1-16777216",
            ));
        }
    }
    let mut idx: Vec<u32> = r.gpus.iter().map(|g| g.index).collect();
    idx.sort_unstable();
    idx.dedup();
    if idx.len() != r.gpus.len() {
        return Err(field("gpus", "each index must appear once"));
    }
    Ok(())
}

fn validate_sample(i: usize, s: &GpuSample) -> Result<()> {
    let f = |name: &str| format!("gpus[{i}].{name}");
    check_uuid(&f("uuid"), &s.uuid)?;
    if !(-40..=150).contains(&s.temperature_c) {
        return Err(field(&f("temperature_c"), "must be -40 to 150 °C"));
    }
    if s.power_watts > 5_000 {
        return Err(field(
            &f("power_watts"),
            "must be at most 5000 W for one GPU",
        ));
    }
    if s.utilization_pct > 100 {
        return Err(field(&f("utilization_pct"), "must be 0-100"));
    }
    if s.memory_used_mib > 16 * 1024 * 1024 {
        return Err(field(&f("memory_used_mib"), "must be at most 16777216 MiB"));
    }
    if s.ecc_corrected > 1_000_000_000_000 || s.ecc_uncorrected > 1_000_000_000_000 {
        return Err(field(
            &f("ecc_corrected"),
            "ECC counters must be at most 10^12",
        ));
    }
    Ok(())
}

/// Checks the compact rows of a heartbeat ([`Heartbeat::gpu_rows`]) for what they can
/// say without the node: ranges as [`validate_sample`] has them, each index once.
fn validate_rows(hb: &Heartbeat) -> Result<()> {
    if hb.gpu_rows.is_empty() {
        return Ok(());
    }
    if !hb.gpus.is_empty() {
        return Err(field("gpu_rows", "send gpus or gpu_rows, not both"));
    }
    if hb.gpu_rows.len() > MAX_GPUS {
        return Err(field("gpu_rows", format!("at most {MAX_GPUS} GPUs")));
    }
    // Column: name, lowest, highest.
    const COLUMNS: [(&str, i64, i64); 8] = [
        ("index", 0, MAX_GPUS as i64 - 1),
        ("temperature_c", -40, 150),
        ("power_watts", 0, 5_000),
        ("utilization_pct", 0, 100),
        ("memory_used_mib", 0, 16 * 1024 * 1024),
        ("ecc_corrected", 0, 1_000_000_000_000),
        ("ecc_uncorrected", 0, 1_000_000_000_000),
        ("flags", 0, 7),
    ];
    let mut seen = 0u64;
    // Each row has its eight integers: a row of another length is refused as it is read.
    for (i, row) in hb.gpu_rows.iter().enumerate() {
        for (c, (&v, (name, lo, hi))) in row.iter().zip(COLUMNS).enumerate() {
            if !(lo..=hi).contains(&v) {
                return Err(field(
                    &format!("gpu_rows[{i}][{c}]"),
                    format!("{name} must be {lo} to {hi}"),
                ));
            }
        }
        let bit = 1u64 << row[0];
        if seen & bit != 0 {
            return Err(field(
                &format!("gpu_rows[{i}][0]"),
                format!("GPU index {} appears twice", row[0]),
            ));
        }
        seen |= bit;
    }
    Ok(())
}

/// Turns checked compact rows into samples of the GPUs registered at their indexes;
/// `Err(i)` names the first row whose index has no registered GPU.
fn expand_rows(hb: &mut Heartbeat, uuids: &[Option<String>]) -> std::result::Result<(), usize> {
    if hb.gpu_rows.is_empty() {
        return Ok(());
    }
    let mut gpus = Vec::with_capacity(hb.gpu_rows.len());
    for (i, r) in hb.gpu_rows.iter().enumerate() {
        // In range: checked by `validate_rows`.
        let Some(uuid) = usize::try_from(r[0])
            .ok()
            .and_then(|x| uuids.get(x))
            .and_then(Clone::clone)
        else {
            return Err(i);
        };
        gpus.push(r.sample(uuid));
    }
    hb.gpus = gpus;
    hb.gpu_rows = Vec::new();
    Ok(())
}

/// Telemetry as flushed to the database: compact rows of the node's GPUs by index, or
/// (as older versions wrote it) full samples.
fn stored_samples(json: &str, node: &Node) -> Option<Vec<GpuSample>> {
    if let Ok(rows) = serde_json::from_str::<Vec<GpuRow>>(json) {
        let gpus = node.gpus.as_ref()?;
        return Some(
            rows.iter()
                .filter_map(|r| {
                    let g = gpus.iter().find(|g| i64::from(g.index) == r[0])?;
                    Some(r.sample(g.uuid.clone()?))
                })
                .collect(),
        );
    }
    serde_json::from_str(json).ok()
}

/// Node changes of one health round taken at once (see [`side_by_side`]), and heartbeats
/// with news written at once.
const SIDE_BY_SIDE: usize = 64;

/// Runs `f` on every item, [`SIDE_BY_SIDE`] at a time, so that their commits share the
/// writer's transactions; stops after the first group in which one failed, with its error.
async fn side_by_side<T, F, Fut>(items: Vec<T>, f: F) -> Result<()>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        let group = items.by_ref().take(SIDE_BY_SIDE).map(&f);
        for done in futures_util::future::join_all(group).await {
            done?;
        }
    }
    Ok(())
}

/// Longest absence an agent may announce, seconds (the control plane waits at most its
/// grace period anyway).
const MAX_BACK_WITHIN: u32 = 86_400;

fn validate_heartbeat(hb: &Heartbeat, now: Timestamp) -> Result<()> {
    if let Some(l) = &hb.leaving
        && !(1..=MAX_BACK_WITHIN).contains(&l.back_within_secs)
    {
        return Err(field(
            "leaving.back_within_secs",
            format!("must be 1-{MAX_BACK_WITHIN} seconds"),
        ));
    }
    if hb.gpus.len() > MAX_GPUS {
        return Err(field("gpus", format!("at most {MAX_GPUS} GPUs")));
    }
    for (i, s) in hb.gpus.iter().enumerate() {
        validate_sample(i, s)?;
    }
    validate_rows(hb)?;
    if hb.events.len() > MAX_EVENTS {
        return Err(field(
            "events",
            format!("at most {MAX_EVENTS} events per heartbeat"),
        ));
    }
    let mut prev = 0u64;
    let earliest = now.plus_seconds(-30 * 86_400);
    let latest = now.plus_seconds(86_400);
    for (i, e) in hb.events.iter().enumerate() {
        let f = |name: &str| format!("events[{i}].{name}");
        if e.seq == 0 || e.seq <= prev || e.seq > i64::MAX.unsigned_abs() {
            return Err(field(&f("seq"), "sequence numbers start at 1 and increase"));
        }
        prev = e.seq;
        if e.at < earliest || e.at > latest {
            return Err(field(&f("at"), "must be within the last 30 days"));
        }
        if let Some(u) = &e.gpu_uuid {
            check_uuid(&f("gpu_uuid"), u)?;
        }
        match &e.kind {
            AgentEventKind::Xid { code, detail } => {
                if *code == 0 || *code > 100_000 {
                    return Err(field(&f("kind.code"), "must be an XID code 1-100000"));
                }
                if let Some(d) = detail {
                    check_text(&f("kind.detail"), d, MAX_TEXT)?;
                }
            }
            AgentEventKind::ThermalSlowdown => {}
            AgentEventKind::BurnIn { id, output, .. } => {
                check_text(&f("kind.id"), id, 128)?;
                check_text(&f("kind.output"), output, MAX_OUTPUT)?;
            }
        }
    }
    Ok(())
}

/// A fact derived from a heartbeat, ready to judge.
struct Fact {
    at: Timestamp,
    gpu: Option<(u32, String)>,
    kind: &'static str,
    code: Option<u32>,
    action: HealthAction,
    detail: String,
    burn_in: Option<(String, bool)>,
}

/// A lifecycle change to make.
#[derive(Clone)]
pub(crate) struct Change {
    to: NodeState,
    reason: String,
    /// When the fault happened: running work ends then, an outage starts then.
    at: Timestamp,
    /// A new burn-in to ask for (`Some(None)` clears the one waited for).
    burn_in: Option<Option<String>>,
    burn_in_passed: bool,
    /// GPU health changes: (index, health); `heal` sets every GPU healthy first.
    gpus: Vec<(u32, GpuHealth)>,
    heal: bool,
}

impl Change {
    /// A move to `to` for `reason` as of `at`, touching nothing else.
    pub(crate) fn to(to: NodeState, reason: String, at: Timestamp) -> Change {
        Change {
            to,
            reason,
            at,
            burn_in: None,
            burn_in_passed: false,
            gpus: Vec::new(),
            heal: false,
        }
    }

    /// The same change, also setting the burn-in waited for (`None` clears it).
    pub(crate) fn burn_in(mut self, id: Option<String>) -> Change {
        self.burn_in = Some(id);
        self
    }
}

/// What to do in memory once the change is committed.
/// The start of the message of a node change refused because the node moved on since it was
/// decided.
pub(crate) const NODE_MOVED: &str = "node changed meanwhile";

/// The message of a health report that another request stored first.
const DUPLICATE_REPORT: &str = "these health events were stored by another request";

/// The node's own rows of a lifecycle change: its state, burn-in and GPUs' health, the
/// state event of its health history and the audit event. A change of GPU health alone
/// writes just that.
fn node_rows(
    node: Node,
    from: NodeState,
    c: Change,
    actor: Option<ApiKeyId>,
    now: Timestamp,
) -> Extra {
    extra(move |_, tx| {
        Box::pin(async move {
            let gpus_only = c.to == from && c.burn_in.is_none() && !c.heal && !c.burn_in_passed;
            if !gpus_only {
                Store::node_set_state(tx, node.id, c.to, Some(&c.reason), now).await?;
                if c.to == NodeState::Unreachable && from != NodeState::Unreachable {
                    // Kept with the node: a restart of the control plane still knows where
                    // it returns to.
                    Store::node_set_unreachable_from(
                        tx,
                        node.id,
                        Some((from, node.state_reason.as_deref())),
                    )
                    .await?;
                } else if from == NodeState::Unreachable && c.to != NodeState::Unreachable {
                    Store::node_set_unreachable_from(tx, node.id, None).await?;
                }
                if let Some(b) = &c.burn_in {
                    Store::node_set_burn_in(
                        tx,
                        node.id,
                        b.as_deref(),
                        c.burn_in_passed.then_some(now),
                    )
                    .await?;
                } else if c.burn_in_passed {
                    Store::node_set_burn_in(tx, node.id, None, Some(now)).await?;
                }
                if c.heal {
                    Store::gpu_set_health(tx, node.id, None, GpuHealth::Healthy).await?;
                }
            }
            for (i, h) in &c.gpus {
                Store::gpu_set_health(tx, node.id, Some(*i), *h).await?;
            }
            if gpus_only {
                return Ok(());
            }
            Store::health_event_insert(
                tx,
                &[HealthEvent {
                    id: String::new(),
                    at: now,
                    node_id: node.id,
                    node: node.name.clone(),
                    gpu_uuid: None,
                    gpu_index: None,
                    kind: "state".into(),
                    code: None,
                    action: c.to.as_str().into(),
                    detail: format!("{from} → {}: {}", c.to, c.reason),
                }],
            )
            .await?;
            Store::event_insert(
                tx,
                NewEvent {
                    actor,
                    tenant_id: None,
                    action: "node.state_changed",
                    resource_kind: "node",
                    resource_id: node.id.to_string(),
                    before: Some(serde_json::json!({"state": from})),
                    after: Some(serde_json::json!({"state": c.to, "reason": c.reason})),
                },
            )
            .await?;
            Ok(())
        })
    })
}

pub(crate) fn new_burn_in_id() -> String {
    format!("bi_{}", neocloud_types::EventId::new().uuid().simple())
}

impl Service {
    /// Registers a node's agent: checks the inventory against the fleet, records the GPUs'
    /// UUIDs, and starts burn-in for a node still provisioning. With an enrollment key (a
    /// node-agent key bound to no node) it mints a key for the node, returned once.
    pub async fn agent_register(
        &self,
        p: &Principal,
        req: AgentRegister,
    ) -> Result<AgentRegistered> {
        auth::authorize(p, Action::AgentRegister)?;
        // A key bound to a node speaks for that node only: 403 before the report is checked.
        if let Some(bound) = p.node_id {
            let own = self.store.node_get(&bound.to_string()).await?;
            if own.name != req.hostname {
                return Err(Error::forbidden(format!(
                    "this key speaks for node '{}', not '{}'",
                    own.name, req.hostname
                )));
            }
        }
        validate_register(&req)?;
        let node = self.store.node_get(&req.hostname).await.or_not_found(|| {
            Error::not_found("node", &req.hostname)
                .with_hint("add the node to the fleet file first (agents do not create nodes)")
        })?;
        if let Some(bound) = p.node_id
            && bound != node.id
        {
            return Err(Error::forbidden(format!(
                "this key speaks for another node, not '{}'",
                node.name
            )));
        }
        if usize::try_from(node.gpu_count).ok() != Some(req.gpus.len()) {
            return Err(Error::new(
                ErrorCode::Conflict,
                format!(
                    "node '{}' has {} GPUs in the fleet but the agent found {}; fix the fleet \
                     file or the server",
                    node.name,
                    node.gpu_count,
                    req.gpus.len()
                ),
            ));
        }
        let model = self.store.gpu_model_get(&node.gpu_model).await?;
        for g in &req.gpus {
            // Drivers report a little less than the marketing size (80 GB → 81,559 MiB).
            let gib = g.memory_mib / 1024;
            let want = u64::from(model.memory_gib);
            if gib * 10 < want * 8 || gib * 10 > want * 12 {
                return Err(Error::new(
                    ErrorCode::Conflict,
                    format!(
                        "GPU {} of '{}' has {} MiB but the fleet says {} ({} GiB)",
                        g.index, node.name, g.memory_mib, model.name, model.memory_gib
                    ),
                ));
            }
        }
        let now = self.now();
        let agent_json = serde_json::json!({
            "agent_version": req.agent_version,
            "backend": req.backend,
            "driver_version": req.driver_version,
            "cpu_cores": req.cpu_cores,
            "ram_gib": req.ram_gib,
        })
        .to_string();
        let mut gpus = req.gpus.clone();
        gpus.sort_by_key(|g| g.index);

        // The key is minted here; the rows are written with the node's change (if any), in
        // order with the scheduler's decisions.
        let minted = if p.node_id.is_none() {
            Some(auth::mint_key()?)
        } else {
            None
        };
        let node_key = minted.as_ref().map(|m| m.secret.clone());
        let revoked_out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seq = self.store.agent_nodes_seq(node.id).await?;
        let current = crate::scheduler::lock(&self.sched)
            .node_state(node.id)
            .unwrap_or(node.state);
        let mut state = current;
        let mut burn_in = self.store.node_burn_in(node.id).await?;
        let rows = {
            let node = node.clone();
            let gpus = gpus.clone();
            let agent_json = agent_json.clone();
            let revoked_out = revoked_out.clone();
            let actor = p.key_id;
            extra(move |_, tx| {
                Box::pin(async move {
                    Store::node_agent_register(tx, node.id, &agent_json, &gpus, now).await?;
                    if let Some(minted) = minted {
                        let revoked = Store::api_key_revoke_for_node(tx, node.id, now).await?;
                        *lock(&revoked_out) = revoked;
                        let key = ApiKey {
                            id: ApiKeyId::new(),
                            name: format!("agent {}", node.name),
                            role: Role::NodeAgent,
                            tenant_id: None,
                            prefix: minted.prefix.clone(),
                            created_at: now,
                            expires_at: None,
                            revoked_at: None,
                            last_used_at: None,
                            node_id: Some(node.id),
                        };
                        Store::api_key_create(tx, &key, &minted.hash).await?;
                    }
                    Store::event_insert(
                        tx,
                        NewEvent {
                            actor: Some(actor),
                            tenant_id: None,
                            action: "node.agent_registered",
                            resource_kind: "node",
                            resource_id: node.id.to_string(),
                            before: None,
                            after: serde_json::from_str(&agent_json).ok(),
                        },
                    )
                    .await?;
                    Ok(())
                })
            })
        };
        if current == NodeState::Provisioning {
            let id = new_burn_in_id();
            self.change_node(
                &node,
                current,
                Change::to(
                    NodeState::BurnIn,
                    "agent registered; burn-in check requested".into(),
                    now,
                )
                .burn_in(Some(id.clone())),
                Some(p.key_id),
                Some(rows),
            )
            .await?;
            state = NodeState::BurnIn;
            burn_in = Some(id);
        } else {
            self.write_ordered(rows).await?;
        }
        let revoked = std::mem::take(&mut *lock(&revoked_out));
        self.forget_prefixes(&revoked);
        {
            let mut live = lock(&self.health.live);
            let flags = vec![(false, false, false); gpus.len()];
            let l = live
                .entry(node.id)
                .or_insert_with(|| Live::new(node.name.clone(), now, seq, state, gpus.len()));
            l.last_seen = now;
            l.away = None;
            l.acked_seq = seq;
            l.set(state);
            l.burn_in = burn_in.clone();
            l.uuids = gpus.iter().map(|g| Some(g.uuid.clone())).collect();
            if l.flags.len() != gpus.len() {
                l.flags = flags;
            }
        }
        if state == NodeState::Unreachable {
            // A restarted agent: its node simply continues.
            state = self.reachable_again(node.id, Some(p.key_id)).await?;
        }
        Ok(AgentRegistered {
            node_id: node.id,
            node: node.name,
            state,
            heartbeat_interval_secs: self.health.interval_secs,
            last_seq: seq,
            node_key,
            burn_in: (state == NodeState::BurnIn)
                .then_some(burn_in)
                .flatten()
                .map(|id| BurnInRequest { id }),
        })
    }

    /// Takes a heartbeat: refreshes the node's telemetry in memory and, when it carries new
    /// events or a GPU's flags changed, judges them by the policy and stores them.
    pub async fn agent_heartbeat(&self, p: &Principal, mut hb: Heartbeat) -> Result<HeartbeatAck> {
        auth::authorize(p, Action::AgentHeartbeat)?;
        let node_id = heartbeat_node(p)?;
        let now = self.now();
        validate_heartbeat(&hb, now)?;
        crate::delivery::validate_reports(&hb.workloads)?;
        let reports = std::mem::take(&mut hb.workloads);
        let (from_seq, facts, restore) = {
            let mut live = lock(&self.health.live);
            let Some(l) = live.get_mut(&node_id) else {
                return Err(
                    Error::not_found("registered agent for node", &node_id.to_string())
                        .with_hint("register the agent first (POST /v1/agent/register)"),
                );
            };
            if let Err(i) = expand_rows(&mut hb, &l.uuids) {
                return Err(field(
                    &format!("gpu_rows[{i}][0]"),
                    format!(
                        "node '{}' has no GPU registered at index {}",
                        l.name, hb.gpu_rows[i][0]
                    ),
                ));
            }
            let index_of = |u: &str| -> Option<u32> {
                l.uuids
                    .iter()
                    .position(|x| x.as_deref() == Some(u))
                    .and_then(|i| u32::try_from(i).ok())
            };
            for (i, s) in hb.gpus.iter().enumerate() {
                if index_of(&s.uuid).is_none() {
                    return Err(field(
                        &format!("gpus[{i}].uuid"),
                        format!("'{}' is not a GPU of node '{}'", s.uuid, l.name),
                    ));
                }
            }
            for (i, e) in hb.events.iter().enumerate() {
                if let Some(u) = &e.gpu_uuid
                    && index_of(u).is_none()
                {
                    return Err(field(
                        &format!("events[{i}].gpu_uuid"),
                        format!("'{u}' is not a GPU of node '{}'", l.name),
                    ));
                }
            }
            l.last_seen = now;
            let restore = l.state == NodeState::Unreachable;
            let mut facts = Vec::new();
            // Leaving on purpose: not unreachable until the agent's announced time (at most
            // the grace period) has passed. Any other heartbeat cancels it.
            l.away = hb.leaving.as_ref().map(|lv| {
                let secs = i64::from(lv.back_within_secs).min(self.health.grace_secs);
                facts.push(Fact {
                    at: now,
                    gpu: None,
                    kind: "agent_leaving",
                    code: None,
                    action: HealthAction::Record,
                    detail: format!(
                        "agent stopping ({}), back within {} s; waited for {secs} s",
                        lv.reason.as_str(),
                        lv.back_within_secs
                    ),
                    burn_in: None,
                });
                (now.plus_seconds(secs), lv.reason.as_str().to_string())
            });
            for e in hb.events.iter().filter(|e| e.seq > l.acked_seq) {
                facts.push(self.judge(e, index_of(e.gpu_uuid.as_deref().unwrap_or(""))));
            }
            // Flags that turned on since the last heartbeat are facts too.
            let (flags, flag_facts) = flags_turned_on(&l.flags, &hb.gpus, index_of, now);
            facts.extend(flag_facts);
            let new_seq = hb
                .events
                .last()
                .map_or(l.acked_seq, |e| e.seq.max(l.acked_seq));
            l.samples = hb.gpus;
            l.samples_at = now;
            l.dirty = true;
            crate::metrics::METRICS
                .heartbeats
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if facts.is_empty() {
                l.flags = flags;
                l.acked_seq = new_seq;
                (0, Err(self.ack(l)), restore)
            } else {
                l.flags = flags;
                (l.acked_seq, Ok((facts, new_seq)), restore)
            }
        };
        let ack = match facts {
            Err(ack) if !restore => ack,
            // News, already taken out of memory (flags, the leaving notice): written by a
            // task of its own, so that a caller that goes away meanwhile (a relay that gave
            // up waiting, while a whole site comes back) does not lose it halfway.
            facts => {
                let svc = self.clone();
                let key = p.key_id;
                tokio::spawn(
                    async move { svc.write_news(node_id, from_seq, facts, restore, key).await },
                )
                .await
                .map_err(|e| Error::internal(format!("writing a heartbeat's news: {e}")))??
            }
        };
        self.with_desired(node_id, reports, ack).await
    }

    /// Writes a heartbeat's news (its facts from `from_seq`, and the node's return from
    /// `unreachable` when `restore`), waiting for one of the [`SIDE_BY_SIDE`] turns so that
    /// the commits of many nodes are grouped; returns the acknowledgement.
    async fn write_news(
        &self,
        node_id: NodeId,
        from_seq: u64,
        facts: std::result::Result<(Vec<Fact>, u64), HeartbeatAck>,
        restore: bool,
        actor: ApiKeyId,
    ) -> Result<HeartbeatAck> {
        let _turn = self
            .health
            .news
            .acquire()
            .await
            .map_err(|_| Error::internal("the health monitor is closed"))?;
        // Heard from again: an unreachable node returns to its state first, unless the news
        // fails it anyway (then it fails from `unreachable`).
        let fails = facts
            .as_ref()
            .is_ok_and(|(f, _)| f.iter().any(|f| f.action == HealthAction::Fail));
        if restore && !fails {
            self.reachable_again(node_id, Some(actor)).await?;
        }
        if let Ok((facts, to_seq)) = facts {
            self.health_record(node_id, from_seq, to_seq, facts, Some(actor))
                .await?;
        }
        let live = lock(&self.health.live);
        let l = live
            .get(&node_id)
            .ok_or_else(|| Error::internal("node left the monitor"))?;
        Ok(self.ack(l))
    }

    /// On a replica that does not lead: answers a heartbeat without news from this
    /// replica's memory, or says that the leader must take it ([`Heard::Leader`]).
    ///
    /// News is anything that may change the database: an event not yet acknowledged, a GPU
    /// flag that turned on, an agent leaving, a workload report that is not "still running
    /// as recorded" or carries output, a GPU this replica does not know, a node it does
    /// not know or whose state is not a steady one (available, allocated, cordoned,
    /// draining). Everything else touches only memory: the node's telemetry and when it
    /// was heard from, written in batches ([`Service::follower_agent_flush`]) for the
    /// leader to read before it counts a node silent.
    pub fn agent_heartbeat_here(&self, p: &Principal, hb: &mut Heartbeat) -> Result<Heard> {
        auth::authorize(p, Action::AgentHeartbeat)?;
        let node_id = heartbeat_node(p)?;
        let now = self.now();
        validate_heartbeat(hb, now)?;
        crate::delivery::validate_reports(&hb.workloads)?;
        let leader = |relearn: bool, flags| {
            crate::metrics::METRICS
                .heartbeats_passed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(Heard::Leader(Passed {
                node: node_id,
                relearn,
                flags,
            }))
        };
        if hb.leaving.is_some() {
            return leader(false, None);
        }
        let (state, steady) = {
            let s = crate::scheduler::lock(&self.sched);
            let steady = hb.workloads.iter().all(|r| {
                r.log.is_empty()
                    && r.phase == neocloud_types::WorkloadPhase::Running
                    && s.instance(r.instance_id).is_some_and(|i| {
                        i.state == neocloud_types::InstanceState::Running
                            && i.placement.iter().any(|p| p.node_id == node_id)
                            && (r.access.is_none() || r.access == i.access)
                    })
            });
            (s.node_state(node_id), steady)
        };
        let Some(state) = state.filter(|s| {
            matches!(
                s,
                NodeState::Available
                    | NodeState::Allocated
                    | NodeState::Cordoned
                    | NodeState::Draining
            )
        }) else {
            return leader(false, None);
        };
        if !steady {
            return leader(false, None);
        }
        let ack = {
            let mut live = lock(&self.health.live);
            let Some(l) = live.get_mut(&node_id) else {
                return leader(true, None);
            };
            if expand_rows(hb, &l.uuids).is_err() {
                return leader(true, None);
            }
            let index_of = |u: &str| l.uuids.iter().position(|x| x.as_deref() == Some(u));
            if hb.gpus.iter().any(|g| index_of(&g.uuid).is_none())
                || hb
                    .events
                    .iter()
                    .any(|e| e.gpu_uuid.as_deref().is_some_and(|u| index_of(u).is_none()))
            {
                return leader(true, None);
            }
            if hb.events.iter().any(|e| e.seq > l.acked_seq) {
                return leader(false, None);
            }
            let index_of = |u: &str| index_of(u).and_then(|i| u32::try_from(i).ok());
            let (flags, turned_on) = flags_turned_on(&l.flags, &hb.gpus, index_of, now);
            if !turned_on.is_empty() {
                return leader(false, Some(flags));
            }
            l.flags = flags;
            l.last_seen = now;
            l.away = None;
            l.set(state);
            l.samples = std::mem::take(&mut hb.gpus);
            l.samples_at = now;
            l.dirty = true;
            lock(&self.health.seen).insert(node_id, now);
            crate::metrics::METRICS
                .heartbeats
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.ack(l)
        };
        let mut ack = ack;
        ack.desired = Some(
            crate::scheduler::lock(&self.sched).desired(node_id, crate::delivery::STOP_GRACE_SECS),
        );
        Ok(Heard::Here(ack))
    }

    /// After the leader took a heartbeat this replica passed on ([`Heard::Leader`]):
    /// remembers what it acknowledged and the GPU flags it was told. An agent this replica
    /// did not know (a new registration, new GPUs) is read from the database at its next
    /// tick, with the others of that moment in one batch ([`Service::follower_agent_flush`]),
    /// so that its next heartbeats are answered here.
    pub fn agent_passed(&self, passed: Passed, ack: &HeartbeatAck) {
        let mut live = lock(&self.health.live);
        match live.get_mut(&passed.node) {
            Some(l) if !passed.relearn => {
                l.acked_seq = l.acked_seq.max(ack.acked_seq);
                l.set(ack.state);
                if let Some(f) = passed.flags {
                    l.flags = f;
                }
            }
            _ => {
                lock(&self.health.to_learn).insert(passed.node);
            }
        }
    }

    /// Reads the agents this replica was told of since its last tick.
    async fn learn_agents(&self) -> Result<()> {
        let nodes: Vec<NodeId> = std::mem::take(&mut *lock(&self.health.to_learn))
            .into_iter()
            .collect();
        if nodes.is_empty() {
            return Ok(());
        }
        let read = match self.store.agent_nodes_in(&nodes).await {
            Ok(r) => r,
            Err(e) => {
                lock(&self.health.to_learn).extend(nodes);
                return Err(e.into());
            }
        };
        let now = self.now();
        let mut live = lock(&self.health.live);
        for n in read {
            let id = n.id;
            live.insert(id, Monitor::live_of(n, now));
        }
        Ok(())
    }

    /// The periodic work stalled (its last round took `took`: a database pause, a frozen
    /// process): what followers heard meanwhile reaches the database late, so silence is
    /// not judged until they have written twice more.
    pub fn health_stalled(&self, took: std::time::Duration) {
        let wait =
            std::time::Duration::from_secs(u64::try_from(2 * SEEN_FLUSH_SECS + 1).unwrap_or(5));
        *lock(&self.health.blind_until) = Some(std::time::Instant::now() + wait);
        tracing::info!(
            took_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            "the periodic work stalled; silence is judged again in {} s",
            wait.as_secs()
        );
    }

    /// On a replica that does not lead: writes when it last heard from each agent (every
    /// couple of seconds) and their latest telemetry (at the flush interval). Neither
    /// write is fenced: they change nothing the leader decides with.
    pub async fn follower_agent_flush(&self, now: Timestamp) -> Result<()> {
        self.learn_agents().await?;
        {
            let mut last = lock(&self.health.last_seen_flush);
            if last.plus_seconds(SEEN_FLUSH_SECS) > now {
                return Ok(());
            }
            *last = now;
        }
        let batch: Vec<(NodeId, Timestamp)> = lock(&self.health.seen).drain().collect();

        if !batch.is_empty() {
            let wrote = async {
                let mut tx = self.store.begin_write_unfenced().await?;
                Store::agent_seen_put(&mut tx, &batch).await?;
                tx.commit().await?;
                Ok::<_, Error>(())
            }
            .await;
            if let Err(e) = wrote {
                // Kept for the next try; a later time heard wins.
                let mut seen = lock(&self.health.seen);
                for (node, at) in batch {
                    let t = seen.entry(node).or_insert(at);
                    if *t < at {
                        *t = at;
                    }
                }
                return Err(e);
            }
        }
        self.health_flush(now, false).await
    }

    /// The leader: nodes it has not heard from itself for a heartbeat interval may have
    /// been heard by another replica. Reads when, for those nodes only, and returns an
    /// `unreachable` one that was heard again to its state.
    ///
    /// A node is asked about once its next heartbeat should have reached the database
    /// through a follower (an interval and two of the followers' flushes after the last one
    /// known here), then at most every half interval while nothing newer is there; and
    /// always just before this tick would mark it unreachable or failed.
    async fn heard_elsewhere(&self, now: Timestamp) -> Result<()> {
        let interval = i64::from(self.health.interval_secs);
        let limit = interval * i64::from(self.health.missed);
        let grace = self.health.grace_secs;
        let settle = interval + 2 * SEEN_FLUSH_SECS;
        let retry = (interval / 2).max(1);
        let ask: Vec<NodeId> = lock(&self.health.live)
            .iter_mut()
            .filter(|(_, l)| {
                if matches!(l.state, NodeState::Failed | NodeState::Maintenance) {
                    return false;
                }
                let marks_now = (l.state != NodeState::Unreachable
                    && l.last_seen.plus_seconds(limit) < now)
                    || l.last_seen.plus_seconds(grace) < now;
                marks_now
                    || (l.last_seen.plus_seconds(settle) < now
                        && l.asked.plus_seconds(retry) <= now)
            })
            .map(|(id, l)| {
                l.asked = now;
                *id
            })
            .collect();
        if ask.is_empty() {
            return Ok(());
        }
        let heard = self.store.agent_seen_get(&ask).await?;
        let mut back = Vec::new();
        {
            let mut live = lock(&self.health.live);
            for (node, at) in heard {
                if let Some(l) = live.get_mut(&node)
                    && at > l.last_seen
                {
                    l.last_seen = at;
                    l.away = None;
                    if l.state == NodeState::Unreachable {
                        back.push(node);
                    }
                }
            }
        }
        for node in back {
            self.reachable_again(node, None).await?;
        }
        Ok(())
    }

    /// Takes the heartbeat's workload reports and puts what should run on the node into
    /// the answer.
    async fn with_desired(
        &self,
        node: NodeId,
        reports: Vec<neocloud_types::WorkloadReport>,
        mut ack: HeartbeatAck,
    ) -> Result<HeartbeatAck> {
        ack.desired = Some(self.agent_workloads(node, reports).await?);
        Ok(ack)
    }

    fn ack(&self, l: &Live) -> HeartbeatAck {
        HeartbeatAck {
            acked_seq: l.acked_seq,
            state: l.state,
            heartbeat_interval_secs: self.health.interval_secs,
            burn_in: (l.state == NodeState::BurnIn)
                .then(|| l.burn_in.clone())
                .flatten()
                .map(|id| BurnInRequest { id }),
            desired: None,
        }
    }

    fn judge(&self, e: &AgentEvent, index: Option<u32>) -> Fact {
        let gpu = match (&e.gpu_uuid, index) {
            (Some(u), Some(i)) => Some((i, u.clone())),
            _ => None,
        };
        match &e.kind {
            AgentEventKind::Xid { code, detail } => {
                let action = self.health.xid_action(*code);
                Fact {
                    at: e.at,
                    gpu,
                    kind: "xid",
                    code: Some(*code),
                    action,
                    detail: format!(
                        "XID {code}{}{}",
                        builtin_xid_rules()
                            .iter()
                            .find(|(c, _, _)| c == code)
                            .map(|(_, _, m)| format!(" ({m})"))
                            .unwrap_or_default(),
                        detail
                            .as_deref()
                            .map(|d| format!(": {d}"))
                            .unwrap_or_default()
                    ),
                    burn_in: None,
                }
            }
            AgentEventKind::ThermalSlowdown => Fact {
                at: e.at,
                gpu,
                kind: "thermal_slowdown",
                code: None,
                action: HealthAction::Record,
                detail: "thermal slowdown".into(),
                burn_in: None,
            },
            AgentEventKind::BurnIn { id, passed, output } => Fact {
                at: e.at,
                gpu: None,
                kind: "burn_in",
                code: None,
                action: HealthAction::Record,
                detail: format!(
                    "burn-in {}{}",
                    if *passed { "passed" } else { "failed" },
                    if output.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", tail(output, 500))
                    }
                ),
                burn_in: Some((id.clone(), *passed)),
            },
        }
    }

    /// Stores facts of a node exactly once and acts on them.
    async fn health_record(
        &self,
        node_id: NodeId,
        from_seq: u64,
        to_seq: u64,
        facts: Vec<Fact>,
        actor: Option<ApiKeyId>,
    ) -> Result<()> {
        let node = self.store.node_get(&node_id.to_string()).await?;
        let waiting_for = self.store.node_burn_in(node_id).await?;
        // Events stored already (an agent's retry) are duplicates: acknowledged, not acted on
        // again.
        if to_seq > from_seq {
            let seq = self.store.agent_nodes_seq(node_id).await?;
            if seq >= to_seq {
                if let Some(l) = lock(&self.health.live).get_mut(&node_id) {
                    l.acked_seq = l.acked_seq.max(seq);
                }
                return Ok(());
            }
        }
        // The scheduler's view of the node's state is the current one.
        let mut node = node;
        if let Some(st) = crate::scheduler::lock(&self.sched).node_state(node_id) {
            node.state = st;
        }
        let rows: Vec<HealthEvent> = facts
            .iter()
            .map(|f| HealthEvent {
                id: String::new(),
                at: f.at,
                node_id,
                node: node.name.clone(),
                gpu_uuid: f.gpu.as_ref().map(|(_, u)| u.clone()),
                gpu_index: f.gpu.as_ref().map(|(i, _)| *i),
                kind: f.kind.to_string(),
                code: f.code,
                action: f.action.as_str().to_string(),
                detail: f.detail.clone(),
            })
            .collect();
        let n_rows = u64::try_from(rows.len()).unwrap_or(0);
        let events = extra(move |_, tx| {
            Box::pin(async move {
                if to_seq > from_seq
                    && !Store::node_advance_seq(tx, node_id, from_seq, to_seq).await?
                {
                    // Another request stored these events first.
                    return Err(Error::new(ErrorCode::Conflict, DUPLICATE_REPORT));
                }
                Store::health_event_insert(tx, &rows).await?;
                Ok(())
            })
        });

        // The worst fact decides the node's fate.
        let worst = facts.iter().max_by_key(|f| f.action);
        let mut gpus = Vec::new();
        for f in &facts {
            if let Some((i, _)) = &f.gpu {
                match f.action {
                    HealthAction::Fail => gpus.push((*i, GpuHealth::Failed)),
                    HealthAction::Drain => gpus.push((*i, GpuHealth::Degraded)),
                    _ => {}
                }
            }
        }
        let mut change = None;
        if let Some(w) = worst {
            let reason = match &w.gpu {
                Some((i, _)) => format!("GPU {i}: {}", w.detail),
                None => w.detail.clone(),
            };
            match w.action {
                HealthAction::Fail if node.state != NodeState::Failed => {
                    change = Some(Change {
                        gpus: gpus.clone(),
                        ..Change::to(NodeState::Failed, reason, w.at.min(self.now())).burn_in(None)
                    });
                }
                HealthAction::Drain
                    if matches!(
                        node.state,
                        NodeState::Available
                            | NodeState::Allocated
                            | NodeState::Cordoned
                            | NodeState::BurnIn
                    ) =>
                {
                    change = Some(Change {
                        gpus: gpus.clone(),
                        ..Change::to(NodeState::Draining, reason, w.at.min(self.now()))
                            .burn_in(None)
                    });
                }
                _ => {}
            }
        }
        if change.is_none() {
            // A burn-in result for the burn-in the node waits for.
            for f in &facts {
                let Some((id, passed)) = &f.burn_in else {
                    continue;
                };
                if node.state != NodeState::BurnIn || waiting_for.as_deref() != Some(id.as_str()) {
                    continue;
                }
                change = Some(if *passed {
                    Change {
                        burn_in_passed: true,
                        ..Change::to(NodeState::Available, "burn-in passed".into(), self.now())
                            .burn_in(None)
                    }
                } else {
                    Change::to(NodeState::Maintenance, f.detail.clone(), self.now()).burn_in(None)
                });
            }
        }
        if change.is_none() && !gpus.is_empty() {
            // GPU health alone changes.
            change = Some(Change {
                gpus: gpus.clone(),
                ..Change::to(node.state, String::new(), self.now())
            });
        }
        let new_state = change.as_ref().map_or(node.state, |c| c.to);
        let burn_in_change = change.as_ref().and_then(|c| c.burn_in.clone());
        let passed = change.as_ref().is_some_and(|c| c.burn_in_passed);
        let written = match change {
            Some(c) => {
                self.change_node(&node, node.state, c, actor, Some(events))
                    .await
            }
            // Events alone change nothing a follower's copy holds: followers need not
            // rebuild for them.
            None => self.write_ordered(events.quiet()).await,
        };
        match written {
            Ok(()) => {
                crate::metrics::METRICS
                    .health_events
                    .fetch_add(n_rows, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) if e.message == DUPLICATE_REPORT => {
                let seq = self.store.agent_nodes_seq(node_id).await?;
                if let Some(l) = lock(&self.health.live).get_mut(&node_id) {
                    l.acked_seq = l.acked_seq.max(seq);
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        {
            let mut live = lock(&self.health.live);
            if let Some(l) = live.get_mut(&node_id) {
                l.acked_seq = l.acked_seq.max(to_seq);
                l.set(new_state);
                if let Some(b) = burn_in_change {
                    l.burn_in = b;
                }
                if passed {
                    // Re-verification counts from here, not from what was loaded at start.
                    l.burn_in_passed_at = Some(self.now());
                }
            }
        }
        Ok(())
    }

    /// Decides a node's lifecycle change (or a change of its GPUs' health alone) in the
    /// scheduler, which ends the work of a failed node and moves pool nodes, and commits it
    /// with the node's own rows; `more` is written first, in the same transaction. `from` is
    /// the state the change was decided from: if the node moved on meanwhile, nothing
    /// changes and the answer is a conflict ([`NODE_MOVED`]).
    pub(crate) async fn change_node(
        &self,
        node: &Node,
        from: NodeState,
        c: Change,
        actor: Option<ApiKeyId>,
        more: Option<Extra>,
    ) -> Result<()> {
        let now = self.now();
        let cmd = neocloud_scheduler::Command::Node(neocloud_scheduler::NodeChange {
            node: node.id,
            from: Some(from),
            to: c.to,
            at: c.at,
            reason: c.reason.clone(),
            heal: c.heal,
            gpus: c
                .gpus
                .iter()
                .map(|(i, h)| (*i, *h == GpuHealth::Healthy))
                .collect(),
        });
        let rows = node_rows(node.clone(), from, c.clone(), actor, now);
        let all = match more {
            Some(m) => extra(move |store, tx| {
                Box::pin(async move {
                    m.run(store, &mut *tx).await?;
                    rows.run(store, tx).await
                })
            }),
            None => rows,
        };
        self.decide(cmd, now, actor, move |_, _| Ok(Some(all)))
            .await?;
        let mut d = lock(&self.health.draining);
        if c.to == NodeState::Draining {
            d.insert(node.id);
        } else {
            d.remove(&node.id);
        }
        Ok(())
    }

    /// Moves a node to `to` from whatever state the scheduler has it in now, if `when`
    /// accepts that state (the system acting, as planned maintenance does). Returns whether
    /// it moved.
    pub(crate) async fn move_node(
        &self,
        node_id: NodeId,
        when: impl Fn(NodeState, Option<&str>) -> bool,
        to: NodeState,
        reason: String,
        burn_in: Option<Option<String>>,
    ) -> Result<bool> {
        let stored = self.store.node_get(&node_id.to_string()).await?;
        for _ in 0..3 {
            let mut node = stored.clone();
            if let Some(st) = crate::scheduler::lock(&self.sched).node_state(node_id) {
                node.state = st;
            }
            if !when(node.state, node.state_reason.as_deref()) {
                return Ok(false);
            }
            let mut change = Change::to(to, reason.clone(), self.now());
            change.burn_in = burn_in.clone();
            match self
                .change_node(&node, node.state, change, None, None)
                .await
            {
                Ok(()) => {
                    self.health.set_state(node_id, to, burn_in);
                    return Ok(true);
                }
                Err(e) if e.message.starts_with(NODE_MOVED) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// An `unreachable` node's agent is heard from again: the node returns to the state it
    /// had before (`cordoned` if that is unknown, so an operator decides). Returns the
    /// node's state after.
    async fn reachable_again(&self, node_id: NodeId, actor: Option<ApiKeyId>) -> Result<NodeState> {
        let before = lock(&self.health.live)
            .get(&node_id)
            .and_then(|l| l.before.clone());
        let node = self.store.node_get(&node_id.to_string()).await?;
        let (to, reason) = match before {
            Some((to, reason)) => (
                to,
                match reason {
                    Some(r) => format!("agent heard from again ({to}: {r})"),
                    None => format!("agent heard from again ({to})"),
                },
            ),
            None => (
                NodeState::Cordoned,
                "agent heard from again; the state before it was unreachable is unknown, so \
                 it stays out of new placements until an operator uncordons it"
                    .to_string(),
            ),
        };
        let now = self.now();
        match self
            .change_node(
                &node,
                NodeState::Unreachable,
                Change::to(to, reason, now),
                actor,
                None,
            )
            .await
        {
            Ok(()) => {
                self.health.set_state(node_id, to, None);
                Ok(to)
            }
            // Moved on meanwhile (failed at the end of its grace period, say): as it is now.
            Err(e) if e.message.starts_with(NODE_MOVED) => {
                let now_state = crate::scheduler::lock(&self.sched)
                    .node_state(node_id)
                    .unwrap_or(node.state);
                self.health.set_state(node_id, now_state, None);
                Ok(now_state)
            }
            Err(e) => Err(e),
        }
    }

    /// Marks a silent node `unreachable` (from `from`, the scheduler's view): no new work,
    /// what runs stays. Returns false when the node moved on meanwhile.
    async fn mark_unreachable(
        &self,
        node_id: NodeId,
        from: NodeState,
        reason: String,
        now: Timestamp,
    ) -> Result<bool> {
        let node = self.store.node_get(&node_id.to_string()).await?;
        let before_reason = node.state_reason.clone();
        match self
            .change_node(
                &node,
                from,
                Change::to(NodeState::Unreachable, reason, now),
                None,
                None,
            )
            .await
        {
            Ok(()) => {}
            Err(e) if e.message.starts_with(NODE_MOVED) => return Ok(false),
            Err(e) => return Err(e),
        }
        if let Some(l) = lock(&self.health.live).get_mut(&node_id) {
            l.state = NodeState::Unreachable;
            l.before = Some((from, before_reason));
        }
        Ok(true)
    }

    /// Applies an operator's lifecycle operation to a node.
    async fn node_operate(
        &self,
        p: &Principal,
        id_or_name: &str,
        op: &str,
        body: NodeOperation,
    ) -> Result<Node> {
        auth::authorize(p, Action::WriteFleet)?;
        if let Some(r) = &body.reason {
            check_text("reason", r, 500)?;
        }
        let stored = self.store.node_get(id_or_name).await?;
        // Decided from the scheduler's view of the node's state; if another operation moves
        // the node in between, decide again from the new state.
        let mut tries = 0;
        loop {
            let mut node = stored.clone();
            if let Some(st) = crate::scheduler::lock(&self.sched).node_state(node.id) {
                node.state = st;
            }
            let reason = |default: &str| body.reason.clone().unwrap_or_else(|| default.to_string());
            let now = self.now();
            let bad = |allowed: &str| {
                Error::new(
                    ErrorCode::Conflict,
                    format!(
                        "node '{}' is {}; {op} applies to {allowed} nodes",
                        node.name, node.state
                    ),
                )
            };
            let change = match op {
                "cordon" => match node.state {
                    NodeState::Cordoned => return self.node_get(p, &node.id.to_string()).await,
                    NodeState::Available | NodeState::Allocated | NodeState::BurnIn => {
                        Change::to(NodeState::Cordoned, reason("cordoned by an operator"), now)
                    }
                    _ => return Err(bad("available, allocated or burn_in")),
                },
                "uncordon" => match node.state {
                    NodeState::Available | NodeState::Allocated => {
                        return self.node_get(p, &node.id.to_string()).await;
                    }
                    NodeState::Cordoned | NodeState::Draining => Change::to(
                        NodeState::Available,
                        reason("uncordoned by an operator"),
                        now,
                    ),
                    _ => return Err(bad("cordoned or draining")),
                },
                "drain" => match node.state {
                    NodeState::Draining | NodeState::Maintenance => {
                        return self.node_get(p, &node.id.to_string()).await;
                    }
                    NodeState::Available
                    | NodeState::Allocated
                    | NodeState::Cordoned
                    | NodeState::BurnIn
                    | NodeState::Provisioning => {
                        Change::to(NodeState::Draining, reason("drained by an operator"), now)
                            .burn_in(None)
                    }
                    NodeState::Failed | NodeState::Unreachable => {
                        return Err(bad("in-service (heard from)"));
                    }
                },
                "repair-complete" => match node.state {
                    NodeState::Maintenance | NodeState::Failed => Change {
                        heal: true,
                        ..Change::to(
                            NodeState::BurnIn,
                            reason("repair complete; burn-in check requested"),
                            now,
                        )
                        .burn_in(Some(new_burn_in_id()))
                    },
                    _ => return Err(bad("maintenance or failed")),
                },
                _ => return Err(Error::invalid(format!("unknown node operation '{op}'"))),
            };
            let to = change.to;
            let burn_in = change.burn_in.clone();
            match self
                .change_node(&node, node.state, change, Some(p.key_id), None)
                .await
            {
                Ok(()) => {}
                Err(e) if e.message.starts_with(NODE_MOVED) && tries < 3 => {
                    tries += 1;
                    continue;
                }
                Err(e) => return Err(e),
            }
            self.health.set_state(node.id, to, burn_in);
            return self.node_get(p, &node.id.to_string()).await;
        }
    }

    /// The operations that change a node in `state` (what `node_operate` accepts and does
    /// not answer as a no-op), with a label: what a console offers on the node's page.
    pub fn node_operations(state: NodeState) -> &'static [(&'static str, &'static str)] {
        match state {
            NodeState::Available | NodeState::Allocated | NodeState::BurnIn => {
                &[("cordon", "Cordon"), ("drain", "Drain")]
            }
            NodeState::Cordoned => &[("uncordon", "Uncordon"), ("drain", "Drain")],
            NodeState::Draining => &[("uncordon", "Uncordon")],
            NodeState::Provisioning => &[("drain", "Drain")],
            NodeState::Maintenance | NodeState::Failed => &[("repair-complete", "Repair complete")],
            NodeState::Unreachable => &[],
        }
    }

    /// Cordons a node: it takes no new work; what runs there stays.
    pub async fn node_cordon(&self, p: &Principal, id: &str, body: NodeOperation) -> Result<Node> {
        self.node_operate(p, id, "cordon", body).await
    }

    /// Returns a cordoned or draining node to service.
    pub async fn node_uncordon(
        &self,
        p: &Principal,
        id: &str,
        body: NodeOperation,
    ) -> Result<Node> {
        self.node_operate(p, id, "uncordon", body).await
    }

    /// Drains a node: no new work; when its running work has ended it goes to maintenance.
    pub async fn node_drain(&self, p: &Principal, id: &str, body: NodeOperation) -> Result<Node> {
        self.node_operate(p, id, "drain", body).await
    }

    /// Marks a repair done: the node's GPUs count as healthy again and it goes to burn-in;
    /// it returns to service when its agent reports the check passed.
    pub async fn node_repair_complete(
        &self,
        p: &Principal,
        id: &str,
        body: NodeOperation,
    ) -> Result<Node> {
        self.node_operate(p, id, "repair-complete", body).await
    }

    /// The health history of a node, newest first.
    pub async fn node_health(
        &self,
        p: &Principal,
        id: &str,
        limit: Option<u32>,
    ) -> Result<Vec<HealthEvent>> {
        auth::authorize(p, Action::ReadFleet)?;
        let node = self.store.node_get(id).await?;
        let limit = crate::page_limit(limit)?;
        Ok(self
            .store
            .health_event_list(Some(node.id), None, limit)
            .await?)
    }

    /// The history of one GPU by UUID, across every node it has been in.
    pub async fn gpu_history(
        &self,
        p: &Principal,
        uuid: &str,
        limit: Option<u32>,
    ) -> Result<GpuHistory> {
        auth::authorize(p, Action::ReadFleet)?;
        check_uuid("uuid", uuid)?;
        let limit = crate::page_limit(limit)?;
        let events = self
            .store
            .health_event_list(None, Some(uuid), limit)
            .await?;
        let place = self.store.gpu_by_uuid(uuid).await?;
        if events.is_empty() && place.is_none() {
            return Err(Error::not_found("GPU", uuid));
        }
        let failures =
            u32::try_from(events.iter().filter(|e| e.action == "fail").count()).unwrap_or(u32::MAX);
        Ok(GpuHistory {
            uuid: uuid.to_string(),
            node: place.as_ref().map(|(n, _, _)| n.clone()),
            index: place.as_ref().map(|(_, i, _)| *i),
            health: place.map(|(_, _, h)| h),
            failures,
            events,
        })
    }

    /// The XID policy: built-in rules with operators' overrides applied, by code.
    pub async fn health_rules(&self, p: &Principal) -> Result<Vec<XidRule>> {
        auth::authorize(p, Action::ReadFleet)?;
        let overrides = self.store.health_rule_list().await?;
        let mut rules: std::collections::BTreeMap<u32, XidRule> = builtin_xid_rules()
            .iter()
            .map(|&(code, action, meaning)| {
                (
                    code,
                    XidRule {
                        code,
                        action,
                        meaning: meaning.to_string(),
                        source: "builtin".into(),
                    },
                )
            })
            .collect();
        for o in overrides {
            let Some(action) = HealthAction::parse(&o.action) else {
                continue;
            };
            rules.insert(
                o.code,
                XidRule {
                    code: o.code,
                    action,
                    meaning: o.note,
                    source: "override".into(),
                },
            );
        }
        Ok(rules.into_values().collect())
    }

    /// Overrides the policy for one XID code.
    pub async fn health_rule_set(
        &self,
        p: &Principal,
        code: u32,
        req: SetXidRule,
        idem: Option<&Idempotency>,
    ) -> Result<Created<Vec<XidRule>>> {
        auth::authorize(p, Action::WriteFleet)?;
        if let Some(c) = self.idem_replay(p, idem).await? {
            return Ok(c);
        }
        if code == 0 || code > 100_000 {
            return Err(field("code", "must be an XID code 1-100000"));
        }
        let note = req.note.unwrap_or_else(|| "operator override".into());
        check_text("note", &note, 500)?;
        let now = self.now();
        let mut tx = self.store.begin_write().await?;
        if let Some(c) = Self::idem_lookup(&mut tx, p, idem).await? {
            return Ok(c);
        }
        Store::health_rule_put(&mut tx, code, Some(req.action.as_str()), &note, now).await?;
        Store::event_insert(
            &mut tx,
            NewEvent {
                actor: Some(p.key_id),
                tenant_id: None,
                action: "health_rule.set",
                resource_kind: "health_rule",
                resource_id: code.to_string(),
                before: None,
                after: Some(serde_json::json!({"action": req.action, "note": note})),
            },
        )
        .await?;
        Self::idem_store_status(&mut tx, p, idem, 200, &serde_json::Value::Null).await?;
        tx.commit().await?;
        self.health
            .overrides
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(code, (req.action, note));
        let rules = self.health_rules(p).await?;
        self.idem_settle(p, idem, 200, &rules).await;
        Ok(Created {
            value: rules,
            replayed: false,
        })
    }

    /// Removes an operator's override: the built-in rule (or `record`) applies again.
    pub async fn health_rule_reset(
        &self,
        p: &Principal,
        code: u32,
        idem: Option<&Idempotency>,
    ) -> Result<Created<Vec<XidRule>>> {
        auth::authorize(p, Action::WriteFleet)?;
        if let Some(c) = self.idem_replay(p, idem).await? {
            return Ok(c);
        }
        let mut tx = self.store.begin_write().await?;
        if let Some(c) = Self::idem_lookup(&mut tx, p, idem).await? {
            return Ok(c);
        }
        Store::health_rule_put(&mut tx, code, None, "", self.now()).await?;
        Store::event_insert(
            &mut tx,
            NewEvent {
                actor: Some(p.key_id),
                tenant_id: None,
                action: "health_rule.reset",
                resource_kind: "health_rule",
                resource_id: code.to_string(),
                before: None,
                after: None,
            },
        )
        .await?;
        Self::idem_store_status(&mut tx, p, idem, 200, &serde_json::Value::Null).await?;
        tx.commit().await?;
        self.health
            .overrides
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&code);
        let rules = self.health_rules(p).await?;
        self.idem_settle(p, idem, 200, &rules).await;
        Ok(Created {
            value: rules,
            replayed: false,
        })
    }

    /// Outages of a contract's capacity (a tenant sees its own contracts').
    pub async fn contract_outages(&self, p: &Principal, id: &str) -> Result<Vec<Outage>> {
        let c = self.contract_get(p, id).await?;
        Ok(self.store.outage_list(c.id).await?)
    }

    /// Latest telemetry and heartbeat time of a node from memory, when its agent reports.
    /// When another replica heard the agent since (its heartbeats go there), the telemetry
    /// is the one that replica last wrote.
    pub(crate) async fn node_live(&self, node: &mut Node) -> Result<()> {
        let (samples, elsewhere) = {
            let live = lock(&self.health.live);
            let Some(l) = live.get(&node.id) else {
                return Ok(());
            };
            node.last_heartbeat_at = Some(l.last_seen);
            let elsewhere = l
                .samples_at
                .plus_seconds(i64::from(self.health.interval_secs) * 2)
                < l.last_seen;
            (l.samples.clone(), elsewhere)
        };
        let samples = match elsewhere {
            true => match self.store.node_telemetry(node.id).await? {
                Some(json) => stored_samples(&json, node).unwrap_or(samples),
                None => samples,
            },
            false => samples,
        };
        if let Some(gpus) = &mut node.gpus {
            for g in gpus.iter_mut() {
                g.telemetry = samples
                    .iter()
                    .find(|s| Some(&s.uuid) == g.uuid.as_ref())
                    .cloned();
            }
        }
        Ok(())
    }

    /// The health monitor's periodic work at `now`: fails nodes whose agent went silent,
    /// moves drained nodes to maintenance, re-verifies idle nodes whose last burn-in is old,
    /// begins and ends planned maintenance windows, and writes telemetry in batches.
    pub async fn health_tick(&self, now: Timestamp) -> Result<()> {
        let began = std::time::Instant::now();
        self.heard_elsewhere(now).await?;
        if began.elapsed() > std::time::Duration::from_secs(2) {
            self.health_stalled(began.elapsed());
        }
        let blind =
            lock(&self.health.blind_until).is_some_and(|until| std::time::Instant::now() < until);
        let limit = i64::from(self.health.interval_secs) * i64::from(self.health.missed);
        let grace = self.health.grace_secs;
        // One pass over the agents (125,000 of them on a large fleet, twice a second).
        let (silent, gone, stale) = {
            let live = lock(&self.health.live);
            let mut silent: Vec<(NodeId, Timestamp)> = Vec::new();
            let mut gone: Vec<(NodeId, Timestamp, Option<String>)> = Vec::new();
            let mut stale: Vec<NodeId> = Vec::new();
            for (id, l) in live.iter() {
                // Blind: nobody is silent this tick.
                let watched =
                    !blind && !matches!(l.state, NodeState::Failed | NodeState::Maintenance);
                if watched {
                    if l.last_seen.plus_seconds(grace) < now {
                        // Silent past the grace period: failed.
                        silent.push((*id, l.last_seen));
                    } else if l.state != NodeState::Unreachable
                        && l.last_seen.plus_seconds(limit) < now
                        && l.away.as_ref().is_none_or(|(until, _)| *until < now)
                    {
                        // Silent past the missed-heartbeat limit (and past the time an
                        // agent that left said it would be back): unreachable.
                        gone.push((*id, l.last_seen, l.away.as_ref().map(|(_, r)| r.clone())));
                    }
                }
                if self.health.reverify_secs > 0
                    && l.state == NodeState::Available
                    && l.burn_in_passed_at
                        .is_some_and(|t| t.plus_seconds(self.health.reverify_secs) < now)
                {
                    stale.push(*id);
                }
            }
            (silent, gone, stale)
        };
        // Node changes go side by side, so that they share the writer's commits: a rack or
        // a site gone silent at once is a few transactions per round, not one per node.
        side_by_side(silent, |(node, last)| async move {
            let fact = Fact {
                at: last,
                gpu: None,
                kind: "heartbeat_lost",
                code: None,
                action: HealthAction::Fail,
                detail: format!(
                    "no heartbeat for {grace} s, the unreachable grace period (missed {} \
                     heartbeats; last heard from at {last})",
                    grace / i64::from(self.health.interval_secs)
                ),
                burn_in: None,
            };
            self.health_record(node, 0, 0, vec![fact], None).await
        })
        .await?;
        side_by_side(gone, |(node, last, left)| async move {
            let Some(from) = crate::scheduler::lock(&self.sched).node_state(node) else {
                return Ok(());
            };
            if matches!(
                from,
                NodeState::Failed | NodeState::Maintenance | NodeState::Unreachable
            ) {
                self.health.set_state(node, from, None);
                return Ok(());
            }
            let reason = match left {
                Some(why) => format!(
                    "agent left ({why}) and was not back when it said (last heard from at \
                     {last}); failed if still silent at {}",
                    last.plus_seconds(grace)
                ),
                None => format!(
                    "missed {} heartbeats (last heard from at {last}); failed if still silent \
                     at {}",
                    self.health.missed,
                    last.plus_seconds(grace)
                ),
            };
            if !self.mark_unreachable(node, from, reason, now).await? {
                return Ok(());
            }
            // A heartbeat that came in meanwhile found the node still reachable.
            let heard = lock(&self.health.live)
                .get(&node)
                .is_some_and(|l| l.last_seen > last);
            if heard {
                self.reachable_again(node, None).await?;
            }
            Ok(())
        })
        .await?;
        // Re-verify idle nodes, a few at a time so capacity never drops at once.
        let mut reverified = 0;
        for node in stale {
            if reverified >= 10 {
                break;
            }
            let (state, busy, pooled) = {
                let sched = crate::scheduler::lock(&self.sched);
                (
                    sched.node_state(node),
                    !sched.alloc().node_holders(node).is_empty(),
                    sched.alloc().node_pool(node).is_some(),
                )
            };
            if busy {
                continue;
            }
            if state != Some(NodeState::Available) || pooled {
                // Pool nodes are re-verified by their contract's maintenance windows.
                if let Some(l) = lock(&self.health.live).get_mut(&node) {
                    l.burn_in_passed_at = Some(now);
                }
                continue;
            }
            let n = self.store.node_get(&node.to_string()).await?;
            let id = new_burn_in_id();
            let change = Change::to(
                NodeState::BurnIn,
                "periodic re-verification of an idle node".into(),
                now,
            )
            .burn_in(Some(id.clone()));
            match self
                .change_node(&n, NodeState::Available, change, None, None)
                .await
            {
                Ok(()) => {}
                // Work or an operator got to it first.
                Err(e) if e.message.starts_with(NODE_MOVED) => continue,
                Err(e) => return Err(e),
            }
            self.health
                .set_state(node, NodeState::BurnIn, Some(Some(id)));
            reverified += 1;
        }
        // Drained nodes whose work has ended go to maintenance.
        let draining: Vec<NodeId> = lock(&self.health.draining).iter().copied().collect();
        for node in draining {
            let (state, busy) = {
                let sched = crate::scheduler::lock(&self.sched);
                (
                    sched.node_state(node),
                    !sched.alloc().node_holders(node).is_empty(),
                )
            };
            if busy {
                continue;
            }
            if state != Some(NodeState::Draining) {
                lock(&self.health.draining).remove(&node);
                continue;
            }
            let n = self.store.node_get(&node.to_string()).await?;
            let change = Change::to(
                NodeState::Maintenance,
                format!(
                    "drained ({})",
                    n.state_reason
                        .clone()
                        .unwrap_or_else(|| "no reason given".into())
                ),
                now,
            );
            match self
                .change_node(&n, NodeState::Draining, change, None, None)
                .await
            {
                Ok(()) => {}
                Err(e) if e.message.starts_with(NODE_MOVED) => continue,
                Err(e) => return Err(e),
            }
            self.health.set_state(node, NodeState::Maintenance, None);
        }
        // Planned maintenance windows that begin or end.
        self.maintenance_tick(now).await?;
        self.flush_key_use().await?;
        self.health_flush(now, false).await
    }

    /// Writes the latest telemetry of nodes heard from since the last flush, in batches;
    /// at most once per flush interval unless `force`.
    pub async fn health_flush(&self, now: Timestamp, force: bool) -> Result<()> {
        {
            let mut last = lock(&self.health.last_flush);
            if !force && last.plus_seconds(self.health.flush_secs) > now {
                return Ok(());
            }
            *last = now;
        }
        // Stored as compact rows (a sixth of the bytes of the samples), each GPU by its
        // registered index; a sample of a GPU not registered keeps the full form.
        let rows: Vec<(NodeId, Timestamp, String)> = {
            let mut live = lock(&self.health.live);
            live.iter_mut()
                .filter(|(_, l)| l.dirty)
                .map(|(id, l)| {
                    l.dirty = false;
                    let compact: Option<Vec<GpuRow>> = l
                        .samples
                        .iter()
                        .map(|s| {
                            let i = l.uuids.iter().position(|u| u.as_ref() == Some(&s.uuid))?;
                            Some(s.row(u32::try_from(i).ok()?))
                        })
                        .collect();
                    let json = match compact {
                        Some(rows) => serde_json::to_string(&rows),
                        None => serde_json::to_string(&l.samples),
                    };
                    (*id, l.last_seen, json.unwrap_or_else(|_| "[]".into()))
                })
                .collect()
        };
        for batch in rows.chunks(500) {
            // Any replica writes the telemetry of the agents it hears (the leader decides
            // nothing with it).
            let mut tx = self.store.begin_write_unfenced().await?;
            Store::node_telemetry_flush(&mut tx, batch).await?;
            tx.commit().await?;
        }
        if self.is_leader() {
            // Thousands of agents registering grow tables fast; keep the planner's view
            // fresh.
            self.store.optimize().await?;
        }
        Ok(())
    }

    /// Registered agents, those heard from within two intervals, those whose node is
    /// `unreachable`, and the longest silence (seconds) among nodes in service.
    /// Nodes whose agent was heard from within two heartbeat intervals.
    pub(crate) fn fresh_agents(&self) -> std::collections::HashSet<NodeId> {
        let now = self.now();
        let window = i64::from(self.health.interval_secs) * 2;
        lock(&self.health.live)
            .iter()
            .filter(|(_, l)| l.last_seen.plus_seconds(window) >= now)
            .map(|(id, _)| *id)
            .collect()
    }

    pub(crate) fn agent_stats(&self) -> (usize, usize, usize, f64) {
        let now = self.now();
        let live = lock(&self.health.live);
        let window = i64::from(self.health.interval_secs) * 2;
        let fresh = live
            .values()
            .filter(|l| l.last_seen.plus_seconds(window) >= now)
            .count();
        let unreachable = live
            .values()
            .filter(|l| l.state == NodeState::Unreachable)
            .count();
        let lag = live
            .values()
            .filter(|l| crate::metrics::in_service(l.state))
            .map(|l| (now.micros() - l.last_seen.micros()).max(0))
            .max()
            .unwrap_or(0);
        #[allow(clippy::cast_precision_loss)]
        (live.len(), fresh, unreachable, lag as f64 / 1e6)
    }
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}
