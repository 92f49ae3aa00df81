//! The price book: what a GPU-hour costs, per GPU model, optionally per site, with
//! effective dates; and the spot-price formula.
//!
//! Prices are never edited in place: a new price is a new entry with a later
//! `effective_from`, so that usage from before the change is still rated at the price
//! that was in force then, and an old invoice regenerates identically.
//!
//! # Which entry is in force
//!
//! For a (model, site, kind) at instant `t`: among the entries for exactly that site whose
//! `effective_from <= t`, the latest wins; only if there is none, the latest all-sites
//! entry (`site: None`) with `effective_from <= t` applies. So a site-specific price,
//! once in force, overrides the all-sites price (including later all-sites changes) until
//! a newer entry for that site replaces it. Two entries for the same (model, site scope,
//! kind, effective_from) are rejected as "overlapping validity", because neither could be
//! said to win.
//!
//! # Spot prices
//!
//! [`spot_price`] moves between the book's spot floor and ceiling with the pool's
//! utilization `u` (in thousandths, 0..=1000):
//!
//! ```text
//! spot(u) = floor + (ceiling − floor) × max(0, u − 500) / 500
//! ```
//!
//! so spot sits at its floor while at most half of the pool is used, then rises linearly to
//! the ceiling when the pool is full. The division is exact in `i128` and rounded half to
//! even to the micro-dollar. `u` above 1000 counts as 1000, and a ceiling below the floor
//! counts as the floor (spot never goes below its floor).

use std::fmt;
use std::str::FromStr;

use neocloud_types::{Money, SiteId, Timestamp};

use crate::BillingError;
use crate::rate::{div_round_half_even, saturate};

/// Microseconds in a 365-day year, the year used to classify reserved terms.
const YEAR_MICROS: i64 = 365 * 86_400 * 1_000_000;

/// What a price-book entry prices. All prices are dollars per GPU-hour.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum PriceKind {
    /// Pay-as-you-go.
    #[serde(rename = "on-demand")]
    OnDemand,
    /// Reserved for a term shorter than one year.
    #[serde(rename = "reserved-lt-1y")]
    ReservedUnder1y,
    /// Reserved for a term of one year up to (not including) three years.
    #[serde(rename = "reserved-1-3y")]
    Reserved1To3y,
    /// Reserved for three years or more.
    #[serde(rename = "reserved-ge-3y")]
    ReservedOver3y,
    /// The lowest spot price, paid while the pool is at most half used.
    #[serde(rename = "spot-floor")]
    SpotFloor,
    /// The highest spot price, paid when the pool is full.
    #[serde(rename = "spot-ceiling")]
    SpotCeiling,
    /// The shadow price of the operator's own lab: shown as chargeback, never billed.
    #[serde(rename = "internal-shadow")]
    InternalShadow,
}

impl PriceKind {
    /// Every kind, in declaration order.
    pub const ALL: &'static [PriceKind] = &[
        PriceKind::OnDemand,
        PriceKind::ReservedUnder1y,
        PriceKind::Reserved1To3y,
        PriceKind::ReservedOver3y,
        PriceKind::SpotFloor,
        PriceKind::SpotCeiling,
        PriceKind::InternalShadow,
    ];

    /// The stable spelling of this kind (API, store, CLI).
    pub fn as_str(self) -> &'static str {
        match self {
            PriceKind::OnDemand => "on-demand",
            PriceKind::ReservedUnder1y => "reserved-lt-1y",
            PriceKind::Reserved1To3y => "reserved-1-3y",
            PriceKind::ReservedOver3y => "reserved-ge-3y",
            PriceKind::SpotFloor => "spot-floor",
            PriceKind::SpotCeiling => "spot-ceiling",
            PriceKind::InternalShadow => "internal-shadow",
        }
    }
}

impl fmt::Display for PriceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PriceKind {
    /// A message naming the rejected input and every valid spelling; a plain `String`
    /// like the other string enums of the workspace (`neocloud_types`), so callers handle
    /// all of them alike.
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PriceKind::ALL
            .iter()
            .copied()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = PriceKind::ALL.iter().map(|k| k.as_str()).collect();
                format!(
                    "'{s}' is not a price kind (expected one of: {})",
                    all.join(", ")
                )
            })
    }
}

/// One price, in force from `effective_from` until a later entry for the same model, site
/// scope and kind replaces it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PriceEntry {
    /// GPU model, e.g. `H100-SXM-80GB`.
    pub gpu_model: String,
    /// The site it applies to; `None` applies to all sites without a price of their own.
    pub site: Option<SiteId>,
    /// What it prices.
    pub kind: PriceKind,
    /// Dollars per GPU-hour; never negative.
    pub price: Money,
    /// When it takes effect (inclusive).
    pub effective_from: Timestamp,
}

impl PriceEntry {
    /// The sort key of the book: entries of one (model, site, kind) are contiguous and in
    /// effective order, so a lookup is a binary search.
    fn key(&self) -> (&str, Option<SiteId>, PriceKind, Timestamp) {
        (&self.gpu_model, self.site, self.kind, self.effective_from)
    }
}

/// A validated price book. Build it with [`PriceBook::new`]; it deserialises from (and
/// serialises to) its list of entries, validated the same way.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "Vec<PriceEntry>", into = "Vec<PriceEntry>")]
pub struct PriceBook {
    /// Sorted by [`PriceEntry::key`], no duplicate keys, no negative prices.
    entries: Vec<PriceEntry>,
}

impl PriceBook {
    /// A price book from entries in any order. Rejects a negative price
    /// ([`BillingError::NegativePrice`]) and two entries with the same model, site scope,
    /// kind and `effective_from` ([`BillingError::OverlappingValidity`]). Errors name the
    /// first offending entry in sorted order, so the same input always gives the same error.
    pub fn new(mut entries: Vec<PriceEntry>) -> Result<Self, BillingError> {
        entries.sort_by(|a, b| a.key().cmp(&b.key()));
        if let Some(e) = entries.iter().find(|e| e.price < Money::ZERO) {
            return Err(BillingError::NegativePrice {
                gpu_model: e.gpu_model.clone(),
                kind: e.kind,
                effective_from: e.effective_from,
                price: e.price,
            });
        }
        if let Some(w) = entries.windows(2).find(|w| w[0].key() == w[1].key()) {
            let e = &w[1];
            return Err(BillingError::OverlappingValidity {
                gpu_model: e.gpu_model.clone(),
                site: e.site,
                kind: e.kind,
                effective_from: e.effective_from,
            });
        }
        Ok(Self { entries })
    }

    /// The entries, sorted by model, site scope, kind and effective date.
    pub fn entries(&self) -> &[PriceEntry] {
        &self.entries
    }

    /// The latest entry for exactly this site scope with `effective_from <= at`.
    fn latest(
        &self,
        model: &str,
        site: Option<SiteId>,
        kind: PriceKind,
        at: Timestamp,
    ) -> Option<&PriceEntry> {
        let after = self
            .entries
            .partition_point(|e| e.key() <= (model, site, kind, at));
        let e = self.entries.get(after.checked_sub(1)?)?;
        (e.gpu_model == model && e.site == site && e.kind == kind).then_some(e)
    }

    /// The price per GPU-hour in force at `at` for a model at a site: the site's own
    /// entry if one is in force, else the all-sites one (see the module docs). `None` if
    /// no entry of that kind has taken effect yet.
    pub fn price_at(
        &self,
        model: &str,
        site: SiteId,
        kind: PriceKind,
        at: Timestamp,
    ) -> Option<Money> {
        self.latest(model, Some(site), kind, at)
            .or_else(|| self.latest(model, None, kind, at))
            .map(|e| e.price)
    }

    /// Every instant at which the price of (model, site, kind) may change: the effective
    /// dates of the site's entries and of the all-sites entries, ascending, without
    /// duplicates. Between two consecutive change points the price is constant.
    pub fn change_points(&self, model: &str, site: SiteId, kind: PriceKind) -> Vec<Timestamp> {
        let mut points: Vec<Timestamp> = self
            .entries
            .iter()
            .filter(|e| {
                e.gpu_model == model && e.kind == kind && (e.site.is_none() || e.site == Some(site))
            })
            .map(|e| e.effective_from)
            .collect();
        points.sort_unstable();
        points.dedup();
        points
    }

    /// The prices in force over `[start, end)`, as consecutive `(from, to, price)` pieces
    /// split where the price changes (adjacent pieces always differ in price). A part of
    /// the interval before any price took effect has no piece: if the first piece does not
    /// start at `start`, usage there cannot be rated. Empty when `end <= start`.
    pub fn segments(
        &self,
        model: &str,
        site: SiteId,
        kind: PriceKind,
        start: Timestamp,
        end: Timestamp,
    ) -> Vec<(Timestamp, Timestamp, Money)> {
        let inner = self
            .change_points(model, site, kind)
            .into_iter()
            .filter(|&t| start < t && t < end);
        piecewise(start, end, inner, |t| self.price_at(model, site, kind, t))
    }

    /// The reserved price kind for a contract term of `term_micros` microseconds: under
    /// one year, one to three years, or three years and more, with 365-day years (a
    /// contract from 2027-01-01 to 2030-01-01 spans 1,096 days and is ≥ 3 years).
    pub fn reserved_kind(term_micros: i64) -> PriceKind {
        if term_micros < YEAR_MICROS {
            PriceKind::ReservedUnder1y
        } else if term_micros < 3 * YEAR_MICROS {
            PriceKind::Reserved1To3y
        } else {
            PriceKind::ReservedOver3y
        }
    }

    /// The list price for a reservation of `[start, end)`: the reserved price of the
    /// term's kind in force when the reservation starts. Quotes use it; a signed
    /// contract then carries its own rate, which billing uses from then on.
    pub fn reserved_price(
        &self,
        model: &str,
        site: SiteId,
        start: Timestamp,
        end: Timestamp,
    ) -> Option<Money> {
        let term = end.micros().saturating_sub(start.micros());
        self.price_at(model, site, Self::reserved_kind(term), start)
    }

    /// The spot price series of a pool from its utilization samples `(from, utilization
    /// in thousandths)`: at each sample and at each change of the floor or the ceiling,
    /// [`spot_price`] of the floor, ceiling and utilization then in force. Samples are
    /// taken in time order; of two samples at the same instant the later in the slice
    /// wins. Points before both a floor and a ceiling are in force are left out, and
    /// points that would repeat the previous price are dropped. The result is what
    /// [`crate::ledger::rate_interval`] takes as its spot series.
    pub fn spot_series(
        &self,
        model: &str,
        site: SiteId,
        utilization: &[(Timestamp, u32)],
    ) -> Vec<(Timestamp, Money)> {
        let samples = sorted_series(utilization);
        let Some(&(first, _)) = samples.first() else {
            return Vec::new();
        };
        let mut points: Vec<Timestamp> = samples.iter().map(|&(t, _)| t).collect();
        for kind in [PriceKind::SpotFloor, PriceKind::SpotCeiling] {
            points.extend(
                self.change_points(model, site, kind)
                    .into_iter()
                    .filter(|&t| t > first),
            );
        }
        points.sort_unstable();
        points.dedup();
        let mut series: Vec<(Timestamp, Money)> = Vec::new();
        for t in points {
            let floor = self.price_at(model, site, PriceKind::SpotFloor, t);
            let ceiling = self.price_at(model, site, PriceKind::SpotCeiling, t);
            let (Some(floor), Some(ceiling), Some(u)) = (floor, ceiling, value_at(&samples, t))
            else {
                continue;
            };
            let price = spot_price(floor, ceiling, u);
            if series.last().is_none_or(|&(_, p)| p != price) {
                series.push((t, price));
            }
        }
        series
    }
}

impl TryFrom<Vec<PriceEntry>> for PriceBook {
    type Error = BillingError;
    fn try_from(entries: Vec<PriceEntry>) -> Result<Self, Self::Error> {
        Self::new(entries)
    }
}

impl From<PriceBook> for Vec<PriceEntry> {
    fn from(book: PriceBook) -> Self {
        book.entries
    }
}

/// The spot price for a pool at `utilization_milli` thousandths of capacity used:
/// `floor + (ceiling − floor) × max(0, u − 500) / 500`, rounded half to even to the
/// micro-dollar (see the module docs). E.g. floor $1.00, ceiling $3.00: u = 0..=500 →
/// $1.00; u = 750 → $2.00; u = 1000 → $3.00; u = 501 → $1.004.
pub fn spot_price(floor: Money, ceiling: Money, utilization_milli: u32) -> Money {
    let u = i128::from(utilization_milli.min(1_000));
    let excess = (u - 500).max(0);
    let floor_m = i128::from(floor.micros());
    let span = (i128::from(ceiling.micros()) - floor_m).max(0);
    saturate(floor_m + div_round_half_even(span * excess, 500))
}

/// A series of `(from, value)` points sorted by time; stable, so that of two points at the
/// same instant the later one in the input stays later and wins in [`value_at`].
pub(crate) fn sorted_series<T: Copy>(series: &[(Timestamp, T)]) -> Vec<(Timestamp, T)> {
    let mut sorted = series.to_vec();
    sorted.sort_by_key(|&(t, _)| t);
    sorted
}

/// The value in force at `at` in a sorted series: the last point with `from <= at`.
pub(crate) fn value_at<T: Copy>(sorted: &[(Timestamp, T)], at: Timestamp) -> Option<T> {
    let after = sorted.partition_point(|&(t, _)| t <= at);
    sorted.get(after.checked_sub(1)?).map(|&(_, v)| v)
}

/// Cuts `[start, end)` at the given inner points (ascending, strictly inside) and prices
/// each piece at its first instant; pieces without a price are left out and neighbours
/// with equal prices are merged. Shared by the price book and the ledger so that both
/// split intervals the same way.
pub(crate) fn piecewise(
    start: Timestamp,
    end: Timestamp,
    inner: impl IntoIterator<Item = Timestamp>,
    price_at: impl Fn(Timestamp) -> Option<Money>,
) -> Vec<(Timestamp, Timestamp, Money)> {
    let mut out: Vec<(Timestamp, Timestamp, Money)> = Vec::new();
    if end <= start {
        return out;
    }
    let mut bounds = vec![start];
    bounds.extend(inner);
    bounds.push(end);
    for w in bounds.windows(2) {
        let (from, to) = (w[0], w[1]);
        if to <= from {
            continue;
        }
        let Some(price) = price_at(from) else {
            continue;
        };
        match out.last_mut() {
            Some(last) if last.1 == from && last.2 == price => last.1 = to,
            _ => out.push((from, to, price)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }
    fn usd(s: &str) -> Money {
        s.parse().unwrap()
    }
    fn site(n: u8) -> SiteId {
        format!("site_{n:032x}").parse().unwrap()
    }
    fn entry(
        model: &str,
        site: Option<SiteId>,
        kind: PriceKind,
        price: &str,
        from: &str,
    ) -> PriceEntry {
        PriceEntry {
            gpu_model: model.to_string(),
            site,
            kind,
            price: usd(price),
            effective_from: ts(from),
        }
    }
    const H100: &str = "H100-SXM-80GB";

    #[test]
    fn price_kind_strings_round_trip() {
        let spellings = [
            "on-demand",
            "reserved-lt-1y",
            "reserved-1-3y",
            "reserved-ge-3y",
            "spot-floor",
            "spot-ceiling",
            "internal-shadow",
        ];
        for (k, s) in PriceKind::ALL.iter().zip(spellings) {
            assert_eq!(k.as_str(), s);
            assert_eq!(k.to_string(), s);
            assert_eq!(s.parse::<PriceKind>().unwrap(), *k);
        }
        let e = "reserved".parse::<PriceKind>().unwrap_err();
        assert_eq!(
            e,
            "'reserved' is not a price kind (expected one of: on-demand, reserved-lt-1y, \
             reserved-1-3y, reserved-ge-3y, spot-floor, spot-ceiling, internal-shadow)"
        );
    }

    #[test]
    fn rejects_a_negative_price() {
        let e = PriceBook::new(vec![
            entry(
                H100,
                None,
                PriceKind::OnDemand,
                "2.85",
                "2026-01-01T00:00:00Z",
            ),
            entry(
                H100,
                None,
                PriceKind::SpotFloor,
                "-0.01",
                "2026-01-01T00:00:00Z",
            ),
        ])
        .unwrap_err();
        assert!(
            matches!(
                e,
                BillingError::NegativePrice {
                    kind: PriceKind::SpotFloor,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("negative price"), "{e}");
        // Zero is a valid price (e.g. a free internal shadow price).
        assert!(
            PriceBook::new(vec![entry(
                H100,
                None,
                PriceKind::InternalShadow,
                "0",
                "2026-01-01T00:00:00Z"
            )])
            .is_ok()
        );
    }

    #[test]
    fn rejects_overlapping_validity() {
        let e = PriceBook::new(vec![
            entry(
                H100,
                Some(site(1)),
                PriceKind::OnDemand,
                "2.85",
                "2026-01-01T00:00:00Z",
            ),
            entry(
                H100,
                Some(site(1)),
                PriceKind::OnDemand,
                "2.95",
                "2026-01-01T00:00:00Z",
            ),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("overlapping validity"), "{e}");
        // Same instant but a different site scope, kind or model is fine.
        assert!(
            PriceBook::new(vec![
                entry(
                    H100,
                    Some(site(1)),
                    PriceKind::OnDemand,
                    "2.85",
                    "2026-01-01T00:00:00Z"
                ),
                entry(
                    H100,
                    None,
                    PriceKind::OnDemand,
                    "2.95",
                    "2026-01-01T00:00:00Z"
                ),
                entry(
                    H100,
                    None,
                    PriceKind::SpotFloor,
                    "1",
                    "2026-01-01T00:00:00Z"
                ),
                entry(
                    "B200",
                    None,
                    PriceKind::OnDemand,
                    "5",
                    "2026-01-01T00:00:00Z"
                ),
            ])
            .is_ok()
        );
    }

    #[test]
    fn latest_effective_wins_and_site_specific_beats_all_sites() {
        let book = PriceBook::new(vec![
            entry(
                H100,
                None,
                PriceKind::OnDemand,
                "3.00",
                "2026-01-01T00:00:00Z",
            ),
            entry(
                H100,
                None,
                PriceKind::OnDemand,
                "2.85",
                "2026-06-01T00:00:00Z",
            ),
            entry(
                H100,
                Some(site(1)),
                PriceKind::OnDemand,
                "2.50",
                "2026-03-01T00:00:00Z",
            ),
        ])
        .unwrap();
        let p = |s, at| book.price_at(H100, s, PriceKind::OnDemand, ts(at));
        assert_eq!(p(site(2), "2025-12-31T23:59:59Z"), None);
        assert_eq!(p(site(2), "2026-01-01T00:00:00Z"), Some(usd("3.00")));
        assert_eq!(p(site(2), "2026-05-31T23:59:59Z"), Some(usd("3.00")));
        assert_eq!(p(site(2), "2026-06-01T00:00:00Z"), Some(usd("2.85")));
        // Site 1 has the all-sites price until its own takes effect …
        assert_eq!(p(site(1), "2026-02-01T00:00:00Z"), Some(usd("3.00")));
        // … then its own, which also beats the later all-sites change.
        assert_eq!(p(site(1), "2026-03-01T00:00:00Z"), Some(usd("2.50")));
        assert_eq!(p(site(1), "2026-07-01T00:00:00Z"), Some(usd("2.50")));
        // Other kinds and models are not confused with it.
        assert_eq!(
            book.price_at(
                H100,
                site(1),
                PriceKind::SpotFloor,
                ts("2026-07-01T00:00:00Z")
            ),
            None
        );
        assert_eq!(
            book.price_at(
                "H200",
                site(1),
                PriceKind::OnDemand,
                ts("2026-07-01T00:00:00Z")
            ),
            None
        );
    }

    #[test]
    fn segments_split_where_the_price_changes() {
        let book = PriceBook::new(vec![
            entry(
                H100,
                None,
                PriceKind::OnDemand,
                "3.00",
                "2026-01-01T00:00:00Z",
            ),
            entry(
                H100,
                None,
                PriceKind::OnDemand,
                "2.85",
                "2026-11-15T00:00:00Z",
            ),
            // A "change" to the same price does not split.
            entry(
                H100,
                None,
                PriceKind::OnDemand,
                "2.85",
                "2026-11-20T00:00:00Z",
            ),
        ])
        .unwrap();
        let s = book.segments(
            H100,
            site(1),
            PriceKind::OnDemand,
            ts("2026-11-10T00:00:00Z"),
            ts("2026-11-25T00:00:00Z"),
        );
        assert_eq!(
            s,
            vec![
                (
                    ts("2026-11-10T00:00:00Z"),
                    ts("2026-11-15T00:00:00Z"),
                    usd("3.00")
                ),
                (
                    ts("2026-11-15T00:00:00Z"),
                    ts("2026-11-25T00:00:00Z"),
                    usd("2.85")
                ),
            ]
        );
        // Before the first price: the uncovered start has no piece.
        let s = book.segments(
            H100,
            site(1),
            PriceKind::OnDemand,
            ts("2025-12-31T00:00:00Z"),
            ts("2026-01-02T00:00:00Z"),
        );
        assert_eq!(
            s,
            vec![(
                ts("2026-01-01T00:00:00Z"),
                ts("2026-01-02T00:00:00Z"),
                usd("3.00")
            )]
        );
        assert!(
            book.segments(
                H100,
                site(1),
                PriceKind::OnDemand,
                ts("2026-11-10T00:00:00Z"),
                ts("2026-11-10T00:00:00Z")
            )
            .is_empty()
        );
    }

    #[test]
    fn reserved_terms_use_365_day_years() {
        let day = 86_400_000_000_i64;
        assert_eq!(
            PriceBook::reserved_kind(364 * day),
            PriceKind::ReservedUnder1y
        );
        assert_eq!(
            PriceBook::reserved_kind(365 * day - 1),
            PriceKind::ReservedUnder1y
        );
        assert_eq!(
            PriceBook::reserved_kind(365 * day),
            PriceKind::Reserved1To3y
        );
        assert_eq!(
            PriceBook::reserved_kind(3 * 365 * day - 1),
            PriceKind::Reserved1To3y
        );
        assert_eq!(
            PriceBook::reserved_kind(3 * 365 * day),
            PriceKind::ReservedOver3y
        );
        // 2027-01-01 → 2030-01-01 is 1,096 days (2028 is a leap year): ≥ 3 years.
        let book = PriceBook::new(vec![
            entry(
                H100,
                None,
                PriceKind::Reserved1To3y,
                "2.10",
                "2026-01-01T00:00:00Z",
            ),
            entry(
                H100,
                None,
                PriceKind::ReservedOver3y,
                "1.95",
                "2026-01-01T00:00:00Z",
            ),
        ])
        .unwrap();
        assert_eq!(
            book.reserved_price(
                H100,
                site(1),
                ts("2027-01-01T00:00:00Z"),
                ts("2030-01-01T00:00:00Z")
            ),
            Some(usd("1.95"))
        );
        assert_eq!(
            book.reserved_price(
                H100,
                site(1),
                ts("2027-01-01T00:00:00Z"),
                ts("2028-01-01T00:00:00Z")
            ),
            Some(usd("2.10"))
        );
    }

    #[test]
    fn spot_price_formula() {
        let (f, c) = (usd("1.00"), usd("3.00"));
        assert_eq!(spot_price(f, c, 0), f);
        assert_eq!(spot_price(f, c, 500), f);
        // 1.00 + 2.00 × 1/500 = 1.004
        assert_eq!(spot_price(f, c, 501), usd("1.004"));
        // 1.00 + 2.00 × 250/500 = 2.00
        assert_eq!(spot_price(f, c, 750), usd("2.00"));
        assert_eq!(spot_price(f, c, 1_000), c);
        assert_eq!(
            spot_price(f, c, 5_000),
            c,
            "utilization above 100% counts as 100%"
        );
        assert_eq!(
            spot_price(c, f, 900),
            c,
            "a ceiling below the floor counts as the floor"
        );
        // Rounding: floor 0, ceiling 0.000001, u = 750 → 0.5 µ$ → 0 (even);
        // ceiling 0.000003 → 1.5 µ$ → 2.
        assert_eq!(
            spot_price(Money::ZERO, Money::from_micros(1), 750).micros(),
            0
        );
        assert_eq!(
            spot_price(Money::ZERO, Money::from_micros(3), 750).micros(),
            2
        );
    }

    #[test]
    fn spot_series_follows_utilization_and_floor_changes() {
        let book = PriceBook::new(vec![
            entry(
                H100,
                None,
                PriceKind::SpotFloor,
                "1.00",
                "2026-01-01T00:00:00Z",
            ),
            entry(
                H100,
                None,
                PriceKind::SpotCeiling,
                "3.00",
                "2026-01-01T00:00:00Z",
            ),
            entry(
                H100,
                None,
                PriceKind::SpotFloor,
                "1.50",
                "2026-11-10T12:00:00Z",
            ),
        ])
        .unwrap();
        let series = book.spot_series(
            H100,
            site(1),
            &[
                (ts("2026-11-10T10:00:00Z"), 750),
                (ts("2026-11-10T09:00:00Z"), 400),
                (ts("2026-11-10T11:00:00Z"), 750), // same price: dropped
            ],
        );
        assert_eq!(
            series,
            vec![
                (ts("2026-11-10T09:00:00Z"), usd("1.00")),
                (ts("2026-11-10T10:00:00Z"), usd("2.00")),
                // floor 1.50: 1.50 + 1.50 × 250/500 = 2.25
                (ts("2026-11-10T12:00:00Z"), usd("2.25")),
            ]
        );
        assert!(book.spot_series(H100, site(1), &[]).is_empty());
    }

    #[test]
    fn book_serde_validates() {
        let book = PriceBook::new(vec![entry(
            H100,
            None,
            PriceKind::OnDemand,
            "2.85",
            "2026-01-01T00:00:00Z",
        )])
        .unwrap();
        let entries: Vec<PriceEntry> = book.clone().into();
        assert_eq!(PriceBook::try_from(entries).unwrap(), book);
        let dup = vec![
            entry(
                H100,
                None,
                PriceKind::OnDemand,
                "2.85",
                "2026-01-01T00:00:00Z",
            ),
            entry(
                H100,
                None,
                PriceKind::OnDemand,
                "2.85",
                "2026-01-01T00:00:00Z",
            ),
        ];
        assert!(PriceBook::try_from(dup).is_err());
    }
}
