//! Billing periods: UTC calendar months.
//!
//! Invoices are per tenant per calendar month in UTC, never in a local time zone, so that a
//! month has the same boundaries for every tenant and every server. Calendar math is the
//! proleptic Gregorian calendar done with integer day counts (the well-known
//! `days_from_civil` conversion), which keeps this crate free of any time-zone database.

use std::fmt;
use std::str::FromStr;

use neocloud_types::Timestamp;

/// Microseconds in one day. UTC days in [`Timestamp`] have no leap seconds.
const DAY_MICROS: i64 = 86_400_000_000;

/// A UTC calendar month, the billing period of an invoice.
///
/// Ordered chronologically (year first, then month). `month` is 1 = January … 12 =
/// December; [`Month::new`] and [`FromStr`] check that. Because the fields are public, a
/// value outside 1..=12 can still be built by hand: the calendar methods then normalise it
/// the way a calendar would (month 13 of 2026 is January 2027, month 0 is December of the
/// previous year) instead of panicking.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Month {
    /// Calendar year, e.g. 2026.
    pub year: i32,
    /// Month of the year, 1 (January) to 12 (December).
    pub month: u8,
}

/// Why a string is not a valid month.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{input}' is not a valid month: {reason} (expected YYYY-MM, e.g. 2026-11)")]
pub struct MonthParseError {
    /// The rejected input.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Month {
    /// A month, if `month` is 1..=12.
    pub fn new(year: i32, month: u8) -> Option<Self> {
        (1..=12).contains(&month).then_some(Self { year, month })
    }

    /// The month as a count of months since year 0 (January of year 0 is 0). Month
    /// arithmetic happens on this index so that out-of-range fields normalise naturally.
    fn index(self) -> i64 {
        i64::from(self.year) * 12 + i64::from(self.month) - 1
    }

    /// The month with the given index (inverse of [`Month::index`]); years beyond `i32`
    /// saturate, which only matters for instants hundreds of millions of years away.
    fn from_index(index: i64) -> Self {
        let year = index.div_euclid(12);
        let year = i32::try_from(year).unwrap_or(if year < 0 { i32::MIN } else { i32::MAX });
        // rem_euclid(12) is 0..=11, so the month always fits a u8.
        let month = u8::try_from(index.rem_euclid(12) + 1).unwrap_or(1);
        Self { year, month }
    }

    /// The first instant of the month, 00:00:00 UTC on its first day (inclusive).
    pub fn start(self) -> Timestamp {
        let m = Self::from_index(self.index());
        let days = days_from_civil(i64::from(m.year), i64::from(m.month), 1);
        Timestamp::from_micros(days.saturating_mul(DAY_MICROS))
    }

    /// The end of the month, exclusive: the first instant of the next month. Intervals in
    /// this crate are half-open `[start, end)`, so months tile time without overlap.
    pub fn end(self) -> Timestamp {
        self.next().start()
    }

    /// The following month (December → January of the next year).
    pub fn next(self) -> Self {
        Self::from_index(self.index().saturating_add(1))
    }

    /// The preceding month (January → December of the previous year).
    pub fn prev(self) -> Self {
        Self::from_index(self.index().saturating_sub(1))
    }

    /// The month that contains an instant.
    pub fn containing(at: Timestamp) -> Self {
        let days = at.micros().div_euclid(DAY_MICROS);
        let (year, month) = civil_from_days(days);
        Self::from_index(year.saturating_mul(12).saturating_add(month - 1))
    }

    /// Length of the month in whole seconds (28 to 31 days).
    pub fn seconds(self) -> i64 {
        (self.end().micros() - self.start().micros()) / 1_000_000
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl FromStr for Month {
    type Err = MonthParseError;

    /// Parses exactly `YYYY-MM`: four digits, a hyphen, two digits, month 01 to 12.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| MonthParseError {
            input: s.to_string(),
            reason,
        };
        let (year, month) = s.split_once('-').ok_or_else(|| err("missing '-'"))?;
        if year.len() != 4 || !year.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("the year must be four digits"));
        }
        if month.len() != 2 || !month.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("the month must be two digits"));
        }
        let year: i32 = year
            .parse()
            .map_err(|_| err("the year must be four digits"))?;
        let month: u8 = month
            .parse()
            .map_err(|_| err("the month must be two digits"))?;
        Month::new(year, month).ok_or_else(|| err("the month must be 01 to 12"))
    }
}

impl serde::Serialize for Month {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Month {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Splits `[start, end)` at every month boundary it crosses, returning each piece with its
/// month, in order. The pieces tile the interval exactly: the first starts at `start`, each
/// next one starts where the previous ended, the last ends at `end`. An interval that ends
/// exactly at a month boundary stays in one piece (ends are exclusive). Empty when
/// `end <= start`.
pub fn split_by_month(start: Timestamp, end: Timestamp) -> Vec<(Month, Timestamp, Timestamp)> {
    let mut pieces = Vec::new();
    let mut cursor = start;
    while cursor < end {
        let month = Month::containing(cursor);
        let month_end = month.end();
        // A month end at or before the cursor only happens where timestamps saturate at
        // the edge of the i64 range; close the interval there rather than loop forever.
        let piece_end = if month_end <= cursor {
            end
        } else {
            month_end.min(end)
        };
        pieces.push((month, cursor, piece_end));
        cursor = piece_end;
    }
    pieces
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
/// Years are shifted to start in March so that the leap day is the last day of the year.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // year of era, 0..=399
    let mp = (month + 9) % 12; // March = 0 … February = 11
    let doy = (153 * mp + 2) / 5 + day - 1; // day of year, 0..=365
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // day of era, 0..=146096
    era * 146_097 + doe - 719_468
}

/// The (year, month) of a day count since 1970-01-01 (inverse of [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn m(y: i32, mo: u8) -> Month {
        Month::new(y, mo).unwrap()
    }

    #[test]
    fn month_bounds_match_known_epochs() {
        // Epoch seconds checked against `calendar.timegm` in Python.
        assert_eq!(m(1970, 1).start().micros(), 0);
        assert_eq!(m(2026, 11).start().micros(), 1_793_491_200 * 1_000_000);
        assert_eq!(m(2026, 11).end().micros(), 1_796_083_200 * 1_000_000);
        assert_eq!(m(2027, 1).start().micros(), 1_798_761_600 * 1_000_000);
        assert_eq!(m(2000, 3).start().micros(), 951_868_800 * 1_000_000);
        assert_eq!(m(1969, 12).start().micros(), -2_678_400 * 1_000_000);
        assert_eq!(m(2028, 2).start().micros(), 1_832_976_000 * 1_000_000);
        assert_eq!(m(2028, 3).start().micros(), 1_835_481_600 * 1_000_000);
    }

    #[test]
    fn month_lengths_include_leap_years() {
        assert_eq!(m(2028, 2).seconds(), 29 * 86_400); // 2028 is a leap year
        assert_eq!(m(2027, 2).seconds(), 28 * 86_400);
        assert_eq!(m(2100, 2).seconds(), 28 * 86_400); // divisible by 100, not by 400
        assert_eq!(m(2000, 2).seconds(), 29 * 86_400); // divisible by 400
        assert_eq!(m(2026, 11).seconds(), 30 * 86_400);
        assert_eq!(m(2027, 1).seconds(), 31 * 86_400);
    }

    #[test]
    fn next_prev_and_containing() {
        assert_eq!(m(2026, 12).next(), m(2027, 1));
        assert_eq!(m(2027, 1).prev(), m(2026, 12));
        assert_eq!(
            Month::containing(ts("2026-11-30T23:59:59.999999Z")),
            m(2026, 11)
        );
        assert_eq!(Month::containing(ts("2026-12-01T00:00:00Z")), m(2026, 12));
        assert_eq!(Month::containing(ts("1969-12-31T23:59:59Z")), m(1969, 12));
        assert_eq!(Month::containing(ts("2028-02-29T12:00:00Z")), m(2028, 2));
        // Hand-built out-of-range months normalise like a calendar.
        assert_eq!(
            Month {
                year: 2026,
                month: 13
            }
            .start(),
            m(2027, 1).start()
        );
        assert_eq!(
            Month {
                year: 2026,
                month: 0
            }
            .start(),
            m(2025, 12).start()
        );
    }

    #[test]
    fn display_and_parse_round_trip() {
        assert_eq!(m(2026, 11).to_string(), "2026-11");
        assert_eq!(m(2027, 1).to_string(), "2027-01");
        assert_eq!("2026-11".parse::<Month>().unwrap(), m(2026, 11));
        assert_eq!("0999-12".parse::<Month>().unwrap(), m(999, 12));
        assert_eq!(m(2026, 2).to_string().parse::<Month>().unwrap(), m(2026, 2));
    }

    #[test]
    fn month_parse_errors_are_clear() {
        for (input, reason) in [
            ("2026-13", "the month must be 01 to 12"),
            ("2026-00", "the month must be 01 to 12"),
            ("2026-1", "the month must be two digits"),
            ("2026-011", "the month must be two digits"),
            ("26-11", "the year must be four digits"),
            ("2026/11", "missing '-'"),
            ("", "missing '-'"),
            ("2026-1a", "the month must be two digits"),
            ("+026-11", "the year must be four digits"),
            ("2026-+1", "the month must be two digits"),
            (" 2026-11", "the year must be four digits"),
        ] {
            let e = input.parse::<Month>().unwrap_err();
            assert_eq!(e.reason, reason, "{input:?}");
            assert!(e.to_string().contains("expected YYYY-MM"), "{e}");
        }
    }

    #[test]
    fn split_is_empty_for_empty_or_reversed_intervals() {
        let t = ts("2026-11-10T00:00:00Z");
        assert!(split_by_month(t, t).is_empty());
        assert!(split_by_month(t.plus_seconds(1), t).is_empty());
    }

    #[test]
    fn split_keeps_an_interval_ending_exactly_at_a_boundary_whole() {
        let s = ts("2026-11-20T00:00:00Z");
        let e = ts("2026-12-01T00:00:00Z");
        assert_eq!(split_by_month(s, e), vec![(m(2026, 11), s, e)]);
        // And one starting exactly at a boundary belongs to the new month only.
        let e2 = ts("2026-12-02T00:00:00Z");
        assert_eq!(split_by_month(e, e2), vec![(m(2026, 12), e, e2)]);
    }

    #[test]
    fn split_crosses_a_boundary() {
        let s = ts("2026-11-30T23:00:00Z");
        let e = ts("2026-12-01T01:30:00Z");
        let b = ts("2026-12-01T00:00:00Z");
        assert_eq!(
            split_by_month(s, e),
            vec![(m(2026, 11), s, b), (m(2026, 12), b, e)]
        );
    }

    #[test]
    fn split_spans_many_months_and_a_leap_february() {
        let s = ts("2028-01-15T12:00:00Z");
        let e = ts("2028-04-02T00:00:00Z");
        let pieces = split_by_month(s, e);
        assert_eq!(
            pieces,
            vec![
                (m(2028, 1), s, ts("2028-02-01T00:00:00Z")),
                (
                    m(2028, 2),
                    ts("2028-02-01T00:00:00Z"),
                    ts("2028-03-01T00:00:00Z")
                ),
                (
                    m(2028, 3),
                    ts("2028-03-01T00:00:00Z"),
                    ts("2028-04-01T00:00:00Z")
                ),
                (m(2028, 4), ts("2028-04-01T00:00:00Z"), e),
            ]
        );
        // February 2028 is 29 days.
        let (_, fs, fe) = pieces[1];
        assert_eq!(fe.micros() - fs.micros(), 29 * DAY_MICROS);
        // A year-end crossing.
        let s = ts("2026-12-31T23:59:59Z");
        let e = ts("2027-01-01T00:00:01Z");
        assert_eq!(split_by_month(s, e).len(), 2);
    }

    #[test]
    fn civil_conversions_round_trip_over_centuries() {
        for days in (-800_000..800_000).step_by(97) {
            let (y, mo) = civil_from_days(days);
            let first = days_from_civil(y, mo, 1);
            assert!(first <= days && days - first < 31, "{days}");
        }
    }
}
