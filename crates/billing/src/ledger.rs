//! The usage ledger: append-only, rated records of what instances used.
//!
//! When an instance changes state (starts, ends, is preempted) the service turns the time
//! it held GPUs into a [`UsageInterval`] and rates it with [`rate_interval`], which cuts it
//! into [`UsageRecord`]s: one per calendar month and per price in force. Records are facts
//! and are never changed; an invoice is a pure function of them (invariant 6 in docs/architecture.md).
//!
//! # Metering to the second
//!
//! Usage is metered in whole seconds: the interval's start and end are both rounded down to
//! the second (floor; the fraction of a second at the end is not billed). Because both ends
//! round the same way, consecutive intervals of one instance still tile time without gaps
//! or overlaps. A price that takes effect in the middle of a second applies from the next
//! whole second, so every billed second has exactly one price: the one in force at its
//! first instant.
//!
//! # Idempotency
//!
//! The records of one instance never overlap in time, so `(instance, start)` identifies a
//! record: it is the ledger's key, and the key the store should make unique. Rating is
//! deterministic, so rating the same interval again gives identical records, which
//! [`Ledger::append`] skips; a different record under an existing key, or one overlapping
//! another record of the same instance, is refused rather than billed twice.

use std::collections::BTreeMap;

use neocloud_types::{Class, ContractId, Instance, InstanceId, Money, SiteId, TenantId, Timestamp};

use crate::BillingError;
use crate::period::{Month, split_by_month};
use crate::prices::{PriceBook, PriceKind, piecewise, sorted_series, value_at};
use crate::rate::amount_micros;

/// Microseconds in a second.
const SECOND: i64 = 1_000_000;

/// A span of time during which an instance held GPUs, before rating.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UsageInterval {
    /// The instance.
    pub instance: InstanceId,
    /// Its owner.
    pub tenant: TenantId,
    /// Its class of service, which decides the price kind.
    pub class: Class,
    /// GPU model it ran on.
    pub gpu_model: String,
    /// Site it ran in.
    pub site: SiteId,
    /// Contract whose reserved pool it ran in (reserved class).
    pub contract: Option<ContractId>,
    /// GPUs held.
    pub gpus: u32,
    /// Start (inclusive).
    pub start: Timestamp,
    /// End (exclusive).
    pub end: Timestamp,
}

impl UsageInterval {
    /// What `inst` used from where it was metered last (`metered_until`, else its start) up
    /// to `until`, never past its end; `None` when it never ran or there is nothing new.
    /// The one rule of what is billed, for `serve` and the simulator alike.
    pub fn of_instance(
        inst: &Instance,
        metered_until: Option<Timestamp>,
        until: Timestamp,
    ) -> Option<UsageInterval> {
        let (started, site) = (inst.started_at?, inst.site_id?);
        // Never past its end (an instance whose agents are still stopping it is not billed
        // for the stopping).
        let until = inst.ended_at.map_or(until, |e| until.min(e));
        let from = metered_until.unwrap_or(started).max(started);
        (until > from).then(|| UsageInterval {
            instance: inst.id,
            tenant: inst.tenant_id,
            class: inst.class,
            gpu_model: inst.gpu_model.clone(),
            site,
            contract: inst.contract_id,
            gpus: inst.gpu_count,
            start: from,
            end: until,
        })
    }
}

/// One rated, append-only fact: GPUs of one instance over a span of whole seconds inside
/// one month, at one rate.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UsageRecord {
    /// The instance.
    pub instance: InstanceId,
    /// Its owner.
    pub tenant: TenantId,
    /// Class of service.
    pub class: Class,
    /// GPU model.
    pub gpu_model: String,
    /// Site.
    pub site: SiteId,
    /// Contract (reserved class).
    pub contract: Option<ContractId>,
    /// GPUs held.
    pub gpus: u32,
    /// The calendar month (UTC) the record falls in; a record never crosses a month.
    pub month: Month,
    /// Start, a whole second (inclusive).
    pub start: Timestamp,
    /// End, a whole second (exclusive).
    pub end: Timestamp,
    /// `gpus × (end − start)` in seconds.
    pub gpu_seconds: i64,
    /// Dollars per GPU-hour; zero for reserved usage, which the commitment pays for.
    pub rate: Money,
    /// `gpu_seconds × rate / 3600`, rounded half to even to the micro-dollar.
    pub amount: Money,
}

/// An instant rounded down to the whole second.
pub(crate) fn floor_second(t: Timestamp) -> Timestamp {
    Timestamp::from_micros(t.micros().div_euclid(SECOND) * SECOND)
}

/// An instant rounded up to the whole second (saturating).
fn ceil_second(t: Timestamp) -> Timestamp {
    let floor = floor_second(t);
    if floor == t {
        t
    } else {
        Timestamp::from_micros(floor.micros().saturating_add(SECOND))
    }
}

/// Where the rate of an interval comes from.
enum Pricing<'a> {
    /// Reserved: rate 0, the commitment line pays for it.
    Free,
    /// A price-book kind.
    Book(&'a PriceBook, PriceKind),
    /// The caller's spot series, sorted by time.
    Spot(Vec<(Timestamp, Money)>),
}

/// Rates an interval into usage records.
///
/// The interval is metered in whole seconds (start and end rounded down, see the module
/// docs), split at month boundaries, then split wherever the price changes:
///
/// - on-demand: the book's `on-demand` price for the model at the site;
/// - internal: the book's `internal-shadow` price (the chargeback price; never billed);
/// - spot: `spot_series`, a caller-supplied series of `(from, price)` points (in any
///   order; of two at the same instant the later in the slice wins), each in force until
///   the next — e.g. from [`PriceBook::spot_series`];
/// - reserved: rate 0, because the commitment line bills reserved capacity, used or not.
///
/// Records come back in time order; adjacent records of one month differ in rate. An
/// interval shorter than a second after rounding, or with zero GPUs, gives no records.
/// Fails with [`BillingError::NoPrice`] if any second of the interval has no price in
/// force, rather than billing it at zero.
pub fn rate_interval(
    iv: &UsageInterval,
    book: &PriceBook,
    spot_series: &[(Timestamp, Money)],
) -> Result<Vec<UsageRecord>, BillingError> {
    let start = floor_second(iv.start);
    let end = floor_second(iv.end);
    if end <= start || iv.gpus == 0 {
        return Ok(Vec::new());
    }
    let pricing = match iv.class {
        Class::Reserved => Pricing::Free,
        Class::OnDemand => Pricing::Book(book, PriceKind::OnDemand),
        Class::Internal => Pricing::Book(book, PriceKind::InternalShadow),
        Class::Spot => Pricing::Spot(sorted_series(spot_series)),
    };
    // Price changes, moved to the next whole second (see the module docs).
    let changes: Vec<Timestamp> = match &pricing {
        Pricing::Free => Vec::new(),
        Pricing::Book(book, kind) => book.change_points(&iv.gpu_model, iv.site, *kind),
        Pricing::Spot(series) => series.iter().map(|&(t, _)| t).collect(),
    };
    let mut changes: Vec<Timestamp> = changes.into_iter().map(ceil_second).collect();
    changes.sort_unstable();
    changes.dedup();
    let price_at = |t: Timestamp| match &pricing {
        Pricing::Free => Some(Money::ZERO),
        Pricing::Book(book, kind) => book.price_at(&iv.gpu_model, iv.site, *kind, t),
        Pricing::Spot(series) => value_at(series, t),
    };
    // The kind named when a price is missing. Reserved usage is always priced (at 0), so
    // its arm never reaches an error; spot prices come from the floor/ceiling of the book.
    let missing_kind = match &pricing {
        Pricing::Book(_, kind) => *kind,
        Pricing::Free => PriceKind::ReservedUnder1y,
        Pricing::Spot(_) => PriceKind::SpotFloor,
    };

    let mut records = Vec::new();
    for (month, m_start, m_end) in split_by_month(start, end) {
        let inner = changes
            .iter()
            .copied()
            .filter(|&t| m_start < t && t < m_end);
        let pieces = piecewise(m_start, m_end, inner, price_at);
        // Prices never disappear once in force, so a gap can only be at the start.
        let covered_from = pieces.first().map_or(m_end, |p| p.0);
        if covered_from != m_start {
            return Err(BillingError::NoPrice {
                gpu_model: iv.gpu_model.clone(),
                site: iv.site,
                kind: missing_kind,
                at: m_start,
            });
        }
        for (from, to, rate) in pieces {
            let seconds = (to.micros() - from.micros()) / SECOND;
            records.push(UsageRecord {
                instance: iv.instance,
                tenant: iv.tenant,
                class: iv.class,
                gpu_model: iv.gpu_model.clone(),
                site: iv.site,
                contract: iv.contract,
                gpus: iv.gpus,
                month,
                start: from,
                end: to,
                gpu_seconds: i64::from(iv.gpus).saturating_mul(seconds),
                rate,
                amount: amount_micros(iv.gpus, seconds, rate),
            });
        }
    }
    Ok(records)
}

/// Rates an interval of a slice of one GPU (a share or a MIG instance) that counts as
/// `gpu_milli` thousandths of a GPU: the records of [`rate_interval`] for one GPU, with
/// each amount `gpu_milli / 1000` of that GPU's, computed exactly from the thousandths
/// ([`crate::rate::amount_micros_milli`]), and GPU-seconds in the same proportion (rounded
/// half to even to the second). `iv.gpus` is ignored; `gpu_milli` 0 gives no records.
pub fn rate_interval_milli(
    iv: &UsageInterval,
    gpu_milli: u64,
    book: &PriceBook,
    spot_series: &[(Timestamp, Money)],
) -> Result<Vec<UsageRecord>, BillingError> {
    if gpu_milli == 0 {
        return Ok(Vec::new());
    }
    let one = UsageInterval {
        gpus: 1,
        ..iv.clone()
    };
    let mut records = rate_interval(&one, book, spot_series)?;
    for r in &mut records {
        let seconds = (r.end.micros() - r.start.micros()) / SECOND;
        r.gpu_seconds = crate::rate::gpu_seconds_milli(gpu_milli, seconds);
        r.amount = crate::rate::amount_micros_milli(gpu_milli, seconds, r.rate);
    }
    Ok(records)
}

/// An in-memory, append-only ledger keyed by `(instance, start)`; the model of what the
/// store keeps, and a check that a batch of records may be appended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    records: BTreeMap<(InstanceId, Timestamp), UsageRecord>,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends records, all or nothing, and returns how many were new. A record identical
    /// to one already there is skipped (a retried rating); a different record under an
    /// existing key fails with [`BillingError::LedgerConflict`], and one that overlaps
    /// another record of the same instance with [`BillingError::LedgerOverlap`]; on error
    /// nothing is appended.
    pub fn append(
        &mut self,
        records: impl IntoIterator<Item = UsageRecord>,
    ) -> Result<usize, BillingError> {
        let mut staged: BTreeMap<(InstanceId, Timestamp), UsageRecord> = BTreeMap::new();
        for r in records {
            let key = (r.instance, r.start);
            if let Some(existing) = self.records.get(&key).or_else(|| staged.get(&key)) {
                if *existing == r {
                    continue;
                }
                return Err(BillingError::LedgerConflict {
                    instance: r.instance,
                    start: r.start,
                });
            }
            if overlaps(&self.records, &r) || overlaps(&staged, &r) {
                return Err(BillingError::LedgerOverlap {
                    instance: r.instance,
                    start: r.start,
                });
            }
            staged.insert(key, r);
        }
        let added = staged.len();
        self.records.append(&mut staged);
        Ok(added)
    }

    /// Every record, ordered by instance then start.
    pub fn records(&self) -> impl Iterator<Item = &UsageRecord> {
        self.records.values()
    }

    /// A tenant's records of one month, ordered by instance then start: the input of
    /// [`crate::invoice::build_invoice`].
    pub fn for_tenant_month(&self, tenant: TenantId, month: Month) -> Vec<UsageRecord> {
        self.records
            .values()
            .filter(|r| r.tenant == tenant && r.month == month)
            .cloned()
            .collect()
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the ledger has no records.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// Whether `r` overlaps a record of the same instance in `map` (its neighbours by start).
fn overlaps(map: &BTreeMap<(InstanceId, Timestamp), UsageRecord>, r: &UsageRecord) -> bool {
    let before = map
        .range((r.instance, Timestamp::from_micros(i64::MIN))..(r.instance, r.start))
        .next_back()
        .is_some_and(|(_, p)| p.end > r.start);
    let after = map
        .range((r.instance, r.start)..)
        .next()
        .is_some_and(|(_, n)| n.instance == r.instance && n.start < r.end);
    before || after
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prices::PriceEntry;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }
    fn usd(s: &str) -> Money {
        s.parse().unwrap()
    }
    fn site() -> SiteId {
        "site_00000000000000000000000000000001".parse().unwrap()
    }
    fn instance(n: u8) -> InstanceId {
        format!("inst_{n:032x}").parse().unwrap()
    }
    fn tenant() -> TenantId {
        "ten_00000000000000000000000000000001".parse().unwrap()
    }
    const H100: &str = "H100-SXM-80GB";

    fn book() -> PriceBook {
        let e = |kind, price: &str, from: &str| PriceEntry {
            gpu_model: H100.to_string(),
            site: None,
            kind,
            price: usd(price),
            effective_from: ts(from),
        };
        PriceBook::new(vec![
            e(PriceKind::OnDemand, "2.85", "2026-01-01T00:00:00Z"),
            e(PriceKind::OnDemand, "2.49", "2026-11-15T00:00:00Z"),
            e(PriceKind::InternalShadow, "1.20", "2026-01-01T00:00:00Z"),
        ])
        .unwrap()
    }

    fn iv(class: Class, gpus: u32, start: &str, end: &str) -> UsageInterval {
        UsageInterval {
            instance: instance(1),
            tenant: tenant(),
            class,
            gpu_model: H100.to_string(),
            site: site(),
            contract: None,
            gpus,
            start: ts(start),
            end: ts(end),
        }
    }

    #[test]
    fn preemption_mid_hour() {
        // 8 GPUs from 10:00:00 to 10:37:12 (preempted): 2,232 s × 8 = 17,856 GPU-s;
        // × $2.85 / 3,600 = $14.136 exactly.
        let r = rate_interval(
            &iv(
                Class::OnDemand,
                8,
                "2026-11-03T10:00:00Z",
                "2026-11-03T10:37:12Z",
            ),
            &book(),
            &[],
        )
        .unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].gpu_seconds, 17_856);
        assert_eq!(r[0].rate, usd("2.85"));
        assert_eq!(r[0].amount, usd("14.136"));
        assert_eq!(r[0].month, Month::new(2026, 11).unwrap());
    }

    #[test]
    fn fractions_of_a_second_are_floored_at_both_ends() {
        // Start 10:00:00.700 → 10:00:00; end 10:00:10.999 → 10:00:10: 10 s.
        let r = rate_interval(
            &iv(
                Class::OnDemand,
                1,
                "2026-11-03T10:00:00.7Z",
                "2026-11-03T10:00:10.999Z",
            ),
            &book(),
            &[],
        )
        .unwrap();
        assert_eq!(r[0].start, ts("2026-11-03T10:00:00Z"));
        assert_eq!(r[0].end, ts("2026-11-03T10:00:10Z"));
        assert_eq!(r[0].gpu_seconds, 10);
        // Within one second: nothing. Zero GPUs: nothing.
        assert!(
            rate_interval(
                &iv(
                    Class::OnDemand,
                    1,
                    "2026-11-03T10:00:00.1Z",
                    "2026-11-03T10:00:00.9Z"
                ),
                &book(),
                &[]
            )
            .unwrap()
            .is_empty()
        );
        assert!(
            rate_interval(
                &iv(
                    Class::OnDemand,
                    0,
                    "2026-11-03T10:00:00Z",
                    "2026-11-03T11:00:00Z"
                ),
                &book(),
                &[]
            )
            .unwrap()
            .is_empty()
        );
    }

    #[test]
    fn crossing_a_month_boundary_splits_in_two() {
        // 4 GPUs from 2026-10-31 22:30 to 2026-11-01 01:15 (on-demand at $2.85 in both):
        // October: 1 h 30 min = 5,400 s × 4 = 21,600 GPU-s = 6 GPU-h × 2.85 = $17.10;
        // November: 1 h 15 min = 4,500 s × 4 = 18,000 GPU-s = 5 GPU-h × 2.85 = $14.25.
        let r = rate_interval(
            &iv(
                Class::OnDemand,
                4,
                "2026-10-31T22:30:00Z",
                "2026-11-01T01:15:00Z",
            ),
            &book(),
            &[],
        )
        .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].month.to_string(), r[0].gpu_seconds, r[0].amount),
            ("2026-10".into(), 21_600, usd("17.10"))
        );
        assert_eq!(
            (r[1].month.to_string(), r[1].gpu_seconds, r[1].amount),
            ("2026-11".into(), 18_000, usd("14.25"))
        );
        assert_eq!(r[0].end, ts("2026-11-01T00:00:00Z"));
        assert_eq!(r[1].start, r[0].end);
    }

    #[test]
    fn price_change_mid_month_gives_two_segments() {
        // 2 GPUs from 2026-11-14 20:00 to 2026-11-15 06:00; the price drops from $2.85 to
        // $2.49 at 2026-11-15 00:00:
        // 4 h × 2 = 8 GPU-h × 2.85 = $22.80; 6 h × 2 = 12 GPU-h × 2.49 = $29.88.
        let r = rate_interval(
            &iv(
                Class::OnDemand,
                2,
                "2026-11-14T20:00:00Z",
                "2026-11-15T06:00:00Z",
            ),
            &book(),
            &[],
        )
        .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].gpu_seconds, r[0].rate, r[0].amount),
            (28_800, usd("2.85"), usd("22.80"))
        );
        assert_eq!(
            (r[1].gpu_seconds, r[1].rate, r[1].amount),
            (43_200, usd("2.49"), usd("29.88"))
        );
        assert_eq!(r[1].start, ts("2026-11-15T00:00:00Z"));
    }

    #[test]
    fn a_price_taking_effect_mid_second_applies_from_the_next_second() {
        let e = |price: &str, from: &str| PriceEntry {
            gpu_model: H100.to_string(),
            site: None,
            kind: PriceKind::OnDemand,
            price: usd(price),
            effective_from: ts(from),
        };
        let book = PriceBook::new(vec![
            e("3.60", "2026-01-01T00:00:00Z"),
            e("7.20", "2026-11-03T10:00:05.5Z"),
        ])
        .unwrap();
        // Seconds 0..=5 at $3.60 (6 s = 6,000 µ$), 6..10 at $7.20 (4 s = 8,000 µ$).
        let r = rate_interval(
            &iv(
                Class::OnDemand,
                1,
                "2026-11-03T10:00:00Z",
                "2026-11-03T10:00:10Z",
            ),
            &book,
            &[],
        )
        .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].gpu_seconds, r[0].amount.micros()), (6, 6_000));
        assert_eq!((r[1].gpu_seconds, r[1].amount.micros()), (4, 8_000));
    }

    #[test]
    fn spot_price_moving_during_an_instance() {
        // 8 spot GPUs from 12:00 to 15:30. Spot: $1.00 from 11:00, $1.60 from 13:30,
        // $1.20 from 15:00 (given out of order):
        // 12:00–13:30: 1.5 h × 8 = 12 GPU-h × 1.00 = $12.00
        // 13:30–15:00: 1.5 h × 8 = 12 GPU-h × 1.60 = $19.20
        // 15:00–15:30: 0.5 h × 8 =  4 GPU-h × 1.20 =  $4.80
        let series = [
            (ts("2026-11-03T13:30:00Z"), usd("1.60")),
            (ts("2026-11-03T11:00:00Z"), usd("1.00")),
            (ts("2026-11-03T15:00:00Z"), usd("1.20")),
        ];
        let r = rate_interval(
            &iv(
                Class::Spot,
                8,
                "2026-11-03T12:00:00Z",
                "2026-11-03T15:30:00Z",
            ),
            &book(),
            &series,
        )
        .unwrap();
        let got: Vec<_> = r
            .iter()
            .map(|r| (r.gpu_seconds, r.rate, r.amount))
            .collect();
        assert_eq!(
            got,
            vec![
                (43_200, usd("1.00"), usd("12.00")),
                (43_200, usd("1.60"), usd("19.20")),
                (14_400, usd("1.20"), usd("4.80")),
            ]
        );
        // No spot price before 11:00 → error, not a free ride.
        let e = rate_interval(
            &iv(
                Class::Spot,
                8,
                "2026-11-03T10:00:00Z",
                "2026-11-03T12:00:00Z",
            ),
            &book(),
            &series,
        )
        .unwrap_err();
        assert!(matches!(e, BillingError::NoPrice { .. }), "{e:?}");
    }

    #[test]
    fn reserved_usage_is_free_and_internal_uses_the_shadow_price() {
        let r = rate_interval(
            &iv(
                Class::Reserved,
                8,
                "2026-11-03T00:00:00Z",
                "2026-11-04T00:00:00Z",
            ),
            &PriceBook::default(),
            &[],
        )
        .unwrap();
        assert_eq!(
            (r.len(), r[0].gpu_seconds, r[0].amount),
            (1, 8 * 86_400, Money::ZERO)
        );
        // Internal: 8 GPUs × 24 h = 192 GPU-h × 1.20 = $230.40.
        let r = rate_interval(
            &iv(
                Class::Internal,
                8,
                "2026-11-03T00:00:00Z",
                "2026-11-04T00:00:00Z",
            ),
            &book(),
            &[],
        )
        .unwrap();
        assert_eq!((r[0].rate, r[0].amount), (usd("1.20"), usd("230.40")));
    }

    #[test]
    fn no_price_is_an_error() {
        let e = rate_interval(
            &iv(
                Class::OnDemand,
                1,
                "2025-12-31T23:00:00Z",
                "2026-01-01T01:00:00Z",
            ),
            &book(),
            &[],
        )
        .unwrap_err();
        assert_eq!(
            e,
            BillingError::NoPrice {
                gpu_model: H100.to_string(),
                site: site(),
                kind: PriceKind::OnDemand,
                at: ts("2025-12-31T23:00:00Z"),
            }
        );
        let mut b = iv(
            Class::OnDemand,
            1,
            "2026-11-01T00:00:00Z",
            "2026-11-01T01:00:00Z",
        );
        b.gpu_model = "B200".into();
        assert!(rate_interval(&b, &book(), &[]).is_err());
    }

    #[test]
    fn ledger_is_idempotent_and_refuses_conflicts_and_overlaps() {
        let mut ledger = Ledger::new();
        let r = rate_interval(
            &iv(
                Class::OnDemand,
                2,
                "2026-11-14T20:00:00Z",
                "2026-11-15T06:00:00Z",
            ),
            &book(),
            &[],
        )
        .unwrap();
        assert_eq!(ledger.append(r.clone()).unwrap(), 2);
        // A retried rating appends nothing.
        assert_eq!(ledger.append(r.clone()).unwrap(), 0);
        assert_eq!(ledger.len(), 2);
        // Same key, different content.
        let mut changed = r[0].clone();
        changed.gpus = 3;
        assert!(matches!(
            ledger.append([changed]),
            Err(BillingError::LedgerConflict { .. })
        ));
        // Overlapping an existing record of the same instance.
        let overlap = rate_interval(
            &iv(
                Class::OnDemand,
                2,
                "2026-11-15T05:00:00Z",
                "2026-11-15T07:00:00Z",
            ),
            &book(),
            &[],
        )
        .unwrap();
        assert!(matches!(
            ledger.append(overlap),
            Err(BillingError::LedgerOverlap { .. })
        ));
        // All or nothing: a good record before a bad one is not appended either.
        let good = rate_interval(
            &iv(
                Class::OnDemand,
                2,
                "2026-11-15T06:00:00Z",
                "2026-11-15T07:00:00Z",
            ),
            &book(),
            &[],
        )
        .unwrap();
        let mut bad = good.clone();
        bad.extend(
            rate_interval(
                &iv(
                    Class::OnDemand,
                    2,
                    "2026-11-14T19:00:00Z",
                    "2026-11-14T20:30:00Z",
                ),
                &book(),
                &[],
            )
            .unwrap(),
        );
        assert!(ledger.append(bad).is_err());
        assert_eq!(ledger.len(), 2);
        // The following interval and another instance at the same time are fine.
        assert_eq!(ledger.append(good).unwrap(), 1);
        let mut other = iv(
            Class::OnDemand,
            2,
            "2026-11-14T20:00:00Z",
            "2026-11-15T06:00:00Z",
        );
        other.instance = instance(2);
        assert_eq!(
            ledger
                .append(rate_interval(&other, &book(), &[]).unwrap())
                .unwrap(),
            2
        );
        assert_eq!(
            ledger
                .for_tenant_month(tenant(), Month::new(2026, 11).unwrap())
                .len(),
            5
        );
        assert!(
            ledger
                .for_tenant_month(tenant(), Month::new(2026, 10).unwrap())
                .is_empty()
        );
    }
}
