//! The wire protocol between `neocloud agent` (one per GPU server) and the control plane.
//!
//! An agent registers once (`POST /v1/agent/register`) with its inventory, then sends a
//! heartbeat (`POST /v1/agent/heartbeat`) every `heartbeat_interval_secs` carrying the
//! latest telemetry of each GPU and the health events seen since the last accepted beat.
//! Events carry a sequence number per node; the control plane acknowledges the highest one
//! it has stored and drops any it has seen before, so an agent that buffered events while
//! the control plane was unreachable can resend them all and each is stored exactly once.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{NodeId, NodeState, Timestamp};

/// What an agent says about itself when it registers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentRegister {
    /// Host name; must match a node declared in the fleet.
    pub hostname: String,
    /// Version of the agent binary.
    pub agent_version: String,
    /// Where the GPU facts come from: `nvml` or `sim`.
    pub backend: String,
    /// NVIDIA driver version, when the backend has one.
    #[serde(default)]
    pub driver_version: Option<String>,
    /// CPU cores the host has.
    pub cpu_cores: u32,
    /// Memory of the host, GiB.
    pub ram_gib: u32,
    /// Every GPU the backend found, by index.
    pub gpus: Vec<GpuInventory>,
}

/// One GPU as the agent found it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuInventory {
    /// Index as the driver numbers devices (0-based).
    pub index: u32,
    /// Device UUID (`GPU-…`); identifies the GPU across nodes, repairs and RMA.
    pub uuid: String,
    /// Product name as the driver reports it, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Board serial number, when the driver reports one.
    #[serde(default)]
    pub serial: Option<String>,
    /// Device memory, MiB.
    pub memory_mib: u64,
    /// PCI bus id, e.g. `00000000:18:00.0`.
    pub pci_bus_id: String,
}

/// The control plane's answer to a registration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AgentRegistered {
    /// The node this agent speaks for.
    pub node_id: NodeId,
    /// The node's name.
    pub node: String,
    /// The node's lifecycle state after registering.
    pub state: NodeState,
    /// How often to send heartbeats, seconds.
    pub heartbeat_interval_secs: u32,
    /// The highest event sequence number already stored for this node (0 when none); the
    /// agent numbers its next event one higher.
    pub last_seq: u64,
    /// A key bound to this node, returned once when the agent registered with an enrollment
    /// key (a node-agent key bound to no node). The agent uses it for every later call; the
    /// node's earlier keys are revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_key: Option<String>,
    /// A burn-in check the control plane asks the agent to run now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burn_in: Option<BurnInRequest>,
}

/// A request to run the node's burn-in check and report the result as a
/// [`AgentEventKind::BurnIn`] event carrying the same id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BurnInRequest {
    /// Identifies this request; echoed in the result.
    pub id: String,
}

/// One heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// When the agent sent it (its clock).
    pub sent_at: Timestamp,
    /// Latest telemetry of each GPU. Agents may send `gpu_rows` instead (not both).
    #[serde(default)]
    pub gpus: Vec<GpuSample>,
    /// The same telemetry as `gpus` in a compact form, one row of eight integers per GPU:
    /// `[index, temperature_c, power_watts, utilization_pct, memory_used_mib,
    /// ecc_corrected, ecc_uncorrected, flags]`, where `index` is the GPU's index as
    /// registered (its UUID is the one registered at that index) and `flags` adds 1 for
    /// `remap_pending`, 2 for `remap_failed` and 4 for `thermal_slowdown`. About a sixth
    /// of the bytes of `gpus`, with no UUIDs to parse and compare.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_rows: Vec<GpuRow>,
    /// Health events not yet acknowledged, oldest first.
    #[serde(default)]
    pub events: Vec<AgentEvent>,
    /// The generation of desired workloads the agent last applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// Every workload the agent knows on the node, with new output.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<crate::WorkloadReport>,
    /// Sent in the agent's last heartbeat before it stops on purpose (SIGTERM or SIGINT, as
    /// a rolling upgrade of the agent does): the node is not marked `unreachable` until the
    /// time it announces has passed. Any later heartbeat cancels it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaving: Option<Leaving>,
}

/// An agent that stops on purpose and says when it expects to be back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Leaving {
    /// Why: `restart` (the agent stops and is started again, e.g. to upgrade it) or
    /// `shutdown` (the host is going down).
    pub reason: LeavingReason,
    /// Seconds within which the agent expects to heartbeat again, 1-86400; the control plane
    /// waits at most its unreachable grace period.
    pub back_within_secs: u32,
}

/// Why an agent stops on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LeavingReason {
    /// The agent stops and is started again (an upgrade of the agent, a restart of its
    /// service).
    Restart,
    /// The host is shutting down or rebooting.
    Shutdown,
}

impl LeavingReason {
    /// The stable spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LeavingReason::Restart => "restart",
            LeavingReason::Shutdown => "shutdown",
        }
    }
}

/// In a compact GPU row ([`Heartbeat::gpu_rows`]): rows wait to be remapped.
pub const ROW_REMAP_PENDING: i64 = 1;
/// In a compact GPU row: a row remapping has failed.
pub const ROW_REMAP_FAILED: i64 = 2;
/// In a compact GPU row: the GPU slows its clocks because it is too hot.
pub const ROW_THERMAL_SLOWDOWN: i64 = 4;

impl GpuSample {
    /// This sample as a compact row ([`Heartbeat::gpu_rows`]) of the GPU at `index`.
    /// Counters beyond `i64::MAX` (never seen: the control plane refuses more than 10^12)
    /// are capped there.
    pub fn row(&self, index: u32) -> GpuRow {
        let big = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        GpuRow([
            i64::from(index),
            i64::from(self.temperature_c),
            i64::from(self.power_watts),
            i64::from(self.utilization_pct),
            big(self.memory_used_mib),
            big(self.ecc_corrected),
            big(self.ecc_uncorrected),
            if self.remap_pending {
                ROW_REMAP_PENDING
            } else {
                0
            } | if self.remap_failed {
                ROW_REMAP_FAILED
            } else {
                0
            } | if self.thermal_slowdown {
                ROW_THERMAL_SLOWDOWN
            } else {
                0
            },
        ])
    }
}

/// One GPU's telemetry as a compact row of [`Heartbeat::gpu_rows`]: eight integers,
/// `[index, temperature_c, power_watts, utilization_pct, memory_used_mib, ecc_corrected,
/// ecc_uncorrected, flags]`. Read without an allocation; a row of another length is
/// refused as it is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuRow(pub [i64; 8]);

/// What a row holds, for errors.
const ROW_EXPECTED: &str = "a row of 8 integers: index, temperature_c, power_watts, \
     utilization_pct, memory_used_mib, ecc_corrected, ecc_uncorrected, flags";

impl GpuRow {
    /// The sample this row holds, of the GPU `uuid` (the one registered at the row's
    /// index). Values out of their range (checked where rows are taken in) read as 0.
    pub fn sample(&self, uuid: String) -> GpuSample {
        let r = &self.0;
        let num = |v: i64| u64::try_from(v).unwrap_or(0);
        GpuSample {
            uuid,
            temperature_c: i32::try_from(r[1]).unwrap_or(0),
            power_watts: u32::try_from(r[2]).unwrap_or(0),
            utilization_pct: u32::try_from(r[3]).unwrap_or(0),
            memory_used_mib: num(r[4]),
            ecc_corrected: num(r[5]),
            ecc_uncorrected: num(r[6]),
            remap_pending: r[7] & ROW_REMAP_PENDING != 0,
            remap_failed: r[7] & ROW_REMAP_FAILED != 0,
            thermal_slowdown: r[7] & ROW_THERMAL_SLOWDOWN != 0,
        }
    }
}

impl std::ops::Deref for GpuRow {
    type Target = [i64; 8];
    fn deref(&self) -> &[i64; 8] {
        &self.0
    }
}

impl Serialize for GpuRow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for GpuRow {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Row;
        impl<'de> serde::de::Visitor<'de> for Row {
            type Value = GpuRow;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(ROW_EXPECTED)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<GpuRow, A::Error> {
                let mut row = [0i64; 8];
                for (i, v) in row.iter_mut().enumerate() {
                    *v = seq
                        .next_element()?
                        .ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                }
                if seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    return Err(serde::de::Error::invalid_length(9, &self));
                }
                Ok(GpuRow(row))
            }
        }
        d.deserialize_seq(Row)
    }
}

impl utoipa::PartialSchema for GpuRow {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ArrayBuilder::new()
            .items(utoipa::openapi::ObjectBuilder::new().schema_type(
                utoipa::openapi::schema::SchemaType::Type(utoipa::openapi::schema::Type::Integer),
            ))
            .min_items(Some(8))
            .max_items(Some(8))
            .description(Some(ROW_EXPECTED))
            .into()
    }
}

impl ToSchema for GpuRow {}

impl Heartbeat {
    /// Moves `gpus` into the compact `gpu_rows`, each GPU at its index in `inventory` (what
    /// the agent registered). Leaves them as they are when one is not in the inventory.
    pub fn compact(&mut self, inventory: &[GpuInventory]) {
        let rows: Option<Vec<GpuRow>> = self
            .gpus
            .iter()
            .map(|s| {
                inventory
                    .iter()
                    .find(|g| g.uuid == s.uuid)
                    .map(|g| s.row(g.index))
            })
            .collect();
        if let Some(rows) = rows {
            self.gpu_rows = rows;
            self.gpus = Vec::new();
        }
    }
}

/// Telemetry of one GPU at one instant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuSample {
    /// Device UUID (as registered).
    pub uuid: String,
    /// Core temperature, °C.
    pub temperature_c: i32,
    /// Power draw, watts.
    pub power_watts: u32,
    /// GPU utilization over the last sample period, percent (0–100).
    pub utilization_pct: u32,
    /// Device memory in use, MiB.
    pub memory_used_mib: u64,
    /// Corrected (single-bit) ECC errors since the driver loaded.
    pub ecc_corrected: u64,
    /// Uncorrected (double-bit) ECC errors since the driver loaded.
    pub ecc_uncorrected: u64,
    /// Rows waiting to be remapped at the next GPU reset.
    #[serde(default)]
    pub remap_pending: bool,
    /// A row remapping has failed (the GPU needs service).
    #[serde(default)]
    pub remap_failed: bool,
    /// The GPU is slowing its clocks because it is too hot.
    #[serde(default)]
    pub thermal_slowdown: bool,
}

/// A health event seen by the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentEvent {
    /// Per-node sequence number, strictly increasing, starting at 1.
    pub seq: u64,
    /// When the agent saw it.
    pub at: Timestamp,
    /// The GPU it concerns (UUID), if any.
    #[serde(default)]
    pub gpu_uuid: Option<String>,
    /// What happened.
    pub kind: AgentEventKind,
}

/// What a health event reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentEventKind {
    /// An NVIDIA XID error from the driver.
    Xid {
        /// The XID code.
        code: u32,
        /// Driver text, if any.
        #[serde(default)]
        detail: Option<String>,
    },
    /// The GPU started to slow down for heat.
    ThermalSlowdown,
    /// The result of a burn-in check the control plane asked for.
    BurnIn {
        /// The request's id.
        id: String,
        /// Whether the check passed.
        passed: bool,
        /// The check's output (tail), for the operator.
        #[serde(default)]
        output: String,
    },
}

/// The control plane's answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatAck {
    /// Every event with a sequence number up to this one is stored; drop them.
    pub acked_seq: u64,
    /// The node's lifecycle state.
    pub state: NodeState,
    /// How often to send heartbeats, seconds (may change).
    pub heartbeat_interval_secs: u32,
    /// A burn-in check to run now, if one is wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burn_in: Option<BurnInRequest>,
    /// What should run on the node; absent from a control plane that does not deliver
    /// workloads (the agent then leaves its workloads as they are).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<crate::DesiredWorkloads>,
}

/// Most heartbeats one batch may carry.
pub const HEARTBEAT_BATCH_MAX: usize = 1000;

/// Heartbeats of many nodes in one request, as a relay sends them
/// (`POST /v1/agent/heartbeats`): each is taken as if its node had sent it alone, with its
/// own node-agent key.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBatch {
    /// The heartbeats, at most 1,000; answered in the same order.
    pub heartbeats: Vec<RelayedHeartbeat>,
}

/// One node's heartbeat inside a batch.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RelayedHeartbeat {
    /// The node's own node-agent key (what its agent sent as `Authorization: Bearer`).
    pub key: String,
    /// The heartbeat exactly as the agent sent it (a [`Heartbeat`]); one that is not
    /// valid is refused alone, with a 400 in its place of the answer.
    #[schema(value_type = Heartbeat)]
    pub heartbeat: Box<serde_json::value::RawValue>,
}

/// The answers to a batch of heartbeats, one per heartbeat, in the batch's order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatBatchAnswer {
    /// What each heartbeat would have been answered had it come alone.
    pub answers: Vec<RelayedAnswer>,
}

/// The answer to one heartbeat of a batch.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RelayedAnswer {
    /// The HTTP status it would have had (200, or the problem's status).
    pub status: u16,
    /// The body it would have had: a [`HeartbeatAck`] on 200, else an
    /// `application/problem+json` object.
    #[schema(value_type = Object)]
    pub body: Box<serde_json::value::RawValue>,
}
