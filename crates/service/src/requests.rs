//! Request bodies of the API and their validation. Unknown fields are refused so that a typo
//! is an error, not a silently ignored setting.

use neocloud_store::TenantChanges;
use neocloud_types::{ApiKey, GpuModel, Money, Role, TenantKind, TenantStatus, Timestamp};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{Error, Result};

/// Checks a resource name: 1–63 characters of lowercase letters, digits and `-`, starting
/// with a letter or digit (so it is safe in URLs, hostnames and file names).
pub fn validate_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{what} '{name}' is invalid: use 1-63 lowercase letters, digits and '-', not starting with '-'"
        )))
    }
}

fn validate_label(what: &str, s: &str) -> Result<()> {
    if s.trim().is_empty() || s.chars().count() > 200 || s.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "{what} must be 1-200 printable characters"
        )));
    }
    Ok(())
}

/// Body of `POST /v1/gpu-models`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGpuModel {
    /// Catalog name, e.g. `MI325X`: 1-63 letters, digits, `.`, `_` or `-`.
    pub name: String,
    /// Maker.
    #[serde(default)]
    pub vendor: Option<String>,
    /// Device memory in GiB (1-65536).
    pub memory_gib: u32,
    /// Power at full load in watts (1-100000).
    pub tdp_watts: u32,
    /// How the GPUs of one board connect: `nvswitch`, `groups:N,M,…` (nested groups of
    /// consecutive GPU indexes, smallest first, powers of two from 2 to 64) or `aligned`;
    /// by default the rule for the model's name.
    #[serde(default)]
    pub topology: Option<String>,
}

impl CreateGpuModel {
    pub(crate) fn validate(self) -> Result<GpuModel> {
        let ok = !self.name.is_empty()
            && self.name.len() <= 63
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return Err(Error::invalid(format!(
                "GPU model name '{}' is invalid: use 1-63 letters, digits, '.', '_' or '-'",
                self.name
            )));
        }
        if !(1..=65_536).contains(&self.memory_gib) {
            return Err(Error::invalid("memory_gib must be between 1 and 65536"));
        }
        if !(1..=100_000).contains(&self.tdp_watts) {
            return Err(Error::invalid("tdp_watts must be between 1 and 100000"));
        }
        let vendor = self.vendor.unwrap_or_else(|| "unknown".into());
        validate_label("vendor", &vendor)?;
        let topology = match &self.topology {
            Some(t) => t
                .parse::<neocloud_types::BoardTopology>()
                .map_err(|e| Error::invalid(format!("topology: {e}")))?,
            None => neocloud_types::BoardTopology::of_model(&self.name),
        };
        Ok(GpuModel {
            topology,
            name: self.name,
            vendor,
            memory_gib: self.memory_gib,
            tdp_watts: self.tdp_watts,
            builtin: false,
        })
    }
}

/// Body of `POST /v1/tenants`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// Unique name: 1-63 lowercase letters, digits and `-`.
    pub name: String,
    /// Display name; defaults to the name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// `external` (a customer, the default) or `internal` (the operator's own lab).
    #[serde(default = "default_kind")]
    pub kind: TenantKind,
    /// Largest unpaid balance allowed, US dollars as a decimal string (0 to
    /// 1000000000000); none means unlimited.
    #[serde(default)]
    pub credit_limit: Option<Money>,
}

fn default_kind() -> TenantKind {
    TenantKind::External
}

impl CreateTenant {
    pub(crate) fn validate(self) -> Result<Self> {
        validate_name("tenant name", &self.name)?;
        if let Some(d) = &self.display_name {
            validate_label("display_name", d)?;
        }
        if let Some(c) = self.credit_limit {
            check_money("credit_limit", c, MAX_CREDIT_LIMIT, "US dollars")?;
        }
        Ok(self)
    }
}

/// Body of `PATCH /v1/tenants/{id}`; absent fields stay as they are.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    /// New display name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// `active` or `suspended`.
    #[serde(default)]
    pub status: Option<TenantStatus>,
    /// New credit limit; `null` removes the limit.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Money>)]
    pub credit_limit: Option<Option<Money>>,
}

/// Tells "absent" (outer None) from "null" (Some(None)).
fn double_option<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<Money>>, D::Error> {
    Option::<Money>::deserialize(d).map(Some)
}

impl UpdateTenant {
    pub(crate) fn validate(self) -> Result<TenantChanges> {
        if let Some(d) = &self.display_name {
            validate_label("display_name", d)?;
        }
        if let Some(Some(c)) = self.credit_limit {
            check_money("credit_limit", c, MAX_CREDIT_LIMIT, "US dollars")?;
        }
        if self.display_name.is_none() && self.status.is_none() && self.credit_limit.is_none() {
            return Err(Error::invalid(
                "nothing to change: give display_name, status or credit_limit",
            ));
        }
        Ok(TenantChanges {
            display_name: self.display_name,
            status: self.status,
            credit_limit: self.credit_limit,
        })
    }
}

/// Body of `POST /v1/api-keys`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    /// Human label, e.g. `ci-pipeline`.
    pub name: String,
    /// What the key may do.
    pub role: Role,
    /// Tenant id or name; required for tenant roles, refused for the others. Tenant admins
    /// may leave it out (their own tenant).
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// When the key stops working (RFC 3339, in the future); none means never.
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
    /// For `node-agent` keys: the node (id or name) the key speaks for. A node-agent key
    /// without a node is an enrollment key: it can only register agents, each of which gets
    /// a key of its own node back.
    #[serde(default)]
    pub node: Option<String>,
}

impl CreateApiKey {
    pub(crate) fn validate(self, now: Timestamp) -> Result<Self> {
        validate_label("name", &self.name)?;
        if self.expires_at.is_some_and(|e| e <= now) {
            return Err(Error::invalid("expires_at must be in the future"));
        }
        Ok(self)
    }
}

/// Response of `POST /v1/api-keys`: the key and, this once, its secret.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyCreated {
    /// The key as it will be listed.
    #[serde(flatten)]
    pub key: ApiKey,
    /// The whole key, to send as `Authorization: Bearer …`. Shown only in the first
    /// response: it is stored hashed, so an idempotent replay returns `null` here.
    pub secret: Option<String>,
}

/// Body of `POST /v1/instances`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LaunchInstance {
    /// Tenant id or name. Tenant keys launch for their own tenant and may leave it out;
    /// operator keys must name one.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Optional label (1-200 printable characters).
    #[serde(default)]
    pub name: Option<String>,
    /// `on-demand` (default), `spot`, `internal` (internal tenants only) or `reserved`
    /// (needs `contract_id`).
    #[serde(default = "default_class")]
    pub class: neocloud_types::Class,
    /// GPU model, e.g. `H100-SXM-80GB`. Give this or `gpu_models`.
    #[serde(default)]
    pub gpu_model: Option<String>,
    /// GPU models any of which will do (1 to 16, each once), e.g. `["H100-SXM-80GB",
    /// "H200-SXM-141GB"]`, instead of `gpu_model`: one decision places it on the best node
    /// of any of them, and it runs, is billed and counts in quotas as the model it was placed
    /// on. Not for gangs, MIG instances or class `reserved` (a contract is for one model).
    #[serde(default)]
    pub gpu_models: Option<Vec<String>>,
    /// GPUs in one node: 1, 2, 4 or 8. Give this, `nodes` or `shape`.
    #[serde(default)]
    pub gpus: Option<u32>,
    /// A gang of this many whole nodes. Give this, `gpus` or `shape`.
    #[serde(default)]
    pub nodes: Option<u32>,
    /// For gangs: the block level all nodes must share (`nvlink_domain`, `leaf_group`,
    /// `pod`, or `site`, the default).
    #[serde(default)]
    pub gang_level: Option<neocloud_types::GangLevel>,
    /// Site id or name to run in; any site by default.
    #[serde(default)]
    pub site: Option<String>,
    /// Contract whose reserved pool to run in (class `reserved`).
    #[serde(default)]
    pub contract_id: Option<neocloud_types::ContractId>,
    /// Wait up to this many seconds for capacity instead of failing at once (max 604800).
    #[serde(default)]
    pub wait_seconds: Option<u32>,
    /// The shape, instead of `gpus` or `nodes`: `{"kind": "share", "milli": 250}` (a
    /// quarter of one GPU, time-shared), `{"kind": "mig", "profile": "1g.10gb"}` (a MIG
    /// instance of one GPU; the profiles depend on the GPU model), `{"kind": "cpu"}` (no
    /// GPU; needs `cpu_milli`), or `{"kind": "gpus", "gpus": 2}` and
    /// `{"kind": "nodes", "count": 4, "level": "pod"}`.
    #[serde(default)]
    pub shape: Option<neocloud_types::Shape>,
    /// CPU to hold on its node, in thousandths of a core (1 to 100000000); by default in
    /// proportion to its part of the node's GPUs. Required for `{"kind": "cpu"}`; not for
    /// gangs, which hold whole nodes.
    #[serde(default)]
    pub cpu_milli: Option<u64>,
    /// Memory to hold on its node, MiB (1 to 1073741824); by default in proportion, as for
    /// CPU.
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// What runs on its nodes: `{"mode": "container", "image": "…", "command": […],
    /// "env": {…}}` (shapes within one node) or `{"mode": "bare-metal", "user_data": "…"}`
    /// (gangs of whole nodes). Absent: a bare allocation, running as soon as it is placed.
    #[serde(default)]
    pub delivery: Option<neocloud_types::Delivery>,
    /// Names of the tenant's SSH keys (`/v1/ssh-keys`) allowed to log in (at most 32);
    /// a bare-metal instance needs at least one.
    #[serde(default)]
    pub ssh_key_names: Vec<String>,
    /// What happens when one of its nodes fails: `replace` (the default for gangs: a
    /// healthy node of the same block takes its place and the instance keeps running),
    /// `shrink` (gangs only: drop the node, bill fewer GPUs) or `fail` (the default for
    /// everything else: the instance ends `failed`).
    #[serde(default)]
    pub on_node_failure: Option<neocloud_types::NodeFailurePolicy>,
}

/// The most GPU models one launch may accept.
pub const MAX_GPU_MODELS: usize = 16;

impl LaunchInstance {
    /// The models it accepts: `gpu_model` alone (and no list), or the `gpu_models` list
    /// (its first model, and the list). Checks the form only; the service checks that the
    /// models exist.
    pub(crate) fn models(&self) -> Result<(String, Vec<String>)> {
        match (&self.gpu_model, &self.gpu_models) {
            (Some(_), Some(_)) => Err(Error::invalid(
                "give gpu_model (one GPU model) or gpu_models (several), not both",
            )),
            (None, None) => Err(Error::invalid(
                "gpu_model is required (or gpu_models, a list of GPU models any of which will do)",
            )),
            (Some(m), None) => Ok((m.clone(), Vec::new())),
            (None, Some(list)) => {
                let Some(first) = list.first() else {
                    return Err(Error::invalid(
                        "gpu_models names no GPU model: give at least one",
                    ));
                };
                if list.len() > MAX_GPU_MODELS {
                    return Err(Error::invalid(format!(
                        "gpu_models names {} GPU models; at most {MAX_GPU_MODELS}",
                        list.len()
                    )));
                }
                for (i, m) in list.iter().enumerate() {
                    if list[..i].contains(m) {
                        return Err(Error::invalid(format!(
                            "gpu_models names GPU model '{m}' twice"
                        )));
                    }
                }
                Ok((first.clone(), list.clone()))
            }
        }
    }

    /// The node-failure policy for `shape`: the one asked for, or the shape's default.
    pub(crate) fn failure_policy(
        &self,
        shape: &neocloud_types::Shape,
    ) -> Result<neocloud_types::NodeFailurePolicy> {
        use neocloud_types::{NodeFailurePolicy, Shape};
        match self.on_node_failure {
            None => Ok(NodeFailurePolicy::default_for(shape)),
            Some(p @ (NodeFailurePolicy::Replace | NodeFailurePolicy::Shrink))
                if !matches!(shape, Shape::Nodes { .. }) =>
            {
                Err(Error::invalid(format!(
                    "on_node_failure '{p}' applies to gangs of whole nodes (`nodes`); \
                     an instance within one node can only `fail`"
                )))
            }
            Some(p) => Ok(p),
        }
    }
}

/// The highest price per GPU-hour the price book takes: $10,000.00. Prices, and so contract
/// rates, above it are refused; it keeps every contract value and report far inside the
/// range of exact money.
pub const MAX_PRICE_PER_GPU_HOUR: Money = Money::from_micros(10_000 * 1_000_000);
/// The most GPUs one contract, quote, amendment, quota or downtime record may name.
pub const MAX_GPUS: u32 = 1_000_000;
/// The longest contract: this many calendar years from its start.
pub const MAX_CONTRACT_YEARS: i32 = 10;
/// The largest value of one contract: $1,000,000,000,000.00.
pub const MAX_CONTRACT_VALUE: Money = Money::from_micros(1_000_000_000_000 * 1_000_000);
/// The largest credit limit of a tenant: $1,000,000,000,000.00.
pub const MAX_CREDIT_LIMIT: Money = MAX_CONTRACT_VALUE;
/// How far before now a contract or quote may start: clock skew between client and server
/// (5 minutes). Such a start is kept as given; anything earlier is refused.
pub const START_SKEW_SECONDS: i64 = 300;

/// Refuses a negative amount or one above `max`, naming the field and the limit.
pub(crate) fn check_money(field: &str, m: Money, max: Money, unit: &str) -> Result<()> {
    if m < Money::ZERO {
        return Err(Error::invalid(format!("{field} must not be negative")));
    }
    if m > max {
        return Err(Error::invalid(format!(
            "{field} must be at most {max} {unit} (got {m})"
        )));
    }
    Ok(())
}

/// The most CPU one request may name, thousandths of a core (100,000 cores).
pub const MAX_CPU_MILLI: u64 = 100_000_000;
/// The most memory one request may name, MiB (1 PiB).
pub const MAX_MEMORY_MIB: u64 = 1 << 30;

fn default_class() -> neocloud_types::Class {
    neocloud_types::Class::OnDemand
}

impl LaunchInstance {
    pub(crate) fn shape(&self) -> Result<neocloud_types::Shape> {
        use neocloud_types::{GangLevel, Shape};
        if let Some(n) = &self.name {
            validate_label("name", n)?;
        }
        if self.wait_seconds.is_some_and(|w| w > 604_800) {
            return Err(Error::invalid(
                "wait_seconds must be at most 604800 (7 days)",
            ));
        }
        if self.cpu_milli.is_some_and(|c| c == 0 || c > MAX_CPU_MILLI) {
            return Err(Error::invalid(format!(
                "cpu_milli must be 1 to {MAX_CPU_MILLI} thousandths of a core (got {})",
                self.cpu_milli.unwrap_or(0)
            )));
        }
        if self
            .memory_mib
            .is_some_and(|m| m == 0 || m > MAX_MEMORY_MIB)
        {
            return Err(Error::invalid(format!(
                "memory_mib must be 1 to {MAX_MEMORY_MIB} (got {})",
                self.memory_mib.unwrap_or(0)
            )));
        }
        if let Some(shape) = self.shape {
            if self.gpus.is_some() || self.nodes.is_some() || self.gang_level.is_some() {
                return Err(Error::invalid(
                    "give shape, or gpus or nodes (with gang_level), not both",
                ));
            }
            return match shape {
                Shape::Share { milli } if !(1..=1000).contains(&milli) => {
                    Err(Error::invalid(format!(
                        "a share is 1 to 1000 thousandths of one GPU (got {milli}); for whole GPUs give gpus"
                    )))
                }
                Shape::Cpu if self.cpu_milli.is_none() => Err(Error::invalid(
                    "a CPU-only instance needs cpu_milli (thousandths of a core, e.g. 4000 for 4 cores)",
                )),
                Shape::Gpus { .. } | Shape::Nodes { .. } => LaunchInstance {
                    shape: None,
                    gpus: match shape {
                        Shape::Gpus { gpus } => Some(gpus),
                        _ => None,
                    },
                    nodes: match shape {
                        Shape::Nodes { count, .. } => Some(count),
                        _ => None,
                    },
                    gang_level: match shape {
                        Shape::Nodes { level, .. } => Some(level),
                        _ => None,
                    },
                    ..self.clone()
                }
                .shape(),
                s => Ok(s),
            };
        }
        match (self.gpus, self.nodes) {
            (Some(g), None) => {
                if !matches!(g, 1 | 2 | 4 | 8) {
                    return Err(Error::invalid(format!(
                        "gpus must be 1, 2, 4 or 8 (got {g}); for more, ask for whole nodes with `nodes`"
                    )));
                }
                if self.gang_level.is_some() {
                    return Err(Error::invalid("gang_level applies only to `nodes`"));
                }
                Ok(Shape::Gpus { gpus: g })
            }
            (None, Some(n)) => {
                if n == 0 || n > 200_000 {
                    return Err(Error::invalid("nodes must be between 1 and 200000"));
                }
                Ok(Shape::Nodes {
                    count: n,
                    level: self.gang_level.unwrap_or(GangLevel::Site),
                })
            }
            (Some(_), Some(_)) => Err(Error::invalid("give either gpus or nodes, not both")),
            (None, None) => Err(Error::invalid(
                "give gpus (1, 2, 4 or 8), nodes (a gang) or shape (a share, MIG or CPU-only)",
            )),
        }
    }
}

/// Body of `PUT /v1/quotas`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetQuota {
    /// Tenant id or name.
    pub tenant_id: String,
    /// GPU model.
    pub gpu_model: String,
    /// Class of service.
    pub class: neocloud_types::Class,
    /// Most GPUs held at once (0 to 1000000); `null` removes the quota.
    pub max_gpus: Option<u32>,
}

/// Body of `POST /v1/quotes` and `POST /v1/contracts`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContractTerms {
    /// Tenant id or name (required to sign; tenant keys default to their own).
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// GPU model.
    pub gpu_model: String,
    /// GPUs to reserve (at most 1000000): a multiple of the model's GPUs per node (pools are
    /// whole nodes).
    pub gpu_count: u32,
    /// Start (RFC 3339), now or later; up to 5 minutes in the past is accepted as clock skew
    /// and kept as given. Fractions of a second are dropped.
    pub start_at: Timestamp,
    /// End (RFC 3339), in the future, after the start, at most 10 calendar years later.
    /// Fractions of a second are dropped. The value (at most $1,000,000,000,000) is exact to
    /// the cent.
    pub end_at: Timestamp,
    /// Site id or name; any site with the model by default.
    #[serde(default)]
    pub site: Option<String>,
    /// Keep the whole pool inside one block of this level (e.g. `pod`).
    #[serde(default)]
    pub single_block: Option<neocloud_types::GangLevel>,
    /// Availability promised, percent, e.g. "99.9" (default 99.5; 90-100).
    #[serde(default)]
    pub sla_percent: Option<String>,
}

/// The answer to a quote: whether the terms fit, and if not, what would.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Quote {
    /// Whether the GPUs are free on the capacity calendar for the whole window.
    pub fits: bool,
    /// Site evaluated (the one that fits, or the one that fits earliest).
    pub site_id: Option<neocloud_types::SiteId>,
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
    /// The earliest start at which the same count fits for the same duration, if ever.
    pub earliest_start: Option<Timestamp>,
    /// The most GPUs (whole nodes) that fit in the asked window.
    pub max_gpus_in_window: u32,
    /// GPUs the site sells for this model: all GPUs minus the spare buffer.
    pub sellable_gpus: u32,
    /// Reserved rate for this term, per GPU-hour.
    pub price_per_gpu_hour: neocloud_types::Money,
    /// gpu_count × hours × rate.
    pub total_value: neocloud_types::Money,
    /// Why it does not fit, in words.
    pub reason: Option<String>,
}

/// Body of `PUT /v1/sites/{site}/power-cap`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPowerCap {
    /// Facility watts the site may draw from now on (at most its budget); `null` removes
    /// the cap.
    pub watts: Option<i64>,
}

/// Body of `POST /v1/contracts/{id}/amend`: more GPUs, a later end, or both (a renewal is a
/// later end). The contract keeps its rate.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AmendContract {
    /// New GPU count: at least the current one, at most 1000000, a multiple of the model's
    /// GPUs per node.
    #[serde(default)]
    pub gpu_count: Option<u32>,
    /// New end: at or after the current one, at most 10 calendar years after the start
    /// (fractions of a second are dropped).
    #[serde(default)]
    pub end_at: Option<Timestamp>,
}

/// Body of `POST /v1/prices`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPrice {
    /// GPU model.
    pub gpu_model: String,
    /// Site id or name; every site without its own price by default.
    #[serde(default)]
    pub site: Option<String>,
    /// `on-demand`, `reserved-lt-1y`, `reserved-1-3y`, `reserved-ge-3y`, `spot-floor`,
    /// `spot-ceiling` or `internal-shadow`.
    pub kind: String,
    /// US dollars per GPU-hour, a decimal string (at most 6 decimals, 0 to 10000).
    pub price_per_gpu_hour: Money,
    /// When it takes effect (RFC 3339, not in the past); now by default.
    #[serde(default)]
    pub effective_from: Option<Timestamp>,
}

/// Body of `POST /v1/contracts/{id}/downtime`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddDowntime {
    /// Start of the outage, inside the contract's term.
    pub start_at: Timestamp,
    /// End of the outage (exclusive), after the start, inside the contract's term.
    pub end_at: Timestamp,
    /// GPUs of the contract that were unavailable (1 to the contract's GPU count).
    pub gpus: u32,
    /// What happened.
    #[serde(default)]
    pub note: Option<String>,
}

/// Body of `POST /v1/invoices`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateInvoice {
    /// Tenant id or name.
    pub tenant_id: String,
    /// Month, `YYYY-MM` (UTC), started already.
    pub month: String,
}

/// The contracted backlog: committed value not yet delivered, the figure a neocloud reports
/// to investors.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct BacklogReport {
    /// When it was computed.
    pub as_of: Timestamp,
    /// Remaining committed value of every signed and active contract.
    pub total: Money,
    /// The same, by calendar year (UTC) of delivery.
    pub by_year: Vec<BacklogYear>,
    /// Per contract.
    pub contracts: Vec<BacklogContract>,
}

/// Backlog delivered in one calendar year.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct BacklogYear {
    /// Year.
    pub year: i32,
    /// Committed value falling in that year.
    pub value: Money,
}

/// One contract's remaining committed value.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct BacklogContract {
    /// Contract.
    pub contract_id: neocloud_types::ContractId,
    /// Tenant.
    pub tenant_id: neocloud_types::TenantId,
    /// Value from now (or its start) to its end.
    pub remaining_value: Money,
}

/// Revenue of one month, tenant, class and site.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RevenueRow {
    /// Month, `YYYY-MM`.
    pub month: String,
    /// Tenant.
    pub tenant_id: neocloud_types::TenantId,
    /// Class: `reserved` (commitments, take-or-pay), `on-demand` or `spot`. Internal usage
    /// is chargeback, not revenue.
    pub class: neocloud_types::Class,
    /// Site.
    pub site_id: neocloud_types::SiteId,
    /// Amount (exact; invoices round per line).
    pub amount: Money,
}

/// Utilization of one pool and class over a month.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct UtilizationRow {
    /// Month, `YYYY-MM`.
    pub month: String,
    /// Site.
    pub site_id: neocloud_types::SiteId,
    /// GPU model.
    pub gpu_model: String,
    /// Class of service.
    pub class: neocloud_types::Class,
    /// GPU-seconds metered (instances that stopped, and running ones up to their last
    /// metering).
    pub gpu_seconds: i64,
    /// Sellable GPU-seconds of the pool over the month (or the part of it that has passed).
    pub sellable_gpu_seconds: i64,
    /// gpu_seconds / sellable_gpu_seconds, in thousandths of a percent (100000 = 100%).
    pub utilization_milli_percent: i64,
}

/// A site's power now.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PowerRow {
    /// Site.
    pub site_id: neocloud_types::SiteId,
    /// Site name.
    pub site: String,
    /// Facility watts drawn by allocated work now (PUE included).
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
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct MarginRow {
    /// Month, `YYYY-MM`.
    pub month: String,
    /// Site.
    pub site_id: neocloud_types::SiteId,
    /// Revenue booked at the site (commitments as invoiced, on-demand, spot).
    pub revenue: Money,
    /// Energy used, kWh (rounded down): idle draw of every node over the month's elapsed
    /// hours plus each metered GPU-second at its node's per-GPU dynamic draw, × PUE.
    pub energy_kwh: i64,
    /// Energy cost at the site's $/MWh.
    pub energy_cost: Money,
    /// revenue − energy cost.
    pub gross_margin: Money,
    /// Internal (the operator's lab) share of metered GPU-seconds, thousandths of a percent.
    pub internal_share_milli_percent: i64,
}
