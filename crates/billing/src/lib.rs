//! Metering and billing of neocloud (invariant 6 in docs/architecture.md).
//!
//! This crate turns what instances did into money, and nothing else: it has no I/O, no
//! async, no clock and no randomness, so the same inputs always give the same ledger and
//! the same invoice, byte for byte. That is what makes an invoice reproducible from the
//! ledger: the service may regenerate any month at any time and must get what it sent.
//!
//! - [`period`]: UTC calendar months, the billing period, and splitting intervals at month
//!   boundaries.
//! - [`rate`]: exact amounts from GPU-seconds and $/GPU-hour rates, and the rounding rules.
//! - [`prices`]: the price book (on-demand, reserved by term, spot floor/ceiling, internal
//!   shadow price), with effective dates, and the spot-price formula.
//! - [`ledger`]: rating usage intervals into append-only usage records.
//! - [`invoice`]: monthly invoices per tenant: commitments, on-demand, spot, SLA credits and
//!   internal chargeback.
//!
//! # Money and rounding
//!
//! Money is [`Money`], an `i64` of micro-dollars; no float is used
//! anywhere. Arithmetic runs in `i128` so that GPUs × seconds × rate never overflows for any
//! realistic fleet; results that would not fit an `i64` saturate (they are far beyond any
//! real bill). Two roundings exist, both banker's (half to even), so that rounding errors
//! do not drift in one direction over many lines:
//!
//! 1. a usage record's amount is rounded to the micro-dollar ([`rate::amount_micros`]);
//! 2. an invoice line is rounded to the cent once, after summing
//!    ([`rate::round_to_cent`]); a commitment line is rounded to the cent straight from the
//!    exact product, with no intermediate rounding.

pub mod invoice;
pub mod ledger;
pub mod period;
pub mod prices;
pub mod rate;

pub use invoice::{
    Availability, ContractTerms, Downtime, Invoice, InvoiceLine, LineKind, SlaPolicy, availability,
    build_invoice,
};
pub use ledger::{Ledger, UsageInterval, UsageRecord, rate_interval, rate_interval_milli};
pub use period::{Month, MonthParseError, split_by_month};
pub use prices::{PriceBook, PriceEntry, PriceKind, spot_price};
pub use rate::{amount_micros, amount_micros_milli, gpu_seconds_milli, round_to_cent};

use neocloud_types::{Money, SiteId, Timestamp};

/// Why billing could not proceed. Every variant names what was wrong so that an operator
/// can fix the price book or the data without reading code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BillingError {
    /// A price-book entry has a negative price.
    #[error(
        "price-book entry {kind} for {gpu_model} from {effective_from} has a negative price ({price})"
    )]
    NegativePrice {
        /// GPU model of the entry.
        gpu_model: String,
        /// Kind of price.
        kind: PriceKind,
        /// When the entry takes effect.
        effective_from: Timestamp,
        /// The rejected price.
        price: Money,
    },
    /// Two price-book entries would be in force for the same model, site scope and kind
    /// from the same instant, so neither could be said to win.
    #[error(
        "overlapping validity: two {kind} prices for {gpu_model} ({}) take effect at {effective_from}",
        site_scope(.site)
    )]
    OverlappingValidity {
        /// GPU model of the entries.
        gpu_model: String,
        /// Site of the entries (`None`: all sites).
        site: Option<SiteId>,
        /// Kind of price.
        kind: PriceKind,
        /// The shared effective instant.
        effective_from: Timestamp,
    },
    /// No price of the needed kind was in force when usage happened, so it cannot be
    /// rated; billing it at zero would silently give compute away.
    #[error("no {kind} price in force for {gpu_model} at {site} at {at}")]
    NoPrice {
        /// GPU model being rated.
        gpu_model: String,
        /// Site of the usage.
        site: SiteId,
        /// Kind of price that was needed.
        kind: PriceKind,
        /// The first instant without a price.
        at: Timestamp,
    },
    /// A ledger append would give one key (instance, start) two different records.
    #[error(
        "ledger conflict: instance {instance} already has a different record starting at {start}"
    )]
    LedgerConflict {
        /// The instance.
        instance: neocloud_types::InstanceId,
        /// Start of the conflicting record.
        start: Timestamp,
    },
    /// A ledger append would make two records of one instance overlap in time, which
    /// would bill the same GPU-seconds twice.
    #[error(
        "ledger overlap: a record of instance {instance} starting at {start} overlaps an existing one"
    )]
    LedgerOverlap {
        /// The instance.
        instance: neocloud_types::InstanceId,
        /// Start of the overlapping record.
        start: Timestamp,
    },
}

fn site_scope(site: &Option<SiteId>) -> String {
    match site {
        Some(s) => s.to_string(),
        None => "all sites".to_string(),
    }
}
