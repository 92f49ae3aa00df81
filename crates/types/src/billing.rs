//! Billing views: prices, usage records, invoices.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{Class, ContractId, InstanceId, Money, SiteId, TenantId, Timestamp};

/// One entry of the price book.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Price {
    /// GPU model.
    pub gpu_model: String,
    /// Site it applies to; none means every site without a price of its own.
    pub site_id: Option<SiteId>,
    /// `on-demand`, `reserved-lt-1y`, `reserved-1-3y`, `reserved-ge-3y`, `spot-floor`,
    /// `spot-ceiling` or `internal-shadow`.
    pub kind: String,
    /// US dollars per GPU-hour.
    pub price_per_gpu_hour: Money,
    /// In force from this time until the next entry of the same model, site and kind.
    pub effective_from: Timestamp,
}

/// One metered interval of the usage ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageRecord {
    /// Instance.
    pub instance_id: InstanceId,
    /// Tenant.
    pub tenant_id: TenantId,
    /// Class of service.
    pub class: Class,
    /// GPU model.
    pub gpu_model: String,
    /// Site.
    pub site_id: SiteId,
    /// Contract (reserved usage).
    pub contract_id: Option<ContractId>,
    /// GPUs held (a share or MIG instance holds part of one GPU and counts 1).
    pub gpus: u32,
    /// For a share or MIG instance: the thousandths of a GPU it is rated for (250 = a
    /// quarter of a GPU-hour per hour); absent for whole GPUs (1000 × `gpus`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_milli: Option<u64>,
    /// Calendar month (UTC), `YYYY-MM`.
    pub month: String,
    /// Start of the interval.
    pub start_at: Timestamp,
    /// End of the interval (exclusive).
    pub end_at: Timestamp,
    /// GPUs × whole seconds (for a slice: its thousandths × seconds / 1000).
    pub gpu_seconds: i64,
    /// Price per GPU-hour applied.
    pub rate: Money,
    /// Amount, exact to the micro-dollar.
    pub amount: Money,
}

/// One line of an invoice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InvoiceLine {
    /// `commitment`, `on-demand`, `spot`, `sla-credit` or `internal-chargeback`.
    pub kind: String,
    /// What the line is for.
    pub description: String,
    /// The contract (commitment and SLA credit lines).
    pub contract_id: Option<ContractId>,
    /// Class of service.
    pub class: Option<Class>,
    /// GPU model.
    pub gpu_model: Option<String>,
    /// Site.
    pub site_id: Option<SiteId>,
    /// GPU-seconds the line covers.
    pub quantity_gpu_seconds: i64,
    /// Amount, rounded to the cent (banker's rounding); negative for credits.
    pub amount: Money,
    /// False for an internal tenant's chargeback: shown, not billed.
    pub billed: bool,
}

/// A tenant's bill for one calendar month (UTC).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Invoice {
    /// Invoice id (`inv_…`).
    pub id: String,
    /// Tenant.
    pub tenant_id: TenantId,
    /// Month, `YYYY-MM`.
    pub month: String,
    /// `draft` (regenerated on demand) or `finalized` (never changes again).
    pub state: String,
    /// The lines.
    pub lines: Vec<InvoiceLine>,
    /// What the tenant owes: the billed lines.
    pub total: Money,
    /// Internal chargeback, shown but not billed.
    pub shadow_total: Money,
    /// When it was (re)generated.
    pub created_at: Timestamp,
    /// When it was finalized.
    pub finalized_at: Option<Timestamp>,
}
