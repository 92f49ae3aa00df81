//! Monthly invoices per tenant, and the SLA credit policy.
//!
//! An invoice is a pure function of the tenant's contracts, its usage records of the month
//! (from the ledger), the downtime records of its contracts and the SLA policy: given the
//! same inputs, [`build_invoice`] returns the same invoice, line for line, so any month can
//! be regenerated and audited (invariant 6 in docs/architecture.md).
//!
//! # Lines
//!
//! In this order (each group sorted as said, so the order never depends on input order):
//!
//! 1. **Commitment**, one per contract overlapping the month, by contract id: take-or-pay,
//!    `gpus × seconds of [max(start, month start), min(end, month end)) × rate / 3600`,
//!    billed whether the GPUs were used or not; rounded to the cent from the exact value.
//! 2. **On-demand**, one per (GPU model, site): the sum of the month's on-demand usage
//!    record amounts, rounded to the cent once per line.
//! 3. **Spot**, likewise for spot records (each already priced at the spot price in force).
//! 4. **SLA credit**, one per contract whose availability fell below its SLA, by contract id:
//!    negative, a tier percentage of that month's commitment line (see [`SlaPolicy`]).
//! 5. **Internal chargeback**, for an internal tenant only, one per (GPU model, site): its
//!    internal-class usage at the shadow price, shown but not billed (`billed: false`).
//!
//! Reserved-class usage has no line: the commitment pays for it. An internal tenant's
//! on-demand and spot usage, if any, is billed like anyone's.
//!
//! # Rounding
//!
//! Every line amount is rounded half to even to the cent exactly once (usage records keep
//! micro-dollars, see [`crate::rate`]); `total` and `shadow_total` are exact sums of the
//! rounded lines, so they always equal what a reader adds up on the page.

use std::collections::BTreeMap;

use neocloud_types::{Class, ContractId, Money, SiteId, TenantId, Timestamp};

use crate::ledger::{UsageRecord, floor_second};
use crate::period::Month;
use crate::rate::{amount_to_cent, percent_to_cent, round_to_cent, sum};

/// The terms of a signed contract that billing needs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContractTerms {
    /// Contract id.
    pub id: ContractId,
    /// The tenant who pays.
    pub tenant: TenantId,
    /// GPU model reserved.
    pub gpu_model: String,
    /// Site of the reservation.
    pub site: SiteId,
    /// GPUs reserved.
    pub gpus: u32,
    /// Start of the term (inclusive).
    pub start: Timestamp,
    /// End of the term (exclusive).
    pub end: Timestamp,
    /// Dollars per GPU-hour.
    pub rate: Money,
    /// Promised monthly availability in thousandths of a percent (99.9% = 99,900).
    pub sla_milli: u32,
}

/// GPUs of a contract that were unavailable (down, drained without replacement) over
/// `[start, end)`, as recorded by the health subsystem.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Downtime {
    /// The contract whose GPUs were down.
    pub contract: ContractId,
    /// Start (inclusive).
    pub start: Timestamp,
    /// End (exclusive).
    pub end: Timestamp,
    /// How many of the contract's GPUs were down.
    pub gpus: u32,
}

/// The SLA credit policy: tiers of credit by monthly availability.
///
/// Each tier is `(availability below, credit)`, both in thousandths of a percent (99.0% =
/// 99,000; a 25% credit = 25,000). No credit is due unless the month's availability is
/// below the contract's own SLA. When it is, the tiers are taken from the highest
/// threshold down: the first tier applies whenever availability is below the SLA
/// (whatever its threshold), and each further tier whose threshold the availability is
/// also below replaces it, so the deepest tier reached wins. Credits are capped at 100%.
///
/// The default, [`SlaPolicy::default`], is:
///
/// | monthly availability             | credit of the month's commitment |
/// |----------------------------------|----------------------------------|
/// | below the SLA, at least 99.0%    | 10%                              |
/// | below 99.0%, at least 95.0%      | 25%                              |
/// | below 95.0%                      | 50%                              |
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SlaPolicy {
    /// `(availability below, credit)` in thousandths of a percent, any order.
    pub tiers: Vec<(u32, u32)>,
}

impl Default for SlaPolicy {
    fn default() -> Self {
        Self {
            tiers: vec![(100_000, 10_000), (99_000, 25_000), (95_000, 50_000)],
        }
    }
}

impl SlaPolicy {
    /// The credit, in thousandths of a percent of the month's commitment, for an
    /// availability against an SLA (both in thousandths of a percent). Zero when the SLA
    /// was met or the policy has no tiers.
    pub fn credit_milli(&self, availability_milli: u32, sla_milli: u32) -> u32 {
        if availability_milli >= sla_milli {
            return 0;
        }
        let mut tiers = self.tiers.clone();
        // Highest threshold first; a stable sort keeps equal thresholds in given order.
        tiers.sort_by_key(|&(below, _)| std::cmp::Reverse(below));
        let Some((&(_, first), deeper)) = tiers.split_first() else {
            return 0;
        };
        let credit = deeper
            .iter()
            .filter(|&&(below, _)| availability_milli < below)
            .map(|&(_, credit)| credit)
            .next_back()
            .unwrap_or(first);
        credit.min(100_000)
    }
}

/// The availability of a contract over its window in one month.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Availability {
    /// `gpus × seconds` of the contract inside the month.
    pub window_gpu_seconds: i64,
    /// GPU-seconds of downtime inside that window (capped at the window).
    pub downtime_gpu_seconds: i64,
    /// `1 − downtime / window`, in thousandths of a percent, rounded down (so 99.8999…%
    /// is 99,899 and misses a 99.9% SLA).
    pub milli: u32,
}

/// The part of a month a contract covers, in whole seconds: `(start, end, seconds)`, or
/// `None` if they do not overlap. Contract ends are rounded down to the second, like usage.
fn contract_window(c: &ContractTerms, month: Month) -> Option<(Timestamp, Timestamp, i64)> {
    let start = floor_second(c.start).max(month.start());
    let end = floor_second(c.end).min(month.end());
    (start < end).then(|| (start, end, (end.micros() - start.micros()) / 1_000_000))
}

/// Seconds of `[a, b)` inside `[lo, hi)`, both rounded down to the second.
fn overlap_seconds(a: Timestamp, b: Timestamp, lo: Timestamp, hi: Timestamp) -> i64 {
    let from = floor_second(a).max(lo);
    let to = floor_second(b).min(hi);
    ((to.micros() - from.micros()) / 1_000_000).max(0)
}

/// The availability of a contract in a month, from the downtime records of that contract
/// (others are ignored): `1 − Σ(down GPUs × seconds inside the window) / (gpus × window
/// seconds)`. A record's GPUs count at most the contract's GPUs, and the total at most the
/// whole window, so availability is never negative. `None` if the contract does not cover
/// any of the month or reserves no GPUs.
pub fn availability(
    c: &ContractTerms,
    month: Month,
    downtime: &[Downtime],
) -> Option<Availability> {
    let (ws, we, secs) = contract_window(c, month)?;
    let window = i128::from(c.gpus) * i128::from(secs);
    if window == 0 {
        return None;
    }
    let down: i128 = downtime
        .iter()
        .filter(|d| d.contract == c.id)
        .map(|d| {
            i128::from(d.gpus.min(c.gpus)) * i128::from(overlap_seconds(d.start, d.end, ws, we))
        })
        .sum();
    let down = down.min(window);
    let milli = (window - down) * 100_000 / window;
    Some(Availability {
        window_gpu_seconds: i64::try_from(window).unwrap_or(i64::MAX),
        downtime_gpu_seconds: i64::try_from(down).unwrap_or(i64::MAX),
        // 0..=100,000 by construction.
        milli: u32::try_from(milli).unwrap_or(0),
    })
}

/// What an invoice line is for.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum LineKind {
    /// Take-or-pay reserved capacity.
    #[serde(rename = "commitment")]
    Commitment,
    /// Pay-as-you-go usage.
    #[serde(rename = "on-demand")]
    OnDemand,
    /// Spot usage.
    #[serde(rename = "spot")]
    Spot,
    /// A credit for missing a contract's SLA (negative).
    #[serde(rename = "sla-credit")]
    SlaCredit,
    /// The operator's own lab's usage at the shadow price (not billed).
    #[serde(rename = "internal-chargeback")]
    InternalChargeback,
}

impl LineKind {
    /// The stable spelling of this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            LineKind::Commitment => "commitment",
            LineKind::OnDemand => "on-demand",
            LineKind::Spot => "spot",
            LineKind::SlaCredit => "sla-credit",
            LineKind::InternalChargeback => "internal-chargeback",
        }
    }
}

impl std::fmt::Display for LineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of an invoice.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InvoiceLine {
    /// What the line is for.
    pub kind: LineKind,
    /// Human-readable description (deterministic: built only from the inputs).
    pub description: String,
    /// The contract (commitment and SLA credit lines).
    pub contract: Option<ContractId>,
    /// The class of service.
    pub class: Option<Class>,
    /// GPU model.
    pub gpu_model: Option<String>,
    /// Site.
    pub site: Option<SiteId>,
    /// GPU-seconds: committed (commitment), used (usage lines), down (SLA credit).
    pub quantity_gpu_seconds: i64,
    /// Amount, rounded half to even to the cent; negative for credits.
    pub amount: Money,
    /// Whether the amount counts toward `total` (false for internal chargeback).
    pub billed: bool,
}

/// A tenant's bill for one calendar month (UTC).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Invoice {
    /// The tenant.
    pub tenant: TenantId,
    /// The month billed.
    pub month: Month,
    /// The lines, in the documented order.
    pub lines: Vec<InvoiceLine>,
    /// Sum of the billed lines: what the tenant owes.
    pub total: Money,
    /// Sum of the lines not billed (internal chargeback), shown for internal accounting.
    pub shadow_total: Money,
}

/// An amount with at least two decimals, as a bill shows it (`12096` → `12096.00`,
/// `2.1` → `2.10`, `0.000583` stays).
fn usd(m: Money) -> String {
    let s = m.to_string();
    match s.split_once('.') {
        None => format!("{s}.00"),
        Some((_, frac)) if frac.len() == 1 => format!("{s}0"),
        Some(_) => s,
    }
}

/// Thousandths of a percent as a percentage (`99_900` → `99.900%`).
fn percent(milli: u32) -> String {
    format!("{}.{:03}%", milli / 1_000, milli % 1_000)
}

/// Builds a tenant's invoice for a month. Pure and deterministic.
///
/// `contracts`, `usage` and `downtime` may hold other tenants' and other months' data:
/// only this tenant's contracts, this tenant's usage records of `month`, and downtime of
/// this tenant's contracts are used. `usage` should come from the ledger, whose keys are
/// unique; a contract id given twice counts once. `internal` marks the operator's own lab:
/// its internal-class usage becomes a chargeback line, shown but not billed. For an
/// external tenant internal-class records cannot exist (the service does not launch
/// them), and are ignored if present.
pub fn build_invoice(
    tenant: TenantId,
    internal: bool,
    month: Month,
    contracts: &[ContractTerms],
    usage: &[UsageRecord],
    downtime: &[Downtime],
    policy: &SlaPolicy,
) -> Invoice {
    let mut lines = Vec::new();
    let mut credits = Vec::new();

    let mut own: Vec<&ContractTerms> = contracts.iter().filter(|c| c.tenant == tenant).collect();
    own.sort_by_key(|c| c.id);
    own.dedup_by_key(|c| c.id);
    for c in own {
        let Some((ws, we, secs)) = contract_window(c, month) else {
            continue;
        };
        let committed = amount_to_cent(c.gpus, secs, c.rate);
        lines.push(InvoiceLine {
            kind: LineKind::Commitment,
            description: format!(
                "Commitment {}: {} × {} at {}, {} to {}, at ${}/GPU-hour (take-or-pay)",
                c.id,
                c.gpus,
                c.gpu_model,
                c.site,
                ws,
                we,
                usd(c.rate)
            ),
            contract: Some(c.id),
            class: Some(Class::Reserved),
            gpu_model: Some(c.gpu_model.clone()),
            site: Some(c.site),
            quantity_gpu_seconds: i64::from(c.gpus).saturating_mul(secs),
            amount: committed,
            billed: true,
        });
        let Some(av) = availability(c, month, downtime) else {
            continue;
        };
        let credit = policy.credit_milli(av.milli, c.sla_milli);
        if credit > 0 {
            credits.push(InvoiceLine {
                kind: LineKind::SlaCredit,
                description: format!(
                    "SLA credit {}: availability {} below the SLA of {}, {} of the commitment",
                    c.id,
                    percent(av.milli),
                    percent(c.sla_milli),
                    percent(credit)
                ),
                contract: Some(c.id),
                class: Some(Class::Reserved),
                gpu_model: Some(c.gpu_model.clone()),
                site: Some(c.site),
                quantity_gpu_seconds: av.downtime_gpu_seconds,
                amount: Money::from_micros(
                    0i64.saturating_sub(percent_to_cent(committed, credit).micros()),
                ),
                billed: true,
            });
        }
    }

    // Usage lines, grouped by (kind, model, site); BTreeMap order is the line order.
    let mut groups: BTreeMap<(LineKind, &str, SiteId), (i64, Vec<Money>)> = BTreeMap::new();
    for r in usage
        .iter()
        .filter(|r| r.tenant == tenant && r.month == month)
    {
        let kind = match r.class {
            Class::OnDemand => LineKind::OnDemand,
            Class::Spot => LineKind::Spot,
            Class::Internal if internal => LineKind::InternalChargeback,
            Class::Internal | Class::Reserved => continue,
        };
        let g = groups
            .entry((kind, r.gpu_model.as_str(), r.site))
            .or_default();
        g.0 = g.0.saturating_add(r.gpu_seconds);
        g.1.push(r.amount);
    }
    let mut chargeback = Vec::new();
    for ((kind, model, site), (quantity, amounts)) in groups {
        let (label, class, billed, note) = match kind {
            LineKind::OnDemand => ("On-demand", Class::OnDemand, true, ""),
            LineKind::Spot => ("Spot", Class::Spot, true, ""),
            _ => (
                "Internal chargeback",
                Class::Internal,
                false,
                " at the shadow price (not billed)",
            ),
        };
        let line = InvoiceLine {
            kind,
            description: format!("{label} {model} at {site}: {quantity} GPU-seconds{note}"),
            contract: None,
            class: Some(class),
            gpu_model: Some(model.to_string()),
            site: Some(site),
            quantity_gpu_seconds: quantity,
            amount: round_to_cent(sum(amounts)),
            billed,
        };
        if billed {
            lines.push(line);
        } else {
            chargeback.push(line);
        }
    }
    lines.extend(credits);
    lines.extend(chargeback);

    let total = sum(lines.iter().filter(|l| l.billed).map(|l| l.amount));
    let shadow_total = sum(lines.iter().filter(|l| !l.billed).map(|l| l.amount));
    Invoice {
        tenant,
        month,
        lines,
        total,
        shadow_total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_tiers() {
        let p = SlaPolicy::default();
        assert_eq!(
            p.credit_milli(99_900, 99_900),
            0,
            "meeting the SLA exactly earns nothing"
        );
        assert_eq!(p.credit_milli(100_000, 99_900), 0);
        assert_eq!(p.credit_milli(99_899, 99_900), 10_000);
        assert_eq!(p.credit_milli(99_000, 99_900), 10_000);
        assert_eq!(p.credit_milli(98_999, 99_900), 25_000);
        assert_eq!(p.credit_milli(95_000, 99_900), 25_000);
        assert_eq!(p.credit_milli(94_999, 99_900), 50_000);
        assert_eq!(p.credit_milli(0, 99_900), 50_000);
        // A contract with a 98% SLA at 98.5% gets nothing; at 97.5% the 25% tier.
        assert_eq!(p.credit_milli(98_500, 98_000), 0);
        assert_eq!(p.credit_milli(97_500, 98_000), 25_000);
    }

    #[test]
    fn custom_tiers_first_applies_below_the_sla_and_credit_is_capped() {
        // The first (highest) tier applies below the SLA even above its own threshold.
        let p = SlaPolicy {
            tiers: vec![(90_000, 200_000), (99_000, 5_000)],
        };
        assert_eq!(p.credit_milli(99_500, 99_900), 5_000);
        assert_eq!(p.credit_milli(89_999, 99_900), 100_000, "capped at 100%");
        assert_eq!(SlaPolicy { tiers: vec![] }.credit_milli(0, 99_900), 0);
    }

    #[test]
    fn formatting_helpers() {
        assert_eq!(usd(Money::from_micros(12_096_000_000)), "12096.00");
        assert_eq!(usd(Money::from_micros(2_100_000)), "2.10");
        assert_eq!(usd(Money::from_micros(583)), "0.000583");
        assert_eq!(usd(Money::from_micros(-3_024_000_000)), "-3024.00");
        assert_eq!(percent(99_900), "99.900%");
        assert_eq!(percent(96_666), "96.666%");
        assert_eq!(percent(100_000), "100.000%");
    }
}
