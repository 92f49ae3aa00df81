//! The request bodies and answers of the API that are not domain entities of
//! `neocloud-types`. Each has the same fields, names and meaning as the server's own type
//! (the service crate's request and report types); the workspace's tests check that every
//! body here is accepted by the server's type and every answer reads back unchanged.

use std::collections::BTreeMap;

use neocloud_types::{
    ApiKey, Class, ContractId, Delivery, GangLevel, GpuHealth, HealthEvent, InstanceId, Money,
    NodeFailurePolicy, Role, Shape, SiteId, TenantId, TenantKind, TenantStatus, Timestamp, Webhook,
};
use serde::{Deserialize, Serialize};

/// A list answer: `{"items": [...]}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct List<T> {
    /// The items.
    pub items: Vec<T>,
}

/// One page of a paged list; pass `next_cursor` back to get the next one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// The cursor of the next page; none on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Which page of a paged list to fetch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageRequest {
    /// Items per page, 1-1000 (the server's default, 100, when none).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page; none for the first page.
    pub cursor: Option<String>,
}

impl PageRequest {
    /// The first page of `limit` items.
    pub fn first(limit: u32) -> PageRequest {
        PageRequest {
            limit: Some(limit),
            cursor: None,
        }
    }

    pub(crate) fn push(&self, q: &mut Vec<(&'static str, String)>) {
        if let Some(l) = self.limit {
            q.push(("limit", l.to_string()));
        }
        if let Some(c) = &self.cursor {
            q.push(("cursor", c.clone()));
        }
    }
}

/// Filters of `GET /v1/nodes`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeFilter {
    /// Site id or name.
    pub site: Option<String>,
    /// Block id, name or path (within `site`).
    pub block: Option<String>,
    /// Node state, e.g. `available`.
    pub state: Option<String>,
    /// GPU model.
    pub gpu_model: Option<String>,
}

/// Filters of `GET /v1/instances`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstanceFilter {
    /// Tenant id or name.
    pub tenant: Option<String>,
    /// Instance state, e.g. `running`.
    pub state: Option<String>,
}

/// Filters of `GET /v1/events`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Tenant id or name.
    pub tenant: Option<String>,
    /// Id or name of the resource changed.
    pub resource_id: Option<String>,
    /// Prefix of the action, e.g. `tenant.`.
    pub action: Option<String>,
}

/// Filters of `GET /v1/usage`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageFilter {
    /// Tenant id or name.
    pub tenant: Option<String>,
    /// Month, `YYYY-MM`.
    pub month: Option<String>,
    /// Instance id.
    pub instance: Option<String>,
    /// Class of service.
    pub class: Option<String>,
}

/// Body of `POST /v1/gpu-models`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateGpuModel {
    /// Catalog name, e.g. `MI325X`.
    pub name: String,
    /// Maker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// Device memory in GiB.
    pub memory_gib: u32,
    /// Power at full load in watts.
    pub tdp_watts: u32,
    /// How the GPUs of one board connect: `nvswitch`, `groups:N,M,…` or `aligned`; by
    /// default the rule for the model's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<String>,
}

/// Body of `PUT /v1/sites/{site}/power-cap`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetPowerCap {
    /// Facility watts the site may draw; `None` removes the cap.
    pub watts: Option<i64>,
}

/// Body of the node operations (`cordon`, `uncordon`, `drain`, `repair-complete`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeOperation {
    /// Why, for the event log and the node's `state_reason`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A node operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeOp {
    /// No new placements; what runs stays.
    Cordon,
    /// Back to service.
    Uncordon,
    /// No new work; to maintenance when its work has ended.
    Drain,
    /// A repair is done: burn-in, then back to service.
    RepairComplete,
}

impl NodeOp {
    /// The path segment of the operation.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeOp::Cordon => "cordon",
            NodeOp::Uncordon => "uncordon",
            NodeOp::Drain => "drain",
            NodeOp::RepairComplete => "repair-complete",
        }
    }
}

/// What the control plane does when a GPU reports an XID code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthAction {
    /// Nothing: the fault is the application's.
    Ignore,
    /// Keep it in the GPU's history; the node stays in service.
    Record,
    /// Take no new work, let running work finish, then go to maintenance.
    Drain,
    /// Out of service now.
    Fail,
}

impl std::str::FromStr for HealthAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ignore" => Ok(HealthAction::Ignore),
            "record" => Ok(HealthAction::Record),
            "drain" => Ok(HealthAction::Drain),
            "fail" => Ok(HealthAction::Fail),
            _ => Err(format!("'{s}' is not one of: ignore, record, drain, fail")),
        }
    }
}

/// One line of the XID policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetXidRule {
    /// What to do.
    pub action: HealthAction,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A GPU's health history, following its UUID across nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GpuHistory {
    /// The GPU's UUID.
    pub uuid: String,
    /// The node it is in now, if any.
    pub node: Option<String>,
    /// Its index there.
    pub index: Option<u32>,
    /// Its health there.
    pub health: Option<GpuHealth>,
    /// Times it failed.
    pub failures: u32,
    /// Every fact, newest first.
    pub events: Vec<HealthEvent>,
}

/// Body of `POST /v1/tenants`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateTenant {
    /// Unique name: lowercase letters, digits and `-`.
    pub name: String,
    /// Display name; the name by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Internal (the operator's lab) or external (a customer).
    pub kind: TenantKind,
    /// Largest unpaid balance allowed; none means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credit_limit: Option<Money>,
}

/// Body of `PATCH /v1/tenants/{tenant}`; fields left `None` stay as they are.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateTenant {
    /// New display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// New status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TenantStatus>,
    /// New credit limit: `Some(None)` removes the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credit_limit: Option<Option<Money>>,
}

/// Body of `POST /v1/api-keys`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateApiKey {
    /// Human label.
    pub name: String,
    /// What the key may do.
    pub role: Role,
    /// Tenant id or name (tenant roles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// When the key stops working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// For node-agent keys: the node (id or name) the key speaks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// Answer of `POST /v1/api-keys`: the key and, this once, its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyCreated {
    /// The key as it will be listed.
    #[serde(flatten)]
    pub key: ApiKey,
    /// The whole key; `None` on an idempotent replay.
    pub secret: Option<String>,
}

/// Body of `POST /v1/instances`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchInstance {
    /// Tenant id or name (operator keys must name one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// Optional label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Class of service.
    pub class: Class,
    /// GPU model (or `gpu_models`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_model: Option<String>,
    /// GPU models any of which will do, instead of `gpu_model`: placed on the best node of
    /// any of them, billed and counted in quotas as the one it lands on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_models: Vec<String>,
    /// GPUs in one node: 1, 2, 4 or 8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
    /// A gang of this many whole nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<u32>,
    /// For gangs: the block level all nodes must share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gang_level: Option<GangLevel>,
    /// Site id or name to run in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Contract whose reserved pool to run in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract_id: Option<ContractId>,
    /// Wait up to this many seconds for capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_seconds: Option<u32>,
    /// The shape, instead of `gpus` or `nodes` (a share, a MIG instance, CPU only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<Shape>,
    /// CPU to hold, thousandths of a core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_milli: Option<u64>,
    /// Memory to hold, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// What runs on its nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
    /// Names of the tenant's SSH keys allowed to log in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_key_names: Vec<String>,
    /// What happens when one of its nodes fails: `replace` (default for gangs), `shrink`
    /// (gangs only) or `fail` (default for everything else).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_node_failure: Option<NodeFailurePolicy>,
}

impl LaunchInstance {
    /// A launch of `gpu_model` in `class` with nothing else set (give a size next).
    pub fn new(gpu_model: impl Into<String>, class: Class) -> LaunchInstance {
        LaunchInstance {
            gpu_model: Some(gpu_model.into()),
            ..LaunchInstance::among(Vec::new(), class)
        }
    }

    /// A launch that accepts any of `gpu_models` in `class`, with nothing else set.
    pub fn among(gpu_models: Vec<String>, class: Class) -> LaunchInstance {
        LaunchInstance {
            tenant_id: None,
            name: None,
            class,
            gpu_model: None,
            gpu_models,
            gpus: None,
            nodes: None,
            gang_level: None,
            site: None,
            contract_id: None,
            wait_seconds: None,
            shape: None,
            cpu_milli: None,
            memory_mib: None,
            delivery: None,
            ssh_key_names: Vec::new(),
            on_node_failure: None,
        }
    }
}

/// An instance's output, from `offset` on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceLogs {
    /// The instance.
    pub instance_id: InstanceId,
    /// Byte offset of the first byte of `data`.
    pub offset: u64,
    /// Offset to ask for next.
    pub next_offset: u64,
    /// Output was dropped before `offset`.
    pub truncated: bool,
    /// The output.
    pub data: String,
}

/// Body of `POST /v1/ssh-keys`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateSshKey {
    /// Tenant id or name (operator keys must name one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// Name, unique within the tenant.
    pub name: String,
    /// One OpenSSH public key line.
    pub public_key: String,
}

/// Body of `PUT /v1/quotas`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetQuota {
    /// Tenant id or name.
    pub tenant_id: String,
    /// GPU model.
    pub gpu_model: String,
    /// Class of service.
    pub class: Class,
    /// Most GPUs held at once; `None` removes the quota.
    pub max_gpus: Option<u32>,
}

/// Body of `POST /v1/quotes` and `POST /v1/contracts`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractTerms {
    /// Tenant id or name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// GPU model.
    pub gpu_model: String,
    /// GPUs to reserve.
    pub gpu_count: u32,
    /// Start.
    pub start_at: Timestamp,
    /// End.
    pub end_at: Timestamp,
    /// Site id or name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Keep the whole pool inside one block of this level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub single_block: Option<GangLevel>,
    /// Availability promised, percent, e.g. "99.9".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sla_percent: Option<String>,
}

/// The answer to a quote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quote {
    /// Whether the GPUs are free for the whole window.
    pub fits: bool,
    /// Site evaluated.
    pub site_id: Option<SiteId>,
    /// Its name.
    pub site: Option<String>,
    /// GPU model.
    pub gpu_model: String,
    /// GPUs asked for.
    pub gpu_count: u32,
    /// Start asked for.
    pub start_at: Timestamp,
    /// End asked for.
    pub end_at: Timestamp,
    /// The earliest start at which the same count fits, if ever.
    pub earliest_start: Option<Timestamp>,
    /// The most GPUs that fit in the asked window.
    pub max_gpus_in_window: u32,
    /// GPUs the site sells for this model.
    pub sellable_gpus: u32,
    /// Reserved rate for this term, per GPU-hour.
    pub price_per_gpu_hour: Money,
    /// gpu_count × hours × rate.
    pub total_value: Money,
    /// Why it does not fit.
    pub reason: Option<String>,
}

/// Body of `POST /v1/contracts/{id}/amend`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmendContract {
    /// New GPU count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_count: Option<u32>,
    /// New end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_at: Option<Timestamp>,
}

/// GPUs of one class.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassCount {
    /// Class.
    pub class: Class,
    /// GPUs allocated.
    pub gpus: u64,
}

/// Largest gang that fits now at a level.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GangRoom {
    /// Level.
    pub level: GangLevel,
    /// Most free whole nodes inside one block of that level.
    pub nodes: u32,
}

/// Committed GPUs from a time on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// From this time.
    pub at: Timestamp,
    /// GPUs promised.
    pub gpus: i64,
}

/// Capacity of one GPU model in one site.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CapacityLine {
    /// Site id.
    pub site_id: SiteId,
    /// Site name.
    pub site: String,
    /// GPU model.
    pub gpu_model: String,
    /// GPUs of the model in the site.
    pub total_gpus: i64,
    /// The spare buffer.
    pub spare_buffer_gpus: i64,
    /// Whole nodes of the buffer pinned as spares now, spread over the leaf groups.
    pub spare_nodes: u32,
    /// Spare nodes the spread keeps when none is taken.
    pub spare_nodes_wanted: u32,
    /// GPUs contracts may promise.
    pub sellable_gpus: i64,
    /// GPUs promised by contracts now.
    pub committed_gpus_now: i64,
    /// Committed GPUs over the horizon.
    pub committed: Vec<Committed>,
    /// GPUs allocated now, by class.
    pub allocated: Vec<ClassCount>,
    /// Free GPUs now.
    pub free_gpus: u64,
    /// Free GPUs on partly used nodes.
    pub stranded_free_gpus: u64,
    /// stranded_free_gpus / free_gpus.
    pub stranded_share: f64,
    /// Largest gang placeable now, per level.
    pub largest_gang: Vec<GangRoom>,
    /// Facility power allocated in the site now, watts.
    pub site_power_watts: i64,
    /// The site's power limit, watts.
    pub site_power_limit_watts: i64,
    /// Placement policy in use.
    pub placement_policy: String,
}

/// Body of `POST /v1/prices`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetPrice {
    /// GPU model.
    pub gpu_model: String,
    /// Site id or name; every site without its own price by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// `on-demand`, `reserved-lt-1y`, `reserved-1-3y`, `reserved-ge-3y`, `spot-floor`,
    /// `spot-ceiling` or `internal-shadow`.
    pub kind: String,
    /// US dollars per GPU-hour.
    pub price_per_gpu_hour: Money,
    /// When it takes effect; now by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_from: Option<Timestamp>,
}

/// Body of `POST /v1/invoices`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerateInvoice {
    /// Tenant id or name.
    pub tenant_id: String,
    /// Month, `YYYY-MM`.
    pub month: String,
}

/// The contracted backlog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BacklogReport {
    /// When it was computed.
    pub as_of: Timestamp,
    /// Remaining committed value.
    pub total: Money,
    /// By calendar year of delivery.
    pub by_year: Vec<BacklogYear>,
    /// Per contract.
    pub contracts: Vec<BacklogContract>,
}

/// Backlog delivered in one calendar year.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BacklogYear {
    /// Year.
    pub year: i32,
    /// Committed value falling in that year.
    pub value: Money,
}

/// One contract's remaining committed value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BacklogContract {
    /// Contract.
    pub contract_id: ContractId,
    /// Tenant.
    pub tenant_id: TenantId,
    /// Value from now (or its start) to its end.
    pub remaining_value: Money,
}

/// Revenue of one month, tenant, class and site.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevenueRow {
    /// Month, `YYYY-MM`.
    pub month: String,
    /// Tenant.
    pub tenant_id: TenantId,
    /// Class.
    pub class: Class,
    /// Site.
    pub site_id: SiteId,
    /// Amount.
    pub amount: Money,
}

/// Utilization of one pool and class over a month.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UtilizationRow {
    /// Month, `YYYY-MM`.
    pub month: String,
    /// Site.
    pub site_id: SiteId,
    /// GPU model.
    pub gpu_model: String,
    /// Class of service.
    pub class: Class,
    /// GPU-seconds metered.
    pub gpu_seconds: i64,
    /// Sellable GPU-seconds of the pool over the month.
    pub sellable_gpu_seconds: i64,
    /// Utilization in thousandths of a percent.
    pub utilization_milli_percent: i64,
}

/// A site's power now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerRow {
    /// Site.
    pub site_id: SiteId,
    /// Site name.
    pub site: String,
    /// Facility watts drawn by allocated work now.
    pub allocated_watts: i64,
    /// The site's power budget, watts.
    pub budget_watts: i64,
    /// The operator's cap, if any.
    pub cap_watts: Option<i64>,
    /// Price of energy, $/MWh.
    pub energy_usd_per_mwh: Money,
    /// Energy cost per hour at the current draw.
    pub energy_cost_per_hour: Money,
}

/// A site's gross margin for a month.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarginRow {
    /// Month, `YYYY-MM`.
    pub month: String,
    /// Site.
    pub site_id: SiteId,
    /// Revenue booked at the site.
    pub revenue: Money,
    /// Energy used, kWh.
    pub energy_kwh: i64,
    /// Energy cost.
    pub energy_cost: Money,
    /// revenue − energy cost.
    pub gross_margin: Money,
    /// Internal share of metered GPU-seconds, thousandths of a percent.
    pub internal_share_milli_percent: i64,
}

/// Environment variables of a container workload.
pub type Env = BTreeMap<String, String>;

/// Body of `POST /v1/webhooks`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateWebhook {
    /// Tenant id or name whose events it receives; an operator key that leaves it out
    /// creates an operator webhook (every event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// Where events are POSTed (http or https).
    pub url: String,
    /// Event patterns (`instance.failed`, `instance.*`, `*`); none means every event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
}

/// Answer of `POST /v1/webhooks`: the webhook and, this once, its signing secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookCreated {
    /// The webhook as it will be listed.
    #[serde(flatten)]
    pub webhook: Webhook,
    /// The key deliveries are signed with; `None` on an idempotent replay.
    pub secret: Option<String>,
}

/// Body of `POST /v1/maintenance`: `nodes`, or a `block` (with its `site` when named by
/// name or path).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleMaintenance {
    /// Nodes by id or name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// A block (id, name or path): every node inside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block: Option<String>,
    /// The block's site (id or name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// When it begins.
    pub start_at: Timestamp,
    /// When it ends.
    pub end_at: Timestamp,
    /// Why, shown to tenants in their notices.
    pub reason: String,
}
