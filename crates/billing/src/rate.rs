//! Exact amounts from GPU-seconds and $/GPU-hour rates, and the rounding rules.
//!
//! Prices are quoted per GPU-hour but usage is metered per GPU-second, so an amount is
//! `gpus × seconds × rate / 3600`: a rational number of micro-dollars that is rarely a
//! whole one. Every function here computes that product exactly in `i128` and rounds once,
//! half to even (banker's rounding): ties go to the even neighbour, so over many lines
//! rounding neither favours the operator nor the customer. Results beyond the `i64` range
//! of [`Money`] saturate instead of wrapping; no real bill comes near $9.2 trillion.

use neocloud_types::Money;

/// Seconds in an hour: prices are per GPU-hour, usage per GPU-second.
const SECONDS_PER_HOUR: i128 = 3_600;
/// Micro-dollars in a cent.
const MICROS_PER_CENT: i128 = 10_000;

/// `n / d` rounded half to even, for `d > 0`.
///
/// Floor division leaves a remainder `r` in `[0, d)`, so the exact quotient is `q + r/d`;
/// comparing `r` with `d − r` decides below, above or exactly at the half without ever
/// computing `2r` (which could overflow).
pub(crate) fn div_round_half_even(n: i128, d: i128) -> i128 {
    debug_assert!(d > 0, "divisor must be positive");
    let q = n.div_euclid(d);
    let r = n.rem_euclid(d);
    match r.cmp(&(d - r)) {
        std::cmp::Ordering::Less => q,
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => {
            if q.rem_euclid(2) == 0 {
                q
            } else {
                q + 1
            }
        }
    }
}

/// An `i128` of micro-dollars as [`Money`], saturating at the ends of the `i64` range.
pub(crate) fn saturate(micros: i128) -> Money {
    Money::from_micros(i64::try_from(micros).unwrap_or(if micros < 0 {
        i64::MIN
    } else {
        i64::MAX
    }))
}

/// `gpus × seconds × rate` in micro-dollar-seconds per hour (the numerator of an amount),
/// or `None` if even `i128` overflows, which needs absurd inputs.
fn gpu_seconds_times_rate(gpus: u32, seconds: i64, rate: Money) -> Option<i128> {
    i128::from(gpus)
        .checked_mul(i128::from(seconds))?
        .checked_mul(i128::from(rate.micros()))
}

/// The numerator's sign, for saturating an overflowed product in the right direction.
fn overflow_sign(seconds: i64, rate: Money) -> i128 {
    if (seconds < 0) != (rate.micros() < 0) {
        i128::MIN
    } else {
        i128::MAX
    }
}

/// The amount for `gpus` GPUs used `seconds` seconds at `rate` dollars per GPU-hour:
/// `gpus × seconds × rate / 3600`, exact, then rounded half to even to the micro-dollar.
///
/// This is the amount of a usage record. E.g. 8 GPUs × 2,232 s at $2.85/GPU-hour is
/// 17,856 × 2,850,000 / 3,600 = 14,136,000 µ$ = $14.136 exactly; 1 GPU × 1,800 s at
/// $0.000001/GPU-hour is 0.5 µ$, which rounds to 0 (the even neighbour).
pub fn amount_micros(gpus: u32, seconds: i64, rate: Money) -> Money {
    let n =
        gpu_seconds_times_rate(gpus, seconds, rate).unwrap_or_else(|| overflow_sign(seconds, rate));
    saturate(div_round_half_even(n, SECONDS_PER_HOUR))
}

/// The amount for `gpu_milli` thousandths of a GPU used `seconds` seconds at `rate` dollars
/// per GPU-hour: `gpu_milli × seconds × rate / 3,600,000`, exact, then rounded half to even
/// to the micro-dollar. A slice of a GPU (a share or a MIG instance) is rated this way: a
/// 250-thousandths share for an hour at $2.85/GPU-hour is $0.7125, a quarter of the
/// GPU-hour. With `gpu_milli` = 1000 × GPUs it equals [`amount_micros`].
pub fn amount_micros_milli(gpu_milli: u64, seconds: i64, rate: Money) -> Money {
    let n = i128::from(gpu_milli)
        .checked_mul(i128::from(seconds))
        .and_then(|n| n.checked_mul(i128::from(rate.micros())))
        .unwrap_or_else(|| overflow_sign(seconds, rate));
    saturate(div_round_half_even(n, SECONDS_PER_HOUR * 1000))
}

/// `gpu_milli × seconds / 1000`: the GPU-seconds of a slice, rounded half to even.
pub fn gpu_seconds_milli(gpu_milli: u64, seconds: i64) -> i64 {
    let n = i128::from(gpu_milli).saturating_mul(i128::from(seconds));
    i64::try_from(div_round_half_even(n, 1000)).unwrap_or(i64::MAX)
}

/// The amount for `gpus` GPUs over `seconds` seconds at `rate` per GPU-hour, rounded half
/// to even straight to the cent from the exact product.
///
/// Commitment lines use this: rounding once from the exact value avoids the double
/// rounding of "to the micro-dollar, then to the cent", which can move a tie.
pub fn amount_to_cent(gpus: u32, seconds: i64, rate: Money) -> Money {
    let n =
        gpu_seconds_times_rate(gpus, seconds, rate).unwrap_or_else(|| overflow_sign(seconds, rate));
    saturate(div_round_half_even(n, SECONDS_PER_HOUR * MICROS_PER_CENT) * MICROS_PER_CENT)
}

/// An amount rounded half to even to the cent: $1.005 → $1.00, $1.015 → $1.02,
/// $1.025 → $1.02, −$1.015 → −$1.02. Invoice lines are rounded this way, once per line,
/// after their usage records are summed.
pub fn round_to_cent(m: Money) -> Money {
    saturate(div_round_half_even(i128::from(m.micros()), MICROS_PER_CENT) * MICROS_PER_CENT)
}

/// `share_milli` thousandths of a percent of `base` (100% = 100,000), rounded half to even
/// to the cent in one step. SLA credits are computed this way.
pub fn percent_to_cent(base: Money, share_milli: u32) -> Money {
    let n = i128::from(base.micros()) * i128::from(share_milli);
    saturate(div_round_half_even(n, 100_000 * MICROS_PER_CENT) * MICROS_PER_CENT)
}

/// The sum of amounts, exact in `i128`, saturating only at the end.
pub(crate) fn sum(amounts: impl IntoIterator<Item = Money>) -> Money {
    saturate(amounts.into_iter().map(|m| i128::from(m.micros())).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(s: &str) -> Money {
        s.parse().unwrap()
    }

    #[test]
    fn a_slice_is_its_share_of_a_gpu_hour() {
        // A 250 share for an hour at $3 is a quarter of the GPU-hour.
        assert_eq!(amount_micros_milli(250, 3600, usd("3")), usd("0.75"));
        // Whole GPUs in thousandths rate as whole GPUs.
        for (gpus, secs, rate) in [(8, 2232, "2.85"), (1, 1800, "0.000001"), (3, 7, "2.5")] {
            assert_eq!(
                amount_micros_milli(gpus * 1000, secs, usd(rate)),
                amount_micros(u32::try_from(gpus).unwrap(), secs, usd(rate))
            );
        }
        // Exact, then half to even once: 1/1000 GPU × 1 s × $1.8/h = 0.5 µ$ → 0.
        assert_eq!(amount_micros_milli(1, 1, usd("1.8")), Money::ZERO);
        assert_eq!(amount_micros_milli(3, 1, usd("1.8")), Money::from_micros(2));
        // A 3g MIG instance of 7: 428/1000.
        assert_eq!(amount_micros_milli(428, 3600, usd("7")), usd("2.996"));
        assert_eq!(gpu_seconds_milli(250, 3600), 900);
        assert_eq!(gpu_seconds_milli(1, 500), 0);
        assert_eq!(gpu_seconds_milli(1, 1500), 2);
    }

    #[test]
    fn half_even_division() {
        for (n, d, want) in [
            (5, 2, 2),   // 2.5 → 2
            (7, 2, 4),   // 3.5 → 4
            (-5, 2, -2), // −2.5 → −2
            (-7, 2, -4), // −3.5 → −4
            (10, 4, 2),  // 2.5 → 2
            (11, 4, 3),  // 2.75 → 3
            (9, 4, 2),   // 2.25 → 2
            (-9, 4, -2), // −2.25 → −2
            (-11, 4, -3),
            (0, 7, 0),
            (6, 3, 2),
        ] {
            assert_eq!(div_round_half_even(n, d), want, "{n}/{d}");
        }
    }

    #[test]
    fn bankers_rounding_to_the_cent() {
        for (input, want) in [
            ("1.005", "1.00"),  // tie, 0 is even
            ("1.015", "1.02"),  // tie, 1 is odd → up to 2
            ("1.025", "1.02"),  // tie, 2 is even
            ("2.675", "2.68"),  // tie, 7 is odd → 8
            ("1.0251", "1.03"), // above the tie
            ("1.024999", "1.02"),
            ("0.004999", "0"),
            ("0.005", "0"), // tie, 0 is even
            ("0.015", "0.02"),
            ("-1.005", "-1.00"), // ties are symmetric around zero
            ("-1.015", "-1.02"),
            ("-0.005", "0"),
            ("12096", "12096"),
        ] {
            assert_eq!(round_to_cent(usd(input)), usd(want), "{input}");
        }
    }

    #[test]
    fn amount_micros_is_exact_and_half_even_at_the_micro_dollar() {
        // 8 GPUs × (37 min 12 s = 2,232 s) at $2.85: 17,856 GPU-s × 2,850,000 / 3,600
        // = 14,136,000 µ$ exactly.
        assert_eq!(amount_micros(8, 2_232, usd("2.85")), usd("14.136"));
        // 1 GPU × 1,800 s at 1 µ$/GPU-hour = 0.5 µ$ → 0 (even).
        assert_eq!(amount_micros(1, 1_800, Money::from_micros(1)).micros(), 0);
        // 1 GPU × 5,400 s at 1 µ$/h = 1.5 µ$ → 2 (even).
        assert_eq!(amount_micros(1, 5_400, Money::from_micros(1)).micros(), 2);
        // 1 GPU × 9,000 s at 1 µ$/h = 2.5 µ$ → 2 (even).
        assert_eq!(amount_micros(1, 9_000, Money::from_micros(1)).micros(), 2);
        // 1 GPU × 1 s at $0.0018/h = 1,800 / 3,600 = 0.5 µ$ → 0; at $0.0054/h = 1.5 → 2.
        assert_eq!(amount_micros(1, 1, usd("0.0018")).micros(), 0);
        assert_eq!(amount_micros(1, 1, usd("0.0054")).micros(), 2);
        // 1 GPU × 1 s at $2.10/h = 2,100,000 / 3,600 = 583.33… → 583 µ$.
        assert_eq!(amount_micros(1, 1, usd("2.10")).micros(), 583);
        // 3 GPUs × 1 s at $2.10/h = 1,750 µ$ exactly.
        assert_eq!(amount_micros(3, 1, usd("2.10")).micros(), 1_750);
        // Negative seconds (a correction) round symmetrically: −0.5 → 0, −1.5 → −2.
        assert_eq!(amount_micros(1, -1_800, Money::from_micros(1)).micros(), 0);
        assert_eq!(amount_micros(1, -5_400, Money::from_micros(1)).micros(), -2);
        assert_eq!(amount_micros(0, 3_600, usd("2")), Money::ZERO);
    }

    #[test]
    fn amounts_saturate_instead_of_wrapping() {
        let huge = Money::from_micros(i64::MAX);
        assert_eq!(amount_micros(u32::MAX, i64::MAX, huge).micros(), i64::MAX);
        assert_eq!(amount_micros(u32::MAX, i64::MIN, huge).micros(), i64::MIN);
        assert_eq!(round_to_cent(huge).micros(), i64::MAX);
        assert_eq!(sum([huge, huge]).micros(), i64::MAX);
    }

    #[test]
    fn amount_to_cent_rounds_once_from_the_exact_value() {
        // 15 days × 24 h × 16 GPUs × $2.10 = 5,760 GPU-h × 2.10 = $12,096.00.
        assert_eq!(amount_to_cent(16, 15 * 86_400, usd("2.10")), usd("12096"));
        // 1 GPU × 1 s at $0.018/h = 5 µ$ = $0.000005 → $0.00 (below half a cent).
        assert_eq!(amount_to_cent(1, 1, usd("0.018")), Money::ZERO);
        // 1 GPU × 18 s at $1/h = $0.005 exactly: a tie → $0.00 (even);
        // 1 GPU × 54 s at $1/h = $0.015 → $0.02.
        assert_eq!(amount_to_cent(1, 18, usd("1")), Money::ZERO);
        assert_eq!(amount_to_cent(1, 54, usd("1")), usd("0.02"));
    }

    #[test]
    fn percent_to_cent_is_exact() {
        // 25% (25,000 thousandths of a percent) of $12,096 = $3,024.
        assert_eq!(percent_to_cent(usd("12096"), 25_000), usd("3024"));
        // 10% of $0.05 = $0.005, a tie → $0.00; 10% of $0.15 = $0.015 → $0.02.
        assert_eq!(percent_to_cent(usd("0.05"), 10_000), Money::ZERO);
        assert_eq!(percent_to_cent(usd("0.15"), 10_000), usd("0.02"));
    }
}
