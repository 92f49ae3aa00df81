//! Properties of metering: split records tile the interval, GPU-seconds are conserved,
//! and amounts do not depend (beyond rounding) on how an interval is cut.

// Tests may unwrap: a panic here is a failed test, not a crashed server.
#![allow(clippy::unwrap_used)]

use neocloud_billing::{
    Month, PriceBook, PriceEntry, PriceKind, UsageInterval, amount_micros, rate_interval,
    round_to_cent, split_by_month,
};
use neocloud_types::{Class, Money, SiteId, Timestamp};
use proptest::prelude::*;

const SECOND: i64 = 1_000_000;
/// 2026-01-01T00:00:00Z in microseconds.
const BASE: i64 = 1_767_225_600 * SECOND;
/// About four years, in microseconds: intervals cross leap February 2028.
const SPAN: i64 = 4 * 366 * 86_400 * SECOND;
const H100: &str = "H100-SXM-80GB";

fn site() -> SiteId {
    "site_00000000000000000000000000000001".parse().unwrap()
}

/// A book with on-demand prices changing at the given offsets (some mid-second).
fn book(changes: &[(i64, i64)]) -> PriceBook {
    let mut entries = vec![PriceEntry {
        gpu_model: H100.to_string(),
        site: None,
        kind: PriceKind::OnDemand,
        price: Money::from_micros(2_850_000),
        effective_from: Timestamp::from_micros(BASE - 86_400 * SECOND),
    }];
    for &(offset, price) in changes {
        entries.push(PriceEntry {
            gpu_model: H100.to_string(),
            site: Some(site()),
            kind: PriceKind::OnDemand,
            price: Money::from_micros(price),
            effective_from: Timestamp::from_micros(BASE + offset),
        });
    }
    entries.sort_by_key(|e| e.effective_from);
    entries.dedup_by_key(|e| (e.site, e.effective_from));
    PriceBook::new(entries).unwrap()
}

fn interval(gpus: u32, start: i64, end: i64) -> UsageInterval {
    UsageInterval {
        instance: "inst_00000000000000000000000000000001".parse().unwrap(),
        tenant: "ten_00000000000000000000000000000001".parse().unwrap(),
        class: Class::OnDemand,
        gpu_model: H100.to_string(),
        site: site(),
        contract: None,
        gpus,
        start: Timestamp::from_micros(start),
        end: Timestamp::from_micros(end),
    }
}

fn floor_s(us: i64) -> i64 {
    us.div_euclid(SECOND) * SECOND
}

prop_compose! {
    /// An interval inside the span, up to ~100 days long, with sub-second ends.
    fn an_interval()(start in 0..SPAN, len in 0..100 * 86_400 * SECOND) -> (i64, i64) {
        (BASE + start, BASE + start + len)
    }
}

prop_compose! {
    fn price_changes()(changes in prop::collection::vec((0..SPAN, 0..10_000_000i64), 0..40)) -> Vec<(i64, i64)> {
        changes
    }
}

proptest! {
    #[test]
    fn split_by_month_tiles_the_interval((start, end) in an_interval()) {
        let (s, e) = (Timestamp::from_micros(start), Timestamp::from_micros(end));
        let pieces = split_by_month(s, e);
        if end <= start {
            prop_assert!(pieces.is_empty());
        } else {
            prop_assert_eq!(pieces[0].1, s);
            prop_assert_eq!(pieces[pieces.len() - 1].2, e);
            for w in pieces.windows(2) {
                prop_assert_eq!(w[0].2, w[1].1);
                prop_assert_eq!(w[0].0.next(), w[1].0);
            }
            for (m, a, b) in &pieces {
                prop_assert!(a < b);
                prop_assert!(m.start() <= *a && *b <= m.end());
                prop_assert_eq!(Month::containing(*a), *m);
            }
        }
    }

    #[test]
    fn records_tile_the_interval_and_conserve_gpu_seconds(
        (start, end) in an_interval(),
        gpus in 1u32..=1024,
        changes in price_changes(),
    ) {
        let book = book(&changes);
        let recs = rate_interval(&interval(gpus, start, end), &book, &[]).unwrap();
        let (fs, fe) = (floor_s(start), floor_s(end));
        let seconds = (fe - fs) / SECOND;
        let total: i64 = recs.iter().map(|r| r.gpu_seconds).sum();
        prop_assert_eq!(total, i64::from(gpus) * seconds.max(0));
        if fe <= fs {
            prop_assert!(recs.is_empty());
        } else {
            prop_assert_eq!(recs[0].start.micros(), fs);
            prop_assert_eq!(recs[recs.len() - 1].end.micros(), fe);
            for w in recs.windows(2) {
                prop_assert_eq!(w[0].end, w[1].start, "no gap, no overlap");
            }
            for r in &recs {
                prop_assert!(r.start < r.end);
                prop_assert_eq!(r.start.micros() % SECOND, 0);
                prop_assert_eq!(r.end.micros() % SECOND, 0);
                prop_assert!(r.month.start() <= r.start && r.end <= r.month.end());
                prop_assert_eq!(r.gpu_seconds, i64::from(gpus) * (r.end.micros() - r.start.micros()) / SECOND);
                prop_assert_eq!(r.amount, amount_micros(gpus, r.gpu_seconds / i64::from(gpus), r.rate));
                // Each record's rate is the price in force at its first second.
                prop_assert_eq!(Some(r.rate), book.price_at(H100, site(), PriceKind::OnDemand, r.start));
            }
        }
    }

    #[test]
    fn amounts_are_invariant_to_how_the_interval_is_split(
        (start, end) in an_interval(),
        cut in 0i64..=1_000,
        gpus in 1u32..=1024,
        changes in price_changes(),
    ) {
        let book = book(&changes);
        // A cut point somewhere in the interval (whole second, as the service meters).
        let mid = floor_s(start + (end - start) * cut / 1_000).clamp(floor_s(start), floor_s(end));
        let whole = rate_interval(&interval(gpus, start, end), &book, &[]).unwrap();
        let mut halves = rate_interval(&interval(gpus, start, mid), &book, &[]).unwrap();
        halves.extend(rate_interval(&interval(gpus, mid, end), &book, &[]).unwrap());

        let gs = |v: &[neocloud_billing::UsageRecord]| v.iter().map(|r| r.gpu_seconds).sum::<i64>();
        prop_assert_eq!(gs(&whole), gs(&halves));

        let sum = |v: &[neocloud_billing::UsageRecord]| v.iter().map(|r| i128::from(r.amount.micros())).sum::<i128>();
        // Exact value in µ$ × 3600: Σ gpu_seconds × rate.
        let exact = |v: &[neocloud_billing::UsageRecord]| {
            v.iter().map(|r| i128::from(r.gpu_seconds) * i128::from(r.rate.micros())).sum::<i128>()
        };
        prop_assert_eq!(exact(&whole), exact(&halves), "the unrounded amount does not depend on the cut");
        // Each record is within half a micro-dollar of exact: within 1 µ$ per record.
        for v in [&whole, &halves] {
            let err = (sum(v) * 3_600 - exact(v)).abs();
            prop_assert!(err <= 1_800 * i128::try_from(v.len()).unwrap(), "err {err}");
        }
        // Both sides are within half a micro-dollar per record of the same exact value,
        // so they differ by at most 1 µ$ per record pair (the cut adds one record).
        let diff = (sum(&whole) - sum(&halves)).abs();
        let records = i128::try_from(whole.len() + halves.len()).unwrap();
        prop_assert!(2 * diff <= records, "diff {diff} over {records} records");
    }

    #[test]
    fn round_to_cent_is_nearest_with_ties_to_even(micros in -1_000_000_000_000i64..1_000_000_000_000) {
        let r = round_to_cent(Money::from_micros(micros)).micros();
        prop_assert_eq!(r % 10_000, 0);
        let err = (r - micros).abs();
        prop_assert!(err <= 5_000);
        if err == 5_000 {
            prop_assert_eq!((r / 10_000) % 2, 0, "ties go to the even cent");
        }
    }
}
