//! Exponential backoff with full jitter, for retrying calls to the control plane.

use std::time::Duration;

/// Exponential backoff: the n-th retry waits a uniformly random time between zero and
/// `min(cap, base * 2^n)` ("full jitter"), so that many agents losing the control plane at
/// once do not come back in lockstep.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `base` and never exceeding `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The longest the next delay may be.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The delay before the next retry; each call doubles the ceiling, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        jitter(ceiling)
    }

    /// The cap.
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// Failed attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A uniformly random duration between zero and `max`, inclusive.
pub fn jitter(max: Duration) -> Duration {
    let max_nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    let random = getrandom::u64().unwrap_or(max_nanos / 2);
    Duration::from_nanos(random % max_nanos.saturating_add(1).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_within_doubling_ceiling_and_cap() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let ceilings: Vec<u64> = (0..10)
            .map(|_| {
                let c = b.ceiling();
                let d = b.next_delay();
                assert!(d <= c, "{d:?} > {c:?}");
                c.as_secs()
            })
            .collect();
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
        for _ in 0..100 {
            assert!(b.next_delay() <= Duration::from_secs(60));
        }
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_secs(1));
        assert_eq!(b.attempts(), 0);
    }

    #[test]
    fn jitter_spreads() {
        let max = Duration::from_secs(10);
        let samples: Vec<Duration> = (0..200).map(|_| jitter(max)).collect();
        assert!(samples.iter().all(|d| *d <= max));
        assert!(samples.iter().any(|d| *d < Duration::from_secs(3)));
        assert!(samples.iter().any(|d| *d > Duration::from_secs(7)));
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }
}
