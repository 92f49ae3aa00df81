//! The finance arithmetic of the business case, pure and exact: depreciation, debt service,
//! fixed costs spread over months, prices that decline year over year, and the valuation of
//! a stream of monthly cash flows (NPV, IRR, payback).
//!
//! Amounts are [`Money`] (micro-dollars). Every monthly amount of a schedule is rounded half
//! to even to the cent **cumulatively**: month `m` gets `round(total × share(m)) −
//! round(total × share(m − 1))`, so the months of a schedule add up to its total exactly.
//! Rates and shares are integers in millionths (ppm: 7.5% = 75,000). Only the valuation
//! uses floating point (discount factors and the IRR search); its results are rounded to the
//! cent.

#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    reason = "valuation sums are far below 2^53 cents; amounts saturate into i64 micro-dollars"
)]

use neocloud_types::Money;

/// Micro-dollars in a cent.
const CENT: i128 = 10_000;
/// Millionths in one.
pub const PPM: i128 = 1_000_000;

/// `num / den` rounded half to even (`den > 0`).
fn div_round(num: i128, den: i128) -> i128 {
    let (q, r) = (num.div_euclid(den), num.rem_euclid(den));
    if 2 * r > den || (2 * r == den && q % 2 != 0) {
        q + 1
    } else {
        q
    }
}

/// `micros × num / den` rounded half to even to the cent, in micro-dollars.
fn cents_of(micros: i128, num: i128, den: i128) -> i128 {
    div_round(micros * num, den * CENT) * CENT
}

fn money(micros: i128) -> Money {
    Money::from_micros(i64::try_from(micros).unwrap_or(if micros < 0 {
        i64::MIN
    } else {
        i64::MAX
    }))
}

/// Adds two amounts (saturating).
pub fn add(a: Money, b: Money) -> Money {
    money(i128::from(a.micros()) + i128::from(b.micros()))
}

/// `a − b` (saturating).
pub fn sub(a: Money, b: Money) -> Money {
    money(i128::from(a.micros()) - i128::from(b.micros()))
}

/// The sum of amounts (saturating).
pub fn sum<I: IntoIterator<Item = Money>>(xs: I) -> Money {
    money(xs.into_iter().map(|m| i128::from(m.micros())).sum())
}

/// `m × n` (saturating), for a price times a count.
pub fn times(m: Money, n: u64) -> Money {
    money(i128::from(m.micros()) * i128::from(n))
}

/// `m × num / den` rounded half to even to the cent.
pub fn scale_cents(m: Money, num: i128, den: i128) -> Money {
    if den <= 0 {
        return Money::ZERO;
    }
    money(cents_of(i128::from(m.micros()), num, den))
}

/// How capital expenditure is written off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Depreciation {
    /// The same amount every month for this many months.
    StraightLine {
        /// Months of useful life (at least 1).
        months: u32,
    },
    /// A share of the cost per year of life, in millionths, adding up to one million; each
    /// year's share is spread evenly over its twelve months.
    Schedule {
        /// Shares by year, ppm.
        yearly_ppm: Vec<i64>,
    },
}

impl Depreciation {
    /// The share written off after `m` months, as (numerator, denominator).
    pub fn cumulative_share(&self, m: u32) -> (i128, i128) {
        match self {
            Depreciation::StraightLine { months } => {
                let l = i128::from((*months).max(1));
                (i128::from(m).min(l), l)
            }
            Depreciation::Schedule { yearly_ppm } => {
                let years = (m / 12) as usize;
                let done: i128 = yearly_ppm.iter().take(years).map(|&s| i128::from(s)).sum();
                let part = yearly_ppm.get(years).map_or(0, |&s| i128::from(s));
                (12 * done + part * i128::from(m % 12), 12 * PPM)
            }
        }
    }

    /// Depreciation of `capex` in each of the first `months` months, to the cent.
    pub fn monthly(&self, capex: Money, months: usize) -> Vec<Money> {
        let c = i128::from(capex.micros());
        let cum = |m: u32| {
            let (n, d) = self.cumulative_share(m);
            cents_of(c, n, d)
        };
        (1..=months)
            .map(|m| {
                let m = u32::try_from(m).unwrap_or(u32::MAX);
                money(cum(m) - cum(m - 1))
            })
            .collect()
    }

    /// What is left of `capex` on the books after `m` months, to the cent.
    pub fn book_value(&self, capex: Money, m: u32) -> Money {
        let (n, d) = self.cumulative_share(m);
        money(i128::from(capex.micros()) - cents_of(i128::from(capex.micros()), n, d))
    }
}

/// One month of a loan's service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebtMonth {
    /// Interest on the balance at the start of the month.
    pub interest: Money,
    /// Principal repaid.
    pub principal: Money,
    /// Balance after the month's repayment.
    pub balance: Money,
}

/// Service of a loan of `principal` drawn at the start, repaid in equal principal
/// instalments over `term_months` (linear amortisation), with interest each month of the
/// balance at the start of the month × `annual_ppm` / 12; every amount to the cent. Gives
/// the first `months` months (after the term: zeros).
pub fn debt_service(
    principal: Money,
    annual_ppm: i64,
    term_months: u32,
    months: usize,
) -> Vec<DebtMonth> {
    let p = i128::from(principal.micros());
    let t = i128::from(term_months.max(1));
    let repaid = |k: i128| cents_of(p, k.min(t), t);
    let mut out = Vec::with_capacity(months);
    for k in 1..=months as i128 {
        let before = p - repaid(k - 1);
        let interest = cents_of(before, i128::from(annual_ppm), 12 * PPM);
        let principal = repaid(k) - repaid(k - 1);
        out.push(DebtMonth {
            interest: money(interest),
            principal: money(principal),
            balance: money(p - repaid(k)),
        });
    }
    out
}

/// An amount per year spread over months: month `m` (1-based) gets the cumulative
/// `round(yearly × m / 12)` less the month before's, to the cent.
pub fn monthly_of_yearly(yearly: Money, months: usize) -> Vec<Money> {
    let y = i128::from(yearly.micros());
    (1..=months as i128)
        .map(|m| money(cents_of(y, m, 12) - cents_of(y, m - 1, 12)))
        .collect()
}

/// A price after `months` months of a decline of `ppm_per_year` a year: compounded once a
/// year (each year's price rounded half to even to the micro-dollar), and linear between two
/// anniversaries. 0 ppm keeps the price; a decline may be negative (a rise).
pub fn declined(price: Money, ppm_per_year: i64, months: u32) -> Money {
    let keep = PPM - i128::from(ppm_per_year);
    let mut p = i128::from(price.micros());
    for _ in 0..months / 12 {
        p = div_round(p * keep, PPM);
    }
    let next = div_round(p * keep, PPM);
    money(p + div_round((next - p) * i128::from(months % 12), 12))
}

/// The discount factor of month `k` at a yearly rate (`0.1` = 10%): `(1 + rate)^(−k/12)`.
fn discount(rate: f64, k: usize) -> f64 {
    (1.0 + rate).powf(-(k as f64) / 12.0)
}

/// Net present value of monthly cash flows (`flows[0]` now, `flows[k]` at the end of month
/// `k`) at a yearly discount rate (`0.1` = 10%), rounded half to even to the cent.
pub fn npv(flows: &[Money], yearly_rate: f64) -> Money {
    let v: f64 = flows
        .iter()
        .enumerate()
        .map(|(k, f)| f.micros() as f64 / 1e6 * discount(yearly_rate, k))
        .sum();
    let cents = (v * 100.0).round_ties_even();
    money(cents as i128 * CENT)
}

fn npv_monthly(flows: &[Money], r: f64) -> f64 {
    let mut f = 1.0;
    let mut v = 0.0;
    for x in flows {
        v += x.micros() as f64 / 1e6 / f;
        f *= 1.0 + r;
    }
    v
}

/// Internal rate of return of monthly cash flows, as a yearly rate (`0.1` = 10%):
/// the monthly rate `r` with `Σ flows[k] / (1 + r)^k = 0`, found by bisection, then
/// `(1 + r)^12 − 1`. `None` when the flows do not change sign between a monthly rate of
/// −99% and +100% (nothing invested, or never paid back).
pub fn irr(flows: &[Money]) -> Option<f64> {
    let (mut lo, mut hi) = (-0.99, 1.0);
    let (flo, fhi) = (npv_monthly(flows, lo), npv_monthly(flows, hi));
    if !flo.is_finite() || !fhi.is_finite() || flo.signum() == fhi.signum() {
        return None;
    }
    for _ in 0..200 {
        let mid = f64::midpoint(lo, hi);
        let v = npv_monthly(flows, mid);
        if v == 0.0 {
            lo = mid;
            hi = mid;
            break;
        }
        if v.signum() == flo.signum() {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some((1.0 + f64::midpoint(lo, hi)).powi(12) - 1.0)
}

/// The first month at whose end the cumulative cash flow is no longer negative (0 when
/// nothing was invested); `None` if it never is within the flows.
pub fn payback_month(flows: &[Money]) -> Option<u32> {
    let mut acc = 0i128;
    for (k, f) in flows.iter().enumerate() {
        acc += i128::from(f.micros());
        if acc >= 0 {
            return u32::try_from(k).ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Money {
        s.parse().unwrap()
    }

    #[test]
    fn straight_line_depreciation_to_the_cent() {
        // $100,000 over 3 years: 36 months of $2,777.777…: the cumulative rounding gives
        // 2,777.78, 2,777.78, 2,777.77, … and exactly $100,000.00 after 36 months.
        let d = Depreciation::StraightLine { months: 36 };
        let v = d.monthly(m("100000"), 40);
        assert_eq!(v[0], m("2777.78"));
        assert_eq!(v[1], m("2777.78"));
        assert_eq!(v[2], m("2777.77"));
        assert_eq!(sum(v[..36].iter().copied()), m("100000"));
        assert_eq!(v[36], Money::ZERO);
        assert_eq!(d.book_value(m("100000"), 12), m("66666.67"));
    }

    #[test]
    fn scheduled_depreciation_to_the_cent() {
        // 5-year MACRS shares 20, 32, 19.2, 11.52, 11.52, 5.76% of $1,000,000: the first
        // year $200,000 in months of $16,666.67 / .66 / .67 …; the second $320,000.
        let d = Depreciation::Schedule {
            yearly_ppm: vec![200_000, 320_000, 192_000, 115_200, 115_200, 57_600],
        };
        let v = d.monthly(m("1000000"), 72);
        assert_eq!(v[0], m("16666.67"));
        assert_eq!(v[1], m("16666.66"));
        assert_eq!(v[2], m("16666.67"));
        assert_eq!(sum(v[..12].iter().copied()), m("200000"));
        assert_eq!(v[12], m("26666.67"));
        assert_eq!(sum(v[12..24].iter().copied()), m("320000"));
        assert_eq!(sum(v.iter().copied()), m("1000000"));
        assert_eq!(d.book_value(m("1000000"), 18), m("640000"));
    }

    #[test]
    fn debt_service_to_the_cent() {
        // $1,200,000 at 6% over 12 months: $100,000 of principal a month; interest of the
        // first month 1,200,000 × 0.06 / 12 = $6,000.00, of the second $5,500.00, …
        let s = debt_service(m("1200000"), 60_000, 12, 14);
        assert_eq!(s[0].interest, m("6000"));
        assert_eq!(s[0].principal, m("100000"));
        assert_eq!(s[0].balance, m("1100000"));
        assert_eq!(s[1].interest, m("5500"));
        assert_eq!(s[11].interest, m("500"));
        assert_eq!(s[11].balance, Money::ZERO);
        assert_eq!(s[12].interest, Money::ZERO);
        // Σ interest = 0.005 × 100,000 × (12 + 11 + … + 1) = $39,000.
        assert_eq!(sum(s.iter().map(|x| x.interest)), m("39000"));
        // $1,000 over 3 months at 7.5%: principal 333.33 / 333.34 / 333.33; interest
        // 1000 × 0.00625 = 6.25, 666.67 × 0.00625 = 4.1666… → 4.17, 333.33 × … → 2.08.
        let s = debt_service(m("1000"), 75_000, 3, 3);
        let p: Vec<Money> = s.iter().map(|x| x.principal).collect();
        assert_eq!(p, vec![m("333.33"), m("333.34"), m("333.33")]);
        let i: Vec<Money> = s.iter().map(|x| x.interest).collect();
        assert_eq!(i, vec![m("6.25"), m("4.17"), m("2.08")]);
    }

    #[test]
    fn yearly_amounts_spread_over_months() {
        // $100 a year: 8.33, 8.34, 8.33, … adding up to $100.00 in 12 months.
        let v = monthly_of_yearly(m("100"), 12);
        assert_eq!(v[0], m("8.33"));
        assert_eq!(v[1], m("8.34"));
        assert_eq!(sum(v), m("100"));
    }

    #[test]
    fn prices_decline_year_over_year() {
        // $3.00 falling 20% a year: $2.40 after a year, $1.92 after two, and half-way
        // between the anniversaries in month 6: $2.70.
        assert_eq!(declined(m("3"), 200_000, 0), m("3"));
        assert_eq!(declined(m("3"), 200_000, 6), m("2.7"));
        assert_eq!(declined(m("3"), 200_000, 12), m("2.4"));
        assert_eq!(declined(m("3"), 200_000, 24), m("1.92"));
        assert_eq!(declined(m("3"), 200_000, 27), m("1.824"));
        assert_eq!(declined(m("3"), 0, 50), m("3"));
    }

    #[test]
    fn npv_irr_and_payback_by_hand() {
        // −$1,000 now and +$100 at the end of each of 12 months. At 12% a year the monthly
        // factor is 1.12^(1/12) = 1.0094887929…; Σ 100 / 1.0094887929^k for k = 1..12 =
        // 100 × (1 − 1.12^−1) / (1.12^(1/12) − 1) = 100 × 0.1071428571 / 0.0094887929
        // = 1,129.15 (to the cent); NPV = 129.15.
        let mut flows = vec![m("-1000")];
        flows.extend(std::iter::repeat_n(m("100"), 12));
        assert_eq!(npv(&flows, 0.12), m("129.15"));
        assert_eq!(npv(&flows, 0.0), m("200"));
        // The monthly IRR solves 1000 = 100 × (1 − (1+r)^−12) / r: r = 2.9228…%, a year
        // (1.029228)^12 − 1 = 41.30%.
        let r = irr(&flows).unwrap();
        assert!((r - 0.413_0).abs() < 0.000_5, "{r}");
        assert_eq!(npv(&flows, r), Money::ZERO);
        // Paid back at the end of month 10 (−1000 + 10 × 100 = 0).
        assert_eq!(payback_month(&flows), Some(10));
        assert_eq!(payback_month(&flows[..10]), None);
        // Nothing invested: no IRR; payback at once.
        assert_eq!(irr(&[m("100"), m("100")]), None);
        assert_eq!(payback_month(&[m("0"), m("5")]), Some(0));
    }
}
